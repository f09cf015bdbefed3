// Quantized activations in the GPU engine (W4A8 / W4A4 checkpoints, docs/format.md "Quantized
// activations"): every quantized linear's input rows are quantized per token, exactly the CPU
// reference's rule (src/model/act_quant_linear.h):
//   s = max_k |x_k| / top       top = 2^(bits-1) - 1 (integer codes) or 448 (FP8 e4m3)
//   x_k <- s * code(x_k / s)    code = clamp(round half away from zero, +-top) or round-to-e4m3
// Here in "fake quant" form, written back in the activation dtype, for layers that then run on
// 16-bit tensor cores (decode through ZipperEngine W4A16, layers the W4A8 kernel cannot take,
// W4A4 and FP8 activations); a W4A8 INT8 layer runs large M through the INT8 kernel instead
// (src/cuda/w4a8.h, which quantizes with the same rule into INT8 codes).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "gpu/kernels.h"

namespace mosaic::gpu::kern {

// Y [rows, K] = the rule above applied to X [rows, K] (both device, dtype a; Y may equal X).
// bits: 2..8 for integer codes; fp8: e4m3 codes (bits must be 8). Rows with inf/NaN stay
// non-finite (the CPU reference stops with an error there; on the GPU the logits show it).
void act_fake_quant(Act a, const void* X, void* Y, int64_t rows, int64_t K, int bits, bool fp8, cudaStream_t s);

}  // namespace mosaic::gpu::kern
