#include "quant/hessian.h"

#include <cblas.h>

#include <cmath>

#include "util/error.h"

namespace mosaic {

HessianAccumulator::HessianAccumulator(int64_t K) : HessianAccumulator(K, NoHostStorage{}) {
  H_.assign(static_cast<size_t>(K * K), 0.0f);
}

HessianAccumulator::HessianAccumulator(int64_t K, NoHostStorage) : K_(K) {
  MOSAIC_CHECK(K > 0, "HessianAccumulator: K=", K, " must be positive");
}

void HessianAccumulator::check_finite(const float* X, int64_t M) const {
  for (int64_t i = 0; i < M * K_; ++i)
    MOSAIC_CHECK(std::isfinite(X[i]), "calibration activation [", i / K_, ", ", i % K_,
                 "] is not finite");
}

std::pair<float, float> HessianAccumulator::next_weights(int64_t M) {
  // Running mean: H <- H * n/(n+m) + (2/(n+m)) X^T X, so H never needs the total up front.
  const float keep = float(double(rows_) / double(rows_ + M));
  const float add = float(2.0 / double(rows_ + M));
  rows_ += M;
  return {keep, add};
}

void HessianAccumulator::add(const float* X, int64_t M) {
  MOSAIC_CHECK(M >= 0, "HessianAccumulator: negative row count ", M);
  if (M == 0) return;
  check_finite(X, M);
  const auto [keep, add] = next_weights(M);
  cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, int(K_), int(M), add, X, int(K_), keep,
              H_.data(), int(K_));
}

std::vector<float> HessianAccumulator::hessian() const {
  std::vector<float> H = H_;
  for (int64_t i = 0; i < K_; ++i)
    for (int64_t j = 0; j < i; ++j) H[i * K_ + j] = H[j * K_ + i];
  return H;
}

std::vector<float> hessian_from_inputs(const float* X, int64_t M, int64_t K) {
  MOSAIC_CHECK(M > 0 && K > 0, "hessian_from_inputs: bad shape [", M, ", ", K, "]");
  std::vector<double> acc(static_cast<size_t>(K * K), 0.0);
  for (int64_t m = 0; m < M; ++m) {
    const float* x = X + m * K;
    for (int64_t i = 0; i < K; ++i)
      for (int64_t j = i; j < K; ++j) acc[i * K + j] += double(x[i]) * double(x[j]);
  }
  std::vector<float> H(static_cast<size_t>(K * K));
  for (int64_t i = 0; i < K; ++i)
    for (int64_t j = i; j < K; ++j)
      H[i * K + j] = H[j * K + i] = float(2.0 * acc[i * K + j] / double(M));
  return H;
}

std::vector<float> hessian_diagonal(std::span<const float> H, int64_t K) {
  MOSAIC_CHECK(int64_t(H.size()) == K * K, "Hessian has ", H.size(), " values, expected K*K = ",
               K, "*", K);
  std::vector<float> d(static_cast<size_t>(K));
  for (int64_t i = 0; i < K; ++i) d[i] = H[i * K + i];
  return d;
}

double hessian_error(std::span<const float> W, std::span<const float> W_hat, int64_t N, int64_t K,
                     std::span<const float> H) {
  MOSAIC_CHECK(int64_t(W.size()) == N * K && int64_t(W_hat.size()) == N * K &&
                   int64_t(H.size()) == K * K,
               "hessian_error: sizes do not match [", N, ", ", K, "]");
  double total = 0.0;
  std::vector<double> d(static_cast<size_t>(K));
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K; ++k) d[k] = double(W[n * K + k]) - double(W_hat[n * K + k]);
    for (int64_t i = 0; i < K; ++i) {
      if (d[i] == 0.0) continue;
      double hi = 0.0;
      const float* h = H.data() + i * K;
      for (int64_t j = 0; j < K; ++j) hi += double(h[j]) * d[j];
      total += d[i] * hi;
    }
  }
  return total;
}

double output_error(std::span<const float> W, std::span<const float> W_hat, int64_t N, int64_t K,
                    const float* X, int64_t M) {
  MOSAIC_CHECK(int64_t(W.size()) == N * K && int64_t(W_hat.size()) == N * K,
               "output_error: sizes do not match [", N, ", ", K, "]");
  double total = 0.0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double y = 0.0;
      for (int64_t k = 0; k < K; ++k)
        y += double(X[m * K + k]) * (double(W[n * K + k]) - double(W_hat[n * K + k]));
      total += y * y;
    }
  return total;
}

}  // namespace mosaic
