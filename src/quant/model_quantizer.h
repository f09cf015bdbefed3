// The model-level quantizer: an FP16/BF16 LLaMA/Qwen3 checkpoint -> a MosaicQuant checkpoint
// (docs/format.md), layer by layer like GPTQ:
//   x = embed(calibration windows)                                   [samples, len, hidden] FP32
//   per decoder layer i:
//     load its 7 linears (FP32, from the mmapped checkpoint)
//     run the FP layer on x, accumulating H = 2 X^T X / M for the inputs of q/k/v (one H),
//       o_proj, gate/up (one H), down_proj
//     quantize the 7 linears (RTN | GPTQ | GPTQ + Delta-Hessian residual), write their tensors
//     x = the *quantized* layer applied to x (the next layer sees the quantization error so far)
//     drop the layer's weights
// Memory: the embedding table (FP32), one layer's FP32 weights and Hessians, the activations x
// and one KV cache; never the whole model in FP32.
// Quantized activations (act_bits 8/4): every linear's inputs are per-token fake-quantized in the
// calibration passes, so H is of the inputs the layer will really see and each layer's inputs carry
// the upstream W4Ax error. With smoothing (quant/smooth.h), before layer i's Hessians an extra FP
// pass gathers each site's input maxima and a row sample, alpha is searched per site, W becomes
// W diag(s) (v_proj / up_proj rows / s), the norm-fed inputs are divided by s while calibrating,
// and the written norms are gamma / s; the block scores and GPTQ then run on the migrated W and H.
// Residual budget allocation: per layer (each linear keeps floor(budget x its blocks)), or global
// (a first pass with the GPTQ base alone scores every block of the model, relative to its linear's
// output energy; the budget over all blocks goes to the highest; the second pass quantizes with
// those counts; about 1.5x the time).
#pragma once
#include <array>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/act_quant_linear.h"
#include "model/model.h"
#include "quant/residual.h"
#include "quant/rotate.h"

namespace mosaic {

class QuantAccelerator;  // quant/accelerator.h

enum class QuantMethod { kMosaic, kGptq, kRtn };
QuantMethod parse_quant_method(const std::string& name);  // mosaic|gptq|rtn
const char* quant_method_name(QuantMethod m);

enum class Allocation { kPerLayer, kGlobal };
Allocation parse_allocation(const std::string& name);  // per-layer|global
const char* allocation_name(Allocation a);             // "per_layer" | "global" (quantization_config)

struct ModelQuantOptions {
  QuantMethod method = QuantMethod::kMosaic;
  int group = 128;
  // Per-linear group sizes: (name, group) pairs, the first whose name is a substring of the
  // linear's (e.g. "down_proj", "mlp", "self_attn.q_proj") sets its group; the others keep
  // `group`. The same for every layer. Readers take each linear's group from its scales' shape.
  std::vector<std::pair<std::string, int>> group_for;
  // Quantize the LM head too (`--lm-head`), with the same method, group and budget, on the
  // Hessian of the final norm's outputs; the checkpoint then stores a packed `lm_head` and is untied
  // (tie_word_embeddings false). Weights only: refused with act_bits < 16. Off by default.
  bool quantize_lm_head = false;
  // The LM head in 8 bits instead (`--lm-head-int8`): round to nearest, one fp16 scale per row
  // (format/int8_rows.h), no calibration; the checkpoint stores lm_head.weight_int8 / .weight_scale
  // and is untied. Excludes quantize_lm_head; allowed with act_bits < 16 (the head's input is never
  // quantized).
  bool lm_head_int8 = false;
  bool symmetric = true;
  bool act_order = true;  // static groups: the checkpoint layout does not change
  // GPTQ's true-sequential: within a layer, o / gate+up / down get their Hessians from a pass with
  // the earlier linears of the layer already quantized (3 more forward passes per layer).
  bool true_sequential = false;
  int block_rows = 16, block_cols = 64;  // the shape the GPU kernel supports
  double budget = 0.10;                  // fraction of residual blocks kept (mosaic)
  Allocation allocation = Allocation::kGlobal;  // measured better (docs/results.md)
  // Global allocation divides each linear's block scores by its output energy to this power
  // (`--alloc-exponent`, in [0, 2]): 1 ranks by relative output-error reduction (which sends the budget
  // to v / k / q), 0 by absolute Delta-Hessian scores (to down_proj). 0.75 lowered KL in every setting
  // measured on the default model (W4A16 10% / 5% / 1x64 5% / 128 windows, W4A8 on the integer grid:
  // -0.5..-3.5%; 0.5 and below were mixed or worse: docs/results.md "Sharing the budget between linears").
  double alloc_exponent = 0.75;
  // Per-block-row cap (`--row-cap F`, in (0, 1]; 1 = none): no block row of a linear with K inputs
  // keeps more than row_cap_blocks(F, K / block_cols) residual blocks, under either allocation (and
  // for a packed LM head). The fused GPU kernel's time is set by the fullest block row of a layer.
  double row_cap = 1.0;
  // Every linear's scales on the integer scale grid (format/int_scale_grid.h: group scales u_n x 1..16,
  // u_n a power of two per row), so that W4A8 layers run on the INT8 wgmma kernel. The base's scales
  // move onto the grid once fit (to the neighbour with the smaller weighted error), before RTN or GPTQ
  // rounds any code (GPTQ with static groups, on the CPU solver); the residual blocks' row scales
  // likewise before GPTQ rounds the residual; residual codes that would leave INT8 are pulled in at the end
  // (snap_to_int_scale_grid).
  bool int_scales = false;
  // Global allocation's scoring pass runs on the first score_samples calibration windows (0 = all):
  // it only ranks blocks, and 16 of 128 windows gave the same model (default model, 128 x 512:
  // ppl 21.243 vs 21.237, KL 0.1047 vs 0.1043) in 261 s instead of 443 s (docs/results.md).
  int score_samples = 16;
  // Base codebook (quant/rtn.h ScaleOptions::grid): empty = uniform 4-bit integers, else 16
  // values, e.g. grid_nl4() (symmetric only; GPTQ then runs on the CPU solver).
  std::vector<float> grid;
  BlockScorer scorer = BlockScorer::kDeltaHessian;
  // Quantized activations (docs/format.md "Quantized activations"): 16 = none (W4A16), 8 or 4 =
  // per-token inputs of every linear, in calibration (each layer sees the upstream activation
  // error; the Hessians are of the quantized, smoothed inputs) and at run time.
  int act_bits = 16;
  // The code activations are rounded to (model/act_quant_linear.h): integers, or FP8 e4m3 (8 bits).
  ActFormat act_format = ActFormat::kInt;
  // SmoothQuant migration folded into the norms / v_proj / up_proj (quant/smooth.h); needs
  // calibration (not rtn). smooth_alpha < 0: searched per layer and site on smooth_grid (plus
  // "none"), else that alpha everywhere.
  bool smooth = false;
  double smooth_alpha = -1;
  std::vector<double> smooth_grid = {0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0};
  int smooth_rows = 512;                 // calibration rows per site used by the alpha search
  // Where calibration linears, Hessians and GPTQ run: null = the CPU (OpenBLAS); the CUDA one is
  // quant_gpu::make_cuda_quant_accelerator(). The pipeline and the output format are the same.
  std::shared_ptr<QuantAccelerator> accel;
  // With an accelerator that runs whole decoder layers (norms, RoPE, attention too), use that for
  // the calibration passes; false: only its linears, attention on the host (the reference layout
  // of the GPU tests: same codes as the CPU).
  bool device_layers = true;
  // Offline rotation (quant/rotate.h) applied to the FP model before anything else: the
  // calibration, smoothing search, Hessians and block scores all see the rotated model, and the
  // checkpoint stores the rotated weights (untied lm_head, norms folded). kNone: no rotation.
  RotationOptions rotation;
  bool force = false;                    // replace an existing output directory
  bool quiet = false;
  nlohmann::json calibration_info;       // written as quantization_config.calibration
  // Called after each decoder layer (layer index, seconds for it).
  std::function<void(int, double)> on_layer;
  // Test hook: throw after this many layers were written (-1: never), to check atomicity.
  int fail_after_layers = -1;
};

struct ModelQuantReport {
  double seconds = 0;
  int64_t peak_rss = 0;
  std::string device = "cpu";    // where the heavy arithmetic ran (QuantAccelerator::describe)
  int64_t peak_device_bytes = 0; // accelerator only: peak device memory in use (context included)
  // Seconds per phase: load, forward (calibration passes incl. Hessian accumulation), hessian
  // (fetching them), quantize (GPTQ, residual scoring and selection), of which quantize_gptq_solve
  // (GPTQ's solves alone), write.
  std::vector<std::pair<std::string, double>> phase_seconds;
  int64_t linear_params = 0;     // weights quantized (the decoder layers' linears)
  int64_t linear_bytes = 0;      // their packed bytes (base + residual)
  int64_t lm_head_params = 0;    // quantize_lm_head / lm_head_int8: the head's weights and bytes (else 0)
  int64_t lm_head_bytes = 0;
  int64_t residual_blocks = 0;   // kept blocks, all layers
  std::vector<int64_t> global_counts;  // global allocation: blocks per linear (layer * 7 + id)
  int64_t score_windows = 0;           // global allocation: calibration windows of its scoring pass
  // Smoothing: alpha chosen per layer and site (qkv, o, gate_up, down); -1 = not smoothed.
  std::vector<std::array<double, 4>> smooth_alphas;
  nlohmann::json rotation;             // quantization_config.rotation (null: not rotated)
  double bits_per_weight() const { return linear_params ? 8.0 * double(linear_bytes) / double(linear_params) : 0; }
};

// The checks quantize_model starts with (options, config, tensor names, shapes, existing
// output), for callers that want to fail before expensive calibration work. Throws mosaic::Error.
// The group size of linear `id` under opt.group / opt.group_for.
int linear_group(const ModelQuantOptions& opt, LinearId id);
// "NAME=G[,NAME=G...]" (the CLI's --group-for) -> pairs; throws mosaic::Error on a malformed entry.
std::vector<std::pair<std::string, int>> parse_group_for(const std::string& spec);

void check_quantize_inputs(const std::filesystem::path& model_dir, const std::filesystem::path& out,
                           const ModelQuantOptions& opt);

// Checks options and shapes (every linear's K divisible by the group, the block shape tiling
// every linear for mosaic) before doing any work; `calib` windows are required unless rtn.
// Writes into "<out>.partial" and renames to `out` only when complete; on error the partial
// directory is removed. Throws mosaic::Error.
ModelQuantReport quantize_model(const std::filesystem::path& model_dir, const std::filesystem::path& out,
                                const std::vector<std::vector<int32_t>>& calib, const ModelQuantOptions& opt);

}  // namespace mosaic
