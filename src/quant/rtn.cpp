// Group scale fitting and round-to-nearest quantization.
#include "quant/rtn.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "format/int_scale_grid.h"
#include "util/error.h"
#include "util/half.h"

namespace mosaic {

GroupParams fit_group(const float* w, int64_t n, int64_t stride, bool symmetric, const float* h,
                      int64_t hstride, const ScaleOptions& opt) {
  MOSAIC_CHECK(opt.sym_divisor > 0.0f && opt.clip_min > 0.0f && opt.clip_min <= 1.0f,
               "bad scale options: divisor ", opt.sym_divisor, ", clip_min ", opt.clip_min);
  MOSAIC_CHECK(opt.grid.empty() || (opt.grid.size() == 16 && symmetric),
               "a codebook grid has 16 values and is symmetric only (got ", opt.grid.size(), " values, ",
               symmetric ? "symmetric" : "asymmetric", ")");
  for (int64_t i = 0; i < n; ++i)
    MOSAIC_CHECK(std::isfinite(w[i * stride]), "non-finite weight ", w[i * stride], " in a quantization group");
  auto wv = [&](int64_t i) { return w[i * stride]; };
  auto hv = [&](int64_t i) { return h ? h[i * hstride] : 1.0f; };
  const GroupParams g = fit::fit(wv, hv, n, symmetric, opt.sym_divisor, opt.clip_grid, opt.clip_min,
                                 opt.grid.empty() ? nullptr : opt.grid.data());
  MOSAIC_CHECK(std::isfinite(g.scale), "quantization scale ", g.scale, " overflows fp16 (weights too large)");
  return g;
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
  if (!params.empty() && params[0].grid) p.grid.assign(params[0].grid, params[0].grid + 16);
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
  for (int64_t n = 0; n < N; ++n)
    for (int64_t g = 0; g < G; ++g)
      params[n * G + g] = fit_group(W.data() + n * K + g * group, group, 1, symmetric,
                                    h.empty() ? nullptr : h.data() + g * group, 1, opt);
  if (opt.int_scale_grid)
    snap_params_to_int_grid(params, N, G, [&](int64_t n, int64_t g, const GroupParams& p) {
      const float* w = W.data() + n * K + g * group;
      const float* hg = h.empty() ? nullptr : h.data() + g * group;
      return fit::group_error([&](int64_t i) { return w[i]; }, [&](int64_t i) { return hg ? hg[i] : 1.0f; }, group, p);
    });
  for (int64_t n = 0; n < N; ++n)
    for (int64_t g = 0; g < G; ++g)
      for (int64_t i = 0; i < group; ++i)
        codes[n * K + g * group + i] = uint8_t(quantize_code(W[size_t(n * K + g * group + i)], params[n * G + g]));
  return pack_base(N, K, group, symmetric, codes, params);
}

std::vector<float> snap_params_to_int_grid(
    std::span<GroupParams> params, int64_t N, int64_t G,
    const std::function<double(int64_t n, int64_t g, const GroupParams& p)>& error) {
  std::vector<float> units(static_cast<size_t>(N));
  for (int64_t n = 0; n < N; ++n) {
    float largest = 0.f;
    for (int64_t g = 0; g < G; ++g) {
      MOSAIC_CHECK(params[size_t(n * G + g)].grid == nullptr && params[size_t(n * G + g)].zero == 8,
                   "integer scale grid: symmetric uniform groups only");
      largest = std::max(largest, std::fabs(params[size_t(n * G + g)].scale));
    }
    const float u = int_grid_unit(largest);
    units[size_t(n)] = u;
    for (int64_t g = 0; g < G; ++g) {
      GroupParams& p = params[size_t(n * G + g)];
      p.scale = int_grid_scale_by_error(p.scale, u, [&](float sc) {
        GroupParams c = p;
        c.scale = sc;
        return error(n, g, c);
      });
    }
  }
  return units;
}

}  // namespace mosaic
