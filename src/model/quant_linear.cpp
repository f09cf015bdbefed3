#include "model/quant_linear.h"

#include <cmath>
#include <cstring>

#include "io/safetensors.h"
#include "util/error.h"
#include "util/half.h"

namespace mosaic {

namespace {

inline int nibble(const uint8_t* row, int64_t k) { return (row[k >> 1] >> ((k & 1) * 4)) & 0xF; }

std::string shape_of(int64_t a, int64_t b) { return "[" + std::to_string(a) + ", " + std::to_string(b) + "]"; }

}  // namespace

std::vector<float> dequantize_tensors(const QuantTensors& t, const std::string& what) {
  const int64_t N = t.N, K = t.K, G = t.group;
  MOSAIC_CHECK(N > 0 && K > 0 && K % 2 == 0, what, ": bad shape ", shape_of(N, K), " (K must be even)");
  MOSAIC_CHECK(G > 0 && K % G == 0, what, ": group ", G, " does not divide K = ", K);
  const int64_t ng = K / G;
  MOSAIC_CHECK(int64_t(t.qweight.size()) == N * K / 2, what, ": qweight has ", t.qweight.size(), " bytes, expected ",
               shape_of(N, K / 2));
  MOSAIC_CHECK(int64_t(t.scales.size()) == N * ng, what, ": scales has ", t.scales.size(), " values, expected ",
               shape_of(N, ng));
  MOSAIC_CHECK(t.symmetric ? t.qzeros.empty() : int64_t(t.qzeros.size()) == N * ng, what, ": qzeros has ",
               t.qzeros.size(), " values, expected ", t.symmetric ? "none" : shape_of(N, ng));
  std::vector<float> W(size_t(N * K));
  for (int64_t n = 0; n < N; ++n) {
    const uint8_t* row = t.qweight.data() + n * (K / 2);
    for (int64_t g = 0; g < ng; ++g) {
      const float s = fp16_to_float(t.scales[size_t(n * ng + g)]);
      const int z = t.symmetric ? 8 : int(t.qzeros[size_t(n * ng + g)]);
      MOSAIC_CHECK(std::isfinite(s) && z <= 15, what, ": scale or zero point of row ", n, " group ", g,
                   " is invalid");
      for (int64_t k = g * G; k < (g + 1) * G; ++k) W[size_t(n * K + k)] = s * float(nibble(row, k) - z);
    }
  }
  if (t.res_colidx.empty() && t.res_qvalues.empty() && t.res_scales.empty()) return W;

  const int64_t Br = t.block_rows, Bc = t.block_cols;
  MOSAIC_CHECK(Br > 0 && Bc > 0 && Bc % 2 == 0 && N % Br == 0 && K % Bc == 0, what, ": residual block ", Br, "x",
               Bc, " does not tile ", shape_of(N, K), " (Bc must be even)");
  const int64_t nbr = N / Br, nbc = K / Bc, nnzb = int64_t(t.res_colidx.size());
  MOSAIC_CHECK(int64_t(t.res_rowptr.size()) == nbr + 1, what, ": res_rowptr has ", t.res_rowptr.size(),
               " entries, expected ", nbr + 1);
  MOSAIC_CHECK(int64_t(t.res_qvalues.size()) == nnzb * Br * Bc / 2, what, ": res_qvalues has ",
               t.res_qvalues.size(), " bytes, expected [", nnzb, ", ", Br, ", ", Bc / 2, "]");
  MOSAIC_CHECK(int64_t(t.res_scales.size()) == nnzb * Br, what, ": res_scales has ", t.res_scales.size(),
               " values, expected ", shape_of(nnzb, Br));
  MOSAIC_CHECK(t.res_rowptr[0] == 0 && t.res_rowptr[size_t(nbr)] == nnzb, what,
               ": res_rowptr must start at 0 and end at nnzb = ", nnzb);
  for (int64_t r = 0; r < nbr; ++r) {
    const int64_t b0 = t.res_rowptr[size_t(r)], b1 = t.res_rowptr[size_t(r + 1)];
    MOSAIC_CHECK(b0 <= b1 && b1 <= nnzb, what, ": res_rowptr decreases at block row ", r);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t c = t.res_colidx[size_t(b)];
      MOSAIC_CHECK(c >= 0 && c < nbc && (b == b0 || c > t.res_colidx[size_t(b - 1)]), what, ": res_colidx[", b,
                   "] = ", c, " is out of range [0, ", nbc, ") or not ascending in block row ", r);
      for (int64_t i = 0; i < Br; ++i) {
        const float s = fp16_to_float(t.res_scales[size_t(b * Br + i)]);
        MOSAIC_CHECK(std::isfinite(s), what, ": res_scales of block ", b, " row ", i, " is not finite");
        const uint8_t* codes = t.res_qvalues.data() + (b * Br + i) * (Bc / 2);
        float* w = W.data() + (r * Br + i) * K + c * Bc;
        for (int64_t j = 0; j < Bc; ++j) w[j] += s * float(nibble(codes, j) - 8);
      }
    }
  }
  return W;
}

QuantLinear::QuantLinear(const QuantTensors& t, const std::string& what)
    : Linear(t.N, t.K),
      dense_(t.N, t.K, std::make_shared<const std::vector<float>>(dequantize_tensors(t, what))) {
  kind_ = "mosaic-w4g" + std::to_string(t.group) + (t.symmetric ? "" : "a");
  if (!t.res_colidx.empty()) {
    const double frac = double(t.res_colidx.size()) * t.block_rows * t.block_cols / double(t.N * t.K);
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
  return true;
}

namespace {

// Copies a tensor of the expected dtype and rank (data may be unaligned in foreign files).
template <typename T>
std::vector<T> read_tensor(const Checkpoint& ckpt, const std::string& name, DType dtype, size_t rank) {
  const TensorView& v = ckpt.get(name);
  MOSAIC_CHECK(v.dtype == dtype && v.shape.size() == rank, "tensor '", name, "' is ", dtype_name(v.dtype), " ",
               v.shape_str(), ", expected ", dtype_name(dtype), " of rank ", rank);
  std::vector<T> out(v.nbytes / sizeof(T));
  if (v.nbytes) std::memcpy(out.data(), v.data, v.nbytes);
  return out;
}

}  // namespace

std::unique_ptr<Linear> load_quant_or_dense_linear(const Checkpoint& ckpt, const std::string& prefix, int64_t N,
                                                   int64_t K) {
  if (!ckpt.has(prefix + ".qweight")) {
    MOSAIC_CHECK(ckpt.has(prefix + ".weight"), "quantized checkpoint has neither '", prefix, ".qweight' nor '",
                 prefix, ".weight'");
    const TensorView& t = ckpt.get(prefix + ".weight", {N, K});
    auto w = std::make_shared<const std::vector<float>>(t.to_f32());
    return std::make_unique<DenseLinear>(N, K, std::move(w));
  }
  const auto qweight = read_tensor<uint8_t>(ckpt, prefix + ".qweight", DType::U8, 2);
  const TensorView& sv = ckpt.get(prefix + ".scales");
  MOSAIC_CHECK(sv.dtype == DType::F16 && sv.shape.size() == 2 && sv.shape[0] == N && sv.shape[1] > 0 &&
                   K % sv.shape[1] == 0,
               "tensor '", prefix, ".scales' is ", dtype_name(sv.dtype), " ", sv.shape_str(), ", expected F16 [", N,
               ", K/G] with K = ", K);
  const auto scales = read_tensor<uint16_t>(ckpt, prefix + ".scales", DType::F16, 2);
  QuantTensors t;
  t.N = N;
  t.K = K;
  t.group = int(K / sv.shape[1]);
  t.qweight = qweight;
  t.scales = scales;
  std::vector<uint8_t> qzeros;
  if (ckpt.has(prefix + ".qzeros")) {
    qzeros = read_tensor<uint8_t>(ckpt, prefix + ".qzeros", DType::U8, 2);
    t.symmetric = false;
    t.qzeros = qzeros;
  }
  std::vector<int32_t> rowptr, colidx;
  std::vector<uint8_t> qvalues;
  std::vector<uint16_t> rscales;
  if (ckpt.has(prefix + ".res_colidx")) {
    rowptr = read_tensor<int32_t>(ckpt, prefix + ".res_rowptr", DType::I32, 1);
    colidx = read_tensor<int32_t>(ckpt, prefix + ".res_colidx", DType::I32, 1);
    const TensorView& qv = ckpt.get(prefix + ".res_qvalues");
    MOSAIC_CHECK(qv.dtype == DType::U8 && qv.shape.size() == 3 && rowptr.size() >= 2, "tensor '", prefix,
                 ".res_qvalues' is ", dtype_name(qv.dtype), " ", qv.shape_str(), ", expected U8 [nnzb, Br, Bc/2]");
    qvalues = read_tensor<uint8_t>(ckpt, prefix + ".res_qvalues", DType::U8, 3);
    rscales = read_tensor<uint16_t>(ckpt, prefix + ".res_scales", DType::F16, 2);
    // The block shape is implied by the tensors: Br from the CSR length, Bc from the codes.
    t.block_rows = int(N / int64_t(rowptr.size() - 1));
    t.block_cols = int(qv.shape[2] * 2);
    MOSAIC_CHECK(int64_t(t.block_rows) * int64_t(rowptr.size() - 1) == N && qv.shape[1] == t.block_rows, "tensor '",
                 prefix, ".res_rowptr' has ", rowptr.size(), " entries, which does not give a block height for N = ",
                 N, " matching res_qvalues ", qv.shape_str());
    t.res_rowptr = rowptr;
    t.res_colidx = colidx;
    t.res_qvalues = qvalues;
    t.res_scales = rscales;
  }
  return std::make_unique<QuantLinear>(t, "tensor '" + prefix + "'");
}

}  // namespace mosaic
