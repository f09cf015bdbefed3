// A whole decoder layer of the quantizer's calibration passes on the GPU (QuantAccelerator::
// layer_pass, quant/accelerator.h has the math): per window, x goes up once, the layer runs in
// FP32 (cuBLAS SGEMMs for the linears and for attention's two products, layer_kernels.h for the
// rest), the captured inputs go into the device Hessians, and x comes back once. Before this, only
// the linears ran on the GPU and every linear's input and output crossed the bus (~330 KB per
// token and layer for LLaMA-3-8B vs 32 KB now) while attention ran on the host.
// Device memory: the layer's FP32 weights plus one window's activations and attention scores
// (scores in chunks of kv heads, at most ~256 MB), in a grow-only workspace kept across layers.
#pragma once
#include <cstdint>
#include <vector>

#include "gpu/device.h"
#include "quant/accelerator.h"

namespace mosaic::quant_gpu {

class CudaContext;

class CudaLayerPass {
 public:
  explicit CudaLayerPass(CudaContext& ctx);
  // Throws mosaic::Error when the pass cannot run (a capture not made by this accelerator, a
  // non-finite activation, CUDA errors naming the step).
  void run(const LayerPass& p, std::vector<std::vector<float>>& x, int64_t len);

 private:
  float* buffer(int slot, size_t floats);  // grow-only device workspace slots
  CudaContext& ctx_;
  std::vector<gpu::DevBuf> bufs_;
};

}  // namespace mosaic::quant_gpu
