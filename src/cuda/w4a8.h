// W4A8 ZipperEngine GEMM for prefill on sm_90 (issue 6, speed side): the input rows are quantized
// per token to INT8 (docs/format.md "Quantized activations", act_bits 8), then
//   Y[M, N] = sum over 128-input k-tiles and scale groups g of
//             s_m * (scale[n, g] * <x codes, base codes>_g + res_scale[b, n] * <x codes, res codes>_b)
// with INT8 x INT8 -> INT32 tensor-core MMAs (mma.sync m16n8k32; the 4-bit codes -8..7 are exact
// in INT8), INT32 sums per group folded into FP32 with the group's scale. The residual blocks of a
// tile reuse the same INT8 activation tile in shared memory and the same FP32 accumulators: one
// launch. Built once from a PackedLinear (repacked: w4a8_layout.h). See docs/kernels.md.
//
// Not thread-safe: a W4A8Linear owns the activation-code workspace; one stream at a time.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <utility>

#include "cuda/w4a8_layout.h"
#include "cuda/zipper.h"  // DType
#include "format/packed_linear.h"

namespace mosaic::cuda {

enum class W4A8Variant { Zipper, DenseOnly };  // DenseOnly ignores the residual (benchmark)

// The activation format of a W4A8 layer (docs/format.md "Quantized activations",
// quantization_config.act_format): Int8 = per-token INT8 (s = max|x|/127, mma.sync INT8 kernel,
// w4a8_gemm.cu); Fp8E4M3 = per-token FP8 e4m3 (s = max|x|/448, wgmma kernel for Hopper,
// w4a8_fp8_gemm.cu). The two formats round differently, so the format is a property of the layer,
// not a per-call choice: every M of an Fp8E4M3 layer runs on the wgmma kernel.
enum class W4A8Act { Int8, Fp8E4M3 };

// Warps per 128 x 128 CTA tile: 8 (64 x 32 outputs per warp) or 16 (32 x 32). docs/kernels.md.
inline constexpr int kW4A8DefaultWarps = 8;

class W4A8Linear {
 public:
  // Repacks and uploads to the current CUDA device. Throws mosaic::Error for unsupported layers
  // (check_w4a8_supported) or when no CUDA device is usable.
  explicit W4A8Linear(const PackedLinear& w, W4A8Act act = W4A8Act::Int8);
  ~W4A8Linear();
  W4A8Linear(const W4A8Linear&) = delete;
  W4A8Linear& operator=(const W4A8Linear&) = delete;

  // X: device [M, K], Y: device [M, N], row-major, both of dtype dt, 16-byte aligned. Quantizes X
  // into the layer's workspace, then runs the GEMM; asynchronous on `stream`. Throws
  // mosaic::Error naming the shapes on bad arguments.
  // warps: 0 = the default (MOSAIC_W4A8_WARPS if set, else kW4A8DefaultWarps); 8 or 16 warps per
  // 128 x 128 tile (tuning and the benchmark). Int8 layers only (Fp8E4M3: 0).
  void gemm(const void* X, void* Y, int64_t M, DType dt, cudaStream_t stream = nullptr,
            W4A8Variant v = W4A8Variant::Zipper, int warps = 0) const;

  // The two halves of gemm (benchmark, tests): per-token INT8 (or e4m3) codes + scales of X into
  // the workspace; then the GEMM from the workspace's first M rows.
  void quantize(const void* X, int64_t M, DType dt, cudaStream_t stream = nullptr) const;
  void gemm_quantized(void* Y, int64_t M, DType dt, cudaStream_t stream = nullptr,
                      W4A8Variant v = W4A8Variant::Zipper, int warps = 0) const;
  // The workspace for M rows, grown if needed (synchronizes then: not inside graph capture), for a
  // producer that writes the codes and scales itself (the engine's norms and SiLU-mul at prefill)
  // before gemm_quantized. Int8 layers only.
  std::pair<int8_t*, float*> input_workspace(int64_t M, cudaStream_t stream) const;
  const int8_t* act_codes() const;   // device [M, K] after quantize() (e4m3 bytes for Fp8E4M3)
  const float* act_scales() const;   // device [M]

  W4A8Act act() const;
  // Int8 layers whose scales lie on the integer scale grid (format/int_scale_grid.h) run on the INT8
  // wgmma kernel (sm_90a: INT32 sums over the whole K, the residual added into the INT8 weights);
  // other Int8 layers on the mma.sync kernel. MOSAIC_W4A8_INT8_WGMMA=0 turns the first off.
  bool int8_wgmma() const;
  int64_t N() const;
  int64_t K() const;
  int group() const;
  int64_t blocks_kept() const;
  int64_t weight_bytes(bool with_residual = true) const;  // bytes of the repacked weights read

  struct Impl;

 private:
  void grow_workspace(int64_t M, cudaStream_t stream) const;
  std::unique_ptr<Impl> impl_;
};

// Per-token INT8 quantization on the device, the same rule (codes bit-identical to the CPU's
// fake_quantize_rows): X [M, K] fp16/bf16 -> codes int8 [M, K] (-127..127), scales fp32 [M]
// (s_m = max|x| / 127; 0 for a zero row). K % 8 == 0, 16-byte aligned device pointers.
void quantize_act_int8(const void* X, int64_t M, int64_t K, DType dt, int8_t* codes, float* scales,
                       cudaStream_t stream = nullptr);

// Per-token FP8 e4m3 quantization on the device (codes bit-identical to the CPU rule, round_e4m3 in
// src/model/act_quant_linear.cpp): X [M, K] fp16/bf16 -> codes e4m3 bytes [M, K], scales fp32 [M]
// (s_m = max|x| / 448; 0 and zero codes for a zero row). K % 8 == 0, 16-byte aligned pointers.
void quantize_act_fp8(const void* X, int64_t M, int64_t K, DType dt, uint8_t* codes, float* scales,
                      cudaStream_t stream = nullptr);

}  // namespace mosaic::cuda
