// Perplexity with the GPU engine, the protocol of src/model/perplexity.h exactly: floor(N / ctx)
// windows of ctx tokens, each one fresh prefill (empty KV cache), every token but the first of a
// window scored by its NLL given the tokens before it in the window, ppl = exp(mean NLL). The
// per-row NLL (log-softmax denominator: fp32 exp, fp64 sum) is computed on the GPU; rows are
// summed on the host in the CPU loop's order.
#pragma once
#include <cstdint>
#include <vector>

#include "gpu/engine.h"
#include "model/perplexity.h"

namespace mosaic::gpu {

// Uses sequence slot 0 of `model` (its capacity must be >= opts.ctx). opts.on_logits, when set,
// receives the logits blocks (copied to the host) as in the CPU loop.
PerplexityStats evaluate_perplexity_gpu(GpuModel& model, const std::vector<int32_t>& tokens,
                                        const PerplexityOptions& opts);

}  // namespace mosaic::gpu
