// Interop with the reference Python `safetensors` package, through two committed fixtures
// (see scripts/gen_io_fixtures.py, which uses the same value formulas as kCases below):
//   python_written.safetensors: written by Python; we must read every dtype exactly.
//   mosaic_written.safetensors: written by our SafetensorsWriter and checked by the Python
//     reader; here we assert the writer still produces exactly those bytes.
// MOSAIC_WRITE_FIXTURES=1 rewrites mosaic_written.safetensors (then rerun the script).
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>

#include "io/safetensors.h"
#include "util/atomic_file.h"
#include "util/half.h"

using namespace mosaic;
namespace fs = std::filesystem;

namespace {

const fs::path kFixtures = fs::path(MOSAIC_SOURCE_DIR) / "tests/fixtures/io";

template <typename T>
std::string pack(const std::function<T(int)>& f) {
  std::string s;
  for (int i = 0; i < 12; ++i) {
    T v = f(i);
    s.append(reinterpret_cast<const char*>(&v), sizeof v);
  }
  return s;
}

std::string pack_u16(const std::function<uint16_t(int)>& f) { return pack<uint16_t>(f); }

struct Case {
  const char* name;
  DType dtype;
  std::string bytes;  // the 12 little-endian values
};

std::vector<Case> cases() {
  // torch's float8_e4m3fn encoding of (i - 5) * 0.5, i = 0..11
  const uint8_t f8[12] = {194, 192, 188, 184, 176, 0, 48, 56, 60, 64, 66, 68};
  return {
      {"t_f64", DType::F64, pack<double>([](int i) { return (i - 5) * 0.125; })},
      {"t_f32", DType::F32, pack<float>([](int i) { return (i - 5) * 0.25f; })},
      {"t_f16", DType::F16, pack_u16([](int i) { return float_to_fp16((i - 5) * 0.5f); })},
      {"t_bf16", DType::BF16, pack_u16([](int i) { return float_to_bf16((i - 5) * 1.5f); })},
      {"t_i64", DType::I64, pack<int64_t>([](int i) { return (i - 5) * int64_t(1000000000000); })},
      {"t_i32", DType::I32, pack<int32_t>([](int i) { return (i - 5) * 100000; })},
      {"t_i16", DType::I16, pack<int16_t>([](int i) { return int16_t((i - 5) * 300); })},
      {"t_i8", DType::I8, pack<int8_t>([](int i) { return int8_t(i - 5); })},
      {"t_u8", DType::U8, pack<uint8_t>([](int i) { return uint8_t(i * 20); })},
      {"t_bool", DType::BOOL, pack<uint8_t>([](int i) { return uint8_t(i % 2); })},
      {"t_u16", DType::U16, pack_u16([](int i) { return uint16_t(i * 5000); })},
      {"t_u32", DType::U32, pack<uint32_t>([](int i) { return uint32_t(i) * 390000000u; })},
      {"t_u64", DType::U64, pack<uint64_t>([](int i) { return uint64_t(i) << 60; })},
      {"t_f8_e4m3", DType::F8_E4M3, std::string(reinterpret_cast<const char*>(f8), 12)},
  };
}

SafetensorsWriter mosaic_fixture_writer() {
  SafetensorsWriter w;
  for (auto& c : cases()) w.add(c.name, c.dtype, {3, 4}, c.bytes);
  w.set_metadata("writer", "mosaic");
  return w;
}

}  // namespace

TEST(SafetensorsInterop, ReadsPythonWrittenFile) {
  auto f = SafetensorsFile::open(kFixtures / "python_written.safetensors");
  EXPECT_EQ(f->metadata().at("format"), "pt");
  EXPECT_EQ(f->metadata().at("source"), "python-safetensors");
  ASSERT_EQ(f->tensors().size(), cases().size());
  for (const auto& c : cases()) {
    const TensorView* v = f->find(c.name);
    ASSERT_NE(v, nullptr) << c.name;
    EXPECT_EQ(v->dtype, c.dtype) << c.name;
    EXPECT_EQ(v->shape, (std::vector<int64_t>{3, 4})) << c.name;
    ASSERT_EQ(v->nbytes, c.bytes.size()) << c.name;
    EXPECT_EQ(std::memcmp(v->data, c.bytes.data(), v->nbytes), 0) << c.name;
  }
  // Float conversion of Python's bf16/f16: exact values.
  auto bf = f->find("t_bf16")->to_f32();
  auto h = f->find("t_f16")->to_f32();
  for (int i = 0; i < 12; ++i) {
    EXPECT_EQ(bf[i], (i - 5) * 1.5f);
    EXPECT_EQ(h[i], (i - 5) * 0.5f);
  }
}

TEST(SafetensorsInterop, WriterMatchesCommittedFixture) {
  const std::string bytes = mosaic_fixture_writer().serialize();
  const fs::path fixture = kFixtures / "mosaic_written.safetensors";
  if (std::getenv("MOSAIC_WRITE_FIXTURES")) mosaic_fixture_writer().write(fixture);
  EXPECT_EQ(read_file(fixture), bytes)
      << "SafetensorsWriter output changed: rerun with MOSAIC_WRITE_FIXTURES=1, then "
         "python3 scripts/gen_io_fixtures.py --check";
  // And it reads back through our reader with every value intact.
  auto f = SafetensorsFile::parse(bytes, "mosaic_written");
  for (const auto& c : cases())
    EXPECT_EQ(std::memcmp(f->find(c.name)->data, c.bytes.data(), 12 * dtype_size(c.dtype)), 0) << c.name;
}
