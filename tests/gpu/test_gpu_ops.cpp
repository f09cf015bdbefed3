// Every GPU op of the engine (src/gpu/kernels.h, attention.h) against the CPU reference op
// (src/model/ops_ref.h) on seeded random non-zero data, edge sizes, FP16 and BF16. Inputs are
// rounded to the activation dtype first, so the GPU and the reference see the same numbers and
// the error is that of the GPU op alone (FP32 math, one rounding of the output, plus FP32
// reduction order). Bounds: max |gpu - ref| / max |ref| <= k * act_eps (act_eps = 2^-11 fp16,
// 2^-8 bf16; k stated per test). Each test skips with a message when no usable GPU is present.
#include <cublas_v2.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>

#include "gpu/act_quant.h"
#include "gpu/attention.h"
#include "gpu/kernels.h"
#include "gpu/linear.h"
#include "format/packed_linear.h"
#include "util/error.h"
#include "gpu_test_util.h"
#include "model/act_quant_linear.h"
#include "model/ops_ref.h"
#include "model/rope.h"
#include "model/sampler.h"

namespace mosaic::gpu {
namespace {

using namespace test;

const Act kActs[] = {Act::F16, Act::BF16};

// Host code, no GPU needed: the random layers of `bench e2e --random-weights`, residual blocks spread
// evenly (every block row within one of the mean) or concentrated (`--res-rows F`: full rows of
// ceil(F x blocks per row), one partial), always exactly budget_blocks kept, valid layers.
TEST(GpuLinearHost, RandomPackedFastResidualPatterns) {
  const int64_t N = 256, K = 1024, nbr = N / 16, nbc = K / 64;
  for (double rows : {0.0, 0.25, 1.0}) {
    const PackedLinear p = random_packed_fast(N, K, 128, 0.1, 7, rows);
    validate(p, "random layer");
    ASSERT_EQ(int64_t(p.res_rowptr.size()), nbr + 1);
    EXPECT_EQ(p.num_blocks_kept(), budget_blocks(0.1, nbr * nbc)) << rows;
    int64_t lo = nbc, hi = 0, partial = 0;
    const int64_t cap = rows > 0 ? int64_t(std::ceil(rows * double(nbc) - 1e-9)) : 0;
    for (int64_t r = 0; r < nbr; ++r) {
      const int64_t n = p.res_rowptr[size_t(r + 1)] - p.res_rowptr[size_t(r)];
      lo = std::min(lo, n);
      hi = std::max(hi, n);
      if (rows > 0 && n != 0 && n != cap) ++partial;
    }
    if (rows == 0) {
      EXPECT_LE(hi - lo, 1);
    } else {
      EXPECT_EQ(hi, cap) << rows;
      EXPECT_LE(partial, 1) << rows;
    }
  }
  EXPECT_THROW(random_packed_fast(N, K, 128, 0.5, 7, 0.25), Error);  // 0.5 of the blocks do not fit rows of 0.25
  // From a checkpoint's profile (bench e2e --res-profile): a kind with 2 of 9 rows full and the rest
  // empty gives rows of all 16 blocks or none, about 2 in 9 full; a kind keeping nothing, no residual.
  ResidualKind kind;
  kind.blocks_per_row = 9;
  kind.rows_by_kept.assign(10, 0);
  kind.rows_by_kept[0] = 7;
  kind.rows_by_kept[9] = 2;
  const PackedLinear q = random_packed_fast(N * 8, K, 128, 0.1, 9, 0, &kind);
  validate(q, "profiled random layer");
  int64_t full = 0;
  for (int64_t r = 0; r < nbr * 8; ++r) {
    const int64_t n = q.res_rowptr[size_t(r + 1)] - q.res_rowptr[size_t(r)];
    EXPECT_TRUE(n == 0 || n == nbc) << n;
    full += n == nbc;
  }
  EXPECT_NEAR(double(full) / double(nbr * 8), 2.0 / 9.0, 0.08);
  ResidualKind empty = kind;
  empty.rows_by_kept = {9, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  EXPECT_FALSE(random_packed_fast(N, K, 128, 0.1, 9, 0, &empty).has_residual());
}

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

// Per-token activation quantization (W4A8 / W4A4 models) against the CPU reference rule
// (fake_quantize_rows) on the same act-dtype inputs: 8- and 4-bit integer codes and FP8 e4m3, rows
// with outliers, a zero row, in place and out of place. The GPU computes in FP32 with IEEE
// division like the CPU, then rounds s * code once to the act dtype: bit-identical to the CPU
// result rounded the same way (bound 0).
// The 8-bit LM head: Y[m, v] = scale[v] sum_k W[v, k] X[m, k] against a double-precision
// reference on the same (act-rounded) X. Codes span -127..127 (both ends in every row), X has
// outliers. Products are exact in fp32; the bound is the fp32 sum over K: max |gpu - ref| <=
// 1e-5 max |ref| for fp32 logits, plus one output rounding (act_eps) in the act dtype. Vocab sizes
// that are not a multiple of 16 (the last tile's rows past V), K with a tail after the 4-chunk
// unroll (K = 320), M across the n8 tiles and 16-row slices (1 .. 33).
TEST(GpuOps, Int8HeadMatchesReference) {
  REQUIRE_GPU();
  struct Case {
    int64_t V, D;
  };
  const Case cases[] = {{16, 64}, {37, 320}, {1000, 576}, {203, 4096}};
  const int64_t Ms[] = {1, 2, 3, 7, 8, 9, 15, 16, 17, 33};
  for (Act a : kActs)
    for (const Case& c : cases) {
      std::mt19937 rng(uint32_t(c.V * 7 + c.D));
      std::vector<int8_t> q(size_t(c.V * c.D));
      for (int64_t v = 0; v < c.V; ++v)
        for (int64_t k = 0; k < c.D; ++k)
          q[size_t(v * c.D + k)] = k == v % c.D ? int8_t(127) : k == (v + 1) % c.D ? int8_t(-127)
                                                                                    : int8_t(int(rng() % 255) - 127);
      std::vector<uint16_t> sc(size_t(c.V));
      std::vector<float> scf(size_t(c.V));
      for (int64_t v = 0; v < c.V; ++v) {
        sc[size_t(v)] = float_to_fp16(0.0005f + 0.002f * float(rng() % 1000) / 1000.f);
        scf[size_t(v)] = fp16_to_float(sc[size_t(v)]);
      }
      DevBuf qd = to_dev(kern::int8_rows_repack(q.data(), c.V, c.D)), sd = to_dev(sc);
      for (int64_t M : Ms) {
        auto x = randn(size_t(M * c.D), uint32_t(M * 31 + c.D), 1.0f);
        for (size_t i = 0; i < x.size(); i += 97) x[i] *= 20.f;  // outliers
        x = round_act(a, x);
        std::vector<float> ref(size_t(M * c.V));
        for (int64_t m = 0; m < M; ++m)
          for (int64_t v = 0; v < c.V; ++v) {
            double s = 0;
            for (int64_t k = 0; k < c.D; ++k) s += double(q[size_t(v * c.D + k)]) * double(x[size_t(m * c.D + k)]);
            ref[size_t(m * c.V + v)] = float(s * double(scf[size_t(v)]));
          }
        DevBuf xd = to_act(a, x), y32(ref.size() * 4), yact(ref.size() * 2);
        kern::int8_rows_gemm(a, qd.as<int8_t>(), sd.get(), c.V, c.D, xd.get(), M, y32.get(), true, nullptr);
        kern::int8_rows_gemm(a, qd.as<int8_t>(), sd.get(), c.V, c.D, xd.get(), M, yact.get(), false, nullptr);
        EXPECT_LE(rel_max_err(from_dev<float>(y32, ref.size()), ref), 1e-5)
            << act_name(a) << " V=" << c.V << " D=" << c.D << " M=" << M << " (fp32 out)";
        EXPECT_LE(rel_max_err(from_act(a, yact, ref.size()), ref), act_eps(a) + 1e-5)
            << act_name(a) << " V=" << c.V << " D=" << c.D << " M=" << M << " (act out)";
      }
    }
}

// The 8-bit head's large-M path (Int8GpuLinear, M > 16: row slices of at most 32 MiB dequantized to
// the act dtype, then cuBLAS): against a double reference on the same weights rounded to the act
// dtype (code x scale, rounded once, as the path does), fp32 and act outputs, bound as above.
// V = 9000 at D = 2048: two slices (8192 rows, then 808); V = 203 and 37: one slice whose last
// 16-row tile is partial.
TEST(GpuOps, Int8HeadLargeMMatchesReference) {
  REQUIRE_GPU();
  cublasHandle_t h = nullptr;
  ASSERT_EQ(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
  struct Case {
    int64_t V, D, M;
  };
  for (Act a : kActs)
    for (const Case& c : {Case{9000, 2048, 17}, Case{203, 576, 300}, Case{37, 320, 64}}) {
      std::mt19937 rng(uint32_t(c.V + c.D));
      std::vector<int8_t> q(size_t(c.V * c.D));
      for (auto& x : q) x = int8_t(int(rng() % 255) - 127);
      std::vector<uint16_t> sc(size_t(c.V));
      for (auto& x : sc) x = float_to_fp16(0.0005f + 0.002f * float(rng() % 1000) / 1000.f);
      std::vector<float> w(q.size());  // code x scale, rounded once to the act dtype
      for (int64_t v = 0; v < c.V; ++v)
        for (int64_t k = 0; k < c.D; ++k)
          w[size_t(v * c.D + k)] = round_act(a, fp16_to_float(sc[size_t(v)]) * float(q[size_t(v * c.D + k)]));
      const auto x = round_act(a, randn(size_t(c.M * c.D), uint32_t(c.M + c.D), 1.0f));
      std::vector<float> ref(size_t(c.M * c.V));
      for (int64_t m = 0; m < c.M; ++m)
        for (int64_t v = 0; v < c.V; ++v) {
          double acc = 0;
          for (int64_t k = 0; k < c.D; ++k) acc += double(w[size_t(v * c.D + k)]) * double(x[size_t(m * c.D + k)]);
          ref[size_t(m * c.V + v)] = float(acc);
        }
      const Int8GpuLinear lin(h, a, q.data(), sc.data(), c.V, c.D);
      DevBuf xd = to_act(a, x), y32(ref.size() * 4), yact(ref.size() * 2);
      lin.forward_f32(xd.get(), y32.as<float>(), c.M, nullptr);
      lin.forward(xd.get(), yact.get(), c.M, nullptr);
      EXPECT_LE(rel_max_err(from_dev<float>(y32, ref.size()), ref), 1e-5)
          << act_name(a) << " V=" << c.V << " D=" << c.D << " M=" << c.M << " (fp32 out)";
      EXPECT_LE(rel_max_err(from_act(a, yact, ref.size()), ref), act_eps(a) + 1e-5)
          << act_name(a) << " V=" << c.V << " D=" << c.D << " M=" << c.M << " (act out)";
    }
  cublasDestroy(h);
}

TEST(GpuOps, ActFakeQuantMatchesCpuRule) {
  REQUIRE_GPU();
  struct Q {
    int bits;
    bool fp8;
  };
  for (Act a : kActs)
    for (Q q : {Q{8, false}, Q{4, false}, Q{8, true}})
      for (int64_t K : {8, 576, 1000, 4096, 12288, 40000}) {  // held in registers (8 or 16 per thread), 40000 not
        const int64_t rows = 5;
        std::vector<float> x = randn(size_t(rows * K), uint32_t(K + q.bits), 1.5f);
        for (int64_t r = 0; r < rows; ++r) x[size_t(r * K + (r * 37) % K)] *= 40.f;  // an outlier per row
        std::fill(x.begin() + 2 * K, x.begin() + 3 * K, 0.f);                         // a zero row
        x = round_act(a, x);
        std::vector<float> ref = x;
        fake_quantize_rows(ref.data(), rows, K, ActQuant{q.bits, q.fp8 ? ActFormat::kFp8E4M3 : ActFormat::kInt});
        ref = round_act(a, ref);
        DevBuf in = to_act(a, x), out(size_t(rows * K) * 2);
        kern::act_fake_quant(a, in.get(), out.get(), rows, K, q.bits, q.fp8, nullptr);
        const auto got = from_act(a, out, ref.size());
        size_t diff = 0;
        for (size_t i = 0; i < ref.size(); ++i) diff += got[i] != ref[i];
        EXPECT_EQ(diff, 0u) << act_name(a) << " bits " << q.bits << (q.fp8 ? " fp8" : "") << " K=" << K;
        kern::act_fake_quant(a, in.get(), in.get(), rows, K, q.bits, q.fp8, nullptr);  // in place
        EXPECT_EQ(from_act(a, in, ref.size()), got) << "in place";
        // The codes are really coarse: 4-bit rows take at most 15 distinct values.
        if (q.bits == 4 && !q.fp8) {
          std::vector<float> row(got.begin(), got.begin() + K);
          std::sort(row.begin(), row.end());
          EXPECT_LE(std::unique(row.begin(), row.end()) - row.begin(), 15);
        }
      }
}

// The producers' fused quantization (RowQuant in add_rms_norm / silu_mul epilogues, used by W4A8 /
// W4A4 models) equals the producer followed by the stand-alone act_fake_quant: bit-identical.
TEST(GpuOps, FusedProducerQuantEqualsSeparateKernel) {
  REQUIRE_GPU();
  for (Act a : kActs)
    for (kern::RowQuant q : {kern::RowQuant{8, false}, kern::RowQuant{4, false}, kern::RowQuant{8, true}})
      for (int64_t D : {64, 576, 4096, 12288, 28672, 40000}) {  // 28672, 40000: too long to hold in registers
        const int64_t rows = 3;
        auto x0 = randn(size_t(rows * D), uint32_t(D + 3), 2.0f);
        x0[size_t(D / 3)] = 90.f;  // an outlier
        const auto delta = round_act(a, randn(size_t(rows * D), uint32_t(D + 4)));
        const auto w = randn(size_t(D), uint32_t(D + 5), 0.5f);
        DevBuf dd = to_act(a, delta), wd = to_dev(w), ref(size_t(rows * D) * 2), got(size_t(rows * D) * 2);
        DevBuf x1 = to_dev(x0), x2 = to_dev(x0);
        kern::add_rms_norm(a, x1.as<float>(), dd.get(), wd.as<float>(), rows, D, 1e-5f, ref.get(), nullptr);
        kern::act_fake_quant(a, ref.get(), ref.get(), rows, D, q.bits, q.fp8, nullptr);
        kern::add_rms_norm(a, x2.as<float>(), dd.get(), wd.as<float>(), rows, D, 1e-5f, got.get(), nullptr, q);
        EXPECT_EQ(from_act(a, got, size_t(rows * D)), from_act(a, ref, size_t(rows * D)))
            << "add_rms_norm " << act_name(a) << " bits " << q.bits << " D=" << D;
        EXPECT_EQ(from_dev<float>(x2, size_t(rows * D)), from_dev<float>(x1, size_t(rows * D))) << "residual stream";
        const auto gu = round_act(a, randn(size_t(rows * 2 * D), uint32_t(D + 6), 2.0f));
        DevBuf g = to_act(a, gu);
        kern::silu_mul(a, g.get(), rows, D, ref.get(), nullptr);
        kern::act_fake_quant(a, ref.get(), ref.get(), rows, D, q.bits, q.fp8, nullptr);
        kern::silu_mul(a, g.get(), rows, D, got.get(), nullptr, q);
        EXPECT_EQ(from_act(a, got, size_t(rows * D)), from_act(a, ref, size_t(rows * D)))
            << "silu_mul " << act_name(a) << " bits " << q.bits << " D=" << D;
      }
}

// At decode (<= 64 rows, 1024 threads per row) the held-row kernels run each row on a cluster of CTAs
// (act_quant.cuh, row_reduce); with more rows, one CTA per row (for the unquantized norm of a 4096-wide row,
// a 256-thread CTA acting as 1024 row threads). Every form must give bit-identical rows: the first rows of a
// 70-row call (one CTA each) against the same rows alone (a cluster each).
TEST(GpuOps, RowClusterEqualsOneCtaPerRow) {
  REQUIRE_GPU();
  const int64_t big = 70;
  for (Act a : kActs)
    for (kern::RowQuant q : {kern::RowQuant{}, kern::RowQuant{8, false}, kern::RowQuant{8, true}})
      for (int64_t D : {4096, 5000, 12288}) {
        auto x0 = randn(size_t(big * D), uint32_t(D + 7), 2.0f);
        x0[size_t(D / 5)] = -70.f;  // an outlier in row 0
        const auto delta = round_act(a, randn(size_t(big * D), uint32_t(D + 8)));
        const auto w = randn(size_t(D), uint32_t(D + 9), 0.5f);
        const auto gu = round_act(a, randn(size_t(big * 2 * D), uint32_t(D + 10), 2.0f));
        DevBuf dd = to_act(a, delta), wd = to_dev(w), g = to_act(a, gu), many(size_t(big * D) * 2),
               few(size_t(big * D) * 2);
        ASSERT_EQ(kern::held_row_ctas(big, D), 1);
        for (int64_t rows : {int64_t(1), int64_t(3)}) {
          ASSERT_GT(kern::held_row_ctas(rows, D), 1) << "no cluster form at " << rows << " rows of " << D;
          const std::string what = std::string(act_name(a)) + " bits " + std::to_string(q.bits) +
                                   (q.fp8 ? " fp8" : "") + " D=" + std::to_string(D) + " rows " + std::to_string(rows);
          DevBuf x1 = to_dev(x0), x2 = to_dev(x0);
          kern::add_rms_norm(a, x1.as<float>(), dd.get(), wd.as<float>(), big, D, 1e-5f, many.get(), nullptr, q);
          kern::add_rms_norm(a, x2.as<float>(), dd.get(), wd.as<float>(), rows, D, 1e-5f, few.get(), nullptr, q);
          EXPECT_EQ(from_act(a, few, size_t(rows * D)), from_act(a, many, size_t(rows * D))) << "add_rms_norm " << what;
          EXPECT_EQ(from_dev<float>(x2, size_t(rows * D)), from_dev<float>(x1, size_t(rows * D))) << "stream " << what;
          if (!q.on()) continue;  // silu_mul without quantization is a different, element-wise kernel
          kern::silu_mul(a, g.get(), big, D, many.get(), nullptr, q);
          kern::silu_mul(a, g.get(), rows, D, few.get(), nullptr, q);
          EXPECT_EQ(from_act(a, few, size_t(rows * D)), from_act(a, many, size_t(rows * D))) << "silu_mul " << what;
          kern::act_fake_quant(a, dd.get(), many.get(), big, D, q.bits, q.fp8, nullptr);
          kern::act_fake_quant(a, dd.get(), few.get(), rows, D, q.bits, q.fp8, nullptr);
          EXPECT_EQ(from_act(a, few, size_t(rows * D)), from_act(a, many, size_t(rows * D))) << "act_fake_quant " << what;
        }
      }
}

// The W4A8 INT8 kernel's input written by its producer (RowQuant::codes: prefill norms and SiLU-mul): the
// codes and scales equal the rule applied on the host to the producer's own 16-bit output (s = max|x| / 127,
// code = clamp(round half away(x / s)), w4a8_gemm.cu's Int8Codec), bit for bit, at decode row counts (cluster
// forms) and prefill ones (D = 4096: the 256-thread form), with an outlier and a zero row.
TEST(GpuOps, ProducerInt8CodesEqualTheRule) {
  REQUIRE_GPU();
  const auto host_codes = [](const std::vector<float>& y, int64_t rows, int64_t K, std::vector<int8_t>& c,
                             std::vector<float>& sc) {
    c.assign(size_t(rows * K), 0);
    sc.assign(size_t(rows), 0.f);
    for (int64_t r = 0; r < rows; ++r) {
      float amax = 0.f;
      for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::fabs(y[size_t(r * K + k)]));
      const float s = amax / 127.f;
      sc[size_t(r)] = s;
      for (int64_t k = 0; k < K; ++k)
        c[size_t(r * K + k)] =
            amax == 0.f ? 0 : int8_t(std::fmin(std::fmax(std::round(y[size_t(r * K + k)] / s), -127.f), 127.f));
    }
  };
  for (Act a : kActs)
    for (int64_t D : {128, 4096, 12288})
      for (int64_t rows : {int64_t(3), int64_t(70)}) {
        const std::string what = std::string(act_name(a)) + " D=" + std::to_string(D) + " rows " + std::to_string(rows);
        auto x0 = randn(size_t(rows * D), uint32_t(D + 11), 2.0f);
        x0[size_t(D / 7)] = 60.f;  // an outlier in row 0
        const auto delta = round_act(a, randn(size_t(rows * D), uint32_t(D + 12)));
        const auto w = randn(size_t(D), uint32_t(D + 13), 0.5f);
        auto gu = round_act(a, randn(size_t(rows * 2 * D), uint32_t(D + 14), 2.0f));
        std::fill(gu.begin() + 2 * D, gu.begin() + 4 * D, 0.f);  // row 1 of the SiLU-mul: zero
        DevBuf dd = to_act(a, delta), wd = to_dev(w), g = to_act(a, gu), y(size_t(rows * D) * 2),
               codes(size_t(rows * D)), scales(size_t(rows) * 4);
        const kern::RowQuant q{8, false, codes.as<int8_t>(), scales.as<float>()};
        std::vector<int8_t> want;
        std::vector<float> want_s;
        if (kern::norm_codes_ok(D)) {
          DevBuf x1 = to_dev(x0), x2 = to_dev(x0);
          kern::add_rms_norm(a, x1.as<float>(), dd.get(), wd.as<float>(), rows, D, 1e-5f, y.get(), nullptr);
          kern::add_rms_norm(a, x2.as<float>(), dd.get(), wd.as<float>(), rows, D, 1e-5f, nullptr, nullptr, q);
          host_codes(from_act(a, y, size_t(rows * D)), rows, D, want, want_s);
          EXPECT_EQ(from_dev<int8_t>(codes, want.size()), want) << "add_rms_norm codes " << what;
          EXPECT_EQ(from_dev<float>(scales, want_s.size()), want_s) << "add_rms_norm scales " << what;
          EXPECT_EQ(from_dev<float>(x2, size_t(rows * D)), from_dev<float>(x1, size_t(rows * D))) << "stream " << what;
        }
        if (kern::silu_codes_ok(D)) {
          kern::silu_mul(a, g.get(), rows, D, y.get(), nullptr);
          kern::silu_mul(a, g.get(), rows, D, nullptr, nullptr, q);
          host_codes(from_act(a, y, size_t(rows * D)), rows, D, want, want_s);
          EXPECT_EQ(from_dev<int8_t>(codes, want.size()), want) << "silu_mul codes " << what;
          EXPECT_EQ(from_dev<float>(scales, want_s.size()), want_s) << "silu_mul scales " << what;
        }
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

// Decode step (q/k norm + RoPE + KV append + attention in one kernel): B rows, each with its own
// slot (reversed order) and length, from the fused qkv rows, against ref::rms_norm + ref::rope
// (RopeTable) + ref::attention over the reference cache with the new k/v row appended. The kernel
// rounds the rotated q and k to the activation dtype (as the cache holds them), the reference
// rounds them too, so the two may differ by one rounding of q/k elements: bound 8 act_eps on the
// output (fp32 softmax, one output rounding). The appended k row: 4 act_eps (as the prefill
// append), v row and every other cache row: exact.
struct DecCase {
  int H, Hkv, hd;
  bool qk_norm;
  std::vector<int32_t> lens;  // cache lengths after the step (pos + 1), one per row
};
// hd = 16, 32, 64, 128, 256 take the kernel's register prologue (norm + RoPE with one barrier),
// hd = 96, 24, 8, 6 the shared-memory one (norm_rope_apply); both with and without q/k norm.
const DecCase kDecCases[] = {
    {32, 8, 128, false, {2049}},                            // LLaMA-3-8B, batch 1
    {32, 8, 128, true, {1, 2, 17, 127, 128}},               // Qwen3-8B, batch 5
    {32, 8, 128, false, {129, 2047}},                       // batch 2
    {16, 8, 128, true, {1, 3, 16, 17, 31, 33, 64, 65, 100, 127, 128, 129, 200, 255, 256, 257}},  // Qwen3-0.6B, B 16
    {40, 8, 128, true, {300, 77}},                          // Qwen3-14B: rep 5 (5 of the MMA's 8 rows real)
    {64, 8, 128, false, {1000}},                            // LLaMA-3-70B: rep 8 (RP 8)
    {32, 2, 128, false, {513, 40}},                         // rep 16, hd 128: two head chunks of 8
    {4, 2, 16, false, {1, 300, 37}},                        // batch 3
    {9, 3, 64, true, {130, 1, 64}},                         // rep 3
    {16, 1, 32, false, {129, 2}},                           // rep 16: two head chunks
    {12, 1, 64, true, {77}},                                // rep 12: chunks of 8 + 4
    {2, 2, 8, false, {17, 1, 9}},                           // rep 1, hd 8
    {4, 2, 24, true, {70, 5}},                              // hd 24: 3 of 4 lanes per key
    {6, 2, 96, false, {150, 1, 2, 3, 4}},                   // hd 96: 12 of 16 lanes, batch 5
    {2, 1, 256, true, {140, 2}},                            // hd 256
    {8, 1, 64, false, {200}},                               // rep 8
    {4, 2, 6, true, {33, 1, 2}},                            // hd 6: unaligned (scalar loads)
};

// Each case with the global merge of the splits (MOSAIC_DECODE_CLUSTER=0: partials, the last CTA
// merges), with the cluster merge forced (=1: distributed shared memory, <= 16 splits), and with the
// plan's own choice for a tight key bound (unset, keys_bound = the longest length: fewer splits).
// Every case with the scalar key loop (MOSAIC_DECODE_MMA=0) and with the default (the tensor-core key loop for
// head_dim 128; the other head sizes keep the scalar loop).
TEST(GpuOps, DecodeAttentionMatchesReference) {
  REQUIRE_GPU();
  for (const char* mma : {"0", "1"})
  for (const char* cluster : {"0", "1", "auto"})
  for (Act a : kActs)
    for (const DecCase& c : kDecCases) {
      setenv("MOSAIC_DECODE_MMA", mma, 1);
      const bool automatic = std::string(cluster) == "auto";
      if (automatic)
        unsetenv("MOSAIC_DECODE_CLUSTER");
      else
        setenv("MOSAIC_DECODE_CLUSTER", cluster, 1);
      const int B = int(c.lens.size()), hd = c.hd, nh = c.H + 2 * c.Hkv;
      const int64_t cap = *std::max_element(c.lens.begin(), c.lens.end()) + 3;
      std::vector<int32_t> pos(static_cast<size_t>(B)), slot(static_cast<size_t>(B));
      for (int b = 0; b < B; ++b) {
        pos[size_t(b)] = c.lens[size_t(b)] - 1;
        slot[size_t(b)] = B - 1 - b;
      }
      ModelConfig cfg;
      cfg.head_dim = hd;
      cfg.rope_theta = 500000.0f;
      const RopeTable rope = RopeTable::from_config(cfg);
      const size_t cache_n = size_t(B) * c.Hkv * size_t(cap) * hd;
      auto kc = round_act(a, randn(cache_n, 11)), vc = round_act(a, randn(cache_n, 12));
      const auto qkv = round_act(a, randn(size_t(B) * nh * hd, 13, 2.0f));
      const auto qn = randn(size_t(hd), 14), kn = randn(size_t(hd), 15);
      kern::AttnDims d{c.H, c.Hkv, hd, cap};
      DevBuf dk = to_act(a, kc), dv = to_act(a, vc), dqkv = to_act(a, qkv), dp = to_dev(pos), ds = to_dev(slot);
      DevBuf dqn = to_dev(qn), dkn = to_dev(kn), inv = to_dev(rope.inv_freq()), out(size_t(B) * c.H * hd * 2);
      DevBuf scratch(kern::attention_decode_scratch_bytes(B, d));
      check_cuda(cudaMemset(scratch.get(), 0, scratch.bytes()), "memset");
      // Twice: the second launch checks that the first left the split counters at zero.
      for (int rep = 0; rep < 2; ++rep)
        kern::attention_decode(a, dqkv.get(), dp.as<int32_t>(), ds.as<int32_t>(), B, d,
                               c.qk_norm ? dqn.as<float>() : nullptr, c.qk_norm ? dkn.as<float>() : nullptr, 1e-6f,
                               inv.as<float>(), dk.get(), dv.get(), scratch.get(), B, out.get(), nullptr,
                               automatic ? *std::max_element(c.lens.begin(), c.lens.end()) : 0);
      const auto got = from_act(a, out, size_t(B) * c.H * hd);
      const auto gk = from_act(a, dk, cache_n), gv = from_act(a, dv, cache_n);
      double worst = 0, worst_k = 0;
      for (int b = 0; b < B; ++b) {
        const float* row = qkv.data() + size_t(b) * nh * hd;
        std::vector<float> q(row, row + c.H * hd), k(row + c.H * hd, row + (c.H + c.Hkv) * hd),
            v(row + (c.H + c.Hkv) * hd, row + nh * hd);
        if (c.qk_norm) {
          ref::rms_norm(q.data(), qn.data(), c.H, hd, 1e-6f, q.data());
          ref::rms_norm(k.data(), kn.data(), c.Hkv, hd, 1e-6f, k.data());
        }
        std::vector<float> cs(size_t(hd / 2)), sn(size_t(hd / 2));
        rope.cos_sin(pos[size_t(b)], cs.data(), sn.data());
        ref::rope(q.data(), 1, c.H, hd, cs.data(), sn.data());
        ref::rope(k.data(), 1, c.Hkv, hd, cs.data(), sn.data());
        for (int g = 0; g < c.Hkv; ++g) {
          const size_t off = ((size_t(slot[size_t(b)]) * c.Hkv + g) * cap + pos[size_t(b)]) * hd;
          worst_k = std::max(worst_k, rel_max_err(gk.data() + off, k.data() + g * hd, size_t(hd)));
          for (int i = 0; i < hd; ++i) {
            ASSERT_EQ(gv[off + size_t(i)], v[size_t(g * hd + i)]) << "v row";
            kc[off + size_t(i)] = gk[off + size_t(i)];  // the reference attends to the appended rows
            vc[off + size_t(i)] = v[size_t(g * hd + i)];
          }
        }
        const auto ref = ref_attention(round_act(a, q), kc, vc, AttnCase{c.H, c.Hkv, hd, cap}, slot[size_t(b)], 1,
                                       pos[size_t(b)]);
        worst = std::max(worst, rel_max_err(got.data() + size_t(b) * c.H * hd, ref.data(), ref.size()));
      }
      EXPECT_EQ(gk, kc) << "cache rows other than the appended ones changed";
      EXPECT_EQ(gv, vc);
      EXPECT_LE(worst_k, 4 * act_eps(a)) << act_name(a) << " appended k, H=" << c.H << " hd=" << hd;
      EXPECT_LE(worst, 8 * act_eps(a)) << act_name(a) << " H=" << c.H << " Hkv=" << c.Hkv << " hd=" << hd
                                       << " B=" << B << " qk_norm=" << c.qk_norm << " cluster merge " << cluster
                                       << " mma " << mma;
    }
  unsetenv("MOSAIC_DECODE_CLUSTER");
  unsetenv("MOSAIC_DECODE_MMA");
}

// Timing on LLaMA-3-8B's attention shapes (32 heads, 8 kv heads, hd 128; 32 layers with their own
// caches, so the KV reads come from HBM, not L2), 2145 cached positions as in `bench e2e
// --profile`: the decode step's q/k norm + RoPE + KV append + attention, microseconds per layer
// (32 launches in one CUDA graph, as in the engine), against the KV bytes read at the measured
// copy bandwidth, with 1..6 CTAs per SM (MOSAIC_DECODE_CTAS_PER_SM), with the lanes per key at run
// time (MOSAIC_DECODE_LANES=runtime) and without programmatic dependent launch (MOSAIC_PDL=0). Checks row 0 of the
// last layer against the reference (8 act_eps, as above).
TEST(GpuOps, DecodeAttentionTiming) {
  REQUIRE_GPU();
  const Act a = Act::F16;
  const int H = 32, Hkv = 8, hd = 128, L = 32, maxB = 16, len = 2145;
  const int64_t cap = 2176;
  kern::AttnDims d{H, Hkv, hd, cap};
  const size_t layer_n = size_t(maxB) * Hkv * size_t(cap) * hd;
  DevBuf kc(layer_n * 2 * L), vc(layer_n * 2 * L), qkv(size_t(maxB) * (H + 2 * Hkv) * hd * 2);
  kern::fill_random(a, kc.get(), int64_t(layer_n) * L, 1.f, 1, nullptr);
  kern::fill_random(a, vc.get(), int64_t(layer_n) * L, 1.f, 2, nullptr);
  kern::fill_random(a, qkv.get(), int64_t(maxB) * (H + 2 * Hkv) * hd, 2.f, 3, nullptr);
  ModelConfig cfg;
  cfg.head_dim = hd;
  cfg.rope_theta = 500000.0f;
  const RopeTable rope = RopeTable::from_config(cfg);
  DevBuf inv = to_dev(rope.inv_freq());
  DevBuf scratch(kern::attention_decode_scratch_bytes(maxB, d));
  check_cuda(cudaMemset(scratch.get(), 0, scratch.bytes()), "memset");
  DevBuf out(size_t(maxB) * H * hd * 2);
  DevBuf c0(size_t(1) << 30), c1(size_t(1) << 30);  // copy bandwidth (read + write), as bench e2e
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  cudaStream_t st = nullptr;
  check_cuda(cudaStreamCreate(&st), "stream");
  // f's launches captured into one CUDA graph (as the engine's decode step), replayed reps times.
  auto time_ms = [&](const std::function<void()>& f, int reps) {
    f();  // eager first (one-time setup of the launchers)
    cudaGraph_t g = nullptr;
    cudaGraphExec_t ex = nullptr;
    check_cuda(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal), "capture");
    f();
    check_cuda(cudaStreamEndCapture(st, &g), "capture");
    check_cuda(cudaGraphInstantiate(&ex, g, 0), "instantiate");
    cudaGraphLaunch(ex, st);
    cudaEventRecord(e0, st);
    for (int r = 0; r < reps; ++r) cudaGraphLaunch(ex, st);
    cudaEventRecord(e1, st);
    check_cuda(cudaEventSynchronize(e1), "timing");
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    cudaGraphExecDestroy(ex);
    cudaGraphDestroy(g);
    return double(ms) / reps;
  };
  const double copy_ms =
      time_ms([&] { cudaMemcpyAsync(c1.get(), c0.get(), c0.bytes(), cudaMemcpyDeviceToDevice, st); }, 5);
  const double bw = 2.0 * double(c0.bytes()) / (copy_ms * 1e-3);
  std::printf("[ attn timing ] copy bandwidth %.0f GB/s; us per layer (mean of %d layers x 5 reps)\n", bw / 1e9, L);
  auto kcl = [&](int l) { return kc.as<char>() + size_t(l) * layer_n * 2; };
  auto vcl = [&](int l) { return vc.as<char>() + size_t(l) * layer_n * 2; };
  // Batch B: sequences in slots 0 .. B-1, each at position len - 1 (the device pos and slot arrays).
  struct Batch {
    DevBuf pos, slot;
  };
  auto batch = [&](int B) {
    std::vector<int32_t> pos(static_cast<size_t>(B), len - 1), slot(static_cast<size_t>(B));
    for (int b = 0; b < B; ++b) slot[size_t(b)] = b;
    return Batch{to_dev(pos), to_dev(slot)};
  };
  // Microseconds per layer of the L layers' attention launches in one graph, under the plan of the current
  // environment, with scratch sc (sized under that plan).
  auto layers_us = [&](int B, const Batch& bt, const DevBuf& sc) {
    return time_ms([&] {
      for (int l = 0; l < L; ++l)
        kern::attention_decode(a, qkv.get(), bt.pos.as<int32_t>(), bt.slot.as<int32_t>(), B, d, nullptr, nullptr, 1e-5f,
                               inv.as<float>(), kcl(l), vcl(l), sc.get(), maxB, out.get(), st);
    }, 5) * 1e3 / L;
  };
  for (int B : {1, 4, 16}) {
    const Batch bt = batch(B);
    auto run = [&](DevBuf& sc) { return layers_us(B, bt, sc); };
    std::string per_sm;
    for (int t : {1, 3, 4, 6}) {
      setenv("MOSAIC_DECODE_CTAS_PER_SM", std::to_string(t).c_str(), 1);
      DevBuf sc(kern::attention_decode_scratch_bytes(maxB, d));
      check_cuda(cudaMemset(sc.get(), 0, sc.bytes()), "memset");
      char buf[64];
      std::snprintf(buf, sizeof buf, " %d/SM %.1f us", t, run(sc));
      per_sm += buf;
    }
    unsetenv("MOSAIC_DECODE_CTAS_PER_SM");
    std::string caps;  // fewer splits: a shorter merge, fewer CTAs streaming the cache
    for (int c : {4, 8, 16}) {
      setenv("MOSAIC_DECODE_SPLITS", std::to_string(c).c_str(), 1);
      char buf[64];
      std::snprintf(buf, sizeof buf, " <=%d %.1f us", c, run(scratch));
      caps += buf;
    }
    unsetenv("MOSAIC_DECODE_SPLITS");
    // The splits merged in a thread-block cluster (<= 16 splits; experimental, off by default).
    setenv("MOSAIC_DECODE_CLUSTER", "1", 1);
    const double t_cluster = run(scratch);
    unsetenv("MOSAIC_DECODE_CLUSTER");
    // The same kernel with lanes per key at run time, and without programmatic dependent launch.
    setenv("MOSAIC_DECODE_LANES", "runtime", 1);
    const double t_rt = run(scratch);
    unsetenv("MOSAIC_DECODE_LANES");
    setenv("MOSAIC_PDL", "0", 1);
    const double t_nopdl = run(scratch);
    unsetenv("MOSAIC_PDL");
    setenv("MOSAIC_DECODE_MMA", "0", 1);  // the scalar key loop (the default before the tensor-core one)
    const double t_scalar = run(scratch);
    unsetenv("MOSAIC_DECODE_MMA");
    const double t_us = run(scratch);
    const double kv_bytes = 2.0 * B * Hkv * double(len) * hd * 2, ideal_us = kv_bytes / bw * 1e6;
    std::printf("[ attn timing ] B=%2d: %.1f us (scalar key loop %.1f, lanes at run time %.1f, no PDL %.1f, cluster merge %.1f); KV %.1f MB -> "
                "%.1f us at copy bandwidth (%.0f%%); CTAs per SM:%s; splits capped at:%s\n",
                B, t_us, t_scalar, t_rt, t_nopdl, t_cluster, kv_bytes / 1e6, ideal_us, 100 * ideal_us / t_us, per_sm.c_str(),
                caps.c_str());
  }
  // MOSAIC_ATTN_SWEEP=1 (plan tuning on a GPU machine, off in normal runs): every split count 1 .. 32 with the
  // global merge and 2 .. 16 with the cluster merge, batch 1, 2, 4, 8, 16, us per layer, one table. Caveat
  // (seventeenth session): here attention follows attention, so with programmatic dependent launch the next
  // layer's CTAs issue their key copies while this one finishes; plans of few CTAs (one per SM) gain from that
  // here and lose in the engine, where the o GEMM follows (H200, batch 16, 1 split: 42.1 us per layer here,
  // ~74 in the step). Confirm a plan with `mosaic bench e2e` before adopting it.
  if (const char* sw = std::getenv("MOSAIC_ATTN_SWEEP"); sw && std::string(sw) == "1") {
    std::printf("[ attn sweep ] us per layer, %d cached positions; columns: splits (g = global merge, c = cluster merge)\n", len);
    std::printf("[ attn sweep ] B  | g1 | g2 | g4 | g8 | g16 | g32 | c2 | c4 | c8 | c16\n");
    setenv("MOSAIC_DECODE_CTAS_PER_SM", "16", 1);  // the plan's own count above every cap: the cap is the count
    for (int B : {1, 2, 4, 8, 16}) {
      const Batch bt = batch(B);
      std::string row = "[ attn sweep ] " + std::to_string(B) + " ";
      for (const char* cl : {"0", "1"})
        for (int n : {1, 2, 4, 8, 16, 32}) {
          if (cl[0] == '1' && (n < 2 || n > 16)) continue;
          setenv("MOSAIC_DECODE_CLUSTER", cl, 1);
          setenv("MOSAIC_DECODE_SPLITS", std::to_string(n).c_str(), 1);
          DevBuf sc(kern::attention_decode_scratch_bytes(maxB, d));  // sized under this plan
          check_cuda(cudaMemset(sc.get(), 0, sc.bytes()), "memset");
          const double us = layers_us(B, bt, sc);
          char buf[32];
          std::snprintf(buf, sizeof buf, "| %.1f ", us);
          row += buf;
        }
      std::printf("%s\n", row.c_str());
    }
    unsetenv("MOSAIC_DECODE_CTAS_PER_SM");
    unsetenv("MOSAIC_DECODE_CLUSTER");
    unsetenv("MOSAIC_DECODE_SPLITS");
  }
  // Row 0 of the last layer (sequence slot 0): the reference over its cache (the appended row included).
  const size_t seq_n = size_t(Hkv) * size_t(cap) * hd;
  std::vector<uint16_t> kb(seq_n), vb(seq_n);
  check_cuda(cudaMemcpy(kb.data(), kcl(L - 1), seq_n * 2, cudaMemcpyDeviceToHost), "download");
  check_cuda(cudaMemcpy(vb.data(), vcl(L - 1), seq_n * 2, cudaMemcpyDeviceToHost), "download");
  std::vector<float> kf(seq_n), vf(seq_n);
  for (size_t i = 0; i < seq_n; ++i) {
    kf[i] = fp16_to_float(kb[i]);
    vf[i] = fp16_to_float(vb[i]);
  }
  auto q = from_act(a, qkv, size_t(H) * hd);
  std::vector<float> cs(size_t(hd / 2)), sn(size_t(hd / 2));
  rope.cos_sin(len - 1, cs.data(), sn.data());
  ref::rope(q.data(), 1, H, hd, cs.data(), sn.data());
  const auto ref = ref_attention(round_act(a, q), kf, vf, AttnCase{H, Hkv, hd, cap}, 0, 1, len - 1);
  EXPECT_LE(rel_max_err(from_act(a, out, size_t(H) * hd), ref), 8 * act_eps(a));
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaStreamDestroy(st);
}

// Prefill: n queries at pos0 (0 = fresh prompt, > 0 = a later chunk): head_dim 64 / 128 on the
// tensor-core kernel (several 64-query and 64-key tiles, partial last tiles, the causal diagonal
// inside a tile), the other head dims through cuBLAS + the causal softmax. P is rounded to the
// activation dtype before P V (as HF's eager attention does): bound 8 act_eps.
TEST(GpuOps, PrefillAttentionMatchesReference) {
  REQUIRE_GPU();
  cublasHandle_t h = nullptr;
  ASSERT_EQ(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
  for (Act a : kActs)
    for (const AttnCase& c : kAttnCases)
      for (auto [n, pos0] : {std::pair<int64_t, int64_t>{1, 0}, {17, 0}, {std::min<int64_t>(c.cap, 100), 0},
                             {5, c.cap - 5}, {33, c.cap / 3}, {c.cap - 3, 3}, {c.cap - 70, 70}}) {
        if (n < 1 || pos0 + n > c.cap) continue;
        const int64_t slots = 2, s = 1;
        const size_t cache_n = size_t(slots * c.Hkv * c.cap * c.hd);
        const auto kc = round_act(a, randn(cache_n, 21)), vc = round_act(a, randn(cache_n, 22));
        const auto q = round_act(a, randn(size_t(n * c.H * c.hd), 23, 2.0f));
        kern::AttnDims d{c.H, c.Hkv, c.hd, c.cap};
        DevBuf dk = to_act(a, kc), dv = to_act(a, vc), dq = to_act(a, q), out(size_t(n * c.H * c.hd) * 2);
        EXPECT_EQ(flash_prefill_enabled(d), c.hd == 64 || c.hd == 128);
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
