// Linear layers of the GPU engine: Y[M, N] = X[M, K] W^T with X, Y device arrays in the
// activation dtype (FP16/BF16), FP32 accumulation.
//   DenseGpuLinear  - FP16/BF16 weights [N, K] through cuBLAS (checkpoint FP16/BF16/F32 weights,
//                     and MosaicQuant layers ZipperEngine cannot take, dequantized once at load);
//   ZipperGpuLinear - a MosaicQuant layer through mosaic::cuda::ZipperLinear (src/cuda/zipper.h);
//   Int8GpuLinear   - the 8-bit LM head (int8 codes, per-row fp16 scales; int8_head.cu);
//   ActQuantGpuLinear - a W4A8 / W4A4 layer: its input rows quantized per token (act_quant.h), then
//                     an inner layer above, or for M >= a threshold the W4A8 INT8 kernel
//                     (mosaic::cuda::W4A8Linear, src/cuda/w4a8.h) on the same weights.
// The engine fuses q/k/v and gate/up into one layer each (rows concatenated), so a decode step
// is 4 GEMMs per decoder layer.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "format/packed_linear.h"
#include "format/residual_profile.h"
#include "gpu/device.h"
#include "gpu/kernels.h"
#include "model/act_quant_linear.h"  // ActQuant

namespace mosaic::cuda {
class ZipperLinear;
class ZipperShared;
class W4A8Linear;
}

namespace mosaic::gpu {

class GpuLinear {
 public:
  GpuLinear(int64_t n, int64_t k) : N(n), K(k) {}
  virtual ~GpuLinear() = default;
  GpuLinear(const GpuLinear&) = delete;
  GpuLinear& operator=(const GpuLinear&) = delete;
  // X [M, K], Y [M, N] device, activation dtype, 16-byte aligned; asynchronous on s.
  virtual void forward(const void* X, void* Y, int64_t M, cudaStream_t s) const = 0;
  virtual size_t device_bytes() const = 0;  // weight bytes on the GPU
  virtual std::string kind() const = 0;     // "cublas-fp16", "zipper-w4g128+res", "dequant-fp16"
  const int64_t N, K;
};

class DenseGpuLinear : public GpuLinear {
 public:
  // Takes ownership of W (device, [N, K], dtype a). `what` is the kind string.
  DenseGpuLinear(cublasHandle_t h, Act a, DevBuf w, int64_t n, int64_t k, std::string what);
  // Borrows W (a tied LM head reading the embedding table); W must outlive this layer.
  DenseGpuLinear(cublasHandle_t h, Act a, const void* w, int64_t n, int64_t k, std::string what);
  void forward(const void* X, void* Y, int64_t M, cudaStream_t s) const override;
  // Y fp32 [M, N] (the LM head: logits).
  void forward_f32(const void* X, float* Y, int64_t M, cudaStream_t s) const;
  size_t device_bytes() const override { return own_.bytes(); }
  std::string kind() const override { return kind_; }
  const void* weight() const { return w_; }

 private:
  cublasHandle_t h_;
  Act a_;
  DevBuf own_;
  const void* w_;
  std::string kind_;
};

class ZipperGpuLinear : public GpuLinear {
 public:
  ZipperGpuLinear(const PackedLinear& p, Act a);  // throws mosaic::Error if ZipperEngine cannot take p
  ~ZipperGpuLinear() override;
  void forward(const void* X, void* Y, int64_t M, cudaStream_t s) const override;
  size_t device_bytes() const override;
  std::string kind() const override { return kind_; }
  // Large-M GEMMs: false sends what would take the dequantize path to the fused kernels instead
  // (no N*K dequantize workspace, for models that would not fit with it); the wgmma kernel's M
  // ranges stay on it (it needs no such workspace).
  bool allow_dequant_path = true;
  const cuda::ZipperLinear& zipper() const { return *z_; }
  // The dequantize path's buffer and cuBLAS handle shared by all layers of a model (one stream).
  void share(std::shared_ptr<cuda::ZipperShared> s);

 private:
  std::unique_ptr<cuda::ZipperLinear> z_;
  Act a_;
  std::string kind_;
};

// The 8-bit LM head (`quantize --lm-head-int8`, docs/format.md): int8 codes [N, K] and fp16
// per-row scales on the GPU. M <= kMaxKernelRows (decode): kern::int8_rows_gemm (tensor cores on the
// exact codes, FP32 accumulation; half the bytes of the FP16 head that a decode step streams).
// Larger M (perplexity's all-row logits): slices of rows dequantized to the act dtype into a
// scratch buffer of at most 32 MiB, each multiplied by cuBLAS (compute-bound there).
class Int8GpuLinear : public GpuLinear {
 public:
  static constexpr int64_t kMaxKernelRows = 16;
  // codes [n, k] row-major (-127..127), scale_f16: fp16 bits [n]; k a multiple of 64.
  Int8GpuLinear(cublasHandle_t h, Act a, const int8_t* codes, const uint16_t* scale_f16, int64_t n, int64_t k);
  void forward(const void* X, void* Y, int64_t M, cudaStream_t s) const override;
  // Y fp32 [M, N] (the logits).
  void forward_f32(const void* X, float* Y, int64_t M, cudaStream_t s) const;
  size_t device_bytes() const override { return w_.bytes() + s_.bytes(); }
  std::string kind() const override { return "int8-rows"; }

 private:
  void run(const void* X, void* Y, int64_t M, bool y_f32, cudaStream_t s) const;
  cublasHandle_t h_;
  Act a_;
  DevBuf w_, s_, scratch_;
  int64_t slice_rows_ = 0;  // rows of W per cuBLAS call on the large-M path (scratch_ holds them)
};

// Where ActQuantGpuLinear writes quantized input rows: one buffer shared by every layer of a model
// (layers run one after another on one stream), sized rows x the largest K, activation dtype.
struct ActQuantScratch {
  void* data = nullptr;
  size_t bytes = 0;
};

class ActQuantGpuLinear : public GpuLinear {
 public:
  // inner: the layer on 16-bit tensor cores (ZipperEngine or dequantized cuBLAS); w4a8: the INT8
  // kernel for the same weights, or null; used for M >= w4a8_min_m (act bits 8, integer codes).
  ActQuantGpuLinear(std::unique_ptr<GpuLinear> inner, ActQuant q, Act a, const ActQuantScratch* scratch,
                    std::unique_ptr<cuda::W4A8Linear> w4a8 = nullptr, int64_t w4a8_min_m = 0);
  ~ActQuantGpuLinear() override;
  void forward(const void* X, void* Y, int64_t M, cudaStream_t s) const override;
  size_t device_bytes() const override;
  std::string kind() const override;
  GpuLinear& inner() const { return *inner_; }
  bool has_w4a8() const { return w4a8_ != nullptr; }
  kern::RowQuant row_quant() const { return {q_.bits, q_.format == ActFormat::kFp8E4M3}; }
  bool uses_int8_kernel(int64_t M) const { return w4a8_ && M >= w4a8_min_m_; }
  // For M rows on the INT8 kernel: where the producer may write the rows' INT8 codes and scales itself
  // (RowQuant with codes, the workspace grown for M rows: not inside graph capture), after which
  // forward_codes runs the GEMM; RowQuant{} (off) when this layer takes M rows another way.
  kern::RowQuant producer_codes(int64_t M, cudaStream_t s) const;
  void forward_codes(void* Y, int64_t M, cudaStream_t s) const;
  // True when the op producing X applies the rule in its epilogue (kern::RowQuant) whenever this
  // layer takes the 16-bit path (!uses_int8_kernel(M)): that path then skips its quantize step.
  bool input_quantized = false;

 private:
  std::unique_ptr<GpuLinear> inner_;
  ActQuant q_;
  Act a_;
  const ActQuantScratch* scratch_;
  std::unique_ptr<cuda::W4A8Linear> w4a8_;
  int64_t w4a8_min_m_;
};

// Host FP32 weights [N, K] -> device act dtype.
DevBuf upload_weights(Act a, const float* w, int64_t n, cudaStream_t s);

// Rows of several MosaicQuant layers with the same K, group, symmetry and residual block shape,
// concatenated into one layer (the fused QKV / gate-up projection). Throws when they differ.
PackedLinear concat_rows(const std::vector<const PackedLinear*>& parts);

// A fast random symmetric MosaicQuant layer for `--random-weights` (bench e2e): codes uniform
// 0..15, fp16 scales ~ 1/(8 sqrt(K)), floor(budget * blocks) residual 16x64 blocks at random
// columns. rows_cap = 0: spread evenly over the block rows (every row floor or ceil of the mean:
// the kernels' best case); rows_cap in (0, 1]: concentrated, random block rows each keeping
// ceil(rows_cap x blocks per row) (the last one fewer): the worst case a selection capped at that
// fraction per row allows (1: whole rows; real checkpoints cluster, docs/results.md). With `profile`
// (a kind of a real checkpoint's residual, format/residual_profile.h) each block row keeps what a
// random row of that kind keeps, scaled to K / 64 blocks (budget and rows_cap unused). Timing only.
PackedLinear random_packed_fast(int64_t N, int64_t K, int group, double budget, uint64_t seed, double rows_cap = 0,
                                const ResidualKind* profile = nullptr);

// A random 8-bit head for `--random-weights` (bench e2e w4a16_head8): codes uniform in -127..127,
// scales ~ 1 / (127 sqrt(K)). Timing only.
std::unique_ptr<Int8GpuLinear> random_int8_linear(cublasHandle_t h, Act a, int64_t N, int64_t K, uint64_t seed);

}  // namespace mosaic::gpu
