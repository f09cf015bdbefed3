#!/usr/bin/env bash
# The W4A8 GEMM (issue 6) on a GPU machine, in one go: build (scripts/gpu-check.sh build-only),
# the W4A8 GPU tests, compute-sanitizer memcheck on a reduced W4A8 set, `mosaic bench gemm
# --act-bits 8` (cuBLAS FP16 timed in the same process), the PyTorch INT8 / FP8 peers
# (bench/torch_w8.py) in the same call, a merged table, and optionally ncu of the kernel.
#
#   OUT=/tmp/out scripts/gpu-w4a8.sh
# Overrides: SH (shapes, default llama3-8b), MS (default 256,1024,2048,4096,8192), BU (budgets,
# default 0,0.1), TEST_FILTER (gtest filter, default W4A8*: INT8 and FP8 kernels), SKIP_TESTS=1,
# SKIP_SAN=1, SAN_FILTER, SKIP_BENCH=1,
# SKIP_TORCH=1, BENCH_ARGS (extra `bench gemm` options, e.g. "--act-format fp8"),
# ENV_RUNS="name:VAR=val,VAR2=val ..." (the bench again with those variables set, same binary),
# ABL="7 1 ..." (w4a8_fp8_gemm.cu rebuilt with -DMOSAIC_W4A8_FP8_ABLATE=mask into mosaic-ablMASK, its
# bench run too, also under each ENV_RUNS; FP8 rows of all extra runs in extra-runs.md), NCU="KxN M" (e.g. "4096x6144 4096": ncu of w4a8_gemm_kernel at that shape, NCU_WARPS=8|16
# picks the CTA shape profiled, NCU_K=w4a8_fp8_gemm_kernel profiles the FP8 wgmma kernel), SASS=1
# (instruction mix of the W4A8 kernels from cuobjdump), BASE_FP8=dir (an older src tree, dir/cuda/...:
# its w4a8_fp8_gemm.cu and w4a8_fp8_layout.cpp, kernel and repack together, linked into mosaic-base
# and benchmarked in the same call as the extra runs), e.g. mkdir -p .devdeps/baseline/src &&
# git archive HEAD src/cuda | tar -x -C .devdeps/baseline/src --strip-components=1
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-w4a8}
B=${BUILD:-/tmp/mosaic-w4a8-build}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/w4a8.log") 2>&1
# ---- build (nvcc + g++ directly, as scripts/gpu-check.sh; every src/cuda kernel file, so new ones come along)
DEPS=${DEPS:-.devdeps}; mkdir -p $B; t0=$(date +%s)
CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc)")")}
echo "== $(date -u) $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader) nvcc $(nvcc --version | tail -1)"
CXX="g++ -std=c++20 -O2 -I src -I $DEPS/include -I $CUDA_HOME/include -DMOSAIC_HAS_CUDA=1"
NVCC="nvcc -std=c++17 -O3 -gencode arch=compute_90a,code=sm_90a --expt-relaxed-constexpr -lineinfo -I src"
GT="-I $DEPS/googletest/include -I $DEPS/googletest"
pids=()
for f in src/cuda/*.cu; do $NVCC -Xptxas -v -c $f -o $B/$(basename $f .cu).o > $B/ptxas-$(basename $f .cu).log 2>&1 & pids+=($!); done
for f in src/cuda/*.cpp src/format/packed_linear.cpp src/format/int_scale_grid.cpp src/util/atomic_file.cpp src/cli/cmd_bench.cpp bench/mosaic_bench_main.cpp; do
  $CXX -c $f -o $B/$(basename $f .cpp).o & pids+=($!)
done
for f in tests/cuda/*.cpp; do $CXX $GT -c $f -o $B/t_$(basename $f .cpp).o & pids+=($!); done
[ -f $B/gtest-all.o ] || { $CXX $GT -c $DEPS/googletest/src/gtest-all.cc -o $B/gtest-all.o & pids+=($!); }
[ -f $B/gtest_main.o ] || { $CXX $GT -c $DEPS/googletest/src/gtest_main.cc -o $B/gtest_main.o & pids+=($!); }
fail=0; for p in "${pids[@]}"; do wait $p || fail=1; done
cat $B/ptxas-w4a8_*.log > $B/ptxas-w4a8.log
grep -E "registers|spill|Warning|warning" $B/ptxas-w4a8.log | grep -vE "^$" | sed 's/ptxas info *: //' | head -12
[ $fail = 0 ] || { echo "== BUILD FAILED"; grep -hiE "error" -A3 $B/ptxas-*.log | head -40; exit 1; }
LIB=$(ls $B/*.o | grep -vE "/(t_|gtest|mosaic_bench_main|cmd_bench|gemm_bench|atomic_file|w4a8_fp8_gemm_abl)" | tr '\n' ' ')
nvcc -o $B/test_cuda $B/t_*.o $LIB $B/gtest-all.o $B/gtest_main.o -lcublas -lpthread || { echo "== LINK FAILED"; exit 1; }
nvcc -o $B/mosaic $B/mosaic_bench_main.o $B/cmd_bench.o $B/gemm_bench.o $B/atomic_file.o $LIB -lcublas || { echo "== LINK FAILED"; exit 1; }
for m in ${ABL:-}; do  # ablation binaries mosaic-ablMASK (also with SKIP_BENCH=1: scripts/gpu-profile-source.sh w4a8)
  $NVCC -DMOSAIC_W4A8_FP8_ABLATE=$m -c src/cuda/w4a8_fp8_gemm.cu -o $B/w4a8_fp8_gemm_abl$m.o &&
    nvcc -o $B/mosaic-abl$m $B/mosaic_bench_main.o $B/cmd_bench.o $B/gemm_bench.o $B/atomic_file.o \
      ${LIB/$B\/w4a8_fp8_gemm.o/$B/w4a8_fp8_gemm_abl$m.o} -lcublas || { echo "== ablation $m build FAILED"; exit 1; }
done
if [ -n "${BASE_FP8:-}" ]; then  # the older FP8 kernel + its repack (same API), everything else current
  mkdir -p $B/basefp8
  ${NVCC/-I src/-I $BASE_FP8 -I src} -c $BASE_FP8/cuda/w4a8_fp8_gemm.cu -o $B/basefp8/w4a8_fp8_gemm.o &&
    ${CXX/-I src/-I $BASE_FP8 -I src} -c $BASE_FP8/cuda/w4a8_fp8_layout.cpp -o $B/basefp8/w4a8_fp8_layout.o &&
    nvcc -o $B/mosaic-base $B/mosaic_bench_main.o $B/cmd_bench.o $B/gemm_bench.o $B/atomic_file.o \
      $(echo $LIB | tr ' ' '\n' | grep -vE '/w4a8_fp8_(gemm|layout)\.o$' | tr '\n' ' ') $B/basefp8/*.o -lcublas ||
    { echo "== BASE_FP8 build FAILED"; exit 1; }
fi
echo "== build ok in $(( $(date +%s) - t0 )) s"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  timeout ${TEST_T:-400} $B/test_cuda --gtest_filter="${TEST_FILTER:-W4A8*}" 2>&1 | grep -vE "^\[ RUN|^\[       OK"; echo "== tests rc=${PIPESTATUS[0]}"
fi
if [ "${SKIP_SAN:-0}" != 1 ]; then
  ZIPPER_QUICK=1 timeout ${SAN_T:-120} compute-sanitizer --tool memcheck --error-exitcode 9 $B/test_cuda \
    --gtest_filter="${SAN_FILTER:-W4A8Gpu.MatchesCpu*:W4A8Gpu.BadArguments*:W4A8Fp8Gpu.MatchesCpu*:W4A8Fp8Gpu.BadArguments*:W4A8Int8WgmmaGpu.MatchesCpu*}" > $B/memcheck-w4a8.log 2>&1
  echo "== memcheck rc=$? $(grep -E 'ERROR SUMMARY' $B/memcheck-w4a8.log | tail -1)"
fi
SH=${SH:-llama3-8b}; MS=${MS:-256,1024,2048,4096,8192}; BU=${BU:-0,0.1}
[ "${SKIP_BENCH:-0}" = 1 ] && { echo "== done (no bench) $(date -u)"; exit 0; }
$B/mosaic bench gemm --act-bits 8 --shapes $SH --m $MS --budget $BU ${BENCH_ARGS:-} --json $OUT/gemm-w4a8.json > $OUT/bench-w4a8.md 2>&1
echo "== bench rc=$?"; tail -5 $OUT/bench-w4a8.md
if [ -n "${ENV_RUNS:-}${ABL:-}${BASE_FP8:-}" ]; then
  : > $OUT/extra-runs.md
  for bin in mosaic ${BASE_FP8:+mosaic-base} $(for m in ${ABL:-}; do echo mosaic-abl$m; done); do
    for er in "default:" ${ENV_RUNS:-}; do
      name=${er%%:*}; vars=${er#*:}
      [ "$bin" = mosaic ] && [ "$name" = default ] && continue
      env $(echo "$vars" | tr ',' ' ') $B/$bin bench gemm --act-bits 8 --shapes $SH --m $MS --budget $BU ${BENCH_ARGS:-} > $B/run.md 2>&1
      echo "== extra run $bin $name rc=$?"
      { echo "### $bin, $name ($vars)"; grep -E "^\| *(shape|---)|w4a8(fp8|i8wg)_(dense_gemm_only|zipper_gemm_only) " $B/run.md; echo; } >> $OUT/extra-runs.md
    done
  done
  cat $OUT/extra-runs.md
fi
if [ "${SKIP_TORCH:-0}" != 1 ]; then
  PYTHONUNBUFFERED=1 timeout ${TORCH_T:-300} python3 bench/torch_w8.py --shapes $SH --m $MS --json $OUT/torch-w8.json > $OUT/torch-w8.log 2>&1
  echo "== torch w8 rc=$?"; grep -iE "fail|refused|error" $OUT/torch-w8.log | head -5
fi
python3 bench/merge_w4a8.py $OUT/gemm-w4a8-merged.json $OUT/gemm-w4a8.json $OUT/torch-w8.json > $OUT/summary.md
cat $OUT/summary.md
if [ -n "${NCU:-}" ]; then
  set -- $NCU
  S="--section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats --section LaunchStats"
  S="$S --section MemoryWorkloadAnalysis --metrics smsp__inst_executed.sum,sm__pipe_tensor_op_imma_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active,lts__t_sectors.sum,regex:smsp__warp_issue_stalled_.*_per_warp_active.pct"
  MOSAIC_W4A8_WARPS=${NCU_WARPS:-8} timeout 180 ncu --clock-control none -k regex:${NCU_K:-w4a8_gemm_kernel} -c 1 $S $B/mosaic bench gemm --act-bits 8 --shapes $1 --m $2 --budget 0.1 --reps 1 ${BENCH_ARGS:-} \
    > $OUT/ncu.txt 2>&1
  echo "== ncu rc=$?"
  grep -vE "^\|" $OUT/ncu.txt | grep -E "w4a8_gemm|w4a8_fp8|Duration|Throughput|Compute|Occupancy|Warp Cycles|Eligible|Issued|No Eligible|Registers|Dynamic Shared|Grid Size|Waves|imma|gmma|lts__|L2 Hit|Bandwidth|stalled|inst_executed" | grep -vE "stalled_.* +[0-9]\.[0-9]+$|stalled_.* +0$" | head -70
fi
if [ "${SASS:-0}" = 1 ] && command -v cuobjdump > /dev/null; then  # instruction mix per kernel
  cuobjdump -sass $B/w4a8_gemm.o | awk '/Function :/{k=$3} /^ +\/\*[0-9a-f]+\*\//{n[k]++; split($2,a,"."); op[k" "a[1]]++}
    END{for (k in n) print n[k], k; for (x in op) if (op[x] > 8) print "  ", op[x], x}' | grep -E "w4a8_gemm_kernel" | sort -k2 > $OUT/sass-stats.txt
  grep -E "__half, 1, 1|Li1ELb1E" $OUT/sass-stats.txt | sort -rn | head -30
fi
# At most 8 files come back from $OUT: the extras go into one archive.
X=$B/w4a8-extra; rm -rf $X; mkdir -p $X
cp $B/ptxas-w4a8.log $B/memcheck-w4a8.log $X/ 2>/dev/null
for f in ncu.txt sass-stats.txt torch-w8.log; do [ -f $OUT/$f ] && mv $OUT/$f $X/; done
tar -C $X -czf $OUT/extra.tar.gz . && echo "== extras in extra.tar.gz: $(ls $X | tr '\n' ' ')"
echo "== summary of checks:"; grep -E "^== (tests|memcheck|bench|torch)|worst normalized|FAILED|spill stores, [1-9]" $OUT/w4a8.log | head -20
echo "== done $(date -u)"
