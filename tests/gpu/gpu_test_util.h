// Helpers of the GPU engine tests: the skip-without-GPU macro, device buffers filled from host
// floats (rounded to the activation dtype, so GPU and CPU see the same inputs), and the error
// measure (max |gpu - ref| / max |ref|, as the CPU op tests).
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "gpu/device.h"
#include "gpu/kernels.h"
#include "util/half.h"

namespace mosaic::gpu::test {

#define REQUIRE_GPU()                                                                             \
  do {                                                                                            \
    const std::string why_ = ::mosaic::gpu::gpu_unusable_reason();                                \
    if (!why_.empty()) GTEST_SKIP() << "GPU engine test skipped: " << why_;                       \
  } while (0)

inline std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

inline float round_act(Act a, float x) {
  return a == Act::BF16 ? bf16_to_float(float_to_bf16(x)) : fp16_to_float(float_to_fp16(x));
}
inline std::vector<float> round_act(Act a, std::vector<float> v) {
  for (auto& x : v) x = round_act(a, x);
  return v;
}

// Device copy of host floats in the activation dtype.
inline DevBuf to_act(Act a, const std::vector<float>& v) {
  std::vector<uint16_t> bits(v.size());
  for (size_t i = 0; i < v.size(); ++i) bits[i] = a == Act::BF16 ? float_to_bf16(v[i]) : float_to_fp16(v[i]);
  DevBuf d(std::max<size_t>(1, v.size()) * 2);
  check_cuda(cudaMemcpy(d.get(), bits.data(), v.size() * 2, cudaMemcpyHostToDevice), "test upload");
  return d;
}
inline std::vector<float> from_act(Act a, const DevBuf& d, size_t n) {
  std::vector<uint16_t> bits(n);
  check_cuda(cudaDeviceSynchronize(), "test sync");
  check_cuda(cudaMemcpy(bits.data(), d.get(), n * 2, cudaMemcpyDeviceToHost), "test download");
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = a == Act::BF16 ? bf16_to_float(bits[i]) : fp16_to_float(bits[i]);
  return v;
}
template <typename T>
DevBuf to_dev(const std::vector<T>& v) {
  DevBuf d(std::max<size_t>(1, v.size()) * sizeof(T));
  check_cuda(cudaMemcpy(d.get(), v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice), "test upload");
  return d;
}
template <typename T>
std::vector<T> from_dev(const DevBuf& d, size_t n) {
  std::vector<T> v(n);
  check_cuda(cudaDeviceSynchronize(), "test sync");
  check_cuda(cudaMemcpy(v.data(), d.get(), n * sizeof(T), cudaMemcpyDeviceToHost), "test download");
  return v;
}

inline double rel_max_err(const float* a, const float* ref, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    const double d = std::fabs(double(a[i]) - double(ref[i]));
    num = std::isfinite(a[i]) ? std::max(num, d) : INFINITY;
    den = std::max(den, std::fabs(double(ref[i])));
  }
  return den > 0 ? num / den : num;
}
inline double rel_max_err(const std::vector<float>& a, const std::vector<float>& ref) {
  return rel_max_err(a.data(), ref.data(), std::min(a.size(), ref.size()));
}

// One rounding of an O(1) value to the activation dtype: 2^-11 (fp16) / 2^-8 (bf16) relative.
// Op bounds are a few of these.
inline double act_eps(Act a) { return a == Act::BF16 ? 1.0 / 256 : 1.0 / 2048; }

inline std::filesystem::path golden_dir(const std::string& name) {
  return std::filesystem::path(MOSAIC_SOURCE_DIR) / "tests/fixtures/golden" / name;
}

}  // namespace mosaic::gpu::test
