// `mosaic quantize` end to end through the real binary: bad options, shapes the format cannot
// tile, empty / too short / missing calibration text, an existing output. Each must exit 1 with
// one line "mosaic: error: ..." naming the problem and leave neither <out> nor <out>.partial.
// Good runs (RTN, and GPTQ + residual with calibration) write a complete directory, so a broken
// command cannot pass by always failing.
// Model: the tiny golden LLaMA (3 layers, hidden 64, intermediate 96, vocab 301) with the tiny
// GPT-2-style tokenizer fixture; calibration text made of characters that no merge touches, so
// every id is a byte token (< 256) inside the model's vocabulary.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include <nlohmann/json.hpp>

#include "cli_run.h"

namespace fs = std::filesystem;

namespace {

using Result = mosaic::test::CliResult;
Result run(const std::string& args) { return mosaic::test::run_mosaic(args); }

class QuantizeCli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("mosaic_test_quantize_cli_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "model");
    const fs::path src = fs::path(MOSAIC_SOURCE_DIR) / "tests/fixtures";
    for (const char* f : {"config.json", "model.safetensors"})
      fs::copy_file(src / "golden/llama_tied" / f, dir_ / "model" / f);
    fs::copy_file(src / "tokenizer/tiny_gpt2/tokenizer.json", dir_ / "model/tokenizer.json");
    std::mt19937 rng(5);
    const std::string alphabet = "ABCDFGJKNPQSUXYZ0123456789";
    std::string text;
    for (int i = 0; i < 4000; ++i) text.push_back(alphabet[rng() % alphabet.size()]);
    write("calib.txt", text);
  }
  void TearDown() override { fs::remove_all(dir_); }

  fs::path write(const std::string& name, const std::string& bytes) {
    std::ofstream(dir_ / name, std::ios::binary) << bytes;
    return dir_ / name;
  }

  // Valid options except where overridden (CLI11 refuses an option given twice).
  std::string base_args(const std::string& out = "q", const std::string& group = "32",
                        const std::string& block = "16x32", const std::string& calib = "calib.txt") const {
    return "quantize -q --model " + (dir_ / "model").string() + " --out " + (dir_ / out).string() + " --group " +
           group + " --block " + block + " --calib-samples 4 --calib-len 64 --calib-file " + (dir_ / calib).string();
  }

  // Exit code 1, one line starting "mosaic: error: " holding every needle, nothing written.
  void expect_error(const std::string& args, std::initializer_list<std::string> needles,
                    const std::string& out = "q") {
    const Result r = run(args);
    EXPECT_EQ(r.code, 1) << args << "\n" << r.out;
    EXPECT_EQ(r.out.rfind("mosaic: error: ", 0), 0u) << r.out;
    ASSERT_FALSE(r.out.empty());
    EXPECT_EQ(r.out.find('\n'), r.out.size() - 1) << "not one line: " << r.out;
    for (const auto& n : needles) EXPECT_NE(r.out.find(n), std::string::npos) << "'" << n << "' not in: " << r.out;
    EXPECT_FALSE(fs::exists(dir_ / out)) << args;
    EXPECT_FALSE(fs::exists(dir_ / (out + ".partial"))) << args;
  }

  fs::path dir_;
};

}  // namespace

TEST_F(QuantizeCli, OptionsOutOfRange) {
  expect_error(base_args() + " --budget 1.5", {"budget", "1.5", "[0, 1]"});
  expect_error(base_args() + " --budget -0.1", {"budget", "[0, 1]"});
  expect_error(base_args() + " --method awq", {"unknown quantization method 'awq'"});
  expect_error(base_args() + " --scorer random", {"random"});
  expect_error(base_args() + " --allocation everywhere", {"allocation 'everywhere'"});
  expect_error(base_args("q", "32", "16by32"), {"--block '16by32'", "RxC"});
  expect_error(base_args() + " --device tpu", {"--device must be cpu, cuda or auto", "'tpu'"});
  expect_error(base_args() + " --rotate r4", {"unknown rotation 'r4'", "none, r1 or r1r2"});
  expect_error(base_args() + " --rotate r1 --rotate-matrix walsh", {"unknown rotation matrix 'walsh'"});
  expect_error(base_args() + " --row-cap 0", {"--row-cap 0", "(0, 1]"});
  expect_error(base_args() + " --row-cap -0.25", {"--row-cap -0.25", "(0, 1]"});
  expect_error(base_args() + " --row-cap 1.5", {"--row-cap 1.5", "(0, 1]"});
  expect_error(base_args() + " --int-scales --asym", {"--int-scales", "symmetric uniform base"});
  expect_error(base_args() + " --int-scales --grid nl4", {"--int-scales", "symmetric uniform base"});
}

// --row-cap F whose caps cannot hold the budget (F = 0.5 lets 1 of 2 and 2 of 3 blocks per block
// row through: 96 of the model's 180 16x32 blocks; 60% is 108) fails before calibration, naming F
// and the budget, under either allocation; a feasible F writes it into quantization_config.
TEST_F(QuantizeCli, RowCapThatCannotHoldTheBudget) {
  expect_error(base_args() + " --budget 0.6 --row-cap 0.5", {"--row-cap 0.5", "--budget 0.6", "at most 96 of its 180"});
  expect_error(base_args() + " --budget 0.6 --row-cap 0.5 --allocation per-layer",
               {"--row-cap 0.5", "--budget 0.6", "mlp.gate_proj"});
  const Result r = run(base_args("capped") + " --budget 0.4 --row-cap 0.5");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find(" 72 residual blocks"), std::string::npos) << r.out;  // floor(0.4 x 180)
  const auto cfg = nlohmann::json::parse(std::ifstream(dir_ / "capped/config.json"));
  EXPECT_EQ(cfg["quantization_config"]["residual"]["row_cap"], 0.5);
  // inspect's residual summary: kept blocks per kind of linear add up to the budget, and no kind's
  // fullest block row is above the cap (ceil(0.5 x block columns)).
  const Result t = run("inspect " + (dir_ / "capped").string());
  ASSERT_EQ(t.code, 0) << t.out;
  EXPECT_NE(t.out.find("fullest block row"), std::string::npos) << t.out;
  const Result j = run("inspect --json " + (dir_ / "capped").string());
  ASSERT_EQ(j.code, 0) << j.out;
  const auto res = nlohmann::json::parse(j.out)["residual"];
  ASSERT_TRUE(res.is_object() && !res.empty()) << j.out;
  int64_t kept = 0;
  for (const auto& [kind, r] : res.items()) {
    kept += r["kept"].get<int64_t>();
    const int64_t of = r["fullest_block_row_of"].get<int64_t>();
    EXPECT_LE(r["fullest_block_row"].get<int64_t>(), (of + 1) / 2) << kind;
  }
  EXPECT_EQ(kept, 72);
}

TEST_F(QuantizeCli, ShapesTheFormatCannotTile) {
  // K = 64 (and 96): group 48 does not divide 64, so the first linear fails, by name.
  expect_error(base_args("q", "48"), {"model.layers.0.self_attn.q_proj.weight", "group size 48",
                                               "does not divide K = 64", "--group 32 fits every linear"});
  expect_error(base_args("q", "32", "16x40"), {"residual block 16x40 does not tile", "model.layers.0"});
  expect_error(base_args("q", "32", "24x32"), {"residual block 24x32 does not tile"});
}

TEST_F(QuantizeCli, CalibrationTextProblems) {
  write("empty.txt", "");
  expect_error(base_args("q", "32", "16x32", "empty.txt"), {"empty.txt", "empty"});
  write("short.txt", "ABCD0123");
  expect_error(base_args("q", "32", "16x32", "short.txt"), {"short.txt", "has only 8 tokens", "64"});
  expect_error(base_args("q", "32", "16x32", "missing.txt"), {"missing.txt", "not found"});
}

TEST_F(QuantizeCli, ModelProblemsAndExistingOutput) {
  expect_error("quantize -q --model " + (dir_ / "nope").string() + " --out " + (dir_ / "q").string(), {"nope"});
  fs::create_directories(dir_ / "existing");
  write("existing/keep.txt", "user data");
  const Result r = run(base_args("existing") + " --method rtn");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("already exists"), std::string::npos) << r.out;
  EXPECT_TRUE(fs::exists(dir_ / "existing/keep.txt")) << "an existing output must be left alone";
}

TEST_F(QuantizeCli, GoodRunsWriteCompleteOutputs) {
  Result r = run(base_args("rtn") + " --method rtn");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("4.500 bits/weight"), std::string::npos) << r.out;  // 4 + 16/32
  EXPECT_TRUE(fs::exists(dir_ / "rtn/config.json"));
  EXPECT_TRUE(fs::exists(dir_ / "rtn/tokenizer.json"));
  EXPECT_FALSE(fs::exists(dir_ / "rtn.partial"));

  r = run(base_args("mosaic") + " --method mosaic --budget 0.25 --allocation global");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("residual blocks"), std::string::npos) << r.out;
  std::ifstream in(dir_ / "mosaic/config.json");
  const auto cfg = nlohmann::json::parse(in);
  EXPECT_EQ(cfg["quantization_config"]["quant_method"], "mosaicquant");
  EXPECT_EQ(cfg["quantization_config"]["residual"]["allocation"], "global");
  EXPECT_EQ(cfg["quantization_config"]["calibration"]["samples"], 4);
  EXPECT_TRUE(cfg["quantization_config"]["rotation"].is_null());

  // With a rotation: recorded, lm_head untied, no scratch directory left.
  r = run(base_args("rot") + " --method rtn --rotate r1r2 --rotate-seed 7");
  ASSERT_EQ(r.code, 0) << r.out;
  const auto rcfg = nlohmann::json::parse(std::ifstream(dir_ / "rot/config.json"));
  EXPECT_EQ(rcfg["quantization_config"]["rotation"]["seed"], 7);
  EXPECT_TRUE(rcfg["quantization_config"]["rotation"]["r2"].is_string());
  EXPECT_EQ(rcfg["tie_word_embeddings"], false);
  EXPECT_FALSE(fs::exists(dir_ / "rot.rotated"));

  // The output is usable: perplexity of the quantized model on the calibration text runs.
  r = run("ppl --model " + (dir_ / "mosaic").string() + " --text-file " + (dir_ / "calib.txt").string() +
          " --ctx 64 --max-windows 2");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("ppl "), std::string::npos) << r.out;
}

// --lm-head-int8: refused together with --lm-head; otherwise the head is written in 8 bits per row
// (the stderr and stdout lines say so, 8 + 16/64 bits/weight here), inspect shows it, ppl runs it.
TEST_F(QuantizeCli, LmHeadInt8) {
  expect_error(base_args() + " --method rtn --lm-head --lm-head-int8",
               {"--lm-head and --lm-head-int8 are mutually exclusive"});
  std::string args = base_args("i8") + " --method rtn --lm-head-int8";
  args.replace(args.find("quantize -q "), 12, "quantize ");  // with the progress lines on stderr
  Result r = run(args);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("lm_head [301, 64] int8 per row from model.embed_tokens.weight: 8.250 bits/weight"),
            std::string::npos) << r.out;
  EXPECT_NE(r.out.find("lm_head quantized (int8 per row): 8.250 bits/weight over 19264 weights"), std::string::npos)
      << r.out;
  const auto cfg = nlohmann::json::parse(std::ifstream(dir_ / "i8/config.json"));
  EXPECT_EQ(cfg["quantization_config"]["lm_head_int8"], true);
  EXPECT_EQ(cfg["tie_word_embeddings"], false);
  r = run("inspect " + (dir_ / "i8").string());
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("lm_head       int8 per row (lm_head.weight_int8 I8 [301, 64]"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("lm_head.weight_int8"), std::string::npos) << r.out;
  r = run("ppl --model " + (dir_ / "i8").string() + " --text-file " + (dir_ / "calib.txt").string() +
          " --ctx 64 --max-windows 1 --device cpu");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("ppl "), std::string::npos) << r.out;
  r = run("quantize --help");
  EXPECT_NE(r.out.find("--lm-head-int8"), std::string::npos) << r.out;
}

// A W4A8 checkpoint runs on either engine: --device auto works on any machine; --device cuda works
// where a GPU is usable and is otherwise refused with the way out (--device cpu), never run wrong.
TEST_F(QuantizeCli, ActivationQuantizedCheckpointsRunOnEitherDevice) {
  Result r = run(base_args("a8") + " --method rtn --act-bits 8");
  ASSERT_EQ(r.code, 0) << r.out;
  const std::string ppl = "ppl --model " + (dir_ / "a8").string() + " --text-file " + (dir_ / "calib.txt").string() +
                          " --ctx 64 --max-windows 1";
  r = run(ppl + " --device cuda");
  if (r.code == 0) {
    EXPECT_NE(r.out.find("ppl "), std::string::npos) << r.out;
  } else {
    EXPECT_EQ(r.code, 1) << r.out;
    EXPECT_NE(r.out.find("--device cpu"), std::string::npos) << r.out;
  }
  r = run(ppl + " --device auto");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("ppl "), std::string::npos) << r.out;
}

// A --ctx past the model's max_position_embeddings (256 for the tiny golden model) runs, with one
// warning line saying the positions past it were never trained; within it, no warning.
TEST_F(QuantizeCli, ContextBeyondTrainedPositionsWarns) {
  const std::string ppl = "ppl --model " + (dir_ / "model").string() + " --text-file " + (dir_ / "calib.txt").string() +
                          " --max-windows 1 --device cpu";
  Result r = run(ppl + " --ctx 512");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("warning: --ctx 512 is longer than the 256 positions"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("ppl "), std::string::npos) << r.out;
  r = run(ppl + " --ctx 64");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(r.out.find("warning:"), std::string::npos) << r.out;
  r = run("generate --model " + (dir_ / "model").string() + " --prompt ABC -n 2 --device cpu --ctx 300");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("warning: --ctx 300 is longer than the 256 positions"), std::string::npos) << r.out;
}
