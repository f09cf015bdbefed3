// Where a MosaicQuant checkpoint keeps its residual blocks, per kind of linear layer: the counts
// `mosaic inspect` prints, and the distribution of kept blocks over block rows, which sets the fused
// GPU kernel's decode time (a block row runs in one CTA). `mosaic bench e2e --res-profile` draws the
// residual of its random layers from such a distribution (docs/results.md, nineteenth session).
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace mosaic {

class Checkpoint;

struct ResidualKind {
  int64_t linears = 0, with_residual = 0, blocks = 0, kept = 0;
  int64_t fullest = 0, fullest_of = 0;  // blocks in the fullest block row of any layer, and that row's blocks
  // Block rows by kept blocks: rows_by_kept[n] = block rows (over every layer of the kind, those
  // without a residual included) keeping n of their blocks_per_row blocks. Empty when the kind's
  // linears differ in K (not the case for LLaMA / Qwen3 checkpoints).
  int64_t blocks_per_row = 0;
  std::vector<int64_t> rows_by_kept;
};

// Keyed by the linear's name inside a decoder layer ("self_attn.q_proj", "mlp.down_proj", ...). Empty
// when no linear keeps a residual block.
using ResidualProfile = std::map<std::string, ResidualKind>;
ResidualProfile residual_profile(const Checkpoint& ck);

// JSON of a profile (inspect --json's "residual" object) and back. from_json accepts that object or a
// whole inspect --json document holding it; it throws mosaic::Error on a malformed or empty profile.
nlohmann::json residual_profile_json(const ResidualProfile& p);
ResidualProfile residual_profile_from_json(const nlohmann::json& j);

// A profile from PATH: a MosaicQuant checkpoint (directory or .safetensors) or a JSON file written by
// `mosaic inspect --json` (or its "residual" object alone). Throws mosaic::Error naming PATH when it
// holds no residual.
ResidualProfile load_residual_profile(const std::string& path);

// Kept blocks per block row for a layer of `rows` block rows of `blocks_per_row` blocks drawn from a
// profile kind: each row takes the kept share of a random row of the profile (rows_by_kept / its
// blocks_per_row), scaled to this layer's blocks per row and rounded. next() returns uniform 64-bit
// values. Used by bench e2e --res-profile for layers of another model's shapes.
std::vector<int64_t> profile_row_counts(const ResidualKind& kind, int64_t rows, int64_t blocks_per_row,
                                        const std::function<uint64_t()>& next);

// The kind of a linear prefix: "model.layers.3.self_attn.q_proj" -> "self_attn.q_proj"; "" when the
// prefix is not inside a decoder layer.
std::string linear_kind(const std::string& prefix);

}  // namespace mosaic
