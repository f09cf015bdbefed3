// CUDA kernels of the GPU engine; contracts in kernels.h. FP32 math everywhere, activations
// loaded from / stored to FP16 or BF16. Templates on the activation type T; the launchers
// dispatch on Act.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdlib>
#include <string>

#include "cuda/pdl.cuh"
#include "gpu/act_quant.cuh"
#include "gpu/act_quant.h"
#include "gpu/kernels.h"

namespace mosaic::gpu {

const char* act_name(Act a) { return a == Act::BF16 ? "bf16" : "fp16"; }

namespace kern {
namespace {

__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ __half from_f<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ double warp_sum_d(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Block-wide reductions (blockDim a multiple of 32, <= 1024); every thread gets the result.
__device__ float block_sum(float v) {
  __shared__ float sh[32];
  __shared__ float total;
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  v = warp_sum(v);
  if (lane == 0) sh[w] = v;
  __syncthreads();
  if (w == 0) {
    float x = lane < int(blockDim.x >> 5) ? sh[lane] : 0.f;
    x = warp_sum(x);
    if (lane == 0) total = x;
  }
  __syncthreads();
  return total;
}
__device__ float block_max(float v) {
  __shared__ float sh[32];
  __shared__ float total;
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  v = warp_max(v);
  if (lane == 0) sh[w] = v;
  __syncthreads();
  if (w == 0) {
    float x = lane < int(blockDim.x >> 5) ? sh[lane] : -INFINITY;
    x = warp_max(x);
    if (lane == 0) total = x;
  }
  __syncthreads();
  return total;
}
__device__ double block_sum_d(double v) {
  __shared__ double sh[32];
  __shared__ double total;
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  v = warp_sum_d(v);
  if (lane == 0) sh[w] = v;
  __syncthreads();
  if (w == 0) {
    double x = lane < int(blockDim.x >> 5) ? sh[lane] : 0.0;
    x = warp_sum_d(x);
    if (lane == 0) total = x;
  }
  __syncthreads();
  return total;
}

// Programmatic dependent launch (PDL, cuda/pdl.cuh): kernels launched with launch_pdl may start
// while the previous kernel of the stream is finishing; pdl_wait() blocks until it has completed
// and its writes are visible, and right after it each kernel lets the next one start
// (pdl_launch_dependents: the next GEMM prefetches its weights during this kernel).
using cuda::pdl_launch_dependents;
using cuda::pdl_wait;

// ---- embedding, norms, element-wise ------------------------------------------------------------
template <typename T>
__global__ void embedding_k(const T* table, int64_t D, const int32_t* tok, float* x) {
  const int64_t r = blockIdx.x;
  const T* src = table + int64_t(tok[r]) * D;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) x[r * D + i] = to_f(src[i]);
}

template <typename T>
__global__ void add_rms_norm_k(float* x, const T* delta, const float* w, int64_t D, float eps, T* out) {
  pdl_wait();  // delta (and x) come from the kernels before
  pdl_launch_dependents();
  const int64_t r = blockIdx.x;
  float* xr = x + r * D;
  float ss = 0.f;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    float v = xr[i];
    if (delta) {
      v += to_f(delta[r * D + i]);
      xr[i] = v;
    }
    ss += v * v;
  }
  const float rs = rsqrtf(block_sum(ss) / float(D) + eps);
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) out[r * D + i] = from_f<T>(xr[i] * rs * w[i]);
}

// add_rms_norm_k's math with the row held in registers (PER values per thread: aq::held_per_thread),
// then quantized per token (RowQuant) before its only store. Launched with add_rms_norm_k's thread
// count, so the sum of squares, and so every value, is the same as the unfused kernel's.
template <typename T, int PER>
__global__ void __launch_bounds__(1024) add_rms_norm_quant_k(float* x, const T* delta, const float* w, int64_t D, float eps, T* out, float top,
                                     bool fp8) {
  pdl_wait();  // delta (and x) come from the kernels before
  pdl_launch_dependents();
  const int64_t r = blockIdx.x;
  float* xr = x + r * D;
  float v[PER];
  float ss = 0.f;
#pragma unroll
  for (int j = 0; j < PER; ++j) {
    const int64_t i = threadIdx.x + int64_t(j) * blockDim.x;
    v[j] = 0.f;
    if (i < D) {
      v[j] = xr[i];
      if (delta) {
        v[j] += to_f(delta[r * D + i]);
        xr[i] = v[j];
      }
      ss += v[j] * v[j];
    }
  }
  const float rs = rsqrtf(block_sum(ss) / float(D) + eps);
#pragma unroll
  for (int j = 0; j < PER; ++j) {
    const int64_t i = threadIdx.x + int64_t(j) * blockDim.x;
    if (i < D) v[j] = to_f(from_f<T>(v[j] * rs * w[i]));
  }
  aq::quantize_held(v, D, top, fp8);
  aq::store_held(v, out + r * D, D);
}

template <typename T>
__global__ void silu_mul_k(const T* gu, int64_t I, T* out) {
  pdl_wait();  // gu comes from the gate/up GEMM
  pdl_launch_dependents();
  const int64_t r = blockIdx.y;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < I; i += int64_t(gridDim.x) * blockDim.x) {
    const float g = to_f(gu[r * 2 * I + i]), u = to_f(gu[r * 2 * I + I + i]);
    out[r * I + i] = from_f<T>(g / (1.f + expf(-g)) * u);
  }
}

// One CTA per row (a row's max is needed before any code): silu_mul_k's math on a row held in
// registers (PER values per thread: aq::held_per_thread), then the row quantized before its only store.
template <typename T, int PER>
__global__ void __launch_bounds__(1024) silu_mul_quant_k(const T* gu, int64_t I, T* out, float top, bool fp8) {
  pdl_wait();  // gu comes from the gate/up GEMM
  pdl_launch_dependents();
  const int64_t r = blockIdx.x;
  float v[PER];
#pragma unroll
  for (int j = 0; j < PER; ++j) {
    const int64_t i = threadIdx.x + int64_t(j) * blockDim.x;
    v[j] = 0.f;
    if (i < I) {
      const float g = to_f(gu[r * 2 * I + i]), u = to_f(gu[r * 2 * I + I + i]);
      v[j] = to_f(from_f<T>(g / (1.f + expf(-g)) * u));
    }
  }
  aq::quantize_held(v, I, top, fp8);
  aq::store_held(v, out + r * I, I);
}

// ---- q/k norm + RoPE + KV cache append -----------------------------------------------------------
// Block-wide, on the heads of one token staged in shared memory (fp32, hd floats per row): rows
// [0, nq) are query heads (RMSNorm with q_norm when given), [nq, nq + nk) key heads (k_norm),
// then RoPE at `pos` on all nq + nk rows (angle = float(pos) * inv_freq[i] in fp32, cos/sin in
// fp64, rotate-half pairs: as the CPU RopeTable). cs: hd floats of shared scratch. Used by the
// prefill append (qkv_rope_cache_k) and the decode attention, which applies it on the fly.
__device__ void norm_rope_rows(float* rows, int nq, int nk, int hd, const float* q_norm, const float* k_norm,
                               float eps, int64_t pos, const float* inv_freq, float* cs) {
  const int half = hd / 2;
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    double sd, cd;
    sincos(double(float(pos) * inv_freq[i]), &sd, &cd);
    cs[i] = float(cd);
    cs[half + i] = float(sd);
  }
  const int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
  for (int r = threadIdx.x >> 5; r < nq + nk; r += nw) {  // one warp per row
    const float* w = r < nq ? q_norm : k_norm;
    if (!w) continue;
    float* x = rows + r * hd;
    float ss = 0.f;
    for (int i = lane; i < hd; i += 32) ss += x[i] * x[i];
    const float rs = rsqrtf(warp_sum(ss) / float(hd) + eps);
    for (int i = lane; i < hd; i += 32) x[i] = x[i] * rs * w[i];
  }
  __syncthreads();
  for (int k = threadIdx.x; k < (nq + nk) * half; k += blockDim.x) {
    float* x = rows + (k / half) * hd;
    const int i = k % half;
    const float a = x[i], b = x[i + half], c = cs[i], s = cs[half + i];
    x[i] = a * c - b * s;
    x[i + half] = b * c + a * s;
  }
  __syncthreads();
}

// grid (rows, ceil(nh / kRopeHeads)), block kRopeThreads: heads j0 .. j0 + n - 1 of token r's
// fused qkv row (q heads, then k, then v) -> q_out, or the cache of slot[r] at pos[r].
constexpr int kRopeHeads = 8, kRopeThreads = 128;

template <typename T>
__global__ void qkv_rope_cache_k(const T* qkv, const int32_t* pos_a, const int32_t* slot_a, AttnDims d,
                                 const float* q_norm, const float* k_norm, float eps, const float* inv_freq, T* q_out,
                                 T* kc, T* vc) {
  extern __shared__ float sm[];  // [kRopeHeads][hd] rows, then [hd] cos/sin
  const int r = blockIdx.x, hd = d.hd, nh = d.H + 2 * d.Hkv;
  const int j0 = blockIdx.y * kRopeHeads, n = min(kRopeHeads, nh - j0);
  const int64_t pos = pos_a[r], slot = slot_a[r];
  const T* src = qkv + (int64_t(r) * nh + j0) * hd;
  for (int i = threadIdx.x; i < n * hd; i += blockDim.x) sm[i] = to_f(src[i]);
  __syncthreads();
  const int nq = max(0, min(j0 + n, d.H) - j0), nk = max(0, min(j0 + n, d.H + d.Hkv) - max(j0, d.H));
  norm_rope_rows(sm, nq, nk, hd, q_norm, k_norm, eps, pos, inv_freq, sm + kRopeHeads * hd);
  for (int i = threadIdx.x; i < n * hd; i += blockDim.x) {
    const int j = j0 + i / hd, e = i % hd;
    T* dst = j < d.H            ? q_out + (int64_t(r) * d.H + j) * hd
             : j < d.H + d.Hkv ? kc + ((slot * d.Hkv + (j - d.H)) * d.cap + pos) * hd
                               : vc + ((slot * d.Hkv + (j - d.H - d.Hkv)) * d.cap + pos) * hd;
    dst[e] = from_f<T>(sm[i]);
  }
}

// ---- attention ------------------------------------------------------------------------------------
template <typename T>
__global__ void causal_softmax_k(const float* S, int64_t T_, int64_t Tk, int64_t pos0, T* P) {
  const int64_t row = blockIdx.x;  // head * T + t
  const int64_t t = row % T_;
  const int64_t lim = pos0 + t;  // last visible key
  const float* s = S + row * Tk;
  T* p = P + row * Tk;
  float m = -INFINITY;
  for (int64_t j = threadIdx.x; j <= lim; j += blockDim.x) m = fmaxf(m, s[j]);
  m = block_max(m);
  float sum = 0.f;
  for (int64_t j = threadIdx.x; j <= lim; j += blockDim.x) sum += expf(s[j] - m);
  const float inv = 1.f / block_sum(sum);
  for (int64_t j = threadIdx.x; j < Tk; j += blockDim.x) p[j] = from_f<T>(j <= lim ? expf(s[j] - m) * inv : 0.f);
}

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
//  - meanwhile the CTA stages its q heads and the new k/v row in shared memory, normalizes and
//    rotates them (norm_rope_rows) and rounds them to the activation dtype (as the cache holds
//    them); CTA (s = 0, c = 0) appends k/v at pos, and key pos starts the state of its warp 0.
//  - with programmatic dependent launch the key copies are issued before pdl_wait(), so they
//    overlap the end of the qkv GEMM; everything that reads this step's qkv comes after it.
//  - the warps merge in shared memory; with one split the CTA writes the output, else its partial
//    (o[hd] unnormalized, m, l), and the last CTA of the (b, g, c) group to finish (an atomic
//    counter, which it resets to 0) merges the splits: no second kernel.
constexpr int kDecWarps = 4, kDecThreads = 32 * kDecWarps, kMaxSplits = 256;
constexpr int kDecPasses = 2, kDecStages = 8;
constexpr size_t kDecRingBytes = size_t(kDecWarps) * kDecStages * kDecPasses * 2 * 32 * 16;

__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
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

// LPK: lanes per key known at compile time (16: hd 72 .. 128, LLaMA-3 / Qwen3), or 0 = from hd
// at run time. The key loop has no per-row branches, so the U x RP dot products and their lane
// reductions are independent chains the scheduler interleaves; with LPK known the reductions
// unroll too. (The previous loop reduced one (u, r) at a time inside `if (r < nq)`: about 2 us
// per step per warp. H100, LLaMA-3-8B shapes, 2145 cached positions, us per layer, previous /
// this loop with lanes at run time / LPK = 16: B=1 24.7 / 19.2 / 16.9, B=16 110.5 / 71.5 / 69.0;
// the previous figures from an earlier call, bench/results/e2e-h100-2026-11-28-v3.md.)
template <typename T, int RP, bool VEC, int LPK>
__global__ void __launch_bounds__(kDecThreads, RP >= 8 ? 2 : 3)
    attention_decode_k(const T* qkv, const int32_t* pos_a, const int32_t* slot_a, AttnDims d, const float* q_norm,
                       const float* k_norm, float eps, const float* inv_freq, float qscale, T* kc, T* vc,
                       float* partial, int* counters, T* out) {
  constexpr int U = kDecPasses, S = kDecStages;
  extern __shared__ __align__(16) float sm[];  // [ring kDecRingBytes][rope rows]; after the keys: merge area
  const int hd = d.hd, rep = d.H / d.Hkv, nch = (rep + RP - 1) / RP, nh = d.H + 2 * d.Hkv;
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
  const int per = ((nkeys + nwarps - 1) / nwarps + kpp - 1) / kpp * kpp;
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
  for (int t = 0; t < S - 1; ++t) {
    if (t < nsteps) issue(t);
    cp_async_commit();
  }
  // Up to here only pos/slot (written by the previous step's advance) and cached keys 0 .. pos-1
  // (appended by earlier steps) were read: with PDL this overlaps the qkv GEMM's tail. The fused
  // qkv row, the partials/counters and the cache row pos come after the wait.
  pdl_wait();
  pdl_launch_dependents();

  // Prologue: q heads, k and v of this token -> norm + RoPE -> rounded to T.
  float* rows = sm + kDecRingBytes / sizeof(float);  // [nq + 2][hd]
  float* cs = rows + (RP + 2) * hd;                   // [hd]
  const T* src = qkv + int64_t(b) * nh * hd;
  for (int i = tid; i < (nq + 2) * hd; i += kDecThreads) {
    const int r = i / hd;
    const int j = r < nq ? hq0 + r : r == nq ? d.H + g : d.H + d.Hkv + g;
    rows[i] = to_f(src[int64_t(j) * hd + i % hd]);
  }
  __syncthreads();
  norm_rope_rows(rows, nq, 1, hd, q_norm, k_norm, eps, pos, inv_freq, cs);
  if (split == 0 && c == 0)
    for (int i = tid; i < 2 * hd; i += kDecThreads)
      (i < hd ? kc : vc)[(slot * d.Hkv + g) * d.cap * hd + pos * hd + i % hd] = from_f<T>(rows[nq * hd + i]);
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
  float* macc = sm;                            // [kDecWarps][RP][hd]
  float* mm = macc + kDecWarps * RP * hd;      // [kDecWarps][RP]
  float* ml = mm + kDecWarps * RP;             // [kDecWarps][RP]
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
  __syncthreads();
  const int64_t st = hd + 2;
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

// ---- sampling, scoring -----------------------------------------------------------------------------
__device__ __forceinline__ void better(float& bv, int& bi, float v, int i) {
  if (v > bv || (v == bv && i < bi)) {
    bv = v;
    bi = i;
  }
}

// Block argmax of vals (per-thread candidates already reduced into (bv, bi)).
__device__ int block_argmax(float bv, int bi) {
  __shared__ float sv[32];
  __shared__ int si[32];
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    better(bv, bi, ov, oi);
  }
  if (lane == 0) {
    sv[w] = bv;
    si[w] = bi;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int k = 1; k < int(blockDim.x >> 5); ++k) better(bv, bi, sv[k], si[k]);
    si[0] = bi;
  }
  __syncthreads();
  return si[0];
}

// Two stages: grid (rows, kArgBlocks) blocks each find the best of a slice (4 independent loads
// in flight per thread), then one warp per row picks the best slice (ties -> lowest id).
constexpr int kArgBlocks = 32;
__global__ void argmax_partial_k(const float* logits, int64_t V, float* pv, int* pi) {
  const float* x = logits + int64_t(blockIdx.x) * V;
  const int64_t per = (V + gridDim.y - 1) / gridDim.y;
  const int64_t lo = int64_t(blockIdx.y) * per, hi = min(V, lo + per);
  float bv = -INFINITY;
  int bi = 0x7fffffff;
  int64_t i = lo + threadIdx.x;
  for (; i + 3 * int64_t(blockDim.x) < hi; i += 4 * int64_t(blockDim.x)) {
    const float a0 = x[i], a1 = x[i + blockDim.x], a2 = x[i + 2 * blockDim.x], a3 = x[i + 3 * blockDim.x];
    better(bv, bi, a0, int(i));
    better(bv, bi, a1, int(i + blockDim.x));
    better(bv, bi, a2, int(i + 2 * blockDim.x));
    better(bv, bi, a3, int(i + 3 * blockDim.x));
  }
  for (; i < hi; i += blockDim.x) better(bv, bi, x[i], int(i));
  const int r = block_argmax(bv, bi);
  if (threadIdx.x == 0) {
    pv[blockIdx.x * gridDim.y + blockIdx.y] = r == 0x7fffffff ? -INFINITY : x[r];
    pi[blockIdx.x * gridDim.y + blockIdx.y] = r;
  }
}
__global__ void argmax_final_k(const float* pv, const int* pi, int nb, int32_t* out) {
  float bv = -INFINITY;
  int bi = 0x7fffffff;
  for (int k = threadIdx.x; k < nb; k += 32) better(bv, bi, pv[blockIdx.x * nb + k], pi[blockIdx.x * nb + k]);
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    better(bv, bi, ov, oi);
  }
  if (threadIdx.x == 0) out[blockIdx.x] = bi == 0x7fffffff ? 0 : bi;
}

__device__ __forceinline__ uint64_t mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
__device__ __forceinline__ float unit_open(uint64_t h) {  // (0, 1)
  return (float((h >> 40) & 0xffffff) + 0.5f) * (1.0f / 16777216.0f);
}

__global__ void sample_temperature_k(const float* logits, int64_t V, float t, uint64_t seed, uint64_t step, int32_t* out) {
  const float* x = logits + int64_t(blockIdx.x) * V;
  const uint64_t base = mix64(seed ^ mix64(step * 0x100000001b3ull + blockIdx.x));
  float bv = -INFINITY;
  int bi = 0x7fffffff;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
    const float u = unit_open(mix64(base + uint64_t(i)));
    better(bv, bi, x[i] / t - logf(-logf(u)), int(i));
  }
  const int r = block_argmax(bv, bi);
  if (threadIdx.x == 0) out[blockIdx.x] = r == 0x7fffffff ? 0 : r;
}

__global__ void advance_k(const int32_t* next, int32_t* tok, int32_t* pos, int B) {
  const int b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b < B) {
    tok[b] = next[b];
    pos[b] += 1;
  }
}

__global__ void row_nll_k(const float* logits, int64_t V, const int32_t* target, double* out) {
  const int64_t r = blockIdx.x;
  const float* x = logits + r * V;
  if (target[r] < 0) {
    if (threadIdx.x == 0) out[r] = 0.0;
    return;
  }
  float m = -INFINITY;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) m = fmaxf(m, x[i]);
  m = block_max(m);
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) s += double(expf(x[i] - m));
  s = block_sum_d(s);
  if (threadIdx.x == 0) out[r] = double(m) + log(s) - double(x[target[r]]);
}

// ---- fills and conversions -------------------------------------------------------------------------
template <typename T>
__global__ void fill_random_k(T* w, int64_t n, float scale, uint64_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float u = unit_open(mix64(seed * 0x9e3779b97f4a7c15ull + uint64_t(i))) * 2.f - 1.f;
    w[i] = from_f<T>(scale * u);
  }
}
__global__ void fill_f32_k(float* w, int64_t n, float lo, float hi, uint64_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    w[i] = lo + (hi - lo) * unit_open(mix64(seed * 0x9e3779b97f4a7c15ull + uint64_t(i)));
}
template <typename T>
__global__ void f32_to_act_k(const float* s, T* d, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    d[i] = from_f<T>(s[i]);
}
template <typename T>
__global__ void act_to_f32_k(const T* s, float* d, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    d[i] = to_f(s[i]);
}

int grid_for(int64_t n, int threads) { return int(std::min<int64_t>((n + threads - 1) / threads, 65535 * 4)); }
int norm_threads(int64_t D) { return D >= 4096 ? 1024 : D >= 1024 ? 512 : D >= 256 ? 256 : 128; }

// Launch with programmatic stream serialization (PDL, see pdl_wait) unless MOSAIC_PDL=0; the
// kernel must call pdl_wait() before it reads what the previous kernel writes. Inside a captured
// decode step this becomes a programmatic edge of the CUDA graph.
template <typename... KArgs, typename... Args>
void launch_pdl(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t s, Args... args) {
  cuda::launch_maybe_pdl(cuda::pdl_env_enabled(), kernel, grid, block, smem, s, args...);
}

}  // namespace

#define MOSAIC_DISPATCH(a, ...)          \
  do {                                   \
    if ((a) == Act::BF16) {              \
      using T = __nv_bfloat16;           \
      __VA_ARGS__;                       \
    } else {                             \
      using T = __half;                  \
      __VA_ARGS__;                       \
    }                                    \
  } while (0)

void embedding(Act a, const void* table, int64_t D, const int32_t* tok, int64_t rows, float* x, cudaStream_t s) {
  if (rows <= 0) return;
  MOSAIC_DISPATCH(a, embedding_k<T><<<unsigned(rows), 256, 0, s>>>(static_cast<const T*>(table), D, tok, x));
}

void add_rms_norm(Act a, float* x, const void* delta, const float* w, int64_t rows, int64_t D, float eps, void* out,
                  cudaStream_t s, RowQuant q) {
  if (rows <= 0) return;
  const int threads = norm_threads(D);
  const int per = q.on() ? aq::held_per_thread(D, threads) : 0;
#define MOSAIC_NORM_Q(PER)                                                                                           \
  MOSAIC_DISPATCH(a, launch_pdl(add_rms_norm_quant_k<T, PER>, dim3(unsigned(rows)), dim3(unsigned(threads)), 0, s, x, \
                                static_cast<const T*>(delta), w, D, eps, static_cast<T*>(out), q.top(), q.fp8))
  if (per == 8) MOSAIC_NORM_Q(8);
  else if (per == 16) MOSAIC_NORM_Q(16);
#undef MOSAIC_NORM_Q
  if (per) return;
  MOSAIC_DISPATCH(a, launch_pdl(add_rms_norm_k<T>, dim3(unsigned(rows)), dim3(unsigned(threads)), 0, s, x,
                                static_cast<const T*>(delta), w, D, eps, static_cast<T*>(out)));
  if (q.on()) act_fake_quant(a, out, out, rows, D, q.bits, q.fp8, s);  // a row too long to hold: two passes
}

void qkv_rope_cache(Act a, const void* qkv, int64_t rows, const int32_t* pos, const int32_t* slot, const AttnDims& d,
                    const float* q_norm, const float* k_norm, float eps, const float* inv_freq, void* q_out,
                    void* k_cache, void* v_cache, cudaStream_t s) {
  if (rows <= 0) return;
  const int nh = d.H + 2 * d.Hkv;
  const dim3 grid(unsigned(rows), unsigned((nh + kRopeHeads - 1) / kRopeHeads));
  const size_t smem = size_t(kRopeHeads + 1) * d.hd * sizeof(float);
  MOSAIC_DISPATCH(a, qkv_rope_cache_k<T><<<grid, kRopeThreads, smem, s>>>(
                         static_cast<const T*>(qkv), pos, slot, d, q_norm, k_norm, eps, inv_freq,
                         static_cast<T*>(q_out), static_cast<T*>(k_cache), static_cast<T*>(v_cache)));
}

void causal_softmax(Act a, const float* S, int64_t heads, int64_t T_, int64_t Tk, int64_t pos0, void* P,
                    cudaStream_t s) {
  if (heads * T_ <= 0) return;
  MOSAIC_DISPATCH(a, causal_softmax_k<T><<<unsigned(heads * T_), 256, 0, s>>>(S, T_, Tk, pos0, static_cast<T*>(P)));
}

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
  size_t smem;
};
// MOSAIC_DECODE_LANES=runtime selects the run-time lanes-per-key kernel for every head size (for
// comparisons; the default compiles lanes = 16 in).
bool decode_fixed_lanes() {
  const char* e = std::getenv("MOSAIC_DECODE_LANES");
  return !(e && std::string(e) == "runtime");
}
// Splits: about 2 CTAs per SM in all (B x Hkv x head chunks x splits; MOSAIC_DECODE_CTAS_PER_SM
// overrides the 2, for tuning), at most kMaxSplits and at most one pass of keys per warp at full
// capacity.
int decode_ctas_per_sm() {
  const char* e = std::getenv("MOSAIC_DECODE_CTAS_PER_SM");
  const int v = e ? std::atoi(e) : 0;
  return v >= 1 && v <= 16 ? v : 2;
}
// MOSAIC_DECODE_SPLITS=N caps the splits per (sequence, kv head) (tuning: at batch 1 the merge of
// the splits is latency on the step's critical path). A cap only lowers the plan, so the scratch
// sized without it still fits.
int decode_max_splits() {
  const char* e = std::getenv("MOSAIC_DECODE_SPLITS");
  const int v = e ? std::atoi(e) : 0;
  return v >= 1 && v <= kMaxSplits ? v : 0;
}
DecodePlan decode_plan(int B, const AttnDims& d, int sms) {
  const int rep = d.H / d.Hkv, rp = dec_rp(rep), nch = (rep + rp - 1) / rp;
  int lpk = 1;
  while (lpk < (d.hd + 7) / 8) lpk <<= 1;
  const int64_t groups = int64_t(B) * d.Hkv * nch, target = int64_t(decode_ctas_per_sm()) * sms;
  const int64_t by_cap = std::max<int64_t>(1, d.cap / (int64_t(kDecWarps) * (32 / lpk)));
  int nsplit = int(std::clamp<int64_t>((target + groups - 1) / groups, 1, std::min<int64_t>(kMaxSplits, by_cap)));
  if (const int cap = decode_max_splits(); cap > 0) nsplit = std::min(nsplit, cap);
  // The ring, then the rope rows; the merge and combine areas (<= 33 KB) overlap the ring.
  return {rp, nch, nsplit, lpk, kDecRingBytes + size_t(rp + 3) * d.hd * sizeof(float)};
}
size_t decode_counter_bytes(int B, const AttnDims& d) {
  const int rep = d.H / d.Hkv, rp = dec_rp(rep);
  return (size_t(B) * d.Hkv * ((rep + rp - 1) / rp) * sizeof(int) + 255) / 256 * 256;
}
}  // namespace

// Dynamic shared memory over 48 KB (the ring) and the largest carveout (several CTAs per SM).
template <typename K>
bool decode_opt_in(K* kernel, int rp) {
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                       int(kDecRingBytes + size_t(rp + 3) * 256 * sizeof(float)));
  cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, int(cudaSharedmemCarveoutMaxShared));
  return true;
}

size_t attention_decode_scratch_bytes(int max_B, const AttnDims& d) {
  const int sms = sm_count();
  size_t part = 0;
  for (int B = 1; B <= max_B; ++B) {
    const DecodePlan p = decode_plan(B, d, sms);
    if (p.nsplit > 1) part = std::max(part, size_t(B) * d.H * p.nsplit * (d.hd + 2) * sizeof(float));
  }
  return decode_counter_bytes(max_B, d) + part;
}

void attention_decode(Act a, const void* qkv, const int32_t* pos, const int32_t* slot, int B, const AttnDims& d,
                      const float* q_norm, const float* k_norm, float eps, const float* inv_freq, void* k_cache,
                      void* v_cache, void* scratch, int max_B, void* out, cudaStream_t s) {
  if (B <= 0) return;
  const DecodePlan p = decode_plan(B, d, sm_count());
  int* counters = static_cast<int*>(scratch);
  float* partial = reinterpret_cast<float*>(static_cast<char*>(scratch) + decode_counter_bytes(max_B, d));
  const float qscale = 1.4426950408889634f / sqrtf(float(d.hd));  // log2(e) / sqrt(hd): base-2 softmax
  const dim3 grid(unsigned(d.Hkv * p.nch), unsigned(B), unsigned(p.nsplit));
  // Over 48 KB of dynamic shared memory needs an opt-in per kernel (once, for the largest plan).
#define MOSAIC_DEC(RP, VEC)                                                                                      \
  MOSAIC_DISPATCH(a, {                                                                                           \
    static const bool opt_in = decode_opt_in(attention_decode_k<T, RP, VEC, LPK>, RP);                          \
    (void)opt_in;                                                                                                \
    launch_pdl(attention_decode_k<T, RP, VEC, LPK>, grid, dim3(kDecThreads), p.smem, s, static_cast<const T*>(qkv),  \
               pos, slot, d, q_norm, k_norm, eps, inv_freq, qscale, static_cast<T*>(k_cache),                    \
               static_cast<T*>(v_cache), partial, counters, static_cast<T*>(out));                               \
  })
#define MOSAIC_DEC_RP(VEC)              \
  if (p.rp == 1) MOSAIC_DEC(1, VEC);    \
  else if (p.rp == 2) MOSAIC_DEC(2, VEC); \
  else if (p.rp == 4) MOSAIC_DEC(4, VEC); \
  else MOSAIC_DEC(8, VEC)
  if (d.hd % 8 == 0 && p.lpk == 16 && decode_fixed_lanes()) {
    constexpr int LPK = 16;
    MOSAIC_DEC_RP(true);
  } else if (d.hd % 8 == 0) {
    constexpr int LPK = 0;
    MOSAIC_DEC_RP(true);
  } else {
    constexpr int LPK = 0;
    MOSAIC_DEC_RP(false);
  }
#undef MOSAIC_DEC_RP
#undef MOSAIC_DEC
}

void silu_mul(Act a, const void* gu, int64_t rows, int64_t I, void* out, cudaStream_t s, RowQuant q) {
  if (rows <= 0) return;
  constexpr int kQuantThreads = 1024;  // decode has a few rows: as many threads per row as a CTA takes
  const int per = q.on() ? aq::held_per_thread(I, kQuantThreads) : 0;
#define MOSAIC_SILU_Q(PER)                                                                                    \
  MOSAIC_DISPATCH(a, launch_pdl(silu_mul_quant_k<T, PER>, dim3(unsigned(rows)), dim3(kQuantThreads), 0, s,     \
                                static_cast<const T*>(gu), I, static_cast<T*>(out), q.top(), q.fp8))
  if (per == 8) MOSAIC_SILU_Q(8);
  else if (per == 16) MOSAIC_SILU_Q(16);
#undef MOSAIC_SILU_Q
  if (per) return;
  const dim3 grid(unsigned(std::min<int64_t>((I + 255) / 256, 64)), unsigned(rows));
  MOSAIC_DISPATCH(a, launch_pdl(silu_mul_k<T>, grid, dim3(256), 0, s, static_cast<const T*>(gu), I, static_cast<T*>(out)));
  if (q.on()) act_fake_quant(a, out, out, rows, I, q.bits, q.fp8, s);  // a row too long to hold: two passes
}

size_t argmax_scratch_bytes(int64_t rows) { return size_t(rows) * kArgBlocks * (sizeof(float) + sizeof(int)); }

void argmax(const float* logits, int64_t rows, int64_t V, int32_t* out, void* scratch, cudaStream_t s) {
  if (rows <= 0) return;
  const int nb = int(std::min<int64_t>(kArgBlocks, (V + 2047) / 2048));
  float* pv = static_cast<float*>(scratch);
  int* pi = reinterpret_cast<int*>(pv + rows * kArgBlocks);
  argmax_partial_k<<<dim3(unsigned(rows), unsigned(nb)), 256, 0, s>>>(logits, V, pv, pi);
  argmax_final_k<<<unsigned(rows), 32, 0, s>>>(pv, pi, nb, out);
}

void advance(const int32_t* next, int32_t* tok, int32_t* pos, int B, cudaStream_t s) {
  if (B > 0) advance_k<<<(B + 127) / 128, 128, 0, s>>>(next, tok, pos, B);
}

void row_nll(const float* logits, int64_t rows, int64_t V, const int32_t* target, double* out, cudaStream_t s) {
  if (rows > 0) row_nll_k<<<unsigned(rows), 1024, 0, s>>>(logits, V, target, out);
}

void sample_temperature(const float* logits, int64_t rows, int64_t V, float t, uint64_t seed, uint64_t step,
                        int32_t* out, cudaStream_t s) {
  if (rows > 0) sample_temperature_k<<<unsigned(rows), 1024, 0, s>>>(logits, V, t, seed, step, out);
}

void fill_random(Act a, void* w, int64_t n, float scale, uint64_t seed, cudaStream_t s) {
  if (n <= 0) return;
  MOSAIC_DISPATCH(a, fill_random_k<T><<<grid_for(n, 256), 256, 0, s>>>(static_cast<T*>(w), n, scale, seed));
}
void fill_f32(float* w, int64_t n, float lo, float hi, uint64_t seed, cudaStream_t s) {
  if (n > 0) fill_f32_k<<<grid_for(n, 256), 256, 0, s>>>(w, n, lo, hi, seed);
}
void f32_to_act(Act a, const float* src, void* dst, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  MOSAIC_DISPATCH(a, f32_to_act_k<T><<<grid_for(n, 256), 256, 0, s>>>(src, static_cast<T*>(dst), n));
}
void act_to_f32(Act a, const void* src, float* dst, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  MOSAIC_DISPATCH(a, act_to_f32_k<T><<<grid_for(n, 256), 256, 0, s>>>(static_cast<const T*>(src), dst, n));
}

}  // namespace kern
}  // namespace mosaic::gpu
