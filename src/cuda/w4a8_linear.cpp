// Host side of the W4A8 ZipperEngine GEMM (w4a8.h): validate, repack, upload, argument checks,
// activation workspace, launch.
#include <cuda_runtime.h>

#include <cstdlib>
#include <string>

#include "cuda/w4a8.h"
#include "cuda/w4a8_fp8_layout.h"
#include "cuda/w4a8_launch.h"
#include "cuda/host_util.h"
#include "util/env.h"
#include "util/error.h"

namespace mosaic::cuda {
namespace {

using host::check_cuda;
using host::is_device_pointer;
using host::upload;

void check_act_args(const char* who, const void* X, int64_t M, int64_t K, DType dt) {
  MOSAIC_CHECK(dt == DType::F16 || dt == DType::BF16, who, ": dtype must be fp16 or bf16 (got code ", int(dt),
               ") for X [M=", M, ", K=", K, "]");
  MOSAIC_CHECK(M >= 1 && M <= (int64_t(1) << 24), who, ": M must be in 1..16777216, got M=", M, " (K=", K, ")");
  MOSAIC_CHECK(K >= 8 && K % 8 == 0 && K <= (int64_t(1) << 20), who, ": K must be a multiple of 8 in 8..2^20, got [M=",
               M, ", K=", K, "]");
  MOSAIC_CHECK(X != nullptr && reinterpret_cast<uintptr_t>(X) % 16 == 0, who,
               ": X must be a non-null 16-byte aligned pointer for [M=", M, ", K=", K, "]");
  MOSAIC_CHECK(is_device_pointer(X), who, ": X must be device memory for [M=", M, ", K=", K, "]");
}

// MOSAIC_W4A8_WARPS=8|16 overrides the default (tuning runs); read once.
int default_warps() {
  static const int w = env_choice("MOSAIC_W4A8_WARPS", kW4A8DefaultWarps, {8, 16});
  return w;
}

}  // namespace

void quantize_act_int8(const void* X, int64_t M, int64_t K, DType dt, int8_t* codes, float* scales,
                       cudaStream_t stream) {
  check_act_args("quantize_act_int8", X, M, K, dt);
  MOSAIC_CHECK(codes != nullptr && scales != nullptr && reinterpret_cast<uintptr_t>(codes) % 16 == 0 &&
                   is_device_pointer(codes) && is_device_pointer(scales),
               "quantize_act_int8: codes and scales must be device memory (codes 16-byte aligned) for [M=", M,
               ", K=", K, "]");
  detail::launch_w4a8_quantize(X, dt == DType::BF16, M, K, codes, scales, stream);
}

void quantize_act_fp8(const void* X, int64_t M, int64_t K, DType dt, uint8_t* codes, float* scales,
                      cudaStream_t stream) {
  check_act_args("quantize_act_fp8", X, M, K, dt);
  MOSAIC_CHECK(codes != nullptr && scales != nullptr && reinterpret_cast<uintptr_t>(codes) % 16 == 0 &&
                   is_device_pointer(codes) && is_device_pointer(scales),
               "quantize_act_fp8: codes and scales must be device memory (codes 16-byte aligned) for [M=", M,
               ", K=", K, "]");
  detail::launch_fp8_quantize(X, dt == DType::BF16, M, K, codes, scales, stream);
}

struct W4A8Linear::Impl {
  W4A8Act act = W4A8Act::Int8;
  int64_t N = 0, K = 0, Npad = 0, nnzb = 0, bytes_all = 0, bytes_base = 0;
  int group = 128, spt = 1;
  uint32_t* qw = nullptr;
  float* sc = nullptr;
  uint32_t* rq = nullptr;
  float* rs = nullptr;
  int32_t* ridx = nullptr;
  float* cs = nullptr;      // INT8 wgmma variant: the rows' units u_n [Npad]
  bool int8_wgmma = false;  // Int8 layer on the integer scale grid: the wgmma kernel
  // Activation workspace (grown on demand: one stream at a time).
  int8_t* xq = nullptr;
  float* xs = nullptr;
  int64_t ws_rows = 0, last_m = 0;

  ~Impl() {
    for (void* p : {static_cast<void*>(qw), static_cast<void*>(sc), static_cast<void*>(rq), static_cast<void*>(rs),
                    static_cast<void*>(ridx), static_cast<void*>(xq), static_cast<void*>(xs), static_cast<void*>(cs)})
      if (p) cudaFree(p);
  }
  std::string shapes(int64_t M) const {
    return ::mosaic::detail::concat("X [M=", M, ", K=", K, "] x W [N=", N, ", K=", K, "] (group ", group, ")");
  }
};

namespace {

// Fills and uploads the layer's tensors from either layout (same field names).
template <typename Layout>
void upload_layout(W4A8Linear::Impl& I, const Layout& z) {
  I.N = z.N;
  I.K = z.K;
  I.group = z.group;
  I.spt = z.spt;
  I.nnzb = z.nnzb;
  I.bytes_all = z.weight_bytes(true);
  I.bytes_base = z.weight_bytes(false);
  I.qw = upload(z.qweight);
  I.sc = upload(z.scales);
  if (z.nnzb > 0) {
    I.rq = upload(z.res_qweight);
    if (!z.res_scales.empty()) I.rs = upload(z.res_scales);  // the INT8 variant keeps m_r in rq
    I.ridx = upload(z.res_index);
  }
}

}  // namespace

W4A8Linear::W4A8Linear(const PackedLinear& w, W4A8Act act) : impl_(std::make_unique<Impl>()) {
  Impl& I = *impl_;
  I.act = act;
  // After the repack (its refusals name the layer first), before any upload.
  const auto check_device = [&] {
    MOSAIC_CHECK(cuda_device_count() > 0, "w4a8: no CUDA GPU available for layer [N=", w.N, ", K=", w.K, "]");
    MOSAIC_CHECK(w.N <= (int64_t(1) << 30) && w.K <= (int64_t(1) << 20) && w.N * w.K / 2 < (int64_t(1) << 40),
                 "w4a8: layer too large [N=", w.N, ", K=", w.K, "]");
  };
  if (act == W4A8Act::Fp8E4M3) {
    const W4A8Fp8Layout z = repack_for_w4a8_fp8(w);
    check_device();
    I.Npad = z.Npad;
    upload_layout(I, z);
    return;
  }
  // An INT8 layer whose scales lie on the integer scale grid runs on the INT8 wgmma kernel
  // (MOSAIC_W4A8_INT8_WGMMA=0: the mma.sync kernel, for same-binary comparisons).
  if (env_switch_on("MOSAIC_W4A8_INT8_WGMMA"))
    if (const std::optional<W4A8Fp8Layout> z = try_repack_for_w4a8_int8_wgmma(w)) {
      check_device();
      I.Npad = z->Npad;
      I.int8_wgmma = true;
      upload_layout(I, *z);
      I.cs = upload(z->chan_scale);
      return;
    }
  const W4A8Layout z = repack_for_w4a8(w);
  check_device();
  upload_layout(I, z);
}

W4A8Linear::~W4A8Linear() = default;

std::pair<int8_t*, float*> W4A8Linear::input_workspace(int64_t M, cudaStream_t stream) const {
  Impl& I = *impl_;
  MOSAIC_CHECK(I.act == W4A8Act::Int8, "w4a8 input_workspace: INT8 layers only, for ", I.shapes(M));
  MOSAIC_CHECK(M >= 1, "w4a8 input_workspace: M=", M, " for ", I.shapes(M));
  grow_workspace(M, stream);
  I.last_m = M;
  return {I.xq, I.xs};
}

void W4A8Linear::grow_workspace(int64_t M, cudaStream_t stream) const {
  Impl& I = *impl_;
  if (M > I.ws_rows) {  // grow (synchronizes: do it outside graph capture, e.g. with the largest M first)
    check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize (w4a8 workspace)");
    if (I.xq) cudaFree(I.xq);
    if (I.xs) cudaFree(I.xs);
    I.xq = nullptr;
    I.xs = nullptr;
    I.ws_rows = 0;
    check_cuda(cudaMalloc(&I.xq, size_t(M * I.K)), "cudaMalloc (w4a8 activation codes)");
    check_cuda(cudaMalloc(&I.xs, size_t(M) * sizeof(float)), "cudaMalloc (w4a8 activation scales)");
    I.ws_rows = M;
  }
}

void W4A8Linear::quantize(const void* X, int64_t M, DType dt, cudaStream_t stream) const {
  Impl& I = *impl_;
  check_act_args("w4a8 quantize", X, M, I.K, dt);
  grow_workspace(M, stream);
  if (I.act == W4A8Act::Fp8E4M3)
    detail::launch_fp8_quantize(X, dt == DType::BF16, M, I.K, reinterpret_cast<uint8_t*>(I.xq), I.xs, stream);
  else
    detail::launch_w4a8_quantize(X, dt == DType::BF16, M, I.K, I.xq, I.xs, stream);
  I.last_m = M;
}

void W4A8Linear::gemm_quantized(void* Y, int64_t M, DType dt, cudaStream_t stream, W4A8Variant v, int warps) const {
  const Impl& I = *impl_;
  MOSAIC_CHECK(dt == DType::F16 || dt == DType::BF16, "w4a8 gemm: dtype must be fp16 or bf16 (got code ", int(dt),
               ") for ", I.shapes(M));
  MOSAIC_CHECK(M >= 1 && M <= I.ws_rows, "w4a8 gemm: M=", M, " rows but only ", I.ws_rows,
               " quantized rows in the workspace (call quantize first) for ", I.shapes(M));
  MOSAIC_CHECK(Y != nullptr && reinterpret_cast<uintptr_t>(Y) % 16 == 0 && is_device_pointer(Y),
               "w4a8 gemm: Y must be 16-byte aligned device memory for ", I.shapes(M));
  const bool res = v == W4A8Variant::Zipper && I.nnzb > 0;
  if (I.act == W4A8Act::Fp8E4M3 || I.int8_wgmma) {
    MOSAIC_CHECK(warps == 0, "w4a8 gemm: the wgmma kernel has one CTA shape (warps must be 0), got ", warps,
                 " for ", I.shapes(M));
    detail::W4A8Fp8Args f;
    f.xq = reinterpret_cast<const uint8_t*>(I.xq);
    f.xs = I.xs;
    f.qw = I.qw;
    f.sc = I.sc;
    if (res) {
      f.rq = I.rq;
      f.rs = I.rs;
      f.ridx = I.ridx;
    }
    f.cs = I.cs;  // nullptr for e4m3 layers
    f.y = Y;
    f.M = int(M);
    f.N = int(I.N);
    f.K = int(I.K);
    f.Npad = int(I.Npad);
    f.spt = I.spt;
    detail::launch_w4a8_fp8_gemm(f, dt == DType::BF16, stream);
    return;
  }
  detail::W4A8Args a;
  a.xq = I.xq;
  a.xs = I.xs;
  a.qw = I.qw;
  a.sc = I.sc;
  if (res) {
    a.rq = I.rq;
    a.rs = I.rs;
    a.ridx = I.ridx;
  }
  a.y = Y;
  a.M = int(M);
  a.N = int(I.N);
  a.K = int(I.K);
  if (warps == 0) warps = default_warps();
  MOSAIC_CHECK(warps == 8 || warps == 16, "w4a8 gemm: warps per CTA must be 8 or 16, got ", warps, " for ", I.shapes(M));
  detail::launch_w4a8_gemm(a, dt == DType::BF16, I.spt, res, warps, stream);
}

void W4A8Linear::gemm(const void* X, void* Y, int64_t M, DType dt, cudaStream_t stream, W4A8Variant v,
                      int warps) const {
  const Impl& I = *impl_;
  MOSAIC_CHECK(dt == DType::F16 || dt == DType::BF16, "w4a8 gemm: dtype must be fp16 or bf16 (got code ", int(dt),
               ") for ", I.shapes(M));
  MOSAIC_CHECK(M >= 1 && M <= (int64_t(1) << 24), "w4a8 gemm: M must be in 1..16777216 for ", I.shapes(M));
  MOSAIC_CHECK(Y != nullptr && reinterpret_cast<uintptr_t>(Y) % 16 == 0 && is_device_pointer(Y),
               "w4a8 gemm: Y must be 16-byte aligned device memory for ", I.shapes(M));
  quantize(X, M, dt, stream);
  gemm_quantized(Y, M, dt, stream, v, warps);
}

const int8_t* W4A8Linear::act_codes() const { return impl_->xq; }
const float* W4A8Linear::act_scales() const { return impl_->xs; }
W4A8Act W4A8Linear::act() const { return impl_->act; }
bool W4A8Linear::int8_wgmma() const { return impl_->int8_wgmma; }
int64_t W4A8Linear::N() const { return impl_->N; }
int64_t W4A8Linear::K() const { return impl_->K; }
int W4A8Linear::group() const { return impl_->group; }
int64_t W4A8Linear::blocks_kept() const { return impl_->nnzb; }
int64_t W4A8Linear::weight_bytes(bool with_residual) const {
  return with_residual ? impl_->bytes_all : impl_->bytes_base;
}

}  // namespace mosaic::cuda
