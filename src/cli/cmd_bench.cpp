// mosaic bench gemm: ZipperEngine W4A16 / W4A8 GEMM against cuBLAS FP16 (src/cuda/gemm_bench.cpp).
// mosaic bench e2e: end-to-end generation with the GPU engine, FP16 and W4A16 (src/gpu/bench_e2e.cpp).
// Compiles without CUDA too; then the commands say they need a CUDA build.
#include <filesystem>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "format/residual_profile.h"
#include "util/error.h"
#ifdef MOSAIC_HAS_CUDA
#include "cuda/gemm_bench.h"
#endif
#ifdef MOSAIC_HAS_GPU_ENGINE
#include "gpu/bench_e2e.h"
#endif

namespace mosaic::cli {
namespace {

template <typename T>
std::vector<T> parse_list(const std::string& s, const char* what) {
  std::vector<T> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    std::istringstream is(item);
    T v{};
    char extra = 0;
    if (!(is >> v) || (is >> extra)) fail("bench gemm: bad ", what, " '", item, "' in '", s, "'");
    out.push_back(v);
  }
  if (out.empty()) fail("bench gemm: empty ", what, " list");
  return out;
}

struct GemmArgs {
  std::string shapes = "llama3-8b", ms = "1,4,16,32,64,128,256,1024,4096", budgets = "0.1", json, block = "16x64";
  int reps = 7;
  int act_bits = 16;
  std::string act_format = "both";
  std::string res_pattern = "binomial";
  double row_cap = 1.0;
  bool bf16 = false;
};

struct E2EArgs {
  std::string model, config, batches = "1,4,16", engines = "fp16,w4a16", json;
  bool random_weights = false, profile = false;
  double budget = 0.1, res_rows = 0;
  std::string res_profile;
  int64_t w4a8_min_m = 256;
  int64_t prompt = 2048;
  int gen = 128;
  int reps = 3;
};

void add_e2e_command(CLI::App* bench) {
  auto a = std::make_shared<E2EArgs>();
  auto* e2e = bench->add_subcommand(
      "e2e",
      "End-to-end generation speed of the GPU engine: prefill and decode tokens/s, time per output token, peak "
      "GPU memory, for FP16 (cuBLAS) and MosaicQuant W4A16 (ZipperEngine) in the same run");
  e2e->add_option("--model", a->model, "a checkpoint directory (FP16/BF16 or MosaicQuant)");
  e2e->add_option("--config", a->config, "built-in config: llama3-8b | qwen3-8b | llama3-70b | qwen3-0.6b | smollm2-135m");
  e2e->add_flag("--random-weights", a->random_weights,
                "random weights of --config made on the GPU (W4A16: random layers with residual blocks at --budget)");
  e2e->add_option("--budget", a->budget, "residual block fraction of the random W4A16 layers")->capture_default_str();
  e2e->add_option("--res-rows", a->res_rows,
                  "where the random layers keep their residual blocks: 0 = spread evenly over the 16-row block rows "
                  "(the kernels' best case); F in (0, 1] = concentrated on random block rows holding ceil(F x blocks "
                  "per row) each, the worst case of a selection capped at F per row (quantize --row-cap; 1 = whole "
                  "rows, real checkpoints cluster)")
      ->capture_default_str();
  e2e->add_option("--res-profile", a->res_profile,
                  "instead, each kind of random linear keeps residual blocks per block row as PATH's rows of that "
                  "kind do (PATH: a MosaicQuant checkpoint, or the JSON of `mosaic inspect --json` on one; e.g. "
                  "bench/profiles/smollm2-135m-mosaic-g64-b0.1.json): the clustering of a real checkpoint at another model's "
                  "shapes (--budget and --res-rows unused)");
  e2e->add_option("--batch", a->batches, "batch sizes, comma separated")->capture_default_str();
  e2e->add_option("--prompt", a->prompt, "prompt tokens per sequence")->capture_default_str();
  e2e->add_option("--gen", a->gen, "generated tokens per sequence")->capture_default_str();
  e2e->add_option("--reps", a->reps,
                  "timed rounds per engine and batch (each: prefill every sequence, then decode); the table shows "
                  "the median rates, the JSON every round's")
      ->check(CLI::Range(1, 100))
      ->capture_default_str();
  e2e->add_option("--engines", a->engines,
                  "with --random-weights, comma separated: fp16 (cuBLAS), w4a16 (ZipperEngine), w4a16_qhead (W4A16 "
                  "with the LM head quantized too, as `quantize --lm-head` writes), w4a16_head8 (W4A16 with the 8-bit LM "
                  "head of `quantize --lm-head-int8`), w4a8 (activations "
                  "quantized per token to INT8; large GEMMs on the W4A8 INT8 mma.sync kernel), w4a8_grid (w4a8 with "
                  "every scale on the integer scale grid: large GEMMs on the INT8 wgmma kernel)")
      ->capture_default_str();
  e2e->add_option("--w4a8-min-m", a->w4a8_min_m,
                  "W4A8 models: GEMMs of at least this many rows run on the W4A8 INT8 kernel, smaller ones on the "
                  "W4A16 kernel with quantized inputs (0: never the INT8 kernel)")
      ->capture_default_str();
  e2e->add_option("--json", a->json, "write the rows as JSON to this file");
  e2e->add_flag("--profile", a->profile, "also time one prompt's prefill and a decode step without each group of ops (attention, linears, LM head, "
                "the norms + SiLU-mul + RoPE, the SiLU-mul alone, o_proj's input quantization of W4A8 models), and the "
                "decode step's small ops and norms alone (where the time goes); every variant in --reps interleaved "
                "rounds after a warm-up pass, medians");
  e2e->callback([a] {
    const auto batches = parse_list<int>(a->batches, "batch");
    if (a->model.empty() == a->config.empty()) fail("bench e2e: give exactly one of --model DIR or --config NAME");
    if (!a->config.empty() && !a->random_weights)
      fail("bench e2e: --config builds a model of that shape with random weights; add --random-weights");
    if (a->budget < 0 || a->budget > 1) fail("bench e2e: --budget must be in [0, 1]");
    if (a->res_rows < 0 || a->res_rows > 1) fail("bench e2e: --res-rows must be 0 or in (0, 1]");
    if (!a->res_profile.empty() && (!a->random_weights || a->res_rows > 0))
      fail("bench e2e: --res-profile shapes the residual of --random-weights layers, instead of --res-rows");
#ifdef MOSAIC_HAS_GPU_ENGINE
    gpu::E2EOptions o;
    o.model_dir = a->model;
    o.config = a->config;
    o.random_weights = a->random_weights;
    o.budget = a->budget;
    o.res_rows = a->res_rows;
    if (!a->res_profile.empty()) {
      o.res_profile = std::make_shared<const ResidualProfile>(load_residual_profile(a->res_profile));
      o.res_profile_from = std::filesystem::path(a->res_profile).filename().string();
    }
    o.batches = batches;
    o.prompt = a->prompt;
    o.gen = a->gen;
    o.reps = a->reps;
    o.json = a->json;
    o.profile = a->profile;
    o.w4a8_min_m = a->w4a8_min_m;
    o.engines.clear();
    std::stringstream ss(a->engines);
    for (std::string e; std::getline(ss, e, ',');) o.engines.push_back(e);
    gpu::run_e2e_bench(o);
#else
    fail("'bench e2e' needs the GPU engine: configure with -DMOSAIC_CUDA=ON (nvcc) and run on an sm_90 GPU");
#endif
  });
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto* bench = app.add_subcommand("bench", "Benchmarks (need a CUDA build and a GPU)");
  bench->require_subcommand(1);
  auto args = std::make_shared<GemmArgs>();
  auto* gemm = bench->add_subcommand(
      "gemm", "ZipperEngine W4A16 (or --act-bits 8: W4A8) GEMM vs cuBLAS FP16: dense_w4, unfused and zipper variants");
  gemm->add_option("--shapes", args->shapes,
                   "llama3-8b | qwen3-8b | llama3-70b | KxN, comma separated (K = inputs, N = outputs)")
      ->capture_default_str();
  gemm->add_option("--m", args->ms, "rows of X (tokens), comma separated")->capture_default_str();
  gemm->add_option("--budget", args->budgets, "fraction of residual blocks kept, comma separated")
      ->capture_default_str();
  gemm->add_option("--block", args->block,
                   "residual block shape of the random layers: 16x64 (the kernels'), 32x64 or 64x64 (a wgmma "
                   "warpgroup's 64 outputs; split into 16x64 blocks at load, as for such checkpoints)")
      ->check(CLI::IsMember({"16x64", "32x64", "64x64"}))
      ->capture_default_str();
  gemm->add_option("--res-pattern", args->res_pattern,
                   "where the random layers keep residual blocks: binomial (each block with probability = budget), "
                   "balanced (every 16-row block row the same count) or rows (random block rows filled to --row-cap "
                   "of their blocks each: the worst case of a selection capped per row, quantize --row-cap)")
      ->check(CLI::IsMember({"binomial", "balanced", "rows"}))
      ->capture_default_str();
  gemm->add_option("--row-cap", args->row_cap, "with --res-pattern rows: the fraction of a block row's blocks kept")
      ->check(CLI::Range(0.001, 1.0))
      ->capture_default_str();
  gemm->add_option("--json", args->json, "write the rows as JSON to this file");
  gemm->add_option("--reps", args->reps, "timed repetitions, median reported")->capture_default_str();
  gemm->add_flag("--bf16", args->bf16, "BF16 activations for the W4 variants (default FP16)");
  gemm->add_option("--act-bits", args->act_bits,
                   "16: W4A16 variants (dense_w4, unfused, zipper); 8: W4A8 variants (per-token INT8 activations: "
                   "w4a8_quant, w4a8_zipper_gemm_only, w4a8_dense, w4a8_zipper)")
      ->capture_default_str();
  gemm->add_option("--act-format", args->act_format,
                   "with --act-bits 8: the W4A8 kernels to time: int8 (mma.sync, w4a8_* rows, and INT8 wgmma on the "
                   "same layers with their scales on the integer grid, w4a8i8wg_* rows), fp8 (e4m3 wgmma, w4a8fp8_* "
                   "rows) or both")
      ->check(CLI::IsMember({"int8", "fp8", "both"}))
      ->capture_default_str();
  gemm->callback([args] {
    const auto ms = parse_list<int>(args->ms, "M");
    const auto budgets = parse_list<double>(args->budgets, "budget");
    if (args->reps < 1 || args->reps > 1000) fail("bench gemm: --reps must be in 1..1000");
#ifdef MOSAIC_HAS_CUDA
    cuda::GemmBenchOptions o;
    o.shapes = args->shapes;
    o.ms = ms;
    o.budgets = budgets;
    o.res_block_rows = std::stoi(args->block);
    o.res_pattern = args->res_pattern == "balanced" ? cuda::GemmBenchOptions::ResPattern::kBalanced
                    : args->res_pattern == "rows"   ? cuda::GemmBenchOptions::ResPattern::kRows
                                                    : cuda::GemmBenchOptions::ResPattern::kBinomial;
    o.res_row_cap = args->row_cap;
    o.json = args->json;
    o.reps = args->reps;
    o.bf16 = args->bf16;
    o.act_bits = args->act_bits;
    o.w4a8_int8 = args->act_format != "fp8";
    o.w4a8_fp8 = args->act_format != "int8";
    cuda::run_gemm_bench(o);
#else
    fail("'bench gemm' needs a CUDA build: configure with -DMOSAIC_CUDA=ON (nvcc) and run on a GPU");
#endif
  });
  add_e2e_command(bench);
}

}  // namespace mosaic::cli
