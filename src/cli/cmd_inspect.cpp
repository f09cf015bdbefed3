// mosaic inspect: what is in a checkpoint directory, a .safetensors file or a config.json.
// Prints the model configuration and the tensors; layers repeat the same tensors, so by default
// names that differ only in their layer number are folded into one row ("layers.{0..29}.").
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "format/residual_profile.h"
#include "io/hf_config.h"
#include "io/safetensors.h"
#include "util/error.h"
#include "util/progress.h"

namespace mosaic::cli {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

struct InspectOptions {
  std::string path;
  bool all = false;
  bool json = false;
};

// Splits a name into its numeric path segments and the rest: "model.layers.12.mlp.w" ->
// pattern "model.layers.#.mlp.w", numbers {12}.
std::string layer_pattern(const std::string& name, std::vector<long>* numbers) {
  std::string out;
  size_t i = 0;
  while (i < name.size()) {
    size_t j = name.find('.', i);
    if (j == std::string::npos) j = name.size();
    const std::string seg = name.substr(i, j - i);
    const bool numeric = !seg.empty() && seg.size() < 10 &&
                         seg.find_first_not_of("0123456789") == std::string::npos;
    if (numeric) {
      numbers->push_back(std::stol(seg));
      out += '#';
    } else {
      out += seg;
    }
    if (j < name.size()) out += '.';
    i = j + 1;
  }
  return out;
}

// Natural order: "layers.2" before "layers.10".
bool natural_less(const std::string& a, const std::string& b) {
  size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    if (std::isdigit(uint8_t(a[i])) && std::isdigit(uint8_t(b[j]))) {
      size_t ie = i, je = j;
      while (ie < a.size() && std::isdigit(uint8_t(a[ie]))) ++ie;
      while (je < b.size() && std::isdigit(uint8_t(b[je]))) ++je;
      const std::string na = a.substr(i, ie - i), nb = b.substr(j, je - j);
      if (na.size() != nb.size()) return na.size() < nb.size();
      if (na != nb) return na < nb;
      i = ie;
      j = je;
    } else {
      if (a[i] != b[j]) return a[i] < b[j];
      ++i;
      ++j;
    }
  }
  return a.size() - i < b.size() - j;
}

// "{0..29}" for a contiguous run, else "{0,2,5}" (short) or "{0..31 (20 of them)}".
std::string number_set(std::vector<long> v) {
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
  if (v.size() == 1) return std::to_string(v[0]);
  if (v.back() - v.front() + 1 == long(v.size()))
    return "{" + std::to_string(v.front()) + ".." + std::to_string(v.back()) + "}";
  if (v.size() <= 6) {
    std::string s = "{";
    for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
    return s + "}";
  }
  return "{" + std::to_string(v.front()) + ".." + std::to_string(v.back()) + " (" +
         std::to_string(v.size()) + " of them)}";
}

struct Row {
  std::string name;
  std::string dtype;
  std::string shape;
  size_t count = 1;
  uint64_t bytes = 0;  // total over the folded tensors
};

// Folds tensors that differ only in layer numbers (and agree on dtype and shape) into one row.
std::vector<Row> fold(const std::vector<const TensorView*>& tensors) {
  struct Group {
    std::string pattern;
    std::vector<std::vector<long>> numbers;
    Row row;
  };
  std::vector<Group> groups;
  std::map<std::string, size_t> by_key;
  for (const TensorView* t : tensors) {
    std::vector<long> nums;
    const std::string pattern = layer_pattern(t->name, &nums);
    const std::string key = pattern + "|" + std::string(dtype_name(t->dtype)) + "|" + t->shape_str();
    auto [it, inserted] = by_key.emplace(key, groups.size());
    if (inserted) groups.push_back({pattern, {}, {t->name, std::string(dtype_name(t->dtype)), t->shape_str(), 0, 0}});
    Group& g = groups[it->second];
    g.numbers.push_back(nums);
    g.row.count++;
    g.row.bytes += t->nbytes;
  }
  std::vector<Row> rows;
  for (Group& g : groups) {
    if (g.row.count > 1) {
      // Rebuild the name with each numeric position shown as the set of values seen there.
      std::string name;
      size_t k = 0;
      for (size_t i = 0; i < g.pattern.size(); ++i) {
        if (g.pattern[i] != '#') {
          name += g.pattern[i];
          continue;
        }
        std::vector<long> at_k;
        for (const auto& n : g.numbers) at_k.push_back(n[k]);
        name += number_set(at_k);
        ++k;
      }
      g.row.name = name;
    }
    rows.push_back(g.row);
  }
  return rows;
}

std::string rope_str(const ModelConfig& c) {
  char buf[256];
  std::snprintf(buf, sizeof buf, "theta %g", double(c.rope_theta));
  std::string s = buf;
  if (c.rope_scaling) {
    std::snprintf(buf, sizeof buf, ", llama3 scaling (factor %g, low %g, high %g, original max %d)",
                  double(c.rope_scaling->factor), double(c.rope_scaling->low_freq_factor),
                  double(c.rope_scaling->high_freq_factor),
                  c.rope_scaling->original_max_position_embeddings);
    s += buf;
  }
  return s;
}

json config_json(const ModelConfig& c) {
  json j = {{"architecture", c.architecture},
            {"layers", c.num_layers},
            {"hidden_size", c.hidden_size},
            {"intermediate_size", c.intermediate_size},
            {"heads", c.num_heads},
            {"kv_heads", c.num_kv_heads},
            {"head_dim", c.head_dim},
            {"vocab_size", c.vocab_size},
            {"max_position_embeddings", c.max_position_embeddings},
            {"rms_norm_eps", c.rms_norm_eps},
            {"rope_theta", c.rope_theta},
            {"tie_word_embeddings", c.tie_word_embeddings},
            {"qk_norm", c.qk_norm},
            {"torch_dtype", c.torch_dtype},
            {"quantization_config", c.quantization_config}};
  if (c.rope_scaling)
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", c.rope_scaling->factor},
                         {"low_freq_factor", c.rope_scaling->low_freq_factor},
                         {"high_freq_factor", c.rope_scaling->high_freq_factor},
                         {"original_max_position_embeddings",
                          c.rope_scaling->original_max_position_embeddings}};
  else
    j["rope_scaling"] = nullptr;
  return j;
}

void print_config(const ModelConfig& c, const fs::path& path) {
  std::printf("config        %s\n", path.string().c_str());
  std::printf("architecture  %s%s\n", c.architecture.c_str(), c.qk_norm ? " (q/k RMSNorm)" : "");
  std::printf("layers        %d\n", c.num_layers);
  std::printf("hidden        %d (MLP %d)\n", c.hidden_size, c.intermediate_size);
  std::printf("heads         %d query, %d key/value (GQA group %d), head_dim %d\n", c.num_heads,
              c.num_kv_heads, c.num_heads / c.num_kv_heads, c.head_dim);
  std::printf("vocab         %d\n", c.vocab_size);
  std::printf("context       %d\n", c.max_position_embeddings);
  std::printf("rope          %s\n", rope_str(c).c_str());
  std::printf("rms_norm_eps  %g\n", double(c.rms_norm_eps));
  std::printf("tied lm_head  %s\n", c.tie_word_embeddings ? "yes" : "no");
  const json& q = c.quantization_config;
  auto flag = [&](const char* key) { return q.is_object() && q.contains(key) && q[key] == true; };
  if (flag("lm_head_int8"))
    std::printf("lm_head       int8 per row (lm_head.weight_int8 I8 [%d, %d] + lm_head.weight_scale F16 [%d])\n",
                c.vocab_size, c.hidden_size, c.vocab_size);
  else if (flag("lm_head"))
    std::printf("lm_head       4-bit MosaicQuant (lm_head.qweight ...)\n");
  if (!c.torch_dtype.empty()) std::printf("dtype         %s\n", c.torch_dtype.c_str());
  if (!c.quantization_config.is_null())
    std::printf("quantization  %s\n", c.quantization_config.dump().c_str());
}

// The residual of a MosaicQuant checkpoint per kind of linear comes from format/residual_profile.h
// (blocks kept, the fullest block row, rows by kept blocks: what `bench e2e --res-profile` reads).
void run_inspect(const InspectOptions& o) {
  const fs::path path = o.path;
  MOSAIC_CHECK(fs::exists(path), path.string(), " does not exist");

  // Decide what PATH holds: a config, tensors, or both (a directory).
  std::optional<fs::path> config_path;
  bool has_tensors = false;
  if (fs::is_directory(path)) {
    if (fs::exists(path / "config.json")) config_path = path / "config.json";
    for (const auto& e : fs::directory_iterator(path))
      if (e.path().extension() == ".safetensors" ||
          e.path().filename() == "model.safetensors.index.json")
        has_tensors = true;
    MOSAIC_CHECK(config_path || has_tensors, path.string(),
                 ": no config.json and no .safetensors files in this directory");
  } else if (path.extension() == ".safetensors" || path.string().ends_with(".index.json")) {
    has_tensors = true;
  } else {
    config_path = path;  // anything else is taken for a config.json
  }

  std::optional<ModelConfig> config;
  if (config_path) config = ModelConfig::load(*config_path);
  std::optional<Checkpoint> ck;
  if (has_tensors) ck = Checkpoint::open(path);

  std::vector<const TensorView*> tensors;
  uint64_t params = 0, bytes = 0;
  std::map<std::string, uint64_t> bytes_by_dtype;
  if (ck) {
    for (const auto& name : ck->names()) tensors.push_back(&ck->get(name));
    std::sort(tensors.begin(), tensors.end(),
              [](const TensorView* a, const TensorView* b) { return natural_less(a->name, b->name); });
    for (const TensorView* t : tensors) {
      params += uint64_t(t->numel());
      bytes += t->nbytes;
      bytes_by_dtype[std::string(dtype_name(t->dtype))] += t->nbytes;
    }
  }

  if (o.json) {
    json out = {{"path", path.string()}};
    out["config"] = config ? config_json(*config) : json(nullptr);
    if (ck) {
      json list = json::array();
      for (const TensorView* t : tensors)
        list.push_back({{"name", t->name},
                        {"dtype", std::string(dtype_name(t->dtype))},
                        {"shape", t->shape},
                        {"bytes", t->nbytes}});
      out["tensors"] = std::move(list);
      out["files"] = ck->files().size();
      out["total_params"] = params;
      out["total_bytes"] = bytes;
      json meta = json::object();
      for (const auto& f : ck->files())
        for (const auto& [k, v] : f->metadata()) meta[k] = v;
      out["metadata"] = std::move(meta);
      json res = residual_profile_json(residual_profile(*ck));
      if (!res.empty()) out["residual"] = std::move(res);
    }
    std::printf("%s\n", out.dump(2).c_str());
    return;
  }

  if (config) print_config(*config, *config_path);
  if (!ck) return;
  if (config) std::printf("\n");
  std::printf("tensors       %zu in %zu file%s under %s\n", tensors.size(), ck->files().size(),
              ck->files().size() == 1 ? "" : "s", ck->root().string().c_str());
  for (const auto& f : ck->files())
    if (!f->metadata().empty()) {
      json meta(f->metadata());
      std::printf("metadata      %s: %s\n", f->path().filename().string().c_str(), meta.dump().c_str());
    }
  std::vector<Row> rows;
  if (o.all || tensors.size() <= 12) {
    for (const TensorView* t : tensors)
      rows.push_back({t->name, std::string(dtype_name(t->dtype)), t->shape_str(), 1, t->nbytes});
  } else {
    rows = fold(tensors);
  }
  size_t w = 4;
  for (const Row& r : rows) w = std::max(w, r.name.size());
  std::printf("\n%-*s  %-7s %-20s %5s  %s\n", int(w), "name", "dtype", "shape", "count", "bytes");
  for (const Row& r : rows)
    std::printf("%-*s  %-7s %-20s %5zu  %s\n", int(w), r.name.c_str(), r.dtype.c_str(),
                r.shape.c_str(), r.count, format_bytes(int64_t(r.bytes)).c_str());
  std::printf("\ntotal         %llu parameters, %s (%llu bytes)", (unsigned long long)params,
              format_bytes(int64_t(bytes)).c_str(), (unsigned long long)bytes);
  std::string by;
  for (const auto& [d, b] : bytes_by_dtype) by += (by.empty() ? "" : ", ") + d + " " + format_bytes(int64_t(b));
  std::printf("%s\n", bytes_by_dtype.size() > 1 ? ("; " + by).c_str() : "");
  if (!o.all && rows.size() < tensors.size())
    std::printf("(names differing only in layer number are folded; --all lists every tensor)\n");
  const auto res = residual_profile(*ck);
  bool any = false;
  for (const auto& [kind, r] : res) any = any || r.with_residual > 0;
  if (!any) return;
  std::printf("\nresidual      kept blocks per kind of linear, and the fullest block row (the fused GPU kernel deals\n"
              "              clustered rows out evenly over its CTAs, but at batch 1 a CTA with a full row still does\n"
              "              up to twice the work; quantize --row-cap bounds it)\n");
  for (const auto& [kind, r] : res) {
    if (r.with_residual == 0) {
      std::printf("  %-24s none in %lld linears\n", kind.c_str(), (long long)r.linears);
      continue;
    }
    std::printf("  %-24s %6.2f%% of %lld blocks; fullest block row %lld of %lld (%.0f%%); %lld of %lld linears\n",
                kind.c_str(), 100.0 * double(r.kept) / double(r.blocks), (long long)r.blocks, (long long)r.fullest,
                (long long)r.fullest_of, r.fullest_of ? 100.0 * double(r.fullest) / double(r.fullest_of) : 0.0,
                (long long)r.with_residual, (long long)r.linears);
    if (r.blocks_per_row > 0) {  // the shape of the clustering: how many block rows keep n of their blocks
      std::string hist;
      for (size_t n = 0; n < r.rows_by_kept.size(); ++n)
        if (r.rows_by_kept[n] > 0) hist += (hist.empty() ? "" : ", ") + std::to_string(n) + ": " + std::to_string(r.rows_by_kept[n]);
      std::printf("  %-24s block rows by kept blocks (of %lld): %s\n", "", (long long)r.blocks_per_row, hist.c_str());
    }
  }
}

}  // namespace

void add_inspect_command(CLI::App& app) {
  auto opts = std::make_shared<InspectOptions>();
  auto* cmd = app.add_subcommand(
      "inspect",
      "Show what a checkpoint holds: the model config (architecture, layers, hidden size, "
      "heads/kv heads, head_dim, vocab, RoPE, tied embeddings, quantization_config) and its "
      "tensors (name, dtype, shape, bytes) with totals.\n"
      "PATH is a checkpoint directory (config.json + model.safetensors or sharded "
      "model-*.safetensors with model.safetensors.index.json), a single .safetensors file, or a "
      "config.json. Every file is fully validated: a corrupt or truncated file is reported, never "
      "trusted.");
  cmd->add_option("path", opts->path, "Checkpoint directory, .safetensors file or config.json")
      ->required();
  cmd->add_flag("--all", opts->all,
                "List every tensor instead of folding names that differ only in the layer number");
  cmd->add_flag("--json", opts->json, "Print one JSON object (config, every tensor, totals)");
  cmd->callback([opts] { run_inspect(*opts); });
}

}  // namespace mosaic::cli
