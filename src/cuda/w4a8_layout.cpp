// Host-side repack of PackedLinear into the W4A8 kernel's layout (w4a8_layout.h).
#include "cuda/w4a8_layout.h"

#include "cuda/zipper_layout.h"
#include "util/error.h"
#include "util/half.h"

namespace mosaic::cuda {
namespace {

// Signed code q = c - 8 of column k in a row of packed nibbles (low nibble = even column).
inline int q_at(const uint8_t* row, int64_t k) { return int((row[k >> 1] >> ((k & 1) * 4)) & 0xf) - 8; }

// One word of a lane: byte i = (q(dk0 + 4t + i) << 4) | q(dk0 + 16 + 4t + i), 4-bit two's complement.
template <typename QAt>
uint32_t pack_word(int lane, QAt q) {
  const int t = lane % 4;
  uint32_t w = 0;
  for (int i = 0; i < 4; ++i) {
    const uint32_t hi = uint32_t(q(4 * t + i)) & 0xf, lo = uint32_t(q(16 + 4 * t + i)) & 0xf;
    w |= ((hi << 4) | lo) << (8 * i);
  }
  return w;
}

// Inverse of pack_word: q of input dk (0..31 within the k32 step) from a lane's word, or 99 when
// that lane does not hold it.
int unpack_word(uint32_t w, int lane, int dk) {
  const int t = lane % 4;
  for (int i = 0; i < 4; ++i) {
    int nib = -1;
    if (dk == 4 * t + i) nib = int((w >> (8 * i + 4)) & 0xf);
    if (dk == 16 + 4 * t + i) nib = int((w >> (8 * i)) & 0xf);
    if (nib >= 0) return nib >= 8 ? nib - 16 : nib;
  }
  return 99;
}

}  // namespace

int64_t W4A8Layout::weight_bytes(bool with_residual) const {
  int64_t b = int64_t(qweight.size()) * 4 + int64_t(scales.size()) * 4;
  if (with_residual && nnzb > 0)
    b += int64_t(res_qweight.size()) * 4 + int64_t(res_scales.size()) * 4 + int64_t(res_index.size()) * 4;
  return b;
}

void check_w4a8_supported(const PackedLinear& w) {
  const auto shape = [&] { return ::mosaic::detail::concat("[N=", w.N, ", K=", w.K, ", group=", w.group, "]"); };
  MOSAIC_CHECK(w.N > 0 && w.K > 0, "w4a8: empty linear layer ", shape());
  MOSAIC_CHECK(w.symmetric, "w4a8: asymmetric base weights are not supported (layer ", shape(), ")");
  MOSAIC_CHECK(w.N % 16 == 0, "w4a8: N must be a multiple of 16, layer ", shape());
  MOSAIC_CHECK(w.K % kW4A8TileK == 0, "w4a8: K must be a multiple of 128, layer ", shape());
  MOSAIC_CHECK(w.group > 0 && w.K % w.group == 0 && (w.group == 64 || w.group % 128 == 0),
               "w4a8: group size must be 64 or a multiple of 128 dividing K (the kernel folds its INT32 sums "
               "per 64 or 128 inputs), layer ",
               shape());
  check_zipper_supported(w);  // sizes of every tensor, residual block shape 16 x 64 and its CSR
}

W4A8Layout repack_for_w4a8(const PackedLinear& w) {
  check_w4a8_supported(w);
  if (w.has_residual() && w.block_rows != 16) return repack_for_w4a8(split_residual_rows(w, 16));  // e.g. 64 x 64 blocks
  W4A8Layout z;
  z.N = w.N;
  z.K = w.K;
  z.group = w.group;
  z.spt = w.group == 64 ? 2 : 1;
  const int64_t ntile = w.K / kW4A8TileK, ngroups = w.K / w.group, half = w.K / 2;

  z.qweight.resize(size_t(w.N / 8 * ntile * 128));
  for (int64_t nt = 0; nt < w.N / 8; ++nt)
    for (int64_t kt = 0; kt < ntile; ++kt)
      for (int lane = 0; lane < 32; ++lane) {
        const uint8_t* row = &w.qweight[size_t((8 * nt + lane / 4) * half)];
        for (int s = 0; s < 4; ++s)
          z.qweight[size_t(((nt * ntile + kt) * 32 + lane) * 4 + s)] =
              pack_word(lane, [&](int dk) { return q_at(row, kt * 128 + 32 * s + dk); });
      }

  z.scales.resize(size_t(ntile * z.spt * w.N));
  for (int64_t kt = 0; kt < ntile; ++kt)
    for (int h = 0; h < z.spt; ++h)
      for (int64_t n = 0; n < w.N; ++n) {
        const int64_t g = (kt * kW4A8TileK + h * 64) / w.group;
        z.scales[size_t((kt * z.spt + h) * w.N + n)] = fp16_to_float(w.scales[size_t(n * ngroups + g)]) / 16.f;
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
          for (int wd = 0; wd < 4; ++wd) {
            const int dn = 8 * (wd / 2) + lane / 4, step = wd % 2;
            const uint8_t* row = &w.res_qvalues[size_t((b * 16 + dn) * 32)];
            z.res_qweight[size_t((b * 32 + lane) * 4 + wd)] =
                pack_word(lane, [&](int dk) { return q_at(row, 32 * step + dk); });
          }
        for (int i = 0; i < 16; ++i)
          z.res_scales[size_t(b * 16 + i)] = fp16_to_float(w.res_scales[size_t(b * 16 + i)]) / 16.f;
      }
  }
  return z;
}

int w4a8_base_q(const W4A8Layout& z, int64_t n, int64_t k) {
  const int64_t ntile = z.K / kW4A8TileK, nt = n / 8, kt = k / kW4A8TileK, s = (k % 128) / 32;
  for (int lane = 0; lane < 32; ++lane) {
    if (lane / 4 != n % 8) continue;
    const int q = unpack_word(z.qweight[size_t(((nt * ntile + kt) * 32 + lane) * 4 + s)], lane, int(k % 32));
    if (q != 99) return q;
  }
  return 99;
}

int w4a8_res_q(const W4A8Layout& z, int64_t b, int dn, int dk) {
  const int wd = 2 * (dn / 8) + dk / 32;
  for (int lane = 0; lane < 32; ++lane) {
    if (lane / 4 != dn % 8) continue;
    const int q = unpack_word(z.res_qweight[size_t((b * 32 + lane) * 4 + wd)], lane, dk % 32);
    if (q != 99) return q;
  }
  return 99;
}

}  // namespace mosaic::cuda
