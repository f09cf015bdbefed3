#!/usr/bin/env python3
"""Hugging Face transformers FP16 generation timed like `mosaic bench e2e`: the same built-in
configuration (the real config.json values) with random weights, on the same GPU, batch B of
random prompts of --prompt tokens, --gen greedy new tokens (min_new_tokens = max_new_tokens, so
no early stop). prefill_tok_s: B * prompt / time of generate(max_new_tokens=1); decode_tok_s:
B * (gen - 1) / (time of generate(gen) - time of generate(1)). Rows in the JSON format of
mosaic bench e2e, engine "transformers_fp16". Random weights: timing only.

  python3 bench/transformers_e2e.py --config llama3-8b --batch 1,4,16 --prompt 2048 --gen 128 --json hf.json
"""
import argparse, datetime, json, time

import torch
import transformers

# Same values as src/gpu/bench_e2e.cpp builtin_config (from the models' config.json).
CONFIGS = {
    "llama3-8b": dict(arch="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, head_dim=128, vocab_size=128256, max_position_embeddings=8192,
                      rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False),
    "llama3-70b": dict(arch="llama", hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                       num_key_value_heads=8, head_dim=128, vocab_size=128256, max_position_embeddings=8192,
                       rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False),
    "qwen3-8b": dict(arch="qwen3", hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=40960,
                     rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False),
    "qwen3-0.6b": dict(arch="qwen3", hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=40960,
                       rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True),
    "smollm2-135m": dict(arch="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, head_dim=64, vocab_size=49152, max_position_embeddings=8192,
                         rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True),
}


def make_model(name):
    c = dict(CONFIGS[name])
    arch = c.pop("arch")
    cfg = (transformers.LlamaConfig if arch == "llama" else transformers.Qwen3Config)(**c)
    cfg.eos_token_id = None
    cfg.pad_token_id = 0
    with torch.device("cuda"):
        try:
            m = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float16)
        except TypeError:
            m = transformers.AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float16)
    return m.eval()


def timed_generate(m, ids, n):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False)
    torch.cuda.synchronize()
    assert out.shape[1] == ids.shape[1] + n, out.shape
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, choices=sorted(CONFIGS))
    ap.add_argument("--batch", default="1,4,16")
    ap.add_argument("--prompt", type=int, default=2048)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--json", required=True)
    a = ap.parse_args()
    card = torch.cuda.get_device_name()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    t0 = time.perf_counter()
    m = make_model(a.config)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, {card}: {a.config} random fp16 "
          f"weights in {time.perf_counter() - t0:.1f} s, attn {m.config._attn_implementation}", flush=True)
    rows = []
    g = torch.Generator(device="cuda").manual_seed(1)
    for B in [int(x) for x in a.batch.split(",")]:
        ids = torch.randint(0, CONFIGS[a.config]["vocab_size"], (B, a.prompt), device="cuda", generator=g)
        try:
            timed_generate(m, ids[:, :64], 2)  # warm-up
            torch.cuda.reset_peak_memory_stats()
            t1 = timed_generate(m, ids, 1)
            tn = timed_generate(m, ids, a.gen)
        except torch.OutOfMemoryError as e:
            rows.append(dict(card=card, date=date, config=a.config, engine="transformers_fp16", batch=B, prompt=a.prompt,
                             gen=a.gen, error="out of memory"))
            print(f"B={B}: out of memory", flush=True)
            torch.cuda.empty_cache()
            continue
        r = dict(card=card, date=date, config=a.config, weights="random", engine="transformers_fp16", act="fp16",
                 batch=B, prompt=a.prompt, gen=a.gen, prefill_tok_s=B * a.prompt / t1,
                 decode_tok_s=B * (a.gen - 1) / (tn - t1), tpot_ms=(tn - t1) / (a.gen - 1) * 1e3,
                 peak_gpu_bytes=torch.cuda.max_memory_allocated(), transformers=transformers.__version__,
                 torch=torch.__version__, attn=m.config._attn_implementation)
        rows.append(r)
        print(f"B={B}: prefill {r['prefill_tok_s']:.0f} tok/s, decode {r['decode_tok_s']:.1f} tok/s, "
              f"{r['tpot_ms']:.2f} ms/token", flush=True)
    json.dump(rows, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
