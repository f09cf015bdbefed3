// The GPU inference engine: the CPU engine's model (src/model/model.h) with every op on a CUDA
// GPU (sm_90), for LlamaForCausalLM and Qwen3ForCausalLM checkpoints, FP16/BF16/F32 or MosaicQuant.
//   x = embed(tokens)                                  (residual stream x kept in FP32)
//   per layer: h = rmsnorm(x); qkv = h Wqkv^T           (q/k/v fused into one GEMM)
//              q,k = (Qwen3: per-head rmsnorm) + RoPE; k,v -> KV cache (GPU)
//              x += Wo attention(q, K, V)               (prefill: cuBLAS QK^T, causal softmax,
//                                                        PV; decode: one split-KV kernel with
//                                                        the norm/RoPE/KV append fused in)
//              h = rmsnorm(x); x += Wdown (silu(h Wg^T) * (h Wu^T))   (gate/up fused)
//   logits = lm_head(rmsnorm(x))                       (FP32 logits; tied to the embedding)
// Activations between ops are FP16 or BF16 (default: BF16 for bf16 checkpoints, FP16 otherwise),
// every kernel computes in FP32. Linear layers: cuBLAS on FP16/BF16 weights, or ZipperEngine
// (src/cuda/zipper.h) for MosaicQuant layers it supports; other MosaicQuant layers (e.g. K % 128
// != 0, SmolLM2's K = 576) are dequantized once to FP16/BF16 and run through cuBLAS; the load
// report says which. W4A8 / W4A4 checkpoints quantize every quantized linear's input rows per
// token as the CPU reference does (gpu/act_quant.h), large-M W4A8 GEMMs on INT8 tensor cores. Several sequences decode together (batch B = KV cache slots 0..B-1); each
// decode step is one CUDA graph launch (captured per B on its second step).
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "format/residual_profile.h"
#include "gpu/kernels.h"
#include "io/hf_config.h"

namespace mosaic {
class Checkpoint;
}

namespace mosaic::gpu {

struct GpuOptions {
  std::optional<Act> act;       // activation dtype; default from the checkpoint (see above)
  int max_batch = 1;            // sequences held at once (KV cache slots)
  int64_t capacity = 0;         // KV positions per sequence; 0: min(max_position_embeddings, 4096)
  int64_t prefill_chunk = 2048; // tokens per prefill step (bounds scratch memory)
  int64_t logits_rows = 512;    // LM head rows per block for all-row logits (ppl)
  bool cuda_graphs = true;      // capture the decode step
  // W4A8 checkpoints (act_bits 8, integer codes): GEMMs of at least this many rows run on the W4A8
  // INT8 kernel (src/cuda/w4a8.h; a second, repacked copy of the weights), smaller ones quantize
  // their input rows and run the W4A16 path. 0: never the INT8 kernel.
  int64_t w4a8_min_m = 256;
  bool quiet = true;            // false: one-line load report on stderr
  // MosaicQuant layers: false never uses ZipperEngine's dequantize path (an N x K workspace), as
  // when that workspace does not fit in GPU memory: large-M GEMMs then run on the fused kernels.
  bool dequant_workspace = true;
};

// --random-weights: a model of the given config with random weights, made on the GPU (dense) or
// as random MosaicQuant layers (quantized; group 128, residual blocks at `budget`).
struct RandomWeights {
  bool quantized = false;
  double budget = 0.1;
  int group = 128;
  uint64_t seed = 1;
  int act_bits = 16;  // 8: a W4A8 model (integer activation codes; quantized only)
  // act_bits 8: every layer's scales snapped to the integer scale grid (format/int_scale_grid.h), so
  // large-M GEMMs run on the INT8 wgmma kernel instead of the mma.sync one.
  bool int_scales = false;
  bool lm_head = false;  // quantized: the LM head a random MosaicQuant layer too (`quantize --lm-head`)
  bool lm_head_int8 = false;  // the LM head in 8 bits per row (`quantize --lm-head-int8`)
  double res_rows = 0;  // residual blocks: 0 spread evenly, else concentrated (random_packed_fast's rows_cap)
  // Or, when set, each kind of linear keeps blocks per block row as a real checkpoint's rows of that
  // kind do (format/residual_profile.h; `budget` and `res_rows` then unused; kinds it lacks keep none).
  std::shared_ptr<const ResidualProfile> res_profile;
};

struct GpuLoadReport {
  double seconds = 0;
  std::string device;
  Act act = Act::F16;
  size_t weight_bytes = 0;    // weights on the GPU (linears, embedding, norms)
  size_t step_bytes = 0;      // weight bytes a decode step streams: every linear + the LM head
  size_t kv_bytes = 0;        // KV cache
  size_t scratch_bytes = 0;   // activations and workspaces
  int zipper_linears = 0, dequant_linears = 0, dense_linears = 0;  // fused linears by kind
  int act_bits = 16;           // quantized activations (W4A8 / W4A4 checkpoints): 8 or 4
  bool act_fp8 = false;        // ... as FP8 e4m3 codes
  int w4a8_linears = 0;        // of the quantized ones, with the W4A8 INT8 kernel for large M
  bool deq_ahead = false;      // large-M prefill dequantizes ahead on a side stream (engine.cpp DeqAhead)
  std::vector<std::string> notes;  // e.g. why layers fell back to dequantize + cuBLAS
  std::string summary() const;
};

struct GpuMemory {
  size_t weights = 0, kv_cache = 0, scratch = 0;
  size_t peak_used = 0;  // highest device memory in use (cudaMemGetInfo) seen by the engine
  size_t total = 0;
};

class GpuModel {
 public:
  static GpuModel load(const std::filesystem::path& dir, const GpuOptions& o = {});
  static GpuModel from_checkpoint(const Checkpoint& ckpt, const ModelConfig& cfg, const GpuOptions& o = {});
  static GpuModel random(const ModelConfig& cfg, const RandomWeights& rw, const GpuOptions& o = {});

  GpuModel(GpuModel&&) noexcept;
  GpuModel& operator=(GpuModel&&) noexcept;
  ~GpuModel();

  const ModelConfig& config() const;
  Act act() const;
  int max_batch() const;
  int64_t capacity() const;
  int64_t vocab_size() const;
  const GpuLoadReport& load_report() const;
  GpuMemory memory() const;

  int64_t length(int slot) const;  // positions filled in sequence `slot`
  void reset(int slot);            // empties it
  void reset_all();

  enum class Logits { None, Last, All };
  // Appends tokens[0..T) to sequence `slot` (prefill, in chunks) and copies logits to the host:
  // All [T, vocab], Last [1, vocab] (the last token), None: no logits (nothing computed).
  void forward(int slot, const int32_t* tokens, int64_t T, float* logits, Logits which = Logits::All);
  // Appends tokens[0..T) to `slot` and calls on_block(r0, rows, logits_host) for the logits of
  // every block of rows (logits_rows at a time), and, when targets != nullptr, fills nll[r] =
  // logsumexp(row r) - logit[targets[r]] (0 where targets[r] < 0), computed on the GPU.
  void forward_scored(int slot, const int32_t* tokens, int64_t T, const int32_t* targets, double* nll,
                      const std::function<void(int64_t r0, int64_t rows, const float* logits)>& on_block = {});

  // One decode step for sequences 0..B-1: tokens[b] is appended at length(b). Optional outputs:
  // logits [B, vocab] (host), next [B] = the sampled ids (greedy when temperature == 0, else
  // Gumbel-max at `temperature`, seeded by seed and the step).
  void decode(const int32_t* tokens, int B, float* logits, int32_t* next, float temperature = 0.f,
              uint64_t seed = 0);
  // Greedy generation for sequences 0..B-1 entirely on the GPU: first[b] is fed at step 0, each
  // step's argmax is fed to the next (no host round trip); out [steps, B] (host) gets the ids.
  void generate_greedy(const int32_t* first, int B, int steps, int32_t* out);
  void synchronize() const;
  // Profiling: ms per decode step of batch B with groups of ops left out (skip bits: 1 attention
  // with its fused q/k norm, RoPE and KV append, 2 linear layers, 4 LM head + argmax, 8 RMSNorms /
  // SiLU / embedding, 16 the SiLU-mul only, 32 o_proj's stand-alone input quantization of W4A8 / W4A4
  // models), with or without the
  // CUDA graph, averaged over `steps` steps at positions near the end of the cache. The model's
  // state (lengths) is restored; the KV cache contents past them are overwritten.
  double profile_decode(int B, unsigned skip, bool graphs = true, int steps = 30);
  // The same for prefill: ms per prefill of T tokens of random ids into slot 0 with those groups left
  // out (bits 1, 2, 8 as above), averaged over `reps` runs after one warm-up. Lengths restored; slot
  // 0's cache contents overwritten.
  double profile_prefill(int64_t T, unsigned skip, int reps = 2);

  struct Impl;

 private:
  explicit GpuModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Default activation dtype for a config: BF16 when torch_dtype is "bfloat16", else FP16.
Act default_act(const ModelConfig& cfg);
Act parse_act(const std::string& s);  // "fp16" | "bf16"

}  // namespace mosaic::gpu
