// How far a quantized model's logits are from the reference model's on a token sequence: the
// quantizer tests' end-to-end measure (same definition as `mosaic ppl --kl-base`).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "model/model.h"

namespace mosaic::testdata {

// Mean KL(P_ref || P_q) over positions, and relative RMS logits error.
struct Distance {
  double kl = 0, rel_rms = 0;
};
inline Distance logits_distance(const Model& ref, const Model& q, const std::vector<int32_t>& tokens) {
  const int64_t T = int64_t(tokens.size()), V = ref.vocab_size();
  std::vector<float> a(size_t(T * V)), b(size_t(T * V));
  KVCache ca = ref.make_cache(T), cb = q.make_cache(T);
  ref.forward(tokens.data(), T, ca, a.data());
  q.forward(tokens.data(), T, cb, b.data());
  Distance d;
  double num = 0, den = 0;
  for (int64_t t = 0; t < T; ++t) {
    const float* p = a.data() + t * V;
    const float* r = b.data() + t * V;
    double mp = -1e30, mq = -1e30, sp = 0, sq = 0;
    for (int64_t v = 0; v < V; ++v) mp = std::max(mp, double(p[v])), mq = std::max(mq, double(r[v]));
    for (int64_t v = 0; v < V; ++v) sp += std::exp(p[v] - mp), sq += std::exp(r[v] - mq);
    for (int64_t v = 0; v < V; ++v) {
      const double lp = p[v] - mp - std::log(sp), lq = r[v] - mq - std::log(sq);
      d.kl += std::exp(lp) * (lp - lq);
      num += (double(p[v]) - r[v]) * (double(p[v]) - r[v]);
      den += double(p[v]) * p[v];
    }
  }
  d.kl /= double(T);
  d.rel_rms = std::sqrt(num / den);
  return d;
}

}  // namespace mosaic::testdata
