#include "format/int8_rows.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "io/safetensors.h"
#include "util/error.h"
#include "util/half.h"

namespace mosaic {

void quantize_int8_rows(const float* W, int64_t rows, int64_t cols, int8_t* q, uint16_t* scale_f16,
                        const std::string& what, int64_t first_row) {
  MOSAIC_CHECK(rows >= 0 && cols > 0, what, ": int8 rows need a positive row length, got [", rows, ", ", cols, "]");
  for (int64_t r = 0; r < rows; ++r) {
    const float* w = W + r * cols;
    float amax = 0;
    for (int64_t c = 0; c < cols; ++c) {
      MOSAIC_CHECK(std::isfinite(w[c]), what, ": row ", first_row + r, " element ", c, " is ", w[c], " (not finite)");
      amax = std::max(amax, std::fabs(w[c]));
    }
    uint16_t s16 = float_to_fp16(amax / 127.0f);
    MOSAIC_CHECK(std::isfinite(fp16_to_float(s16)), what, ": row ", first_row + r, " has max |w| = ", amax,
                 ", whose int8 scale (max / 127) does not fit FP16");
    if (fp16_to_float(s16) == 0.0f) s16 = float_to_fp16(1.0f);  // a zero row (or too small for an fp16 scale)
    scale_f16[r] = s16;
    const float s = fp16_to_float(s16);
    int8_t* out = q + r * cols;
    for (int64_t c = 0; c < cols; ++c) {
      const float v = std::round(w[c] / s);  // halves away from zero
      out[c] = int8_t(std::clamp(v, -127.0f, 127.0f));
    }
  }
}

void quantize_int8_rows(const float* W, int64_t rows, int64_t cols, std::vector<int8_t>& q,
                        std::vector<uint16_t>& scale_f16, const std::string& what) {
  q.resize(size_t(rows * cols));
  scale_f16.resize(size_t(rows));
  quantize_int8_rows(W, rows, cols, q.data(), scale_f16.data(), what);
}

std::vector<float> dequantize_int8_rows(const int8_t* q, const uint16_t* scale_f16, int64_t rows, int64_t cols) {
  std::vector<float> out(size_t(rows * cols));
  for (int64_t r = 0; r < rows; ++r) {
    const float s = fp16_to_float(scale_f16[r]);
    for (int64_t c = 0; c < cols; ++c) out[size_t(r * cols + c)] = s * float(q[r * cols + c]);
  }
  return out;
}

std::vector<float> dequantize_int8_rows(const std::vector<int8_t>& q, const std::vector<uint16_t>& scale_f16,
                                        int64_t rows, int64_t cols) {
  MOSAIC_CHECK(int64_t(q.size()) == rows * cols && int64_t(scale_f16.size()) == rows, "int8 rows: ", q.size(),
               " codes and ", scale_f16.size(), " scales do not make [", rows, ", ", cols, "]");
  return dequantize_int8_rows(q.data(), scale_f16.data(), rows, cols);
}

std::string int8_rows_name(const std::string& prefix) { return prefix + ".weight_int8"; }
std::string int8_rows_scale_name(const std::string& prefix) { return prefix + ".weight_scale"; }

void add_int8_rows(ShardedWriter& w, const std::string& prefix, int64_t rows, int64_t cols, std::string q_bytes,
                   std::string scale_bytes) {
  MOSAIC_CHECK(int64_t(q_bytes.size()) == rows * cols && int64_t(scale_bytes.size()) == rows * 2, "int8 rows '",
               prefix, "': ", q_bytes.size(), " code bytes and ", scale_bytes.size(), " scale bytes do not make [",
               rows, ", ", cols, "]");
  w.add(int8_rows_name(prefix), DType::I8, {rows, cols}, std::move(q_bytes));
  w.add(int8_rows_scale_name(prefix), DType::F16, {rows}, std::move(scale_bytes));
}

bool has_int8_rows(const Checkpoint& ckpt, const std::string& prefix) { return ckpt.has(int8_rows_name(prefix)); }

Int8Rows read_int8_rows(const Checkpoint& ckpt, const std::string& prefix, int64_t rows, int64_t cols) {
  const std::string qn = int8_rows_name(prefix), sn = int8_rows_scale_name(prefix);
  for (const std::string& other : {prefix + ".weight", prefix + ".qweight"})
    MOSAIC_CHECK(!ckpt.has(other), "checkpoint stores both '", qn, "' and '", other, "': one weight per linear");
  const std::vector<int64_t> qshape = {rows, cols}, sshape = {rows};
  const TensorView& qt = ckpt.get(qn);
  MOSAIC_CHECK(qt.dtype == DType::I8 && qt.shape == qshape, "tensor '", qn, "' is ",
               dtype_name(qt.dtype), " ", qt.shape_str(), ", expected I8 [", rows, ", ", cols, "]");
  MOSAIC_CHECK(ckpt.has(sn), "tensor '", qn, "' is stored without its scales: missing tensor '", sn, "' (F16 [", rows,
               "]) in ", ckpt.root().string());
  const TensorView& st = ckpt.get(sn);
  MOSAIC_CHECK(st.dtype == DType::F16 && st.shape == sshape, "tensor '", sn, "' is ",
               dtype_name(st.dtype), " ", st.shape_str(), ", expected F16 [", rows, "]");
  Int8Rows out;
  out.rows = rows;
  out.cols = cols;
  out.q.resize(qt.nbytes);
  if (qt.nbytes) std::memcpy(out.q.data(), qt.data, qt.nbytes);  // foreign files may be unaligned: copy
  out.scale.resize(size_t(rows));
  if (st.nbytes) std::memcpy(out.scale.data(), st.data, st.nbytes);
  for (int64_t r = 0; r < rows; ++r)
    MOSAIC_CHECK(std::isfinite(fp16_to_float(out.scale[size_t(r)])), "tensor '", sn, "' row ", r, " is ",
                 fp16_to_float(out.scale[size_t(r)]), " (scales must be finite)");
  return out;
}

}  // namespace mosaic
