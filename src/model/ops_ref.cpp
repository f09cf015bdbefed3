#include "model/ops_ref.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "util/error.h"

namespace mosaic::ref {

void embedding(const float* table, int64_t vocab, int64_t dim, const int32_t* tokens, int64_t T, float* out) {
  for (int64_t t = 0; t < T; ++t) {
    const int32_t id = tokens[t];
    MOSAIC_CHECK(id >= 0 && id < vocab, "token id ", id, " at position ", t, " is outside the vocabulary [0, ", vocab, ")");
    for (int64_t j = 0; j < dim; ++j) out[t * dim + j] = table[int64_t(id) * dim + j];
  }
}

void rms_norm(const float* x, const float* w, int64_t rows, int64_t dim, float eps, float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    double ss = 0;
    for (int64_t j = 0; j < dim; ++j) ss += double(xr[j]) * xr[j];
    const float inv = float(1.0 / std::sqrt(ss / double(dim) + double(eps)));
    float* o = out + r * dim;
    for (int64_t j = 0; j < dim; ++j) o[j] = w[j] * (xr[j] * inv);
  }
}

void rope(float* x, int64_t T, int64_t n_heads, int64_t head_dim, const float* cos, const float* sin) {
  const int64_t half = head_dim / 2;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < n_heads; ++h) {
      float* v = x + (t * n_heads + h) * head_dim;
      for (int64_t i = 0; i < half; ++i) {
        const float a = v[i], b = v[i + half], c = cos[t * half + i], s = sin[t * half + i];
        v[i] = a * c - b * s;
        v[i + half] = b * c + a * s;
      }
    }
}

void attention(const float* q, const float* k_cache, const float* v_cache, int64_t T, int64_t pos0,
               const AttnShape& s, float* out) {
  MOSAIC_CHECK(s.n_kv_heads > 0 && s.n_heads % s.n_kv_heads == 0, "attention: ", s.n_heads,
               " heads are not a multiple of ", s.n_kv_heads, " kv heads");
  MOSAIC_CHECK(pos0 + T <= s.capacity, "attention: positions up to ", pos0 + T, " exceed the cache capacity ", s.capacity);
  const int64_t hd = s.head_dim, group = s.n_heads / s.n_kv_heads, qdim = int64_t(s.n_heads) * hd;
  const float scale = 1.0f / std::sqrt(float(hd));
  std::vector<float> p(pos0 + T);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < s.n_heads; ++h) {
      const float* qv = q + t * qdim + h * hd;
      const float* K = k_cache + (h / group) * s.capacity * hd;
      const float* V = v_cache + (h / group) * s.capacity * hd;
      const int64_t L = pos0 + t + 1;  // causal: keys 0 .. pos0+t
      float mx = -INFINITY;
      for (int64_t j = 0; j < L; ++j) {
        double dot = 0;
        for (int64_t d = 0; d < hd; ++d) dot += double(qv[d]) * K[j * hd + d];
        p[j] = float(dot) * scale;
        mx = std::max(mx, p[j]);
      }
      double sum = 0;
      for (int64_t j = 0; j < L; ++j) {
        p[j] = std::exp(p[j] - mx);
        sum += p[j];
      }
      float* o = out + t * qdim + h * hd;
      for (int64_t d = 0; d < hd; ++d) {
        double acc = 0;
        for (int64_t j = 0; j < L; ++j) acc += double(p[j]) * V[j * hd + d];
        o[d] = float(acc / sum);
      }
    }
}

void silu_mul(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void add_inplace(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

void matmul_nt(const float* x, const float* w, int64_t M, int64_t N, int64_t K, float* y) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += double(x[m * K + k]) * w[n * K + k];
      y[m * N + n] = float(acc);
    }
}

double logsumexp(const float* x, int64_t n) {
  float mx = -INFINITY;
  for (int64_t i = 0; i < n; ++i) mx = std::max(mx, x[i]);
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += std::exp(double(x[i]) - double(mx));
  return double(mx) + std::log(s);
}

}  // namespace mosaic::ref
