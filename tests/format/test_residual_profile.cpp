// The residual profile of a MosaicQuant checkpoint (format/residual_profile.h): counts per kind of
// linear, rows by kept blocks (every layer of the kind, those without a residual included), the JSON
// round trip that `mosaic inspect --json` writes and `bench e2e --res-profile` reads, its errors, and
// the per-row counts drawn from a profile for layers of other shapes.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "format/packed_checkpoint.h"
#include "format/residual_profile.h"
#include "io/safetensors.h"
#include "util/error.h"

using namespace mosaic;
namespace fs = std::filesystem;

namespace {

struct Tmp {
  fs::path path = fs::temp_directory_path() / ("mosaic_residual_profile_" + std::to_string(::getpid()));
  Tmp() {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~Tmp() { fs::remove_all(path); }
};

// A layer [N, K] whose 16x64 residual keeps the first kept[r] block columns of block row r.
PackedLinear layer_with_rows(int64_t N, int64_t K, const std::vector<int>& kept, uint64_t seed) {
  PackedLinear p = random_packed_linear(N, K, 64, 16, 64, 0.0, ResidualPattern::kNone, seed);
  p.block_rows = 16;
  p.block_cols = 64;
  p.res_rowptr.assign(1, 0);
  for (int k : kept) {
    for (int c = 0; c < k; ++c) p.res_colidx.push_back(c);
    p.res_rowptr.push_back(int32_t(p.res_colidx.size()));
  }
  const size_t nb = p.res_colidx.size();
  if (nb == 0) {
    p.res_rowptr.clear();
    p.res_colidx.clear();
    return p;
  }
  p.res_qvalues.assign(nb * 16 * 64 / 2, 0x98);
  p.res_scales.assign(nb * 16, 0x2000);
  return p;
}

}  // namespace

TEST(ResidualProfile, KindsRowsByKeptAndJsonRoundTrip) {
  EXPECT_EQ(linear_kind("model.layers.12.self_attn.v_proj"), "self_attn.v_proj");
  EXPECT_EQ(linear_kind("model.layers.0.mlp.down_proj"), "mlp.down_proj");
  EXPECT_EQ(linear_kind("lm_head"), "");
  Tmp tmp;
  const fs::path d = tmp.path / "ck";
  fs::create_directories(d);
  {
    ShardedWriter w(d);
    // two layers: v_proj [32 x 256] (2 block rows of 4 blocks) full in layer 0, one row half in layer 1;
    // down_proj [48 x 128] (3 rows of 2 blocks) one full row in layer 0, no residual in layer 1.
    add_packed_linear(w, "model.layers.0.self_attn.v_proj", layer_with_rows(32, 256, {4, 4}, 1));
    add_packed_linear(w, "model.layers.1.self_attn.v_proj", layer_with_rows(32, 256, {0, 2}, 2));
    add_packed_linear(w, "model.layers.0.mlp.down_proj", layer_with_rows(48, 128, {0, 2, 0}, 3));
    add_packed_linear(w, "model.layers.1.mlp.down_proj", layer_with_rows(48, 128, {0, 0, 0}, 4));
    w.finish();
  }
  const ResidualProfile p = residual_profile(Checkpoint::open(d));
  ASSERT_EQ(p.size(), 2u);
  const ResidualKind& v = p.at("self_attn.v_proj");
  EXPECT_EQ(v.linears, 2);
  EXPECT_EQ(v.with_residual, 2);
  EXPECT_EQ(v.blocks, 16);
  EXPECT_EQ(v.kept, 10);
  EXPECT_EQ(v.fullest, 4);
  EXPECT_EQ(v.blocks_per_row, 4);
  EXPECT_EQ(v.rows_by_kept, (std::vector<int64_t>{1, 0, 1, 0, 2}));
  const ResidualKind& dn = p.at("mlp.down_proj");
  EXPECT_EQ(dn.linears, 2);
  EXPECT_EQ(dn.with_residual, 1);
  EXPECT_EQ(dn.blocks_per_row, 2);
  EXPECT_EQ(dn.rows_by_kept, (std::vector<int64_t>{5, 0, 1}));  // the layer without a residual: 3 empty rows
  // JSON: what inspect --json writes under "residual", read back alone or inside the whole document.
  const nlohmann::json j = residual_profile_json(p);
  EXPECT_EQ(j["self_attn.v_proj"]["rows_by_kept"], nlohmann::json({1, 0, 1, 0, 2}));
  for (const nlohmann::json& doc : {j, nlohmann::json{{"config", 1}, {"residual", j}}}) {
    const ResidualProfile q = residual_profile_from_json(doc);
    ASSERT_EQ(q.size(), 2u);
    EXPECT_EQ(q.at("mlp.down_proj").rows_by_kept, dn.rows_by_kept);
    EXPECT_EQ(q.at("self_attn.v_proj").kept, 10);
  }
  // load_residual_profile: the checkpoint itself, or the JSON file.
  EXPECT_EQ(load_residual_profile(d.string()).at("self_attn.v_proj").rows_by_kept, v.rows_by_kept);
  const fs::path jf = tmp.path / "profile.json";
  std::ofstream(jf) << nlohmann::json{{"residual", j}}.dump();
  EXPECT_EQ(load_residual_profile(jf.string()).at("mlp.down_proj").rows_by_kept, dn.rows_by_kept);
}

TEST(ResidualProfile, ClearErrors) {
  Tmp tmp;
  const auto error_of = [](const auto& f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  EXPECT_NE(error_of([] { load_residual_profile("/nonexistent/profile.json"); }).find("does not exist"),
            std::string::npos);
  const fs::path bad = tmp.path / "bad.json";
  std::ofstream(bad) << "{not json";
  EXPECT_NE(error_of([&] { load_residual_profile(bad.string()); }).find("not valid JSON"), std::string::npos);
  EXPECT_NE(error_of([] { residual_profile_from_json(nlohmann::json::object()); }).find("expected an object"),
            std::string::npos);
  EXPECT_NE(error_of([] { residual_profile_from_json({{"mlp.up_proj", {{"kept", 3}}}}); }).find("rows_by_kept"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              residual_profile_from_json({{"mlp.up_proj", {{"blocks_per_row", 2}, {"rows_by_kept", {1, 2}}}}});
            }).find("blocks_per_row + 1 entries"),
            std::string::npos);
  const fs::path d = tmp.path / "dense";  // a checkpoint without a residual
  fs::create_directories(d);
  {
    ShardedWriter w(d);
    add_packed_linear(w, "model.layers.0.mlp.up_proj", layer_with_rows(32, 128, {0, 0}, 5));
    w.finish();
  }
  EXPECT_NE(error_of([&] { load_residual_profile(d.string()); }).find("keeps no residual block"), std::string::npos);
}

// Rows drawn from a profile at other shapes: a kind whose rows are all full gives full rows; one whose
// rows are a quarter empty and three quarters half full gives, scaled to 64 blocks per row, rows of 0
// and 32 in about those shares.
TEST(ResidualProfile, RowCountsScaleToOtherShapes) {
  ResidualKind full;
  full.blocks_per_row = 9;
  full.rows_by_kept.assign(10, 0);
  full.rows_by_kept[9] = 5;
  std::mt19937_64 rng(7);
  const auto next = [&] { return uint64_t(rng()); };
  for (int64_t n : profile_row_counts(full, 100, 64, next)) EXPECT_EQ(n, 64);
  ResidualKind mixed;
  mixed.blocks_per_row = 4;
  mixed.rows_by_kept = {1, 0, 3, 0, 0};
  const std::vector<int64_t> rows = profile_row_counts(mixed, 4000, 64, next);
  int64_t empty = 0, half = 0;
  for (int64_t n : rows) {
    EXPECT_TRUE(n == 0 || n == 32) << n;
    empty += n == 0, half += n == 32;
  }
  EXPECT_NEAR(double(empty) / 4000.0, 0.25, 0.03);
  EXPECT_EQ(empty + half, 4000);
  ResidualKind none;
  EXPECT_THROW(profile_row_counts(none, 4, 64, next), Error);
}
