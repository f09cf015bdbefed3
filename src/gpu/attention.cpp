#include "gpu/attention.h"

#include <cmath>

#include "util/error.h"

namespace mosaic::gpu {

size_t attention_prefill_scratch(int64_t n, int64_t Tk, const kern::AttnDims& d) {
  return size_t(d.H / d.Hkv) * size_t(n) * size_t(Tk);
}

void attention_prefill(cublasHandle_t h, Act a, const void* q, const void* k_seq, const void* v_seq, int64_t n,
                       int64_t pos0, const kern::AttnDims& d, float* S, void* P, void* out, cudaStream_t s) {
  if (flash_prefill(a, q, k_seq, v_seq, n, pos0, d, out, s)) return;
  MOSAIC_CHECK(S && P, "attention_prefill: no score scratch for head_dim ", d.hd);
  const int rep = d.H / d.Hkv, hd = d.hd;
  const int64_t Tk = pos0 + n, H = d.H;
  const cudaDataType t = a == Act::BF16 ? CUDA_R_16BF : CUDA_R_16F;
  const float scale = 1.0f / std::sqrt(float(hd)), one = 1.f, zero = 0.f;
  auto ok = [](cublasStatus_t st, const char* what) {
    MOSAIC_CHECK(st == CUBLAS_STATUS_SUCCESS, "cuBLAS error in ", what, ": status ", int(st));
  };
  ok(cublasSetStream(h, s), "cublasSetStream");
  for (int g = 0; g < d.Hkv; ++g) {
    const char* kg = static_cast<const char*>(k_seq) + int64_t(g) * d.cap * hd * 2;
    const char* vg = static_cast<const char*>(v_seq) + int64_t(g) * d.cap * hd * 2;
    const char* qg = static_cast<const char*>(q) + int64_t(g) * rep * hd * 2;
    // Column-major view: S_r^T (Tk x n, ld Tk) = K_g (hd x Tk)^T * Q_r (hd x n, ld H*hd).
    ok(cublasGemmStridedBatchedEx(h, CUBLAS_OP_T, CUBLAS_OP_N, int(Tk), int(n), hd, &scale, kg, t, hd, 0, qg, t,
                                  int(H * hd), hd, &zero, S, CUDA_R_32F, int(Tk), n * Tk, rep, CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT),
       "cublasGemmStridedBatchedEx (Q K^T)");
    kern::causal_softmax(a, S, rep, n, Tk, pos0, P, s);
    // O_r^T (hd x n, ld H*hd) = V_g (hd x Tk) * P_r^T (Tk x n, ld Tk).
    char* og = static_cast<char*>(out) + int64_t(g) * rep * hd * 2;
    ok(cublasGemmStridedBatchedEx(h, CUBLAS_OP_N, CUBLAS_OP_N, hd, int(n), int(Tk), &one, vg, t, hd, 0, P, t, int(Tk),
                                  n * Tk, &zero, og, t, int(H * hd), hd, rep, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
       "cublasGemmStridedBatchedEx (P V)");
  }
}

}  // namespace mosaic::gpu
