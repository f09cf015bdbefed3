// The CUDA state the GPU quantizer shares between its parts: one stream, the cuBLAS and cuSOLVER
// handles bound to it, a grow-only scratch buffer for host<->device staging, and a running
// figure of peak device memory (sampled with cudaMemGetInfo after every large allocation, so it
// counts the CUDA context and the libraries' workspaces too).
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cusolverDn.h>

#include <cstdint>
#include <string>

#include "gpu/device.h"

namespace mosaic::quant_gpu {

void check_cublas(cublasStatus_t s, const char* what);
void check_cusolver(cusolverStatus_t s, const char* what);

class CudaContext {
 public:
  CudaContext();  // requires a usable GPU (mosaic::gpu::require_gpu)
  ~CudaContext();
  CudaContext(const CudaContext&) = delete;
  CudaContext& operator=(const CudaContext&) = delete;

  cudaStream_t stream() const { return stream_; }
  cublasHandle_t blas() const { return blas_; }
  cusolverDnHandle_t solver() const { return solver_; }
  const std::string& name() const { return name_; }

  // At least `bytes` of device scratch (contents not kept across calls of a different slot).
  // Slots let two staged arrays (e.g. a layer's x and y) coexist.
  void* scratch(int slot, size_t bytes);
  gpu::DevBuf alloc(size_t bytes, const char* what);  // + a peak-memory sample
  void sample_memory();
  int64_t peak_bytes() const { return peak_; }
  int64_t total_bytes() const { return total_; }
  void sync(const char* what) const;

 private:
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  cusolverDnHandle_t solver_ = nullptr;
  std::string name_;
  gpu::DevBuf scratch_[3];
  int64_t peak_ = 0, total_ = 0;
};

}  // namespace mosaic::quant_gpu
