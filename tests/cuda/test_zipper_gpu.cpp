// GPU tests of ZipperEngine against the scalar CPU reference (zipper_test_util.h). Each test
// skips with a visible message when no CUDA GPU is present (CI), so they still compile there.
//
// Error bound: normalized ||Y - Yref|| / ||Yref|| over the whole output, Yref in double from
// the exact dequantized weights. FP16: weights rounded to fp16 once (and once more after the
// residual add), fp32 accumulation, fp16 output: ~4e-4 expected, bound 1e-3. BF16: same with
// 8-bit mantissas (and bf16 scales): ~3e-3 expected, bound 1e-2.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <tuple>
#include <utility>

#include "cuda/zipper.h"
#include "cuda/zipper_launch.h"
#include "gpu_test_util.h"
#include "util/error.h"
#include "zipper_test_util.h"

namespace mosaic::cuda {
namespace {

using test::Pattern;

#define REQUIRE_GPU() MOSAIC_REQUIRE_CUDA_GPU("ZipperEngine GPU test")
using test::DeviceBuf;
using test::bound;

// Runs one GEMM on the GPU with a poisoned (NaN) output and returns the normalized error; fails
// the test if any output is not finite (unwritten or NaN).
double run_and_compare(const ZipperLinear& zl, int64_t M, DType dt, const std::vector<uint16_t>& xbits,
                       const std::vector<double>& yref, Variant v, GemmPath path) {
  return test::run_poisoned(M, zl.K(), zl.N(), dt, xbits, yref,
                            [&](const void* X, void* Y) { zl.gemm(X, Y, M, dt, nullptr, v, path); });
}

const char* path_name(GemmPath p) { return p == GemmPath::Fused ? "fused" : p == GemmPath::Dequant ? "dequant" : "auto"; }

// The sweep: M values x residual patterns x fp16/bf16 x both paths, N and K odd
// multiples of the tiles (N = 3 x 128 outputs, K = 5 x 128 inputs).
TEST(ZipperGpu, MatchesCpuReferenceAcrossMPatternsDtypesAndPaths) {
  REQUIRE_GPU();
  const int64_t N = 384, K = 640;
  // ZIPPER_QUICK (compute-sanitizer runs): a reduced set of M.
  const std::vector<int64_t> Ms = std::getenv("ZIPPER_QUICK")
                                      ? std::vector<int64_t>{1, 17, 64, 130}
                                      : std::vector<int64_t>{1, 2, 3, 7, 15, 16, 17, 31, 33, 64, 127, 255, 1024, 4097};
  double worst[2] = {0, 0};
  for (Pattern pat : {Pattern::None, Pattern::Uniform, Pattern::Clustered, Pattern::OneTile}) {
    const PackedLinear w = test::random_layer(N, K, 128, pat, 100 + int(pat));
    const std::vector<float> W = test::reference_dequant(w);
    const ZipperLinear zl(w);
    for (DType dt : {DType::F16, DType::BF16})
      for (int64_t M : Ms) {
        std::vector<uint16_t> xb;
        std::vector<float> xf;
        test::random_activations(M, K, dt == DType::BF16, 1000 + M, xb, xf);
        const std::vector<double> yref = test::reference_gemm(xf, W, M, N, K);
        for (GemmPath path : {GemmPath::Fused, GemmPath::Dequant}) {
          const double err = run_and_compare(zl, M, dt, xb, yref, Variant::Zipper, path);
          EXPECT_LT(err, bound(dt)) << "pattern " << test::pattern_name(pat) << " " << dtype_name(dt) << " M=" << M
                                    << " path " << path_name(path);
          worst[int(dt)] = std::max(worst[int(dt)], err);
        }
      }
  }
  std::printf("[ zipper ] worst normalized error: fp16 %.3g (bound 1e-3), bf16 %.3g (bound 1e-2)\n", worst[0], worst[1]);
}

// Odd shapes: N a multiple of 16 but not of the CTA's 128 (idle warps), other group sizes,
// per-channel scales, long K (split-K with many K-ranges), repeated calls (workspace reset).
TEST(ZipperGpu, OddShapesGroupSizesAndRepeatedCalls) {
  REQUIRE_GPU();
  struct Case { int64_t N, K; int group; Pattern pat; };
  const Case cases[] = {{208, 384, 64, Pattern::Uniform}, {16, 128, 128, Pattern::OneTile},
                        {144, 1152, 32, Pattern::Clustered}, {272, 8320, 128, Pattern::Uniform},
                        {128, 640, 640, Pattern::Uniform}, {96, 256, 16, Pattern::Uniform}};
  for (const Case& c : cases) {
    const PackedLinear w = test::random_layer(c.N, c.K, c.group, c.pat, uint64_t(c.N * 7 + c.K));
    const std::vector<float> W = test::reference_dequant(w);
    const ZipperLinear zl(w);
    for (DType dt : {DType::F16, DType::BF16})
      for (int64_t M : {1, 5, 33, 70}) {
        std::vector<uint16_t> xb;
        std::vector<float> xf;
        test::random_activations(M, c.K, dt == DType::BF16, uint64_t(M * 31 + c.K), xb, xf);
        const std::vector<double> yref = test::reference_gemm(xf, W, M, c.N, c.K);
        for (int rep = 0; rep < 2; ++rep)
          for (GemmPath path : {GemmPath::Fused, GemmPath::Dequant})
            EXPECT_LT(run_and_compare(zl, M, dt, xb, yref, Variant::Zipper, path), bound(dt))
                << "N=" << c.N << " K=" << c.K << " group=" << c.group << " " << dtype_name(dt) << " M=" << M
                << " rep " << rep << " path " << path_name(path);
      }
  }
}

// Layers sharing one ZipperShared (the GPU engine's setup): the dequantize path through the
// shared buffer, grown by a larger layer after a smaller one used it, and interleaved calls of
// layers of different shapes on one stream, each still equal to its own reference.
TEST(ZipperGpu, SharedDequantWorkspace) {
  REQUIRE_GPU();
  auto shared = std::make_shared<ZipperShared>();
  const PackedLinear a = test::random_layer(144, 384, 64, Pattern::Uniform, 11);
  const PackedLinear b = test::random_layer(400, 1152, 128, Pattern::Clustered, 12);
  ZipperLinear za(a), zb(b);
  za.share(shared);
  zb.share(shared);
  EXPECT_EQ(shared->bytes(), 0u);  // nothing reserved until used
  for (int rep = 0; rep < 2; ++rep)
    for (const ZipperLinear* z : {&za, &zb}) {
      const PackedLinear& w = z == &za ? a : b;
      const std::vector<float> W = test::reference_dequant(w);
      for (DType dt : {DType::F16, DType::BF16}) {
        const int64_t M = 67;
        std::vector<uint16_t> xb;
        std::vector<float> xf;
        test::random_activations(M, w.K, dt == DType::BF16, uint64_t(M * 13 + w.K + rep), xb, xf);
        const std::vector<double> yref = test::reference_gemm(xf, W, M, w.N, w.K);
        EXPECT_LT(run_and_compare(*z, M, dt, xb, yref, Variant::Zipper, GemmPath::Dequant), bound(dt))
            << "N=" << w.N << " K=" << w.K << " " << dtype_name(dt) << " rep " << rep;
      }
    }
  EXPECT_EQ(shared->bytes(), size_t(400 * 1152 * 2));  // grown once to the largest layer
  EXPECT_THROW(za.share(nullptr), Error);
}

// One layer on the fused path (test::check_layer_on_path): zipper and dense against the CPU reference at each M,
// fp16 and bf16, two repetitions. `what` names the setting (a forced plan, a tuner mode) in the failure messages.
// Layer seed layer_seed, activation seed act_mul * M + K.
void check_fused_layer(int64_t N, int64_t K, int group, Pattern pat, const std::string& what, const std::vector<int64_t>& Ms,
                       uint64_t layer_seed, uint64_t act_mul) {
  const PackedLinear w = test::random_layer(N, K, group, pat, layer_seed);
  const ZipperLinear zl(w);
  test::check_layer_on_path(zl, GemmPath::Fused, test::reference_dequant(w), test::reference_dequant(w, false), Ms,
                            act_mul,
                            "N=" + std::to_string(N) + " K=" + std::to_string(K) + " group=" + std::to_string(group) +
                                " " + test::pattern_name(pat) + " " + what);
}

// The stream kernel (M <= 16) under forced plans: several rows per warp (the ring flowing across
// rows, rows interleaved over CTAs), partial row groups (idle warps), split-K with per-row
// fix-up and without; residual patterns incl. clustered; repeated calls (workspace reset).
// Every instantiation: M <= 8 (one n8 tile of X rows) and 9..16 (two), scale groups per tile
// (128, per channel), per chunk (64) and per k16 step (16, 32), KW = 1, 2, 4, 8 warps per row
// (PLAN = "KSPLIT,RPW,KW"), 16 warps per CTA with KW = 1, 2, 4 ("KSPLIT,RPW,KW,16"), fp16 and bf16,
// zipper and dense.
TEST(ZipperGpu, StreamKernelForcedPlans) {
  REQUIRE_GPU();
  struct Case { int64_t N, K; int group; Pattern pat; const char* plan; };
  const Case cases[] = {{384, 640, 128, Pattern::Clustered, "128,2"}, {384, 640, 128, Pattern::Uniform, "256,3"},
                        {528, 1152, 128, Pattern::OneTile, "1152,4"}, {272, 8320, 128, Pattern::Uniform, "4096,1"},
                        {144, 1152, 32, Pattern::Clustered, "384,2"},  {208, 384, 64, Pattern::None, "128,32"},
                        {208, 384, 64, Pattern::Uniform, "384,1"},     {96, 256, 16, Pattern::Uniform, "128,1"},
                        {128, 640, 640, Pattern::Clustered, "640,2"},  {400, 1152, 128, Pattern::OneTile, "384,3"},
                        // in-CTA K split (KW warps per row): alone, with split-K, partial row groups
                        {384, 1024, 128, Pattern::Uniform, "1024,1,8"}, {384, 2048, 128, Pattern::Clustered, "1024,2,4"},
                        {272, 768, 128, Pattern::OneTile, "256,3,2"},   {528, 4096, 512, Pattern::Uniform, "4096,1,8"},
                        // one row with all 64 chunks kept, its blocks split 8 ways (v17's even share)
                        {528, 4096, 128, Pattern::OneTile, "4096,1,8"}, {400, 4096, 128, Pattern::OneTile, "2048,2,4"},
                        // 16 warps per CTA: partial row groups, split-K with KW > 1, a K-range shorter than the rest
                        {384, 640, 128, Pattern::Uniform, "128,2,1,16"},   {528, 4096, 128, Pattern::OneTile, "2048,1,4,16"},
                        {384, 2048, 128, Pattern::Clustered, "1024,2,2,16"}, {272, 8320, 128, Pattern::Uniform, "4096,1,1,16"},
                        {528, 4096, 512, Pattern::Uniform, "2048,3,2,16"}};
  // ZIPPER_QUICK (compute-sanitizer runs): one M of each n8-tile count.
  const std::vector<int64_t> Ms =
      std::getenv("ZIPPER_QUICK") ? std::vector<int64_t>{1, 9} : std::vector<int64_t>{1, 2, 6, 8, 9, 16};
  for (const Case& c : cases) {
    const test::ScopedEnv forced("MOSAIC_ZIPPER_STREAM_PLAN", c.plan);
    check_fused_layer(c.N, c.K, c.group, c.pat, std::string("plan ") + c.plan, Ms, uint64_t(c.N * 3 + c.K), 17);
  }
}

// Rows dealt by weight (DeviceLayer::res_row_order, the snake map of stream_slot): forced on and off
// (MOSAIC_ZIPPER_ROW_ORDER, read when a layer loads) under forced plans with several rows per warp,
// split-K, partial row groups and 1 / 2 / 4 / 8 warps per row, clustered, one-tile and uniform residuals.
TEST(ZipperGpu, StreamKernelRowsDealtByWeight) {
  REQUIRE_GPU();
  struct Case { int64_t N, K; int group; Pattern pat; const char* plan; };
  const Case cases[] = {{384, 640, 128, Pattern::Clustered, "128,2"},  {400, 1152, 128, Pattern::OneTile, "384,3"},
                        {208, 384, 64, Pattern::Uniform, "128,32"},    {384, 2048, 128, Pattern::Clustered, "1024,2,4"},
                        {272, 768, 128, Pattern::OneTile, "256,3,2"},  {528, 4096, 128, Pattern::OneTile, "4096,1,8"},
                        {144, 1152, 32, Pattern::Clustered, "384,2"},  {384, 2048, 128, Pattern::Clustered, "1024,2,4,16"},
                        {528, 4096, 128, Pattern::OneTile, "4096,1,1,16"}};
  for (const char* order : {"1", "0"})
    for (const Case& c : cases) {
      const test::ScopedEnv forced("MOSAIC_ZIPPER_STREAM_PLAN", c.plan), by_weight("MOSAIC_ZIPPER_ROW_ORDER", order);
      check_fused_layer(c.N, c.K, c.group, c.pat, std::string("plan ") + c.plan + " row order " + order, {1, 3, 9, 16},
                        uint64_t(c.N * 7 + c.K), 29);
    }
}

// Stream-kernel K-ranges longer than 64 chunks (v18: the blocks' chunks come from colidx, not from a
// 64-bit mask of the K-range): unsplit K of 8192 / 14336 (LLaMA-3's down) with 1, 2 and 8 warps per
// row, splits whose second range starts inside a word of the row bitmap (K = 8448 in two ranges of
// 66 chunks, K = 8704 in two of 68 with KW = 2), and one row with every chunk kept (one-tile): a
// warp's share of more than 32 blocks (96 with KW = 1 at K = 6144), which reloads its next 32
// columns. M = 1, 2, 3, 5 (K = 14336 at M = 5: X tile 172 KB + rings 35 KB of shared memory; M = 6
// does not fit); fp16 and bf16, zipper and dense.
TEST(ZipperGpu, StreamKernelLongKRanges) {
  REQUIRE_GPU();
  struct Case { int64_t N, K; Pattern pat; const char* plan; };
  const Case cases[] = {{272, 8192, Pattern::Uniform, "8192,1,8"},  {400, 8192, Pattern::OneTile, "8192,1,8"},
                        {144, 6144, Pattern::OneTile, "6144,1,1"},  {208, 8448, Pattern::Clustered, "4224,2,1"},
                        {208, 8704, Pattern::OneTile, "4352,1,2"},  {256, 14336, Pattern::Uniform, "14336,1,8"},
                        {144, 14336, Pattern::OneTile, "14336,2,2"},  {272, 8192, Pattern::OneTile, "8192,1,2,16"}};
  for (const Case& c : cases) {
    const test::ScopedEnv forced("MOSAIC_ZIPPER_STREAM_PLAN", c.plan);
    check_fused_layer(c.N, c.K, 128, c.pat, std::string("plan ") + c.plan, {1, 2, 3, 5}, uint64_t(c.N * 5 + c.K), 19);
  }
}

// The first-use tuner with the weights in L2 (MOSAIC_ZIPPER_TUNE_COLD=0: rounds of back-to-back launches; the
// default, cold tuning, runs in every other test that tunes): layer shapes no other test uses, so this process
// tunes them here; the plans it keeps compute the reference (residual on and off, M = 1, 4, 9, fp16 / bf16,
// each twice).
TEST(ZipperGpu, HotL2TuningKeepsACorrectPlan) {
  REQUIRE_GPU();
  const test::ScopedEnv hot("MOSAIC_ZIPPER_TUNE_COLD", "0");
  for (const auto& [N, K] : {std::pair<int64_t, int64_t>{656, 3072}, {1040, 2304}})
    check_fused_layer(N, K, 128, Pattern::Uniform, "hot-L2 tuning", {1, 4, 9}, uint64_t(N + K), 23);
}

// Programmatic dependent launch: a GEMM launched with it reads its X only after the kernel before
// it (here another, slow, GEMM that writes that X, poisoned with NaN first) has finished. A read
// too early would see NaN or a partial X. The stream kernel (M = 1, 3, 16: both instantiations)
// and the wgmma kernel (M = 33, 64), residual on, fp16 / bf16, five repetitions each.
TEST(ZipperGpu, ProgrammaticLaunchWaitsForTheKernelBefore) {
  REQUIRE_GPU();
  const int64_t K0 = 8192, N0 = 1024, N1 = 528;  // A: [K0 -> N0] writes X of B: [N0 -> N1]
  const PackedLinear wa = test::random_layer(N0, K0, 128, Pattern::Uniform, 71);
  const PackedLinear wb = test::random_layer(N1, N0, 128, Pattern::Clustered, 72);
  const std::vector<float> Wb = test::reference_dequant(wb);
  ZipperLinear za(wa), zb(wb);
  zb.set_programmatic_launch(true);
  for (DType dt : {DType::F16, DType::BF16})
    for (int64_t M : {1, 3, 16, 33, 64}) {
      std::vector<uint16_t> xb;
      std::vector<float> xf;
      test::random_activations(M, K0, dt == DType::BF16, uint64_t(M * 5 + 1), xb, xf);
      DeviceBuf X0(size_t(M * K0 * 2)), X1(size_t(M * N0 * 2)), Y(size_t(M * N1 * 2));
      ASSERT_EQ(cudaMemcpy(X0.p, xb.data(), xb.size() * 2, cudaMemcpyHostToDevice), cudaSuccess);
      for (int rep = 0; rep < 5; ++rep) {
        ASSERT_EQ(cudaMemset(X1.p, 0xff, size_t(M * N0 * 2)), cudaSuccess);  // NaN in fp16 and bf16
        ASSERT_EQ(cudaMemset(Y.p, 0xff, size_t(M * N1 * 2)), cudaSuccess);
        za.gemm(X0.p, X1.p, M, dt);  // plain launch
        zb.gemm(X1.p, Y.p, M, dt);   // programmatic launch: waits for za's kernel before reading X1
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        std::vector<uint16_t> x1(size_t(M * N0)), y(size_t(M * N1));
        ASSERT_EQ(cudaMemcpy(x1.data(), X1.p, x1.size() * 2, cudaMemcpyDeviceToHost), cudaSuccess);
        ASSERT_EQ(cudaMemcpy(y.data(), Y.p, y.size() * 2, cudaMemcpyDeviceToHost), cudaSuccess);
        std::vector<float> x1f(x1.size());
        for (size_t i = 0; i < x1.size(); ++i) x1f[i] = dt == DType::BF16 ? bf16_to_float(x1[i]) : fp16_to_float(x1[i]);
        const std::vector<double> yref = test::reference_gemm(x1f, Wb, M, N1, N0);
        int64_t bad = 0;
        const double err = test::normalized_error(y, dt == DType::BF16, yref, &bad);
        EXPECT_EQ(bad, 0) << dtype_name(dt) << " M=" << M << " rep " << rep << ": outputs not finite";
        EXPECT_LT(err, bound(dt)) << dtype_name(dt) << " M=" << M << " rep " << rep;
      }
    }
}

// The benchmark's other variants compute what they claim: dense-only = base alone, unfused =
// base + residual through two kernels.
TEST(ZipperGpu, DenseOnlyAndUnfusedVariants) {
  REQUIRE_GPU();
  const int64_t N = 384, K = 1152;
  const PackedLinear w = test::random_layer(N, K, 128, Pattern::Uniform, 55, 0.2);
  const std::vector<float> Wfull = test::reference_dequant(w, true), Wbase = test::reference_dequant(w, false);
  const ZipperLinear zl(w);
  for (DType dt : {DType::F16, DType::BF16})
    for (int64_t M : {1, 17, 64, 255}) {
      std::vector<uint16_t> xb;
      std::vector<float> xf;
      test::random_activations(M, K, dt == DType::BF16, uint64_t(M), xb, xf);
      const auto yfull = test::reference_gemm(xf, Wfull, M, N, K);
      const auto ybase = test::reference_gemm(xf, Wbase, M, N, K);
      for (GemmPath path : {GemmPath::Fused, GemmPath::Dequant}) {
        EXPECT_LT(run_and_compare(zl, M, dt, xb, ybase, Variant::DenseOnly, path), bound(dt)) << "dense-only M=" << M;
        const double full_err = run_and_compare(zl, M, dt, xb, yfull, Variant::Unfused, path);
        EXPECT_LT(full_err, bound(dt)) << "unfused M=" << M;
        // ... and the residual matters: dense-only is 5x further from the full reference.
        EXPECT_GT(run_and_compare(zl, M, dt, xb, yfull, Variant::DenseOnly, path), 5 * full_err) << "M=" << M;
      }
    }
}

// A checkpoint quantized with taller residual blocks (64 x 64: one wgmma warpgroup's outputs, or
// 32 x 64) is split into the kernels' 16 x 64 blocks at load (split_residual_rows). Reference: the
// format library's own dequantize() of the unsplit layer. Every path (stream, wgmma, fused, dequant).
TEST(ZipperGpu, TallerResidualBlocksAreSplitAtLoad) {
  REQUIRE_GPU();
  for (const int Br : {64, 32}) {
    const PackedLinear w = random_packed_linear(384, 1152, 128, Br, 64, 0.15, ResidualPattern::kUniform, 90 + Br);
    const std::vector<float> W = dequantize(w);
    const ZipperLinear zl(w);
    for (DType dt : {DType::F16, DType::BF16})
      for (int64_t M : {1, 9, 33, 130})
        for (GemmPath path : {GemmPath::Auto, GemmPath::Fused, GemmPath::Dequant}) {
          std::vector<uint16_t> xb;
          std::vector<float> xf;
          test::random_activations(M, w.K, dt == DType::BF16, uint64_t(M * 5 + Br), xb, xf);
          const std::vector<double> yref = test::reference_gemm(xf, W, M, w.N, w.K);
          EXPECT_LT(run_and_compare(zl, M, dt, xb, yref, Variant::Zipper, path), bound(dt))
              << Br << "x64 blocks, " << dtype_name(dt) << " M=" << M << " " << path_name(path);
        }
  }
}

// The residual stream kernel passes the L2 evict-first descriptor as a literal (fewer
// instructions per tile than createpolicy's result under register pressure): it must be the
// value the device's createpolicy produces, or the cache hint would be garbage.
TEST(ZipperGpu, EvictFirstPolicyLiteralIsWhatTheDeviceComputes) {
  REQUIRE_GPU();
  EXPECT_EQ(detail::device_evict_first_policy(), detail::evict_first_policy_literal());
}

TEST(ZipperGpu, BadArgumentsGiveClearErrors) {
  REQUIRE_GPU();
  const PackedLinear w = test::random_layer(128, 256, 128, Pattern::Uniform, 9);
  const ZipperLinear zl(w);
  DeviceBuf X(64 * 256 * 2 + 64), Y(64 * 128 * 2 + 64);
  std::vector<uint16_t> host(256 * 2);
  const auto expect_error = [](auto&& fn, const std::string& needle) {
    try {
      fn();
      FAIL() << "no error; expected '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("128"), std::string::npos) << "message should name the shapes: " << e.what();
    }
  };
  expect_error([&] { zl.gemm(static_cast<char*>(X.p) + 2, Y.p, 4, DType::F16); }, "16-byte aligned");
  expect_error([&] { zl.gemm(X.p, Y.p, 0, DType::F16); }, "M must be");
  expect_error([&] { zl.gemm(X.p, Y.p, 4, static_cast<DType>(7)); }, "dtype");
  expect_error([&] { zl.gemm(host.data(), Y.p, 1, DType::F16); }, "device memory");
  expect_error([&] { zl.gemm(nullptr, Y.p, 1, DType::F16); }, "null");
  PackedLinear bad = w;
  bad.K = 200;
  expect_error([&] { ZipperLinear z2(bad); }, "K must be a multiple of 128");
}

}  // namespace
}  // namespace mosaic::cuda
