// The layer Hessian accumulated on the GPU: H stays on the device (column-major lower triangle =
// row-major upper, the CPU accumulator's layout) until hessian() symmetrizes and downloads it.
// Same running mean as HessianAccumulator (quant/hessian.h), through cublasSsyrk.
#pragma once
#include <cstdint>
#include <vector>

#include "gpu/device.h"
#include "quant/hessian.h"

namespace mosaic::quant_gpu {

class CudaContext;

class CudaHessian : public HessianAccumulator {
 public:
  CudaHessian(CudaContext& ctx, int64_t K);
  void add(const float* X, int64_t M) override;  // host rows (checked for finiteness, uploaded)
  void check_rows(const float* X, int64_t M) const { check_finite(X, M); }
  // Rows already on the device, asynchronous on the context's stream (finiteness checked by the
  // caller).
  void add_device(const float* dX, int64_t M);
  std::vector<float> hessian() const override;

 private:
  CudaContext& ctx_;
  gpu::DevBuf H_;
};

}  // namespace mosaic::quant_gpu
