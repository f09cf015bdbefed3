// Golden tests: mosaic's logits against Hugging Face transformers' for the tiny random models
// written by scripts/gen_golden.py (fp32, eager attention), and KV-cache decoding against a full
// recompute.
#include <gtest/gtest.h>

#include <cstring>

#include "io/safetensors.h"
#include "model/model.h"
#include "test_util.h"
#include "util/error.h"

namespace mosaic {
namespace {

using test::golden_dir;
using test::rel_max_err;

struct Prompt {
  std::vector<int32_t> tokens;
  std::vector<float> logits;  // [T, vocab] from transformers
};

std::vector<Prompt> read_prompts(const std::string& name) {
  auto f = SafetensorsFile::open(golden_dir(name) / "logits.safetensors");
  std::vector<Prompt> out;
  for (int i = 0;; ++i) {
    const TensorView* t = f->find("tokens_" + std::to_string(i));
    const TensorView* l = f->find("logits_" + std::to_string(i));
    if (!t || !l) break;
    Prompt p;
    p.tokens.resize(size_t(t->numel()));
    std::memcpy(p.tokens.data(), t->data, t->nbytes);
    p.logits = l->to_f32();
    out.push_back(std::move(p));
  }
  return out;
}

class Golden : public ::testing::TestWithParam<std::string> {};

// The bound: fp32 should agree with transformers to ~1e-5 relative. Measured here: a few
// 1e-7 (see the printed values).
constexpr double kGoldenBound = 1e-5;

TEST_P(Golden, LogitsMatchTransformers) {
  Model m = Model::load(golden_dir(GetParam()));
  const auto prompts = read_prompts(GetParam());
  ASSERT_GE(prompts.size(), 3u);
  const int64_t V = m.vocab_size();
  double worst = 0;
  for (const Prompt& p : prompts) {
    const int64_t T = int64_t(p.tokens.size());
    ASSERT_EQ(int64_t(p.logits.size()), T * V);
    KVCache cache = m.make_cache(T);
    std::vector<float> logits(size_t(T * V));
    m.forward(p.tokens.data(), T, cache, logits.data());
    const double err = rel_max_err(logits, p.logits);
    EXPECT_LE(err, kGoldenBound) << GetParam() << " prompt of " << T << " tokens";
    worst = std::max(worst, err);
    // Logits::Last is the last row of the same computation.
    KVCache c2 = m.make_cache(T);
    std::vector<float> last(static_cast<size_t>(V));
    m.forward(p.tokens.data(), T, c2, last.data(), Model::Logits::Last);
    EXPECT_LE(rel_max_err(last.data(), p.logits.data() + (T - 1) * V, size_t(V)), kGoldenBound);
  }
  std::printf("[ golden ] %-22s max|mosaic - HF| / max|HF| = %.2e over %zu prompts\n", GetParam().c_str(), worst,
              prompts.size());
}

// Token-by-token decoding and uneven chunks give the same logits as one pass over the prompt.
TEST_P(Golden, KvCacheDecodingMatchesFullRecompute) {
  Model m = Model::load(golden_dir(GetParam()));
  const auto prompts = read_prompts(GetParam());
  const Prompt& p = prompts.back();  // the longest (40 tokens)
  const int64_t T = int64_t(p.tokens.size()), V = m.vocab_size();
  ASSERT_GE(T, 20);
  KVCache full_cache = m.make_cache(T);
  std::vector<float> full(size_t(T * V));
  m.forward(p.tokens.data(), T, full_cache, full.data());

  // 1) one token at a time (decode path: sgemv, T = 1 attention).
  KVCache cache = m.make_cache(T + 5);  // capacity above the length used
  std::vector<float> step(size_t(T * V));
  for (int64_t t = 0; t < T; ++t) m.forward(&p.tokens[size_t(t)], 1, cache, step.data() + t * V);
  EXPECT_EQ(cache.length, T);
  // Bound 1e-5 relative: the same math summed in a different order (gemv vs gemm).
  EXPECT_LE(rel_max_err(step, full), 1e-5);

  // 2) uneven chunks, and internal chunking (max_chunk) smaller than a call.
  for (int64_t max_chunk : {int64_t(512), int64_t(3)}) {
    m.max_chunk = max_chunk;
    cache.clear();
    std::vector<float> chunked(size_t(T * V));
    const int64_t sizes[] = {1, 5, 2, 16, T};
    int64_t b = 0;
    for (int64_t n : sizes) {
      n = std::min(n, T - b);
      if (n <= 0) break;
      m.forward(&p.tokens[size_t(b)], n, cache, chunked.data() + b * V);
      b += n;
    }
    ASSERT_EQ(b, T);
    EXPECT_LE(rel_max_err(chunked, full), 1e-5) << "max_chunk " << max_chunk;
    EXPECT_LE(rel_max_err(chunked, p.logits), kGoldenBound) << "max_chunk " << max_chunk;
  }
}

TEST_P(Golden, ContextFullIsAnError) {
  Model m = Model::load(golden_dir(GetParam()));
  KVCache cache = m.make_cache(4);
  std::vector<int32_t> toks = {1, 2, 3, 4, 5};
  std::vector<float> logits(size_t(5 * m.vocab_size()));
  EXPECT_THROW(m.forward(toks.data(), 5, cache, logits.data()), Error);
  m.forward(toks.data(), 4, cache, logits.data());
  try {
    m.forward(toks.data(), 1, cache, logits.data());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("capacity of 4"), std::string::npos) << e.what();
  }
  cache.clear();
  toks[2] = int32_t(m.vocab_size());
  EXPECT_THROW(m.forward(toks.data(), 3, cache, logits.data()), Error);
  EXPECT_EQ(cache.length, 0);  // a bad id is caught before anything is cached
  toks[2] = -1;
  EXPECT_THROW(m.forward(toks.data(), 3, cache, logits.data()), Error);
}

INSTANTIATE_TEST_SUITE_P(Models, Golden, ::testing::ValuesIn(test::golden_models()),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace mosaic
