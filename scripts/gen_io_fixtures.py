#!/usr/bin/env python3
"""Cross-checks mosaic's safetensors code against the reference Python `safetensors` package.

  python3 scripts/gen_io_fixtures.py            # write python_written.safetensors, check mosaic_written
  python3 scripts/gen_io_fixtures.py --check    # only check mosaic_written.safetensors

Both fixtures live in tests/fixtures/io/ and hold the same 14 tensors, one per dtype, shape [3, 4],
with values given by VALUES below (tests/io/test_safetensors_interop.cpp uses the same formulas):
  - python_written.safetensors: written here by safetensors.torch.save_file; the C++ test reads it.
  - mosaic_written.safetensors: written by mosaic's SafetensorsWriter (the C++ test regenerates it
    with MOSAIC_WRITE_FIXTURES=1 and otherwise asserts its writer still produces these exact
    bytes); loaded here with the reference reader, which enforces its own strict validation.
Needs torch (numpy has no bfloat16 / float8).
"""
import argparse
import json
import struct
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "io"

# name -> (torch dtype, function of the flat index i = 0..11)
VALUES = {
    "t_f64": (torch.float64, lambda i: (i - 5) * 0.125),
    "t_f32": (torch.float32, lambda i: (i - 5) * 0.25),
    "t_f16": (torch.float16, lambda i: (i - 5) * 0.5),
    "t_bf16": (torch.bfloat16, lambda i: (i - 5) * 1.5),
    "t_i64": (torch.int64, lambda i: (i - 5) * 1_000_000_000_000),
    "t_i32": (torch.int32, lambda i: (i - 5) * 100_000),
    "t_i16": (torch.int16, lambda i: (i - 5) * 300),
    "t_i8": (torch.int8, lambda i: i - 5),
    "t_u8": (torch.uint8, lambda i: i * 20),
    "t_bool": (torch.bool, lambda i: i % 2 == 1),
    "t_u16": (torch.uint16, lambda i: i * 5000),
    "t_u32": (torch.uint32, lambda i: i * 390_000_000),
    "t_u64": (torch.uint64, lambda i: i << 60),
    "t_f8_e4m3": (torch.float8_e4m3fn, lambda i: (i - 5) * 0.5),
}


def expected(name):
    dtype, f = VALUES[name]
    vals = [f(i) for i in range(12)]
    if dtype in (torch.uint32, torch.uint64):
        # torch.tensor cannot build these from large Python ints directly: go through bytes.
        fmt = "<12I" if dtype == torch.uint32 else "<12Q"
        raw = bytearray(struct.pack(fmt, *vals))
        return torch.frombuffer(raw, dtype=dtype).reshape(3, 4)
    if dtype == torch.float8_e4m3fn:
        return torch.tensor(vals, dtype=torch.float32).to(dtype).reshape(3, 4)
    return torch.tensor(vals, dtype=dtype).reshape(3, 4)


def same(a, b):
    # Compare raw bytes: exact, and works for dtypes torch cannot compare (uint64, float8).
    return a.dtype == b.dtype and a.shape == b.shape and \
        a.contiguous().view(torch.uint8).equal(b.contiguous().view(torch.uint8))


def write_python_fixture():
    tensors = {name: expected(name) for name in VALUES}
    path = FIXTURES / "python_written.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt", "source": "python-safetensors"})
    back = load_file(str(path))
    assert all(same(back[n], tensors[n]) for n in VALUES)
    print(f"wrote {path} ({path.stat().st_size} bytes)")


def check_mosaic_fixture():
    path = FIXTURES / "mosaic_written.safetensors"
    tensors = load_file(str(path))  # raises on anything the reference rejects
    bad = [n for n in VALUES if n not in tensors or not same(tensors[n], expected(n))]
    extra = sorted(set(tensors) - set(VALUES))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    problems = []
    if bad:
        problems.append(f"wrong values: {bad}")
    if extra:
        problems.append(f"unexpected tensors: {extra}")
    if meta != {"writer": "mosaic"}:
        problems.append(f"metadata {meta}")
    if n % 8 != 0:
        problems.append(f"header length {n} is not a multiple of 8")
    for name, e in header.items():
        if name != "__metadata__":
            itemsize = expected(name).element_size()
            if (8 + n + e["data_offsets"][0]) % itemsize:
                problems.append(f"{name} is not aligned to {itemsize} bytes")
    if problems:
        print(f"FAIL {path}: " + "; ".join(problems))
        return False
    print(f"ok   {path}: {len(tensors)} tensors, all dtypes read back exactly by safetensors "
          f"{__import__('safetensors').__version__}")
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only check mosaic_written.safetensors")
    args = ap.parse_args()
    if not args.check:
        write_python_fixture()
    return 0 if check_mosaic_fixture() else 1


if __name__ == "__main__":
    sys.exit(main())
