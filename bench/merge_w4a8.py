#!/usr/bin/env python3
"""Merge `mosaic bench gemm --act-bits 8 --json` rows and bench/torch_w8.py rows into one list
(filling speedup_vs_cublas of the torch rows from the cuBLAS FP16 row of the same shape and M) and
print the W4A8 table: per shape and M, cuBLAS FP16 and the INT8 / FP8 peers against the W4A8 rows.
Usage: merge_w4a8.py OUT.json gemm.json [torch.json] [--budget=0.1]"""
import sys

from bench_rows import load_and_merge


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--budget")]
    budget = 0.1
    for a in sys.argv[1:]:
        if a.startswith("--budget="):
            budget = float(a.split("=", 1)[1])
    out_path, paths = args[0], args[1:]
    rows = load_and_merge(out_path, paths)
    by = {(r["shape"], r["m"], r["variant"], r.get("budget")): r["us"] for r in rows}
    shapes = []
    for r in rows:
        if r["shape"] not in shapes:
            shapes.append(r["shape"])
    ms = sorted({r["m"] for r in rows})
    cards = sorted({r.get("card", "?") for r in rows})
    print(f"cards: {', '.join(cards)}; W4A8 rows at budget {budget:g} (dense-only at budget 0 where measured); us")
    print()
    print("| shape | M | cuBLAS FP16 | torch INT8 mm | torch FP8 mm | w4a8 quant | w4a8 GEMM only | w4a8 dense (b=0) "
          "| w4a8 zipper | zipper x cuBLAS | GEMM-only x cuBLAS | GEMM-only TOPS | fused overhead |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    f = lambda v: "-" if v is None else f"{v:.1f}"
    for s in shapes:
        k = next(r["k"] for r in rows if r["shape"] == s)
        n = next(r["n"] for r in rows if r["shape"] == s)
        for m in ms:
            c = by.get((s, m, "cublas_fp16", None))
            if c is None:
                continue
            i8, f8 = by.get((s, m, "torch_int8_mm", None)), by.get((s, m, "torch_fp8_scaled_mm", None))
            q, g = by.get((s, m, "w4a8_quant", budget)), by.get((s, m, "w4a8_zipper_gemm_only", budget))
            d0 = by.get((s, m, "w4a8_dense", 0.0))
            db, z = by.get((s, m, "w4a8_dense", budget)), by.get((s, m, "w4a8_zipper", budget))
            x = lambda v: "-" if v is None else f"{c / v:.2f}x"
            tops = "-" if g is None else f"{2.0 * m * n * k / (g * 1e6):.0f}"
            ovh = "-" if (z is None or db is None) else f"{100 * (z / db - 1):+.1f}%"
            print(f"| {s} | {m} | {c:.1f} | {f(i8)} | {f(f8)} | {f(q)} | {f(g)} | {f(d0)} | {f(z)} | {x(z)} | {x(g)} "
                  f"| {tops} | {ovh} |")

    print()
    print(f"FP8 e4m3 wgmma kernel (w4a8fp8_*) next to cuBLAS FP16, torch FP8 and the INT8 mma.sync kernel, budget {budget:g}; us")
    print()
    print("| shape | M | cuBLAS FP16 | torch FP8 mm | INT8 w4a8 zipper | fp8 quant | fp8 GEMM only | fp8 dense (b=0) "
          "| fp8 zipper | fp8 zipper x cuBLAS | fp8 dense b=0 x cuBLAS | fp8 GEMM-only x cuBLAS | fp8 dense GEMM only "
          "| its x cuBLAS | fused overhead |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s in shapes:
        for m in ms:
            c = by.get((s, m, "cublas_fp16", None))
            if c is None or by.get((s, m, "w4a8fp8_dense", 0.0)) is None and by.get((s, m, "w4a8fp8_zipper", budget)) is None:
                continue
            f8, zi = by.get((s, m, "torch_fp8_scaled_mm", None)), by.get((s, m, "w4a8_zipper", budget))
            q, g = by.get((s, m, "w4a8fp8_quant", budget)), by.get((s, m, "w4a8fp8_zipper_gemm_only", budget))
            d0 = by.get((s, m, "w4a8fp8_dense", 0.0))
            db, z = by.get((s, m, "w4a8fp8_dense", budget)), by.get((s, m, "w4a8fp8_zipper", budget))
            dg = by.get((s, m, "w4a8fp8_dense_gemm_only", budget))
            x = lambda v: "-" if v is None else f"{c / v:.2f}x"
            ovh = "-" if (z is None or db is None) else f"{100 * (z / db - 1):+.1f}%"
            print(f"| {s} | {m} | {c:.1f} | {f(f8)} | {f(zi)} | {f(q)} | {f(g)} | {f(d0)} | {f(z)} | {x(z)} | {x(d0)} "
                  f"| {x(g)} | {f(dg)} | {x(dg)} | {ovh} |")

    print()
    print(f"INT8 wgmma kernel (w4a8i8wg_*: the same layers with their scales on the integer scale grid) next to "
          f"cuBLAS FP16, torch INT8 / FP8 and the FP8 wgmma kernel, budget {budget:g}; us")
    print()
    print("| shape | M | cuBLAS FP16 | torch INT8 mm | torch FP8 mm | fp8 GEMM only | i8wg GEMM only | its x cuBLAS "
          "| i8wg dense GEMM only (b=0) | its x cuBLAS | i8wg quant + GEMM | its x cuBLAS | fused overhead (GEMM only) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s in shapes:
        for m in ms:
            c = by.get((s, m, "cublas_fp16", None))
            g = by.get((s, m, "w4a8i8wg_zipper_gemm_only", budget))
            if c is None or g is None:
                continue
            i8, f8 = by.get((s, m, "torch_int8_mm", None)), by.get((s, m, "torch_fp8_scaled_mm", None))
            g8 = by.get((s, m, "w4a8fp8_zipper_gemm_only", budget))
            d0 = by.get((s, m, "w4a8i8wg_zipper_gemm_only", 0.0))
            db = by.get((s, m, "w4a8i8wg_dense_gemm_only", budget))
            z = by.get((s, m, "w4a8i8wg_zipper", budget))
            x = lambda v: "-" if v is None else f"{c / v:.2f}x"
            ovh = "-" if db is None else f"{100 * (g / db - 1):+.1f}%"
            print(f"| {s} | {m} | {c:.1f} | {f(i8)} | {f(f8)} | {f(g8)} | {f(g)} | {x(g)} | {f(d0)} | {x(d0)} | {f(z)} "
                  f"| {x(z)} | {ovh} |")


if __name__ == "__main__":
    main()
