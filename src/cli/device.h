// --device cpu|cuda|auto for the commands that run a model (generate, ppl). auto picks the GPU
// engine when this build has it (MOSAIC_HAS_GPU_ENGINE) and a usable sm_90 GPU is present, else
// the CPU engine; cuda without a usable GPU is an error naming the reason.
#pragma once
#include <string>

namespace mosaic::cli {

// True for the GPU engine. Throws mosaic::Error for an unknown value or an unusable GPU.
bool use_cuda(const std::string& device);

inline const char* kDeviceHelp =
    "engine: cpu, cuda (the GPU engine, an sm_90 GPU), or auto (cuda when a usable GPU is present)";

}  // namespace mosaic::cli
