// GPTQ's solve on a CUDA GPU (cuSOLVER for the inverse Cholesky factor, cuBLAS for the lazy batch
// updates, our kernels for the group fits, the column loop and the layout changes). Implements
// exactly the semantics of gptq_solve_cpu (quant/gptq.cpp): dead columns, static or in-loop
// group fits with the same clip search (quant/group_fit.h), act-order, the residual inside the
// loop, the trace, the damping retries and their errors. The results agree with the CPU to float
// summation order: the group fits of static groups are bit-identical, codes may differ where a
// value sits within rounding of a decision boundary (tests/quant_gpu).
//
// Device layout during the solve (j = position in the processing order, perm[j] = column):
//   Wt    [K, N] fp32   row j = column perm[j] of W after every update so far
//   U     [K, K] fp32   upper Cholesky factor of (H_perm + lambda I)^-1, row-major
//   E     [B, N] fp32   the batch's scaled errors (w - q) / U_jj, fed to the lazy update
//   codes_t, err_t [K, N]   per processing position; un-permuted to [N, K] at the end
// The column loop (one kernel per batch of <= 128 columns): thread n owns output row n; the
// batch's U block (B x B) and the block's rows of Wt (B x threads) sit in shared memory, so the
// in-batch rank-1 updates never leave the SM; the rest of Wt gets one SGEMM per batch.
#pragma once
#include "quant/gptq.h"
#include "quant_gpu/cuda_context.h"

namespace mosaic::quant_gpu {

class CudaGptq : public GptqAccelerator {
 public:
  explicit CudaGptq(CudaContext& ctx) : ctx_(ctx) {}
  void solve(GptqSolve& s) override;

 private:
  CudaContext& ctx_;
};

}  // namespace mosaic::quant_gpu
