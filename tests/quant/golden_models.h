// What the quantizer's end-to-end tests share: the golden FP model fixtures (tests/fixtures/golden,
// written by scripts/gen_golden.py), a temp directory per test, random token sequences and the
// logits of a model on them, and the relative max error between two logit arrays.
#pragma once
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "model/model.h"

namespace mosaic::testdata {

// LLaMA tied, LLaMA-3 untied with llama3 rope scaling, Qwen3 with q/k norm tied and untied (BF16).
inline const std::vector<std::string> kGoldenModels = {"llama_tied", "llama3_untied_scaled", "qwen3_tied",
                                                       "qwen3_untied_bf16"};

inline std::filesystem::path golden(const std::string& name) {
  return std::filesystem::path(MOSAIC_SOURCE_DIR) / "tests/fixtures/golden" / name;
}

// A fresh temp directory per test (named by `prefix`, the process and the test), removed at the end.
struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& prefix) {
    path = std::filesystem::temp_directory_path() /
           (prefix + "_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
};

inline std::vector<int32_t> random_tokens(int n, uint64_t seed, int vocab = 301) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = int32_t(rng() % uint64_t(vocab));
  return t;
}

// All positions' logits [tokens, vocab] of one forward pass from an empty cache.
inline std::vector<float> forward_logits(const Model& m, const std::vector<int32_t>& t) {
  std::vector<float> out(size_t(int64_t(t.size()) * m.vocab_size()));
  KVCache c = m.make_cache(int64_t(t.size()));
  m.forward(t.data(), int64_t(t.size()), c, out.data());
  return out;
}

// max |a - ref| / max |ref|.
inline double rel_max_err(const std::vector<float>& a, const std::vector<float>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num = std::max(num, std::fabs(double(a[i]) - ref[i]));
    den = std::max(den, std::fabs(double(ref[i])));
  }
  return num / den;
}

}  // namespace mosaic::testdata
