// Next-token choice from a row of logits: greedy (temperature 0) or temperature + top-p (nucleus)
// sampling with a seeded generator, so a run is reproducible from its seed.
#pragma once
#include <cstdint>
#include <random>
#include <vector>

namespace mosaic {

struct SamplerOptions {
  float temperature = 0.0f;  // 0: greedy (argmax; ties -> lowest id)
  float top_p = 1.0f;        // keep the smallest set of most likely tokens whose mass >= top_p
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplerOptions& o);
  int32_t sample(const float* logits, int64_t vocab);

 private:
  SamplerOptions o_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> buf_;
};

int32_t argmax(const float* x, int64_t n);

}  // namespace mosaic
