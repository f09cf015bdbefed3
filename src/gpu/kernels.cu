// CUDA kernels of the GPU engine; contracts in kernels.h. FP32 math everywhere, activations
// loaded from / stored to FP16 or BF16. Templates on the activation type T; the launchers
// dispatch on Act.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cfloat>
#include <cmath>

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

// ---- embedding, norms, element-wise ------------------------------------------------------------
template <typename T>
__global__ void embedding_k(const T* table, int64_t D, const int32_t* tok, float* x) {
  const int64_t r = blockIdx.x;
  const T* src = table + int64_t(tok[r]) * D;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) x[r * D + i] = to_f(src[i]);
}

template <typename T>
__global__ void add_rms_norm_k(float* x, const T* delta, const float* w, int64_t D, float eps, T* out) {
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

template <typename T>
__global__ void silu_mul_k(const T* gu, int64_t I, T* out) {
  const int64_t r = blockIdx.y;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < I; i += int64_t(gridDim.x) * blockDim.x) {
    const float g = to_f(gu[r * 2 * I + i]), u = to_f(gu[r * 2 * I + I + i]);
    out[r * I + i] = from_f<T>(g / (1.f + expf(-g)) * u);
  }
}

// ---- q/k norm + RoPE + KV cache append -----------------------------------------------------------
constexpr int kMaxHalfPerLane = 4;  // head_dim <= 256

template <typename T>
__global__ void qkv_rope_cache_k(const T* qkv, const int32_t* pos_a, const int32_t* slot_a, AttnDims d,
                                 const float* q_norm, const float* k_norm, float eps, const float* inv_freq, T* q_out,
                                 T* kc, T* vc) {
  const int r = blockIdx.x;
  const int lane = threadIdx.x & 31;
  const int j = blockIdx.y * (blockDim.x >> 5) + (threadIdx.x >> 5);  // head index in the fused row
  const int nh = d.H + 2 * d.Hkv;
  if (j >= nh) return;
  const int hd = d.hd, half = hd / 2;
  const int64_t pos = pos_a[r], slot = slot_a[r];
  const T* src = qkv + int64_t(r) * nh * hd + int64_t(j) * hd;
  T* dst;
  const float* nw = nullptr;
  bool rotate = true;
  if (j < d.H) {
    dst = q_out + int64_t(r) * d.H * hd + int64_t(j) * hd;
    nw = q_norm;
  } else if (j < d.H + d.Hkv) {
    dst = kc + ((slot * d.Hkv + (j - d.H)) * d.cap + pos) * hd;
    nw = k_norm;
  } else {
    dst = vc + ((slot * d.Hkv + (j - d.H - d.Hkv)) * d.cap + pos) * hd;
    rotate = false;
  }
  if (!rotate) {
    for (int i = lane; i < hd; i += 32) dst[i] = src[i];
    return;
  }
  float a[kMaxHalfPerLane], b[kMaxHalfPerLane];
  float ss = 0.f;
#pragma unroll
  for (int m = 0; m < kMaxHalfPerLane; ++m) {
    const int i = lane + 32 * m;
    a[m] = i < half ? to_f(src[i]) : 0.f;
    b[m] = i < half ? to_f(src[i + half]) : 0.f;
    ss += a[m] * a[m] + b[m] * b[m];
  }
  if (nw) {
    const float rs = rsqrtf(warp_sum(ss) / float(hd) + eps);
#pragma unroll
    for (int m = 0; m < kMaxHalfPerLane; ++m) {
      const int i = lane + 32 * m;
      if (i < half) {
        a[m] = a[m] * rs * nw[i];
        b[m] = b[m] * rs * nw[i + half];
      }
    }
  }
  const float p = float(pos);
#pragma unroll
  for (int m = 0; m < kMaxHalfPerLane; ++m) {
    const int i = lane + 32 * m;
    if (i < half) {
      const float ang = p * inv_freq[i];  // one fp32 product, as the CPU RopeTable
      double sd, cd;
      sincos(double(ang), &sd, &cd);
      const float c = float(cd), sn = float(sd);
      dst[i] = from_f<T>(a[m] * c - b[m] * sn);
      dst[i + half] = from_f<T>(b[m] * c + a[m] * sn);
    }
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

constexpr int kDecChunk = 128;  // key positions per block (= threads per block)
constexpr int kMaxRep = 16;     // query heads per kv head

int decode_splits(const AttnDims& d) { return int((d.cap + kDecChunk - 1) / kDecChunk); }

// grid (Hkv, B, splits), block kDecChunk. Partial per (b, h, split): o[hd] (unnormalized), m, l.
template <typename T>
__global__ void attention_decode_k(const T* q, const T* kc, const T* vc, const int32_t* pos_a, const int32_t* slot_a,
                                   AttnDims d, float scale, float* partial) {
  extern __shared__ float sm[];
  const int g = blockIdx.x, b = blockIdx.y, split = blockIdx.z, nsplit = gridDim.z;
  const int rep = d.H / d.Hkv, hd = d.hd;
  float* qs = sm;                   // [rep][hd]
  float* ps = sm + rep * hd;        // [rep][kDecChunk]
  float* ml = ps + rep * kDecChunk; // [rep][2]
  const int64_t len = int64_t(pos_a[b]) + 1, slot = slot_a[b];
  const int64_t start = int64_t(split) * kDecChunk;
  const int64_t stride_part = hd + 2;
  auto part = [&](int r) { return partial + ((int64_t(b) * d.H + g * rep + r) * nsplit + split) * stride_part; };
  if (start >= len) {
    for (int r = threadIdx.x; r < rep; r += blockDim.x) {
      part(r)[hd] = -INFINITY;
      part(r)[hd + 1] = 0.f;
    }
    return;
  }
  const int64_t n = min(int64_t(kDecChunk), len - start);
  for (int i = threadIdx.x; i < rep * hd; i += blockDim.x)
    qs[i] = to_f(q[int64_t(b) * d.H * hd + int64_t(g * rep) * hd + i]) * scale;
  __syncthreads();
  const T* kb = kc + ((slot * d.Hkv + g) * d.cap + start) * hd;
  const T* vb = vc + ((slot * d.Hkv + g) * d.cap + start) * hd;
  // Scores: thread j owns key position start + j.
  if (threadIdx.x < n) {
    float acc[kMaxRep];
#pragma unroll
    for (int r = 0; r < kMaxRep; ++r) acc[r] = 0.f;
    const T* kr = kb + int64_t(threadIdx.x) * hd;
    if (hd % 8 == 0) {
      for (int i = 0; i < hd; i += 8) {
        const uint4 raw = *reinterpret_cast<const uint4*>(kr + i);
        const T* kv = reinterpret_cast<const T*>(&raw);
        float kf[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) kf[e] = to_f(kv[e]);
#pragma unroll
        for (int r = 0; r < kMaxRep; ++r)
          if (r < rep) {
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[r] += qs[r * hd + i + e] * kf[e];
          }
      }
    } else {
      for (int i = 0; i < hd; ++i) {
        const float kf = to_f(kr[i]);
#pragma unroll
        for (int r = 0; r < kMaxRep; ++r)
          if (r < rep) acc[r] += qs[r * hd + i] * kf;
      }
    }
#pragma unroll
    for (int r = 0; r < kMaxRep; ++r)
      if (r < rep) ps[r * kDecChunk + threadIdx.x] = acc[r];
  }
  __syncthreads();
  // Softmax pieces per query head: warp w handles heads w, w + nwarps, ...
  const int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
  for (int r = threadIdx.x >> 5; r < rep; r += nw) {
    float m = -INFINITY;
    for (int j = lane; j < n; j += 32) m = fmaxf(m, ps[r * kDecChunk + j]);
    m = warp_max(m);
    float l = 0.f;
    for (int j = lane; j < n; j += 32) {
      const float e = expf(ps[r * kDecChunk + j] - m);
      ps[r * kDecChunk + j] = e;
      l += e;
    }
    l = warp_sum(l);
    if (lane == 0) {
      ml[2 * r] = m;
      ml[2 * r + 1] = l;
    }
  }
  __syncthreads();
  // Values: thread owns output dims i = tid, tid + blockDim, ...
  for (int i = threadIdx.x; i < hd; i += blockDim.x) {
    float acc[kMaxRep];
#pragma unroll
    for (int r = 0; r < kMaxRep; ++r) acc[r] = 0.f;
    for (int j = 0; j < n; ++j) {
      const float v = to_f(vb[int64_t(j) * hd + i]);
#pragma unroll
      for (int r = 0; r < kMaxRep; ++r)
        if (r < rep) acc[r] += ps[r * kDecChunk + j] * v;
    }
#pragma unroll
    for (int r = 0; r < kMaxRep; ++r)
      if (r < rep) part(r)[i] = acc[r];
  }
  for (int r = threadIdx.x; r < rep; r += blockDim.x) {
    part(r)[hd] = ml[2 * r];
    part(r)[hd + 1] = ml[2 * r + 1];
  }
}

// Vectorized variant for hd % 8 == 0 with hd/8 a power of two <= 32 (hd 8..256), the path of
// every real model: kVecChunk key positions per block (more blocks than SMs even at batch 1),
// thread t owns 8 consecutive dims (vector t % nv, nv = hd/8) of position group t / nv, reads K and
// V rows as coalesced 16-byte loads, all of its positions' loads issued before any use (the step
// is latency-bound at small batch); q slices live in registers (MAXREP >= rep query heads).
constexpr int kVecThreads = 128, kVecChunk = 64, kMaxPPT = 16;  // positions per thread <= 16 (hd 256)

template <typename T, int MAXREP>
__global__ void __launch_bounds__(kVecThreads) attention_decode_vec_k(const T* q, const T* kc, const T* vc,
                                                                      const int32_t* pos_a, const int32_t* slot_a,
                                                                      AttnDims d, float scale, float* partial) {
  extern __shared__ float sm[];
  const int g = blockIdx.x, b = blockIdx.y, split = blockIdx.z, nsplit = gridDim.z;
  const int rep = d.H / d.Hkv, hd = d.hd, nv = hd / 8, G = kVecThreads / nv;
  const int vec = threadIdx.x % nv, pg = threadIdx.x / nv;
  float* ps = sm;                      // [rep][kVecChunk] scores, then probabilities
  float* red = ps + rep * kVecChunk;   // [G][hd] reduction of the value sums
  float* ml = red + G * hd;            // [rep][2]
  const int64_t len = int64_t(pos_a[b]) + 1, slot = slot_a[b];
  const int64_t start = int64_t(split) * kVecChunk;
  const int64_t stride_part = hd + 2;
  auto part = [&](int r) { return partial + ((int64_t(b) * d.H + g * rep + r) * nsplit + split) * stride_part; };
  if (start >= len) {
    for (int r = threadIdx.x; r < rep; r += blockDim.x) {
      part(r)[hd] = -INFINITY;
      part(r)[hd + 1] = 0.f;
    }
    return;
  }
  const int n = int(min(int64_t(kVecChunk), len - start));
  const int64_t base = ((slot * d.Hkv + g) * d.cap + start) * hd + vec * 8;
  const T* kb = kc + base;
  const T* vb = vc + base;
  // Issue every K load of this thread first (V loads go out before the softmax).
  uint4 kraw[kMaxPPT], vraw[kMaxPPT];
#pragma unroll
  for (int p = 0; p < kMaxPPT; ++p) {
    const int j = pg + p * G;
    if (p * G < kVecChunk && j < n) kraw[p] = *reinterpret_cast<const uint4*>(kb + int64_t(j) * hd);
  }
  float qr[MAXREP][8];
  const T* qb = q + (int64_t(b) * d.H + int64_t(g) * rep) * hd + vec * 8;
#pragma unroll
  for (int r = 0; r < MAXREP; ++r) {
    if (r < rep) {
      const uint4 raw = *reinterpret_cast<const uint4*>(qb + int64_t(r) * hd);
      const T* qv = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int e = 0; e < 8; ++e) qr[r][e] = to_f(qv[e]) * scale;
    }
  }
  // Scores: the nv lanes of a position group reduce the dot product by shuffles.
#pragma unroll
  for (int p = 0; p < kMaxPPT; ++p) {
    if (p * G >= kVecChunk) break;
    const int j = pg + p * G;
    const bool ok = j < n;
    float kf[8];
    const T* kv = reinterpret_cast<const T*>(&kraw[p]);
#pragma unroll
    for (int e = 0; e < 8; ++e) kf[e] = ok ? to_f(kv[e]) : 0.f;
#pragma unroll
    for (int r = 0; r < MAXREP; ++r) {
      if (r < rep) {
        float acc = 0.f;
#pragma unroll
        for (int e = 0; e < 8; ++e) acc += qr[r][e] * kf[e];
        for (int off = nv / 2; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
        if (ok && vec == 0) ps[r * kVecChunk + j] = acc;
      }
    }
  }
#pragma unroll
  for (int p = 0; p < kMaxPPT; ++p) {
    const int j = pg + p * G;
    if (p * G < kVecChunk && j < n) vraw[p] = *reinterpret_cast<const uint4*>(vb + int64_t(j) * hd);
  }
  __syncthreads();
  const int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
  for (int r = threadIdx.x >> 5; r < rep; r += nw) {
    float m = -INFINITY;
    for (int j = lane; j < n; j += 32) m = fmaxf(m, ps[r * kVecChunk + j]);
    m = warp_max(m);
    float l = 0.f;
    for (int j = lane; j < n; j += 32) {
      const float e = expf(ps[r * kVecChunk + j] - m);
      ps[r * kVecChunk + j] = e;
      l += e;
    }
    l = warp_sum(l);
    if (lane == 0) {
      ml[2 * r] = m;
      ml[2 * r + 1] = l;
    }
  }
  __syncthreads();
  float acc[MAXREP][8];
#pragma unroll
  for (int r = 0; r < MAXREP; ++r)
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[r][e] = 0.f;
#pragma unroll
  for (int p = 0; p < kMaxPPT; ++p) {
    if (p * G >= kVecChunk) break;
    const int j = pg + p * G;
    if (j < n) {
      const T* vv = reinterpret_cast<const T*>(&vraw[p]);
      float vf[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) vf[e] = to_f(vv[e]);
#pragma unroll
      for (int r = 0; r < MAXREP; ++r) {
        if (r < rep) {
          const float pr = ps[r * kVecChunk + j];
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[r][e] += pr * vf[e];
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < MAXREP; ++r) {
    if (r < rep) {
#pragma unroll
      for (int e = 0; e < 8; ++e) red[pg * hd + vec * 8 + e] = acc[r][e];
      __syncthreads();
      for (int i = threadIdx.x; i < hd; i += blockDim.x) {
        float sum = 0.f;
        for (int k = 0; k < G; ++k) sum += red[k * hd + i];
        part(r)[i] = sum;
      }
      __syncthreads();
    }
  }
  for (int r = threadIdx.x; r < rep; r += blockDim.x) {
    part(r)[hd] = ml[2 * r];
    part(r)[hd + 1] = ml[2 * r + 1];
  }
}

bool decode_vec_ok(int hd) {
  const int nv = hd / 8;
  return hd % 8 == 0 && nv >= 1 && nv <= 32 && (nv & (nv - 1)) == 0;
}

// grid (H, B), block 512: out[b, h*hd + i] = sum_s o_s[i] e^(m_s - M) / sum_s l_s e^(m_s - M).
// The split weights go to shared memory; SG = 512 / hd groups of threads sum interleaved splits.
constexpr int kCombineThreads = 512;
template <typename T>
__global__ void attention_combine_k(const float* partial, int nsplit, AttnDims d, T* out) {
  extern __shared__ float cw[];  // [nsplit] weights, then [SG][hd] sums
  const int h = blockIdx.x, b = blockIdx.y, hd = d.hd;
  const int64_t st = hd + 2;
  const float* p = partial + (int64_t(b) * d.H + h) * nsplit * st;
  float M = -INFINITY;
  for (int s = threadIdx.x; s < nsplit; s += blockDim.x) M = fmaxf(M, p[s * st + hd]);
  M = block_max(M);
  float L = 0.f;
  for (int s = threadIdx.x; s < nsplit; s += blockDim.x) {
    const float ms = p[s * st + hd];
    const float e = ms == -INFINITY ? 0.f : expf(ms - M);
    cw[s] = e;
    L += p[s * st + hd + 1] * e;
  }
  L = block_sum(L);  // also orders the cw writes before the reads below
  float* red = cw + nsplit;
  const int SG = max(1, int(blockDim.x) / hd);
  const int i = threadIdx.x % hd, sg = threadIdx.x / hd;
  if (sg < SG) {
    float acc = 0.f;
#pragma unroll 4
    for (int s = sg; s < nsplit; s += SG)
      if (cw[s] != 0.f) acc += p[s * st + i] * cw[s];
    red[sg * hd + i] = acc;
  }
  __syncthreads();
  const float inv = 1.f / L;
  for (int k = threadIdx.x; k < hd; k += blockDim.x) {
    float acc = 0.f;
    for (int g = 0; g < SG; ++g) acc += red[g * hd + k];
    out[int64_t(b) * d.H * hd + int64_t(h) * hd + k] = from_f<T>(acc * inv);
  }
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
                  cudaStream_t s) {
  if (rows <= 0) return;
  MOSAIC_DISPATCH(a, add_rms_norm_k<T><<<unsigned(rows), norm_threads(D), 0, s>>>(
                         x, static_cast<const T*>(delta), w, D, eps, static_cast<T*>(out)));
}

void qkv_rope_cache(Act a, const void* qkv, int64_t rows, const int32_t* pos, const int32_t* slot, const AttnDims& d,
                    const float* q_norm, const float* k_norm, float eps, const float* inv_freq, void* q_out,
                    void* k_cache, void* v_cache, cudaStream_t s) {
  if (rows <= 0) return;
  const int nh = d.H + 2 * d.Hkv, warps = 4;
  const dim3 grid(unsigned(rows), unsigned((nh + warps - 1) / warps));
  MOSAIC_DISPATCH(a, qkv_rope_cache_k<T><<<grid, 32 * warps, 0, s>>>(
                         static_cast<const T*>(qkv), pos, slot, d, q_norm, k_norm, eps, inv_freq,
                         static_cast<T*>(q_out), static_cast<T*>(k_cache), static_cast<T*>(v_cache)));
}

void causal_softmax(Act a, const float* S, int64_t heads, int64_t T_, int64_t Tk, int64_t pos0, void* P,
                    cudaStream_t s) {
  if (heads * T_ <= 0) return;
  MOSAIC_DISPATCH(a, causal_softmax_k<T><<<unsigned(heads * T_), 256, 0, s>>>(S, T_, Tk, pos0, static_cast<T*>(P)));
}

// Splits of the KV length: the larger of the two kernels' counts (partials are sized for it).
int decode_nsplit(const AttnDims& d) {
  return decode_vec_ok(d.hd) ? int((d.cap + kVecChunk - 1) / kVecChunk) : decode_splits(d);
}

int64_t attention_decode_partial_floats(int B, const AttnDims& d) {
  return int64_t(B) * d.H * decode_nsplit(d) * (d.hd + 2);
}

void attention_decode(Act a, const void* q, const void* k_cache, const void* v_cache, const int32_t* pos,
                      const int32_t* slot, int B, const AttnDims& d, float* partial, void* out, cudaStream_t s) {
  if (B <= 0) return;
  const int nsplit = decode_nsplit(d), rep = d.H / d.Hkv;
  const float scale = 1.0f / sqrtf(float(d.hd));
  const dim3 grid(unsigned(d.Hkv), unsigned(B), unsigned(nsplit));
  if (decode_vec_ok(d.hd)) {
    const int G = kVecThreads / (d.hd / 8);
    const size_t vsmem = size_t(rep * kVecChunk + G * d.hd + 2 * rep) * sizeof(float);
#define MOSAIC_DEC_VEC(R)                                                                                  \
  MOSAIC_DISPATCH(a, attention_decode_vec_k<T, R><<<grid, kVecThreads, vsmem, s>>>(                        \
                         static_cast<const T*>(q), static_cast<const T*>(k_cache), static_cast<const T*>(v_cache), \
                         pos, slot, d, scale, partial))
    if (rep <= 2) MOSAIC_DEC_VEC(2);
    else if (rep <= 4) MOSAIC_DEC_VEC(4);
    else if (rep <= 8) MOSAIC_DEC_VEC(8);
    else MOSAIC_DEC_VEC(16);
#undef MOSAIC_DEC_VEC
  } else {
    const size_t smem = size_t(rep * d.hd + rep * kDecChunk + 2 * rep) * sizeof(float);
    MOSAIC_DISPATCH(a, attention_decode_k<T><<<grid, kDecChunk, smem, s>>>(
                           static_cast<const T*>(q), static_cast<const T*>(k_cache), static_cast<const T*>(v_cache),
                           pos, slot, d, scale, partial));
  }
  const int SG = std::max(1, kCombineThreads / d.hd);
  const size_t csmem = size_t(nsplit + SG * d.hd) * sizeof(float);
  MOSAIC_DISPATCH(a, attention_combine_k<T><<<dim3(unsigned(d.H), unsigned(B)), kCombineThreads, csmem, s>>>(
                         partial, nsplit, d, static_cast<T*>(out)));
}

void silu_mul(Act a, const void* gu, int64_t rows, int64_t I, void* out, cudaStream_t s) {
  if (rows <= 0) return;
  const dim3 grid(unsigned(std::min<int64_t>((I + 255) / 256, 64)), unsigned(rows));
  MOSAIC_DISPATCH(a, silu_mul_k<T><<<grid, 256, 0, s>>>(static_cast<const T*>(gu), I, static_cast<T*>(out)));
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
