// ZipperEngine W4A16 GEMM on sm_90 (H100/H200): Y[M,N] = X[M,K] * (deq(base) + deq(residual))^T
// with FP16 or BF16 X/Y and FP32 accumulation. Built once from a PackedLinear (repacked into
// the kernel's layout and uploaded at construction); see docs/kernels.md.
//
// Paths (GemmPath::Auto picks by M and layer size, see choose_path):
//   Fused   - one launch: mma.sync m16n8k16 with base and residual dequantized in registers into
//             the same B fragments (memory-bound regime, small M): the stream kernel for M <= 16,
//             the v8 fused kernel up to M = 64 (docs/kernels.md has the dispatch table);
//   Wgmma   - one launch (sm_90a): wgmma with the weights as the A operand dequantized in
//             registers (base and residual in the same fragments), X from shared memory (TMA);
//             for M >= 17, and M = 9..16 on mid-size layers, where measured faster
//             (wgmma_by_default in zipper_plan.h, docs/kernels.md);
//   Dequant - one kernel writes deq(base)+deq(residual) as FP16/BF16 into a workspace, then
//             cuBLAS (compute-bound regime, large M).
// Auto may split one call in two launches: on the wgmma path, M = 128 q + r with r <= 64 rows on a
// layer whose q token tiles already fill the GPU runs the r rows as a second launch (the stream
// kernel up to 16 rows, the wgmma kernel's 32- / 64-token tile above: auto_tail_rows).
// Variants (for the benchmark): Zipper (fused residual), DenseOnly (residual ignored),
// Unfused (dense kernel, then a separate residual kernel).
//
// Not thread-safe: one ZipperLinear owns a split-K workspace; call it from one stream at a time.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <string>

#include "cuda/zipper_layout.h"
#include "format/packed_linear.h"

namespace mosaic::cuda {

enum class DType { F16 = 0, BF16 = 1 };
enum class GemmPath { Auto, Fused, Dequant, Wgmma };
enum class Variant { Zipper, DenseOnly, Unfused };

const char* dtype_name(DType d);

// Resources that layers running on ONE stream can share instead of each holding its own: the
// dequantize path's W_hat buffer (FP16/BF16 [N, K]; sized for the largest layer: 470 MB for
// LLaMA-3-8B's gate_up instead of 2 bytes per weight of the whole model, which made W4A16 use
// more GPU memory than FP16) and the cuBLAS handle of that path. Not thread-safe.
class ZipperShared {
 public:
  ZipperShared();
  ~ZipperShared();
  ZipperShared(const ZipperShared&) = delete;
  ZipperShared& operator=(const ZipperShared&) = delete;
  // Grows the buffer to at least `bytes` now (synchronizes the device when it grows; do it before
  // any CUDA graph capture, e.g. at load time with the largest layer's N * K * 2).
  void reserve(size_t bytes);
  size_t bytes() const;
  void* buffer() const;  // the dequantize buffer (bytes() long; null before reserve)

  struct Impl;
  std::unique_ptr<Impl> impl_;
};

class ZipperLinear {
 public:
  // Repacks and uploads to the current CUDA device. Throws mosaic::Error for unsupported layers
  // (see check_zipper_supported) or when no CUDA device is usable.
  explicit ZipperLinear(const PackedLinear& w);
  ~ZipperLinear();
  ZipperLinear(const ZipperLinear&) = delete;
  ZipperLinear& operator=(const ZipperLinear&) = delete;

  // X: device [M, K] row-major, Y: device [M, N] row-major, both of dtype dt, 16-byte aligned.
  // Asynchronous on `stream`. Throws mosaic::Error naming the shapes on bad arguments.
  void gemm(const void* X, void* Y, int64_t M, DType dt, cudaStream_t stream = nullptr,
            Variant v = Variant::Zipper, GemmPath path = GemmPath::Auto) const;

  // Launch the fused kernels (stream and wgmma) with programmatic dependent launch (cuda/pdl.cuh;
  // off by default): they then read their residual metadata and issue their first weight copies
  // while the previous kernel of the stream is still running, and wait for that kernel before
  // they read X or write anything. For a stream of dependent kernels (the GPU engine's decode step); the
  // benchmark times kernels without it.
  void set_programmatic_launch(bool on);

  // From now on the dequantize path uses `shared` (its buffer and cuBLAS handle) and frees this
  // layer's own buffer, if any. Every layer sharing one ZipperShared must run on the same stream.
  void share(std::shared_ptr<ZipperShared> shared);

  // The dequantize path in two halves, for a caller that dequantizes a layer ahead of its GEMM on
  // another stream (the GPU engine's prefill, gpu/engine.cpp "dequantize ahead"): W is device
  // [N, K] of dt, 16-byte aligned; `dequantize` writes deq(base) + deq(residual) into it, and
  // `gemm_dequantized` is the path's cuBLAS GEMM on it (Y = X W^T), bit-identical to gemm() on the
  // dequantize path. Both asynchronous on their stream; the caller orders them.
  void dequantize(void* W, DType dt, cudaStream_t stream) const;
  void gemm_dequantized(const void* W, const void* X, void* Y, int64_t M, DType dt, cudaStream_t stream) const;

  int64_t N() const;
  int64_t K() const;
  int64_t blocks_kept() const;
  int64_t weight_bytes(bool with_residual = true) const;  // bytes streamed by the fused path
  GemmPath choose_path(int64_t M) const;                  // what Auto does for this M
  bool wgmma_default(int64_t M) const;                    // Auto's wgmma ranges (MOSAIC_ZIPPER_WGMMA unset)
  int64_t auto_tail_rows(int64_t M) const;  // rows of M that Auto runs as a second launch after the wgmma tiles (0: none)

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Device helpers for the benchmark (throw mosaic::Error on CUDA failure).
int cuda_device_count();  // 0 when no driver / no GPU (never throws)
std::string cuda_device_name();

}  // namespace mosaic::cuda
