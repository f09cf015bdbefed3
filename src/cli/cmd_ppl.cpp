// mosaic ppl: perplexity of a model on a text file (WikiText-2 style evaluation).
// The whole file is tokenized as one text, with no special tokens added (no BOS: the same ids as
// `mosaic tokenize --json` and as Hugging Face `tokenizer(text, add_special_tokens=False)`), cut
// into floor(N / ctx) non-overlapping windows of ctx tokens; every token of a window but the
// first is scored; ppl = exp(mean NLL). See src/model/perplexity.h.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/context_check.h"
#include "cli/device.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "model/ops.h"
#include "model/parallel.h"
#include "model/perplexity.h"
#include "tokenizer/tokenizer.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/progress.h"
#ifdef MOSAIC_HAS_GPU_ENGINE
#include "gpu/engine.h"
#include "gpu/perplexity_gpu.h"
#endif

namespace mosaic::cli {

namespace {

struct PplOptions {
  std::string model;
  std::string tokenizer;  // default: the model directory
  std::string text_file;
  int64_t ctx = 2048;
  int64_t max_windows = 0;
  bool json = false;
  std::string logits_out;
  std::string kl_base;  // reference model for KL(base || model)
  bool quiet = false;
  std::string device = "auto";
  std::string act;  // GPU activation dtype (fp16 | bf16)
};

void run_ppl(const PplOptions& o) {
  const auto t_start = std::chrono::steady_clock::now();
  const bool cuda = use_cuda(o.device, o.model);
  MOSAIC_CHECK(o.act.empty() || cuda, "--act applies to the GPU engine (--device cuda)");
  const Tokenizer tok = Tokenizer::load(o.tokenizer.empty() ? o.model : o.tokenizer);  // fail fast, before the weights
  warn_if_untrained_context(o.ctx, ModelConfig::load(o.model));
  LoadOptions lo;
  lo.quiet = o.quiet;
  // The model runs on the CPU engine or, with --device cuda, on the GPU engine (same protocol).
  std::unique_ptr<Model> cpu_model;
  if (!cuda) cpu_model = std::make_unique<Model>(Model::load(o.model, lo));
#ifdef MOSAIC_HAS_GPU_ENGINE
  std::unique_ptr<gpu::GpuModel> gpu_model;
  if (cuda) {
    gpu::GpuOptions go;
    go.capacity = o.ctx;
    go.logits_rows = PerplexityOptions{}.logits_rows_per_block;
    go.quiet = o.quiet;
    if (!o.act.empty()) go.act = gpu::parse_act(o.act);
    gpu_model = std::make_unique<gpu::GpuModel>(gpu::GpuModel::load(o.model, go));
  }
#endif
  const std::string text = read_file(o.text_file);
  const auto t_tok = std::chrono::steady_clock::now();
  const std::vector<int32_t> ids = tok.encode(text);
  const double tok_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_tok).count();

  PerplexityOptions po;
  po.ctx = o.ctx;
  po.max_windows = o.max_windows;
  const int64_t windows = perplexity_windows(int64_t(ids.size()), po);
  if (!o.quiet)
    std::fprintf(stderr, "%s: %zu tokens (tokenized in %.1f s); %lld windows of %lld tokens\n", o.text_file.c_str(),
                 ids.size(), tok_s, (long long)windows, (long long)o.ctx);

  // --logits-out: keep the first window's logits, written as safetensors at the end.
  std::vector<float> first_logits;
  const int64_t V = cpu_model ? cpu_model->vocab_size() : ModelConfig::load(o.model).vocab_size;
  if (!o.logits_out.empty()) {
    first_logits.resize(size_t(o.ctx * V));
    po.on_logits = [&](int64_t w, int64_t r0, const float* logits, int64_t rows) {
      if (w == 0) std::copy(logits, logits + rows * V, first_logits.begin() + r0 * V);
    };
  }
  // --kl-base: the reference model runs each window too; per scored row (rows 0..ctx-2, the ones
  // with a target) KL(P_base || P_model) = sum_v p_v (log p_v - log q_v), accumulated in fp64.
  std::unique_ptr<Model> base;
  std::vector<float> base_hidden, base_logits;
  std::vector<double> kl_rows, base_nll_rows;
  double kl_sum = 0, base_nll = 0;  // base_nll: the base model's own NLL on the same tokens
  int64_t kl_count = 0;
  if (!o.kl_base.empty()) {
    base = std::make_unique<Model>(Model::load(o.kl_base, lo));
    MOSAIC_CHECK(base->vocab_size() == V, "--kl-base model has vocabulary ", base->vocab_size(), ", the model ", V);
    base_hidden.resize(size_t(o.ctx * base->hidden_size()));
    base_logits.resize(size_t(po.logits_rows_per_block * V));
    kl_rows.resize(size_t(po.logits_rows_per_block));
    base_nll_rows.resize(size_t(po.logits_rows_per_block));
    auto prev = po.on_logits;
    po.on_logits = [&, prev](int64_t w, int64_t r0, const float* logits, int64_t rows) {
      if (prev) prev(w, r0, logits, rows);
      const int64_t Db = base->hidden_size();
      if (r0 == 0) {
        KVCache cache = base->make_cache(o.ctx);
        base->forward_hidden(ids.data() + w * o.ctx, o.ctx, cache, base_hidden.data());
      }
      base->lm_head(base_hidden.data() + r0 * Db, rows, base_logits.data());
      parallel_for(rows, V * 8, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          const float* p = base_logits.data() + i * V;
          const float* q = logits + i * V;
          const double lp0 = ops::logsumexp(p, V), lq0 = ops::logsumexp(q, V);
          double kl = 0;
          for (int64_t v = 0; v < V; ++v) {
            const double lp = double(p[v]) - lp0;
            kl += std::exp(lp) * (lp - (double(q[v]) - lq0));
          }
          kl_rows[size_t(i)] = kl;
          const int64_t r = r0 + i;
          base_nll_rows[size_t(i)] = r + 1 < o.ctx ? lp0 - double(p[ids[size_t(w * o.ctx + r + 1)]]) : 0.0;
        }
      });
      for (int64_t i = 0; i < rows; ++i)
        if (r0 + i + 1 < o.ctx) {
          kl_sum += kl_rows[size_t(i)];
          base_nll += base_nll_rows[size_t(i)];
          ++kl_count;
        }
    };
  }
  Progress progress("ppl", windows, o.quiet);
  po.on_window = [&](const PerplexityStats& s) {
    char buf[128];
    std::snprintf(buf, sizeof buf, "%.0f tok/s, ppl %.4f", s.tokens_per_s(), s.ppl());
    progress.update(s.windows, buf);
  };
  PerplexityStats st;
  double load_seconds = 0;
  if (cpu_model) {
    st = evaluate_perplexity(*cpu_model, ids, po);
    load_seconds = cpu_model->load_report().seconds;
  }
#ifdef MOSAIC_HAS_GPU_ENGINE
  if (gpu_model) {
    st = gpu::evaluate_perplexity_gpu(*gpu_model, ids, po);
    load_seconds = gpu_model->load_report().seconds;
  }
#endif
  char buf[160];
  std::snprintf(buf, sizeof buf, "%.0f tok/s, peak RSS %s", st.tokens_per_s(), format_bytes(peak_rss_bytes()).c_str());
  progress.finish(buf);

  if (!o.logits_out.empty()) {
    SafetensorsWriter w;
    w.add_f32("logits", {o.ctx, V}, first_logits.data());
    w.add("tokens", DType::I32, {o.ctx},
          std::string(reinterpret_cast<const char*>(ids.data()), size_t(o.ctx) * sizeof(int32_t)));
    w.set_metadata("model", o.model);
    w.set_metadata("text_file", o.text_file);
    w.write(o.logits_out);
    if (!o.quiet) std::fprintf(stderr, "wrote the first window's logits [%lld, %lld] to %s\n", (long long)o.ctx,
                               (long long)V, o.logits_out.c_str());
  }

  const double total_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  if (o.json) {
    nlohmann::json j = {{"model", o.model},
                        {"text_file", o.text_file},
                        {"ppl", st.ppl()},
                        {"nll_mean", st.nll_sum / double(st.tokens_scored)},
                        {"tokens", st.tokens_scored},
                        {"text_tokens", ids.size()},
                        {"windows", st.windows},
                        {"ctx", o.ctx},
                        {"seconds", st.seconds},
                        {"total_seconds", total_s},
                        {"tokens_per_s", st.tokens_per_s()},
                        {"load_seconds", load_seconds},
                        {"peak_rss_bytes", peak_rss_bytes()}};
    if (base) {
      j["kl_div"] = kl_sum / double(kl_count);
      j["kl_base"] = o.kl_base;
      j["base_ppl"] = std::exp(base_nll / double(kl_count));
    }
    if (cuda) j["device"] = "cuda";
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("ppl %.4f over %lld tokens (%lld windows of %lld), %.1f s (%.0f tok/s)\n", st.ppl(),
                (long long)st.tokens_scored, (long long)st.windows, (long long)o.ctx, st.seconds, st.tokens_per_s());
    if (base)
      std::printf("KL(base || model) %.6f nats per token; base ppl %.4f (base %s)\n", kl_sum / double(kl_count),
                  std::exp(base_nll / double(kl_count)), o.kl_base.c_str());
  }
}

}  // namespace

void add_ppl_command(CLI::App& app) {
  auto o = std::make_shared<PplOptions>();
  auto* cmd = app.add_subcommand(
      "ppl",
      "Perplexity of a model on a text file. The whole file is tokenized as one text with no special "
      "tokens added (no BOS), cut into floor(N/ctx) non-overlapping windows of ctx tokens, each run as one "
      "prefill from an empty cache; every token of a window except the first is scored; ppl = exp(mean "
      "NLL), log-softmax accumulated in fp64.");
  cmd->add_option("--model", o->model, "model directory (config.json, *.safetensors, tokenizer.json)")->required();
  cmd->add_option("--tokenizer", o->tokenizer, "tokenizer.json or a directory holding one (default: the model directory)");
  cmd->add_option("--text-file", o->text_file, "text to evaluate, e.g. wikitext-2-raw/wiki.test.raw")->required();
  cmd->add_option("--ctx", o->ctx, "window length in tokens")->capture_default_str();
  cmd->add_option("--max-windows", o->max_windows, "evaluate only the first N windows (0: all)")->capture_default_str();
  cmd->add_flag("--json", o->json,
                "print one JSON object: ppl, nll_mean, tokens (scored), text_tokens, windows, ctx, seconds, "
                "tokens_per_s, model, ...");
  cmd->add_option("--logits-out", o->logits_out,
                  "write the first window's logits to this safetensors file: 'logits' F32 [ctx, vocab] and "
                  "'tokens' I32 [ctx], for comparison with other implementations");
  cmd->add_option("--kl-base", o->kl_base,
                  "reference model directory (e.g. the FP16 original): also report the mean KL(base || model) "
                  "per scored token (json: kl_div) and the base's own ppl (base_ppl), on the same windows");
  cmd->add_flag("-q,--quiet", o->quiet, "no progress or load report on stderr");
  cmd->add_option("--device", o->device, kDeviceHelp)->capture_default_str();
  cmd->add_option("--act", o->act, "GPU activation dtype: fp16 or bf16 (default: bf16 for bf16 checkpoints, else fp16)");
  cmd->callback([o] { run_ppl(*o); });
}

}  // namespace mosaic::cli
