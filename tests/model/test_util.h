// Helpers shared by the model tests: seeded random data and normalized error.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

namespace mosaic::test {

inline std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// max |a - b| / max |ref|: the error relative to the scale of the reference output.
inline double rel_max_err(const float* a, const float* ref, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    num = std::max(num, std::fabs(double(a[i]) - double(ref[i])));
    den = std::max(den, std::fabs(double(ref[i])));
  }
  return den > 0 ? num / den : num;
}
inline double rel_max_err(const std::vector<float>& a, const std::vector<float>& ref) {
  return rel_max_err(a.data(), ref.data(), std::min(a.size(), ref.size()));
}

inline std::filesystem::path golden_dir(const std::string& name) {
  return std::filesystem::path(MOSAIC_SOURCE_DIR) / "tests/fixtures/golden" / name;
}

inline const std::vector<std::string>& golden_models() {
  static const std::vector<std::string> names = {"llama_tied", "llama3_untied_scaled", "qwen3_tied", "qwen3_untied_bf16"};
  return names;
}

}  // namespace mosaic::test
