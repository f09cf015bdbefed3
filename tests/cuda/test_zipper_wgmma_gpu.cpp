// GPU tests of the ZipperEngine wgmma kernel (zipper_wgmma.cu, GemmPath::Wgmma) against the scalar
// CPU reference (zipper_test_util.h), with the bounds of test_zipper_gpu.cpp: normalized
// ||Y - Yref|| / ||Yref|| < 1e-3 (fp16), 1e-2 (bf16). Each test skips with a visible message when
// no CUDA GPU is present (CI), so they still compile there.
//
// What is covered: every token tile (16, 32, 64, 128) with M at and around the tile edges, N and K odd
// multiples of the CTA tile (N = 3 x 128, K = 5 x 128) and N % 128 != 0 (idle warps), residual
// patterns none / uniform / clustered / one tile (every chunk of one block row kept: the second
// block of a k-tile comes from global memory), split-K (auto and forced, fix-up and workspace reset
// on repeated calls), ring depths 2..8, all scale groups (16, 32, 64, 128, per channel), fp16 and
// bf16, zipper and dense-only; Auto's split of a token-tile remainder into a second launch; stream-K.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "cuda/zipper.h"
#include "gpu_test_util.h"
#include "util/error.h"
#include "zipper_test_util.h"

namespace mosaic::cuda {
namespace {

using test::Pattern;
using test::bound;

#define REQUIRE_GPU() MOSAIC_REQUIRE_CUDA_GPU("ZipperEngine wgmma GPU test")

double run_wgmma(const ZipperLinear& zl, int64_t M, DType dt, const std::vector<uint16_t>& xbits,
                 const std::vector<double>& yref, Variant v) {
  return test::run_poisoned(M, zl.K(), zl.N(), dt, xbits, yref,
                            [&](const void* X, void* Y) { zl.gemm(X, Y, M, dt, nullptr, v, GemmPath::Wgmma); });
}

// Sets the wgmma tuning variables for the layers constructed while it lives (plans are made at a
// layer's first call) and clears them afterwards.
struct WgEnv {
  WgEnv(int tok, int stages, int ksplit, int wtma = 0) {
    if (tok) setenv("MOSAIC_ZIPPER_WGMMA_TOK", std::to_string(tok).c_str(), 1);
    if (stages) setenv("MOSAIC_ZIPPER_WGMMA_STAGES", std::to_string(stages).c_str(), 1);
    if (ksplit) setenv("MOSAIC_ZIPPER_WGMMA_KSPLIT", std::to_string(ksplit).c_str(), 1);
    setenv("MOSAIC_ZIPPER_WGMMA_WTMA", wtma ? "1" : "0", 1);
  }
  ~WgEnv() {
    unsetenv("MOSAIC_ZIPPER_WGMMA_TOK");
    unsetenv("MOSAIC_ZIPPER_WGMMA_STAGES");
    unsetenv("MOSAIC_ZIPPER_WGMMA_KSPLIT");
    unsetenv("MOSAIC_ZIPPER_WGMMA_WTMA");
  }
};

// The sweep on the automatic plans: M around every token tile, residual patterns, fp16 and
// bf16, zipper (full reference) and dense-only (base reference).
TEST(ZipperWgmmaGpu, MatchesCpuReferenceAcrossMPatternsAndDtypes) {
  REQUIRE_GPU();
  const int64_t N = 384, K = 640;
  const std::vector<int64_t> Ms = std::getenv("ZIPPER_QUICK")
                                      ? std::vector<int64_t>{17, 64, 130}
                                      : std::vector<int64_t>{1, 5, 17, 31, 32, 33, 63, 64, 65, 127, 128, 255, 1024, 4097};
  double worst[2] = {0, 0};
  for (int wtma : {0, 1})  // weights by per-row bulk copies / by TMA boxes
  for (Pattern pat : {Pattern::None, Pattern::Uniform, Pattern::Clustered, Pattern::OneTile}) {
    const WgEnv env(0, 0, 0, wtma);
    const PackedLinear w = test::random_layer(N, K, 128, pat, 300 + int(pat));
    const std::vector<float> W = test::reference_dequant(w), Wb = test::reference_dequant(w, false);
    const ZipperLinear zl(w);
    for (DType dt : {DType::F16, DType::BF16})
      for (int64_t M : Ms) {
        std::vector<uint16_t> xb;
        std::vector<float> xf;
        test::random_activations(M, K, dt == DType::BF16, 2000 + M, xb, xf);
        const std::vector<double> yref = test::reference_gemm(xf, W, M, N, K);
        const double err = run_wgmma(zl, M, dt, xb, yref, Variant::Zipper);
        EXPECT_LT(err, bound(dt)) << "pattern " << test::pattern_name(pat) << " " << dtype_name(dt) << " M=" << M
                                  << " wtma " << wtma;
        worst[int(dt)] = std::max(worst[int(dt)], err);
        if (pat != Pattern::None && (M == 33 || M == 255)) {  // dense-only = the base alone
          const std::vector<double> ybase = test::reference_gemm(xf, Wb, M, N, K);
          const double e2 = run_wgmma(zl, M, dt, xb, ybase, Variant::DenseOnly);
          EXPECT_LT(e2, bound(dt)) << "dense-only pattern " << test::pattern_name(pat) << " " << dtype_name(dt)
                                   << " M=" << M;
          if (dt == DType::F16) {  // (in bf16 the base's own rounding error is as large as the residual)
            EXPECT_GT(run_wgmma(zl, M, dt, xb, yref, Variant::DenseOnly), 5 * err) << "the residual must matter";
          }
        }
      }
  }
  std::printf("[ wgmma ] worst normalized error: fp16 %.3g (bound 1e-3), bf16 %.3g (bound 1e-2)\n", worst[0], worst[1]);
}

// Auto on a layer whose 128-token tiles alone fill the GPU: M = 128 q + r with r <= 64 runs the
// wgmma kernel on the first 128 q rows and a second launch on the last r (auto_tail_rows): the
// stream kernel for r <= 16, the wgmma kernel's 32- / 64-token tiles above; both launches must
// write their rows, the residual included; M = 255 (r = 127) stays one launch, and so does every M
// that Auto does not send to the wgmma kernel (this small wide layer: M = 257; or
// MOSAIC_ZIPPER_WGMMA=0). Every M is checked against the reference whichever path runs it.
TEST(ZipperWgmmaGpu, AutoRunsTheTileRemainderAsASecondLaunch) {
  REQUIRE_GPU();
  int dev = 0, sms = 0;
  ASSERT_EQ(cudaGetDevice(&dev), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), cudaSuccess);
  const int64_t N = int64_t(sms + 4) * 128, K = 256;  // one more output tile than SMs (1 CTA per SM)
  double worst[2] = {0, 0};
  for (Pattern pat : {Pattern::Uniform, Pattern::OneTile}) {
    const PackedLinear w = test::random_layer(N, K, 128, pat, 400 + int(pat));
    const std::vector<float> W = test::reference_dequant(w), Wb = test::reference_dequant(w, false);
    const ZipperLinear zl(w);
    for (int64_t M : {129, 144, 160, 192, 255, 257}) {
      const bool wgmma = zl.choose_path(M) == GemmPath::Wgmma;
      EXPECT_EQ(zl.auto_tail_rows(M), wgmma && M != 255 ? M % 128 : 0) << "M=" << M;
      for (DType dt : {DType::F16, DType::BF16}) {
        std::vector<uint16_t> xb;
        std::vector<float> xf;
        test::random_activations(M, K, dt == DType::BF16, 3000 + M, xb, xf);
        const auto run = [&](const std::vector<double>& yref, Variant v) {
          return test::run_poisoned(M, K, N, dt, xb, yref,
                                    [&](const void* X, void* Y) { zl.gemm(X, Y, M, dt, nullptr, v, GemmPath::Auto); });
        };
        const double err = run(test::reference_gemm(xf, W, M, N, K), Variant::Zipper);
        EXPECT_LT(err, bound(dt)) << "pattern " << test::pattern_name(pat) << " " << dtype_name(dt) << " M=" << M;
        worst[int(dt)] = std::max(worst[int(dt)], err);
        EXPECT_LT(run(test::reference_gemm(xf, Wb, M, N, K), Variant::DenseOnly), bound(dt))
            << "dense-only pattern " << test::pattern_name(pat) << " " << dtype_name(dt) << " M=" << M;
      }
    }
  }
  std::printf("[ wgmma ] tile remainder as a second launch, worst normalized error: fp16 %.3g, bf16 %.3g\n",
              worst[0], worst[1]);
}

// Forced plans: token tiles, ring depths, K splits (with fix-up), partial output tiles (N % 128),
// long K (bitmap words crossed), every scale group; each case twice (workspace and counters must
// be back to zero after a split-K call).
TEST(ZipperWgmmaGpu, ForcedPlansOddShapesAndGroups) {
  REQUIRE_GPU();
  struct Case {
    int64_t N, K;
    int group;
    Pattern pat;
    int tok, stages, ksplit, wtma;
  };
  const Case cases[] = {
      {384, 640, 128, Pattern::Uniform, 32, 2, 128, 0},     {384, 640, 128, Pattern::Clustered, 64, 6, 256, 1},
      {208, 8320, 128, Pattern::Uniform, 128, 3, 1024, 0},  {208, 8320, 128, Pattern::OneTile, 64, 4, 0, 1},
      {144, 1152, 32, Pattern::Clustered, 32, 4, 384, 0},   {208, 384, 64, Pattern::Uniform, 128, 2, 0, 1},
      {128, 640, 640, Pattern::Uniform, 64, 3, 128, 0},     {96, 256, 16, Pattern::Uniform, 32, 5, 0, 1},
      {528, 1152, 128, Pattern::None, 128, 4, 384, 0},      {16, 128, 128, Pattern::OneTile, 32, 2, 0, 1},
      {208, 8320, 128, Pattern::Uniform, 128, 5, 1024, 1},  {144, 1152, 32, Pattern::Clustered, 128, 3, 384, 1},
      {208, 384, 64, Pattern::Uniform, 32, 4, 128, 1},      {528, 1152, 128, Pattern::Clustered, 128, 5, 0, 1},
      {384, 640, 128, Pattern::Clustered, 16, 4, 256, 1},  {144, 1152, 32, Pattern::Uniform, 16, 3, 0, 0},
  };
  double worst[2] = {0, 0};
  for (const Case& c : cases) {
    const WgEnv env(c.tok, c.stages, c.ksplit, c.wtma);
    const PackedLinear w = test::random_layer(c.N, c.K, c.group, c.pat, uint64_t(c.N * 5 + c.K + c.tok));
    const std::vector<float> W = test::reference_dequant(w), Wb = test::reference_dequant(w, false);
    const ZipperLinear zl(w);
    const std::vector<int64_t> Ms = std::getenv("ZIPPER_QUICK") ? std::vector<int64_t>{c.tok + 1}
                                                                 : std::vector<int64_t>{3, c.tok - 1, c.tok + 1, 3 * c.tok + 5};
    test::check_layer_on_path(zl, GemmPath::Wgmma, W, Wb, Ms, 19,
                "N=" + std::to_string(c.N) + " K=" + std::to_string(c.K) + " group=" + std::to_string(c.group) + " " +
                    test::pattern_name(c.pat) + " tok=" + std::to_string(c.tok) + " stages=" + std::to_string(c.stages) +
                    " ksplit=" + std::to_string(c.ksplit) + " wtma=" + std::to_string(c.wtma),
                worst);
  }
  std::printf("[ wgmma ] forced plans, worst normalized error: fp16 %.3g, bf16 %.3g\n", worst[0], worst[1]);
}

// Stream-K (MOSAIC_ZIPPER_WGMMA_SK=1): persistent CTAs over runs of (tile, k-tile) units, tiles cut between CTAs
// summed by the fix-up. Shapes where each CTA holds many tiles (N = 150 tiles, K = 2 k-tiles), where every CTA
// holds one k-tile (one tile of 65 segments), partial output tiles, several token tiles (16, 32, 64),
// residual patterns including one tile's every chunk, groups 32 / 64 / 128; each twice (counters back to zero).
TEST(ZipperWgmmaGpu, StreamKMatchesCpuReference) {
  REQUIRE_GPU();
  struct Case {
    int64_t N, K;
    int group;
    Pattern pat;
    int tok, stages;
  };
  const Case cases[] = {
      {384, 640, 128, Pattern::Uniform, 32, 0},    {208, 8320, 128, Pattern::OneTile, 64, 4},
      {144, 1152, 32, Pattern::Clustered, 16, 3},  {19200, 256, 128, Pattern::Uniform, 64, 0},
      {528, 1152, 64, Pattern::Clustered, 32, 4},  {4096, 4096, 128, Pattern::Uniform, 64, 0},
  };
  double worst[2] = {0, 0};
  const test::ScopedEnv sk("MOSAIC_ZIPPER_WGMMA_SK", "1");
  for (const Case& c : cases) {
    const WgEnv env(c.tok, c.stages, 0, 1);
    const PackedLinear w = test::random_layer(c.N, c.K, c.group, c.pat, uint64_t(c.N * 7 + c.K + c.tok));
    const std::vector<float> W = test::reference_dequant(w), Wb = test::reference_dequant(w, false);
    const ZipperLinear zl(w);
    const std::vector<int64_t> Ms = c.N * c.K > (int64_t(4) << 20) ? std::vector<int64_t>{c.tok - 1}
                                    : std::getenv("ZIPPER_QUICK")  ? std::vector<int64_t>{c.tok + 1}
                                                                    : std::vector<int64_t>{3, c.tok - 1, c.tok + 1, 3 * c.tok + 5};
    test::check_layer_on_path(zl, GemmPath::Wgmma, W, Wb, Ms, 23,
                "stream-K N=" + std::to_string(c.N) + " K=" + std::to_string(c.K) + " group=" + std::to_string(c.group) +
                    " " + test::pattern_name(c.pat) + " tok=" + std::to_string(c.tok) + " stages=" +
                    std::to_string(c.stages),
                worst);
  }
  std::printf("[ wgmma ] stream-K, worst normalized error: fp16 %.3g, bf16 %.3g\n", worst[0], worst[1]);
}

// Auto dispatch with MOSAIC_ZIPPER_WGMMA unset never sends M <= 16 to the wgmma kernel, and an
// impossible forced plan is a clear error.
TEST(ZipperWgmmaGpu, DispatchAndErrors) {
  REQUIRE_GPU();
  const PackedLinear w = test::random_layer(128, 256, 128, Pattern::Uniform, 21);
  for (int64_t M : {1, 8, 16}) {
    const ZipperLinear zl(w);
    EXPECT_EQ(zl.choose_path(M), GemmPath::Fused) << "M=" << M;
  }
  const WgEnv env(128, 8, 0);  // 8 stages of 46 KB do not fit
  const ZipperLinear zl(w);
  test::DeviceBuf X(size_t(200) * 256 * 2), Y(size_t(200) * 128 * 2);
  try {
    zl.gemm(X.p, Y.p, 200, DType::F16, nullptr, Variant::Zipper, GemmPath::Wgmma);
    FAIL() << "no error for a plan that does not fit";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("do not fit"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace mosaic::cuda
