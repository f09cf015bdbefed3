// Host-side CUDA helpers shared by the layer classes of src/cuda (ZipperLinear, W4A8Linear):
// error checks that throw mosaic::Error naming the call, a one-shot weight upload, and the
// "is this a device pointer" probe their argument checks use.
#pragma once
#include <cuda_runtime.h>

#include <vector>

#include "util/error.h"

namespace mosaic::cuda::host {

inline void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail("CUDA error in ", what, ": ", cudaGetErrorString(e));
}

// A device copy of v (nullptr when empty); the caller frees it with cudaFree.
template <typename T>
T* upload(const std::vector<T>& v, const char* what = "weights") {
  if (v.empty()) return nullptr;
  void* p = nullptr;
  check_cuda(cudaMalloc(&p, v.size() * sizeof(T)), what);
  check_cuda(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice), what);
  return static_cast<T*>(p);
}

// True for device or managed memory; host pointers (and anything the runtime does not know) are
// false. Clears the runtime's error state after a failed query.
inline bool is_device_pointer(const void* p) {
  cudaPointerAttributes a{};
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
}

}  // namespace mosaic::cuda::host
