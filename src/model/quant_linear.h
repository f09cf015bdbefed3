// The CPU engine's reference MosaicQuant linear layer (docs/format.md "Quantized linear layer"):
// the canonical tensors are dequantized once, at load, to FP32 and the forward pass is the dense
// matmul. This file has its own dequantizer instead of calling src/quant (mosaic_quant links
// mosaic_model, not the other way round); tests check it against quant's dequantize().
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "io/hf_config.h"
#include "model/linear.h"

namespace mosaic {

class Checkpoint;

// Views of one layer's quantized tensors (shapes as docs/format.md). The residual spans are
// empty when the layer keeps no block; Br, Bc are then ignored.
struct QuantTensors {
  int64_t N = 0, K = 0;
  int group = 0;
  bool symmetric = true;
  int block_rows = 0, block_cols = 0;
  std::span<const uint8_t> qweight;      // [N, K/2]
  std::span<const uint16_t> scales;      // [N, K/G] fp16 bits
  std::span<const uint8_t> qzeros;       // [N, K/G] asymmetric only
  std::span<const int32_t> res_rowptr;   // [N/Br + 1]
  std::span<const int32_t> res_colidx;   // [nnzb]
  std::span<const uint8_t> res_qvalues;  // [nnzb, Br, Bc/2]
  std::span<const uint16_t> res_scales;  // [nnzb, Br] fp16 bits
};

// Checks every size and index (throws mosaic::Error naming `what`) and returns W_hat row-major
// [N, K] exactly by the format's formula: base term + residual term, each in float.
std::vector<float> dequantize_tensors(const QuantTensors& t, const std::string& what);

class QuantLinear : public Linear {
 public:
  // `packed_bytes` is what the quantized tensors occupy on disk (for kind()/reports).
  QuantLinear(const QuantTensors& t, const std::string& what);
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

// The linear factory for mosaicquant checkpoints: `<prefix>.qweight` present -> QuantLinear from
// the tensors (dtypes and shapes checked, names in errors); otherwise the dense `<prefix>.weight`
// (e.g. an untied lm_head kept in FP16).
std::unique_ptr<Linear> load_quant_or_dense_linear(const Checkpoint& ckpt, const std::string& prefix, int64_t N,
                                                   int64_t K);

}  // namespace mosaic
