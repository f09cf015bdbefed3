// GPU tests of the W4A8 GEMM (src/cuda/w4a8.h) against the CPU rule and reference
// (w4a8_test_util.h). Each test skips with a visible message when no CUDA GPU is present.
//
// Quantization: the GPU codes and scales must equal the CPU rule's bit for bit (incl. exact ties
// and zero rows). GEMM error bound: normalized ||Y - Yref|| / ||Yref|| over the whole output, Yref
// = s_m * codes . W_hat^T in double from the same codes. The kernel's INT32 sums are exact; what
// remains is the fp32 accumulation over scale groups and the output rounding (fp16: ~3e-4
// expected, bound 1e-3; bf16: ~2.5e-3 expected, bound 1e-2).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>

#include "cuda/w4a8.h"
#include "format/int_scale_grid.h"
#include "gpu_test_util.h"
#include "util/error.h"
#include "w4a8_test_util.h"

namespace mosaic::cuda {
namespace {

using test::Pattern;

#define REQUIRE_GPU() MOSAIC_REQUIRE_CUDA_GPU("W4A8 GPU test")
using test::DeviceBuf;
using test::bound;

// One GEMM (quantize + kernel) with the output poisoned (NaN); returns the normalized error and
// fails the test on any non-finite output.
double run_and_compare(const W4A8Linear& L, int64_t M, DType dt, const std::vector<uint16_t>& xbits,
                       const std::vector<double>& yref, W4A8Variant v, int warps = 0) {
  return test::run_poisoned(M, L.K(), L.N(), dt, xbits, yref,
                            [&](const void* X, void* Y) { L.gemm(X, Y, M, dt, nullptr, v, warps); });
}

// Activations with 1% outlier channels (x10), plus (when M >= 3) a zero row and a row of even
// integers up to 254, whose scale is exactly 2 so every odd value is an exact tie x.5.
void activations(int64_t M, int64_t K, DType dt, uint64_t seed, std::vector<uint16_t>& bits, std::vector<float>& f) {
  test::random_activations(M, K, dt == DType::BF16, seed, bits, f);
  if (M < 3) return;
  for (int64_t k = 0; k < K; ++k) {
    f[size_t(K + k)] = 0.f;
    const float v = k == 0 ? 254.f : float(int((k * 37) % 255) - 127);  // |v| <= 254, odd and even
    f[size_t(2 * K + k)] = v;
    bits[size_t(K + k)] = dt == DType::BF16 ? float_to_bf16(0.f) : float_to_fp16(0.f);
    bits[size_t(2 * K + k)] = dt == DType::BF16 ? float_to_bf16(v) : float_to_fp16(v);
  }
}

TEST(W4A8Gpu, QuantizeMatchesCpuRuleBitForBit) {
  REQUIRE_GPU();
  for (const int64_t K : {128, 640, 4096, 14336})
    for (const int64_t M : {1, 3, 17, 300})
      for (DType dt : {DType::F16, DType::BF16}) {
        std::vector<uint16_t> xb;
        std::vector<float> xf;
        activations(M, K, dt, uint64_t(M * 7 + K), xb, xf);
        std::vector<int8_t> codes;
        std::vector<float> scales;
        test::quantize_rows_int8(xf, M, K, codes, scales);
        DeviceBuf X(size_t(M * K * 2)), C(size_t(M * K)), S(size_t(M * 4));
        ASSERT_EQ(cudaMemcpy(X.p, xb.data(), xb.size() * 2, cudaMemcpyHostToDevice), cudaSuccess);
        ASSERT_EQ(cudaMemset(C.p, 0x55, size_t(M * K)), cudaSuccess);
        quantize_act_int8(X.p, M, K, dt, static_cast<int8_t*>(C.p), static_cast<float*>(S.p));
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        std::vector<int8_t> gc(static_cast<size_t>(M * K));
        std::vector<float> gs(static_cast<size_t>(M));
        ASSERT_EQ(cudaMemcpy(gc.data(), C.p, gc.size(), cudaMemcpyDeviceToHost), cudaSuccess);
        ASSERT_EQ(cudaMemcpy(gs.data(), S.p, gs.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
        int64_t code_diff = 0, scale_diff = 0;
        for (size_t i = 0; i < gc.size(); ++i) code_diff += gc[i] != codes[i];
        for (size_t i = 0; i < gs.size(); ++i) scale_diff += std::memcmp(&gs[i], &scales[i], 4) != 0;
        EXPECT_EQ(code_diff, 0) << "M=" << M << " K=" << K << " " << dtype_name(dt);
        EXPECT_EQ(scale_diff, 0) << "M=" << M << " K=" << K << " " << dtype_name(dt);
        if (M >= 3) {  // the tie row really has ties, rounded away from zero: 127 / 2 = 63.5 -> 64
          EXPECT_EQ(scales[2], 2.f);
          EXPECT_EQ(int(codes[size_t(2 * K + 1)]), int(std::round(xf[size_t(2 * K + 1)] / 2.f)));
        }
      }
}

// The sweep: M values x residual patterns x fp16/bf16, zipper and dense-only, N and K odd
// multiples of the CTA tile (N = 3 x 128 outputs, K = 5 x 128 inputs), once per kernel configuration
// (`configs`: a label and a call that runs the layer with that configuration). on_grid: every layer's
// scales snapped to the integer scale grid (the INT8 wgmma kernel's layers). Returns the worst error
// per dtype.
struct KernelConfig {
  const char* label;
  std::function<double(const W4A8Linear&, int64_t, DType, const std::vector<uint16_t>&, const std::vector<double>&,
                       W4A8Variant)>
      run;
};
std::array<double, 2> sweep(bool on_grid, uint64_t seed, const std::vector<KernelConfig>& configs) {
  const int64_t N = 384, K = 640;
  const std::vector<int64_t> Ms = std::getenv("ZIPPER_QUICK")
                                      ? std::vector<int64_t>{1, 17, 130}
                                      : std::vector<int64_t>{1, 2, 3, 15, 16, 17, 31, 33, 64, 127, 255, 1024, 4097};
  std::array<double, 2> worst = {0, 0};
  for (Pattern pat : {Pattern::None, Pattern::Uniform, Pattern::Clustered, Pattern::OneTile}) {
    PackedLinear w = test::random_layer(N, K, 128, pat, seed + int(pat));
    if (on_grid) snap_to_int_scale_grid(w);
    const std::vector<float> W = test::reference_dequant(w), Wb = test::reference_dequant(w, false);
    const W4A8Linear L(w);
    EXPECT_EQ(L.int8_wgmma(), on_grid);
    for (DType dt : {DType::F16, DType::BF16})
      for (int64_t M : Ms) {
        std::vector<uint16_t> xb;
        std::vector<float> xf;
        activations(M, K, dt, seed * 10 + uint64_t(M), xb, xf);
        std::vector<int8_t> codes;
        std::vector<float> scales;
        test::quantize_rows_int8(xf, M, K, codes, scales);
        const std::vector<double> yref = test::reference_w4a8(codes, scales, W, M, N, K);
        for (const KernelConfig& kc : configs) {
          const double err = kc.run(L, M, dt, xb, yref, W4A8Variant::Zipper);
          EXPECT_LT(err, bound(dt)) << "pattern " << test::pattern_name(pat) << " " << dtype_name(dt) << " M=" << M
                                    << " " << kc.label;
          worst[size_t(dt)] = std::max(worst[size_t(dt)], err);
          if (pat != Pattern::None && (M == 1 || M == 33 || M == 255)) {
            const std::vector<double> ybase = test::reference_w4a8(codes, scales, Wb, M, N, K);
            EXPECT_LT(kc.run(L, M, dt, xb, ybase, W4A8Variant::DenseOnly), bound(dt))
                << "dense-only pattern " << test::pattern_name(pat) << " " << dtype_name(dt) << " M=" << M << " "
                << kc.label;
          }
        }
      }
  }
  return worst;
}

TEST(W4A8Gpu, MatchesCpuReferenceAcrossMPatternsAndDtypes) {
  REQUIRE_GPU();
  std::vector<KernelConfig> configs;
  for (int warps : {8, 16})  // both CTA shapes
    configs.push_back({warps == 8 ? "warps 8" : "warps 16",
                       [warps](const W4A8Linear& L, int64_t M, DType dt, const std::vector<uint16_t>& xb,
                               const std::vector<double>& yref, W4A8Variant v) {
                         return run_and_compare(L, M, dt, xb, yref, v, warps);
                       }});
  const auto worst = sweep(false, 200, configs);
  std::printf("[ w4a8 ] worst normalized error: fp16 %.3g (bound 1e-3), bf16 %.3g (bound 1e-2)\n", worst[0], worst[1]);
}

// Odd shapes: N not a multiple of the CTA's 128 outputs (partial tiles, idle warps), groups 64,
// 128, 384 and per channel, long K, repeated calls and a smaller M after a larger one (workspace).
TEST(W4A8Gpu, OddShapesGroupSizesAndRepeatedCalls) {
  REQUIRE_GPU();
  struct Case { int64_t N, K; int group; Pattern pat; };
  const Case cases[] = {{16, 128, 128, Pattern::OneTile},    {144, 1152, 64, Pattern::Clustered},
                        {208, 384, 64, Pattern::Uniform},    {272, 8320, 128, Pattern::Uniform},
                        {128, 640, 640, Pattern::Uniform},   {400, 1152, 384, Pattern::OneTile},
                        {528, 4096, 4096, Pattern::Clustered}};
  for (const Case& c : cases) {
    const PackedLinear w = test::random_layer(c.N, c.K, c.group, c.pat, uint64_t(c.N * 5 + c.K));
    const std::vector<float> W = test::reference_dequant(w);
    const W4A8Linear L(w);
    for (DType dt : {DType::F16, DType::BF16})
      for (int64_t M : {257, 1, 5, 33, 130}) {
        std::vector<uint16_t> xb;
        std::vector<float> xf;
        activations(M, c.K, dt, uint64_t(M * 31 + c.K), xb, xf);
        std::vector<int8_t> codes;
        std::vector<float> scales;
        test::quantize_rows_int8(xf, M, c.K, codes, scales);
        const std::vector<double> yref = test::reference_w4a8(codes, scales, W, M, c.N, c.K);
        for (int rep = 0; rep < 3; ++rep)  // repeated calls, both CTA shapes (8 and 16 warps)
          EXPECT_LT(run_and_compare(L, M, dt, xb, yref, W4A8Variant::Zipper, rep == 1 ? 16 : 8), bound(dt))
              << "N=" << c.N << " K=" << c.K << " group=" << c.group << " " << dtype_name(dt) << " M=" << M
              << " rep " << rep;
      }
  }
}

// The INT8 wgmma kernel (layers on the integer scale grid): the same sweep with both CTA tiles forced
// in turn (the dispatch picks by the wave's fill), each with both epilogues (TMA stores from shared
// memory, the default; every lane's own stores, the fallback); then odd shapes (partial output tiles,
// group 64 and per channel, long K, repeated calls). Same reference and bounds as the mma.sync kernel:
// its INT32 sums are exact over the whole K, so only the fp32 epilogue and the output rounding remain.
TEST(W4A8Int8WgmmaGpu, MatchesCpuReferenceAcrossMPatternsAndDtypes) {
  REQUIRE_GPU();
  std::vector<KernelConfig> configs;
  static const char* const labels[2][2] = {{"tile 128, TMA store", "tile 128, lane stores"},
                                           {"tile 256, TMA store", "tile 256, lane stores"}};
  for (const char* tile : {"128", "256"})
    for (const char* tma : {"1", "0"})
      configs.push_back({labels[tile[0] == '2'][tma[0] == '0'],
                         [tile, tma](const W4A8Linear& L, int64_t M, DType dt, const std::vector<uint16_t>& xb,
                                     const std::vector<double>& yref, W4A8Variant v) {
                           setenv("MOSAIC_W4A8_I8_OUT", tile, 1);
                           setenv("MOSAIC_W4A8_TMA_STORE", tma, 1);
                           const double e = run_and_compare(L, M, dt, xb, yref, v);
                           unsetenv("MOSAIC_W4A8_I8_OUT");
                           unsetenv("MOSAIC_W4A8_TMA_STORE");
                           return e;
                         }});
  const auto worst = sweep(true, 300, configs);
  std::printf("[ w4a8 int8 wgmma ] worst normalized error: fp16 %.3g (bound 1e-3), bf16 %.3g (bound 1e-2)\n", worst[0],
              worst[1]);
}

TEST(W4A8Int8WgmmaGpu, OddShapesGroupSizesAndRepeatedCalls) {
  REQUIRE_GPU();
  struct Case { int64_t N, K; int group; Pattern pat; };
  const Case cases[] = {{16, 128, 128, Pattern::OneTile},  {144, 1152, 64, Pattern::Clustered},
                        {208, 384, 64, Pattern::Uniform},  {272, 8320, 128, Pattern::Uniform},
                        {128, 640, 640, Pattern::Uniform}, {528, 4096, 4096, Pattern::Clustered}};
  for (const Case& c : cases) {
    PackedLinear w = test::random_layer(c.N, c.K, c.group, c.pat, uint64_t(c.N * 7 + c.K));
    snap_to_int_scale_grid(w);
    const std::vector<float> W = test::reference_dequant(w);
    const W4A8Linear L(w);
    ASSERT_TRUE(L.int8_wgmma());
    for (DType dt : {DType::F16, DType::BF16})
      for (int64_t M : {257, 1, 5, 33, 130}) {
        std::vector<uint16_t> xb;
        std::vector<float> xf;
        activations(M, c.K, dt, uint64_t(M * 37 + c.K), xb, xf);
        std::vector<int8_t> codes;
        std::vector<float> scales;
        test::quantize_rows_int8(xf, M, c.K, codes, scales);
        const std::vector<double> yref = test::reference_w4a8(codes, scales, W, M, c.N, c.K);
        // Repeated calls: the dispatch's tile, then 128 and 256 forced, then 256 with the lanes' stores.
        for (int rep = 0; rep < 4; ++rep) {
          if (rep > 0) setenv("MOSAIC_W4A8_I8_OUT", rep == 1 ? "128" : "256", 1);
          if (rep == 3) setenv("MOSAIC_W4A8_TMA_STORE", "0", 1);
          EXPECT_LT(run_and_compare(L, M, dt, xb, yref, W4A8Variant::Zipper), bound(dt))
              << "N=" << c.N << " K=" << c.K << " group=" << c.group << " " << dtype_name(dt) << " M=" << M
              << " rep " << rep;
        }
        unsetenv("MOSAIC_W4A8_I8_OUT");
        unsetenv("MOSAIC_W4A8_TMA_STORE");
      }
  }
}

TEST(W4A8Gpu, BadArgumentsAreErrorsNamingShapes) {
  REQUIRE_GPU();
  const PackedLinear w = test::random_layer(128, 256, 128, Pattern::Uniform, 9);
  const W4A8Linear L(w);
  DeviceBuf X(64 * 256 * 2), Y(64 * 128 * 2);
  auto msg = [](auto&& f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const std::string bad_dt = msg([&] { L.gemm(X.p, Y.p, 4, DType(7)); });
  EXPECT_NE(bad_dt.find("dtype"), std::string::npos) << bad_dt;
  EXPECT_NE(bad_dt.find("[N=128, K=256]"), std::string::npos) << bad_dt;
  EXPECT_NE(msg([&] { L.gemm(X.p, Y.p, 0, DType::F16); }).find("M must be in"), std::string::npos);
  EXPECT_NE(msg([&] { L.gemm(X.p, Y.p, 4, DType::F16, nullptr, W4A8Variant::Zipper, 12); }).find("8 or 16"),
            std::string::npos);
  EXPECT_NE(msg([&] { L.gemm(static_cast<char*>(X.p) + 2, Y.p, 4, DType::F16); }).find("16-byte aligned"),
            std::string::npos);
  EXPECT_NE(msg([&] { L.gemm(X.p, static_cast<char*>(Y.p) + 4, 4, DType::F16); }).find("16-byte aligned"),
            std::string::npos);
  std::vector<uint16_t> host(4 * 256);
  EXPECT_NE(msg([&] { L.gemm(host.data(), Y.p, 4, DType::F16); }).find("device memory"), std::string::npos);
  const W4A8Linear fresh(w);
  EXPECT_NE(msg([&] { fresh.gemm_quantized(Y.p, 4, DType::F16); }).find("call quantize first"), std::string::npos);
  const PackedLinear g32 = test::random_layer(128, 256, 32, Pattern::None, 10);
  EXPECT_NE(msg([&] { W4A8Linear bad(g32); }).find("[N=128, K=256, group=32]"), std::string::npos);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

}  // namespace
}  // namespace mosaic::cuda
