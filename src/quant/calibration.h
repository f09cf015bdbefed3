// Calibration data for the quantizer: seeded random windows of tokens from a text, and the
// per-layer input capture (a Linear that accumulates the Hessian of what it is fed).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/linear.h"
#include "quant/hessian.h"

namespace mosaic {

// `samples` windows of `len` tokens starting at uniformly random offsets of `ids` (seeded,
// deterministic; windows may overlap when the text is short). Throws mosaic::Error when the text
// has fewer than `len` tokens (naming `source` and both counts) or samples/len are not positive.
std::vector<std::vector<int32_t>> sample_calibration_windows(const std::vector<int32_t>& ids, int64_t samples,
                                                             int64_t len, uint64_t seed,
                                                             const std::string& source = "calibration text");

// Wraps a linear layer: forward() runs it and adds its input rows to a HessianAccumulator
// (shared, so q/k/v can feed one accumulator through whichever of them is wrapped).
class CaptureLinear : public Linear {
 public:
  CaptureLinear(std::unique_ptr<Linear> inner, std::shared_ptr<HessianAccumulator> acc);
  void forward(const float* x, int64_t M, float* y) const override;
  size_t weight_bytes() const override { return inner_->weight_bytes(); }
  std::string kind() const override { return "capture(" + inner_->kind() + ")"; }

 private:
  std::unique_ptr<Linear> inner_;
  std::shared_ptr<HessianAccumulator> acc_;
};

// A placeholder for layers not in memory (the layer-by-layer quantizer holds one layer at a
// time): forward() throws, so running a layer that was not loaded is an error, not garbage.
class AbsentLinear : public Linear {
 public:
  AbsentLinear(int64_t n, int64_t k, std::string name) : Linear(n, k), name_(std::move(name)) {}
  void forward(const float*, int64_t, float*) const override;
  size_t weight_bytes() const override { return 0; }
  std::string kind() const override { return "absent"; }

 private:
  std::string name_;
};

}  // namespace mosaic
