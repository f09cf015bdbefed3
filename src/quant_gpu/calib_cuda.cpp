#include "quant_gpu/calib_cuda.h"

#include <utility>

#include "quant_gpu/cuda_context.h"
#include "quant_gpu/hessian_cuda.h"
#include "quant_gpu/layer_cuda.h"
#include "quant_gpu/gptq_cuda.h"
#include "quant_gpu/gptq_kernels.h"
#include "util/error.h"

namespace mosaic::quant_gpu {

using gpu::check_cuda;

CudaHessian::CudaHessian(CudaContext& ctx, int64_t K)
    : HessianAccumulator(K, NoHostStorage{}), ctx_(ctx), H_(ctx.alloc(size_t(K * K) * 4, "Hessian")) {
  check_cuda(cudaMemsetAsync(H_.get(), 0, H_.bytes(), ctx.stream()), "memset Hessian");
}

void CudaHessian::add(const float* X, int64_t M) {
  MOSAIC_CHECK(M >= 0, "HessianAccumulator: negative row count ", M);
  if (M == 0) return;
  check_finite(X, M);
  float* dX = static_cast<float*>(ctx_.scratch(0, size_t(M * K()) * 4));
  check_cuda(cudaMemcpyAsync(dX, X, size_t(M * K()) * 4, cudaMemcpyHostToDevice, ctx_.stream()), "upload rows");
  add_device(dX, M);
}

void CudaHessian::add_device(const float* dX, int64_t M) {
  if (M == 0) return;
  const auto [keep, add] = next_weights(M);
  // Column-major: X^T is K x M (ld K); C = X^T (X^T)^T = X^T X, lower triangle.
  check_cublas(cublasSsyrk(ctx_.blas(), CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, int(K()), int(M), &add, dX, int(K()),
                           &keep, H_.as<float>(), int(K())),
               "cublasSsyrk (Hessian)");
}

std::vector<float> CudaHessian::hessian() const {
  const int64_t K = this->K();
  std::vector<float> H(static_cast<size_t>(K * K));
  float* full = static_cast<float*>(ctx_.scratch(2, H.size() * 4));
  check_cuda(cudaMemcpyAsync(full, H_.get(), H.size() * 4, cudaMemcpyDeviceToDevice, ctx_.stream()), "copy H");
  kernels::symmetrize(full, K, ctx_.stream());  // on the device: the strided host loop took seconds at K = 14336
  check_cuda(cudaMemcpyAsync(H.data(), full, H.size() * 4, cudaMemcpyDeviceToHost, ctx_.stream()),
             "download Hessian");
  ctx_.sync("download Hessian");
  return H;
}

namespace {

class CudaLinear : public Linear {
 public:
  CudaLinear(CudaContext& ctx, const std::vector<float>& W, int64_t N, int64_t K,
             std::shared_ptr<HessianAccumulator> capture)
      : Linear(N, K), ctx_(ctx), W_(ctx.alloc(size_t(N * K) * 4, "calibration weights")), capture_(std::move(capture)) {
    MOSAIC_CHECK(int64_t(W.size()) == N * K, "CudaLinear: weight has ", W.size(), " values, expected ", N, "*", K);
    check_cuda(cudaMemcpyAsync(W_.get(), W.data(), W_.bytes(), cudaMemcpyHostToDevice, ctx.stream()),
               "upload weights");
    ctx.sync("upload weights");
  }

  void forward(const float* x, int64_t M, float* y) const override {
    if (M == 0) return;
    float* dX = static_cast<float*>(ctx_.scratch(0, size_t(M * K) * 4));
    float* dY = static_cast<float*>(ctx_.scratch(1, size_t(M * N) * 4));
    check_cuda(cudaMemcpyAsync(dX, x, size_t(M * K) * 4, cudaMemcpyHostToDevice, ctx_.stream()), "upload x");
    if (capture_) {
      if (auto* dev = dynamic_cast<CudaHessian*>(capture_.get())) {
        dev->check_rows(x, M);
        dev->add_device(dX, M);
      } else {
        capture_->add(x, M);
      }
    }
    // Row-major y[M, N] = x[M, K] W^T  <=>  column-major y^T (N x M) = W (K x N)^T x^T (K x M).
    const float one = 1.0f, zero = 0.0f;
    check_cublas(cublasSgemm(ctx_.blas(), CUBLAS_OP_T, CUBLAS_OP_N, int(N), int(M), int(K), &one, W_.as<float>(),
                             int(K), dX, int(K), &zero, dY, int(N)),
                 "cublasSgemm (calibration linear)");
    check_cuda(cudaMemcpyAsync(y, dY, size_t(M * N) * 4, cudaMemcpyDeviceToHost, ctx_.stream()), "download y");
    ctx_.sync("calibration linear");
  }
  size_t weight_bytes() const override { return W_.bytes(); }
  std::string kind() const override { return "cuda-f32"; }

 private:
  CudaContext& ctx_;
  gpu::DevBuf W_;
  std::shared_ptr<HessianAccumulator> capture_;
};

class CudaQuantAccelerator : public QuantAccelerator {
 public:
  CudaQuantAccelerator() : gptq_(ctx_), layers_(ctx_) {}
  std::string describe() const override { return "cuda: " + ctx_.name(); }
  std::shared_ptr<HessianAccumulator> hessian(int64_t K) override { return std::make_shared<CudaHessian>(ctx_, K); }
  std::unique_ptr<Linear> linear(std::shared_ptr<const std::vector<float>> W, int64_t N, int64_t K,
                                 std::shared_ptr<HessianAccumulator> capture) override {
    return std::make_unique<CudaLinear>(ctx_, *W, N, K, std::move(capture));
  }
  bool layer_pass(const LayerPass& p, std::vector<std::vector<float>>& x, int64_t len) override {
    layers_.run(p, x, len);
    return true;
  }
  GptqAccelerator* gptq() override { return &gptq_; }
  int64_t peak_device_bytes() const override { return ctx_.peak_bytes(); }
  int64_t total_device_bytes() const override { return ctx_.total_bytes(); }

 private:
  CudaContext ctx_;
  CudaGptq gptq_;
  CudaLayerPass layers_;
};

}  // namespace

std::shared_ptr<QuantAccelerator> make_cuda_quant_accelerator() { return std::make_shared<CudaQuantAccelerator>(); }

}  // namespace mosaic::quant_gpu
