// mosaic bench e2e: end-to-end generation speed of the GPU engine, FP16 (cuBLAS) and MosaicQuant
// W4A16 (ZipperEngine) in the same run: per batch, prefill of `prompt` tokens for each sequence,
// then `gen` greedy decode steps of the whole batch (CUDA graphs). Rows go to stdout as a table
// and to a JSON list (card, date, config, engine, batch, prompt, gen, prefill_tok_s,
// decode_tok_s, ...) that bench/merge_e2e.py merges with bench/transformers_e2e.py's rows.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "format/residual_profile.h"
#include "io/hf_config.h"

namespace mosaic::gpu {

// The real Hugging Face config.json values of the built-in configurations: llama3-8b
// (meta-llama/Meta-Llama-3-8B), llama3-70b (Meta-Llama-3-70B), qwen3-8b (Qwen/Qwen3-8B),
// qwen3-0.6b (Qwen/Qwen3-0.6B), smollm2-135m (HuggingFaceTB/SmolLM2-135M).
ModelConfig builtin_config(const std::string& name);
std::vector<std::string> builtin_config_names();

struct E2EOptions {
  std::string model_dir;   // a checkpoint (FP16/BF16 or MosaicQuant), or
  std::string config;      // a built-in config name, with random_weights
  bool random_weights = false;
  double budget = 0.1;     // residual block fraction of the random W4A16 layers
  double res_rows = 0;     // their residual blocks: 0 spread evenly over block rows, F in (0, 1] concentrated
                           // on random rows of ceil(F x blocks per row) each (random_packed_fast)
  std::shared_ptr<const ResidualProfile> res_profile;  // or as a checkpoint's rows per kind (RandomWeights)
  std::string res_profile_from;                        // where it came from (the table's note)
  std::vector<int> batches = {1, 4, 16};
  int64_t prompt = 2048;
  int gen = 128;
  int reps = 3;            // timed rounds of (prefill every sequence, decode gen steps); rates are their medians
  // random weights: fp16 | w4a16 | w4a16_qhead (the LM head quantized too) | w4a8
  std::vector<std::string> engines = {"fp16", "w4a16"};
  int64_t w4a8_min_m = 256;  // W4A8: GEMMs of at least this many rows on the INT8 kernel (0: never)
  std::string json;        // output file (optional)
  bool profile = false;    // also break a decode step down (GpuModel::profile_decode)
  uint64_t seed = 1;
};

void run_e2e_bench(const E2EOptions& o);

// Device-to-device copy bandwidth (bytes read + written per second) over a 1 GiB buffer, median of 10.
double measure_copy_bandwidth();

}  // namespace mosaic::gpu
