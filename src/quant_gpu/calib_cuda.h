// The model quantizer's accelerator on a CUDA GPU (quant/accelerator.h): calibration linears as
// FP32 cuBLAS SGEMMs (weights uploaded once per layer), Hessians accumulated on the device with
// SSYRK (the same running mean as the CPU's HessianAccumulator), GPTQ through CudaGptq.
// Activations stay on the host between linears (attention, norms and RoPE run on the CPU engine),
// so host memory is the CPU path's: one layer plus the calibration activations.
#pragma once
#include <memory>

#include "quant/accelerator.h"

namespace mosaic::quant_gpu {

// Throws mosaic::Error (naming the reason) when no usable GPU is present.
std::shared_ptr<QuantAccelerator> make_cuda_quant_accelerator();

}  // namespace mosaic::quant_gpu
