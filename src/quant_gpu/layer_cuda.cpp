#include "quant_gpu/layer_cuda.h"

#include <algorithm>
#include <cmath>

#include "model/model.h"
#include "quant_gpu/cuda_context.h"
#include "quant_gpu/hessian_cuda.h"
#include "quant_gpu/layer_kernels.h"
#include "util/error.h"

namespace mosaic::quant_gpu {

namespace {

using gpu::check_cuda;
namespace lk = layer_kernels;

// Workspace slots (grow-only; the weights' slots are refilled by every pass).
enum Slot {
  kWqkv, kWo, kWgu, kWdown,  // [qd + 2 kd, D], [D, qd], [2 I, D], [D, I]
  kParams,                   // norms, smoothing reciprocals, cos/sin tables
  kX, kH, kQkv, kQ, kK, kV, kScores, kHeads, kAtt, kY, kGu, kMid, kFlag,
  kSlots
};

// Attention scores are computed for this many floats of kv-head groups at a time (256 MB).
constexpr int64_t kScoreFloats = int64_t(64) << 20;

// Row-major Y [M, N] = X [M, K] W^T with W [N, K]: column-major Y^T = W^T(op) X^T.
void sgemm_nt(CudaContext& ctx, const float* X, const float* W, float* Y, int64_t M, int64_t N, int64_t K,
              const char* what) {
  const float one = 1.0f, zero = 0.0f;
  check_cublas(cublasSgemm(ctx.blas(), CUBLAS_OP_T, CUBLAS_OP_N, int(N), int(M), int(K), &one, W, int(K), X, int(K),
                           &zero, Y, int(N)),
               what);
}

CudaHessian* device_hessian(const std::shared_ptr<HessianAccumulator>& h) {
  if (!h) return nullptr;
  auto* d = dynamic_cast<CudaHessian*>(h.get());
  MOSAIC_CHECK(d, "GPU calibration pass: a Hessian to capture was not made by the CUDA accelerator");
  return d;
}

void upload(CudaContext& ctx, float* dst, std::span<const float> src, const char* what) {
  if (!src.empty())
    check_cuda(cudaMemcpyAsync(dst, src.data(), src.size_bytes(), cudaMemcpyHostToDevice, ctx.stream()), what);
}

}  // namespace

CudaLayerPass::CudaLayerPass(CudaContext& ctx) : ctx_(ctx), bufs_(kSlots) {}

float* CudaLayerPass::buffer(int slot, size_t floats) {
  gpu::DevBuf& b = bufs_[size_t(slot)];
  const size_t bytes = std::max<size_t>(floats, 1) * 4;
  if (b.bytes() < bytes) {
    b = gpu::DevBuf();  // free first: the old and new buffer need not coexist
    b = ctx_.alloc(bytes, "calibration layer workspace");
  }
  return b.as<float>();
}

void CudaLayerPass::run(const LayerPass& p, std::vector<std::vector<float>>& x, int64_t len) {
  MOSAIC_CHECK(p.cfg && p.rope, "GPU calibration pass: no config or RoPE table");
  const ModelConfig& c = *p.cfg;
  const int64_t D = c.hidden_size, I = c.intermediate_size, hd = c.head_dim;
  const int H = c.num_heads, Hkv = c.num_kv_heads, r = H / Hkv;
  const int64_t qd = int64_t(H) * hd, kd = int64_t(Hkv) * hd, qkv = qd + 2 * kd;
  const float eps = c.rms_norm_eps;
  cudaStream_t s = ctx_.stream();
  for (const auto& w : x)
    MOSAIC_CHECK(int64_t(w.size()) == len * D, "GPU calibration pass: a window has ", w.size(), " values, expected ",
                 len, " x ", D);
  const int64_t shapes[7][2] = {{qd, D}, {kd, D}, {kd, D}, {D, qd}, {I, D}, {I, D}, {D, I}};
  for (int id = 0; id < 7; ++id)
    MOSAIC_CHECK(p.W[size_t(id)] && int64_t(p.W[size_t(id)]->size()) == shapes[id][0] * shapes[id][1],
                 "GPU calibration pass: ", linear_name(LinearId(id)), " weights missing or not [", shapes[id][0], ", ",
                 shapes[id][1], "]");
  CudaHessian* cap[4];
  for (int k = 0; k < 4; ++k) cap[k] = device_hessian(p.capture[size_t(k)]);
  // A pass that only captures stops after its last capture (true-sequential's o / gate passes).
  int last = 3;
  if (!p.update_x) {
    last = -1;
    for (int k = 0; k < 4; ++k)
      if (cap[k]) last = k;
    if (last < 0) return;
  }

  // Weights: q/k/v stacked into one GEMM, gate/up into another.
  float* Wqkv = buffer(kWqkv, size_t(qkv * D));
  upload(ctx_, Wqkv, *p.W[int(LinearId::Q)], "upload q_proj");
  upload(ctx_, Wqkv + qd * D, *p.W[int(LinearId::K)], "upload k_proj");
  upload(ctx_, Wqkv + (qd + kd) * D, *p.W[int(LinearId::V)], "upload v_proj");
  float* Wo = buffer(kWo, size_t(D * qd));
  upload(ctx_, Wo, *p.W[int(LinearId::O)], "upload o_proj");
  float* Wgu = nullptr;
  float* Wdown = nullptr;
  if (last >= 2) {
    Wgu = buffer(kWgu, size_t(2 * I * D));
    upload(ctx_, Wgu, *p.W[int(LinearId::Gate)], "upload gate_proj");
    upload(ctx_, Wgu + I * D, *p.W[int(LinearId::Up)], "upload up_proj");
  }
  if (last >= 3) {
    Wdown = buffer(kWdown, size_t(D * I));
    upload(ctx_, Wdown, *p.W[int(LinearId::Down)], "upload down_proj");
  }

  // Small parameters: norms, smoothing reciprocals (null = none), RoPE tables of positions 0..len-1.
  const int64_t half = hd / 2;
  float* prm = buffer(kParams, size_t(4 * D + 2 * hd + 2 * len * half));
  float *attn_norm = prm, *ffn_norm = prm + D, *attn_inv = prm + 2 * D, *mlp_inv = prm + 3 * D,
        *q_norm = prm + 4 * D, *k_norm = q_norm + hd, *cos = k_norm + hd, *sin = cos + len * half;
  MOSAIC_CHECK(int64_t(p.attn_norm.size()) == D && int64_t(p.ffn_norm.size()) == D,
               "GPU calibration pass: norm weights of the wrong size");
  upload(ctx_, attn_norm, p.attn_norm, "upload norms");
  upload(ctx_, ffn_norm, p.ffn_norm, "upload norms");
  upload(ctx_, attn_inv, p.attn_inv_scale, "upload smoothing");
  upload(ctx_, mlp_inv, p.mlp_inv_scale, "upload smoothing");
  upload(ctx_, q_norm, p.q_norm, "upload q_norm");
  upload(ctx_, k_norm, p.k_norm, "upload k_norm");
  std::vector<float> cs(size_t(2 * len * half));
  for (int64_t t = 0; t < len; ++t) p.rope->cos_sin(t, cs.data() + t * half, cs.data() + (len + t) * half);
  upload(ctx_, cos, cs, "upload RoPE tables");
  const float* attn_scale = p.attn_inv_scale.empty() ? nullptr : attn_inv;
  const float* mlp_scale = p.mlp_inv_scale.empty() ? nullptr : mlp_inv;
  const float* qn = p.q_norm.empty() ? nullptr : q_norm;
  const float* kn = p.k_norm.empty() ? nullptr : k_norm;

  float* dx = buffer(kX, size_t(len * D));
  float* dh = buffer(kH, size_t(len * D));
  float* dqkv = buffer(kQkv, size_t(len * qkv));
  float* Q = buffer(kQ, size_t(len * qd));
  float* K = buffer(kK, size_t(len * kd));
  float* V = buffer(kV, size_t(len * kd));
  const int64_t per_group = int64_t(r) * len * len;  // scores of one kv head's query heads
  const int64_t groups = std::clamp<int64_t>(kScoreFloats / per_group, 1, Hkv);
  float* S = buffer(kScores, size_t(groups * per_group));
  float* O = buffer(kHeads, size_t(len * qd));
  float* att = buffer(kAtt, size_t(len * qd));
  float* dy = buffer(kY, size_t(len * D));
  float* gu = last >= 2 ? buffer(kGu, size_t(len * 2 * I)) : nullptr;
  float* mid = last >= 3 ? buffer(kMid, size_t(len * I)) : nullptr;
  int* bad = reinterpret_cast<int*>(buffer(kFlag, 1));
  check_cuda(cudaMemsetAsync(bad, 0, 4, s), "reset flag");

  // A linear's input: checked for finite values (what the CPU's Hessian add checks) when captured,
  // quantized per token when act_bits < 16, then added to the site's Hessian.
  auto site_input = [&](float* in, int64_t K_in, int site) {
    if (cap[site] || p.act_bits < 16) lk::prepare_rows(in, len, K_in, p.act_bits, bad, s);
    if (cap[site]) cap[site]->add_device(in, len);
  };
  const float scale = 1.0f / std::sqrt(float(hd)), one = 1.0f, zero = 0.0f;
  for (auto& w : x) {
    check_cuda(cudaMemcpyAsync(dx, w.data(), size_t(len * D) * 4, cudaMemcpyHostToDevice, s), "upload activations");
    // --- attention block
    lk::rms_norm(dx, attn_norm, attn_scale, len, D, eps, dh, s);
    site_input(dh, D, 0);
    sgemm_nt(ctx_, dh, Wqkv, dqkv, len, qkv, D, "cublasSgemm (q/k/v)");
    lk::split_heads(dqkv, len, H, Hkv, int(hd), qn, kn, eps, cos, sin, Q, K, V, s);
    for (int64_t g0 = 0; g0 < Hkv; g0 += groups) {  // per kv head g: its r query heads are rows [r*len, hd]
      const int batch = int(std::min<int64_t>(groups, Hkv - g0));
      // S_g [r*len, len] = scale * Q_g K_g^T   (column-major: S^T = K_g (op T) x Q_g^T)
      check_cublas(cublasSgemmStridedBatched(ctx_.blas(), CUBLAS_OP_T, CUBLAS_OP_N, int(len), int(r * len), int(hd),
                                             &scale, K + g0 * len * hd, int(hd), len * hd, Q + g0 * r * len * hd,
                                             int(hd), r * len * hd, &zero, S, int(len), per_group, batch),
                   "cublasSgemmStridedBatched (attention scores)");
      lk::causal_softmax(S, batch * r * len, len, s);
      // O_g [r*len, hd] = P_g V_g   (column-major: O^T = V_g^T x P_g^T)
      check_cublas(cublasSgemmStridedBatched(ctx_.blas(), CUBLAS_OP_N, CUBLAS_OP_N, int(hd), int(r * len), int(len),
                                             &one, V + g0 * len * hd, int(hd), len * hd, S, int(len), per_group, &zero,
                                             O + g0 * r * len * hd, int(hd), r * len * hd, batch),
                   "cublasSgemmStridedBatched (attention values)");
    }
    lk::merge_heads(O, len, H, int(hd), att, s);
    site_input(att, qd, 1);
    if (last >= 2) {
      sgemm_nt(ctx_, att, Wo, dy, len, D, qd, "cublasSgemm (o_proj)");
      lk::add(dx, dy, len * D, s);
      // --- MLP block
      lk::rms_norm(dx, ffn_norm, mlp_scale, len, D, eps, dh, s);
      site_input(dh, D, 2);
    }
    if (last >= 3) {
      sgemm_nt(ctx_, dh, Wgu, gu, len, 2 * I, D, "cublasSgemm (gate/up)");
      lk::silu_mul(gu, len, I, mid, s);
      site_input(mid, I, 3);
    }
    if (p.update_x) {
      sgemm_nt(ctx_, mid, Wdown, dy, len, D, I, "cublasSgemm (down_proj)");
      lk::add(dx, dy, len * D, s);
      check_cuda(cudaMemcpyAsync(w.data(), dx, size_t(len * D) * 4, cudaMemcpyDeviceToHost, s),
                 "download activations");
    }
  }
  int flag = 0;
  check_cuda(cudaMemcpyAsync(&flag, bad, 4, cudaMemcpyDeviceToHost, s), "download flag");
  ctx_.sync("calibration layer pass");
  MOSAIC_CHECK(flag == 0, "calibration: a linear layer's input has a non-finite value (the model overflows FP32 on ",
               "this calibration text, or its weights hold inf/NaN)");
}

}  // namespace mosaic::quant_gpu
