// Decode attention of the GPU engine (kernels.h: attention_decode): the flash-decoding kernel with the
// step's q/k norm, RoPE and KV append fused in, and its launch plan. Split out of kernels.cu; shared
// helpers in kernel_util.cuh.
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include "gpu/decode_plan.h"
#include "gpu/device.h"
#include "gpu/kernel_util.cuh"
#include "gpu/kernels.h"
#include "gpu/mma_util.cuh"
#include "util/env.h"

namespace mosaic::gpu::kern {
namespace {

// Decode attention, split over the keys (flash-decoding), with the step's q/k norm, RoPE and KV
// append fused in. One CTA per (kv head g, chunk c of <= RP of its query heads, sequence b, split
// s): each cached key/value row is read once for all query heads of its kv head (GQA).
//  - keys 0 .. pos-1 are split evenly over nsplit x kDecWarps warps by the length read on the
//    device (one graph serves every length). lpk lanes per key (hd/8 rounded up to a power of
//    two): lane v holds dims 8v .. 8v+7 of its key and the q slices of those dims. A warp streams
//    its keys through a lane-private shared-memory ring (cp.async, kDecStages steps of kDecPasses
//    passes in flight; a lane reads back only what it copied, so no barrier guards the ring):
//    64 KB per CTA, 3 CTAs and ~150 KB of loads in flight per SM. Scores are reduced over the
//    lpk lanes by shuffles; online softmax in base 2 (q pre-scaled by log2(e)/sqrt(hd)).
//  - meanwhile the CTA normalizes and rotates its q heads and the new k/v row (the RoPE table is
//    built before pdl_wait, from pos alone; for hd = 16 * 2^n in registers with one barrier, else
//    staged in shared memory, norm_rope_apply), rounds them to the activation dtype (as the cache
//    holds them); CTA (s = 0, c = 0) appends k/v at pos, and key pos starts the state of its warp 0.
//  - with programmatic dependent launch the key copies are issued before pdl_wait(), so they
//    overlap the end of the qkv GEMM; everything that reads this step's qkv comes after it.
//  - the warps merge in shared memory; with one split the CTA writes the output, else its partial
//    (o[hd] unnormalized, m, l), and the last CTA of the (b, g, c) group to finish (an atomic
//    counter, which it resets to 0) merges the splits: no second kernel. Or, where the plan says so
//    (decode_plan.h), the splits are one thread-block cluster and merge in distributed shared memory.
// MOSAIC_DEC_WARPS / MOSAIC_DEC_STAGES: build-time overrides of the warps per CTA and the ring depth,
// for same-call comparisons only (scripts/gpu-e2e.sh BASE_DEFS).
#ifndef MOSAIC_DEC_WARPS
#define MOSAIC_DEC_WARPS 4
#endif
constexpr int kDecWarps = MOSAIC_DEC_WARPS, kDecThreads = 32 * kDecWarps, kMaxSplits = detail::kMaxDecodeSplits;
constexpr int kMaxCluster = detail::kMaxClusterSplits;  // splits of a cluster merge (the inbox's rows)
#ifndef MOSAIC_DEC_STAGES
#define MOSAIC_DEC_STAGES 8
#endif
constexpr int kDecPasses = 2, kDecStages = MOSAIC_DEC_STAGES;
constexpr size_t kDecRingBytes = size_t(kDecWarps) * kDecStages * kDecPasses * 2 * 32 * 16;

__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src) : "memory");
}
// Cluster barrier halves (PTX barrier.cluster, sm_90). The cluster merge uses two phases: a relaxed
// arrival once the CTA is done with its rope rows ("the others may write into them now"), waited
// for just before the first remote store, then release / acquire around the pushed partials.
__device__ __forceinline__ void cluster_arrive_relaxed() { asm volatile("barrier.cluster.arrive.relaxed;\n" ::: "memory"); }
__device__ __forceinline__ void cluster_arrive_release() { asm volatile("barrier.cluster.arrive.release;\n" ::: "memory"); }
__device__ __forceinline__ void cluster_wait_acquire() { asm volatile("barrier.cluster.wait.acquire;\n" ::: "memory"); }
// Shared memory of the kernel, in floats: [ring (kDecRingBytes) | merge area laid over it after the
// keys] [rope rows (RP + 3) x hd, read in the prologue only | cluster merge inbox laid over them].
// The inbox is not the merge area: other CTAs of the cluster write into it while this one may still
// be streaming its keys or merging its warps. (The thirteenth session's first form, an inbox
// sized for kMaxSplits = 256 after the rope rows, +7.7 KB per CTA, left 2 CTAs per SM instead of 3: batch 4
// decode 7% slower on an H200.)
//   inbox: O [nsplit][chunk] (nsplit x chunk <= RP hd + kMaxCluster - 1) | m [kMaxCluster][RP] | l [kMaxCluster][RP]
__host__ __device__ constexpr size_t dec_merge_floats(int rp, int hd) {
  return size_t(kDecWarps) * rp * hd + 2 * size_t(kDecWarps) * rp;
}
__host__ __device__ constexpr size_t dec_inbox_offset(int rp, int hd) {  // = the rope rows' (merge <= ring)
  return kDecRingBytes / sizeof(float) > dec_merge_floats(rp, hd) ? kDecRingBytes / sizeof(float)
                                                                  : dec_merge_floats(rp, hd);
}
static_assert(dec_merge_floats(8, 256) <= kDecRingBytes / sizeof(float), "the merge area fits in the ring: the rope rows / inbox start at the ring's end");
__host__ __device__ constexpr size_t dec_inbox_o_floats(int rp, int hd) { return size_t(rp) * hd + kMaxCluster; }
__host__ __device__ constexpr size_t dec_inbox_floats(int rp, int hd) {
  return dec_inbox_o_floats(rp, hd) + 2 * size_t(kMaxCluster) * rp;
}
static_assert(dec_inbox_floats(4, 128) <= 7 * 128 && dec_inbox_floats(8, 128) <= 11 * 128,
              "LLaMA-3 / Qwen3 heads: the inbox fits in the rope rows (no shared memory added, 3 CTAs per SM stay)");
template <typename T>
__device__ __forceinline__ uint4 load8_unaligned(const T* p, int rem) {  // rem: valid elements from p
  uint4 r = make_uint4(0, 0, 0, 0);
  T* t = reinterpret_cast<T*>(&r);
  for (int e = 0; e < 8; ++e)
    if (e < rem) t[e] = p[e];
  return r;
}
template <typename T>
__device__ __forceinline__ void cvt8(const uint4& r, float (&f)[8]) {
  const T* t = reinterpret_cast<const T*>(&r);
  for (int e = 0; e < 8; ++e) f[e] = to_f(t[e]);
}
template <typename T>
__device__ __forceinline__ float round_act(float x) {
  return to_f(from_f<T>(x));
}
__device__ __forceinline__ float sum_lanes(float x, int lpk) {  // over the lpk lanes of a key
#pragma unroll
  for (int o = lpk >> 1; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// ---- the tensor-core key loop (MMA = true; head_dim 128 only) ------------------------------------------
// The default for head_dim 128 (LLaMA-3, Qwen3); MOSAIC_DECODE_MMA=0 selects the scalar loop. QK^T and P V as
// m16n8k16 MMAs. The CTA's q
// heads (<= 8) are the A operand's rows (rows 8..15 and rows >= nq are zeros), 8 keys of K the B operand
// (16 dims x 8 keys: ldmatrix of K rows, non-transposed), S = 16 x 8 per n-tile; P (the two S tiles of a
// 16-key tile) is the A operand of P V in the same registers (FlashAttention-2's C -> A reuse), V the B
// operand through ldmatrix.trans. Per 16 keys: 8 ldmatrix + 16 HMMA for S, 8 ldmatrix + 16 HMMA for O,
// against ~1700 instructions of the scalar loop (432 per step of 4 keys per warp: sixteenth session's
// static read). Why: at batch 1 the scalar loop runs one warp per scheduler, so its ~3500 instructions
// per warp at 2048 keys are ~7 us of latency (docs/kernels-notes.md, sixteenth session).
// Rows 8..15 of A are zero (a1 = a3 = 0): c += A B with A's rows 0..7 in a0 (k 0..7) and a2 (k 8..15).
template <typename T>
__device__ __forceinline__ void mma_rows8(float (&c)[4], uint32_t a0, uint32_t a2, uint32_t b0, uint32_t b1) {
  const uint32_t a[4] = {a0, 0u, a2, 0u};
  cuda::Mma16816<T>::acc(c, a, b0, b1);
}
// A 16-key tile of K or V in the ring: 16 rows of 128 dims (256 B), 16-byte chunk c of row r stored at
// chunk c ^ (r & 7): the 8 rows an ldmatrix reads at one chunk column hit 8 different bank groups.
constexpr int kMmaHd = 128, kMmaStages = kDecStages / 4, kMmaTileBytes = 16 * kMmaHd * 2;  // 2 stages (MOSAIC_DEC_STAGES 8)
__host__ __device__ constexpr int mma_chunk_off(int r, int c) { return r * (kMmaHd * 2) + ((c ^ (r & 7)) << 4); }
static_assert(size_t(kDecWarps) * kMmaStages * 2 * kMmaTileBytes == kDecRingBytes, "the MMA ring takes the scalar ring's bytes");

// LPK: lanes per key known at compile time (16: hd 72 .. 128, LLaMA-3 / Qwen3), or 0 = from hd
// at run time. The key loop has no per-row branches, so the U x RP dot products and their lane
// reductions are independent chains the scheduler interleaves; with LPK known the reductions
// unroll too. (The previous loop reduced one (u, r) at a time inside `if (r < nq)`: about 2 us
// per step per warp. H100, LLaMA-3-8B shapes, 2145 cached positions, us per layer, previous /
// this loop with lanes at run time / LPK = 16: B=1 24.7 / 19.2 / 16.9, B=16 110.5 / 71.5 / 69.0;
// the previous figures from an earlier call, bench/results/e2e-h100-2026-11-28-v3.md.)
template <typename T, int RP, bool VEC, int LPK, bool MMA = false>
__global__ void __launch_bounds__(kDecThreads, (RP >= 8 ? 8 : 12) / kDecWarps > 0 ? (RP >= 8 ? 8 : 12) / kDecWarps : 1)
    attention_decode_k(const T* qkv, const int32_t* pos_a, const int32_t* slot_a, AttnDims d, const float* q_norm,
                       const float* k_norm, float eps, const float* inv_freq, float qscale, T* kc, T* vc,
                       float* partial, int* counters, T* out, int cluster_merge) {
  constexpr int U = kDecPasses, S = kDecStages;
  extern __shared__ __align__(16) float sm[];  // [ring kDecRingBytes][rope rows]; after the keys: merge area
  // The tensor-core loop runs only for head_dim kMmaHd, so its instantiations take hd as a constant: every k / hd,
  // k % hd becomes a shift, the shared-memory prologue (norm_rope_apply) drops out, 6048 -> 4584 instructions (half,
  // RP 4); H200, same call: LLaMA-3-8B W4A16 decode +2.0% / +1.9% / +0.5% at batch 1 / 4 / 16
  // (bench/results/e2e-h200-2026-11-29-s17-attn-hd-const.md).
  const int hd = MMA ? kMmaHd : d.hd, rep = d.H / d.Hkv, nch = (rep + RP - 1) / RP, nh = d.H + 2 * d.Hkv;
  const int g = blockIdx.x / nch, c = blockIdx.x % nch, b = blockIdx.y, split = blockIdx.z, nsplit = gridDim.z;
  const int nq = min(RP, rep - c * RP), hq0 = g * rep + c * RP;  // query heads hq0 .. hq0 + nq - 1
  const int64_t pos = pos_a[b], slot = slot_a[b];
  const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
  const int nvec = (hd + 7) / 8;
  int lpk = LPK;
  if (LPK == 0) {
    lpk = 1;
    while (lpk < nvec) lpk <<= 1;
  }
  const int kpp = 32 / lpk, v = lane & (lpk - 1), ks = lane / lpk, d0 = 8 * v;
  const bool on = v < nvec;  // lanes past the head (hd not a power of two) hold zeros

  // This warp's keys [kw0, kw1) of 0 .. pos-1 (whole passes of kpp keys).
  const int nkeys = int(pos), nwarps = nsplit * kDecWarps;  // positions < capacity: int
  const int gran = MMA ? 16 : kpp;  // MMA: whole 16-key tiles per warp
  const int per = ((nkeys + nwarps - 1) / nwarps + gran - 1) / gran * gran;
  const int kw0 = min(nkeys, (split * kDecWarps + w) * per), kw1 = min(nkeys, kw0 + per);
  const int64_t head_off = (slot * d.Hkv + g) * d.cap * hd + d0;
  const T* kb = kc + head_off;
  const T* vb = vc + head_off;
  // Step t covers keys kw0 + t*U*kpp ...: ring slot (stage t % S, pass u, k|v) of this lane.
  uint4* ring = reinterpret_cast<uint4*>(sm) + w * (S * U * 2 * 32) + lane;
  const int nsteps = (kw1 - kw0 + U * kpp - 1) / (U * kpp);
  auto issue = [&](int t) {
    for (int u = 0; u < U; ++u) {
      const int j = kw0 + t * U * kpp + u * kpp + ks;
      uint4* sk = ring + ((t % S) * U + u) * 2 * 32;
      if (on && j < kw1) {
        if constexpr (VEC) {
          cp_async16(sk, kb + j * hd);
          cp_async16(sk + 32, vb + j * hd);
        } else {  // hd % 8 != 0: rows not 16-byte aligned, plain loads
          sk[0] = load8_unaligned(kb + j * hd, hd - d0);
          sk[32] = load8_unaligned(vb + j * hd, hd - d0);
        }
      } else {
        sk[0] = sk[32] = make_uint4(0, 0, 0, 0);
      }
    }
  };
  // MMA: this warp's ring of kMmaStages stages of [K tile | V tile] (kMmaTileBytes each, swizzled rows);
  // tile t = keys kw0 + 16 t .. (keys past kw1 zero-filled). Every lane copies 8 chunks of each.
  uint8_t* mring = reinterpret_cast<uint8_t*>(sm) + size_t(w) * kMmaStages * 2 * kMmaTileBytes;
  const int ntiles = MMA ? (kw1 - kw0 + 15) / 16 : 0;
  const T* kh = kc + (slot * d.Hkv + g) * d.cap * hd;  // this head's rows (MMA: whole rows of kMmaHd)
  const T* vh = vc + (slot * d.Hkv + g) * d.cap * hd;
  // Lane l copies chunk l % 16 of rows l / 16 + 2 j, j = 0..7 (16 lanes per 256-byte row: coalesced);
  // head_dim is kMmaHd here, so every offset but the tile's first key is a compile-time multiple.
  auto missue = [&](int t) {
    if (t >= ntiles) return;
    uint8_t* stg = mring + (t % kMmaStages) * 2 * kMmaTileBytes;
    const int r0 = lane >> 4, cc = lane & 15, key0 = kw0 + 16 * t;
    const int64_t src0 = int64_t(key0 + r0) * kMmaHd + cc * 8;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int r = r0 + 2 * j;
      const bool ok = key0 + r < kw1;
      const int64_t off = ok ? src0 + 2 * j * kMmaHd : 0;  // (a zero-filled chunk still needs a valid address)
      cp_async16_zfill(stg + mma_chunk_off(r, cc), kh + off, ok);
      cp_async16_zfill(stg + kMmaTileBytes + mma_chunk_off(r, cc), vh + off, ok);
    }
  };
  if constexpr (MMA) {
    for (int t = 0; t < kMmaStages - 1; ++t) {
      missue(t);
      cp_async_commit();
    }
  } else {
    for (int t = 0; t < S - 1; ++t) {
      if (t < nsteps) issue(t);
      cp_async_commit();
    }
  }
  float* rows = sm + kDecRingBytes / sizeof(float);  // [nq + 2][hd]
  float* cs = rows + (RP + 2) * hd;                   // [hd]
  rope_table(hd, pos, inv_freq, cs);                  // from pos alone: off the critical path
  __syncthreads();
  // Up to here only pos/slot (written by the previous step's advance) and cached keys 0 .. pos-1
  // (appended by earlier steps) were read: with PDL this overlaps the qkv GEMM's tail. The fused
  // qkv row, the partials/counters and the cache row pos come after the wait.
  pdl_wait();
  pdl_launch_dependents();

  // Prologue: q heads, k and v of this token -> norm + RoPE (-> rows; rounded to T where used).
  const T* src = qkv + int64_t(b) * nh * hd;
  const int half = hd / 2, cpr = half / 8;  // 8-pair chunks per row
  const int64_t new_row = (slot * d.Hkv + g) * d.cap * hd + pos * hd;
  if (VEC && hd % 16 == 0 && (cpr & (cpr - 1)) == 0 && cpr <= 32) {
    // In registers, one barrier: thread (row r, chunk jc) holds dims 8 jc .. 8 jc + 7 and their
    // RoPE partners half + 8 jc ..; the row's cpr threads are adjacent lanes, so the norm's sum of
    // squares is a cpr-lane butterfly (every lane takes part, rows without a norm ignore it).
    for (int base = 0; base < (nq + 2) * cpr; base += kDecThreads) {
      const int k = base + tid, r = k / cpr, jc = k % cpr;
      const bool act = r < nq + 2;
      const int rr = act ? r : nq + 1;
      const int j = rr < nq ? hq0 + rr : rr == nq ? d.H + g : d.H + d.Hkv + g;
      const T* xr = src + int64_t(j) * hd + 8 * jc;
      float a[8], bb[8];
      cvt8<T>(*reinterpret_cast<const uint4*>(xr), a);
      cvt8<T>(*reinterpret_cast<const uint4*>(xr + half), bb);
      float ss = 0.f;
#pragma unroll
      for (int e = 0; e < 8; ++e) ss += a[e] * a[e] + bb[e] * bb[e];
      for (int o = cpr >> 1; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
      const float* wn = rr < nq ? q_norm : rr == nq ? k_norm : nullptr;
      if (wn != nullptr) {
        const float rs = rsqrtf(ss / float(hd) + eps);
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          a[e] = a[e] * rs * wn[8 * jc + e];
          bb[e] = bb[e] * rs * wn[half + 8 * jc + e];
        }
      }
      if (rr <= nq) {  // RoPE on the q heads and k, not v
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          const float co = cs[8 * jc + e], si = cs[half + 8 * jc + e], x = a[e], y = bb[e];
          a[e] = x * co - y * si;
          bb[e] = y * co + x * si;
        }
      }
      if (act) {
        float* xo = rows + r * hd + 8 * jc;
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          xo[e] = a[e];
          xo[half + e] = bb[e];
        }
        if (split == 0 && c == 0 && r >= nq) {  // append this token's k / v (as T) to the cache
          T* dst = (r == nq ? kc : vc) + new_row + 8 * jc;
          uint4 pa, pb;
          T* ta = reinterpret_cast<T*>(&pa);
          T* tb = reinterpret_cast<T*>(&pb);
#pragma unroll
          for (int e = 0; e < 8; ++e) {
            ta[e] = from_f<T>(a[e]);
            tb[e] = from_f<T>(bb[e]);
          }
          *reinterpret_cast<uint4*>(dst) = pa;
          *reinterpret_cast<uint4*>(dst + half) = pb;
        }
      }
    }
    __syncthreads();
  } else {
    for (int i = tid; i < (nq + 2) * hd; i += kDecThreads) {
      const int r = i / hd;
      const int j = r < nq ? hq0 + r : r == nq ? d.H + g : d.H + d.Hkv + g;
      rows[i] = to_f(src[int64_t(j) * hd + i % hd]);
    }
    __syncthreads();
    norm_rope_apply(rows, nq, 1, hd, q_norm, k_norm, eps, cs);
    if (split == 0 && c == 0)
      for (int i = tid; i < 2 * hd; i += kDecThreads)
        (i < hd ? kc : vc)[new_row + i % hd] = from_f<T>(rows[nq * hd + i]);
  }
  float* macc = sm;                            // [kDecWarps][RP][hd]
  float* mm = macc + kDecWarps * RP * hd;      // [kDecWarps][RP]
  float* ml = mm + kDecWarps * RP;             // [kDecWarps][RP]
  float* inbox = sm + dec_inbox_offset(RP, hd);  // cluster merge: the partials pushed to this CTA
  namespace cg = cooperative_groups;
  if constexpr (MMA) {
    // Lane (gq, tq) = (lane / 4, lane % 4): the MMA fragments' row (q head gq) and column pair.
    const int gq = lane >> 2, tq = lane & 3;
    const bool real = gq < nq;
    uint32_t qa[kMmaHd / 16][2];  // A fragments of Q (unscaled, rounded to T as the scalar path's q)
#pragma unroll
    for (int kk = 0; kk < kMmaHd / 16; ++kk) {
      const float* qr = rows + gq * hd + 16 * kk + 2 * tq;
      qa[kk][0] = real ? pack_act<T>(qr[0], qr[1]) : 0u;
      qa[kk][1] = real ? pack_act<T>(qr[8], qr[9]) : 0u;
    }
    float mrow = -INFINITY, lrow = 0.f;  // lrow: this lane's part of the row's sum (summed over tq at the end)
    float o[kMmaHd / 8][4];              // O of row gq, dims 8 j + 2 tq, + 1 (o[j][2..3]: the zero rows 8..15)
#pragma unroll
    for (int j = 0; j < kMmaHd / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
    if (split == 0 && w == 0) {  // the new key pos starts warp 0's state (as in the scalar path)
      float sdot = 0.f;
      for (int e = 0; e < 32; ++e) {
        const int dd = 32 * tq + e;
        sdot += (real ? round_act<T>(rows[gq * hd + dd]) : 0.f) * round_act<T>(rows[nq * hd + dd]);
      }
      sdot += __shfl_xor_sync(0xffffffffu, sdot, 1);
      sdot += __shfl_xor_sync(0xffffffffu, sdot, 2);
      if (real) {
        mrow = sdot * qscale;
        lrow = tq == 0 ? 1.f : 0.f;
#pragma unroll
        for (int j = 0; j < kMmaHd / 8; ++j) {
          o[j][0] = round_act<T>(rows[(nq + 1) * hd + 8 * j + 2 * tq]);
          o[j][1] = round_act<T>(rows[(nq + 1) * hd + 8 * j + 2 * tq + 1]);
        }
      }
    }
    if (cluster_merge) cluster_arrive_relaxed();  // phase 1: done with the rope rows
    // ldmatrix row addresses: K (non-transposed) lanes 8i..8i+7 -> matrix i = keys (i / 2) * 8 .. + 7 at
    // chunk 2 kk + i % 2; V (transposed) matrix i = keys (i % 2) * 8 .. + 7 at chunk j + i / 2.
    const int kr = (lane & 7) + ((lane >> 4) << 3), kc1 = (lane >> 3) & 1;
    const int vr = (lane & 7) + (((lane >> 3) & 1) << 3), vc1 = lane >> 4;
    for (int t = 0; t < ntiles; ++t) {
      cp_async_wait<kMmaStages - 2>();  // tile t has landed (this lane's copies) ...
      __syncwarp();                     // ... and every lane's; every lane is done with tile t - 1's stage
      missue(t + kMmaStages - 1);
      cp_async_commit();
      const uint32_t kst = static_cast<uint32_t>(__cvta_generic_to_shared(mring + (t % kMmaStages) * 2 * kMmaTileBytes));
      const uint32_t vst = kst + kMmaTileBytes;
      float s0[4] = {0.f, 0.f, 0.f, 0.f}, s1[4] = {0.f, 0.f, 0.f, 0.f};  // S: keys 2tq, +1 | 8 + 2tq, +1
#pragma unroll
      for (int kk = 0; kk < kMmaHd / 16; ++kk) {
        uint32_t kb4[4];
        ldsm_x4(kb4, kst + mma_chunk_off(kr, 2 * kk + kc1));
        mma_rows8<T>(s0, qa[kk][0], qa[kk][1], kb4[0], kb4[1]);
        mma_rows8<T>(s1, qa[kk][0], qa[kk][1], kb4[2], kb4[3]);
      }
      const int key0 = kw0 + 16 * t;
      float sv[4] = {s0[0] * qscale, s0[1] * qscale, s1[0] * qscale, s1[1] * qscale};
      sv[0] = key0 + 2 * tq < kw1 ? sv[0] : -INFINITY;
      sv[1] = key0 + 2 * tq + 1 < kw1 ? sv[1] : -INFINITY;
      sv[2] = key0 + 8 + 2 * tq < kw1 ? sv[2] : -INFINITY;
      sv[3] = key0 + 9 + 2 * tq < kw1 ? sv[3] : -INFINITY;
      float mx = fmaxf(fmaxf(mrow, fmaxf(sv[0], sv[1])), fmaxf(sv[2], sv[3]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float ref = mx == -INFINITY ? 0.f : mx;
      const float al = exp2f(mrow - ref);
      mrow = mx;
      lrow *= al;
#pragma unroll
      for (int j = 0; j < kMmaHd / 8; ++j) {
        o[j][0] *= al;
        o[j][1] *= al;
      }
      float pv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        pv[i] = exp2f(sv[i] - ref);
        lrow += pv[i];
      }
      const uint32_t pa0 = pack_act<T>(pv[0], pv[1]), pa2 = pack_act<T>(pv[2], pv[3]);
#pragma unroll
      for (int jj = 0; jj < kMmaHd / 16; ++jj) {
        uint32_t vb4[4];
        ldsm_x4_trans(vb4, vst + mma_chunk_off(vr, 2 * jj + vc1));
        mma_rows8<T>(o[2 * jj], pa0, pa2, vb4[0], vb4[1]);
        mma_rows8<T>(o[2 * jj + 1], pa0, pa2, vb4[2], vb4[3]);
      }
    }
    cp_async_wait<0>();
    lrow += __shfl_xor_sync(0xffffffffu, lrow, 1);
    lrow += __shfl_xor_sync(0xffffffffu, lrow, 2);
    __syncthreads();  // every warp is done with the ring: the merge area overlaps it
    if (real) {
#pragma unroll
      for (int j = 0; j < kMmaHd / 8; ++j) {
        macc[(w * RP + gq) * hd + 8 * j + 2 * tq] = o[j][0];
        macc[(w * RP + gq) * hd + 8 * j + 2 * tq + 1] = o[j][1];
      }
      if (tq == 0) {
        mm[w * RP + gq] = mrow;
        ml[w * RP + gq] = lrow;
      }
    }
  } else {
  float q[RP][8], m[RP], l[RP], acc[RP][8];
  for (int r = 0; r < RP; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.f;
    for (int e = 0; e < 8; ++e) {
      acc[r][e] = 0.f;
      q[r][e] = r < nq && on && d0 + e < hd ? round_act<T>(rows[r * hd + d0 + e]) * qscale : 0.f;
    }
  }
  if (split == 0 && w == 0) {  // the new key pos
    float kf[8], vf[8];
    for (int e = 0; e < 8; ++e) {
      const bool ok = on && d0 + e < hd;
      kf[e] = ok ? round_act<T>(rows[nq * hd + d0 + e]) : 0.f;
      vf[e] = ok ? round_act<T>(rows[(nq + 1) * hd + d0 + e]) : 0.f;
    }
    for (int r = 0; r < RP; ++r) {
      if (r < nq) {
        float s = 0.f;
        for (int e = 0; e < 8; ++e) s += q[r][e] * kf[e];
        s = sum_lanes(s, lpk);
        if (ks == 0) {
          m[r] = s;
          l[r] = 1.f;
          for (int e = 0; e < 8; ++e) acc[r][e] = vf[e];
        }
      }
    }
  }

  // Phase 1 of the cluster merge: this thread is done with the rope rows (the inbox's space).
  if (cluster_merge) cluster_arrive_relaxed();

  // Cached keys: step t's math while steps t+1 .. t+S-1 are in flight.
  for (int t = 0; t < nsteps; ++t) {
    if (t + S - 1 < nsteps) issue(t + S - 1);
    cp_async_commit();
    cp_async_wait<S - 1>();  // step t has landed (this lane's copies)
    const int k0 = kw0 + t * U * kpp;
    uint4 kr[U], vr[U];
    for (int u = 0; u < U; ++u) {
      kr[u] = ring[((t % S) * U + u) * 2 * 32];
      vr[u] = ring[((t % S) * U + u) * 2 * 32 + 32];
    }
    // Every row r < RP is computed (rows r >= nq have q = 0 and are never stored): no per-row
    // branches in the loop.
    float p[U][RP];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float kf[8];
      cvt8<T>(kr[u], kf);
      const bool ok = k0 + u * kpp + ks < kw1;
#pragma unroll
      for (int r = 0; r < RP; ++r) {
        float s = 0.f;
#pragma unroll
        for (int e = 0; e < 8; ++e) s += q[r][e] * kf[e];
        p[u][r] = s;
      }
#pragma unroll
      for (int o = lpk >> 1; o > 0; o >>= 1)
#pragma unroll
        for (int r = 0; r < RP; ++r) p[u][r] += __shfl_xor_sync(0xffffffffu, p[u][r], o);
#pragma unroll
      for (int r = 0; r < RP; ++r) p[u][r] = ok ? p[u][r] : -INFINITY;
    }
#pragma unroll
    for (int r = 0; r < RP; ++r) {
      float mx = m[r];
#pragma unroll
      for (int u = 0; u < U; ++u) mx = fmaxf(mx, p[u][r]);
      // No key of this lane's slot yet (mx = -inf): the reference 0 keeps l = acc = 0, p = 0.
      const float ref = mx == -INFINITY ? 0.f : mx;
      const float al = exp2f(m[r] - ref);
      m[r] = mx;
      l[r] *= al;
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[r][e] *= al;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        p[u][r] = exp2f(p[u][r] - ref);
        l[r] += p[u][r];
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float vf[8];
      cvt8<T>(vr[u], vf);
#pragma unroll
      for (int r = 0; r < RP; ++r)
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[r][e] += p[u][r] * vf[e];
    }
  }
  cp_async_wait<0>();

  // Merge the key slots of the warp (lanes v, v + lpk, ...), then the warps of the CTA.
#pragma unroll
  for (int off = lpk; off < 32; off <<= 1) {
#pragma unroll
    for (int r = 0; r < RP; ++r) {
      if (r < nq) {
        const float om = __shfl_xor_sync(0xffffffffu, m[r], off), ol = __shfl_xor_sync(0xffffffffu, l[r], off);
        const float mx = fmaxf(m[r], om);
        const float a = mx == -INFINITY ? 0.f : exp2f(m[r] - mx), bw = mx == -INFINITY ? 0.f : exp2f(om - mx);
        l[r] = l[r] * a + ol * bw;
        for (int e = 0; e < 8; ++e) acc[r][e] = acc[r][e] * a + __shfl_xor_sync(0xffffffffu, acc[r][e], off) * bw;
        m[r] = mx;
      }
    }
  }
  __syncthreads();  // every warp is done with the ring: the merge area overlaps it
  if (ks == 0) {
    for (int r = 0; r < RP; ++r) {
      if (r < nq) {
        for (int e = 0; e < 8; ++e)
          if (on && d0 + e < hd) macc[(w * RP + r) * hd + d0 + e] = acc[r][e];
        if (v == 0) {
          mm[w * RP + r] = m[r];
          ml[w * RP + r] = l[r];
        }
      }
    }
  }
  }  // (scalar key loop)
  __syncthreads();
  const int64_t st = hd + 2;
  // Cluster merge (the splits of this (b, g, c) are one thread-block cluster, launched with cluster
  // dims (1, 1, nsplit); chosen by decode_split_plan in decode_plan.h: short batches with few keys per
  // CTA): CTA rank q merges outputs [q chunk, (q + 1) chunk). Every CTA pushes its partial O of those
  // outputs and the (m, l) of their rows into rank q's inbox (remote stores: nothing waits for a
  // round trip), one release / acquire barrier, then each CTA merges from its own shared memory and
  // exits: no CTA reads another's shared memory, so none waits for the others to finish reading.
  // (The earlier form pulled every partial with remote loads between two cluster barriers: 24% of the
  // kernel's stall samples under ncu on an H200, mostly the second barrier.)
  const int chunk = (nq * hd + nsplit - 1) / nsplit;
  if (cluster_merge) cluster_wait_acquire();  // phase 1 done: every CTA is past its rope rows
  for (int k = tid; k < nq * hd; k += kDecThreads) {
    const int r = k / hd, i = k % hd;
    float M = -INFINITY;
    for (int ww = 0; ww < kDecWarps; ++ww) M = fmaxf(M, mm[ww * RP + r]);
    float O = 0.f, L = 0.f;
    if (M != -INFINITY) {
      for (int ww = 0; ww < kDecWarps; ++ww) {
        const float mw = mm[ww * RP + r];
        const float e = mw == -INFINITY ? 0.f : exp2f(mw - M);
        O += macc[(ww * RP + r) * hd + i] * e;
        L += ml[ww * RP + r] * e;
      }
    }
    if (nsplit == 1) {
      out[(int64_t(b) * d.H + hq0 + r) * hd + i] = from_f<T>(O / L);
    } else if (cluster_merge) {  // pushed to the inbox of the CTA that merges output k
      const int q = k / chunk, kq = k - q * chunk;
      float* box = cg::this_cluster().map_shared_rank(inbox, q);
      box[split * chunk + kq] = O;
      if (i == 0 || kq == 0) {  // the (m, l) of each row that q's outputs touch
        box[dec_inbox_o_floats(RP, hd) + split * RP + r] = M;
        box[dec_inbox_o_floats(RP, hd) + (kMaxCluster + split) * RP + r] = L;
      }
    } else {
      float* pr = partial + ((int64_t(b) * d.H + hq0 + r) * nsplit + split) * st;
      pr[i] = O;
      if (i == 0) {
        pr[hd] = M;
        pr[hd + 1] = L;
      }
    }
  }
  if (nsplit == 1) return;

  if (cluster_merge) {
    cluster_arrive_release();  // phase 2: this CTA's pushes are visible to the cluster ...
    cluster_wait_acquire();    // ... and every other CTA's pushes to this one
    const float* iM = inbox + dec_inbox_o_floats(RP, hd);
    const float* iL = iM + kMaxCluster * RP;
    const int k0 = int(cg::this_cluster().block_rank()) * chunk, k1 = min(nq * hd, k0 + chunk);
    for (int k = k0 + tid; k < k1; k += kDecThreads) {
      const int r = k / hd, kq = k - k0;
      float M = -INFINITY;
      for (int sp = 0; sp < nsplit; ++sp) M = fmaxf(M, iM[sp * RP + r]);
      float O = 0.f, L = 0.f;
      for (int sp = 0; sp < nsplit; ++sp) {
        const float ms = iM[sp * RP + r];
        const float e = ms == -INFINITY ? 0.f : exp2f(ms - M);
        O += inbox[sp * chunk + kq] * e;
        L += iL[sp * RP + r] * e;
      }
      out[(int64_t(b) * d.H + hq0) * hd + k] = from_f<T>(O / L);
    }
    return;
  }

  // The last CTA of this (b, g, c) to finish merges the nsplit partials.
  __shared__ int last;
  __threadfence();
  __syncthreads();
  int* counter = counters + int64_t(b) * gridDim.x + blockIdx.x;
  if (tid == 0) last = atomicAdd(counter, 1) == nsplit - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  // The merge is on the step's critical path at batch 1 (one CTA, a chain of L2 round trips), so
  // it is laid out for few of them: (1) every split's (m, l) of every head in one round of loads
  // into shared memory; (2) per head, the split weights 2^(m_s - M) and L from there; (3) the
  // outputs, kOut per thread with kUnroll splits' loads in flight together.
  float* wts = sm;                    // [RP][nsplit]: m_s, then the split weights (merge area dead)
  float* ls = wts + RP * nsplit;      // [RP][nsplit]: l_s
  float* Ls = ls + RP * nsplit;       // [RP]
  for (int k = tid; k < nq * nsplit; k += kDecThreads) {
    const int r = k / nsplit, sp = k % nsplit;
    const float* pr = partial + ((int64_t(b) * d.H + hq0 + r) * nsplit + sp) * st;
    wts[r * nsplit + sp] = __ldcg(pr + hd);
    ls[r * nsplit + sp] = __ldcg(pr + hd + 1);
  }
  __syncthreads();
  for (int r = w; r < nq; r += kDecWarps) {
    float M = -INFINITY;
    for (int sp = lane; sp < nsplit; sp += 32) M = fmaxf(M, wts[r * nsplit + sp]);
    M = warp_max(M);
    float L = 0.f;
    for (int sp = lane; sp < nsplit; sp += 32) {
      const float ms = wts[r * nsplit + sp];
      const float e = ms == -INFINITY ? 0.f : exp2f(ms - M);
      wts[r * nsplit + sp] = e;
      L += ls[r * nsplit + sp] * e;
    }
    L = warp_sum(L);
    if (lane == 0) Ls[r] = L;
  }
  __syncthreads();
  constexpr int kOut = 4, kUnroll = 16;
  for (int k0 = tid; k0 < nq * hd; k0 += kOut * kDecThreads) {
    const float* pk[kOut];
    const float* wk[kOut];
    float O[kOut];
    for (int o = 0; o < kOut; ++o) {
      const int k = min(k0 + o * kDecThreads, nq * hd - 1), r = k / hd;
      pk[o] = partial + (int64_t(b) * d.H + hq0 + r) * nsplit * st + k % hd;
      wk[o] = wts + r * nsplit;
      O[o] = 0.f;
    }
#pragma unroll kUnroll
    for (int sp = 0; sp < nsplit; ++sp)
      for (int o = 0; o < kOut; ++o) O[o] += __ldcg(pk[o] + sp * st) * wk[o][sp];
    for (int o = 0; o < kOut; ++o) {
      const int k = k0 + o * kDecThreads;
      if (k < nq * hd) out[(int64_t(b) * d.H + hq0) * hd + k] = from_f<T>(O[o] / Ls[k / hd]);
    }
  }
  if (tid == 0) *counter = 0;  // every CTA of the group has counted: ready for the next launch
}

}  // namespace

// ---- decode attention: launch plan ---------------------------------------------------------------
namespace {
int dec_rp(int rep) { return rep <= 1 ? 1 : rep <= 2 ? 2 : rep <= 4 ? 4 : 8; }
int sm_count() {
  int dev = 0, n = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
    n = 132;
  return std::max(1, n);
}
struct DecodePlan {
  int rp, nch, nsplit, lpk;
  bool cluster;  // merge the splits in a thread-block cluster (else global partials + counter)
  size_t smem;
};
// MOSAIC_DECODE_LANES=runtime selects the scalar run-time lanes-per-key kernel for every head size (for
// comparisons; the default compiles lanes = 16 in).
// The tensor-core key loop for head_dim 128 unless MOSAIC_DECODE_MMA=0 (the scalar loop, for comparisons).
// H200, LLaMA-3-8B W4A16 at batch 1, prompt 2048: 402.0 -> 426.3 tok/s end to end, the attention's share of the
// step 0.51 -> 0.35 ms (bench/results/e2e-h200-2026-11-29-s17-attn-mma.md).
bool decode_mma() { return env_switch_on("MOSAIC_DECODE_MMA"); }
bool decode_fixed_lanes() {
  const char* e = std::getenv("MOSAIC_DECODE_LANES");
  return !(e && std::string(e) == "runtime");
}
// Splits: about 2 CTAs per SM in all (B x Hkv x head chunks x splits; MOSAIC_DECODE_CTAS_PER_SM
// overrides the 2, for tuning), at most kMaxSplits and at most one pass of keys per warp at full
// capacity.
int decode_ctas_per_sm() { return env_int("MOSAIC_DECODE_CTAS_PER_SM", 2, 1, 16); }
// MOSAIC_DECODE_SPLITS=N caps the splits per (sequence, kv head) (tuning: at batch 1 the merge of
// the splits is latency on the step's critical path). A cap only lowers the plan, so the scratch
// sized without it still fits.
int decode_max_splits() { return env_int("MOSAIC_DECODE_SPLITS", 0, 1, kMaxSplits); }
// MOSAIC_DECODE_CLUSTER=0 / 1 forces the global / the cluster merge of the splits (tests and tuning);
// unset, decode_split_plan (decode_plan.h) picks. Read per call like the other switches.
detail::ClusterMerge decode_cluster_mode() {
  const int v = env_int("MOSAIC_DECODE_CLUSTER", -1, 0, 1);
  return v < 0 ? detail::ClusterMerge::Auto : v == 1 ? detail::ClusterMerge::On : detail::ClusterMerge::Off;
}
// Bytes the kernel's shared memory must cover (layout at dec_inbox_offset): the ring or the merge
// area laid over it after the keys, the rope rows, the cluster merge's inbox.
size_t decode_smem_bytes(int rp, int hd) {
  return (dec_inbox_offset(rp, hd) + std::max(size_t(rp + 3) * hd, dec_inbox_floats(rp, hd))) * sizeof(float);
}
// Whether a launch with these dims runs the tensor-core key loop (the dispatch in attention_decode).
bool decode_uses_mma(const AttnDims& d) { return d.hd == kMmaHd && decode_mma() && decode_fixed_lanes(); }
// keys: the bound on the keys a sequence of this launch attends to (<= d.cap). mma: the plan of the
// tensor-core key loop (clusters up to kClusterMaxKeysPerCtaMma keys per CTA) or of the scalar one.
DecodePlan decode_plan(int B, const AttnDims& d, int sms, int64_t keys, detail::ClusterMerge mode, bool mma) {
  const int rep = d.H / d.Hkv, rp = dec_rp(rep), nch = (rep + rp - 1) / rp;
  int lpk = 1;
  while (lpk < (d.hd + 7) / 8) lpk <<= 1;
  const int64_t groups = int64_t(B) * d.Hkv * nch;
  const detail::DecodeSplits sp =
      detail::decode_split_plan(groups, keys, sms, decode_ctas_per_sm(), kDecWarps * (32 / lpk), decode_max_splits(),
                                mode, mma ? detail::kClusterMaxKeysPerCtaMma : detail::kClusterMaxKeysPerCta);
  return {rp, nch, sp.nsplit, lpk, sp.cluster, decode_smem_bytes(rp, d.hd)};
}
size_t decode_counter_bytes(int B, const AttnDims& d) {
  const int rep = d.H / d.Hkv, rp = dec_rp(rep);
  return (size_t(B) * d.Hkv * ((rep + rp - 1) / rp) * sizeof(int) + 255) / 256 * 256;
}
}  // namespace

// Dynamic shared memory over 48 KB (the ring) and the largest carveout (several CTAs per SM).
template <typename K>
bool decode_opt_in(K* kernel, int rp) {
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(decode_smem_bytes(rp, 256)));
  cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, int(cudaSharedmemCarveoutMaxShared));
  cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);  // clusters of up to 16 splits
  cudaGetLastError();  // (a GPU without clusters: the cluster merge is then never chosen)
  return true;
}

// Whether `nsplit` CTAs of this kernel fit as one cluster on this GPU (cached per kernel and size).
template <typename K>
bool cluster_fits(K* kernel, int nsplit, size_t smem) {
  static std::mutex mu;
  static std::map<std::pair<const void*, int>, bool> known;
  const std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_pair(reinterpret_cast<const void*>(kernel), nsplit);
  if (auto it = known.find(key); it != known.end()) return it->second;
  cudaLaunchAttribute attr[1] = {cuda::cluster_z_attr(nsplit)};
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(1, 1, unsigned(nsplit));
  cfg.blockDim = dim3(kDecThreads);
  cfg.dynamicSmemBytes = smem;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  int n = 0;
  const bool ok = cudaOccupancyMaxActiveClusters(&n, kernel, &cfg) == cudaSuccess && n > 0;
  cudaGetLastError();
  return known[key] = ok;
}

size_t attention_decode_scratch_bytes(int max_B, const AttnDims& d) {
  const int sms = sm_count();
  size_t part = 0;
  for (int B = 1; B <= max_B; ++B) {
    // The global merge at the largest key bound has the most splits (a cluster plan never has more, and
    // a cluster that does not fit falls back to the global merge with its own, fewer splits); both key
    // loops' plans, as MOSAIC_DECODE_MMA may switch between them after the engine sized its scratch.
    for (bool mma : {false, true}) {
      const DecodePlan p = decode_plan(B, d, sms, d.cap, detail::ClusterMerge::Off, mma);
      if (p.nsplit > 1) part = std::max(part, size_t(B) * d.H * p.nsplit * (d.hd + 2) * sizeof(float));
    }
  }
  return decode_counter_bytes(max_B, d) + part;
}

void attention_decode(Act a, const void* qkv, const int32_t* pos, const int32_t* slot, int B, const AttnDims& d,
                      const float* q_norm, const float* k_norm, float eps, const float* inv_freq, void* k_cache,
                      void* v_cache, void* scratch, int max_B, void* out, cudaStream_t s, int64_t keys_bound) {
  if (B <= 0) return;
  const bool mma = decode_uses_mma(d);
  const DecodePlan p = decode_plan(B, d, sm_count(), keys_bound > 0 ? std::min(keys_bound, d.cap) : d.cap,
                                   decode_cluster_mode(), mma);
  int* counters = static_cast<int*>(scratch);
  float* partial = reinterpret_cast<float*>(static_cast<char*>(scratch) + decode_counter_bytes(max_B, d));
  const float qscale = 1.4426950408889634f / sqrtf(float(d.hd));  // log2(e) / sqrt(hd): base-2 softmax
  const dim3 grid(unsigned(d.Hkv * p.nch), unsigned(B), unsigned(p.nsplit));
  // Over 48 KB of dynamic shared memory needs an opt-in per kernel (once, for the largest plan).
#define MOSAIC_DEC(RP, VEC)                                                                                      \
  MOSAIC_DISPATCH(a, {                                                                                           \
    const auto kernel = attention_decode_k<T, RP, VEC, LPK, MMA>;                                                \
    static const bool opt_in = decode_opt_in(kernel, RP);                                                        \
    (void)opt_in;                                                                                                \
    const int cz = p.cluster && cluster_fits(kernel, p.nsplit, p.smem) ? p.nsplit : 1;                          \
    check_cuda(cuda::launch_maybe_pdl_cluster(cuda::pdl_env_enabled(), cz, kernel, grid, dim3(kDecThreads), p.smem, s, \
                                              static_cast<const T*>(qkv), pos, slot, d, q_norm, k_norm, eps,      \
                                              inv_freq, qscale, static_cast<T*>(k_cache), static_cast<T*>(v_cache), \
                                              partial, counters, static_cast<T*>(out), cz > 1 ? 1 : 0),           \
               "attention_decode launch");                                                                      \
  })
#define MOSAIC_DEC_RP(VEC)              \
  if (p.rp == 1) MOSAIC_DEC(1, VEC);    \
  else if (p.rp == 2) MOSAIC_DEC(2, VEC); \
  else if (p.rp == 4) MOSAIC_DEC(4, VEC); \
  else MOSAIC_DEC(8, VEC)
  if (mma) {
    constexpr int LPK = 16;
    constexpr bool MMA = true;
    MOSAIC_DEC_RP(true);
  } else if (d.hd % 8 == 0 && p.lpk == 16 && decode_fixed_lanes()) {
    constexpr int LPK = 16;
    constexpr bool MMA = false;
    MOSAIC_DEC_RP(true);
  } else if (d.hd % 8 == 0) {
    constexpr int LPK = 0;
    constexpr bool MMA = false;
    MOSAIC_DEC_RP(true);
  } else {
    constexpr int LPK = 0;
    constexpr bool MMA = false;
    MOSAIC_DEC_RP(false);
  }
#undef MOSAIC_DEC_RP
#undef MOSAIC_DEC
}

}  // namespace mosaic::gpu::kern
