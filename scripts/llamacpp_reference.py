#!/usr/bin/env python3
"""The independent implementation: llama.cpp (through llama-cpp-python) computing perplexity with
exactly mosaic's protocol, and the logits of one prompt.

Protocol (same as `mosaic ppl`): the whole file is one UTF-8 text, tokenized once without BOS;
it is cut into floor(T / ctx) non-overlapping windows of ctx tokens (the tail is dropped); every
token of a window except the first is scored by its negative log-likelihood given the tokens before
it in the same window; ppl = exp(mean NLL), accumulated in float64.

Run it on the F32 GGUF written by convert_gguf_to_hf.py (models/smollm2-135m-f32.gguf): llama.cpp
then computes with the very weights mosaic loads, in F32 (quantized GGUFs make it quantize the
activations to Q8 as well). The KV cache is F32 too (llama.cpp's default is F16), see --kv-f16.

Usage:
  llamacpp_reference.py --gguf models/smollm2-135m-f32.gguf \
      --text-file ../shared/data/wikitext-2-raw/wiki.test.raw [--ctx 2048] [--max-windows N] \
      [--logits-prompt "The capital of France is" --logits-out logits.npy] [--json-out F]
      [--checkpoint F.jsonl (resumable: finished windows are kept there)]
Prints one JSON object: ppl, tokens (scored), text_tokens, windows, ctx, seconds, ...
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

GGML_TYPE_F32, GGML_TYPE_F16 = 0, 1


def load(gguf: Path, ctx: int, threads: int, kv_f16: bool = False):
    try:
        import llama_cpp
    except ImportError:
        sys.exit("llamacpp_reference: llama-cpp-python is not installed (pip install llama-cpp-python==0.3.36)")
    kv = GGML_TYPE_F16 if kv_f16 else GGML_TYPE_F32
    return llama_cpp.Llama(model_path=str(gguf), n_ctx=ctx, n_batch=ctx, n_ubatch=ctx, n_threads=threads,
                           n_threads_batch=threads, logits_all=True, type_k=kv, type_v=kv, verbose=False)


def tokenize(llm, text: str) -> list[int]:
    # special=True: control-token strings in the text map to their ids, as in Hugging Face tokenizers.
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)


def eval_logits(llm, tokens: list[int]) -> np.ndarray:
    """Logits [len(tokens), vocab] (float32) of one sequence, evaluated from an empty cache."""
    llm.reset()
    llm.eval(tokens)
    return np.array(llm.scores[: len(tokens)], dtype=np.float32, copy=True)


def window_nll(logits: np.ndarray, tokens: list[int]) -> np.ndarray:
    """NLL (float64) of tokens[1:] given logits[:-1]; log-softmax in float64, in row chunks."""
    targets = np.asarray(tokens[1:], dtype=np.int64)
    out = np.empty(len(targets), dtype=np.float64)
    for s in range(0, len(targets), 256):
        z = logits[s: min(s + 256, len(targets))].astype(np.float64)
        m = z.max(axis=1)
        lse = m + np.log(np.exp(z - m[:, None]).sum(axis=1))
        out[s: s + len(z)] = lse - z[np.arange(len(z)), targets[s: s + len(z)]]
    return out


def perplexity(llm, tokens: list[int], ctx: int, max_windows: int | None, progress: bool = True,
               checkpoint: Path | None = None) -> dict:
    """checkpoint: a JSON-lines file of finished windows ({"window", "nll_sum", "n"}); windows already in
    it are not recomputed, so a long run (the whole text on 2 cores) can stop and resume."""
    n_windows = len(tokens) // ctx
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)
    if n_windows < 1:
        raise SystemExit(f"llamacpp_reference: text has {len(tokens)} tokens, fewer than one window of {ctx}")
    done: dict[int, tuple[float, int]] = {}
    if checkpoint and checkpoint.is_file():
        for line in checkpoint.read_text().splitlines():
            r = json.loads(line)
            if r.get("ctx") == ctx and r.get("text_tokens") == len(tokens):
                done[r["window"]] = (r["nll_sum"], r["n"])
    t0 = time.time()
    nll_sum, n_scored, window_ppl = 0.0, 0, []
    for w in range(n_windows):
        if w in done:
            s, n = done[w]
        else:
            win = tokens[w * ctx: (w + 1) * ctx]
            nll = window_nll(eval_logits(llm, win), win)
            s, n = float(nll.sum()), len(nll)
            if checkpoint:
                with open(checkpoint, "a") as f:
                    f.write(json.dumps({"window": w, "nll_sum": s, "n": n, "ctx": ctx,
                                        "text_tokens": len(tokens)}) + "\n")
        nll_sum += s
        n_scored += n
        window_ppl.append(math.exp(s / n))
        if progress:
            el = time.time() - t0
            print(f"\r[llama.cpp ppl] window {w + 1}/{n_windows}  ppl so far {math.exp(nll_sum / n_scored):.4f}  "
                  f"{el:.0f}s elapsed, ~{el / (w + 1) * (n_windows - w - 1):.0f}s left", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return {"ppl": math.exp(nll_sum / n_scored), "mean_nll": nll_sum / n_scored, "tokens": n_scored,
            "windows": n_windows, "window_ppl": window_ppl, "seconds_eval": time.time() - t0,
            "windows_from_checkpoint": sum(1 for w in range(n_windows) if w in done)}


def main() -> int:
    ap = argparse.ArgumentParser(description="llama.cpp perplexity / logits with mosaic's protocol")
    ap.add_argument("--gguf", type=Path, required=True)
    ap.add_argument("--text-file", type=Path)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--max-windows", type=int)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kv-f16", action="store_true", help="llama.cpp's default F16 KV cache instead of F32")
    ap.add_argument("--logits-prompt", help="also save the logits [tokens, vocab] of this prompt (no BOS)")
    ap.add_argument("--logits-out", type=Path, help=".npy file for --logits-prompt (ids go to <out>.ids.json)")
    ap.add_argument("--json-out", type=Path, help="also write the JSON result to this file")
    ap.add_argument("--checkpoint", type=Path, help="JSON-lines file of finished windows: resume a long run")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    if args.ctx < 2:
        ap.error("--ctx must be at least 2")
    if not args.gguf.is_file():
        ap.error(f"GGUF '{args.gguf}' does not exist")
    if args.logits_prompt is not None and args.logits_out is None:
        ap.error("--logits-prompt needs --logits-out")

    t0 = time.time()
    llm = load(args.gguf, args.ctx, args.threads, args.kv_f16)
    import llama_cpp
    result: dict = {"implementation": "llama.cpp via llama-cpp-python " + llama_cpp.__version__,
                    "gguf": str(args.gguf), "ctx": args.ctx, "threads": args.threads,
                    "kv_cache": "f16" if args.kv_f16 else "f32"}
    if args.text_file:
        text = args.text_file.read_text(encoding="utf-8")
        tokens = tokenize(llm, text)
        result["text_file"] = str(args.text_file)
        result["text_tokens"] = len(tokens)
        result.update(perplexity(llm, tokens, args.ctx, args.max_windows, progress=not args.quiet,
                                 checkpoint=args.checkpoint))
    if args.logits_prompt is not None:
        ids = tokenize(llm, args.logits_prompt)
        if not 0 < len(ids) <= args.ctx:
            ap.error(f"--logits-prompt has {len(ids)} tokens; need 1..{args.ctx}")
        logits = eval_logits(llm, ids)
        np.save(args.logits_out, logits)
        Path(str(args.logits_out) + ".ids.json").write_text(json.dumps(ids) + "\n")
        result["logits_prompt"] = {"prompt": args.logits_prompt, "ids": ids, "out": str(args.logits_out),
                                   "argmax_last": int(logits[-1].argmax())}
    result["seconds"] = time.time() - t0
    out = json.dumps(result, indent=2)
    print(out)
    if args.json_out:
        args.json_out.write_text(out + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
