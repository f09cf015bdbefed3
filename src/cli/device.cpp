#include "cli/device.h"

#include <cstdio>

#include "io/hf_config.h"
#include "model/quant_linear.h"
#include "util/error.h"
#ifdef MOSAIC_HAS_GPU_ENGINE
#include "gpu/device.h"
#endif

namespace mosaic::cli {

bool use_cuda(const std::string& device, const std::filesystem::path& model_dir) {
  MOSAIC_CHECK(device == "cpu" || device == "cuda" || device == "auto", "--device must be cpu, cuda or auto, got '",
               device, "'");
  if (device == "cpu") return false;
  const int act_bits = activation_bits(ModelConfig::load(model_dir));
  if (act_bits < 16) {
    MOSAIC_CHECK(device == "auto", "--device cuda: ", model_dir.string(), " quantizes activations to ", act_bits,
                 " bits (W4A", act_bits, "), which only the CPU reference engine runs so far; use --device cpu");
    std::fprintf(stderr, "note: W4A%d checkpoint: running on the CPU reference engine (the GPU engine is W4A16)\n",
                 act_bits);
    return false;
  }
#ifdef MOSAIC_HAS_GPU_ENGINE
  const std::string why = gpu::gpu_unusable_reason();
  if (device == "auto") return why.empty();
  MOSAIC_CHECK(why.empty(), "--device cuda: ", why, "; use --device cpu");
  return true;
#else
  MOSAIC_CHECK(device == "auto", "--device cuda: this mosaic was built without CUDA (configure with -DMOSAIC_CUDA=ON "
                                 "and nvcc); use --device cpu");
  return false;
#endif
}

}  // namespace mosaic::cli
