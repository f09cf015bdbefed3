#!/usr/bin/env python3
"""Merge `mosaic bench gemm --json` rows and the peers' rows (bench/torch_int4.py, bench/marlin_peer.py)
into one list, filling their speedup_vs_cublas from the cuBLAS FP16 row of the same shape and M, and print
a compact summary (speedups at budget 10%, fused overhead over dense-only)."""
import sys

from bench_rows import load_and_merge


def main():
    out_path, paths = sys.argv[1], sys.argv[2:]
    rows = load_and_merge(out_path, paths)
    by = {}
    for r in rows:
        by[(r["shape"], r["m"], r["variant"], r.get("budget"))] = r["us"]
    shapes = sorted({r["shape"] for r in rows}, key=lambda s: [x["shape"] for x in rows].index(s))
    ms = sorted({r["m"] for r in rows})
    # read_limit: a plain read of the zipper weight bytes, timed the same way (once per shape).
    rl = {r["shape"]: r["us"] for r in rows if r["variant"] == "read_limit" and r.get("budget") == 0.1}
    print("| shape | M | cuBLAS us | dense_w4 | unfused | zipper | torch_int4 | marlin | zipper x cuBLAS | fused overhead | unfused overhead | read limit us | zipper / limit |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s in shapes:
        for m in ms:
            c = by.get((s, m, "cublas_fp16", None))
            d = by.get((s, m, "dense_w4", 0.1))
            u = by.get((s, m, "unfused", 0.1))
            z = by.get((s, m, "zipper", 0.1))
            t = by.get((s, m, "torch_int4", None))
            mar = by.get((s, m, "marlin", None))
            if c is None or z is None:
                continue
            f = lambda v: "-" if v is None else f"{v:.2f}"
            print(f"| {s} | {m} | {c:.2f} | {f(d)} | {f(u)} | {z:.2f} | {f(t)} | {f(mar)} | {c / z:.2f}x | "
                  f"{'-' if d is None else f'{100 * (z / d - 1):+.1f}%'} | {'-' if (d is None or u is None) else f'{100 * (u / d - 1):+.1f}%'} | "
                  f"{f(rl.get(s))} | {'-' if s not in rl else f'{z / rl[s]:.2f}'} |")


if __name__ == "__main__":
    main()
