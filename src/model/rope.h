// Rotary position embedding tables, computed exactly as Hugging Face transformers does
// (LlamaRotaryEmbedding / Qwen3RotaryEmbedding):
//   inv_freq[i] = 1 / theta^(2i / head_dim)            (fp32, i = 0 .. head_dim/2 - 1)
//   llama3 rope_scaling adjusts inv_freq (_compute_llama3_parameters): long wavelengths are
//   divided by `factor`, short ones kept, the band between smoothly interpolated;
//   angle(pos, i) = float(pos) * inv_freq[i]  (one fp32 product, as the fp32 matmul in HF)
// and the rotation pairs element i with element i + head_dim/2 (the `rotate_half` convention).
#pragma once
#include <cstdint>
#include <optional>
#include <vector>

#include "io/hf_config.h"

namespace mosaic {

class RopeTable {
 public:
  RopeTable() = default;
  RopeTable(int head_dim, float theta, const std::optional<RopeScaling>& scaling);
  static RopeTable from_config(const ModelConfig& c) {
    return RopeTable(c.head_dim, c.rope_theta, c.rope_scaling);
  }

  int head_dim() const { return head_dim_; }
  const std::vector<float>& inv_freq() const { return inv_freq_; }
  // cos/sin of angle(pos, i) for i in [0, head_dim/2), written to cos_out/sin_out.
  void cos_sin(int64_t pos, float* cos_out, float* sin_out) const;

 private:
  int head_dim_ = 0;
  std::vector<float> inv_freq_;
};

}  // namespace mosaic
