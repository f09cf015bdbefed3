#include "gpu/device.h"

#include "util/error.h"

namespace mosaic::gpu {

void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail("CUDA error in ", what, ": ", cudaGetErrorString(e));
}

std::string gpu_unusable_reason() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    cudaGetLastError();
    return std::string("no CUDA GPU found (") + (e != cudaSuccess ? cudaGetErrorString(e) : "0 devices") + ")";
  }
  int dev = 0;
  cudaDeviceProp p{};
  if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&p, dev) != cudaSuccess) {
    cudaGetLastError();
    return "cannot query the CUDA device";
  }
  if (p.major < 9)
    return std::string("the GPU engine needs an sm_90 (Hopper: H100/H200) GPU, found ") + p.name + " (sm_" +
           std::to_string(p.major) + std::to_string(p.minor) + ")";
  return "";
}

void require_gpu(const char* hint) {
  const std::string why = gpu_unusable_reason();
  MOSAIC_CHECK(why.empty(), why, "; ", hint);
}

std::string device_name() {
  int dev = 0;
  cudaDeviceProp p{};
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  check_cuda(cudaGetDeviceProperties(&p, dev), "cudaGetDeviceProperties");
  return p.name;
}

size_t device_free_bytes() {
  size_t f = 0, t = 0;
  check_cuda(cudaMemGetInfo(&f, &t), "cudaMemGetInfo");
  return f;
}

size_t device_total_bytes() {
  size_t f = 0, t = 0;
  check_cuda(cudaMemGetInfo(&f, &t), "cudaMemGetInfo");
  return t;
}

DevBuf::DevBuf(size_t bytes, const char* what) : n_(bytes) {
  if (bytes == 0) return;
  const cudaError_t e = cudaMalloc(&p_, bytes);
  if (e != cudaSuccess) {
    cudaGetLastError();
    p_ = nullptr;
    fail("out of GPU memory allocating ", what, " (", double(bytes) / (1 << 20), " MiB, ",
         double(device_free_bytes()) / (1 << 20), " MiB free): ", cudaGetErrorString(e));
  }
}

DevBuf::~DevBuf() {
  if (p_) cudaFree(p_);
}

DevBuf& DevBuf::operator=(DevBuf&& o) noexcept {
  if (this != &o) {
    if (p_) cudaFree(p_);
    p_ = std::exchange(o.p_, nullptr);
    n_ = std::exchange(o.n_, 0);
  }
  return *this;
}

}  // namespace mosaic::gpu
