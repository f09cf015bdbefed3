"""Shared by the benchmark merge scripts: load the JSON row lists of `mosaic bench gemm` and the torch
peer scripts, fill speedup_vs_cublas of every peer row (torch_*, marlin) from the cuBLAS FP16 row of the same shape
and M (measured in the same device call), write the merged list to out_path and return it."""
import json
import sys


def load_and_merge(out_path, paths):
    rows = []
    for p in paths:
        try:
            rows += json.load(open(p))
        except FileNotFoundError:
            print(f"(missing {p})", file=sys.stderr)
    cub = {(r["shape"], r["m"]): r["us"] for r in rows if r["variant"] == "cublas_fp16"}
    for r in rows:
        if (r["variant"].startswith("torch_") or r["variant"] == "marlin") and (r["shape"], r["m"]) in cub:
            r["speedup_vs_cublas"] = cub[(r["shape"], r["m"])] / r["us"]
    json.dump(rows, open(out_path, "w"), indent=1)
    return rows
