// GPTQ's solve on the GPU: see gptq_cuda.h for the layout, quant/gptq.cpp (gptq_solve_cpu) for
// the reference this follows step by step; the kernels are in gptq_kernels.cu.
#include "quant_gpu/gptq_cuda.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "quant_gpu/gptq_kernels.h"
#include "util/error.h"

namespace mosaic::quant_gpu {

namespace {

using gpu::check_cuda;
using gpu::DevBuf;
namespace k = kernels;

template <typename T>
void upload(DevBuf& d, const T* h, size_t count, cudaStream_t s) {
  check_cuda(cudaMemcpyAsync(d.get(), h, count * sizeof(T), cudaMemcpyHostToDevice, s), "upload");
}
template <typename T>
void download(T* h, const DevBuf& d, size_t count, cudaStream_t s) {
  check_cuda(cudaMemcpyAsync(h, d.get(), count * sizeof(T), cudaMemcpyDeviceToHost, s), "download");
}

// U = upper Cholesky factor of (Hd + lambda I)^-1 with the CPU's damping retries. Hd is consumed.
DevBuf inverse_cholesky_upper(CudaContext& ctx, DevBuf& Hd, int64_t K, double mean_diag, double damp0) {
  const cudaStream_t s = ctx.stream();
  const int n = int(K);
  DevBuf A = ctx.alloc(size_t(K * K) * sizeof(double), "GPTQ Cholesky factor");
  DevBuf info = ctx.alloc(sizeof(int), "cuSOLVER info");
  int lwork = 0, lw2 = 0;
  check_cusolver(cusolverDnDpotrf_bufferSize(ctx.solver(), CUBLAS_FILL_MODE_LOWER, n, A.as<double>(), n, &lwork),
                 "potrf buffer size");
  check_cusolver(cusolverDnDpotri_bufferSize(ctx.solver(), CUBLAS_FILL_MODE_LOWER, n, A.as<double>(), n, &lw2),
                 "potri buffer size");
  lwork = std::max(lwork, lw2);
  DevBuf work = ctx.alloc(size_t(std::max(lwork, 1)) * sizeof(double), "cuSOLVER workspace");
  auto step = [&](bool inverse) {
    int h_info = 0;
    if (inverse)
      check_cusolver(cusolverDnDpotri(ctx.solver(), CUBLAS_FILL_MODE_LOWER, n, A.as<double>(), n, work.as<double>(),
                                      lwork, info.as<int>()),
                     "cusolverDnDpotri");
    else
      check_cusolver(cusolverDnDpotrf(ctx.solver(), CUBLAS_FILL_MODE_LOWER, n, A.as<double>(), n, work.as<double>(),
                                      lwork, info.as<int>()),
                     "cusolverDnDpotrf");
    check_cuda(cudaMemcpyAsync(&h_info, info.get(), sizeof(int), cudaMemcpyDeviceToHost, s), "info");
    ctx.sync("Cholesky");
    return h_info == 0;
  };
  double damp = damp0;
  bool ok = false;
  for (int attempt = 0; attempt < 4 && !ok; ++attempt) {
    check_cuda(cudaMemcpyAsync(A.get(), Hd.get(), size_t(K * K) * sizeof(double), cudaMemcpyDeviceToDevice, s),
               "copy H");
    k::add_diagonal(A.as<double>(), K, damp * mean_diag, s);
    ok = step(false) && step(true) && step(false);  // L L^T = H; H^-1; its factor
    if (!ok) damp = std::max(damp * 10.0, 1e-4);
  }
  MOSAIC_CHECK(ok, "quantize_gptq: Hessian [", K, ", ", K, "] is not positive definite even with damping ",
               damp / 10.0);
  Hd = DevBuf();
  work = DevBuf();
  DevBuf U = ctx.alloc(size_t(K * K) * sizeof(float), "GPTQ U");
  k::upper_to_float(A.as<double>(), K, U.as<float>(), s);
  return U;
}

}  // namespace

void CudaGptq::solve(GptqSolve& sv) {
  const int64_t N = sv.N, K = sv.K, group = sv.group, G = K / group;
  const GptqOptions& opt = *sv.opt;
  // The integer scale grid needs every group's scale before the first code (as the CPU solve).
  const bool static_groups = opt.static_groups || opt.act_order || opt.scale.int_scale_grid;
  const cudaStream_t s = ctx_.stream();
  MOSAIC_CHECK(opt.scale.sym_divisor > 0.0f && opt.scale.clip_min > 0.0f && opt.scale.clip_min <= 1.0f,
               "bad scale options: divisor ", opt.scale.sym_divisor, ", clip_min ", opt.scale.clip_min);
  MOSAIC_CHECK(N <= int64_t(65535) * 65535 && K <= 65535, "quantize_gptq (CUDA): shape [", N, ", ", K,
               "] is too large for the GPU solver's grid");

  // Host side: diag(H), dead inputs, the processing order, mean of the (permuted) diagonal.
  std::vector<float> hdiag(static_cast<size_t>(K));
  std::vector<uint8_t> dead(static_cast<size_t>(K), 0);
  std::vector<int32_t> dead_rows;
  for (int64_t k = 0; k < K; ++k) {
    hdiag[size_t(k)] = sv.H[size_t(k * K + k)];
    if (hdiag[size_t(k)] == 0.0f) {
      dead[size_t(k)] = 1;
      dead_rows.push_back(int32_t(k));
    }
  }
  const std::vector<int32_t> perm = gptq_column_order(hdiag, opt.act_order);
  std::vector<int32_t> iperm(static_cast<size_t>(K));
  for (int64_t j = 0; j < K; ++j) iperm[size_t(perm[size_t(j)])] = int32_t(j);
  double mean_diag = 0.0;
  for (int64_t j = 0; j < K; ++j) {
    const int32_t k = perm[size_t(j)];
    mean_diag += dead[size_t(k)] ? 1.0 : double(hdiag[size_t(k)]);
  }
  mean_diag /= double(K);

  DevBuf d_perm = ctx_.alloc(size_t(K) * 4, "perm"), d_iperm = ctx_.alloc(size_t(K) * 4, "iperm");
  DevBuf d_hdiag = ctx_.alloc(size_t(K) * 4, "diag(H)"), d_dead = ctx_.alloc(size_t(K), "dead inputs");
  upload(d_perm, perm.data(), perm.size(), s);
  upload(d_iperm, iperm.data(), iperm.size(), s);
  upload(d_hdiag, hdiag.data(), hdiag.size(), s);
  upload(d_dead, dead.data(), dead.size(), s);

  // H -> permuted double -> U.
  DevBuf U;
  {
    DevBuf Hf = ctx_.alloc(size_t(K * K) * 4, "Hessian");
    upload(Hf, sv.H.data(), size_t(K * K), s);
    DevBuf Hd = ctx_.alloc(size_t(K * K) * 8, "Hessian (fp64)");
    k::permuted_double(Hf.as<float>(), d_perm.as<int32_t>(), d_dead.as<uint8_t>(), K, Hd.as<double>(), s);
    Hf = DevBuf();
    U = inverse_cholesky_upper(ctx_, Hd, K, mean_diag, opt.damp);
  }

  // W -> Wt [K, N] (original order), dead rows zeroed, static fits, then the processing order.
  DevBuf Wt = ctx_.alloc(size_t(N * K) * 4, "GPTQ weights");
  {
    DevBuf W = ctx_.alloc(size_t(N * K) * 4, "weights");
    upload(W, sv.W.data(), size_t(N * K), s);
    k::transpose(W.as<float>(), N, K, Wt.as<float>(), s);
  }
  if (!dead_rows.empty()) {
    DevBuf d_rows = ctx_.alloc(dead_rows.size() * 4, "dead rows");
    upload(d_rows, dead_rows.data(), dead_rows.size(), s);
    k::zero_rows(Wt.as<float>(), N, d_rows.as<int32_t>(), int(dead_rows.size()), s);
    ctx_.sync("dead rows");
  }
  const k::FitArgs fa{sv.symmetric, opt.scale.sym_divisor, opt.scale.clip_grid, opt.scale.clip_min};
  DevBuf d_scale = ctx_.alloc(size_t(N * G) * 4, "group scales"), d_zero = ctx_.alloc(size_t(N * G) * 4, "zeros");
  DevBuf d_overflow = ctx_.alloc(4, "overflow flag");
  check_cuda(cudaMemsetAsync(d_overflow.get(), 0, 4, s), "memset");
  if (static_groups) {
    k::fit_static(Wt.as<float>(), N, G, int(group), d_hdiag.as<float>(), fa, d_scale.as<float>(), d_zero.as<int>(),
                  d_overflow.as<int>(), s);
  }
  if (opt.scale.int_scale_grid) {
    // The fits onto the grid on the host, with the CPU solve's code (gptq_snap_to_int_grid): the GPU fits
    // equal the CPU's, and so then do the snapped scales and the residual plan's row scales (the plan is
    // uploaded below, after this).
    std::vector<float> sc(static_cast<size_t>(N * G));
    std::vector<int> zr(static_cast<size_t>(N * G));
    download(sc.data(), d_scale, sc.size(), s);
    download(zr.data(), d_zero, zr.size(), s);
    ctx_.sync("static fits");
    std::vector<GroupParams> gp(sc.size());
    for (size_t i = 0; i < sc.size(); ++i) gp[i] = GroupParams{sc[i], zr[i]};
    gptq_snap_to_int_grid(
        gp, N, K, int(group),
        [&](int64_t n, int64_t k) { return dead[size_t(k)] ? 0.0f : sv.W[size_t(n * K + k)]; }, hdiag, sv.plan);
    for (size_t i = 0; i < sc.size(); ++i) sc[i] = gp[i].scale;
    upload(d_scale, sc.data(), sc.size(), s);
  }
  if (opt.act_order) {
    DevBuf P = ctx_.alloc(size_t(N * K) * 4, "permuted weights");
    k::gather_rows(Wt.as<float>(), d_perm.as<int32_t>(), N, K, P.as<float>(), s);
    ctx_.sync("permute");
    Wt = std::move(P);
  }

  // Residual plan and outputs.
  GptqResidualPlan* plan = sv.plan;
  DevBuf d_kept, d_res_scale, d_res_codes;
  if (plan) {
    d_kept = ctx_.alloc(plan->kept.size() * 4, "residual block map");
    d_res_scale = ctx_.alloc(std::max<size_t>(plan->scales.size(), 1) * 4, "residual scales");
    d_res_codes = ctx_.alloc(std::max<size_t>(plan->codes.size(), 1), "residual codes");
    upload(d_kept, plan->kept.data(), plan->kept.size(), s);
    if (!plan->scales.empty()) upload(d_res_scale, plan->scales.data(), plan->scales.size(), s);
    if (!plan->codes.empty()) upload(d_res_codes, plan->codes.data(), plan->codes.size(), s);
  }
  const int bs = std::max(1, opt.block_size);
  DevBuf E = ctx_.alloc(size_t(bs) * size_t(N) * 4, "GPTQ batch errors");
  DevBuf codes_t = ctx_.alloc(size_t(N * K), "codes");
  DevBuf err_t, hinv;
  if (sv.trace) {
    err_t = ctx_.alloc(size_t(N * K) * 4, "GPTQ trace");
    hinv = ctx_.alloc(size_t(K) * 4, "GPTQ trace diagonal");
  }

  const int T = N >= 4096 ? 64 : 32;
  const size_t smem = k::batch_smem(bs, T), max_smem = k::max_batch_smem();
  MOSAIC_CHECK(smem <= max_smem, "quantize_gptq (CUDA): block_size ", bs,
               " needs more shared memory than the GPU has (", smem, " > ", max_smem, " bytes); use <= 160");

  k::BatchArgs a{};
  a.Wt = Wt.as<float>();
  a.U = U.as<float>();
  a.N = N;
  a.K = K;
  a.G = G;
  a.group = int(group);
  a.static_groups = static_groups;
  a.perm = d_perm.as<int32_t>();
  a.scale = d_scale.as<float>();
  a.zero = d_zero.as<int>();
  a.hdiag = d_hdiag.as<float>();
  a.fit = fa;
  a.overflow = d_overflow.as<int>();
  if (plan) {
    a.kept = d_kept.as<int32_t>();
    a.nbc = plan->nbc;
    a.Br = plan->Br;
    a.Bc = plan->Bc;
    a.res_scale = d_res_scale.as<float>();
    a.res_codes = d_res_codes.as<uint8_t>();
  }
  a.E = E.as<float>();
  a.codes_t = codes_t.as<uint8_t>();
  a.err_t = sv.trace ? err_t.as<float>() : nullptr;
  a.hinv = sv.trace ? hinv.as<float>() : nullptr;
  const float minus_one = -1.0f, one = 1.0f;
  int64_t i1 = 0;
  while (i1 < K) {
    const int64_t i2 = gptq_batch_end(i1, K, int(group), bs, static_groups);  // the CPU solve's batches
    a.i1 = i1;
    a.B = int(i2 - i1);
    k::gptq_batch(a, T, s);
    // Lazy update of every later column: Wt[i2:, :] -= U[i1:i2, i2:]^T E. Column-major views:
    // Wt = N x K (ld N), E = N x B (ld N), U^T = K x K (ld K).
    if (i2 < K)
      check_cublas(cublasSgemm(ctx_.blas(), CUBLAS_OP_N, CUBLAS_OP_T, int(N), int(K - i2), a.B, &minus_one,
                               E.as<float>(), int(N), U.as<float>() + i1 * K + i2, int(K), &one,
                               Wt.as<float>() + i2 * N, int(N)),
                   "cublasSgemm (GPTQ lazy update)");
    i1 = i2;
  }
  int overflow = 0;
  check_cuda(cudaMemcpyAsync(&overflow, d_overflow.get(), 4, cudaMemcpyDeviceToHost, s), "overflow flag");
  ctx_.sync("GPTQ column loop");
  MOSAIC_CHECK(!overflow, "quantization scale inf overflows fp16 (weights too large)");
  U = DevBuf();
  Wt = DevBuf();
  E = DevBuf();

  // Back to the original column order and to the host.
  {
    DevBuf codes = ctx_.alloc(size_t(N * K), "codes");
    k::unpermute(codes_t.as<uint8_t>(), d_iperm.as<int32_t>(), N, K, codes.as<uint8_t>(), s);
    sv.codes->resize(size_t(N * K));
    download(sv.codes->data(), codes, size_t(N * K), s);
    ctx_.sync("codes");
  }
  std::vector<float> scale(static_cast<size_t>(N * G));
  std::vector<int> zero(static_cast<size_t>(N * G));
  download(scale.data(), d_scale, scale.size(), s);
  download(zero.data(), d_zero, zero.size(), s);
  if (sv.trace) {
    DevBuf err = ctx_.alloc(size_t(N * K) * 4, "GPTQ trace");
    k::unpermute(err_t.as<float>(), d_iperm.as<int32_t>(), N, K, err.as<float>(), s);
    sv.trace->err.resize(size_t(N * K));
    sv.trace->hinv_diag.resize(size_t(K));
    download(sv.trace->err.data(), err, size_t(N * K), s);
    download(sv.trace->hinv_diag.data(), hinv, size_t(K), s);
    ctx_.sync("trace");
  }
  if (plan && !plan->codes.empty()) download(plan->codes.data(), d_res_codes, plan->codes.size(), s);
  ctx_.sync("GPTQ results");
  sv.params->resize(size_t(N * G));
  for (size_t i = 0; i < scale.size(); ++i) (*sv.params)[i] = GroupParams{scale[i], zero[i]};
}

}  // namespace mosaic::quant_gpu
