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

#include "gpu/act_quant.cuh"
#include "gpu/act_quant.h"
#include "gpu/kernel_util.cuh"
#include "gpu/kernels.h"
#include "util/error.h"
#include "util/env.h"

namespace mosaic::gpu {

const char* act_name(Act a) { return a == Act::BF16 ? "bf16" : "fp16"; }

namespace kern {
namespace {

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
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) out[r * D + i] = from_f<T>(xr[i] * w[i] * rs);  // as held
}

// add_rms_norm_k's math with the row held in registers (PER values per row thread: aq::held_per_thread),
// per-token quantized before its only store when Q (RowQuant). Same row thread count (one CTA, at decode a
// cluster acting as one: aq::row_reduce, at prefill a CTA whose threads act as V row threads each) and
// element order as add_rms_norm_k, so the sum of squares, and so every value, is the same.
// Why held (twelfth session, ncu on an H200, LLaMA-3-8B batch-1 decode): add_rms_norm_k's loop
// stores x between its loads, so each of its D / 1024 iterations waited for a round trip to L2, and
// w was read after the reduction: 5.8 us per norm against ~2.3 us for an empty kernel, 65 norms a
// step. Here w is loaded before pdl_wait (constant: it overlaps the previous kernel), then every
// load of x and delta is in flight at once, and the stores come last.
// Q with codes: the row's INT8 codes and scale instead of the row (RowQuant::codes; out unused).
template <typename T, int PER, int V, bool Q>
__global__ void __launch_bounds__(1024 / V, V) add_rms_norm_held_k(float* x, const T* delta, const float* w, int64_t D,
                                                                   float eps, T* out, float top, bool fp8,
                                                                   int8_t* codes, float* scales) {
  __shared__ aq::RowInbox box[1];  // the row's one reduction (aq::row_reduce_n)
  aq::row_setup(box);
  const int64_t r = blockIdx.x;
  const int nv = aq::row_threads<V>();
  const auto at = [&](int q, int j) { return aq::row_thread<V>(q) + int64_t(j) * nv; };  // held (q, j)'s element
  float wv[V][PER];
#pragma unroll
  for (int q = 0; q < V; ++q)
#pragma unroll
    for (int j = 0; j < PER; ++j) wv[q][j] = at(q, j) < D ? w[at(q, j)] : 0.f;
  pdl_wait();  // delta (and x) come from the kernels before
  pdl_launch_dependents();
  float* xr = x + r * D;
  float v[V][PER], dv[V][PER];
#pragma unroll
  for (int q = 0; q < V; ++q)
#pragma unroll
    for (int j = 0; j < PER; ++j) {
      const int64_t i = at(q, j);
      v[q][j] = i < D ? xr[i] : 0.f;
      dv[q][j] = delta && i < D ? to_f(delta[r * D + i]) : 0.f;
    }
  // Per row thread: the sum of squares and (for Q) max |x w|, reduced together: the output is (x w) rs, and
  // |(x w) rs| rounded to T grows with |x w| (rs > 0, rounding is monotone), so the row's max|output| is
  // max|x w| times rs rounded the same way: the quantization needs no second reduction (the decode step's
  // critical path had two rounds through the cluster per norm).
  float part[V][Q ? 2 : 1];
#pragma unroll
  for (int q = 0; q < V; ++q) {
    part[q][0] = 0.f;
    if constexpr (Q) part[q][1] = 0.f;
#pragma unroll
    for (int j = 0; j < PER; ++j) {
      const int64_t i = at(q, j);
      if (i < D) {
        if (delta) {
          v[q][j] += dv[q][j];
          xr[i] = v[q][j];
        }
        part[q][0] += v[q][j] * v[q][j];
        v[q][j] *= wv[q][j];
        if constexpr (Q) part[q][1] = fmaxf(part[q][1], fabsf(v[q][j]));
      }
    }
  }
  float total[Q ? 2 : 1];
  aq::row_reduce_n<false>(part, box[0], total);
  const float rs = rsqrtf(total[0] / float(D) + eps);
#pragma unroll
  for (int q = 0; q < V; ++q)
#pragma unroll
    for (int j = 0; j < PER; ++j) v[q][j] = to_f(from_f<T>(v[q][j] * rs));
  if constexpr (Q) {
    const float amax = to_f(from_f<T>(total[1] * rs));
    if (codes) {
      const float s = __fdiv_rn(amax, 127.f), inv = 1.f / s;
      if (aq::row_thread<V>() == 0) scales[r] = s;
#pragma unroll
      for (int q = 0; q < V; ++q)
#pragma unroll
        for (int j = 0; j < PER; ++j)
          if (at(q, j) < D) codes[r * D + at(q, j)] = aq::int8_code(v[q][j], s, inv, amax);
      return;
    }
#pragma unroll
    for (int q = 0; q < V; ++q) aq::quantize_held_given(v[q], top, fp8, amax);
  }
  aq::store_held<T, V, PER>(v, out + r * D, D);
}

// silu(g) * u rounded to T: the one formula of the three SiLU-mul kernels below, so the fused quantizing
// form and the plain forms make the same values (GpuOps.FusedProducerQuantEqualsSeparateKernel).
template <typename T>
__device__ __forceinline__ T silu_mul_value(float g, float u) {
  return from_f<T>(g / (1.f + expf(-g)) * u);
}

template <typename T>
__global__ void silu_mul_k(const T* gu, int64_t I, T* out) {
  pdl_wait();  // gu comes from the gate/up GEMM
  pdl_launch_dependents();
  const int64_t r = blockIdx.y;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < I; i += int64_t(gridDim.x) * blockDim.x) {
    out[r * I + i] = silu_mul_value<T>(to_f(gu[r * 2 * I + i]), to_f(gu[r * 2 * I + I + i]));
  }
}

// silu_mul_k with 8 elements per thread (16-byte loads and store; I % 8 == 0): the same math per element.
// Why (twenty-first session, ncu on an H200, Qwen3-8B 2048-row prefill): one 2-byte element per thread
// reached 24% of the DRAM bandwidth, 121 us per layer.
template <typename T>
__global__ void silu_mul_vec8_k(const T* gu, int64_t I, T* out) {
  pdl_wait();  // gu comes from the gate/up GEMM
  pdl_launch_dependents();
  const int64_t r = blockIdx.y, n8 = I / 8;
  for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < n8; c += int64_t(gridDim.x) * blockDim.x) {
    const uint4 g4 = *reinterpret_cast<const uint4*>(gu + r * 2 * I + 8 * c);
    const uint4 u4 = *reinterpret_cast<const uint4*>(gu + r * 2 * I + I + 8 * c);
    const T* g = reinterpret_cast<const T*>(&g4);
    const T* u = reinterpret_cast<const T*>(&u4);
    uint4 o4;
    T* o = reinterpret_cast<T*>(&o4);
#pragma unroll
    for (int e = 0; e < 8; ++e) o[e] = silu_mul_value<T>(to_f(g[e]), to_f(u[e]));
    *reinterpret_cast<uint4*>(out + r * I + 8 * c) = o4;
  }
}

// One CTA (or cluster: aq::row_reduce) per row, as a row's max is needed before any code: silu_mul_k's
// math on a row held in registers (PER values per row thread: aq::held_per_thread), then the row
// quantized before its only store.
template <typename T, int PER>
__global__ void __launch_bounds__(1024) silu_mul_quant_k(const T* gu, int64_t I, T* out, float top, bool fp8) {
  __shared__ aq::RowInbox box[1];
  aq::row_setup(box);
  pdl_wait();  // gu comes from the gate/up GEMM
  pdl_launch_dependents();
  const int64_t r = blockIdx.x;
  // Every load first, then the math: with the loads inside the math's loop, each element's division
  // (a branch to its slow path) kept the next element's loads behind it, one L2 round trip per element
  // (ncu, H200, 16 rows: 13.5 us per call; twenty-first session).
  T g[PER], u[PER];
#pragma unroll
  for (int j = 0; j < PER; ++j) {
    const int64_t i = aq::row_thread() + int64_t(j) * aq::row_threads();
    g[j] = i < I ? gu[r * 2 * I + i] : from_f<T>(0.f);
    u[j] = i < I ? gu[r * 2 * I + I + i] : from_f<T>(0.f);
  }
  float v[PER];
#pragma unroll
  for (int j = 0; j < PER; ++j) v[j] = to_f(silu_mul_value<T>(to_f(g[j]), to_f(u[j])));  // 0 past I
  aq::quantize_held(v, I, top, fp8, box[0]);
  aq::store_held(v, out + r * I, I);
}

// silu_mul_quant_k in 16-byte chunks: the same values and, the row's max being order-free, the same codes.
// CH = 1: one chunk per thread on up to 8 CTAs per row (a cluster; aq::vec8_rows: the decode rows). CH = 2:
// one CTA of up to 896 threads per row, two chunks per thread (prefill, where the rows fill the GPU: with
// the 6-CTA clusters a 2048-row Qwen3-8B prefill took 70 us per layer against 36 us for the unquantized
// vec8 kernel, ncu, H200). With codes: the row's INT8 codes and scale instead (RowQuant::codes; out unused).
template <typename T, int CH>
__global__ void __launch_bounds__(CH == 1 ? aq::kVec8Threads : 896, CH == 1 ? 1 : 2) silu_mul_quant_vec8_k(const T* gu, int64_t I,
                                                                                          T* out, float top, bool fp8,
                                                                                          int8_t* codes, float* scales) {
  __shared__ aq::RowInbox box[1];
  aq::row_setup(box);
  pdl_wait();  // gu comes from the gate/up GEMM
  pdl_launch_dependents();
  const int64_t r = blockIdx.x;
  const auto elem = [](int j) { return 8 * ((int64_t(blockIdx.z) * CH + j) * blockDim.x + threadIdx.x); };
  float v[CH][8] = {}, amax = 0.f;
#pragma unroll
  for (int j = 0; j < CH; ++j)
    if (elem(j) < I) {
      float g[8], u[8];
      aq::load8(gu + r * 2 * I + elem(j), g);
      aq::load8(gu + r * 2 * I + I + elem(j), u);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        v[j][e] = to_f(silu_mul_value<T>(g[e], u[e]));
        amax = fmaxf(amax, fabsf(v[j][e]));
      }
    }
  amax = aq::vec8_row_max(amax, box[0]);
  const float s = __fdiv_rn(amax, 127.f), inv = 1.f / s;
  if (codes && elem(0) == 0) scales[r] = s;
#pragma unroll
  for (int j = 0; j < CH; ++j) {
    const int64_t i = elem(j);
    if (i >= I) continue;
    if (codes) {
      uint32_t p[2] = {0, 0};
#pragma unroll
      for (int e = 0; e < 8; ++e) p[e / 4] |= uint32_t(uint8_t(aq::int8_code(v[j][e], s, inv, amax))) << (8 * (e % 4));
      *reinterpret_cast<uint2*>(codes + r * I + i) = make_uint2(p[0], p[1]);
    } else {
      aq::quantize_held_given(v[j], top, fp8, amax);
      aq::store8(out + r * I + i, v[j]);
    }
  }
}

// ---- RoPE + KV cache append (prefill; norm_rope_rows: kernel_util.cuh) ----------------------------
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

// qkv_rope_cache_k for head_dim HD = 64 or 128 (every target model), one warp per head: lane l holds the
// head's elements l + 32 e (e < HD / 32) in registers, the order in which norm_rope_apply sums a head's
// squares (so the same values), and each rotate-half pair (i, i + HD / 2) lies in one lane. Why: ncu on an
// H200 (Qwen3-8B, 2048-row prefill, twenty-first session) put qkv_rope_cache_k at 71 us per layer, 72% SM
// and 9% DRAM throughput: every value went through shared memory three times with a run-time division
// by hd per value and per pair; this form has no division and no shared memory but the cos / sin table.
template <typename T, int HD>
__global__ void __launch_bounds__(kRopeHeads * 32) qkv_rope_cache_warp_k(const T* qkv, const int32_t* pos_a,
                                                                         const int32_t* slot_a, AttnDims d,
                                                                         const float* q_norm, const float* k_norm,
                                                                         float eps, const float* inv_freq, T* q_out,
                                                                         T* kc, T* vc) {
  constexpr int E = HD / 32, HALF = HD / 2;
  __shared__ float cs[HD];  // cos [0, HALF), sin [HALF, HD) at this token's position
  const int r = blockIdx.x, lane = threadIdx.x & 31, nh = d.H + 2 * d.Hkv;
  const int j = blockIdx.y * kRopeHeads + int(threadIdx.x >> 5);  // this warp's head
  const int64_t pos = pos_a[r], slot = slot_a[r];
  float x[E];
  if (j < nh) {
    const T* src = qkv + (int64_t(r) * nh + j) * HD;
#pragma unroll
    for (int e = 0; e < E; ++e) x[e] = to_f(src[lane + 32 * e]);
  }
  rope_table(HD, pos, inv_freq, cs);  // the loads above are in flight meanwhile
  __syncthreads();
  if (j >= nh) return;
  const bool is_q = j < d.H, is_k = !is_q && j < d.H + d.Hkv;
  const float* w = is_q ? q_norm : is_k ? k_norm : nullptr;
  if (w) {
    float ss = 0.f;
#pragma unroll
    for (int e = 0; e < E; ++e) ss += x[e] * x[e];
    const float rs = rsqrtf(warp_sum(ss) / float(HD) + eps);
#pragma unroll
    for (int e = 0; e < E; ++e) x[e] = x[e] * rs * w[lane + 32 * e];
  }
  if (is_q || is_k) {
#pragma unroll
    for (int e = 0; e < E / 2; ++e) {
      const int i = lane + 32 * e;
      const float a = x[e], b = x[e + E / 2], c = cs[i], s = cs[HALF + i];
      x[e] = a * c - b * s;
      x[e + E / 2] = b * c + a * s;
    }
  }
  T* dst = is_q   ? q_out + (int64_t(r) * d.H + j) * HD
           : is_k ? kc + ((slot * d.Hkv + (j - d.H)) * d.cap + pos) * HD
                  : vc + ((slot * d.Hkv + (j - d.H - d.Hkv)) * d.cap + pos) * HD;
#pragma unroll
  for (int e = 0; e < E; ++e) dst[lane + 32 * e] = from_f<T>(x[e]);
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

}  // namespace

void embedding(Act a, const void* table, int64_t D, const int32_t* tok, int64_t rows, float* x, cudaStream_t s) {
  if (rows <= 0) return;
  MOSAIC_DISPATCH(a, embedding_k<T><<<unsigned(rows), 256, 0, s>>>(static_cast<const T*>(table), D, tok, x));
}

bool norm_codes_ok(int64_t D) { return aq::held_per_thread(D, norm_threads(D)) > 0; }
bool silu_codes_ok(int64_t I) {
  const int c = aq::vec8_row_ctas(I);
  return c == 1 || (c > 1 && aq::row_cluster(1, 1024) > 1);
}

int held_row_ctas(int64_t rows, int64_t D) {
  return aq::held_per_thread(D, norm_threads(D)) ? aq::row_cluster(rows, norm_threads(D)) : 1;
}

void add_rms_norm(Act a, float* x, const void* delta, const float* w, int64_t rows, int64_t D, float eps, void* out,
                  cudaStream_t s, RowQuant q) {
  if (rows <= 0) return;
  const int threads = norm_threads(D);
  const int per = aq::held_per_thread(D, threads);  // 0: a row too long to hold in registers
  // Prefill (rows past the cluster form's) of a 4096-wide row, not quantized (the INT8 kernel quantizes its
  // own rows there): CTAs of 256 threads acting as 4 row threads each (add_rms_norm_held_k). Same values.
  static const bool prefill_form = env_switch_on("MOSAIC_NORM_V");  // =0: one 1024-thread CTA per row (comparisons)
  MOSAIC_CHECK(!q.codes || (q.bits == 8 && !q.fp8 && per), "add_rms_norm: INT8 codes need the 8-bit integer rule and a row of ",
               D, " held in registers");
  if (prefill_form && threads == 1024 && D <= 4 * 1024 && (!q.on() || q.codes) && aq::row_cluster(rows, threads) == 1) {
#define MOSAIC_NORM_V4(Q)                                                                                       \
  MOSAIC_DISPATCH(a, launch_pdl(add_rms_norm_held_k<T, 4, 4, Q>, dim3(unsigned(rows)), dim3(256), 0, s, x,          \
                                static_cast<const T*>(delta), w, D, eps, static_cast<T*>(out), q.top(), q.fp8, q.codes, \
                                q.scales))
    if (q.on()) MOSAIC_NORM_V4(true);
    else MOSAIC_NORM_V4(false);
#undef MOSAIC_NORM_V4
    return;
  }
#define MOSAIC_NORM_HELD(PER, Q)                                                                              \
  MOSAIC_DISPATCH(a, aq::launch_rows(add_rms_norm_held_k<T, PER, 1, Q>, rows, threads, s, x,                  \
                                     static_cast<const T*>(delta), w, D, eps, static_cast<T*>(out), q.top(), q.fp8, \
                                     q.codes, q.scales))
  if (per == 8 && q.on()) MOSAIC_NORM_HELD(8, true);
  else if (per == 8) MOSAIC_NORM_HELD(8, false);
  else if (per == 16 && q.on()) MOSAIC_NORM_HELD(16, true);
  else if (per == 16) MOSAIC_NORM_HELD(16, false);
#undef MOSAIC_NORM_HELD
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
#define MOSAIC_ROPE_WARP(HD)                                                                                   \
  MOSAIC_DISPATCH(a, qkv_rope_cache_warp_k<T, HD><<<grid, kRopeHeads * 32, 0, s>>>(                            \
                         static_cast<const T*>(qkv), pos, slot, d, q_norm, k_norm, eps, inv_freq,            \
                         static_cast<T*>(q_out), static_cast<T*>(k_cache), static_cast<T*>(v_cache)))
  static const bool warp_form = env_switch_on("MOSAIC_ROPE_WARP");  // =0: the shared-memory form (comparisons)
  if (warp_form && d.hd == 128) {
    MOSAIC_ROPE_WARP(128);
    return;
  }
  if (warp_form && d.hd == 64) {
    MOSAIC_ROPE_WARP(64);
    return;
  }
#undef MOSAIC_ROPE_WARP
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

void silu_mul(Act a, const void* gu, int64_t rows, int64_t I, void* out, cudaStream_t s, RowQuant q) {
  if (rows <= 0) return;
  MOSAIC_CHECK(!q.codes || (q.bits == 8 && !q.fp8 && silu_codes_ok(I)), "silu_mul: INT8 codes of rows of ", I,
               " need the 8-bit integer rule, I a multiple of 8 within 8 CTAs of 2048, and clusters");
  // Prefill: one CTA per row (at most 896 threads: two CTAs per SM by registers; LLaMA-3-8B's I = 14336 fits).
  if (q.codes && aq::row_cluster(rows, 1024) == 1 && I % 8 == 0 && I <= 2 * 8 * 896 &&
      (reinterpret_cast<uintptr_t>(gu) | reinterpret_cast<uintptr_t>(out)) % 16 == 0) {
    const unsigned threads = unsigned((I / 16 + 31) / 32 * 32);
    MOSAIC_DISPATCH(a, launch_pdl(silu_mul_quant_vec8_k<T, 2>, dim3(unsigned(rows)), dim3(threads), 0, s,
                                  static_cast<const T*>(gu), I, static_cast<T*>(out), q.top(), q.fp8, q.codes, q.scales));
    return;
  }
  if (q.codes || (q.on() && aq::vec8_rows(rows, I, gu, out))) {
    MOSAIC_DISPATCH(a, aq::launch_vec8_rows(silu_mul_quant_vec8_k<T, 1>, rows, I, s, static_cast<const T*>(gu), I,
                                            static_cast<T*>(out), q.top(), q.fp8, q.codes, q.scales));
    return;
  }
  constexpr int kQuantThreads = 1024;  // decode has a few rows: as many threads per row as a CTA takes
  const int per = q.on() ? aq::held_per_thread(I, kQuantThreads) : 0;
#define MOSAIC_SILU_Q(PER)                                                                                    \
  MOSAIC_DISPATCH(a, aq::launch_rows(silu_mul_quant_k<T, PER>, rows, kQuantThreads, s, static_cast<const T*>(gu), I, \
                                     static_cast<T*>(out), q.top(), q.fp8))
  if (per == 8) MOSAIC_SILU_Q(8);
  else if (per == 16) MOSAIC_SILU_Q(16);
#undef MOSAIC_SILU_Q
  if (per) return;
  const bool vec = I % 8 == 0 && reinterpret_cast<uintptr_t>(gu) % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
  const int64_t per_row = vec ? I / 8 : I;
  const dim3 grid(unsigned(std::min<int64_t>((per_row + 255) / 256, 64)), unsigned(rows));
  if (vec)
    MOSAIC_DISPATCH(a, launch_pdl(silu_mul_vec8_k<T>, grid, dim3(256), 0, s, static_cast<const T*>(gu), I,
                                  static_cast<T*>(out)));
  else
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
