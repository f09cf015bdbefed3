// The layer Hessian H = 2 X^T X / M of a linear layer's inputs X [M, K] (GPTQ's objective
// ||X W^T - X W_hat^T||^2 = (M/2) sum_n d_n^T H d_n with d_n = row n of W - W_hat), and the
// error metrics the quantizer tests and ablations use.
#pragma once
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

namespace mosaic {

// Accumulates H over batches of rows like GPTQ: after all batches H = (2 / M_total) X^T X.
// Float accumulation through BLAS ssyrk (the same precision as the reference implementation).
// Virtual so an accelerator can keep H on its device (quant_gpu/calib_cuda.h).
class HessianAccumulator {
 public:
  explicit HessianAccumulator(int64_t K);
  virtual ~HessianAccumulator() = default;
  HessianAccumulator(const HessianAccumulator&) = delete;
  HessianAccumulator& operator=(const HessianAccumulator&) = delete;
  virtual void add(const float* X, int64_t M);  // X row-major [M, K]; non-finite rows are an error
  int64_t K() const { return K_; }
  int64_t rows() const { return rows_; }
  // Full symmetric H, row-major [K, K].
  virtual std::vector<float> hessian() const;

 protected:
  struct NoHostStorage {};
  HessianAccumulator(int64_t K, NoHostStorage);  // for subclasses that keep H elsewhere
  // Running-mean weights for adding M rows: H <- keep * H + add * X^T X.
  std::pair<float, float> next_weights(int64_t M);
  // Throws mosaic::Error naming the first non-finite entry of X [M, K].
  void check_finite(const float* X, int64_t M) const;

 private:
  int64_t K_;
  int64_t rows_ = 0;
  std::vector<float> H_;  // upper triangle valid (row-major)
};

// H = 2 X^T X / M in double then rounded to float: the ground truth for small tests.
std::vector<float> hessian_from_inputs(const float* X, int64_t M, int64_t K);

std::vector<float> hessian_diagonal(std::span<const float> H, int64_t K);

// sum_n d_n^T H d_n, d = W - W_hat, both row-major [N, K]; fp64. Proportional to the layer's
// output distortion: ||X W^T - X W_hat^T||_F^2 = (M/2) * this.
double hessian_error(std::span<const float> W, std::span<const float> W_hat, int64_t N, int64_t K,
                     std::span<const float> H);

// ||X W^T - X W_hat^T||_F^2 computed directly (fp64), X [M, K].
double output_error(std::span<const float> W, std::span<const float> W_hat, int64_t N, int64_t K,
                    const float* X, int64_t M);

}  // namespace mosaic
