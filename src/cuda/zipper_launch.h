// Internal: kernel parameters and launchers of ZipperEngine (zipper_kernels.cu), called by
// ZipperLinear (zipper_linear.cpp). Plain C++ so the host code compiles with the host compiler.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace mosaic::cuda::detail {

inline constexpr int kWarps = 8;                // warps per CTA, each owns 16 outputs (the stream kernel: 8 or 16)
inline constexpr int kCtaN = 16 * kWarps;       // outputs per CTA
// cp.async pipeline depth (k-tiles per warp in flight + 1). 4 beat 6 on H100 (same bytes in
// flight, more warps per SM). The residual kernel with 32-64 rows keeps 3: its X tile is large,
// and one more CTA per SM beat one more stage there (v5 in docs/kernels-notes.md); for decode
// (16 rows) depth per warp mattered more.
constexpr int stages_for(bool residual, int m_block) { return residual && m_block >= 2 ? 3 : 4; }

// Device pointers of one repacked layer (see zipper_layout.h for the layouts).
struct DeviceLayer {
  int N = 0, K = 0, group = 128, spt = 1, words_per_row = 0;
  const uint32_t* qweight = nullptr;
  const uint16_t* scales = nullptr;
  const uint32_t* res_qweight = nullptr;  // null when no block is kept
  const uint16_t* res_scales = nullptr;
  const int32_t* res_rowptr = nullptr;
  const uint64_t* res_bitmap = nullptr;
  const uint16_t* res_colidx = nullptr;  // [nnzb + 32] (zipper_layout.h)
  // [N/16] or null: the stream kernel's block rows by residual tiles, most first (residual_row_order
  // in zipper_plan.h), set where the residual clusters in a few rows; the kernel then deals them
  // out by stream_slot's snake map so that no CTA or warp gets several heavy rows.
  const int32_t* res_row_order = nullptr;
};

// The stream kernel's row slots (zipper_stream.cu). Row lane rw of CTA a (of G) streams slots
// s_j, j = 0, 1, ... while s_j < N/16; slot s is block row s, or order[s] with a row order.
//   map 0 (default): (j G + a) RW + rw   a CTA's RW row lanes on adjacent rows (one DRAM page)
//   map 1 (MOSAIC_ZIPPER_ROWMAP=1): (j RW + rw) G + a
//   map 2 (a row order): band b = j RW + rw, slot b G + a for even b, b G + G - 1 - a for odd b:
//     the rows of a band go one per CTA, the next band back the other way (boustrophedon), so
//     with the rows sorted heaviest first every CTA's and every warp's load is within one row of
//     the mean, and the pairs of bands cancel most of that.
// In every map s_j grows with j, so a warp's valid slots are a prefix j < nrows.
constexpr int stream_slot(int map, int j, int rw, int a, int RW, int G) {
  if (map == 0) return (j * G + a) * RW + rw;
  const int b = j * RW + rw;
  if (map == 1) return b * G + a;
  return b * G + ((b & 1) ? G - 1 - a : a);
}

struct FusedLaunch {
  const void* X = nullptr;
  void* Y = nullptr;
  int M = 0;
  int bf16 = 0;          // 0: fp16, 1: bf16
  int residual = 0;      // fuse the residual blocks
  int m_block = 1;       // 16-row MMA blocks per CTA: 1, 2 or 4
  int k_split = 0;       // inputs per CTA (multiple of 128); == K means no split
  float* ws = nullptr;   // [M, N] fp32, zero between calls (split-K partial sums)
  int* counters = nullptr;  // one per output tile (stream kernel: per 16-output row), zero between calls
  int num_sms = 132;
  int rows_per_warp = 1;  // stream kernel: 16-output rows each warp streams in turn
  int n_groups = 0;       // stream kernel: grid.x (row groups)
  int stages = 4;         // stream kernel: ring depth per warp (fixed at 4 since v10; unused)
  int row_interleave = 0; // stream kernel: rows of a CTA's warps in different tiles (see kernel)
  int k_warps = 1;        // stream kernel: warps sharing one row, each on 1/k_warps of the CTA's
                          // K-range, reduced in shared memory (1, 2, 4 or 8; v10)
  int pdl = 0;            // stream kernel: launch with programmatic dependent launch (cuda/pdl.cuh)
  int warps = 8;          // stream kernel: warps per CTA, 8 or 16 (stream_width_instantiated)
};

// Stream-kernel widths built: 8 warps per CTA for every scale group and warps per row; 16 for
// group >= 128 (one scale set per tile) with 1, 2 or 4 warps per row (twenty-fifth session: 16
// warps hide the latency of the one-CTA-per-SM plans at M = 9..16; 8 warps per row of 16 would
// leave 2 row lanes).
constexpr bool stream_width_instantiated(int group, int k_warps, int warps) {
  if (warps == 8) return group >= 128 ? (k_warps == 1 || k_warps == 2 || k_warps == 4 || k_warps == 8) : k_warps == 1;
  return warps == 16 && group >= 128 && (k_warps == 1 || k_warps == 2 || k_warps == 4);
}

// Shared memory bytes the fused kernel needs: x_rows = min(M, 16 * m_block) + 1 (one zero row).
int fused_smem_bytes(int x_rows, int k_split, int spt, bool residual, int m_block);
// CTAs of the fused kernel resident per SM with this much dynamic smem (0: does not fit).
int fused_occupancy(int m_block, int bf16, bool residual, int smem);
void launch_fused(const DeviceLayer& L, const FusedLaunch& f, cudaStream_t s);

// The stream kernel (zipper_stream.cu, M <= 16): warps stream several rows over one K-range
// with one ring, a per-row split-K fix-up; k_warps > 1 also splits a CTA's K-range over warps
// (needs k_split % (128 k_warps) == 0 and K % k_split == 0). nb: n8 tiles of X rows (1 for
// M <= 8, 2 for M = 9..16), which sets the instantiation (registers) the occupancy is taken of.
// warps: per CTA, 8 or 16; occupancy 0 for a width not built (stream_width_instantiated).
int stream_smem_bytes(int x_rows, int k_split, int spt, bool residual, int k_warps, int warps);
int stream_occupancy(bool residual, int group, int nb, int k_warps, int warps, int smem);
void launch_stream(const DeviceLayer& L, const FusedLaunch& f, cudaStream_t s);
// The stream kernel's residual variant passes the L2 evict-first descriptor as a literal
// (kEvictFirstPolicy, zipper_device.cuh). These return, as the device computes it with
// createpolicy, and as the literal: a test checks they agree on the GPU in use.
uint64_t device_evict_first_policy();
uint64_t evict_first_policy_literal();
// Reads `bytes` (multiple of 16) from device memory p with many loads in flight: the streaming
// limit the benchmark reports next to the kernels (variant read_limit).
void launch_read_probe(const void* p, size_t bytes, unsigned* sink, int num_sms, cudaStream_t s);
// Y += X * deq(residual)^T (the unfused variant's second kernel). One warp per block row.
void launch_residual_only(const DeviceLayer& L, const void* X, void* Y, int M, int bf16, cudaStream_t s);
// W[N, K] (fp16/bf16 row-major) = deq(base) (+ deq(residual) when residual).
void launch_dequant(const DeviceLayer& L, void* W, int bf16, int residual, cudaStream_t s);

}  // namespace mosaic::cuda::detail
