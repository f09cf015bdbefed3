// Small CUDA runtime helpers of the GPU engine: error checks that throw mosaic::Error, an owning
// device buffer, the "is there a usable GPU" probe, and memory figures.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

namespace mosaic::gpu {

void check_cuda(cudaError_t e, const char* what);

// Why the GPU engine cannot run here ("" when it can): no driver / no GPU, or a GPU older than
// sm_90 (the kernels are built for Hopper). Never throws.
std::string gpu_unusable_reason();
// Throws mosaic::Error with that reason and a hint (by default: use --device cpu).
void require_gpu(const char* hint = "use --device cpu");
std::string device_name();       // "NVIDIA H100 80GB HBM3"
size_t device_free_bytes();
size_t device_total_bytes();

// Owning device allocation (cudaMalloc / cudaFree), movable.
class DevBuf {
 public:
  DevBuf() = default;
  explicit DevBuf(size_t bytes, const char* what = "buffer");
  ~DevBuf();
  DevBuf(DevBuf&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  DevBuf& operator=(DevBuf&& o) noexcept;
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  void* get() const { return p_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(p_);
  }
  size_t bytes() const { return n_; }

 private:
  void* p_ = nullptr;
  size_t n_ = 0;
};

}  // namespace mosaic::gpu
