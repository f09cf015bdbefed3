// Where the model quantizer's heavy arithmetic runs. The quantizer (quant/model_quantizer.h) walks
// the model layer by layer on the host; with an accelerator, the calibration forward passes'
// linear layers, the Hessian accumulation and GPTQ's solve run on its device instead of
// OpenBLAS. Everything else (attention, norms, block scoring and selection, packing, writing)
// stays on the host, so both paths share one pipeline and differ only by float summation order.
// The CUDA implementation is quant_gpu/calib_cuda.h (cuBLAS + cuSOLVER).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/linear.h"
#include "quant/gptq.h"
#include "quant/hessian.h"

namespace mosaic {

class QuantAccelerator {
 public:
  virtual ~QuantAccelerator() = default;
  // "cuda: NVIDIA H100 80GB HBM3" (for progress lines and the report).
  virtual std::string describe() const = 0;
  // An accumulator whose H lives on the device until hessian() is called.
  virtual std::shared_ptr<HessianAccumulator> hessian(int64_t K) = 0;
  // y = x W^T on the device (W [N, K] row-major, uploaded once; x and y are host arrays). When
  // `capture` is set, every forward() also adds its input rows to it (on the device when it came
  // from hessian()).
  virtual std::unique_ptr<Linear> linear(std::shared_ptr<const std::vector<float>> W, int64_t N, int64_t K,
                                         std::shared_ptr<HessianAccumulator> capture) = 0;
  // GPTQ's solve on the device (set as GptqOptions::accel).
  virtual GptqAccelerator* gptq() = 0;
  // Peak device memory in use so far (bytes, sampled after each large allocation), and in total.
  virtual int64_t peak_device_bytes() const = 0;
  virtual int64_t total_device_bytes() const = 0;
};

}  // namespace mosaic
