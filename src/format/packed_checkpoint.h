// Writing and reading the quantized linear layers of a MosaicQuant checkpoint (docs/format.md
// "Quantized linear layer"): a PackedLinear <-> its safetensors tensors under a prefix.
#pragma once
#include <string>

#include "format/packed_linear.h"
#include "io/safetensors.h"

namespace mosaic {

// Adds <prefix>.qweight, .scales, (.qzeros), and the four res_* tensors when a block is kept.
// validate()s p first.
void add_packed_linear(ShardedWriter& w, const std::string& prefix, const PackedLinear& p);

// True when the checkpoint stores <prefix> as a quantized layer (<prefix>.qweight present).
bool has_packed_linear(const Checkpoint& ckpt, const std::string& prefix);

// Reads a layer back: dtypes and shapes are checked against [N, K] (G, Br and Bc are inferred
// from the tensor shapes), then validate()d; every error names the tensor.
PackedLinear read_packed_linear(const Checkpoint& ckpt, const std::string& prefix, int64_t N, int64_t K);

}  // namespace mosaic
