#include "gpu/bench_e2e.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <functional>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "gpu/device.h"
#include "gpu/engine.h"
#include "util/error.h"

namespace mosaic::gpu {

namespace {

nlohmann::json hf(const char* arch, int hidden, int inter, int layers, int heads, int kv, int head_dim, int vocab,
                  int max_pos, double theta, double eps, bool tie) {
  return {{"architectures", {arch}},
          {"hidden_size", hidden},
          {"intermediate_size", inter},
          {"num_hidden_layers", layers},
          {"num_attention_heads", heads},
          {"num_key_value_heads", kv},
          {"head_dim", head_dim},
          {"vocab_size", vocab},
          {"max_position_embeddings", max_pos},
          {"rope_theta", theta},
          {"rms_norm_eps", eps},
          {"tie_word_embeddings", tie},
          {"hidden_act", "silu"},
          {"attention_bias", false},
          {"torch_dtype", "bfloat16"}};
}

std::string today() {
  const std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d", std::gmtime(&t));
  return buf;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// The profile's variants (skip masks) timed in `rounds` interleaved rounds, after one untimed warm-up pass, and
// the median of each. Timed once each, in a row (until the twenty-seventh session), the step timed first read 2.40
// ms where the same call's decode rounds gave 2.29, and a variant that leaves nothing out of a W4A16 step read
// 0.127 ms faster than it (H200, twenty-sixth session, bench/results/e2e-h200-2026-11-30-s26-profile.md).
std::vector<double> profile_rounds(int rounds, const std::vector<unsigned>& masks,
                                   const std::function<double(unsigned)>& time_one) {
  for (unsigned m : masks) time_one(m);
  std::vector<std::vector<double>> t(masks.size());
  for (int r = 0; r < rounds; ++r)
    for (size_t i = 0; i < masks.size(); ++i) t[i].push_back(time_one(masks[i]));
  std::vector<double> out;
  for (auto& v : t) out.push_back(median(v));
  return out;
}

}  // namespace

ModelConfig builtin_config(const std::string& name) {
  nlohmann::json j;
  if (name == "llama3-8b")
    j = hf("LlamaForCausalLM", 4096, 14336, 32, 32, 8, 128, 128256, 8192, 500000.0, 1e-5, false);
  else if (name == "llama3-70b")
    j = hf("LlamaForCausalLM", 8192, 28672, 80, 64, 8, 128, 128256, 8192, 500000.0, 1e-5, false);
  else if (name == "qwen3-8b")
    j = hf("Qwen3ForCausalLM", 4096, 12288, 36, 32, 8, 128, 151936, 40960, 1000000.0, 1e-6, false);
  else if (name == "qwen3-0.6b")
    j = hf("Qwen3ForCausalLM", 1024, 3072, 28, 16, 8, 128, 151936, 40960, 1000000.0, 1e-6, true);
  else if (name == "smollm2-135m")
    j = hf("LlamaForCausalLM", 576, 1536, 30, 9, 3, 64, 49152, 8192, 100000.0, 1e-5, true);
  else
    fail("bench e2e: unknown --config '", name, "' (built in: llama3-8b, llama3-70b, qwen3-8b, qwen3-0.6b, smollm2-135m)");
  if (name.rfind("qwen3", 0) == 0) j["model_type"] = "qwen3";
  return ModelConfig::from_json(j, "built-in config " + name);
}

std::vector<std::string> builtin_config_names() { return {"llama3-8b", "llama3-70b", "qwen3-8b", "qwen3-0.6b", "smollm2-135m"}; }

double measure_copy_bandwidth() {
  const size_t bytes = size_t(1) << 30;
  DevBuf a(bytes, "bandwidth test"), b(bytes, "bandwidth test");
  check_cuda(cudaMemset(a.get(), 1, bytes), "cudaMemset");
  cudaEvent_t e0, e1;
  check_cuda(cudaEventCreate(&e0), "cudaEventCreate");
  check_cuda(cudaEventCreate(&e1), "cudaEventCreate");
  std::vector<double> bw;
  for (int i = 0; i < 12; ++i) {
    check_cuda(cudaEventRecord(e0), "cudaEventRecord");
    check_cuda(cudaMemcpyAsync(b.get(), a.get(), bytes, cudaMemcpyDeviceToDevice), "cudaMemcpy");
    check_cuda(cudaEventRecord(e1), "cudaEventRecord");
    check_cuda(cudaEventSynchronize(e1), "cudaEventSynchronize");
    float ms = 0;
    check_cuda(cudaEventElapsedTime(&ms, e0, e1), "cudaEventElapsedTime");
    if (i >= 2) bw.push_back(2.0 * double(bytes) / (double(ms) * 1e-3));
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  std::sort(bw.begin(), bw.end());
  return bw[bw.size() / 2];
}

void run_e2e_bench(const E2EOptions& o) {
  require_gpu("bench e2e times the GPU engine and needs that GPU (on the CPU: mosaic ppl / generate --device cpu)");
  MOSAIC_CHECK(!o.model_dir.empty() != (!o.config.empty() && o.random_weights),
               "bench e2e: give either --model DIR or --config NAME --random-weights");
  MOSAIC_CHECK(o.prompt >= 1 && o.gen >= 1, "bench e2e: --prompt and --gen must be >= 1");
  MOSAIC_CHECK(!o.batches.empty(), "bench e2e: empty --batch list");
  for (int b : o.batches) MOSAIC_CHECK(b >= 1 && b <= 256, "bench e2e: batch ", b, " out of range 1..256");
  MOSAIC_CHECK(o.reps >= 1 && o.reps <= 100, "bench e2e: --reps must be in 1..100");
  const int max_b = *std::max_element(o.batches.begin(), o.batches.end());
  const std::string card = device_name(), date = today();
  const double bw = measure_copy_bandwidth();
  const std::string cfg_name = o.model_dir.empty() ? o.config : o.model_dir;
  std::printf("## mosaic bench e2e: %s, %s weights, prompt %lld, gen %d, FP16 activations\n", cfg_name.c_str(),
              o.random_weights ? "random" : "checkpoint", (long long)o.prompt, o.gen);
  std::printf("%s, %s; device-to-device copy bandwidth %.0f GB/s (bytes read + written); rates: median of %d rounds%s\n\n",
              card.c_str(), date.c_str(), bw / 1e9, o.reps,
              !o.random_weights ? ""
              : o.res_profile   ? ("; random weights (timing only, outputs meaningless), residual blocks per block row drawn "
                                   "from " + o.res_profile_from + "'s rows of each kind of linear").c_str()
              : o.res_rows > 0  ? "; random weights (timing only, outputs meaningless), residual blocks concentrated on block rows"
                                : "; random weights (timing only, outputs meaningless), residual blocks spread evenly over block rows");
  std::printf("| engine | batch | prefill tok/s | decode tok/s | ms / token | peak GPU mem | weights streamed / step | BW limit tok/s | of limit |\n");
  std::printf("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  std::fflush(stdout);

  nlohmann::json rows = nlohmann::json::array();
  std::vector<std::string> engines = o.engines;
  if (!o.model_dir.empty()) engines = {"checkpoint"};
  for (const std::string& eng : engines) {
    MOSAIC_CHECK(eng == "fp16" || eng == "w4a16" || eng == "w4a16_qhead" || eng == "w4a16_head8" || eng == "w4a8" ||
                     eng == "w4a8_grid" || eng == "checkpoint",
                 "bench e2e: unknown engine '", eng, "' (fp16, w4a16, w4a16_qhead, w4a16_head8, w4a8, w4a8_grid)");
    GpuOptions go;
    go.act = Act::F16;
    go.max_batch = max_b;
    go.capacity = o.prompt + o.gen;
    go.prefill_chunk = std::min<int64_t>(o.prompt, 2048);
    go.quiet = false;
    go.w4a8_min_m = o.w4a8_min_m;
    const auto t_load = std::chrono::steady_clock::now();
    std::unique_ptr<GpuModel> m;
    std::string engine_name;
    try {
      if (!o.model_dir.empty()) {
        m = std::make_unique<GpuModel>(GpuModel::load(o.model_dir, go));
        const GpuLoadReport& r = m->load_report();
        engine_name = r.zipper_linears + r.dequant_linears == 0 ? "mosaic_fp16"
                      : r.act_bits < 16 ? "mosaic_w4a" + std::to_string(r.act_bits) + (r.act_fp8 ? "fp8" : "")
                                        : "mosaic_w4a16";
      } else {
        RandomWeights rw;
        rw.quantized = eng == "w4a16" || eng == "w4a16_qhead" || eng == "w4a16_head8" || eng == "w4a8" || eng == "w4a8_grid";
        rw.act_bits = eng == "w4a8" || eng == "w4a8_grid" ? 8 : 16;
        rw.int_scales = eng == "w4a8_grid";  // scales on the integer grid: the INT8 wgmma kernel for large M
        rw.budget = o.budget;
        rw.res_rows = o.res_rows;
        rw.res_profile = o.res_profile;
        rw.seed = o.seed;
        rw.lm_head = eng == "w4a16_qhead";  // W4A16 with the LM head quantized too (quantize --lm-head)
        rw.lm_head_int8 = eng == "w4a16_head8";  // W4A16 with the 8-bit LM head (quantize --lm-head-int8)
        engine_name = "mosaic_" + eng;
        m = std::make_unique<GpuModel>(GpuModel::random(builtin_config(o.config), rw, go));
      }
    } catch (const Error& e) {
      std::printf("| %s | - | not run: %s | | | | | | |\n", eng.c_str(), e.what());
      std::fflush(stdout);
      rows.push_back({{"card", card}, {"date", date}, {"config", cfg_name}, {"engine", "mosaic_" + eng},
                      {"error", e.what()}, {"prompt", o.prompt}, {"gen", o.gen}});
      continue;
    }
    const double load_s = seconds_since(t_load);
    const GpuLoadReport& rep = m->load_report();
    for (const auto& n : rep.notes) std::printf("note (%s): %s\n", engine_name.c_str(), n.c_str());
    const int64_t V = m->vocab_size();
    std::mt19937 rng(uint32_t(o.seed));
    for (int B : o.batches) {
      std::vector<std::vector<int32_t>> prompts(static_cast<size_t>(B));
      for (auto& p : prompts) {
        p.resize(size_t(o.prompt));
        for (auto& t : p) t = int32_t(rng() % uint32_t(V));
      }
      std::vector<int32_t> first(static_cast<size_t>(B)), ids(size_t(B) * size_t(o.gen));
      for (auto& t : first) t = int32_t(rng() % uint32_t(V));
      // Warm-up: the GEMM paths allocate workspaces and cuBLAS picks kernels on first use; the
      // decode graph for this B is captured on its second step.
      m->reset_all();
      for (int b = 0; b < B; ++b) m->forward(b, prompts[size_t(b)].data(), std::min<int64_t>(o.prompt, 64), nullptr, GpuModel::Logits::None);
      m->reset(0);
      m->forward(0, prompts[0].data(), o.prompt, nullptr, GpuModel::Logits::None);
      m->generate_greedy(first.data(), B, std::min(o.gen, 4), ids.data());
      // Timed: `reps` rounds of every sequence's prefill (one each, chunks of <= 2048 tokens) then gen
      // greedy steps of the whole batch (graph replays, ids fed back on the GPU); the median of each.
      // One 2048-token prefill is ~50 ms on an 8B model: a single sample moves by several percent
      // with the clock the GPU happens to run at (twenty-sixth session), so rates are medians.
      std::vector<double> prefill_rates, decode_rates;
      for (int r = 0; r < o.reps; ++r) {
        m->reset_all();
        auto t0 = std::chrono::steady_clock::now();
        for (int b = 0; b < B; ++b) m->forward(b, prompts[size_t(b)].data(), o.prompt, nullptr, GpuModel::Logits::None);
        m->synchronize();
        prefill_rates.push_back(double(B) * double(o.prompt) / seconds_since(t0));
        t0 = std::chrono::steady_clock::now();
        m->generate_greedy(first.data(), B, o.gen, ids.data());
        decode_rates.push_back(double(B) * double(o.gen) / seconds_since(t0));
      }
      const GpuMemory mem = m->memory();
      const double prefill_tok_s = median(prefill_rates), decode_tok_s = median(decode_rates);
      const double tpot_ms = double(B) / decode_tok_s * 1e3;
      // Bandwidth limit of a decode step: every weight streamed once per step (KV cache reads
      // not counted), at the measured copy bandwidth.
      const double limit_tok_s = double(B) * bw / double(rep.step_bytes);
      std::printf("| %s | %d | %.0f | %.1f | %.2f | %.1f GiB | %.2f GiB | %.1f | %.0f%% |\n", engine_name.c_str(), B,
                  prefill_tok_s, decode_tok_s, tpot_ms, double(mem.peak_used) / double(1ull << 30),
                  double(rep.step_bytes) / double(1ull << 30), limit_tok_s, 100.0 * decode_tok_s / limit_tok_s);
      std::fflush(stdout);
      nlohmann::json row = {{"card", card},
                            {"date", date},
                            {"config", cfg_name},
                            {"weights", o.random_weights ? "random" : "checkpoint"},
                            {"engine", engine_name},
                            {"act", "fp16"},
                            {"batch", B},
                            {"prompt", o.prompt},
                            {"gen", o.gen},
                            {"reps", o.reps},
                            {"prefill_tok_s", prefill_tok_s},
                            {"decode_tok_s", decode_tok_s},
                            {"prefill_tok_s_samples", prefill_rates},
                            {"decode_tok_s_samples", decode_rates},
                            {"tpot_ms", tpot_ms},
                            {"peak_gpu_bytes", mem.peak_used},
                            {"weight_bytes", rep.weight_bytes},
                            {"step_weight_bytes", rep.step_bytes},
                            {"kv_cache_bytes", rep.kv_bytes},
                            {"copy_bw_bytes_s", bw},
                            {"bw_limit_tok_s", limit_tok_s},
                            {"bw_fraction", decode_tok_s / limit_tok_s},
                            {"load_s", load_s},
                            {"zipper_linears", rep.zipper_linears},
                            {"dequant_linears", rep.dequant_linears},
                            {"cublas_linears", rep.dense_linears}};
      if (engine_name != "mosaic_fp16" && o.random_weights) {
        row["budget"] = o.budget;
        row["res_pattern"] = o.res_profile ? "profile:" + o.res_profile_from
                             : o.res_rows > 0 ? "rows:" + std::to_string(o.res_rows) : "even";
      }
      if (rep.act_bits < 16) {
        row["act_bits"] = rep.act_bits;
        row["w4a8_linears"] = rep.w4a8_linears;
        row["w4a8_min_m"] = o.w4a8_min_m;
      }
      if (o.profile && B == o.batches.front()) {
        // Where a prefill's time goes (once per engine): one prompt without each group of ops.
        const std::vector<double> t = profile_rounds(o.reps, {0, 1, 2, 8}, [&](unsigned skip) {
          return m->profile_prefill(o.prompt, skip);
        });
        std::printf("|   profile prefill %lld tokens: %.2f ms; without attention %.2f, linears %.2f, small ops %.2f |\n",
                    static_cast<long long>(o.prompt), t[0], t[1], t[2], t[3]);
        row["profile_prefill_ms"] = {{"prefill", t[0]}, {"no_attention", t[1]}, {"no_linears", t[2]},
                                     {"no_small_ops", t[3]}};
      }
      if (o.profile) {
        // Where a decode step's time goes: the step without each group of ops (graph replays), the small ops
        // split (which of them a W4A8 step pays for: the SiLU-mul left out, o_proj's input quantization left
        // out, the norms alone), and the whole step without the graph (kEager).
        constexpr unsigned kEager = 1u << 31;
        const std::vector<unsigned> masks = {0, kEager, 1, 2, 4, 8, 1 | 2 | 4, 16, 32, 1 | 2 | 4 | 16};
        const std::vector<double> t = profile_rounds(o.reps, masks, [&](unsigned skip) {
          return m->profile_decode(B, skip & ~kEager, !(skip & kEager));
        });
        std::printf("|   profile B=%d: step %.3f ms (eager %.3f); without attention %.3f, linears %.3f, LM head %.3f, "
                    "small ops %.3f, SiLU-mul %.3f, o_proj input quantization %.3f; small ops alone %.3f, norms alone "
                    "%.3f |\n",
                    B, t[0], t[1], t[2], t[3], t[4], t[5], t[7], t[8], t[6], t[9]);
        row["profile_ms"] = {{"step", t[0]},        {"eager", t[1]},        {"no_attention", t[2]},
                             {"no_linears", t[3]},  {"no_lm_head", t[4]},   {"no_small_ops", t[5]},
                             {"no_silu_mul", t[7]}, {"no_o_input_quant", t[8]},
                             {"small_ops_only", t[6]}, {"norms_only", t[9]}};
        row["profile_rounds"] = o.reps;
      }
      rows.push_back(row);
    }
  }
  if (!o.json.empty()) {
    std::ofstream f(o.json);
    MOSAIC_CHECK(f.good(), "bench e2e: cannot write ", o.json);
    f << rows.dump(1) << "\n";
    std::printf("\nwrote %zu rows to %s\n", rows.size(), o.json.c_str());
  }
}

}  // namespace mosaic::gpu
