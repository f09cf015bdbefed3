#include "model/act_quant_linear.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "model/parallel.h"
#include "util/error.h"

namespace mosaic {

void check_act_bits(int bits) {
  MOSAIC_CHECK(bits == 16 || bits == 8 || bits == 4, "activation bits ", bits,
               " are not supported (8 or 4 quantize the linear inputs, 16 = not quantized)");
}

void fake_quantize_rows(float* x, int64_t M, int64_t K, int bits) {
  MOSAIC_CHECK(bits >= 2 && bits <= 8, "fake_quantize_rows: ", bits, " bits (2..8)");
  MOSAIC_CHECK(M >= 0 && K > 0, "fake_quantize_rows: bad shape [", M, ", ", K, "]");
  const float qmax = float((1 << (bits - 1)) - 1);
  std::atomic<bool> finite{true};
  parallel_for(M, K * 4, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* row = x + r * K;
      float amax = 0;
      bool ok = true;
      for (int64_t k = 0; k < K; ++k) {
        const float a = std::fabs(row[k]);
        ok &= a <= std::numeric_limits<float>::max();  // false for inf and NaN
        amax = std::max(amax, a);
      }
      if (!ok) {
        finite = false;  // reported below (parallel_for bodies must not throw)
        continue;
      }
      if (amax == 0) continue;  // all zeros: nothing to quantize
      const float s = amax / qmax;
      for (int64_t k = 0; k < K; ++k) row[k] = s * std::clamp(std::round(row[k] / s), -qmax, qmax);
    }
  });
  MOSAIC_CHECK(finite.load(), "activation quantization: a linear layer's input has a non-finite value");
}

ActQuantLinear::ActQuantLinear(std::unique_ptr<Linear> inner, int bits)
    : Linear(inner ? inner->N : 0, inner ? inner->K : 0), inner_(std::move(inner)), bits_(bits) {
  MOSAIC_CHECK(inner_, "ActQuantLinear: no inner layer");
  MOSAIC_CHECK(bits == 8 || bits == 4, "ActQuantLinear: ", bits, " activation bits (8 or 4)");
}

void ActQuantLinear::forward(const float* x, int64_t M, float* y) const {
  std::vector<float> q(x, x + M * K);  // the caller's input stays untouched (q/k/v share it)
  fake_quantize_rows(q.data(), M, K, bits_);
  inner_->forward(q.data(), M, y);
}

std::unique_ptr<Linear> with_act_quant(std::unique_ptr<Linear> inner, int bits) {
  check_act_bits(bits);
  if (bits == 16) return inner;
  return std::make_unique<ActQuantLinear>(std::move(inner), bits);
}

}  // namespace mosaic
