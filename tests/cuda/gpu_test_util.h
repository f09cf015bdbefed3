// What every GPU test of src/cuda needs: a skip with a visible message when no CUDA GPU is present,
// and an owning device buffer (at least 16 bytes, so a zero-sized case still gets a valid pointer).
#pragma once
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>

#include "cuda/zipper.h"

#define MOSAIC_REQUIRE_CUDA_GPU(what)                                                                 \
  do {                                                                                                \
    if (::mosaic::cuda::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA GPU: " what " skipped";   \
  } while (0)

namespace mosaic::cuda::test {

struct DeviceBuf {
  void* p = nullptr;
  explicit DeviceBuf(size_t bytes) { EXPECT_EQ(cudaMalloc(&p, std::max<size_t>(bytes, 16)), cudaSuccess); }
  ~DeviceBuf() { cudaFree(p); }
  DeviceBuf(const DeviceBuf&) = delete;
  DeviceBuf& operator=(const DeviceBuf&) = delete;
};

}  // namespace mosaic::cuda::test
