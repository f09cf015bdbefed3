#!/usr/bin/env python3
"""Compare kernel builds / settings measured in one run: `compare_variants.py LABEL=gemm.json ...`
(each file from `mosaic bench gemm --json`). Prints, per shape and M at budget 10%, cuBLAS FP16
(from the first file) and each label's dense_w4 and zipper times with the fused overhead, so that
versions are compared on the same card in the same run (docs/kernels-notes.md)."""
import json, sys


def main():
    runs = []
    for arg in sys.argv[1:]:
        label, _, path = arg.partition("=")
        try:
            runs.append((label, json.load(open(path))))
        except (FileNotFoundError, json.JSONDecodeError) as e:
            print(f"(skipping {label}: {e})", file=sys.stderr)
    if not runs:
        return
    idx = [{(r["shape"], r["m"], r["variant"], r.get("budget")): r["us"] for r in rows} for _, rows in runs]
    keys = []
    for r in runs[0][1]:
        k = (r["shape"], r["m"])
        if k not in keys:
            keys.append(k)
    head = "| shape | M | cuBLAS |" + "".join(f" {l} dense | {l} zipper | {l} ovh |" for l, _ in runs)
    print(head)
    print("|" + "---|" * (3 + 3 * len(runs)))
    for s, m in keys:
        c = idx[0].get((s, m, "cublas_fp16", None))
        cells = []
        any_val = False
        for d in idx:
            dv, zv = d.get((s, m, "dense_w4", 0.1)), d.get((s, m, "zipper", 0.1))
            any_val |= zv is not None
            cells.append("-" if dv is None else f"{dv:.2f}")
            cells.append("-" if zv is None else f"{zv:.2f}" + ("" if c is None else f" ({c / zv:.2f}x)"))
            cells.append("-" if (dv is None or zv is None) else f"{100 * (zv / dv - 1):+.0f}%")
        if any_val:
            print(f"| {s} | {m} | {'-' if c is None else f'{c:.2f}'} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
