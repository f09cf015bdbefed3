// Prefill attention on tensor cores, FlashAttention-2 style (contract: attention.h, flash_prefill):
// causal grouped-query attention of n new queries of one sequence over its cached keys, without the
// scores in memory. Why (twenty-first session, H200, Qwen3-8B, one 2048-token prompt): the cuBLAS
// path (S = Q K^T in FP32, a softmax kernel, P V) took 22.7 of the 73.5 ms of an FP16 prefill: it
// writes and reads every score (the full square, the causal half included) several times.
//
// One CTA per (64 queries, query head): 4 warps, each 16 query rows (the m16n8k16 A operand, Q in
// registers for the whole loop). Keys stream in tiles of 64 through a 2-stage cp.async ring:
//   S (16 x 64 per warp) = Q K^T      K rows via ldmatrix (non-transposed) = the B operand
//   online softmax per row             running max m, sum l, O rescaled by 2^(m_old - m_new)
//   O (16 x hd) += P V                 P from S's registers (the C -> A reuse), V via ldmatrix.trans
// and O / l at the end. P is rounded to the activation type before P V, as the cuBLAS path and HF's
// eager attention do. Tiles are visited only up to the CTA's last causal key; the diagonal tiles mask
// key > query position. Query tiles run longest first (the last queries see the most keys).
//
// Shared memory, per K or V tile: 64 rows of hd dims (hd x 2 bytes), the 16-byte chunk c of row r at
// chunk c ^ (r & 7) so the 8 rows an ldmatrix reads hit 8 different bank groups (decode_attention.cu's
// layout, there for 16-key tiles):
//   [Q 64 x hd][stage 0: K 64 x hd | V 64 x hd][stage 1: K | V]     (hd 128: 16 + 2 x 32 = 80 KB)
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdlib>
#include <cstring>

#include "gpu/attention.h"
#include "gpu/kernel_util.cuh"
#include "gpu/mma_util.cuh"
#include "util/error.h"
#include "util/env.h"

namespace mosaic::gpu {
namespace kern {
namespace {

constexpr int kFlashRows = 64, kFlashKeys = 64, kFlashThreads = 128;

template <int HD>
__host__ __device__ constexpr int flash_tile_bytes() {
  return 64 * HD * 2;
}
template <int HD>
__host__ __device__ constexpr int flash_smem_bytes() {
  return 5 * flash_tile_bytes<HD>();  // Q + 2 stages x (K, V)
}
template <int HD>
__device__ __forceinline__ int flash_off(int r, int c) {  // byte offset of chunk c of row r in a tile
  return r * (HD * 2) + ((c ^ (r & 7)) << 4);
}

template <typename T, int HD>
__global__ void __launch_bounds__(kFlashThreads) flash_prefill_k(const T* q, const T* k_seq, const T* v_seq, int64_t n,
                                                                 int64_t pos0, AttnDims d, float qscale_log2, T* out) {
  extern __shared__ __align__(128) unsigned char fsm[];
  constexpr int kChunks = HD / 8, kTile = flash_tile_bytes<HD>();
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, gq = lane >> 2, tq = lane & 3;
  const int h = blockIdx.y, g = h / (d.H / d.Hkv);
  const int64_t i0 = int64_t(gridDim.x - 1 - blockIdx.x) * kFlashRows;  // longest first
  const int64_t ld = int64_t(d.H) * HD;                                 // q / out row stride
  const int64_t kend = pos0 + min(n, i0 + kFlashRows);                  // keys [0, kend) are seen
  const int ntiles = int((kend + kFlashKeys - 1) / kFlashKeys);
  const T* kg = k_seq + int64_t(g) * d.cap * HD;
  const T* vg = v_seq + int64_t(g) * d.cap * HD;
  unsigned char* qs = fsm;
  auto stage = [&](int t) { return fsm + kTile + (t & 1) * 2 * kTile; };

  // Q tile (rows past n are zeros) with the first K / V tile, one cp.async group.
  for (int i = threadIdx.x; i < kFlashRows * kChunks; i += kFlashThreads) {
    const int r = i / kChunks, c = i % kChunks;
    const bool ok = i0 + r < n;
    cp_async16_zfill(qs + flash_off<HD>(r, c), q + (ok ? (i0 + r) * ld + int64_t(h) * HD + c * 8 : 0), ok);
  }
  auto issue = [&](int t) {
    unsigned char* st = stage(t);
    for (int i = threadIdx.x; i < kFlashKeys * kChunks; i += kFlashThreads) {
      const int r = i / kChunks, c = i % kChunks;
      const int64_t key = int64_t(t) * kFlashKeys + r;
      const bool ok = key < kend;  // past the last key: zeros (finite; masked below)
      const int64_t off = ok ? key * HD + c * 8 : 0;
      cp_async16_zfill(st + flash_off<HD>(r, c), kg + off, ok);
      cp_async16_zfill(st + kTile + flash_off<HD>(r, c), vg + off, ok);
    }
  };
  issue(0);
  cp_async_commit();

  // ldmatrix row addresses (decode_attention.cu's, per 16 rows): Q / A operand: row l % 16, chunk + l / 16;
  // K / B operand: keys (l & 7) + ((l >> 4) << 3), chunk + ((l >> 3) & 1); V / B operand through .trans:
  // keys (l & 7) + (((l >> 3) & 1) << 3), chunk + (l >> 4).
  const int ar = lane & 15, ac = lane >> 4;
  const int kr = (lane & 7) + ((lane >> 4) << 3), kc1 = (lane >> 3) & 1;
  const int vr = (lane & 7) + (((lane >> 3) & 1) << 3), vc1 = lane >> 4;
  uint32_t qa[HD / 16][4];
  float o[HD / 8][4];
#pragma unroll
  for (int j = 0; j < HD / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  // Query positions of this thread's two rows (gq, gq + 8 of the warp's 16).
  const int64_t qpos0 = pos0 + i0 + 16 * w + gq, qpos1 = qpos0 + 8;

  for (int t = 0; t < ntiles; ++t) {
    if (t + 1 < ntiles) issue(t + 1);
    cp_async_commit();
    cp_async_wait<1>();  // tile t (and Q) landed for this thread's copies ...
    __syncthreads();     // ... and for every thread's
    if (t == 0) {
      const uint32_t qb = static_cast<uint32_t>(__cvta_generic_to_shared(qs));
#pragma unroll
      for (int kk = 0; kk < HD / 16; ++kk) ldsm_x4(qa[kk], qb + flash_off<HD>(16 * w + ar, 2 * kk + ac));
    }
    const uint32_t kb = static_cast<uint32_t>(__cvta_generic_to_shared(stage(t)));
    const uint32_t vb = kb + kTile;
    // S = Q K^T: s[j] = keys 8j .. 8j+7 of the tile; [0], [1] row gq keys 8j + 2tq (+1); [2], [3] row gq + 8.
    float s[8][4];
#pragma unroll
    for (int j = 0; j < 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk)
#pragma unroll
      for (int nb = 0; nb < 4; ++nb) {
        uint32_t b4[4];
        ldsm_x4(b4, kb + flash_off<HD>(16 * nb + kr, 2 * kk + kc1));
        Mma16816<T>::acc(s[2 * nb], qa[kk], b4[0], b4[1]);
        Mma16816<T>::acc(s[2 * nb + 1], qa[kk], b4[2], b4[3]);
      }
    // Scale to log2 units; mask keys after the row's position (only tiles that reach the diagonal).
    const int64_t key0 = int64_t(t) * kFlashKeys;
    const bool diag = key0 + kFlashKeys - 1 > pos0 + i0 + 16 * w;
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t key = key0 + 8 * j + 2 * tq + (e & 1);
        const float x = s[j][e] * qscale_log2;
        s[j][e] = diag && key > (e < 2 ? qpos0 : qpos1) ? -INFINITY : x;
      }
    // Online softmax of the two rows (the 4 lanes of a quad hold a row's 64 keys).
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
      float mx = m[rr];
#pragma unroll
      for (int j = 0; j < 8; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * rr], s[j][2 * rr + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float ref = mx == -INFINITY ? 0.f : mx;  // a row with no key yet: nothing to rescale
      const float al = exp2f(m[rr] - ref);
      m[rr] = mx;
      l[rr] *= al;
#pragma unroll
      for (int j = 0; j < HD / 8; ++j) {
        o[j][2 * rr] *= al;
        o[j][2 * rr + 1] *= al;
      }
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        s[j][2 * rr] = exp2f(s[j][2 * rr] - ref);
        s[j][2 * rr + 1] = exp2f(s[j][2 * rr + 1] - ref);
        l[rr] += s[j][2 * rr] + s[j][2 * rr + 1];
      }
    }
    // O += P V, 16 keys at a time: P's A fragment is S tiles 2kb (a0 row gq, a1 row gq + 8) and 2kb + 1 (a2, a3).
#pragma unroll
    for (int kb16 = 0; kb16 < 4; ++kb16) {
      const uint32_t pa[4] = {pack_act<T>(s[2 * kb16][0], s[2 * kb16][1]), pack_act<T>(s[2 * kb16][2], s[2 * kb16][3]),
                              pack_act<T>(s[2 * kb16 + 1][0], s[2 * kb16 + 1][1]),
                              pack_act<T>(s[2 * kb16 + 1][2], s[2 * kb16 + 1][3])};
#pragma unroll
      for (int jj = 0; jj < HD / 16; ++jj) {
        uint32_t b4[4];
        ldsm_x4_trans(b4, vb + flash_off<HD>(16 * kb16 + vr, 2 * jj + vc1));
        Mma16816<T>::acc(o[2 * jj], pa, b4[0], b4[1]);
        Mma16816<T>::acc(o[2 * jj + 1], pa, b4[2], b4[3]);
      }
    }
    __syncthreads();  // every warp is done with this stage before tile t + 2 is copied into it
  }
  cp_async_wait<0>();
#pragma unroll
  for (int rr = 0; rr < 2; ++rr) {
    l[rr] += __shfl_xor_sync(0xffffffffu, l[rr], 1);
    l[rr] += __shfl_xor_sync(0xffffffffu, l[rr], 2);
  }
#pragma unroll
  for (int rr = 0; rr < 2; ++rr) {
    const int64_t i = i0 + 16 * w + gq + 8 * rr;
    if (i >= n) continue;
    const float inv = 1.f / l[rr];
    T* orow = out + i * ld + int64_t(h) * HD;
#pragma unroll
    for (int j = 0; j < HD / 8; ++j)
      *reinterpret_cast<uint32_t*>(orow + 8 * j + 2 * tq) = pack_act<T>(o[j][2 * rr] * inv, o[j][2 * rr + 1] * inv);
  }
}

template <typename T, int HD>
void launch_flash(const void* q, const void* k_seq, const void* v_seq, int64_t n, int64_t pos0, const AttnDims& d,
                  void* out, cudaStream_t s) {
  constexpr int smem = flash_smem_bytes<HD>();
  static const bool attr = [] {  // > 48 KB of dynamic shared memory needs the opt-in, once per process
    return cudaFuncSetAttribute(flash_prefill_k<T, HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem) ==
           cudaSuccess;
  }();
  MOSAIC_CHECK(attr, "flash prefill attention: cannot reserve ", smem, " bytes of shared memory");
  const dim3 grid(unsigned((n + kFlashRows - 1) / kFlashRows), unsigned(d.H));
  const float qscale_log2 = float(1.0 / std::sqrt(double(HD)) * 1.4426950408889634);
  flash_prefill_k<T, HD><<<grid, kFlashThreads, smem, s>>>(static_cast<const T*>(q), static_cast<const T*>(k_seq),
                                                           static_cast<const T*>(v_seq), n, pos0, d, qscale_log2,
                                                           static_cast<T*>(out));
}

}  // namespace
}  // namespace kern

bool flash_prefill_enabled(const kern::AttnDims& d) {
  static const bool on = env_switch_on("MOSAIC_PREFILL_FLASH");
  return on && (d.hd == 64 || d.hd == 128) && d.H % d.Hkv == 0;
}

bool flash_prefill(Act a, const void* q, const void* k_seq, const void* v_seq, int64_t n, int64_t pos0,
                   const kern::AttnDims& d, void* out, cudaStream_t s) {
  if (n <= 0 || !flash_prefill_enabled(d)) return false;
  MOSAIC_CHECK(n <= (int64_t(1) << 30) / 64 && d.H <= 65535, "flash prefill attention: ", n, " queries x ", d.H,
               " heads out of range");
  if (d.hd == 128)
    MOSAIC_DISPATCH(a, (kern::launch_flash<T, 128>(q, k_seq, v_seq, n, pos0, d, out, s)));
  else
    MOSAIC_DISPATCH(a, (kern::launch_flash<T, 64>(q, k_seq, v_seq, n, pos0, d, out, s)));
  return true;
}

}  // namespace mosaic::gpu
