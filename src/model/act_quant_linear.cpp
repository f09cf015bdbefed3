#include "model/act_quant_linear.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "model/parallel.h"
#include "util/error.h"

namespace mosaic {

void check_act_bits(int bits) {
  MOSAIC_CHECK(bits == 16 || bits == 8 || bits == 4, "activation bits ", bits,
               " are not supported (8 or 4 quantize the linear inputs, 16 = not quantized)");
}

namespace {

// The per-token rule shared by both formats: per row, s = max|x| / top, x = s * code(x / s), where
// code rounds to the format's grid (integers up to qmax, or e4m3 values up to 448).
template <typename Code>
void quantize_rows_with(float* x, int64_t M, int64_t K, float top, int64_t cost, Code code) {
  MOSAIC_CHECK(M >= 0 && K > 0, "fake_quantize_rows: bad shape [", M, ", ", K, "]");
  std::atomic<bool> finite{true};
  parallel_for(M, K * cost, [&](int64_t r0, int64_t r1) {
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
      const float s = amax / top;
      for (int64_t k = 0; k < K; ++k) row[k] = s * code(row[k] / s);
    }
  });
  MOSAIC_CHECK(finite.load(), "activation quantization: a linear layer's input has a non-finite value");
}

}  // namespace

void fake_quantize_rows(float* x, int64_t M, int64_t K, int bits) {
  MOSAIC_CHECK(bits >= 2 && bits <= 8, "fake_quantize_rows: ", bits, " bits (2..8)");
  const float qmax = float((1 << (bits - 1)) - 1);
  quantize_rows_with(x, M, K, qmax, 4, [qmax](float v) { return std::clamp(std::round(v), -qmax, qmax); });
}

ActFormat parse_act_format(const std::string& name) {
  if (name == "int") return ActFormat::kInt;
  if (name == "fp8_e4m3" || name == "fp8") return ActFormat::kFp8E4M3;
  fail("unknown activation format '", name, "' (expected int or fp8_e4m3)");
}

const char* act_format_name(ActFormat f) { return f == ActFormat::kFp8E4M3 ? "fp8_e4m3" : "int"; }

void check_act_quant(const ActQuant& q) {
  check_act_bits(q.bits);
  MOSAIC_CHECK(q.format == ActFormat::kInt || q.bits == 8, "FP8 (e4m3) activations need 8 activation bits, got ",
               q.bits);
}

float round_e4m3(float v) {
  const float a = std::fabs(v);
  if (!(a > 0)) return v;  // zeros (and NaN) as they are
  constexpr float kMax = 448.0f;
  if (a >= kMax) return std::copysign(kMax, v);
  int e;
  std::frexp(a, &e);                       // a = m * 2^e, m in [0.5, 1): a in [2^(e-1), 2^e)
  const int E = std::max(e - 1, -6);       // binade exponent; below 2^-6 the subnormal spacing 2^-9
  const float step = std::ldexp(1.0f, E - 3);  // 3 mantissa bits
  const float q = std::nearbyint(a / step) * step;  // a / step is exact; nearbyint ties to even
  return std::copysign(std::min(q, kMax), v);
}

void fake_quantize_rows(float* x, int64_t M, int64_t K, const ActQuant& q) {
  check_act_quant(q);
  if (q.bits == 16) return;
  if (q.format == ActFormat::kInt) return fake_quantize_rows(x, M, K, q.bits);
  quantize_rows_with(x, M, K, 448.0f, 8, round_e4m3);
}

ActQuantLinear::ActQuantLinear(std::unique_ptr<Linear> inner, ActQuant q)
    : Linear(inner ? inner->N : 0, inner ? inner->K : 0), inner_(std::move(inner)), q_(q) {
  MOSAIC_CHECK(inner_, "ActQuantLinear: no inner layer");
  MOSAIC_CHECK(q.bits == 8 || q.bits == 4, "ActQuantLinear: ", q.bits, " activation bits (8 or 4)");
  check_act_quant(q);
}

void ActQuantLinear::forward(const float* x, int64_t M, float* y) const {
  std::vector<float> q(x, x + M * K);  // the caller's input stays untouched (q/k/v share it)
  fake_quantize_rows(q.data(), M, K, q_);
  inner_->forward(q.data(), M, y);
}

std::unique_ptr<Linear> with_act_quant(std::unique_ptr<Linear> inner, const ActQuant& q) {
  check_act_quant(q);
  if (q.bits == 16) return inner;
  return std::make_unique<ActQuantLinear>(std::move(inner), q);
}

std::unique_ptr<Linear> with_act_quant(std::unique_ptr<Linear> inner, int bits) {
  return with_act_quant(std::move(inner), ActQuant{bits, ActFormat::kInt});
}

}  // namespace mosaic
