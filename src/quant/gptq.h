// GPTQ (Frantar et al. 2022): quantize W column by column, each column's rounding error spread
// over the not-yet-quantized columns through the upper Cholesky factor of the damped inverse
// Hessian, with lazy batch updates (block_size columns at a time, the rest by one GEMM).
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "format/packed_linear.h"
#include "quant/rtn.h"

namespace mosaic {

class GptqAccelerator;

struct GptqOptions {
  double damp = 0.01;     // lambda = damp * mean(diag(H)) added to the diagonal
  bool act_order = false; // process columns by descending diag(H); forces static groups
  int block_size = 128;   // lazy-batch width (columns); adjusted so no group straddles a batch
  // Static groups: every group's scale/zero is fit on the original W before any update (needed
  // with act_order, because the checkpoint format has no per-column group index). Otherwise a
  // group's params are fit on the partially updated weights when the first column of the group
  // is reached, as in the reference implementation.
  bool static_groups = false;
  ScaleOptions scale;     // divisor / clip search for the group fit (h = diag(H) weights it)
  // Where the solve runs: null = here (OpenBLAS/LAPACK), else e.g. the CUDA solver of
  // quant_gpu/ (cuSOLVER + cuBLAS). Not owned; results agree to float rounding, not bitwise.
  GptqAccelerator* accel = nullptr;
};

// What GPTQ saw while quantizing, for residual selection on a GPTQ base (original column order):
// err[n*K + k] = (weight after all earlier updates) - (its quantized value), and
// hinv_diag[k] = U_kk^2 = [(H_F)^-1]_kk over the not-yet-quantized columns F at that step, so
// err^2 / hinv_diag is the exact objective increase of that element's rounding (Frantar et al.).
struct GptqTrace {
  std::vector<float> err;
  std::vector<float> hinv_diag;
};

// The residual of quantize_gptq_with_residual as the solver sees it: block id of each block-grid
// cell (-1 = not kept) and the kept blocks' row scales; the solver fills `codes`.
struct GptqResidualPlan {
  int Br = 0, Bc = 0;
  int64_t nbc = 0;
  std::vector<int32_t> kept;   // [N/Br * K/Bc]
  std::vector<float> scales;   // [nnzb * Br]
  std::vector<uint8_t> codes;  // [nnzb, Br, Bc] unpacked output codes 0..15
};

// GPTQ's numerical core after the shared input checks (W and H finite, diag(H) >= 0, sizes):
// everything from the dead-column handling to the last column, in the original column order.
struct GptqSolve {
  std::span<const float> W;  // [N, K]
  int64_t N = 0, K = 0;
  std::span<const float> H;  // [K, K]
  int group = 0;
  bool symmetric = true;
  const GptqOptions* opt = nullptr;
  GptqResidualPlan* plan = nullptr;  // optional
  GptqTrace* trace = nullptr;        // optional
  std::vector<uint8_t>* codes = nullptr;      // out: [N, K] codes 0..15
  std::vector<GroupParams>* params = nullptr;  // out: [N, K / group]
};

// A GPTQ solver somewhere else than this CPU (quant_gpu/gptq_cuda.h). It must implement the
// semantics of the CPU solve in gptq.cpp exactly (same damping retries, same errors), differing
// only by floating-point summation order.
class GptqAccelerator {
 public:
  virtual ~GptqAccelerator() = default;
  virtual void solve(GptqSolve& s) = 0;
};

// The CPU solve (OpenBLAS/LAPACK): the reference every accelerator is tested against.
void gptq_solve_cpu(GptqSolve& s);

// Pieces of the solve every implementation must share exactly:
// the processing order: 0..K-1, or by descending diag(H) (stable) with act_order;
std::vector<int32_t> gptq_column_order(std::span<const float> hdiag, bool act_order);
// the end of the lazy batch starting at position i1: at most block_size columns, and with in-loop
// (non-static) groups no group may start inside a batch and end past it (its params are fit when
// its first column is reached, which must see every update).
int64_t gptq_batch_end(int64_t i1, int64_t K, int group, int block_size, bool static_groups);
// and with the integer scale grid (ScaleOptions::int_scale_grid): the static groups' params [N, G],
// fit on the dead-zeroed weights w(n, k), each moved to the grid neighbour with the smaller
// diag(H)-weighted error, and the residual plan's row scales likewise on the block row's RTN residual
// (before any code is rounded). hdiag [K].
void gptq_snap_to_int_grid(std::span<GroupParams> params, int64_t N, int64_t K, int group,
                           const std::function<float(int64_t n, int64_t k)>& w, std::span<const float> hdiag,
                           GptqResidualPlan* plan);

// W row-major [N, K], H row-major [K, K] (symmetric PSD, e.g. 2 X^T X / M). Columns with
// diag(H) == 0 never see any input: their weights are set to 0 (as the reference does).
// Throws mosaic::Error on bad sizes, non-finite values, or when H + damping is not positive
// definite even after raising the damping 10x three times.
PackedLinear quantize_gptq(std::span<const float> W, int64_t N, int64_t K,
                           std::span<const float> H, int group, bool symmetric,
                           const GptqOptions& opt = {}, GptqTrace* trace = nullptr);

// GPTQ with the residual inside the loop ("compensation after selection"): `layout` names the
// kept blocks (block_rows/cols, res_rowptr, res_colidx) and their per-row fp16 res_scales. In a
// kept block each weight becomes base(w) + s_r * round((w - base(w)) / s_r) (codes -8..7), and
// that much smaller error is what GPTQ propagates. Returns the base and the residual codes.
PackedLinear quantize_gptq_with_residual(std::span<const float> W, int64_t N, int64_t K,
                                         std::span<const float> H, int group, bool symmetric,
                                         const GptqOptions& opt, const PackedLinear& layout,
                                         GptqTrace* trace = nullptr);

}  // namespace mosaic
