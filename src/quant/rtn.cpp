// Group scale fitting and round-to-nearest quantization.
#include "quant/rtn.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "util/error.h"
#include "util/half.h"

namespace mosaic {

namespace {

// The fp16 scale for a raw float scale; fails loudly instead of storing inf.
float to_fp16_scale(float s) {
  const float r = fp16_to_float(float_to_fp16(s));
  MOSAIC_CHECK(std::isfinite(r), "quantization scale ", s, " overflows fp16 (weights too large)");
  return r;
}

// Params for one clipped range [lo, hi] (lo <= 0 <= hi for asymmetric; symmetric uses amax).
GroupParams params_for(float lo, float hi, float amax, bool symmetric, float divisor) {
  GroupParams g;
  if (symmetric) {
    g.scale = to_fp16_scale(amax / divisor);
    g.zero = 8;
  } else {
    g.scale = to_fp16_scale((hi - lo) / 15.0f);
    // Zero point from the fp16 scale so that lo maps near code 0 and 0.0 is exactly representable.
    g.zero = g.scale > 0.0f ? int(std::clamp(std::nearbyint(-lo / g.scale), 0.0f, 15.0f)) : 0;
  }
  return g;
}

double group_error(const float* w, int64_t n, int64_t stride, const float* h, int64_t hstride,
                   const GroupParams& g) {
  double e = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const float x = w[i * stride];
    const double d = double(x) - double(dequantize_code(quantize_code(x, g), g));
    e += (h ? double(h[i * hstride]) : 1.0) * d * d;
  }
  return e;
}

}  // namespace

GroupParams fit_group(const float* w, int64_t n, int64_t stride, bool symmetric, const float* h,
                      int64_t hstride, const ScaleOptions& opt) {
  MOSAIC_CHECK(opt.sym_divisor > 0.0f && opt.clip_min > 0.0f && opt.clip_min <= 1.0f,
               "bad scale options: divisor ", opt.sym_divisor, ", clip_min ", opt.clip_min);
  // The range includes 0 (asymmetric) so the zero point stays within 0..15 and 0 stays exact.
  float lo = 0.0f, hi = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    const float x = w[i * stride];
    MOSAIC_CHECK(std::isfinite(x), "non-finite weight ", x, " in a quantization group");
    lo = std::min(lo, x);
    hi = std::max(hi, x);
  }
  const float amax = std::max(-lo, hi);
  GroupParams best = params_for(lo, hi, amax, symmetric, opt.sym_divisor);
  if (opt.clip_grid <= 1 || amax == 0.0f) return best;
  double best_err = group_error(w, n, stride, h, hstride, best);
  for (int t = 1; t < opt.clip_grid; ++t) {
    const float r = 1.0f - (1.0f - opt.clip_min) * float(t) / float(opt.clip_grid - 1);
    const GroupParams g = params_for(lo * r, hi * r, amax * r, symmetric, opt.sym_divisor);
    const double e = group_error(w, n, stride, h, hstride, g);
    if (e < best_err) {
      best_err = e;
      best = g;
    }
  }
  return best;
}

void check_weight_matrix(std::span<const float> W, int64_t N, int64_t K, int group,
                         const char* what) {
  MOSAIC_CHECK(N > 0 && K > 0, what, ": shape [", N, ", ", K, "] must be positive");
  MOSAIC_CHECK(int64_t(W.size()) == N * K, what, ": weight has ", W.size(),
               " values, expected N*K = ", N, "*", K);
  MOSAIC_CHECK(K % 2 == 0, what, ": K=", K, " must be even (two 4-bit codes per byte)");
  MOSAIC_CHECK(group > 0 && K % group == 0, what, ": group ", group, " does not divide K=", K);
  for (size_t i = 0; i < W.size(); ++i)
    MOSAIC_CHECK(std::isfinite(W[i]), what, ": weight [", int64_t(i) / K, ", ", int64_t(i) % K,
                 "] is not finite (", W[i], ")");
}

PackedLinear pack_base(int64_t N, int64_t K, int group, bool symmetric,
                       std::span<const uint8_t> codes, std::span<const GroupParams> params) {
  PackedLinear p;
  p.N = N;
  p.K = K;
  p.group = group;
  p.symmetric = symmetric;
  const int64_t G = K / group;
  MOSAIC_CHECK(int64_t(codes.size()) == N * K && int64_t(params.size()) == N * G,
               "pack_base: sizes do not match [", N, ", ", K, "] / group ", group);
  p.qweight.resize(static_cast<size_t>(N * K / 2));
  for (int64_t n = 0; n < N; ++n)
    pack_nibbles(codes.subspan(size_t(n * K), size_t(K)),
                 std::span<uint8_t>(p.qweight).subspan(size_t(n * K / 2), size_t(K / 2)));
  p.scales.resize(params.size());
  for (size_t i = 0; i < params.size(); ++i) p.scales[i] = float_to_fp16(params[i].scale);
  if (!symmetric) {
    p.qzeros.resize(params.size());
    for (size_t i = 0; i < params.size(); ++i) p.qzeros[i] = uint8_t(params[i].zero);
  }
  return p;
}

PackedLinear quantize_rtn(std::span<const float> W, int64_t N, int64_t K, int group,
                          bool symmetric, const ScaleOptions& opt, std::span<const float> h) {
  check_weight_matrix(W, N, K, group, "quantize_rtn");
  MOSAIC_CHECK(h.empty() || int64_t(h.size()) == K, "quantize_rtn: Hessian diagonal has ",
               h.size(), " entries, expected K=", K);
  const int64_t G = K / group;
  std::vector<uint8_t> codes(static_cast<size_t>(N * K));
  std::vector<GroupParams> params(static_cast<size_t>(N * G));
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t g = 0; g < G; ++g) {
      const float* w = W.data() + n * K + g * group;
      const float* hg = h.empty() ? nullptr : h.data() + g * group;
      const GroupParams gp = fit_group(w, group, 1, symmetric, hg, 1, opt);
      params[n * G + g] = gp;
      for (int64_t i = 0; i < group; ++i)
        codes[n * K + g * group + i] = uint8_t(quantize_code(w[i], gp));
    }
  }
  return pack_base(N, K, group, symmetric, codes, params);
}

}  // namespace mosaic
