// Host-side repack of PackedLinear into the W4A8 FP8 wgmma kernel's layout (w4a8_fp8_layout.h).
#include "cuda/w4a8_fp8_layout.h"

#include "cuda/w4a8_layout.h"  // check_w4a8_supported
#include "util/error.h"
#include "util/half.h"

namespace mosaic::cuda {
namespace {

inline int q_at(const uint8_t* row, int64_t k) { return int((row[k >> 1] >> ((k & 1) * 4)) & 0xf) - 8; }

// The two words of one lane's k32 step; q(dn, dk) = code of row dn (0..15 of the warp) and column
// dk (0..31 of the step). Word 0 = a0 | a1 << 16, word 1 = a2 | a3 << 16 (w4a8_fp8_layout.h).
template <typename QAt>
void pack_step(int lane, QAt q, uint32_t& w0, uint32_t& w1) {
  const int g = lane / 4, t = lane % 4;
  auto reg = [&](int dn, int dk0) {
    uint32_t r = 0;
    for (int i = 0; i < 4; ++i) r |= fp8_nibble(q(dn, dk0 + i)) << (4 * i);
    return r;
  };
  w0 = reg(g, 4 * t) | reg(g + 8, 4 * t) << 16;
  w1 = reg(g, 16 + 4 * t) | reg(g + 8, 16 + 4 * t) << 16;
}

// q of (dn, dk) back from one lane set of a step's words: [32 lanes][2 words].
int unpack_step(const uint32_t* words, int stride, int dn, int dk) {
  const int g = dn % 8, hi_row = dn / 8, t = (dk % 16) / 4, i = dk % 4, w = dk / 16;
  const uint32_t word = words[size_t((4 * g + t) * stride + w)];
  return fp8_nibble_q(word >> (16 * hi_row + 4 * i));
}

}  // namespace

uint32_t prmt_emulated(uint32_t a, uint32_t b, uint32_t c) {
  const uint64_t pool = uint64_t(a) | uint64_t(b) << 32;
  uint32_t r = 0;
  for (int i = 0; i < 4; ++i) {
    const uint32_t sel = (c >> (4 * i)) & 0xf;
    uint32_t byte = uint32_t(pool >> (8 * (sel & 7))) & 0xff;
    if (sel & 8) byte = (byte & 0x80) ? 0xff : 0x00;
    r |= byte << (8 * i);
  }
  return r;
}

void fp8_word_to_e4m3(uint32_t word, uint32_t& lo, uint32_t& hi) {
  // Mirrors the device code (w4a8_fp8_gemm.cu, nib8_to_e4m3): table A with the nibbles as
  // selectors, table B with bit 3 of every nibble flipped, XOR (w4a8_fp8_tables.h).
  const uint32_t wx = word ^ 0x88888888u;
  lo = prmt_emulated(kE4m3ALo, kE4m3AHi, word & 0xffff) ^ prmt_emulated(kE4m3BLo, kE4m3BHi, wx & 0xffff);
  hi = prmt_emulated(kE4m3ALo, kE4m3AHi, word >> 16) ^ prmt_emulated(kE4m3BLo, kE4m3BHi, wx >> 16);
}

int64_t W4A8Fp8Layout::weight_bytes(bool with_residual) const {
  int64_t b = int64_t(qweight.size()) * 4 + int64_t(scales.size()) * 4;
  if (with_residual && nnzb > 0)
    b += int64_t(res_qweight.size()) * 4 + int64_t(res_scales.size()) * 4 + int64_t(res_index.size()) * 4;
  return b;
}

W4A8Fp8Layout repack_for_w4a8_fp8(const PackedLinear& w) {
  check_w4a8_supported(w);
  if (w.has_residual() && w.block_rows != 16) return repack_for_w4a8_fp8(split_residual_rows(w, 16));  // e.g. 64 x 64 blocks
  W4A8Fp8Layout z;
  z.N = w.N;
  z.K = w.K;
  z.Npad = (w.N + kFp8TileN - 1) / kFp8TileN * kFp8TileN;
  z.group = w.group;
  z.spt = w.group == 64 ? 2 : 1;
  const int64_t KT = w.K / kFp8TileK, ngroups = w.K / w.group, half = w.K / 2;

  z.qweight.assign(size_t(z.Npad / 128 * KT * 8 * 2 * 32 * 4), 0u);
  for (int64_t nt = 0; nt < z.Npad / 128; ++nt)
    for (int64_t kt = 0; kt < KT; ++kt)
      for (int wp = 0; wp < 8; ++wp)
        for (int h = 0; h < 2; ++h)
          for (int lane = 0; lane < 32; ++lane)
            for (int st = 0; st < 2; ++st) {
              const int64_t n_base = nt * 128 + 16 * wp, k_base = kt * 128 + 32 * (2 * h + st);
              uint32_t w0, w1;
              pack_step(lane, [&](int dn, int dk) {
                const int64_t n = n_base + dn;
                return n < w.N ? q_at(&w.qweight[size_t(n * half)], k_base + dk) : 0;
              }, w0, w1);
              const size_t o = size_t(((((nt * KT + kt) * 8 + wp) * 2 + h) * 32 + lane) * 4 + 2 * st);
              z.qweight[o] = w0;
              z.qweight[o + 1] = w1;
            }

  z.scales.assign(size_t(KT * z.spt * z.Npad), 0.f);
  for (int64_t kt = 0; kt < KT; ++kt)
    for (int h = 0; h < z.spt; ++h)
      for (int64_t n = 0; n < w.N; ++n) {
        const int64_t g = (kt * kFp8TileK + h * 64) / w.group;
        z.scales[size_t((kt * z.spt + h) * z.Npad + n)] = fp16_to_float(w.scales[size_t(n * ngroups + g)]);
      }

  z.nnzb = w.num_blocks_kept();
  if (z.nnzb > 0) {
    const int64_t nbr = w.N / 16, nbc = w.K / 64;
    z.res_index.assign(size_t(nbr * nbc), -1);
    z.res_qweight.resize(size_t(z.nnzb * 128));
    z.res_scales.resize(size_t(z.nnzb * 16));
    for (int64_t r = 0; r < nbr; ++r)
      for (int64_t b = w.res_rowptr[size_t(r)]; b < w.res_rowptr[size_t(r + 1)]; ++b) {
        z.res_index[size_t(r * nbc + w.res_colidx[size_t(b)])] = int32_t(b);
        for (int lane = 0; lane < 32; ++lane)
          for (int st = 0; st < 2; ++st) {
            uint32_t w0, w1;
            pack_step(lane, [&](int dn, int dk) {
              return q_at(&w.res_qvalues[size_t((b * 16 + dn) * 32)], 32 * st + dk);
            }, w0, w1);
            z.res_qweight[size_t((b * 32 + lane) * 4 + 2 * st)] = w0;
            z.res_qweight[size_t((b * 32 + lane) * 4 + 2 * st + 1)] = w1;
          }
        for (int i = 0; i < 16; ++i) z.res_scales[size_t(b * 16 + i)] = fp16_to_float(w.res_scales[size_t(b * 16 + i)]);
      }
  }
  return z;
}

int w4a8_fp8_base_q(const W4A8Fp8Layout& z, int64_t n, int64_t k) {
  const int64_t KT = z.K / kFp8TileK, nt = n / 128, kt = k / kFp8TileK;
  const int wp = int(n % 128) / 16, step = int(k % 128) / 32, h = step / 2, st = step % 2;
  const uint32_t* words = &z.qweight[size_t((((nt * KT + kt) * 8 + wp) * 2 + h) * 32 * 4 + 2 * st)];
  return unpack_step(words, 4, int(n % 16), int(k % 32));
}

int w4a8_fp8_res_q(const W4A8Fp8Layout& z, int64_t b, int dn, int dk) {
  return unpack_step(&z.res_qweight[size_t(b * 128 + 2 * (dk / 32))], 4, dn, dk % 32);
}

}  // namespace mosaic::cuda
