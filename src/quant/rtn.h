// Group-wise 4-bit quantization: the scale/zero fit of one group (shared by RTN, GPTQ and the
// residual blocks) and round-to-nearest quantization of a whole matrix into a PackedLinear.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "format/packed_linear.h"
#include "quant/group_fit.h"

namespace mosaic {

// Symmetric scale convention: s = max|w| / kSymDivisor, codes q = clamp(round(w/s), -8, 7).
// 7.5 spends the -8 code on the negative extreme's side and still rounds +max to 7 with error
// <= s/2, so every element is within s/2; it measured lower error than max/7 (its grid is 7% finer),
// see tests/quant/test_rtn.cpp (SymmetricDivisorAblation) and the quantizer report.
inline constexpr float kSymDivisor = 7.5f;

// How a group's scale is chosen. Optional "better scale search": try clip_grid clipping ratios
// evenly spaced from 1 down to clip_min of the group's range and keep the one with the smallest
// sum_j h_j (w_j - deq_j)^2 (h = diag(H) when given, else 1). clip_grid <= 1 turns it off.
struct ScaleOptions {
  float sym_divisor = kSymDivisor;  // only for the ablation; keep the default
  int clip_grid = 0;
  float clip_min = 0.75f;
  // Base codebook: empty = uniform integer codes; else 16 values (code -> value / scale, e.g.
  // kGridNl4), symmetric only (docs/format.md "qgrid"). Not for the residual blocks (uniform).
  std::vector<float> grid;
  // Scales on the integer scale grid (format/int_scale_grid.h, `quantize --int-scales`): each row's
  // group scales, once fit, move to u_n x 1..16 (snap_params_to_int_grid) before any code is rounded.
  bool int_scale_grid = false;
};

// One group's quantizer: deq = scale * (code - zero); scale is already rounded to fp16. The
// arithmetic lives in quant/group_fit.h, shared with the CUDA quantizer.
using GroupParams = fit::Params;

// Fits a group of n values w[i * stride] (weights h[i * hstride] or none). Throws mosaic::Error
// when a value is not finite or the scale overflows fp16.
GroupParams fit_group(const float* w, int64_t n, int64_t stride, bool symmetric,
                      const float* h = nullptr, int64_t hstride = 1, const ScaleOptions& opt = {});

// Per row of params [N, G]: u_n from the row's largest scale, every scale onto u_n x 1..16: of the
// two multiples around it the one with the smaller `error(n, g, candidate)` (the group's h-weighted
// rounding error on the weights being quantized; int_grid_scale_by_error). Returns the units [N].
std::vector<float> snap_params_to_int_grid(
    std::span<GroupParams> params, int64_t N, int64_t G,
    const std::function<double(int64_t n, int64_t g, const GroupParams& p)>& error);

inline int quantize_code(float w, const GroupParams& g) { return fit::quantize(w, g); }
inline float dequantize_code(int code, const GroupParams& g) { return fit::dequantize(code, g); }

// RTN: W row-major [N, K] -> PackedLinear (no residual). symmetric: scale = max|w|/7.5, codes in
// -8..7; asymmetric: range [min(w,0), max(w,0)] over 15 steps with a zero point 0..15.
// `h` (length K, e.g. diag(H)) only weights the clip search. Block shape defaults stay in p.
PackedLinear quantize_rtn(std::span<const float> W, int64_t N, int64_t K, int group,
                          bool symmetric, const ScaleOptions& opt = {},
                          std::span<const float> h = {});

// Shared input checks (also used by GPTQ and the residual): size == N*K, finite values,
// group > 0 dividing K, K even. `what` names the caller in the message.
void check_weight_matrix(std::span<const float> W, int64_t N, int64_t K, int group,
                         const char* what);

// Builds a PackedLinear from unpacked codes [N, K] (0..15) and per-(row, group) params (their
// grid, when set, becomes the layer's grid).
PackedLinear pack_base(int64_t N, int64_t K, int group, bool symmetric,
                       std::span<const uint8_t> codes, std::span<const GroupParams> params);

}  // namespace mosaic
