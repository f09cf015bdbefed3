// Host side of programmatic dependent launch (device side and protocol: cuda/pdl.cuh). Plain C++.
#pragma once
#include <cstdlib>

namespace mosaic::cuda {

// MOSAIC_PDL=0 turns programmatic dependent launch off everywhere (read per call: tests switch it).
inline bool pdl_env_enabled() {
  const char* e = std::getenv("MOSAIC_PDL");
  return !(e && e[0] == '0');
}

// MOSAIC_GEMM_PDL=0 keeps PDL for the other kernels but launches the engine's GEMMs plainly
// (for same-run comparisons).
inline bool gemm_pdl_env_enabled() {
  const char* e = std::getenv("MOSAIC_GEMM_PDL");
  return pdl_env_enabled() && !(e && e[0] == '0');
}

}  // namespace mosaic::cuda
