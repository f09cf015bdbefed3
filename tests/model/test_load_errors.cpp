// Bad checkpoints: a missing tensor or a wrong shape is a mosaic::Error naming the tensor (and
// both shapes), never a crash. The fixtures are rewritten into a temporary directory.
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <unistd.h>

#include "io/safetensors.h"
#include "model/model.h"
#include "test_util.h"
#include "util/error.h"

namespace mosaic {
namespace {

namespace fs = std::filesystem;

// Copies golden model `name` to a temp dir, passing each tensor through `edit` (which may rename,
// reshape or drop it by returning false).
fs::path rewritten(const std::string& name, const std::string& tag,
                   const std::function<bool(std::string&, std::vector<int64_t>&, std::string&)>& edit) {
  const fs::path src = test::golden_dir(name);
  const fs::path dst = fs::temp_directory_path() / ("mosaic_model_test_" + tag + "_" + std::to_string(::getpid()));
  fs::remove_all(dst);
  fs::create_directories(dst);
  fs::copy_file(src / "config.json", dst / "config.json");
  auto f = SafetensorsFile::open(src / "model.safetensors");
  SafetensorsWriter w;
  for (const auto& [n, t] : f->tensors()) {
    std::string tn = n;
    std::vector<int64_t> shape = t.shape;
    std::string bytes(reinterpret_cast<const char*>(t.data), t.nbytes);
    if (edit(tn, shape, bytes)) w.add(tn, t.dtype, shape, bytes);
  }
  w.write(dst / "model.safetensors");
  return dst;
}

std::string load_error(const fs::path& dir) {
  try {
    Model::load(dir);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(LoadErrors, MissingTensorIsNamed) {
  const fs::path d = rewritten("llama_tied", "missing", [](std::string& n, auto&, auto&) {
    return n != "model.layers.1.mlp.up_proj.weight";
  });
  const std::string e = load_error(d);
  EXPECT_NE(e.find("model.layers.1.mlp.up_proj.weight"), std::string::npos) << e;
  EXPECT_NE(e.find("missing"), std::string::npos) << e;
  fs::remove_all(d);
}

TEST(LoadErrors, MissingQwenNormAndUntiedHeadAreNamed) {
  const fs::path d = rewritten("qwen3_untied_bf16", "qknorm", [](std::string& n, auto&, auto&) {
    return n != "model.layers.2.self_attn.k_norm.weight";
  });
  EXPECT_NE(load_error(d).find("model.layers.2.self_attn.k_norm.weight"), std::string::npos) << load_error(d);
  fs::remove_all(d);
  const fs::path d2 = rewritten("qwen3_untied_bf16", "head", [](std::string& n, auto&, auto&) { return n != "lm_head.weight"; });
  EXPECT_NE(load_error(d2).find("lm_head.weight"), std::string::npos) << load_error(d2);
  fs::remove_all(d2);
}

TEST(LoadErrors, WrongShapeNamesTensorAndBothShapes) {
  // k_proj stored transposed: [64, 32] instead of [32, 64] (same byte count).
  const fs::path d = rewritten("llama3_untied_scaled", "shape", [](std::string& n, std::vector<int64_t>& s, auto&) {
    if (n == "model.layers.0.self_attn.k_proj.weight") s = {s[1], s[0]};
    return true;
  });
  const std::string e = load_error(d);
  EXPECT_NE(e.find("model.layers.0.self_attn.k_proj.weight"), std::string::npos) << e;
  EXPECT_NE(e.find("[64, 32]"), std::string::npos) << e;
  EXPECT_NE(e.find("[32, 64]"), std::string::npos) << e;
  fs::remove_all(d);
}

TEST(LoadErrors, UnsupportedDtypeIsNamed) {
  // The final norm as I32 (same bytes as F32): loading must refuse it by name.
  const fs::path src = test::golden_dir("llama_tied");
  const fs::path d = fs::temp_directory_path() / ("mosaic_model_test_dtype_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  fs::copy_file(src / "config.json", d / "config.json");
  auto f = SafetensorsFile::open(src / "model.safetensors");
  SafetensorsWriter w;
  for (const auto& [n, t] : f->tensors())
    w.add(n, n == "model.norm.weight" ? DType::I32 : t.dtype, t.shape,
          std::string(reinterpret_cast<const char*>(t.data), t.nbytes));
  w.write(d / "model.safetensors");
  const std::string e = load_error(d);
  EXPECT_NE(e.find("model.norm.weight"), std::string::npos) << e;
  fs::remove_all(d);
}

TEST(LoadErrors, SetLinearChecksShape) {
  Model m = Model::load(test::golden_dir("llama_tied"));
  auto w = std::make_shared<const std::vector<float>>(std::vector<float>(64 * 65, 1.0f));
  EXPECT_THROW(m.set_linear(0, LinearId::O, std::make_unique<DenseLinear>(64, 65, w)), Error);
  EXPECT_THROW(m.set_linear(7, LinearId::O, nullptr), Error);
}

}  // namespace
}  // namespace mosaic
