// Integer scale grid: the weights of a quantized linear as INT8 values times one scale per output row.
//
// Hopper's INT8 tensor cores (wgmma s8 x s8 -> s32) add exactly over the whole K, but a 4-bit base
// with a free FP16 scale per group of inputs needs its group sums scaled one by one (the promotion
// that bounds the FP8 kernel, docs/kernels.md). When every group scale of row n is u_n * m, with
// u_n a power of two shared by the row and m an integer 0..16, the group's weights are
// u_n * (m * q) with m * q in -128..112: INT8 values. A kept residual block's row scale on the same
// grid (u_n * m_r) adds m_r * r, and the sum stays one INT8 value per weight (checked: it must lie
// in -128..127). Then Y[t, n] = s_t * u_n * sum_k x8[t, k] * w8[n, k]: one scale per token and one
// per output row, the sum in INT32 (exact), no promotion, and the residual costs no extra MMA.
//
// The checkpoint format does not change: scales stay FP16 (u_n * m is exact in FP16 for the
// powers of two used here); a layer either lies on such a grid or not (find_int_scale_grid), and
// snap_to_int_scale_grid moves a layer's scales onto one (random layers of the benchmark, and
// `mosaic quantize --int-scales` after each linear is quantized).
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "format/packed_linear.h"

namespace mosaic {

struct IntScaleGrid {
  std::vector<float> unit;      // [N] u_n, a power of two (1 for an all-zero row)
  std::vector<uint8_t> base_m;  // [N, K/G] m of every base group scale, 0..16
  std::vector<uint8_t> res_m;   // [nnzb, Br] m_r of every residual row scale, 0..16
};

// The grid of w, or nullopt with the first reason it has none in *why (asymmetric or non-uniform
// base, a scale that is not u_n times an integer 0..16, a weight whose base + residual INT8 value
// leaves -128..127). u_n is the coarsest candidate: the largest power of two dividing every scale of
// the row (fewest units per weight).
std::optional<IntScaleGrid> find_int_scale_grid(const PackedLinear& w, std::string* why = nullptr);

// Moves w's scales onto the grid in place: per row u_n = the smallest power of two >= (largest base
// or residual row scale) / 16.5 (the largest may round down to 16 units rather than double the
// unit), every scale s -> s' = u_n * clamp(round(s / u_n), 1, 16) (0 stays 0) with its group's codes
// re-rounded to round(q s / s') (a group far below the row's largest keeps its values to within
// u_n / 2 instead of growing by s' / s), then each kept residual code pulled toward 8 until base +
// residual fits INT8. Symmetric uniform-grid layers only (throws otherwise). Afterwards
// find_int_scale_grid(w) succeeds.
void snap_to_int_scale_grid(PackedLinear& w);

// The snapping rule for one row, for quantizers that put scales on the grid before rounding codes:
// the unit of a row whose largest scale is `largest` (smallest power of two >= largest / 16.5), and
// a scale s on it (u clamp(round(s / u), 1, 16); 0 stays 0), exact in FP16.
float int_grid_unit(float largest);
float int_grid_scale(float s, float unit);
// Of the two grid multiples around s (floor and ceil of s / unit, each clamped to 1..16), the one with
// the smaller error(candidate scale); the nearest on ties, and when both are the same multiple.
float int_grid_scale_by_error(float s, float unit, const std::function<double(float)>& error);

}  // namespace mosaic
