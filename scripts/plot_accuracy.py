#!/usr/bin/env python3
"""Perplexity vs bits per weight of the current quantizer pipeline, next to llama.cpp's 4-bit types.

Reads the rows that scripts/accuracy_final.sh writes (bench/results/accuracy-final-*.json: the
current pipeline, global allocation + act-order) and the peers of the original study
(bench/results/accuracy-smollm2-135m-*.json, written by scripts/accuracy_study.py: llama.cpp's Q4_0,
Q4_1, Q4_K_M and IQ4_XS with an importance matrix, measured on the same model, text and windows),
and plots every row with its label. Plots only what the files hold.

  python3 scripts/plot_accuracy.py [--out docs/accuracy-current.png] [--final F.json ...] [--study S.json]

Needs matplotlib (pip install matplotlib==3.11.2; not part of scripts/requirements.txt, which is what
the default model's set-up installs).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def label(method: str) -> str:
    """A short label: 'MosaicQuant 16x64 10% global, nl4 grid' -> 'MQ 16x64 10% nl4'."""
    s = method.replace("MosaicQuant", "MQ").replace(" global", "").replace(" (default)", "")
    s = s.replace(", nl4 grid", " nl4").replace(", nl4", " nl4").replace(" act-order", "")
    s = s.replace("calibration 128 x 512 (scoring on 16)", "c128").replace("(uniform grid)", "")
    s = s.replace(", groups attention 192 / MLP 32", " mixB").replace(", rotations r1r2", " r1r2")
    return " ".join(s.replace(",", "").split())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs/accuracy-current.png")
    ap.add_argument("--final", type=Path, nargs="*",
                    default=sorted((ROOT / "bench/results").glob("accuracy-final-smollm2-135m-*.json")))
    ap.add_argument("--study", type=Path, default=ROOT / "bench/results/accuracy-smollm2-135m-2026-11-28.json")
    a = ap.parse_args()
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot_accuracy: needs matplotlib (pip install matplotlib==3.11.2)", file=sys.stderr)
        return 1

    rows = []  # (bits, ppl, label, kind)
    methods = []  # the row's full method name
    for f in a.final:
        for r in json.loads(f.read_text()):
            m = r["method"]
            kind = "mosaic nl4" if "MosaicQuant" in m and "nl4" in m else "mosaic" if "MosaicQuant" in m else \
                "gptq" if m.startswith("GPTQ") else "rtn"
            rows.append((r["bits_per_weight_linears"], r["ppl"], label(m), kind))
            methods.append(m)
    fp16 = None
    for r in json.loads(a.study.read_text()):
        if r["method"] == "FP16":
            fp16 = r["ppl"]
        elif r["method"].startswith("llama.cpp"):
            rows.append((r["bits_per_weight_linears"], r["ppl"], r["method"].replace("llama.cpp ", ""), "llama.cpp"))
            methods.append(r["method"])
    if not rows or fp16 is None:
        print("plot_accuracy: no rows (or no FP16 row) in the input files", file=sys.stderr)
        return 1

    colors = {"rtn": "tab:gray", "gptq": "tab:blue", "mosaic": "tab:red", "mosaic nl4": "tab:purple",
              "llama.cpp": "tab:green"}
    fig, ax = plt.subplots(figsize=(11, 7.5))
    ax.axhline(fp16, color="k", ls="--", lw=1, label=f"FP16 {fp16:.3f}")
    ax.axhline(fp16 * 1.01, color="k", ls=":", lw=1, label="FP16 + 1% (the goal)")
    for kind, c in colors.items():
        pts = [r for r in rows if r[3] == kind]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=c, s=28, label=kind, zorder=3)
    # Labels for the method rows; the ablations at 4.68 bits (calibration sizes, scorers, allocation,
    # act-order, true-sequential, block shapes) stay unlabeled dots (docs/results.md has them by name).
    ablation = ("calibration", "scorer", "per-layer", "no act", "true-sequential", "32x32", "64x64")
    for (bits, ppl, lab, _), m in zip(rows, methods):
        if ppl < 24.5 and (not any(w in m for w in ablation) or "c128" in lab):
            ax.annotate(lab, (bits, ppl), fontsize=7, xytext=(3, 2), textcoords="offset points")
    ax.set_ylim(fp16 - 0.3, 25.2)
    ax.set_xlabel("bits per weight of the linear layers (attention + MLP)")
    ax.set_ylabel("WikiText-2 perplexity (ctx 2048, first 8 windows)")
    ax.set_title("SmolLM2-135M: the current pipeline (global allocation + act-order) and llama.cpp's 4-bit types")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print(f"plot_accuracy: {len(rows)} rows -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
