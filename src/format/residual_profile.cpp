#include "format/residual_profile.h"

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "util/error.h"

namespace mosaic {

std::string linear_kind(const std::string& prefix) {
  static const std::string layers = "model.layers.";
  if (prefix.rfind(layers, 0) != 0) return "";
  const size_t dot = prefix.find('.', layers.size());  // after "model.layers.N"
  return dot == std::string::npos ? "" : prefix.substr(dot + 1);
}

ResidualProfile residual_profile(const Checkpoint& ck) {
  ResidualProfile out;
  std::map<std::string, std::vector<std::pair<int64_t, int64_t>>> shapes;  // kind -> [N, K] of its linears
  std::map<std::string, std::vector<std::pair<const int32_t*, int64_t>>> rows;  // kind -> (rowptr, block rows)
  int64_t br = 0, bc = 0;  // the checkpoint's residual block shape (the same for every linear)
  for (const auto& name : ck.names()) {
    if (!name.ends_with(".qweight")) continue;
    const std::string prefix = name.substr(0, name.size() - 8);
    const std::string kind = linear_kind(prefix);
    if (kind.empty()) continue;
    const TensorView& qw = ck.get(name);
    if (qw.shape.size() != 2) continue;
    const int64_t N = qw.shape[0], K = qw.shape[1] * 2;
    ResidualKind& r = out[kind];
    ++r.linears;
    shapes[kind].push_back({N, K});
    if (!ck.has(prefix + ".res_rowptr") || !ck.has(prefix + ".res_qvalues")) continue;
    const TensorView& rp = ck.get(prefix + ".res_rowptr");
    const TensorView& rq = ck.get(prefix + ".res_qvalues");
    if (rp.dtype != DType::I32 || rp.shape.size() != 1 || rq.shape.size() != 3) continue;
    const int64_t lbr = rq.shape[1], lbc = rq.shape[2] * 2;
    if (lbr <= 0 || lbc <= 0 || N % lbr != 0 || K % lbc != 0 || rp.shape[0] != N / lbr + 1) continue;
    br = lbr, bc = lbc;
    const auto* ptr = reinterpret_cast<const int32_t*>(rp.data);
    ++r.with_residual;
    r.kept += ptr[N / lbr] - ptr[0];
    for (int64_t i = 0; i < N / lbr; ++i)
      if (ptr[i + 1] - ptr[i] > r.fullest) r.fullest = ptr[i + 1] - ptr[i], r.fullest_of = K / lbc;
    rows[kind].push_back({ptr, N / lbr});
  }
  if (br == 0) return {};
  for (auto& [kind, r] : out) {  // every linear of the kind counts, with a residual or without
    int64_t per_row = -1, all_rows = 0;  // blocks per block row (0 if the kind's K differ), block rows
    for (const auto& [N, K] : shapes[kind]) {
      r.blocks += (N / br) * (K / bc);
      all_rows += N / br;
      per_row = per_row == -1 || per_row == K / bc ? K / bc : 0;
    }
    if (per_row <= 0) continue;
    r.blocks_per_row = per_row;
    r.rows_by_kept.assign(size_t(per_row + 1), 0);
    int64_t rows_kept = 0;
    for (const auto& [ptr, n] : rows[kind])
      for (int64_t i = 0; i < n; ++i) {
        const int64_t k = ptr[i + 1] - ptr[i];
        if (k >= 0 && k <= per_row) ++r.rows_by_kept[size_t(k)], ++rows_kept;
      }
    r.rows_by_kept[0] += all_rows - rows_kept;  // the rows of linears without a residual
  }
  return out;
}

ResidualProfile load_residual_profile(const std::string& path) {
  namespace fs = std::filesystem;
  MOSAIC_CHECK(fs::exists(path), "residual profile: ", path, " does not exist");
  if (fs::is_regular_file(path) && fs::path(path).extension() == ".json") {
    std::ifstream in(path);
    nlohmann::json j;
    try {
      in >> j;
    } catch (const nlohmann::json::exception& e) {
      fail("residual profile: ", path, " is not valid JSON: ", e.what());
    }
    return residual_profile_from_json(j);
  }
  ResidualProfile p = residual_profile(Checkpoint::open(path));
  bool any = false;
  for (const auto& [kind, r] : p) any = any || (r.with_residual > 0 && r.blocks_per_row > 0);
  MOSAIC_CHECK(any, "residual profile: ", path, " keeps no residual block (not a MosaicQuant checkpoint?)");
  return p;
}

std::vector<int64_t> profile_row_counts(const ResidualKind& kind, int64_t rows, int64_t blocks_per_row,
                                        const std::function<uint64_t()>& next) {
  MOSAIC_CHECK(kind.blocks_per_row > 0 && int64_t(kind.rows_by_kept.size()) == kind.blocks_per_row + 1,
               "profile_row_counts: the profile kind has no rows_by_kept");
  int64_t total = 0;
  for (int64_t n : kind.rows_by_kept) total += n;
  MOSAIC_CHECK(total > 0, "profile_row_counts: the profile kind has no block rows");
  std::vector<int64_t> out(static_cast<size_t>(rows), 0);
  for (auto& n : out) {
    int64_t pick = int64_t(next() % uint64_t(total)), k = 0;
    while (pick >= kind.rows_by_kept[size_t(k)]) pick -= kind.rows_by_kept[size_t(k++)];
    // k of blocks_per_row kept in the profile's row -> the same share of this layer's row
    n = (2 * k * blocks_per_row + kind.blocks_per_row) / (2 * kind.blocks_per_row);
  }
  return out;
}

nlohmann::json residual_profile_json(const ResidualProfile& p) {
  nlohmann::json res = nlohmann::json::object();
  for (const auto& [kind, r] : p)
    if (r.with_residual > 0) {
      nlohmann::json k = {{"linears", r.linears},           {"with_residual", r.with_residual},
                          {"blocks", r.blocks},             {"kept", r.kept},
                          {"fullest_block_row", r.fullest}, {"fullest_block_row_of", r.fullest_of}};
      if (r.blocks_per_row > 0) {
        k["blocks_per_row"] = r.blocks_per_row;
        k["rows_by_kept"] = r.rows_by_kept;
      }
      res[kind] = std::move(k);
    }
  return res;
}

ResidualProfile residual_profile_from_json(const nlohmann::json& j) {
  const nlohmann::json& res = j.is_object() && j.contains("residual") ? j["residual"] : j;
  MOSAIC_CHECK(res.is_object() && !res.empty(),
               "residual profile: expected an object of linear kinds (mosaic inspect --json's \"residual\")");
  ResidualProfile p;
  for (const auto& [kind, k] : res.items()) {
    MOSAIC_CHECK(k.is_object() && k.contains("blocks_per_row") && k.contains("rows_by_kept"), "residual profile: '",
                 kind, "' has no blocks_per_row / rows_by_kept (inspect --json of this version writes them)");
    ResidualKind r;
    r.blocks_per_row = k["blocks_per_row"].get<int64_t>();
    r.rows_by_kept = k["rows_by_kept"].get<std::vector<int64_t>>();
    MOSAIC_CHECK(r.blocks_per_row > 0 && int64_t(r.rows_by_kept.size()) == r.blocks_per_row + 1,
                 "residual profile: '", kind, "': rows_by_kept must have blocks_per_row + 1 entries");
    int64_t rows = 0;
    for (int64_t n : r.rows_by_kept) {
      MOSAIC_CHECK(n >= 0, "residual profile: '", kind, "': negative row count");
      rows += n;
    }
    MOSAIC_CHECK(rows > 0, "residual profile: '", kind, "': no block rows");
    r.linears = k.value("linears", int64_t(0));
    r.with_residual = k.value("with_residual", int64_t(0));
    r.blocks = k.value("blocks", int64_t(0));
    r.kept = k.value("kept", int64_t(0));
    r.fullest = k.value("fullest_block_row", int64_t(0));
    r.fullest_of = k.value("fullest_block_row_of", int64_t(0));
    p[kind] = std::move(r);
  }
  return p;
}

}  // namespace mosaic
