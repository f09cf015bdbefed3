// Host-side repack of PackedLinear into the W4A8 FP8 wgmma kernel's layout (w4a8_fp8_layout.h).
#include "cuda/w4a8_fp8_layout.h"

#include "cuda/w4a8_layout.h"  // check_w4a8_supported
#include "format/int_scale_grid.h"
#include "util/error.h"
#include "util/half.h"

namespace mosaic::cuda {
namespace {

inline int q_at(const uint8_t* row, int64_t k) { return int((row[k >> 1] >> ((k & 1) * 4)) & 0xf) - 8; }

// The two words of one lane's k32 step; q(dn, dk) = code of row dn (0..15 of the warp) and column
// dk (0..31 of the step). e4m3 variant: word 0 = a0 | a1 << 16, word 1 = a2 | a3 << 16; INT8
// variant: a0 and a1 (a2 and a3) interleaved by byte, codes q + 8 (w4a8_fp8_layout.h).
template <typename QAt>
void pack_step(int lane, QAt q, uint32_t& w0, uint32_t& w1, bool int8) {
  const int g = lane / 4, t = lane % 4;
  auto reg = [&](int dn, int dk0) {
    uint32_t r = 0;
    for (int i = 0; i < 4; ++i) r |= fp8_nibble(q(dn, dk0 + i)) << (4 * i);
    return r;
  };
  auto pair = [&](int dk0) {  // INT8: byte i = c(g, dk0 + i) | c(g + 8, dk0 + i) << 4
    uint32_t r = 0;
    for (int i = 0; i < 4; ++i) r |= uint32_t(q(g, dk0 + i) + 8) << (8 * i) | uint32_t(q(g + 8, dk0 + i) + 8) << (8 * i + 4);
    return r;
  };
  if (int8) {
    w0 = pair(4 * t);
    w1 = pair(16 + 4 * t);
  } else {
    w0 = reg(g, 4 * t) | reg(g + 8, 4 * t) << 16;
    w1 = reg(g, 16 + 4 * t) | reg(g + 8, 16 + 4 * t) << 16;
  }
}

// q of (dn, dk) back from one lane set of a step's words: [32 lanes][2 words].
int unpack_step(const uint32_t* words, int stride, int dn, int dk, bool int8) {
  const int g = dn % 8, hi_row = dn / 8, t = (dk % 16) / 4, i = dk % 4, w = dk / 16;
  const uint32_t word = words[size_t((4 * g + t) * stride + w)];
  if (int8) return int((word >> (8 * i + 4 * hi_row)) & 0xf) - 8;
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

void i8_word_to_s8(uint32_t word, uint32_t m_lo, uint32_t m_hi, uint32_t& lo, uint32_t& hi) {
  // Mirrors the device code (w4a8_fp8_gemm.cu, nib8_to_s8): 32-bit arithmetic on 4 bytes at once.
  const uint32_t clo = word & 0x0F0F0F0Fu, chi = (word >> 4) & 0x0F0F0F0Fu;
  lo = (clo * m_lo + (0x80808080u - m_lo * 0x08080808u)) ^ 0x80808080u;
  hi = (chi * m_hi + (0x80808080u - m_hi * 0x08080808u)) ^ 0x80808080u;
}

int64_t W4A8Fp8Layout::weight_bytes(bool with_residual) const {
  int64_t b = int64_t(qweight.size()) * 4 + int64_t(scales.size()) * 4 + int64_t(chan_scale.size()) * 4;
  if (with_residual && nnzb > 0)
    b += int64_t(res_qweight.size()) * 4 + int64_t(res_scales.size()) * 4 + int64_t(res_index.size()) * 4;
  return b;
}

namespace {

// Both variants; grid != nullptr: the INT8 one.
W4A8Fp8Layout repack(const PackedLinear& w, const IntScaleGrid* grid) {
  const bool int8 = grid != nullptr;
  W4A8Fp8Layout z;
  z.int8 = int8;
  z.N = w.N;
  z.K = w.K;
  const int64_t tile = int8 ? 2 * kFp8TileN : kFp8TileN;  // the INT8 kernel's CTA tile may be 256 outputs
  z.Npad = (w.N + tile - 1) / tile * tile;
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
              }, w0, w1, int8);
              const size_t o = size_t(((((nt * KT + kt) * 8 + wp) * 2 + h) * 32 + lane) * 4 + 2 * st);
              z.qweight[o] = w0;
              z.qweight[o + 1] = w1;
            }

  z.scales.assign(size_t(KT * z.spt * z.Npad), 0.f);
  for (int64_t kt = 0; kt < KT; ++kt)
    for (int h = 0; h < z.spt; ++h)
      for (int64_t n = 0; n < w.N; ++n) {
        const int64_t g = (kt * kFp8TileK + h * 64) / w.group;
        z.scales[size_t((kt * z.spt + h) * z.Npad + n)] =
            int8 ? float(grid->base_m[size_t(n * ngroups + g)]) : fp16_to_float(w.scales[size_t(n * ngroups + g)]);
      }
  if (int8) {
    z.chan_scale.assign(size_t(z.Npad), 0.f);
    for (int64_t n = 0; n < w.N; ++n) z.chan_scale[size_t(n)] = grid->unit[size_t(n)];
  }

  z.nnzb = w.num_blocks_kept();
  if (z.nnzb > 0) {
    const int64_t nbr = w.N / 16, nbc = w.K / 64;
    z.res_index.assign(size_t(nbr * nbc), -1);
    const int64_t words = int8 ? kI8ResWords : 128;  // per block
    z.res_qweight.assign(size_t(z.nnzb * words), 0u);
    if (!int8) z.res_scales.resize(size_t(z.nnzb * 16));
    for (int64_t r = 0; r < nbr; ++r)
      for (int64_t b = w.res_rowptr[size_t(r)]; b < w.res_rowptr[size_t(r + 1)]; ++b) {
        z.res_index[size_t(r * nbc + w.res_colidx[size_t(b)])] = int32_t(b);
        for (int lane = 0; lane < 32; ++lane)
          for (int st = 0; st < 2; ++st) {
            uint32_t w0, w1;
            pack_step(lane, [&](int dn, int dk) {
              return q_at(&w.res_qvalues[size_t((b * 16 + dn) * 32)], 32 * st + dk);
            }, w0, w1, int8);
            z.res_qweight[size_t(b * words + lane * 4 + 2 * st)] = w0;
            z.res_qweight[size_t(b * words + lane * 4 + 2 * st + 1)] = w1;
          }
        for (int i = 0; i < 16; ++i) {
          if (int8)  // byte i of the block's words 128..131
            z.res_qweight[size_t(b * words + 128 + i / 4)] |= uint32_t(grid->res_m[size_t(b * 16 + i)]) << (8 * (i % 4));
          else
            z.res_scales[size_t(b * 16 + i)] = fp16_to_float(w.res_scales[size_t(b * 16 + i)]);
        }
      }
  }
  return z;
}

}  // namespace

W4A8Fp8Layout repack_for_w4a8_fp8(const PackedLinear& w) {
  check_w4a8_supported(w);
  if (w.has_residual() && w.block_rows != 16) return repack_for_w4a8_fp8(split_residual_rows(w, 16));  // e.g. 64 x 64 blocks
  return repack(w, nullptr);
}

std::optional<W4A8Fp8Layout> try_repack_for_w4a8_int8_wgmma(const PackedLinear& w, std::string* why) {
  check_w4a8_supported(w);
  if (w.has_residual() && w.block_rows != 16) return try_repack_for_w4a8_int8_wgmma(split_residual_rows(w, 16), why);
  const std::optional<IntScaleGrid> grid = find_int_scale_grid(w, why);
  if (!grid) return std::nullopt;
  return repack(w, &*grid);
}

W4A8Fp8Layout repack_for_w4a8_int8_wgmma(const PackedLinear& w) {
  std::string why;
  std::optional<W4A8Fp8Layout> z = try_repack_for_w4a8_int8_wgmma(w, &why);
  MOSAIC_CHECK(z.has_value(), "w4a8 int8 wgmma: layer [N=", w.N, ", K=", w.K, ", group=", w.group,
               "] is not on the integer scale grid: ", why);
  return std::move(*z);
}

int w4a8_fp8_base_q(const W4A8Fp8Layout& z, int64_t n, int64_t k) {
  const int64_t KT = z.K / kFp8TileK, nt = n / 128, kt = k / kFp8TileK;
  const int wp = int(n % 128) / 16, step = int(k % 128) / 32, h = step / 2, st = step % 2;
  const uint32_t* words = &z.qweight[size_t((((nt * KT + kt) * 8 + wp) * 2 + h) * 32 * 4 + 2 * st)];
  return unpack_step(words, 4, int(n % 16), int(k % 32), z.int8);
}

int w4a8_fp8_res_q(const W4A8Fp8Layout& z, int64_t b, int dn, int dk) {
  const int64_t words = z.int8 ? kI8ResWords : 128;
  return unpack_step(&z.res_qweight[size_t(b * words + 2 * (dk / 32))], 4, dn, dk % 32, z.int8);
}

int w4a8_i8_res_mult(const W4A8Fp8Layout& z, int64_t b, int dn) {
  return int((z.res_qweight[size_t(b * kI8ResWords + 128 + dn / 4)] >> (8 * (dn % 4))) & 0xff);
}

}  // namespace mosaic::cuda
