#!/usr/bin/env bash
# The quantizer's GPU path on a GPU machine, in one go: build mosaic with the CUDA quantizer
# (src/quant_gpu; g++ + nvcc directly, Debian runtime libraries from the carried .devdeps), run
# its tests against the CPU reference (tests/quant_gpu), then optionally measure `mosaic quantize
# --device cuda` on a random-weight checkpoint of a real configuration (LLaMA-3-8B by default),
# written there by scripts/make_random_checkpoint.py: total time, peak host RSS, peak GPU memory.
#
#   OUT=/tmp/out scripts/gpu-quant.sh [tests|scale|all]      (default all)
# scale overrides: CONFIG (llama3-8b), RUNS (space-separated METHOD,LAYERS,SAMPLES,LEN[,DEVICE];
#   default "mosaic,0,128,2048,cuda"; LAYERS 0 = all of the config's), GROUP (128), BUDGET (0.1),
#   TOK (dir with tokenizer.json; default .xfer/llama3-tok, copied from ../shared/tokenizers/llama3
#   and carried), QT (timeout of each quantize run, s). Mind the device tool's 10 min per call: on an
#   H200, LLaMA-3-8B MosaicQuant at 16 x 512 takes ~9.5 min, GPTQ at 16 x 512 ~3 min (2026-11-28).
# Device tool: run(command='OUT=$OUT scripts/gpu-quant.sh all', carry=[".devdeps","data",".xfer/llama3-tok"])
# Only src/gpu/device.cpp of the GPU engine is built (the quantizer needs nothing else of it), so
# this script does not depend on the engine's or the kernels' state.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-all}
OUT=${OUT:-/tmp/gpu-quant}
DEPS=${DEPS:-.devdeps}
B=${BUILD:-/tmp/mosaic-quant-build}
mkdir -p "$OUT" "$B/obj"
exec > >(tee -a "$OUT/quant.log") 2>&1
. scripts/gpu-runtime.sh  # CUDA_HOME, the runtime libraries from $DEPS/debs, LIBS, LD_LIBRARY_PATH
echo "== $(date -u) $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader) nvcc $(nvcc --version | tail -1)"
echo "== host: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB RAM"

# ---- build ------------------------------------------------------------------------------------
t0=$(date +%s)
CXX="g++ -std=c++20 -O2 -I src -I $DEPS/include -I $CUDA_HOME/include -DMOSAIC_HAS_QUANT_GPU=1"
NVCC="nvcc -std=c++17 -O3 -gencode arch=compute_90a,code=sm_90a --expt-relaxed-constexpr -lineinfo -fmad=false -I src"
GT="-I $DEPS/googletest/include -I $DEPS/googletest -DMOSAIC_SOURCE_DIR=\"$PWD\" -DMOSAIC_BINARY_DIR=\"$B\""
obj() { echo "$B/obj/$(echo "$1" | tr '/' '_').o"; }
pids=()
build() {  # build <compiler...> <source>
  local src=${@: -1}
  "${@:1:$#-1}" -c "$src" -o "$(obj "$src")" || { echo "BUILD FAILED: $src"; return 1; }
}
LIB_SRCS="$(ls src/{util,io,tokenizer,format,model,quant,quant_gpu}/*.cpp) src/gpu/device.cpp"
for f in $LIB_SRCS src/cli/*.cpp tests/quant_gpu/*.cpp; do
  case $f in tests/*) build $CXX $GT $f & ;; *) build $CXX $f & ;; esac; pids+=($!)
done
for f in src/quant_gpu/*.cu; do build $NVCC $f & pids+=($!); done
build $CXX $GT $DEPS/googletest/src/gtest-all.cc & pids+=($!)
build $CXX $GT $DEPS/googletest/src/gtest_main.cc & pids+=($!)
fail=0
for p in "${pids[@]}"; do wait $p || fail=1; done
[ $fail = 0 ] || { echo "BUILD FAILED"; exit 1; }
LIBO=""; for f in $LIB_SRCS src/quant_gpu/*.cu; do LIBO="$LIBO $(obj $f)"; done
CLIO=""; for f in src/cli/*.cpp; do CLIO="$CLIO $(obj $f)"; done
TO=""; for f in tests/quant_gpu/*.cpp; do TO="$TO $(obj $f)"; done
g++ -o $B/mosaic $CLIO $LIBO $LIBS || exit 1
g++ -o $B/test_quant_gpu $TO $LIBO $(obj $DEPS/googletest/src/gtest-all.cc) $(obj $DEPS/googletest/src/gtest_main.cc) $LIBS || exit 1
echo "== build ok in $(( $(date +%s) - t0 )) s"

# ---- tests: the GPU quantizer against the CPU reference -----------------------------------------
if [ "$MODE" != scale ]; then
  timeout ${TEST_T:-300} $B/test_quant_gpu 2>&1 | grep -vE "^\[ RUN|^\[       OK" | tee $OUT/test_quant_gpu.log
  echo "== test_quant_gpu rc=${PIPESTATUS[0]}"
fi
[ "$MODE" = tests ] && exit 0

# ---- scale: a real configuration with random weights, quantized on the GPU -----------------------
# RUNS: space-separated METHOD,LAYERS,SAMPLES,LEN[,DEVICE] (LAYERS 0 = all of the config's layers).
CONFIG=${CONFIG:-llama3-8b}; TOK=${TOK:-.xfer/llama3-tok}; GROUP=${GROUP:-128}; BUDGET=${BUDGET:-0.1}
RUNS=${RUNS:-mosaic,0,128,2048,cuda}
for r in $RUNS; do
  IFS=, read -r METHOD LAYERS SAMPLES LEN DEV <<< "$r"; DEV=${DEV:-cuda}
  M=/tmp/$CONFIG-random-L$LAYERS
  if [ ! -d "$M" ]; then
    python3 scripts/make_random_checkpoint.py --config $CONFIG --out $M --tokenizer $TOK --layers $LAYERS \
      || { echo "== checkpoint writer failed"; exit 1; }
  fi
  tag=$CONFIG-L$LAYERS-$METHOD-${SAMPLES}x$LEN-$DEV
  q=/tmp/q-$tag
  echo "== $tag: $(du -sh $M | cut -f1) checkpoint; quantize --device $DEV --method $METHOD --group $GROUP --budget $BUDGET"
  /usr/bin/time -v timeout ${QT:-540} $B/mosaic quantize --model $M --out $q --device $DEV --method $METHOD --group $GROUP \
    --budget $BUDGET --calib-file data/calib.txt --calib-samples $SAMPLES --calib-len $LEN --force \
    > $OUT/quantize-$tag.txt 2> $B/quantize-$tag.err
  echo "== rc=$?"
  tr '\r' '\n' < $B/quantize-$tag.err | grep -E "^calibration|^\[.*(done|layer)|^time by phase" | tail -4
  cat $OUT/quantize-$tag.txt
  grep -E "Elapsed|Maximum resident" $B/quantize-$tag.err
  tr '\r' '\n' < $B/quantize-$tag.err | grep -v "^$" > $OUT/quantize-$tag.log
  [ -d $q ] && du -sh $q && rm -rf $q
done
echo "== done $(date -u)"
