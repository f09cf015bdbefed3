#!/usr/bin/env python3
"""Validates the converted default model against two independent implementations and writes the
reference numbers that mosaic is later compared with (tests/fixtures/default_model/).

  1. Tokenizer: the rebuilt tokenizer.json (Hugging Face `tokenizers`) vs llama.cpp's own tokenizer
     reading the GGUF metadata: identical ids on WikiText-2 (whole text and line by line) and on a
     mixed corpus (multilingual, emoji, code, whitespace, numbers, special-token strings).
  2. Logits: `transformers` LlamaForCausalLM on the converted HF directory vs llama.cpp on the F32
     GGUF of the same weights, every position of a few prompts. This checks the Q/K un-permutation,
     tensor names, config and tokenizer of the conversion, independently of mosaic.
  3. Perplexity on the first N windows (ctx 2048) of WikiText-2, both implementations, with mosaic's
     protocol (see llamacpp_reference.py).

Usage: make_default_model_reference.py [--model models/smollm2-135m] [--windows 4]
       make_default_model_reference.py --merge-long-run F
           (F: JSON of a longer llamacpp_reference.py run -- the whole text, or its first K windows when
            it was stopped and re-read from its --checkpoint; stored as ppl_long_run_llama_cpp)
Writes tests/fixtures/default_model/reference.json and logits_topk.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llamacpp_reference as lcr  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests/fixtures/default_model"
WIKI = ROOT.parent / "shared/data/wikitext-2-raw/wiki.test.raw"

# Prompts for the logits comparison: plain text, code, chat template with special tokens, digits.
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "In 1969, Neil Armstrong and Buzz Aldrin landed on the Moon. The mission was called Apollo",
]
TOPK_PROMPT = PROMPTS[0]
TOPK = 20


def tokenizer_agreement(hf_tok, llm, wiki_text: str, corpus: list[str]) -> dict:
    """Compares ids; returns counts and the first mismatch of each part (if any)."""
    def compare(texts):
        n_ids, n_texts, bad = 0, 0, []
        for t in texts:
            a = hf_tok.encode(t, add_special_tokens=False).ids
            b = lcr.tokenize(llm, t)
            n_texts += 1
            n_ids += len(a)
            if a != b:
                bad.append({"text": t[:80], "hf": a[:20], "llama_cpp": b[:20]})
        return {"texts": n_texts, "ids": n_ids, "mismatched_texts": len(bad), "first_mismatches": bad[:3]}

    lines = [ln for ln in wiki_text.split("\n") if ln.strip()]
    return {"wikitext2_whole": compare([wiki_text]), "wikitext2_lines": compare(lines),
            "mixed_corpus": compare(corpus)}


def hf_logits(model, ids: list[int]) -> np.ndarray:
    import torch
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def hf_window_ppl(model, tokens: list[int], ctx: int, windows: int) -> dict:
    t0 = time.time()
    nll_sum, n, per = 0.0, 0, []
    for w in range(windows):
        win = tokens[w * ctx:(w + 1) * ctx]
        nll = lcr.window_nll(hf_logits(model, win), win)
        nll_sum += float(nll.sum())
        n += len(nll)
        per.append(math.exp(float(nll.mean())))
        print(f"[transformers ppl] window {w + 1}/{windows}: {per[-1]:.4f}", file=sys.stderr)
    return {"ppl": math.exp(nll_sum / n), "tokens": n, "windows": windows, "window_ppl": per,
            "seconds": time.time() - t0}


def merge_long_run(run_json: Path, ref_path: Path) -> int:
    run = json.loads(run_json.read_text())
    ref = json.loads(ref_path.read_text())
    if run["ctx"] != ref["ctx"] or run["text_tokens"] != ref["text_tokens"]:
        sys.exit(f"make_default_model_reference: {run_json} is for ctx {run['ctx']} / {run['text_tokens']} tokens, "
                 f"reference.json for ctx {ref['ctx']} / {ref['text_tokens']}")
    total = ref["text_tokens"] // ref["ctx"]
    ref["ppl_long_run_llama_cpp"] = {
        "windows": run["windows"], "of_windows": total, "whole_text": run["windows"] == total,
        "ppl": run["ppl"], "tokens": run["tokens"], "window_ppl": run["window_ppl"],
        "kv_cache": run["kv_cache"], "threads": run["threads"],
        "note": "llama.cpp on the F32 GGUF; compare mosaic with --max-windows <windows>"}
    ref_path.write_text(json.dumps(ref, indent=2, ensure_ascii=False) + "\n")
    print(f"[reference] llama.cpp ppl over {run['windows']}/{total} windows: {run['ppl']:.6f} -> {ref_path}",
          file=sys.stderr)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=ROOT / "models/smollm2-135m")
    ap.add_argument("--gguf", type=Path, help="F32 GGUF (default: <model>-f32.gguf)")
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--merge-long-run", type=Path, help="only add this llamacpp_reference.py result to reference.json")
    ap.add_argument("--out-dir", type=Path, default=FIXTURES)
    args = ap.parse_args()
    gguf_path = args.gguf or Path(str(args.model).rstrip("/") + "-f32.gguf")
    if args.merge_long_run:
        return merge_long_run(args.merge_long_run, args.out_dir / "reference.json")

    import llama_cpp
    import tokenizers
    import torch
    import transformers
    torch.set_num_threads(2)

    wiki_text = WIKI.read_text(encoding="utf-8")
    corpus = json.loads((FIXTURES / "mixed_corpus.json").read_text(encoding="utf-8"))
    hf_tok = tokenizers.Tokenizer.from_file(str(args.model / "tokenizer.json"))
    llm = lcr.load(gguf_path, args.ctx, threads=2)

    t0 = time.time()
    tok = tokenizer_agreement(hf_tok, llm, wiki_text, corpus)
    tok["seconds"] = time.time() - t0
    print("[tokenizer] " + json.dumps({k: (v if not isinstance(v, dict) else {kk: vv for kk, vv in v.items() if kk != "first_mismatches"}) for k, v in tok.items()}), file=sys.stderr)

    model = transformers.LlamaForCausalLM.from_pretrained(str(args.model), dtype=torch.float32,
                                                          attn_implementation="eager").eval()
    logits_cmp = []
    topk = None
    for p in PROMPTS:
        ids = hf_tok.encode(p, add_special_tokens=False).ids
        a = hf_logits(model, ids)
        b = lcr.eval_logits(llm, ids)
        scale = float(np.abs(b).max())
        diff = np.abs(a - b)
        logits_cmp.append({
            "prompt": p, "tokens": len(ids),
            "max_abs_logit": scale,
            "max_abs_diff": float(diff.max()),
            "max_abs_diff_rel": float(diff.max()) / scale,
            "last_pos_max_abs_diff_rel": float(diff[-1].max()) / scale,
            "argmax_agree": f"{int((a.argmax(1) == b.argmax(1)).sum())}/{len(ids)}",
            "next_token_hf": int(a[-1].argmax()), "next_token_llama_cpp": int(b[-1].argmax()),
        })
        print(f"[logits] {len(ids):3d} tokens  max|diff|/max|logit| = {logits_cmp[-1]['max_abs_diff_rel']:.2e}"
              f"  argmax agree {logits_cmp[-1]['argmax_agree']}", file=sys.stderr)
        if p == TOPK_PROMPT:
            order = np.argsort(-b[-1])[:TOPK]
            topk = {"prompt": p, "ids": ids, "position": len(ids) - 1, "k": TOPK,
                    "note": "next-token logits at the last position; llama.cpp on the F32 GGUF (f32 KV) and "
                            "transformers fp32 on the FP16 safetensors (same weights)",
                    "top_ids": [int(i) for i in order],
                    "llama_cpp": [float(b[-1, i]) for i in order],
                    "transformers": [float(a[-1, i]) for i in order],
                    "llama_cpp_logsumexp": float(np.logaddexp.reduce(b[-1].astype(np.float64))),
                    "max_abs_logit_all_positions": scale}

    wiki_ids = lcr.tokenize(llm, wiki_text)
    lc = lcr.perplexity(llm, wiki_ids, args.ctx, args.windows)
    hf = hf_window_ppl(model, wiki_ids, args.ctx, args.windows)
    ref = {
        "what": "Reference numbers of the default model (SmolLM2-135M-Instruct, Q4_1 GGUF dequantized to FP16) "
                "from two implementations independent of mosaic; made by scripts/make_default_model_reference.py",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "model": json.loads((args.model / "conversion.json").read_text()),
        "versions": {"llama_cpp_python": llama_cpp.__version__, "transformers": transformers.__version__,
                     "torch": torch.__version__, "tokenizers": tokenizers.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "machine": f"{platform.machine()}, 2 threads",
        "protocol": "text = wiki.test.raw as one UTF-8 string, tokenized without BOS; floor(T/ctx) non-overlapping "
                    "windows; every token except each window's first scored; ppl = exp(mean NLL), float64",
        "text_file": "../shared/data/wikitext-2-raw/wiki.test.raw",
        "text_tokens": len(wiki_ids),
        "ctx": args.ctx,
        "tokenizer_agreement": tok,
        "logits_agreement": logits_cmp,
        "ppl_first_windows": {"windows": args.windows,
                              "llama_cpp": {k: lc[k] for k in ("ppl", "tokens", "windows", "window_ppl", "seconds_eval")},
                              "transformers": hf,
                              "rel_diff": abs(lc["ppl"] - hf["ppl"]) / lc["ppl"]},
    }
    old = args.out_dir / "reference.json"
    if old.is_file() and "ppl_long_run_llama_cpp" in json.loads(old.read_text()):
        ref["ppl_long_run_llama_cpp"] = json.loads(old.read_text())["ppl_long_run_llama_cpp"]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "reference.json").write_text(json.dumps(ref, indent=2, ensure_ascii=False) + "\n")
    (args.out_dir / "logits_topk.json").write_text(json.dumps(topk, indent=2, ensure_ascii=False) + "\n")
    print(f"[reference] ppl first {args.windows} windows: llama.cpp {lc['ppl']:.6f}, transformers {hf['ppl']:.6f}",
          file=sys.stderr)
    print(f"[reference] wrote {args.out_dir / 'reference.json'} and logits_topk.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
