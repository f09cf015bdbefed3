#!/usr/bin/env python3
"""Where a kernel's warps stall, per SASS instruction, from an ncu source-page CSV.

  ncu ... --section WarpStateStats --section SourceCounters --page source --print-source sass --csv APP > k.csv
  python3 scripts/ncu_top.py k.csv [--min 1.0]

Prints, in program order, every instruction holding at least --min percent of the warp stall samples, and
every barrier / fence / atomic / exit that executed, with the running total: the running total across a
region (prologue, main loop, epilogue) is that region's share of the kernel's warp time.
"""
import argparse
import csv

MARKS = ("BAR.SYNC", "EXIT", "MEMBAR", "ATOM", "RED", "TRYWAIT", "HGMMA", "DEPBAR", "ACQBULK")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv")
    ap.add_argument("--min", type=float, default=1.0, help="percent of the samples an instruction needs to be shown")
    a = ap.parse_args()
    rows = list(csv.reader(open(a.csv, newline="")))
    head = next((i for i, r in enumerate(rows) if "Source" in r and "Warp Stall Sampling (All Samples)" in r), None)
    if head is None:
        raise SystemExit(f"{a.csv}: no ncu source table (run ncu with --page source --print-source sass --csv)")
    h = rows[head]
    si, ci, ei = h.index("Source"), h.index("Warp Stall Sampling (All Samples)"), h.index("Instructions Executed")
    data = [r for r in rows[head + 1:] if len(r) > max(si, ci, ei)]
    total = sum(float(r[ci] or 0) for r in data) or 1.0
    print(f"{len(data)} instructions, {total:.0f} stall samples")
    run = 0.0
    for i, r in enumerate(data):
        s = float(r[ci] or 0)
        run += s
        executed = int(float(r[ei] or 0))
        if 100 * s / total >= a.min or (executed and any(m in r[si] for m in MARKS)):
            print(f"{i:5d} {100 * s / total:5.1f}%  running {100 * run / total:5.1f}%  executed {executed:>9}  {r[si][:90]}")


if __name__ == "__main__":
    main()
