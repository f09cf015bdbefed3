// GPTQ against RTN on correlated data, against a textbook (non-lazy, no Cholesky) GPTQ written
// here, and its options (act_order, block sizes, dead columns, bad input).
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>

#include "format/int_scale_grid.h"
#include "quant/gptq.h"
#include "quant/hessian.h"
#include "quant/rtn.h"
#include "quant_test_data.h"
#include "util/error.h"

using namespace mosaic;

namespace {

// Textbook GPTQ (Frantar et al., eq. 2-3, the OBQ update in fixed column order): keep the full
// inverse Hessian of the not-yet-quantized columns and remove column j from it by one Gaussian
// elimination step after quantizing it. fp64 throughout; returns unpacked codes [N, K] and the
// dequantized weights.
struct NaiveResult {
  std::vector<uint8_t> codes;
  std::vector<float> deq;
};
NaiveResult naive_gptq(std::vector<float> Wf, int64_t N, int64_t K, const std::vector<float>& Hf,
                       int group, bool symmetric, double damp) {
  std::vector<double> W(Wf.begin(), Wf.end());
  std::vector<double> H(Hf.begin(), Hf.end());
  double mean = 0;
  for (int64_t k = 0; k < K; ++k) mean += H[k * K + k];
  for (int64_t k = 0; k < K; ++k) H[k * K + k] += damp * mean / double(K);
  // Gauss-Jordan inverse.
  std::vector<double> A = H, Inv(K * K, 0.0);
  for (int64_t i = 0; i < K; ++i) Inv[i * K + i] = 1.0;
  for (int64_t c = 0; c < K; ++c) {
    const double p = A[c * K + c];
    for (int64_t j = 0; j < K; ++j) A[c * K + j] /= p, Inv[c * K + j] /= p;
    for (int64_t r = 0; r < K; ++r) {
      if (r == c) continue;
      const double f = A[r * K + c];
      for (int64_t j = 0; j < K; ++j) A[r * K + j] -= f * A[c * K + j], Inv[r * K + j] -= f * Inv[c * K + j];
    }
  }
  NaiveResult out{std::vector<uint8_t>(N * K), std::vector<float>(N * K)};
  const int64_t G = K / group;
  std::vector<GroupParams> gp(N);
  std::vector<float> tmp(group);
  for (int64_t j = 0; j < K; ++j) {
    if (j % group == 0)
      for (int64_t n = 0; n < N; ++n) {
        for (int i = 0; i < group; ++i) tmp[i] = float(W[n * K + j + i]);
        gp[n] = fit_group(tmp.data(), group, 1, symmetric);
      }
    const double d = Inv[j * K + j];
    for (int64_t n = 0; n < N; ++n) {
      const int c = quantize_code(float(W[n * K + j]), gp[n]);
      const double q = dequantize_code(c, gp[n]);
      out.codes[n * K + j] = uint8_t(c);
      out.deq[n * K + j] = float(q);
      const double e = (W[n * K + j] - q) / d;
      for (int64_t c2 = j + 1; c2 < K; ++c2) W[n * K + c2] -= e * Inv[j * K + c2];
    }
    // Remove column j from the inverse Hessian of the remaining columns.
    for (int64_t r = j + 1; r < K; ++r)
      for (int64_t c2 = j + 1; c2 < K; ++c2) Inv[r * K + c2] -= Inv[r * K + j] * Inv[j * K + c2] / d;
  }
  (void)G;
  return out;
}

struct Problem {
  int64_t N, K, M;
  std::vector<float> W, X, H;
};
Problem make_problem(int64_t N, int64_t K, int64_t M, uint64_t seed) {
  Problem p{N, K, M, testdata::weights(N, K, seed), testdata::activations(M, K, seed + 1), {}};
  p.H = hessian_from_inputs(p.X.data(), M, K);
  return p;
}

}  // namespace

TEST(Gptq, LowerOutputErrorThanRtnOnCorrelatedData) {
  const Problem P = make_problem(96, 256, 2048, 21);
  for (bool sym : {true, false}) {
    for (int group : {32, 128, 256}) {
      const auto Wr = dequantize(quantize_rtn(P.W, P.N, P.K, group, sym));
      const auto Wg = dequantize(quantize_gptq(P.W, P.N, P.K, P.H, group, sym));
      const double er = output_error(P.W, Wr, P.N, P.K, P.X.data(), P.M);
      const double eg = output_error(P.W, Wg, P.N, P.K, P.X.data(), P.M);
      // hessian_error is the same quantity up to M/2 (checks the metric helpers agree).
      EXPECT_NEAR(hessian_error(P.W, Wg, P.N, P.K, P.H) * double(P.M) / 2.0, eg, 1e-3 * eg);
      std::printf("[gptq] %s g%-3d output error GPTQ/RTN = %.3f\n", sym ? "sym " : "asym", group,
                  eg / er);
      EXPECT_LT(eg, 0.75 * er) << "sym=" << sym << " group=" << group;
    }
  }
}

TEST(Gptq, AgreesWithTextbookGptq) {
  const Problem P = make_problem(32, 128, 1024, 31);
  for (bool sym : {true, false}) {
    const NaiveResult ref = naive_gptq(P.W, P.N, P.K, P.H, 32, sym, 0.01);
    for (int bs : {1, 7, 32, 128}) {
      GptqOptions o;
      o.block_size = bs;
      const PackedLinear q = quantize_gptq(P.W, P.N, P.K, P.H, 32, sym, o);
      const auto codes = [&] {
        std::vector<uint8_t> c(P.N * P.K);
        for (int64_t i = 0; i < P.N * P.K; ++i) c[i] = nibble_at(q.qweight.data(), i);
        return c;
      }();
      int64_t same = 0;
      for (int64_t i = 0; i < P.N * P.K; ++i) same += codes[i] == ref.codes[i];
      const double agree = double(same) / double(P.N * P.K);
      const double e_ref = hessian_error(P.W, ref.deq, P.N, P.K, P.H);
      const double e = hessian_error(P.W, dequantize(q), P.N, P.K, P.H);
      std::printf("[gptq] vs textbook (%s, block %3d): codes equal %.4f, error ratio %.5f\n",
                  sym ? "sym" : "asym", bs, agree, e / e_ref);
      // fp32 lazy/Cholesky vs fp64 textbook: rare rounding-boundary flips only, which then
      // propagate a little; the objective must agree closely.
      EXPECT_GT(agree, 0.98);
      EXPECT_NEAR(e / e_ref, 1.0, 0.02);
    }
  }
}

TEST(Gptq, ActOrderAndStaticGroups) {
  const Problem P = make_problem(64, 256, 2048, 41);
  const double er = hessian_error(P.W, dequantize(quantize_rtn(P.W, P.N, P.K, 64, true)), P.N, P.K, P.H);
  const double e0 = hessian_error(P.W, dequantize(quantize_gptq(P.W, P.N, P.K, P.H, 64, true)), P.N, P.K, P.H);
  GptqOptions st;
  st.static_groups = true;
  const double es = hessian_error(P.W, dequantize(quantize_gptq(P.W, P.N, P.K, P.H, 64, true, st)), P.N, P.K, P.H);
  GptqOptions ao;
  ao.act_order = true;
  const PackedLinear qa = quantize_gptq(P.W, P.N, P.K, P.H, 64, true, ao);
  ASSERT_NO_THROW(validate(qa));
  const double ea = hessian_error(P.W, dequantize(qa), P.N, P.K, P.H);
  std::printf("[gptq] g64 error / RTN: plain %.3f, static groups %.3f, act_order+static %.3f\n",
              e0 / er, es / er, ea / er);
  EXPECT_LT(es, 0.75 * er);
  EXPECT_LT(ea, 0.75 * er);
  // With static groups every group's scales equal RTN's (fit on the original weights).
  const PackedLinear r = quantize_rtn(P.W, P.N, P.K, 64, true);
  EXPECT_EQ(qa.scales, r.scales);
}

TEST(Gptq, DeadColumnsAreZeroedAndHarmless) {
  Problem P = make_problem(32, 128, 512, 51);
  for (int64_t m = 0; m < P.M; ++m) P.X[m * P.K + 5] = P.X[m * P.K + 77] = 0.0f;
  P.H = hessian_from_inputs(P.X.data(), P.M, P.K);
  for (bool ao : {false, true}) {
    GptqOptions o;
    o.act_order = ao;
    const auto Wq = dequantize(quantize_gptq(P.W, P.N, P.K, P.H, 32, true, o));
    for (int64_t n = 0; n < P.N; ++n) {
      EXPECT_EQ(Wq[n * P.K + 5], 0.0f);
      EXPECT_EQ(Wq[n * P.K + 77], 0.0f);
    }
    const auto Wr = dequantize(quantize_rtn(P.W, P.N, P.K, 32, true));
    EXPECT_LT(output_error(P.W, Wq, P.N, P.K, P.X.data(), P.M),
              0.8 * output_error(P.W, Wr, P.N, P.K, P.X.data(), P.M));
  }
}

TEST(Gptq, RankDeficientHessianNeedsOnlyDamping) {
  // M < K: X^T X is singular; the 1% damping must make it work.
  const Problem P = make_problem(16, 256, 64, 61);
  const auto Wq = dequantize(quantize_gptq(P.W, P.N, P.K, P.H, 128, true));
  for (float v : Wq) ASSERT_TRUE(std::isfinite(v));
  const auto Wr = dequantize(quantize_rtn(P.W, P.N, P.K, 128, true));
  EXPECT_LT(output_error(P.W, Wq, P.N, P.K, P.X.data(), P.M),
            output_error(P.W, Wr, P.N, P.K, P.X.data(), P.M));
}

TEST(Gptq, BadInputThrows) {
  const Problem P = make_problem(8, 64, 128, 71);
  EXPECT_THROW(quantize_gptq(P.W, P.N, P.K, P.H, 48, true), Error);  // group
  std::vector<float> Hs(P.H.begin(), P.H.end() - 1);
  EXPECT_THROW(quantize_gptq(P.W, P.N, P.K, Hs, 32, true), Error);  // H wrong size
  auto Hn = P.H;
  Hn[3] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(quantize_gptq(P.W, P.N, P.K, Hn, 32, true), Error);
  auto Hneg = P.H;
  Hneg[2 * P.K + 2] = -1.0f;
  EXPECT_THROW(quantize_gptq(P.W, P.N, P.K, Hneg, 32, true), Error);  // negative diagonal
  auto Wn = P.W;
  Wn[9] = std::numeric_limits<float>::infinity();
  EXPECT_THROW(quantize_gptq(Wn, P.N, P.K, P.H, 32, true), Error);
  GptqOptions o;
  o.damp = -1;
  EXPECT_THROW(quantize_gptq(P.W, P.N, P.K, P.H, 32, true, o), Error);
  o.damp = 0.01;
  o.block_size = 0;
  EXPECT_THROW(quantize_gptq(P.W, P.N, P.K, P.H, 32, true, o), Error);
  // Indefinite H (strongly negative eigenvalue): no factorization, a clear error, no crash.
  std::vector<float> Hbad(P.K * P.K, 0.0f);
  for (int64_t i = 0; i < P.K; ++i) Hbad[i * P.K + i] = 1.0f;
  Hbad[1] = Hbad[P.K] = 50.0f;
  EXPECT_THROW(quantize_gptq(P.W, P.N, P.K, Hbad, 32, true), Error);
}

// Timing on an LLM-sized layer; opt-in because CI has 2 cores:
//   MOSAIC_GPTQ_BENCH=4096x14336 ./test_quant --gtest_also_run_disabled_tests --gtest_filter=Gptq.DISABLED_LargeLayerTiming
TEST(Gptq, DISABLED_LargeLayerTiming) {
  const char* env = std::getenv("MOSAIC_GPTQ_BENCH");
  ASSERT_NE(env, nullptr) << "set MOSAIC_GPTQ_BENCH=NxK to time a large layer";
  long long N = 0, K = 0;
  ASSERT_EQ(std::sscanf(env, "%lldx%lld", &N, &K), 2);
  const auto W = testdata::weights(N, K, 81);
  // A cheap PD Hessian with realistic structure: low-rank correlation + varied diagonal.
  const int64_t M = 256;
  const auto X = testdata::activations(M, K, 82);
  HessianAccumulator acc(K);
  acc.add(X.data(), M);
  auto H = acc.hessian();
  const auto t0 = std::chrono::steady_clock::now();
  const PackedLinear q = quantize_gptq(W, N, K, H, 128, true);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("[gptq] %lldx%lld g128: %.1f s\n", N, K, s);
  EXPECT_NO_THROW(validate(q));
}

TEST(Hessian, AccumulatorMatchesDirectComputationOverBatches) {
  const int64_t K = 48, M = 300;
  const auto X = testdata::activations(M, K, 91);
  HessianAccumulator acc(K);
  acc.add(X.data(), 100);
  acc.add(X.data() + 100 * K, 1);
  acc.add(X.data() + 101 * K, 0);
  acc.add(X.data() + 101 * K, M - 101);
  EXPECT_EQ(acc.rows(), M);
  const auto H = acc.hessian();
  const auto ref = hessian_from_inputs(X.data(), M, K);
  for (int64_t i = 0; i < K * K; ++i)
    ASSERT_NEAR(H[i], ref[i], 1e-4 * (std::fabs(ref[i]) + ref[(i / K) * (K + 1)]));
  for (int64_t i = 0; i < K; ++i)
    for (int64_t j = 0; j < K; ++j) ASSERT_EQ(H[i * K + j], H[j * K + i]);
  auto bad = X;
  bad[7] = std::numeric_limits<float>::infinity();
  EXPECT_THROW(acc.add(bad.data(), 2), Error);
  EXPECT_THROW(HessianAccumulator(0), Error);
}

TEST(Gptq, ClipSearchAblation) {
  const Problem P = make_problem(96, 256, 2048, 101);
  GptqOptions plain, search;
  search.scale.clip_grid = 20;
  const auto Wr = dequantize(quantize_rtn(P.W, P.N, P.K, 128, true));
  const double er = output_error(P.W, Wr, P.N, P.K, P.X.data(), P.M);
  const double e0 = output_error(P.W, dequantize(quantize_gptq(P.W, P.N, P.K, P.H, 128, true, plain)),
                                 P.N, P.K, P.X.data(), P.M);
  const double e1 = output_error(P.W, dequantize(quantize_gptq(P.W, P.N, P.K, P.H, 128, true, search)),
                                 P.N, P.K, P.X.data(), P.M);
  std::printf("[ablation] GPTQ g128 sym output error / RTN: plain %.3f, with clip search %.3f\n",
              e0 / er, e1 / er);
  EXPECT_LT(e1, er);  // reported, not required to beat plain GPTQ (the search is per group, greedy)
}

// GPTQ on the non-uniform grid: the same objective-lowering on correlated data as with the uniform
// grid (against RTN on that grid), and it runs on the CPU solver even when an accelerator is set.
TEST(Gptq, NonUniformGridBeatsRtnOnThatGrid) {
  const Problem P = make_problem(96, 256, 2048, 23);
  GptqOptions o;
  o.scale.grid = grid_nl4();
  ScaleOptions nl;
  nl.grid = grid_nl4();
  for (int group : {32, 128}) {
    const PackedLinear pg = quantize_gptq(P.W, P.N, P.K, P.H, group, true, o);
    EXPECT_EQ(pg.grid, grid_nl4());
    const double eg = output_error(P.W, dequantize(pg), P.N, P.K, P.X.data(), P.M);
    const double er = output_error(P.W, dequantize(quantize_rtn(P.W, P.N, P.K, group, true, nl)), P.N, P.K, P.X.data(), P.M);
    const double eu = output_error(P.W, dequantize(quantize_gptq(P.W, P.N, P.K, P.H, group, true)), P.N, P.K, P.X.data(), P.M);
    std::printf("[gptq] nl4 g%-3d output error GPTQ/RTN = %.3f, GPTQ nl4 / GPTQ uniform = %.3f\n", group, eg / er,
                eg / eu);
    EXPECT_LT(eg, 0.75 * er);
  }
}

// The integer scale grid (quantize --int-scales, format/int_scale_grid.h): RTN and GPTQ (with and
// without act-order) put their scales on the grid before rounding, so every layer lies on it; the
// output error stays within 1.25x the free scales' (printed per case: 0.75-0.95x here, the choice of
// grid neighbour acting as a small scale search), and GPTQ still beats RTN.
TEST(Gptq, IntegerScaleGridBeforeRounding) {
  const Problem P = make_problem(96, 256, 2048, 23);
  for (int group : {64, 128}) {
    ScaleOptions so;
    so.int_scale_grid = true;
    const PackedLinear r = quantize_rtn(P.W, P.N, P.K, group, true, so);
    std::string why;
    ASSERT_TRUE(find_int_scale_grid(r, &why).has_value()) << why;
    const double er_free = output_error(P.W, dequantize(quantize_rtn(P.W, P.N, P.K, group, true)), P.N, P.K, P.X.data(), P.M);
    const double er = output_error(P.W, dequantize(r), P.N, P.K, P.X.data(), P.M);
    for (bool act_order : {false, true}) {
      GptqOptions go;
      go.act_order = act_order;
      go.scale.int_scale_grid = true;
      const PackedLinear g = quantize_gptq(P.W, P.N, P.K, P.H, group, true, go);
      ASSERT_TRUE(find_int_scale_grid(g, &why).has_value()) << why;
      GptqOptions free_opt;
      free_opt.act_order = act_order;
      const double eg_free =
          output_error(P.W, dequantize(quantize_gptq(P.W, P.N, P.K, P.H, group, true, free_opt)), P.N, P.K, P.X.data(), P.M);
      const double eg = output_error(P.W, dequantize(g), P.N, P.K, P.X.data(), P.M);
      std::printf("[gptq] g%d act_order %d: output error on the grid / free: RTN %.3f, GPTQ %.3f; GPTQ/RTN on the grid %.3f\n",
                  group, int(act_order), er / er_free, eg / eg_free, eg / er);
      EXPECT_LT(eg, 0.8 * er) << "group " << group << " act_order " << act_order;
      EXPECT_LT(eg, 1.25 * eg_free) << "group " << group << " act_order " << act_order;
    }
    EXPECT_LT(er, 1.25 * er_free) << "group " << group;
  }
}

// With the residual inside GPTQ, the kept blocks' row scales go onto the same rows' units before any
// residual code is rounded: the layer is on the grid but for INT8 overflow, which the final snap (as
// `quantize --int-scales` runs it) resolves without moving any scale.
TEST(Gptq, IntegerScaleGridWithTheResidualInside) {
  const Problem P = make_problem(64, 256, 1024, 29);
  PackedLinear layout = random_packed_linear(P.N, P.K, 64, 16, 64, 0.2, ResidualPattern::kUniform, 5);
  GptqOptions go;
  go.act_order = true;
  go.scale.int_scale_grid = true;
  PackedLinear g = quantize_gptq_with_residual(P.W, P.N, P.K, P.H, 64, true, go, layout);
  const std::vector<uint16_t> scales = g.scales, res_scales = g.res_scales;
  snap_to_int_scale_grid(g);
  EXPECT_EQ(g.scales, scales);
  EXPECT_EQ(g.res_scales, res_scales);
  std::string why;
  EXPECT_TRUE(find_int_scale_grid(g, &why).has_value()) << why;
  // And the residual still helps: lower output error than the base alone.
  GptqOptions base_only = go;
  const double eb = output_error(P.W, dequantize(quantize_gptq(P.W, P.N, P.K, P.H, 64, true, base_only)), P.N, P.K,
                                 P.X.data(), P.M);
  EXPECT_LT(output_error(P.W, dequantize(g), P.N, P.K, P.X.data(), P.M), 0.9 * eb);
}
