// The whole GPU engine against the CPU engine (src/model/model.h): the tiny golden models of
// tests/fixtures/golden (LLaMA tied/untied with llama3 rope scaling, Qwen3 with q/k norm), FP16
// and BF16 activations, prefill logits, token-by-token decode (with the CUDA graph) against a
// prefill recompute, batched decode of sequences of different lengths, a MosaicQuant model
// (ZipperEngine layers and the dequantize fallback), and the error cases.
//
// Error measure: max |gpu - cpu| / max |cpu| over all logits. The CPU engine is FP32; the GPU
// rounds every activation to FP16/BF16 (3 layers, ~10 roundings on a path), so the expected
// error is a few act_eps (2^-11 / 2^-8) amplified by the layers: bounds 1e-2 (FP16) and 6e-2
// (BF16), measured values printed.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "format/packed_checkpoint.h"
#include "gpu/engine.h"
#include "gpu/perplexity_gpu.h"
#include "gpu_test_util.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "model/perplexity.h"
#include "model/sampler.h"
#include "util/error.h"

namespace mosaic::gpu {
namespace {

using namespace test;

double logits_bound(Act a) { return a == Act::BF16 ? 6e-2 : 1e-2; }

const char* kGolden[] = {"llama_tied", "llama3_untied_scaled", "qwen3_tied", "qwen3_untied_bf16"};

std::vector<int32_t> prompt_tokens(int64_t T, int64_t V, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(static_cast<size_t>(T));
  for (auto& x : t) x = int32_t(rng() % uint32_t(V));
  return t;
}

std::vector<float> cpu_logits(const Model& m, const std::vector<int32_t>& toks) {
  KVCache c = m.make_cache(int64_t(toks.size()));
  std::vector<float> out(toks.size() * size_t(m.vocab_size()));
  m.forward(toks.data(), int64_t(toks.size()), c, out.data());
  return out;
}

TEST(GpuEngine, GoldenModelsMatchCpuEngineFp16AndBf16) {
  REQUIRE_GPU();
  for (const char* name : kGolden) {
    const Model cpu = Model::load(golden_dir(name));
    const int64_t V = cpu.vocab_size(), T = 40;
    const auto toks = prompt_tokens(T, V, 5);
    const auto ref = cpu_logits(cpu, toks);
    for (Act a : {Act::F16, Act::BF16}) {
      GpuOptions o;
      o.act = a;
      o.capacity = 64;
      o.prefill_chunk = 16;  // several chunks: later chunks attend to the cached keys
      GpuModel g = GpuModel::load(golden_dir(name), o);
      std::vector<float> got(ref.size());
      g.forward(0, toks.data(), T, got.data(), GpuModel::Logits::All);
      const double err = rel_max_err(got, ref);
      std::printf("[ gpu golden ] %-22s %s prefill: max|gpu - cpu| / max|cpu| = %.2e\n", name, act_name(a), err);
      EXPECT_LE(err, logits_bound(a)) << name << " " << act_name(a);
      // Logits::Last is the last row.
      g.reset(0);
      std::vector<float> last(static_cast<size_t>(V));
      g.forward(0, toks.data(), T, last.data(), GpuModel::Logits::Last);
      EXPECT_LE(rel_max_err(last.data(), ref.data() + (T - 1) * V, size_t(V)), logits_bound(a));
    }
  }
}

// Prefill of 10 tokens then 30 decode steps (eager, graph capture, graph replays) equal the
// logits of one prefill of all 40 tokens, on the GPU (same dtype): bound 1e-2 / 6e-2 too (the
// GEMMs and the attention take different paths for M = 1 and M = 40).
TEST(GpuEngine, DecodeMatchesPrefillRecompute) {
  REQUIRE_GPU();
  for (const char* name : kGolden)
    for (Act a : {Act::F16, Act::BF16}) {
      GpuOptions o;
      o.act = a;
      o.capacity = 48;
      GpuModel g = GpuModel::load(golden_dir(name), o);
      const int64_t V = g.vocab_size(), T = 40, T0 = 10;
      const auto toks = prompt_tokens(T, V, 7);
      std::vector<float> full(size_t(T * V)), step(static_cast<size_t>(V));
      g.forward(0, toks.data(), T, full.data(), GpuModel::Logits::All);
      g.reset(0);
      std::vector<float> tmp(size_t(T0 * V));
      g.forward(0, toks.data(), T0, tmp.data(), GpuModel::Logits::All);
      double worst = rel_max_err(tmp.data(), full.data(), size_t(T0 * V));
      for (int64_t t = T0; t < T; ++t) {
        int32_t next = -1;
        g.decode(&toks[size_t(t)], 1, step.data(), &next);
        worst = std::max(worst, rel_max_err(step.data(), full.data() + t * V, size_t(V)));
        EXPECT_EQ(next, mosaic::argmax(step.data(), V));
      }
      EXPECT_EQ(g.length(0), T);
      std::printf("[ gpu decode ] %-22s %s: decode vs prefill max rel err %.2e\n", name, act_name(a), worst);
      EXPECT_LE(worst, logits_bound(a)) << name << " " << act_name(a);
    }
}

// Three sequences of different prompt lengths decode together (B = 3); each row's logits equal
// those of the same sequence run alone, and generate_greedy (graph, ids fed back on the GPU)
// gives the ids that step-by-step greedy decoding gives.
TEST(GpuEngine, BatchedDecodeMatchesSingleSequences) {
  REQUIRE_GPU();
  const char* name = "qwen3_tied";
  GpuOptions o;
  o.capacity = 64;
  o.max_batch = 3;
  GpuModel g = GpuModel::load(golden_dir(name), o);
  const int64_t V = g.vocab_size();
  const int64_t lens[3] = {5, 20, 11};
  std::vector<std::vector<int32_t>> seqs;
  for (int b = 0; b < 3; ++b) seqs.push_back(prompt_tokens(lens[b] + 8, V, 100 + b));
  // Alone: full prefill of each sequence (prompt + 8 more tokens).
  std::vector<std::vector<float>> alone(3);
  for (int b = 0; b < 3; ++b) {
    alone[size_t(b)].resize(seqs[size_t(b)].size() * size_t(V));
    g.reset(0);
    g.forward(0, seqs[size_t(b)].data(), int64_t(seqs[size_t(b)].size()), alone[size_t(b)].data());
  }
  g.reset_all();
  for (int b = 0; b < 3; ++b) g.forward(b, seqs[size_t(b)].data(), lens[b], nullptr, GpuModel::Logits::None);
  std::vector<float> lg(size_t(3 * V));
  double worst = 0;
  for (int st = 0; st < 8; ++st) {
    int32_t in[3];
    for (int b = 0; b < 3; ++b) in[b] = seqs[size_t(b)][size_t(lens[b] + st)];
    g.decode(in, 3, lg.data(), nullptr);
    for (int b = 0; b < 3; ++b)
      worst = std::max(worst, rel_max_err(lg.data() + b * V, alone[size_t(b)].data() + (lens[b] + st) * V, size_t(V)));
  }
  std::printf("[ gpu batch ] B=3 decode vs single-sequence prefill: max rel err %.2e\n", worst);
  EXPECT_LE(worst, logits_bound(g.act()));

  // generate_greedy == step-by-step greedy.
  const int steps = 12;
  auto run_steps = [&](bool fused) {
    g.reset_all();
    int32_t first[3];
    for (int b = 0; b < 3; ++b) {
      g.forward(b, seqs[size_t(b)].data(), lens[b], nullptr, GpuModel::Logits::None);
      first[b] = seqs[size_t(b)][size_t(lens[b])];
    }
    std::vector<int32_t> ids(size_t(steps * 3));
    if (fused) {
      g.generate_greedy(first, 3, steps, ids.data());
    } else {
      int32_t cur[3] = {first[0], first[1], first[2]};
      for (int st = 0; st < steps; ++st) {
        g.decode(cur, 3, nullptr, cur);
        std::memcpy(ids.data() + st * 3, cur, sizeof cur);
      }
    }
    return ids;
  };
  EXPECT_EQ(run_steps(true), run_steps(false));
}

// ---- MosaicQuant: a tiny checkpoint written with the format API ------------------------------------
// hidden 128, intermediate 256, 4 heads x 32, 2 kv heads: every fused layer has N % 16 == 0 and
// K % 128 == 0, so ZipperEngine takes all of them; hidden 64 gives K = 64 (fallback).
// act: extra quantization_config keys (act_bits / act_format: a W4A8 / W4A4 model of the same weights).
// packed_head: an untied, packed lm_head of 320 rows (what `mosaic quantize --lm-head` writes; 320
// so that ZipperEngine takes it and the engine's 16-bit logits path runs).
// int8_head: an untied 8-bit lm_head instead (`mosaic quantize --lm-head-int8`: codes I8 [V, D],
// fp16 scale per row; V = 301, not a multiple of the kernel's 16-row tiles).
std::filesystem::path write_quant_model(int64_t D, int64_t I, const std::string& tag,
                                        const nlohmann::json& act = nlohmann::json::object(), bool packed_head = false,
                                        bool int8_head = false) {
  const auto dir = std::filesystem::temp_directory_path() / ("mosaic_gpu_quant_" + tag);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const int64_t V = packed_head ? 320 : 301, H = 4, Hkv = 2, hd = 32, L = 2;
  nlohmann::json cfg = {{"architectures", {"LlamaForCausalLM"}},
                        {"model_type", "llama"},
                        {"hidden_size", D},
                        {"intermediate_size", I},
                        {"num_attention_heads", H},
                        {"num_key_value_heads", Hkv},
                        {"head_dim", hd},
                        {"num_hidden_layers", L},
                        {"vocab_size", V},
                        {"max_position_embeddings", 128},
                        {"rms_norm_eps", 1e-5},
                        {"rope_theta", 10000.0},
                        {"tie_word_embeddings", !packed_head && !int8_head},
                        {"torch_dtype", "float16"},
                        {"quantization_config", {{"quant_method", "mosaicquant"}, {"format_version", 1}, {"bits", 4}}}};
  cfg["quantization_config"].update(act);
  std::ofstream(dir / "config.json") << cfg.dump(2);
  ShardedWriter w(dir);
  const auto emb = randn(size_t(V * D), 51);
  w.add_f32("model.embed_tokens.weight", {V, D}, emb.data());
  std::vector<float> ones(size_t(D), 1.0f);
  w.add_f32("model.norm.weight", {D}, ones.data());
  uint64_t seed = 60;
  for (int64_t l = 0; l < L; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const auto n1 = randn(size_t(D), uint32_t(70 + l), 0.1f);
    std::vector<float> nw(static_cast<size_t>(D));
    for (size_t i = 0; i < nw.size(); ++i) nw[i] = 1.0f + n1[i];
    w.add_f32(p + "input_layernorm.weight", {D}, nw.data());
    w.add_f32(p + "post_attention_layernorm.weight", {D}, nw.data());
    const std::pair<const char*, std::pair<int64_t, int64_t>> lins[] = {
        {"self_attn.q_proj", {H * hd, D}}, {"self_attn.k_proj", {Hkv * hd, D}}, {"self_attn.v_proj", {Hkv * hd, D}},
        {"self_attn.o_proj", {D, H * hd}}, {"mlp.gate_proj", {I, D}},          {"mlp.up_proj", {I, D}},
        {"mlp.down_proj", {D, I}}};
    for (const auto& [name, nk] : lins) {
      const PackedLinear pl = random_packed_linear(nk.first, nk.second, 64, 16, 64, 0.1, ResidualPattern::kUniform,
                                                   seed++);
      add_packed_linear(w, p + name, pl);
    }
  }
  if (packed_head)
    add_packed_linear(w, "lm_head", random_packed_linear(V, D, 64, 16, 64, 0.1, ResidualPattern::kUniform, seed++));
  if (int8_head) {  // codes -127..127 (both ends present), scales ~ 1 / (127 sqrt(D)) as fp16
    std::string q(size_t(V * D), '\0'), sc(size_t(V) * 2, '\0');
    std::mt19937 rng(uint32_t(seed++));
    for (size_t i = 0; i < q.size(); ++i) q[i] = char(int8_t(i % 97 == 0 ? 127 : i % 89 == 0 ? -127 : int(rng() % 255) - 127));
    for (int64_t v = 0; v < V; ++v) {
      const uint16_t h = float_to_fp16(float(1.0 / (127.0 * std::sqrt(double(D)))) * (0.5f + float(v % 7) / 7.f));
      std::memcpy(&sc[size_t(v) * 2], &h, 2);
    }
    w.add("lm_head.weight_int8", DType::I8, {V, D}, std::move(q));
    w.add("lm_head.weight_scale", DType::F16, {V}, std::move(sc));
  }
  w.finish();
  return dir;
}

// Slot 0 refilled with toks[0, from) by prefill, then toks[from..) decoded one by one (batch 1):
// the worst relative error of each step's logits against ref's row for that position.
double decode_err(GpuModel& g, const std::vector<int32_t>& toks, const std::vector<float>& ref, int64_t from) {
  const int64_t V = g.vocab_size();
  g.reset(0);
  g.forward(0, toks.data(), from, nullptr, GpuModel::Logits::None);
  std::vector<float> step(static_cast<size_t>(V));
  double worst = 0;
  for (int64_t t = from; t < int64_t(toks.size()); ++t) {
    g.decode(&toks[size_t(t)], 1, step.data(), nullptr);
    worst = std::max(worst, rel_max_err(step.data(), ref.data() + t * V, step.size()));
  }
  return worst;
}

// Four models: every layer on ZipperEngine (8 fused linears), hidden 64 (K = 64: the dequantize
// fallback), a packed LM head (`mosaic quantize --lm-head`: ZipperEngine runs it too, 9 fused
// linears, its 16-bit logits converted to fp32, the engine's path for a head that is not a dense
// cuBLAS layer), and the 8-bit LM head (`--lm-head-int8`, int8_head.cu, fp32 logits; the CPU
// engine dequantizes it). Prefill and decode match the CPU engine with the usual bounds.
TEST(GpuEngine, QuantizedModelMatchesCpuEngine) {
  REQUIRE_GPU();
  struct Case {
    int64_t D, I;
    bool packed_head;
    int zipper_linears;  // 0: the dequantize fallback
    bool int8_head = false;
  };
  for (const Case& c : {Case{128, 256, false, 8}, Case{64, 128, false, 0}, Case{128, 256, true, 9},
                        Case{128, 256, false, 8, true}}) {
    const std::string tag = std::to_string(c.D) + (c.packed_head ? "head" : "") + (c.int8_head ? "head8" : "");
    const auto dir = write_quant_model(c.D, c.I, tag, nlohmann::json::object(), c.packed_head, c.int8_head);
    const Model cpu = Model::load(dir);
    const auto toks = prompt_tokens(30, cpu.vocab_size(), 9);
    const auto ref = cpu_logits(cpu, toks);
    for (Act a : {Act::F16, Act::BF16}) {
      GpuOptions o;
      o.act = a;
      o.capacity = 32;
      GpuModel g = GpuModel::load(dir, o);
      const GpuLoadReport& r = g.load_report();
      if (c.int8_head) {
        EXPECT_NE(std::find(r.notes.begin(), r.notes.end(), "lm_head: 8-bit codes per row (int8_head.cu)"), r.notes.end())
            << r.summary();
      }
      if (c.zipper_linears > 0) {
        EXPECT_EQ(r.zipper_linears, c.zipper_linears) << r.summary();
        EXPECT_EQ(r.dequant_linears, 0) << r.summary();
      } else {
        EXPECT_GT(r.dequant_linears, 0) << r.summary();
        EXPECT_FALSE(r.notes.empty()) << "the load report must say why layers fell back";
      }
      std::vector<float> got(ref.size());
      g.forward(0, toks.data(), int64_t(toks.size()), got.data());
      const double err = rel_max_err(got, ref);
      std::printf("[ gpu quant ] %s (%s) %s: max|gpu - cpu| / max|cpu| = %.2e\n", tag.c_str(),
                  c.zipper_linears ? "ZipperEngine" : "dequant fallback", act_name(a), err);
      EXPECT_LE(err, logits_bound(a));
      // Decode through ZipperEngine's fused M=1 path equals the prefill logits.
      EXPECT_LE(decode_err(g, toks, ref, 20), logits_bound(a)) << "decode";
    }
    std::filesystem::remove_all(dir);
  }
}

// A model loaded without the dequantize path's workspace (what the engine does when it would not
// fit in GPU memory): prompts of 100 tokens, whose large-M GEMMs Auto sends to the dequantize path,
// run on the fused kernels instead (M = 100: the v8 kernel), 30 tokens on the wgmma kernel as before;
// the same bound against the CPU engine, and decode equals the prefill logits.
TEST(GpuEngine, QuantizedModelWithoutDequantWorkspaceMatchesCpuEngine) {
  REQUIRE_GPU();
  const auto dir = write_quant_model(128, 256, "nodeq");
  const Model cpu = Model::load(dir);
  for (int64_t n : {30, 100}) {
    const auto toks = prompt_tokens(n, cpu.vocab_size(), 19);
    const auto ref = cpu_logits(cpu, toks);
    for (Act a : {Act::F16, Act::BF16}) {
      GpuOptions o;
      o.act = a;
      o.capacity = 128;
      o.dequant_workspace = false;
      GpuModel g = GpuModel::load(dir, o);
      const GpuLoadReport& r = g.load_report();
      EXPECT_EQ(r.zipper_linears, 8) << r.summary();
      ASSERT_FALSE(r.notes.empty()) << "the load report must say the dequantize path is off";
      std::vector<float> got(ref.size());
      g.forward(0, toks.data(), n, got.data());
      const double err = rel_max_err(got, ref);
      std::printf("[ gpu quant ] no dequantize workspace, %lld tokens, %s: max|gpu - cpu| / max|cpu| = %.2e\n",
                  (long long)n, act_name(a), err);
      EXPECT_LE(err, logits_bound(a)) << n << " tokens";
      EXPECT_LE(decode_err(g, toks, ref, 20), logits_bound(a)) << "decode, " << n << " tokens";
    }
  }
  std::filesystem::remove_all(dir);
}

// The prefill's dequantize ahead (engine.cpp DeqAhead: o, gate_up, down and the next layer's qkv
// dequantized on a side stream while attention runs) against the in-line dequantize path
// (MOSAIC_PREFILL_DEQ_AHEAD=0): same kernels and cuBLAS calls, so the logits are bit-identical, for
// one prompt of 100 tokens (the dequantize path's M) and for prompts fed in chunks of 40 (the first
// chunks on the wgmma kernel, the side stream idle; its events reused across calls); against the
// CPU engine within the usual bound; and with the side stream at the highest priority (=2).
TEST(GpuEngine, PrefillDequantizeAheadIsBitIdentical) {
  REQUIRE_GPU();
  const auto dir = write_quant_model(128, 256, "deqahead");
  const Model cpu = Model::load(dir);
  const auto toks = prompt_tokens(600, cpu.vocab_size(), 23);
  const auto ref = cpu_logits(cpu, toks);
  for (Act a : {Act::F16, Act::BF16}) {
    std::vector<float> in_line, chunked_in_line;
    for (const char* mode : {"0", "1", "2"}) {
      setenv("MOSAIC_PREFILL_DEQ_AHEAD", mode, 1);
      GpuOptions o;
      o.act = a;
      o.capacity = 640;
      GpuModel g = GpuModel::load(dir, o);
      EXPECT_EQ(g.load_report().deq_ahead, mode[0] != '0') << mode << ": " << g.load_report().summary();
      std::vector<float> got(ref.size());
      g.forward(0, toks.data(), int64_t(toks.size()), got.data());
      // The same prompt in chunks of 520 + 80 tokens (prefill_chunk), logits of every row.
      GpuOptions oc = o;
      oc.prefill_chunk = 520;
      GpuModel gc = GpuModel::load(dir, oc);
      std::vector<float> chunked(ref.size());
      gc.forward(0, toks.data(), int64_t(toks.size()), chunked.data());
      const double err = rel_max_err(got, ref);
      std::printf("[ gpu quant ] dequantize ahead = %s, %s: max|gpu - cpu| / max|cpu| = %.2e\n", mode, act_name(a), err);
      EXPECT_LE(err, logits_bound(a)) << mode;
      if (mode[0] == '0') {
        in_line = got;
        chunked_in_line = chunked;
      } else {
        EXPECT_EQ(std::memcmp(got.data(), in_line.data(), got.size() * 4), 0) << "mode " << mode << ", " << act_name(a);
        EXPECT_EQ(std::memcmp(chunked.data(), chunked_in_line.data(), got.size() * 4), 0)
            << "chunked, mode " << mode << ", " << act_name(a);
      }
    }
  }
  unsetenv("MOSAIC_PREFILL_DEQ_AHEAD");
  std::filesystem::remove_all(dir);
}

// W4A8 / W4A4 models (activations quantized per token: 8-bit integers, FP8 e4m3, 4-bit integers)
// against the CPU reference engine. A code of the quantized input flips wherever the GPU's FP16/BF16
// activation and the CPU's FP32 one fall on either side of a rounding boundary, so the GPU cannot
// match the CPU as closely as in W4A16. The bound is therefore relative to what quantizing the
// activations changes at all (E = the CPU's W4A16 vs W4AX logits distance): GPU vs CPU W4AX within
// max(the W4A16 bound, E / 2) for 8 bits, 1.5 E for 4 bits (see below), and (FP16) closer to the CPU's W4AX than to its W4A16 logits, which a
// GPU path that skipped the quantization would not be. 8-bit integer models also run with every GEMM
// on the W4A8 INT8 kernel (w4a8_min_m = 1): same bound, and within the W4A16 bound of the
// quantize-then-16-bit path (both see the same FP16 inputs and the same codes).
TEST(GpuEngine, ActivationQuantizedModelsMatchCpuEngine) {
  REQUIRE_GPU();
  const nlohmann::json acts[] = {{{"act_bits", 8}}, {{"act_bits", 8}, {"act_format", "fp8_e4m3"}}, {{"act_bits", 4}}};
  for (auto [D, I, zipper] : {std::tuple<int64_t, int64_t, bool>{128, 256, true}, {64, 128, false}}) {
    const auto dir16 = write_quant_model(D, I, "a16_" + std::to_string(D));
    const Model cpu16 = Model::load(dir16);
    const auto toks = prompt_tokens(30, cpu16.vocab_size(), 9);
    const auto ref16 = cpu_logits(cpu16, toks);
    for (const auto& aj : acts) {
      const int bits = aj["act_bits"];
      const bool int8 = bits == 8 && !aj.contains("act_format");
      const std::string tag = std::to_string(bits) + (int8 || bits == 4 ? "i" : "f") + "_" + std::to_string(D);
      const auto dir = write_quant_model(D, I, tag, aj);
      const Model cpu = Model::load(dir);
      const auto ref = cpu_logits(cpu, toks);
      const double E = rel_max_err(ref16, ref);
      for (Act a : {Act::F16, Act::BF16}) {
        // A 4-bit code step is 1/7 of its row's max: one flipped code moves the logits about as much as
        // the whole activation quantization does (measured on an H200: GPU vs CPU W4A4 up to 1.02 E).
        const double bound = std::max(logits_bound(a), (bits == 4 ? 1.5 : 0.5) * E);
        std::vector<float> fq;
        for (int64_t min_m : {int64_t(256), int64_t(1)}) {
          if (min_m == 1 && !(int8 && zipper)) continue;
          GpuOptions o;
          o.act = a;
          o.capacity = 32;
          o.w4a8_min_m = min_m;
          GpuModel g = GpuModel::load(dir, o);
          const GpuLoadReport& r = g.load_report();
          EXPECT_EQ(r.act_bits, bits) << r.summary();
          // D = 64: only o_proj and down_proj (K = 128) fit the INT8 kernel, 2 of 4 fused linears per layer.
          EXPECT_EQ(r.w4a8_linears, int8 ? (zipper ? 8 : 4) : 0) << r.summary();
          std::vector<float> got(ref.size());
          g.forward(0, toks.data(), int64_t(toks.size()), got.data());
          const double err = rel_max_err(got, ref), err16 = rel_max_err(got, ref16);
          std::printf("[ gpu a%s ] D=%lld %s %s: vs CPU W4A%d %.2e (bound %.2e), vs CPU W4A16 %.2e (E %.2e)\n",
                      tag.c_str(), (long long)D, act_name(a), min_m == 1 ? "INT8 kernel for all M" : "quantize + 16-bit",
                      bits, err, bound, err16, E);
          EXPECT_LE(err, bound);
          if (a == Act::F16) {
            EXPECT_LT(err, err16) << "the GPU must quantize the activations";
          }
          if (min_m == 256) {
            fq = got;
          } else {
            const double d = rel_max_err(got, fq);
            std::printf("[ gpu a%s ] INT8 kernel vs quantize + 16-bit path: %.2e\n", tag.c_str(), d);
            EXPECT_LE(d, logits_bound(a));
          }
          // Decode (M = 1: the quantize + 16-bit path, or the INT8 kernel with min_m 1) equals prefill.
          EXPECT_LE(decode_err(g, toks, ref, 20), bound) << "decode";
        }
      }
      std::filesystem::remove_all(dir);
    }
    std::filesystem::remove_all(dir16);
  }
}

// The GPU perplexity loop against the CPU loop (same protocol) on a golden model: ppl within 1%
// (FP16 activations vs FP32).
TEST(GpuEngine, PerplexityMatchesCpuLoop) {
  REQUIRE_GPU();
  const Model cpu = Model::load(golden_dir("llama_tied"));
  const auto toks = prompt_tokens(3 * 32 + 5, cpu.vocab_size(), 21);
  PerplexityOptions po;
  po.ctx = 32;
  po.logits_rows_per_block = 8;
  const PerplexityStats c = evaluate_perplexity(cpu, toks, po);
  GpuOptions o;
  o.capacity = 32;
  o.logits_rows = 8;
  GpuModel g = GpuModel::load(golden_dir("llama_tied"), o);
  int64_t blocks = 0;
  po.on_logits = [&](int64_t, int64_t, const float*, int64_t) { ++blocks; };
  const PerplexityStats s = evaluate_perplexity_gpu(g, toks, po);
  std::printf("[ gpu ppl ] cpu %.6f gpu %.6f (%lld windows)\n", c.ppl(), s.ppl(), (long long)s.windows);
  EXPECT_EQ(s.windows, 3);
  EXPECT_EQ(s.tokens_scored, c.tokens_scored);
  EXPECT_EQ(blocks, 3 * 4);
  EXPECT_NEAR(s.ppl(), c.ppl(), 0.01 * c.ppl());
}

TEST(GpuEngine, ClearErrors) {
  REQUIRE_GPU();
  GpuOptions o;
  o.capacity = 16;
  GpuModel g = GpuModel::load(golden_dir("llama_tied"), o);
  const auto toks = prompt_tokens(17, g.vocab_size(), 1);
  try {
    g.forward(0, toks.data(), 17, nullptr, GpuModel::Logits::None);
    FAIL() << "a prompt longer than the context must throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("context full"), std::string::npos) << e.what();
  }
  std::vector<int32_t> bad = {1, 2, 999};
  EXPECT_THROW(g.forward(0, bad.data(), 3, nullptr, GpuModel::Logits::None), Error);
  EXPECT_EQ(g.length(0), 0) << "a rejected prompt leaves the cache empty";
  // A model far larger than the GPU: refused before anything is uploaded.
  ModelConfig big = ModelConfig::load(golden_dir("llama_tied"));
  big.hidden_size = 16384;
  big.intermediate_size = 65536;
  big.num_layers = 200;
  big.num_heads = 128;
  big.num_kv_heads = 8;
  big.head_dim = 128;
  big.vocab_size = 128256;
  try {
    GpuModel::random(big, RandomWeights{}, GpuOptions{});
    FAIL() << "a model larger than GPU memory must throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("does not fit in GPU memory"), std::string::npos) << e.what();
  }
}

// Runs on machines without a GPU too (CI): the engine refuses with a clear message.
TEST(GpuEngine, NoGpuMessage) {
  const std::string why = gpu_unusable_reason();
  if (why.empty()) {
    EXPECT_NO_THROW(require_gpu());
    return;
  }
  try {
    GpuModel::load(golden_dir("llama_tied"));
    FAIL() << "loading without a usable GPU must throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--device cpu"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace mosaic::gpu
