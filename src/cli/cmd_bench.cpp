// mosaic bench gemm: ZipperEngine W4A16 GEMM against cuBLAS FP16 (src/cuda/gemm_bench.cpp).
// Compiles without CUDA too; then the command says it needs a CUDA build.
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "util/error.h"
#ifdef MOSAIC_HAS_CUDA
#include "cuda/gemm_bench.h"
#endif

namespace mosaic::cli {
namespace {

template <typename T>
std::vector<T> parse_list(const std::string& s, const char* what) {
  std::vector<T> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    std::istringstream is(item);
    T v{};
    char extra = 0;
    if (!(is >> v) || (is >> extra)) fail("bench gemm: bad ", what, " '", item, "' in '", s, "'");
    out.push_back(v);
  }
  if (out.empty()) fail("bench gemm: empty ", what, " list");
  return out;
}

struct GemmArgs {
  std::string shapes = "llama3-8b", ms = "1,4,16,32,64,128,256,1024,4096", budgets = "0.1", json;
  int reps = 7;
  bool bf16 = false;
};

}  // namespace

void add_bench_command(CLI::App& app) {
  auto* bench = app.add_subcommand("bench", "Benchmarks (need a CUDA build and a GPU)");
  bench->require_subcommand(1);
  auto args = std::make_shared<GemmArgs>();
  auto* gemm = bench->add_subcommand(
      "gemm", "ZipperEngine W4A16 GEMM vs cuBLAS FP16: dense_w4, unfused and zipper variants");
  gemm->add_option("--shapes", args->shapes,
                   "llama3-8b | qwen3-8b | llama3-70b | KxN, comma separated (K = inputs, N = outputs)")
      ->capture_default_str();
  gemm->add_option("--m", args->ms, "rows of X (tokens), comma separated")->capture_default_str();
  gemm->add_option("--budget", args->budgets, "fraction of 16x64 residual blocks kept, comma separated")
      ->capture_default_str();
  gemm->add_option("--json", args->json, "write the rows as JSON to this file");
  gemm->add_option("--reps", args->reps, "timed repetitions, median reported")->capture_default_str();
  gemm->add_flag("--bf16", args->bf16, "BF16 activations for the W4 variants (default FP16)");
  gemm->callback([args] {
    const auto ms = parse_list<int>(args->ms, "M");
    const auto budgets = parse_list<double>(args->budgets, "budget");
    if (args->reps < 1 || args->reps > 1000) fail("bench gemm: --reps must be in 1..1000");
#ifdef MOSAIC_HAS_CUDA
    cuda::GemmBenchOptions o;
    o.shapes = args->shapes;
    o.ms = ms;
    o.budgets = budgets;
    o.json = args->json;
    o.reps = args->reps;
    o.bf16 = args->bf16;
    cuda::run_gemm_bench(o);
#else
    fail("'bench gemm' needs a CUDA build: configure with -DMOSAIC_CUDA=ON (nvcc) and run on a GPU");
#endif
  });
}

}  // namespace mosaic::cli
