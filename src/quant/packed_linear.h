// The canonical in-memory form of a MosaicQuant linear layer: a dense 4-bit base (group-wise
// scales along K) plus a sparse 4-bit residual on Br x Bc blocks in CSR order over block rows.
// Exactly the tensors of docs/format.md ("Quantized linear layer"); GPU kernels repack from this.
#pragma once
#include <cstdint>
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
};

}  // namespace mosaic
