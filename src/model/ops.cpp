#include "model/ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include <cblas.h>

#include "model/parallel.h"
#include "util/error.h"

// The hot loops are compiled for AVX-512, AVX2 and baseline x86-64 and picked at load time
// (GCC function multiversioning), so one binary is fast here and still runs on any x86-64 CPU.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MOSAIC_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MOSAIC_SIMD_CLONES
#endif

namespace mosaic::ops {
namespace {

// Cephes expf, branch-free so loops over it vectorize: exp(x) = 2^n * exp(r), |r| <= ln2/2.
// n = round(x / ln2) by the 1.5 * 2^23 trick (adding it leaves n in the low mantissa bits), not
// std::floor, which is a library call on baseline x86-64 and stops vectorization.
inline float exp_approx(float x) {
  x = std::max(x, -87.0f);
  x = std::min(x, 88.0f);
  constexpr float kShift = 12582912.0f;  // 1.5 * 2^23
  const float t = x * 1.44269504088896341f + kShift;
  const float fx = t - kShift;  // round(x * log2(e)) as a float
  int32_t tbits;
  std::memcpy(&tbits, &t, 4);
  const int32_t n = tbits - 0x4B400000;  // the integer n itself (bits of kShift subtracted)
  float r = x - fx * 0.693359375f;
  r = r - fx * -2.12194440e-4f;
  const float z = r * r;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * z + r + 1.0f;
  const int32_t bits = (n + 127) << 23;
  float p2;
  std::memcpy(&p2, &bits, 4);
  return y * p2;
}

// Sums and maxima use 16 independent lanes: without -ffast-math the compiler may not reorder a
// single accumulator, but it vectorizes this explicit lane array (and it is more accurate too).
constexpr int kLanes = 16;

MOSAIC_SIMD_CLONES
float sum_squares(const float* x, int64_t n) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] += x[i + j] * x[i + j];
  double s = 0;
  for (; i < n; ++i) s += double(x[i]) * x[i];
  for (int j = 0; j < kLanes; ++j) s += acc[j];
  return float(s);
}

MOSAIC_SIMD_CLONES
void scale_mul(const float* x, const float* w, float inv, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = w[i] * (x[i] * inv);
}

MOSAIC_SIMD_CLONES
float max_of(const float* x, int64_t n) {
  float acc[kLanes];
  for (int j = 0; j < kLanes; ++j) acc[j] = -INFINITY;
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] = std::max(acc[j], x[i + j]);
  float m = -INFINITY;
  for (; i < n; ++i) m = std::max(m, x[i]);
  for (int j = 0; j < kLanes; ++j) m = std::max(m, acc[j]);
  return m;
}

// sum_i exp(x[i] - mx) with the exps in fp32 and the sum in fp64 lanes.
MOSAIC_SIMD_CLONES
double exp_shift_sum_f64(const float* x, int64_t n, float mx) {
  double acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += double(exp_approx(x[i + j] - mx));
  double s = 0;
  for (; i < n; ++i) s += double(exp_approx(x[i] - mx));
  for (int j = 0; j < 8; ++j) s += acc[j];
  return s;
}

// x[i] = exp(x[i] - mx); returns the sum.
MOSAIC_SIMD_CLONES
float exp_shift_sum(float* x, int64_t n, float mx) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) {
      const float e = exp_approx(x[i + j] - mx);
      x[i + j] = e;
      acc[j] += e;
    }
  double s = 0;
  for (; i < n; ++i) {
    x[i] = exp_approx(x[i] - mx);
    s += x[i];
  }
  for (int j = 0; j < kLanes; ++j) s += acc[j];
  return float(s);
}

MOSAIC_SIMD_CLONES
void scale_inplace(float* x, int64_t n, float a) {
  for (int64_t i = 0; i < n; ++i) x[i] *= a;
}

MOSAIC_SIMD_CLONES
void silu_mul_range(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    // silu(g) = g * sigmoid(g); exp of -|g| (never overflows), sigmoid from it by symmetry.
    const float e = exp_approx(-std::fabs(g));
    const float sig = g >= 0 ? 1.0f / (1.0f + e) : e / (1.0f + e);
    out[i] = g * sig * up[i];
  }
}

MOSAIC_SIMD_CLONES
void exp_range(const float* x, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = exp_approx(x[i]);
}

MOSAIC_SIMD_CLONES
void rope_row(float* v, int64_t half, const float* c, const float* s) {
  for (int64_t i = 0; i < half; ++i) {
    const float a = v[i], b = v[i + half];
    v[i] = a * c[i] - b * s[i];
    v[i + half] = b * c[i] + a * s[i];
  }
}

// Causal softmax of score rows S[T, L] in place: row t sees columns 0 .. pos0+t, the rest -> 0.
void causal_softmax(float* S, int64_t T, int64_t L, int64_t pos0) {
  for (int64_t t = 0; t < T; ++t) {
    float* row = S + t * L;
    const int64_t n = std::min(L, pos0 + t + 1);
    const float mx = max_of(row, n);
    const float sum = exp_shift_sum(row, n, mx);
    scale_inplace(row, n, 1.0f / sum);
    std::fill(row + n, row + L, 0.0f);
  }
}

// One query head over a block of n queries at positions p0 .. p0+n-1 (keys 0 .. p0+n-1):
// S[n, L] = scale * Q K^T ; causal softmax ; O[n, hd] = S V. Single-threaded BLAS; the caller
// runs many of these in parallel.
void attend_block(const float* Q, int64_t ldq, const float* K, const float* V, int64_t n, int64_t p0, int64_t hd,
                  float scale, float* O, int64_t ldo) {
  const int64_t L = p0 + n;
  thread_local std::vector<float> scores;  // per worker thread
  if (scores.size() < size_t(n * L)) scores.resize(size_t(n * L));
  float* S = scores.data();
  if (n == 1) {  // decode: matrix-vector products
    cblas_sgemv(CblasRowMajor, CblasNoTrans, int(L), int(hd), scale, K, int(hd), Q, 1, 0.0f, S, 1);
    causal_softmax(S, 1, L, p0);
    cblas_sgemv(CblasRowMajor, CblasTrans, int(L), int(hd), 1.0f, V, int(hd), S, 1, 0.0f, O, 1);
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(n), int(L), int(hd), scale, Q, int(ldq), K, int(hd), 0.0f,
              S, int(L));
  causal_softmax(S, n, L, p0);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(n), int(hd), int(L), 1.0f, S, int(L), V, int(hd), 0.0f, O,
              int(ldo));
}

}  // namespace

void exp_nonpositive(const float* x, int64_t n, float* out) { exp_range(x, n, out); }

void embedding(const float* table, int64_t vocab, int64_t dim, const int32_t* tokens, int64_t T, float* out) {
  for (int64_t t = 0; t < T; ++t) {
    const int32_t id = tokens[t];
    MOSAIC_CHECK(id >= 0 && id < vocab, "token id ", id, " at position ", t, " is outside the vocabulary [0, ", vocab, ")");
    std::memcpy(out + t * dim, table + int64_t(id) * dim, size_t(dim) * sizeof(float));
  }
}

void rms_norm(const float* x, const float* w, int64_t rows, int64_t dim, float eps, float* out) {
  parallel_for(rows, dim * 3, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const float ss = sum_squares(x + r * dim, dim);
      const float inv = float(1.0 / std::sqrt(double(ss) / double(dim) + double(eps)));
      scale_mul(x + r * dim, w, inv, dim, out + r * dim);
    }
  });
}

void rope(float* x, int64_t T, int64_t n_heads, int64_t head_dim, const float* cos, const float* sin) {
  const int64_t half = head_dim / 2;
  parallel_for(T, n_heads * head_dim * 3, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t)
      for (int64_t h = 0; h < n_heads; ++h) rope_row(x + (t * n_heads + h) * head_dim, half, cos + t * half, sin + t * half);
  });
}

void attention(const float* q, const float* k_cache, const float* v_cache, int64_t T, int64_t pos0,
               const AttnShape& s, float* out) {
  MOSAIC_CHECK(s.n_kv_heads > 0 && s.n_heads % s.n_kv_heads == 0, "attention: ", s.n_heads,
               " heads are not a multiple of ", s.n_kv_heads, " kv heads");
  MOSAIC_CHECK(pos0 + T <= s.capacity, "attention: positions up to ", pos0 + T, " exceed the cache capacity ", s.capacity);
  if (T <= 0) return;
  const int64_t hd = s.head_dim, group = s.n_heads / s.n_kv_heads, qdim = int64_t(s.n_heads) * hd;
  const float scale = 1.0f / std::sqrt(float(hd));
  // Work items = (query block, head). Block [b, b+n) only needs keys 0 .. pos0+b+n-1, so the
  // masked upper triangle costs at most one block, and a score scratch is n x L floats. Items
  // have different lengths, hence the dynamic hand-out.
  constexpr int64_t kQBlock = 256;
  const int64_t nblocks = (T + kQBlock - 1) / kQBlock, H = s.n_heads;
  parallel_for_each(nblocks * H, kQBlock * (pos0 + T) * hd * 4, [&](int64_t item) {
    const int64_t blk = item / H, h = item % H;
    const int64_t b = blk * kQBlock, n = std::min(kQBlock, T - b);
    const float* K = k_cache + (h / group) * s.capacity * hd;
    const float* V = v_cache + (h / group) * s.capacity * hd;
    attend_block(q + b * qdim + h * hd, qdim, K, V, n, pos0 + b, hd, scale, out + b * qdim + h * hd, qdim);
  });
}

void silu_mul(const float* gate, const float* up, int64_t n, float* out) {
  parallel_for(n, 20, [&](int64_t b, int64_t e) { silu_mul_range(gate + b, up + b, e - b, out + b); });
}

void add_inplace(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

void matmul_nt(const float* x, const float* w, int64_t M, int64_t N, int64_t K, float* y) {
  if (M <= 0 || N <= 0) return;
  if (K == 0) {
    std::fill(y, y + M * N, 0.0f);
    return;
  }
  // Split the output columns (rows of W) over the threads in slices of 16 rows: each thread streams
  // its own part of W once, which is what bounds both the memory-bound decode (M = 1) and the
  // packing cost of prefill.
  constexpr int64_t kSlice = 16;
  const int64_t slices = (N + kSlice - 1) / kSlice;
  parallel_for(slices, M * kSlice * K * 2, [&](int64_t sb, int64_t se) {
    const int64_t n0 = sb * kSlice, n = std::min(N, se * kSlice) - n0;
    if (M == 1)  // one token: y = W x
      cblas_sgemv(CblasRowMajor, CblasNoTrans, int(n), int(K), 1.0f, w + n0 * K, int(K), x, 1, 0.0f, y + n0, 1);
    else
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(M), int(n), int(K), 1.0f, x, int(K), w + n0 * K, int(K),
                  0.0f, y + n0, int(N));
  });
}

double logsumexp(const float* x, int64_t n) {
  if (n <= 0) return -INFINITY;
  const float mx = max_of(x, n);
  return double(mx) + std::log(exp_shift_sum_f64(x, n, mx));
}

}  // namespace mosaic::ops
