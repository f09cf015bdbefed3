#!/usr/bin/env python3
"""Peer timing: PyTorch's built-in int4 weight-only GEMM (tinygemm, `torch._weight_int4pack_mm`,
group 128, bf16 activations) on the same shapes and M as `mosaic bench gemm`, timed the same way
(median of CUDA-event-timed batches over enough weight copies that L2 cannot serve them).
Writes JSON rows with variant "torch_int4" (speedup_vs_cublas is filled in by merge_results.py)."""
import argparse, datetime, json, math, statistics, sys

import torch

PRESETS = {
    "llama3-8b": [("llama3-8b.qkv", 4096, 6144), ("llama3-8b.o", 4096, 4096),
                  ("llama3-8b.gate_up", 4096, 28672), ("llama3-8b.down", 14336, 4096)],
    "qwen3-8b": [("qwen3-8b.qkv", 4096, 6144), ("qwen3-8b.o", 4096, 4096),
                 ("qwen3-8b.gate_up", 4096, 24576), ("qwen3-8b.down", 12288, 4096)],
    "llama3-70b": [("llama3-70b.qkv", 8192, 10240), ("llama3-70b.o", 8192, 8192),
                   ("llama3-70b.gate_up", 8192, 57344), ("llama3-70b.down", 28672, 8192)],
}


def shapes(spec):
    out = []
    for item in spec.split(","):
        if item in PRESETS:
            out += PRESETS[item]
        else:
            k, n = item.split("x")
            out.append((item, int(k), int(n)))
    return out


def pack_int4(n, k, device):
    codes = torch.randint(0, 16, (n, k), dtype=torch.int32, device=device)
    try:  # PyTorch >= 2.5: uint8 [N, K/2], high nibble = even column
        u8 = ((codes[:, ::2] << 4) | codes[:, 1::2]).to(torch.uint8)
        return torch._convert_weight_to_int4pack(u8, 8)
    except Exception:
        return torch._convert_weight_to_int4pack(codes, 8)


def time_us(call, copies, reps=7):
    for i in range(max(3, copies)):
        call(i % copies)
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record(); call(0); b.record(); b.synchronize()
    one = max(a.elapsed_time(b), 1e-3)
    calls = max(copies, min(200, math.ceil(1.0 / one)))
    ts = []
    for _ in range(reps):
        a.record()
        for i in range(calls):
            call(i % copies)
        b.record(); b.synchronize()
        ts.append(1000.0 * a.elapsed_time(b) / calls)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="llama3-8b")
    ap.add_argument("--m", default="1,4,16,32,64,128,256,1024,4096")
    ap.add_argument("--json", required=True)
    ap.add_argument("--max-ms", type=float, default=60.0, help="skip M past a call this slow")
    args = ap.parse_args()
    dev = "cuda"
    card = torch.cuda.get_device_name()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    rows = []
    print(f"torch {torch.__version__} on {card}")
    for name, k, n in shapes(args.shapes):
        copies = int(min(8, max(1, (160 << 20) // (n * k // 2) + 1)))
        ws = [pack_int4(n, k, dev) for _ in range(copies)]
        sz = (torch.rand(k // 128, n, 2, device=dev, dtype=torch.bfloat16) * 0.01).contiguous()
        for m in [int(x) for x in args.m.split(",")]:
            xs = [torch.randn(m, k, device=dev, dtype=torch.bfloat16) for _ in range(4)]
            try:
                us = time_us(lambda c: torch._weight_int4pack_mm(xs[c % 4], ws[c], 128, sz), copies)
            except Exception as e:  # report, do not hide
                print(f"{name} M={m}: torch int4 failed: {e}", file=sys.stderr)
                continue
            tflops = 2.0 * m * n * k / (us * 1e6)
            print(f"| {name} ({k}x{n}) | {m} | torch_int4 | {us:.2f} us | {tflops:.1f} TFLOP/s |", flush=True)
            rows.append({"card": card, "date": date, "shape": name, "m": m, "n": n, "k": k, "budget": None,
                         "variant": "torch_int4", "us": us, "tflops": tflops, "act_dtype": "bf16",
                         "torch": torch.__version__})
            if us > args.max_ms * 1000:
                break
        del ws
        torch.cuda.empty_cache()
    with open(args.json, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
