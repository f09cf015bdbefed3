// The arithmetic of one group's 4-bit fit and rounding, written once for the CPU quantizer
// (quant/rtn.cpp, quant/gptq.cpp) and the CUDA one (quant_gpu/): both must produce bit-identical
// scales and codes from identical inputs, so neither keeps its own copy. Host + device inline
// functions only; the error checks (non-finite weights, fp16 overflow) stay with the callers.
//
// Symmetric: s = fp16(max|w| / divisor), code = clamp(round(w / s) + 8, 0, 15).
// Asymmetric: s = fp16((hi - lo) / 15) over [min(w, 0), max(w, 0)], zero = clamp(round(-lo / s)).
// Codebook grid (symmetric only; PackedLinear::grid, e.g. kNonUniform4): deq = s * grid[code],
// s = fp16(e / t) where e is the group's largest-magnitude value (signed) and t the grid's (so e
// lands exactly on t; s may be negative), code = the nearest grid value to w / s (lowest code on ties).
// Clip search: candidates r = 1 - (1 - clip_min) * t / (grid - 1), t = 0..grid-1, each scaling the
// range; the one with the smallest sum_i h_i (w_i - deq_i)^2 (fp64, in index order) wins, the
// earliest on ties.
#pragma once
#include <cstdint>

#include <cmath>

#include "util/half.h"
#if defined(__CUDACC__)
#include <cuda_fp16.h>
#define MOSAIC_HD __host__ __device__ __forceinline__
#else
#define MOSAIC_HD inline
#endif

namespace mosaic::fit {

// Round-half-to-even to an integer-valued float (the FP environment's default mode on the host).
MOSAIC_HD float round_even(float x) {
#if defined(__CUDA_ARCH__)
  return rintf(x);
#else
  return std::nearbyint(x);
#endif
}

// The float a scale becomes once stored as fp16 (round to nearest even; inf on overflow).
MOSAIC_HD float to_fp16_value(float s) {
#if defined(__CUDA_ARCH__)
  return __half2float(__float2half_rn(s));
#else
  return fp16_to_float(float_to_fp16(s));
#endif
}

// std::min / std::max exactly (which operand wins on ties matters for -0.0).
MOSAIC_HD float fmin0(float a, float b) { return b < a ? b : a; }
MOSAIC_HD float fmax0(float a, float b) { return a < b ? b : a; }

struct Params {
  float scale = 0.0f;
  int zero = 8;
  const float* grid = nullptr;  // 16 values (code -> value / scale), or null: uniform integer codes
};

MOSAIC_HD int quantize(float w, Params g) {
  if (g.scale == 0.0f) return g.zero;  // all-zero group (or fp16 underflow): deq = 0
  if (g.grid) {
    const float v = w / g.scale;
    int best = 0;
    float best_d = fabsf(v - g.grid[0]);
    for (int c = 1; c < 16; ++c) {
      const float d = fabsf(v - g.grid[c]);
      if (d < best_d) {
        best_d = d;
        best = c;
      }
    }
    return best;
  }
  const float q = round_even(w / g.scale) + float(g.zero);
  return int(fmin0(fmax0(q, 0.0f), 15.0f));
}
MOSAIC_HD float dequantize(int code, Params g) {
  return g.grid ? g.scale * g.grid[code] : g.scale * float(code - g.zero);
}

// The grid value of largest magnitude (the first on ties).
MOSAIC_HD float grid_extreme(const float* grid) {
  float t = grid[0];
  for (int c = 1; c < 16; ++c)
    if (fabsf(grid[c]) > fabsf(t)) t = grid[c];
  return t;
}

// Params for the clipped range [lo, hi] (amax = max(-lo, hi)). Overflow leaves an inf scale for
// the caller to report.
MOSAIC_HD Params params_for(float lo, float hi, float amax, bool symmetric, float divisor,
                            const float* grid = nullptr) {
  Params g;
  if (grid) {  // the signed extreme onto the grid's extreme
    g.grid = grid;
    g.scale = to_fp16_value((hi >= -lo ? hi : lo) / grid_extreme(grid));
    g.zero = 8;
  } else if (symmetric) {
    g.scale = to_fp16_value(amax / divisor);
    g.zero = 8;
  } else {
    g.scale = to_fp16_value((hi - lo) / 15.0f);
    // Zero point from the fp16 scale so that lo maps near code 0 and 0.0 is exactly representable.
    g.zero = g.scale > 0.0f ? int(fmin0(fmax0(round_even(-lo / g.scale), 0.0f), 15.0f)) : 0;
  }
  return g;
}

// Group values through an accessor: w(i), i < n; h(i) the weight of element i (1 if none).
template <typename W, typename H>
MOSAIC_HD double group_error(const W& w, const H& h, int64_t n, Params g) {
  double e = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const float x = w(i);
    const double d = double(x) - double(dequantize(quantize(x, g), g));
    e += double(h(i)) * d * d;
  }
  return e;
}

// The whole fit (values assumed finite; the caller checks).
template <typename W, typename H>
MOSAIC_HD Params fit(const W& w, const H& h, int64_t n, bool symmetric, float divisor, int clip_grid,
                     float clip_min, const float* grid = nullptr) {
  // The range includes 0 (asymmetric) so the zero point stays within 0..15 and 0 stays exact.
  float lo = 0.0f, hi = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    const float x = w(i);
    lo = fmin0(lo, x);
    hi = fmax0(hi, x);
  }
  const float amax = fmax0(-lo, hi);
  Params best = params_for(lo, hi, amax, symmetric, divisor, grid);
  if (clip_grid <= 1 || amax == 0.0f) return best;
  double best_err = group_error(w, h, n, best);
  for (int t = 1; t < clip_grid; ++t) {
    const float r = 1.0f - (1.0f - clip_min) * float(t) / float(clip_grid - 1);
    const Params g = params_for(lo * r, hi * r, amax * r, symmetric, divisor, grid);
    const double e = group_error(w, h, n, g);
    if (e < best_err) {
      best_err = e;
      best = g;
    }
  }
  return best;
}

}  // namespace mosaic::fit

#undef MOSAIC_HD
