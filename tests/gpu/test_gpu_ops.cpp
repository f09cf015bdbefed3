// Every GPU op of the engine (src/gpu/kernels.h, attention.h) against the CPU reference op
// (src/model/ops_ref.h) on seeded random non-zero data, edge sizes, FP16 and BF16. Inputs are
// rounded to the activation dtype first, so the GPU and the reference see the same numbers and
// the error is that of the GPU op alone (FP32 math, one rounding of the output, plus FP32
// reduction order). Bounds: max |gpu - ref| / max |ref| <= k * act_eps (act_eps = 2^-11 fp16,
// 2^-8 bf16; k stated per test). Each test skips with a message when no usable GPU is present.
#include <cublas_v2.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "gpu/attention.h"
#include "gpu/kernels.h"
#include "gpu_test_util.h"
#include "model/ops_ref.h"
#include "model/rope.h"
#include "model/sampler.h"

namespace mosaic::gpu {
namespace {

using namespace test;

const Act kActs[] = {Act::F16, Act::BF16};

TEST(GpuOps, EmbeddingCopiesRows) {
  REQUIRE_GPU();
  for (Act a : kActs) {
    const int64_t V = 37, D = 72;
    const auto table = round_act(a, randn(size_t(V * D), 1));
    const std::vector<int32_t> toks = {0, 36, 3, 3, 17};
    DevBuf t = to_act(a, table), tk = to_dev(toks), x(toks.size() * D * 4);
    kern::embedding(a, t.get(), D, tk.as<int32_t>(), int64_t(toks.size()), x.as<float>(), nullptr);
    std::vector<float> ref(toks.size() * D);
    ref::embedding(table.data(), V, D, toks.data(), int64_t(toks.size()), ref.data());
    EXPECT_EQ(from_dev<float>(x, ref.size()), ref) << act_name(a);  // exact: a copy
  }
}

// x += delta; out = rmsnorm(x) * w. Bound 2 act_eps (one output rounding + fp32 sums).
TEST(GpuOps, AddRmsNormMatchesReference) {
  REQUIRE_GPU();
  for (Act a : kActs)
    for (int64_t D : {1, 7, 64, 65, 576, 1000, 4096, 4097}) {
      const int64_t rows = 3;
      const auto x0 = randn(size_t(rows * D), 2, 3.0f);
      const auto delta = round_act(a, randn(size_t(rows * D), 3));
      const auto w = randn(size_t(D), 4);
      DevBuf x = to_dev(x0), dl = to_act(a, delta), wd = to_dev(w), out(size_t(rows * D) * 2);
      kern::add_rms_norm(a, x.as<float>(), dl.get(), wd.as<float>(), rows, D, 1e-5f, out.get(), nullptr);
      std::vector<float> xs = x0, ref(xs.size());
      ref::add_inplace(xs.data(), delta.data(), rows * D);
      ref::rms_norm(xs.data(), w.data(), rows, D, 1e-5f, ref.data());
      EXPECT_LE(rel_max_err(from_dev<float>(x, xs.size()), xs), 1e-6) << "residual add, D=" << D;
      const double err = rel_max_err(from_act(a, out, ref.size()), ref);
      EXPECT_LE(err, 2 * act_eps(a)) << act_name(a) << " D=" << D;
      // Without delta: x unchanged, plain norm.
      DevBuf x2 = to_dev(x0);
      kern::add_rms_norm(a, x2.as<float>(), nullptr, wd.as<float>(), rows, D, 1e-5f, out.get(), nullptr);
      ref::rms_norm(x0.data(), w.data(), rows, D, 1e-5f, ref.data());
      EXPECT_LE(rel_max_err(from_act(a, out, ref.size()), ref), 2 * act_eps(a)) << act_name(a) << " D=" << D;
    }
}

TEST(GpuOps, SiluMulMatchesReference) {
  REQUIRE_GPU();
  for (Act a : kActs)
    for (int64_t I : {1, 17, 96, 1536, 14336}) {
      const int64_t rows = 2;
      const auto gu = round_act(a, randn(size_t(rows * 2 * I), 5, 2.0f));
      DevBuf g = to_act(a, gu), out(size_t(rows * I) * 2);
      kern::silu_mul(a, g.get(), rows, I, out.get(), nullptr);
      std::vector<float> ref(size_t(rows * I));
      for (int64_t r = 0; r < rows; ++r)
        ref::silu_mul(gu.data() + r * 2 * I, gu.data() + r * 2 * I + I, I, ref.data() + r * I);
      EXPECT_LE(rel_max_err(from_act(a, out, ref.size()), ref), 2 * act_eps(a)) << act_name(a) << " I=" << I;
    }
}

struct QkvCase {
  int H, Hkv, hd;
  bool qk_norm;
  bool llama3_scaling;
};

// Fused qkv rows -> (q/k norm) + RoPE -> q_out and the caches of several slots at several
// positions, against ref::rms_norm + ref::rope with RopeTable's cos/sin. Bound 4 act_eps.
TEST(GpuOps, QkvNormRopeCacheMatchesReference) {
  REQUIRE_GPU();
  const QkvCase cases[] = {{4, 2, 16, false, false}, {4, 2, 16, false, true}, {4, 2, 32, true, false},
                           {9, 3, 64, false, false}, {32, 8, 128, true, false}, {8, 8, 6, true, true},
                           {2, 1, 256, true, false}};
  for (Act a : kActs)
    for (const QkvCase& c : cases) {
      const int64_t rows = 5, cap = 40, slots = 2, hd = c.hd, nh = c.H + 2 * c.Hkv;
      ModelConfig cfg;
      cfg.head_dim = c.hd;
      cfg.rope_theta = 500000.0f;
      if (c.llama3_scaling) cfg.rope_scaling = RopeScaling{8.0f, 1.0f, 4.0f, 64};
      const RopeTable rope = RopeTable::from_config(cfg);
      const auto qkv = round_act(a, randn(size_t(rows * nh * hd), 6));
      const auto qn = randn(size_t(hd), 7), kn = randn(size_t(hd), 8);
      const std::vector<int32_t> pos = {0, 1, 39, 17, 5}, slot = {0, 1, 1, 0, 1};
      kern::AttnDims d{c.H, c.Hkv, c.hd, cap};
      DevBuf dq = to_act(a, qkv), dpos = to_dev(pos), dslot = to_dev(slot), dqn = to_dev(qn), dkn = to_dev(kn);
      DevBuf inv = to_dev(rope.inv_freq()), qout(size_t(rows * c.H * hd) * 2);
      const size_t cache_n = size_t(slots * c.Hkv * cap * hd);
      DevBuf kc = to_act(a, std::vector<float>(cache_n, 0.f)), vc = to_act(a, std::vector<float>(cache_n, 0.f));
      kern::qkv_rope_cache(a, dq.get(), rows, dpos.as<int32_t>(), dslot.as<int32_t>(), d,
                           c.qk_norm ? dqn.as<float>() : nullptr, c.qk_norm ? dkn.as<float>() : nullptr, 1e-6f,
                           inv.as<float>(), qout.get(), kc.get(), vc.get(), nullptr);
      const auto gq = from_act(a, qout, size_t(rows * c.H * hd));
      const auto gk = from_act(a, kc, cache_n), gv = from_act(a, vc, cache_n);
      double worst = 0;
      for (int64_t r = 0; r < rows; ++r) {
        std::vector<float> q(qkv.begin() + r * nh * hd, qkv.begin() + r * nh * hd + c.H * hd);
        std::vector<float> k(qkv.begin() + r * nh * hd + c.H * hd, qkv.begin() + r * nh * hd + (c.H + c.Hkv) * hd);
        std::vector<float> v(qkv.begin() + r * nh * hd + (c.H + c.Hkv) * hd, qkv.begin() + (r + 1) * nh * hd);
        if (c.qk_norm) {
          ref::rms_norm(q.data(), qn.data(), c.H, hd, 1e-6f, q.data());
          ref::rms_norm(k.data(), kn.data(), c.Hkv, hd, 1e-6f, k.data());
        }
        std::vector<float> cs(size_t(hd / 2)), sn(size_t(hd / 2));
        rope.cos_sin(pos[size_t(r)], cs.data(), sn.data());
        ref::rope(q.data(), 1, c.H, hd, cs.data(), sn.data());
        ref::rope(k.data(), 1, c.Hkv, hd, cs.data(), sn.data());
        worst = std::max(worst, rel_max_err(gq.data() + r * c.H * hd, q.data(), q.size()));
        for (int g = 0; g < c.Hkv; ++g) {
          const size_t off = size_t(((slot[size_t(r)] * c.Hkv + g) * cap + pos[size_t(r)]) * hd);
          worst = std::max(worst, rel_max_err(gk.data() + off, k.data() + g * hd, size_t(hd)));
          for (int64_t i = 0; i < hd; ++i) ASSERT_EQ(gv[off + size_t(i)], v[size_t(g * hd + i)]) << "v copy";
        }
      }
      EXPECT_LE(worst, 4 * act_eps(a)) << act_name(a) << " H=" << c.H << " Hkv=" << c.Hkv << " hd=" << hd
                                       << " qk_norm=" << c.qk_norm << " llama3=" << c.llama3_scaling;
    }
}

struct AttnCase {
  int H, Hkv, hd;
  int64_t cap;
};
const AttnCase kAttnCases[] = {{4, 2, 16, 300}, {9, 3, 64, 130}, {32, 8, 128, 260}, {16, 1, 32, 129},
                                {2, 2, 8, 17},    {4, 2, 24, 70},  {2, 1, 256, 140},  {8, 1, 64, 200}};

// Reference per sequence: ref::attention over the slot's [Hkv][cap][hd] cache.
std::vector<float> ref_attention(const std::vector<float>& q, const std::vector<float>& kc, const std::vector<float>& vc,
                                 const AttnCase& c, int64_t slot, int64_t T, int64_t pos0) {
  const size_t seq = size_t(slot * c.Hkv * c.cap * c.hd);
  std::vector<float> out(size_t(T * c.H * c.hd));
  ref::attention(q.data(), kc.data() + seq, vc.data() + seq, T, pos0, AttnShape{c.H, c.Hkv, c.hd, c.cap}, out.data());
  return out;
}

// Decode: B rows, each its own slot and length (1, a split boundary, the whole capacity, ...).
// Bound 4 act_eps (inputs rounded; fp32 softmax; one output rounding).
TEST(GpuOps, DecodeAttentionMatchesReference) {
  REQUIRE_GPU();
  for (Act a : kActs)
    for (const AttnCase& c : kAttnCases) {
      const int B = 4;
      const std::vector<int32_t> pos = {0, int32_t(std::min<int64_t>(127, c.cap - 1)), int32_t(c.cap - 1),
                                        int32_t(c.cap / 2)};
      const std::vector<int32_t> slot = {2, 0, 3, 1};
      const size_t cache_n = size_t(B * c.Hkv * c.cap * c.hd);
      const auto kc = round_act(a, randn(cache_n, 11)), vc = round_act(a, randn(cache_n, 12));
      const auto q = round_act(a, randn(size_t(B * c.H * c.hd), 13, 2.0f));
      kern::AttnDims d{c.H, c.Hkv, c.hd, c.cap};
      DevBuf dk = to_act(a, kc), dv = to_act(a, vc), dq = to_act(a, q), dp = to_dev(pos), ds = to_dev(slot);
      DevBuf part(size_t(kern::attention_decode_partial_floats(B, d)) * 4), out(size_t(B * c.H * c.hd) * 2);
      kern::attention_decode(a, dq.get(), dk.get(), dv.get(), dp.as<int32_t>(), ds.as<int32_t>(), B, d,
                             part.as<float>(), out.get(), nullptr);
      const auto got = from_act(a, out, size_t(B * c.H * c.hd));
      for (int b = 0; b < B; ++b) {
        std::vector<float> qb(q.begin() + b * c.H * c.hd, q.begin() + (b + 1) * c.H * c.hd);
        const auto ref = ref_attention(qb, kc, vc, c, slot[size_t(b)], 1, pos[size_t(b)]);
        EXPECT_LE(rel_max_err(got.data() + b * c.H * c.hd, ref.data(), ref.size()), 4 * act_eps(a))
            << act_name(a) << " H=" << c.H << " Hkv=" << c.Hkv << " hd=" << c.hd << " pos=" << pos[size_t(b)];
      }
    }
}

// Prefill: n queries at pos0 (0 = fresh prompt, > 0 = a later chunk) through cuBLAS + the causal
// softmax. P is rounded to the activation dtype before P V (as HF's eager attention does): bound
// 8 act_eps.
TEST(GpuOps, PrefillAttentionMatchesReference) {
  REQUIRE_GPU();
  cublasHandle_t h = nullptr;
  ASSERT_EQ(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
  for (Act a : kActs)
    for (const AttnCase& c : kAttnCases)
      for (auto [n, pos0] : {std::pair<int64_t, int64_t>{1, 0}, {17, 0}, {std::min<int64_t>(c.cap, 100), 0},
                             {5, c.cap - 5}, {33, c.cap / 3}}) {
        if (pos0 + n > c.cap) continue;
        const int64_t slots = 2, s = 1;
        const size_t cache_n = size_t(slots * c.Hkv * c.cap * c.hd);
        const auto kc = round_act(a, randn(cache_n, 21)), vc = round_act(a, randn(cache_n, 22));
        const auto q = round_act(a, randn(size_t(n * c.H * c.hd), 23, 2.0f));
        kern::AttnDims d{c.H, c.Hkv, c.hd, c.cap};
        DevBuf dk = to_act(a, kc), dv = to_act(a, vc), dq = to_act(a, q), out(size_t(n * c.H * c.hd) * 2);
        const size_t sc = attention_prefill_scratch(n, pos0 + n, d);
        DevBuf S(sc * 4), P(sc * 2);
        const size_t seq = size_t(s * c.Hkv * c.cap * c.hd) * 2;
        attention_prefill(h, a, dq.get(), dk.as<char>() + seq, dv.as<char>() + seq, n, pos0, d, S.as<float>(), P.get(),
                          out.get(), nullptr);
        const auto ref = ref_attention(q, kc, vc, c, s, n, pos0);
        EXPECT_LE(rel_max_err(from_act(a, out, ref.size()), ref), 8 * act_eps(a))
            << act_name(a) << " H=" << c.H << " Hkv=" << c.Hkv << " hd=" << c.hd << " n=" << n << " pos0=" << pos0;
      }
  cublasDestroy(h);
}

TEST(GpuOps, ArgmaxMatchesCpuIncludingTies) {
  REQUIRE_GPU();
  for (int64_t V : {1, 2, 31, 1000, 49152, 151936}) {
    const int64_t rows = 3;
    auto x = randn(size_t(rows * V), 31);
    if (V > 10) x[size_t(V + 7)] = x[size_t(V + 3)] = 100.f;  // row 1: a tie -> lowest id
    if (V > 5000) x[size_t(2 * V + V - 1)] = x[size_t(2 * V + 100)] = 50.f;  // row 2: a tie across slices
    DevBuf dx = to_dev(x), out(size_t(rows) * 4), scratch(kern::argmax_scratch_bytes(rows));
    kern::argmax(dx.as<float>(), rows, V, out.as<int32_t>(), scratch.get(), nullptr);
    const auto got = from_dev<int32_t>(out, size_t(rows));
    for (int64_t r = 0; r < rows; ++r) EXPECT_EQ(got[size_t(r)], mosaic::argmax(x.data() + r * V, V)) << "V=" << V;
  }
}

// NLL rows: logsumexp (fp32 exp, fp64 sum) - target logit, vs ref::logsumexp: 1e-9 relative.
TEST(GpuOps, RowNllMatchesReference) {
  REQUIRE_GPU();
  for (int64_t V : {1, 301, 49152, 128256}) {
    const int64_t rows = 4;
    const auto x = randn(size_t(rows * V), 41, 4.0f);
    const std::vector<int32_t> tgt = {0, int32_t(V - 1), -1, int32_t(V / 2)};
    DevBuf dx = to_dev(x), dt = to_dev(tgt), out(size_t(rows) * 8);
    kern::row_nll(dx.as<float>(), rows, V, dt.as<int32_t>(), out.as<double>(), nullptr);
    const auto got = from_dev<double>(out, size_t(rows));
    for (int64_t r = 0; r < rows; ++r) {
      const double ref = tgt[size_t(r)] < 0 ? 0.0 : ref::logsumexp(x.data() + r * V, V) - double(x[size_t(r * V + tgt[size_t(r)])]);
      EXPECT_NEAR(got[size_t(r)], ref, 1e-6 * std::max(1.0, std::fabs(ref)) + 1e-9) << "V=" << V << " row " << r;
    }
  }
}

// Gumbel-max sampling draws from softmax(logits / t): frequencies over 20000 rows of the same
// logits within 0.015 of the probabilities; t -> 0 gives the argmax.
TEST(GpuOps, TemperatureSamplingFollowsSoftmax) {
  REQUIRE_GPU();
  const std::vector<float> row = {1.0f, 2.0f, 0.5f, 2.5f, -1.0f};
  const int64_t V = int64_t(row.size()), rows = 20000;
  std::vector<float> x;
  for (int64_t r = 0; r < rows; ++r) x.insert(x.end(), row.begin(), row.end());
  DevBuf dx = to_dev(x), out(size_t(rows) * 4);
  const float t = 0.8f;
  kern::sample_temperature(dx.as<float>(), rows, V, t, 1234, 0, out.as<int32_t>(), nullptr);
  const auto ids = from_dev<int32_t>(out, size_t(rows));
  std::vector<double> freq(static_cast<size_t>(V)), p(static_cast<size_t>(V));
  for (int32_t id : ids) {
    ASSERT_TRUE(id >= 0 && id < V);
    freq[size_t(id)] += 1.0 / double(rows);
  }
  double z = 0;
  for (int64_t i = 0; i < V; ++i) z += std::exp(double(row[size_t(i)]) / t);
  for (int64_t i = 0; i < V; ++i) EXPECT_NEAR(freq[size_t(i)], std::exp(double(row[size_t(i)]) / t) / z, 0.015) << i;
  kern::sample_temperature(dx.as<float>(), rows, V, 1e-4f, 99, 3, out.as<int32_t>(), nullptr);
  for (int32_t id : from_dev<int32_t>(out, size_t(rows))) ASSERT_EQ(id, 3);
}

}  // namespace
}  // namespace mosaic::gpu
