// ZipperLinear: owns the repacked layer on the device and dispatches a GEMM to the fused kernel
// (small M) or to dequantize + cuBLAS (large M). All argument errors are mosaic::Error.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "cuda/zipper.h"
#include "cuda/zipper_launch.h"
#include "cuda/zipper_plan.h"
#include "cuda/zipper_wgmma.h"
#include "cuda/host_util.h"
#include "util/env.h"
#include "util/error.h"
#include "util/half.h"

namespace mosaic::cuda {
namespace {

using host::check_cuda;
using host::is_device_pointer;
using host::upload;

void check_cublas(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) fail("cuBLAS error ", int(s), " in ", what);
}

// Scales are fp16 in the checkpoint; the bf16 kernels multiply in bf16, so keep a bf16 copy
// (same bytes streamed, no conversion in the inner loop).
std::vector<uint16_t> to_bf16(const std::vector<uint16_t>& h) {
  std::vector<uint16_t> b(h.size());
  for (size_t i = 0; i < h.size(); ++i) b[i] = float_to_bf16(fp16_to_float(h[i]));
  return b;
}

// Fixed cost of one CTA of the fused kernel in k-tile units (prologue, pipeline ramp, split-K
// epilogue with its fence and counter atomic), used by the split-K plan. Measured (H100, v8 in
// docs/kernels-notes.md, 8 LLaMA-3-8B/70B shapes): for M < 16 the value hardly matters (2..8
// within +-1%), for M >= 16 larger values (fewer, longer CTAs) are 5-10% faster, 8 best.
// MOSAIC_ZIPPER_CTA_OVERHEAD (a number in 0..64) overrides it for every M, for tuning runs only
// (scripts/gpu-check.sh PLAN_OVERHEADS).
double cta_overhead_tiles(int M) {
  static const double env = env_number("MOSAIC_ZIPPER_CTA_OVERHEAD", -1.0, 0, 64);
  if (env >= 0) return env;
  return M >= 16 ? 8.0 : 2.0;
}

// MOSAIC_ZIPPER_V8=1 runs the v8 kernel (zipper_fused_kernel) for every M, for same-run
// comparisons only (scripts/gpu-check.sh ENVS).
bool force_v8() {
  static const bool v = env_int("MOSAIC_ZIPPER_V8", 0, 0, 1) == 1;
  return v;
}

// Bytes in flight an SM needs to stream at the DRAM limit (Little: ~3 TB/s x ~1.5 us loaded
// latency / 132 SMs ~ 34 KB); the stream plan charges configurations with fewer. Tuning
// override: MOSAIC_ZIPPER_INFLIGHT_KB (1..1024).
double inflight_kb_needed() {
  static const double v = env_number("MOSAIC_ZIPPER_INFLIGHT_KB", 40.0, 1, 1024);
  return v;
}

// Stream-kernel tuning knobs (defaults measured, docs/kernels-notes.md v9): MOSAIC_ZIPPER_RED_COST = the split-K reduction of one row of 16
// outputs x 16 rows of X, in k-tile units of streamed weights (fp32 atomics at L2 cost more per
// byte than streaming); MOSAIC_ZIPPER_VERBOSE=1 prints each plan to stderr. Every knob is read by
// util/env.h: a value outside its range is an error naming the variable.
// The ring depth is fixed at 4 since v10 (8 measured slower everywhere in v9; the knob is gone).
int stream_stages() { return 4; }
double red_cost() {
  static const double v = env_number("MOSAIC_ZIPPER_RED_COST", 12, 0, 64);
  return v;
}
// In-CTA K split of the stream kernel (v10): MOSAIC_ZIPPER_KWARPS = 1, 2, 4 or 8 forces the warps
// per row (0: the plan chooses); MOSAIC_ZIPPER_KW_COST = its row-end cost in k-tiles (smem
// reduction + named barriers); MOSAIC_ZIPPER_SPLIT_FIX = the fixed cost per warp of split-K
// across CTAs (fence, counter atomic, fix-up), in k-tiles: 2 (v10 run 2, H100: qkv M = 1 zipper
// 12.98 -> 10.89 us, the plan moving from 11 K-splits to 4 warps per row; other shapes +-2%).
int kwarps_forced() {
  static const int v = env_choice("MOSAIC_ZIPPER_KWARPS", 0, {0, 1, 2, 4, 8});  // 0: the plan
  return v;
}
// MOSAIC_ZIPPER_WARPS = 8 or 16 forces the stream kernel's warps per CTA (0: the plan chooses, where
// 16 are built: stream_width_instantiated in zipper_launch.h), for same-binary comparisons.
int warps_forced() {
  static const int v = env_choice("MOSAIC_ZIPPER_WARPS", 0, {0, 8, 16});  // 0: the plan
  return v;
}
// 0.25 k-tiles per row end. Until v17 a residual row end also waited for the K-slice with the most
// kept blocks and was priced at 1 (H200, sixth session: gate_up zipper at M = 1 28.58 -> 28.06 us,
// bench/results/gemm-h200-2026-11-28-kwcost.md); since v17 the warps of a row split its kept blocks
// evenly (zipper_stream.cu), so both variants use 0.25 (fifteenth session, same call against 1:
// bench/results/gemm-h200-2026-11-29-s15-residual-share.md). The variable, when set, applies to both.
double kw_cost(bool /*residual*/) {
  static const double v = env_number("MOSAIC_ZIPPER_KW_COST", -1, 0, 64);
  return v >= 0 ? v : 0.25;
}
// MOSAIC_ZIPPER_STREAM_MAX_K = the longest K-range the stream plans may give a CTA, in inputs (0: no
// limit, the default since v18). 4096 restores the plans of v17 and before (a 64-bit chunk mask per
// row held them to 64 chunks) for same-binary comparisons: LLaMA-3-8B's down (K = 14336) at M = 1 then
// splits K over 8 CTAs again.
int stream_max_k_tiles(int k_tiles) {
  static const int v = env_int("MOSAIC_ZIPPER_STREAM_MAX_K", 0, 0, 1 << 20);
  return v >= kTileK ? std::min(k_tiles, v / kTileK) : k_tiles;
}
double split_fix() {
  static const double v = env_number("MOSAIC_ZIPPER_SPLIT_FIX", 2, 0, 64);
  return v;
}
// MOSAIC_ZIPPER_ROWMAP=1: the stream kernel's interleaved row map (v9a), for comparisons.
bool row_interleave() {
  static const bool v = env_int("MOSAIC_ZIPPER_ROWMAP", 0, 0, 1) == 1;
  return v;
}
// MOSAIC_ZIPPER_ROW_ORDER = 0 / 1: never / always deal a residual layer's rows by weight (the
// stream kernel's row order, residual_rows_uneven in zipper_plan.h); unset: where the rows are uneven.
// Read when a layer is loaded (a test sets it per layer).
int row_order_mode() { return env_int("MOSAIC_ZIPPER_ROW_ORDER", -1, 0, 1); }
bool verbose() {
  static const bool v = env_int("MOSAIC_ZIPPER_VERBOSE", 0, 0, 1) == 1;
  return v;
}
// Stream-plan tuning at first use (M <= 16): the model's plan and up to kTuneCandidates - 1 others
// within kTuneMargin of its cost are timed on the layer's own call, the fastest kept for every layer
// of that shape. MOSAIC_ZIPPER_TUNE=0: the model's plan alone (read once).
bool tune_enabled() {
  static const bool v = env_int("MOSAIC_ZIPPER_TUNE", 1, 0, 1) == 1;
  return v;
}
// The wgmma kernel's K split tuned the same way (wgmma_tune_k_tiles in zipper_plan.h), and since the
// twenty-fifth session also one ring stage deeper at the occupancy that leaves (tuned_wgmma):
// MOSAIC_ZIPPER_TUNE_WGMMA=1. Off by default: measured in the twelfth session at +-5% either way and
// -10% at one point (bench/results/gemm-h200-2026-11-29-s12-wgmma-tune.md); the deeper-ring candidate
// is not measured through the tuner yet (its forced form: ...-2026-11-30-s25-wgmma-stages-ksplit.md).
bool tune_wgmma_enabled() {
  static const bool v = env_int("MOSAIC_ZIPPER_TUNE_WGMMA", 0, 0, 1) == 1;
  return v;
}
// Whether work queued on s is being captured into a CUDA graph (the tuners never time then).
bool stream_capturing(cudaStream_t s) {
  cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
  const bool capturing = cudaStreamIsCapturing(s, &cs) != cudaSuccess || cs != cudaStreamCaptureStatusNone;
  cudaGetLastError();
  return capturing;
}
int current_device() {
  int dev = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  return dev;
}
constexpr int kTuneCandidates = 4;
constexpr double kTuneMargin = 1.25, kTuneMinGain = 0.03;
constexpr int kTuneLaunches = 10;   // per timed round, hot (MOSAIC_ZIPPER_TUNE_COLD=0)
constexpr int kTuneColdRounds = 5;  // single cold launches per candidate (the default)
bool tune_cold() {  // read at every tuning (rare: once per layer shape and M), so a test can switch it
  return env_int("MOSAIC_ZIPPER_TUNE_COLD", 1, 0, 1) == 1;
}
// The wgmma kernel (zipper_wgmma.cu). MOSAIC_ZIPPER_WGMMA = 0: never in Auto; 1: Auto sends every
// M to it, M <= 16 too (tests and same-run comparisons); unset: the M ranges where it measured faster
// (wgmma_default). Tuning: MOSAIC_ZIPPER_WGMMA_TOK (32, 64, 128: tokens per CTA tile),
// _STAGES (2..8), _KSPLIT (inputs per CTA, a multiple of 128).
int wgmma_mode() {
  static const int v = env_int("MOSAIC_ZIPPER_WGMMA", -1, 0, 1);
  return v;
}
// Read when a layer plans a token tile for the first time (not cached: tests set them per layer).
int wgmma_tok_forced() {
  return env_choice("MOSAIC_ZIPPER_WGMMA_TOK", 0, {0, 16, 32, 64, 128});  // 0: by M
}
bool wgmma_deep_enabled() {
  static const bool v = env_switch_on("MOSAIC_ZIPPER_WGMMA_DEEP");
  return v;
}

int wgmma_stages_forced() {
  const int v = env_int("MOSAIC_ZIPPER_WGMMA_STAGES", 0, 0, detail::kWgMaxStages);
  MOSAIC_CHECK(v != 1, "MOSAIC_ZIPPER_WGMMA_STAGES must be 2..", detail::kWgMaxStages, " (0: the plan), got 1");
  return v;
}
// The weights' codes and scales by one TMA box each per k-tile (default; H200 v4: 10-25% faster
// than 16 per-row bulk copies at every M) or, with MOSAIC_ZIPPER_WGMMA_WTMA=0, by those copies
// (read at plan time, like the knobs above).
int wgmma_wtma() { return env_int("MOSAIC_ZIPPER_WGMMA_WTMA", 1, 0, 1); }
// The token-tile remainder (ZipperLinear::gemm): M = 128 q + r with 1 <= r <= this may run as the
// wgmma kernel's 128 q rows, then r rows in a second launch (the stream kernel up to 16, the
// wgmma kernel's 32- or 64-token tile up to 64); MOSAIC_ZIPPER_TAIL=0 turns it off (comparisons).
int wgmma_tail_max() { return env_int("MOSAIC_ZIPPER_TAIL", 64, 0, 64); }
// Stream-K for the wgmma kernel (zipper_plan.h): MOSAIC_ZIPPER_WGMMA_SK = 1 on every wgmma plan of a 16..64-token
// tile, 0 never; unset: where stream_k_by_default says. Read at plan time (tests set it per layer).
int wgmma_sk_mode() { return env_int("MOSAIC_ZIPPER_WGMMA_SK", -1, 0, 1); }
int wgmma_ksplit_forced() {
  const int v = env_int("MOSAIC_ZIPPER_WGMMA_KSPLIT", 0, 0, 1 << 20);
  MOSAIC_CHECK(v % kTileK == 0, "MOSAIC_ZIPPER_WGMMA_KSPLIT must be a multiple of ", kTileK, " inputs, got ", v);
  return v;
}

}  // namespace

const char* dtype_name(DType d) { return d == DType::F16 ? "fp16" : d == DType::BF16 ? "bf16" : "invalid"; }

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

std::string cuda_device_name() {
  int dev = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  cudaDeviceProp p{};
  check_cuda(cudaGetDeviceProperties(&p, dev), "cudaGetDeviceProperties");
  return p.name;
}

struct ZipperShared::Impl {
  void* deq = nullptr;
  size_t bytes = 0;
  float* part = nullptr;  // the wgmma kernel's split-K partial sums (no state between calls)
  size_t part_elems = 0;
  std::vector<void*> retired;  // outgrown buffers (see grow_buffer)
  cublasHandle_t cublas = nullptr;
  ~Impl() {
    if (deq) cudaFree(deq);
    if (part) cudaFree(part);
    for (void* p : retired) cudaFree(p);
    if (cublas) cublasDestroy(cublas);
  }
};

namespace {
// Grows a device buffer to at least `elems` elements; returns whether it grew (the new one's
// content is undefined). The old buffer is retired, not freed: a CUDA graph captured at a smaller
// batch (the GPU engine keeps one per batch size) still points at it.
template <typename E>
bool grow_buffer(E*& p, size_t& have, size_t elems, std::vector<void*>& retired, const char* what) {
  if (elems <= have) return false;
  if (p) retired.push_back(p);
  p = nullptr;
  have = 0;
  check_cuda(cudaMalloc(&p, elems * sizeof(E)), what);
  have = elems;
  return true;
}
}  // namespace

ZipperShared::ZipperShared() : impl_(std::make_unique<Impl>()) {}
ZipperShared::~ZipperShared() = default;
size_t ZipperShared::bytes() const { return impl_->bytes; }
void* ZipperShared::buffer() const { return impl_->deq; }

void ZipperShared::reserve(size_t bytes) {
  if (!impl_->cublas) check_cublas(cublasCreate(&impl_->cublas), "cublasCreate");
  if (bytes <= impl_->bytes) return;
  if (impl_->deq) {
    // The previous buffer may still be read by queued work: cudaFree waits for the device.
    check_cuda(cudaFree(impl_->deq), "cudaFree (shared dequantize buffer)");
    impl_->deq = nullptr;
    impl_->bytes = 0;
  }
  check_cuda(cudaMalloc(&impl_->deq, bytes), "cudaMalloc (shared dequantize buffer)");
  impl_->bytes = bytes;
}

struct ZipperLinear::Impl {
  detail::DeviceLayer L;   // fp16 scales
  detail::DeviceLayer Lb;  // same codes, bf16 scales
  const detail::DeviceLayer& layer(int bf16) const { return bf16 ? Lb : L; }
  int64_t nnzb = 0, bytes_all = 0, bytes_base = 0;
  // Residual blocks per block row, and the stream kernel's row order (empty: none; L.res_row_order).
  std::vector<int> row_kept;
  std::vector<int32_t> row_order;
  int num_sms = 132;
  bool pdl = false;  // set_programmatic_launch
  // Workspaces, grown on demand (mutable state: one stream at a time).
  float* ws = nullptr;
  size_t ws_elems = 0;
  float* part = nullptr;  // the wgmma kernel's split-K slices (unless shared): any content between calls
  size_t part_elems = 0;
  std::vector<void*> retired;  // outgrown buffers (see grow_buffer)
  int* counters = nullptr;
  size_t n_counters = 0;
  void* deq = nullptr;  // N x K fp16/bf16 for the large-M path (unless shared)
  std::shared_ptr<ZipperShared> shared;
  cublasHandle_t cublas = nullptr;

  ~Impl() {
    for (const void* p : {static_cast<const void*>(L.qweight), static_cast<const void*>(L.scales),
                          static_cast<const void*>(L.res_qweight), static_cast<const void*>(L.res_scales),
                          static_cast<const void*>(L.res_rowptr), static_cast<const void*>(L.res_bitmap),
                          static_cast<const void*>(L.res_colidx), static_cast<const void*>(L.res_row_order),
                          static_cast<const void*>(Lb.scales), static_cast<const void*>(Lb.res_scales),
                          static_cast<const void*>(ws), static_cast<const void*>(part), static_cast<const void*>(counters),
                          static_cast<const void*>(deq)})
      if (p) cudaFree(const_cast<void*>(p));
    for (void* p : retired) cudaFree(p);
    if (cublas) cublasDestroy(cublas);
  }

  // The zeroed split-K workspace and counters (zero between calls), grown on demand.
  void ensure_ws(size_t elems, size_t counters_needed) {
    if (grow_buffer(ws, ws_elems, elems, retired, "cudaMalloc (split-K workspace)"))
      check_cuda(cudaMemset(ws, 0, elems * sizeof(float)), "cudaMemset (split-K workspace)");
    if (grow_buffer(counters, n_counters, counters_needed, retired, "cudaMalloc (split-K counters)"))
      check_cuda(cudaMemset(counters, 0, counters_needed * sizeof(int)), "cudaMemset (split-K counters)");
  }

  // Split-K plan: K-range per CTA (multiple of 128, <= 4096: a warp's residual mask is 64 bits).
  // Model (memory-bound streaming): time ~ total CTA work / resident slots + one CTA's duration
  // (the tail), a CTA costing its tiles + 2 tiles of fixed cost (X tile, epilogue); slots from
  // the occupancy the kernel's smem allows. Ties go to fewer splits. Cached per (M, m_block, res).
  std::map<std::tuple<int, int, bool>, int> plans;
  int plan_k_split(int M, int mb, bool res, int n_tiles, int m_tiles) {
    const auto key = std::make_tuple(M, mb, res);
    if (auto it = plans.find(key); it != plans.end()) return it->second;
    const int k_tiles = L.K / kTileK, x_rows = std::min(M, 16 * mb) + 1;
    double best = 1e30;
    int best_per = 1;
    for (int per = 1; per <= std::min(32, k_tiles); ++per) {
      const int smem = detail::fused_smem_bytes(x_rows, per * kTileK, L.spt, res, mb);
      if (smem > 220 * 1024) break;
      const int occ = detail::fused_occupancy(mb, 0, res, smem);
      if (occ == 0) break;
      const int64_t splits = (k_tiles + per - 1) / per, ctas = int64_t(n_tiles) * m_tiles * splits;
      const double slots = double(occ) * num_sms;
      const double c = per + cta_overhead_tiles(M);
      const double cost = double(ctas) * c / slots + c + (splits > 1 ? 0.5 : 0.0);
      if (cost <= best) {
        best = cost;
        best_per = per;
      }
    }
    cudaGetLastError();  // occupancy probes past the smem limit are not errors of this call
    return plans[key] = best_per * kTileK;
  }

  // Stream-kernel plan (M <= 16): K-range per CTA (k_split), warps per CTA (w: 8 or 16), warps per
  // row (kw: the CTA's K-range split over kw warps, reduced in smem), rows per warp (rpw) and row
  // groups, for exactly one wave. Model (memory-bound, balanced over SMs): time ~ (CTAs on the
  // busiest SM q) x (w / 8) x (k-tiles per warp + 1 tile of fixed cost) / min(1, bytes in flight per
  // SM / needed), in flight = q x w warps x 3 k-tiles of ~1 KB; a row end costs `red` tiles with
  // split-K (fp32 reductions at L2) and kw_cost with kw > 1 (smem reduction + named barrier). Ties
  // go to more warps per SM, then fewer splits. The w / 8 factor makes the two widths the same work
  // per SM: what 16 warps gain is the in-flight term (one CTA of 8 warps per SM holds ~24 KB of the
  // ~40 needed), which the model prices and the tuner checks (both widths are timed).
  struct StreamPlan {
    int k_split = 0, rpw = 1, n_groups = 1, kw = 1, warps = 8;
  };
  std::map<std::pair<int, bool>, StreamPlan> stream_plans;
  // The model's plan first, then up to kTuneCandidates - 1 others within kTuneMargin of its cost with
  // a different (K-range, warps per row) (rows-per-warp variants of one of those cost about the same).
  std::vector<StreamPlan> stream_candidates(int M, bool res) {
    const int x_rows = std::min(M, 16) + 1, nb = M <= 8 ? 1 : 2;
    const int R = L.N / 16, k_tiles = L.K / kTileK, m_tiles = (M + 15) / 16;
    const double red = red_cost() * std::min(M, 16) / 16.0;  // per row end, split-K only
    const int kw_only = kwarps_forced(), w_only = warps_forced();
    StreamPlan best;
    double best_cost = 1e30;
    int best_q = 0, best_splits = 0;
    std::vector<std::pair<double, StreamPlan>> all;
    for (int per = 1; per <= stream_max_k_tiles(k_tiles); ++per) {  // any K-range whose X tile fits (v18; was <= 32 tiles)
      const int splits = (k_tiles + per - 1) / per;
      for (int w : {8, 16})
        for (int kw = 1; kw <= 8; kw *= 2) {
          if ((kw_only && kw != kw_only) || (w_only && w != w_only)) continue;
          if (!detail::stream_width_instantiated(L.group, kw, w)) continue;
          if (kw > 1 && (per % kw != 0 || k_tiles % per != 0)) continue;  // equal K slices only
          const int smem = detail::stream_smem_bytes(x_rows, per * kTileK, L.spt, res, kw, w);
          if (smem > 227 * 1024) continue;
          const int occ = detail::stream_occupancy(res, L.group, nb, kw, w, smem);
          if (occ == 0) continue;
          const int rows_per_cta = w / kw;
          const double tile_kb = (res ? 1.1 : 1.0) * (stream_stages() - 1) * w;  // in flight per CTA
          for (int rpw = 1; rpw <= 32; ++rpw) {
            const int groups = (R + rows_per_cta * rpw - 1) / (rows_per_cta * rpw);
            const int64_t ctas = int64_t(groups) * splits * m_tiles;
            const int q = int((ctas + num_sms - 1) / num_sms);
            if (q > occ) continue;
            const double bw = std::min(1.0, q * tile_kb / inflight_kb_needed());
            const double row = double(per) / kw + (splits > 1 ? red : 0.0) + (kw > 1 ? kw_cost(res) : 0.0);
            double cost = q * (w / 8.0) * (rpw * row + 1.0 + (splits > 1 ? split_fix() : 0.0)) / bw;
            // Uneven residual rows (dealt by weight): the busiest warp's extra ring tiles run after
            // the others are done, at about one tile-time each.
            if (res && !row_order.empty())
              cost += detail::stream_residual_imbalance(row_kept, row_order, 2, groups, kw, rpw, splits, w);
            const bool better = cost < best_cost * 0.999 ||
                                (cost <= best_cost * 1.001 &&
                                 (q * w > best_q || (q * w == best_q && splits < best_splits)));
            const StreamPlan here{per * kTileK, rpw, groups, kw, w};
            if (better) {
              best_cost = cost;
              best = here;
              best_q = q * w;  // warps per SM
              best_splits = splits;
            }
            // Every candidate's cost, for the tuner (tune_candidates keeps one per (K-range, KW, width)).
            all.push_back({cost, here});
            if (groups == 1) break;
          }
        }
    }
    cudaGetLastError();  // occupancy probes past the smem limit are not errors of this call
    // Test/tuning hook: MOSAIC_ZIPPER_STREAM_PLAN="KSPLIT,RPW[,KW[,WARPS]]" (K-range in inputs, a
    // multiple of 128; rows per warp 1..32; warps per row 1, 2, 4, 8 with KSPLIT a multiple of
    // 128 KW dividing K; warps per CTA 8 or 16), read when a layer plans an M for the first time.
    // ':' may stand for ',' (scripts/gpu-check.sh ENVS splits its values on commas).
    bool forced_plan = false;
    if (const char* e = std::getenv("MOSAIC_ZIPPER_STREAM_PLAN"); e && *e) {
      forced_plan = true;
      int ks = 0, rpw = 0, kw = 1, w = 8;
      std::string spec(e);
      std::replace(spec.begin(), spec.end(), ':', ',');
      const int n = std::sscanf(spec.c_str(), "%d,%d,%d,%d", &ks, &rpw, &kw, &w);
      MOSAIC_CHECK(n >= 2 && n <= 4 && ks > 0 && ks % kTileK == 0 && rpw >= 1 && rpw <= 32 &&
                       (kw == 1 || kw == 2 || kw == 4 || kw == 8) && (w == 8 || w == 16),
                   "MOSAIC_ZIPPER_STREAM_PLAN must be KSPLIT,RPW[,KW[,WARPS]] (got '", e, "')");
      ks = std::min(ks, L.K);
      MOSAIC_CHECK(kw == 1 || (ks % (kTileK * kw) == 0 && L.K % ks == 0), "MOSAIC_ZIPPER_STREAM_PLAN: ", e,
                   ": KW > 1 needs KSPLIT to be a multiple of 128 KW and to divide K = ", L.K);
      MOSAIC_CHECK(detail::stream_width_instantiated(L.group, kw, w), "MOSAIC_ZIPPER_STREAM_PLAN: ", e,
                   ": KW > 1 and 16 warps need group >= 128, and 16 warps KW <= 4 (group ", L.group, ")");
      const int smem = detail::stream_smem_bytes(x_rows, ks, L.spt, res, kw, w);
      MOSAIC_CHECK(detail::stream_occupancy(res, L.group, nb, kw, w, smem) > 0, "MOSAIC_ZIPPER_STREAM_PLAN: ", e,
                   " needs too much shared memory");
      const int rows_per_cta = w / kw;
      best = {ks, rpw, (R + rows_per_cta * rpw - 1) / (rows_per_cta * rpw), kw, w};
    }
    MOSAIC_CHECK(best.k_split > 0, "zipper: no stream-kernel plan fits layer [N=", L.N, ", K=", L.K, "]");
    if (forced_plan) return {best};
    // The model's best first, then the rest for tune_candidates (zipper_plan.h). A kind is a
    // (K range, warps per row, width).
    const auto kind_of = [](const StreamPlan& p) { return int64_t(p.k_split) * 64 + p.kw * 2 + (p.warps == 16 ? 1 : 0); };
    std::vector<double> costs{best_cost};
    std::vector<int64_t> kind{kind_of(best)};
    std::vector<StreamPlan> plans{best};
    for (const auto& [c, p] : all) {
      costs.push_back(c);
      kind.push_back(kind_of(p));
      plans.push_back(p);
    }
    std::vector<StreamPlan> out;
    // Timed besides, whatever their modelled cost: the best plan's neighbours in warps per row (same K
    // range and width), and the cheapest plan of the other width at the best's K range (the model
    // prices the widths by bytes in flight alone; H200, twenty-fourth session: 16 warps 14% faster on
    // LLaMA-3-8B gate_up at M = 16, 24-36% slower on qkv / o there).
    std::vector<int64_t> also;
    const auto neighbour = [&](int kw, int w) {
      if (detail::stream_width_instantiated(L.group, kw, w)) also.push_back(kind_of({best.k_split, 1, 1, kw, w}));
    };
    if (best.kw > 1) neighbour(best.kw / 2, best.warps);
    neighbour(best.kw * 2, best.warps);
    const int other = best.warps == 8 ? 16 : 8;
    double twin_cost = 1e30;
    int64_t twin = -1;
    for (size_t i = 0; i < all.size(); ++i)
      if (all[i].second.warps == other && all[i].second.k_split == best.k_split && all[i].first < twin_cost) {
        twin_cost = all[i].first;
        twin = kind_of(all[i].second);
      }
    if (twin >= 0) also.push_back(twin);
    for (int i : detail::tune_candidates(costs, kind, kTuneCandidates, kTuneMargin, also))
      out.push_back(plans[size_t(i)]);
    return out;
  }

  // Milliseconds per launch of each of n candidates (launch(i)), candidates interleaved within a round.
  // Default (cold, since the seventeenth session): single launches, each after a write of twice the L2 size
  // to a scratch buffer, the best of kTuneColdRounds; the engine streams every layer's weights from DRAM,
  // which is what this times. MOSAIC_ZIPPER_TUNE_COLD=0 (hot): a warm-up launch, then the best of 3 rounds
  // of kTuneLaunches back-to-back launches of one layer, i.e. its weights from L2. Hot, LLaMA-3-8B qkv at
  // M = 4 tied KW 2 and KW 4 (11.08 / 11.28 us) and kept KW 4; cold times them 13.28 / 13.79 and keeps KW 2,
  // which the benchmark (DRAM) has 7% faster: 12.25 -> 11.33 us; over LLaMA-3-8B and Qwen3-8B at M = 1, 4, 8
  // (24 layers) two cold processes against the hot one: geometric mean -1.5% / -0.7%, no layer slower by
  // more than 1% (H200, bench/results/gemm-h200-2026-11-29-s17-cold-tuner.md). Cold processes still differ
  // on near-tied plans (3 of 36 choices, LLaMA-3-8B gate_up, within 1.5% in the benchmark).
  template <typename Launch>
  static std::vector<float> time_candidates(size_t n, const Launch& launch, cudaStream_t s) {
    struct Scratch {  // destroyed on every exit, errors included
      cudaEvent_t e0 = nullptr, e1 = nullptr;
      void* flush = nullptr;
      ~Scratch() {
        if (e0) cudaEventDestroy(e0);
        if (e1) cudaEventDestroy(e1);
        if (flush) cudaFree(flush);
      }
    } sc;
    check_cuda(cudaEventCreate(&sc.e0), "cudaEventCreate (zipper tuning)");
    check_cuda(cudaEventCreate(&sc.e1), "cudaEventCreate (zipper tuning)");
    const bool cold = tune_cold();
    size_t flush_bytes = 0;
    if (cold) {
      int l2 = 0;
      check_cuda(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, current_device()),
                 "cudaDeviceGetAttribute (L2 size)");
      flush_bytes = 2 * size_t(std::max(l2, 1 << 20));
      check_cuda(cudaMalloc(&sc.flush, flush_bytes), "cudaMalloc (zipper tuning: L2 flush buffer)");
    }
    const int rounds = cold ? kTuneColdRounds : 3, per_round = cold ? 1 : kTuneLaunches;
    std::vector<float> best(n, 1e30f);
    if (cold)
      for (size_t i = 0; i < n; ++i) launch(i);  // warm-up of every candidate (instruction caches, smem carve-out)
    for (int round = 0; round < rounds; ++round)
      for (size_t i = 0; i < n; ++i) {
        if (cold)
          check_cuda(cudaMemsetAsync(sc.flush, round & 0xff, flush_bytes, s), "cudaMemsetAsync (zipper tuning)");
        else
          launch(i);
        check_cuda(cudaEventRecord(sc.e0, s), "cudaEventRecord (zipper tuning)");
        for (int r = 0; r < per_round; ++r) launch(i);
        check_cuda(cudaEventRecord(sc.e1, s), "cudaEventRecord (zipper tuning)");
        check_cuda(cudaEventSynchronize(sc.e1), "zipper tuning");
        float ms = 0;
        check_cuda(cudaEventElapsedTime(&ms, sc.e0, sc.e1), "cudaEventElapsedTime (zipper tuning)");
        best[i] = std::min(best[i], ms / float(per_round));
      }
    return best;
  }

  // Times each candidate on this call's operands (time_candidates)
  // and returns the fastest. The operands are the caller's: every candidate computes the same Y.
  StreamPlan tune_stream(const std::vector<StreamPlan>& cands, const void* X, void* Y, int M, int bf16, bool residual,
                         cudaStream_t s) {
    std::vector<float> best_ms = time_candidates(cands.size(), [&](size_t i) {
      launch_stream_plan(cands[i], X, Y, M, bf16, residual, s);
    }, s);
    size_t win = size_t(detail::tune_pick(best_ms, kTuneMinGain));  // the model's plan on a near-tie
    // A plan other than the model's is kept only if it wins again: the model's plan and the winner
    // timed once more, each keeping its best of both rounds. One slow round of the model's plan had
    // made a process keep LLaMA-3-8B qkv's KW = 4 at M = 1 (9.86 vs 10.18 us while tuning; the
    // benchmark then 7.96 us against KW = 8's 7.35 in the other processes; H200, nineteenth session).
    if (win != 0) {
      const size_t pair[2] = {0, win};
      const std::vector<float> again = time_candidates(2, [&](size_t i) {
        launch_stream_plan(cands[pair[i]], X, Y, M, bf16, residual, s);
      }, s);
      best_ms[0] = std::min(best_ms[0], again[0]);
      best_ms[win] = std::min(best_ms[win], again[1]);
      win = detail::tune_pick({best_ms[0], best_ms[win]}, kTuneMinGain) == 0 ? 0 : win;
    }
    if (verbose())
      for (size_t i = 0; i < cands.size(); ++i)
        std::fprintf(stderr, "zipper stream tune N=%d K=%d M=%d res=%d: k_split=%d kw=%d rpw=%d warps=%d %.2f us%s\n",
                     L.N, L.K, M, int(residual), cands[i].k_split, cands[i].kw, cands[i].rpw, cands[i].warps,
                     best_ms[i] * 1e3f,
                     i == win ? " (kept)" : i == 0 ? " (model)" : "");
    return cands[win];
  }

  // The stream plan of this M: cached per layer; the first call of a layer shape tunes (when on and
  // the stream is not being captured into a graph) and every layer of that shape reuses the result.
  StreamPlan plan_stream(int M, bool res, const void* X, void* Y, int bf16, bool residual, cudaStream_t s) {
    const int x_rows = std::min(M, 16) + 1;
    const auto key = std::make_pair(x_rows, res);
    if (auto it = stream_plans.find(key); it != stream_plans.end()) return it->second;
    const TunedKey tk{current_device(), L.N, L.K, L.group, x_rows, res, res && !row_order.empty()};
    const char* forced = std::getenv("MOSAIC_ZIPPER_STREAM_PLAN");  // a forced plan is never tuned over
    if (!(forced && *forced)) {
      const std::lock_guard<std::mutex> lock(tuned_mu());
      if (auto it = tuned().find(tk); it != tuned().end()) return stream_plans[key] = it->second;
    }
    const std::vector<StreamPlan> cands = stream_candidates(M, res);
    StreamPlan p = cands.front();
    if (tune_enabled() && cands.size() > 1 && !stream_capturing(s)) {
      p = tune_stream(cands, X, Y, M, bf16, residual, s);
      const std::lock_guard<std::mutex> lock(tuned_mu());
      tuned()[tk] = p;
    }
    if (verbose())
      std::fprintf(stderr, "zipper stream plan N=%d K=%d M=%d res=%d: k_split=%d kw=%d rpw=%d warps=%d groups=%d splits=%d%s\n",
                   L.N, L.K, M, int(res), p.k_split, p.kw, p.rpw, p.warps, p.n_groups, (L.K + p.k_split - 1) / p.k_split,
                   res && !row_order.empty() ? " (rows dealt by weight)" : "");
    return stream_plans[key] = p;
  }
  // Tuned plans shared by every layer of one shape (process-wide).
  // device, N, K, group, x rows, residual, rows dealt by weight (a clustered layer does not share a plan
  // with an even one)
  using TunedKey = std::tuple<int, int, int, int, int, bool, bool>;
  static std::map<TunedKey, StreamPlan>& tuned() {
    static std::map<TunedKey, StreamPlan> m;
    return m;
  }
  static std::mutex& tuned_mu() {
    static std::mutex m;
    return m;
  }

  void run_stream(const void* X, void* Y, int M, int bf16, bool residual, cudaStream_t s) {
    launch_stream_plan(plan_stream(M, residual && L.res_qweight, X, Y, bf16, residual, s), X, Y, M, bf16, residual, s);
  }
  void launch_stream_plan(const StreamPlan& p, const void* X, void* Y, int M, int bf16, bool residual, cudaStream_t s) {
    detail::FusedLaunch f;
    f.X = X;
    f.Y = Y;
    f.M = M;
    f.bf16 = bf16;
    f.residual = residual ? 1 : 0;
    f.k_split = p.k_split;
    f.rows_per_warp = p.rpw;
    f.n_groups = p.n_groups;
    f.k_warps = p.kw;
    f.warps = p.warps;
    f.stages = stream_stages();
    f.row_interleave = row_interleave() ? 1 : 0;
    f.pdl = pdl ? 1 : 0;
    const int splits = (L.K / kTileK + p.k_split / kTileK - 1) / (p.k_split / kTileK);
    const int m_tiles = (M + 15) / 16;
    if (splits > 1) ensure_ws(size_t(M) * L.N, size_t(L.N / 16) * m_tiles);
    f.ws = ws;
    f.counters = counters;
    f.num_sms = num_sms;
    detail::launch_stream(layer(bf16), f, s);
    check_cuda(cudaGetLastError(), "zipper stream kernel launch");
  }

  // The stream kernel for M <= 16. (v9 sent M = 8..16 of small layers to the v8 kernel; v10's
  // in-CTA K split made the stream kernel faster there: H100, v10 run 2, qkv M = 16 dense 17.40
  // -> 14.75 us, o 15.03 -> 12.11.)
  bool use_stream(int M) const { return !force_v8() && M <= 16; }

  void run_fused(const void* X, void* Y, int M, int bf16, bool residual, cudaStream_t s) {
    if (use_stream(M)) return run_stream(X, Y, M, bf16, residual, s);
    detail::FusedLaunch f;
    f.X = X;
    f.Y = Y;
    f.M = M;
    f.bf16 = bf16;
    f.residual = residual ? 1 : 0;
    f.m_block = M <= 16 ? 1 : M <= 32 ? 2 : 4;
    const int n_tiles = (L.N + detail::kCtaN - 1) / detail::kCtaN;
    const int m_tiles = (M + 16 * f.m_block - 1) / (16 * f.m_block);
    const int k_tiles = L.K / kTileK;
    f.k_split = plan_k_split(M, f.m_block, residual && L.res_qweight, n_tiles, m_tiles);
    const int splits = (k_tiles + f.k_split / kTileK - 1) / (f.k_split / kTileK);
    if (splits > 1) ensure_ws(size_t(M) * L.N, size_t(n_tiles) * m_tiles);
    f.ws = ws;
    f.counters = counters;
    f.num_sms = num_sms;
    detail::launch_fused(layer(bf16), f, s);
    check_cuda(cudaGetLastError(), "zipper fused kernel launch");
  }

  // The wgmma kernel: token tile by M (32 / 64 rows in one tile up to M = 64, 128-row tiles
  // beyond), ring depth so that the small tiles fit 2 CTAs per SM, and a K split when the tiles
  // alone would leave SMs idle (the model: wgmma_k_tiles_per_cta, zipper_plan.h). Cached per token tile.
  struct WgPlan {
    int tok = 64, stages = 4, k_split = 0, wtma = 0;
    int64_t slots = 0;  // CTAs of this tile resident on the GPU at once
    int sk_ctas = 0;    // > 0: stream-K over this many CTAs (k_split unused)
    int sk_segs = 1;    // stream-K: the most CTAs one tile is shared by
  };
  // Cached per (token tile, token tiles): the K split depends on how many tiles M makes (v1 keyed
  // by the token tile alone, so M = 4096 reused M = 128's split: qkv 787 us instead of ~470).
  std::map<std::pair<int, int>, WgPlan> wg_plans;
  WgPlan plan_wgmma(int M) {
    int tok = M <= 16 ? 16 : M <= 32 ? 32 : M <= 64 ? 64 : 128;
    if (wgmma_tok_forced()) tok = wgmma_tok_forced();
    const auto key = std::make_pair(tok, (M + tok - 1) / tok);
    if (auto it = wg_plans.find(key); it != wg_plans.end()) return it->second;
    WgPlan p;
    p.tok = tok;
    p.wtma = wgmma_wtma();
    // The deepest ring that keeps 2 CTAs per SM for the small tiles (latency hiding by warps) and
    // 1 for tok = 128 (v2 ncu: consumers waited for data 35% of the time with 4 stages).
    const int want = tok <= 64 ? 2 : 1;
    p.stages = 0;
    for (int st = detail::kWgMaxStages; st >= 2 && !p.stages; --st)
      if (detail::wgmma_occupancy(tok, detail::wgmma_smem_bytes(tok, L.spt, st)) >= want) p.stages = st;
    if (wgmma_stages_forced()) p.stages = wgmma_stages_forced();
    MOSAIC_CHECK(p.stages > 0, "zipper wgmma: no ring depth of a ", tok, "-token tile fits for layer [N=", L.N,
                 ", K=", L.K, "]");
    const int smem = detail::wgmma_smem_bytes(tok, L.spt, p.stages);
    const int occ = detail::wgmma_occupancy(tok, smem);
    MOSAIC_CHECK(occ > 0, "zipper wgmma: ", p.stages, " stages of a ", tok, "-token tile (", smem,
                 " bytes of shared memory) do not fit on this GPU for layer [N=", L.N, ", K=", L.K, "]");
    const int k_tiles = L.K / kTileK;
    const int64_t base = int64_t((L.N + detail::kWgOut - 1) / detail::kWgOut) * ((M + tok - 1) / tok);
    const int best_per = detail::wgmma_k_tiles_per_cta(k_tiles, base, int64_t(occ) * num_sms, tok);
    p.slots = int64_t(occ) * num_sms;
    p.k_split = best_per * kTileK;
    // A deeper ring at 1 CTA per SM where the plan's CTAs would be all fill (zipper_plan.h;
    // MOSAIC_ZIPPER_WGMMA_DEEP=0 keeps the plan above, for comparisons).
    if (!wgmma_ksplit_forced() && wgmma_deep_enabled())
      if (const auto d = deeper_ring(p, base);
          d && detail::wgmma_prefer_deeper_ring(tok, k_tiles, best_per, p.stages, base, d->slots))
        p = *d;
    if (wgmma_ksplit_forced()) p.k_split = std::min(wgmma_ksplit_forced(), L.K);
    // Stream-K (zipper_plan.h): where the rule says so, or everywhere it applies with MOSAIC_ZIPPER_WGMMA_SK=1.
    const int sk_mode = wgmma_sk_mode();
    if (tok <= 64 && !wgmma_ksplit_forced() &&
        (sk_mode == 1 ||
         (sk_mode < 0 && detail::stream_k_by_default(base, (L.K + p.k_split - 1) / p.k_split, tok, p.slots))))
      if (const detail::StreamKPlan sk = detail::stream_k_plan(base, k_tiles, p.slots); sk.ctas > 0) {
        p.sk_ctas = sk.ctas;
        p.sk_segs = sk.segs;
        p.k_split = L.K;
      }
    if (verbose())
      std::fprintf(stderr,
                   "zipper wgmma plan N=%d K=%d M=%d: tok=%d stages=%d occ=%d k_split=%d splits=%d wtma=%d sk_ctas=%d "
                   "sk_segs=%d\n",
                   L.N, L.K, M, tok, p.stages, occ, p.k_split, (L.K + p.k_split - 1) / p.k_split, p.wtma, p.sk_ctas,
                   p.sk_segs);
    return wg_plans[key] = p;
  }

  // The plan p one ring stage deeper, at the occupancy that leaves and with the model's K split for
  // those slots (base: output tiles x token tiles); none when the stages are forced or no deeper ring fits.
  std::optional<WgPlan> deeper_ring(const WgPlan& p, int64_t base) const {
    if (wgmma_stages_forced() || p.stages >= detail::kWgMaxStages) return std::nullopt;
    const int occ = detail::wgmma_occupancy(p.tok, detail::wgmma_smem_bytes(p.tok, L.spt, p.stages + 1));
    if (occ == 0) return std::nullopt;
    WgPlan d = p;
    d.stages = p.stages + 1;
    d.slots = int64_t(occ) * num_sms;
    d.k_split = detail::wgmma_k_tiles_per_cta(L.K / kTileK, base, d.slots, p.tok) * kTileK;
    return d;
  }

  // Rows of M that Auto runs as a second launch after the wgmma kernel's 128-token tiles (the rule:
  // detail::wgmma_tail_rows, zipper_plan.h), with this GPU's resident CTAs for those tiles.
  int tail_rows(int M) {
    if (M <= 128 || M % 128 == 0 || force_v8() || wgmma_tail_max() == 0) return 0;
    const WgPlan p = plan_wgmma(M - M % 128);
    if (p.tok != 128) return 0;  // (a forced token tile)
    return int(detail::wgmma_tail_rows(M, (L.N + detail::kWgOut - 1) / detail::kWgOut, p.slots, wgmma_tail_max()));
  }

  void run_wgmma(const void* X, void* Y, int M, int bf16, bool residual, cudaStream_t s) {
    WgPlan p = plan_wgmma(M);
    if (tune_wgmma_enabled() && !wgmma_ksplit_forced() && p.sk_ctas == 0) p = tuned_wgmma(p, X, Y, M, bf16, residual, s);
    launch_wgmma_plan(p, X, Y, M, bf16, residual, s);
  }

  // The K split of this (token tile, token tiles) timed at first use among wgmma_tune_k_tiles'
  // candidates, as tune_stream does for the stream kernel (the model's split on a near-tie; never
  // during graph capture; shared by every layer of the shape).
  std::map<std::pair<int, int>, WgPlan> wg_tuned_plans;  // this layer's tuned plans, by (tok, token tiles)
  WgPlan tuned_wgmma(const WgPlan& p, const void* X, void* Y, int M, int bf16, bool residual, cudaStream_t s) {
    const int m_tiles = (M + p.tok - 1) / p.tok, k_tiles = L.K / kTileK;
    const auto key = std::make_pair(p.tok, m_tiles);
    if (auto it = wg_tuned_plans.find(key); it != wg_tuned_plans.end()) return it->second;
    const WgTunedKey tk{current_device(), L.N, L.K, L.group, p.tok, m_tiles, residual && L.res_qweight};
    {
      const std::lock_guard<std::mutex> lock(tuned_mu());
      if (auto it = wg_tuned().find(tk); it != wg_tuned().end()) return wg_tuned_plans[key] = it->second;
    }
    const std::vector<int> pers = detail::wgmma_tune_k_tiles(k_tiles, p.k_split / kTileK);
    if (stream_capturing(s)) return p;
    std::vector<WgPlan> cands;  // the model's plan first
    for (int per : pers) {
      WgPlan c = p;
      c.k_split = per * kTileK;
      cands.push_back(c);
    }
    // One ring stage deeper than the plan's at the occupancy that leaves, with the model's K split for
    // those slots: LLaMA-3-8B o at M = 17..64 ran 3-10% faster with 4 stages at 1 CTA per SM and 4 splits
    // than with 3 stages at 2 CTAs per SM and 8 splits of 4 k-tiles, where qkv, gate_up and down lost
    // (H200, twenty-fifth session, bench/results/gemm-h200-2026-11-30-s25-wgmma-stages-ksplit.md).
    if (const auto d = deeper_ring(p, int64_t((L.N + detail::kWgOut - 1) / detail::kWgOut) * m_tiles)) cands.push_back(*d);
    if (cands.size() < 2) return p;
    const std::vector<float> ms = time_candidates(cands.size(), [&](size_t i) {
      launch_wgmma_plan(cands[i], X, Y, M, bf16, residual, s);
    }, s);
    const size_t win = size_t(detail::tune_pick(ms, kTuneMinGain));
    if (verbose())
      for (size_t i = 0; i < cands.size(); ++i)
        std::fprintf(stderr, "zipper wgmma tune N=%d K=%d M=%d: tok=%d stages=%d k_split=%d %.2f us%s\n", L.N, L.K, M,
                     p.tok, cands[i].stages, cands[i].k_split, ms[i] * 1e3f,
                     i == win ? " (kept)" : i == 0 ? " (model)" : "");
    {
      const std::lock_guard<std::mutex> lock(tuned_mu());
      wg_tuned()[tk] = cands[win];
    }
    return wg_tuned_plans[key] = cands[win];
  }
  using WgTunedKey = std::tuple<int, int, int, int, int, int, bool>;  // device, N, K, group, tok, token tiles, res
  static std::map<WgTunedKey, WgPlan>& wg_tuned() {
    static std::map<WgTunedKey, WgPlan> m;
    return m;
  }

  void launch_wgmma_plan(const WgPlan& p, const void* X, void* Y, int M, int bf16, bool residual, cudaStream_t s) {
    detail::WgmmaLaunch f;
    f.X = X;
    f.Y = Y;
    f.M = M;
    f.bf16 = bf16;
    f.residual = residual && L.res_qweight ? 1 : 0;
    f.tok = p.tok;
    f.stages = p.stages;
    f.k_split = p.k_split;
    f.pdl = pdl ? 1 : 0;
    const int n_tiles = (L.N + detail::kWgOut - 1) / detail::kWgOut, m_tiles = (M + p.tok - 1) / p.tok;
    f.ws = nullptr;
    f.sk_ctas = p.sk_ctas;
    // Slices of partial sums: splits - 1, or (stream-K) one fewer than the CTAs the most shared tile has.
    const int slices = p.sk_ctas > 0 ? p.sk_segs - 1 : (L.K + p.k_split - 1) / p.k_split - 1;
    if (slices > 0) {
      // With a ZipperShared one buffer serves every layer (nothing is kept between calls, and the
      // layers run in stream order).
      const size_t elems = size_t(slices) * n_tiles * m_tiles * detail::kWgOut * p.tok;
      if (shared) {
        grow_buffer(shared->impl_->part, shared->impl_->part_elems, elems, shared->impl_->retired,
                    "cudaMalloc (split-K partial sums)");
        f.ws = shared->impl_->part;
      } else {
        grow_buffer(part, part_elems, elems, retired, "cudaMalloc (split-K partial sums)");
        f.ws = part;
      }
    }
    if (slices > 0 || p.sk_ctas > 0) ensure_ws(0, 2 * size_t(n_tiles) * m_tiles);
    f.counters = counters;
    // Evict-first only when the weights are read once (one token tile; H200 v2: forcing it on at
    // M >= 256 measured the same or slower).
    f.evict_first = m_tiles == 1 ? 1 : 0;
    f.wtma = p.wtma;
    detail::launch_wgmma(layer(bf16), f, s);
    check_cuda(cudaGetLastError(), "zipper wgmma kernel launch");
  }

  void run_dequant(const void* X, void* Y, int M, int bf16, bool residual, cudaStream_t s) {
    const size_t deq_bytes = size_t(L.N) * L.K * 2;
    void* buf;
    if (shared) {
      shared->reserve(deq_bytes);
      buf = shared->impl_->deq;
    } else {
      if (!deq) check_cuda(cudaMalloc(&deq, deq_bytes), "cudaMalloc (dequantized weights)");
      buf = deq;
    }
    detail::launch_dequant(layer(bf16), buf, bf16, residual ? 1 : 0, s);
    check_cuda(cudaGetLastError(), "zipper dequant kernel launch");
    cublas_dequantized(buf, X, Y, M, bf16, s);
  }

  // Y = X W^T with W the dequantized [N, K] weights: cuBLAS (the shared handle, or this layer's).
  void cublas_dequantized(const void* W, const void* X, void* Y, int M, int bf16, cudaStream_t s) {
    cublasHandle_t handle;
    if (shared) {
      shared->reserve(0);  // creates the handle
      handle = shared->impl_->cublas;
    } else {
      if (!cublas) check_cublas(cublasCreate(&cublas), "cublasCreate");
      handle = cublas;
    }
    check_cublas(cublasSetStream(handle, s), "cublasSetStream");
    const float alpha = 1.f, beta = 0.f;
    const cudaDataType t = bf16 ? CUDA_R_16BF : CUDA_R_16F;
    // Row-major Y[M,N] = X[M,K] W[N,K]^T is column-major Y^T (N x M) = W^T' ... i.e. op(A) = T.
    check_cublas(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, L.N, M, L.K, &alpha, W, t, L.K, X, t, L.K, &beta,
                              Y, t, L.N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                 "cublasGemmEx (dequantized weights)");
  }
};

ZipperLinear::ZipperLinear(const PackedLinear& w) : impl_(std::make_unique<Impl>()) {
  const ZipperLayout z = repack_for_zipper(w);  // validates the layer first
  MOSAIC_CHECK(cuda_device_count() > 0, "zipper: no CUDA GPU available for layer [N=", w.N, ", K=", w.K, "]");
  auto& L = impl_->L;
  L.N = int(z.N);
  L.K = int(z.K);
  L.group = z.group;
  L.spt = z.scales_per_tile;
  L.words_per_row = z.words_per_row;
  L.qweight = upload(z.qweight);
  L.scales = upload(z.scales);
  if (z.nnzb > 0) {
    L.res_qweight = upload(z.res_qweight);
    L.res_scales = upload(z.res_scales);
    L.res_rowptr = upload(z.res_rowptr);
    L.res_bitmap = upload(z.res_bitmap);
    L.res_colidx = upload(z.res_colidx);
    impl_->row_kept = detail::residual_row_counts(z.res_rowptr);
    const int mode = row_order_mode();
    if (mode == 1 || (mode < 0 && detail::residual_rows_uneven(impl_->row_kept, L.K / kTileK))) {
      impl_->row_order = detail::residual_row_order(impl_->row_kept);
      L.res_row_order = upload(impl_->row_order);
    }
  }
  impl_->Lb = L;
  impl_->Lb.scales = upload(to_bf16(z.scales));
  impl_->Lb.res_scales = upload(to_bf16(z.res_scales));
  impl_->nnzb = z.nnzb;
  impl_->bytes_all = z.weight_bytes(true);
  impl_->bytes_base = z.weight_bytes(false);
  int dev = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&impl_->num_sms, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute");
}

ZipperLinear::~ZipperLinear() = default;

void ZipperLinear::set_programmatic_launch(bool on) { impl_->pdl = on; }

void ZipperLinear::share(std::shared_ptr<ZipperShared> shared) {
  MOSAIC_CHECK(shared != nullptr, "ZipperLinear::share: null ZipperShared");
  if (impl_->deq) {
    check_cuda(cudaFree(impl_->deq), "cudaFree (dequantized weights)");
    impl_->deq = nullptr;
  }
  impl_->shared = std::move(shared);
}

void ZipperLinear::dequantize(void* W, DType dt, cudaStream_t stream) const {
  const auto& L = impl_->L;
  MOSAIC_CHECK(dt == DType::F16 || dt == DType::BF16, "zipper dequantize: dtype must be fp16 or bf16 for W [", L.N,
               ", ", L.K, "]");
  MOSAIC_CHECK(W != nullptr && reinterpret_cast<uintptr_t>(W) % 16 == 0 && is_device_pointer(W),
               "zipper dequantize: W [", L.N, ", ", L.K, "] must be 16-byte aligned device memory");
  const int bf16 = dt == DType::BF16 ? 1 : 0;
  detail::launch_dequant(impl_->layer(bf16), W, bf16, 1, stream);
  check_cuda(cudaGetLastError(), "zipper dequant kernel launch");
}

void ZipperLinear::gemm_dequantized(const void* W, const void* X, void* Y, int64_t M, DType dt,
                                    cudaStream_t stream) const {
  const auto& L = impl_->L;
  MOSAIC_CHECK(dt == DType::F16 || dt == DType::BF16, "zipper gemm_dequantized: dtype must be fp16 or bf16");
  MOSAIC_CHECK(M >= 1 && M <= (int64_t(1) << 24), "zipper gemm_dequantized: M must be in 1..16777216 for X [", M,
               ", ", L.K, "] x W [", L.N, ", ", L.K, "]^T");
  MOSAIC_CHECK(W != nullptr && X != nullptr && Y != nullptr, "zipper gemm_dequantized: null W, X or Y");
  impl_->cublas_dequantized(W, X, Y, int(M), dt == DType::BF16 ? 1 : 0, stream);
}

int64_t ZipperLinear::N() const { return impl_->L.N; }
int64_t ZipperLinear::K() const { return impl_->L.K; }
int64_t ZipperLinear::blocks_kept() const { return impl_->nnzb; }
int64_t ZipperLinear::weight_bytes(bool with_residual) const {
  return with_residual ? impl_->bytes_all : impl_->bytes_base;
}

// The wgmma kernel by default where it measured faster than dequantize + cuBLAS: the ranges and
// their measurements are at wgmma_by_default (zipper_plan.h, CPU-tested); the earlier v4 ranges
// are in docs/kernels-notes.md ("wgmma kernel").
bool ZipperLinear::wgmma_default(int64_t M) const {
  return detail::wgmma_by_default(impl_->L.N, impl_->L.K, M);
}

// Measured on H100 (docs/kernels.md): the fused mma.sync kernel wins while the GEMM is
// memory-bound; past that, dequantize once + cuBLAS (wgmma) is faster.
// Fused up to M = 32; up to M = 64 also for large layers (N*K >= 40 Mi weights), where the
// dequantize path's extra N*K*4 bytes cost more than the fused kernel's mma.sync work: measured
// on H100 (2026-11-27 run) fused beat dequant+cuBLAS at M = 64 on all 8 such shapes (by 5..34%)
// and lost on the 4 smaller ones (qkv, o of the 8B models: 16.8M and 25.2M weights).
GemmPath ZipperLinear::choose_path(int64_t M) const {
  if (M <= (int64_t(65535) * 32) && (wgmma_mode() == 1 || (wgmma_mode() < 0 && wgmma_default(M))))
    return GemmPath::Wgmma;
  if (M <= 32) return GemmPath::Fused;
  if (M <= 64 && int64_t(impl_->L.N) * impl_->L.K >= (int64_t(40) << 20)) return GemmPath::Fused;
  return GemmPath::Dequant;
}

int64_t ZipperLinear::auto_tail_rows(int64_t M) const {
  if (choose_path(M) != GemmPath::Wgmma || M > int64_t(65535) * 32) return 0;
  return impl_->tail_rows(int(M));
}

void ZipperLinear::gemm(const void* X, void* Y, int64_t M, DType dt, cudaStream_t stream, Variant v,
                        GemmPath path) const {
  const auto& L = impl_->L;
  const auto shapes = [&] {
    return ::mosaic::detail::concat("X [", M, ", ", L.K, "] x W [", L.N, ", ", L.K, "]^T -> Y [", M, ", ", L.N, "]");
  };
  MOSAIC_CHECK(dt == DType::F16 || dt == DType::BF16, "zipper gemm: dtype must be fp16 or bf16 (got code ", int(dt),
               ") for ", shapes());
  MOSAIC_CHECK(M >= 1 && M <= (int64_t(1) << 24), "zipper gemm: M must be in 1..16777216 for ", shapes());
  MOSAIC_CHECK(X != nullptr && Y != nullptr, "zipper gemm: null X or Y for ", shapes());
  MOSAIC_CHECK(reinterpret_cast<uintptr_t>(X) % 16 == 0 && reinterpret_cast<uintptr_t>(Y) % 16 == 0,
               "zipper gemm: X and Y must be 16-byte aligned for ", shapes());
  MOSAIC_CHECK(is_device_pointer(X) && is_device_pointer(Y), "zipper gemm: X and Y must be device memory for ",
               shapes());
  const int bf16 = dt == DType::BF16 ? 1 : 0;
  const bool automatic = path == GemmPath::Auto;
  if (automatic) path = choose_path(M);
  const bool fuse_residual = v == Variant::Zipper;
  // The wgmma kernel's token tiles go in grid.y (<= 65535 tiles of >= 32 rows).
  if (path == GemmPath::Wgmma && M > int64_t(65535) * 32) path = GemmPath::Dequant;
  // A few rows past a multiple of the 128-token tile can cost the wgmma kernel a whole wave more
  // (tail_rows): those r <= 64 rows go to a second launch on the same stream that writes the last
  // r rows of Y: the stream kernel up to 16 rows, the wgmma kernel's small tiles above (under PDL
  // its weight prefetch overlaps the first launch; its workspace use waits for it).
  const int64_t tail = automatic ? auto_tail_rows(M) : 0;
  if (tail > 0) {
    const int64_t head = M - tail;
    const size_t esz = 2;  // fp16 / bf16
    const void* Xt = static_cast<const uint8_t*>(X) + size_t(head) * L.K * esz;
    void* Yt = static_cast<uint8_t*>(Y) + size_t(head) * L.N * esz;
    impl_->run_wgmma(X, Y, int(head), bf16, fuse_residual, stream);
    if (tail <= 16)
      impl_->run_fused(Xt, Yt, int(tail), bf16, fuse_residual, stream);
    else
      impl_->run_wgmma(Xt, Yt, int(tail), bf16, fuse_residual, stream);
  } else if (path == GemmPath::Fused)
    impl_->run_fused(X, Y, int(M), bf16, fuse_residual, stream);
  else if (path == GemmPath::Wgmma)
    impl_->run_wgmma(X, Y, int(M), bf16, fuse_residual, stream);
  else
    impl_->run_dequant(X, Y, int(M), bf16, fuse_residual, stream);
  if (v == Variant::Unfused) {
    detail::launch_residual_only(impl_->layer(bf16), X, Y, int(M), bf16, stream);
    check_cuda(cudaGetLastError(), "zipper residual kernel launch");
  }
}

}  // namespace mosaic::cuda
