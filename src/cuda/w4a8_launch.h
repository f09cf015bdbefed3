// Internal: launchers of the W4A8 kernels (w4a8_gemm.cu), called by w4a8_linear.cpp.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace mosaic::cuda::detail {

// Device pointers of one W4A8 GEMM (layout: w4a8_layout.h).
struct W4A8Args {
  const int8_t* xq = nullptr;     // activation codes [M, K]
  const float* xs = nullptr;      // per-row activation scales [M]
  const uint32_t* qw = nullptr;   // base codes [N/8][K/128][32][4]
  const float* sc = nullptr;      // base scales / 16 [K/128][spt][N]
  const uint32_t* rq = nullptr;   // residual codes [nnzb][32][4] (nullptr: no residual)
  const float* rs = nullptr;      // residual scales / 16 [nnzb][16]
  const int32_t* ridx = nullptr;  // residual index [N/16][K/64], -1 = not kept
  void* y = nullptr;              // output [M, N], fp16 or bf16
  int M = 0, N = 0, K = 0;
};

// Per-row INT8 quantization of X [M, K] (fp16 if !bf16): codes and scales (docs/format.md).
void launch_w4a8_quantize(const void* X, bool bf16, int64_t M, int64_t K, int8_t* codes, float* scales,
                          cudaStream_t stream);
// Y = dequant(xq) * W^T; spt = 1 (group >= 128) or 2 (group 64); residual when res; warps = 8
// (64 x 32 outputs per warp) or 16 (32 x 32) per 128 x 128 CTA tile.
void launch_w4a8_gemm(const W4A8Args& a, bool bf16, int spt, bool res, int warps, cudaStream_t stream);

// Device pointers of one W4A8 FP8 (wgmma) GEMM (layout: w4a8_fp8_layout.h).
struct W4A8Fp8Args {
  const uint8_t* xq = nullptr;    // activation e4m3 codes [M, K]
  const float* xs = nullptr;      // per-row activation scales [M]
  const uint32_t* qw = nullptr;   // base codes [Npad/128][K/128][8][2][32][4]
  const float* sc = nullptr;      // base scales [K/128][spt][Npad]
  const uint32_t* rq = nullptr;   // residual codes [nnzb][32][4]
  const float* rs = nullptr;      // residual scales [nnzb][16]
  const int32_t* ridx = nullptr;  // residual index [N/16][K/64] (nullptr: no residual)
  // INT8 variant (layers on the integer scale grid): xq holds INT8 codes, sc / rs the multipliers m
  // (as floats), cs [Npad] the rows' units u_n; nullptr = the e4m3 kernel.
  const float* cs = nullptr;
  void* y = nullptr;              // output [M, N], fp16 or bf16
  int M = 0, N = 0, K = 0, Npad = 0, spt = 1;
};

// Per-row FP8 e4m3 quantization of X [M, K] (fp16 if !bf16): codes and scales (s = max|x| / 448).
void launch_fp8_quantize(const void* X, bool bf16, int64_t M, int64_t K, uint8_t* codes, float* scales,
                         cudaStream_t stream);
// Y = dequant(xq) * W^T on wgmma (sm_90a): e4m3 x e4m3 with per-group promotion, or (a.cs set)
// INT8 x INT8 over the whole K; residual when a.ridx != nullptr.
void launch_w4a8_fp8_gemm(const W4A8Fp8Args& a, bool bf16, cudaStream_t stream);

}  // namespace mosaic::cuda::detail
