#!/usr/bin/env bash
# Per-SASS-instruction stall samples of one kernel launch on the GPU machine (ncu source page),
# summarized by scripts/ncu_top.py. Everything lands in $OUT.
#
#   OUT=/tmp/p scripts/gpu-profile-source.sh gemm KxN M [BUDGET]   # the ZipperEngine GEMM (mosaic bench gemm)
#   OUT=/tmp/p scripts/gpu-profile-source.sh attention [CONFIG]   # decode attention, batch 1, 2048 cached keys
#   OUT=/tmp/p scripts/gpu-profile-source.sh w4a8 KxN M [BUDGET [ABLATE]]   # the W4A8 FP8 wgmma GEMM; ABLATE = a
#       MOSAIC_W4A8_FP8_ABLATE mask (w4a8_fp8_gemm.cu: 7 = the load pipeline and epilogue alone)
# KREGEX picks the kernel (default: the first zipper_{stream,wgmma,fused}_kernel launch, the residual stream kernel's at
# M <= 16 with a budget / attention_decode); the environment passes through
# (e.g. MOSAIC_ZIPPER_WGMMA=1 to profile the wgmma kernel at M = 17..512's neighbours).
# Device tool: run(command='OUT=$OUT scripts/gpu-profile-source.sh gemm 4096x6144 128', carry=[".devdeps"]).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-profile-source}
mkdir -p "$OUT"
S="--section WarpStateStats --section SourceCounters --section SpeedOfLight --section LaunchStats"
S="$S --metrics regex:smsp__warp_issue_stalled_.*_per_warp_active.pct,sm__cycles_elapsed.avg,smsp__cycles_active.avg"
case "${1:-}" in
  gemm)
    B=/tmp/mosaic-gpu-build
    [ -x $B/mosaic ] || SKIP_TORCH=1 OUT=$OUT/build bash scripts/gpu-check.sh build-only > $OUT/build.log 2>&1 || exit 1
    # Default kernel: with a residual budget at M <= 16 the residual stream kernel (mangled RES = true:
    # "Lb1"); the bench's first zipper launch would be its dense_w4 variant. MOSAIC_ZIPPER_TUNE=0 (unless
    # set): the plan model's plan, so the profiled launch is not one of the first-use tuning candidates.
    if [ "${4:-0}" != 0 ] && [ "$3" -le 16 ]; then DK='zipper_stream_kernelI6__halfLb1'; else DK='zipper_[a-z]*_kernel'; fi
    export MOSAIC_ZIPPER_TUNE=${MOSAIC_ZIPPER_TUNE:-0}
    APP="$B/mosaic bench gemm --shapes $2 --m $3 --budget ${4:-0} --reps 1"; K=${KREGEX:-$DK}; SKIP=0 ;;
  attention)
    B=/tmp/mosaic-e2e-build
    [ -x $B/mosaic ] || OUT=$OUT/build SKIP_HF=1 bash scripts/gpu-e2e.sh build-only > $OUT/build.log 2>&1 || exit 1
    APP="$B/mosaic bench e2e --config ${2:-llama3-8b} --random-weights --engines w4a16 --batch 1 --prompt 2048 --gen 16"
    K=${KREGEX:-attention_decode}; SKIP=40 ;;  # (past the eager warm-up step's launches)
  w4a8)
    B=/tmp/mosaic-w4a8-build
    if [ "${5:-0}" != 0 ]; then BIN=$B/mosaic-abl$5; else BIN=$B/mosaic; fi
    [ -x $BIN ] || ABL=$([ "${5:-0}" != 0 ] && echo "$5") BUILD=$B SKIP_TESTS=1 SKIP_SAN=1 SKIP_BENCH=1 OUT=$OUT/build bash scripts/gpu-w4a8.sh \
      > $OUT/build.log 2>&1 || exit 1
    APP="$BIN bench gemm --act-bits 8 --act-format fp8 --shapes $2 --m $3 --budget ${4:-0} --reps 1"
    K=${KREGEX:-w4a8_fp8_gemm_kernel}; SKIP=0 ;;
  *) sed -n 2,12p "$0"; exit 2 ;;
esac
timeout 240 ncu --kernel-name-base mangled -k regex:"$K" -s $SKIP -c 1 $S $APP > $OUT/ncu.txt 2>&1
timeout 240 ncu --kernel-name-base mangled -k regex:"$K" -s $SKIP -c 1 $S --page source --print-source sass --csv $APP \
  > $OUT/source.csv 2> $OUT/source.err
grep -vE "^\|" $OUT/ncu.txt | grep -E "Duration|Grid Size|Registers Per|Throughput|cycles|stalled_.*pct +[0-9]+\.[0-9]+" |
  awk '!/stalled/ || $NF+0 > 1'
python3 scripts/ncu_top.py $OUT/source.csv --min 1.5 | head -80 | tee $OUT/top.txt
