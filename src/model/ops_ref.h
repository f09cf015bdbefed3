// Scalar reference ops of the CPU engine: the oracle every faster path (ops.h, quantized linears,
// CUDA kernels) is tested against. Plain loops, no BLAS, no threads, no approximations; sums in
// double where a long reduction would otherwise lose digits. Same signatures as ops.h.
//
// Layouts (row-major throughout):
//   activations x: [T, dim]; weights W of a linear: [N, K] (HF's [out_features, in_features]);
//   q / attention output: [T, n_heads * head_dim] (head h at columns h*head_dim ..);
//   KV cache of one layer: [n_kv_heads][capacity][head_dim] (one contiguous matrix per kv head,
//   so the score and value products are plain strided GEMMs).
#pragma once
#include <cstdint>

namespace mosaic {

struct AttnShape {
  int n_heads = 0;
  int n_kv_heads = 0;  // n_heads % n_kv_heads == 0 (grouped-query attention)
  int head_dim = 0;
  int64_t capacity = 0;  // tokens per kv head in the cache (stride between kv heads / head_dim)
};

namespace ref {

// out[t, :] = table[tokens[t], :]; throws mosaic::Error naming the token if out of [0, vocab).
void embedding(const float* table, int64_t vocab, int64_t dim, const int32_t* tokens, int64_t T, float* out);

// out[r, :] = x[r, :] * rsqrt(mean(x[r, :]^2) + eps) * w   (HF LlamaRMSNorm). out may equal x.
void rms_norm(const float* x, const float* w, int64_t rows, int64_t dim, float eps, float* out);

// In-place rotary embedding of x [T, n_heads * head_dim] with cos/sin [T, head_dim/2] (row t for
// the position of token t): for i < head_dim/2, (a, b) = (x[i], x[i + head_dim/2]) becomes
// (a cos - b sin, b cos + a sin), as HF's q * cos + rotate_half(q) * sin.
void rope(float* x, int64_t T, int64_t n_heads, int64_t head_dim, const float* cos, const float* sin);

// Causal grouped-query attention for T new queries at positions pos0 .. pos0+T-1 over the cache,
// which already holds keys/values of positions 0 .. pos0+T-1. Query head h reads kv head
// h / (n_heads / n_kv_heads); scores scaled by 1/sqrt(head_dim); softmax in fp32 (max-subtracted).
// q, out: [T, n_heads*head_dim].
void attention(const float* q, const float* k_cache, const float* v_cache, int64_t T, int64_t pos0,
               const AttnShape& s, float* out);

// out = silu(gate) * up elementwise, silu(g) = g / (1 + exp(-g)). out may equal gate or up.
void silu_mul(const float* gate, const float* up, int64_t n, float* out);

// y += x elementwise (residual connections).
void add_inplace(float* y, const float* x, int64_t n);

// y[M, N] = x[M, K] * W[N, K]^T   (a linear layer without bias).
void matmul_nt(const float* x, const float* w, int64_t M, int64_t N, int64_t K, float* y);

// log(sum_i exp(x[i])), max-subtracted, accumulated in double (log-softmax denominators for NLL).
double logsumexp(const float* x, int64_t n);

}  // namespace ref
}  // namespace mosaic
