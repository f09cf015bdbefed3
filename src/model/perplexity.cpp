#include "model/perplexity.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "model/ops.h"
#include "model/parallel.h"
#include "util/error.h"

namespace mosaic {

double PerplexityStats::ppl() const { return tokens_scored > 0 ? std::exp(nll_sum / double(tokens_scored)) : NAN; }

double PerplexityStats::tokens_per_s() const {
  const double window_tokens = tokens_scored > 0 && windows > 0 ? double(tokens_scored + windows) : 0;
  return seconds > 0 ? window_tokens / seconds : 0;
}

int64_t perplexity_windows(int64_t n_tokens, const PerplexityOptions& o) {
  MOSAIC_CHECK(o.ctx >= 2, "ppl: --ctx must be at least 2, got ", o.ctx);
  MOSAIC_CHECK(o.max_windows >= 0, "ppl: --max-windows must be >= 0, got ", o.max_windows);
  const int64_t n = n_tokens / o.ctx;
  MOSAIC_CHECK(n > 0, "ppl: the text has ", n_tokens, " tokens, fewer than one window of ctx = ", o.ctx);
  return o.max_windows > 0 ? std::min(n, o.max_windows) : n;
}

PerplexityStats evaluate_perplexity(const Model& model, const std::vector<int32_t>& tokens,
                                    const PerplexityOptions& o) {
  const int64_t windows = perplexity_windows(int64_t(tokens.size()), o);
  const int64_t ctx = o.ctx, D = model.hidden_size(), V = model.vocab_size();
  const int64_t block = std::max<int64_t>(1, o.logits_rows_per_block);
  KVCache cache = model.make_cache(ctx);
  std::vector<float> hidden(size_t(ctx * D)), logits(size_t(block * V));
  std::vector<double> nll(static_cast<size_t>(block));
  PerplexityStats st;
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t w = 0; w < windows; ++w) {
    const int32_t* win = tokens.data() + w * ctx;
    cache.clear();
    model.forward_hidden(win, ctx, cache, hidden.data());
    for (int64_t r0 = 0; r0 < ctx; r0 += block) {
      const int64_t rows = std::min(block, ctx - r0);
      model.lm_head(hidden.data() + r0 * D, rows, logits.data());
      if (o.on_logits) o.on_logits(w, r0, logits.data(), rows);
      // Row r predicts token r + 1 of the window; the last row has no target inside the window.
      parallel_for(rows, V * 4, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          const int64_t r = r0 + i;
          nll[size_t(i)] = r + 1 < ctx ? ops::logsumexp(logits.data() + i * V, V) - double(logits[size_t(i * V + win[r + 1])]) : 0.0;
        }
      });
      for (int64_t i = 0; i < rows; ++i) st.nll_sum += nll[size_t(i)];
    }
    st.windows = w + 1;
    st.tokens_scored += ctx - 1;
    st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (o.on_window) o.on_window(st);
  }
  return st;
}

}  // namespace mosaic
