// FP32 kernels of the whole-layer calibration pass (layer_kernels.h). Simple, one CTA per row:
// these passes are bound by the FP32 GEMMs around them (a LLaMA-3-8B layer is ~0.9 TFLOP per
// 2048-token window), so the kernels here aim at matching the CPU reference's arithmetic, not at
// peak bandwidth. Built with -fmad=false like the rest of quant_gpu (no fused multiply-adds the
// CPU code does not do).
#include "quant_gpu/layer_kernels.h"

#include <cmath>

#include "gpu/device.h"

namespace mosaic::quant_gpu::layer_kernels {

namespace {

constexpr int kThreads = 256;

// Block-wide reductions over kThreads threads (any value of every thread participates).
template <typename T, typename Op>
__device__ T block_reduce(T v, Op op) {
  __shared__ T part[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) part[warp] = v;
  __syncthreads();
  v = part[0];
  for (int w = 1; w < kThreads / 32; ++w) v = op(v, part[w]);
  __syncthreads();  // part[] is reused by the next reduction
  return v;
}

struct Sum {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a + b; }
};
struct Max {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// grid = rows
__global__ void rms_norm_kernel(const float* __restrict__ x, const float* __restrict__ w,
                                const float* __restrict__ inv_scale, int64_t dim, float eps, float* __restrict__ out) {
  const float* row = x + blockIdx.x * dim;
  float* o = out + blockIdx.x * dim;
  double ss = 0;
  for (int64_t i = threadIdx.x; i < dim; i += kThreads) ss += double(row[i]) * double(row[i]);
  ss = block_reduce(ss, Sum{});
  const float inv = float(1.0 / sqrt(ss / double(dim) + double(eps)));
  for (int64_t i = threadIdx.x; i < dim; i += kThreads) {
    float v = w[i] * (row[i] * inv);
    if (inv_scale) v = v * inv_scale[i];
    o[i] = v;
  }
}

// grid = rows
__global__ void prepare_rows_kernel(float* __restrict__ x, int64_t K, int bits, int* __restrict__ bad) {
  float* row = x + blockIdx.x * K;
  float amax = 0;
  bool finite = true;
  for (int64_t i = threadIdx.x; i < K; i += kThreads) {
    const float a = fabsf(row[i]);
    finite &= a <= 3.402823466e38f;  // false for inf and NaN
    amax = fmaxf(amax, a);
  }
  const int all_finite = block_reduce(int(finite), [](int a, int b) { return a & b; });
  if (!all_finite) {
    if (threadIdx.x == 0) atomicExch(bad, 1);
    return;
  }
  if (bits >= 16) return;
  amax = block_reduce(amax, Max{});
  if (amax == 0) return;
  const float qmax = float((1 << (bits - 1)) - 1);
  const float sc = amax / qmax;
  for (int64_t i = threadIdx.x; i < K; i += kThreads) row[i] = sc * fminf(fmaxf(roundf(row[i] / sc), -qmax), qmax);
}

// grid = (T, H + 2 Hkv); one CTA per token and head. smem: hd floats.
__global__ void split_heads_kernel(const float* __restrict__ qkv, int64_t T, int H, int Hkv, int hd,
                                   const float* __restrict__ q_norm, const float* __restrict__ k_norm, float eps,
                                   const float* __restrict__ cos, const float* __restrict__ sin, float* __restrict__ Q,
                                   float* __restrict__ K, float* __restrict__ V) {
  extern __shared__ float v[];
  const int64_t t = blockIdx.x;
  const int h = blockIdx.y;
  const int64_t width = int64_t(H + 2 * Hkv) * hd;
  const float* src = qkv + t * width + int64_t(h) * hd;
  for (int i = threadIdx.x; i < hd; i += kThreads) v[i] = src[i];
  __syncthreads();
  float* dst;
  const float* norm = nullptr;
  bool rotate = true;
  if (h < H) {
    dst = Q + (int64_t(h) * T + t) * hd;
    norm = q_norm;
  } else if (h < H + Hkv) {
    dst = K + (int64_t(h - H) * T + t) * hd;
    norm = k_norm;
  } else {
    dst = V + (int64_t(h - H - Hkv) * T + t) * hd;
    rotate = false;
  }
  if (rotate && norm) {  // Qwen3: RMSNorm over head_dim before RoPE
    double ss = 0;
    for (int i = threadIdx.x; i < hd; i += kThreads) ss += double(v[i]) * double(v[i]);
    ss = block_reduce(ss, Sum{});
    const float inv = float(1.0 / sqrt(ss / double(hd) + double(eps)));
    for (int i = threadIdx.x; i < hd; i += kThreads) v[i] = norm[i] * (v[i] * inv);
    __syncthreads();
  }
  if (!rotate) {
    for (int i = threadIdx.x; i < hd; i += kThreads) dst[i] = v[i];
    return;
  }
  const int half = hd / 2;  // rotate_half: element i pairs with i + hd/2
  const float* c = cos + t * half;
  const float* s = sin + t * half;
  for (int i = threadIdx.x; i < half; i += kThreads) {
    const float a = v[i], b = v[i + half];
    dst[i] = a * c[i] - b * s[i];
    dst[i + half] = b * c[i] + a * s[i];
  }
}

// grid = rows
__global__ void causal_softmax_kernel(float* __restrict__ S, int64_t T) {
  float* row = S + blockIdx.x * T;
  const int64_t n = int64_t(blockIdx.x % T) + 1;  // keys 0 .. position
  float mx = -INFINITY;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) mx = fmaxf(mx, row[i]);
  mx = block_reduce(mx, Max{});
  float sum = 0;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) {
    const float e = expf(row[i] - mx);
    row[i] = e;
    sum += e;
  }
  sum = block_reduce(sum, Sum{});
  const float inv = 1.0f / sum;
  for (int64_t i = threadIdx.x; i < T; i += kThreads) row[i] = i < n ? row[i] * inv : 0.0f;
}

__global__ void merge_heads_kernel(const float* __restrict__ O, int64_t T, int H, int hd, float* __restrict__ out) {
  const int64_t n = T * H * hd;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / (int64_t(H) * hd), r = i % (int64_t(H) * hd), h = r / hd, d = r % hd;
    out[i] = O[(h * T + t) * hd + d];
  }
}

__global__ void silu_mul_kernel(const float* __restrict__ gu, int64_t T, int64_t I, float* __restrict__ out) {
  const int64_t n = T * I;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / I, j = i % I;
    const float g = gu[t * 2 * I + j], u = gu[t * 2 * I + I + j];
    // silu(g) = g * sigmoid(g), from exp(-|g|) (never overflows), as ops::silu_mul.
    const float e = expf(-fabsf(g));
    const float sig = g >= 0 ? 1.0f / (1.0f + e) : e / (1.0f + e);
    out[i] = g * sig * u;
  }
}

__global__ void add_kernel(float* __restrict__ y, const float* __restrict__ x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] += x[i];
}

unsigned grid_for(int64_t n) { return unsigned(std::min<int64_t>((n + kThreads - 1) / kThreads, 132 * 16)); }

void check_launch(const char* what) { gpu::check_cuda(cudaGetLastError(), what); }

}  // namespace

void rms_norm(const float* x, const float* w, const float* inv_scale, int64_t rows, int64_t dim, float eps, float* out,
              cudaStream_t s) {
  if (rows == 0) return;
  rms_norm_kernel<<<unsigned(rows), kThreads, 0, s>>>(x, w, inv_scale, dim, eps, out);
  check_launch("rms_norm kernel");
}

void prepare_rows(float* x, int64_t rows, int64_t K, int bits, int* bad, cudaStream_t s) {
  if (rows == 0) return;
  prepare_rows_kernel<<<unsigned(rows), kThreads, 0, s>>>(x, K, bits, bad);
  check_launch("prepare_rows kernel");
}

void split_heads(const float* qkv, int64_t T, int H, int Hkv, int hd, const float* q_norm, const float* k_norm,
                 float eps, const float* cos, const float* sin, float* Q, float* K, float* V, cudaStream_t s) {
  if (T == 0) return;
  split_heads_kernel<<<dim3(unsigned(T), unsigned(H + 2 * Hkv)), kThreads, size_t(hd) * 4, s>>>(
      qkv, T, H, Hkv, hd, q_norm, k_norm, eps, cos, sin, Q, K, V);
  check_launch("split_heads kernel");
}

void causal_softmax(float* S, int64_t rows, int64_t T, cudaStream_t s) {
  if (rows == 0) return;
  causal_softmax_kernel<<<unsigned(rows), kThreads, 0, s>>>(S, T);
  check_launch("causal_softmax kernel");
}

void merge_heads(const float* O, int64_t T, int H, int hd, float* out, cudaStream_t s) {
  merge_heads_kernel<<<grid_for(T * H * hd), kThreads, 0, s>>>(O, T, H, hd, out);
  check_launch("merge_heads kernel");
}

void silu_mul(const float* gu, int64_t T, int64_t I, float* out, cudaStream_t s) {
  silu_mul_kernel<<<grid_for(T * I), kThreads, 0, s>>>(gu, T, I, out);
  check_launch("silu_mul kernel");
}

void add(float* y, const float* x, int64_t n, cudaStream_t s) {
  add_kernel<<<grid_for(n), kThreads, 0, s>>>(y, x, n);
  check_launch("add kernel");
}

}  // namespace mosaic::quant_gpu::layer_kernels
