#!/usr/bin/env bash
# The GPU engine on a GPU machine, in one go: build the whole mosaic (g++ + nvcc directly: the GPU
# image has the CUDA toolkit but not the Debian libraries of the CMake build; they come from
# .devdeps, made by scripts/make-devdeps.sh), run the GPU engine tests (tests/gpu), then
# `mosaic bench e2e` (FP16 and W4A16, random weights) and bench/transformers_e2e.py on the same
# GPU, merged into one table by bench/merge_e2e.py. Everything lands in $OUT.
#
#   OUT=/tmp/out scripts/gpu-e2e.sh [full|quick|tests|bench|build-only]
#     full:  tests + llama3-8b and qwen3-8b, batch 1,4,16, prompt 2048, gen 128
#     quick: tests + llama3-8b batch 1 only
# Overrides: CONFIGS (space separated), BATCH, PROMPT, GEN, BUDGET, ENGINES (fp16,w4a16[,w4a8]),
# E2E_ARGS (more bench e2e options, e.g. --w4a8-min-m 0); SKIP_HF=1; PROFILE=1 (decode
# step breakdown, bench e2e --profile); PPL_MODEL=dir
# (also runs `mosaic ppl --device cuda` on it with wikitext from PPL_TEXT).
# Same-run comparisons for the first config (compare.md): BASE_KERNELS=file (a src/gpu/kernels.cu
# of an earlier revision; one from before ed2f53e brings its own decode attention, which then replaces
# decode_attention.cu too; e.g. `git show REV:src/gpu/kernels.cu > build-x/old/kernels.cu`, carried:
# links a second mosaic with it and runs the same bench), BASE_DEFS="-DX" (the same, with
# src/gpu/decode_attention.cu built with those nvcc flags, e.g. -DMOSAIC_DEC_WARPS=8), BASE_ATTN=file (the same with
# that decode_attention.cu, e.g. `git show REV:src/gpu/decode_attention.cu > .devdeps/old_attn.cu`, carried), NOPDL=1 (the bench again with MOSAIC_PDL=0),
# ENV_RUNS="name:VAR=v[,VAR=v] ..." (the bench again per entry with those environment variables;
# engines ENV_ENGINES, default ENGINES), ARG_RUNS="name:--opt,value[,...] ..." (the same with extra bench e2e
# options, e.g. ARG_RUNS="rows1:--res-rows,1 rows025:--res-rows,0.25": the residual concentrated on block rows).
# NCU=1: Nsight Compute at the end (ncu.txt): one decode attention kernel of a W4A16 batch-1 decode
# step after the prompt (speed of light, warp state, occupancy). (Timing every launch of that bench
# under ncu did not finish in 60 s on an H100: the prefill's launches; not kept.)
# Device tool: run(command='OUT=$OUT scripts/gpu-e2e.sh full', carry=[".devdeps"], timeout_s=590)
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-full}
OUT=${OUT:-/tmp/gpu-e2e}
DEPS=${DEPS:-.devdeps}
[ -d "$DEPS/include/CLI" ] && [ -d "$DEPS/googletest" ] || {
  echo "$(basename "$0"): $DEPS is missing or incomplete: run scripts/make-devdeps.sh here, then pass carry [\"$DEPS\"] to the device tool" >&2
  exit 1
}
B=${BUILD:-/tmp/mosaic-e2e-build}
mkdir -p "$OUT" "$B/obj"
# Objects are kept between calls on a warm machine; any header change rebuilds everything.
H=$(cat src/*/*.h src/*/*.cuh tests/gpu/*.h 2>/dev/null | md5sum | cut -c1-12)
[ "$(cat "$B/obj/.headers" 2>/dev/null)" = "$H" ] || { rm -f "$B"/obj/*.o; echo "$H" > "$B/obj/.headers"; }
exec > >(tee -a "$OUT/e2e.log") 2>&1
. scripts/gpu-runtime.sh  # CUDA_HOME, the runtime libraries from $DEPS/debs, LIBS, LD_LIBRARY_PATH
echo "== $(date -u) $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader) nvcc $(nvcc --version | tail -1)"

# ---- build (objects newer than their source are kept: a warm machine rebuilds only what changed) --
t0=$(date +%s)
CXX="g++ -std=c++20 -O2 -I src -I $DEPS/include -I $CUDA_HOME/include -DMOSAIC_HAS_CUDA=1 -DMOSAIC_HAS_GPU_ENGINE=1"
NVCC="nvcc -std=c++17 -O3 -gencode arch=compute_90a,code=sm_90a --expt-relaxed-constexpr -lineinfo -I src"
GT="-I $DEPS/googletest/include -I $DEPS/googletest -DMOSAIC_SOURCE_DIR=\"$PWD\" -DMOSAIC_BINARY_DIR=\"$B\""
pids=()
obj() { echo "$B/obj/$(echo "$1" | tr '/' '_').o"; }
build() {  # build <compiler...> -- <source>
  local src=${@: -1} o; o=$(obj "$src")
  [ "$o" -nt "$src" ] && return 0
  "${@:1:$#-1}" -c "$src" -o "$o" || { echo "BUILD FAILED: $src"; return 1; }
}
LIB_SRCS=$(ls src/{util,io,tokenizer,format,model,quant,cuda,gpu}/*.cpp)
for f in $LIB_SRCS src/cli/*.cpp; do build $CXX $f & pids+=($!); done
for f in src/cuda/*.cu src/gpu/*.cu; do build $NVCC $f & pids+=($!); done
for f in tests/gpu/*.cpp; do build $CXX $GT $f & pids+=($!); done
build $CXX $GT $DEPS/googletest/src/gtest-all.cc & pids+=($!)
build $CXX $GT $DEPS/googletest/src/gtest_main.cc & pids+=($!)
fail=0
for p in "${pids[@]}"; do wait $p || fail=1; done
[ $fail = 0 ] || { echo "BUILD FAILED"; exit 1; }
if [ -n "${BASE_KERNELS:-}" ]; then
  cp "$BASE_KERNELS" $B/base_kernels.cu && $NVCC -c $B/base_kernels.cu -o $B/obj/base_kernels.o || exit 1
fi
if [ -n "${BASE_DEFS:-}${BASE_ATTN:-}" ]; then  # the decode attention again: extra nvcc flags and/or another revision
  $NVCC ${BASE_DEFS:-} -c ${BASE_ATTN:-src/gpu/decode_attention.cu} -o $B/obj/base_decode_attention.o || exit 1
fi
LIBO=""
for f in $LIB_SRCS src/cuda/*.cu src/gpu/*.cu; do LIBO="$LIBO $(obj $f)"; done
CLIO=""; for f in src/cli/*.cpp; do CLIO="$CLIO $(obj $f)"; done
TO=""; for f in tests/gpu/*.cpp; do TO="$TO $(obj $f)"; done
g++ -o $B/mosaic $CLIO $LIBO $LIBS || exit 1
if [ -n "${BASE_KERNELS:-}" ]; then
  BASEO=${LIBO/$(obj src/gpu/kernels.cu)/$B/obj/base_kernels.o}
  # a kernels.cu from before the split (ed2f53e) also holds the decode attention: leave ours out
  grep -q attention_decode_k "$BASE_KERNELS" && BASEO=${BASEO/$(obj src/gpu/decode_attention.cu)/}
  g++ -o $B/mosaic_base $CLIO $BASEO $LIBS || exit 1
elif [ -n "${BASE_DEFS:-}${BASE_ATTN:-}" ]; then
  g++ -o $B/mosaic_base $CLIO ${LIBO/$(obj src/gpu/decode_attention.cu)/$B/obj/base_decode_attention.o} $LIBS || exit 1
fi
g++ -o $B/test_gpu $TO $LIBO $(obj $DEPS/googletest/src/gtest-all.cc) $(obj $DEPS/googletest/src/gtest_main.cc) $LIBS || exit 1
echo "== build ok in $(( $(date +%s) - t0 )) s"
[ "$MODE" = build-only ] && exit 0

# ---- GPU engine tests ------------------------------------------------------------------------------
if [ "$MODE" != bench ]; then
  timeout ${TEST_T:-240} $B/test_gpu 2>&1 | grep -vE "^\[ RUN|^\[       OK" | tee $OUT/test_gpu.log; tests_rc=${PIPESTATUS[0]}
  echo "== test_gpu rc=$tests_rc"
  $B/mosaic bench e2e --config nope --random-weights 2>&1 | tail -1  # a clear error
fi
[ "$MODE" = tests ] && exit 0

# ---- default model perplexity on the GPU (optional) ------------------------------------------------
if [ -n "${PPL_MODEL:-}" ]; then
  $B/mosaic ppl --device cuda --model "$PPL_MODEL" --text-file "${PPL_TEXT:-data/wikitext-2-raw/wiki.test.raw}" --json \
    > $OUT/ppl.json 2> $B/ppl.log; echo "== ppl rc=$? $(cat $OUT/ppl.json)"; tail -3 $B/ppl.log
fi

# ---- end-to-end benchmark: ours (FP16, W4A16) and transformers FP16, same GPU, same run ------------
if [ "$MODE" = quick ]; then DC=llama3-8b; DB=1; else DC="llama3-8b qwen3-8b"; DB=1,4,16; fi
CONFIGS=${CONFIGS:-$DC}; BATCH=${BATCH:-$DB}; PROMPT=${PROMPT:-2048}; GEN=${GEN:-128}; BUDGET=${BUDGET:-0.1}
parts=()
for c in $CONFIGS; do
  timeout ${BENCH_T:-200} $B/mosaic bench e2e --config $c --random-weights --batch $BATCH --prompt $PROMPT --gen $GEN --budget $BUDGET \
    --engines ${ENGINES:-fp16,w4a16} ${E2E_ARGS:-} ${PROFILE:+--profile} --json $B/e2e-$c.json 2>&1 | tee $B/e2e-$c.md
  echo "== bench e2e $c rc=${PIPESTATUS[0]}"; parts+=($B/e2e-$c.json)
  if [ "$c" = "${CONFIGS%% *}" ]; then  # same-run comparisons on the first config
    if [ -n "${BASE_KERNELS:-}${BASE_DEFS:-}${BASE_ATTN:-}" ]; then
      echo "## $c, base kernels (${BASE_KERNELS:-decode attention ${BASE_ATTN:-src/gpu/decode_attention.cu} built with ${BASE_DEFS:-no extra flags}})" >> $OUT/compare.md
      timeout ${BENCH_T:-200} $B/mosaic_base bench e2e --config $c --random-weights --batch $BATCH --prompt $PROMPT --gen $GEN \
        --budget $BUDGET --engines ${ENV_ENGINES:-${ENGINES:-fp16,w4a16}} ${PROFILE:+--profile} 2>&1 | tee -a $OUT/compare.md
      echo "== base $c rc=${PIPESTATUS[0]}"
    fi
    for ar in ${ARG_RUNS:-}; do  # "name:--opt,value[,--opt,value]": the bench again with those extra options
      echo "## $c, ${ar%%:*} (${ar#*:})" >> $OUT/compare.md
      timeout ${BENCH_T:-200} $B/mosaic bench e2e --config $c --random-weights --batch $BATCH --prompt $PROMPT --gen $GEN \
        --budget $BUDGET --engines ${ENV_ENGINES:-${ENGINES:-fp16,w4a16}} ${E2E_ARGS:-} $(echo "${ar#*:}" | tr ',' ' ') \
        ${PROFILE:+--profile} 2>&1 | tee -a $OUT/compare.md; echo "== ${ar%%:*} $c rc=${PIPESTATUS[0]}"
    done
    for er in ${ENV_RUNS:-}; do  # "name:VAR=v[,VAR=v]": the bench again with those variables
      echo "## $c, ${er%%:*} (${er#*:})" >> $OUT/compare.md
      env $(echo "${er#*:}" | tr ',' ' ') timeout ${BENCH_T:-200} $B/mosaic bench e2e --config $c --random-weights --batch $BATCH \
        --prompt $PROMPT --gen $GEN --budget $BUDGET --engines ${ENV_ENGINES:-${ENGINES:-fp16,w4a16}} ${E2E_ARGS:-} ${PROFILE:+--profile} 2>&1 \
        | tee -a $OUT/compare.md; echo "== ${er%%:*} $c rc=${PIPESTATUS[0]}"
    done
    if [ "${NOPDL:-0}" = 1 ]; then
      echo "## $c, MOSAIC_PDL=0" >> $OUT/compare.md
      MOSAIC_PDL=0 timeout ${BENCH_T:-200} $B/mosaic bench e2e --config $c --random-weights --batch $BATCH --prompt $PROMPT \
        --gen $GEN --budget $BUDGET ${PROFILE:+--profile} 2>&1 | tee -a $OUT/compare.md; echo "== nopdl $c rc=${PIPESTATUS[0]}"
    fi
  fi
  if [ "${SKIP_HF:-0}" != 1 ]; then
    PYTHONUNBUFFERED=1 timeout ${HF_T:-200} python3 bench/transformers_e2e.py --config $c --batch $BATCH --prompt $PROMPT \
      --gen $GEN --json $B/hf-$c.json 2>&1 | grep -v Warning | tail -8
    echo "== transformers $c rc=${PIPESTATUS[0]}"; [ -f $B/hf-$c.json ] && parts+=($B/hf-$c.json)
  fi
done
python3 bench/merge_e2e.py --json $OUT/e2e.json --md $OUT/e2e.md "${parts[@]}" && cat $OUT/e2e.md

# ---- Nsight Compute (optional): the decode attention kernel of a W4A16 batch-1 step ----------------------
if [ "${NCU:-0}" = 1 ]; then
  c=${CONFIGS%% *}
  run_ncu() { timeout ${NCU_T:-120} ncu --clock-control none "$@" $B/mosaic bench e2e --config $c --random-weights \
    --engines ${NCU_ENGINE:-w4a16} --batch ${NCU_BATCH:-1} --prompt $PROMPT --gen 6 --budget $BUDGET; }
  # NCU_K="regex" profiles those kernels instead (NCU_SKIP launches skipped, NCU_C profiled; NCU_ENGINE,
  # NCU_BATCH), e.g. NCU_K="silu_mul_quant|add_rms_norm_held" NCU_ENGINE=w4a8_grid NCU_BATCH=4 PROMPT=16
  echo "== ncu ${NCU_K:-attention_decode_k} (bench e2e --engines ${NCU_ENGINE:-w4a16} --batch ${NCU_BATCH:-1}, launches" \
    "${NCU_SKIP:-100} + 1 .. ${NCU_C:-1})" | tee -a $OUT/ncu.txt
  run_ncu -k "regex:${NCU_K:-attention_decode_k}" -s ${NCU_SKIP:-100} -c ${NCU_C:-1} --section SpeedOfLight \
    --section WarpStateStats --section Occupancy --section LaunchStats --section SchedulerStats 2>&1 | grep -vE "^==PROF==|^\|" \
    | grep -E "Duration|Throughput|Registers|Stall|stall|Warp Cycles|Eligible|Issued|Occupancy|Grid|Block|Cluster|_k|attention" \
    | head -${NCU_LINES:-60} | tee -a $OUT/ncu.txt
fi
echo "== done $(date -u)"
