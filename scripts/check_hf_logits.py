#!/usr/bin/env python3
"""Compare the logits mosaic wrote with `mosaic ppl --logits-out FILE` against Hugging Face
transformers (fp32, eager attention) on the same tokens.

  ./build/mosaic ppl --model models/smollm2-135m --text-file wiki.test.raw --ctx 256 --max-windows 1 \
      --logits-out /tmp/l.safetensors
  python3 scripts/check_hf_logits.py --model models/smollm2-135m --logits /tmp/l.safetensors

Prints max|mosaic - HF| / max|HF|, the argmax agreement and both perplexities of the window;
exits 1 when the relative error is above --tol (default 1e-4).
"""
import argparse
import sys

import numpy as np
import torch
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM


def window_ppl(logits, tokens):
    l = logits.astype(np.float64)
    m = l.max(1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(l - m).sum(1))
    nll = lse[:-1] - l[np.arange(len(tokens) - 1), tokens[1:]]
    return float(np.exp(nll.mean()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--logits", required=True)
    ap.add_argument("--tol", type=float, default=1e-4)
    a = ap.parse_args()
    d = load_file(a.logits)
    mine, tokens = d["logits"], d["tokens"].astype(np.int64)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(tokens)[None]).logits[0].float().numpy()
    err = float(np.abs(mine - ref).max() / np.abs(ref).max())
    agree = float((mine.argmax(1) == ref.argmax(1)).mean())
    print(f"tokens {len(tokens)}  max|mosaic - HF| / max|HF| = {err:.2e}  argmax agreement {agree:.4f}  "
          f"window ppl mosaic {window_ppl(mine, tokens):.4f} HF {window_ppl(ref, tokens):.4f}")
    sys.exit(0 if err <= a.tol else 1)


if __name__ == "__main__":
    main()
