// The GEMM benchmark. Every time is the median of `reps` CUDA-event-timed batches; each batch
// cycles through enough copies of the weights (> 3x the 50 MB L2) that they come from device
// memory, as in a real forward pass. cuBLAS FP16 is timed in the same process on the same card.
#include "cuda/gemm_bench.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <cstdio>
#include <ctime>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <vector>

#include "cuda/w4a8.h"
#include "format/int_scale_grid.h"
#include "format/packed_linear.h"
#include "cuda/zipper.h"
#include "cuda/zipper_launch.h"
#include "util/atomic_file.h"
#include "util/env.h"
#include "util/error.h"
#include "util/half.h"

namespace mosaic::cuda {
namespace {

void ck(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail("CUDA error in ", what, ": ", cudaGetErrorString(e));
}

struct Shape {
  std::string name;
  int64_t K, N;
};

std::vector<Shape> parse_shapes(const std::string& spec) {
  std::vector<Shape> out;
  std::stringstream ss(spec);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item == "llama3-8b") {
      out.insert(out.end(), {{"llama3-8b.qkv", 4096, 6144}, {"llama3-8b.o", 4096, 4096},
                             {"llama3-8b.gate_up", 4096, 28672}, {"llama3-8b.down", 14336, 4096}});
    } else if (item == "qwen3-8b") {
      out.insert(out.end(), {{"qwen3-8b.qkv", 4096, 6144}, {"qwen3-8b.o", 4096, 4096},
                             {"qwen3-8b.gate_up", 4096, 24576}, {"qwen3-8b.down", 12288, 4096}});
    } else if (item == "llama3-70b") {
      out.insert(out.end(), {{"llama3-70b.qkv", 8192, 10240}, {"llama3-70b.o", 8192, 8192},
                             {"llama3-70b.gate_up", 8192, 57344}, {"llama3-70b.down", 28672, 8192}});
    } else {
      const auto x = item.find('x');
      long long k = 0, n = 0;
      char tail = 0;
      MOSAIC_CHECK(x != std::string::npos && std::sscanf(item.c_str(), "%lldx%lld%c", &k, &n, &tail) == 2 && k > 0 &&
                       n > 0,
                   "bench gemm: shape '", item, "' is neither a preset (llama3-8b, qwen3-8b, llama3-70b) nor KxN");
      out.push_back({item, k, n});
    }
  }
  MOSAIC_CHECK(!out.empty(), "bench gemm: no shapes given");
  return out;
}

// Fast deterministic random bytes (xorshift64*).
struct Rng {
  uint64_t s;
  uint64_t next() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 2685821657736338717ull;
  }
  float uniform() { return float(next() >> 40) / float(1 << 24); }
};

// Random layer: codes uniform, scales 0.005..0.015, residual blocks (Br x 64, scales ~1/8 of the
// base) at random columns: each kept with probability `budget` (binomial counts per block row);
// balanced: exactly floor(budget x blocks per row) or one more in every block row; rows: random
// block rows filled to ceil(row_cap x blocks per row), floor(budget x blocks) in all (the kernels'
// slowest row sets their time, so this is the worst case under a per-row cap).
using ResPattern = GemmBenchOptions::ResPattern;
PackedLinear random_layer(int64_t N, int64_t K, double budget, uint64_t seed, int Br, ResPattern pattern,
                          double row_cap) {
  Rng rng{seed * 0x9E3779B97F4A7C15ull + 1};
  PackedLinear w;
  w.N = N;
  w.K = K;
  w.group = 128;
  w.qweight.resize(size_t(N * K / 2));
  for (size_t i = 0; i + 8 <= w.qweight.size(); i += 8) {
    const uint64_t v = rng.next();
    std::memcpy(&w.qweight[i], &v, 8);
  }
  w.scales.resize(size_t(N * K / 128));
  for (auto& s : w.scales) s = float_to_fp16(0.005f + 0.01f * rng.uniform());
  if (budget <= 0) return w;
  w.block_rows = Br;
  const int64_t nbr = N / Br, nbc = K / 64;
  w.res_rowptr.assign(size_t(nbr + 1), 0);
  std::vector<int32_t> cols(size_t(nbc), 0);
  std::vector<int64_t> rows_n;  // ResPattern::kRows: blocks of each block row
  if (pattern == ResPattern::kRows)
    rows_n = concentrated_row_counts(nbr, budget_blocks(budget, nbr * nbc), row_cap_blocks(row_cap, nbc),
                                     [&] { return rng.next(); });
  for (int64_t r = 0; r < nbr; ++r) {
    if (pattern != ResPattern::kBinomial) {  // a random subset of fixed size: partial Fisher-Yates, then column order
      const double want = budget * double(nbc);
      const int64_t n = pattern == ResPattern::kRows
                            ? rows_n[size_t(r)]
                            : std::min<int64_t>(nbc, int64_t(want) + (rng.uniform() < want - std::floor(want) ? 1 : 0));
      for (int64_t c = 0; c < nbc; ++c) cols[size_t(c)] = int32_t(c);
      for (int64_t i = 0; i < n; ++i)
        std::swap(cols[size_t(i)], cols[size_t(i + int64_t(rng.next() % uint64_t(nbc - i)))]);
      std::sort(cols.begin(), cols.begin() + n);
      w.res_colidx.insert(w.res_colidx.end(), cols.begin(), cols.begin() + n);
    } else {
      for (int64_t c = 0; c < nbc; ++c)
        if (rng.uniform() < budget) w.res_colidx.push_back(int32_t(c));
    }
    w.res_rowptr[size_t(r + 1)] = int32_t(w.res_colidx.size());
  }
  const size_t nnzb = w.res_colidx.size();
  w.res_qvalues.resize(nnzb * size_t(Br) * 32);
  for (auto& b : w.res_qvalues) b = uint8_t(rng.next() >> 56);
  w.res_scales.resize(nnzb * size_t(Br));
  for (auto& s : w.res_scales) s = float_to_fp16((0.005f + 0.01f * rng.uniform()) / 8);
  if (nnzb == 0) w.res_rowptr.clear();
  return w;
}

struct DevMem {
  void* p = nullptr;
  explicit DevMem(size_t bytes) { ck(cudaMalloc(&p, std::max<size_t>(bytes, 16)), "cudaMalloc (bench)"); }
  ~DevMem() { cudaFree(p); }
  DevMem(const DevMem&) = delete;
  DevMem& operator=(const DevMem&) = delete;
};

// Fill device memory with random fp16/bf16 values in [-a, a) (a host pattern tiled in 4 MB pieces).
void fill_random(void* p, size_t elems, bool bf16, float a, uint64_t seed) {
  Rng rng{seed + 12345};
  std::vector<uint16_t> pat(size_t(1) << 21);
  for (auto& v : pat) {
    const float x = (2 * rng.uniform() - 1) * a;
    v = bf16 ? float_to_bf16(x) : float_to_fp16(x);
  }
  for (size_t off = 0; off < elems; off += pat.size()) {
    const size_t n = std::min(pat.size(), elems - off);
    ck(cudaMemcpy(static_cast<uint16_t*>(p) + off, pat.data(), n * 2, cudaMemcpyHostToDevice), "cudaMemcpy (bench)");
  }
}

// Median over reps of (batch time / calls); a batch is >= 1 ms or >= copies calls.
double time_us(const std::function<void(int)>& call, int copies, int reps) {
  cudaEvent_t a, b;
  ck(cudaEventCreate(&a), "cudaEventCreate");
  ck(cudaEventCreate(&b), "cudaEventCreate");
  for (int i = 0; i < std::max(3, copies); ++i) call(i % copies);  // warm-up
  ck(cudaEventRecord(a), "cudaEventRecord");
  call(0);
  ck(cudaEventRecord(b), "cudaEventRecord");
  ck(cudaEventSynchronize(b), "cudaEventSynchronize");
  float one_ms = 0;
  ck(cudaEventElapsedTime(&one_ms, a, b), "cudaEventElapsedTime");
  const int calls = std::max(copies, int(std::min(200.0, std::ceil(1.0 / std::max(one_ms, 1e-3f)))));
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    ck(cudaEventRecord(a), "cudaEventRecord");
    for (int i = 0; i < calls; ++i) call(i % copies);
    ck(cudaEventRecord(b), "cudaEventRecord");
    ck(cudaEventSynchronize(b), "cudaEventSynchronize");
    float ms = 0;
    ck(cudaEventElapsedTime(&ms, a, b), "cudaEventElapsedTime");
    t.push_back(1000.0 * ms / calls);
  }
  ck(cudaGetLastError(), "benchmark kernels");
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Device-to-device copy bandwidth, bytes read + bytes written.
double copy_bandwidth_gbs() {
  const size_t bytes = size_t(1) << 30;
  DevMem src(bytes), dst(bytes);
  ck(cudaMemset(src.p, 1, bytes), "cudaMemset");
  const double us = time_us([&](int) { ck(cudaMemcpyAsync(dst.p, src.p, bytes, cudaMemcpyDeviceToDevice), "copy"); }, 1, 7);
  return 2.0 * double(bytes) / (us * 1e3);
}

void read_probe(const void* p, size_t bytes, void* sink) {
  static const int sms = [] {
    int dev = 0, n = 132;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
      n = 132;
    return n;
  }();
  detail::launch_read_probe(p, bytes, static_cast<unsigned*>(sink), sms, nullptr);
}

// Enough copies that the set is > 3x L2 (50 MB). MOSAIC_BENCH_L2_HOT=1: one copy, so layers that
// fit stay in L2 between launches (a diagnosis: how fast a kernel runs when its weights need no
// DRAM, e.g. whether the batch-1 GEMMs are bound by DRAM or by their own latency; never a result).
int copies_for(int64_t bytes) {
  if (env_int("MOSAIC_BENCH_L2_HOT", 0, 0, 1) == 1) return 1;
  return int(std::clamp<int64_t>((int64_t(160) << 20) / std::max<int64_t>(bytes, 1) + 1, 1, 8));
}

std::string today() {
  const std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d", std::gmtime(&t));
  return buf;
}

}  // namespace

void run_gemm_bench(const GemmBenchOptions& o) {
  MOSAIC_CHECK(cuda_device_count() > 0, "bench gemm: no CUDA GPU found");
  MOSAIC_CHECK(!o.ms.empty() && !o.budgets.empty(), "bench gemm: empty --m or --budget list");
  MOSAIC_CHECK(o.act_bits == 16 || o.act_bits == 8, "bench gemm: --act-bits must be 16 or 8, got ", o.act_bits);
  for (int m : o.ms) MOSAIC_CHECK(m >= 1 && m <= 65536, "bench gemm: M = ", m, " outside 1..65536");
  for (double b : o.budgets) MOSAIC_CHECK(b >= 0 && b <= 1, "bench gemm: budget ", b, " outside 0..1");
  MOSAIC_CHECK(o.res_block_rows == 16 || o.res_block_rows == 32 || o.res_block_rows == 64,
               "bench gemm: residual blocks must be 16x64, 32x64 or 64x64, got ", o.res_block_rows, "x64");
  const auto shapes = parse_shapes(o.shapes);
  const std::string card = cuda_device_name(), date = today();
  const double copy_gbs = copy_bandwidth_gbs();
  const DType wdt = o.bf16 ? DType::BF16 : DType::F16;
  std::printf("# mosaic bench gemm — %s, %s, W4%s activations %s, residual blocks %dx64, copy bandwidth %.0f GB/s "
              "(read+write)\n\n",
              card.c_str(), date.c_str(), o.act_bits == 8 ? "A8" : "", dtype_name(wdt), o.res_block_rows, copy_gbs);
  std::printf("| shape (KxN) | M | budget | variant | us | GB/s | %% copy BW | TFLOP/s | x cuBLAS FP16 |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|\n");
  nlohmann::json rows = nlohmann::json::array();
  cublasHandle_t h;
  if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) fail("bench gemm: cublasCreate failed");

  auto emit = [&](const Shape& s, int M, double budget, const std::string& variant, double us, double bytes,
                  double cublas_us) {
    const double gbs = bytes / (us * 1e3), tflops = 2.0 * M * double(s.N) * double(s.K) / (us * 1e6);
    const double speedup = cublas_us / us;
    std::printf("| %s (%lldx%lld) | %d | %s | %s | %.2f | %.0f | %.0f%% | %.1f | %.2f |\n", s.name.c_str(),
                (long long)s.K, (long long)s.N, M, budget < 0 ? "-" : (std::to_string(int(std::lround(budget * 100))) + "%").c_str(),
                variant.c_str(), us, gbs, 100 * gbs / copy_gbs, tflops, speedup);
    std::fflush(stdout);
    nlohmann::json row = {{"card", card}, {"date", date}, {"shape", s.name}, {"m", M}, {"n", s.N}, {"k", s.K},
                          {"variant", variant}, {"us", us}, {"gbps", gbs}, {"tflops", tflops},
                          {"speedup_vs_cublas", speedup}, {"copy_gbps", copy_gbs}, {"act_dtype", variant == "cublas_fp16" ? "fp16" : dtype_name(wdt)}};
    row["budget"] = budget < 0 ? nlohmann::json(nullptr) : nlohmann::json(budget);
    row["res_block"] = std::to_string(o.res_block_rows) + "x64";
    rows.push_back(row);
  };

  const int max_m = *std::max_element(o.ms.begin(), o.ms.end());
  const std::vector<double>& budget_list = o.budgets;
  // W4A8 (--act-bits 8), per kernel family (prefix w4a8: per-token INT8 on mma.sync; w4a8i8wg: INT8
  // on wgmma, the layer's scales snapped to the integer scale grid; w4a8fp8: FP8 e4m3 on wgmma) and
  // budget: the activation quantization alone (<p>_quant), the GEMM on already
  // quantized rows with and without the residual (<p>_zipper_gemm_only, <p>_dense_gemm_only), and
  // what a layer call costs: quantize + GEMM (<p>_dense, <p>_zipper). Bytes = weights + X read + Y
  // written (+ codes written and read for the quantizing rows).
  auto run_w4a8 = [&](const Shape& s, const std::vector<double>& budgets,
                      const std::vector<std::unique_ptr<DevMem>>& xs, void* yp, const std::vector<double>& cub) {
    const int cx = int(xs.size());
    // One family at one (M, budget) over its rotating copies `ls`.
    auto family = [&](const std::string& p, const std::vector<std::unique_ptr<W4A8Linear>>& ls, int M, size_t mi,
                      double budget, bool cta_shapes) {
      const int cz = int(ls.size());
      const double xio = 2.0 * M * s.K, yio = 2.0 * M * s.N, qio = 1.0 * M * s.K + 4.0 * M;
      const auto quantize = [&](int c) { ls[size_t(c)]->quantize(xs[size_t(c % cx)]->p, M, wdt, nullptr); };
      for (int c = 0; c < cz; ++c) quantize(c);  // workspaces
      ck(cudaDeviceSynchronize(), "w4a8 quantize (bench)");
      const double wz = double(ls[0]->weight_bytes()), wd = double(ls[0]->weight_bytes(false));
      const auto gemm_only = [&](W4A8Variant v, int warps) {
        return time_us([&](int c) { ls[size_t(c)]->gemm_quantized(yp, M, wdt, nullptr, v, warps); }, cz, o.reps);
      };
      const auto layer_call = [&](W4A8Variant v) {
        return time_us([&](int c) { ls[size_t(c)]->gemm(xs[size_t(c % cx)]->p, yp, M, wdt, nullptr, v); }, cz, o.reps);
      };
      emit(s, M, budget, p + "_quant", time_us(quantize, cz, o.reps), xio + qio, cub[mi]);
      emit(s, M, budget, p + "_zipper_gemm_only", gemm_only(W4A8Variant::Zipper, 0), wz + qio + yio, cub[mi]);
      if (budget > 0)
        emit(s, M, budget, p + "_dense_gemm_only", gemm_only(W4A8Variant::DenseOnly, 0), wd + qio + yio, cub[mi]);
      if (cta_shapes && M >= 256 && budget == budgets.back())  // both CTA shapes (warps per 128 x 128 tile)
        for (int warps : {8, 16})
          emit(s, M, budget, p + "_zipper_gemm_only_w" + std::to_string(warps), gemm_only(W4A8Variant::Zipper, warps),
               wz + qio + yio, cub[mi]);
      emit(s, M, budget, p + "_dense", layer_call(W4A8Variant::DenseOnly), wd + xio + 2 * qio + yio, cub[mi]);
      if (budget > 0) emit(s, M, budget, p + "_zipper", layer_call(W4A8Variant::Zipper), wz + xio + 2 * qio + yio, cub[mi]);
    };
    for (double budget : budgets) {
      const PackedLinear w = random_layer(s.N, s.K, budget, uint64_t(s.N * 31 + s.K), o.res_block_rows, o.res_pattern, o.res_row_cap);
      // Rotating copies of the layer (enough bytes that each timed call streams its weights from DRAM).
      auto copies = [&](const PackedLinear& layer, W4A8Act act) {
        std::vector<std::unique_ptr<W4A8Linear>> v;
        v.push_back(std::make_unique<W4A8Linear>(layer, act));
        const int cz = copies_for(v[0]->weight_bytes());
        while (int(v.size()) < cz) v.push_back(std::make_unique<W4A8Linear>(layer, act));
        return v;
      };
      std::vector<std::unique_ptr<W4A8Linear>> int8, fp8, int8wg;
      if (o.w4a8_int8) {
        int8 = copies(w, W4A8Act::Int8);  // free FP16 scales: the mma.sync kernel
        // The same layer with its scales snapped to the integer scale grid (format/int_scale_grid.h):
        // the INT8 wgmma kernel (prefix w4a8i8wg).
        PackedLinear snapped = w;
        snap_to_int_scale_grid(snapped);
        int8wg = copies(snapped, W4A8Act::Int8);
        if (!int8wg[0]->int8_wgmma()) int8wg.clear();  // MOSAIC_W4A8_INT8_WGMMA=0
      }
      if (o.w4a8_fp8) fp8 = copies(w, W4A8Act::Fp8E4M3);
      for (size_t mi = 0; mi < o.ms.size(); ++mi) {
        if (o.w4a8_int8) family("w4a8", int8, o.ms[mi], mi, budget, true);
        if (!int8wg.empty()) family("w4a8i8wg", int8wg, o.ms[mi], mi, budget, false);
        if (o.w4a8_fp8) family("w4a8fp8", fp8, o.ms[mi], mi, budget, false);
      }
    }
  };
  for (const Shape& s : shapes) {
    // Inputs and outputs for every M (copies of X rotate with the weights).
    const int64_t w16_bytes = s.N * s.K * 2;
    const int c16 = copies_for(w16_bytes);
    std::vector<std::unique_ptr<DevMem>> w16;
    for (int c = 0; c < c16; ++c) {
      w16.push_back(std::make_unique<DevMem>(size_t(w16_bytes)));
      fill_random(w16.back()->p, size_t(s.N * s.K), false, 0.05f, uint64_t(c));
    }
    const int cx = 8;
    std::vector<std::unique_ptr<DevMem>> xs;
    for (int c = 0; c < cx; ++c) {
      xs.push_back(std::make_unique<DevMem>(size_t(max_m) * s.K * 2));
      fill_random(xs.back()->p, size_t(max_m) * s.K, o.bf16, 1.0f, uint64_t(100 + c));
    }
    DevMem y(size_t(max_m) * s.N * 2);
    std::vector<double> cublas_us(o.ms.size());
    for (size_t mi = 0; mi < o.ms.size(); ++mi) {
      const int M = o.ms[mi];
      const float alpha = 1, beta = 0;
      // cuBLAS FP16 W16A16 (X fp16 even when --bf16: the baseline is the FP16 model).
      cublas_us[mi] = time_us(
          [&](int c) {
            cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, int(s.N), M, int(s.K), &alpha, w16[size_t(c)]->p, CUDA_R_16F,
                         int(s.K), xs[size_t(c % cx)]->p, CUDA_R_16F, int(s.K), &beta, y.p, CUDA_R_16F, int(s.N),
                         CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
          },
          c16, o.reps);
      emit(s, M, -1, "cublas_fp16", cublas_us[mi], double(w16_bytes) + 2.0 * M * (s.K + s.N), cublas_us[mi]);
    }
    w16.clear();
    if (o.act_bits == 8) {
      run_w4a8(s, budget_list, xs, y.p, cublas_us);
      continue;
    }
    for (double budget : o.budgets) {
      const PackedLinear w = random_layer(s.N, s.K, budget, uint64_t(s.N * 31 + s.K), o.res_block_rows, o.res_pattern, o.res_row_cap);
      std::vector<std::unique_ptr<ZipperLinear>> zl;
      zl.push_back(std::make_unique<ZipperLinear>(w));
      const int cz = copies_for(zl[0]->weight_bytes());
      while (int(zl.size()) < cz) zl.push_back(std::make_unique<ZipperLinear>(w));
      {  // The streaming limit of this timing method: a plain read of the same bytes over the
         // same number of rotating copies (launch gap and DRAM ramp included), once per budget.
        const int64_t bytes = (zl[0]->weight_bytes() + 15) / 16 * 16;
        std::vector<std::unique_ptr<DevMem>> raw;
        for (int c = 0; c < cz; ++c) {
          raw.push_back(std::make_unique<DevMem>(size_t(bytes)));
          ck(cudaMemset(raw.back()->p, c + 1, size_t(bytes)), "cudaMemset (bench)");
        }
        DevMem sink(16);
        const double us = time_us([&](int c) { read_probe(raw[size_t(c)]->p, size_t(bytes), sink.p); }, cz, o.reps);
        emit(s, o.ms[0], budget, "read_limit", us, double(bytes), cublas_us[0]);
      }
      for (size_t mi = 0; mi < o.ms.size(); ++mi) {
        const int M = o.ms[mi];
        const double io = 2.0 * M * (s.K + s.N);
        auto run = [&](Variant v, GemmPath p) {
          return time_us([&](int c) { zl[size_t(c)]->gemm(xs[size_t(c % cx)]->p, y.p, M, wdt, nullptr, v, p); }, cz,
                         o.reps);
        };
        const double dense = run(Variant::DenseOnly, GemmPath::Auto);
        emit(s, M, budget, "dense_w4", dense, double(zl[0]->weight_bytes(false)) + io, cublas_us[mi]);
        if (budget > 0)
          emit(s, M, budget, "unfused", run(Variant::Unfused, GemmPath::Auto), double(zl[0]->weight_bytes()) + io,
               cublas_us[mi]);
        emit(s, M, budget, "zipper", run(Variant::Zipper, GemmPath::Auto), double(zl[0]->weight_bytes()) + io,
             cublas_us[mi]);
        // Both paths near the crossover, to justify the dispatch threshold.
        if (M >= 16 && M <= 1024 && budget == o.budgets.back()) {
          const bool fused_is_auto = zl[0]->choose_path(M) == GemmPath::Fused;
          emit(s, M, budget, fused_is_auto ? "zipper_dequant_path" : "zipper_fused_path",
               run(Variant::Zipper, fused_is_auto ? GemmPath::Dequant : GemmPath::Fused),
               double(zl[0]->weight_bytes()) + io, cublas_us[mi]);
        }
      }
    }
  }
  cublasDestroy(h);
  if (!o.json.empty()) {
    write_file_atomic(o.json, rows.dump(1) + "\n");
    std::printf("\nwrote %zu rows to %s\n", rows.size(), o.json.c_str());
  }
}

}  // namespace mosaic::cuda
