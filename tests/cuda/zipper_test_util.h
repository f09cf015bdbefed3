// Test helpers for ZipperEngine: random MosaicQuant layers (realistic outliers, residual block
// patterns) and a scalar CPU reference (dequantize from the canonical layout, GEMM in double).
// Kept inside tests/cuda so the oracle is independent of the kernels' repack.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <thread>
#include <vector>

#include "format/packed_linear.h"
#include "util/half.h"

namespace mosaic::cuda::test {

// Sets an environment variable for a scope; unsets it on every exit (a failing check that throws
// must not leave a forced plan behind for the tests after it).
struct ScopedEnv {
  const char* name;
  ScopedEnv(const char* n, const char* value) : name(n) { setenv(n, value, 1); }
  ~ScopedEnv() { unsetenv(name); }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;
};

enum class Pattern { None, Uniform, Clustered, OneTile };
inline const char* pattern_name(Pattern p) {
  return p == Pattern::None ? "none" : p == Pattern::Uniform ? "uniform" : p == Pattern::Clustered ? "clustered" : "one-tile";
}

// Random symmetric layer: codes uniform 0..15, scales log-normal around 0.01 with 1% outlier
// groups x 20 (the heavy tails of real LLM weights); residual blocks by pattern with scales
// about base / 8 (a residual refines the base).
inline PackedLinear random_layer(int64_t N, int64_t K, int group, Pattern pat, uint64_t seed, double budget = 0.1) {
  std::mt19937_64 rng(seed);
  PackedLinear w;
  w.N = N;
  w.K = K;
  w.group = group;
  w.qweight.resize(size_t(N * K / 2));
  for (auto& b : w.qweight) b = uint8_t(rng());
  std::lognormal_distribution<float> ln(std::log(0.01f), 0.5f);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  w.scales.resize(size_t(N * (K / group)));
  for (auto& s : w.scales) s = float_to_fp16(ln(rng) * (u(rng) < 0.01f ? 20.f : 1.f));
  w.block_rows = 16;
  w.block_cols = 64;
  const int64_t nbr = N / 16, nbc = K / 64;
  w.res_rowptr.assign(size_t(nbr + 1), 0);
  for (int64_t r = 0; r < nbr; ++r) {
    for (int64_t c = 0; c < nbc; ++c) {
      bool keep = false;
      switch (pat) {
        case Pattern::None: break;
        case Pattern::Uniform: keep = u(rng) < budget; break;
        case Pattern::Clustered: keep = r < 8 && u(rng) < 0.8f; break;  // one CTA's 128 outputs
        case Pattern::OneTile: keep = r == nbr / 2; break;              // one warp's 16 outputs, all K
      }
      if (keep) w.res_colidx.push_back(int32_t(c));
    }
    w.res_rowptr[size_t(r + 1)] = int32_t(w.res_colidx.size());
  }
  const size_t nnzb = w.res_colidx.size();
  if (nnzb == 0) {
    w.res_rowptr.clear();
    return w;
  }
  w.res_qvalues.resize(nnzb * 16 * 32);
  for (auto& b : w.res_qvalues) b = uint8_t(rng());
  w.res_scales.resize(nnzb * 16);
  for (auto& s : w.res_scales) s = float_to_fp16(ln(rng) / 8.f);
  return w;
}

// W_hat [N, K] row-major, exactly docs/format.md "Dequantization" (symmetric).
inline std::vector<float> reference_dequant(const PackedLinear& w, bool with_residual = true) {
  std::vector<float> W(size_t(w.N * w.K));
  const int64_t ng = w.K / w.group;
  for (int64_t n = 0; n < w.N; ++n)
    for (int64_t k = 0; k < w.K; ++k) {
      const int code = (w.qweight[size_t(n * (w.K / 2) + k / 2)] >> ((k & 1) * 4)) & 0xf;
      W[size_t(n * w.K + k)] = fp16_to_float(w.scales[size_t(n * ng + k / w.group)]) * float(code - 8);
    }
  if (!with_residual || w.res_colidx.empty()) return W;
  for (int64_t r = 0; r + 1 < int64_t(w.res_rowptr.size()); ++r)
    for (int64_t b = w.res_rowptr[size_t(r)]; b < w.res_rowptr[size_t(r + 1)]; ++b)
      for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 64; ++j) {
          const int code = (w.res_qvalues[size_t((b * 16 + i) * 32 + j / 2)] >> ((j & 1) * 4)) & 0xf;
          const int64_t n = r * 16 + i, k = int64_t(w.res_colidx[size_t(b)]) * 64 + j;
          W[size_t(n * w.K + k)] += fp16_to_float(w.res_scales[size_t(b * 16 + i)]) * float(code - 8);
        }
  return W;
}

// Y = X W^T in double, rows split over threads.
inline std::vector<double> reference_gemm(const std::vector<float>& X, const std::vector<float>& W, int64_t M,
                                          int64_t N, int64_t K) {
  std::vector<double> Y(size_t(M * N));
  const int nt = int(std::max(1u, std::min(16u, std::thread::hardware_concurrency())));
  std::vector<std::thread> th;
  for (int t = 0; t < nt; ++t)
    th.emplace_back([&, t] {
      for (int64_t m = t; m < M; m += nt)
        for (int64_t n = 0; n < N; ++n) {
          double s = 0;
          const float* x = &X[size_t(m * K)];
          const float* wr = &W[size_t(n * K)];
          for (int64_t k = 0; k < K; ++k) s += double(x[k]) * double(wr[k]);
          Y[size_t(m * N + n)] = s;
        }
    });
  for (auto& t : th) t.join();
  return Y;
}

// Activations: normal with 1% outlier channels x 10, rounded to fp16 / bf16 (bits and floats).
inline void random_activations(int64_t M, int64_t K, bool bf16, uint64_t seed, std::vector<uint16_t>& bits,
                               std::vector<float>& values) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> chan(static_cast<size_t>(K));
  for (auto& c : chan) c = (rng() % 100 == 0) ? 10.f : 1.f;
  bits.resize(size_t(M * K));
  values.resize(size_t(M * K));
  for (int64_t i = 0; i < M * K; ++i) {
    const float v = nd(rng) * chan[size_t(i % K)];
    bits[size_t(i)] = bf16 ? float_to_bf16(v) : float_to_fp16(v);
    values[size_t(i)] = bf16 ? bf16_to_float(bits[size_t(i)]) : fp16_to_float(bits[size_t(i)]);
  }
}

// ||y - yref|| / ||yref|| for FP16 or BF16 outputs y (raw bits) against an fp64 reference. Outputs
// that are not finite (the GPU tests poison Y with NaN, so also unwritten ones) are counted in
// *bad and left out of the sums.
inline double normalized_error(const std::vector<uint16_t>& y, bool bf16, const std::vector<double>& yref,
                               int64_t* bad) {
  double num = 0, den = 0;
  *bad = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    const double got = bf16 ? bf16_to_float(y[i]) : fp16_to_float(y[i]);
    if (!std::isfinite(got)) {
      ++*bad;
      continue;
    }
    num += (got - yref[i]) * (got - yref[i]);
    den += yref[i] * yref[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

}  // namespace mosaic::cuda::test
