// Device side of the per-token activation quantization (rule: act_quant.h): one CTA, or at decode a
// thread-block cluster acting as one, quantizes one row. Shared by the stand-alone kernel (act_quant.cu) and the producers that fuse it into their
// epilogue (RMSNorm, SiLU-mul in kernels.cu), so every path makes the same codes.
#pragma once
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cfloat>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "cuda/hopper_ptx.cuh"
#include "cuda/pdl.cuh"
#include "util/env.h"

namespace mosaic::gpu::kern::aq {

__device__ __forceinline__ float load_f(const __half* p, int64_t i) { return __half2float(p[i]); }
__device__ __forceinline__ float load_f(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void store_f(__half* p, int64_t i, float v) { p[i] = __float2half_rn(v); }
__device__ __forceinline__ void store_f(__nv_bfloat16* p, int64_t i, float v) { p[i] = __float2bfloat16_rn(v); }

// The CPU's round_e4m3 (model/act_quant_linear.cpp): nearest e4m3fn value, ties to even,
// subnormal spacing 2^-9 below 2^-6, saturating at 448.
__device__ __forceinline__ float round_e4m3(float v) {
  const float a = fabsf(v);
  if (!(a > 0.f)) return v;
  if (a >= 448.f) return copysignf(448.f, v);
  int e;
  frexpf(a, &e);
  const int E = max(e - 1, -6);
  const float step = ldexpf(1.f, E - 3);
  const float q = __fmul_rn(rintf(__fdiv_rn(a, step)), step);
  return copysignf(fminf(q, 448.f), v);
}

// The largest |value| of the CTA's row (NaN skipped, as fmaxf does), from each thread's partial
// max; every thread of the CTA must call it and gets the result. blockDim a multiple of 32, <= 1024.
__device__ __forceinline__ float block_max(float amax) {
  __shared__ float warp_max[32];
  for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  const int nw = int(blockDim.x >> 5);
  if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = amax;
  __syncthreads();
  amax = warp_max[0];
  for (int w = 1; w < nw; ++w) amax = fmaxf(amax, warp_max[w]);
  __syncthreads();  // warp_max may be reused by the caller's next row
  return amax;
}

// One value through the rule, given the row's scale s. NaN passes through, never clamped to a code.
__device__ __forceinline__ float quantize_value(float x, float s, float top, bool fp8) {
  if (!(fabsf(x) <= FLT_MAX)) return x;
  const float v = __fdiv_rn(x, s);
  const float q = fp8 ? round_e4m3(v) : fminf(fmaxf(roundf(v), -top), top);  // roundf: half away from zero
  return __fmul_rn(s, q);
}

// The integer codes with a product instead of the IEEE division where that cannot change the code:
// v' = x * inv (inv = 1 / s rounded) lies within |x / s| 1.5 2^-23 <= 2^-15.9 of __fdiv_rn(x, s) for
// |x| <= max|x| (so |x / s| <= top <= 127), so both round to the same integer unless v' is within 2^-14 of
// a half-integer, where the exact form decides. False there, and for a NaN v'.
__device__ __forceinline__ bool product_decides(float v) {
  const float a = fabsf(v);
  return fabsf(a - floorf(a) - 0.5f) > 0x1p-14f;
}

// The integer rule's value (fp8 false), by the product where it decides (product_decides). inv must be finite.
__device__ __forceinline__ float quantize_int_value(float x, float s, float inv, float top) {
  const float v = x * inv;
  if (!product_decides(v)) return quantize_value(x, s, top, false);  // NaN lands here too
  return __fmul_rn(s, fminf(fmaxf(rintf(v), -top), top));
}

// The INT8 code of x in a row of scale s = max|x| / 127 as the W4A8 kernel's own quantize pass makes it
// (w4a8_gemm.cu's Int8Codec: clamp(roundf(x / s)), 0 for a zero row), by the product where it decides.
__device__ __forceinline__ int8_t int8_code(float x, float s, float inv, float amax) {
  if (amax == 0.f) return 0;
  const float v = x * inv;
  const float r = product_decides(v) ? rintf(v) : roundf(__fdiv_rn(x, s));  // NaN: exact form
  return int8_t(int(fminf(fmaxf(r, -127.f), 127.f)));
}

// A zero row, and a row whose max is inf, are left as they are (the CPU stops with an error there).
__device__ __forceinline__ bool row_passes_through(float amax) { return amax == 0.f || !(amax <= FLT_MAX); }

// dst[0..K) = s * code(src[k] / s), s = max|src| / top, by all threads of the CTA (blockDim a
// multiple of 32, at most 1024; every thread must call it). src may equal dst; values another thread
// of this CTA wrote to src must be visible (a __syncthreads() before the call). A zero row is copied;
// a row whose max is inf, and NaN elements, pass through unchanged. The general form (any K): it
// reads the row twice from memory; the producers use quantize_held below.
template <typename T>
__device__ void quantize_row(const T* src, T* dst, int64_t K, float top, bool fp8) {
  float amax = 0.f;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) amax = fmaxf(amax, fabsf(load_f(src, k)));
  amax = block_max(amax);
  if (row_passes_through(amax)) {
    if (src != dst)
      for (int64_t k = threadIdx.x; k < K; k += blockDim.x) dst[k] = src[k];
    return;
  }
  const float s = __fdiv_rn(amax, top);
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) store_f(dst, k, quantize_value(load_f(src, k), s, top, fp8));
}

// ---- A row held by one CTA or by a thread-block cluster -------------------------------------------------
// The held-row kernels below (RMSNorm, SiLU-mul, the stand-alone quantization) run a row either on one CTA
// (an ordinary launch) or, at decode, on a cluster of C CTAs (grid.z = C, cluster (1, 1, C)): one CTA per
// row put all of a quantized row's arithmetic on one SM, and the W4A8 decode step's norms and SiLU-mul took
// 0.74 ms against 0.22 ms unquantized (Qwen3-8B, batch 4, H200, twenty-first session). The C CTAs act as one
// CTA of C x blockDim.x threads: row thread v = rank x blockDim.x + threadIdx.x holds the elements
// k = v + j x (C x blockDim.x), and row_reduce combines the same per-warp partials in the same order as the
// one-CTA block reduction (kernel_util.cuh's block_reduce), so a row's values are bit-identical for every C.
// At prefill the rows are many and a 1024-thread CTA per row left one CTA per SM, each waiting through its
// row's load, reduction and store in turn (add_rms_norm_held_k 52 us per 2048 rows, 30% of the DRAM bandwidth:
// ncu, H200, twenty-first session). There a CTA of 1024 / V threads holds the row instead, each thread acting
// as V row threads (q < V): row thread v = threadIdx.x + blockDim.x x (rank + C x q) in general (C = gridDim.z
// CTAs per row), the same element order and partials, so again the same values.
// V > 1 is always one CTA of 1024 / V threads per row, so its indices are compile-time strides (fewer
// registers: the form held 48 values a thread and spilled with run-time ones).
inline constexpr int kHeldRowThreads = 1024;
template <int V = 1>
__device__ __forceinline__ int row_thread(int q = 0) {
  if constexpr (V > 1) return int(threadIdx.x) + (kHeldRowThreads / V) * q;
  return int(threadIdx.x + blockDim.x * (blockIdx.z + gridDim.z * unsigned(q)));
}
template <int V = 1>
__device__ __forceinline__ int row_threads() {
  if constexpr (V > 1) return kHeldRowThreads;
  return int(gridDim.z * blockDim.x);
}

// The cluster form's exchange: every CTA pushes its warps' partials into every CTA's inbox with st.async,
// counted by the inbox's mbarrier (transaction bytes). So no cluster-wide barrier sits on the row's
// critical path, nor the GPU-scope fence and L1 invalidation that barrier.cluster.arrive.release /
// wait.acquire compile to (MEMBAR.ALL.GPU, CCTL.IVALL: the first cluster form, with them, made the W4A8
// decode step's norms and SiLU-mul slower than one CTA per row). One inbox per reduction of a kernel (its
// mbarrier completes one phase). A CTA exits only after its own inbox has received every push, so no
// push lands in a CTA that has exited.
struct RowInbox {
  alignas(8) uint64_t bar;
  float part[2][32];  // [channel][row warp = (rank + C x q) x warps per CTA + warp]
};

// Before a cluster form's first row_reduce (best before pdl_wait: it then overlaps the previous kernel):
// initializes the inboxes and waits until every CTA of the cluster has, so no push finds an uninitialized
// mbarrier. All threads must call it; a no-op for one CTA per row.
template <int N>
__device__ __forceinline__ void row_setup(RowInbox (&box)[N]) {
  if (gridDim.z == 1) return;
  if (threadIdx.x == 0) {
#pragma unroll
    for (int i = 0; i < N; ++i) cuda::hopper::mbar_init(&box[i].bar, 1);
    cuda::hopper::fence_mbarrier_init();
  }
  asm volatile("barrier.cluster.arrive.relaxed;\n" ::: "memory");
  asm volatile("barrier.cluster.wait;\n" ::: "memory");
}

// N reductions over the row's threads at once, from each row thread's partials (v[q][c]: row thread
// row_thread(q)'s for channel c): channel 0 sums (kMax0 false) or takes the max, channel 1 takes the max.
// Every thread must call it and gets the results. box: this reduction's own inbox (row_setup before, for a
// cluster). At most 32 row warps (1024 row threads).
template <bool kMax0, int V, int N>
__device__ void row_reduce_n(const float (&v)[V][N], RowInbox& box, float (&out)[N]) {
  static_assert(N == 1 || N == 2, "an inbox has two channels");
  const auto op = [](int c, float a, float b) { return c > 0 || kMax0 ? fmaxf(a, b) : a + b; };
  float p[V][N];
#pragma unroll
  for (int q = 0; q < V; ++q)
#pragma unroll
    for (int c = 0; c < N; ++c) {
      p[q][c] = v[q][c];
      for (int o = 16; o > 0; o >>= 1) p[q][c] = op(c, p[q][c], __shfl_xor_sync(0xffffffffu, p[q][c], o));
    }
  const int lane = int(threadIdx.x & 31), w = int(threadIdx.x >> 5), wpc = int(blockDim.x >> 5), C = int(gridDim.z);
  const auto slot_of = [&](int q) { return w + wpc * (int(blockIdx.z) + C * q); };  // row warp of row_thread(q)
  if (C == 1) {
    if (lane == 0)
#pragma unroll
      for (int q = 0; q < V; ++q)
#pragma unroll
        for (int c = 0; c < N; ++c) box.part[c][slot_of(q)] = p[q][c];
    __syncthreads();
  } else {
    namespace h = cuda::hopper;
    const uint32_t bar = h::smem_u32(&box.bar);
    if (threadIdx.x == 0) h::mbar_expect_tx(&box.bar, uint32_t(C * V * wpc * N * 4));  // this CTA's one arrival
    if (lane == 0)  // this warp's partials into every CTA's inbox (this one's included)
#pragma unroll
      for (int q = 0; q < V; ++q)
#pragma unroll
        for (int c = 0; c < N; ++c) {
          const uint32_t slot = h::smem_u32(&box.part[c][slot_of(q)]);
          for (int r = 0; r < C; ++r)
            h::st_async_b32(h::mapa(slot, uint32_t(r)), __float_as_uint(p[q][c]), h::mapa(bar, uint32_t(r)));
        }
    h::mbar_wait(bar, 0);
  }
  // As block_reduce's last warp: lane l takes row warp l's partial (absent warps: the identity).
#pragma unroll
  for (int c = 0; c < N; ++c) {
    float x = lane < C * V * wpc ? box.part[c][lane] : (c > 0 || kMax0 ? -INFINITY : 0.f);
    for (int o = 16; o > 0; o >>= 1) x = op(c, x, __shfl_xor_sync(0xffffffffu, x, o));
    out[c] = x;
  }
}
// Sum (kMax false) or max (kMax true) of one value per row thread (v[q]: row_thread(q)'s).
template <bool kMax, int V>
__device__ float row_reduce(const float (&v)[V], RowInbox& box) {
  float p[V][1], out[1];
#pragma unroll
  for (int q = 0; q < V; ++q) p[q][0] = v[q];
  row_reduce_n<kMax, V, 1>(p, box, out);
  return out[0];
}
template <bool kMax>
__device__ float row_reduce(float v, RowInbox& box) {
  const float p[1] = {v};
  return row_reduce<kMax, 1>(p, box);
}

// The same rule on a row held in registers: row thread v holds elements k = v + j row_threads() (j < PER,
// valid while k < K), already rounded to the activation type (so the codes are those of quantize_row on
// the stored row). Replaces each held value by s * code. One pass over memory instead of three: the
// producers' rows at decode are a few CTAs, latency-bound on every pass. box: as row_reduce's.
// Every v[j] through the rule given the row's max|value| (a producer that had it from its own reduction).
// Values a producer holds past the row's end are never stored.
template <int PER>
__device__ void quantize_held_given(float (&v)[PER], float top, bool fp8, float amax) {
  if (row_passes_through(amax)) return;
  const float s = __fdiv_rn(amax, top), inv = 1.f / s;
  const bool fast = !fp8 && inv <= FLT_MAX;  // the same for the whole row
#pragma unroll
  for (int j = 0; j < PER; ++j) v[j] = fast ? quantize_int_value(v[j], s, inv, top) : quantize_value(v[j], s, top, fp8);
}
template <int PER>
__device__ void quantize_held(float (&v)[PER], int64_t K, float top, bool fp8, RowInbox& box) {
  float amax = 0.f;
#pragma unroll
  for (int j = 0; j < PER; ++j)
    if (row_thread() + int64_t(j) * row_threads() < K) amax = fmaxf(amax, fabsf(v[j]));
  quantize_held_given(v, top, fp8, row_reduce<true>(amax, box));
}

// The held row's only store: element k = v + j row_threads() to dst[k] (as the activation type).
template <typename T, int PER>
__device__ __forceinline__ void store_held(const float (&v)[PER], T* dst, int64_t K) {
#pragma unroll
  for (int j = 0; j < PER; ++j) {
    const int64_t k = row_thread() + int64_t(j) * row_threads();
    if (k < K) store_f(dst, k, v[j]);
  }
}
// The same for a thread acting as V row threads: v[q][j] is element row_thread(q) + j row_threads<V>().
template <typename T, int V, int PER>
__device__ __forceinline__ void store_held(const float (&v)[V][PER], T* dst, int64_t K) {
#pragma unroll
  for (int q = 0; q < V; ++q)
#pragma unroll
    for (int j = 0; j < PER; ++j) {
      const int64_t k = row_thread<V>(q) + int64_t(j) * row_threads<V>();
      if (k < K) store_f(dst, k, v[q][j]);
    }
}

// ---- A row as 16-byte chunks, for producers whose only reduction is the max ------------------------------
// The max is exact in any order, so these may hold the row in any layout and still make the codes of the
// forms above: CTA thread t of cluster rank c holds chunk c x blockDim.x + t, elements [8 chunk, 8 chunk + 8).
// Why (twenty-second session): at decode the quantizing SiLU-mul on 1024 row threads took 12 two-byte loads
// per operand and per thread and 12 elements of serial math (Qwen3-8B, I = 12288); here a thread loads one
// 16-byte chunk per operand and the row spreads over up to 8 CTAs of a cluster.
inline constexpr int kVec8Threads = 256;
// CTAs of the chunked form for a row of K (0: K not a multiple of 8, or more than a portable cluster of 8).
inline int vec8_row_ctas(int64_t K) {
  const int64_t c = (K / 8 + kVec8Threads - 1) / kVec8Threads;
  return K % 8 == 0 && c <= 8 ? int(c) : 0;
}
__device__ __forceinline__ int64_t vec8_chunk() { return int64_t(blockIdx.z) * blockDim.x + threadIdx.x; }

// The row's max over every thread's amax (>= 0; a cluster when gridDim.z > 1: row_setup(box) before). Every
// thread must call it and gets the result.
__device__ __forceinline__ float vec8_row_max(float amax, RowInbox& box) {
  for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  if ((threadIdx.x & 31) == 0) box.part[0][threadIdx.x >> 5] = amax;
  __syncthreads();
  float m = 0.f;
  for (int w = 0; w < int(blockDim.x >> 5); ++w) m = fmaxf(m, box.part[0][w]);
  const int C = int(gridDim.z);
  if (C == 1) return m;
  namespace h = cuda::hopper;
  const uint32_t bar = h::smem_u32(&box.bar);
  if (threadIdx.x == 0) {  // this CTA's max into every CTA's inbox (this one's included)
    h::mbar_expect_tx(&box.bar, uint32_t(C * 4));
    const uint32_t slot = h::smem_u32(&box.part[1][blockIdx.z]);
    for (int r = 0; r < C; ++r) h::st_async_b32(h::mapa(slot, uint32_t(r)), __float_as_uint(m), h::mapa(bar, uint32_t(r)));
  }
  h::mbar_wait(bar, 0);
  m = 0.f;
  for (int r = 0; r < C; ++r) m = fmaxf(m, box.part[1][r]);
  return m;
}

template <typename T>
__device__ __forceinline__ void load8(const T* p, float (&v)[8]) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const T* t = reinterpret_cast<const T*>(&u);
#pragma unroll
  for (int e = 0; e < 8; ++e) v[e] = load_f(t, e);
}
template <typename T>
__device__ __forceinline__ void store8(T* p, const float (&v)[8]) {
  uint4 u;
  T* t = reinterpret_cast<T*>(&u);
#pragma unroll
  for (int e = 0; e < 8; ++e) store_f(t, e, v[e]);
  *reinterpret_cast<uint4*>(p) = u;
}

// kernel over `rows` rows of K in the chunked form (vec8_row_ctas(K) CTAs per row, a cluster if > 1), PDL.
template <typename... KArgs, typename... Args>
void launch_vec8_rows(void (*kernel)(KArgs...), int64_t rows, int64_t K, cudaStream_t s, Args... args) {
  const int c = vec8_row_ctas(K);
  cuda::launch_maybe_pdl_cluster(cuda::pdl_env_enabled(), c, kernel, dim3(unsigned(rows), 1, unsigned(c)),
                                 dim3(kVec8Threads), 0, s, args...);
}

// Elements per thread for a held row of K with `threads` threads: 8 or 16 (at 1024 threads 16 fits
// the 64 registers a thread may have without spilling; 32 spilled), 0 = too long to hold (use
// quantize_row): with 1024 threads, rows up to 16384 (every norm; the MLP of the 8B configs).
inline int held_per_thread(int64_t K, int threads) {
  return K <= 8 * int64_t(threads) ? 8 : K <= 16 * int64_t(threads) ? 16 : 0;
}

// CTAs per row of a held-row kernel with `threads` row threads: a cluster of kRowCluster CTAs (each
// threads / kRowCluster threads) for the few rows of a decode step on a GPU with clusters (sm_90) when the
// row has 1024 threads, else 1. MOSAIC_ROW_CLUSTER=1|2|4|8 sets the cluster size (1: one CTA per row;
// same-binary comparisons), MOSAIC_ROW_CLUSTER_ROWS the most rows that take the cluster form (default
// 64; prefill chunks have more: there a 1024-thread CTA per row leaves one CTA per SM, untested so far).
inline constexpr int kRowCluster = 4;
inline constexpr int64_t kRowClusterMaxRows = 64;
inline int row_cluster(int64_t rows, int threads);
// Whether a quantizing producer of `rows` rows of K takes the chunked form: the decode rows (those of the
// cluster form, row_cluster), K a multiple of 8 within 8 CTAs, 16-byte aligned rows. MOSAIC_QUANT_VEC8=0: never
// (same-binary comparisons).
inline bool vec8_rows(int64_t rows, int64_t K, const void* src, const void* dst) {
  static const bool on = env_switch_on("MOSAIC_QUANT_VEC8");
  const bool aligned = (reinterpret_cast<uintptr_t>(src) | reinterpret_cast<uintptr_t>(dst)) % 16 == 0;
  return on && aligned && vec8_row_ctas(K) > 0 && row_cluster(rows, 1024) > 1;
}
inline int row_cluster(int64_t rows, int threads) {
  static const int64_t max_rows = env_int("MOSAIC_ROW_CLUSTER_ROWS", int(kRowClusterMaxRows), 1, 1 << 30);
  static const int c = [] {
    int dev = 0, major = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
      cudaGetLastError();
      return 1;
    }
    if (major < 9) return 1;
    return env_choice("MOSAIC_ROW_CLUSTER", kRowCluster, {1, 2, 4, 8});
  }();
  return threads == 1024 && rows <= max_rows ? c : 1;
}

// kernel over `rows` rows (blockIdx.x) of `threads` row threads, with PDL (MOSAIC_PDL): one CTA per row
// or a cluster of row_cluster CTAs (grid.z).
template <typename... KArgs, typename... Args>
void launch_rows(void (*kernel)(KArgs...), int64_t rows, int threads, cudaStream_t s, Args... args) {
  const int c = row_cluster(rows, threads);
  cuda::launch_maybe_pdl_cluster(cuda::pdl_env_enabled(), c, kernel, dim3(unsigned(rows), 1, unsigned(c)),
                                 dim3(unsigned(threads / c)), 0, s, args...);
}

}  // namespace mosaic::gpu::kern::aq
