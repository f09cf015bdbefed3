// Quantized activations (docs/format.md "Quantized activations"): per-token dynamic symmetric
// quantization of a linear layer's input rows to `bits` bits, the CPU reference ("fake quant":
// quantize, then dequantize back to FP32, then the wrapped layer's FP32 matmul). A W4A8/W4A4
// checkpoint (quantization_config.act_bits 8 or 4) gets every decoder linear wrapped in one.
//   per row x of X [M, K]:  qmax = 2^(bits-1) - 1            (127 for 8 bits, 7 for 4 bits)
//                           s    = max_k |x_k| / qmax        (fp32; a zero row stays zero)
//                           x_k <- s * clamp(round(x_k / s), -qmax, qmax)   (ties away from zero)
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "model/linear.h"

namespace mosaic {

// 16 means "not quantized"; 8 and 4 are what the engine runs. Throws otherwise.
void check_act_bits(int bits);

// In place on x [M, K] (row-major), the rule above. bits must be 2..8. Returns nothing; rows
// with a non-finite value are an error (their scale would be meaningless).
void fake_quantize_rows(float* x, int64_t M, int64_t K, int bits);

// Wraps a linear layer: forward() fake-quantizes a copy of the input rows, then runs `inner`.
class ActQuantLinear : public Linear {
 public:
  ActQuantLinear(std::unique_ptr<Linear> inner, int bits);
  void forward(const float* x, int64_t M, float* y) const override;
  size_t weight_bytes() const override { return inner_->weight_bytes(); }
  std::string kind() const override { return inner_->kind() + "-a" + std::to_string(bits_); }
  int bits() const { return bits_; }
  const Linear& inner() const { return *inner_; }

 private:
  std::unique_ptr<Linear> inner_;
  int bits_;
};

// Wraps `inner` in an ActQuantLinear when bits < 16, else returns it unchanged.
std::unique_ptr<Linear> with_act_quant(std::unique_ptr<Linear> inner, int bits);

}  // namespace mosaic
