#!/usr/bin/env python3
"""Peer timing: Marlin (IST-DASLab/marlin: the FP16 x INT4 mma.sync kernel that vLLM's GPTQ-Marlin
grew from), built from source on the GPU machine with PyTorch's extension builder, on the same
shapes and M as `mosaic bench gemm`, timed as bench/torch_int4.py times (median of CUDA-event-timed
batches over enough weight copies that L2 cannot serve them). Group 128, symmetric 4-bit, fp16
activations, random codes and scales. Writes JSON rows with variant "marlin" (speedup_vs_cublas is
filled in by merge_results.py from the cuBLAS rows of the same run).

Marlin's source is not part of mosaic: --src names a folder holding its marlin_cuda.cpp and
marlin_cuda_kernel.cu (scripts/gpu-check.sh passes .xfer/marlin, a copy carried to the GPU
machine; see docs/results.md for the commit it came from).

CUDA 13's ptxas miscompiles Marlin's hinted weight copy (`createpolicy ... evict_first` +
`cp.async ... L2::cache_hint`): one instantiation (thread_m_blocks 1, the M <= 16 kernel) gets a
cache-policy operand at an odd uniform register, `desc[UR1]`, which faults with "illegal instruction"
on an H200 (the 2026-11-28 attempt; the same compiler fault scripts/sass_check.py guards mosaic's
kernels against, found on Marlin with that script in the thirteenth session). So by default
(--cache-hint drop) the build uses a copy of the kernel file with that one asm statement replaced by
the plain `cp.async.cg.shared.global` (no L2 eviction hint; everything else Marlin's own), checks the
built module with scripts/sass_check.py, and labels its rows accordingly; --cache-hint keep builds the
source as it is."""
import argparse, datetime, json, os, shutil, subprocess, sys

import torch
from torch.utils import cpp_extension

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_int4 import shapes, time_us  # noqa: E402  (same shapes, same timing)


HINTED_COPY = ('''    "   createpolicy.fractional.L2::evict_first.b64 p, 1.0;"
    "   cp.async.cg.shared.global.L2::cache_hint [%0], [%1], %2, p;\\n"''')
PLAIN_COPY = '    "   cp.async.cg.shared.global [%0], [%1], %2;\\n"'


def without_cache_hint(src, build_dir):
    """A copy of Marlin's sources whose weight copy carries no L2 cache hint (see the module doc)."""
    out = os.path.join(build_dir, "src-nohint")
    os.makedirs(out, exist_ok=True)
    shutil.copy(os.path.join(src, "marlin_cuda.cpp"), out)
    text = open(os.path.join(src, "marlin_cuda_kernel.cu")).read()
    if text.count(HINTED_COPY) != 1:
        sys.exit(f"marlin_peer: {src}/marlin_cuda_kernel.cu does not hold the hinted copy this script patches "
                 "(another Marlin revision?): use --cache-hint keep, or update HINTED_COPY")
    open(os.path.join(out, "marlin_cuda_kernel.cu"), "w").write(text.replace(HINTED_COPY, PLAIN_COPY))
    return out


def sass_check(build_dir):
    """scripts/sass_check.py on the built module: exit before a launch can fault and poison the context."""
    mods = [os.path.join(build_dir, f) for f in os.listdir(build_dir) if f.endswith(".so")]
    check = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts", "sass_check.py")
    r = subprocess.run([sys.executable, check] + mods, capture_output=True, text=True)
    print((r.stdout + r.stderr).strip().splitlines()[-1] if (r.stdout + r.stderr).strip() else "sass_check: no output")
    if r.returncode != 0:
        sys.exit("marlin_peer: the built Marlin has instructions known to fault (sass_check above); not launching it")


def build(src, build_dir, arch):
    os.makedirs(build_dir, exist_ok=True)
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch  # e.g. "9.0", or "8.0+PTX" (sm_80 PTX JIT-compiled for the card)
    for v in ("CXX", "CC"):  # a caller's compiler line (gpu-check.sh's CXX) is not the one torch was built with
        os.environ.pop(v, None)
    return cpp_extension.load(name="marlin_cuda", build_directory=build_dir, verbose=False,
                              sources=[os.path.join(src, "marlin_cuda.cpp"), os.path.join(src, "marlin_cuda_kernel.cu")],
                              extra_cuda_cflags=["-O3", "-lineinfo"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", required=True, help="folder with marlin_cuda.cpp and marlin_cuda_kernel.cu")
    ap.add_argument("--build-dir", default="/tmp/marlin-build")
    ap.add_argument("--shapes", default="llama3-8b")
    ap.add_argument("--m", default="1,4,16,32,64,128,256,1024,4096")
    ap.add_argument("--arch", default="9.0", help="TORCH_CUDA_ARCH_LIST for the build")
    ap.add_argument("--fp16-baseline", action="store_true",
                    help="also time torch.matmul in FP16 (cuBLAS) in this process (variant torch_fp16), for runs "
                         "without `mosaic bench gemm`")
    ap.add_argument("--cache-hint", choices=("drop", "keep"), default="drop",
                    help="drop: build Marlin with its L2 evict-first hint removed (CUDA 13's ptxas miscompiles the "
                         "hinted copy; module doc); keep: build the source as it is")
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    src = without_cache_hint(args.src, args.build_dir) if args.cache_hint == "drop" else args.src
    marlin = build(src, args.build_dir, args.arch)
    sass_check(args.build_dir)
    patch = "L2 evict_first cache hint removed (ptxas 13.0 fault)" if args.cache_hint == "drop" else None
    dev = "cuda"
    card = torch.cuda.get_device_name()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    print(f"marlin built from {args.src}{' (cache hint dropped)' if patch else ''}; torch {torch.__version__} on {card}")
    rows = []
    for name, k, n in shapes(args.shapes):
        if k % 128 or n % 256:
            print(f"{name}: Marlin needs K % 128 == 0 and N % 256 == 0; skipped", file=sys.stderr)
            continue
        # B in Marlin's layout: [K / 16, N * 16 / 8] int32 (8 codes per word); any bits are valid codes.
        copies = int(min(8, max(1, (160 << 20) // (n * k // 2) + 1)))
        bs = [torch.randint(-2**31, 2**31 - 1, (k // 16, n * 16 // 8), dtype=torch.int32, device=dev)
              for _ in range(copies)]
        s = (torch.rand(k // 128, n, device=dev) * 0.01 + 0.001).half()
        ws = torch.zeros(n // 128 * 16, dtype=torch.int32, device=dev)  # Marlin's lock workspace: zeros
        for m in [int(x) for x in args.m.split(",")]:
            xs = [torch.randn(m, k, device=dev, dtype=torch.half) for _ in range(4)]
            c = torch.empty(m, n, device=dev, dtype=torch.half)
            try:
                us = time_us(lambda i: marlin.mul(xs[i % 4], bs[i], c, s, ws, -1, -1, -1, 16), copies)
                torch.cuda.synchronize()
            except Exception as e:  # report, do not hide; a device error poisons the context: stop
                print(f"{name} M={m}: marlin failed: {e}", file=sys.stderr)
                if "CUDA error" in str(e):
                    sys.exit(1)
                continue
            tflops = 2.0 * m * n * k / (us * 1e6)
            ratio = ""
            if args.fp16_baseline:
                wf = [torch.randn(n, k, device=dev, dtype=torch.half) * 0.02 for _ in range(4)]  # >= 200 MB: more than L2
                ref = time_us(lambda i: torch.matmul(xs[i % 4], wf[i % len(wf)].t()), len(wf))
                del wf
                ratio = f" | cuBLAS FP16 (torch) {ref:.2f} us | marlin x cuBLAS {ref / us:.2f}x"
                rows.append({"card": card, "date": date, "shape": name, "m": m, "n": n, "k": k, "budget": None,
                             "variant": "torch_fp16", "us": ref, "tflops": 2.0 * m * n * k / (ref * 1e6),
                             "act_dtype": "fp16", "torch": torch.__version__})
            print(f"| {name} ({k}x{n}) | {m} | marlin | {us:.2f} us | {tflops:.1f} TFLOP/s{ratio} |", flush=True)
            rows.append({"card": card, "date": date, "shape": name, "m": m, "n": n, "k": k, "budget": None,
                         "variant": "marlin", "us": us, "tflops": tflops, "act_dtype": "fp16",
                         "torch": torch.__version__, "patch": patch})
        del bs
        torch.cuda.empty_cache()
    with open(args.json, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
