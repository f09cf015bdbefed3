// The GPU layout of the W4A8 wgmma GEMMs, e4m3 and (below) INT8 (docs/kernels.md "FP8 wgmma kernel",
// "INT8 wgmma kernel"), built once on the host from the canonical PackedLinear. Pure C++ (no CUDA): CI tests it without
// a GPU, including the device's nibble -> e4m3 conversion, emulated bit for bit.
//
// The kernel computes D^T = W . X^T with wgmma m64nNk32 e4m3: the weights are the A operand from
// registers (64 outputs per warpgroup, 16 per warp), X the B operand in shared memory. A warp's A
// fragment of one k32 step is 4 registers of 4 e4m3 bytes; lane l (g = l/4, t = l%4) holds
//   a0 = W[g, 4t..4t+3], a1 = W[g+8, 4t..4t+3], a2 = W[g, 16+4t..16+4t+3], a3 = W[g+8, 16+4t..]
// (rows relative to the warp's 16 outputs, columns to the k32 step). In the repacked words each
// register is 4 nibbles, two registers per 32-bit word:
//   word 0 of a step = a0 (nibbles 0..3, element i in nibble i) | a1 (nibbles 4..7)
//   word 1 of a step = a2 | a3                      nibble = fp8_nibble(q), q = code - 8 (w4a8_fp8_tables.h:
//                                                   two's complement with bits 2 and 3 swapped)
// and the device turns 8 nibbles into 8 e4m3 bytes with 4 byte permutes (prmt) from two 8-entry
// tables and 2 XOR (every integer -8..7 is exact in e4m3; w4a8_fp8_tables.h has why it works).
// fp8_word_to_e4m3 below is the host emulation of exactly those instructions.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "cuda/w4a8_fp8_tables.h"
#include "format/packed_linear.h"

namespace mosaic::cuda {

struct W4A8Fp8Layout {
  int64_t N = 0, K = 0;
  int64_t Npad = 0;  // N rounded up to 128 (INT8 variant: 256) (padding outputs: q = 0, scale 0)
  int group = 128;
  int spt = 1;  // scale sets per (output, k-tile): 2 for group 64, else 1
  // Base codes: [Npad/128][K/128][8 warps][2 halves][32 lanes][4 words]; half h holds k32 steps
  // 2h and 2h+1 (words 0,1 = step 2h, words 2,3 = step 2h+1). One CTA tile's k-tile is 8 KB,
  // contiguous (one bulk copy); a lane's 16 bytes of a half are one 16-byte shared-memory load.
  std::vector<uint32_t> qweight;
  // Base scales as fp32 (not divided): [K/128][spt][Npad]; 0 for padding outputs.
  std::vector<float> scales;
  // Residual (16 x 64 blocks = one warp's 16 outputs x 2 k32 steps, CSR order kept): codes
  // [nnzb][32 lanes][4 words] (words 0,1 = step 0, words 2,3 = step 1, same nibble format);
  // scales fp32 [nnzb][16]; index [N/16][K/64] int32 = block number or -1 when not kept.
  std::vector<uint32_t> res_qweight;
  std::vector<float> res_scales;
  std::vector<int32_t> res_index;
  int64_t nnzb = 0;

  // INT8 variant (repack_for_w4a8_int8_wgmma; false: the e4m3 one above). Its residual blocks are
  // kI8ResWords words each: the 128 code words, then the 16 rows' multipliers m_r as bytes (one bulk
  // copy per kept block; res_scales stays empty).
  bool int8 = false;
  std::vector<float> chan_scale;  // INT8 variant: [Npad] u_n (0 for padding outputs)

  int64_t weight_bytes(bool with_residual = true) const;  // bytes a GEMM streams for the weights
};

// Same rules as check_w4a8_supported (w4a8_layout.h): symmetric base, N % 16 == 0, K % 128 == 0,
// group 64 or a multiple of 128 dividing K, residual blocks 16 x 64.
W4A8Fp8Layout repack_for_w4a8_fp8(const PackedLinear& w);

// The INT8 variant for layers on the integer scale grid (format/int_scale_grid.h), run by the same
// kernel with wgmma s8 x s8 -> s32 over the whole K (no per-group promotion) and the residual added
// into the weights' INT8 registers (no extra MMA). Same tiles, sizes and offsets; what differs:
//   - nibbles are the stored codes c = q + 8, interleaved by byte: byte i of word 0 of a step is
//     c(a0 element i) | c(a1 element i) << 4 (word 1: a2, a3), so that the device's
//     w & 0x0F0F0F0F and (w >> 4) & 0x0F0F0F0F are the codes of a0 and a1, one per byte;
//   - `scales` holds the group multipliers m (1..16, as floats), each kept block's words end with its
//     rows' m_r (bytes), chan_scale[n] = u_n. The device makes each INT8 weight m (c - 8) [+ m_r (r - 8)] with one
//     32-bit multiply-add per 4 weights (i8_word_to_s8) and scales row n's INT32 sum by u_n s_t.
// Throws mosaic::Error naming the layer and the reason when it is not on the grid.
W4A8Fp8Layout repack_for_w4a8_int8_wgmma(const PackedLinear& w);
// The same, or nullopt (the reason in *why) when the layer is not on the grid; unsupported layers
// still throw (check_w4a8_supported).
std::optional<W4A8Fp8Layout> try_repack_for_w4a8_int8_wgmma(const PackedLinear& w, std::string* why = nullptr);

// The device's INT8 conversion, emulated: the codes of `word` (a0 | a1 interleaved as above) times
// m_lo (row g: a0) and m_hi (row g + 8: a1) minus 8 m, as 4 signed bytes each: per register one
// IMAD c * m + (0x80 - 8 m) per byte (no byte carries: 0..240) and an XOR 0x80808080.
void i8_word_to_s8(uint32_t word, uint32_t m_lo, uint32_t m_hi, uint32_t& lo, uint32_t& hi);

inline constexpr int kI8ResWords = 132;  // 512 B of codes + 16 B of m_r per kept block

// Host decoders (tests): q (-8..7) of the base at (n, k) and of residual block b at (dn, dk); both
// variants. w4a8_i8_res_mult: m_r of row dn of residual block b (INT8 variant).
int w4a8_fp8_base_q(const W4A8Fp8Layout& z, int64_t n, int64_t k);
int w4a8_fp8_res_q(const W4A8Fp8Layout& z, int64_t b, int dn, int dk);
int w4a8_i8_res_mult(const W4A8Fp8Layout& z, int64_t b, int dn);

// The device's conversion, emulated: 8 nibbles of `word` -> two registers of 4 e4m3 bytes each
// (lo = nibbles 0..3, hi = nibbles 4..7), with the same prmt selectors and tables as the kernel.
void fp8_word_to_e4m3(uint32_t word, uint32_t& lo, uint32_t& hi);
// Emulation of PTX prmt.b32 (default mode): byte i of the result = byte (c >> 4i) & 7 of {b, a}
// (a = bytes 0..3), or that byte's sign replicated when bit 3 of the selector nibble is set.
uint32_t prmt_emulated(uint32_t a, uint32_t b, uint32_t c);

}  // namespace mosaic::cuda
