#include "model/model.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "model/ops.h"
#include "model/quant_linear.h"
#include "util/error.h"
#include "util/progress.h"

namespace mosaic {

struct Model::Layer {
  std::vector<float> attn_norm, ffn_norm;  // [hidden]
  std::vector<float> q_norm, k_norm;       // [head_dim] (Qwen3 only, else empty)
  std::unique_ptr<Linear> lin[7];          // indexed by LinearId
};

namespace {

constexpr LinearId kAllLinears[] = {LinearId::Q, LinearId::K, LinearId::V, LinearId::O,
                                    LinearId::Gate, LinearId::Up, LinearId::Down};

// Scratch activations of one chunk of T tokens, reused across layers.
struct Scratch {
  std::vector<float> h, q, k, v, att, o, gate, up, cos, sin;
  void resize(const ModelConfig& c, int64_t T) {
    const int64_t qd = int64_t(c.num_heads) * c.head_dim, kd = int64_t(c.num_kv_heads) * c.head_dim;
    h.resize(T * c.hidden_size);
    q.resize(T * qd);
    k.resize(T * kd);
    v.resize(T * kd);
    att.resize(T * qd);
    o.resize(T * c.hidden_size);
    gate.resize(T * c.intermediate_size);
    up.resize(T * c.intermediate_size);
    cos.resize(T * c.head_dim / 2);
    sin.resize(T * c.head_dim / 2);
  }
};

void rope_tables(const RopeTable& rope, int64_t pos0, int64_t T, Scratch& s) {
  const int64_t half = rope.head_dim() / 2;
  for (int64_t t = 0; t < T; ++t) rope.cos_sin(pos0 + t, s.cos.data() + t * half, s.sin.data() + t * half);
}

std::vector<float> load_f32(const Checkpoint& ckpt, const std::string& name, const std::vector<int64_t>& shape) {
  const TensorView& t = ckpt.get(name, shape);  // throws naming the tensor and both shapes
  MOSAIC_CHECK(t.dtype == DType::F32 || t.dtype == DType::F16 || t.dtype == DType::BF16, "tensor '", name,
               "' has dtype ", dtype_name(t.dtype), "; the dense engine reads F32, F16 or BF16");
  std::vector<float> out(size_t(t.numel()));
  t.to_f32(out.data());
  return out;
}

std::unique_ptr<Linear> dense_from(const Checkpoint& ckpt, const std::string& prefix, int64_t N, int64_t K) {
  auto w = std::make_shared<const std::vector<float>>(load_f32(ckpt, prefix + ".weight", {N, K}));
  return std::make_unique<DenseLinear>(N, K, std::move(w));
}

}  // namespace

const char* linear_name(LinearId id) {
  switch (id) {
    case LinearId::Q: return "self_attn.q_proj";
    case LinearId::K: return "self_attn.k_proj";
    case LinearId::V: return "self_attn.v_proj";
    case LinearId::O: return "self_attn.o_proj";
    case LinearId::Gate: return "mlp.gate_proj";
    case LinearId::Up: return "mlp.up_proj";
    case LinearId::Down: return "mlp.down_proj";
  }
  return "?";
}

size_t KVCache::bytes() const {
  size_t b = 0;
  for (const auto& x : k) b += x.size() * sizeof(float);
  for (const auto& x : v) b += x.size() * sizeof(float);
  return b;
}

std::string LoadReport::summary() const {
  char buf[200];
  std::snprintf(buf, sizeof buf, "%.2f s, weights %s, peak RSS %s", seconds, format_bytes(int64_t(weight_bytes)).c_str(),
                format_bytes(peak_rss).c_str());
  return buf;
}

Model::Model(Model&&) noexcept = default;
Model& Model::operator=(Model&&) noexcept = default;
Model::~Model() = default;

Model Model::load(const std::filesystem::path& dir, const LoadOptions& opts) {
  const auto t0 = std::chrono::steady_clock::now();
  ModelConfig cfg = ModelConfig::load(dir);
  Checkpoint ckpt = Checkpoint::open(dir);
  Model m = from_checkpoint(ckpt, cfg, opts);
  m.report_.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  m.report_.peak_rss = peak_rss_bytes();
  if (!opts.quiet)
    std::fprintf(stderr, "loaded %s (%s, %d layers): %s\n", dir.string().c_str(), cfg.architecture.c_str(),
                 cfg.num_layers, m.report_.summary().c_str());
  return m;
}

// Analysis only (docs/results.md "Where W4 loses"): MOSAIC_DENSE_LINEARS=<comma-separated name
// substrings> with MOSAIC_DENSE_FROM=<the FP16 model's directory> runs those linears of a
// MosaicQuant checkpoint with the FP16 model's own weights, so the ppl difference is what their
// quantization costs. Only for checkpoints in the FP16 model's basis (no smoothing, no rotation).
namespace {
struct DenseSubstitution {
  Checkpoint base;
  std::vector<std::string> names;
  bool takes(const std::string& prefix) const { return names_match(names, prefix); }
  static std::unique_ptr<DenseSubstitution> from_env(const ModelConfig& cfg) {
    std::vector<std::string> names = name_list_from_env("MOSAIC_DENSE_LINEARS");
    if (names.empty()) return nullptr;
    const char* dir = std::getenv("MOSAIC_DENSE_FROM");
    MOSAIC_CHECK(dir && *dir, "MOSAIC_DENSE_LINEARS needs MOSAIC_DENSE_FROM=<the FP16 model's directory>");
    const auto& q = cfg.quantization_config;
    for (const char* key : {"smoothing", "rotation"})
      MOSAIC_CHECK(!q.contains(key) || q[key].is_null(), "MOSAIC_DENSE_LINEARS: this checkpoint's weights carry a ",
                   key, " (quantization_config.", key, "), so the FP16 model's weights do not fit in its place");
    return std::make_unique<DenseSubstitution>(DenseSubstitution{Checkpoint::open(dir), std::move(names)});
  }
};
}  // namespace

Model Model::from_checkpoint(const Checkpoint& ckpt, const ModelConfig& cfg, const LoadOptions& opts) {
  MOSAIC_CHECK(!cfg.attention_bias, cfg.architecture, ": attention_bias = true is not supported");
  const int64_t D = cfg.hidden_size, I = cfg.intermediate_size, V = cfg.vocab_size, hd = cfg.head_dim;
  const int64_t qd = int64_t(cfg.num_heads) * hd, kd = int64_t(cfg.num_kv_heads) * hd;
  MOSAIC_CHECK(cfg.num_kv_heads > 0 && cfg.num_heads % cfg.num_kv_heads == 0, "config: ", cfg.num_heads,
               " attention heads are not a multiple of ", cfg.num_kv_heads, " kv heads");
  Model m;
  m.cfg_ = cfg;
  m.rope_ = RopeTable::from_config(cfg);
  // A MosaicQuant checkpoint (config.json quantization_config) gets the reference QuantLinear.
  // W4A8/W4A4 (quantization_config.act_bits) wrap each quantized linear in an ActQuantLinear.
  const bool quantized = !opts.linear_factory && is_mosaicquant(cfg);
  const ActQuant act = quantized ? activation_quant(cfg) : ActQuant{};
  const std::unique_ptr<DenseSubstitution> fp = quantized ? DenseSubstitution::from_env(cfg) : nullptr;
  auto make = [&](const std::string& prefix, int64_t N, int64_t K) {
    std::unique_ptr<Linear> l = opts.linear_factory   ? opts.linear_factory(ckpt, prefix, N, K)
                                : fp && fp->takes(prefix) ? dense_from(fp->base, prefix, N, K)
                                : quantized           ? load_quant_or_dense_linear(ckpt, prefix, N, K, act)
                                                      : dense_from(ckpt, prefix, N, K);
    MOSAIC_CHECK(l && l->N == N && l->K == K, "linear '", prefix, "' has shape [", l ? l->N : 0, ", ",
                 l ? l->K : 0, "], expected [", N, ", ", K, "]");
    return l;
  };

  size_t bytes = 0;
  m.embed_ = std::make_shared<const std::vector<float>>(load_f32(ckpt, "model.embed_tokens.weight", {V, D}));
  bytes += m.embed_->size() * sizeof(float);
  m.layers_.resize(size_t(cfg.num_layers));
  for (int i = 0; i < cfg.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    Layer& L = m.layers_[size_t(i)];
    L.attn_norm = load_f32(ckpt, p + "input_layernorm.weight", {D});
    L.ffn_norm = load_f32(ckpt, p + "post_attention_layernorm.weight", {D});
    if (cfg.qk_norm) {
      L.q_norm = load_f32(ckpt, p + "self_attn.q_norm.weight", {hd});
      L.k_norm = load_f32(ckpt, p + "self_attn.k_norm.weight", {hd});
    }
    const int64_t shapes[7][2] = {{qd, D}, {kd, D}, {kd, D}, {D, qd}, {I, D}, {I, D}, {D, I}};
    for (LinearId id : kAllLinears) {
      const int j = int(id);
      L.lin[j] = make(p + linear_name(id), shapes[j][0], shapes[j][1]);
      bytes += L.lin[j]->weight_bytes();
    }
    bytes += (L.attn_norm.size() + L.ffn_norm.size() + L.q_norm.size() + L.k_norm.size()) * sizeof(float);
  }
  m.final_norm_ = load_f32(ckpt, "model.norm.weight", {D});
  // A checkpoint storing a head of its own (F16, or the int8 head of a quantized one) uses it.
  if (cfg.tie_word_embeddings && !ckpt.has("lm_head.weight") && !ckpt.has("lm_head.weight_int8")) {
    m.lm_head_ = std::make_unique<DenseLinear>(V, D, m.embed_);  // shares the embedding table
  } else {
    // Untied (or a tied config that still stores lm_head: use what is stored, as HF would load it).
    m.lm_head_ = make("lm_head", V, D);
    bytes += m.lm_head_->weight_bytes();
  }
  m.report_.weight_bytes = bytes;
  return m;
}

KVCache Model::make_cache(int64_t max_tokens) const {
  MOSAIC_CHECK(max_tokens > 0, "KV cache size must be positive, got ", max_tokens);
  KVCache c;
  c.capacity = max_tokens;
  const size_t n = size_t(cfg_.num_kv_heads) * size_t(max_tokens) * size_t(cfg_.head_dim);
  c.k.assign(size_t(cfg_.num_layers), std::vector<float>(n));
  c.v.assign(size_t(cfg_.num_layers), std::vector<float>(n));
  return c;
}

void Model::check_cache(const KVCache& cache, int64_t T) const {
  MOSAIC_CHECK(int64_t(cache.k.size()) == cfg_.num_layers && int64_t(cache.v.size()) == cfg_.num_layers,
               "KV cache was made for another model (", cache.k.size(), " layers, model has ", cfg_.num_layers, ")");
  MOSAIC_CHECK(cache.length + T <= cache.capacity, "context full: ", cache.length, " cached + ", T,
               " new tokens exceed the KV cache capacity of ", cache.capacity, " tokens");
}

void Model::embed(const int32_t* tokens, int64_t T, float* x) const {
  ops::embedding(embed_->data(), cfg_.vocab_size, cfg_.hidden_size, tokens, T, x);
}

void Model::final_norm(float* x, int64_t T) const {
  ops::rms_norm(x, final_norm_.data(), T, cfg_.hidden_size, cfg_.rms_norm_eps, x);
}

namespace {

// One decoder layer on x [T, hidden] (in place); keys/values go to the cache at pos0.. .
void run_layer(const ModelConfig& c, const std::vector<float>& attn_norm, const std::vector<float>& ffn_norm,
               const std::vector<float>& q_norm, const std::vector<float>& k_norm, const std::unique_ptr<Linear>* lin,
               float* x, int64_t T, int64_t pos0, std::vector<float>& kc, std::vector<float>& vc, int64_t capacity,
               Scratch& s) {
  const int64_t D = c.hidden_size, hd = c.head_dim, Hkv = c.num_kv_heads;
  const float eps = c.rms_norm_eps;
  // --- attention block
  ops::rms_norm(x, attn_norm.data(), T, D, eps, s.h.data());
  lin[int(LinearId::Q)]->forward(s.h.data(), T, s.q.data());
  lin[int(LinearId::K)]->forward(s.h.data(), T, s.k.data());
  lin[int(LinearId::V)]->forward(s.h.data(), T, s.v.data());
  if (!q_norm.empty()) {  // Qwen3: per-head RMSNorm over head_dim, before RoPE
    ops::rms_norm(s.q.data(), q_norm.data(), T * c.num_heads, hd, eps, s.q.data());
    ops::rms_norm(s.k.data(), k_norm.data(), T * Hkv, hd, eps, s.k.data());
  }
  ops::rope(s.q.data(), T, c.num_heads, hd, s.cos.data(), s.sin.data());
  ops::rope(s.k.data(), T, Hkv, hd, s.cos.data(), s.sin.data());
  // Append to the cache: token-major [T][Hkv][hd] -> head-major [Hkv][capacity][hd].
  for (int64_t t = 0; t < T; ++t)
    for (int64_t g = 0; g < Hkv; ++g) {
      const size_t dst = size_t((g * capacity + pos0 + t) * hd), src = size_t((t * Hkv + g) * hd);
      std::memcpy(kc.data() + dst, s.k.data() + src, size_t(hd) * sizeof(float));
      std::memcpy(vc.data() + dst, s.v.data() + src, size_t(hd) * sizeof(float));
    }
  const AttnShape shape{c.num_heads, c.num_kv_heads, c.head_dim, capacity};
  ops::attention(s.q.data(), kc.data(), vc.data(), T, pos0, shape, s.att.data());
  lin[int(LinearId::O)]->forward(s.att.data(), T, s.o.data());
  ops::add_inplace(x, s.o.data(), T * D);
  // --- MLP block: down(silu(gate(h)) * up(h))
  ops::rms_norm(x, ffn_norm.data(), T, D, eps, s.h.data());
  lin[int(LinearId::Gate)]->forward(s.h.data(), T, s.gate.data());
  lin[int(LinearId::Up)]->forward(s.h.data(), T, s.up.data());
  ops::silu_mul(s.gate.data(), s.up.data(), T * c.intermediate_size, s.gate.data());
  lin[int(LinearId::Down)]->forward(s.gate.data(), T, s.o.data());
  ops::add_inplace(x, s.o.data(), T * D);
}

}  // namespace

void Model::layer_forward(int layer, float* x, int64_t T, KVCache& cache) const {
  MOSAIC_CHECK(layer >= 0 && layer < cfg_.num_layers, "layer ", layer, " out of range [0, ", cfg_.num_layers, ")");
  check_cache(cache, T);
  // Kept per thread across calls: the quantizer calls this once per calibration window and layer,
  // and a fresh Scratch of a few hundred MB each time spent much of its time in page faults.
  thread_local Scratch s;
  s.resize(cfg_, T);
  rope_tables(rope_, cache.length, T, s);
  const Layer& L = layers_[size_t(layer)];
  run_layer(cfg_, L.attn_norm, L.ffn_norm, L.q_norm, L.k_norm, L.lin, x, T, cache.length, cache.k[size_t(layer)],
            cache.v[size_t(layer)], cache.capacity, s);
}

void Model::forward_hidden(const int32_t* tokens, int64_t T, KVCache& cache, float* hidden) const {
  MOSAIC_CHECK(T > 0, "forward: no tokens");
  check_cache(cache, T);
  // Validate every id before touching the cache, so a bad token leaves the cache as it was.
  for (int64_t t = 0; t < T; ++t)
    MOSAIC_CHECK(tokens[t] >= 0 && tokens[t] < cfg_.vocab_size, "token id ", tokens[t], " at position ", t,
                 " is outside the vocabulary [0, ", cfg_.vocab_size, ")");
  const int64_t D = cfg_.hidden_size;
  // Chunks keep the scratch small and make causal attention cheaper: chunk c only multiplies
  // against the keys of the positions up to its own end, not the whole window.
  const int64_t chunk = std::max<int64_t>(1, max_chunk);
  Scratch s;
  s.resize(cfg_, std::min(T, chunk));
  for (int64_t b = 0; b < T; b += chunk) {
    const int64_t n = std::min(chunk, T - b);
    float* x = hidden + b * D;
    embed(tokens + b, n, x);
    rope_tables(rope_, cache.length, n, s);
    for (int i = 0; i < cfg_.num_layers; ++i) {
      const Layer& L = layers_[size_t(i)];
      run_layer(cfg_, L.attn_norm, L.ffn_norm, L.q_norm, L.k_norm, L.lin, x, n, cache.length, cache.k[size_t(i)],
                cache.v[size_t(i)], cache.capacity, s);
    }
    cache.length += n;
  }
  final_norm(hidden, T);
}

void Model::lm_head(const float* hidden, int64_t rows, float* logits) const { lm_head_->forward(hidden, rows, logits); }

void Model::forward(const int32_t* tokens, int64_t T, KVCache& cache, float* logits, Logits which) const {
  std::vector<float> hidden(size_t(T * cfg_.hidden_size));
  forward_hidden(tokens, T, cache, hidden.data());
  if (which == Logits::All)
    lm_head(hidden.data(), T, logits);
  else
    lm_head(hidden.data() + (T - 1) * cfg_.hidden_size, 1, logits);
}

Model::LayerNorms Model::layer_norms(int layer) const {
  MOSAIC_CHECK(layer >= 0 && layer < cfg_.num_layers, "layer ", layer, " out of range [0, ", cfg_.num_layers, ")");
  const Layer& L = layers_[size_t(layer)];
  return {L.attn_norm, L.ffn_norm, L.q_norm, L.k_norm};
}

const Linear& Model::linear(int layer, LinearId id) const {
  MOSAIC_CHECK(layer >= 0 && layer < cfg_.num_layers, "layer ", layer, " out of range [0, ", cfg_.num_layers, ")");
  return *layers_[size_t(layer)].lin[int(id)];
}

void Model::set_linear(int layer, LinearId id, std::unique_ptr<Linear> lin) {
  MOSAIC_CHECK(layer >= 0 && layer < cfg_.num_layers, "layer ", layer, " out of range [0, ", cfg_.num_layers, ")");
  auto& slot = layers_[size_t(layer)].lin[int(id)];
  MOSAIC_CHECK(lin && lin->N == slot->N && lin->K == slot->K, "set_linear: layer ", layer, " ", linear_name(id),
               " needs shape [", slot->N, ", ", slot->K, "], got [", lin ? lin->N : 0, ", ", lin ? lin->K : 0, "]");
  slot = std::move(lin);
}

}  // namespace mosaic
