#include "quant/gptq.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "format/int_scale_grid.h"
#include "util/error.h"
#include "util/half.h"

extern "C" {
// LAPACK (from OpenBLAS), column-major, 32-bit integers.
void dpotrf_(const char* uplo, const int* n, double* a, const int* lda, int* info);
void dpotri_(const char* uplo, const int* n, double* a, const int* lda, int* info);
}

namespace mosaic {

namespace {

// Upper Cholesky factor of (H + lambda I)^-1 in double, row-major [K, K]: the row-major upper
// triangle holds U with inverse = U^T U (the lower triangle is garbage). Returns an empty
// vector when H + lambda I is not positive definite.
std::vector<double> inverse_cholesky_upper(const std::vector<double>& H, int64_t K, double lambda) {
  std::vector<double> A = H;
  for (int64_t i = 0; i < K; ++i) A[i * K + i] += lambda;
  const int n = int(K);
  int info = 0;
  // A is symmetric, so row-major == column-major. 'L' (column-major lower) reads and writes
  // A[i + j*K] with i >= j.
  dpotrf_("L", &n, A.data(), &n, &info);
  if (info == 0) dpotri_("L", &n, A.data(), &n, &info);  // lower triangle of (H + lambda I)^-1
  if (info == 0) dpotrf_("L", &n, A.data(), &n, &info);  // inverse = L L^T, L column-major lower
  if (info != 0) return {};
  // Column-major L(i, j), i >= j, lives at A[i + j*K] = row-major A[j][i]: the row-major upper
  // triangle is exactly U = L^T.
  return A;
}

PackedLinear gptq_core(std::span<const float> W, int64_t N, int64_t K, std::span<const float> H,
                       int group, bool symmetric, const GptqOptions& opt, GptqResidualPlan* plan,
                       GptqTrace* trace) {
  check_weight_matrix(W, N, K, group, "quantize_gptq");
  MOSAIC_CHECK(int64_t(H.size()) == K * K, "quantize_gptq: Hessian has ", H.size(),
               " values, expected K*K = ", K, "*", K);
  MOSAIC_CHECK(K <= 46340, "quantize_gptq: K=", K, " too large for 32-bit LAPACK indexing");
  MOSAIC_CHECK(std::isfinite(opt.damp) && opt.damp >= 0.0, "quantize_gptq: damp ", opt.damp,
               " must be finite and >= 0");
  MOSAIC_CHECK(opt.block_size > 0, "quantize_gptq: block_size ", opt.block_size, " must be > 0");
  for (size_t i = 0; i < H.size(); ++i)
    MOSAIC_CHECK(std::isfinite(H[i]), "quantize_gptq: Hessian entry [", int64_t(i) / K, ", ",
                 int64_t(i) % K, "] is not finite");
  for (int64_t k = 0; k < K; ++k)
    MOSAIC_CHECK(H[k * K + k] >= 0.0f, "quantize_gptq: Hessian diagonal [", k, "] = ", H[k * K + k],
                 " is negative (not a PSD Hessian)");
  std::vector<uint8_t> codes;
  std::vector<GroupParams> params;
  GptqSolve s{W, N, K, H, group, symmetric, &opt, plan, trace, &codes, &params};
  if (opt.accel && opt.scale.grid.empty())  // accelerators implement the uniform grid only
    opt.accel->solve(s);
  else
    gptq_solve_cpu(s);
  return pack_base(N, K, group, symmetric, codes, params);
}

}  // namespace

std::vector<int32_t> gptq_column_order(std::span<const float> hdiag, bool act_order) {
  std::vector<int32_t> perm(hdiag.size());
  std::iota(perm.begin(), perm.end(), 0);
  if (act_order)
    std::stable_sort(perm.begin(), perm.end(), [&](int32_t a, int32_t b) { return hdiag[a] > hdiag[b]; });
  return perm;
}

int64_t gptq_batch_end(int64_t i1, int64_t K, int group, int block_size, bool static_groups) {
  int64_t i2 = std::min<int64_t>(i1 + block_size, K);
  if (!static_groups) {
    if (group <= block_size)
      i2 = i1 + std::max<int64_t>((i2 - i1) / group, 1) * group;
    else
      i2 = std::min<int64_t>(i2, (i1 / group + 1) * group);
  }
  return i2;
}

// The CPU solve (the reference every accelerator is tested against).
void gptq_snap_to_int_grid(std::span<GroupParams> params, int64_t N, int64_t K, int group,
                           const std::function<float(int64_t n, int64_t k)>& w, std::span<const float> hdiag,
                           GptqResidualPlan* plan) {
  const int64_t G = K / group;
  // Each scale to the grid neighbour with the smaller diag(H)-weighted error on the weights as fit.
  const std::vector<float> units = snap_params_to_int_grid(params, N, G, [&](int64_t n, int64_t g, const GroupParams& p) {
    return fit::group_error([&](int64_t i) { return w(n, g * group + i); }, [&](int64_t i) { return hdiag[size_t(g * group + i)]; },
                            group, p);
  });
  // The residual's row scales onto the same rows' units before any residual code is rounded, so
  // GPTQ propagates the error of the values that will be stored: each to the grid neighbour with the
  // smaller weighted error on the block row's RTN residual w - base(w) (a proxy: GPTQ's own residual
  // is only known column by column).
  std::vector<float> r0(static_cast<size_t>(plan ? plan->Bc : 0));
  for (int64_t br = 0; plan && br < N / plan->Br; ++br)
    for (int64_t bc = 0; bc < plan->nbc; ++bc) {
      const int32_t b = plan->kept[size_t(br * plan->nbc + bc)];
      if (b < 0) continue;
      for (int dn = 0; dn < plan->Br; ++dn) {
        const int64_t n = br * plan->Br + dn;
        const float u = units[size_t(n)];
        float& rs = plan->scales[size_t(int64_t(b) * plan->Br + dn)];
        bool have_r0 = false;  // the RTN residual, computed only when two neighbours compete
        const int64_t k0 = bc * plan->Bc;
        rs = int_grid_scale_by_error(rs, u, [&](float sc) {
          for (int64_t i = 0; i < plan->Bc && !have_r0; ++i) {
            const int64_t k = k0 + i;
            const float x = w(n, k);
            const GroupParams& gp = params[size_t(n * G + k / group)];
            r0[size_t(i)] = x - dequantize_code(quantize_code(x, gp), gp);
          }
          have_r0 = true;
          return fit::group_error([&](int64_t i) { return r0[size_t(i)]; }, [&](int64_t i) { return hdiag[size_t(k0 + i)]; },
                                  plan->Bc, GroupParams{sc, 8});
        });
      }
    }
}

void gptq_solve_cpu(GptqSolve& s) {
  const std::span<const float> W = s.W, H = s.H;
  const int64_t N = s.N, K = s.K;
  const int group = s.group;
  const bool symmetric = s.symmetric;
  const GptqOptions& opt = *s.opt;
  GptqResidualPlan* plan = s.plan;
  GptqTrace* trace = s.trace;
  const int64_t G = K / group;
  // The integer scale grid needs every group's scale before the first code (a row's unit follows
  // from its largest): static groups.
  const bool static_groups = opt.static_groups || opt.act_order || opt.scale.int_scale_grid;

  // Work in the transposed layout Wt [K, N]: a column of W is a contiguous row of Wt, so every
  // update below is an axpy over N or one GEMM.
  std::vector<float> Wt(static_cast<size_t>(K * N));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) Wt[k * N + n] = W[n * K + k];

  std::vector<double> Hd(H.begin(), H.end());
  std::vector<float> hdiag(static_cast<size_t>(K));
  for (int64_t k = 0; k < K; ++k) {
    const double d = Hd[k * K + k];
    hdiag[k] = float(d);
    if (d == 0.0) {  // dead input: no signal reaches this column, its weight is irrelevant
      Hd[k * K + k] = 1.0;
      std::fill(Wt.begin() + k * N, Wt.begin() + (k + 1) * N, 0.0f);
    }
  }

  // Static groups are fit on the (dead-zeroed) weights before any permutation or update.
  std::vector<GroupParams>& params = *s.params;
  params.assign(static_cast<size_t>(N * G), GroupParams{});
  auto fit_group_at = [&](int64_t n, int64_t g, const float* col0, const float* hcol0) {
    // col0 points at Wt[first column of group][n]; values are N apart.
    params[n * G + g] = fit_group(col0, group, N, symmetric, hcol0, 1, opt.scale);
  };
  if (static_groups)
    for (int64_t g = 0; g < G; ++g)
      for (int64_t n = 0; n < N; ++n)
        fit_group_at(n, g, Wt.data() + g * group * N + n, hdiag.data() + g * group);
  if (opt.scale.int_scale_grid)  // Wt is still the original, dead-zeroed W here
    gptq_snap_to_int_grid(params, N, K, int(group), [&](int64_t n, int64_t k) { return Wt[size_t(k * N + n)]; }, hdiag,
                          plan);

  // act_order: permute columns (rows of Wt, rows+cols of H) by descending diag(H).
  const std::vector<int32_t> perm = gptq_column_order(hdiag, opt.act_order);
  if (opt.act_order) {
    std::vector<float> Wp(Wt.size());
    for (int64_t j = 0; j < K; ++j)
      std::copy_n(Wt.begin() + perm[j] * N, N, Wp.begin() + j * N);
    Wt.swap(Wp);
    std::vector<double> Hp(Hd.size());
    for (int64_t i = 0; i < K; ++i)
      for (int64_t j = 0; j < K; ++j) Hp[i * K + j] = Hd[perm[i] * K + perm[j]];
    Hd.swap(Hp);
  }

  double mean_diag = 0.0;
  for (int64_t k = 0; k < K; ++k) mean_diag += Hd[k * K + k];
  mean_diag /= double(K);
  std::vector<double> Ud;
  double damp = opt.damp;
  for (int attempt = 0; attempt < 4 && Ud.empty(); ++attempt) {
    Ud = inverse_cholesky_upper(Hd, K, damp * mean_diag);
    if (Ud.empty()) damp = std::max(damp * 10.0, 1e-4);
  }
  MOSAIC_CHECK(!Ud.empty(), "quantize_gptq: Hessian [", K, ", ", K,
               "] is not positive definite even with damping ", damp / 10.0);
  std::vector<double>().swap(Hd);  // free before the float copy: peak memory 2 x K^2 doubles
  std::vector<float> U(static_cast<size_t>(K * K), 0.0f);
  for (int64_t r = 0; r < K; ++r)
    for (int64_t c = r; c < K; ++c) U[r * K + c] = float(Ud[r * K + c]);
  std::vector<double>().swap(Ud);

  std::vector<uint8_t>& codes = *s.codes;  // original column order
  codes.assign(static_cast<size_t>(N * K), 0);
  if (trace) {
    trace->err.assign(static_cast<size_t>(N * K), 0.0f);
    trace->hinv_diag.assign(static_cast<size_t>(K), 0.0f);
  }
  std::vector<float> err;                                  // [batch, N] scaled errors
  int64_t i1 = 0;
  while (i1 < K) {
    const int64_t i2 = gptq_batch_end(i1, K, group, opt.block_size, static_groups);
    const int64_t B = i2 - i1;
    err.assign(static_cast<size_t>(B * N), 0.0f);
    for (int64_t j = i1; j < i2; ++j) {
      float* w = Wt.data() + j * N;
      const int64_t col = perm[j];  // original column index
      const int64_t g = col / group;
      if (!static_groups && col % group == 0)
        for (int64_t n = 0; n < N; ++n)
          fit_group_at(n, g, Wt.data() + j * N + n, hdiag.data() + col);
      const float d = U[j * K + j];
      float* e = err.data() + (j - i1) * N;
      for (int64_t n = 0; n < N; ++n) {
        const GroupParams& gp = params[n * G + g];
        const int c = quantize_code(w[n], gp);
        codes[n * K + col] = uint8_t(c);
        float q = dequantize_code(c, gp);
        if (plan) {  // two-level quantizer inside kept residual blocks
          const int32_t b = plan->kept[(n / plan->Br) * plan->nbc + col / plan->Bc];
          if (b >= 0) {
            const int64_t row = int64_t(b) * plan->Br + n % plan->Br;
            const GroupParams rp{plan->scales[row], 8};
            const int rc = quantize_code(w[n] - q, rp);
            plan->codes[row * plan->Bc + col % plan->Bc] = uint8_t(rc);
            q += dequantize_code(rc, rp);  // the same float sum dequantize() forms
          }
        }
        if (trace) trace->err[n * K + col] = w[n] - q;
        e[n] = (w[n] - q) / d;
      }
      if (trace) trace->hinv_diag[col] = d * d;
      // In-batch update of the remaining columns of this batch.
      for (int64_t c = j + 1; c < i2; ++c)
        cblas_saxpy(int(N), -U[j * K + c], e, 1, Wt.data() + c * N, 1);
    }
    // Lazy update of every later column: Wt[i2:, :] -= U[i1:i2, i2:]^T * err.
    if (i2 < K)
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(K - i2), int(N), int(B), -1.0f,
                  U.data() + i1 * K + i2, int(K), err.data(), int(N), 1.0f,
                  Wt.data() + i2 * N, int(N));
    i1 = i2;
  }
}

PackedLinear quantize_gptq(std::span<const float> W, int64_t N, int64_t K,
                           std::span<const float> H, int group, bool symmetric,
                           const GptqOptions& opt, GptqTrace* trace) {
  return gptq_core(W, N, K, H, group, symmetric, opt, nullptr, trace);
}

PackedLinear quantize_gptq_with_residual(std::span<const float> W, int64_t N, int64_t K,
                                         std::span<const float> H, int group, bool symmetric,
                                         const GptqOptions& opt, const PackedLinear& layout,
                                         GptqTrace* trace) {
  check_weight_matrix(W, N, K, group, "quantize_gptq_with_residual");
  // Check the layout through validate() on a shell with a dummy base of the right size.
  PackedLinear shell = layout;
  shell.N = N;
  shell.K = K;
  shell.group = group;
  shell.symmetric = true;
  shell.qweight.assign(static_cast<size_t>(N * K / 2), 0x88);
  shell.scales.assign(static_cast<size_t>(N * (K / group)), 0);
  shell.qzeros.clear();
  const int64_t nnzb = layout.num_blocks_kept();
  shell.res_qvalues.assign(static_cast<size_t>(nnzb * layout.block_rows * (layout.block_cols / 2)), 0x88);
  validate(shell, "quantize_gptq_with_residual layout");

  GptqResidualPlan plan;
  plan.Br = layout.block_rows;
  plan.Bc = layout.block_cols;
  plan.nbc = K / plan.Bc;
  plan.kept.assign(static_cast<size_t>((N / plan.Br) * plan.nbc), -1);
  for (int64_t r = 0; r + 1 < int64_t(layout.res_rowptr.size()); ++r)
    for (int32_t b = layout.res_rowptr[r]; b < layout.res_rowptr[r + 1]; ++b)
      plan.kept[r * plan.nbc + layout.res_colidx[b]] = b;
  plan.scales.resize(layout.res_scales.size());
  for (size_t i = 0; i < plan.scales.size(); ++i) plan.scales[i] = fp16_to_float(layout.res_scales[i]);
  plan.codes.assign(static_cast<size_t>(nnzb * plan.Br * plan.Bc), 8);

  PackedLinear p = gptq_core(W, N, K, H, group, symmetric, opt, &plan, trace);
  p.block_rows = layout.block_rows;
  p.block_cols = layout.block_cols;
  p.res_rowptr = layout.res_rowptr;
  p.res_colidx = layout.res_colidx;
  // The solver's row scales (the layout's, or those moved onto the integer scale grid; fp16-exact).
  p.res_scales.resize(plan.scales.size());
  for (size_t i = 0; i < plan.scales.size(); ++i) p.res_scales[i] = float_to_fp16(plan.scales[i]);
  p.res_qvalues.resize(static_cast<size_t>(nnzb * plan.Br * (plan.Bc / 2)));
  for (int64_t row = 0; row < nnzb * plan.Br; ++row)
    pack_nibbles(std::span<const uint8_t>(plan.codes).subspan(size_t(row * plan.Bc), size_t(plan.Bc)),
                 std::span<uint8_t>(p.res_qvalues).subspan(size_t(row * (plan.Bc / 2)), size_t(plan.Bc / 2)));
  return p;
}

}  // namespace mosaic
