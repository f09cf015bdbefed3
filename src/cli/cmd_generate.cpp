// mosaic generate: text continuation with the CPU engine (or the GPU engine, --device). The prompt is encoded with the model's
// tokenizer.json (no special tokens added unless --chat or --bos), prefilled in one pass, then
// tokens are decoded one at a time from the KV cache and streamed to stdout as they come.
// Speeds go to stderr at the end.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>

#include "cli/commands.h"
#include "cli/context_check.h"
#include "cli/device.h"
#include "model/model.h"
#include "model/sampler.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"
#include "util/progress.h"
#ifdef MOSAIC_HAS_GPU_ENGINE
#include "gpu/engine.h"
#endif

namespace mosaic::cli {

namespace {

struct GenerateOptions {
  std::string model;
  std::string tokenizer;  // default: the model directory
  std::string prompt;
  int n = 64;
  float temperature = 0.0f;
  float top_p = 1.0f;
  uint64_t seed = 0;
  bool chat = false;
  std::string system;
  bool bos = false;
  int64_t ctx = 0;
  bool quiet = false;
  std::string device = "auto";
  std::string act;  // GPU activation dtype (fp16 | bf16), default from the checkpoint
};

bool has_token(const Tokenizer& tok, const char* s) { return tok.token_to_id(s).has_value(); }

// The chat layouts of the supported families (what their tokenizer_config.json chat_template
// renders for one user turn with add_generation_prompt): ChatML for SmolLM2 / Qwen3, the
// header format for LLaMA-3.
std::string chat_prompt(const Tokenizer& tok, const std::string& system, const std::string& user) {
  if (has_token(tok, "<|im_start|>")) {
    std::string s;
    if (!system.empty()) s += "<|im_start|>system\n" + system + "<|im_end|>\n";
    return s + "<|im_start|>user\n" + user + "<|im_end|>\n<|im_start|>assistant\n";
  }
  if (has_token(tok, "<|start_header_id|>")) {
    std::string s = "<|begin_of_text|>";
    if (!system.empty()) s += "<|start_header_id|>system<|end_header_id|>\n\n" + system + "<|eot_id|>";
    return s + "<|start_header_id|>user<|end_header_id|>\n\n" + user +
           "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";
  }
  fail("--chat: the tokenizer has neither ChatML (<|im_start|>) nor LLaMA-3 (<|start_header_id|>) tokens");
}

void run_generate(const GenerateOptions& o) {
  MOSAIC_CHECK(o.n >= 0, "-n must be >= 0, got ", o.n);
  const bool cuda = use_cuda(o.device, o.model);
  MOSAIC_CHECK(o.act.empty() || cuda, "--act applies to the GPU engine (--device cuda)");
  const Tokenizer tok = Tokenizer::load(o.tokenizer.empty() ? o.model : o.tokenizer);  // fail fast, before the weights
  std::unique_ptr<Model> cpu_model;
  ModelConfig cfg;
  if (!cuda) {
    LoadOptions lo;
    lo.quiet = o.quiet;
    cpu_model = std::make_unique<Model>(Model::load(o.model, lo));
    cfg = cpu_model->config();
  } else {
    cfg = ModelConfig::load(o.model);
  }

  std::vector<int32_t> ids;
  if (o.bos && !o.chat) {
    MOSAIC_CHECK(cfg.bos_token_id.has_value(), "--bos: config.json has no bos_token_id");
    ids.push_back(*cfg.bos_token_id);
  }
  const std::vector<int32_t> p = tok.encode(o.chat ? chat_prompt(tok, o.system, o.prompt) : o.prompt);
  ids.insert(ids.end(), p.begin(), p.end());
  MOSAIC_CHECK(!ids.empty(), "the prompt is empty (it encodes to no tokens)");
  const int64_t ctx = o.ctx > 0 ? o.ctx : cfg.max_position_embeddings;
  warn_if_untrained_context(ctx, cfg);
  MOSAIC_CHECK(int64_t(ids.size()) <= ctx, "the prompt has ", ids.size(), " tokens, longer than the context of ", ctx,
               " tokens");
  const int64_t capacity = std::min<int64_t>(ctx, int64_t(ids.size()) + o.n);

  // Stop tokens: the config's eos and the end-of-turn tokens of the families.
  std::vector<int32_t> stop;
  if (cfg.eos_token_id) stop.push_back(*cfg.eos_token_id);
  for (const char* s : {"<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>"})
    if (auto id = tok.token_to_id(s)) stop.push_back(*id);
  auto is_stop = [&](int32_t id) { return std::find(stop.begin(), stop.end(), id) != stop.end(); };

  Sampler sampler({o.temperature, o.top_p, o.seed});
  const int64_t V = cfg.vocab_size;
  std::vector<float> logits(static_cast<size_t>(V));
  // The engine: prefill the prompt (logits of its last token), then one token at a time.
  KVCache cache;
  if (cpu_model) cache = cpu_model->make_cache(capacity);
  std::function<void()> prefill;
  std::function<void(int32_t)> step;
  std::function<bool()> full;
  if (cpu_model) {
    prefill = [&] { cpu_model->forward(ids.data(), int64_t(ids.size()), cache, logits.data(), Model::Logits::Last); };
    step = [&](int32_t t) { cpu_model->forward(&t, 1, cache, logits.data(), Model::Logits::Last); };
    full = [&] { return cache.length >= cache.capacity; };
  }
#ifdef MOSAIC_HAS_GPU_ENGINE
  // GPU: the same loop; logits come back to the host each step so sampling is the CPU Sampler's
  // (greedy, or temperature / top-p with the same seeded generator).
  std::unique_ptr<gpu::GpuModel> gpu_model;
  if (cuda) {
    gpu::GpuOptions go;
    go.capacity = capacity;
    go.quiet = o.quiet;
    if (!o.act.empty()) go.act = gpu::parse_act(o.act);
    gpu_model = std::make_unique<gpu::GpuModel>(gpu::GpuModel::load(o.model, go));
    prefill = [&] { gpu_model->forward(0, ids.data(), int64_t(ids.size()), logits.data(), gpu::GpuModel::Logits::Last); };
    step = [&](int32_t t) { gpu_model->decode(&t, 1, logits.data(), nullptr); };
    full = [&] { return gpu_model->length(0) >= gpu_model->capacity(); };
  }
#endif

  if (!o.chat) {  // echo the prompt, then stream the continuation after it
    std::fwrite(o.prompt.data(), 1, o.prompt.size(), stdout);
    std::fflush(stdout);
  }
  const auto t0 = std::chrono::steady_clock::now();
  prefill();
  const auto t1 = std::chrono::steady_clock::now();

  // Stream by decoding everything generated so far and printing the new bytes: byte-level BPE
  // decoding is a concatenation, so the printed prefix never changes and split UTF-8 sequences
  // complete on a later token.
  std::vector<int32_t> out;
  size_t printed = 0;
  int64_t generated = 0;
  std::string stop_reason = "length";
  for (int i = 0; i < o.n; ++i) {
    const int32_t next = sampler.sample(logits.data(), V);
    ++generated;
    if (is_stop(next)) {
      stop_reason = "end of text";
      break;
    }
    out.push_back(next);
    const std::string text = tok.decode(out, /*skip_special=*/false);
    if (text.size() > printed) {
      std::fwrite(text.data() + printed, 1, text.size() - printed, stdout);
      std::fflush(stdout);
      printed = text.size();
    }
    if (i + 1 == o.n) break;
    if (full()) {
      stop_reason = "context full";
      break;
    }
    step(next);
  }
  const auto t2 = std::chrono::steady_clock::now();
  std::fputc('\n', stdout);
  std::fflush(stdout);
  const double pre_s = std::chrono::duration<double>(t1 - t0).count();
  const double dec_s = std::chrono::duration<double>(t2 - t1).count();
#ifdef MOSAIC_HAS_GPU_ENGINE
  if (gpu_model && !o.quiet) {
    const gpu::GpuMemory mem = gpu_model->memory();
    std::fprintf(stderr, "GPU memory: weights %s, KV cache %s, peak in use %s\n", format_bytes(int64_t(mem.weights)).c_str(),
                 format_bytes(int64_t(mem.kv_cache)).c_str(), format_bytes(int64_t(mem.peak_used)).c_str());
  }
#endif
  if (!o.quiet)
    std::fprintf(stderr, "prompt: %zu tokens in %.2f s (%.1f tok/s); generated: %lld tokens in %.2f s (%.1f tok/s); stop: %s\n",
                 ids.size(), pre_s, double(ids.size()) / pre_s, (long long)generated, dec_s,
                 dec_s > 0 ? double(generated) / dec_s : 0.0, stop_reason.c_str());
}

}  // namespace

void add_generate_command(CLI::App& app) {
  auto o = std::make_shared<GenerateOptions>();
  auto* cmd = app.add_subcommand(
      "generate",
      "Generate text from a prompt with the CPU or GPU engine (--device): greedy by default, or temperature / top-p "
      "sampling with a seed. The continuation streams to stdout; speeds go to stderr.");
  cmd->add_option("--model", o->model, "model directory (config.json, *.safetensors, tokenizer.json)")->required();
  cmd->add_option("--tokenizer", o->tokenizer, "tokenizer.json or a directory holding one (default: the model directory)");
  cmd->add_option("--prompt", o->prompt, "prompt text (encoded with no special tokens added)")->required();
  cmd->add_option("-n,--max-tokens", o->n, "number of tokens to generate (stops early at end-of-text)")
      ->capture_default_str();
  cmd->add_option("--temperature", o->temperature, "sampling temperature; 0 = greedy")->capture_default_str();
  cmd->add_option("--top-p", o->top_p, "nucleus sampling: keep the most likely tokens up to this mass, in (0, 1]")
      ->capture_default_str();
  cmd->add_option("--seed", o->seed, "random seed for sampling")->capture_default_str();
  cmd->add_flag("--chat", o->chat,
                "wrap the prompt as one user turn of the model's chat format (ChatML for SmolLM2/Qwen3, "
                "header format for LLaMA-3) and stop at end of turn");
  cmd->add_option("--system", o->system, "system message for --chat");
  cmd->add_flag("--bos", o->bos, "prepend the config's bos_token_id (without --chat)");
  cmd->add_option("--ctx", o->ctx, "context length (default: max_position_embeddings)");
  cmd->add_flag("-q,--quiet", o->quiet, "no load report or speeds on stderr");
  cmd->add_option("--device", o->device, kDeviceHelp)->capture_default_str();
  cmd->add_option("--act", o->act, "GPU activation dtype: fp16 or bf16 (default: bf16 for bf16 checkpoints, else fp16)");
  cmd->callback([o] { run_generate(*o); });
}

}  // namespace mosaic::cli
