// Host-side repack of PackedLinear into ZipperEngine's fragment-ordered layout (zipper_layout.h).
#include "cuda/zipper_layout.h"


#include "util/error.h"

namespace mosaic::cuda {
namespace {

// Code 0..15 of column k in a row of packed nibbles (low nibble = even column).
inline int nibble(const uint8_t* row, int64_t k) { return (row[k >> 1] >> ((k & 1) * 4)) & 0xf; }

// Which (row offset within the chunk, column offset within the chunk) nibble position p of
// word j of lane l holds. Mirrors dequant() in zipper_kernels.cu:
//   half2 0 = (p0, p4): n = g,     k = 16j + 2t + {0, 1}    (B fragment reg 0 of n8 tile A)
//   half2 1 = (p1, p5): n = g,     k = 16j + 2t + 8 + {0, 1} (reg 1 of tile A)
//   half2 2 = (p2, p6): n = g + 8, k = 16j + 2t + {0, 1}    (reg 0 of tile B)
//   half2 3 = (p3, p7): n = g + 8, k = 16j + 2t + 8 + {0, 1} (reg 1 of tile B)
inline void nibble_position(int lane, int j, int p, int& dn, int& dk) {
  const int g = lane / 4, t = lane % 4;
  const int pair = p % 4, hi = p / 4;  // p = pair + 4 * hi
  dn = g + ((pair & 2) ? 8 : 0);
  dk = 16 * j + 2 * t + ((pair & 1) ? 8 : 0) + hi;
}

// Pack one 16 x 64 chunk whose code at (dn, dk) is code(dn, dk) into 128 words.
template <typename CodeAt>
void pack_chunk(uint32_t* out, CodeAt code) {
  for (int lane = 0; lane < 32; ++lane)
    for (int j = 0; j < 4; ++j) {
      uint32_t word = 0;
      for (int p = 0; p < 8; ++p) {
        int dn, dk;
        nibble_position(lane, j, p, dn, dk);
        word |= uint32_t(code(dn, dk)) << (4 * p);
      }
      out[lane * 4 + j] = word;
    }
}

}  // namespace

int64_t ZipperLayout::weight_bytes(bool with_residual) const {
  int64_t b = int64_t(qweight.size()) * 4 + int64_t(scales.size()) * 2;
  if (with_residual && nnzb > 0)
    b += int64_t(res_qweight.size()) * 4 + int64_t(res_scales.size()) * 2 +
         int64_t(res_bitmap.size()) * 8 + int64_t(res_rowptr.size()) * 4 + nnzb * 2;  // (colidx: 2 per block)
  return b;
}

void check_zipper_supported(const PackedLinear& w) {
  const auto shape = [&] { return ::mosaic::detail::concat("[N=", w.N, ", K=", w.K, ", group=", w.group, "]"); };
  MOSAIC_CHECK(w.N > 0 && w.K > 0, "zipper: empty linear layer ", shape());
  MOSAIC_CHECK(w.symmetric, "zipper: asymmetric base weights are not supported (layer ", shape(), ")");
  // The kernels decode uniform codes (c - 8): a codebook layer would run silently wrong.
  MOSAIC_CHECK(w.grid.empty(), "zipper: a non-uniform base grid (qgrid) is not supported yet (layer ", shape(), ")");
  MOSAIC_CHECK(w.N % kChunkN == 0, "zipper: N must be a multiple of 16, layer ", shape());
  MOSAIC_CHECK(w.K % kTileK == 0, "zipper: K must be a multiple of 128, layer ", shape());
  MOSAIC_CHECK(w.N <= (int64_t(1) << 30) && w.K <= (int64_t(1) << 20), "zipper: layer too large ", shape());
  MOSAIC_CHECK(w.group > 0 && w.group % 16 == 0 && (128 % w.group == 0 || w.group % 128 == 0) &&
                   w.K % w.group == 0,
               "zipper: group size must be 16, 32, 64 or a multiple of 128 dividing K, layer ", shape());
  MOSAIC_CHECK(int64_t(w.qweight.size()) == w.N * w.K / 2, "zipper: qweight has ", w.qweight.size(),
               " bytes, expected N*K/2 for ", shape());
  MOSAIC_CHECK(int64_t(w.scales.size()) == w.N * (w.K / w.group), "zipper: scales has ", w.scales.size(),
               " entries, expected N*K/group for ", shape());
  const int64_t nnzb = int64_t(w.res_colidx.size());
  if (nnzb == 0) return;
  // Taller blocks (Br a multiple of 16, e.g. 64 x 64: one wgmma warpgroup's outputs) are split into
  // 16 x 64 ones by the repacks (split_residual_rows).
  MOSAIC_CHECK(w.block_cols == kChunkK && w.block_rows > 0 && w.block_rows % kChunkN == 0 && w.N % w.block_rows == 0,
               "zipper: residual blocks must be 16 x 64 or (16 n) x 64, got ", w.block_rows, " x ", w.block_cols,
               " for layer ", shape());
  const int Br = w.block_rows;
  const int64_t nbr = w.N / Br, nbc = w.K / 64;
  MOSAIC_CHECK(int64_t(w.res_rowptr.size()) == nbr + 1, "zipper: res_rowptr has ", w.res_rowptr.size(),
               " entries, expected N/", Br, "+1 = ", nbr + 1);
  MOSAIC_CHECK(int64_t(w.res_qvalues.size()) == nnzb * Br * 32 && int64_t(w.res_scales.size()) == nnzb * Br,
               "zipper: residual tensors do not match ", nnzb, " blocks of ", Br, " x 64");
  MOSAIC_CHECK(w.res_rowptr[0] == 0 && w.res_rowptr[nbr] == nnzb, "zipper: res_rowptr does not span ", nnzb,
               " blocks");
  for (int64_t r = 0; r < nbr; ++r) {
    MOSAIC_CHECK(w.res_rowptr[r] <= w.res_rowptr[r + 1], "zipper: res_rowptr decreases at block row ", r);
    for (int64_t b = w.res_rowptr[r]; b < w.res_rowptr[r + 1]; ++b) {
      MOSAIC_CHECK(w.res_colidx[b] >= 0 && w.res_colidx[b] < nbc, "zipper: res_colidx[", b, "] = ",
                   w.res_colidx[b], " outside 0..", nbc - 1);
      MOSAIC_CHECK(b == w.res_rowptr[r] || w.res_colidx[b] > w.res_colidx[b - 1],
                   "zipper: res_colidx not strictly ascending in block row ", r);
    }
  }
}

ZipperLayout repack_for_zipper(const PackedLinear& w) {
  check_zipper_supported(w);
  if (w.has_residual() && w.block_rows != kChunkN) return repack_for_zipper(split_residual_rows(w, kChunkN));
  ZipperLayout z;
  z.N = w.N;
  z.K = w.K;
  z.group = w.group;
  z.scales_per_tile = w.group < kTileK ? kTileK / w.group : 1;
  const int64_t nbr = w.N / 16, nchunk = w.K / 64, ntile = w.K / kTileK, ngroups = w.K / w.group;

  z.qweight.resize(size_t(nbr * nchunk * 128));
  for (int64_t r = 0; r < nbr; ++r)
    for (int64_t c = 0; c < nchunk; ++c)
      pack_chunk(&z.qweight[size_t((r * nchunk + c) * 128)], [&](int dn, int dk) {
        return nibble(&w.qweight[size_t((16 * r + dn) * (w.K / 2))], 64 * c + dk);
      });

  const int spt = z.scales_per_tile;
  z.scales.resize(size_t(nbr * ntile * spt * 16));
  for (int64_t r = 0; r < nbr; ++r)
    for (int64_t t = 0; t < ntile; ++t)
      for (int s = 0; s < spt; ++s)
        for (int i = 0; i < 16; ++i) {
          const int64_t g = (t * kTileK + int64_t(s) * (kTileK / spt)) / w.group;
          z.scales[size_t(((r * ntile + t) * spt + s) * 16 + i)] = w.scales[size_t((16 * r + i) * ngroups + g)];
        }

  z.nnzb = w.num_blocks_kept();
  z.words_per_row = int((nchunk + 63) / 64);
  if (z.nnzb > 0) {
    z.res_rowptr = w.res_rowptr;
    z.res_scales = w.res_scales;
    z.res_qweight.resize(size_t(z.nnzb * 128));
    z.res_bitmap.assign(size_t(nbr * z.words_per_row), 0);
    z.res_colidx.assign(size_t(z.nnzb + 32), 0);
    for (int64_t r = 0; r < nbr; ++r)
      for (int64_t b = w.res_rowptr[r]; b < w.res_rowptr[r + 1]; ++b) {
        const int64_t c = w.res_colidx[b];
        z.res_colidx[size_t(b)] = uint16_t(c);
        z.res_bitmap[size_t(r * z.words_per_row + c / 64)] |= uint64_t(1) << (c % 64);
        pack_chunk(&z.res_qweight[size_t(b * 128)], [&](int dn, int dk) {
          return nibble(&w.res_qvalues[size_t((b * 16 + dn) * 32)], dk);
        });
      }
  }
  return z;
}

int zipper_base_code(const ZipperLayout& z, int64_t n, int64_t k) {
  const int64_t r = n / 16, c = k / 64, dn = n % 16, dk = k % 64;
  const uint32_t* chunk = &z.qweight[size_t((r * (z.K / 64) + c) * 128)];
  for (int lane = 0; lane < 32; ++lane)
    for (int j = 0; j < 4; ++j)
      for (int p = 0; p < 8; ++p) {
        int pn, pk;
        nibble_position(lane, j, p, pn, pk);
        if (pn == dn && pk == dk) return int((chunk[lane * 4 + j] >> (4 * p)) & 0xf);
      }
  return -1;
}

int zipper_res_code(const ZipperLayout& z, int64_t b, int64_t dn, int64_t dk) {
  const uint32_t* chunk = &z.res_qweight[size_t(b * 128)];
  for (int lane = 0; lane < 32; ++lane)
    for (int j = 0; j < 4; ++j)
      for (int p = 0; p < 8; ++p) {
        int pn, pk;
        nibble_position(lane, j, p, pn, pk);
        if (pn == dn && pk == dk) return int((chunk[lane * 4 + j] >> (4 * p)) & 0xf);
      }
  return -1;
}

}  // namespace mosaic::cuda
