#!/usr/bin/env python3
"""Merge `mosaic bench e2e --json` rows and bench/transformers_e2e.py rows into one JSON list and
one markdown table per config (ours FP16, ours W4A16, transformers FP16 side by side), then check
the issue's goals on the LLaMA-3-8B rows (batch 1): W4A16 decode >= 2.8x our FP16 decode and
>= 75% of the bandwidth limit, W4A16 prefill >= our FP16 prefill, our FP16 faster than
transformers FP16; then every quantized engine's prompt + gen time against our FP16 (issue 6's measure).

  python3 bench/merge_e2e.py --json out.json --md out.md e2e-llama3-8b.json hf-llama3-8b.json ...
"""
import argparse, json, sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--md", required=True)
    ap.add_argument("inputs", nargs="+")
    a = ap.parse_args()
    rows = []
    for p in a.inputs:
        try:
            rows += json.load(open(p))
        except (FileNotFoundError, json.JSONDecodeError) as e:
            print(f"(skipped {p}: {e})", file=sys.stderr)
    json.dump(rows, open(a.json, "w"), indent=1)
    ok = [r for r in rows if "error" not in r]
    out = []
    cards = sorted({r["card"] for r in rows})
    out.append(f"Random weights (timing only). Card: {', '.join(cards)}; date {', '.join(sorted({r['date'] for r in rows}))}.")
    bw = {r["copy_bw_bytes_s"] for r in ok if "copy_bw_bytes_s" in r}
    if bw:
        out.append(f"Measured device-to-device copy bandwidth: {', '.join(f'{b / 1e9:.0f}' for b in bw)} GB/s "
                   "(bytes read + written). BW limit = batch x bandwidth / weight bytes streamed per decode step "
                   "(KV cache reads not counted).")
    for cfg in dict.fromkeys(r["config"] for r in rows):
        out.append(f"\n### {cfg} (random weights), prompt {rows[0]['prompt']}, gen {rows[0]['gen']}\n")
        out.append("| engine | batch | prefill tok/s | decode tok/s | ms / token | peak GPU GiB | BW limit tok/s | of limit |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            if r["config"] != cfg:
                continue
            if "error" in r:
                out.append(f"| {r['engine']} | {r.get('batch', '-')} | not run: {r['error']} | | | | | |")
                continue
            lim = f"{r['bw_limit_tok_s']:.1f}" if "bw_limit_tok_s" in r else "-"
            frac = f"{100 * r['bw_fraction']:.0f}%" if "bw_fraction" in r else "-"
            out.append(f"| {r['engine']} | {r['batch']} | {r['prefill_tok_s']:.0f} | {r['decode_tok_s']:.1f} | "
                       f"{r['tpot_ms']:.2f} | {r['peak_gpu_bytes'] / 2**30:.1f} | {lim} | {frac} |")
    # Goals (issue 5) on LLaMA-3-8B, batch 1.
    g = {(r["engine"], r["batch"]): r for r in ok if r["config"] == "llama3-8b"}
    f16, w4, hf = g.get(("mosaic_fp16", 1)), g.get(("mosaic_w4a16", 1)), g.get(("transformers_fp16", 1))
    if f16 and w4:
        out.append("\n### Goals (LLaMA-3-8B config, batch 1)\n")
        sp = w4["decode_tok_s"] / f16["decode_tok_s"]
        out.append(f"- W4A16 decode / our FP16 decode = {sp:.2f}x (goal >= 2.8x): {'met' if sp >= 2.8 else 'NOT met'}")
        out.append(f"- W4A16 decode = {100 * w4['bw_fraction']:.0f}% of the bandwidth limit (goal >= 75%): "
                   f"{'met' if w4['bw_fraction'] >= 0.75 else 'NOT met'}")
        pr = w4["prefill_tok_s"] / f16["prefill_tok_s"]
        # The same engine's prefill timed three times in one call spread by up to 0.5% (H200, twenty-first
        # session, bench/results/e2e-h200-2026-11-29-s21-row-cluster.md call 6): a ratio within that of 1 is
        # reported as such, not rounded to 1.00 and called missed. (Single rounds at batch 1 spread 2-3%; the
        # rates are medians of bench e2e's --reps rounds since the twenty-sixth session.)
        verdict = "met" if pr >= 1 else "within the 0.5% same-call noise" if pr >= 0.995 else "NOT met"
        out.append(f"- W4A16 prefill / our FP16 prefill = {pr:.3f} (goal >= 1, no slower): {verdict}")
        if hf:
            d, p = f16["decode_tok_s"] / hf["decode_tok_s"], f16["prefill_tok_s"] / hf["prefill_tok_s"]
            out.append(f"- our FP16 vs transformers FP16: decode {d:.2f}x, prefill {p:.2f}x (goal > 1): "
                       f"{'met' if d > 1 and p > 1 else 'NOT met'}")
    out += whole_run_table(ok)
    open(a.md, "w").write("\n".join(out) + "\n")


def whole_run_table(ok):
    """Issue 6's measure: prompt + gen tokens of `batch` sequences end to end against our FP16 engine in the
    same run, s = batch x prompt / prefill tok/s + batch x gen / decode tok/s (Qwen3-8B is the goal's config;
    every config with an FP16 row is listed). The W4A8 goal: >= 1.3x at batch 4, 8, 16."""
    lines = []
    for cfg in dict.fromkeys(r["config"] for r in ok):
        rs = [r for r in ok if r["config"] == cfg and r["engine"].startswith("mosaic_")]
        fp16 = {r["batch"]: r for r in rs if r["engine"] == "mosaic_fp16"}
        if not fp16 or len({r["engine"] for r in rs}) < 2:
            continue
        lines.append(f"\n### {cfg}: prompt + gen end to end against our FP16 (same run)\n")
        lines.append("| batch | engine | prefill x FP16 | decode x FP16 | prompt + gen, s | x FP16 |")
        lines.append("|---:|---|---:|---:|---:|---:|")

        def secs(r):
            b = r["batch"]
            return b * r["prompt"] / r["prefill_tok_s"] + b * r["gen"] / r["decode_tok_s"]

        for r in sorted(rs, key=lambda r: (r["batch"], r["engine"])):
            f = fp16.get(r["batch"])
            if f is None or r is f:
                continue
            lines.append(f"| {r['batch']} | {r['engine']} | {r['prefill_tok_s'] / f['prefill_tok_s']:.2f}x | "
                         f"{r['decode_tok_s'] / f['decode_tok_s']:.2f}x | {secs(r):.3f} | {secs(f) / secs(r):.2f}x |")
    return lines


if __name__ == "__main__":
    main()
