#!/usr/bin/env bash
# ZipperEngine on a GPU machine, in one go: build (nvcc + g++ directly: the GPU image has the
# CUDA toolkit but not the Debian libraries of the full CMake build), GPU correctness tests,
# compute-sanitizer memcheck + racecheck on a reduced set, the GEMM benchmark and the PyTorch
# int4 peer. Everything lands in $OUT (default /tmp/gpu-check).
#
#   OUT=/tmp/out scripts/gpu-check.sh [quick|full]
#     quick: LLaMA-3-8B shapes only; full: LLaMA-3-8B, Qwen3-8B and LLaMA-3-70B at budgets 0, 5, 10%.
# Overrides: SH (shapes), MS (M list), BU (budgets) of the benchmark; GEMM_ARGS (more bench gemm options for every
# benchmark run, e.g. "--res-pattern rows --row-cap 0.5"); SAN_T (seconds per sanitizer);
# SKIP_TORCH=1, SKIP_MARLIN=1 (Marlin runs when .xfer/marlin or MARLIN_SRC holds its source), SKIP_SAN=1, SAN_FILTER (gtest filter of the sanitizer runs).
# TEST_T / BENCH_T: seconds before the tests / each ENVS benchmark are killed (a hung kernel must not eat the call).
# Same-run comparisons (docs/kernels-notes.md), both on the small-M list MS_SMALL (default 1,4,16,32):
#   BASELINE_CU=path/to/old/zipper_kernels.cu   also build and time that kernel file (label "base")
#   BASELINE_SRC=dir   also build and time a whole older src/cuda (dir/cuda/*: kernels, plans, bench),
#                      e.g. mkdir -p .devdeps/baseline/src && git archive HEAD src/cuda src/cli/cmd_bench.cpp | tar -x -C
#                      .devdeps/baseline/src --strip-components=1
#                      (add src/cli/cmd_bench.cpp to the archive when the bench options changed since: it is
#                      then built against the baseline's headers; otherwise this tree's cmd_bench.o is linked
#                      and the GemmBenchOptions struct must be the same in both)
#   BASELINE_DEFS="-DX"  extra nvcc flags for the BASELINE_SRC kernels (e.g. -DMOSAIC_NL4_TIMING: the nl4
#                      table-lookup decode in place of the uniform one, to time its cost; docs/kernels-notes.md)
#   PLAN_OVERHEADS="4 6"   also time the current build with MOSAIC_ZIPPER_CTA_OVERHEAD=4, =6
# Needs CLI11 + nlohmann headers and googletest sources in $DEPS (default .devdeps, made by
# scripts/make-devdeps.sh on a Debian machine with the dev packages; see docs/kernels.md).
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-full}
OUT=${OUT:-/tmp/gpu-check}
DEPS=${DEPS:-.devdeps}
[ -d "$DEPS/include/CLI" ] && [ -d "$DEPS/googletest" ] || {
  echo "$(basename "$0"): $DEPS is missing or incomplete: run scripts/make-devdeps.sh here, then pass carry [\"$DEPS\"] to the device tool" >&2
  exit 1
}
B=${BUILD:-/tmp/mosaic-gpu-build}
mkdir -p "$OUT" "$B"
LOG=$OUT/check.log
exec > >(tee -a "$LOG") 2>&1
CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc)")")}
echo "== $(date -u) $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader) nvcc $(nvcc --version | tail -1)"

# ---- build -------------------------------------------------------------------------------------
t0=$(date +%s)
CXX="g++ -std=c++20 -O2 -I src -I $DEPS/include -I $CUDA_HOME/include -DMOSAIC_HAS_CUDA=1"
NVCC="nvcc -std=c++17 -O3 -gencode arch=compute_90a,code=sm_90a --expt-relaxed-constexpr -lineinfo -I src"
GT="-I $DEPS/googletest/include -I $DEPS/googletest"
pids=()
$NVCC -Xptxas -v -c src/cuda/zipper_kernels.cu -o $B/zipper_kernels.o > $B/ptxas.log 2>&1 & pids+=($!)
$NVCC -Xptxas -v -c src/cuda/zipper_stream.cu -o $B/zipper_stream.o > $B/ptxas-stream.log 2>&1 & pids+=($!)
# every other kernel file (W4A8 INT8 and FP8: the benchmark and the test binary link them)
for f in src/cuda/*.cu; do
  case $f in */zipper_kernels.cu|*/zipper_stream.cu) continue;; esac
  $NVCC -Xptxas -v -c $f -o $B/$(basename $f .cu).o > $B/ptxas-$(basename $f .cu).log 2>&1 & pids+=($!)
done
if [ -n "${BASELINE_CU:-}" ]; then
  $NVCC -c "$BASELINE_CU" -o $B/zipper_kernels_base.o > $B/ptxas-base.log 2>&1 & pids+=($!)
fi
if [ -n "${BASELINE_SRC:-}" ]; then  # a whole older src/cuda (kernels, plans, bench) in $BASELINE_SRC/cuda
  mkdir -p $B/base
  # its headers first: -I $BASELINE_SRC ahead of -I src
  # all of its kernel and host files (its gemm_bench also links its W4A8 code)
  for f in "$BASELINE_SRC"/cuda/*.cu; do
    ${NVCC/-I src/-I $BASELINE_SRC -I src} ${BASELINE_DEFS:-} -c "$f" -o $B/base/$(basename $f .cu).o > $B/base/ptxas-$(basename $f .cu).log 2>&1 & pids+=($!)
  done
  for f in "$BASELINE_SRC"/cuda/*.cpp; do
    ${CXX/-I src/-I $BASELINE_SRC -I src} -c "$f" -o $B/base/$(basename $f .cpp).o & pids+=($!)
  done
  # Its own CLI front end when the tree has one (git archive HEAD src/cuda src/cli/cmd_bench.cpp): the
  # bench options struct of gemm_bench.h then matches on both sides of the link.
  if [ -f "$BASELINE_SRC/cli/cmd_bench.cpp" ]; then
    mkdir -p $B/base-cli
    ${CXX/-I src/-I $BASELINE_SRC -I src} -c "$BASELINE_SRC/cli/cmd_bench.cpp" -o $B/base-cli/cmd_bench.o & pids+=($!)
  fi
fi
for f in src/cuda/*.cpp src/format/packed_linear.cpp src/format/int_scale_grid.cpp src/util/atomic_file.cpp src/cli/cmd_bench.cpp bench/mosaic_bench_main.cpp; do
  $CXX -c $f -o $B/$(basename $f .cpp).o & pids+=($!)
done
for f in tests/cuda/*.cpp; do $CXX $GT -c $f -o $B/t_$(basename $f .cpp).o & pids+=($!); done
$CXX $GT -c $DEPS/googletest/src/gtest-all.cc -o $B/gtest-all.o & pids+=($!)
$CXX $GT -c $DEPS/googletest/src/gtest_main.cc -o $B/gtest_main.o & pids+=($!)
fail=0
for p in "${pids[@]}"; do wait $p || fail=1; done
grep -E "registers|spill" $B/ptxas.log | paste - - | sed 's/ptxas info *: //' | head -20
grep -E "Compiling|registers" $B/ptxas-stream.log | paste - - | sed -E 's/.*stream_kernelI(.*)EEvNS1.*Used ([0-9]+) registers.*/stream<\1>: \2 registers/' | head -24
[ $fail = 0 ] || { echo "BUILD FAILED"; grep -hiE "error" -A3 $B/ptxas*.log $B/base/ptxas-*.log 2>/dev/null | head -60; exit 1; }
LIB=$(ls $B/*.o | grep -vE "/(t_|gtest|mosaic_bench_main|cmd_bench|gemm_bench|atomic_file|zipper_kernels_base)" | tr '\n' ' ')
nvcc -o $B/test_cuda $B/t_*.o $LIB $B/gtest-all.o $B/gtest_main.o -lcublas -lpthread || exit 1
nvcc -o $B/mosaic $B/mosaic_bench_main.o $B/cmd_bench.o $B/gemm_bench.o $B/atomic_file.o $LIB -lcublas || exit 1
if [ -n "${BASELINE_CU:-}" ]; then
  nvcc -o $B/mosaic_base $B/mosaic_bench_main.o $B/cmd_bench.o $B/gemm_bench.o $B/atomic_file.o \
    $B/zipper_kernels_base.o $(echo $LIB | tr ' ' '\n' | grep -v '/zipper_kernels.o' | tr '\n' ' ') -lcublas || exit 1
elif [ -n "${BASELINE_SRC:-}" ]; then
  BASE_CLI=$B/cmd_bench.o; [ -f $B/base-cli/cmd_bench.o ] && BASE_CLI=$B/base-cli/cmd_bench.o
  nvcc -o $B/mosaic_base $B/mosaic_bench_main.o $BASE_CLI $B/atomic_file.o $B/packed_linear.o $B/int_scale_grid.o $B/base/*.o -lcublas || exit 1
fi
# SASS_STATS=1: instruction mix of the stream kernels (new and baseline) into the extras.
if [ "${SASS_STATS:-0}" = 1 ] && command -v cuobjdump > /dev/null; then
  for o in $B/zipper_stream.o $B/base/zipper_stream.o; do
    [ -f $o ] || continue
    cuobjdump -sass $o > $o.sass 2>/dev/null
    awk '/Function :/{k=$3} /^ +\/\*[0-9a-f]+\*\//{n[k]++; split($2,a,"."); op[k" "a[1]]++}
         END{for (k in n) print n[k], k; for (x in op) if (op[x] > 20) print "  ", op[x], x}' $o.sass \
      | grep -E "stream_kernel" | sort -k2 > $o.sass-stats.txt
  done
fi
# Compiler output known to fault (an odd descriptor register, scripts/sass_check.py): stop here.
if command -v cuobjdump > /dev/null || [ -x build-tools/sass/cuobjdump ]; then
  python3 scripts/sass_check.py $B/*.o | tail -4 || { echo "BUILD FAILED: sass_check"; exit 1; }
fi
echo "== build ok in $(( $(date +%s) - t0 )) s"
[ "$MODE" = build-only ] && exit 0

# ---- correctness -------------------------------------------------------------------------------
# TEST_FILTER: the ZipperEngine tests by default (the W4A8 tests run in scripts/gpu-w4a8.sh)
timeout ${TEST_T:-300} $B/test_cuda --gtest_brief=0 --gtest_filter="${TEST_FILTER:-Zipper*}" 2>&1 | grep -vE "^\[ RUN|^\[       OK" ; tests_rc=${PIPESTATUS[0]}
echo "== test_cuda rc=$tests_rc"

# ---- benchmark (before the sanitizers, which are slow) -----------------------------------------
if [ "$MODE" = quick ]; then DSH=llama3-8b; DBU=0,0.1; else DSH=llama3-8b,qwen3-8b,llama3-70b; DBU=0,0.05,0.1; fi
SH=${SH:-$DSH}; BU=${BU:-$DBU}; MS=${MS:-1,4,16,32,64,128,256,1024,4096}; MS_SMALL=${MS_SMALL:-1,4,16,32}
$B/mosaic bench gemm --shapes $SH --m $MS --budget $BU ${GEMM_ARGS:-} --json $OUT/gemm.json > $OUT/bench.md 2>&1
echo "== bench rc=$?"
# Extra files go into one archive at the end: the device tool returns at most 8 files from $OUT.
X=$B/extra; mkdir -p $X; cmp=(new=$OUT/gemm.json)
[ -f $B/zipper_stream.o.sass-stats.txt ] && cp $B/zipper_stream.o.sass-stats.txt $X/
[ -f $B/base/zipper_stream.o.sass-stats.txt ] && cp $B/base/zipper_stream.o.sass-stats.txt $X/base-zipper_stream.o.sass-stats.txt
if [ -n "${BASELINE_CU:-}${BASELINE_SRC:-}" ]; then
  $B/mosaic_base bench gemm --shapes $SH --m $MS_SMALL --budget $BU ${GEMM_ARGS:-} --json $X/gemm-base.json > $X/bench-base.md 2>&1
  echo "== bench (baseline ${BASELINE_CU:-}${BASELINE_SRC:-}) rc=$?"; cmp+=(base=$X/gemm-base.json)
fi
# ENVS="label:VAR=value[,VAR=value] ..." also times the current build with each environment, on the
# M list MS_ENVS (default MS_SMALL) (e.g.
# v8:MOSAIC_ZIPPER_V8=1 for the previous kernel, same binary, same run).
for lv in ${ENVS:-}; do
  l=${lv%%:*}; kv=${lv#*:}
  timeout ${BENCH_T:-300} env ${kv//,/ } $B/mosaic bench gemm --shapes $SH --m ${MS_ENVS:-$MS_SMALL} --budget $BU ${GEMM_ARGS:-} \
    --json $X/gemm-$l.json > $X/bench-$l.md 2>&1
  echo "== bench ($kv) rc=$?"; cmp+=($l=$X/gemm-$l.json)
done
for v in ${PLAN_OVERHEADS:-}; do
  MOSAIC_ZIPPER_CTA_OVERHEAD=$v $B/mosaic bench gemm --shapes $SH --m $MS_SMALL --budget $BU \
    --json $X/gemm-ovh$v.json > $X/bench-ovh$v.md 2>&1
  echo "== bench (CTA overhead $v) rc=$?"; cmp+=(ovh$v=$X/gemm-ovh$v.json)
done
[ "${SKIP_TORCH:-0}" = 1 ] || PYTHONUNBUFFERED=1 timeout 300 python3 bench/torch_int4.py --shapes $SH --m $MS --json $X/torch_int4.json > $B/torch.log 2>&1
echo "== torch int4 rc=$?"; tail -3 $B/torch.log
# Marlin as a further peer where its source was carried (MARLIN_SRC, default .xfer/marlin: its
# marlin_cuda.cpp + marlin_cuda_kernel.cu, not part of mosaic), built here with torch's extension builder.
MARLIN_SRC=${MARLIN_SRC:-.xfer/marlin}
if [ -f $MARLIN_SRC/marlin_cuda_kernel.cu ] && [ "${SKIP_MARLIN:-0}" != 1 ]; then
  PYTHONUNBUFFERED=1 timeout 400 python3 bench/marlin_peer.py --src $MARLIN_SRC ${MARLIN_ARCH:+--arch $MARLIN_ARCH} --shapes $SH --m $MS --json $X/marlin.json > $B/marlin.log 2>&1
  echo "== marlin rc=$?"; tail -3 $B/marlin.log; cp $B/marlin.log $X/
fi
python3 bench/merge_results.py $OUT/gemm-merged.json $OUT/gemm.json $X/torch_int4.json $X/marlin.json > $OUT/summary.md
cat $OUT/summary.md
[ ${#cmp[@]} -gt 1 ] && { python3 bench/compare_variants.py "${cmp[@]}" > $OUT/compare.md; cat $OUT/compare.md; }

# ---- compute-sanitizer on a reduced set ----------------------------------------------------------
[ "${SKIP_SAN:-0}" = 1 ] && { tar -C $X -czf $OUT/extra.tar.gz . ; echo "== done (no sanitizers) $(date -u)"; exit 0; }
export ZIPPER_QUICK=1
F=${SAN_FILTER:-'ZipperGpu.MatchesCpuReference*:ZipperGpu.DenseOnly*:ZipperGpu.StreamKernel*'}
timeout ${SAN_T:-240} compute-sanitizer --tool memcheck --error-exitcode 9 $B/test_cuda --gtest_filter="$F" > $B/memcheck.log 2>&1
echo "== memcheck rc=$? $(grep -E 'ERROR SUMMARY' $B/memcheck.log | tail -1)"
# racecheck over everything (its kernel filter crashed the sanitizer here); hazards reported
# inside cuBLAS's nvjet kernels are listed apart from ours (mosaic::cuda kernels). NO_RACECHECK=1 skips it.
[ "${NO_RACECHECK:-0}" = 1 ] && echo "racecheck skipped (NO_RACECHECK=1)" > $B/racecheck.log || \
timeout ${SAN_T:-240} compute-sanitizer --tool racecheck \
  $B/test_cuda --gtest_filter="$F:ZipperGpu.OddShapes*" > $B/racecheck.log 2>&1
echo "== racecheck rc=$? $(grep -E 'RACECHECK SUMMARY' $B/racecheck.log | tail -1)"
echo "== racecheck hazards in our kernels: $(grep -A1 'Race reported' $B/racecheck.log | grep -c 'zipper\|dequant_kernel\|residual_only')," \
     "in cuBLAS nvjet: $(grep 'Race reported' $B/racecheck.log | grep -c nvjet)"
grep -E "PASSED|FAILED" $B/racecheck.log | head -3; tail -n 4 $B/memcheck.log
head -c 2000000 $B/racecheck.log > $X/racecheck.log
cp $B/ptxas*.log $B/memcheck.log $X/ 2>/dev/null
tar -C $X -czf $OUT/extra.tar.gz . && echo "== extras in extra.tar.gz: $(ls $X | tr '\n' ' ')"
echo "== done $(date -u)"
