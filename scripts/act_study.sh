#!/usr/bin/env bash
# Quantized-activation study (issue 6, accuracy side) on the default model: W4A8 and W4A4 rows for
# RTN, SmoothQuant+GPTQ and MosaicQuant at several residual budgets, WikiText-2 ppl and KL against
# the FP16 model, and a markdown table (docs/results.md "Quantized activations (W4A8, W4A4)").
#   bash scripts/act_study.sh [ROW ...]      rows: NAME=METHOD:ACT_BITS[:BUDGET[:FORMAT[:GRID[:ROTATE[:KEEP]]]]], default all below
#   (FORMAT: --act-format, int by default; fp8_e4m3 = FP8 e4m3 activations; GRID: --grid, int4 by default;
#    ROTATE: --rotate none|r1|r1r2, none by default, optionally with the matrix: r1r2/random = --rotate-matrix random;
#    KEEP: --rotate-keep, residual channels left out of the rotation, comma-separated, e.g. 507)
# Resumes: a row whose JSON exists is not redone (delete it, or FORCE=1). Env: MOSAIC (binary),
# MODEL, WORK (output folder), WINDOWS (ppl windows), CALIB_SAMPLES, CALIB_LEN, GROUP, ALLOC_EXP (1), SMOOTH_ALPHA
# (--smooth-alpha for every row given: auto, none or a number; unset = the quantizer's default), and a
# row name ending in "-grid" adds --int-scales (scales on the integer scale grid: the INT8 wgmma kernel).
# Calibration is data/calib.txt only (never WikiText).
set -euo pipefail
cd "$(dirname "$0")/.."
MOSAIC=${MOSAIC:-build-act/mosaic}
MODEL=${MODEL:-models/smollm2-135m}
WORK=${WORK:-build-act/act_study}
WINDOWS=${WINDOWS:-8}
CALIB_SAMPLES=${CALIB_SAMPLES:-16}
CALIB_LEN=${CALIB_LEN:-512}
GROUP=${GROUP:-64}
TEXT=${TEXT:-../shared/data/wikitext-2-raw/wiki.test.raw}
ROWS=("$@")
if [ ${#ROWS[@]} -eq 0 ]; then
  ROWS=(rtn-a8=rtn:8 sqgptq-a8=gptq:8 mosaic0.1-a8=mosaic:8:0.1 mosaic0.05-a8=mosaic:8:0.05
        rtn-a4=rtn:4 sqgptq-a4=gptq:4 mosaic0.1-a4=mosaic:4:0.1 mosaic0.05-a4=mosaic:4:0.05
        mosaic0.1-a16=mosaic:16:0.1 mosaic0.2-a8=mosaic:8:0.2 mosaic0.2-a4=mosaic:4:0.2
        rtn-a8fp8=rtn:8::fp8_e4m3 mosaic0.1-a8fp8=mosaic:8:0.1:fp8_e4m3
        mosaic0.1-a8nl=mosaic:8:0.1::nl4 mosaic0.05-a8nl=mosaic:8:0.05::nl4)
fi
mkdir -p "$WORK/models" "$WORK/json" "$WORK/logs"
for row in "${ROWS[@]}"; do
  name=${row%%=*}; spec=${row#*=}
  IFS=: read -r method abits budget aformat grid rotate keep <<<"$spec"
  json=$WORK/json/$name.json
  if [ -s "$json" ] && [ -z "${FORCE:-}" ]; then echo "== $name: done ($json)"; continue; fi
  out=$WORK/models/$name
  args=(--model "$MODEL" --out "$out" --method "$method" --group "$GROUP" --act-bits "$abits" --force)
  [ "$method" != rtn ] && args+=(--calib-samples "$CALIB_SAMPLES" --calib-len "$CALIB_LEN")
  [ -n "${budget:-}" ] && args+=(--budget "$budget")
  # Global allocation's exponent: 1 made the committed rows (before --alloc-exponent existed); ALLOC_EXP=0.75
  # is the current default.
  [ "$method" = mosaic ] && args+=(--alloc-exponent "${ALLOC_EXP:-1}")
  [ -n "${aformat:-}" ] && args+=(--act-format "$aformat")
  [ -n "${grid:-}" ] && args+=(--grid "$grid")
  [ -n "${SMOOTH_ALPHA:-}" ] && args+=(--smooth-alpha "$SMOOTH_ALPHA")
  [ "${name%-grid}" != "$name" ] && args+=(--int-scales)
  if [ -n "${rotate:-}" ]; then
    args+=(--rotate "${rotate%%/*}")
    [ "$rotate" != "${rotate%%/*}" ] && args+=(--rotate-matrix "${rotate#*/}")
    [ -n "${keep:-}" ] && args+=(--rotate-keep "$keep")
  fi
  echo "== $name: mosaic quantize ${args[*]}"
  start=$(date +%s)
  "$MOSAIC" quantize "${args[@]}" > "$WORK/logs/$name.quantize.log" 2>&1
  qsec=$(( $(date +%s) - start ))
  tail -1 "$WORK/logs/$name.quantize.log"
  "$MOSAIC" ppl --model "$out" --text-file "$TEXT" --max-windows "$WINDOWS" --kl-base "$MODEL" --json \
    > "$json.tmp" 2> "$WORK/logs/$name.ppl.log"
  python3 - "$json.tmp" "$out/config.json" "$WORK/logs/$name.quantize.log" "$qsec" > "$json" <<'PY'
import json, re, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
q = json.load(open(sys.argv[2]))["quantization_config"]
log = open(sys.argv[3]).read()
m = re.search(r"([0-9.]+) bits/weight", log)
r.update(method=q["method"], act_bits=q["act_bits"], act_format=q.get("act_format", "int"), grid=q.get("grid", "int4"),
         scale_grid=q.get("scale_grid", "fp16"),
         budget=(q.get("residual") or {}).get("budget"),
         smoothing=q.get("smoothing"), rotation=q.get("rotation"), bits_per_weight=float(m.group(1)) if m else None,
         quantize_seconds=int(sys.argv[4]))
print(json.dumps(r))
PY
  rm -f "$json.tmp"
  echo "   ppl $(python3 -c "import json;d=json.load(open('$json'));print(round(d['ppl'],3),'KL',round(d['kl_div'],4))")"
done
# The table: every JSON in $WORK/json.
python3 - "$WORK/json" <<'PY'
import glob, json, os, sys
rows = [json.load(open(f)) for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.json")))]
if not rows: sys.exit(0)
base = rows[0]["base_ppl"]
name = {"rtn": "RTN", "gptq": "SmoothQuant+GPTQ", "mosaic": "SmoothQuant+MosaicQuant"}
def rot(r):
    q = r.get("rotation")
    return "" if not q else (("r1r2" if q.get("r2") else "r1") + ("" if q.get("matrix", "hadamard") == "hadamard" else " " + q["matrix"])
                             + (" keep " + ",".join(map(str, q["kept_channels"])) if q.get("kept_channels") else ""))
def key(r): return (-r["act_bits"], r.get("act_format", "int"), r.get("grid", "int4"), rot(r), ["rtn", "gptq", "mosaic"].index(r["method"]), r["budget"] or 0)
print(f"| weights / activations | method | bits/weight (linears) | ppl | ppl vs FP16 | KL |")
print("|---|---|---|---|---|---|")
print(f"| FP16 / FP16 | - | 16.000 | {base:.3f} | +0.00% | 0.0000 |")
for r in sorted(rows, key=key):
    m = name[r["method"]] if r["smoothing"] or r["method"] == "rtn" else {"gptq": "GPTQ", "mosaic": "MosaicQuant"}[r["method"]]
    if r["method"] == "mosaic": m += f" {r['budget']:g}"
    fmt = " FP8" if r.get("act_format", "int") == "fp8_e4m3" else ""
    if r.get("grid", "int4") != "int4": m += f", {r['grid']} grid"
    if rot(r): m += f", rotation {rot(r)}"
    print(f"| W4 / A{r['act_bits']}{fmt} | {m} | {r['bits_per_weight']:.3f} | {r['ppl']:.3f} | "
          f"{100 * (r['ppl'] / base - 1):+.2f}% | {r['kl_div']:.4f} |")
PY
