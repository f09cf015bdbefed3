// The nl4 grid's table lookup for the kernels' nibble decode (prepared in the eleventh session for
// the next one's measurement, docs/kernels-notes.md "the nl4 grid in the kernels, budgeted"; no
// kernel calls it yet). Integer operations only, host and device, so a CPU test checks it for
// every code.
//
// The grid (format/packed_linear.h grid_nl4: IQ4_NL's values / 127) times 127 is the integers
// T[c] in -127..113, exact in fp16. The table lives in 4 registers as the bytes U[c] = T[c] + 128.
// From one lane's u32 of 8 codes q (code p_i at bits 4i, as the uniform decode reads them) it makes
// the same 4 half2 words as Ops<__half>::dequant's magic-number trick, in the same pairs
// (p0,p4) (p1,p5) (p2,p6) (p3,p7): fp16 bits 0x6400 | U, i.e. 1024 + U, for the caller to subtract
// 1152 (one hsub2 per word) and multiply by the group scale / 127.
//
//   s7  = q & 0x77777777                 low 3 bits of every code
//   lo  = prmt(t0, t1, s7), hi = prmt(t2, t3, s7)         U[c & 7], U[8 + (c & 7)] for p0..p3
//   (the same with s7 >> 16 for p4..p7: prmt reads the low 16 bits of its selector)
//   sel = ((q >> 1) & 0x44444444) | 0x32103210            byte k of lo, or of hi when bit 3 of p_k
//   A   = prmt(lo, hi, sel) = [U[p0] U[p1] U[p2] U[p3]], B the same for p4..p7
//   P = prmt(A, B, 0x5140) = [A0 B0 A1 B1], Q likewise for 2, 3; w_j = prmt(P or Q, 0x64646464, 0x4140 / 0x4342)
// SASS (sm_90a, nvcc 13, a test kernel of the decode alone): see docs/kernels-notes.md.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define MOSAIC_NL4_HD __host__ __device__ __forceinline__
#else
#define MOSAIC_NL4_HD inline
#endif

namespace mosaic::cuda {
// Declared in w4a8_fp8_layout.h (defined in w4a8_fp8_layout.cpp), repeated here so that this header
// stays free of that one's C++20 includes for nvcc's C++17 kernel builds.
uint32_t prmt_emulated(uint32_t a, uint32_t b, uint32_t c);
}  // namespace mosaic::cuda

namespace mosaic::cuda::detail {

// PTX prmt.b32 (default mode) on the device, its emulation (w4a8_fp8_layout.h, which the FP8 W4A8
// decode's CPU mirror uses for the same 16-entry lookup) on the host. The callers never set bit 3.
MOSAIC_NL4_HD uint32_t byte_perm(uint32_t a, uint32_t b, uint32_t s) {
#if defined(__CUDA_ARCH__)
  return __byte_perm(a, b, s);
#else
  return prmt_emulated(a, b, s);
#endif
}

// The table registers for a grid of 16 integers t[c] in -128..127: byte c of the 16 is t[c] + 128.
struct Nl4Table {
  uint32_t t[4];
};
// IQ4_NL's values (grid_nl4() x 127), the grid `mosaic quantize --grid nl4` writes.
constexpr int kIq4Nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
#if defined(__CUDACC__)
__host__ __device__
#endif
constexpr Nl4Table nl4_table(const int (&grid127)[16]) {
  Nl4Table tab{};
  for (int c = 0; c < 16; ++c) tab.t[c / 4] |= uint32_t(uint8_t(grid127[c] + 128)) << (8 * (c % 4));
  return tab;
}

// 8 codes -> 4 words of fp16 bits (1024 + U[p_j], 1024 + U[p_j+4]), j = 0..3 (see the top).
MOSAIC_NL4_HD void nl4_decode_words(uint32_t q, const Nl4Table& tab, uint32_t (&w)[4]) {
  const uint32_t s7 = q & 0x77777777u, s7h = s7 >> 16;
  const uint32_t lo_a = byte_perm(tab.t[0], tab.t[1], s7), hi_a = byte_perm(tab.t[2], tab.t[3], s7);
  const uint32_t lo_b = byte_perm(tab.t[0], tab.t[1], s7h), hi_b = byte_perm(tab.t[2], tab.t[3], s7h);
  const uint32_t sel = ((q >> 1) & 0x44444444u) | 0x32103210u;
  const uint32_t a = byte_perm(lo_a, hi_a, sel), b = byte_perm(lo_b, hi_b, sel >> 16);
  // Interleave (A_j, B_j) pairs, then put each pair into the low bytes of a half2 with the exponent
  // byte 0x64 from a constant: 6 prmt (4 prmt + 4 lop3 the direct way).
  const uint32_t p01 = byte_perm(a, b, 0x5140u), p23 = byte_perm(a, b, 0x7362u);  // A0 B0 A1 B1, A2 B2 A3 B3
  constexpr uint32_t kExp = 0x64646464u;
  w[0] = byte_perm(p01, kExp, 0x4140u);  // A0 64 B0 64
  w[1] = byte_perm(p01, kExp, 0x4342u);
  w[2] = byte_perm(p23, kExp, 0x4140u);
  w[3] = byte_perm(p23, kExp, 0x4342u);
}

}  // namespace mosaic::cuda::detail
