#!/usr/bin/env python3
"""CPU model of the stream kernel's residual straggler (docs/kernels-notes.md, v11): with KW warps
splitting a row's K-range and meeting at a barrier at every row end, a row costs its slowest
slice. Cost of a slice = its k-tiles + C per kept 16 x 64 residual block (C = 0.5: a block is half
a k-tile of bytes and of dequant + MMA work). Kept blocks: uniform at the budget (10%), as in the
benchmark's random layers. Prints the mean over rows of the slowest slice, relative to the dense
slice (per / KW k-tiles), for four ways to split a row:
  equal       equal contiguous slices (v10)
  tile-cut    per-row cut points at k-tile boundaries minimising the slowest slice (exact)
  chunk-cut   the same at chunk (half k-tile) boundaries
  round-robin equal dense slices, the row's kept blocks dealt to the slices in turn
Usage: bench/zipper_straggler_model.py [--budget 0.1] [--cost 0.5] [--rows 4000]"""
import argparse, random


def best_cut(costs, kw):
    """Least possible max slice sum over kw contiguous non-empty slices (binary search on the answer)."""
    lo, hi = max(costs), sum(costs)
    for _ in range(60):
        mid = (lo + hi) / 2
        parts, acc = 1, 0.0
        for c in costs:
            if acc + c > mid:
                parts, acc = parts + 1, c
            else:
                acc += c
        if parts <= kw and len(costs) >= kw:
            hi = mid
        else:
            lo = mid
    return hi


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=0.1)
    ap.add_argument("--cost", type=float, default=0.5)
    ap.add_argument("--rows", type=int, default=4000)
    a = ap.parse_args()
    rng = random.Random(1)
    # (label, k-tiles per row of a CTA's K-range, KW): the v10 plans at M = 1 (qkv/o/gate_up: K-range
    # 4096 = 32 k-tiles over 8 warps), M = 4 qkv (KW 4), and down's 8 K-splits of 14 k-tiles, KW 1.
    for label, per, kw in [("KR 4096, KW 8 (qkv/o/gate_up M=1)", 32, 8), ("KR 4096, KW 4 (qkv M=4)", 32, 4),
                           ("KR 1792, KW 1 (down M=1)", 14, 1)]:
        dense = per / kw
        sums = {"equal": 0.0, "tile-cut": 0.0, "chunk-cut": 0.0, "round-robin": 0.0, "mean": 0.0}
        for _ in range(a.rows):
            chunks = [1 if rng.random() < a.budget else 0 for _ in range(2 * per)]
            ccost = [0.5 + a.cost * k for k in chunks]
            tcost = [ccost[2 * t] + ccost[2 * t + 1] for t in range(per)]
            q = per // kw
            sums["equal"] += max(sum(tcost[i * q:(i + 1) * q]) for i in range(kw))
            sums["tile-cut"] += best_cut(tcost, kw)
            sums["chunk-cut"] += best_cut(ccost, kw)
            n = sum(chunks)
            sums["round-robin"] += dense + a.cost * -(-n // kw)
            sums["mean"] += sum(tcost) / kw
        cells = ", ".join(f"{k} +{100 * (v / a.rows / dense - 1):.0f}%" for k, v in sums.items())
        print(f"{label}: slowest slice over dense: {cells}")


if __name__ == "__main__":
    main()
