// Every malformed safetensors file gives a one-line mosaic::Error naming the file and, where
// there is one, the tensor; never a crash. The bytes are crafted here, one defect per case.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "io/safetensors.h"
#include "util/error.h"

using namespace mosaic;
namespace fs = std::filesystem;

namespace {

// 8-byte little-endian length + header + data.
std::string make_file(const std::string& header, const std::string& data = "",
                      std::optional<uint64_t> claimed_len = std::nullopt) {
  uint64_t n = claimed_len.value_or(header.size());
  std::string s;
  for (int i = 0; i < 8; ++i) s.push_back(char((n >> (8 * i)) & 0xff));
  return s + header + data;
}

// Expects parse() to fail with a one-line message containing each needle (and the file name).
void expect_bad(const std::string& bytes, std::initializer_list<std::string> needles) {
  try {
    SafetensorsFile::parse(bytes, "bad.safetensors");
    ADD_FAILURE() << "accepted: " << bytes.substr(std::min<size_t>(8, bytes.size()));
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
    EXPECT_NE(m.find("bad.safetensors"), std::string::npos) << m;
    for (const auto& n : needles) EXPECT_NE(m.find(n), std::string::npos) << "'" << n << "' not in: " << m;
  }
}

const std::string k8(8, '\0');  // data for one F32 [2] tensor

}  // namespace

TEST(SafetensorsMalformed, ValidBaseline) {
  // The crafted format itself is right: the same bytes minus the defect parse.
  auto f = SafetensorsFile::parse(
      make_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", k8), "ok");
  EXPECT_EQ(f->find("w")->numel(), 2);
}

TEST(SafetensorsMalformed, TooShort) {
  expect_bad("", {"0 bytes"});
  expect_bad("abcde", {"5 bytes", "at least 8"});
}

TEST(SafetensorsMalformed, HeaderLength) {
  expect_bad(make_file("{}", "", 1000), {"header length 1000", "past the end"});
  expect_bad(make_file("{}", "", uint64_t(1) << 40), {"absurd"});
  expect_bad(make_file("{}", "", ~uint64_t(0)), {"absurd"});
}

TEST(SafetensorsMalformed, HeaderNotJsonObject) {
  expect_bad(make_file(R"({"w": {"dtype": )"), {"not valid JSON"});
  expect_bad(make_file("[1, 2]"), {"not a JSON object"});
  expect_bad(make_file("12345678"), {"not a JSON object"});
  expect_bad(make_file(""), {"not a JSON object"});
  expect_bad(make_file("{} trailing"), {"not valid JSON"});
  expect_bad(make_file("{\"w\": \"\xff\xfe\"}"), {"not valid JSON"});  // invalid UTF-8
  expect_bad(make_file("{\"a\":" + std::string(100000, '[') + std::string(100000, ']') + "}"),
             {"nests deeper"});
}

TEST(SafetensorsMalformed, EntryFields) {
  expect_bad(make_file(R"({"w": 5})"), {"'w'", "not a JSON object"});
  expect_bad(make_file(R"({"w":{"shape":[2],"data_offsets":[0,8]}})", k8), {"'w'", "missing 'dtype'"});
  expect_bad(make_file(R"({"w":{"dtype":"F32","data_offsets":[0,8]}})", k8), {"'w'", "missing 'shape'"});
  expect_bad(make_file(R"({"w":{"dtype":"F32","shape":[2]}})", k8), {"'w'", "missing 'data_offsets'"});
  expect_bad(make_file(R"({"w":{"dtype":"F4","shape":[2],"data_offsets":[0,8]}})", k8),
             {"'w'", "unknown dtype 'F4'"});
  expect_bad(make_file(R"({"w":{"dtype":32,"shape":[2],"data_offsets":[0,8]}})", k8), {"'w'", "dtype"});
  expect_bad(make_file(R"({"w":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", k8), {"'w'", "shape"});
  expect_bad(make_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8,9]}})", k8),
             {"'w'", "data_offsets"});
  expect_bad(make_file(R"({"__metadata__":{"format":1}})"), {"__metadata__", "'format'"});
  expect_bad(make_file(R"({"__metadata__":[1]})"), {"__metadata__"});
}

TEST(SafetensorsMalformed, Shapes) {
  expect_bad(make_file(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", k8),
             {"'w'", "negative"});
  expect_bad(make_file(R"({"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,8]}})", k8),
             {"'w'", "non-negative integers"});
  expect_bad(make_file(R"({"w":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}})", k8),
             {"'w'", "non-negative integers"});
  expect_bad(make_file(R"({"w":{"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,8]}})", k8),
             {"'w'", "too large"});
  // 2^32 * 2^32 elements overflows 64 bits; so does 2^62 F32 elements in bytes.
  expect_bad(make_file(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", k8),
             {"'w'", "overflows"});
  expect_bad(make_file(R"({"w":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,8]}})", k8),
             {"'w'", "overflows"});
}

TEST(SafetensorsMalformed, Offsets) {
  expect_bad(make_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", k8),
             {"'w'", "begin > end"});
  expect_bad(make_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}})", k8),
             {"'w'", "past the data section"});
  expect_bad(make_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[-1,8]}})", k8),
             {"'w'", "negative"});
  expect_bad(make_file(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", k8),
             {"'w'", "8 bytes", "needs 12"});
  expect_bad(make_file(R"({"w":{"dtype":"BF16","shape":[2],"data_offsets":[0,8]}})", k8),
             {"'w'", "needs 4"});
  expect_bad(make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                       R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                       std::string(12, '\0')),
             {"overlaps", "'a'", "'b'"});
}

TEST(SafetensorsMalformed, TruncatedFileOnDisk) {
  const fs::path p = fs::temp_directory_path() / ("mosaic_test_trunc_" + std::to_string(::getpid()) + ".safetensors");
  SafetensorsWriter w;
  const float x[4] = {1, 2, 3, 4};
  w.add_f32("model.norm.weight", {4}, x);
  std::string bytes = w.serialize();
  std::ofstream(p, std::ios::binary) << bytes.substr(0, bytes.size() - 1);
  try {
    SafetensorsFile::open(p);
    FAIL();
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find(p.string()), std::string::npos) << m;
    EXPECT_NE(m.find("'model.norm.weight'"), std::string::npos) << m;
    EXPECT_NE(m.find("truncated"), std::string::npos) << m;
  }
  std::ofstream(p, std::ios::binary) << bytes.substr(0, 20);  // cut inside the header
  EXPECT_THROW(SafetensorsFile::open(p), Error);
  std::ofstream(p, std::ios::binary | std::ios::trunc).close();  // empty file
  EXPECT_THROW(SafetensorsFile::open(p), Error);
  fs::remove(p);
  EXPECT_THROW(SafetensorsFile::open(p), Error);  // missing
  EXPECT_THROW(SafetensorsFile::open(fs::temp_directory_path()), Error);  // a directory
}

TEST(SafetensorsMalformed, AcceptsHarmlessLayouts) {
  // Empty header object, empty tensors, trailing header spaces, and a zero-size tensor whose
  // offsets sit inside another tensor's bytes (it reads nothing, so it overlaps nothing).
  EXPECT_NO_THROW(SafetensorsFile::parse(make_file("{}      "), "x"));
  auto f = SafetensorsFile::parse(
      make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                R"("e":{"dtype":"F16","shape":[0],"data_offsets":[4,4]}})",
                k8),
      "x");
  EXPECT_EQ(f->find("e")->nbytes, 0u);
}
