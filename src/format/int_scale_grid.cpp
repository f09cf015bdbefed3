#include "format/int_scale_grid.h"

#include <algorithm>
#include <bit>
#include <cmath>

#include "util/error.h"
#include "util/half.h"

namespace mosaic {
namespace {

// The smallest power of two u with smax / u <= limit (1 when smax = 0), at least 2^-24 (FP16's
// smallest subnormal step, so that u * m stays exact in FP16).
float unit_for(float smax, float limit) {
  if (!(smax > 0.f)) return 1.f;
  int e = 0;
  const float f = std::frexp(smax / limit, &e);  // smax / limit = f * 2^e, f in [0.5, 1)
  return std::ldexp(1.f, std::max(f == 0.5f ? e - 1 : e, -24));
}
// Snapping lets the largest scale round down to 16 units (by < 3%) rather than take a unit twice as
// coarse: smax / u <= 16.5.
constexpr float kSnapLimit = 16.5f;

// Row n's largest base or residual row scale.
std::vector<float> row_max_scales(const PackedLinear& w) {
  const int64_t ng = w.num_groups();
  std::vector<float> smax(size_t(w.N), 0.f);
  for (int64_t n = 0; n < w.N; ++n)
    for (int64_t g = 0; g < ng; ++g)
      smax[size_t(n)] = std::max(smax[size_t(n)], std::fabs(fp16_to_float(w.scales[size_t(n * ng + g)])));
  for (int64_t br = 0; br + 1 < int64_t(w.res_rowptr.size()); ++br)
    for (int64_t b = w.res_rowptr[size_t(br)]; b < w.res_rowptr[size_t(br + 1)]; ++b)
      for (int dn = 0; dn < w.block_rows; ++dn) {
        const int64_t n = br * w.block_rows + dn;
        smax[size_t(n)] = std::max(smax[size_t(n)], std::fabs(fp16_to_float(w.res_scales[size_t(b * w.block_rows + dn)])));
      }
  return smax;
}

// The largest power of two dividing s (s = odd integer x 2^e: 2^e); s > 0.
float lowbit(float s) {
  int e = 0;
  const float f = std::frexp(s, &e);  // s = f * 2^e, f in [0.5, 1): f * 2^24 is an integer
  const uint32_t F = uint32_t(std::ldexp(f, 24));
  return std::ldexp(1.f, e - 24 + std::countr_zero(F));
}

// u_n: the coarsest unit of row n, the largest power of two dividing all its scales (base and
// residual; 1 for an all-zero row): the fewest units per weight, so the INT8 range is checked where
// it is loosest.
std::vector<float> coarsest_units(const PackedLinear& w) {
  const int64_t ng = w.num_groups();
  std::vector<float> unit(size_t(w.N), 0.f);
  const auto take = [](float& u, uint16_t bits) {
    const float s = fp16_to_float(bits);
    if (s > 0.f) u = u == 0.f ? lowbit(s) : std::min(u, lowbit(s));
  };
  for (int64_t n = 0; n < w.N; ++n)
    for (int64_t g = 0; g < ng; ++g) take(unit[size_t(n)], w.scales[size_t(n * ng + g)]);
  for (int64_t br = 0; br + 1 < int64_t(w.res_rowptr.size()); ++br)
    for (int64_t b = w.res_rowptr[size_t(br)]; b < w.res_rowptr[size_t(br + 1)]; ++b)
      for (int dn = 0; dn < w.block_rows; ++dn)
        take(unit[size_t(br * w.block_rows + dn)], w.res_scales[size_t(b * w.block_rows + dn)]);
  for (float& u : unit)
    if (u == 0.f) u = 1.f;
  return unit;
}

// m = s / u when that is an integer 0..16, else -1.
int multiple_of(float s, float u) {
  const float m = s / u;  // exact for a power of two u (no overflow or underflow at these sizes)
  return m >= 0.f && m <= 16.f && m == std::floor(m) ? int(m) : -1;
}

int res_code(const PackedLinear& w, int64_t b, int dn, int dk) {
  return int(nibble_at(&w.res_qvalues[size_t((b * w.block_rows + dn) * (w.block_cols / 2))], dk));
}

// Calls f(n, k, b, dn, dk) for every weight of every kept residual block.
template <typename F>
void for_each_residual_weight(const PackedLinear& w, F f) {
  for (int64_t br = 0; br + 1 < int64_t(w.res_rowptr.size()); ++br)
    for (int64_t b = w.res_rowptr[size_t(br)]; b < w.res_rowptr[size_t(br + 1)]; ++b)
      for (int dn = 0; dn < w.block_rows; ++dn)
        for (int dk = 0; dk < w.block_cols; ++dk)
          f(br * w.block_rows + dn, int64_t(w.res_colidx[size_t(b)]) * w.block_cols + dk, b, dn, dk);
}

}  // namespace

std::optional<IntScaleGrid> find_int_scale_grid(const PackedLinear& w, std::string* why) {
  const auto no = [&](std::string reason) -> std::optional<IntScaleGrid> {
    if (why) *why = std::move(reason);
    return std::nullopt;
  };
  if (!w.symmetric) return no("asymmetric base (zero points)");
  if (!w.grid.empty()) return no("non-uniform base grid");
  const int64_t ng = w.num_groups();
  IntScaleGrid grid;
  grid.base_m.resize(size_t(w.N * ng));
  grid.res_m.resize(w.res_scales.size());
  grid.unit = coarsest_units(w);
  for (int64_t n = 0; n < w.N; ++n) {
    const float u = grid.unit[size_t(n)];
    for (int64_t g = 0; g < ng; ++g) {
      const int m = multiple_of(fp16_to_float(w.scales[size_t(n * ng + g)]), u);
      if (m < 0)
        return no("row " + std::to_string(n) + " group " + std::to_string(g) + ": scale is not a multiple 0..16 of the row's unit " +
                  std::to_string(u) + " (the largest power of two dividing all its scales)");
      grid.base_m[size_t(n * ng + g)] = uint8_t(m);
    }
  }
  for (int64_t br = 0; br + 1 < int64_t(w.res_rowptr.size()); ++br)
    for (int64_t b = w.res_rowptr[size_t(br)]; b < w.res_rowptr[size_t(br + 1)]; ++b)
      for (int dn = 0; dn < w.block_rows; ++dn) {
        const int64_t n = br * w.block_rows + dn, i = b * w.block_rows + dn;
        const int m = multiple_of(fp16_to_float(w.res_scales[size_t(i)]), grid.unit[size_t(n)]);
        if (m < 0) return no("residual block " + std::to_string(b) + " row " + std::to_string(dn) + ": scale off the grid");
        grid.res_m[size_t(i)] = uint8_t(m);
      }
  std::string overflow;
  for_each_residual_weight(w, [&](int64_t n, int64_t k, int64_t b, int dn, int dk) {
    if (!overflow.empty()) return;
    const int q = int(nibble_at(&w.qweight[size_t(n * (w.K / 2))], k)) - 8;
    const int v = int(grid.base_m[size_t(n * ng + k / w.group)]) * q +
                  int(grid.res_m[size_t(b * w.block_rows + dn)]) * (res_code(w, b, dn, dk) - 8);
    if (v < -128 || v > 127)
      overflow = "weight (" + std::to_string(n) + ", " + std::to_string(k) + "): base + residual = " +
                 std::to_string(v) + " units, outside INT8";
  });
  if (!overflow.empty()) return no(overflow);
  return grid;
}

float int_grid_unit(float largest) { return unit_for(std::fabs(largest), kSnapLimit); }
float int_grid_scale(float s, float unit) {
  return s == 0.f ? 0.f : unit * std::clamp(std::nearbyint(std::fabs(s) / unit), 1.f, 16.f);
}

float int_grid_scale_by_error(float s, float unit, const std::function<double(float)>& error) {
  const float nearest = int_grid_scale(s, unit);
  if (s == 0.f) return nearest;
  const float m = std::fabs(s) / unit;
  const float other = unit * std::clamp(nearest / unit <= m ? std::ceil(m) : std::floor(m), 1.f, 16.f);
  return other != nearest && error(other) < error(nearest) ? other : nearest;
}

void snap_to_int_scale_grid(PackedLinear& w) {
  MOSAIC_CHECK(w.symmetric && w.grid.empty(), "snap_to_int_scale_grid: symmetric uniform-grid layers only [N=", w.N,
               ", K=", w.K, "]");
  const int64_t ng = w.num_groups();
  const std::vector<float> smax = row_max_scales(w);
  // s -> u clamp(round(s / u), 1, 16); 0 stays 0. Returns the old scale.
  const auto snap = [](uint16_t& bits, float u) {
    const float s = std::fabs(fp16_to_float(bits));
    if (s > 0.f) bits = float_to_fp16(int_grid_scale(s, u));
    return s;
  };
  // A code re-rounded for its new scale: the value s q kept as nearly as the new grid allows. A
  // group far below the row's largest (s < u / 2) gets scale u, where its old codes would have
  // grown by u / s; re-rounded, it keeps its values to within u / 2 (per-row INT8 precision).
  const auto reround = [](int q, float s_old, float s_new) {
    if (s_new == 0.f || s_new == s_old) return q;
    return int(std::clamp(std::nearbyint(float(q) * s_old / s_new), -8.f, 7.f));
  };
  const auto set_nibble = [](uint8_t& byte, int64_t k, int code) {
    const int shift = int(k & 1) * 4;
    byte = uint8_t((byte & ~(0xF << shift)) | (code << shift));
  };
  for (int64_t n = 0; n < w.N; ++n) {
    const float u = unit_for(smax[size_t(n)], kSnapLimit);
    uint8_t* row = &w.qweight[size_t(n * (w.K / 2))];
    for (int64_t g = 0; g < ng; ++g) {
      uint16_t& bits = w.scales[size_t(n * ng + g)];
      const float s_old = snap(bits, u), s_new = fp16_to_float(bits);
      if (s_new == s_old) continue;
      for (int64_t k = g * w.group; k < (g + 1) * w.group; ++k)
        set_nibble(row[k >> 1], k, reround(int(nibble_at(row, k)) - 8, s_old, s_new) + 8);
    }
  }
  for (int64_t br = 0; br + 1 < int64_t(w.res_rowptr.size()); ++br)
    for (int64_t b = w.res_rowptr[size_t(br)]; b < w.res_rowptr[size_t(br + 1)]; ++b)
      for (int dn = 0; dn < w.block_rows; ++dn) {
        uint16_t& bits = w.res_scales[size_t(b * w.block_rows + dn)];
        const float s_old = snap(bits, unit_for(smax[size_t(br * w.block_rows + dn)], kSnapLimit)),
                    s_new = fp16_to_float(bits);
        if (s_new == s_old) continue;
        uint8_t* codes = &w.res_qvalues[size_t((b * w.block_rows + dn) * (w.block_cols / 2))];
        for (int dk = 0; dk < w.block_cols; ++dk)
          set_nibble(codes[dk >> 1], dk, reround(int(nibble_at(codes, dk)) - 8, s_old, s_new) + 8);
      }
  // Residual codes that would overflow INT8 move toward 0 (code 8): |m q| <= 128 alone always fits.
  // In the units find_int_scale_grid will use (the coarsest), so that snapping twice changes nothing.
  const std::vector<float> unit = coarsest_units(w);
  for_each_residual_weight(w, [&](int64_t n, int64_t k, int64_t b, int dn, int dk) {
    const float u = unit[size_t(n)];
    const int m = int(fp16_to_float(w.scales[size_t(n * ng + k / w.group)]) / u);
    const int mr = int(fp16_to_float(w.res_scales[size_t(b * w.block_rows + dn)]) / u);
    const int q = int(nibble_at(&w.qweight[size_t(n * (w.K / 2))], k)) - 8;
    int r = res_code(w, b, dn, dk) - 8;
    while (m * q + mr * r > 127) --r;
    while (m * q + mr * r < -128) ++r;
    set_nibble(w.res_qvalues[size_t((b * w.block_rows + dn) * (w.block_cols / 2) + dk / 2)], dk, r + 8);
  });
}

}  // namespace mosaic
