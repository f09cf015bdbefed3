// Constants shared by the W4A8 FP8 layout (host, C++20) and its kernel (nvcc, C++17): tile sizes
// and the nibble -> e4m3 byte tables of the device conversion (w4a8_fp8_layout.h).
#pragma once
#include <cstdint>

namespace mosaic::cuda {

inline constexpr int kFp8TileN = 128;  // outputs per CTA tile (2 consumer warpgroups x 64)
inline constexpr int kFp8TileK = 128;  // inputs per k-tile (pipeline stage): 4 k32 steps
// A weight's nibble is n = i2 << 3 | s << 2 | i1 << 1 | i0: q = code - 8 in 4-bit two's complement
// with its bits 2 and 3 swapped (s = sign, i2 i1 i0 = the low three bits of q). The device reads
// two 8-byte tables with byte permutes (prmt): table A with selector n, table B with n ^ 8. prmt
// copies byte (n & 7) when bit 3 of the selector is clear and otherwise that byte's sign bit
// replicated, so per weight one of the two lookups gives a table byte and the other 0x00 or 0xFF;
// their XOR is the e4m3 byte of q when A holds e4m3(q) for i2 = 0, q >= 0 (bytes 0..3: 0..3) and
// its complement for i2 = 0, q < 0 (bytes 4..7: ~e4m3(-8..-5), sign bit clear, so B's 0xFF is
// undone), and B holds e4m3(q) for i2 = 1 (bytes 0..3: 4..7, bytes 4..7: -4..-1).
inline constexpr uint32_t kE4m3ALo = 0x44403800u;  // e4m3 of 3, 2, 1, 0          (byte j = e4m3(j))
inline constexpr uint32_t kE4m3AHi = 0x3533312Fu;  // ~e4m3 of -5, -6, -7, -8      (byte 4 + j = ~e4m3(j - 8))
inline constexpr uint32_t kE4m3BLo = 0x4E4C4A48u;  // e4m3 of 7, 6, 5, 4          (byte j = e4m3(4 + j))
inline constexpr uint32_t kE4m3BHi = 0xB8C0C4C8u;  // e4m3 of -1, -2, -3, -4      (byte 4 + j = e4m3(j - 4))
// The nibble of q (-8..7) in this format, and back (swapping bits 2 and 3 is its own inverse).
constexpr uint32_t fp8_nibble(int q) {
  const uint32_t t = uint32_t(q) & 0xfu;
  return (t & 3u) | (t & 4u) << 1 | (t & 8u) >> 1;
}
constexpr int fp8_nibble_q(uint32_t n) {
  const int t = int(fp8_nibble(int(n & 0xfu)));
  return t >= 8 ? t - 16 : t;
}

}  // namespace mosaic::cuda
