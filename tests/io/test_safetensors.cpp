// safetensors: write -> read round trips for every dtype, float conversion, checkpoints (single
// file, directory of files, sharded index) and the sharded writer.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <vector>

#include "io/safetensors.h"
#include "util/error.h"
#include "util/half.h"

using namespace mosaic;
namespace fs = std::filesystem;

namespace {

fs::path fresh_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("mosaic_test_st_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::string random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = char(rng() & 0xff);
  return s;
}

const DType kAll[] = {DType::F64, DType::F32,  DType::F16, DType::BF16, DType::I64,
                      DType::I32, DType::I16,  DType::I8,  DType::U8,   DType::BOOL,
                      DType::U16, DType::U32,  DType::U64, DType::F8_E4M3};

}  // namespace

TEST(Safetensors, DTypeNames) {
  for (DType t : kAll) EXPECT_EQ(dtype_from_name(dtype_name(t)), t);
  EXPECT_EQ(dtype_size(DType::F64), 8u);
  EXPECT_EQ(dtype_size(DType::BF16), 2u);
  EXPECT_EQ(dtype_size(DType::F8_E4M3), 1u);
  EXPECT_THROW(dtype_from_name("F4"), Error);
}

TEST(Safetensors, RoundTripEveryDType) {
  const fs::path dir = fresh_dir("roundtrip");
  SafetensorsWriter w;
  std::map<std::string, std::string> bytes;
  uint32_t seed = 1;
  for (DType t : kAll) {
    // Odd element counts so element sizes mix and alignment is exercised.
    std::vector<int64_t> shape = {3, 5};
    std::string b = random_bytes(15 * dtype_size(t), seed++);
    if (t == DType::BOOL)
      for (auto& c : b) c = char(c & 1);
    const std::string name = "t." + std::string(dtype_name(t));
    bytes[name] = b;
    w.add(name, t, shape, b);
  }
  w.add("scalar", DType::F32, {}, std::string("\x00\x00\x80\x3f", 4));  // 1.0f, rank 0
  w.add("empty", DType::F16, {0, 7}, "");
  w.set_metadata("format", "pt");
  w.write(dir / "x.safetensors");

  auto f = SafetensorsFile::open(dir / "x.safetensors");
  EXPECT_EQ(f->metadata().at("format"), "pt");
  EXPECT_EQ(f->tensors().size(), std::size(kAll) + 2);
  for (DType t : kAll) {
    const std::string name = "t." + std::string(dtype_name(t));
    const TensorView* v = f->find(name);
    ASSERT_NE(v, nullptr) << name;
    EXPECT_EQ(v->dtype, t);
    EXPECT_EQ(v->shape, (std::vector<int64_t>{3, 5}));
    EXPECT_EQ(v->numel(), 15);
    ASSERT_EQ(v->nbytes, bytes[name].size());
    EXPECT_EQ(std::memcmp(v->data, bytes[name].data(), v->nbytes), 0) << name;
    // Our writer lays tensors out so each is aligned to its element size.
    EXPECT_EQ(reinterpret_cast<uintptr_t>(v->data) % dtype_size(t), 0u) << name;
  }
  EXPECT_EQ(f->find("scalar")->numel(), 1);
  EXPECT_EQ(f->find("scalar")->to_f32()[0], 1.0f);
  EXPECT_EQ(f->find("empty")->numel(), 0);
  EXPECT_EQ(f->find("empty")->shape_str(), "[0, 7]");
  EXPECT_TRUE(f->find("empty")->to_f32().empty());
  EXPECT_EQ(f->header_bytes() % 8, 0u);
  // write() and serialize() agree byte for byte.
  std::ifstream in(dir / "x.safetensors", std::ios::binary);
  std::string on_disk((std::istreambuf_iterator<char>(in)), {});
  EXPECT_EQ(on_disk, w.serialize());
  fs::remove_all(dir);
}

TEST(Safetensors, ToF32Conversions) {
  // Values chosen to be exact in the target type; bit patterns checked against numpy
  // (np.float16(x).view(np.uint16), bf16 = top half of float32 bits).
  const float vals[] = {1.0f, -2.5f, 0.333251953125f, 65504.0f, 5.960464477539063e-08f, -0.0f};
  const uint16_t f16_bits[] = {0x3c00, 0xc100, 0x3555, 0x7bff, 0x0001, 0x8000};
  std::string f16(reinterpret_cast<const char*>(f16_bits), sizeof f16_bits);
  const float bvals[] = {1.0f, -2.5f, 0.333984375f, 3.3895313892515355e+38f, 1e-3f, -0.0f};
  const uint16_t bf16_bits[] = {0x3f80, 0xc020, 0x3eab, 0x7f7f, 0x3a83, 0x8000};
  std::string bf16(reinterpret_cast<const char*>(bf16_bits), sizeof bf16_bits);

  SafetensorsWriter w;
  w.add("h", DType::F16, {6}, f16);
  w.add("b", DType::BF16, {2, 3}, bf16);
  w.add_f32("f", {6}, vals);
  w.add("i", DType::I32, {1}, std::string(4, '\1'));
  auto f = SafetensorsFile::parse(w.serialize(), "mem.safetensors");
  auto h = f->find("h")->to_f32();
  auto b = f->find("b")->to_f32();
  auto x = f->find("f")->to_f32();
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(h[i], vals[i]) << i;
    EXPECT_EQ(x[i], vals[i]) << i;
    EXPECT_EQ(std::signbit(h[i]), std::signbit(vals[i]));
    EXPECT_EQ(float_to_fp16(vals[i]), f16_bits[i]) << i;
  }
  // 1e-3 is not exact in bf16: 0x3a83 is numpy's round-to-nearest (0.00099945068359375).
  EXPECT_EQ(b[0], 1.0f);
  EXPECT_EQ(b[1], -2.5f);
  EXPECT_EQ(b[2], 0.333984375f);
  EXPECT_EQ(b[3], 3.3895313892515355e+38f);
  EXPECT_EQ(b[4], 0.00099945068359375f);
  EXPECT_EQ(float_to_bf16(bvals[4]), 0x3a83);
  try {
    f->find("i")->to_f32();
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'i'"), std::string::npos) << e.what();
  }
}

TEST(Safetensors, HeaderIsDeterministicAndPadded) {
  SafetensorsWriter a, b;
  const float x[2] = {1, 2};
  a.add_f32("z", {2}, x);
  a.add_f32("a", {2}, x);
  a.set_metadata("format", "pt");
  b.set_metadata("format", "pt");
  b.add_f32("z", {2}, x);
  b.add_f32("a", {2}, x);
  const std::string s = a.serialize();
  EXPECT_EQ(s, b.serialize());
  uint64_t n;
  std::memcpy(&n, s.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  const std::string header = s.substr(8, n);
  EXPECT_EQ(header.rfind("{\"__metadata__\":{\"format\":\"pt\"},\"a\":{\"dtype\":\"F32\",\"shape\":[2],", 0), 0u)
      << header;
  EXPECT_EQ(header.find_last_not_of(' '), header.find_last_of('}'));
}

TEST(Safetensors, WriterRejectsBadInput) {
  SafetensorsWriter w;
  EXPECT_THROW(w.add("x", DType::F32, {2, 2}, std::string(15, '\0')), Error);
  EXPECT_THROW(w.add("x", DType::F32, {-1}, ""), Error);
  EXPECT_THROW(w.add("__metadata__", DType::U8, {1}, "a"), Error);
  w.add("x", DType::U8, {1}, "a");
  EXPECT_THROW(w.add("x", DType::U8, {1}, "a"), Error);
}

TEST(Checkpoint, SingleFileAndDirectory) {
  const fs::path dir = fresh_dir("ckpt");
  SafetensorsWriter w;
  const float x[6] = {1, 2, 3, 4, 5, 6};
  w.add_f32("model.embed_tokens.weight", {2, 3}, x);
  w.add_f32("model.norm.weight", {3}, x);
  w.write(dir / "model.safetensors");
  for (const fs::path& p : {dir, dir / "model.safetensors"}) {
    Checkpoint ck = Checkpoint::open(p);
    EXPECT_TRUE(ck.has("model.norm.weight"));
    EXPECT_EQ(ck.names().size(), 2u);
    EXPECT_EQ(ck.total_bytes(), 36u);
    EXPECT_EQ(ck.get("model.embed_tokens.weight", {2, 3}).to_f32()[5], 6.0f);
    try {
      ck.get("lm_head.weight");
      FAIL();
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("missing tensor 'lm_head.weight' in "), std::string::npos)
          << e.what();
    }
    try {
      ck.get("model.norm.weight", {4});
      FAIL();
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find("[3]"), std::string::npos) << m;
      EXPECT_NE(m.find("[4]"), std::string::npos) << m;
    }
  }
  fs::remove_all(dir);
}

TEST(Checkpoint, UnindexedShardsAndDuplicates) {
  const fs::path dir = fresh_dir("unindexed");
  const float x[2] = {1, 2};
  SafetensorsWriter a, b;
  a.add_f32("a", {2}, x);
  b.add_f32("b", {2}, x);
  a.write(dir / "part1.safetensors");
  b.write(dir / "part2.safetensors");
  Checkpoint ck = Checkpoint::open(dir);
  EXPECT_EQ(ck.names(), (std::vector<std::string>{"a", "b"}));
  b.add_f32("a", {2}, x);
  b.write(dir / "part2.safetensors");
  try {
    Checkpoint::open(dir);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'a'"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
  fs::create_directories(dir);
  EXPECT_THROW(Checkpoint::open(dir), Error);  // no files
  fs::remove_all(dir);
  EXPECT_THROW(Checkpoint::open(dir), Error);  // no directory
}

TEST(Checkpoint, ShardedWriterAndIndex) {
  const fs::path dir = fresh_dir("sharded");
  std::vector<float> big(100);
  for (size_t i = 0; i < big.size(); ++i) big[i] = float(i) * 0.5f - 7.0f;
  {
    ShardedWriter sw(dir, 1000);  // 400 bytes a tensor: two per shard
    sw.set_metadata("format", "pt");
    for (int i = 0; i < 5; ++i) sw.add_f32("layers." + std::to_string(i) + ".w", {10, 10}, big.data());
    auto files = sw.finish();
    ASSERT_EQ(files.size(), 4u);
    EXPECT_EQ(files[0].filename(), "model-00001-of-00003.safetensors");
    EXPECT_EQ(files[2].filename(), "model-00003-of-00003.safetensors");
    EXPECT_EQ(files[3].filename(), "model.safetensors.index.json");
  }
  size_t n_files = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    (void)e;
    ++n_files;
  }
  EXPECT_EQ(n_files, 4u);  // no temp files left
  Checkpoint ck = Checkpoint::open(dir);
  EXPECT_EQ(ck.names().size(), 5u);
  EXPECT_EQ(ck.files().size(), 3u);
  EXPECT_EQ(ck.total_bytes(), 2000u);
  EXPECT_EQ(ck.get("layers.4.w", {10, 10}).to_f32()[99], 42.5f);
  EXPECT_EQ(ck.files()[0]->metadata().at("format"), "pt");

  // A shard the index names is missing.
  fs::rename(dir / "model-00002-of-00003.safetensors", dir / "gone");
  try {
    Checkpoint::open(dir);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model-00002-of-00003.safetensors"), std::string::npos)
        << e.what();
  }
  // A shard that lacks a tensor the index maps to it.
  SafetensorsWriter other;
  other.add_f32("something.else", {1}, big.data());
  other.write(dir / "model-00002-of-00003.safetensors");
  try {
    Checkpoint::open(dir);
    FAIL();
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("'layers.2.w'"), std::string::npos) << m;
    EXPECT_NE(m.find("model-00002-of-00003.safetensors"), std::string::npos) << m;
  }
  fs::remove_all(dir);
}

TEST(Checkpoint, ShardedWriterSingleShardIsModelSafetensors) {
  const fs::path dir = fresh_dir("oneshard");
  const float x[4] = {1, 2, 3, 4};
  ShardedWriter sw(dir);
  sw.add_f32("w", {4}, x);
  auto files = sw.finish();
  ASSERT_EQ(files.size(), 1u);
  EXPECT_EQ(files[0].filename(), "model.safetensors");
  EXPECT_FALSE(fs::exists(dir / "model.safetensors.index.json"));
  EXPECT_EQ(Checkpoint::open(dir).get("w").to_f32()[3], 4.0f);
  fs::remove_all(dir);
}

TEST(Checkpoint, ShardedWriterAbandonedLeavesNothing) {
  const fs::path dir = fresh_dir("abandon");
  std::vector<float> x(100, 1.0f);
  {
    ShardedWriter sw(dir, 500);
    for (int i = 0; i < 4; ++i) sw.add_f32(std::string("w").append(std::to_string(i)), {100}, x.data());
    // no finish(): as if interrupted by an exception
  }
  EXPECT_TRUE(fs::is_empty(dir));
  fs::remove_all(dir);
}

TEST(Safetensors, ToF32AllHalfBitPatterns) {
  // Every one of the 65536 fp16 and bf16 values converts exactly as util/half.h does (the F16
  // path may use the CPU's F16C instructions; NaNs need only stay NaN). Odd count and an odd
  // offset exercise the vector tail and unaligned loads.
  std::string bits(2 * 65537, '\0');
  for (uint32_t i = 0; i < 65536; ++i) {
    const uint16_t h = uint16_t(i);
    std::memcpy(&bits[2 + 2 * i], &h, 2);
  }
  for (DType t : {DType::F16, DType::BF16}) {
    TensorView v;
    v.name = "all";
    v.dtype = t;
    v.shape = {65535};
    v.data = reinterpret_cast<const uint8_t*>(bits.data()) + 2;
    v.nbytes = 2 * 65535;
    const std::vector<float> out = v.to_f32();
    int mismatches = 0;
    for (uint32_t i = 0; i < 65535; ++i) {
      const float want = t == DType::F16 ? fp16_to_float(uint16_t(i)) : bf16_to_float(uint16_t(i));
      if (std::isnan(want) ? !std::isnan(out[i]) : std::memcmp(&want, &out[i], 4) != 0) ++mismatches;
    }
    EXPECT_EQ(mismatches, 0) << dtype_name(t);
  }
}

TEST(Safetensors, ToF32MatchesNumpyOnAllHalfValues) {
  // numpy's own conversion of all 65536 bit patterns, folded into a signature: the count of
  // non-NaN values and sum over them of float32_bits * (pattern + 1) mod 2^64, computed by
  //   h = np.arange(65536).astype(np.uint16); f = h.view(np.float16).astype(np.float32)
  //   (bf16: (h.astype(np.uint32) << 16).view(np.float32))
  const struct {
    DType t;
    uint64_t count, signature;
  } expect[] = {{DType::F16, 63490, 5549831980369051648ull}, {DType::BF16, 65282, 6104334358053650432ull}};
  std::vector<uint16_t> all(65536);
  for (uint32_t i = 0; i < 65536; ++i) all[i] = uint16_t(i);
  for (const auto& e : expect) {
    SafetensorsWriter w;
    w.add("all", e.t, {65536}, std::string(reinterpret_cast<const char*>(all.data()), 2 * 65536));
    auto f = SafetensorsFile::parse(w.serialize(), "all.safetensors");
    const std::vector<float> out = f->find("all")->to_f32();
    uint64_t count = 0, sig = 0;
    for (uint64_t i = 0; i < 65536; ++i) {
      if (std::isnan(out[i])) continue;
      uint32_t b;
      std::memcpy(&b, &out[i], 4);
      ++count;
      sig += uint64_t(b) * (i + 1);
    }
    EXPECT_EQ(count, e.count) << dtype_name(e.t);
    EXPECT_EQ(sig, e.signature) << dtype_name(e.t);
  }
}

TEST(Checkpoint, ShardedWriterOversizedTensorGetsItsOwnShard) {
  const fs::path dir = fresh_dir("oversized");
  std::vector<float> x(300, 0.25f);
  ShardedWriter sw(dir, 1000);
  sw.add_f32("small.a", {10}, x.data());   //   40 bytes
  sw.add_f32("big", {300}, x.data());      // 1200 bytes > limit: alone in shard 2
  sw.add_f32("small.b", {10}, x.data());   // shard 3
  ASSERT_EQ(sw.finish().size(), 4u);
  Checkpoint ck = Checkpoint::open(dir);
  ASSERT_EQ(ck.files().size(), 3u);
  EXPECT_EQ(ck.files()[1]->tensors().size(), 1u);
  EXPECT_NE(ck.files()[1]->find("big"), nullptr);
  EXPECT_EQ(ck.get("big", {300}).to_f32()[299], 0.25f);
  fs::remove_all(dir);
}

// release() drops the process's mapping of a tensor's pages (resident memory of a layer-by-layer
// reader); the data must read back the same afterwards, neighbours untouched, and a parse()d
// (heap-owned) file must not be affected at all (MADV_DONTNEED on heap memory would zero it).
TEST(Checkpoint, ReleaseKeepsDataReadable) {
  const fs::path dir = fresh_dir("release");
  SafetensorsWriter w;
  std::vector<float> a(3 * 4096 + 7), b(5000);
  for (size_t i = 0; i < a.size(); ++i) a[i] = float(i) * 0.5f - 3.0f;
  for (size_t i = 0; i < b.size(); ++i) b[i] = -float(i);
  w.add_f32("a", {int64_t(a.size())}, a.data());
  w.add_f32("b", {int64_t(b.size())}, b.data());
  w.write(dir / "model.safetensors");
  const Checkpoint ck = Checkpoint::open(dir);
  EXPECT_EQ(ck.get("a").to_f32(), a);
  ck.release("a");
  EXPECT_EQ(ck.get("a").to_f32(), a);
  EXPECT_EQ(ck.get("b").to_f32(), b);
  ck.release("b");
  ck.release("b");  // twice is fine
  EXPECT_EQ(ck.get("b").to_f32(), b);
  EXPECT_THROW(ck.release("c"), Error);

  std::ifstream in(dir / "model.safetensors", std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto f = SafetensorsFile::parse(std::move(bytes));
  f->release(*f->find("a"));
  EXPECT_EQ(f->find("a")->to_f32(), a);
  fs::remove_all(dir);
}
