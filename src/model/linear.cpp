#include "model/linear.h"

#include "model/ops.h"
#include "util/error.h"

namespace mosaic {

DenseLinear::DenseLinear(int64_t n, int64_t k, std::shared_ptr<const std::vector<float>> w)
    : Linear(n, k), w_(std::move(w)) {
  MOSAIC_CHECK(w_ && int64_t(w_->size()) == n * k, "DenseLinear: weight holds ", w_ ? w_->size() : 0,
               " floats, expected ", n, " x ", k);
}

void DenseLinear::forward(const float* x, int64_t M, float* y) const { ops::matmul_nt(x, w_->data(), M, N, K, y); }

}  // namespace mosaic
