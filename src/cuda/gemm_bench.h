// `mosaic bench gemm`: times cuBLAS FP16 and the ZipperEngine variants on LLM linear shapes,
// prints a markdown table and writes JSON rows (see docs/kernels.md, docs/results.md).
// --act-bits 8: the W4A8 rows (w4a8_quant, w4a8_dense, w4a8_zipper, w4a8_zipper_gemm_only).
#pragma once
#include <string>
#include <vector>

namespace mosaic::cuda {

struct GemmBenchOptions {
  std::string shapes = "llama3-8b";            // presets and/or KxN, comma separated
  std::vector<int> ms = {1, 4, 16, 32, 64, 128, 256, 1024, 4096};
  std::vector<double> budgets = {0.1};         // fraction of residual blocks kept
  int res_block_rows = 16;                     // residual blocks res_block_rows x 64 (16, 32 or 64: split to 16 x 64 at load)
  // Where residual blocks are kept: binomial (each with p = budget), balanced (every block row the
  // same count), rows (random block rows filled to ceil(res_row_cap x blocks per row) each: the
  // worst case of a selection capped at res_row_cap per row; 1 = whole rows).
  enum class ResPattern { kBinomial, kBalanced, kRows };
  ResPattern res_pattern = ResPattern::kBinomial;
  double res_row_cap = 1.0;
  std::string json;                            // write rows here when set
  int reps = 7;                                // timed repetitions (median reported)
  bool bf16 = false;                           // activations for the W4 variants (cuBLAS stays FP16)
  int act_bits = 16;                           // 8: the W4A8 variants instead of the W4A16 ones
  bool w4a8_int8 = true, w4a8_fp8 = true;      // with act_bits 8: which W4A8 kernels (INT8 mma.sync, FP8 wgmma)
};

void run_gemm_bench(const GemmBenchOptions& o);

}  // namespace mosaic::cuda
