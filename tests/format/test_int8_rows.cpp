// The 8-bit per-row weights of the int8 LM head (format/int8_rows.h, docs/format.md "8-bit LM head"):
// the quantization rule on random rows with an outlier row, an all-zero row, exact halves and rows
// too small for a normal fp16 scale; the dequantization formula; and reading the two tensors back
// from a checkpoint with every dtype / shape / missing-tensor error naming the tensor.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "format/int8_rows.h"
#include "io/safetensors.h"
#include "util/error.h"
#include "util/half.h"

using namespace mosaic;
namespace fs = std::filesystem;

namespace {

constexpr float kMinNormalF16 = 6.103515625e-05f;  // 2^-14

// Rows: 0..33 random normal (sigma 0.02 like an LM head), 34 an outlier row, 35 zeros, 36 exact
// halves at scale 1, 37 a row whose scale is an fp16 subnormal, 38 a row too small for any fp16 scale.
std::vector<float> test_rows(int64_t cols) {
  const int64_t rows = 39;
  std::vector<float> W(size_t(rows * cols));
  std::mt19937 rng(17);
  std::normal_distribution<float> nd(0.0f, 0.02f);
  for (int64_t i = 0; i < 35 * cols; ++i) W[size_t(i)] = nd(rng);
  W[size_t(34 * cols + 5)] = 3.75f;  // outlier: the rest of row 34 gets ~1.5 codes of resolution
  float* h = W.data() + 36 * cols;
  const float halves[] = {127.0f, 2.5f, -2.5f, 0.5f, -0.5f, 126.5f, -126.5f, 1.49f};
  for (size_t i = 0; i < std::size(halves); ++i) h[i] = halves[i];
  for (int64_t c = 0; c < cols; ++c) W[size_t(37 * cols + c)] = 1e-3f * std::sin(float(c) + 0.3f);
  for (int64_t c = 0; c < cols; ++c) W[size_t(38 * cols + c)] = 1e-6f * std::cos(float(c));
  return W;
}

}  // namespace

TEST(Int8Rows, RoundTripWithinHalfAScalePerElement) {
  const int64_t cols = 67;  // odd on purpose
  const std::vector<float> W = test_rows(cols);
  const int64_t rows = int64_t(W.size()) / cols;
  std::vector<int8_t> q;
  std::vector<uint16_t> scale;
  quantize_int8_rows(W.data(), rows, cols, q, scale);
  ASSERT_EQ(q.size(), W.size());
  ASSERT_EQ(scale.size(), size_t(rows));
  const std::vector<float> deq = dequantize_int8_rows(q, scale, rows, cols);
  for (int64_t r = 0; r < rows; ++r) {
    float amax = 0;
    for (int64_t c = 0; c < cols; ++c) amax = std::max(amax, std::fabs(W[size_t(r * cols + c)]));
    const float s = fp16_to_float(scale[size_t(r)]);
    // The scale is the fp16 rounding of absmax / 127; 1.0 where that rounds to 0 (rows 35 and 38).
    const uint16_t expect = fp16_to_float(float_to_fp16(amax / 127.0f)) == 0.0f ? float_to_fp16(1.0f)
                                                                               : float_to_fp16(amax / 127.0f);
    EXPECT_EQ(scale[size_t(r)], expect) << "row " << r;
    if (amax / 127.0f >= kMinNormalF16) {  // a normal fp16: within half an ulp (2^-11 relative)
      EXPECT_LE(std::fabs(s - amax / 127.0f), (amax / 127.0f) * 0x1p-11f) << "row " << r;
    }
    for (int64_t c = 0; c < cols; ++c) {
      const size_t i = size_t(r * cols + c);
      EXPECT_GE(q[i], -127) << "row " << r;
      EXPECT_LE(q[i], 127) << "row " << r;
      EXPECT_EQ(deq[i], s * float(q[i]));  // the formula, exactly
      // Every element within s/2 of its value when s is a normal fp16 (a subnormal scale is coarser
      // than 2^-11 relative: then the clamp at 127 may add up to absmax - 127 s).
      const float bound = s >= kMinNormalF16 ? 0.5f * s * (1 + 1e-6f) : std::max(0.5f * s, amax - 127 * s) * (1 + 1e-6f);
      EXPECT_LE(std::fabs(W[i] - deq[i]), bound) << "row " << r << " col " << c << " w " << W[i] << " s " << s;
    }
  }
  // Row 34 (outlier): the outlier is code +-127 and decodes to itself within 2^-11 relative.
  EXPECT_EQ(q[size_t(34 * cols + 5)], 127);
  EXPECT_NEAR(deq[size_t(34 * cols + 5)], 3.75f, 3.75f * 0x1p-11f);
  // Row 35 (zeros): scale 1, codes 0.
  EXPECT_EQ(fp16_to_float(scale[35]), 1.0f);
  for (int64_t c = 0; c < cols; ++c) EXPECT_EQ(q[size_t(35 * cols + c)], 0);
  // Row 36: scale exactly 1; halves round away from zero.
  EXPECT_EQ(fp16_to_float(scale[36]), 1.0f);
  const int8_t expect_codes[] = {127, 3, -3, 1, -1, 127, -127, 1};
  for (size_t i = 0; i < std::size(expect_codes); ++i) EXPECT_EQ(q[size_t(36 * cols) + i], expect_codes[i]) << i;
  // Row 37: a subnormal scale, still non-zero codes; row 38: too small, scale 1 and codes 0.
  EXPECT_LT(fp16_to_float(scale[37]), kMinNormalF16);
  EXPECT_GT(fp16_to_float(scale[37]), 0.0f);
  EXPECT_EQ(fp16_to_float(scale[38]), 1.0f);
  for (int64_t c = 0; c < cols; ++c) EXPECT_EQ(q[size_t(38 * cols + c)], 0);
  // Random rows use nearly the whole code range (absmax -> +-127).
  int maxcode = 0;
  for (int64_t c = 0; c < cols; ++c) maxcode = std::max(maxcode, std::abs(int(q[size_t(c)])));
  EXPECT_EQ(maxcode, 127);
}

TEST(Int8Rows, SlicesQuantizeLikeTheWholeMatrix) {
  // The quantizer converts the head in chunks of rows: each row depends only on itself.
  const int64_t cols = 32;
  const std::vector<float> W = test_rows(cols);
  const int64_t rows = int64_t(W.size()) / cols;
  std::vector<int8_t> q, q2(W.size());
  std::vector<uint16_t> s, s2(static_cast<size_t>(rows));
  quantize_int8_rows(W.data(), rows, cols, q, s);
  for (int64_t r0 = 0; r0 < rows; r0 += 10) {
    const int64_t n = std::min<int64_t>(10, rows - r0);
    quantize_int8_rows(W.data() + r0 * cols, n, cols, q2.data() + r0 * cols, s2.data() + r0, "w", r0);
  }
  EXPECT_EQ(q, q2);
  EXPECT_EQ(s, s2);
}

TEST(Int8Rows, NonFiniteOrUnscalableRowsAreErrors) {
  std::vector<float> W(3 * 8, 0.1f);
  W[2 * 8 + 3] = std::nanf("");
  std::vector<int8_t> q;
  std::vector<uint16_t> s;
  try {
    quantize_int8_rows(W.data(), 3, 8, q, s, "tensor 'lm_head.weight'");
    ADD_FAILURE() << "no error for a NaN";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("tensor 'lm_head.weight'"), std::string::npos) << m;
    EXPECT_NE(m.find("row 2 element 3"), std::string::npos) << m;
  }
  W[2 * 8 + 3] = 1e7f;  // scale 1e7 / 127 > 65504
  try {
    std::vector<int8_t> q2(W.size());
    std::vector<uint16_t> s2(3);
    quantize_int8_rows(W.data() + 8, 2, 8, q2.data(), s2.data(), "w", 1);  // a slice: rows numbered from 1
    ADD_FAILURE() << "no error for a scale past FP16";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("row 2 has max"), std::string::npos) << m;
    EXPECT_NE(m.find("FP16"), std::string::npos) << m;
  }
}

namespace {

struct Tmp {
  fs::path path = fs::temp_directory_path() / ("mosaic_int8_rows_" + std::to_string(::getpid()));
  Tmp() {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~Tmp() { fs::remove_all(path); }
};

std::string bytes(const void* p, size_t n) { return std::string(static_cast<const char*>(p), n); }

// Writes a checkpoint with the given lm_head tensors and returns read_int8_rows' error ("" if none).
std::string read_error(const fs::path& dir, const std::function<void(SafetensorsWriter&)>& add) {
  fs::remove_all(dir);
  fs::create_directories(dir);
  SafetensorsWriter w;
  add(w);
  w.write(dir / "model.safetensors");
  try {
    const Int8Rows r = read_int8_rows(Checkpoint::open(dir), "lm_head", 4, 6);
    EXPECT_EQ(r.q.size(), 24u);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Int8Rows, CheckpointTensorsReadBackAndAreChecked) {
  Tmp tmp;
  std::vector<float> W(4 * 6);
  for (size_t i = 0; i < W.size(); ++i) W[i] = 0.01f * float(int(i) - 11);
  std::vector<int8_t> q;
  std::vector<uint16_t> s;
  quantize_int8_rows(W.data(), 4, 6, q, s);
  const std::string qb = bytes(q.data(), q.size()), sb = bytes(s.data(), s.size() * 2);
  EXPECT_EQ(int8_rows_name("lm_head"), "lm_head.weight_int8");
  EXPECT_EQ(int8_rows_scale_name("lm_head"), "lm_head.weight_scale");
  {  // the good case, through the sharded writer the quantizer uses
    const fs::path d = tmp.path / "good";
    fs::create_directories(d);
    ShardedWriter w(d);
    add_int8_rows(w, "lm_head", 4, 6, qb, sb);
    w.finish();
    const Checkpoint ck = Checkpoint::open(d);
    EXPECT_TRUE(has_int8_rows(ck, "lm_head"));
    EXPECT_EQ(ck.get("lm_head.weight_int8").dtype, DType::I8);
    EXPECT_EQ(ck.get("lm_head.weight_scale", {4}).dtype, DType::F16);
    const Int8Rows r = read_int8_rows(ck, "lm_head", 4, 6);
    EXPECT_EQ(r.q, q);
    EXPECT_EQ(r.scale, s);
    EXPECT_EQ(r.dequantize(), dequantize_int8_rows(q, s, 4, 6));
  }
  const fs::path d = tmp.path / "bad";
  std::string e = read_error(d, [&](SafetensorsWriter& w) {
    w.add("lm_head.weight_int8", DType::U8, {4, 6}, qb);  // wrong dtype
    w.add("lm_head.weight_scale", DType::F16, {4}, sb);
  });
  EXPECT_NE(e.find("tensor 'lm_head.weight_int8' is U8 [4, 6], expected I8 [4, 6]"), std::string::npos) << e;
  e = read_error(d, [&](SafetensorsWriter& w) {
    w.add("lm_head.weight_int8", DType::I8, {6, 4}, qb);  // transposed
    w.add("lm_head.weight_scale", DType::F16, {4}, sb);
  });
  EXPECT_NE(e.find("tensor 'lm_head.weight_int8' is I8 [6, 4], expected I8 [4, 6]"), std::string::npos) << e;
  e = read_error(d, [&](SafetensorsWriter& w) { w.add("lm_head.weight_int8", DType::I8, {4, 6}, qb); });
  EXPECT_NE(e.find("missing tensor 'lm_head.weight_scale'"), std::string::npos) << e;
  e = read_error(d, [&](SafetensorsWriter& w) {
    w.add("lm_head.weight_int8", DType::I8, {4, 6}, qb);
    w.add("lm_head.weight_scale", DType::BF16, {4}, sb);
  });
  EXPECT_NE(e.find("tensor 'lm_head.weight_scale' is BF16 [4], expected F16 [4]"), std::string::npos) << e;
  e = read_error(d, [&](SafetensorsWriter& w) {
    w.add("lm_head.weight_int8", DType::I8, {4, 6}, qb);
    w.add("lm_head.weight_scale", DType::F16, {2, 2}, sb);
  });
  EXPECT_NE(e.find("tensor 'lm_head.weight_scale' is F16 [2, 2], expected F16 [4]"), std::string::npos) << e;
  e = read_error(d, [&](SafetensorsWriter& w) {
    std::vector<uint16_t> bad = s;
    bad[3] = 0x7c00;  // +inf
    w.add("lm_head.weight_int8", DType::I8, {4, 6}, qb);
    w.add("lm_head.weight_scale", DType::F16, {4}, bytes(bad.data(), 8));
  });
  EXPECT_NE(e.find("tensor 'lm_head.weight_scale' row 3"), std::string::npos) << e;
  EXPECT_NE(e.find("finite"), std::string::npos) << e;
}
