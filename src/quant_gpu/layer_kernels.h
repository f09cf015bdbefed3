// FP32 kernels of the quantizer's whole-layer calibration pass on the GPU (layer_cuda.h): the
// non-GEMM parts of Model::layer_forward (RMSNorm, Qwen3's q/k norm, RoPE, causal softmax,
// SiLU-mul) and the quantizer's input transforms (smoothing, per-token fake quantization), each
// following the CPU reference in src/model/ops.cpp and model/act_quant_linear.cpp. The GEMMs are
// cuBLAS SGEMMs. Every launcher is asynchronous on `s`. C++17 for nvcc.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace mosaic::quant_gpu::layer_kernels {

// out[r, :] = x[r, :] * inv_rms(x[r, :]) * w  (* inv_scale when not null), rows x dim.
// inv_rms = 1 / sqrt(mean(x^2) + eps) evaluated in double, as ops::rms_norm.
void rms_norm(const float* x, const float* w, const float* inv_scale, int64_t rows, int64_t dim, float eps, float* out,
              cudaStream_t s);

// Per row of x [rows, K]: sets *bad = 1 if a value is not finite; when bits < 16, quantizes the row
// in place per token (docs/format.md "Quantized activations": s = max|x| / (2^(bits-1) - 1),
// x = s * clamp(round(x / s)), ties away from zero; a zero row stays zero).
void prepare_rows(float* x, int64_t rows, int64_t K, int bits, int* bad, cudaStream_t s);

// From qkv [T, (H + 2 Hkv) * hd] (q heads, then k heads, then v heads, as one GEMM writes them):
// q and k heads get the per-head RMSNorm (q_norm / k_norm when not null, Qwen3) then RoPE
// (cos/sin [T, hd/2], rotate_half pairing); written head-major: Q [H, T, hd], K/V [Hkv, T, hd].
void split_heads(const float* qkv, int64_t T, int H, int Hkv, int hd, const float* q_norm, const float* k_norm,
                 float eps, const float* cos, const float* sin, float* Q, float* K, float* V, cudaStream_t s);

// Causal softmax of score rows S [rows, T] in place, row r being the query at position
// (r % T): columns 0..pos kept (softmax), the rest set to 0.
void causal_softmax(float* S, int64_t rows, int64_t T, cudaStream_t s);

// O [H, T, hd] -> out [T, H * hd].
void merge_heads(const float* O, int64_t T, int H, int hd, float* out, cudaStream_t s);

// gu [T, 2I] (gate columns, then up columns) -> out [T, I] = silu(gate) * up.
void silu_mul(const float* gu, int64_t T, int64_t I, float* out, cudaStream_t s);

// y += x, n values.
void add(float* y, const float* x, int64_t n, cudaStream_t s);

}  // namespace mosaic::quant_gpu::layer_kernels
