#include "model/sampler.h"

#include <algorithm>
#include <cmath>

#include "util/error.h"

namespace mosaic {

int32_t argmax(const float* x, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return int32_t(best);
}

Sampler::Sampler(const SamplerOptions& o) : o_(o), rng_(o.seed) {
  MOSAIC_CHECK(o.temperature >= 0 && std::isfinite(o.temperature), "temperature must be >= 0, got ", o.temperature);
  MOSAIC_CHECK(o.top_p > 0 && o.top_p <= 1, "top-p must be in (0, 1], got ", o.top_p);
}

int32_t Sampler::sample(const float* logits, int64_t vocab) {
  MOSAIC_CHECK(vocab > 0, "sample: empty logits");
  if (o_.temperature == 0.0f) return argmax(logits, vocab);
  // Softmax of logits / T (max-subtracted), sorted by probability, cut at top_p mass.
  const float mx = logits[argmax(logits, vocab)];
  buf_.resize(size_t(vocab));
  double sum = 0;
  for (int64_t i = 0; i < vocab; ++i) {
    const float p = std::exp((logits[i] - mx) / o_.temperature);
    buf_[size_t(i)] = {p, int32_t(i)};
    sum += p;
  }
  std::sort(buf_.begin(), buf_.end(), [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); });
  size_t keep = 0;
  double mass = 0;
  while (keep < buf_.size()) {
    mass += buf_[keep].first;
    ++keep;
    if (mass >= o_.top_p * sum) break;
  }
  const double u = std::uniform_real_distribution<double>(0.0, mass)(rng_);
  double acc = 0;
  for (size_t i = 0; i < keep; ++i) {
    acc += buf_[i].first;
    if (u < acc) return buf_[i].second;
  }
  return buf_[keep - 1].second;
}

}  // namespace mosaic
