#!/usr/bin/env python3
"""Write a Hugging Face-style checkpoint of a real LLaMA-3 / Qwen3 configuration with random BF16
weights: config.json, sharded *.safetensors (5 GB shards) with model.safetensors.index.json, and
the tokenizer files of a directory you name. For measuring the quantizer at 8B/70B scale without
downloading a model (issue 3: time and peak memory of `mosaic quantize` on LLaMA-3-8B shapes).
The outputs are meaningless as a language model; the shapes, dtypes and file layout are real.

  python3 scripts/make_random_checkpoint.py --config llama3-8b --out /tmp/llama3-8b-random \
      --tokenizer DIR_WITH_tokenizer.json [--layers N]

Weights: N(0, 0.02^2) with 0.1% of each matrix's entries x8 (outliers, as real checkpoints have);
norms 1. Uses PyTorch (on the GPU when present) if importable, else NumPy. Written to <out>.partial
and renamed, so an interrupted run leaves nothing that looks complete. The safetensors files are
written directly (8-byte header length, JSON header, raw little-endian data), no extra package.
"""
import argparse
import json
import os
import shutil
import struct
import sys
import time

CONFIGS = {
    "llama3-8b": dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=4096,
                      intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, head_dim=128, vocab_size=128256, rope_theta=500000.0,
                      rms_norm_eps=1e-5, max_position_embeddings=8192, tie_word_embeddings=False,
                      bos_token_id=128000, eos_token_id=128001, hidden_act="silu"),
    "llama3-70b": dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=8192,
                       intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                       num_key_value_heads=8, head_dim=128, vocab_size=128256, rope_theta=500000.0,
                       rms_norm_eps=1e-5, max_position_embeddings=8192, tie_word_embeddings=False,
                       bos_token_id=128000, eos_token_id=128001, hidden_act="silu"),
    "qwen3-8b": dict(architectures=["Qwen3ForCausalLM"], model_type="qwen3", hidden_size=4096,
                     intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, vocab_size=151936, rope_theta=1000000.0,
                     rms_norm_eps=1e-6, max_position_embeddings=40960, tie_word_embeddings=False,
                     bos_token_id=151643, eos_token_id=151645, hidden_act="silu"),
}


def tensors(cfg):
    """(name, shape, kind) in checkpoint order; kind is 'w' (random matrix) or 'norm' (ones)."""
    D, I, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    qd = cfg["num_attention_heads"] * cfg["head_dim"]
    kd = cfg["num_key_value_heads"] * cfg["head_dim"]
    yield "model.embed_tokens.weight", (V, D), "w"
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", (D,), "norm"
        yield p + "self_attn.q_proj.weight", (qd, D), "w"
        yield p + "self_attn.k_proj.weight", (kd, D), "w"
        yield p + "self_attn.v_proj.weight", (kd, D), "w"
        yield p + "self_attn.o_proj.weight", (D, qd), "w"
        if cfg["model_type"] == "qwen3":
            yield p + "self_attn.q_norm.weight", (cfg["head_dim"],), "norm"
            yield p + "self_attn.k_norm.weight", (cfg["head_dim"],), "norm"
        yield p + "post_attention_layernorm.weight", (D,), "norm"
        yield p + "mlp.gate_proj.weight", (I, D), "w"
        yield p + "mlp.up_proj.weight", (I, D), "w"
        yield p + "mlp.down_proj.weight", (D, I), "w"
    yield "model.norm.weight", (D,), "norm"
    if not cfg["tie_word_embeddings"]:
        yield "lm_head.weight", (V, D), "w"


class Generator:
    """BF16 bytes of random matrices: torch (GPU if any) or numpy (rounds fp32 -> bf16 to nearest even)."""

    def __init__(self, seed):
        try:
            import torch
            self.torch = torch
            self.dev = "cuda" if torch.cuda.is_available() else "cpu"
            self.g = torch.Generator(device=self.dev).manual_seed(seed)
        except ImportError:
            import numpy as np
            self.torch, self.np = None, np
            self.rng = np.random.default_rng(seed)

    def make(self, shape, kind):
        n = 1
        for s in shape:
            n *= s
        if self.torch is not None:
            t = self.torch
            if kind == "norm":
                x = t.ones(n, dtype=t.bfloat16, device=self.dev)
            else:
                x = t.randn(n, generator=self.g, device=self.dev, dtype=t.float32) * 0.02
                m = t.rand(n, generator=self.g, device=self.dev) < 0.001
                x = t.where(m, x * 8, x).to(t.bfloat16)
            return x.view(t.int16).cpu().numpy().tobytes()
        np = self.np
        if kind == "norm":
            x = np.ones(n, dtype=np.float32)
        else:
            x = self.rng.standard_normal(n, dtype=np.float32) * 0.02
            m = self.rng.random(n) < 0.001
            x[m] *= 8
        u = x.view(np.uint32)
        u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
        return u.astype(np.uint16).tobytes()


def write_shard(path, entries):
    """entries: list of (name, shape, bytes) in order."""
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for name, shape, data in entries:
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + len(data)]}
        off += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for _, _, data in entries:
            f.write(data)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, choices=sorted(CONFIGS))
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizer", required=True, help="directory with tokenizer.json (+ tokenizer_config.json)")
    ap.add_argument("--layers", type=int, default=0, help="override num_hidden_layers (0: the config's)")
    ap.add_argument("--shard-gb", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if os.path.exists(a.out):
        sys.exit(f"error: {a.out} already exists")
    if not os.path.isfile(os.path.join(a.tokenizer, "tokenizer.json")):
        sys.exit(f"error: no tokenizer.json in {a.tokenizer}")
    cfg = dict(CONFIGS[a.config], torch_dtype="bfloat16")
    if a.layers > 0:
        cfg["num_hidden_layers"] = a.layers
    part = a.out + ".partial"
    shutil.rmtree(part, ignore_errors=True)
    os.makedirs(part)
    gen, t0 = Generator(a.seed), time.time()
    limit = int(a.shard_gb * 1e9)
    shards, cur, cur_bytes, total = [], [], 0, 0
    for name, shape, kind in tensors(cfg):
        data = gen.make(shape, kind)
        if cur and cur_bytes + len(data) > limit:
            shards.append(cur)
            path = os.path.join(part, f"shard-{len(shards):05d}.tmp")
            write_shard(path, cur)
            print(f"  shard {len(shards)}: {cur_bytes / 1e9:.2f} GB ({time.time() - t0:.0f} s)", file=sys.stderr)
            cur, cur_bytes = [], 0
        cur.append((name, shape, data))
        cur_bytes += len(data)
        total += len(data)
    shards.append(cur)
    write_shard(os.path.join(part, f"shard-{len(shards):05d}.tmp"), cur)
    n = len(shards)
    weight_map = {}
    for i, sh in enumerate(shards, 1):
        fn = f"model-{i:05d}-of-{n:05d}.safetensors"
        os.rename(os.path.join(part, f"shard-{i:05d}.tmp"), os.path.join(part, fn))
        for name, _, _ in sh:
            weight_map[name] = fn
    with open(os.path.join(part, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(part, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    for fn in ("tokenizer.json", "tokenizer_config.json"):
        src = os.path.join(a.tokenizer, fn)
        if os.path.isfile(src):
            shutil.copy(src, os.path.join(part, fn))
    os.rename(part, a.out)
    print(f"wrote {a.out}: {a.config} with {cfg['num_hidden_layers']} layers, random BF16 weights, "
          f"{total / 1e9:.2f} GB in {n} shards, {time.time() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
