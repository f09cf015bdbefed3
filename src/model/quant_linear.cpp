#include "model/quant_linear.h"

#include <algorithm>
#include <cstdlib>
#include <string>

#include "format/int8_rows.h"
#include "format/packed_checkpoint.h"
#include "format/packed_linear.h"
#include "io/safetensors.h"
#include "model/act_quant_linear.h"
#include "util/error.h"

namespace mosaic {

namespace {

std::shared_ptr<const std::vector<float>> validated_dequantize(const PackedLinear& p, const std::string& what) {
  validate(p, what);
  return std::make_shared<const std::vector<float>>(dequantize(p));
}

// MOSAIC_ACT_QUANT_SKIP (analysis only, docs/results.md "Where W4A8 loses"): comma-separated
// substrings of linear names (e.g. "down_proj,o_proj") whose inputs stay 16-bit in a W4A8 / W4A4
// model. The smoothing folded into their weights is exact either way, so the ppl difference is
// what those layers' activation quantization costs.
bool act_quant_skipped(const std::string& prefix) {
  return names_match(name_list_from_env("MOSAIC_ACT_QUANT_SKIP"), prefix);  // (read per load: tests set it)
}

// An 8-bit per-row weight (format/int8_rows.h; the LM head of `--lm-head-int8`), dequantized once
// at load: the dense FP32 matmul, with its own kind() so reports say what was loaded.
class Int8RowsLinear : public Linear {
 public:
  Int8RowsLinear(int64_t n, int64_t k, std::shared_ptr<const std::vector<float>> w) : Linear(n, k), dense_(n, k, std::move(w)) {}
  void forward(const float* x, int64_t M, float* y) const override { dense_.forward(x, M, y); }
  size_t weight_bytes() const override { return dense_.weight_bytes(); }
  std::string kind() const override { return "int8-row"; }

 private:
  DenseLinear dense_;
};

}  // namespace

QuantLinear::QuantLinear(const PackedLinear& p, const std::string& what)
    : Linear(p.N, p.K), dense_(p.N, p.K, validated_dequantize(p, what)) {
  kind_ = "mosaic-w4g" + std::to_string(p.group) + (p.symmetric ? "" : "a");
  if (p.has_residual()) {
    const double frac = double(p.num_blocks_kept()) / double(p.num_blocks_total());
    kind_ += "+res" + std::to_string(int(frac * 1000 + 0.5) / 10.0).substr(0, 4) + "%";
  }
}

bool is_mosaicquant(const ModelConfig& cfg) {
  const auto& q = cfg.quantization_config;
  if (!q.is_object() || q.value("quant_method", "") != "mosaicquant") return false;
  const int version = q.value("format_version", 0), bits = q.value("bits", 0);
  MOSAIC_CHECK(version == 1, "quantization_config.format_version ", version,
               " is not supported (this mosaic reads version 1)");
  MOSAIC_CHECK(bits == 4, "quantization_config.bits ", bits, " is not supported (only 4)");
  activation_quant(cfg);  // a bad act_bits / act_format fails here, at load, not at the first forward
  return true;
}

int activation_bits(const ModelConfig& cfg) {
  const auto& q = cfg.quantization_config;
  if (!q.is_object() || !q.contains("act_bits")) return 16;
  MOSAIC_CHECK(q["act_bits"].is_number_integer(), "quantization_config.act_bits must be an integer, got ",
               q["act_bits"].dump());
  const int bits = q["act_bits"].get<int>();
  MOSAIC_CHECK(bits == 16 || bits == 8 || bits == 4, "quantization_config.act_bits ", bits,
               " is not supported (16, 8 or 4)");
  return bits;
}

ActQuant activation_quant(const ModelConfig& cfg) {
  ActQuant q{activation_bits(cfg), ActFormat::kInt};
  const auto& c = cfg.quantization_config;
  if (q.bits < 16 && c.is_object() && c.contains("act_format")) {
    MOSAIC_CHECK(c["act_format"].is_string(), "quantization_config.act_format must be a string, got ",
                 c["act_format"].dump());
    q.format = parse_act_format(c["act_format"].get<std::string>());
    check_act_quant(q);
  }
  return q;
}

std::vector<std::string> name_list_from_env(const char* var) {
  std::vector<std::string> names;
  const char* e = std::getenv(var);
  const std::string s = e ? e : "";
  for (size_t a = 0; a < s.size();) {
    const size_t b = std::min(s.find(',', a), s.size());
    if (b > a) names.push_back(s.substr(a, b - a));
    a = b + 1;
  }
  return names;
}

bool names_match(const std::vector<std::string>& names, const std::string& prefix) {
  for (const std::string& n : names)
    if (prefix.find(n) != std::string::npos) return true;
  return false;
}

std::unique_ptr<Linear> load_quant_or_dense_linear(const Checkpoint& ckpt, const std::string& prefix, int64_t N,
                                                   int64_t K, ActQuant act) {
  if (has_int8_rows(ckpt, prefix)) {  // never activation-quantized (docs/format.md: only decoder linears are)
    auto w = std::make_shared<const std::vector<float>>(read_int8_rows(ckpt, prefix, N, K).dequantize());
    return std::make_unique<Int8RowsLinear>(N, K, std::move(w));
  }
  if (!has_packed_linear(ckpt, prefix)) {
    MOSAIC_CHECK(ckpt.has(prefix + ".weight"), "quantized checkpoint has neither '", prefix, ".qweight' nor '",
                 prefix, ".weight'");
    const TensorView& t = ckpt.get(prefix + ".weight", {N, K});
    auto w = std::make_shared<const std::vector<float>>(t.to_f32());
    return std::make_unique<DenseLinear>(N, K, std::move(w));
  }
  auto q = std::make_unique<QuantLinear>(read_packed_linear(ckpt, prefix, N, K), "tensor '" + prefix + "'");
  if (act.bits < 16 && act_quant_skipped(prefix)) return q;
  return with_act_quant(std::move(q), act);
}

}  // namespace mosaic
