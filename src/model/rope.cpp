#include "model/rope.h"

#include <cmath>
#include <numbers>

#include "util/error.h"

namespace mosaic {

RopeTable::RopeTable(int head_dim, float theta, const std::optional<RopeScaling>& scaling)
    : head_dim_(head_dim) {
  MOSAIC_CHECK(head_dim > 0 && head_dim % 2 == 0, "rope: head_dim must be even and positive, got ", head_dim);
  MOSAIC_CHECK(theta > 0, "rope: rope_theta must be positive, got ", theta);
  const int half = head_dim / 2;
  inv_freq_.resize(half);
  for (int i = 0; i < half; ++i) {
    // HF: 1.0 / (base ** (arange(0, dim, 2).float() / dim)) in fp32; the exponent is an fp32
    // quotient, the power is taken in higher precision here then rounded once.
    float expo = float(2 * i) / float(head_dim);
    inv_freq_[i] = float(1.0 / std::pow(double(theta), double(expo)));
  }
  if (scaling) {
    const RopeScaling& s = *scaling;
    MOSAIC_CHECK(s.factor > 0 && s.high_freq_factor != s.low_freq_factor && s.low_freq_factor > 0 &&
                     s.original_max_position_embeddings > 0,
                 "rope_scaling (llama3): invalid parameters factor=", s.factor,
                 " low_freq_factor=", s.low_freq_factor, " high_freq_factor=", s.high_freq_factor,
                 " original_max_position_embeddings=", s.original_max_position_embeddings);
    // transformers' _compute_llama3_parameters, elementwise (their tensors are fp32; the
    // Python scalars they mix in are doubles, promoted to fp32 by torch).
    const float old_ctx = float(s.original_max_position_embeddings);
    const float low_wavelen = old_ctx / s.low_freq_factor;
    const float high_wavelen = old_ctx / s.high_freq_factor;
    for (float& f : inv_freq_) {
      const float wavelen = float(2.0 * std::numbers::pi) / f;
      float scaled = wavelen > low_wavelen ? f / s.factor : f;
      const bool medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
      if (medium) {
        const float smooth = (old_ctx / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        scaled = (1.0f - smooth) * scaled / s.factor + smooth * scaled;
      }
      f = scaled;
    }
  }
}

void RopeTable::cos_sin(int64_t pos, float* cos_out, float* sin_out) const {
  const int half = head_dim_ / 2;
  const float p = float(pos);
  for (int i = 0; i < half; ++i) {
    const float angle = p * inv_freq_[i];  // rounded to fp32 like HF's fp32 matmul
    cos_out[i] = float(std::cos(double(angle)));
    sin_out[i] = float(std::sin(double(angle)));
  }
}

}  // namespace mosaic
