#!/usr/bin/env python3
"""Writes the golden fixtures of the CPU engine: tiny random Hugging Face models and their logits.

For every variant below this script builds a small random `LlamaForCausalLM` / `Qwen3ForCausalLM`
with `transformers` (seeded, so reruns give the same files), saves it with `save_pretrained`
(safetensors) into tests/fixtures/golden/<name>/, and writes `logits.safetensors` there with,
for each prompt i, `tokens_<i>` (I32 [T]) and `logits_<i>` (F32 [T, vocab]): the logits of every
position of one forward pass over the whole prompt, computed in fp32 with
attn_implementation="eager" (the plain softmax(QK^T)V path mosaic's reference mirrors).

Weights are re-drawn with a larger spread than HF's init (std 0.02 makes near-uniform logits and
a test that could not tell a wrong op from a right one): linears ~ N(0, 1/K), embeddings ~ N(0, 1),
norm weights ~ 1 + N(0, 0.2) so the norm weights visibly matter.

config.json is rewritten in the classic layout real LLaMA-3 / Qwen3 checkpoints ship
(`rope_theta` at top level, `rope_scaling` {"rope_type": "llama3", ...}), because transformers 5
writes its new `rope_parameters` block instead.

Usage: python3 scripts/gen_golden.py [--out tests/fixtures/golden]
"""
import argparse
import copy
import json
import pathlib

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

COMMON = dict(
    vocab_size=301,  # odd on purpose: no size is a multiple of a SIMD width
    hidden_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,  # GQA: 2 query heads per kv head
    intermediate_size=96,
    max_position_embeddings=256,
    attn_implementation="eager",
)

VARIANTS = {
    # LLaMA, tied head, plain RoPE, head_dim = hidden / heads = 16.
    "llama_tied": dict(
        arch="llama", seed=1, dtype=torch.float32,
        cfg=dict(rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=True),
    ),
    # LLaMA-3 style: untied head, theta 500000, llama3 rope scaling. With head_dim 16 the
    # wavelengths are 6.3, 32, 167, ... so original_max_position_embeddings 64 (low-frequency
    # wavelength 64, high 16) puts one frequency in each regime: kept, smoothed, divided by factor.
    "llama3_untied_scaled": dict(
        arch="llama", seed=2, dtype=torch.float32,
        cfg=dict(
            rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
            rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                              high_freq_factor=4.0, original_max_position_embeddings=64),
        ),
    ),
    # Qwen3: q_norm / k_norm, explicit head_dim 32 != hidden / heads, tied head, eps 1e-6.
    "qwen3_tied": dict(
        arch="qwen3", seed=3, dtype=torch.float32,
        cfg=dict(rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, head_dim=32),
    ),
    # Qwen3 untied, stored as BF16: tests the BF16 -> fp32 load path. The reference logits are
    # computed from the bf16-rounded weights upcast to fp32, which is what mosaic computes too.
    "qwen3_untied_bf16": dict(
        arch="qwen3", seed=4, dtype=torch.bfloat16,
        cfg=dict(rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False, head_dim=16),
    ),
}

PROMPT_LENGTHS = [1, 2, 7, 17, 40]


def build(arch, cfg):
    cfg = {**COMMON, **cfg}
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**cfg))
    return Qwen3ForCausalLM(Qwen3Config(**cfg))


def randomize(model, gen):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # RMSNorm weights
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:  # linear [out, in]
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)


def classic_config(path, cfg):
    """Rewrite config.json the way published checkpoints write it (see module docstring)."""
    j = json.loads(path.read_text())
    rp = j.pop("rope_parameters", None) or {}
    j["rope_theta"] = rp.get("rope_theta", cfg["rope_theta"])
    if "rope_scaling" in cfg:
        j["rope_scaling"] = dict(cfg["rope_scaling"])
    else:
        j["rope_scaling"] = None
    j["head_dim"] = cfg.get("head_dim", COMMON["hidden_size"] // COMMON["num_attention_heads"])
    path.write_text(json.dumps(j, indent=2, sort_keys=True) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    root = pathlib.Path(__file__).resolve().parent.parent
    ap.add_argument("--out", default=str(root / "tests/fixtures/golden"))
    args = ap.parse_args()
    torch.set_num_threads(2)

    for name, v in VARIANTS.items():
        gen = torch.Generator().manual_seed(1000 + v["seed"])
        torch.manual_seed(v["seed"])
        model = build(v["arch"], copy.deepcopy(v["cfg"]))  # transformers edits dicts in place
        randomize(model, gen)
        if v["cfg"]["tie_word_embeddings"]:
            model.tie_weights()
        with torch.no_grad():  # round to the storage dtype, keep computing in fp32
            for p in model.parameters():
                p.copy_(p.to(v["dtype"]).float())
        model = model.eval()

        # Logits first, in fp32: casting the whole module to bf16 would also round RoPE's
        # inv_freq buffer, which is not part of the checkpoint and which mosaic keeps in fp32.
        tensors = {}
        vocab = model.config.vocab_size
        for i, T in enumerate(PROMPT_LENGTHS):
            toks = torch.randint(0, vocab, (T,), generator=gen, dtype=torch.int64)
            with torch.no_grad():
                logits = model(input_ids=toks[None, :], use_cache=False).logits[0].float()
            tensors[f"tokens_{i}"] = toks.to(torch.int32).contiguous()
            tensors[f"logits_{i}"] = logits.contiguous()

        out = pathlib.Path(args.out) / name
        out.mkdir(parents=True, exist_ok=True)
        model.to(v["dtype"]).save_pretrained(out, safe_serialization=True)
        classic_config(out / "config.json", v["cfg"])
        (out / "generation_config.json").unlink(missing_ok=True)
        save_file(tensors, str(out / "logits.safetensors"),
                  metadata={"prompts": str(len(PROMPT_LENGTHS)), "transformers": __import__("transformers").__version__,
                            "torch": torch.__version__})
        size = sum(f.stat().st_size for f in out.iterdir())
        print(f"{name}: {size / 1024:.0f} KiB, max|logit| {max(t.abs().max().item() for k, t in tensors.items() if k.startswith('logits')):.2f}")


if __name__ == "__main__":
    main()
