// Nibble packing, validation, dequantization and the scalar reference matmul of PackedLinear,
// plus random layers for kernel tests. Everything here follows docs/format.md literally.
#include "format/packed_linear.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "util/error.h"
#include "util/half.h"

namespace mosaic {

int64_t PackedLinear::storage_bytes() const {
  return int64_t(qweight.size()) + 2 * int64_t(scales.size()) + int64_t(qzeros.size()) + 4 * int64_t(grid.size()) +
         4 * int64_t(res_rowptr.size()) + 4 * int64_t(res_colidx.size()) +
         int64_t(res_qvalues.size()) + 2 * int64_t(res_scales.size());
}

// ---- nibbles ---------------------------------------------------------------------------------

void pack_nibbles(std::span<const uint8_t> codes, std::span<uint8_t> packed) {
  const size_t n = codes.size();
  MOSAIC_CHECK(packed.size() == (n + 1) / 2, "pack_nibbles: ", n, " codes need ", (n + 1) / 2,
               " bytes, got ", packed.size());
  for (size_t i = 0; i < n; ++i)
    MOSAIC_CHECK(codes[i] < 16, "pack_nibbles: code ", int(codes[i]), " at ", i, " is not 4-bit");
  for (size_t b = 0; b < packed.size(); ++b) {
    uint8_t lo = codes[2 * b];
    uint8_t hi = 2 * b + 1 < n ? codes[2 * b + 1] : 0;
    packed[b] = uint8_t(lo | (hi << 4));
  }
}

void unpack_nibbles(std::span<const uint8_t> packed, int64_t n, std::span<uint8_t> codes) {
  MOSAIC_CHECK(n >= 0 && codes.size() == size_t(n) && packed.size() == size_t((n + 1) / 2),
               "unpack_nibbles: ", n, " codes need ", (n + 1) / 2, " bytes and ", n,
               " outputs, got ", packed.size(), " and ", codes.size());
  for (int64_t k = 0; k < n; ++k) codes[k] = nibble_at(packed.data(), k);
}

std::vector<uint8_t> pack_nibbles(std::span<const uint8_t> codes) {
  std::vector<uint8_t> out((codes.size() + 1) / 2);
  pack_nibbles(codes, out);
  return out;
}

std::vector<uint8_t> unpack_nibbles(std::span<const uint8_t> packed, int64_t n) {
  MOSAIC_CHECK(n >= 0, "unpack_nibbles: negative count ", n);
  std::vector<uint8_t> out(static_cast<size_t>(n));
  unpack_nibbles(packed, n, out);
  return out;
}

// ---- validate --------------------------------------------------------------------------------

void validate(const PackedLinear& p, std::string_view what) {
  const std::string w(what);
  MOSAIC_CHECK(p.N > 0 && p.K > 0, w, ": shape [", p.N, ", ", p.K, "] must be positive");
  MOSAIC_CHECK(p.group > 0 && p.K % p.group == 0, w, ": group ", p.group, " does not divide K=", p.K);
  MOSAIC_CHECK(p.K % 2 == 0, w, ": K=", p.K, " must be even (two codes per byte)");
  // Guard the size products below against overflow on absurd inputs.
  MOSAIC_CHECK(p.N <= (int64_t(1) << 31) && p.K <= (int64_t(1) << 31), w, ": shape [", p.N, ", ",
               p.K, "] too large");
  const int64_t G = p.num_groups();
  MOSAIC_CHECK(int64_t(p.qweight.size()) == p.N * p.K / 2, w, ": qweight has ", p.qweight.size(),
               " bytes, expected N*K/2 = ", p.N * p.K / 2);
  MOSAIC_CHECK(int64_t(p.scales.size()) == p.N * G, w, ": scales has ", p.scales.size(),
               " entries, expected N*K/G = ", p.N * G);
  for (size_t i = 0; i < p.scales.size(); ++i)
    MOSAIC_CHECK(std::isfinite(fp16_to_float(p.scales[i])), w, ": scale ", i, " is not finite");
  MOSAIC_CHECK(p.grid.empty() || (p.grid.size() == 16 && p.symmetric), w, ": a codebook grid has 16 values and ",
               "needs a symmetric layer (has ", p.grid.size(), " values, ", p.symmetric ? "symmetric)" : "asymmetric)");
  for (size_t i = 0; i < p.grid.size(); ++i)
    MOSAIC_CHECK(std::isfinite(p.grid[i]), w, ": grid value ", i, " is not finite");
  if (p.symmetric) {
    MOSAIC_CHECK(p.qzeros.empty(), w, ": symmetric layer must not have qzeros (has ",
                 p.qzeros.size(), ")");
  } else {
    MOSAIC_CHECK(int64_t(p.qzeros.size()) == p.N * G, w, ": qzeros has ", p.qzeros.size(),
                 " entries, expected N*K/G = ", p.N * G);
    for (size_t i = 0; i < p.qzeros.size(); ++i)
      MOSAIC_CHECK(p.qzeros[i] < 16, w, ": zero point ", int(p.qzeros[i]), " at ", i,
                   " is outside 0..15");
  }

  // The block shape only has to tile W when a residual is stored: a base-only layer (RTN/GPTQ
  // baselines) may have any N.
  const int64_t nnzb = int64_t(p.res_colidx.size());
  if (p.res_rowptr.empty()) {
    MOSAIC_CHECK(nnzb == 0 && p.res_qvalues.empty() && p.res_scales.empty(), w,
                 ": residual values present but res_rowptr is empty");
    return;
  }
  const int Br = p.block_rows, Bc = p.block_cols;
  MOSAIC_CHECK(Br > 0 && p.N % Br == 0, w, ": block rows ", Br, " do not divide N=", p.N);
  MOSAIC_CHECK(Bc > 0 && Bc % 2 == 0 && p.K % Bc == 0, w, ": block cols ", Bc,
               " must be even and divide K=", p.K);
  const int64_t nbr = p.num_block_rows(), nbc = p.num_block_cols();
  MOSAIC_CHECK(int64_t(p.res_rowptr.size()) == nbr + 1, w, ": res_rowptr has ",
               p.res_rowptr.size(), " entries, expected N/Br+1 = ", nbr + 1);
  MOSAIC_CHECK(p.res_rowptr[0] == 0, w, ": res_rowptr[0] = ", p.res_rowptr[0], ", expected 0");
  for (int64_t r = 0; r < nbr; ++r)
    MOSAIC_CHECK(p.res_rowptr[r + 1] >= p.res_rowptr[r], w, ": res_rowptr decreases at block row ",
                 r);
  MOSAIC_CHECK(p.res_rowptr[nbr] == nnzb, w, ": res_rowptr ends at ", p.res_rowptr[nbr],
               " but res_colidx has ", nnzb, " blocks");
  MOSAIC_CHECK(int64_t(p.res_qvalues.size()) == nnzb * Br * (Bc / 2), w, ": res_qvalues has ",
               p.res_qvalues.size(), " bytes, expected nnzb*Br*Bc/2 = ", nnzb * Br * (Bc / 2));
  MOSAIC_CHECK(int64_t(p.res_scales.size()) == nnzb * Br, w, ": res_scales has ",
               p.res_scales.size(), " entries, expected nnzb*Br = ", nnzb * Br);
  for (int64_t r = 0; r < nbr; ++r) {
    for (int32_t b = p.res_rowptr[r]; b < p.res_rowptr[r + 1]; ++b) {
      const int32_t c = p.res_colidx[b];
      MOSAIC_CHECK(c >= 0 && c < nbc, w, ": res_colidx[", b, "] = ", c, " outside 0..", nbc - 1);
      MOSAIC_CHECK(b == p.res_rowptr[r] || c > p.res_colidx[b - 1], w, ": res_colidx not ascending",
                   " in block row ", r, " at block ", b);
    }
  }
  for (size_t i = 0; i < p.res_scales.size(); ++i)
    MOSAIC_CHECK(std::isfinite(fp16_to_float(p.res_scales[i])), w, ": residual scale ", i,
                 " is not finite");
}

// ---- dequantize / reference matmul -------------------------------------------------------------

std::vector<float> dequantize_base(const PackedLinear& p) {
  validate(p);
  const int64_t N = p.N, K = p.K, G = p.num_groups();
  std::vector<float> out(size_t(N * K));
  for (int64_t n = 0; n < N; ++n) {
    const uint8_t* row = p.qweight.data() + n * (K / 2);
    for (int64_t k = 0; k < K; ++k) {
      const int64_t g = n * G + k / p.group;
      const float s = fp16_to_float(p.scales[g]);
      const int c = int(nibble_at(row, k));
      if (!p.grid.empty()) {
        out[n * K + k] = s * p.grid[size_t(c)];
        continue;
      }
      const int zero = p.symmetric ? 8 : p.qzeros[g];
      out[n * K + k] = s * float(c - zero);
    }
  }
  return out;
}

std::vector<float> dequantize(const PackedLinear& p) {
  std::vector<float> out = dequantize_base(p);  // validates
  if (p.res_rowptr.empty()) return out;
  const int64_t K = p.K, Br = p.block_rows, Bc = p.block_cols;
  for (int64_t r = 0; r < p.num_block_rows(); ++r) {
    for (int32_t b = p.res_rowptr[r]; b < p.res_rowptr[r + 1]; ++b) {
      const int64_t c0 = int64_t(p.res_colidx[b]) * Bc;
      for (int64_t i = 0; i < Br; ++i) {
        const float s = fp16_to_float(p.res_scales[b * Br + i]);
        const uint8_t* codes = p.res_qvalues.data() + (b * Br + i) * (Bc / 2);
        float* dst = out.data() + (r * Br + i) * K + c0;
        for (int64_t j = 0; j < Bc; ++j) dst[j] += s * float(int(nibble_at(codes, j)) - 8);
      }
    }
  }
  return out;
}

PackedLinear split_residual_rows(const PackedLinear& p, int rows) {
  MOSAIC_CHECK(rows > 0 && p.block_rows % rows == 0, "split_residual_rows: block rows ", p.block_rows,
               " are not a multiple of ", rows);
  PackedLinear q = p;
  q.block_rows = rows;
  if (!p.has_residual()) {
    q.res_rowptr.clear();
    return q;
  }
  const int f = p.block_rows / rows, Bc = p.block_cols;
  const size_t row_bytes = size_t(Bc / 2);
  q.res_rowptr.assign(size_t(p.N / rows + 1), 0);
  q.res_colidx.clear();
  q.res_qvalues.clear();
  q.res_scales.clear();
  q.res_colidx.reserve(p.res_colidx.size() * size_t(f));
  q.res_qvalues.reserve(p.res_qvalues.size());
  q.res_scales.reserve(p.res_scales.size());
  for (int64_t r = 0; r < p.num_block_rows(); ++r)
    for (int s = 0; s < f; ++s) {  // fine block row r * f + s: rows [s * rows, s * rows + rows) of each block
      for (int32_t b = p.res_rowptr[size_t(r)]; b < p.res_rowptr[size_t(r + 1)]; ++b) {
        q.res_colidx.push_back(p.res_colidx[size_t(b)]);
        const size_t first = size_t(b) * size_t(p.block_rows) + size_t(s * rows);
        q.res_qvalues.insert(q.res_qvalues.end(), p.res_qvalues.begin() + ptrdiff_t(first * row_bytes),
                             p.res_qvalues.begin() + ptrdiff_t((first + size_t(rows)) * row_bytes));
        q.res_scales.insert(q.res_scales.end(), p.res_scales.begin() + ptrdiff_t(first),
                            p.res_scales.begin() + ptrdiff_t(first + size_t(rows)));
      }
      q.res_rowptr[size_t(r * f + s + 1)] = int32_t(q.res_colidx.size());
    }
  return q;
}

void reference_matmul(const PackedLinear& p, const float* X, int64_t M, float* Y) {
  MOSAIC_CHECK(M >= 0, "reference_matmul: negative M=", M);
  const std::vector<float> W = dequantize(p);
  const int64_t N = p.N, K = p.K;
  for (int64_t m = 0; m < M; ++m) {
    const float* x = X + m * K;
    for (int64_t n = 0; n < N; ++n) {
      const float* w = W.data() + n * K;
      double acc = 0.0;
      for (int64_t k = 0; k < K; ++k) acc += double(x[k]) * double(w[k]);
      Y[m * N + n] = float(acc);
    }
  }
}

// ---- random layers -----------------------------------------------------------------------------

ResidualPattern parse_residual_pattern(std::string_view name) {
  if (name == "none") return ResidualPattern::kNone;
  if (name == "uniform") return ResidualPattern::kUniform;
  if (name == "clustered") return ResidualPattern::kClustered;
  if (name == "one_tile") return ResidualPattern::kOneTile;
  fail("unknown residual pattern '", name, "' (expected uniform|clustered|one_tile|none)");
}

int64_t budget_blocks(double fraction, int64_t total_blocks) {
  MOSAIC_CHECK(std::isfinite(fraction) && fraction >= 0.0 && fraction <= 1.0,
               "residual budget ", fraction, " is outside [0, 1]");
  MOSAIC_CHECK(total_blocks >= 0, "negative block count ", total_blocks);
  const int64_t k = int64_t(std::floor(fraction * double(total_blocks) + 1e-9));
  return std::min(k, total_blocks);
}

int64_t row_cap_blocks(double fraction, int64_t nbc) {
  MOSAIC_CHECK(std::isfinite(fraction) && fraction > 0.0 && fraction <= 1.0, "row cap ", fraction,
               " is outside (0, 1]");
  MOSAIC_CHECK(nbc > 0, "row_cap_blocks: ", nbc, " block columns");
  const int64_t cap = int64_t(std::ceil(fraction * double(nbc) - 1e-9));
  return std::clamp<int64_t>(cap, 1, nbc);
}

std::vector<int64_t> concentrated_row_counts(int64_t rows, int64_t keep, int64_t cap,
                                             const std::function<uint64_t()>& next) {
  MOSAIC_CHECK(rows >= 0 && keep >= 0 && cap > 0 && keep <= rows * cap, keep, " blocks do not fit ", rows,
               " block rows of at most ", cap);
  std::vector<int64_t> order(static_cast<size_t>(rows)), n(static_cast<size_t>(rows), 0);
  std::iota(order.begin(), order.end(), int64_t(0));
  for (int64_t i = rows - 1; i > 0; --i) std::swap(order[size_t(i)], order[size_t(next() % uint64_t(i + 1))]);
  for (int64_t i = 0; keep > 0; ++i) keep -= (n[size_t(order[size_t(i)])] = std::min(cap, keep));
  return n;
}

PackedLinear random_packed_linear(int64_t N, int64_t K, int group, int Br, int Bc,
                                  double fraction_of_blocks, ResidualPattern pattern,
                                  uint64_t seed, bool symmetric) {
  PackedLinear p;
  p.N = N;
  p.K = K;
  p.group = group;
  p.symmetric = symmetric;
  p.block_rows = Br;
  p.block_cols = Bc;
  // Shape checks first (validate() on the empty struct would complain about sizes instead).
  MOSAIC_CHECK(N > 0 && K > 0 && K % 2 == 0, "random_packed_linear: bad shape [", N, ", ", K, "]");
  MOSAIC_CHECK(group > 0 && K % group == 0, "random_packed_linear: group ", group,
               " does not divide K=", K);
  MOSAIC_CHECK(Br > 0 && N % Br == 0 && Bc > 0 && Bc % 2 == 0 && K % Bc == 0,
               "random_packed_linear: block ", Br, "x", Bc, " does not tile [", N, ", ", K, "]");
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> code(0, 15);
  std::uniform_real_distribution<float> scale(0.004f, 0.02f);

  p.qweight.resize(size_t(N * K / 2));
  for (auto& b : p.qweight) b = uint8_t(code(rng) | (code(rng) << 4));
  p.scales.resize(size_t(N * p.num_groups()));
  for (auto& s : p.scales) s = float_to_fp16(scale(rng));
  if (!symmetric) {
    p.qzeros.resize(p.scales.size());
    for (auto& z : p.qzeros) z = uint8_t(code(rng));
  }

  const int64_t nbr = N / Br, nbc = K / Bc, total = nbr * nbc;
  const int64_t keep = pattern == ResidualPattern::kNone ? 0 : budget_blocks(fraction_of_blocks, total);
  std::vector<char> kept(size_t(total), 0);
  if (pattern == ResidualPattern::kUniform) {
    std::vector<int64_t> idx(static_cast<size_t>(total));
    std::iota(idx.begin(), idx.end(), 0);
    std::shuffle(idx.begin(), idx.end(), rng);
    for (int64_t i = 0; i < keep; ++i) kept[idx[i]] = 1;
  } else if (pattern == ResidualPattern::kClustered) {
    // Weighted sampling without replacement (Efraimidis-Spirakis keys u^(1/w)) with log-normal
    // weights per block row and per block column: a few rows/columns attract most blocks.
    std::normal_distribution<double> z(0.0, 1.5);
    std::vector<double> wr(static_cast<size_t>(nbr)), wc(static_cast<size_t>(nbc));
    for (auto& v : wr) v = std::exp(z(rng));
    for (auto& v : wc) v = std::exp(z(rng));
    std::uniform_real_distribution<double> u(1e-12, 1.0);
    std::vector<std::pair<double, int64_t>> keys(static_cast<size_t>(total));
    for (int64_t b = 0; b < total; ++b)
      keys[b] = {std::log(u(rng)) / (wr[b / nbc] * wc[b % nbc]), b};
    std::partial_sort(keys.begin(), keys.begin() + keep, keys.end(),
                      [](const auto& a, const auto& b) { return a.first > b.first; });
    for (int64_t i = 0; i < keep; ++i) kept[keys[i].second] = 1;
  } else if (pattern == ResidualPattern::kOneTile) {
    const int64_t start = std::uniform_int_distribution<int64_t>(0, nbr - 1)(rng) * nbc;
    for (int64_t i = 0; i < keep; ++i) kept[(start + i) % total] = 1;
  }

  if (keep == 0) return p;  // no residual tensors at all (docs/format.md)
  p.res_rowptr.assign(size_t(nbr + 1), 0);
  for (int64_t r = 0; r < nbr; ++r) {
    for (int64_t c = 0; c < nbc; ++c)
      if (kept[r * nbc + c]) p.res_colidx.push_back(int32_t(c));
    p.res_rowptr[r + 1] = int32_t(p.res_colidx.size());
  }
  const int64_t nnzb = int64_t(p.res_colidx.size());
  p.res_qvalues.resize(size_t(nnzb * Br * (Bc / 2)));
  for (auto& b : p.res_qvalues) b = uint8_t(code(rng) | (code(rng) << 4));
  p.res_scales.resize(size_t(nnzb * Br));
  for (auto& s : p.res_scales) s = float_to_fp16(scale(rng) / 8.0f);
  validate(p, "random_packed_linear");
  return p;
}

}  // namespace mosaic
