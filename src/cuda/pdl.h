// Host side of programmatic dependent launch (device side and protocol: cuda/pdl.cuh). Plain C++.
#pragma once
#include "util/env.h"

namespace mosaic::cuda {

// MOSAIC_PDL=0 turns programmatic dependent launch off everywhere (read per call: tests switch it).
inline bool pdl_env_enabled() { return env_switch_on("MOSAIC_PDL"); }

// MOSAIC_GEMM_PDL=0 keeps PDL for the other kernels but launches the engine's GEMMs plainly
// (for same-run comparisons).
inline bool gemm_pdl_env_enabled() { return pdl_env_enabled() && env_switch_on("MOSAIC_GEMM_PDL"); }

}  // namespace mosaic::cuda
