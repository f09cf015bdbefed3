// The 8-bit LM head (`mosaic quantize --lm-head-int8`, docs/format.md "8-bit LM head"):
//   Y[m, v] = scale[v] * sum_k W[v, k] * X[m, k]
// W int8 [V, D] (codes -127..127, repacked: below), scale fp16 [V], X activations [M, D], Y fp32 or
// activation dtype [M, V]; FP32 accumulation. At decode (M <= 16) the head is a weight stream:
// LLaMA-3-8B's 128256 x 4096 head is 525 MB in int8 against 1.05 GB in FP16, i.e. half the time
// of the FP16 head's cuBLAS GEMV at the same bandwidth.
//
// Work: one warp per 16 vocabulary rows (one m16n8k16 A tile), all of K, in 64-input chunks.
// The weights are the MMA's A operand (converted int8 -> fp16/bf16, exact), X the B operand
// (n8 tiles of X rows: 1 for M <= 8, 2 for M <= 16; larger M runs in slices of 16 rows).
// Inside a chunk the k order of the MMA is permuted so that each lane's operands are contiguous:
//
//   lane (g = lane / 4, t = lane % 4), k-step j = 0..3 of the chunk:
//     MMA columns {2t, 2t+1 | 2t+8, 2t+9}  <-  inputs 16t + 4j + {0, 1 | 2, 3} of the chunk
//
//   chunk inputs   0 .. 15    16 .. 31    32 .. 47    48 .. 63
//   lane t         t = 0      t = 1       t = 2       t = 3        (4 inputs per k-step j)
//
// so lane (g, t) needs W rows g and g + 8 at inputs [16t, 16t + 16) of the chunk (16 bytes each)
// and X row g (g + 8 for the second n8 tile) at the same 16 inputs (two 16-byte loads). A dot
// product only needs W and X in the same order, which they are; the per-row scale is constant
// along K and multiplies the fp32 sum once at the end.
//
// The codes are repacked once at load (int8_rows_repack) so that each warp streams one
// contiguous range: tile i (vocabulary rows 16i .. 16i + 15, zero rows past V) is 16 D bytes, its
// 64-input chunks one after another, each chunk 1 KB:
//
//   tile i:   [ chunk 0 | chunk 1 | ... | chunk D/64 - 1 ]
//   chunk c:  [ half 0: lane 0 .. 31, 16 B each | half 1: lane 0 .. 31, 16 B each ]
//             half h, lane (g, t) = row 16i + g + 8h, inputs 64c + 16t .. 64c + 16t + 15
//
// so a warp's load instruction reads 512 contiguous bytes (row-major codes, the checkpoint's
// order, gave each warp 16 rows read 64 bytes at a time, 4 KB apart: no DRAM locality).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "gpu/kernel_util.cuh"
#include "gpu/mma_util.cuh"

namespace mosaic::gpu::kern {
namespace {

constexpr int kI8Warps = 4;     // warps per CTA
constexpr int kI8Unroll = 4;    // 64-input chunks whose weight loads are in flight together (2 KB per warp)

// 4 int8 codes -> two pairs of T (bytes 0,1 and bytes 2,3), exactly: x + 128 as the low byte of
// the fp16 1024 + (x + 128), minus 1152 (fp16 has step 1 in [1024, 2048)). bf16 (8 significant
// bits) goes through fp32: still exact, the codes are 8-bit integers.
template <typename T>
struct I8Ops;
template <>
struct I8Ops<__half> {
  __device__ static void cvt4(uint32_t w, uint32_t& lo, uint32_t& hi) {
    const uint32_t u = w ^ 0x80808080u;
    const uint32_t l = __byte_perm(u, 0x64646464u, 0x4140), h = __byte_perm(u, 0x64646464u, 0x4342);
    const __half2 off = __float2half2_rn(1152.f);
    const __half2 a = __hsub2(*reinterpret_cast<const __half2*>(&l), off);
    const __half2 b = __hsub2(*reinterpret_cast<const __half2*>(&h), off);
    lo = *reinterpret_cast<const uint32_t*>(&a);
    hi = *reinterpret_cast<const uint32_t*>(&b);
  }
};
template <>
struct I8Ops<__nv_bfloat16> {
  __device__ static void cvt4(uint32_t w, uint32_t& lo, uint32_t& hi) {
    uint32_t l, h;
    I8Ops<__half>::cvt4(w, l, h);
    const float2 fl = __half22float2(*reinterpret_cast<const __half2*>(&l));
    const float2 fh = __half22float2(*reinterpret_cast<const __half2*>(&h));
    const __nv_bfloat162 a = __float22bfloat162_rn(fl), b = __float22bfloat162_rn(fh);
    lo = *reinterpret_cast<const uint32_t*>(&a);
    hi = *reinterpret_cast<const uint32_t*>(&b);
  }
};

__device__ __forceinline__ void store_out(float* y, float v) { *y = v; }
template <typename T>
__device__ __forceinline__ void store_out(T* y, float v) {
  *y = from_f<T>(v);
}

// NT n8 tiles of X rows (M <= 8 NT). Grid-stride over 16-row vocabulary tiles, one per warp.
template <typename T, typename OutT, int NT>
__global__ void __launch_bounds__(kI8Warps * 32) int8_rows_gemm_k(const int8_t* __restrict__ W,
                                                                  const __half* __restrict__ scale, int V, int D,
                                                                  const T* X, int M, OutT* Y, int ldy) {
  using O = I8Ops<T>;
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int nwarps = gridDim.x * kI8Warps;
  const int chunks = D / 64;
  pdl_wait();  // X is the previous kernel's output (the final norm)
  pdl_launch_dependents();
  for (int tile = blockIdx.x * kI8Warps + (threadIdx.x >> 5); tile * 16 < V; tile += nwarps) {
    const int ra = tile * 16 + g, rb = ra + 8;
    // Chunk c of the tile: uint4 64 c + lane (row g) and 64 c + 32 + lane (row g + 8).
    const uint4* wa = reinterpret_cast<const uint4*>(W + size_t(tile) * 16 * D) + lane;
    const uint4* wb = wa + 32;
    // X rows past M read as zeros (their products land in outputs that are not stored).
    const uint4* xr[NT];
    bool xok[NT];
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      xok[n] = n * 8 + g < M;
      xr[n] = reinterpret_cast<const uint4*>(X + size_t(xok[n] ? n * 8 + g : 0) * D) + 2 * t;
    }
    float acc[NT][4] = {};
    const auto chunk = [&](const uint4& a4, const uint4& b4, int c) {
      uint4 xv[NT][2];
#pragma unroll
      for (int n = 0; n < NT; ++n) {
        xv[n][0] = xok[n] ? __ldg(xr[n] + c * 8) : make_uint4(0, 0, 0, 0);
        xv[n][1] = xok[n] ? __ldg(xr[n] + c * 8 + 1) : make_uint4(0, 0, 0, 0);
      }
      const uint32_t aw[4] = {a4.x, a4.y, a4.z, a4.w}, bw[4] = {b4.x, b4.y, b4.z, b4.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        uint32_t a[4];
        O::cvt4(aw[j], a[0], a[2]);  // row g: columns {2t, 2t+1} and {2t+8, 2t+9}
        O::cvt4(bw[j], a[1], a[3]);  // row g + 8
#pragma unroll
        for (int n = 0; n < NT; ++n) {
          const uint4& x = xv[n][j >> 1];  // inputs 4j .. 4j + 3 of this lane's 16: halves 4(j & 1) ..
          const uint32_t b0 = (j & 1) ? x.z : x.x, b1 = (j & 1) ? x.w : x.y;
          Mma16816<T>::acc(acc[n], a, b0, b1);
        }
      }
    };
    int c = 0;
    for (; c + kI8Unroll <= chunks; c += kI8Unroll) {  // weight loads of kI8Unroll chunks in flight
      uint4 a4[kI8Unroll], b4[kI8Unroll];
#pragma unroll
      for (int u = 0; u < kI8Unroll; ++u) {
        a4[u] = __ldcs(wa + (c + u) * 64);
        b4[u] = __ldcs(wb + (c + u) * 64);
      }
#pragma unroll
      for (int u = 0; u < kI8Unroll; ++u) chunk(a4[u], b4[u], c + u);
    }
    for (; c < chunks; ++c) chunk(__ldcs(wa + c * 64), __ldcs(wb + c * 64), c);
    // C fragment: c0, c1 = (vocab row g, X rows 2t, 2t + 1), c2, c3 = (row g + 8, same X rows).
    const float sa = ra < V ? __half2float(scale[ra]) : 0.f, sb = rb < V ? __half2float(scale[rb]) : 0.f;
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      const int m0 = n * 8 + 2 * t;
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        if (m0 + e >= M) continue;
        if (ra < V) store_out(Y + size_t(m0 + e) * ldy + ra, sa * acc[n][e]);
        if (rb < V) store_out(Y + size_t(m0 + e) * ldy + rb, sb * acc[n][2 + e]);
      }
    }
  }
}

// Large M (Int8GpuLinear, then cuBLAS): rows [row0, row0 + rows) of the repacked codes -> out
// [rows, D] in T, each weight code x scale rounded once to T. One thread per 16 codes (a lane's
// 16 bytes of one chunk half: row 16 tile + g + 8 h, inputs 64 c + 16 t ..), row0 a multiple of 16.
template <typename T>
__global__ void int8_rows_dequant_k(const int8_t* __restrict__ W, const __half* __restrict__ scale, int D, int row0,
                                    int rows, T* __restrict__ out) {
  const int chunks = D / 64;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= int64_t((rows + 15) / 16) * chunks * 64) return;
  const int lane = int(i & 31), h = int((i >> 5) & 1);
  const int64_t tc = i >> 6;  // (tile, chunk) of the range
  const int c = int(tc % chunks), tile = row0 / 16 + int(tc / chunks);
  const int row = tile * 16 + (lane >> 2) + 8 * h;
  if (row - row0 >= rows) return;
  const uint4 q = reinterpret_cast<const uint4*>(W)[(size_t(tile) * chunks + c) * 64 + h * 32 + lane];
  const float sc = __half2float(scale[row]);
  const int8_t* b = reinterpret_cast<const int8_t*>(&q);
  uint4 v[2];
  T* vt = reinterpret_cast<T*>(v);
#pragma unroll
  for (int j = 0; j < 16; ++j) vt[j] = from_f<T>(sc * float(b[j]));
  uint4* dst = reinterpret_cast<uint4*>(out + size_t(row - row0) * D + c * 64 + (lane & 3) * 16);
  dst[0] = v[0];
  dst[1] = v[1];
}

int sm_count() {
  static const int n = [] {
    int dev = 0, v = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev);
    return v > 0 ? v : 1;
  }();
  return n;
}

template <typename T, typename OutT>
void launch_int8_rows(const int8_t* W, const void* scale, int64_t V, int64_t D, const void* X, int64_t M, OutT* Y,
                      cudaStream_t s) {
  const int64_t tiles = (V + 15) / 16;
  const int blocks = int(std::min<int64_t>((tiles + kI8Warps - 1) / kI8Warps, int64_t(sm_count()) * 8));
  const auto* sc = static_cast<const __half*>(scale);
  for (int64_t m0 = 0; m0 < M; m0 += 16) {  // slices of 16 rows of X (prefill / perplexity)
    const int mr = int(std::min<int64_t>(16, M - m0));
    const T* x = static_cast<const T*>(X) + m0 * D;
    OutT* y = Y + m0 * V;
    if (mr <= 8)
      launch_pdl(int8_rows_gemm_k<T, OutT, 1>, dim3(blocks), dim3(kI8Warps * 32), 0, s, W, sc, int(V), int(D), x, mr, y,
                 int(V));
    else
      launch_pdl(int8_rows_gemm_k<T, OutT, 2>, dim3(blocks), dim3(kI8Warps * 32), 0, s, W, sc, int(V), int(D), x, mr, y,
                 int(V));
  }
}

}  // namespace

std::vector<int8_t> int8_rows_repack(const int8_t* codes, int64_t V, int64_t D) {
  const int64_t tiles = (V + 15) / 16, chunks = D / 64;
  std::vector<int8_t> out(size_t(tiles * 16 * D), 0);
  for (int64_t i = 0; i < tiles; ++i)
    for (int64_t c = 0; c < chunks; ++c)
      for (int h = 0; h < 2; ++h)
        for (int lane = 0; lane < 32; ++lane) {
          const int64_t row = i * 16 + lane / 4 + 8 * h;
          if (row >= V) continue;  // zero rows past V
          std::memcpy(&out[size_t(((i * chunks + c) * 2 + h) * 512 + lane * 16)], codes + row * D + c * 64 + (lane % 4) * 16,
                      16);
        }
  return out;
}

void int8_rows_dequant(Act a, const int8_t* W, const void* scale, int64_t D, int64_t row0, int64_t rows, void* out,
                       cudaStream_t s) {
  const int64_t threads = (rows + 15) / 16 * (D / 64) * 64;
  const unsigned blocks = unsigned((threads + 255) / 256);
  if (blocks == 0) return;
  const auto* sc = static_cast<const __half*>(scale);
  if (a == Act::BF16)
    int8_rows_dequant_k<<<blocks, 256, 0, s>>>(W, sc, int(D), int(row0), int(rows), static_cast<__nv_bfloat16*>(out));
  else
    int8_rows_dequant_k<<<blocks, 256, 0, s>>>(W, sc, int(D), int(row0), int(rows), static_cast<__half*>(out));
}

void int8_rows_gemm(Act a, const int8_t* W, const void* scale, int64_t V, int64_t D, const void* X, int64_t M, void* Y,
                    bool y_f32, cudaStream_t s) {
  if (a == Act::BF16) {
    if (y_f32)
      launch_int8_rows<__nv_bfloat16>(W, scale, V, D, X, M, static_cast<float*>(Y), s);
    else
      launch_int8_rows<__nv_bfloat16>(W, scale, V, D, X, M, static_cast<__nv_bfloat16*>(Y), s);
  } else {
    if (y_f32)
      launch_int8_rows<__half>(W, scale, V, D, X, M, static_cast<float*>(Y), s);
    else
      launch_int8_rows<__half>(W, scale, V, D, X, M, static_cast<__half*>(Y), s);
  }
}

}  // namespace mosaic::gpu::kern
