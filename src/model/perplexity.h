// Perplexity over a token stream, the way `mosaic ppl` (and llama.cpp's perplexity with
// non-overlapping chunks) defines it: the stream is cut into floor(N / ctx) windows of ctx
// tokens; each window is one fresh prefill (empty KV cache); every token of a window except the
// first is scored by the negative log-likelihood the model gives it from the tokens before it in
// the window; ppl = exp(mean NLL). Log-softmax denominators are accumulated in fp64.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "model/model.h"

namespace mosaic {

struct PerplexityStats {
  int64_t windows = 0;         // windows finished
  int64_t tokens_scored = 0;   // windows * (ctx - 1)
  double nll_sum = 0;          // sum of NLL (nats)
  double seconds = 0;          // wall time of the forward passes and scoring
  double ppl() const;          // exp(nll_sum / tokens_scored)
  double tokens_per_s() const; // window tokens (ctx each) per second
};

struct PerplexityOptions {
  int64_t ctx = 2048;
  int64_t max_windows = 0;  // 0: all
  int64_t logits_rows_per_block = 512;  // logits are formed this many rows at a time ([rows, vocab])
  // Receives every block of logits: window w, first row r0 (position within the window), rows x vocab.
  // For --logits-out and KL divergence against another model. Optional.
  std::function<void(int64_t w, int64_t r0, const float* logits, int64_t rows)> on_logits;
  // Called after each window with the running totals. Optional.
  std::function<void(const PerplexityStats&)> on_window;
};

// Number of windows that evaluate_perplexity will run (throws if the text is shorter than ctx).
int64_t perplexity_windows(int64_t n_tokens, const PerplexityOptions& opts);

PerplexityStats evaluate_perplexity(const Model& model, const std::vector<int32_t>& tokens,
                                    const PerplexityOptions& opts);

}  // namespace mosaic
