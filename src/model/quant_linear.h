// The CPU engine's reference MosaicQuant linear layer (docs/format.md "Quantized linear layer"):
// the canonical tensors (format/packed_linear.h) are dequantized once, at load, to FP32 and the
// forward pass is the dense matmul.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "io/hf_config.h"
#include "model/act_quant_linear.h"
#include "model/linear.h"

namespace mosaic {

class Checkpoint;
struct PackedLinear;

class QuantLinear : public Linear {
 public:
  // validate()s p (errors name `what`), then keeps dequantize(p) as the dense weight.
  QuantLinear(const PackedLinear& p, const std::string& what);
  void forward(const float* x, int64_t M, float* y) const override { dense_.forward(x, M, y); }
  size_t weight_bytes() const override { return dense_.weight_bytes(); }
  std::string kind() const override { return kind_; }
  const float* data() const { return dense_.data(); }

 private:
  DenseLinear dense_;
  std::string kind_;
};

// True when config.json's quantization_config says quant_method "mosaicquant"; throws on a
// mosaicquant config with an unsupported format_version or bits.
bool is_mosaicquant(const ModelConfig& cfg);

// quantization_config.act_bits of a mosaicquant config: 8 or 4 (W4A8 / W4A4: every quantized
// linear's input rows are quantized per token, docs/format.md "Quantized activations"), or 16
// when absent (W4A16). Throws on any other value.
int activation_bits(const ModelConfig& cfg);
// act_bits with quantization_config.act_format ("int" when absent, or "fp8_e4m3"; only with 8 bits).
ActQuant activation_quant(const ModelConfig& cfg);

// The linear factory for mosaicquant checkpoints: `<prefix>.qweight` present -> QuantLinear from
// the tensors (dtypes and shapes checked, names in errors), wrapped in an ActQuantLinear when
// act_bits < 16; `<prefix>.weight_int8` present (the 8-bit LM head, format/int8_rows.h) -> a dense
// FP32 linear from its dequantized weights (dtypes and shapes checked; never activation-quantized);
// otherwise the dense `<prefix>.weight` (e.g. an untied lm_head kept in FP16, whose input is never
// quantized).
std::unique_ptr<Linear> load_quant_or_dense_linear(const Checkpoint& ckpt, const std::string& prefix, int64_t N,
                                                   int64_t K, ActQuant act = {});

// The analysis switches of the CPU engine (MOSAIC_ACT_QUANT_SKIP, MOSAIC_DENSE_LINEARS) name linears
// by comma-separated substrings: the list in environment variable `var` (empty when unset), and
// whether a linear's prefix contains one of them.
std::vector<std::string> name_list_from_env(const char* var);
bool names_match(const std::vector<std::string>& names, const std::string& prefix);

}  // namespace mosaic
