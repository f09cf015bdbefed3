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

// The code activations are rounded to: symmetric integers (the rule above), or FP8 e4m3 ("fn":
// no infinities, max 448) with the same per-token scale idea, s = max|x_row| / 448 and
// x = s * e4m3(x / s) (round to nearest even, docs/format.md). FP8 needs 8 bits. On Hopper the FP8
// tensor cores are the fast 8-bit path (issue 6); this lets the CPU reference measure its accuracy.
enum class ActFormat { kInt, kFp8E4M3 };
ActFormat parse_act_format(const std::string& name);  // "int" | "fp8_e4m3" ("fp8")
const char* act_format_name(ActFormat f);              // "int" | "fp8_e4m3"

struct ActQuant {
  int bits = 16;  // 16: not quantized
  ActFormat format = ActFormat::kInt;
};
void check_act_quant(const ActQuant& q);  // bits as check_act_bits; FP8 only with 8 bits

// v rounded to the nearest FP8 e4m3fn value (ties to even, subnormals down to 2^-9, |v| > 448 -> 448).
float round_e4m3(float v);

// In place on x [M, K] (row-major), the rule above. bits must be 2..8. Returns nothing; rows
// with a non-finite value are an error (their scale would be meaningless).
void fake_quantize_rows(float* x, int64_t M, int64_t K, int bits);
// Either format (the integer one is the function above).
void fake_quantize_rows(float* x, int64_t M, int64_t K, const ActQuant& q);

// Wraps a linear layer: forward() fake-quantizes a copy of the input rows, then runs `inner`.
class ActQuantLinear : public Linear {
 public:
  ActQuantLinear(std::unique_ptr<Linear> inner, ActQuant q);
  ActQuantLinear(std::unique_ptr<Linear> inner, int bits) : ActQuantLinear(std::move(inner), ActQuant{bits}) {}
  void forward(const float* x, int64_t M, float* y) const override;
  size_t weight_bytes() const override { return inner_->weight_bytes(); }
  std::string kind() const override {
    return inner_->kind() + "-a" + std::to_string(q_.bits) + (q_.format == ActFormat::kFp8E4M3 ? "fp8" : "");
  }
  int bits() const { return q_.bits; }
  ActFormat format() const { return q_.format; }
  const Linear& inner() const { return *inner_; }

 private:
  std::unique_ptr<Linear> inner_;
  ActQuant q_;
};

// Wraps `inner` in an ActQuantLinear when bits < 16, else returns it unchanged.
std::unique_ptr<Linear> with_act_quant(std::unique_ptr<Linear> inner, int bits);
std::unique_ptr<Linear> with_act_quant(std::unique_ptr<Linear> inner, const ActQuant& q);

}  // namespace mosaic
