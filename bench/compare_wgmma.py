#!/usr/bin/env python3
"""Same-run table of the wgmma kernel against the current dispatch:
`compare_wgmma.py OLD.json NEW.json [MORE=...json ...]`, each from `mosaic bench gemm --json` of the
same binary in the same run: OLD with MOSAIC_ZIPPER_WGMMA=0 (or unset), NEW with MOSAIC_ZIPPER_WGMMA=1
(every M >= 17 on the wgmma kernel). Prints per shape and M: cuBLAS FP16, the dense (budget 0) and
zipper (budget 10%, or the largest budget present) times of both, x cuBLAS, the fused overhead of the
new kernel, and which is faster at the largest budget (docs/kernels-notes.md "wgmma kernel")."""
import json, sys


def load(path):
    rows = json.load(open(path))
    return rows, {(r["shape"], r["m"], r["variant"], r.get("budget")): r["us"] for r in rows}


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    old_rows, old = load(sys.argv[1])
    _, new = load(sys.argv[2])
    more = []
    for arg in sys.argv[3:]:
        label, _, path = arg.partition("=")
        more.append((label, load(path)[1]))
    budgets = sorted({r.get("budget") for r in old_rows if r.get("budget") is not None})
    b = budgets[-1] if budgets else 0.1
    keys = []
    for r in old_rows:
        k = (r["shape"], r["m"])
        if k not in keys and r["variant"] == "cublas_fp16":
            keys.append(k)
    extra = "".join(f" {l} {int(b * 100)}% |" for l, _ in more)
    print(f"| shape | M | cuBLAS | old dense | wgmma dense | old {int(b * 100)}% | wgmma {int(b * 100)}% | wgmma x cuBLAS | "
          f"wgmma ovh |{extra} faster |")
    print("|" + "---|" * (10 + len(more)))
    fmt = lambda v: "-" if v is None else f"{v:.2f}"
    for s, m in keys:
        c = old.get((s, m, "cublas_fp16", None))
        od, nd = old.get((s, m, "dense_w4", 0.0)), new.get((s, m, "dense_w4", 0.0))
        oz, nz = old.get((s, m, "zipper", b)), new.get((s, m, "zipper", b))
        if nz is None and nd is None:
            continue
        nd_b = new.get((s, m, "dense_w4", b))
        ovh = "-" if (nz is None or nd_b is None) else f"{100 * (nz / nd_b - 1):+.0f}%"
        x = "-" if (c is None or nz is None) else f"{c / nz:.2f}x"
        win = "-" if (oz is None or nz is None) else ("wgmma" if nz < oz else "old")
        cells = "".join(f" {fmt(d.get((s, m, 'zipper', b)))} |" for _, d in more)
        print(f"| {s} | {m} | {fmt(c)} | {fmt(od)} | {fmt(nd)} | {fmt(oz)} | {fmt(nz)} | {x} | {ovh} |{cells} {win} |")


if __name__ == "__main__":
    main()
