// The model quantizer's accelerator on a CUDA GPU (quant/accelerator.h): whole decoder layers of
// the calibration passes in FP32 (CudaLayerPass: cuBLAS SGEMMs, our norm/RoPE/softmax kernels),
// Hessians accumulated on the device with SSYRK (the same running mean as the CPU's
// HessianAccumulator), GPTQ through CudaGptq; single calibration linears (linear()) for the
// host-attention layout. Activations live on the host between layers, so host memory is the CPU
// path's: one layer plus the calibration activations.
#pragma once
#include <memory>

#include "quant/accelerator.h"

namespace mosaic::quant_gpu {

// Throws mosaic::Error (naming the reason) when no usable GPU is present.
std::shared_ptr<QuantAccelerator> make_cuda_quant_accelerator();

}  // namespace mosaic::quant_gpu
