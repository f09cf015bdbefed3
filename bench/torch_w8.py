#!/usr/bin/env python3
"""Peer timing for the W4A8 GEMM (issue 6): cuBLAS INT8 (`torch._int_mm`, int8 x int8 -> int32),
cuBLAS FP8 e4m3 (`torch._scaled_mm`, per-row x per-column fp32 scales -> bf16, the closest peer of
per-token x per-channel scaling; per-tensor scales if row-wise is refused) and FP16 `torch.mm`
(a cross-check of `mosaic bench gemm`'s cuBLAS FP16 row) on the same shapes and M, timed the same
way (median of CUDA-event-timed batches over enough weight copies that L2 cannot serve them).
Only the matrix product is timed: quantizing the activations (and dequantizing INT32) is not, so
these are lower bounds for a real W8A8 layer. Writes JSON rows (variants torch_int8_mm,
torch_fp8_scaled_mm, torch_fp16_mm)."""
import argparse, datetime, json, sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from torch_int4 import shapes, time_us  # same presets and timing method


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="llama3-8b")
    ap.add_argument("--m", default="256,1024,2048,4096,8192")
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    dev = "cuda"
    card = torch.cuda.get_device_name()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    rows = []
    print(f"torch {torch.__version__} on {card}")

    def emit(name, k, n, m, variant, us, extra=None):
        tflops = 2.0 * m * n * k / (us * 1e6)
        print(f"| {name} ({k}x{n}) | {m} | {variant} | {us:.2f} us | {tflops:.1f} TFLOP/s |", flush=True)
        r = {"card": card, "date": date, "shape": name, "m": m, "n": n, "k": k, "budget": None, "variant": variant,
             "us": us, "tflops": tflops, "torch": torch.__version__}
        r.update(extra or {})
        rows.append(r)

    for name, k, n in shapes(args.shapes):
        copies = int(min(8, max(1, (160 << 20) // (n * k) + 1)))  # 1-byte weights
        w8 = [torch.randint(-127, 128, (n, k), dtype=torch.int8, device=dev) for _ in range(copies)]
        wf8 = [(torch.randn(n, k, device=dev) * 0.5).to(torch.float8_e4m3fn) for _ in range(copies)]
        sw = torch.rand(1, n, device=dev) * 0.01 + 0.001
        c16 = int(min(8, max(1, (160 << 20) // (2 * n * k) + 1)))
        w16 = [torch.randn(n, k, device=dev, dtype=torch.float16) * 0.05 for _ in range(c16)]
        for m in [int(x) for x in args.m.split(",")]:
            x8 = [torch.randint(-127, 128, (m, k), dtype=torch.int8, device=dev) for _ in range(4)]
            xf8 = [torch.randn(m, k, device=dev).to(torch.float8_e4m3fn) for _ in range(4)]
            x16 = [torch.randn(m, k, device=dev, dtype=torch.float16) for _ in range(4)]
            sx = torch.rand(m, 1, device=dev) * 0.01 + 0.001
            one = torch.ones((), device=dev)
            try:
                emit(name, k, n, m, "torch_fp16_mm", time_us(lambda c: torch.mm(x16[c % 4], w16[c].t()), c16))
            except Exception as e:
                print(f"{name} M={m}: fp16 mm failed: {e}", file=sys.stderr)
            try:
                emit(name, k, n, m, "torch_int8_mm", time_us(lambda c: torch._int_mm(x8[c % 4], w8[c].t()), copies),
                     {"act_dtype": "int8"})
            except Exception as e:
                print(f"{name} M={m}: _int_mm failed: {e}", file=sys.stderr)
            mode = "rowwise"
            try:
                f = lambda c: torch._scaled_mm(xf8[c % 4], wf8[c].t(), scale_a=sx, scale_b=sw, out_dtype=torch.bfloat16)
                f(0)
            except Exception as e:
                print(f"{name} M={m}: row-wise _scaled_mm refused ({e}); per-tensor scales", file=sys.stderr)
                mode = "tensorwise"
                f = lambda c: torch._scaled_mm(xf8[c % 4], wf8[c].t(), scale_a=one, scale_b=one,
                                               out_dtype=torch.bfloat16)
            try:
                emit(name, k, n, m, "torch_fp8_scaled_mm", time_us(f, copies), {"act_dtype": "fp8e4m3", "scales": mode})
            except Exception as e:
                print(f"{name} M={m}: _scaled_mm failed: {e}", file=sys.stderr)
            del x8, xf8, x16
        del w8, wf8, w16
        torch.cuda.empty_cache()
    with open(args.json, "w") as fh:
        json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
