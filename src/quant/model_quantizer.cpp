#include "quant/model_quantizer.h"

#include "format/int_scale_grid.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <memory>
#include <numeric>
#include <sstream>
#include <string>

#include "format/int_scale_grid.h"
#include "io/hf_config.h"
#include "io/safetensors.h"
#include "model/act_quant_linear.h"
#include "model/model.h"
#include "model/ops.h"
#include "model/parallel.h"
#include "model/quant_linear.h"
#include "quant/accelerator.h"
#include "quant/calibration.h"
#include "quant/gptq.h"
#include "format/int8_rows.h"
#include "format/packed_checkpoint.h"
#include "quant/rtn.h"
#include "quant/smooth.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/half.h"
#include "util/progress.h"

namespace fs = std::filesystem;

namespace mosaic {

QuantMethod parse_quant_method(const std::string& name) {
  if (name == "mosaic") return QuantMethod::kMosaic;
  if (name == "gptq") return QuantMethod::kGptq;
  if (name == "rtn") return QuantMethod::kRtn;
  fail("unknown quantization method '", name, "' (expected mosaic, gptq or rtn)");
}

Allocation parse_allocation(const std::string& name) {
  if (name == "per-layer" || name == "per_layer") return Allocation::kPerLayer;
  if (name == "global") return Allocation::kGlobal;
  fail("unknown residual allocation '", name, "' (expected per-layer or global)");
}

const char* allocation_name(Allocation a) { return a == Allocation::kGlobal ? "global" : "per_layer"; }

const char* quant_method_name(QuantMethod m) {
  switch (m) {
    case QuantMethod::kMosaic: return "mosaic";
    case QuantMethod::kGptq: return "gptq";
    case QuantMethod::kRtn: return "rtn";
  }
  return "?";
}

namespace {

constexpr LinearId kLinears[] = {LinearId::Q, LinearId::K, LinearId::V, LinearId::O,
                                 LinearId::Gate, LinearId::Up, LinearId::Down};

struct Shape2 {
  int64_t N, K;
};

Shape2 linear_shape(const ModelConfig& c, LinearId id) {
  const int64_t D = c.hidden_size, I = c.intermediate_size, qd = int64_t(c.num_heads) * c.head_dim,
                kd = int64_t(c.num_kv_heads) * c.head_dim;
  switch (id) {
    case LinearId::Q: return {qd, D};
    case LinearId::K:
    case LinearId::V: return {kd, D};
    case LinearId::O: return {D, qd};
    case LinearId::Gate:
    case LinearId::Up: return {I, D};
    case LinearId::Down: return {D, I};
  }
  return {0, 0};
}

std::string layer_prefix(int i) { return "model.layers." + std::to_string(i) + "."; }

// Every tensor must be one the engine knows; anything else (biases, extra heads, vision towers)
// would be silently dropped, so it is an error.
void check_tensor_names(const Checkpoint& ckpt, const ModelConfig& cfg) {
  static const char* kLayerTensors[] = {"input_layernorm.weight", "post_attention_layernorm.weight",
                                        "self_attn.q_norm.weight", "self_attn.k_norm.weight"};
  for (const std::string& name : ckpt.names()) {
    if (name == "model.embed_tokens.weight" || name == "model.norm.weight" || name == "lm_head.weight") continue;
    if (name.ends_with(".rotary_emb.inv_freq")) continue;  // old HF exports store RoPE tables; recomputed
    bool ok = false;
    if (name.starts_with("model.layers.")) {
      const std::string rest = name.substr(13);
      const size_t dot = rest.find('.');
      const std::string idx = rest.substr(0, dot), tail = dot == std::string::npos ? "" : rest.substr(dot + 1);
      const bool numeric = !idx.empty() && idx.size() < 7 && idx.find_first_not_of("0123456789") == std::string::npos;
      if (numeric && std::stoi(idx) < cfg.num_layers) {
        for (const char* t : kLayerTensors) ok |= tail == t && (cfg.qk_norm || tail.find("_norm") == std::string::npos ||
                                                                tail.find("layernorm") != std::string::npos);
        for (LinearId id : kLinears) ok |= tail == std::string(linear_name(id)) + ".weight";
      }
    }
    MOSAIC_CHECK(ok, "unsupported tensor '", name, "' in ", ckpt.root().string(), " (", cfg.architecture,
                 " with ", cfg.num_layers, " layers has no such tensor; refusing to drop it)");
  }
}

// The largest usual group size dividing every linear's K (0 if none does).
int suggest_group(const ModelConfig& c) {
  int64_t all = 0;
  for (LinearId id : kLinears) all = std::gcd(all, linear_shape(c, id).K);
  for (int g : {128, 64, 32, 16})
    if (all % g == 0) return g;
  return 0;
}

}  // namespace

int linear_group(const ModelQuantOptions& opt, LinearId id) {
  const std::string name = linear_name(id);
  for (const auto& [pattern, g] : opt.group_for)
    if (name.find(pattern) != std::string::npos) return g;
  return opt.group;
}

std::vector<std::pair<std::string, int>> parse_group_for(const std::string& spec) {
  std::vector<std::pair<std::string, int>> out;
  size_t start = 0;
  while (start <= spec.size() && !spec.empty()) {
    const size_t end = std::min(spec.find(',', start), spec.size());
    const std::string item = spec.substr(start, end - start);
    const size_t eq = item.find('=');
    MOSAIC_CHECK(eq != std::string::npos && eq > 0 && eq + 1 < item.size(), "--group-for entry '", item,
                 "' is not NAME=GROUP (e.g. down_proj=32)");
    int g = 0;
    try {
      size_t used = 0;
      g = std::stoi(item.substr(eq + 1), &used);
      MOSAIC_CHECK(used == item.size() - eq - 1, "trailing characters");
    } catch (const std::exception&) {
      fail("--group-for entry '", item, "': group '", item.substr(eq + 1), "' is not an integer");
    }
    out.emplace_back(item.substr(0, eq), g);
    start = end + 1;
  }
  return out;
}

namespace {

// --row-cap: the residual blocks of an [N, K] linear that the cap lets it keep.
int64_t row_cap_capacity(const ModelQuantOptions& opt, int64_t N, int64_t K) {
  return (N / opt.block_rows) * row_cap_blocks(opt.row_cap, K / opt.block_cols);
}

std::string row_cap_text(const ModelQuantOptions& opt) {
  std::ostringstream s;
  s << "--row-cap " << opt.row_cap << " (at most ceil(" << opt.row_cap << " x block columns) residual blocks per "
    << opt.block_rows << "-row block row)";
  return s.str();
}

// Shape checks for every linear before any work: group | K, K even, and for mosaic Br | N, Bc | K;
// with --row-cap, that the caps can hold the budget (global: over the model; per layer: each linear).
void check_shapes(const Checkpoint& ckpt, const ModelConfig& cfg, const ModelQuantOptions& opt) {
  const bool capped = opt.method == QuantMethod::kMosaic && opt.budget > 0 && opt.row_cap < 1.0;
  int64_t all_blocks = 0, all_capacity = 0;  // global allocation under --row-cap
  for (int i = 0; i < cfg.num_layers; ++i)
    for (LinearId id : kLinears) {
      const Shape2 s = linear_shape(cfg, id);
      const std::string name = layer_prefix(i) + linear_name(id) + ".weight";
      const TensorView& t = ckpt.get(name, {s.N, s.K});
      MOSAIC_CHECK(t.dtype == DType::F32 || t.dtype == DType::F16 || t.dtype == DType::BF16, "tensor '", name,
                   "' has dtype ", dtype_name(t.dtype), "; the quantizer reads F32, F16 or BF16");
      const int group = linear_group(opt, id);
      MOSAIC_CHECK(s.K % 2 == 0 && s.K % group == 0, "tensor '", name, "' ", t.shape_str(), ": group size ", group,
                   " does not divide K = ", s.K,
                   suggest_group(cfg) ? " (--group " + std::to_string(suggest_group(cfg)) + " fits every linear)"
                                     : std::string());
      if (opt.method == QuantMethod::kMosaic && opt.budget > 0)
        MOSAIC_CHECK(s.N % opt.block_rows == 0 && s.K % opt.block_cols == 0, "tensor '", name, "' ", t.shape_str(),
                     ": residual block ", opt.block_rows, "x", opt.block_cols, " does not tile it (--block RxC: R must ",
                     "divide ", s.N, ", C must divide ", s.K, ")");
      if (capped) {
        const int64_t blocks = (s.N / opt.block_rows) * (s.K / opt.block_cols), cap = row_cap_capacity(opt, s.N, s.K);
        all_blocks += blocks;
        all_capacity += cap;
        MOSAIC_CHECK(opt.allocation == Allocation::kGlobal || budget_blocks(opt.budget, blocks) <= cap, row_cap_text(opt),
                     " lets '", name, "' keep at most ", cap, " of its ", blocks, " blocks, fewer than --budget ",
                     opt.budget, " keeps per layer (", budget_blocks(opt.budget, blocks),
                     "); raise --row-cap or lower --budget");
      }
    }
  if (capped && opt.allocation == Allocation::kGlobal)
    MOSAIC_CHECK(budget_blocks(opt.budget, all_blocks) <= all_capacity, row_cap_text(opt), " lets the model keep at most ",
                 all_capacity, " of its ", all_blocks, " residual blocks, fewer than --budget ", opt.budget,
                 " keeps with global allocation (", budget_blocks(opt.budget, all_blocks),
                 "); raise --row-cap or lower --budget");
  if (opt.quantize_lm_head) {
    const int64_t V = cfg.vocab_size, D = cfg.hidden_size;
    const std::string name = ckpt.has("lm_head.weight") ? "lm_head.weight" : "model.embed_tokens.weight";
    ckpt.get(name, {V, D});
    MOSAIC_CHECK(D % opt.group == 0, "--lm-head: group size ", opt.group, " does not divide hidden_size ", D);
    if (opt.method == QuantMethod::kMosaic && opt.budget > 0)
      MOSAIC_CHECK(V % opt.block_rows == 0 && D % opt.block_cols == 0, "--lm-head: residual block ", opt.block_rows,
                   "x", opt.block_cols, " does not tile the head [", V, ", ", D, "]");
    if (capped) {  // the head keeps its own budget share (per layer)
      const int64_t blocks = (V / opt.block_rows) * (D / opt.block_cols), cap = row_cap_capacity(opt, V, D);
      MOSAIC_CHECK(budget_blocks(opt.budget, blocks) <= cap, row_cap_text(opt), " lets the LM head keep at most ", cap,
                   " of its ", blocks, " blocks, fewer than --budget ", opt.budget, " keeps (",
                   budget_blocks(opt.budget, blocks), "); raise --row-cap or lower --budget");
    }
  }
  if (opt.lm_head_int8) {
    const std::string name = ckpt.has("lm_head.weight") ? "lm_head.weight" : "model.embed_tokens.weight";
    const TensorView& t = ckpt.get(name, {cfg.vocab_size, cfg.hidden_size});
    MOSAIC_CHECK(t.dtype == DType::F32 || t.dtype == DType::F16 || t.dtype == DType::BF16, "--lm-head-int8: tensor '",
                 name, "' has dtype ", dtype_name(t.dtype), "; the quantizer reads F32, F16 or BF16");
  }
}

// F16 bytes of a checkpoint tensor, converted in chunks on the worker threads: the embedding and
// LM head of a 128k-vocabulary model are 0.5 G elements each, and a whole FP32 copy of one (2 GB)
// was the quantizer's peak host memory at 8B (8.63 GiB at the end vs 6.85 during the layers).
std::string f16_bytes(const TensorView& t) {
  const int64_t n = t.numel();
  std::string out(size_t(n) * 2, '\0');
  auto* dst = reinterpret_cast<uint16_t*>(out.data());
  constexpr int64_t kChunk = int64_t(1) << 20;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<std::string> bad(static_cast<size_t>(chunks));  // per chunk: parallel bodies must not throw
  parallel_for_each(chunks, kChunk, [&](int64_t c) {
    const int64_t begin = c * kChunk, len = std::min(kChunk, n - begin);
    TensorView part = t;
    part.shape = {len};
    part.data = t.data + size_t(begin) * dtype_size(t.dtype);
    part.nbytes = size_t(len) * dtype_size(t.dtype);
    std::vector<float> v(static_cast<size_t>(len));
    part.to_f32(v.data());
    for (int64_t i = 0; i < len; ++i) {
      dst[begin + i] = float_to_fp16(v[size_t(i)]);
      if (!std::isfinite(fp16_to_float(dst[begin + i])) && bad[size_t(c)].empty())
        bad[size_t(c)] = "tensor '" + t.name + "' element " + std::to_string(begin + i) + " = " +
                         std::to_string(v[size_t(i)]) + " does not fit FP16";
    }
  });
  for (const auto& b : bad) MOSAIC_CHECK(b.empty(), b);
  return out;
}

void copy_f16(ShardedWriter& w, const Checkpoint& ckpt, const std::string& name) {
  const TensorView& t = ckpt.get(name);
  w.add(name, DType::F16, t.shape, f16_bytes(t));
  ckpt.release(name);
}

nlohmann::json quantization_config(const ModelQuantOptions& opt, const ModelQuantReport& rep) {
  nlohmann::json q = {{"quant_method", "mosaicquant"},
                      {"format_version", 1},
                      {"bits", 4},
                      {"group_size", opt.group},
                      {"symmetric", opt.symmetric},
                      {"method", quant_method_name(opt.method)},
                      {"base_method", opt.method == QuantMethod::kRtn ? "rtn" : "gptq"},
                      {"act_order", opt.act_order && opt.method != QuantMethod::kRtn},
                      {"true_sequential", opt.true_sequential && opt.method != QuantMethod::kRtn},
                      {"mosaic_version", "0.1.0"}};
  q["lm_head"] = opt.quantize_lm_head;  // true: lm_head is packed like the decoder linears
  q["lm_head_int8"] = opt.lm_head_int8;  // true: lm_head.weight_int8 + .weight_scale (format/int8_rows.h)
  if (!opt.group_for.empty()) {  // linears whose group differs from group_size (same in every layer)
    nlohmann::json per = nlohmann::json::object();
    for (LinearId id : kLinears)
      if (linear_group(opt, id) != opt.group) per[linear_name(id)] = linear_group(opt, id);
    q["group_size_per_linear"] = per;
  }
  if (!opt.grid.empty()) q["grid"] = opt.grid == grid_nl4() ? "nl4" : "custom";  // the values: <layer>.qgrid
  if (opt.int_scales) q["scale_grid"] = "int8";  // every scale u_n x 1..16 (docs/format.md)
  if (opt.method == QuantMethod::kMosaic)
    q["residual"] = {{"block_rows", opt.block_rows},
                     {"block_cols", opt.block_cols},
                     {"budget", opt.budget},
                     {"allocation", allocation_name(opt.allocation)},
                     {"score_samples", opt.allocation == Allocation::kGlobal ? nlohmann::json(rep.score_windows)
                                                                              : nlohmann::json(nullptr)},
                     {"row_cap", opt.row_cap},
                     {"alloc_exponent", opt.allocation == Allocation::kGlobal ? nlohmann::json(opt.alloc_exponent)
                                                                                : nlohmann::json(nullptr)},
                     {"scorer", block_scorer_name(opt.scorer)},
                     {"residual_in_gptq", true}};
  else
    q["residual"] = nullptr;
  q["calibration"] = opt.method == QuantMethod::kRtn ? nlohmann::json(nullptr) : opt.calibration_info;
  q["act_bits"] = opt.act_bits;
  if (opt.act_bits < 16 && opt.act_format == ActFormat::kFp8E4M3) {
    q["act_format"] = act_format_name(opt.act_format);
    q["act_quant"] = {{"granularity", "per_token"},
                      {"symmetric", true},
                      {"dynamic", true},
                      {"scale", "max|x_row| / 448, fp32"},
                      {"rounding", "to the nearest FP8 e4m3fn value, ties to even"}};
  } else if (opt.act_bits < 16) {
    q["act_quant"] = {{"granularity", "per_token"},
                      {"symmetric", true},
                      {"dynamic", true},
                      {"scale", "max|x_row| / (2^(act_bits-1) - 1), fp32"},
                      {"rounding", "nearest, ties away from zero"}};
  }
  if (opt.smooth) {
    nlohmann::json alphas = nlohmann::json::array();
    for (const auto& a : rep.smooth_alphas) alphas.push_back({a[0], a[1], a[2], a[3]});
    q["smoothing"] = {{"method", "smoothquant"},
                      {"alpha", opt.smooth_alpha >= 0 ? nlohmann::json(opt.smooth_alpha) : nlohmann::json("auto")},
                      {"grid", opt.smooth_alpha >= 0 ? nlohmann::json(nullptr) : nlohmann::json(opt.smooth_grid)},
                      {"folded_into", {{"qkv", "input_layernorm"}, {"o", "v_proj rows"},
                                       {"gate_up", "post_attention_layernorm"}, {"down", "up_proj rows"}}},
                      {"sites", {"qkv", "o", "gate_up", "down"}},
                      {"alphas", alphas}};
  } else {
    q["smoothing"] = nullptr;
  }
  q["rotation"] = rep.rotation;
  return q;
}

class Quantizer {
 public:
  Quantizer(const Checkpoint& ckpt, const ModelConfig& cfg, const ModelQuantOptions& opt,
            const std::vector<std::vector<int32_t>>& calib)
      : ckpt_(ckpt), cfg_(cfg), opt_(opt), calib_(calib) {}

  void run(ShardedWriter& w, ModelQuantReport& rep) {
    const bool calibrate = opt_.method != QuantMethod::kRtn;
    smooth_.assign(size_t(cfg_.num_layers), {});
    have_smooth_.assign(size_t(cfg_.num_layers), false);
    smooth_inv_.assign(size_t(cfg_.num_layers), {});
    std::unique_ptr<Model> model;
    KVCache cache;
    if (calibrate) {
      // The Model holds the embedding and norms; its linears are placeholders until a layer is
      // worked on, so only one layer's weights are ever in FP32.
      LoadOptions lo;
      lo.linear_factory = [](const Checkpoint&, const std::string& p, int64_t N, int64_t K) {
        return std::unique_ptr<Linear>(std::make_unique<AbsentLinear>(N, K, p));
      };
      model = std::make_unique<Model>(Model::from_checkpoint(ckpt_, cfg_, lo));
      cache = model->make_cache(int64_t(calib_[0].size()));
    }
    if (opt_.accel && !opt_.quiet)
      std::fprintf(stderr, "calibration linears, Hessians and GPTQ on %s\n", opt_.accel->describe().c_str());
    std::vector<std::vector<float>> x;  // activations per calibration window [len, hidden]
    if (opt_.method == QuantMethod::kMosaic && opt_.allocation == Allocation::kGlobal && opt_.budget > 0) {
      // The scoring pass only ranks blocks for the allocation: it may use the first
      // score_samples windows (0 = all; the windows are already a random sample).
      const size_t n = opt_.score_samples > 0 ? std::min(calib_.size(), size_t(opt_.score_samples)) : calib_.size();
      rep.score_windows = int64_t(n);
      embed(model.get(), x, n);
      counts_ = global_counts(model.get(), x, cache);
      for (size_t l = 0; l < counts_.size(); ++l) rep.global_counts.push_back(counts_[l]);
    }
    if (model) embed(model.get(), x, calib_.size());
    copy_f16(w, ckpt_, "model.embed_tokens.weight");
    Progress progress("quantize", cfg_.num_layers, opt_.quiet);
    for (int i = 0; i < cfg_.num_layers; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      quantize_layer(i, w, rep, model.get(), x, cache);
      const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      char buf[160];
      std::snprintf(buf, sizeof buf, "layer %d: %.1f s, peak RSS %s%s%s", i, dt, format_bytes(peak_rss_bytes()).c_str(),
                    opt_.accel ? ", peak GPU " : "",
                    opt_.accel ? format_bytes(opt_.accel->peak_device_bytes()).c_str() : "");
      progress.update(i + 1, buf);
      if (opt_.on_layer) opt_.on_layer(i, dt);
      if (opt_.fail_after_layers == i + 1) fail("injected failure after layer ", i, " (test hook)");
    }
    progress.finish();
    if (opt_.smooth)
      for (const LayerSmoothing& l : smooth_) rep.smooth_alphas.push_back(l.alpha);
    copy_f16(w, ckpt_, "model.norm.weight");
    if (opt_.quantize_lm_head)
      quantize_head(w, rep, model.get(), x);
    else if (opt_.lm_head_int8)
      quantize_head_int8(w, rep);
    else if (ckpt_.has("lm_head.weight"))
      copy_f16(w, ckpt_, "lm_head.weight");
    rep.phase_seconds = {{"load", phase_[kLoad]},       {"forward", phase_[kForward]}, {"hessian", phase_[kHessian]},
                         {"quantize", phase_[kSolve]}, {"quantize_gptq_solve", timed_gptq_.seconds},
                       {"write", phase_[kWrite]}};
  }

 private:
  // Where the time goes (the report's phase_seconds): reading + converting a layer's weights,
  // calibration forward passes (with the Hessian accumulation inside them), fetching Hessians,
  // GPTQ + residual scoring/selection, packing + writing.
  enum Phase { kLoad, kForward, kHessian, kSolve, kWrite, kPhases };
  std::array<double, kPhases> phase_{};
  template <typename F>
  auto timed(Phase p, F&& f) {
    const auto t0 = std::chrono::steady_clock::now();
    auto r = f();
    phase_[p] += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return r;
  }

  using Weights = std::array<std::shared_ptr<const std::vector<float>>, 7>;

  // fn(id) for the 7 linears of a layer on the worker threads; the first exception is rethrown
  // here (parallel_for bodies must not throw).
  template <typename F>
  static void for_each_linear(F&& fn) {
    std::array<std::exception_ptr, 7> err;
    parallel_for_each(7, int64_t(1) << 30, [&](int64_t id) {
      try {
        fn(id);
      } catch (...) {
        err[size_t(id)] = std::current_exception();
      }
    });
    for (const auto& e : err)
      if (e) std::rethrow_exception(e);
  }
  using Accumulators = std::array<std::shared_ptr<HessianAccumulator>, 7>;

  void embed(Model* model, std::vector<std::vector<float>>& x, size_t windows) const {
    const int64_t len = int64_t(calib_[0].size());
    x.assign(windows, {});
    for (size_t s = 0; s < windows; ++s) {
      x[s].resize(size_t(len * cfg_.hidden_size));
      model->embed(calib_[s].data(), len, x[s].data());
    }
  }

  Weights load_weights(int i) const {
    Weights W;
    std::array<const TensorView*, 7> views;
    for (LinearId id : kLinears) {  // shape checks (they throw) before the parallel part
      const Shape2 s = linear_shape(cfg_, id);
      views[size_t(id)] = &ckpt_.get(layer_prefix(i) + linear_name(id) + ".weight", {s.N, s.K});
    }
    // The 7 conversions (and the page faults of reading the mapping) in parallel: ~0.1 s per 58 M
    // BF16 weights on one core.
    for_each_linear([&](int64_t id) {
      W[size_t(id)] = std::make_shared<const std::vector<float>>(views[size_t(id)]->to_f32());
    });
    for (LinearId id : kLinears)  // the FP32 copy is what we use: don't keep the mapped BF16 pages resident
      ckpt_.release(layer_prefix(i) + linear_name(id) + ".weight");
    return W;
  }

  // One calibration pass of layer i over every window of x: linear id runs W[id] (FP32) or, where
  // W[id] is null, packed[id] (quantized), each behind its site transforms (site_linear);
  // capture[c] gets the inputs of q/k/v, o_proj, gate/up, down_proj (c = 0..3; FP sites only).
  // update_x: x becomes the layer's output, else it is left as it was. On an accelerator that runs
  // whole layers (QuantAccelerator::layer_pass) the pass runs there, else on the host engine.
  struct PassSpec {
    Weights W;
    std::array<const PackedLinear*, 7> packed{};
    std::array<std::shared_ptr<HessianAccumulator>, 4> capture;
  };
  static int capture_group(LinearId id) {
    switch (id) {
      case LinearId::Q: return 0;
      case LinearId::O: return 1;
      case LinearId::Gate: return 2;
      case LinearId::Down: return 3;
      default: return -1;  // k/v and up share the input of q and gate
    }
  }

  void run_pass(int i, const PassSpec& p, Model& model, std::vector<std::vector<float>>& x, bool update_x,
                KVCache& cache) const {
    const int64_t len = int64_t(calib_[0].size());
    // The GPU layer pass rounds activations to integers only; FP8 activations run on the host path.
    if (opt_.accel && opt_.device_layers && opt_.act_format == ActFormat::kInt) {
      LayerPass lp;
      lp.cfg = &cfg_;
      lp.rope = &model.rope();
      const Model::LayerNorms n = model.layer_norms(i);
      lp.attn_norm = n.attn, lp.ffn_norm = n.ffn, lp.q_norm = n.q, lp.k_norm = n.k;
      for_each_linear([&](int64_t id) {  // ~0.26 s per 58 M weights on one core
        lp.W[size_t(id)] = p.W[size_t(id)] ? p.W[size_t(id)]
                                           : std::make_shared<const std::vector<float>>(dequantize(*p.packed[size_t(id)]));
      });
      lp.capture = p.capture;
      lp.act_bits = opt_.act_bits;
      if (opt_.smooth && have_smooth_[size_t(i)]) {
        lp.attn_inv_scale = smooth_inv_[size_t(i)][0];
        lp.mlp_inv_scale = smooth_inv_[size_t(i)][1];
      }
      lp.update_x = update_x;
      if (opt_.accel->layer_pass(lp, x, len)) return;
    }
    for (LinearId id : kLinears) {
      const Shape2 s = linear_shape(cfg_, id);
      const int c = capture_group(id);
      std::shared_ptr<HessianAccumulator> cap = c >= 0 ? p.capture[size_t(c)] : nullptr;
      MOSAIC_CHECK(p.W[int(id)] || (p.packed[int(id)] && !cap), "calibration pass of layer ", i, ": ",
                   linear_name(id), " has no weights, or captures a quantized site");
      model.set_linear(i, id, site_linear(i, id, p.W[int(id)] ? calib_linear(p.W[int(id)], s, cap)
                                                             : quant_linear(i, id, *p.packed[int(id)])));
    }
    std::vector<float> tmp;
    for (auto& xs : x) {
      float* data = xs.data();
      if (!update_x) {
        tmp = xs;
        data = tmp.data();
      }
      cache.clear();
      model.layer_forward(i, data, len, cache);
    }
    const std::string pre = layer_prefix(i);  // drop the layer's linears again
    for (LinearId id : kLinears) {
      const Shape2 s = linear_shape(cfg_, id);
      model.set_linear(i, id, std::make_unique<AbsentLinear>(s.N, s.K, pre + linear_name(id)));
    }
  }

  // Runs the FP layer i on x (x unchanged) and returns the Hessian accumulators of its inputs:
  // q/k/v share the attention-norm output, gate/up the MLP-norm output.
  Accumulators capture_hessians(int i, const Weights& W, Model& model, std::vector<std::vector<float>>& x,
                                KVCache& cache) const {
    const int64_t D = cfg_.hidden_size, qd = int64_t(cfg_.num_heads) * cfg_.head_dim;
    PassSpec p;
    p.W = W;
    // The Hessian is of what the linear will see: the smoothed, per-token quantized inputs.
    p.capture = {new_hessian(D), new_hessian(qd), new_hessian(D), new_hessian(cfg_.intermediate_size)};
    run_pass(i, p, model, x, /*update_x=*/false, cache);
    Accumulators acc;
    for (LinearId id : kLinears) {
      const int c = capture_group(id);
      acc[int(id)] = p.capture[size_t(c >= 0 ? c : id == LinearId::Up ? 2 : 0)];
    }
    return acc;
  }

  // x = the quantized layer i applied to x (the next layer's inputs).
  void propagate(int i, const std::vector<PackedLinear>& packed, Model& model, std::vector<std::vector<float>>& x,
                 KVCache& cache) const {
    PassSpec p;
    for (LinearId id : kLinears) p.packed[int(id)] = &packed[int(id)];
    run_pass(i, p, model, x, /*update_x=*/true, cache);
  }

  // Global allocation, pass 1: the same layer-by-layer walk with the base alone (inputs of layer i
  // come from the base-quantized layers before it), scoring every block of every linear. Scores
  // are divided by the linear's output energy to the power alloc_exponent (1: relative output-error
  // reduction; 0.75, the default, leans toward the absolute reduction), and the budget
  // over all blocks of the model goes to the highest (allocate_global). Returns blocks per linear,
  // indexed layer * 7 + LinearId.
  std::vector<int64_t> global_counts(Model* model, std::vector<std::vector<float>>& x, KVCache& cache) {
    std::vector<std::vector<double>> scores(size_t(cfg_.num_layers) * 7);
    const double energy_exp = opt_.alloc_exponent;
    Progress progress("score (global allocation)", cfg_.num_layers, opt_.quiet);
    for (int i = 0; i < cfg_.num_layers; ++i) {
      Weights W = timed(kLoad, [&] { return load_weights(i); });
      smooth_layer(i, W, *model, x, cache);
      const Accumulators acc = timed(kForward, [&] { return capture_hessians(i, W, *model, x, cache); });
      std::vector<PackedLinear> base(7);
      std::vector<float> H;
      const HessianAccumulator* last = nullptr;
      for (LinearId id : kLinears) {
        const Shape2 s = linear_shape(cfg_, id);
        const HessianAccumulator* a = acc[int(id)].get();
        if (a != last) {
          H = timed(kHessian, [&] { return a->hessian(); });
          last = a;
        }
        const std::string name = layer_prefix(i) + linear_name(id);
        try {
          std::vector<double>& sc = scores[size_t(i) * 7 + size_t(id)];
          sc = timed(kSolve, [&] { return mosaic_block_scores(*W[int(id)], s.N, s.K, H, mosaic_options(linear_group(opt_, id)), &base[int(id)]); });
          const double energy = diagonal_output_energy(*W[int(id)], s.N, s.K, H);
          if (energy > 0) {
            const double norm = energy_exp == 1.0 ? energy : std::pow(energy, energy_exp);  // 1: exactly as before
            for (double& v : sc) v /= norm;
          }
        } catch (const Error& e) {
          fail(name, ": ", e.what());
        }
        W[int(id)].reset();
      }
      if (i + 1 < cfg_.num_layers)  // the last layer's outputs feed nothing
        timed(kForward, [&] { propagate(i, base, *model, x, cache); return 0; });
      progress.update(i + 1, "layer " + std::to_string(i));
    }
    progress.finish();
    if (opt_.row_cap >= 1.0) return allocate_global(scores, opt_.budget);
    std::vector<BlockRowCap> caps;  // layer * 7 + id, like the scores
    for (int i = 0; i < cfg_.num_layers; ++i)
      for (LinearId id : kLinears) {
        const int64_t nbc = linear_shape(cfg_, id).K / opt_.block_cols;
        caps.push_back({nbc, row_cap_blocks(opt_.row_cap, nbc)});
      }
    return allocate_global(scores, opt_.budget, caps);
  }

  void quantize_layer(int i, ShardedWriter& w, ModelQuantReport& rep, Model* model,
                      std::vector<std::vector<float>>& x, KVCache& cache) {
    const std::string p = layer_prefix(i);
    Weights W = timed(kLoad, [&] { return load_weights(i); });
    if (model) smooth_layer(i, W, *model, x, cache);
    write_norms(i, w);

    Accumulators acc;
    if (model) acc = timed(kForward, [&] { return capture_hessians(i, W, *model, x, cache); });
    std::vector<PackedLinear> packed(7);
    std::vector<float> H;
    const HessianAccumulator* last = nullptr;
    for (LinearId id : kLinears) {
      const Shape2 s = linear_shape(cfg_, id);
      const std::string name = p + linear_name(id);
      if (model && opt_.true_sequential &&
          (id == LinearId::O || id == LinearId::Gate || id == LinearId::Down)) {  // a new site
        acc[int(id)] = timed(kForward, [&] { return capture_after(i, W, packed, id, *model, x, cache); });
        if (id == LinearId::Gate) acc[int(LinearId::Up)] = acc[int(id)];
      }
      const HessianAccumulator* a = acc[int(id)].get();
      if (a && a != last) {  // q/k/v and gate/up reuse the H just built
        H = timed(kHessian, [&] { return a->hessian(); });
        last = a;
      }
      const int64_t count = counts_.empty() ? -1 : counts_[size_t(i) * 7 + size_t(id)];
      packed[int(id)] = timed(kSolve, [&] { return quantize_one(*W[int(id)], s, H, name, count, linear_group(opt_, id)); });
      W[int(id)].reset();
      timed(kWrite, [&] { add_packed_linear(w, name, packed[int(id)]); return 0; });
      rep.linear_params += s.N * s.K;
      rep.linear_bytes += packed[int(id)].storage_bytes();
      rep.residual_blocks += packed[int(id)].num_blocks_kept();
    }
    // The last layer's outputs feed nothing, unless the LM head is quantized (its Hessian).
    if (model && (i + 1 < cfg_.num_layers || opt_.quantize_lm_head))
      timed(kForward, [&] { propagate(i, packed, *model, x, cache); return 0; });
  }

  // The LM head [V, D] (lm_head.weight, or the embedding of a tied model) quantized like a decoder
  // linear (per-linear budget), its Hessian from the final norm of x = the quantized model's last
  // hidden states over the calibration windows.
  void quantize_head(ShardedWriter& w, ModelQuantReport& rep, Model* model, const std::vector<std::vector<float>>& x) {
    const int64_t V = cfg_.vocab_size, D = cfg_.hidden_size;
    std::vector<float> H;
    if (model) {
      const std::shared_ptr<HessianAccumulator> acc = new_hessian(D);
      const std::vector<float> norm = ckpt_.get("model.norm.weight", {D}).to_f32();
      std::vector<float> h;
      timed(kForward, [&] {
        for (const auto& xs : x) {
          const int64_t rows = int64_t(xs.size()) / D;
          h.resize(xs.size());
          ops::rms_norm(xs.data(), norm.data(), rows, D, cfg_.rms_norm_eps, h.data());
          acc->add(h.data(), rows);
        }
        return 0;
      });
      H = timed(kHessian, [&] { return acc->hessian(); });
    }
    const std::string src = ckpt_.has("lm_head.weight") ? "lm_head.weight" : "model.embed_tokens.weight";
    const std::vector<float> W = timed(kLoad, [&] { return ckpt_.get(src, {V, D}).to_f32(); });
    const PackedLinear p = timed(kSolve, [&] { return quantize_one(W, {V, D}, H, "lm_head", -1, opt_.group); });
    timed(kWrite, [&] { add_packed_linear(w, "lm_head", p); return 0; });
    rep.lm_head_params = V * D;
    rep.lm_head_bytes = p.storage_bytes();
    if (!opt_.quiet)
      std::fprintf(stderr, "lm_head [%lld, %lld] quantized from %s: %.3f bits/weight\n", static_cast<long long>(V),
                   static_cast<long long>(D), src.c_str(), p.bits_per_weight());
  }

  // The LM head [V, D] (lm_head.weight, or the embedding of a tied model) in 8 bits per row
  // (format/int8_rows.h): no calibration; converted and quantized in chunks of rows on the worker
  // threads, so no FP32 copy of the whole head is made (0.5 G elements at a 128k vocabulary).
  void quantize_head_int8(ShardedWriter& w, ModelQuantReport& rep) {
    const int64_t V = cfg_.vocab_size, D = cfg_.hidden_size;
    const std::string src = ckpt_.has("lm_head.weight") ? "lm_head.weight" : "model.embed_tokens.weight";
    const TensorView& t = ckpt_.get(src, {V, D});
    std::string q(size_t(V * D), '\0'), scale(size_t(V) * 2, '\0');
    timed(kSolve, [&] {
      const int64_t rows = std::max<int64_t>(1, (int64_t(1) << 20) / D);  // ~1 M elements per chunk
      const int64_t chunks = (V + rows - 1) / rows;
      std::vector<std::string> bad(static_cast<size_t>(chunks));  // per chunk: parallel bodies must not throw
      parallel_for_each(chunks, rows * D, [&](int64_t c) {
        const int64_t r0 = c * rows, n = std::min(rows, V - r0);
        try {
          TensorView part = t;
          part.shape = {n, D};
          part.data = t.data + size_t(r0 * D) * dtype_size(t.dtype);
          part.nbytes = size_t(n * D) * dtype_size(t.dtype);
          std::vector<float> f(static_cast<size_t>(n * D));
          part.to_f32(f.data());
          quantize_int8_rows(f.data(), n, D, reinterpret_cast<int8_t*>(q.data()) + r0 * D,
                             reinterpret_cast<uint16_t*>(scale.data()) + r0, "tensor '" + src + "'", r0);
        } catch (const std::exception& e) {
          bad[size_t(c)] = e.what();
        }
      });
      for (const auto& b : bad) MOSAIC_CHECK(b.empty(), "--lm-head-int8: ", b);
      return 0;
    });
    ckpt_.release(src);
    rep.lm_head_params = V * D;
    rep.lm_head_bytes = V * D + 2 * V;
    timed(kWrite, [&] { add_int8_rows(w, "lm_head", V, D, std::move(q), std::move(scale)); return 0; });
    if (!opt_.quiet)
      std::fprintf(stderr, "lm_head [%lld, %lld] int8 per row from %s: %.3f bits/weight\n", static_cast<long long>(V),
                   static_cast<long long>(D), src.c_str(), 8.0 * double(rep.lm_head_bytes) / double(rep.lm_head_params));
  }

  // The quantized linear as calibration runs it (dequantized weights, on the accelerator if any).
  std::unique_ptr<Linear> quant_linear(int i, LinearId id, const PackedLinear& p) const {
    if (opt_.accel)
      return opt_.accel->linear(std::make_shared<const std::vector<float>>(dequantize(p)), p.N, p.K, nullptr);
    return std::make_unique<QuantLinear>(p, layer_prefix(i) + linear_name(id));
  }

  // True-sequential: the Hessian of `site`'s inputs with the linears of layer i quantized so far
  // (W[id] reset = done, packed[id] holds it) and the rest still in full precision.
  std::shared_ptr<HessianAccumulator> capture_after(int i, const Weights& W, const std::vector<PackedLinear>& packed,
                                                    LinearId site, Model& model,
                                                    std::vector<std::vector<float>>& x, KVCache& cache) const {
    auto acc = new_hessian(linear_shape(cfg_, site).K);
    PassSpec p;
    p.W = W;
    for (LinearId id : kLinears)
      if (!W[int(id)]) p.packed[int(id)] = &packed[int(id)];
    p.capture[size_t(capture_group(site))] = acc;
    run_pass(i, p, model, x, /*update_x=*/false, cache);
    return acc;
  }

  std::shared_ptr<HessianAccumulator> new_hessian(int64_t K) const {
    return opt_.accel ? opt_.accel->hessian(K) : std::make_shared<HessianAccumulator>(K);
  }

  // A dense FP32 linear for the calibration passes, adding its inputs to `capture` if set.
  std::unique_ptr<Linear> calib_linear(const std::shared_ptr<const std::vector<float>>& W, Shape2 s,
                                       std::shared_ptr<HessianAccumulator> capture) const {
    if (opt_.accel) return opt_.accel->linear(W, s.N, s.K, std::move(capture));
    std::unique_ptr<Linear> dense = std::make_unique<DenseLinear>(s.N, s.K, W);
    if (!capture) return dense;
    return std::make_unique<CaptureLinear>(std::move(dense), std::move(capture));
  }

  // The linear of layer i as calibration runs it: `inner`, its input rows per-token quantized
  // (act_bits < 16), and for the norm-fed sites (q/k/v, gate/up) the input divided by the
  // smoothing scale first, which is what the checkpoint's folded norm weights produce. (The o and
  // down scales are inside the v_proj / up_proj weights already.)
  std::unique_ptr<Linear> site_linear(int i, LinearId id, std::unique_ptr<Linear> inner) const {
    inner = with_act_quant(std::move(inner), ActQuant{opt_.act_bits, opt_.act_format});
    if (!opt_.smooth || !have_smooth_[size_t(i)]) return inner;
    const LayerSmoothing& s = smooth_[size_t(i)];
    const bool attn = id == LinearId::Q || id == LinearId::K || id == LinearId::V;
    const bool mlp = id == LinearId::Gate || id == LinearId::Up;
    if (attn && !s.attn.empty()) return std::make_unique<ScaledInputLinear>(std::move(inner), s.attn);
    if (mlp && !s.mlp.empty()) return std::make_unique<ScaledInputLinear>(std::move(inner), s.mlp);
    return inner;
  }

  // The norms of layer i as written: gamma / s for the smoothed sites (FP16).
  void write_norms(int i, ShardedWriter& w) const {
    const std::string p = layer_prefix(i);
    const LayerSmoothing* s = opt_.smooth && have_smooth_[size_t(i)] ? &smooth_[size_t(i)] : nullptr;
    for (int k = 0; k < 2; ++k) {
      const std::string name = p + (k == 0 ? "input_layernorm.weight" : "post_attention_layernorm.weight");
      const std::vector<float>* sc = s ? (k == 0 ? &s->attn : &s->mlp) : nullptr;
      if (!sc || sc->empty()) {
        copy_f16(w, ckpt_, name);
        continue;
      }
      std::vector<float> g = ckpt_.get(name, {cfg_.hidden_size}).to_f32();
      for (size_t j = 0; j < g.size(); ++j) g[j] /= (*sc)[j];
      std::string bytes(g.size() * 2, '\0');
      auto* dst = reinterpret_cast<uint16_t*>(bytes.data());
      for (size_t j = 0; j < g.size(); ++j) {
        dst[j] = float_to_fp16(g[j]);
        MOSAIC_CHECK(std::isfinite(fp16_to_float(dst[j])), "smoothed '", name, "' element ", j, " = ", g[j],
                     " does not fit FP16");
      }
      w.add(name, DType::F16, {cfg_.hidden_size}, std::move(bytes));
    }
    if (cfg_.qk_norm)
      for (const char* n : {"self_attn.q_norm.weight", "self_attn.k_norm.weight"}) copy_f16(w, ckpt_, p + n);
  }

  // SmoothQuant migration of layer i: the first time (global allocation's scoring pass, or the
  // only pass), runs the FP layer on x to gather each site's input maxima and a row sample and
  // chooses the scales (o and down first: their folds change v_proj / up_proj rows, which the
  // q/k/v and gate/up searches then see); every time, replaces W by the smoothed weights.
  void smooth_layer(int i, Weights& W, Model& model, const std::vector<std::vector<float>>& x, KVCache& cache) {
    if (!opt_.smooth) return;
    LayerSmoothing& sm = smooth_[size_t(i)];
    std::array<std::vector<float>, 7> w;
    for (LinearId id : kLinears) w[size_t(id)] = *W[size_t(id)];
    std::array<std::vector<float>*, 7> wp;
    for (size_t k = 0; k < 7; ++k) wp[k] = &w[k];
    if (!have_smooth_[size_t(i)]) {
      const int64_t len = int64_t(calib_[0].size()), total = len * int64_t(x.size());
      const int64_t rows = std::max(1, opt_.smooth_rows);
      const int64_t stride = std::max<int64_t>(1, total / rows);
      const int64_t D = cfg_.hidden_size, qd = int64_t(cfg_.num_heads) * cfg_.head_dim;
      auto st_attn = std::make_shared<InputStats>(D, stride, rows), st_o = std::make_shared<InputStats>(qd, stride, rows),
           st_mlp = std::make_shared<InputStats>(D, stride, rows),
           st_down = std::make_shared<InputStats>(cfg_.intermediate_size, stride, rows);
      for (LinearId id : kLinears) {
        const Shape2 s = linear_shape(cfg_, id);
        std::unique_ptr<Linear> dense = calib_linear(W[int(id)], s, nullptr);
        std::shared_ptr<InputStats> st = id == LinearId::Q ? st_attn : id == LinearId::O ? st_o
                                         : id == LinearId::Gate ? st_mlp : id == LinearId::Down ? st_down : nullptr;
        model.set_linear(i, id, st ? std::make_unique<StatsLinear>(std::move(dense), st) : std::move(dense));
      }
      std::vector<float> tmp;
      for (const auto& xs : x) {
        tmp = xs;
        cache.clear();
        model.layer_forward(i, tmp.data(), len, cache);
      }
      SmoothSearchOptions so;
      so.act_bits = opt_.act_bits;
      so.act_format = opt_.act_format;
      so.group = opt_.group;
      so.symmetric = opt_.symmetric;
      so.weight_grid = opt_.grid;
      so.fixed_alpha = opt_.smooth_alpha;
      so.grid = opt_.smooth_grid;
      sm = LayerSmoothing{};
      const auto id = [](LinearId l) { return size_t(l); };
      {
        const std::vector<int64_t> map = o_scale_map(cfg_);
        const std::vector<float>* ws[] = {&w[id(LinearId::O)]};
        sm.o = search_smoothing(*st_o, ws, map, int64_t(cfg_.num_kv_heads) * cfg_.head_dim, so, &sm.alpha[1]);
      }
      {
        const std::vector<float>* ws[] = {&w[id(LinearId::Down)]};
        sm.down = search_smoothing(*st_down, ws, {}, cfg_.intermediate_size, so, &sm.alpha[3]);
      }
      // The o/down folds first (v_proj / up_proj rows), then search the norm sites on those weights.
      {
        LayerSmoothing rows_only;
        rows_only.o = sm.o;
        rows_only.down = sm.down;
        apply_smoothing(cfg_, rows_only, wp, nullptr, nullptr);
      }
      {
        const std::vector<float>* ws[] = {&w[id(LinearId::Q)], &w[id(LinearId::K)], &w[id(LinearId::V)]};
        sm.attn = search_smoothing(*st_attn, ws, {}, D, so, &sm.alpha[0]);
      }
      {
        const std::vector<float>* ws[] = {&w[id(LinearId::Gate)], &w[id(LinearId::Up)]};
        sm.mlp = search_smoothing(*st_mlp, ws, {}, D, so, &sm.alpha[2]);
      }
      LayerSmoothing cols_only;
      cols_only.attn = sm.attn;
      cols_only.mlp = sm.mlp;
      apply_smoothing(cfg_, cols_only, wp, nullptr, nullptr);
      have_smooth_[size_t(i)] = true;
      for (int k = 0; k < 2; ++k)  // reciprocals as ScaledInputLinear computes them, for layer_pass
        for (float v : k == 0 ? sm.attn : sm.mlp) smooth_inv_[size_t(i)][size_t(k)].push_back(1.0f / v);
      if (!opt_.quiet)
        std::fprintf(stderr, "\nlayer %d smoothing alpha: qkv %g, o %g, gate_up %g, down %g\n", i, sm.alpha[0],
                     sm.alpha[1], sm.alpha[2], sm.alpha[3]);
    } else {
      apply_smoothing(cfg_, sm, wp, nullptr, nullptr);
    }
    for (LinearId l : kLinears) W[size_t(l)] = std::make_shared<const std::vector<float>>(std::move(w[size_t(l)]));
  }

  // The column order of GPTQ (act-order uses static groups, so the layout is unchanged), on top
  // of `g`'s other settings (the mosaic base keeps its clip search).
  GptqOptions ordered(GptqOptions g = {}) const {
    g.act_order = opt_.act_order;
    g.static_groups = opt_.act_order;
    g.scale.grid = opt_.grid;
    g.scale.int_scale_grid = opt_.int_scales;
    timed_gptq_.inner = opt_.accel ? opt_.accel->gptq() : nullptr;
    g.accel = &timed_gptq_;
    return g;
  }

  MosaicOptions mosaic_options(int group) const {
    MosaicOptions m;
    m.base = BaseMethod::kGptq;
    m.group = group;
    m.symmetric = opt_.symmetric;
    m.block_rows = opt_.block_rows;
    m.block_cols = opt_.block_cols;
    m.budget = opt_.budget;
    m.scorer = opt_.scorer;
    m.gptq = ordered(m.gptq);
    m.rtn.grid = opt_.grid;
    m.rtn.int_scale_grid = opt_.int_scales;
    return m;
  }

  // count >= 0: keep exactly that many residual blocks (global allocation), else the budget.
  PackedLinear quantize_one(const std::vector<float>& W, Shape2 s, const std::vector<float>& H,
                            const std::string& name, int64_t count, int group) {
    PackedLinear p = quantize_free(W, s, H, name, count, group);
    if (opt_.int_scales) snap_to_int_scale_grid(p);
    return p;
  }
  PackedLinear quantize_free(const std::vector<float>& W, Shape2 s, const std::vector<float>& H,
                             const std::string& name, int64_t count, int group) {
    try {
      switch (opt_.method) {
        case QuantMethod::kRtn: {
          ScaleOptions so;
          so.grid = opt_.grid;
          so.int_scale_grid = opt_.int_scales;
          return quantize_rtn(W, s.N, s.K, group, opt_.symmetric, so);
        }
        case QuantMethod::kGptq: return quantize_gptq(W, s.N, s.K, H, group, opt_.symmetric, ordered());
        case QuantMethod::kMosaic: {
          MosaicOptions m = mosaic_options(group);
          m.num_blocks = count;
          if (opt_.row_cap < 1.0) m.row_cap = row_cap_blocks(opt_.row_cap, s.K / opt_.block_cols);
          return quantize_mosaic(W, s.N, s.K, H, m);
        }
      }
    } catch (const Error& e) {
      fail(name, ": ", e.what());
    }
    fail(name, ": unknown method");
  }

  // GPTQ's solves (on the accelerator, or the CPU's) timed: the part of the quantize phase that is
  // not block scoring / selection / packing on the host.
  struct TimedGptq : GptqAccelerator {
    GptqAccelerator* inner = nullptr;
    double seconds = 0;
    void solve(GptqSolve& s) override {
      const auto t0 = std::chrono::steady_clock::now();
      if (inner)
        inner->solve(s);
      else
        gptq_solve_cpu(s);
      seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
  };
  mutable TimedGptq timed_gptq_;

  const Checkpoint& ckpt_;
  const ModelConfig& cfg_;
  const ModelQuantOptions& opt_;
  const std::vector<std::vector<int32_t>>& calib_;
  std::vector<int64_t> counts_;  // global allocation: blocks per linear (layer * 7 + id); empty: per layer
  std::vector<LayerSmoothing> smooth_;  // per layer, once chosen
  std::vector<bool> have_smooth_;
  std::vector<std::array<std::vector<float>, 2>> smooth_inv_;  // per layer: 1 / attn, 1 / mlp scales
};

void check_options(const ModelQuantOptions& o) {
  MOSAIC_CHECK(o.group > 0, "group size must be positive, got ", o.group);
  MOSAIC_CHECK(!(o.quantize_lm_head && o.lm_head_int8), "--lm-head and --lm-head-int8 are mutually exclusive: the ",
               "LM head is either 4-bit MosaicQuant (--lm-head) or 8-bit per row (--lm-head-int8)");
  // A packed head would be loaded like a decoder linear, whose input act_bits < 16 quantizes. (The int8
  // head may: it loads as a dense linear, whose input no engine quantizes.)
  MOSAIC_CHECK(!o.quantize_lm_head || o.act_bits == 16, "--lm-head quantizes the head's weights only; it cannot be ",
               "combined with --act-bits ", o.act_bits);
  // The engines run q/k/v and gate/up as one fused GEMM each (one group size per fused layer).
  MOSAIC_CHECK(linear_group(o, LinearId::Q) == linear_group(o, LinearId::K) &&
                   linear_group(o, LinearId::Q) == linear_group(o, LinearId::V),
               "--group-for: q_proj, k_proj and v_proj must share a group size (the engines fuse them), got ",
               linear_group(o, LinearId::Q), ", ", linear_group(o, LinearId::K), ", ", linear_group(o, LinearId::V));
  MOSAIC_CHECK(linear_group(o, LinearId::Gate) == linear_group(o, LinearId::Up),
               "--group-for: gate_proj and up_proj must share a group size (the engines fuse them), got ",
               linear_group(o, LinearId::Gate), ", ", linear_group(o, LinearId::Up));
  for (const auto& [pattern, g] : o.group_for) {
    MOSAIC_CHECK(g > 0, "--group-for ", pattern, "=", g, ": group size must be positive");
    bool any = false;
    for (LinearId id : kLinears) any |= std::string(linear_name(id)).find(pattern) != std::string::npos;
    MOSAIC_CHECK(!pattern.empty() && any, "--group-for '", pattern, "' matches no linear (names: self_attn.q_proj, ",
                 "self_attn.k_proj, self_attn.v_proj, self_attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)");
  }
  MOSAIC_CHECK(std::isfinite(o.budget) && o.budget >= 0 && o.budget <= 1, "residual budget ", o.budget,
               " is out of range [0, 1] (a fraction of blocks, e.g. 0.1)");
  MOSAIC_CHECK(o.block_rows > 0 && o.block_cols > 0 && o.block_cols % 2 == 0, "residual block ", o.block_rows, "x",
               o.block_cols, " is invalid (both positive, columns even)");
  MOSAIC_CHECK(!o.int_scales || (o.symmetric && o.grid.empty()), "--int-scales needs the symmetric uniform base ",
               "(no --asym, no --grid nl4): the INT8 weights are m (q - 8)");
  MOSAIC_CHECK(std::isfinite(o.alloc_exponent) && o.alloc_exponent >= 0 && o.alloc_exponent <= 2, "--alloc-exponent ",
               o.alloc_exponent, " is out of range [0, 2] (the power of each linear's output energy dividing its "
               "block scores under global allocation)");
  MOSAIC_CHECK(std::isfinite(o.row_cap) && o.row_cap > 0 && o.row_cap <= 1, "--row-cap ", o.row_cap,
               " is out of range (0, 1] (the most residual blocks a block row keeps, as a fraction of its block "
               "columns; 1 = no cap)");
  check_act_quant(ActQuant{o.act_bits, o.act_format});
  MOSAIC_CHECK(!o.smooth || o.method != QuantMethod::kRtn,
               "smoothing needs calibration activations: use --method gptq or mosaic, or --smooth-alpha none");
  MOSAIC_CHECK(!o.smooth || o.smooth_alpha < 0 || o.smooth_alpha <= 1, "smoothing alpha ", o.smooth_alpha,
               " is out of range [0, 1]");
  MOSAIC_CHECK(!o.smooth || o.smooth_alpha >= 0 || !o.smooth_grid.empty(), "smoothing: empty alpha grid");
  for (double a : o.smooth_grid) MOSAIC_CHECK(a >= 0 && a <= 1, "smoothing grid alpha ", a, " is out of range [0, 1]");
}

}  // namespace

void check_quantize_inputs(const fs::path& model_dir, const fs::path& out, const ModelQuantOptions& opt) {
  check_options(opt);
  const ModelConfig cfg = ModelConfig::load(model_dir);
  MOSAIC_CHECK(cfg.quantization_config.is_null(), model_dir.string(),
               " is already quantized (config.json has a quantization_config)");
  const Checkpoint ckpt = Checkpoint::open(model_dir);
  check_tensor_names(ckpt, cfg);
  check_shapes(ckpt, cfg, opt);
  MOSAIC_CHECK(opt.force || !fs::exists(out), "output '", out.string(), "' already exists (use --force to replace it)");
}

ModelQuantReport quantize_model(const fs::path& model_dir, const fs::path& out,
                                const std::vector<std::vector<int32_t>>& calib, const ModelQuantOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  check_quantize_inputs(model_dir, out, opt);
  const ModelConfig cfg0 = ModelConfig::load(model_dir);
  if (opt.method != QuantMethod::kRtn) {
    MOSAIC_CHECK(!calib.empty(), "method ", quant_method_name(opt.method), " needs calibration windows");
    for (const auto& w : calib) {
      MOSAIC_CHECK(!w.empty() && w.size() == calib[0].size(), "calibration windows must all have the same length > 0");
      for (int32_t t : w)
        MOSAIC_CHECK(t >= 0 && t < cfg0.vocab_size, "calibration token id ", t, " is outside the vocabulary of ",
                     cfg0.vocab_size);
    }
  }
  const fs::path target = fs::absolute(out).lexically_normal();
  MOSAIC_CHECK(!target.filename().empty(), "output directory '", out.string(), "' has no name");
  MOSAIC_CHECK(opt.force || !fs::exists(target), "output '", target.string(),
               "' already exists (use --force to replace it)");
  MOSAIC_CHECK(fs::weakly_canonical(target) != fs::weakly_canonical(model_dir), "output is the model directory");
  const fs::path partial = target.string() + ".partial";
  fs::remove_all(partial);  // a previous interrupted run's leftovers
  fs::create_directories(partial);
  // With a rotation, the quantizer reads the rotated FP32 model from a scratch directory next to
  // the output (written layer by layer, removed at the end): everything below sees only it.
  const fs::path rotated = target.string() + ".rotated";
  fs::remove_all(rotated);

  ModelQuantReport rep;
  try {
    if (opt.rotation.kind != RotationKind::kNone) {
      const auto tr = std::chrono::steady_clock::now();
      rep.rotation = rotate_checkpoint(model_dir, rotated, opt.rotation, opt.quiet);
      if (!opt.quiet)
        std::fprintf(stderr, "rotation %s (%s): %.1f s\n", rotation_name(opt.rotation.kind),
                     rep.rotation["r1"].get<std::string>().c_str(),
                     std::chrono::duration<double>(std::chrono::steady_clock::now() - tr).count());
    }
    const fs::path source = opt.rotation.kind != RotationKind::kNone ? rotated : fs::path(model_dir);
    {
      const ModelConfig cfg = ModelConfig::load(source);
      const Checkpoint ckpt = Checkpoint::open(source);
      // 2 GiB shards: the writer holds one shard in memory (part of the 8B-in-24-GiB budget).
      ShardedWriter w(partial, size_t(2) << 30);
      w.set_metadata("format", "pt");
      w.set_metadata("quant_method", "mosaicquant");
      Quantizer(ckpt, cfg, opt, calib).run(w, rep);
      w.finish();
    }
    fs::remove_all(rotated);
    // The rotated model's config: tie_word_embeddings false (lm_head has the final norm folded in);
    // so is a quantized LM head's (a packed or int8 lm_head of its own; the embedding stays F16).
    nlohmann::json config = cfg0.raw;
    if (opt.rotation.kind != RotationKind::kNone || opt.quantize_lm_head || opt.lm_head_int8)
      config["tie_word_embeddings"] = false;
    config["quantization_config"] = quantization_config(opt, rep);
    config["torch_dtype"] = "float16";  // the non-linear tensors are written as FP16
    write_file_atomic(partial / "config.json", config.dump(2) + "\n");
    for (const char* f : {"tokenizer.json", "tokenizer_config.json", "generation_config.json",
                          "special_tokens_map.json"}) {
      const fs::path src = model_dir / f;
      if (fs::is_regular_file(src)) fs::copy_file(src, partial / f);
    }
    if (fs::exists(target)) fs::remove_all(target);  // --force
    fs::rename(partial, target);
  } catch (...) {
    std::error_code ec;
    fs::remove_all(partial, ec);
    fs::remove_all(rotated, ec);
    throw;
  }
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  rep.peak_rss = peak_rss_bytes();
  if (opt.accel) {
    rep.device = opt.accel->describe();
    rep.peak_device_bytes = opt.accel->peak_device_bytes();
  }
  return rep;
}

}  // namespace mosaic
