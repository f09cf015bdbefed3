// A tiny fork-join pool for the element-wise ops of the CPU engine (norms, RoPE, softmax, SwiGLU).
// The matrix products go to OpenBLAS, which has its own threads; these ops are cheap per element
// but run over T x hidden activations, so splitting rows over the cores still pays at prefill.
// Small jobs run inline: waking threads costs more than a decode step's norm.
#pragma once
#include <cstdint>
#include <functional>

namespace mosaic {

// Number of worker threads used by parallel_for (default: hardware concurrency, or the
// MOSAIC_THREADS environment variable when set). OpenBLAS itself is kept single-threaded: the
// engine splits its matrix products over these threads (by output columns, by heads), which
// keeps one set of threads that sleep between jobs instead of two pools that spin.
int num_threads();
void set_num_threads(int n);

// Calls fn(begin, end) on disjoint ranges covering [0, n), in parallel when n * cost_per_item
// (a rough count of flops) is large enough to be worth it. Blocks until all ranges are done.
// fn must not throw. A parallel_for nested inside another runs inline; calls from different
// threads take turns on the one pool.
void parallel_for(int64_t n, int64_t cost_per_item, const std::function<void(int64_t, int64_t)>& fn);

// Calls fn(i) for every i in [0, n), handing out indices one at a time to whichever thread is
// free (for items of uneven cost, e.g. attention blocks of different lengths). Same rules.
void parallel_for_each(int64_t n, int64_t cost_per_item, const std::function<void(int64_t)>& fn);

}  // namespace mosaic
