#!/usr/bin/env python3
"""Compares mosaic on the default model with the independent references:

  * next-token logits of the reference prompt (tests/fixtures/default_model/logits_topk.json:
    top-k logits from llama.cpp on the F32 GGUF of the same weights), and, when llama-cpp-python and
    the F32 GGUF are present, every logit of a few prompts and of the first WikiText-2 window,
    computed live by llama.cpp;
  * perplexity on the first N windows of WikiText-2 (ctx 2048) against reference.json, and with
    --long the windows of llama.cpp's long run (the whole text when it finished).

mosaic is run as `mosaic ppl --model M --text-file F --ctx C --max-windows N --json --logits-out X`
(`logits-out`: safetensors with 'logits' F32 [ctx, vocab] and 'tokens' I32 [ctx] of the first window).
A prompt's logits are obtained the same way with ctx = the prompt's token count (one window).

Usage: verify_default_model.py [--model models/smollm2-135m] [--mosaic build/mosaic] [--windows 4]
                               [--long] [--no-llamacpp]
Prints a table; exits 1 if any check is outside its bound.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests/fixtures/default_model"
WIKI = ROOT.parent / "shared/data/wikitext-2-raw/wiki.test.raw"

# Bounds. transformers (fp32) vs llama.cpp (F32 GGUF, F32 KV) on these very weights agree to a few
# 1e-6 of the largest logit and ~1e-6 relative in ppl (reference.json); mosaic computes in fp32 too,
# so it gets the same bounds with a margin for different summation orders (BLAS, threads).
LOGITS_REL_BOUND = 1e-4   # max |logit diff| / max |logit|
PPL_REL_BOUND = 1e-4      # |ppl_mosaic - ppl_ref| / ppl_ref


def find_mosaic(explicit: Path | None) -> Path:
    """--mosaic, else the newest build*/mosaic whose `ppl` has --logits-out (older builds may lack it)."""
    if explicit:
        if not explicit.is_file():
            sys.exit(f"verify_default_model: {explicit} does not exist")
        return explicit
    found = sorted((p for p in ROOT.glob("build*/mosaic") if p.is_file()), key=lambda p: -p.stat().st_mtime)
    for p in found:
        try:
            h = subprocess.run([str(p), "ppl", "--help"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if "--logits-out" in h.stdout + h.stderr:
            return p
    sys.exit("verify_default_model: no build*/mosaic with `ppl --logits-out`; build it first "
             "(cmake --build build --target mosaic) or pass --mosaic")


def mosaic_ppl(mosaic: Path, model: Path, text_file: Path, ctx: int, windows: int | None,
               logits_out: Path | None) -> dict:
    cmd = [str(mosaic), "ppl", "--model", str(model), "--text-file", str(text_file), "--ctx", str(ctx), "--json", "-q"]
    if windows:
        cmd += ["--max-windows", str(windows)]
    if logits_out:
        cmd += ["--logits-out", str(logits_out)]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"verify_default_model: `{' '.join(cmd)}` failed ({p.returncode}): {p.stderr.strip()[-500:]}")
    try:
        out = json.loads(p.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        sys.exit(f"verify_default_model: mosaic ppl printed no JSON: {p.stdout[-300:]!r}")
    out["wall_seconds"] = time.time() - t0
    return out


def mosaic_prompt_logits(mosaic: Path, model: Path, prompt: str, n_tokens: int, tmp: Path) -> tuple[np.ndarray, list[int]]:
    """Logits [n, vocab] of one prompt: a one-window ppl run with ctx = the prompt's token count."""
    text = tmp / "prompt.txt"
    text.write_bytes(prompt.encode("utf-8"))
    out = tmp / "prompt_logits.safetensors"
    mosaic_ppl(mosaic, model, text, n_tokens, 1, out)
    t = load_file(str(out))
    return t["logits"], [int(i) for i in t["tokens"]]


class Table:
    def __init__(self):
        self.rows, self.failed = [], False

    def add(self, check: str, value: str, bound: str, ok: bool | None):
        self.rows.append((check, value, bound, "-" if ok is None else ("ok" if ok else "FAIL")))
        self.failed |= ok is False

    def print(self):
        w = [max(len(r[i]) for r in self.rows + [("check", "value", "bound", "")]) for i in range(4)]
        line = lambda r: "  ".join(s.ljust(w[i]) for i, s in enumerate(r))  # noqa: E731
        print(line(("check", "value", "bound", "")))
        print(line(tuple("-" * x for x in w)))
        for r in self.rows:
            print(line(r))


def main() -> int:
    ap = argparse.ArgumentParser(description="mosaic vs independent references on the default model")
    ap.add_argument("--model", type=Path, default=ROOT / "models/smollm2-135m")
    ap.add_argument("--mosaic", type=Path)
    ap.add_argument("--windows", type=int, default=4, help="WikiText-2 windows compared with reference.json")
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--long", action="store_true",
                    help="also the long llama.cpp run of reference.json (whole text, or its first K windows)")
    ap.add_argument("--no-llamacpp", action="store_true", help="only the committed references, no live llama.cpp")
    args = ap.parse_args()
    if not (args.model / "config.json").is_file():
        sys.exit(f"verify_default_model: {args.model} is not a model directory; run scripts/get-default-model.sh")
    mosaic = find_mosaic(args.mosaic)
    ref = json.loads((FIXTURES / "reference.json").read_text())
    topk = json.loads((FIXTURES / "logits_topk.json").read_text())
    gguf_path = Path(str(args.model).rstrip("/") + "-f32.gguf")
    llm = None
    if not args.no_llamacpp and gguf_path.is_file():
        try:
            import llamacpp_reference as lcr
            llm = lcr.load(gguf_path, args.ctx, threads=2)
        except (ImportError, SystemExit) as e:
            print(f"[verify] llama.cpp not available ({e}); using only the committed references", file=sys.stderr)
    print(f"[verify] mosaic: {mosaic}\n[verify] model: {args.model}", file=sys.stderr)

    table = Table()
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        # 1. Committed top-k next-token logits.
        logits, ids = mosaic_prompt_logits(mosaic, args.model, topk["prompt"], len(topk["ids"]), tmp)
        table.add("tokenizer: reference prompt ids", "identical" if ids == topk["ids"] else f"{ids} != {topk['ids']}",
                  "identical", ids == topk["ids"])
        got = logits[topk["position"], topk["top_ids"]]
        rel = float(np.abs(got - np.array(topk["llama_cpp"])).max()) / topk["max_abs_logit_all_positions"]
        table.add(f"logits top-{topk['k']} vs llama.cpp (committed)", f"{rel:.2e}", f"<= {LOGITS_REL_BOUND:.0e}",
                  rel <= LOGITS_REL_BOUND)
        table.add("next token", f"{int(logits[-1].argmax())} (ref {topk['top_ids'][0]})", "equal",
                  int(logits[-1].argmax()) == topk["top_ids"][0])

        # 2. Live llama.cpp: every logit of each reference prompt.
        if llm is not None:
            for entry in ref["logits_agreement"]:
                lc_ids = lcr.tokenize(llm, entry["prompt"])
                m_logits, m_ids = mosaic_prompt_logits(mosaic, args.model, entry["prompt"], len(lc_ids), tmp)
                b = lcr.eval_logits(llm, lc_ids)
                rel = float(np.abs(m_logits - b).max()) / float(np.abs(b).max())
                name = entry["prompt"][:28].replace("\n", "\\n")
                table.add(f"logits all pos. vs llama.cpp: {name!r} ({len(lc_ids)} tok)",
                          f"{rel:.2e}" + ("" if m_ids == lc_ids else " (ids differ!)"),
                          f"<= {LOGITS_REL_BOUND:.0e}", rel <= LOGITS_REL_BOUND and m_ids == lc_ids)

        # 3. Perplexity on the first windows (+ the first window's logits when llama.cpp is live).
        first = tmp / "window0.safetensors"
        m = mosaic_ppl(mosaic, args.model, WIKI, args.ctx, args.windows, first)
        pr = ref["ppl_first_windows"]
        table.add("text tokens (whole WikiText-2)", f"{m['text_tokens']} (ref {ref['text_tokens']})", "equal",
                  m["text_tokens"] == ref["text_tokens"])
        if args.windows == pr["windows"] and args.ctx == ref["ctx"]:
            for impl in ("llama_cpp", "transformers"):
                r = pr[impl]["ppl"]
                rel = abs(m["ppl"] - r) / r
                table.add(f"ppl first {args.windows} windows vs {impl}", f"{m['ppl']:.6f} vs {r:.6f} ({rel:.1e})",
                          f"<= {PPL_REL_BOUND:.0e}", rel <= PPL_REL_BOUND)
        else:
            table.add(f"ppl first {args.windows} windows", f"{m['ppl']:.6f}", "(no reference for these settings)", None)
        table.add("mosaic ppl speed", f"{m.get('tokens_per_s', float('nan')):.0f} tok/s, {m['seconds']:.1f} s", "", None)
        if llm is not None:
            t = load_file(str(first))
            win = [int(i) for i in t["tokens"]]
            b = lcr.eval_logits(llm, win)
            rel = float(np.abs(t["logits"] - b).max()) / float(np.abs(b).max())
            table.add(f"logits window 0 ({len(win)} tok) vs llama.cpp", f"{rel:.2e}", f"<= {LOGITS_REL_BOUND:.0e}",
                      rel <= LOGITS_REL_BOUND)

        if args.long:
            lr = ref.get("ppl_long_run_llama_cpp")
            if not lr:
                table.add("ppl long run", "no ppl_long_run_llama_cpp in reference.json", "", None)
            else:
                full = mosaic_ppl(mosaic, args.model, WIKI, args.ctx, None if lr["whole_text"] else lr["windows"], None)
                rel = abs(full["ppl"] - lr["ppl"]) / lr["ppl"]
                what = "whole text" if lr["whole_text"] else f"first {lr['windows']} windows"
                table.add(f"ppl {what} vs llama.cpp", f"{full['ppl']:.6f} vs {lr['ppl']:.6f} ({rel:.1e})",
                          f"<= {PPL_REL_BOUND:.0e}", rel <= PPL_REL_BOUND and full["windows"] == lr["windows"])
                table.add(f"mosaic time ({what})", f"{full['seconds']:.1f} s ({full.get('tokens_per_s', 0):.0f} tok/s)",
                          "", None)
    table.print()
    return 1 if table.failed else 0


if __name__ == "__main__":
    sys.exit(main())
