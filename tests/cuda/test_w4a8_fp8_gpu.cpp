// GPU tests of the W4A8 FP8 wgmma GEMM (W4A8Linear with W4A8Act::Fp8E4M3, src/cuda/w4a8.h) against
// the CPU FP8 rule and reference (w4a8_test_util.h). Each test skips with a visible message when
// no CUDA GPU is present.
//
// Quantization: the GPU e4m3 codes and scales must equal the CPU rule's (round_e4m3) bit for bit.
// GEMM error bound: normalized ||Y - Yref|| / ||Yref|| over the whole output, Yref = s_m * codes .
// W_hat^T in double from the same codes. Every product (e4m3 code x 4-bit integer) is exact; the
// tensor cores' FP8 accumulation keeps fewer bits than fp32 within one scale group (promoted to
// fp32 every 64 or 128 inputs), then the output rounding: fp16 bound 1e-3, bf16 1e-2 (the same
// bounds as the INT8 kernel; the worst measured values are printed).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "cuda/w4a8.h"
#include "gpu_test_util.h"
#include "util/error.h"
#include "w4a8_test_util.h"

namespace mosaic::cuda {
namespace {

using test::Pattern;

#define REQUIRE_GPU() MOSAIC_REQUIRE_CUDA_GPU("W4A8 FP8 GPU test")
using test::bound;
using test::DeviceBuf;

double run_and_compare(const W4A8Linear& L, int64_t M, DType dt, const std::vector<uint16_t>& xbits,
                       const std::vector<double>& yref, W4A8Variant v) {
  return test::run_poisoned(M, L.K(), L.N(), dt, xbits, yref,
                            [&](const void* X, void* Y) { L.gemm(X, Y, M, dt, nullptr, v); });
}

// Activations with 1% outlier channels (x10), plus (when M >= 3) a zero row and a row that hits
// e4m3 midpoints (ties to even) and the saturation at 448.
void activations(int64_t M, int64_t K, DType dt, uint64_t seed, std::vector<uint16_t>& bits, std::vector<float>& f) {
  test::random_activations(M, K, dt == DType::BF16, seed, bits, f);
  if (M < 3) return;
  for (int64_t k = 0; k < K; ++k) {
    f[size_t(K + k)] = 0.f;
    // amax 448 -> s = 1 exactly; values 9, 11, 13 ... are midpoints of the e4m3 grid above 8.
    const float v = k == 0 ? 448.f : float(int((k * 37) % 300) - 150) * (k % 3 == 0 ? 1.f : 0.125f);
    f[size_t(2 * K + k)] = v;
    bits[size_t(K + k)] = dt == DType::BF16 ? float_to_bf16(0.f) : float_to_fp16(0.f);
    bits[size_t(2 * K + k)] = dt == DType::BF16 ? float_to_bf16(v) : float_to_fp16(v);
    f[size_t(2 * K + k)] = dt == DType::BF16 ? bf16_to_float(bits[size_t(2 * K + k)]) : fp16_to_float(bits[size_t(2 * K + k)]);
  }
}

TEST(W4A8Fp8Gpu, QuantizeMatchesCpuRuleBitForBit) {
  REQUIRE_GPU();
  for (const int64_t K : {128, 640, 4096, 14336})
    for (const int64_t M : {1, 3, 17, 300})
      for (DType dt : {DType::F16, DType::BF16}) {
        std::vector<uint16_t> xb;
        std::vector<float> xf;
        activations(M, K, dt, uint64_t(M * 7 + K), xb, xf);
        std::vector<float> codes, scales;
        test::quantize_rows_fp8(xf, M, K, codes, scales);
        DeviceBuf X(size_t(M * K * 2)), C(size_t(M * K)), S(size_t(M * 4));
        ASSERT_EQ(cudaMemcpy(X.p, xb.data(), xb.size() * 2, cudaMemcpyHostToDevice), cudaSuccess);
        ASSERT_EQ(cudaMemset(C.p, 0x7f, size_t(M * K)), cudaSuccess);  // e4m3 NaN
        quantize_act_fp8(X.p, M, K, dt, static_cast<uint8_t*>(C.p), static_cast<float*>(S.p));
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        std::vector<uint8_t> gc(static_cast<size_t>(M * K));
        std::vector<float> gs(static_cast<size_t>(M));
        ASSERT_EQ(cudaMemcpy(gc.data(), C.p, gc.size(), cudaMemcpyDeviceToHost), cudaSuccess);
        ASSERT_EQ(cudaMemcpy(gs.data(), S.p, gs.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
        int64_t code_diff = 0, scale_diff = 0;
        for (size_t i = 0; i < gc.size(); ++i) code_diff += !(test::e4m3_to_float(gc[i]) == codes[i]);
        for (size_t i = 0; i < gs.size(); ++i) scale_diff += std::memcmp(&gs[i], &scales[i], 4) != 0;
        EXPECT_EQ(code_diff, 0) << "M=" << M << " K=" << K << " " << dtype_name(dt);
        EXPECT_EQ(scale_diff, 0) << "M=" << M << " K=" << K << " " << dtype_name(dt);
        if (M >= 3) {
          EXPECT_EQ(scales[2], 1.f);  // the midpoint row has s = 448 / 448
        }
      }
}

// The sweep: M values x residual patterns x fp16/bf16, zipper and dense-only, N and K odd
// multiples of the CTA tile (N = 3 x 128 outputs, K = 5 x 128 inputs).
TEST(W4A8Fp8Gpu, MatchesCpuReferenceAcrossMPatternsAndDtypes) {
  REQUIRE_GPU();
  const int64_t N = 384, K = 640;
  const std::vector<int64_t> Ms = std::getenv("ZIPPER_QUICK")
                                      ? std::vector<int64_t>{1, 17, 257}
                                      : std::vector<int64_t>{1, 2, 3, 15, 16, 17, 255, 256, 257, 2048, 4097};
  double worst[2] = {0, 0};
  for (Pattern pat : {Pattern::None, Pattern::Uniform, Pattern::Clustered, Pattern::OneTile}) {
    const PackedLinear w = test::random_layer(N, K, 128, pat, 300 + int(pat));
    const std::vector<float> W = test::reference_dequant(w), Wb = test::reference_dequant(w, false);
    const W4A8Linear L(w, W4A8Act::Fp8E4M3);
    for (DType dt : {DType::F16, DType::BF16})
      for (int64_t M : Ms) {
        std::vector<uint16_t> xb;
        std::vector<float> xf;
        activations(M, K, dt, uint64_t(3000 + M), xb, xf);
        std::vector<float> codes, scales;
        test::quantize_rows_fp8(xf, M, K, codes, scales);
        const std::vector<double> yref = test::reference_w4a8_fp8(codes, scales, W, M, N, K);
        const double err = run_and_compare(L, M, dt, xb, yref, W4A8Variant::Zipper);
        EXPECT_LT(err, bound(dt)) << "pattern " << test::pattern_name(pat) << " " << dtype_name(dt) << " M=" << M;
        worst[int(dt)] = std::max(worst[int(dt)], err);
        if (pat != Pattern::None && (M == 1 || M == 17 || M == 257)) {
          const std::vector<double> ybase = test::reference_w4a8_fp8(codes, scales, Wb, M, N, K);
          EXPECT_LT(run_and_compare(L, M, dt, xb, ybase, W4A8Variant::DenseOnly), bound(dt))
              << "dense-only pattern " << test::pattern_name(pat) << " " << dtype_name(dt) << " M=" << M;
        }
      }
  }
  std::printf("[ w4a8 fp8 ] worst normalized error: fp16 %.3g (bound 1e-3), bf16 %.3g (bound 1e-2)\n", worst[0],
              worst[1]);
}

// Odd shapes: N not a multiple of 128 (padded output tiles), groups 64, 128, 384 and per channel,
// long K, residual in every block, repeated calls and a smaller M after a larger one.
TEST(W4A8Fp8Gpu, OddShapesGroupSizesAndRepeatedCalls) {
  REQUIRE_GPU();
  struct Case { int64_t N, K; int group; Pattern pat; double budget; };
  const Case cases[] = {{16, 128, 128, Pattern::OneTile, 0.1},     {144, 1152, 64, Pattern::Clustered, 0.1},
                        {208, 384, 64, Pattern::Uniform, 0.1},     {272, 8320, 128, Pattern::Uniform, 0.1},
                        {128, 640, 640, Pattern::Uniform, 1.0},    {400, 1152, 384, Pattern::OneTile, 0.1},
                        {528, 4096, 4096, Pattern::Clustered, 0.1}};
  for (const Case& c : cases) {
    const PackedLinear w = test::random_layer(c.N, c.K, c.group, c.pat, uint64_t(c.N * 5 + c.K), c.budget);
    const std::vector<float> W = test::reference_dequant(w);
    const W4A8Linear L(w, W4A8Act::Fp8E4M3);
    for (DType dt : {DType::F16, DType::BF16})
      for (int64_t M : {257, 1, 5, 130}) {
        std::vector<uint16_t> xb;
        std::vector<float> xf;
        activations(M, c.K, dt, uint64_t(M * 31 + c.K), xb, xf);
        std::vector<float> codes, scales;
        test::quantize_rows_fp8(xf, M, c.K, codes, scales);
        const std::vector<double> yref = test::reference_w4a8_fp8(codes, scales, W, M, c.N, c.K);
        for (int rep = 0; rep < 2; ++rep)
          EXPECT_LT(run_and_compare(L, M, dt, xb, yref, W4A8Variant::Zipper), bound(dt))
              << "N=" << c.N << " K=" << c.K << " group=" << c.group << " " << dtype_name(dt) << " M=" << M
              << " rep " << rep;
      }
  }
}

TEST(W4A8Fp8Gpu, BadArgumentsAreErrorsNamingShapes) {
  REQUIRE_GPU();
  const PackedLinear w = test::random_layer(128, 256, 128, Pattern::Uniform, 9);
  const W4A8Linear L(w, W4A8Act::Fp8E4M3);
  EXPECT_EQ(L.act(), W4A8Act::Fp8E4M3);
  DeviceBuf X(64 * 256 * 2), Y(64 * 128 * 2);
  auto msg = [](auto&& f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(msg([&] { L.gemm(X.p, Y.p, 4, DType::F16, nullptr, W4A8Variant::Zipper, 8); }).find("warps must be 0"),
            std::string::npos);
  EXPECT_NE(msg([&] { L.gemm(X.p, Y.p, 0, DType::F16); }).find("M must be in"), std::string::npos);
  EXPECT_NE(msg([&] { L.gemm(static_cast<char*>(X.p) + 2, Y.p, 4, DType::F16); }).find("16-byte aligned"),
            std::string::npos);
  const PackedLinear g32 = test::random_layer(128, 256, 32, Pattern::None, 10);
  EXPECT_NE(msg([&] { W4A8Linear bad(g32, W4A8Act::Fp8E4M3); }).find("[N=128, K=256, group=32]"), std::string::npos);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

}  // namespace
}  // namespace mosaic::cuda
