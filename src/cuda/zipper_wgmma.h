// Internal: the ZipperEngine wgmma kernel (zipper_wgmma.cu, sm_90a) for M >= 17, called by
// ZipperLinear (zipper_linear.cpp). Plain C++ so the host code compiles with the host compiler.
//
// "Swap AB": D^T[n, m] = sum_k W[n, k] X[m, k] with the WEIGHTS as the wgmma A operand (64 outputs
// per consumer warpgroup, dequantized in registers from the zipper layout, residual added into the
// same fragments) and X as the B operand from shared memory (TMA, 128-byte swizzle): a CTA tile is
// 128 outputs x TOK tokens (TOK = 32, 64 or 128 = the wgmma N). docs/kernels-notes.md "wgmma kernel".
#pragma once
#include <cuda_runtime_api.h>

#include "cuda/zipper_launch.h"

namespace mosaic::cuda::detail {

inline constexpr int kWgOut = 128;     // outputs per CTA (2 consumer warpgroups x 64)
inline constexpr int kWgThreads = 288;  // 2 consumer warpgroups + 1 producer warp
inline constexpr int kWgMaxStages = 8;

struct WgmmaLaunch {
  const void* X = nullptr;
  void* Y = nullptr;
  int M = 0;
  int bf16 = 0;
  int residual = 0;        // fuse the residual blocks (needs L.res_qweight)
  int tok = 64;            // tokens per CTA tile: 32, 64 or 128
  int k_split = 0;         // inputs per CTA (multiple of 128); >= K: no split
  int stages = 4;          // ring depth (2 .. kWgMaxStages)
  float* ws = nullptr;     // split-K partial sums: (splits - 1) * n_tiles * m_tiles * 128 * tok floats, any content
  int* counters = nullptr; // two per (n tile, m tile), zero between calls
  int evict_first = 1;     // L2 evict-first hint on the weights (read once when one token tile covers M)
  int wtma = 0;            // codes and scales of the CTA's 8 block rows as one TMA box each per k-tile
  int pdl = 0;             // programmatic dependent launch: the first stages' weights before the wait (cuda/pdl.cuh)
  int sk_ctas = 0;         // > 0: stream-K over this many persistent CTAs (zipper_plan.h; k_split unused), ws then
                           // holds (stream_k_max_segments - 1) slices
};

// Bytes of one ring stage (1024-aligned) and of the kernel's dynamic shared memory.
constexpr int wgmma_stage_bytes(int tok, int spt) {
  return (tok * 256 + 8192 + 256 * spt + 8 * 512 + 8 * 32 + 1023) / 1024 * 1024;
}
// + 1 KB of barriers / flags + 1 KB of alignment slack (the ring is 1024-aligned for the 128-byte
// swizzle). 5 stages of the 128-token tile (group 128) need exactly the 227 KB a CTA may opt in to.
constexpr int wgmma_smem_bytes(int tok, int spt, int stages) { return stages * wgmma_stage_bytes(tok, spt) + 2048; }
// CTAs of the wgmma kernel resident per SM with this much dynamic smem (0: does not fit).
int wgmma_occupancy(int tok, int smem);
void launch_wgmma(const DeviceLayer& L, const WgmmaLaunch& w, cudaStream_t s);

}  // namespace mosaic::cuda::detail
