// evaluate_perplexity against a perplexity computed directly (fp64 log-softmax) from the
// transformers logits of a golden prompt, and its window arithmetic.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "io/safetensors.h"
#include "model/perplexity.h"
#include "test_util.h"
#include "util/error.h"

namespace mosaic {
namespace {

TEST(Perplexity, MatchesHuggingFaceLogits) {
  for (const std::string& name : test::golden_models()) {
    Model m = Model::load(test::golden_dir(name));
    auto f = SafetensorsFile::open(test::golden_dir(name) / "logits.safetensors");
    const TensorView& tv = *f->find("tokens_4");  // 40 tokens
    std::vector<int32_t> toks(size_t(tv.numel()));
    std::memcpy(toks.data(), tv.data, tv.nbytes);
    const std::vector<float> hf = f->find("logits_4")->to_f32();
    const int64_t V = m.vocab_size();
    ASSERT_EQ(toks.size(), 40u);

    // Reference for window 0 (ctx 20): the HF logits of the first 20 positions only depend on
    // the first 20 tokens (causal), so they are that window's logits. NLL in fp64.
    double nll = 0;
    for (int64_t r = 0; r + 1 < 20; ++r) {
      const float* row = hf.data() + r * V;
      double mx = row[0];
      for (int64_t j = 1; j < V; ++j) mx = std::max(mx, double(row[j]));
      double s = 0;
      for (int64_t j = 0; j < V; ++j) s += std::exp(double(row[j]) - mx);
      nll += mx + std::log(s) - row[toks[size_t(r + 1)]];
    }
    PerplexityOptions o;
    o.ctx = 20;
    o.max_windows = 1;
    o.logits_rows_per_block = 7;  // uneven blocks
    int64_t rows_seen = 0;
    o.on_logits = [&](int64_t w, int64_t r0, const float* logits, int64_t rows) {
      EXPECT_EQ(w, 0);
      EXPECT_EQ(r0, rows_seen);
      EXPECT_LE(test::rel_max_err(logits, hf.data() + r0 * V, size_t(rows * V)), 1e-5);
      rows_seen += rows;
    };
    const PerplexityStats st = evaluate_perplexity(m, toks, o);
    EXPECT_EQ(rows_seen, 20);
    EXPECT_EQ(st.windows, 1);
    EXPECT_EQ(st.tokens_scored, 19);
    // Bound: logits agree to ~1e-6 relative, so the mean NLL agrees to ~1e-5 absolute.
    EXPECT_NEAR(st.nll_sum / 19, nll / 19, 1e-5) << name;
    EXPECT_NEAR(st.ppl(), std::exp(nll / 19), 1e-5 * std::exp(nll / 19)) << name;
    EXPECT_GT(st.ppl(), 1.0);

    // Both windows: window 1 is independent of window 0 (fresh cache), so its NLL equals that
    // of evaluating the second half alone.
    o.max_windows = 0;
    o.on_logits = nullptr;
    const PerplexityStats both = evaluate_perplexity(m, toks, o);
    std::vector<int32_t> second(toks.begin() + 20, toks.end());
    o.max_windows = 1;
    const PerplexityStats alone = evaluate_perplexity(m, second, o);
    EXPECT_EQ(both.windows, 2);
    EXPECT_EQ(both.tokens_scored, 38);
    EXPECT_NEAR(both.nll_sum, st.nll_sum + alone.nll_sum, 1e-9 * std::fabs(both.nll_sum));
  }
}

TEST(Perplexity, WindowCountAndErrors) {
  PerplexityOptions o;
  o.ctx = 10;
  EXPECT_EQ(perplexity_windows(10, o), 1);
  EXPECT_EQ(perplexity_windows(39, o), 3);
  o.max_windows = 2;
  EXPECT_EQ(perplexity_windows(39, o), 2);
  EXPECT_THROW(perplexity_windows(9, o), Error);
  o.ctx = 1;
  EXPECT_THROW(perplexity_windows(100, o), Error);
}

}  // namespace
}  // namespace mosaic
