// What every GPU test of src/cuda needs: a skip with a visible message when no CUDA GPU is present,
// an owning device buffer (at least 16 bytes, so a zero-sized case still gets a valid pointer), the
// error bounds of FP16/BF16 outputs, one GEMM call checked against an fp64 reference, and a layer swept over M.
#pragma once
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "cuda/zipper.h"
#include "zipper_test_util.h"

#define MOSAIC_REQUIRE_CUDA_GPU(what)                                                                 \
  do {                                                                                                \
    if (::mosaic::cuda::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA GPU: " what " skipped";   \
  } while (0)

namespace mosaic::cuda::test {

struct DeviceBuf {
  void* p = nullptr;
  explicit DeviceBuf(size_t bytes) { EXPECT_EQ(cudaMalloc(&p, std::max<size_t>(bytes, 16)), cudaSuccess); }
  ~DeviceBuf() { cudaFree(p); }
  DeviceBuf(const DeviceBuf&) = delete;
  DeviceBuf& operator=(const DeviceBuf&) = delete;
};

// Normalized-error bounds of the GEMM tests: FP16 outputs 1e-3, BF16 (8 mantissa bits) 1e-2.
inline double bound(DType dt) { return dt == DType::F16 ? 1e-3 : 1e-2; }

// Uploads X [M, K] (raw fp16/bf16 bits), fills Y [M, N] with NaN (0xff bytes in fp16 and bf16), runs
// gemm(X, Y), and returns the normalized error of Y against yref; fails the test if any output is
// not finite (unwritten or NaN).
template <typename Gemm>
double run_poisoned(int64_t M, int64_t K, int64_t N, DType dt, const std::vector<uint16_t>& xbits,
                    const std::vector<double>& yref, Gemm gemm) {
  DeviceBuf X(size_t(M * K * 2)), Y(size_t(M * N * 2));
  EXPECT_EQ(cudaMemcpy(X.p, xbits.data(), size_t(M * K * 2), cudaMemcpyHostToDevice), cudaSuccess);
  EXPECT_EQ(cudaMemset(Y.p, 0xff, size_t(M * N * 2)), cudaSuccess);
  gemm(X.p, Y.p);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<uint16_t> y(size_t(M * N));
  EXPECT_EQ(cudaMemcpy(y.data(), Y.p, y.size() * 2, cudaMemcpyDeviceToHost), cudaSuccess);
  int64_t bad = 0;
  const double err = normalized_error(y, dt == DType::BF16, yref, &bad);
  EXPECT_EQ(bad, 0) << "outputs not written or not finite";
  return bad ? INFINITY : err;
}

// One ZipperEngine layer on one GEMM path at each M of Ms, fp16 and bf16, twice each (a split-K or stream-K
// workspace and its counters must be back to zero after a call): zipper against the full reference W, dense-only
// against the base Wb. Activation seed M * act_mul + K; `what` names the layer and setting in failure messages.
// worst (optional): the largest zipper error per dtype (index int(DType)).
inline void check_layer_on_path(const ZipperLinear& zl, GemmPath path, const std::vector<float>& W,
                                const std::vector<float>& Wb, const std::vector<int64_t>& Ms, uint64_t act_mul,
                                const std::string& what, double* worst = nullptr) {
  const int64_t N = zl.N(), K = zl.K();
  for (DType dt : {DType::F16, DType::BF16})
    for (int64_t M : Ms) {
      std::vector<uint16_t> xb;
      std::vector<float> xf;
      random_activations(M, K, dt == DType::BF16, uint64_t(M) * act_mul + uint64_t(K), xb, xf);
      const std::vector<double> yref = reference_gemm(xf, W, M, N, K);
      const std::vector<double> ybase = reference_gemm(xf, Wb, M, N, K);
      const std::string at = what + " " + dtype_name(dt) + " M=" + std::to_string(M);
      const auto run = [&](const std::vector<double>& ref, Variant v) {
        return run_poisoned(M, K, N, dt, xb, ref, [&](const void* X, void* Y) { zl.gemm(X, Y, M, dt, nullptr, v, path); });
      };
      for (int rep = 0; rep < 2; ++rep) {
        const double err = run(yref, Variant::Zipper);
        EXPECT_LT(err, bound(dt)) << at << " rep " << rep;
        if (worst) worst[int(dt)] = std::max(worst[int(dt)], err);
        EXPECT_LT(run(ybase, Variant::DenseOnly), bound(dt)) << "dense-only " << at;
      }
    }
}

}  // namespace mosaic::cuda::test
