// The CPU reference engine for LlamaForCausalLM (LLaMA-3, SmolLM2) and Qwen3ForCausalLM:
//   x = embed(tokens)
//   per layer:  h = rmsnorm(x); q,k,v = h Wq^T, h Wk^T, h Wv^T
//               (Qwen3: q,k = rmsnorm over head_dim of each head)   q,k = rope(q,k)
//               x += Wo attention(q, cache(k), cache(v))            (causal, grouped-query)
//               h = rmsnorm(x); x += Wdown (silu(h Wgate^T) * (h Wup^T))
//   logits = lm_head(rmsnorm(x))   (lm_head tied to embed_tokens when tie_word_embeddings)
// FP32 math. Linear layers are behind mosaic::Linear so quantized / CUDA ones plug in.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "io/hf_config.h"
#include "model/linear.h"
#include "model/rope.h"

namespace mosaic {

class Checkpoint;

// Keys and values of every layer for up to `capacity` positions; `length` positions are filled.
struct KVCache {
  int64_t capacity = 0;
  int64_t length = 0;
  std::vector<std::vector<float>> k, v;  // per layer: [n_kv_heads][capacity][head_dim]
  void clear() { length = 0; }
  size_t bytes() const;
};

// Which linear of a layer (for set_linear / factories).
enum class LinearId { Q, K, V, O, Gate, Up, Down };
const char* linear_name(LinearId id);  // "self_attn.q_proj", "mlp.gate_proj", ...

struct LoadOptions {
  // Builds the linear layer whose HF weight is `<prefix>.weight` with shape [N, K]. Default (empty):
  // a DenseLinear from the checkpoint's F32/F16/BF16 tensor. A quantized checkpoint passes its own.
  std::function<std::unique_ptr<Linear>(const Checkpoint&, const std::string& prefix, int64_t N, int64_t K)>
      linear_factory;
  bool quiet = true;  // when false, prints a one-line load report (time, weights, peak RSS) to stderr
};

struct LoadReport {
  double seconds = 0;
  size_t weight_bytes = 0;   // fp32 bytes held by the model (norms, embedding, linears)
  int64_t peak_rss = 0;      // process peak RSS after loading
  std::string summary() const;
};

class Model {
 public:
  static Model load(const std::filesystem::path& dir, const LoadOptions& opts = {});
  // Builds from an open checkpoint and an already parsed config (used by load and by tests).
  static Model from_checkpoint(const Checkpoint& ckpt, const ModelConfig& cfg, const LoadOptions& opts = {});

  Model(Model&&) noexcept;
  Model& operator=(Model&&) noexcept;
  ~Model();

  const ModelConfig& config() const { return cfg_; }
  const LoadReport& load_report() const { return report_; }
  int64_t vocab_size() const { return cfg_.vocab_size; }
  int64_t hidden_size() const { return cfg_.hidden_size; }

  KVCache make_cache(int64_t max_tokens) const;

  enum class Logits { All, Last };
  // Runs tokens[0..T) at positions cache.length .. cache.length+T-1, appends them to the cache,
  // and writes logits: [T, vocab] for All, [1, vocab] (the last token) for Last. Long inputs are
  // processed in chunks of max_chunk tokens (same result, bounded scratch memory).
  void forward(const int32_t* tokens, int64_t T, KVCache& cache, float* logits, Logits which = Logits::All) const;
  // Same, but stops after the final norm: hidden [T, hidden_size]. Pair with lm_head() to get
  // logits a few rows at a time (the perplexity loop does, to avoid a [2048, vocab] buffer).
  void forward_hidden(const int32_t* tokens, int64_t T, KVCache& cache, float* hidden) const;
  void lm_head(const float* hidden, int64_t rows, float* logits) const;

  // Pieces for layer-by-layer work (calibration): embedding, one decoder layer in place on
  // x [T, hidden] at positions cache.length.. (does not advance cache.length), final norm.
  void embed(const int32_t* tokens, int64_t T, float* x) const;
  void layer_forward(int layer, float* x, int64_t T, KVCache& cache) const;
  void final_norm(float* x, int64_t T) const;

  // The norm weights of a layer, for code that runs whole layers elsewhere (the quantizer's GPU
  // calibration passes): attention and MLP RMSNorm, and Qwen3's per-head q/k norms (else empty).
  struct LayerNorms {
    std::span<const float> attn, ffn, q, k;
  };
  LayerNorms layer_norms(int layer) const;
  const RopeTable& rope() const { return rope_; }

  const Linear& linear(int layer, LinearId id) const;
  void set_linear(int layer, LinearId id, std::unique_ptr<Linear> lin);  // shape-checked
  const Linear& head() const { return *lm_head_; }

  int64_t max_chunk = 2048;  // tokens per internal prefill step (bounds scratch memory)

 private:
  Model() = default;
  struct Layer;
  void check_cache(const KVCache& cache, int64_t T) const;

  ModelConfig cfg_;
  RopeTable rope_;
  std::shared_ptr<const std::vector<float>> embed_;  // [vocab, hidden]
  std::vector<float> final_norm_;
  std::vector<Layer> layers_;
  std::unique_ptr<Linear> lm_head_;
  LoadReport report_;
};

}  // namespace mosaic
