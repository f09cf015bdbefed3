#include "gpu/linear.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "cuda/pdl.h"
#include "cuda/w4a8.h"
#include "cuda/zipper.h"
#include "gpu/act_quant.h"
#include "util/error.h"
#include "util/half.h"

namespace mosaic::gpu {

namespace {

void check_cublas(cublasStatus_t st, const char* what) {
  MOSAIC_CHECK(st == CUBLAS_STATUS_SUCCESS, "cuBLAS error in ", what, ": status ", int(st));
}

cudaDataType cuda_type(Act a) { return a == Act::BF16 ? CUDA_R_16BF : CUDA_R_16F; }

uint64_t splitmix(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace

DenseGpuLinear::DenseGpuLinear(cublasHandle_t h, Act a, DevBuf w, int64_t n, int64_t k, std::string what)
    : GpuLinear(n, k), h_(h), a_(a), own_(std::move(w)), w_(own_.get()), kind_(std::move(what)) {
  MOSAIC_CHECK(own_.bytes() == size_t(n * k) * 2, "dense GPU linear: weight buffer of ", own_.bytes(),
               " bytes for [", n, ", ", k, "]");
}

DenseGpuLinear::DenseGpuLinear(cublasHandle_t h, Act a, const void* w, int64_t n, int64_t k, std::string what)
    : GpuLinear(n, k), h_(h), a_(a), w_(w), kind_(std::move(what)) {}

// Row-major Y[M, N] = X[M, K] W[N, K]^T is column-major Y^T (N x M) = W^T(op T of the col-major
// K x N W) * X^T (col-major K x M).
void DenseGpuLinear::forward(const void* X, void* Y, int64_t M, cudaStream_t s) const {
  if (M <= 0) return;
  check_cublas(cublasSetStream(h_, s), "cublasSetStream");
  const float alpha = 1.f, beta = 0.f;
  const cudaDataType t = cuda_type(a_);
  check_cublas(cublasGemmEx(h_, CUBLAS_OP_T, CUBLAS_OP_N, int(N), int(M), int(K), &alpha, w_, t, int(K), X, t, int(K),
                            &beta, Y, t, int(N), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
               "cublasGemmEx (linear)");
}

void DenseGpuLinear::forward_f32(const void* X, float* Y, int64_t M, cudaStream_t s) const {
  if (M <= 0) return;
  check_cublas(cublasSetStream(h_, s), "cublasSetStream");
  const float alpha = 1.f, beta = 0.f;
  const cudaDataType t = cuda_type(a_);
  check_cublas(cublasGemmEx(h_, CUBLAS_OP_T, CUBLAS_OP_N, int(N), int(M), int(K), &alpha, w_, t, int(K), X, t, int(K),
                            &beta, Y, CUDA_R_32F, int(N), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
               "cublasGemmEx (lm head)");
}

ZipperGpuLinear::ZipperGpuLinear(const PackedLinear& p, Act a)
    : GpuLinear(p.N, p.K), z_(std::make_unique<cuda::ZipperLinear>(p)), a_(a) {
  kind_ = "zipper-w4g" + std::to_string(p.group) + (p.has_residual() ? "+res" : "");
}

ZipperGpuLinear::~ZipperGpuLinear() = default;

void ZipperGpuLinear::share(std::shared_ptr<cuda::ZipperShared> s) { z_->share(std::move(s)); }

void ZipperGpuLinear::forward(const void* X, void* Y, int64_t M, cudaStream_t s) const {
  // Auto, so that ZipperLinear::gemm may also split off a token-tile remainder (auto_tail_rows: an
  // explicit path turns that off). Without room for the dequantize path's N x K workspace, what Auto
  // would send there runs on the fused kernels instead; the wgmma kernel needs no such workspace, so
  // it keeps its M ranges.
  cuda::GemmPath path = cuda::GemmPath::Auto;
  if (!allow_dequant_path && z_->choose_path(M) == cuda::GemmPath::Dequant) path = cuda::GemmPath::Fused;
  // The decode step's small-M GEMMs prefetch their weights while the kernel before them (norm,
  // attention, SiLU) runs; MOSAIC_PDL=0 turns it off with the other kernels' PDL, MOSAIC_GEMM_PDL=0
  // for the GEMMs alone (read per call).
  z_->set_programmatic_launch(cuda::gemm_pdl_env_enabled());
  z_->gemm(X, Y, M, a_ == Act::BF16 ? cuda::DType::BF16 : cuda::DType::F16, s, cuda::Variant::Zipper, path);
}

size_t ZipperGpuLinear::device_bytes() const { return size_t(z_->weight_bytes(true)); }

ActQuantGpuLinear::ActQuantGpuLinear(std::unique_ptr<GpuLinear> inner, ActQuant q, Act a,
                                     const ActQuantScratch* scratch, std::unique_ptr<cuda::W4A8Linear> w4a8,
                                     int64_t w4a8_min_m)
    : GpuLinear(inner ? inner->N : 0, inner ? inner->K : 0),
      inner_(std::move(inner)),
      q_(q),
      a_(a),
      scratch_(scratch),
      w4a8_(std::move(w4a8)),
      w4a8_min_m_(w4a8_min_m) {
  MOSAIC_CHECK(inner_ && scratch_, "ActQuantGpuLinear: no inner layer or scratch");
  MOSAIC_CHECK(q.bits == 8 || q.bits == 4, "ActQuantGpuLinear: ", q.bits, " activation bits (8 or 4)");
  check_act_quant(q);
  MOSAIC_CHECK(!w4a8_ || (q.bits == 8 && q.format == ActFormat::kInt && w4a8_->N() == N && w4a8_->K() == K),
               "ActQuantGpuLinear: the W4A8 kernel runs 8-bit integer activations of the same [N, K] only");
}

ActQuantGpuLinear::~ActQuantGpuLinear() = default;

void ActQuantGpuLinear::forward(const void* X, void* Y, int64_t M, cudaStream_t s) const {
  if (M <= 0) return;
  if (uses_int8_kernel(M)) {  // quantizes the raw X itself (same rule, INT8 codes), INT8 tensor cores
    w4a8_->gemm(X, Y, M, a_ == Act::BF16 ? cuda::DType::BF16 : cuda::DType::F16, s);
    return;
  }
  if (input_quantized) {
    inner_->forward(X, Y, M, s);
    return;
  }
  MOSAIC_CHECK(size_t(M * K) * 2 <= scratch_->bytes, "ActQuantGpuLinear: ", M, " x ", K,
               " rows exceed the quantized-activation scratch (", scratch_->bytes, " bytes)");
  kern::act_fake_quant(a_, X, scratch_->data, M, K, q_.bits, q_.format == ActFormat::kFp8E4M3, s);
  inner_->forward(scratch_->data, Y, M, s);
}

kern::RowQuant ActQuantGpuLinear::producer_codes(int64_t M, cudaStream_t s) const {
  if (M <= 0 || !uses_int8_kernel(M)) return {};
  const auto [codes, scales] = w4a8_->input_workspace(M, s);
  return kern::RowQuant{8, false, codes, scales};
}

void ActQuantGpuLinear::forward_codes(void* Y, int64_t M, cudaStream_t s) const {
  MOSAIC_CHECK(uses_int8_kernel(M), "ActQuantGpuLinear: forward_codes at M=", M, " but the layer takes M rows on its 16-bit path");
  w4a8_->gemm_quantized(Y, M, a_ == Act::BF16 ? cuda::DType::BF16 : cuda::DType::F16, s);
}

size_t ActQuantGpuLinear::device_bytes() const {
  return inner_->device_bytes() + (w4a8_ ? size_t(w4a8_->weight_bytes(true)) : 0);
}

std::string ActQuantGpuLinear::kind() const {
  std::string k = inner_->kind() + "-a" + std::to_string(q_.bits) + (q_.format == ActFormat::kFp8E4M3 ? "fp8" : "");
  if (w4a8_) k += " (+w4a8 int8 for M >= " + std::to_string(w4a8_min_m_) + ")";
  return k;
}

Int8GpuLinear::Int8GpuLinear(cublasHandle_t h, Act a, const int8_t* codes, const uint16_t* scale_f16, int64_t n,
                             int64_t k)
    : GpuLinear(n, k), h_(h), a_(a) {
  MOSAIC_CHECK(n > 0 && k > 0 && k % 64 == 0, "int8 LM head: shape [", n, ", ", k,
               "] not supported on the GPU (hidden size must be a multiple of 64)");
  const std::vector<int8_t> packed = kern::int8_rows_repack(codes, n, k);  // the kernel's order (int8_head.cu)
  w_ = DevBuf(packed.size(), "int8 LM head");
  s_ = DevBuf(size_t(n) * 2, "int8 LM head scales");
  check_cuda(cudaMemcpy(w_.get(), packed.data(), packed.size(), cudaMemcpyHostToDevice), "cudaMemcpy (int8 LM head)");
  check_cuda(cudaMemcpy(s_.get(), scale_f16, size_t(n) * 2, cudaMemcpyHostToDevice), "cudaMemcpy (int8 LM head)");
  // Large-M scratch, allocated here (never inside a captured decode step): 32 MiB of rows, a multiple of 16.
  slice_rows_ = std::max<int64_t>(16, std::min<int64_t>((n + 15) / 16 * 16, (int64_t(32) << 20) / (2 * k) / 16 * 16));
  scratch_ = DevBuf(size_t(slice_rows_ * k) * 2, "int8 LM head scratch");
}

void Int8GpuLinear::run(const void* X, void* Y, int64_t M, bool y_f32, cudaStream_t s) const {
  if (M <= 0) return;
  if (M <= kMaxKernelRows) return kern::int8_rows_gemm(a_, w_.as<int8_t>(), s_.get(), N, K, X, M, Y, y_f32, s);
  check_cublas(cublasSetStream(h_, s), "cublasSetStream");
  const float alpha = 1.f, beta = 0.f;
  const cudaDataType t = cuda_type(a_), ty = y_f32 ? CUDA_R_32F : t;
  const size_t ysz = y_f32 ? 4 : 2;
  for (int64_t r0 = 0; r0 < N; r0 += slice_rows_) {
    const int64_t n = std::min(slice_rows_, N - r0);
    kern::int8_rows_dequant(a_, w_.as<int8_t>(), s_.get(), K, r0, n, scratch_.get(), s);
    check_cuda(cudaGetLastError(), "int8 LM head dequantize launch");
    // Columns [r0, r0 + n) of the row-major Y [M, N]: Y + r0, leading dimension N (DenseGpuLinear's form).
    check_cublas(cublasGemmEx(h_, CUBLAS_OP_T, CUBLAS_OP_N, int(n), int(M), int(K), &alpha, scratch_.get(), t, int(K), X,
                              t, int(K), &beta, static_cast<uint8_t*>(Y) + size_t(r0) * ysz, ty, int(N),
                              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                 "cublasGemmEx (int8 LM head)");
  }
}

void Int8GpuLinear::forward(const void* X, void* Y, int64_t M, cudaStream_t s) const { run(X, Y, M, false, s); }

void Int8GpuLinear::forward_f32(const void* X, float* Y, int64_t M, cudaStream_t s) const { run(X, Y, M, true, s); }

std::unique_ptr<Int8GpuLinear> random_int8_linear(cublasHandle_t h, Act a, int64_t N, int64_t K, uint64_t seed) {
  std::vector<int8_t> q(size_t(N * K));
  uint64_t s = seed;
  for (size_t i = 0; i < q.size(); i += 8) {
    const uint64_t v = splitmix(s);
    for (size_t j = 0; j < 8 && i + j < q.size(); ++j) q[i + j] = int8_t(int(uint8_t(v >> (8 * j)) % 255) - 127);
  }
  const std::vector<uint16_t> sc(size_t(N), float_to_fp16(float(1.0 / (127.0 * std::sqrt(double(K))))));
  return std::make_unique<Int8GpuLinear>(h, a, q.data(), sc.data(), N, K);
}

DevBuf upload_weights(Act a, const float* w, int64_t n, cudaStream_t s) {
  (void)s;
  std::vector<uint16_t> bits(static_cast<size_t>(n));
  if (a == Act::BF16)
    for (int64_t i = 0; i < n; ++i) bits[size_t(i)] = float_to_bf16(w[i]);
  else
    for (int64_t i = 0; i < n; ++i) bits[size_t(i)] = float_to_fp16(w[i]);
  DevBuf d(size_t(n) * 2, "weights");
  check_cuda(cudaMemcpy(d.get(), bits.data(), size_t(n) * 2, cudaMemcpyHostToDevice), "cudaMemcpy (weights)");
  return d;
}

PackedLinear concat_rows(const std::vector<const PackedLinear*>& parts) {
  MOSAIC_CHECK(!parts.empty(), "concat_rows: no layers");
  const PackedLinear& f = *parts[0];
  PackedLinear out;
  out.K = f.K;
  out.group = f.group;
  out.symmetric = f.symmetric;
  out.grid = f.grid;
  bool any_res = false;
  for (const PackedLinear* p : parts) {
    MOSAIC_CHECK(p->K == f.K && p->group == f.group && p->symmetric == f.symmetric && p->grid == f.grid,
                 "concat_rows: layers differ in K, group, symmetry or grid");
    if (p->has_residual()) {
      if (any_res)
        MOSAIC_CHECK(p->block_rows == out.block_rows && p->block_cols == out.block_cols,
                     "concat_rows: residual block shapes differ");
      out.block_rows = p->block_rows;
      out.block_cols = p->block_cols;
      any_res = true;
    }
  }
  for (const PackedLinear* p : parts) {
    if (any_res) MOSAIC_CHECK(p->N % out.block_rows == 0, "concat_rows: N = ", p->N, " not a multiple of Br");
    out.N += p->N;
    out.qweight.insert(out.qweight.end(), p->qweight.begin(), p->qweight.end());
    out.scales.insert(out.scales.end(), p->scales.begin(), p->scales.end());
    out.qzeros.insert(out.qzeros.end(), p->qzeros.begin(), p->qzeros.end());
  }
  if (!any_res) return out;
  out.res_rowptr.push_back(0);
  for (const PackedLinear* p : parts) {
    const int64_t rows = p->N / out.block_rows;
    const int32_t base = out.res_rowptr.back();
    for (int64_t r = 0; r < rows; ++r)
      out.res_rowptr.push_back(base + (p->has_residual() ? p->res_rowptr[size_t(r + 1)] : 0));
    out.res_colidx.insert(out.res_colidx.end(), p->res_colidx.begin(), p->res_colidx.end());
    out.res_qvalues.insert(out.res_qvalues.end(), p->res_qvalues.begin(), p->res_qvalues.end());
    out.res_scales.insert(out.res_scales.end(), p->res_scales.begin(), p->res_scales.end());
  }
  return out;
}

PackedLinear random_packed_fast(int64_t N, int64_t K, int group, double budget, uint64_t seed, double rows_cap,
                                const ResidualKind* profile) {
  PackedLinear p;
  p.N = N;
  p.K = K;
  p.group = group;
  p.symmetric = true;
  uint64_t s = seed * 0x2545f4914f6cdd1dull + 1;
  p.qweight.resize(size_t(N * K / 2));
  for (size_t i = 0; i < p.qweight.size(); i += 8) {
    const uint64_t r = splitmix(s);
    std::memcpy(p.qweight.data() + i, &r, std::min<size_t>(8, p.qweight.size() - i));
  }
  const float sc = float(1.0 / (8.0 * std::sqrt(double(K))));
  p.scales.resize(size_t(N * (K / group)));
  for (auto& x : p.scales) x = float_to_fp16(sc * (0.5f + float(splitmix(s) >> 40) / float(1 << 24)));
  const int64_t brs = N / p.block_rows, bcs = K / p.block_cols;
  const int64_t keep = profile ? 1 : budget_blocks(budget, brs * bcs);
  if (keep == 0) return p;
  // Blocks per block row: evenly (about keep / brs each), concentrated on random rows, or drawn from a
  // checkpoint's rows of that kind of linear (the budget then follows the profile).
  std::vector<int64_t> per_row(static_cast<size_t>(brs), 0);
  if (profile) {
    per_row = profile_row_counts(*profile, brs, bcs, [&] { return splitmix(s); });
    int64_t any = 0;
    for (int64_t n : per_row) any += n;
    if (any == 0) return p;
  } else if (rows_cap > 0) {
    per_row = concentrated_row_counts(brs, keep, row_cap_blocks(rows_cap, bcs), [&] { return splitmix(s); });
  } else {
    for (int64_t r = 0; r < brs; ++r) per_row[size_t(r)] = keep * (r + 1) / brs - keep * r / brs;
  }
  p.res_rowptr.assign(size_t(brs + 1), 0);
  std::vector<char> used(static_cast<size_t>(bcs));
  for (int64_t r = 0; r < brs; ++r) {
    const int64_t n_r = per_row[size_t(r)];
    std::fill(used.begin(), used.end(), 0);
    for (int64_t c = 0, placed = 0; placed < n_r; ++c) {
      const int64_t col = int64_t(splitmix(s) % uint64_t(bcs));
      if (!used[size_t(col)]) {
        used[size_t(col)] = 1;
        ++placed;
      }
    }
    for (int64_t c = 0; c < bcs; ++c)
      if (used[size_t(c)]) p.res_colidx.push_back(int32_t(c));
    p.res_rowptr[size_t(r + 1)] = int32_t(p.res_colidx.size());
  }
  const size_t nb = p.res_colidx.size();
  p.res_qvalues.resize(nb * size_t(p.block_rows * p.block_cols / 2));
  for (size_t i = 0; i < p.res_qvalues.size(); i += 8) {
    const uint64_t r = splitmix(s);
    std::memcpy(p.res_qvalues.data() + i, &r, std::min<size_t>(8, p.res_qvalues.size() - i));
  }
  p.res_scales.assign(nb * size_t(p.block_rows), float_to_fp16(sc / 8));
  return p;
}

}  // namespace mosaic::gpu
