// Device side of the decode step's L2 look-ahead (what and why: cuda/l2_prefetch.h).
#pragma once
#include <cuda_runtime.h>

#include "cuda/l2_prefetch.h"

namespace mosaic::cuda {

// One bulk prefetch into L2 (sm_90; `bytes` a multiple of 16, p 16-byte aligned): the TMA unit
// fetches the bytes; the issuing thread does not wait and holds nothing.
__device__ __forceinline__ void l2_prefetch_bulk(const void* p, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(p), "r"(bytes) : "memory");
#endif
}

// This CTA's share of a piece table (l2_prefetch.h L2Piece; the host cut the spans into pieces).
// Call from all 32 lanes of one warp of every CTA: lane l takes pieces part + parts * (l + 32 k),
// so the CTAs of the grid share the table evenly. A few registers, no division (the host did
// the splitting: an inlined split of the spans changed the stream kernel's registers and made
// some instantiations spill).
__device__ __forceinline__ void issue_l2_pieces(const L2Piece* table, int n, int lane) {
  const uint32_t part = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const uint32_t parts = gridDim.x * gridDim.y * gridDim.z;
  for (uint32_t i = part + parts * uint32_t(lane); i < uint32_t(n); i += parts * 32) {
    const L2Piece e = table[i];
    l2_prefetch_bulk(e.p, e.bytes);
  }
}

}  // namespace mosaic::cuda
