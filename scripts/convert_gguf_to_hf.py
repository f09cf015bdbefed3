#!/usr/bin/env python3
"""Convert a LLaMA-architecture GGUF (the default model: SmolLM2-135M-Instruct, Q4_1) into a
Hugging Face directory that mosaic and `transformers` both load:

  OUT_DIR/config.json              LlamaForCausalLM, values from the GGUF metadata
  OUT_DIR/generation_config.json
  OUT_DIR/model.safetensors        every tensor dequantized, stored as FP16, HF names and layout
  OUT_DIR/tokenizer.json           byte-level BPE rebuilt from the GGUF tokenizer metadata
  OUT_DIR/tokenizer_config.json    (+ chat template), special_tokens_map.json

and, with --f32-gguf, an F32 GGUF holding bit-for-bit the same FP16-rounded weights in llama.cpp's
layout. llama.cpp then runs exactly the weights mosaic runs, without the Q8 activation
quantization it applies to quantized weights, so the two can be compared tightly.

Usage: convert_gguf_to_hf.py GGUF OUT_DIR [--f32-gguf PATH]
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import importlib.metadata
import json
import sys
import time
from pathlib import Path

import numpy as np

try:
    import gguf
    from safetensors.numpy import save_file
except ImportError as e:  # pragma: no cover - a clear message instead of a traceback
    sys.exit(f"convert_gguf_to_hf: missing Python package ({e}); run: pip install -r scripts/requirements.txt")


class ConvertError(Exception):
    pass


# GGUF per-layer tensor name -> Hugging Face LlamaForCausalLM name (suffix after "model.layers.N.").
LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}

# llama.cpp token types (gguf.TokenType): 3 = CONTROL (special), 4 = USER_DEFINED (added, not special).
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED = 1, 3, 4


def hf_name(gguf_name: str) -> str:
    if gguf_name in GLOBAL_NAMES:
        return GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in LAYER_NAMES:
        return f"model.layers.{int(parts[1])}.{LAYER_NAMES[parts[2]]}"
    raise ConvertError(f"unknown GGUF tensor name '{gguf_name}' (not a LLaMA tensor)")


# llama.cpp's HF->GGUF converter permutes the rows of q_proj and k_proj so that each head's rotary
# pairs (i, i + head_dim/2) of the Hugging Face "rotate_half" layout become adjacent (2i, 2i+1), the
# layout of its own RoPE kernel:  gguf = hf.reshape(H, 2, D/2, K).swapaxes(1, 2).reshape(H*D, K).
# unpermute() is its exact inverse; permute() re-applies it for the F32 GGUF.
def permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    rows, cols = w.shape
    return w.reshape(n_heads, 2, rows // n_heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def field(reader: "gguf.GGUFReader", key: str, default=None, required: bool = True):
    f = reader.fields.get(key)
    if f is None:
        if required and default is None:
            raise ConvertError(f"GGUF metadata key '{key}' is missing")
        return default
    return f.contents()


def nice_float(x: float) -> float:
    """GGUF stores floats as f32 (1e-5 -> 9.99999974e-06); write the shortest f32 repr instead."""
    return float(str(np.float32(x)))


def read_config(reader) -> dict:
    arch = field(reader, "general.architecture")
    if arch != "llama":
        raise ConvertError(f"GGUF architecture is '{arch}', only 'llama' is supported")
    n_embd = int(field(reader, "llama.embedding_length"))
    n_head = int(field(reader, "llama.attention.head_count"))
    n_kv = int(field(reader, "llama.attention.head_count_kv", n_head, required=False))
    head_dim = n_embd // n_head
    rope_dim = int(field(reader, "llama.rope.dimension_count", head_dim, required=False))
    if rope_dim != head_dim or n_embd % n_head or n_head % n_kv:
        raise ConvertError(f"unsupported shape: embd {n_embd}, heads {n_head}/{n_kv}, rope dim {rope_dim}")
    if "llama.rope.scaling.type" in reader.fields:
        raise ConvertError("GGUF has rope scaling metadata; this converter does not map it")
    tokens = field(reader, "tokenizer.ggml.tokens")
    vocab = int(field(reader, "llama.vocab_size", len(tokens), required=False))
    names = {t.name for t in reader.tensors}
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": int(field(reader, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(field(reader, "tokenizer.ggml.eos_token_id")),
        "pad_token_id": field(reader, "tokenizer.ggml.padding_token_id", None, required=False),
        "head_dim": head_dim,
        "hidden_act": "silu",
        "hidden_size": n_embd,
        "intermediate_size": int(field(reader, "llama.feed_forward_length")),
        "max_position_embeddings": int(field(reader, "llama.context_length")),
        "mlp_bias": False,
        "num_attention_heads": n_head,
        "num_hidden_layers": int(field(reader, "llama.block_count")),
        "num_key_value_heads": n_kv,
        "rms_norm_eps": nice_float(field(reader, "llama.attention.layer_norm_rms_epsilon")),
        "rope_scaling": None,
        "rope_theta": nice_float(field(reader, "llama.rope.freq_base", 10000.0, required=False)),
        "tie_word_embeddings": "output.weight" not in names,
        "torch_dtype": "float16",
        "use_cache": True,
        "vocab_size": vocab,
    }


def convert_tensors(reader, cfg: dict):
    """Returns (HF name -> FP16 array), the GGUF-layout F32 copies of the same values in file order,
    and the histogram of source tensor types."""
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hf: dict[str, np.ndarray] = {}
    gguf_f32: list[tuple[str, np.ndarray]] = []
    hist = collections.Counter()
    for t in reader.tensors:
        hist[t.tensor_type.name] += 1
        # numpy shape is the GGUF shape reversed: [rows = out features, cols = in features].
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        w = w.reshape(tuple(int(d) for d in reversed(t.shape)))
        name = hf_name(t.name)
        if t.name.endswith("attn_q.weight"):
            w = unpermute(w, n_head)
        elif t.name.endswith("attn_k.weight"):
            w = unpermute(w, n_kv)
        w16 = w.astype(np.float16)
        if not np.all(np.isfinite(w16)):
            raise ConvertError(f"tensor '{t.name}' has values that overflow FP16 (max |w| {np.abs(w).max():.4g})")
        hf[name] = np.ascontiguousarray(w16)
        # The F32 GGUF gets the FP16-rounded values, so both files hold identical numbers.
        back = w16.astype(np.float32)
        if t.name.endswith("attn_q.weight"):
            back = permute(back, n_head)
        elif t.name.endswith("attn_k.weight"):
            back = permute(back, n_kv)
        gguf_f32.append((t.name, np.ascontiguousarray(back)))
    print("[convert] tensor types: " + ", ".join(f"{k} x{v}" for k, v in sorted(hist.items())))
    check_shapes(hf, cfg)
    return hf, gguf_f32, dict(sorted(hist.items()))


def check_shapes(hf: dict[str, np.ndarray], cfg: dict) -> None:
    d, ff, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    want = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,)}
    if not cfg["tie_word_embeddings"]:
        want["lm_head.weight"] = (v, d)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        want.update({p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
                     p + "self_attn.q_proj.weight": (d, d), p + "self_attn.k_proj.weight": (kv, d),
                     p + "self_attn.v_proj.weight": (kv, d), p + "self_attn.o_proj.weight": (d, d),
                     p + "mlp.gate_proj.weight": (ff, d), p + "mlp.up_proj.weight": (ff, d),
                     p + "mlp.down_proj.weight": (d, ff)})
    missing = sorted(set(want) - set(hf))
    extra = sorted(set(hf) - set(want))
    if missing or extra:
        raise ConvertError(f"tensor set mismatch: missing {missing[:3]}, unexpected {extra[:3]}")
    for k, shape in want.items():
        if hf[k].shape != shape:
            raise ConvertError(f"tensor '{k}' has shape {hf[k].shape}, config implies {shape}")


def build_tokenizer(reader) -> tuple[dict, dict, dict]:
    """tokenizer.json with the structure of the real SmolLM2 one, + tokenizer_config + special map."""
    model = field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise ConvertError(f"tokenizer model '{model}' is not byte-level BPE ('gpt2')")
    pre = field(reader, "tokenizer.ggml.pre", "default", required=False)
    # llama.cpp's "smollm" (= "starcoder") pre-tokenizer: split every digit, then the GPT-2 regex.
    # Other pre-tokenizers use other regexes; refuse them rather than produce a subtly wrong file.
    if pre not in ("smollm", "starcoder"):
        raise ConvertError(f"tokenizer.ggml.pre '{pre}' is not supported (only smollm/starcoder)")
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type")
    merges = field(reader, "tokenizer.ggml.merges")
    if len(types) != len(tokens):
        raise ConvertError(f"{len(tokens)} tokens but {len(types)} token types")
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ConvertError("duplicate token strings in tokenizer.ggml.tokens")
    added = [{"id": i, "content": tokens[i], "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": types[i] != TOKEN_CONTROL, "special": types[i] == TOKEN_CONTROL}
             for i in range(len(tokens)) if types[i] in (TOKEN_CONTROL, TOKEN_USER_DEFINED)]
    tok_json = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": list(merges)},
    }

    def tok(key):
        i = field(reader, f"tokenizer.ggml.{key}_token_id", None, required=False)
        return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

    special_map = {k: v for k, v in {"bos_token": tok("bos"), "eos_token": tok("eos"),
                                      "unk_token": tok("unknown"), "pad_token": tok("padding")}.items() if v}
    special_map["additional_special_tokens"] = [a["content"] for a in added if a["special"]]
    tok_cfg = {
        "add_bos_token": bool(field(reader, "tokenizer.ggml.add_bos_token", False, required=False)),
        "add_eos_token": bool(field(reader, "tokenizer.ggml.add_eos_token", False, required=False)),
        "add_prefix_space": False,
        "added_tokens_decoder": {str(a["id"]): {k: a[k] for k in ("content", "lstrip", "normalized", "rstrip",
                                                                   "single_word", "special")} for a in added},
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(field(reader, "llama.context_length")),
        "tokenizer_class": "GPT2Tokenizer",
        "vocab_size": len(tokens),
        **{k: v for k, v in special_map.items()},
    }
    template = field(reader, "tokenizer.chat_template", None, required=False)
    if template:
        tok_cfg["chat_template"] = template
    return tok_json, tok_cfg, special_map


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_f32_gguf(reader, tensors: list[tuple[str, np.ndarray]], path: Path) -> None:
    tmp = path.with_name(path.name + ".partial")
    w = gguf.GGUFWriter(str(tmp), arch=field(reader, "general.architecture"))
    for key, f in reader.fields.items():
        # GGUF.* are header pseudo-fields; the writer adds general.architecture itself.
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        if key == "general.file_type":
            w.add_key_value(key, int(gguf.LlamaFileType.ALL_F32), gguf.GGUFValueType.UINT32)
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(key, f.contents(), vtype, sub_type=sub)
    for name, arr in tensors:
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.replace(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gguf", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--f32-gguf", type=Path, help="also write an F32 GGUF of the same (FP16-rounded) weights")
    args = ap.parse_args()
    t0 = time.time()
    try:
        if not args.gguf.is_file():
            raise ConvertError(f"GGUF file '{args.gguf}' does not exist")
        try:
            reader = gguf.GGUFReader(str(args.gguf))
        except Exception as e:
            raise ConvertError(f"'{args.gguf}' is not a readable GGUF file: {e}") from e
        cfg = read_config(reader)
        hf, f32, hist = convert_tensors(reader, cfg)
        tok_json, tok_cfg, special_map = build_tokenizer(reader)
        if len(tok_json["model"]["vocab"]) != cfg["vocab_size"]:
            raise ConvertError(f"tokenizer has {len(tok_json['model']['vocab'])} tokens, model vocab is {cfg['vocab_size']}")

        args.out_dir.mkdir(parents=True, exist_ok=True)
        save_file(hf, str(args.out_dir / "model.safetensors"), metadata={"format": "pt"})
        (args.out_dir / "model.safetensors").chmod(0o644)  # safetensors creates it 0600
        write_json(args.out_dir / "config.json", cfg)
        gen = {"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"]}
        if cfg["pad_token_id"] is not None:
            gen["pad_token_id"] = cfg["pad_token_id"]
        write_json(args.out_dir / "generation_config.json", gen)
        write_json(args.out_dir / "tokenizer.json", tok_json)
        write_json(args.out_dir / "tokenizer_config.json", tok_cfg)
        write_json(args.out_dir / "special_tokens_map.json", special_map)
        # Provenance: which file these FP16 weights were dequantized from.
        write_json(args.out_dir / "conversion.json", {
            "source": args.gguf.name, "source_sha256": sha256(args.gguf), "source_tensor_types": hist,
            "converter": "scripts/convert_gguf_to_hf.py", "gguf_python": getattr(gguf, "__version__", None)
            or importlib.metadata.version("gguf"), "dtype": "float16",
            "note": "q_proj/k_proj rows un-permuted from llama.cpp's rope layout to Hugging Face's"})
        n_params = sum(a.size for a in hf.values())
        print(f"[convert] {len(hf)} tensors, {n_params / 1e6:.2f}M parameters -> {args.out_dir} "
              f"({(args.out_dir / 'model.safetensors').stat().st_size / 2**20:.1f} MiB safetensors)")
        print(f"[convert] tokenizer: {len(tok_json['model']['vocab'])} tokens, {len(tok_json['model']['merges'])} merges, "
              f"{len(tok_json['added_tokens'])} added tokens")
        if args.f32_gguf:
            write_f32_gguf(reader, f32, args.f32_gguf)
            print(f"[convert] F32 GGUF -> {args.f32_gguf} ({args.f32_gguf.stat().st_size / 2**20:.1f} MiB)")
    except ConvertError as e:
        print(f"convert_gguf_to_hf: error: {e}", file=sys.stderr)
        return 1
    print(f"[convert] done in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
