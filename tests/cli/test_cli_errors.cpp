// `mosaic inspect` on bad input, end to end through the real binary: exit code 1 and exactly
// one line "mosaic: error: ..." naming the file (and tensor), never a crash or a stack trace.
// Also one good run of each output form, so a broken command cannot pass by always failing.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "cli_run.h"

namespace fs = std::filesystem;

namespace {

using Result = mosaic::test::CliResult;
Result run(const std::string& args) { return mosaic::test::run_mosaic(args); }

class InspectErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("mosaic_test_cli_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  fs::path write(const std::string& name, const std::string& bytes) {
    std::ofstream(dir_ / name, std::ios::binary) << bytes;
    return dir_ / name;
  }

  // One-line error naming every needle, exit code 1.
  void expect_error(const std::string& args, std::initializer_list<std::string> needles) {
    Result r = run(args);
    EXPECT_EQ(r.code, 1) << args << "\n" << r.out;
    EXPECT_EQ(r.out.rfind("mosaic: error: ", 0), 0u) << r.out;
    ASSERT_FALSE(r.out.empty());
    EXPECT_EQ(r.out.find('\n'), r.out.size() - 1) << "not one line: " << r.out;
    for (const auto& n : needles) EXPECT_NE(r.out.find(n), std::string::npos) << "'" << n << "' not in: " << r.out;
  }

  fs::path dir_;
};

std::string with_header(const std::string& header, const std::string& data) {
  std::string s;
  for (int i = 0; i < 8; ++i) s.push_back(char((uint64_t(header.size()) >> (8 * i)) & 0xff));
  return s + header + data;
}

const fs::path kFixtures = fs::path(MOSAIC_SOURCE_DIR) / "tests/fixtures/io";

}  // namespace

TEST_F(InspectErrors, TruncatedSafetensors) {
  std::ifstream in(kFixtures / "python_written.safetensors", std::ios::binary);
  std::string good((std::istreambuf_iterator<char>(in)), {});
  ASSERT_GT(good.size(), 1000u);
  expect_error("inspect " + write("cut_header.safetensors", good.substr(0, 100)).string(),
               {"cut_header.safetensors", "header length", "past the end"});
  expect_error("inspect " + write("cut_data.safetensors", good.substr(0, good.size() - 4)).string(),
               {"cut_data.safetensors", "tensor '", "past the data section"});
  expect_error("inspect " + write("tiny.safetensors", "abc").string(), {"tiny.safetensors"});
}

TEST_F(InspectErrors, CorruptHeader) {
  expect_error("inspect " + write("json.safetensors", with_header("{\"w\": [", "")).string(),
               {"json.safetensors", "not valid JSON"});
  expect_error("inspect " +
                   write("dtype.safetensors",
                         with_header(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})",
                                     std::string(8, '\0')))
                       .string(),
               {"dtype.safetensors", "'w'", "needs 12"});
}

TEST_F(InspectErrors, MissingPathShardAndBadConfig) {
  expect_error("inspect " + (dir_ / "nothing_here").string(), {"nothing_here", "does not exist"});
  write("model.safetensors.index.json",
        R"({"metadata": {}, "weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}})");
  expect_error("inspect " + dir_.string(), {"model-00002-of-00002.safetensors", "missing"});
  write("config.json", R"({"architectures": ["GPT2LMHeadModel"], "vocab_size": 5})");
  expect_error("inspect " + (dir_ / "config.json").string(),
               {"config.json", "unknown architecture 'GPT2LMHeadModel'"});
  write("config.json", R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 5})");
  expect_error("inspect " + (dir_ / "config.json").string(), {"config.json", "hidden_size"});
}

TEST_F(InspectErrors, GoodFilesWork) {
  Result r = run("inspect " + (kFixtures / "python_written.safetensors").string());
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("t_bf16"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("168 parameters"), std::string::npos) << r.out;
  r = run("inspect --json " + (kFixtures / "qwen3_8b_config.json").string());
  ASSERT_EQ(r.code, 0) << r.out;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["config"]["architecture"], "Qwen3ForCausalLM");
  EXPECT_EQ(j["config"]["head_dim"], 128);
  EXPECT_EQ(j["config"]["kv_heads"], 8);
}

TEST_F(InspectErrors, FoldsLayersUnlessAll) {
  // 20 layers x 2 tensors of one byte each, crafted by hand (this binary links no io code).
  nlohmann::json h = nlohmann::json::object();
  size_t off = 0;
  for (int i = 0; i < 20; ++i)
    for (const char* t : {"attn", "mlp"}) {
      h["model.layers." + std::to_string(i) + "." + t + ".weight"] = {
          {"dtype", "U8"}, {"shape", {1}}, {"data_offsets", {off, off + 1}}};
      ++off;
    }
  const fs::path p = write("layers.safetensors", with_header(h.dump(), std::string(off, 'x')));
  Result r = run("inspect " + p.string());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("model.layers.{0..19}.attn.weight"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("model.layers.7.mlp.weight"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("40 parameters"), std::string::npos) << r.out;
  r = run("inspect --all " + p.string());
  ASSERT_EQ(r.code, 0) << r.out;
  // Natural order: layer 2 before layer 10.
  const size_t l2 = r.out.find("model.layers.2.mlp.weight"), l10 = r.out.find("model.layers.10.mlp.weight");
  ASSERT_NE(l2, std::string::npos) << r.out;
  ASSERT_NE(l10, std::string::npos) << r.out;
  EXPECT_LT(l2, l10);
  r = run("inspect --json " + p.string());
  ASSERT_EQ(r.code, 0) << r.out;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["tensors"].size(), 40u);
  EXPECT_EQ(j["total_bytes"], 40);
  EXPECT_TRUE(j["config"].is_null());
}

// `bench e2e --res-profile` on bad input fails before any GPU work, with one line naming the problem
// (a build without the GPU engine says so instead: the profile is read by the GPU benchmark).
TEST_F(InspectErrors, BenchE2eResidualProfileErrors) {
  const std::string base = "bench e2e --config llama3-8b --random-weights --batch 1 --res-profile ";
  Result r = run(base + (dir_ / "none.json").string());
  if (r.out.find("needs the GPU engine") != std::string::npos) GTEST_SKIP() << "no GPU engine in this build";
  expect_error(base + (dir_ / "none.json").string(), {"residual profile", "none.json", "does not exist"});
  expect_error(base + write("bad.json", "{not json").string(), {"residual profile", "bad.json", "not valid JSON"});
  expect_error(base + write("empty.json", "{\"residual\": {}}").string(), {"residual profile", "expected an object"});
  expect_error(base + write("old.json", "{\"residual\": {\"mlp.up_proj\": {\"kept\": 3}}}").string(),
               {"mlp.up_proj", "rows_by_kept"});
  expect_error("bench e2e --config llama3-8b --random-weights --res-rows 1 --res-profile " +
                   (fs::path(MOSAIC_SOURCE_DIR) / "bench/profiles/smollm2-135m-mosaic-g64-b0.1.json").string(),
               {"--res-profile", "instead of --res-rows"});
}
