// The GPU GPTQ's kernels (see gptq_kernels.h; the solve is gptq_cuda.cpp). Compiled with
// -fmad=false (CMakeLists.txt): the group fit and rounding must not be contracted into FMAs the
// host code does not use, or the static group scales would stop being bit-identical to the CPU's.
// The in-batch update uses fmaf explicitly, like OpenBLAS's saxpy.
#include "quant_gpu/gptq_kernels.h"

#include "quant/group_fit.h"
#include "util/error.h"

namespace mosaic::quant_gpu::kernels {

namespace {

constexpr int kTile = 32;


// Wt[k, n] = W[n, k]   (W [N, K] -> Wt [K, N]), 32 x 32 tiles through shared memory.
__global__ void transpose_k(const float* __restrict__ W, int64_t N, int64_t K, float* __restrict__ Wt) {
  __shared__ float t[kTile][kTile + 1];
  const int64_t k0 = int64_t(blockIdx.x) * kTile, n0 = int64_t(blockIdx.y) * kTile;
  for (int i = threadIdx.y; i < kTile; i += blockDim.y) {
    const int64_t n = n0 + i, k = k0 + threadIdx.x;
    if (n < N && k < K) t[i][threadIdx.x] = W[n * K + k];
  }
  __syncthreads();
  for (int i = threadIdx.y; i < kTile; i += blockDim.y) {
    const int64_t k = k0 + i, n = n0 + threadIdx.x;
    if (n < N && k < K) Wt[k * N + n] = t[threadIdx.x][i];
  }
}

// dst[n, k] = src[iperm[k], n]   (processing order [K, N] -> original order [N, K]).
template <typename T>
__global__ void unpermute_k(const T* __restrict__ src, const int32_t* __restrict__ iperm, int64_t N, int64_t K,
                            T* __restrict__ dst) {
  __shared__ T t[kTile][kTile + 1];
  const int64_t k0 = int64_t(blockIdx.x) * kTile, n0 = int64_t(blockIdx.y) * kTile;
  for (int i = threadIdx.y; i < kTile; i += blockDim.y) {
    const int64_t k = k0 + i, n = n0 + threadIdx.x;
    if (n < N && k < K) t[i][threadIdx.x] = src[int64_t(iperm[k]) * N + n];
  }
  __syncthreads();
  for (int i = threadIdx.y; i < kTile; i += blockDim.y) {
    const int64_t n = n0 + i, k = k0 + threadIdx.x;
    if (n < N && k < K) dst[n * K + k] = t[threadIdx.x][i];
  }
}

// Row-major: A[i, j] = A[j, i] for j < i (the upper triangle is the valid one), 32 x 32 tiles.
__global__ void symmetrize_k(float* A, int64_t K) {
  __shared__ float t[kTile][kTile + 1];
  const int64_t bi = blockIdx.y, bj = blockIdx.x;  // destination tile (rows bi, columns bj), bj <= bi
  if (bj > bi) return;
  for (int r = threadIdx.y; r < kTile; r += blockDim.y) {  // source: rows bj, columns bi (upper part)
    const int64_t i = bj * kTile + r, j = bi * kTile + threadIdx.x;
    if (i < K && j < K) t[r][threadIdx.x] = A[i * K + j];
  }
  __syncthreads();
  for (int r = threadIdx.y; r < kTile; r += blockDim.y) {
    const int64_t i = bi * kTile + r, j = bj * kTile + threadIdx.x;
    if (i < K && j < K && j < i) A[i * K + j] = t[threadIdx.x][r];
  }
}

// Dead inputs (diag(H) == 0): their weights are irrelevant and set to 0, as on the CPU.
__global__ void zero_rows_k(float* Wt, int64_t N, const int32_t* rows) {
  const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n < N) Wt[int64_t(rows[blockIdx.y]) * N + n] = 0.0f;
}

// Static groups: every (row n, group g) fit on the original (dead-zeroed) weights.
__global__ void fit_static_k(const float* __restrict__ Wt, int64_t N, int64_t G, int group,
                             const float* __restrict__ hdiag, FitArgs a, float* scale, int* zero, int* overflow) {
  const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, g = blockIdx.y;
  if (n >= N) return;
  const float* col0 = Wt + g * group * N + n;
  const float* h = hdiag + g * group;
  auto wv = [&](int64_t i) { return col0[i * N]; };
  auto hv = [&](int64_t i) { return h[i]; };
  const fit::Params p = fit::fit(wv, hv, group, a.symmetric, a.divisor, a.grid, a.clip_min);
  if (!isfinite(p.scale)) atomicExch(overflow, 1);
  scale[n * G + g] = p.scale;
  zero[n * G + g] = p.zero;
}

// dst row j = src row perm[j]  ([K, N]).
__global__ void gather_rows_k(const float* __restrict__ src, const int32_t* __restrict__ perm, int64_t N,
                              float* __restrict__ dst) {
  const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, j = blockIdx.y;
  if (n < N) dst[j * N + n] = src[int64_t(perm[j]) * N + n];
}

// Hd[i, j] = H[perm[i], perm[j]] in double; the diagonal of dead inputs is 1.
__global__ void permuted_double_k(const float* __restrict__ H, const int32_t* __restrict__ perm,
                                  const uint8_t* __restrict__ dead, int64_t K, double* __restrict__ Hd) {
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, i = blockIdx.y;
  if (j >= K) return;
  const int32_t pi = perm[i];
  Hd[i * K + j] = (i == j && dead[pi]) ? 1.0 : double(H[int64_t(pi) * K + perm[j]]);
}

__global__ void add_diagonal_k(double* A, int64_t K, double lambda) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < K) A[i * K + i] += lambda;
}

// The row-major upper triangle of the final factor is U (see inverse_cholesky_upper in
// quant/gptq.cpp); the lower triangle is zeroed, in fp32.
__global__ void upper_to_float_k(const double* __restrict__ A, int64_t K, float* __restrict__ U) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, r = blockIdx.y;
  if (c < K) U[r * K + c] = c >= r ? float(A[r * K + c]) : 0.0f;
}


// One batch of B columns (processing positions i1 .. i1+B-1). Thread n: output row n. Shared
// memory: the batch's U block Us [B][B] (broadcast reads) and the block's Wt rows tile [B][T]
// (column t = this thread: conflict-free).
__global__ void gptq_batch_k(BatchArgs a) {
  extern __shared__ float sm[];
  const int B = a.B, T = blockDim.x, t = threadIdx.x;
  float* Us = sm;
  float* tile = sm + B * B;
  const int64_t n = int64_t(blockIdx.x) * T + t;
  for (int i = t; i < B * B; i += T) Us[i] = a.U[(a.i1 + i / B) * a.K + a.i1 + i % B];
  for (int r = 0; r < B; ++r) tile[r * T + t] = n < a.N ? a.Wt[(a.i1 + r) * a.N + n] : 0.0f;
  __syncthreads();
  if (n >= a.N) return;  // no barrier below
  for (int j = 0; j < B; ++j) {
    const int64_t pj = a.i1 + j;
    const int col = a.perm[pj];
    const int64_t g = col / a.group;
    if (!a.static_groups && col % a.group == 0) {
      // In-loop fit on the weights as updated so far: this batch's rows from the tile, later
      // ones (a group longer than the batch) from Wt, which the lazy updates keep current.
      auto wv = [&](int64_t i) { return j + i < B ? tile[(j + i) * T + t] : a.Wt[(pj + i) * a.N + n]; };
      const float* h = a.hdiag + col;
      auto hv = [&](int64_t i) { return h[i]; };
      const fit::Params p = fit::fit(wv, hv, a.group, a.fit.symmetric, a.fit.divisor, a.fit.grid, a.fit.clip_min);
      if (!isfinite(p.scale)) atomicExch(a.overflow, 1);
      a.scale[n * a.G + g] = p.scale;
      a.zero[n * a.G + g] = p.zero;
    }
    const fit::Params gp{a.scale[n * a.G + g], a.zero[n * a.G + g]};
    const float w = tile[j * T + t];
    const int c = fit::quantize(w, gp);
    float q = fit::dequantize(c, gp);
    if (a.kept) {  // two-level quantizer inside kept residual blocks
      const int32_t b = a.kept[(n / a.Br) * a.nbc + col / a.Bc];
      if (b >= 0) {
        const int64_t row = int64_t(b) * a.Br + n % a.Br;
        const fit::Params rp{a.res_scale[row], 8};
        const int rc = fit::quantize(w - q, rp);
        a.res_codes[row * a.Bc + col % a.Bc] = uint8_t(rc);
        q += fit::dequantize(rc, rp);
      }
    }
    a.codes_t[pj * a.N + n] = uint8_t(c);
    if (a.err_t) a.err_t[pj * a.N + n] = w - q;
    const float d = Us[j * B + j];
    const float e = (w - q) / d;
    a.E[int64_t(j) * a.N + n] = e;
    if (a.hinv && n == 0) a.hinv[col] = d * d;
    for (int c2 = j + 1; c2 < B; ++c2) tile[c2 * T + t] = fmaf(-Us[j * B + c2], e, tile[c2 * T + t]);
  }
}


unsigned blocks(int64_t n, int per) { return unsigned((n + per - 1) / per); }

void check(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) fail("CUDA error launching ", what, ": ", cudaGetErrorString(e));
}

}  // namespace

void transpose(const float* W, int64_t N, int64_t K, float* Wt, cudaStream_t s) {
  transpose_k<<<dim3(blocks(K, kTile), blocks(N, kTile)), dim3(kTile, 8), 0, s>>>(W, N, K, Wt);
  check("transpose_k");
}
void unpermute(const uint8_t* src, const int32_t* iperm, int64_t N, int64_t K, uint8_t* dst, cudaStream_t s) {
  unpermute_k<uint8_t><<<dim3(blocks(K, kTile), blocks(N, kTile)), dim3(kTile, 8), 0, s>>>(src, iperm, N, K, dst);
  check("unpermute_k");
}
void unpermute(const float* src, const int32_t* iperm, int64_t N, int64_t K, float* dst, cudaStream_t s) {
  unpermute_k<float><<<dim3(blocks(K, kTile), blocks(N, kTile)), dim3(kTile, 8), 0, s>>>(src, iperm, N, K, dst);
  check("unpermute_k");
}
void zero_rows(float* Wt, int64_t N, const int32_t* rows, int count, cudaStream_t s) {
  if (count == 0) return;
  zero_rows_k<<<dim3(blocks(N, 256), unsigned(count)), 256, 0, s>>>(Wt, N, rows);
  check("zero_rows_k");
}
void fit_static(const float* Wt, int64_t N, int64_t G, int group, const float* hdiag, FitArgs a, float* scale,
                int* zero, int* overflow, cudaStream_t s) {
  fit_static_k<<<dim3(blocks(N, 128), unsigned(G)), 128, 0, s>>>(Wt, N, G, group, hdiag, a, scale, zero, overflow);
  check("fit_static_k");
}
void gather_rows(const float* src, const int32_t* perm, int64_t N, int64_t K, float* dst, cudaStream_t s) {
  gather_rows_k<<<dim3(blocks(N, 256), unsigned(K)), 256, 0, s>>>(src, perm, N, dst);
  check("gather_rows_k");
}
void permuted_double(const float* H, const int32_t* perm, const uint8_t* dead, int64_t K, double* Hd, cudaStream_t s) {
  permuted_double_k<<<dim3(blocks(K, 256), unsigned(K)), 256, 0, s>>>(H, perm, dead, K, Hd);
  check("permuted_double_k");
}
void add_diagonal(double* A, int64_t K, double lambda, cudaStream_t s) {
  add_diagonal_k<<<blocks(K, 256), 256, 0, s>>>(A, K, lambda);
  check("add_diagonal_k");
}
void upper_to_float(const double* A, int64_t K, float* U, cudaStream_t s) {
  upper_to_float_k<<<dim3(blocks(K, 256), unsigned(K)), 256, 0, s>>>(A, K, U);
  check("upper_to_float_k");
}
void symmetrize(float* A, int64_t K, cudaStream_t s) {
  symmetrize_k<<<dim3(blocks(K, kTile), blocks(K, kTile)), dim3(kTile, 8), 0, s>>>(A, K);
  check("symmetrize_k");
}
size_t batch_smem(int B, int threads) { return size_t(B) * size_t(B + threads) * sizeof(float); }
size_t max_batch_smem() {
  int dev = 0, v = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) !=
                                                 cudaSuccess)
    fail("cannot query the GPU's shared memory size");
  return size_t(v);
}
void gptq_batch(const BatchArgs& a, int threads, cudaStream_t s) {
  const size_t smem = batch_smem(a.B, threads);
  static size_t configured = 0;  // the attribute is per function: raise it once to the largest need
  if (smem > configured) {
    if (cudaFuncSetAttribute(gptq_batch_k, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)) != cudaSuccess)
      fail("cudaFuncSetAttribute(gptq_batch_k, ", smem, " bytes of shared memory) failed");
    configured = smem;
  }
  gptq_batch_k<<<blocks(a.N, threads), threads, smem, s>>>(a);
  check("gptq_batch_k");
}

}  // namespace mosaic::quant_gpu::kernels
