// The canonical in-memory form of a MosaicQuant linear layer: a dense 4-bit base (group-wise
// scales along K) plus a sparse 4-bit residual on Br x Bc blocks in CSR order over block rows.
// Exactly the tensors of docs/format.md ("Quantized linear layer"); GPU kernels repack from this.
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <string_view>
#include <vector>

namespace mosaic {

struct PackedLinear {
  int64_t N = 0;             // out_features (rows of W)
  int64_t K = 0;             // in_features  (cols of W)
  int group = 128;           // G: inputs per scale; must divide K (G == K means per channel)
  bool symmetric = true;     // symmetric: w = s * (c - 8); asymmetric: w = s * (c - zero)
  std::vector<uint8_t> qweight;   // [N, K/2]   low nibble = even column
  std::vector<uint16_t> scales;   // [N, K/G]   fp16 bits
  std::vector<uint8_t> qzeros;    // [N, K/G]   asymmetric only (0..15), else empty
  // Base codebook (symmetric only): w = s * grid[c]; empty = the uniform grid w = s * (c - 8).
  std::vector<float> grid;        // [16] or empty (tensor <prefix>.qgrid)

  // Residual blocks (empty when none kept). Br divides N, Bc divides K, Bc even.
  int block_rows = 16;            // Br
  int block_cols = 64;            // Bc
  std::vector<int32_t> res_rowptr;  // [N/Br + 1]  (empty or all zeros when no block kept)
  std::vector<int32_t> res_colidx;  // [nnzb]
  std::vector<uint8_t> res_qvalues; // [nnzb, Br, Bc/2]  symmetric codes, q = c - 8
  std::vector<uint16_t> res_scales; // [nnzb, Br]        fp16 bits

  int64_t num_groups() const { return K / group; }
  int64_t num_blocks_kept() const { return int64_t(res_colidx.size()); }
  int64_t num_block_rows() const { return N / block_rows; }
  int64_t num_block_cols() const { return K / block_cols; }
  int64_t num_blocks_total() const { return num_block_rows() * num_block_cols(); }
  bool has_residual() const { return !res_colidx.empty(); }

  // Bytes of the packed tensors (base + zeros + residual incl. index), for bits-per-weight.
  int64_t storage_bytes() const;
  double bits_per_weight() const { return 8.0 * double(storage_bytes()) / double(N * K); }
};

// The non-uniform 4-bit grid "nl4": llama.cpp's IQ4_NL code values (-127..113) / 127, a table fit
// to the bell-shaped distribution of LLM weights (denser near 0 than the uniform grid). On the
// default model's linears it cuts RTN g64 weight MSE by 27% against the uniform grid (with a clip search).
inline const std::vector<float>& grid_nl4() {
  static const std::vector<float> g = [] {
    const int v[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
    std::vector<float> out(16);
    for (int i = 0; i < 16; ++i) out[size_t(i)] = float(v[i]) / 127.0f;
    return out;
  }();
  return g;
}

// ---- 4-bit nibble packing (docs/format.md "Nibble layout") -------------------------------
// Code k of a row lives in byte k/2: low nibble when k is even, high nibble when odd.
inline uint8_t nibble_at(const uint8_t* packed, int64_t k) {
  return uint8_t((packed[k >> 1] >> ((k & 1) * 4)) & 0xF);
}
// Packs n codes (each 0..15; higher bits are an error) into (n+1)/2 bytes. An odd n leaves the
// last byte's high nibble 0.
void pack_nibbles(std::span<const uint8_t> codes, std::span<uint8_t> packed);
void unpack_nibbles(std::span<const uint8_t> packed, int64_t n, std::span<uint8_t> codes);
std::vector<uint8_t> pack_nibbles(std::span<const uint8_t> codes);
std::vector<uint8_t> unpack_nibbles(std::span<const uint8_t> packed, int64_t n);

// ---- checks and reference math --------------------------------------------------------------
// Throws mosaic::Error (one line, naming `what`) unless every size, index and value is
// consistent with docs/format.md: G | K, K even, vector lengths, and, when a residual is
// stored: Br | N, Bc | K, Bc even,
// finite scales, zeros 0..15, rowptr monotone from 0 to nnzb, colidx in range and strictly
// ascending within each block row.
void validate(const PackedLinear& p, std::string_view what = "quantized linear");

// W_hat as row-major float [N, K]: base + kept residual blocks, each term in float exactly as
// docs/format.md writes it (scale * (code - 8|zero)), summed in float.
std::vector<float> dequantize(const PackedLinear& p);
// The same layer with its residual in blocks of `rows` x Bc: every kept Br x Bc block becomes
// Br / rows kept blocks (its rows' codes and scales, none dropped even when all-zero), in CSR order
// over the finer block rows. dequantize() is unchanged bit for bit. The GPU kernels run 16 x 64
// blocks; a checkpoint quantized with taller blocks (e.g. 64 x 64, aligned to a wgmma warpgroup's
// 64 outputs) is split this way at load. Requires Br % rows == 0.
PackedLinear split_residual_rows(const PackedLinear& p, int rows);
// The base alone (no residual), row-major [N, K].
std::vector<float> dequantize_base(const PackedLinear& p);

// Y[M, N] = X[M, K] * dequantize(p)^T, scalar loops with fp64 accumulation. The ground truth
// the CPU and GPU kernels are tested against.
void reference_matmul(const PackedLinear& p, const float* X, int64_t M, float* Y);

// ---- random layers for kernel tests ---------------------------------------------------------
enum class ResidualPattern {
  kNone,      // no residual blocks
  kUniform,   // the kept blocks are a uniformly random subset
  kClustered, // heavy-tailed: a few block rows / block columns hold most kept blocks
  kOneTile,   // kept blocks fill consecutive whole block rows from a random start (worst imbalance)
};
ResidualPattern parse_residual_pattern(std::string_view name);  // uniform|clustered|one_tile|none

// Number of blocks a budget keeps: floor(fraction * total) (floor so the memory budget is never
// exceeded; a 1e-9 slack makes 0.1 * 100 exactly 10 despite binary rounding). fraction in [0, 1].
int64_t budget_blocks(double fraction, int64_t total_blocks);

// The per-block-row cap of a row-cap fraction F in (0, 1] on a grid of `nbc` block columns:
// ceil(F x nbc) (at least 1; nbc when F = 1). mosaic quantize --row-cap.
int64_t row_cap_blocks(double fraction, int64_t nbc);

// Blocks per block row for random layers whose residual is concentrated (the worst case of a
// per-row cap, bench gemm --res-pattern rows, bench e2e --res-rows): `keep` blocks on block rows in
// a random order (a Fisher-Yates shuffle drawing from next()), each filled to `cap` (the last one
// fewer). Throws when rows x cap < keep.
std::vector<int64_t> concentrated_row_counts(int64_t rows, int64_t keep, int64_t cap,
                                             const std::function<uint64_t()>& next);

// A valid random layer: random base codes, fp16 scales in [0.004, 0.02] (residual scales 8x
// smaller), random zeros when asymmetric, and exactly budget_blocks(fraction, total) residual
// blocks placed by `pattern`. Deterministic in seed.
PackedLinear random_packed_linear(int64_t N, int64_t K, int group, int Br, int Bc,
                                  double fraction_of_blocks, ResidualPattern pattern,
                                  uint64_t seed, bool symmetric = true);

}  // namespace mosaic
