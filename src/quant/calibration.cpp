#include "quant/calibration.h"

#include <random>
#include <string>

#include "util/error.h"

namespace mosaic {

std::vector<std::vector<int32_t>> sample_calibration_windows(const std::vector<int32_t>& ids, int64_t samples,
                                                             int64_t len, uint64_t seed, const std::string& source) {
  MOSAIC_CHECK(samples > 0 && len > 0, "calibration needs positive --calib-samples and --calib-len, got ", samples,
               " and ", len);
  MOSAIC_CHECK(!ids.empty(), source, " is empty (0 tokens)");
  MOSAIC_CHECK(int64_t(ids.size()) >= len, source, " has only ", ids.size(), " tokens, fewer than one window of ",
               len, " (--calib-len)");
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int64_t> start(0, int64_t(ids.size()) - len);
  std::vector<std::vector<int32_t>> out(static_cast<size_t>(samples));
  for (auto& w : out) {
    const int64_t s = start(rng);
    w.assign(ids.begin() + s, ids.begin() + s + len);
  }
  return out;
}

CaptureLinear::CaptureLinear(std::unique_ptr<Linear> inner, std::shared_ptr<HessianAccumulator> acc)
    : Linear(inner->N, inner->K), inner_(std::move(inner)), acc_(std::move(acc)) {
  MOSAIC_CHECK(acc_->K() == K, "capture: Hessian of width ", acc_->K(), " for a layer with ", K, " inputs");
}

void CaptureLinear::forward(const float* x, int64_t M, float* y) const {
  acc_->add(x, M);
  inner_->forward(x, M, y);
}

void AbsentLinear::forward(const float*, int64_t, float*) const {
  fail("linear '", name_, "' is not loaded (the quantizer holds one layer at a time)");
}

}  // namespace mosaic
