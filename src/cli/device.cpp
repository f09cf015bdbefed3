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
  (void)activation_bits(ModelConfig::load(model_dir));  // a bad quantization_config fails here, not later
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
