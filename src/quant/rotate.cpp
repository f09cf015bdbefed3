#include "quant/rotate.h"

#include <cblas.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <random>
#include <set>

#include "io/safetensors.h"
#include "model/model.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace fs = std::filesystem;

namespace mosaic {

RotationKind parse_rotation(const std::string& name) {
  if (name == "none") return RotationKind::kNone;
  if (name == "r1") return RotationKind::kR1;
  if (name == "r1r2") return RotationKind::kR1R2;
  fail("unknown rotation '", name, "' (expected none, r1 or r1r2)");
}

const char* rotation_name(RotationKind k) {
  switch (k) {
    case RotationKind::kNone: return "none";
    case RotationKind::kR1: return "r1";
    case RotationKind::kR1R2: return "r1r2";
  }
  return "?";
}

RotationMatrix parse_rotation_matrix(const std::string& name) {
  if (name == "hadamard") return RotationMatrix::kHadamard;
  if (name == "random") return RotationMatrix::kRandom;
  fail("unknown rotation matrix '", name, "' (expected hadamard or random)");
}

const char* rotation_matrix_name(RotationMatrix m) { return m == RotationMatrix::kHadamard ? "hadamard" : "random"; }

Orthogonal random_hadamard(int64_t n, uint64_t seed) {
  MOSAIC_CHECK(n > 0 && std::has_single_bit(uint64_t(n)), "Hadamard rotation: size ", n, " is not a power of two");
  std::mt19937_64 rng(seed);
  std::vector<double> sign(static_cast<size_t>(n));
  for (double& s : sign) s = (rng() >> 63) ? -1.0 : 1.0;
  Orthogonal o;
  o.n = n;
  o.q.resize(size_t(n * n));
  const double inv = 1.0 / std::sqrt(double(n));
  // Sylvester: H[i][j] = (-1)^popcount(i & j); rows scaled by the random signs (x Q flips the
  // signs of x's channels first, then mixes every channel into every output with weight 1/sqrt(n)).
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j)
      o.q[size_t(i * n + j)] = sign[size_t(i)] * ((std::popcount(uint64_t(i & j)) & 1) ? -inv : inv);
  o.describe = "hadamard(" + std::to_string(n) + ")";
  return o;
}

Orthogonal random_orthogonal(int64_t n, uint64_t seed) {
  MOSAIC_CHECK(n > 0, "random rotation: size ", n, " must be positive");
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd(0.0, 1.0);
  // Columns of a Gaussian matrix, orthonormalized by modified Gram-Schmidt run twice (the second
  // sweep removes what rounding left of the first: orthogonal to ~1e-15). R's diagonal is then
  // positive, which is the sign fix that makes Q Haar-distributed.
  std::vector<std::vector<double>> col(static_cast<size_t>(n), std::vector<double>(static_cast<size_t>(n)));
  for (auto& c : col)
    for (double& v : c) v = nd(rng);
  for (int64_t j = 0; j < n; ++j) {
    std::vector<double>& c = col[size_t(j)];
    for (int pass = 0; pass < 2; ++pass)
      for (int64_t p = 0; p < j; ++p) {
        const std::vector<double>& b = col[size_t(p)];
        double d = 0;
        for (int64_t i = 0; i < n; ++i) d += b[size_t(i)] * c[size_t(i)];
        for (int64_t i = 0; i < n; ++i) c[size_t(i)] -= d * b[size_t(i)];
      }
    double norm = 0;
    for (double v : c) norm += v * v;
    norm = std::sqrt(norm);
    MOSAIC_CHECK(norm > 1e-8, "random rotation: degenerate Gaussian sample (size ", n, ", seed ", seed, ")");
    for (double& v : c) v /= norm;
  }
  Orthogonal o;
  o.n = n;
  o.q.resize(size_t(n * n));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) o.q[size_t(i * n + j)] = col[size_t(j)][size_t(i)];
  o.describe = "orthogonal(" + std::to_string(n) + ")";
  return o;
}

Orthogonal kronecker(const Orthogonal& a, const Orthogonal& b) {
  Orthogonal o;
  o.n = a.n * b.n;
  o.q.resize(size_t(o.n * o.n));
  for (int64_t ia = 0; ia < a.n; ++ia)
    for (int64_t ib = 0; ib < b.n; ++ib)
      for (int64_t ja = 0; ja < a.n; ++ja)
        for (int64_t jb = 0; jb < b.n; ++jb)
          o.q[size_t((ia * b.n + ib) * o.n + ja * b.n + jb)] = a.q[size_t(ia * a.n + ja)] * b.q[size_t(ib * b.n + jb)];
  o.describe = a.describe + " x " + b.describe;
  return o;
}

Orthogonal make_rotation(int64_t n, RotationMatrix matrix, uint64_t seed) {
  MOSAIC_CHECK(n > 0, "rotation size ", n, " must be positive");
  if (matrix == RotationMatrix::kRandom) return random_orthogonal(n, seed);
  const int64_t pow2 = int64_t(1) << std::countr_zero(uint64_t(n));  // n = pow2 * odd
  const int64_t odd = n / pow2;
  if (odd == 1) return random_hadamard(n, seed);
  if (pow2 == 1) return random_orthogonal(n, seed);
  // Both factors dense, so every output channel still mixes all n inputs.
  return kronecker(random_hadamard(pow2, seed), random_orthogonal(odd, seed ^ 0x9e3779b97f4a7c15ULL));
}

Orthogonal make_rotation_keeping(int64_t n, const std::vector<int64_t>& keep, RotationMatrix matrix, uint64_t seed) {
  if (keep.empty()) return make_rotation(n, matrix, seed);
  std::vector<int64_t> rest;
  std::vector<bool> kept(static_cast<size_t>(n), false);
  for (size_t i = 0; i < keep.size(); ++i) {
    MOSAIC_CHECK(keep[i] >= 0 && keep[i] < n && (i == 0 || keep[i] > keep[i - 1]), "rotation: kept channel ", keep[i],
                 " out of range [0, ", n, ") or not ascending");
    kept[size_t(keep[i])] = true;
  }
  for (int64_t k = 0; k < n; ++k)
    if (!kept[size_t(k)]) rest.push_back(k);
  MOSAIC_CHECK(!rest.empty(), "rotation: every channel is kept, nothing to rotate");
  const Orthogonal inner = make_rotation(int64_t(rest.size()), matrix, seed);
  Orthogonal o;
  o.n = n;
  o.q.assign(size_t(n * n), 0.0);
  for (int64_t k : keep) o.q[size_t(k * n + k)] = 1.0;
  for (size_t i = 0; i < rest.size(); ++i)
    for (size_t j = 0; j < rest.size(); ++j) o.q[size_t(rest[i] * n + rest[j])] = inner.q[i * rest.size() + j];
  o.describe = inner.describe + " + identity(" + std::to_string(keep.size()) + ")";
  return o;
}

double orthogonality_error(const Orthogonal& q) {
  const int64_t n = q.n;
  std::vector<double> g(size_t(n * n));
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(n), int(n), int(n), 1.0, q.q.data(), int(n), q.q.data(),
              int(n), 0.0, g.data(), int(n));
  double e = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) e = std::max(e, std::fabs(g[size_t(i * n + j)] - (i == j ? 1.0 : 0.0)));
  return e;
}

ModelRotation make_model_rotation(const ModelConfig& cfg, const RotationOptions& opt) {
  MOSAIC_CHECK(opt.kind != RotationKind::kNone, "make_model_rotation: rotation 'none'");
  ModelRotation r;
  r.opt = opt;
  r.r1 = make_rotation_keeping(cfg.hidden_size, opt.keep_channels, opt.matrix, opt.seed);
  if (opt.kind == RotationKind::kR1R2) r.r2 = make_rotation(cfg.head_dim, opt.matrix, opt.seed + 1);
  for (const Orthogonal* q : {&r.r1, &r.r2})
    if (q->n > 0) {
      const double e = orthogonality_error(*q);
      MOSAIC_CHECK(e < 1e-9, "rotation ", q->describe, " is not orthogonal (max |Q Q^T - I| = ", e, ")");
    }
  return r;
}

nlohmann::json ModelRotation::info() const {
  return {{"r1", r1.describe},
          {"r2", r2.n > 0 ? nlohmann::json(r2.describe) : nlohmann::json(nullptr)},
          {"matrix", rotation_matrix_name(opt.matrix)},
          {"seed", opt.seed},
          {"norms_folded", true},
          {"kept_channels", opt.keep_channels}};
}

void rotate_input_side(std::vector<float>& W, int64_t N, int64_t K, const std::vector<float>& gamma,
                       const Orthogonal& q) {
  MOSAIC_CHECK(int64_t(W.size()) == N * K && q.n == K && (gamma.empty() || int64_t(gamma.size()) == K),
               "rotate_input_side: shapes do not match (W ", W.size(), " vs ", N, "x", K, ", Q ", q.n, ", gamma ",
               gamma.size(), ")");
  // Row chunks bound the float64 copies (a 128k-vocabulary embedding is 0.5 G elements).
  constexpr int64_t kRows = 2048;
  std::vector<double> a, b;
  for (int64_t r0 = 0; r0 < N; r0 += kRows) {
    const int64_t rows = std::min(kRows, N - r0);
    a.resize(size_t(rows * K));
    b.resize(size_t(rows * K));
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t k = 0; k < K; ++k)
        a[size_t(i * K + k)] = double(W[size_t((r0 + i) * K + k)]) * (gamma.empty() ? 1.0 : double(gamma[size_t(k)]));
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(rows), int(K), int(K), 1.0, a.data(), int(K),
                q.q.data(), int(K), 0.0, b.data(), int(K));
    for (int64_t i = 0; i < rows * K; ++i) W[size_t(r0 * K + i)] = float(b[size_t(i)]);
  }
}

void rotate_output_side(std::vector<float>& W, int64_t N, int64_t K, const Orthogonal& q) {
  MOSAIC_CHECK(int64_t(W.size()) == N * K && q.n == N, "rotate_output_side: shapes do not match (W ", W.size(),
               " vs ", N, "x", K, ", Q ", q.n, ")");
  std::vector<double> a(W.begin(), W.end()), b(W.size());
  cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(N), int(K), int(N), 1.0, q.q.data(), int(N), a.data(),
              int(K), 0.0, b.data(), int(K));
  for (size_t i = 0; i < W.size(); ++i) W[i] = float(b[i]);
}

namespace {

// R2 on one layer: v_proj rows of kv head g <- H^T V_g; o_proj columns of head h <- O_h H.
void rotate_heads(const ModelConfig& cfg, std::vector<float>& V, std::vector<float>& O, const Orthogonal& h) {
  const int64_t D = cfg.hidden_size, hd = cfg.head_dim, qd = int64_t(cfg.num_heads) * hd;
  MOSAIC_CHECK(h.n == hd, "R2 size ", h.n, " is not head_dim ", hd);
  std::vector<double> a(size_t(hd * D)), b(size_t(hd * D));
  for (int64_t g = 0; g < cfg.num_kv_heads; ++g) {
    float* blk = V.data() + g * hd * D;
    std::copy(blk, blk + hd * D, a.begin());
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(hd), int(D), int(hd), 1.0, h.q.data(), int(hd), a.data(),
                int(D), 0.0, b.data(), int(D));
    for (int64_t i = 0; i < hd * D; ++i) blk[i] = float(b[size_t(i)]);
  }
  a.assign(size_t(D * hd), 0.0);
  b.assign(size_t(D * hd), 0.0);
  for (int64_t hh = 0; hh < cfg.num_heads; ++hh) {
    for (int64_t n = 0; n < D; ++n)
      for (int64_t d = 0; d < hd; ++d) a[size_t(n * hd + d)] = O[size_t(n * qd + hh * hd + d)];
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(D), int(hd), int(hd), 1.0, a.data(), int(hd),
                h.q.data(), int(hd), 0.0, b.data(), int(hd));
    for (int64_t n = 0; n < D; ++n)
      for (int64_t d = 0; d < hd; ++d) O[size_t(n * qd + hh * hd + d)] = float(b[size_t(n * hd + d)]);
  }
}

std::string lp(int i) { return "model.layers." + std::to_string(i) + "."; }

}  // namespace

nlohmann::json rotate_checkpoint(const fs::path& model_dir, const fs::path& out_dir, const RotationOptions& opt, bool quiet) {
  const ModelConfig cfg = ModelConfig::load(model_dir);
  MOSAIC_CHECK(cfg.quantization_config.is_null(), model_dir.string(),
               " is already quantized; rotate the FP16/BF16 model instead");
  MOSAIC_CHECK(!cfg.attention_bias, "rotation: attention biases are not supported");
  MOSAIC_CHECK(cfg.num_kv_heads > 0 && cfg.num_heads % cfg.num_kv_heads == 0, "rotation: ", cfg.num_heads,
               " heads are not a multiple of ", cfg.num_kv_heads, " kv heads");
  const Checkpoint ck = Checkpoint::open(model_dir);
  const int64_t D = cfg.hidden_size, I = cfg.intermediate_size, V = cfg.vocab_size, hd = cfg.head_dim;
  const ModelRotation rot = make_model_rotation(cfg, opt);  // checks the kept channels
  const std::vector<int64_t>& keep = opt.keep_channels;
  // The norm weights written: 1 on rotated channels (folded into the linears), the original on
  // kept ones; the linears get gamma / w (1 on kept channels, gamma elsewhere).
  const auto split = [&](const std::vector<float>& gamma, std::vector<float>& fold, std::vector<float>& norm) {
    fold = gamma;
    norm.assign(size_t(D), 1.0f);
    for (int64_t k : keep) fold[size_t(k)] = 1.0f, norm[size_t(k)] = gamma[size_t(k)];
  };
  const int64_t qd = int64_t(cfg.num_heads) * hd, kd = int64_t(cfg.num_kv_heads) * hd;

  // Every stored tensor must be one we rotate or copy: anything else (a bias) would break the
  // equivalence silently.
  std::set<std::string> known = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"};
  for (int i = 0; i < cfg.num_layers; ++i) {
    for (const char* t : {"input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.q_norm.weight",
                          "self_attn.k_norm.weight"})
      known.insert(lp(i) + t);
    for (LinearId id : {LinearId::Q, LinearId::K, LinearId::V, LinearId::O, LinearId::Gate, LinearId::Up,
                        LinearId::Down})
      known.insert(lp(i) + linear_name(id) + ".weight");
  }
  for (const std::string& n : ck.names())
    MOSAIC_CHECK(known.count(n) || n.ends_with(".rotary_emb.inv_freq"), "rotation: tensor '", n, "' in ",
                 model_dir.string(), " is not one a rotation knows how to transform");

  fs::create_directories(out_dir);
  ShardedWriter w(out_dir, size_t(2) << 30);
  w.set_metadata("format", "pt");
  {
    std::vector<float> e = ck.get("model.embed_tokens.weight", {V, D}).to_f32();
    rotate_input_side(e, V, D, {}, rot.r1);
    w.add_f32("model.embed_tokens.weight", {V, D}, e.data());
  }
  for (int i = 0; i < cfg.num_layers; ++i) {
    const std::string p = lp(i);
    std::vector<float> an, fn, an_norm, fn_norm;
    split(ck.get(p + "input_layernorm.weight", {D}).to_f32(), an, an_norm);
    split(ck.get(p + "post_attention_layernorm.weight", {D}).to_f32(), fn, fn_norm);
    auto get = [&](LinearId id, int64_t N, int64_t K) {
      return ck.get(p + linear_name(id) + ".weight", {N, K}).to_f32();
    };
    std::vector<float> q = get(LinearId::Q, qd, D), k = get(LinearId::K, kd, D), v = get(LinearId::V, kd, D),
                       o = get(LinearId::O, D, qd), g = get(LinearId::Gate, I, D), u = get(LinearId::Up, I, D),
                       d = get(LinearId::Down, D, I);
    rotate_input_side(q, qd, D, an, rot.r1);
    rotate_input_side(k, kd, D, an, rot.r1);
    rotate_input_side(v, kd, D, an, rot.r1);
    rotate_output_side(o, D, qd, rot.r1);
    rotate_input_side(g, I, D, fn, rot.r1);
    rotate_input_side(u, I, D, fn, rot.r1);
    rotate_output_side(d, D, I, rot.r1);
    if (rot.r2.n > 0) rotate_heads(cfg, v, o, rot.r2);
    const auto put = [&](LinearId id, const std::vector<float>& t, int64_t N, int64_t K) {
      w.add_f32(p + linear_name(id) + ".weight", {N, K}, t.data());
    };
    put(LinearId::Q, q, qd, D);
    put(LinearId::K, k, kd, D);
    put(LinearId::V, v, kd, D);
    put(LinearId::O, o, D, qd);
    put(LinearId::Gate, g, I, D);
    put(LinearId::Up, u, I, D);
    put(LinearId::Down, d, D, I);
    w.add_f32(p + "input_layernorm.weight", {D}, an_norm.data());
    w.add_f32(p + "post_attention_layernorm.weight", {D}, fn_norm.data());
    if (cfg.qk_norm)  // act on q / k per head after the projection: R1 does not touch them
      for (const char* n : {"self_attn.q_norm.weight", "self_attn.k_norm.weight"}) {
        const std::vector<float> t = ck.get(p + n, {hd}).to_f32();
        w.add_f32(p + n, {hd}, t.data());
      }
    if (!quiet) std::fprintf(stderr, "\rrotate: layer %d/%d", i + 1, cfg.num_layers);
  }
  if (!quiet) std::fprintf(stderr, "\n");
  {
    std::vector<float> fnorm, fnorm_w;
    split(ck.get("model.norm.weight", {D}).to_f32(), fnorm, fnorm_w);
    // Tied or not, the head gets the final norm's gamma and the embedding does not: always stored.
    std::vector<float> head = ck.get(ck.has("lm_head.weight") ? "lm_head.weight" : "model.embed_tokens.weight", {V, D})
                                  .to_f32();
    rotate_input_side(head, V, D, fnorm, rot.r1);
    w.add_f32("lm_head.weight", {V, D}, head.data());
    w.add_f32("model.norm.weight", {D}, fnorm_w.data());
  }
  w.finish();
  nlohmann::json config = cfg.raw;
  config["tie_word_embeddings"] = false;
  config["torch_dtype"] = "float32";
  write_file_atomic(out_dir / "config.json", config.dump(2) + "\n");
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json"}) {
    const fs::path src = model_dir / f;
    if (fs::is_regular_file(src)) fs::copy_file(src, out_dir / f, fs::copy_options::overwrite_existing);
  }
  return rot.info();
}

}  // namespace mosaic
