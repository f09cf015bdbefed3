// A linear layer (no bias) as the engine sees it: y[M, N] = x[M, K] * W^T, fp32 activations in
// and out. The model code only calls forward(), so how the weights are stored and multiplied is
// the implementation's business: DenseLinear (fp32 weights, BLAS) here; a MosaicQuant layer
// (4-bit base + sparse residual, dequantize-then-matmul on the CPU) and a CUDA one plug in by
// deriving from Linear and being handed to Model through LoadOptions::linear_factory or
// Model::set_linear.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace mosaic {

class Linear {
 public:
  Linear(int64_t n, int64_t k) : N(n), K(k) {}
  virtual ~Linear() = default;
  Linear(const Linear&) = delete;
  Linear& operator=(const Linear&) = delete;

  // y[M, N] = x[M, K] W^T. x and y do not overlap. Must be safe to call from one thread at a time
  // with M anywhere from 1 (decode) to a few thousand (prefill chunk).
  virtual void forward(const float* x, int64_t M, float* y) const = 0;
  // Bytes of weights held (for the load report).
  virtual size_t weight_bytes() const = 0;
  // Short description: "dense-f32", "mosaic-w4g128+res5%" ...
  virtual std::string kind() const = 0;

  const int64_t N;  // out_features
  const int64_t K;  // in_features
};

// FP32 weights [N, K] row-major (HF layout); forward is one cblas_sgemm (sgemv when M == 1).
// The storage is shared so a tied LM head and the embedding table are one array.
class DenseLinear : public Linear {
 public:
  DenseLinear(int64_t n, int64_t k, std::shared_ptr<const std::vector<float>> w);
  void forward(const float* x, int64_t M, float* y) const override;
  size_t weight_bytes() const override { return size_t(N * K) * sizeof(float); }
  std::string kind() const override { return "dense-f32"; }
  const float* data() const { return w_->data(); }
  const std::shared_ptr<const std::vector<float>>& storage() const { return w_; }

 private:
  std::shared_ptr<const std::vector<float>> w_;
};

}  // namespace mosaic
