// mosaic quantize: an FP16/BF16 checkpoint -> a MosaicQuant checkpoint (docs/format.md), layer by
// layer with GPTQ-style calibration (src/quant/model_quantizer.h).
#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>

#include "cli/commands.h"
#include "model/parallel.h"
#include "quant/accelerator.h"
#include "quant/calibration.h"
#include "quant/model_quantizer.h"
#include "tokenizer/tokenizer.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/progress.h"
#ifdef MOSAIC_HAS_QUANT_GPU
#include "gpu/device.h"
#include "quant_gpu/calib_cuda.h"
#endif

namespace mosaic::cli {

namespace {

struct QuantizeCliOptions {
  std::string model, out, method = "mosaic", block = "16x64", scorer = "delta_hessian";
  std::string allocation = "global";
  std::string smooth_alpha;  // "" = auto with quantized activations (not rtn), none otherwise
  int act_bits = 16;
  std::string act_format = "int";
  std::string grid = "int4";
  std::string rotate = "none", rotate_matrix = "hadamard";
  uint64_t rotate_seed = 0;
  std::vector<int64_t> rotate_keep;
  std::string calib_file = "data/calib.txt";
  int group = 128;
  std::string group_for;
  bool lm_head = false, lm_head_int8 = false;
  bool asym = false, act_order = true, true_sequential = false, force = false, quiet = false;
  double budget = 0.10;
  double row_cap = 1.0;
  double alloc_exponent = ModelQuantOptions{}.alloc_exponent;
  bool int_scales = false;
  int64_t calib_samples = 128, calib_len = 2048;
  int score_samples = 16;
  uint64_t seed = 0;
  int threads = 0;
  std::string device = "auto";
};

void parse_block(const std::string& s, int& r, int& c) {
  const size_t x = s.find('x');
  MOSAIC_CHECK(x != std::string::npos && x > 0 && x + 1 < s.size() &&
                   s.find_first_not_of("0123456789x") == std::string::npos && s.find('x', x + 1) == std::string::npos &&
                   x <= 6 && s.size() - x - 1 <= 6,
               "--block '", s, "' is not of the form RxC (e.g. 16x64)");
  r = std::stoi(s.substr(0, x));
  c = std::stoi(s.substr(x + 1));
}

// --device: where calibration linears, Hessians and GPTQ run (null = the CPU).
std::shared_ptr<QuantAccelerator> quant_accelerator(const std::string& device) {
  MOSAIC_CHECK(device == "cpu" || device == "cuda" || device == "auto", "--device must be cpu, cuda or auto, got '",
               device, "'");
  if (device == "cpu") return nullptr;
#ifdef MOSAIC_HAS_QUANT_GPU
  const std::string why = gpu::gpu_unusable_reason();
  if (device == "auto" && !why.empty()) return nullptr;
  MOSAIC_CHECK(why.empty(), "--device cuda: ", why, "; use --device cpu");
  return quant_gpu::make_cuda_quant_accelerator();
#else
  MOSAIC_CHECK(device == "auto", "--device cuda: this mosaic was built without CUDA (configure with -DMOSAIC_CUDA=ON "
                                 "and nvcc); use --device cpu");
  return nullptr;
#endif
}

void run_quantize(const QuantizeCliOptions& o) {
  if (o.threads > 0) set_num_threads(o.threads);
  ModelQuantOptions q;
  q.method = parse_quant_method(o.method);
  q.group = o.group;
  q.group_for = parse_group_for(o.group_for);
  q.quantize_lm_head = o.lm_head;
  q.lm_head_int8 = o.lm_head_int8;
  q.symmetric = !o.asym;
  MOSAIC_CHECK(o.score_samples >= 0, "--score-samples must be >= 0, got ", o.score_samples);
  q.score_samples = o.score_samples;
  q.act_order = o.act_order;
  q.true_sequential = o.true_sequential;
  parse_block(o.block, q.block_rows, q.block_cols);
  q.budget = o.budget;
  q.allocation = parse_allocation(o.allocation);
  q.row_cap = o.row_cap;
  q.alloc_exponent = o.alloc_exponent;
  q.int_scales = o.int_scales;
  std::string scorer = o.scorer;
  for (char& ch : scorer)
    if (ch == '-') ch = '_';
  q.scorer = parse_block_scorer(scorer);
  q.force = o.force;
  q.quiet = o.quiet;
  q.act_bits = o.act_bits;
  q.act_format = parse_act_format(o.act_format);
  MOSAIC_CHECK(o.grid == "int4" || o.grid == "nl4", "--grid must be int4 or nl4, got '", o.grid, "'");
  MOSAIC_CHECK(o.grid == "int4" || !o.asym, "--grid nl4 is symmetric; drop --asym");
  if (o.grid == "nl4") q.grid = grid_nl4();
  q.rotation.kind = parse_rotation(o.rotate);
  q.rotation.matrix = parse_rotation_matrix(o.rotate_matrix);
  q.rotation.seed = o.rotate_seed;
  q.rotation.keep_channels = o.rotate_keep;
  std::sort(q.rotation.keep_channels.begin(), q.rotation.keep_channels.end());
  const std::string sa = o.smooth_alpha.empty() ? (o.act_bits < 16 && q.method != QuantMethod::kRtn ? "auto" : "none")
                                                : o.smooth_alpha;
  if (sa == "auto") {
    q.smooth = true;
    q.smooth_alpha = -1;
  } else if (sa != "none") {
    size_t used = 0;
    double a = -1;
    try {
      a = std::stod(sa, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    MOSAIC_CHECK(used == sa.size() && a >= 0 && a <= 1, "--smooth-alpha '", sa,
                 "' is not auto, none or a number in [0, 1]");
    q.smooth = true;
    q.smooth_alpha = a;
  }

  check_quantize_inputs(o.model, o.out, q);  // fail fast, before tokenizing the calibration text
  // RTN has nothing to accelerate (no calibration); --device is still checked.
  if (q.method != QuantMethod::kRtn)
    q.accel = quant_accelerator(o.device);
  else if (o.device != "auto" && o.device != "cpu")
    (void)quant_accelerator(o.device);
  std::vector<std::vector<int32_t>> calib;
  if (q.method != QuantMethod::kRtn) {
    const Tokenizer tok = Tokenizer::load(o.model);
    MOSAIC_CHECK(std::filesystem::exists(o.calib_file), "calibration file '", o.calib_file,
                 "' not found (run scripts/calib-data.sh, or pass --calib-file)");
    const std::string text = read_file(o.calib_file);
    MOSAIC_CHECK(!text.empty(), "calibration file '", o.calib_file, "' is empty");
    const std::vector<int32_t> ids = tok.encode(text);
    calib = sample_calibration_windows(ids, o.calib_samples, o.calib_len, o.seed, "calibration file '" + o.calib_file + "'");
    q.calibration_info = {{"file", std::filesystem::path(o.calib_file).filename().string()},
                          {"text_tokens", ids.size()},
                          {"samples", o.calib_samples},
                          {"seq_len", o.calib_len},
                          {"seed", o.seed}};
    if (!o.quiet)
      std::fprintf(stderr, "calibration: %lld windows of %lld tokens from %s (%zu tokens)\n",
                   (long long)o.calib_samples, (long long)o.calib_len, o.calib_file.c_str(), ids.size());
  }
  const ModelQuantReport r = quantize_model(o.model, o.out, calib, q);
  std::printf("quantized %s -> %s (%s): %.3f bits/weight over %lld linear weights, %lld residual blocks; %.1f s, "
              "peak RSS %s%s%s; on %s\n",
              o.model.c_str(), o.out.c_str(), o.method.c_str(), r.bits_per_weight(), (long long)r.linear_params,
              (long long)r.residual_blocks, r.seconds, format_bytes(r.peak_rss).c_str(),
              q.accel ? ", peak GPU memory " : "", q.accel ? format_bytes(r.peak_device_bytes).c_str() : "",
              r.device.c_str());
  if (r.lm_head_params > 0)
    std::printf("lm_head quantized%s: %.3f bits/weight over %lld weights\n", q.lm_head_int8 ? " (int8 per row)" : "",
                8.0 * double(r.lm_head_bytes) / double(r.lm_head_params), (long long)r.lm_head_params);
  if (!o.quiet) {
    std::string phases;
    for (const auto& [name, sec] : r.phase_seconds) phases += " " + name + " " + std::to_string(int64_t(sec + 0.5)) + " s,";
    if (!phases.empty()) std::fprintf(stderr, "time by phase:%s\n", phases.substr(0, phases.size() - 1).c_str());
  }
}

}  // namespace

void add_quantize_command(CLI::App& app) {
  auto o = std::make_shared<QuantizeCliOptions>();
  auto* cmd = app.add_subcommand(
      "quantize",
      "Quantize an FP16/BF16 LLaMA/Qwen3 checkpoint to 4 bits (MosaicQuant: GPTQ base + sparse 4-bit residual "
      "blocks chosen by the Delta-Hessian score). Layer by layer: each layer's calibration inputs come from the "
      "already-quantized layers before it. Writes <out>.partial and renames it to <out> when complete.");
  cmd->add_option("--model", o->model, "input model directory (config.json, *.safetensors, tokenizer.json)")->required();
  cmd->add_option("--out", o->out, "output directory (must not exist unless --force)")->required();
  cmd->add_option("--method", o->method,
                  "mosaic = GPTQ base + residual; gptq = GPTQ base only; rtn = round-to-nearest (no calibration)")
      ->capture_default_str();
  cmd->add_option("--group", o->group,
                  "inputs per base scale; must divide every linear's in_features (SmolLM2's 576: use 64)")
      ->capture_default_str();
  cmd->add_option("--group-for", o->group_for,
                  "per-linear group sizes, NAME=G[,NAME=G...]: the first NAME that is part of a linear's name "
                  "(self_attn.q_proj .. mlp.down_proj; e.g. 'down_proj=32' or 'mlp=32') sets its group in every layer; "
                  "q/k/v and gate/up must share theirs");
  cmd->add_flag("--lm-head", o->lm_head,
                "also quantize the LM head (same method, group and budget; the output is untied from the embedding); "
                "default: the head stays FP16");
  cmd->add_flag("--lm-head-int8", o->lm_head_int8,
                "store the LM head in 8 bits: symmetric round-to-nearest, one fp16 scale per row (8 + 16/hidden "
                "bits/weight, half the FP16 head's bytes; no calibration; the output is untied, the embedding stays "
                "FP16). Measured cost on the default model (group 64, 10%): ppl +0.02%, KL vs FP16 +0.5% (the 4-bit "
                "--lm-head: ppl +4.2%); excludes --lm-head; allowed with --act-bits");
  cmd->add_flag("--asym", o->asym, "asymmetric base (zero point per group); default symmetric");
  cmd->add_flag("--act-order,!--no-act-order", o->act_order,
                "GPTQ in descending diag(H) order with static groups (default on: same format, no runtime cost, "
                "KL 0.125 -> 0.117 on the default model at 10%)");
  cmd->add_flag("--true-sequential", o->true_sequential,
                "within each layer, capture o, gate/up and down's Hessians after the layer's earlier linears are "
                "quantized (GPTQ's option; 3 more calibration passes per layer)");
  cmd->add_option("--block", o->block, "residual block shape RxC (outputs x inputs); the GPU kernels run 16x64 and (16n)x64 (split into 16x64 at "
                  "load); 64x64 matches the W4A8 FP8 kernel's warpgroups (docs/kernels.md)")
      ->capture_default_str();
  cmd->add_option("--budget", o->budget, "fraction of residual blocks kept, in [0, 1] (mosaic only)")
      ->capture_default_str();
  cmd->add_option("--allocation", o->allocation,
                  "global: the budget over all blocks of the model goes to the highest scores relative to each "
                  "linear's output energy (an extra scoring pass, ~1.5x the time; halved the KL divergence of the "
                  "default model at 10%); per-layer: every linear keeps budget x its blocks")
      ->capture_default_str();
  cmd->add_option("--alloc-exponent", o->alloc_exponent,
                  "A in [0, 2], global allocation only: each linear's block scores are divided by its output energy^A "
                  "before the model-wide ranking (1: relative error reduction, which favours attention; 0: absolute "
                  "scores, which favour down_proj). 0.75 measured best on the default model (KL -0.5..-3.5% vs 1)")
      ->capture_default_str();
  cmd->add_option("--row-cap", o->row_cap,
                  "F in (0, 1]: no block row of a linear keeps more than ceil(F x its block columns) residual "
                  "blocks, under either allocation, for the fused GPU kernel, where at batch 1 a CTA with a full block "
                  "row does up to twice the work (uncapped, the default model's 10% fills whole rows: 9 of 9). 1 = no "
                  "cap; error when the caps cannot hold the budget. Measured cost on the default model (10%, global, "
                  "16 x 512 calibration): KL vs FP16 +7.8% at 0.5, +8.7% at 0.34, +11.3% at 0.25 (ppl -0.05%, "
                  "+1.6%, +1.2%); gain on an H200 (LLaMA-3-8B, random rows filled to F, batch-1 decode): 0.5 is 9% "
                  "faster than whole rows")
      ->capture_default_str();
  cmd->add_flag("--int-scales", o->int_scales,
                "put every scale on the integer scale grid (per row a power of two u, group scales u x 1..16), so "
                "that W4A8 layers (--act-bits 8) run on the INT8 tensor-core kernel on Hopper (INT32 sums over the "
                "whole row, the residual inside the INT8 weights); the base and residual scales move onto the grid "
                "before GPTQ / RTN round the codes (GPTQ on the CPU solver: slower on a GPU machine); symmetric uniform "
                "base only; accuracy on the default model: docs/results.md 'Quantized activations'");
  cmd->add_option("--scorer", o->scorer, "block score: delta-hessian | residual | weight (ablations)")
      ->capture_default_str();
  cmd->add_option("--calib-file", o->calib_file,
                  "calibration text (default data/calib.txt made by scripts/calib-data.sh: Debian 'fortunes' prose)")
      ->capture_default_str();
  cmd->add_option("--calib-samples", o->calib_samples, "number of random calibration windows")->capture_default_str();
  cmd->add_option("--calib-len", o->calib_len, "tokens per calibration window (512 is 4x faster)")->capture_default_str();
  cmd->add_option("--score-samples", o->score_samples,
                  "global allocation: calibration windows of its scoring pass, which only ranks blocks (the "
                  "first N of the random windows; 0 = all; 16 of 128 gave the same model 1.7x faster)")
      ->capture_default_str();
  cmd->add_option("--seed", o->seed, "seed of the window sampling")->capture_default_str();
  cmd->add_option("--threads", o->threads, "worker threads (0: MOSAIC_THREADS or all cores)")->capture_default_str();
  cmd->add_option("--act-bits", o->act_bits,
                  "activation bits: 8 (W4A8) or 4 (W4A4) quantize every linear's input rows per token at run time "
                  "(and during calibration); 16 = weights only")
      ->capture_default_str();
  cmd->add_option("--grid", o->grid,
                  "base codebook: int4 (uniform, w = s * (c - 8); what the GPU kernels run) or nl4 (non-uniform, "
                  "w = s * grid[c], denser near 0: lower error, CPU engine / dequantized on the GPU for now)")
      ->capture_default_str();
  cmd->add_option("--rotate", o->rotate,
                  "offline orthogonal rotation folded into the weights before calibration (QuaRot/SpinQuant): none, "
                  "r1 (residual stream; norms folded, lm_head untied) or r1r2 (r1 plus one per-head rotation of the "
                  "v_proj outputs / o_proj inputs); an ordinary checkpoint, nothing to do at run time")
      ->capture_default_str();
  cmd->add_option("--rotate-matrix", o->rotate_matrix,
                  "hadamard (randomized Hadamard; a non-power-of-two size n = 2^a * m uses Hadamard(2^a) x random "
                  "orthogonal(m)) or random (random orthogonal n x n)")
      ->capture_default_str();
  cmd->add_option("--rotate-seed", o->rotate_seed, "seed of the rotation's random signs / matrices")
      ->capture_default_str();
  cmd->add_option("--rotate-keep", o->rotate_keep,
                  "residual-stream channels left out of R1, comma-separated (massive-activation channels, e.g. 507 "
                  "on SmolLM2-135M; their norm weights stay in the norms); default none")
      ->delimiter(',');
  cmd->add_option("--act-format", o->act_format,
                  "with --act-bits 8: int (symmetric INT8 codes, the default) or fp8_e4m3 (FP8 e4m3 values, "
                  "scale max|x| / 448; the format of Hopper's FP8 tensor cores)")
      ->capture_default_str();
  cmd->add_option("--smooth-alpha", o->smooth_alpha,
                  "SmoothQuant migration folded into the norms / v_proj / up_proj: auto (alpha searched per layer and "
                  "site), none, or a fixed alpha in [0, 1]; default auto when --act-bits < 16 (not rtn), else none");
  cmd->add_option("--device", o->device,
                  "where calibration linears, Hessians and GPTQ run: cpu, cuda (cuBLAS/cuSOLVER, an sm_90 GPU), or auto "
                  "(cuda when a usable GPU is present). Same pipeline and format; results agree to float rounding")
      ->capture_default_str();
  cmd->add_flag("--force", o->force, "replace an existing output directory");
  cmd->add_flag("-q,--quiet", o->quiet, "no progress on stderr");
  cmd->callback([o] { run_quantize(*o); });
}

}  // namespace mosaic::cli
