// Large host buffers on transparent huge pages (THP), for the whole process.
//
// The quantizer and the CPU engine allocate buffers of tens to hundreds of MB per layer (FP32
// weights, residuals, calibration activations). glibc serves each from a fresh mmap, so every
// 4 KB page faults on first touch and the kernel zeroes it: the LLaMA-3-8B-shaped quantization
// on an H200 spent 134 s of system time in 58.8 M page faults (bench/results/quantize-h200-
// 2026-11-28-full). glibc >= 2.35 madvises its mmap'd chunks for THP (2 MB pages: 512x fewer
// faults) when the tunable glibc.malloc.hugetlb=1 is set, but tunables are read only when a process
// starts, so main() re-executes the binary once with it set.
#pragma once

namespace mosaic::cli {

// Re-executes /proc/self/exe with GLIBC_TUNABLES += glibc.malloc.hugetlb=1 and returns only where
// that is not done: not Linux, THP off ("never"), the tunable already set (by the user, or by the
// first start), MOSAIC_HUGEPAGES=0, or exec failing (then the environment is restored).
void reexec_with_huge_pages(char** argv);

}  // namespace mosaic::cli
