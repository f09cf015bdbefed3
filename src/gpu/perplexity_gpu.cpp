#include "gpu/perplexity_gpu.h"

#include <chrono>

#include "util/error.h"

namespace mosaic::gpu {

PerplexityStats evaluate_perplexity_gpu(GpuModel& model, const std::vector<int32_t>& tokens,
                                        const PerplexityOptions& o) {
  const int64_t windows = perplexity_windows(int64_t(tokens.size()), o);
  const int64_t ctx = o.ctx;
  MOSAIC_CHECK(ctx <= model.capacity(), "ppl: --ctx ", ctx, " exceeds the GPU engine's KV capacity of ",
               model.capacity(), " positions");
  std::vector<int32_t> targets(static_cast<size_t>(ctx));
  std::vector<double> nll(static_cast<size_t>(ctx));
  PerplexityStats st;
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t w = 0; w < windows; ++w) {
    const int32_t* win = tokens.data() + w * ctx;
    // Row r predicts token r + 1 of the window; the last row has no target inside the window.
    for (int64_t r = 0; r < ctx; ++r) targets[size_t(r)] = r + 1 < ctx ? win[r + 1] : -1;
    model.reset(0);
    std::function<void(int64_t, int64_t, const float*)> cb;
    if (o.on_logits) cb = [&](int64_t r0, int64_t rows, const float* logits) { o.on_logits(w, r0, logits, rows); };
    model.forward_scored(0, win, ctx, targets.data(), nll.data(), cb);
    for (int64_t r = 0; r < ctx; ++r) st.nll_sum += nll[size_t(r)];
    st.windows = w + 1;
    st.tokens_scored += ctx - 1;
    st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (o.on_window) o.on_window(st);
  }
  return st;
}

}  // namespace mosaic::gpu
