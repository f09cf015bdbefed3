// The W4A8 ZipperEngine's GPU layout of a MosaicQuant linear layer (docs/kernels.md "W4A8 GEMM",
// docs/format.md "GPU repacked layout (W4A8)"), built once on the host from the canonical
// PackedLinear. Pure C++ (no CUDA), so CI tests it bit-exactly without a GPU.
//
// The kernel multiplies INT8 activation codes by the 4-bit weight codes with mma.m16n8k32.s8
// (weights = the B operand, 8 outputs x 32 inputs per MMA). A lane's B fragment of one n8 tile and
// one k32 step is 8 signed bytes: inputs 4t..4t+3 (reg b0) and 16+4t..16+4t+3 (reg b1) of output g
// (g = lane / 4, t = lane % 4). Both fit one 32-bit word of nibbles:
//
//   word (n8 tile, k32 step) of lane l:  byte i (i = 0..3) = | q(g, 4t+i) | q(g, 16+4t+i) |
//                                                             bits 7..4      bits 3..0
//   q = code - 8 in 4-bit two's complement (code ^ 8), so
//     b0 = word & 0xF0F0F0F0          = 16 q(g, 4t+i)      as signed bytes (exact: -128..112)
//     b1 = (word << 4) & 0xF0F0F0F0   = 16 q(g, 16+4t+i)
//   two LOP3 and one shift per 8 weights, no sign extension; the products are 16x the true ones,
//   and the scales are stored divided by 16 (exact in fp32).
#pragma once
#include <cstdint>
#include <vector>

#include "format/packed_linear.h"

namespace mosaic::cuda {

inline constexpr int kW4A8TileK = 128;  // inputs per k-tile (pipeline stage), 4 k32 steps

struct W4A8Layout {
  int64_t N = 0, K = 0;
  int group = 128;
  int spt = 1;  // scale sets per (output, k-tile): 2 for group 64, else 1 (group >= 128)
  // Base codes: [N/8][K/128][32 lanes][4 words]; word s = k32 step s of the k-tile. One n8 tile's
  // k-tile is 512 contiguous bytes (lane l's 16 bytes = its fragments of 4 k32 steps).
  std::vector<uint32_t> qweight;
  // Base scales / 16 as fp32: [K/128][spt][N] (group > 128: the group's scale repeated per k-tile).
  std::vector<float> scales;
  // Residual (16 x 64 blocks, CSR order kept): codes [nnzb][32 lanes][4 words] with words
  // (n8 tile a = outputs 16r..16r+7, step 0), (a, step 1), (tile b = 16r+8.., step 0), (b, step 1),
  // same nibble format; scales / 16 as fp32 [nnzb][16]; index [N/16][K/64] int32 = block number
  // of (block row, block column) or -1 when not kept (the kernel's loader reads it per k-tile).
  std::vector<uint32_t> res_qweight;
  std::vector<float> res_scales;
  std::vector<int32_t> res_index;
  int64_t nnzb = 0;

  // Bytes a GEMM streams from device memory for the weights (codes, scales, residual, index).
  int64_t weight_bytes(bool with_residual = true) const;
};

// Throws mosaic::Error naming the shapes when the W4A8 kernel cannot take this layer:
// symmetric base; N % 16 == 0; K % 128 == 0; group 64 or a multiple of 128 dividing K;
// residual blocks exactly 16 x 64 (when any block is kept); consistent tensor sizes.
void check_w4a8_supported(const PackedLinear& w);

// Repack (validates first). Deterministic; O(N*K).
W4A8Layout repack_for_w4a8(const PackedLinear& w);

// Host decoders (tests): the signed code q = c - 8 (-8..7) of the base at (n, k) and of residual
// block b at (n_in_block, k_in_block), read back from the repacked words.
int w4a8_base_q(const W4A8Layout& z, int64_t n, int64_t k);
int w4a8_res_q(const W4A8Layout& z, int64_t b, int n_in_block, int k_in_block);

}  // namespace mosaic::cuda
