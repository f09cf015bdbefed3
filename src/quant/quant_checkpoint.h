// Writing and reading the quantized linear layers of a MosaicQuant checkpoint (docs/format.md
// "Quantized linear layer"): a PackedLinear <-> its safetensors tensors under a prefix.
#pragma once
#include <string>

#include "io/safetensors.h"
#include "model/quant_linear.h"
#include "quant/packed_linear.h"

namespace mosaic {

// Adds <prefix>.qweight, .scales, (.qzeros), and the four res_* tensors when a block is kept.
// validate()s p first.
void add_packed_linear(ShardedWriter& w, const std::string& prefix, const PackedLinear& p);

// Reads a layer back (shapes infer G, Br, Bc; everything checked like the engine's loader).
PackedLinear read_packed_linear(const Checkpoint& ckpt, const std::string& prefix, int64_t N, int64_t K);

// Views of p's vectors for the engine's QuantLinear (valid while p lives).
QuantTensors tensors_of(const PackedLinear& p);

}  // namespace mosaic
