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
      [--kl-base BASE.gguf (also the mean KL(base || model) per scored token, as `mosaic ppl --kl-base`)]
Prints one JSON object: ppl, tokens (scored), text_tokens, windows, ctx, seconds, ...
(with --kl-base also kl_div and base_ppl, the base's own ppl on the same windows).

KL, as in mosaic (src/cli/cmd_ppl.cpp): for every scored row (rows 0..ctx-2 of each window, the
ones with a target) KL(P_base || P_model) = sum_v p_v (log p_v - log q_v), softmax in float64, and
kl_div is the mean over all scored rows of all windows.
"""
from __future__ import annotations

import argparse
import json
import math
import os
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


def log_softmax64(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    m = z.max(axis=1, keepdims=True)
    return z - (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))


def window_kl(base_logits: np.ndarray, logits: np.ndarray, n_rows: int) -> float:
    """Sum over rows 0..n_rows-1 of KL(P_base || P_model), float64 softmaxes, in row chunks."""
    kl = 0.0
    for s in range(0, n_rows, 256):
        e = min(s + 256, n_rows)
        lp, lq = log_softmax64(base_logits[s:e]), log_softmax64(logits[s:e])
        kl += float((np.exp(lp) * (lp - lq)).sum())
    return kl


def perplexity(llm, tokens: list[int], ctx: int, max_windows: int | None, progress: bool = True,
               checkpoint: Path | None = None, base_llm=None, base_name: str | None = None,
               base_cache: Path | None = None) -> dict:
    """checkpoint: a JSON-lines file of finished windows ({"window", "nll_sum", "n"}); windows already in
    it are not recomputed, so a long run (the whole text on 2 cores) can stop and resume.
    base_llm: also the mean KL(base || model) per scored token and the base's own ppl (kl_div,
    base_ppl); checkpoint lines then carry kl_sum/base_nll_sum and the base's name.
    base_cache: a directory of the base's window logits (.npy, float32 as llama.cpp returns them), so
    that several models compared with one base run the base once."""
    n_windows = len(tokens) // ctx
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)
    if n_windows < 1:
        raise SystemExit(f"llamacpp_reference: text has {len(tokens)} tokens, fewer than one window of {ctx}")
    done: dict[int, tuple[float, int]] = {}
    if checkpoint and checkpoint.is_file():
        for line in checkpoint.read_text().splitlines():
            r = json.loads(line)
            if r.get("ctx") == ctx and r.get("text_tokens") == len(tokens) and \
                    (base_llm is None or r.get("kl_base") == base_name):
                done[r["window"]] = (r["nll_sum"], r["n"], r.get("kl_sum", 0.0), r.get("base_nll_sum", 0.0))
    t0 = time.time()
    nll_sum, n_scored, window_ppl, kl_total, base_nll_total = 0.0, 0, [], 0.0, 0.0
    for w in range(n_windows):
        if w in done:
            s, n, kls, bs = done[w]
        else:
            win = tokens[w * ctx: (w + 1) * ctx]
            logits = eval_logits(llm, win)
            nll = window_nll(logits, win)
            s, n, kls, bs = float(nll.sum()), len(nll), 0.0, 0.0
            rec = {"window": w, "nll_sum": s, "n": n, "ctx": ctx, "text_tokens": len(tokens)}
            if base_llm is not None:
                base_logits = None
                cf = base_cache / f"w{w}-ctx{ctx}-t{len(tokens)}.npy" if base_cache else None
                if cf is not None and cf.is_file():
                    base_logits = np.load(cf)
                if base_logits is None:
                    base_logits = eval_logits(base_llm, win)
                    if cf is not None:
                        tmp = Path(f"{cf}.{os.getpid()}.tmp.npy")  # several runs may fill one cache
                        np.save(tmp, base_logits)
                        tmp.replace(cf)
                bs = float(window_nll(base_logits, win).sum())
                kls = window_kl(base_logits, logits, n)
                rec.update({"kl_sum": kls, "base_nll_sum": bs, "kl_base": base_name})
            if checkpoint:
                with open(checkpoint, "a") as f:
                    f.write(json.dumps(rec) + "\n")
        nll_sum += s
        n_scored += n
        kl_total += kls
        base_nll_total += bs
        window_ppl.append(math.exp(s / n))
        if progress:
            el = time.time() - t0
            print(f"\r[llama.cpp ppl] window {w + 1}/{n_windows}  ppl so far {math.exp(nll_sum / n_scored):.4f}  "
                  f"{el:.0f}s elapsed, ~{el / (w + 1) * (n_windows - w - 1):.0f}s left", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    out = {"ppl": math.exp(nll_sum / n_scored), "mean_nll": nll_sum / n_scored, "tokens": n_scored,
           "windows": n_windows, "window_ppl": window_ppl, "seconds_eval": time.time() - t0,
           "windows_from_checkpoint": sum(1 for w in range(n_windows) if w in done)}
    if base_llm is not None:
        out.update({"kl_div": kl_total / n_scored, "base_ppl": math.exp(base_nll_total / n_scored),
                    "kl_base": base_name})
    return out


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
    ap.add_argument("--kl-base", type=Path,
                    help="reference GGUF (e.g. the F32 one): also the mean KL(base || model) per scored token")
    ap.add_argument("--kl-base-cache", type=Path,
                    help="directory caching the --kl-base model's window logits (~0.4 GB per window of 2048)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    if args.ctx < 2:
        ap.error("--ctx must be at least 2")
    if not args.gguf.is_file():
        ap.error(f"GGUF '{args.gguf}' does not exist")
    if args.kl_base is not None and not args.kl_base.is_file():
        ap.error(f"--kl-base GGUF '{args.kl_base}' does not exist")
    if args.kl_base is not None and not args.text_file:
        ap.error("--kl-base needs --text-file")
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
        base_llm, cache = None, None
        if args.kl_base is not None and args.kl_base_cache is not None:
            # one cache directory per base file (its name, size and mtime)
            st = args.kl_base.stat()
            cache = args.kl_base_cache / f"{args.kl_base.name}-{st.st_size}-{int(st.st_mtime)}"
            cache.mkdir(parents=True, exist_ok=True)
        if args.kl_base is not None:
            base_llm = load(args.kl_base, args.ctx, args.threads, args.kv_f16)
            if tokenize(base_llm, text) != tokens:
                sys.exit("llamacpp_reference: --kl-base tokenizes the text differently from --gguf")
        result.update(perplexity(llm, tokens, args.ctx, args.max_windows, progress=not args.quiet,
                                 checkpoint=args.checkpoint, base_llm=base_llm,
                                 base_name=str(args.kl_base) if args.kl_base else None,
                                 base_cache=cache))
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
