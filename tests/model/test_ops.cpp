// Every fast op (ops.h) against its scalar reference (ops_ref.h) on seeded random inputs,
// including edge sizes (1, 2, 3, 15, 16, 17, odd) that catch SIMD tails and blocking bugs.
// Bounds are relative to the largest reference value (max |fast - ref| / max |ref|).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "model/linear.h"
#include "model/ops.h"
#include "model/ops_ref.h"
#include "model/rope.h"
#include "test_util.h"
#include "util/error.h"

namespace mosaic {
namespace {

using test::randn;
using test::rel_max_err;

const int64_t kEdge[] = {1, 2, 3, 15, 16, 17, 31, 33, 64, 65, 127, 576};

TEST(Ops, EmbeddingCopiesRowsAndRejectsBadIds) {
  const int64_t V = 17, D = 15;
  auto table = randn(size_t(V * D), 1);
  std::vector<int32_t> toks = {0, 16, 3, 3, 9};
  std::vector<float> a(toks.size() * D), b(toks.size() * D);
  ops::embedding(table.data(), V, D, toks.data(), int64_t(toks.size()), a.data());
  ref::embedding(table.data(), V, D, toks.data(), int64_t(toks.size()), b.data());
  EXPECT_EQ(a, b);
  EXPECT_EQ(a[1 * D + 4], table[16 * D + 4]);
  for (int32_t bad : {-1, 17, std::numeric_limits<int32_t>::max()}) {
    toks[2] = bad;
    EXPECT_THROW(ops::embedding(table.data(), V, D, toks.data(), 5, a.data()), Error);
    EXPECT_THROW(ref::embedding(table.data(), V, D, toks.data(), 5, a.data()), Error);
  }
}

TEST(Ops, RmsNormMatchesReference) {
  // Bound 2e-6: fp32 sum of squares in 16 lanes vs a double sum; one rounding in rsqrt.
  for (int64_t dim : kEdge)
    for (int64_t rows : {1, 3, 17}) {
      auto x = randn(size_t(rows * dim), uint32_t(dim * 31 + rows), 3.0f);
      auto w = randn(size_t(dim), uint32_t(dim + 7));
      std::vector<float> a(x.size()), b(x.size());
      ops::rms_norm(x.data(), w.data(), rows, dim, 1e-5f, a.data());
      ref::rms_norm(x.data(), w.data(), rows, dim, 1e-5f, b.data());
      EXPECT_LE(rel_max_err(a, b), 2e-6) << "rows " << rows << " dim " << dim;
      ops::rms_norm(x.data(), w.data(), rows, dim, 1e-5f, x.data());  // in place
      EXPECT_EQ(x, a);
    }
}

TEST(Ops, RopeMatchesReference) {
  for (int64_t hd : {2, 4, 16, 18, 64, 128})
    for (int64_t T : {1, 2, 3, 17})
      for (int64_t H : {1, 3}) {
        RopeTable rope(int(hd), 10000.0f, std::nullopt);
        std::vector<float> c(size_t(T * hd / 2)), s(c.size());
        for (int64_t t = 0; t < T; ++t) rope.cos_sin(100 + 37 * t, c.data() + t * hd / 2, s.data() + t * hd / 2);
        auto x = randn(size_t(T * H * hd), uint32_t(hd * 1000 + T * 10 + H));
        auto y = x;
        ops::rope(x.data(), T, H, hd, c.data(), s.data());
        ref::rope(y.data(), T, H, hd, c.data(), s.data());
        // Bound 1e-6: the same two products per element; only FMA contraction may differ.
        EXPECT_LE(rel_max_err(x, y), 1e-6) << "hd " << hd << " T " << T << " H " << H;
      }
}

TEST(Ops, RopePositionZeroIsIdentityAndRotationPreservesNorm) {
  RopeTable rope(16, 10000.0f, std::nullopt);
  std::vector<float> c(8), s(8);
  rope.cos_sin(0, c.data(), s.data());
  auto x = randn(16, 5), y = x;
  ops::rope(x.data(), 1, 1, 16, c.data(), s.data());
  EXPECT_EQ(x, y);
  rope.cos_sin(1234, c.data(), s.data());
  ops::rope(x.data(), 1, 1, 16, c.data(), s.data());
  double n0 = 0, n1 = 0;
  for (int i = 0; i < 16; ++i) n0 += double(y[i]) * y[i], n1 += double(x[i]) * x[i];
  EXPECT_NEAR(n1, n0, 1e-5 * n0);
  EXPECT_GT(rel_max_err(x, y), 0.1);  // and it did rotate
}

TEST(Ops, Llama3RopeScalingFollowsTransformers) {
  // head_dim 16, theta 500000, factor 8, low 1, high 4, original 64 (the golden fixture's config):
  // wavelengths 6.28 (kept), 32.3 (smoothed), >= 167 (divided by 8). Expected values from
  // transformers 5.24 _compute_llama3_parameters (printed by scripts/gen_golden.py's config).
  RopeScaling sc{8.0f, 1.0f, 4.0f, 64};
  RopeTable plain(16, 500000.0f, std::nullopt), scaled(16, 500000.0f, sc);
  const auto& p = plain.inv_freq();
  const auto& q = scaled.inv_freq();
  const double hf[8] = {1, 0.079403013, 0.00470075384, 0.000911583134, 0.000176776681, 3.42810235e-05,
                        6.64786967e-06, 1.28917316e-06};  // LlamaRotaryEmbedding.inv_freq, transformers 5.24
  for (int i = 0; i < 8; ++i) EXPECT_NEAR(q[i], hf[i], 2e-7 * hf[i]) << i;
  EXPECT_FLOAT_EQ(q[0], p[0]);
  EXPECT_LT(q[1], p[1]);
  EXPECT_GT(q[1], p[1] / 8);
  for (int i = 2; i < 8; ++i) EXPECT_FLOAT_EQ(q[i], p[i] / 8) << i;
}

struct AttnCase {
  int64_t T, pos0;
  int H, Hkv, hd;
};

TEST(Ops, AttentionMatchesReference) {
  // Bound 1e-5: fp32 BLAS dot products (vs double) and a ~2-ulp exp.
  const AttnCase cases[] = {{1, 0, 1, 1, 16},  {1, 0, 4, 2, 16},  {1, 16, 4, 2, 16}, {1, 33, 3, 1, 15},
                            {2, 0, 2, 2, 3},   {3, 0, 4, 2, 16},  {3, 5, 4, 4, 17},  {15, 2, 6, 3, 64},
                            {16, 0, 4, 2, 64}, {17, 31, 9, 3, 64}, {40, 0, 4, 1, 32}, {65, 64, 2, 1, 16}, {300, 10, 2, 1, 16}};  // last: 2 query blocks
  for (const auto& c : cases) {
    const int64_t cap = c.pos0 + c.T + 3;  // capacity larger than used: strides must be honoured
    AttnShape s{c.H, c.Hkv, c.hd, cap};
    auto q = randn(size_t(c.T * c.H * c.hd), uint32_t(c.T * 100 + c.pos0), 2.0f);
    auto k = randn(size_t(c.Hkv * cap * c.hd), uint32_t(c.hd + 5), 2.0f);
    auto v = randn(size_t(c.Hkv * cap * c.hd), uint32_t(c.hd + 6));
    std::vector<float> a(q.size()), b(q.size());
    ops::attention(q.data(), k.data(), v.data(), c.T, c.pos0, s, a.data());
    ref::attention(q.data(), k.data(), v.data(), c.T, c.pos0, s, b.data());
    EXPECT_LE(rel_max_err(a, b), 1e-5) << "T " << c.T << " pos0 " << c.pos0 << " H " << c.H << " Hkv " << c.Hkv
                                       << " hd " << c.hd;
  }
}

TEST(Ops, AttentionIsCausalAndChecksCapacity) {
  // The first query (position 0) sees only key 0, so its output is exactly v[0].
  AttnShape s{2, 1, 4, 8};
  auto q = randn(3 * 2 * 4, 1), k = randn(8 * 4, 2), v = randn(8 * 4, 3);
  std::vector<float> o(q.size());
  ops::attention(q.data(), k.data(), v.data(), 3, 0, s, o.data());
  for (int d = 0; d < 4; ++d) EXPECT_NEAR(o[d], v[d], 1e-6);
  EXPECT_THROW(ops::attention(q.data(), k.data(), v.data(), 3, 6, s, o.data()), Error);
  EXPECT_THROW(ref::attention(q.data(), k.data(), v.data(), 3, 6, s, o.data()), Error);
}

TEST(Ops, SiluMulMatchesReference) {
  for (int64_t n : {1, 2, 3, 15, 16, 17, 1000, 100003}) {
    auto g = randn(size_t(n), uint32_t(n), 4.0f), u = randn(size_t(n), uint32_t(n + 1));
    if (n > 3) g[0] = 40.0f, g[1] = -40.0f, g[2] = 0.0f;  // saturated and zero
    std::vector<float> a(static_cast<size_t>(n)), b(static_cast<size_t>(n));
    ops::silu_mul(g.data(), u.data(), n, a.data());
    ref::silu_mul(g.data(), u.data(), n, b.data());
    // Bound: 1e-6 of the largest output and 2e-6 of each element (the exp is ~2 ulp).
    EXPECT_LE(rel_max_err(a, b), 1e-6) << n;
    for (int64_t i = 0; i < n; ++i) ASSERT_NEAR(a[i], b[i], 2e-6 * std::fabs(b[i]) + 1e-30) << n << " " << i;
  }
}

TEST(Ops, ExpApproxWithinFourUlp) {
  std::vector<float> x;
  for (float v = -87.0f; v <= 0.0f; v += 0.0137f) x.push_back(v);
  x.push_back(0.0f);
  x.push_back(-1e-8f);
  std::vector<float> y(x.size());
  ops::exp_nonpositive(x.data(), int64_t(x.size()), y.data());
  for (size_t i = 0; i < x.size(); ++i) {
    const double e = std::exp(double(x[i]));
    ASSERT_NEAR(y[i], e, 4 * 6e-8 * e) << "x = " << x[i];
  }
  const float big = -1000.0f;
  float out;
  ops::exp_nonpositive(&big, 1, &out);
  EXPECT_GE(out, 0.0f);
  EXPECT_LT(out, 1e-37f);
}

TEST(Ops, MatmulAndDenseLinearMatchReference) {
  // Bound 1e-5 of the largest output: fp32 BLAS accumulation vs double over K <= 576.
  for (int64_t M : {1, 2, 3, 17})
    for (int64_t N : {1, 3, 16, 17, 65})
      for (int64_t K : {1, 2, 15, 16, 17, 576}) {
        auto x = randn(size_t(M * K), uint32_t(M * 7 + K)), w = randn(size_t(N * K), uint32_t(N * 13 + K));
        std::vector<float> a(size_t(M * N)), b(size_t(M * N)), c(size_t(M * N));
        ops::matmul_nt(x.data(), w.data(), M, N, K, a.data());
        ref::matmul_nt(x.data(), w.data(), M, N, K, b.data());
        DenseLinear lin(N, K, std::make_shared<const std::vector<float>>(w));
        lin.forward(x.data(), M, c.data());
        EXPECT_LE(rel_max_err(a, b), 1e-5) << M << "x" << N << "x" << K;
        EXPECT_EQ(a, c);
      }
}

TEST(Ops, AddInplace) {
  auto y = randn(17, 1), x = randn(17, 2), r = y;
  ops::add_inplace(y.data(), x.data(), 17);
  ref::add_inplace(r.data(), x.data(), 17);
  EXPECT_EQ(y, r);
}

}  // namespace
}  // namespace mosaic

namespace mosaic {
namespace {

TEST(Ops, LogsumexpMatchesReference) {
  // Bound 1e-6 absolute on log-sum-exp values of order 10: the exps are ~2 ulp fp32, summed in fp64.
  for (int64_t n : {1, 2, 3, 7, 8, 9, 17, 1000, 49152}) {
    auto x = test::randn(size_t(n), uint32_t(n), 5.0f);
    const double a = ops::logsumexp(x.data(), n), b = ref::logsumexp(x.data(), n);
    EXPECT_NEAR(a, b, 1e-6) << n;
  }
  const float one = 3.5f;
  EXPECT_NEAR(ops::logsumexp(&one, 1), 3.5, 1e-7);
}

}  // namespace
}  // namespace mosaic

#include <atomic>
#include <thread>

#include "model/parallel.h"

namespace mosaic {
namespace {

TEST(Parallel, CoversEveryIndexOnceNestedAndFromSeveralThreads) {
  auto check = [] {
    std::vector<std::atomic<int>> hits(1000);
    parallel_for(1000, 1 << 20, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        hits[size_t(i)]++;
        parallel_for(3, 1 << 20, [&](int64_t, int64_t) {});  // nested: runs inline
      }
    });
    std::vector<std::atomic<int>> each(777);
    parallel_for_each(777, 1 << 20, [&](int64_t i) { each[size_t(i)]++; });
    for (auto& h : hits) ASSERT_EQ(h.load(), 1);
    for (auto& h : each) ASSERT_EQ(h.load(), 1);
  };
  check();
  std::thread a(check), b(check);
  a.join();
  b.join();
}

}  // namespace
}  // namespace mosaic
