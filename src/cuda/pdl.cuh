// Programmatic dependent launch (PDL, sm_90): a kernel launched with the programmatic-stream-
// serialization attribute may start while the previous kernel of its stream is still running.
// Shared by the engine's kernels (gpu/kernel_util.cuh) and ZipperEngine's stream and wgmma kernels.
//
// The protocol every PDL kernel here follows:
//  - before pdl_wait() it touches only memory that no kernel in flight writes (the layer's
//    weights and metadata, shared memory): that work overlaps the previous kernel's tail;
//  - pdl_wait() blocks until the previous grid has completed and its writes are visible;
//  - pdl_launch_dependents() comes right AFTER pdl_wait(), never before: the next kernel may then
//    start its own pre-wait part, and because this kernel has already waited, everything before
//    it in the stream is complete by then (triggering before the wait would let the kernel after
//    next run its pre-wait part ahead of a kernel two launches back).
// Both are no-ops for a kernel launched without the attribute (plain <<< >>> or MOSAIC_PDL=0).
#pragma once
#include <cuda_runtime.h>

#include "cuda/pdl.h"

namespace mosaic::cuda {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// The launch attribute of thread-block clusters of (1, 1, z) CTAs.
inline cudaLaunchAttribute cluster_z_attr(int z) {
  cudaLaunchAttribute a{};
  a.id = cudaLaunchAttributeClusterDimension;
  a.val.clusterDim.x = 1;
  a.val.clusterDim.y = 1;
  a.val.clusterDim.z = unsigned(z);
  return a;
}

// kernel<<<grid, block, smem, s>>>(args...), with the PDL attribute when `pdl` and as thread-block
// clusters of (1, 1, cluster_z) CTAs when cluster_z > 1 (grid.z must be a multiple of it).
template <typename... KArgs, typename... Args>
cudaError_t launch_maybe_pdl_cluster(bool pdl, int cluster_z, void (*kernel)(KArgs...), dim3 grid, dim3 block,
                                     size_t smem, cudaStream_t s, Args... args) {
  cudaLaunchAttribute attr[2];
  int n = 0;
  if (pdl) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n++].val.programmaticStreamSerializationAllowed = 1;
  }
  if (cluster_z > 1) attr[n++] = cluster_z_attr(cluster_z);
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cfg.attrs = attr;
  cfg.numAttrs = unsigned(n);
  return cudaLaunchKernelEx(&cfg, kernel, static_cast<KArgs>(args)...);
}

// The same without clusters.
template <typename... KArgs, typename... Args>
cudaError_t launch_maybe_pdl(bool pdl, void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t s,
                             Args... args) {
  return launch_maybe_pdl_cluster(pdl, 1, kernel, grid, block, smem, s, args...);
}

}  // namespace mosaic::cuda
