// --device cpu|cuda|auto for the commands that run a model (generate, ppl). auto picks the GPU
// engine when this build has it (MOSAIC_HAS_GPU_ENGINE) and a usable sm_90 GPU is present, else
// the CPU engine; cuda without a usable GPU is an error naming the reason.
#pragma once
#include <filesystem>
#include <string>

namespace mosaic::cli {

// True for the GPU engine. Throws mosaic::Error for an unknown value or an unusable GPU.
// `model_dir`'s config decides too: W4A8/W4A4 checkpoints (quantization_config.act_bits < 16) run
// on the CPU reference path only, so auto picks the CPU (saying so on stderr) and cuda is an error.
bool use_cuda(const std::string& device, const std::filesystem::path& model_dir);

inline const char* kDeviceHelp =
    "engine: cpu, cuda (the GPU engine, an sm_90 GPU), or auto (cuda when a usable GPU is present)";

}  // namespace mosaic::cli
