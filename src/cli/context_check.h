// A --ctx beyond the positions a model was trained on (config.json max_position_embeddings) runs —
// RoPE extrapolates — but the model's outputs degrade, and a long window costs memory: say so on
// stderr once instead of refusing (llama.cpp warns the same way). Shared by ppl and generate.
#pragma once
#include <cstdint>
#include <cstdio>

#include "io/hf_config.h"

namespace mosaic::cli {

inline void warn_if_untrained_context(int64_t ctx, const ModelConfig& cfg) {
  if (cfg.max_position_embeddings > 0 && ctx > cfg.max_position_embeddings)
    std::fprintf(stderr,
                 "warning: --ctx %lld is longer than the %d positions this model was trained on "
                 "(max_position_embeddings): positions past it give degraded results\n",
                 (long long)ctx, cfg.max_position_embeddings);
}

}  // namespace mosaic::cli
