// ZipperEngine's GPU layout of a MosaicQuant linear layer, built once from the canonical
// PackedLinear (docs/format.md) on the host. Pure C++ (no CUDA), so CI tests it bit-exactly
// without a GPU. The diagram is in docs/format.md ("GPU repacked layout") and docs/kernels.md.
//
// Unit of the layout: a *chunk* = 16 outputs x 64 inputs = 512 bytes of 4-bit codes, stored as
// 32 lanes x 16 bytes: lane l holds exactly the mma.m16n8k16 B-fragment values it needs for the
// two n8 tiles (outputs 16r + l/4 and 16r + 8 + l/4) over the 4 k16 steps of the chunk, so one
// 16-byte load per lane feeds 8 MMAs with no shuffles. A residual block (Br x Bc = 16 x 64) is
// exactly one chunk, stored the same way, so base and residual dequantize with the same code.
#pragma once
#include <cstdint>
#include <vector>

#include "format/packed_linear.h"

namespace mosaic::cuda {

inline constexpr int kChunkN = 16;   // outputs per chunk = warp tile width = residual Br
inline constexpr int kChunkK = 64;   // inputs per chunk = residual Bc
inline constexpr int kTileK = 128;   // inputs per pipeline stage (two chunks)

struct ZipperLayout {
  int64_t N = 0, K = 0;
  int group = 128;
  int scales_per_tile = 1;  // scale sets per (16 outputs, 128 inputs): max(1, 128 / group)
  // Base codes: [N/16][K/64][32 lanes][4 words]. Word j of a lane = k16 step j of the chunk.
  std::vector<uint32_t> qweight;
  // Base scales: [N/16][K/128][scales_per_tile][16] fp16 bits (group > 128: repeated per tile).
  std::vector<uint16_t> scales;
  // Residual (16 x 64 blocks), CSR order kept: codes [nnzb][32][4 words] like the base,
  // scales [nnzb][16] fp16 bits, rowptr [N/16 + 1], bitmap [N/16][words_per_row] (bit c of a row
  // = block column c kept), so a warp finds its blocks with a popcount instead of a search, and
  // colidx [nnzb + 32] (block column c of each kept block, CSR order, then 32 zeros: the stream
  // kernel loads a warp's next 32 columns at once, wherever its share of a row ends).
  std::vector<uint32_t> res_qweight;
  std::vector<uint16_t> res_scales;
  std::vector<int32_t> res_rowptr;
  std::vector<uint64_t> res_bitmap;
  std::vector<uint16_t> res_colidx;
  int words_per_row = 0;
  int64_t nnzb = 0;

  // Bytes a GEMM must stream from device memory (codes + scales + residual + index).
  int64_t weight_bytes(bool with_residual = true) const;
};

// Throws mosaic::Error naming the shapes when the kernel cannot take this layer:
// symmetric base; N % 16 == 0; K % 128 == 0; group % 16 == 0 and (128 % group == 0 or
// group % 128 == 0); residual blocks exactly 16 x 64 (when any block is kept); consistent sizes.
void check_zipper_supported(const PackedLinear& w);

// Repack (validates first). Deterministic; O(N*K).
ZipperLayout repack_for_zipper(const PackedLinear& w);

// Host decoders of the repacked layout (for tests and the CPU-side oracle):
// code 0..15 of the base at (n, k), and the residual code at (n, k) of block b.
int zipper_base_code(const ZipperLayout& z, int64_t n, int64_t k);
int zipper_res_code(const ZipperLayout& z, int64_t b, int64_t n_in_block, int64_t k_in_block);

}  // namespace mosaic::cuda
