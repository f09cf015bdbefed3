#include "quant_gpu/cuda_context.h"

#include <algorithm>

#include "util/error.h"

namespace mosaic::quant_gpu {

void check_cublas(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) fail("cuBLAS error ", int(s), " in ", what);
}

void check_cusolver(cusolverStatus_t s, const char* what) {
  if (s != CUSOLVER_STATUS_SUCCESS) fail("cuSOLVER error ", int(s), " in ", what);
}

CudaContext::CudaContext() {
  gpu::require_gpu();
  name_ = gpu::device_name();
  gpu::check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  check_cublas(cublasCreate(&blas_), "cublasCreate");
  check_cublas(cublasSetStream(blas_, stream_), "cublasSetStream");
  // Plain FP32 SGEMM: no TF32 (the CPU reference accumulates in FP32 too).
  check_cublas(cublasSetMathMode(blas_, CUBLAS_PEDANTIC_MATH), "cublasSetMathMode");
  check_cusolver(cusolverDnCreate(&solver_), "cusolverDnCreate");
  check_cusolver(cusolverDnSetStream(solver_, stream_), "cusolverDnSetStream");
  total_ = int64_t(gpu::device_total_bytes());
  sample_memory();
}

CudaContext::~CudaContext() {
  if (solver_) cusolverDnDestroy(solver_);
  if (blas_) cublasDestroy(blas_);
  if (stream_) cudaStreamDestroy(stream_);
}

void* CudaContext::scratch(int slot, size_t bytes) {
  MOSAIC_CHECK(slot >= 0 && slot < 3, "CudaContext::scratch: bad slot ", slot);
  gpu::DevBuf& b = scratch_[slot];
  if (b.bytes() < bytes) {
    sync("scratch resize");
    const size_t grown = std::max(bytes, b.bytes() * 5 / 4);
    b = gpu::DevBuf();
    b = alloc(grown, "calibration staging buffer");
  }
  return b.get();
}

gpu::DevBuf CudaContext::alloc(size_t bytes, const char* what) {
  gpu::DevBuf b(bytes, what);
  sample_memory();
  return b;
}

void CudaContext::sample_memory() {
  size_t f = 0, t = 0;
  if (cudaMemGetInfo(&f, &t) == cudaSuccess) peak_ = std::max(peak_, int64_t(t - f));
}

void CudaContext::sync(const char* what) const { gpu::check_cuda(cudaStreamSynchronize(stream_), what); }

}  // namespace mosaic::quant_gpu
