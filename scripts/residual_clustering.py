#!/usr/bin/env python3
"""How clustered a MosaicQuant checkpoint's residual blocks are, per linear type.

The fused GPU kernel (ZipperEngine) runs each block row of a layer's output in one CTA, so a
layer's decode time follows the block row holding the most residual blocks, not the mean. For
each linear type (q, k, v, o, gate, up, down) this prints, from the checkpoint's `res_rowptr`:

  kept      the fraction of that type's blocks kept, over all layers
  max/mean  max over layers of (max blocks in one block row / mean blocks per block row), the
            layers that keep none left out
  max row   max over layers of the blocks in the fullest block row, and the block columns (cap:
            `mosaic quantize --row-cap F` bounds it by ceil(F x block columns))
  avg max   mean over layers of the blocks in the fullest block row (0 for a layer with none):
            the residual blocks the slowest CTA of a layer adds, on average

Usage: python3 scripts/residual_clustering.py CHECKPOINT_DIR [...] [--json]
Needs numpy and safetensors (scripts/requirements.txt). Reads every *.safetensors of the directory.
"""
import argparse
import glob
import json
import os
import re
import sys

import numpy as np
from safetensors.numpy import load_file

TYPES = [("q", "self_attn.q_proj"), ("k", "self_attn.k_proj"), ("v", "self_attn.v_proj"),
         ("o", "self_attn.o_proj"), ("gate", "mlp.gate_proj"), ("up", "mlp.up_proj"),
         ("down", "mlp.down_proj")]


def clustering(ckpt):
    with open(os.path.join(ckpt, "config.json")) as f:
        qc = json.load(f).get("quantization_config") or {}
    res = qc.get("residual") or {}
    bc = int(res.get("block_cols", 64))
    br = int(res.get("block_rows", 16))
    tensors = {}
    for path in sorted(glob.glob(os.path.join(ckpt, "*.safetensors"))):
        tensors.update(load_file(path))
    layers = sorted({int(m.group(1)) for k in tensors for m in [re.match(r"model\.layers\.(\d+)\.", k)] if m})
    out = {"checkpoint": ckpt, "row_cap": res.get("row_cap"), "block": f"{br}x{bc}", "types": {}}
    for short, name in TYPES:
        kept = total = 0
        ratio = 0.0
        max_row = 0
        nbc = 0
        row_max_sum = 0
        for i in layers:
            p = f"model.layers.{i}.{name}"
            n, half_k = tensors[p + ".qweight"].shape
            nbr, nbc = n // br, (2 * half_k) // bc
            total += nbr * nbc
            rowptr = tensors.get(p + ".res_rowptr")
            if rowptr is None:  # no residual kept in this linear
                continue
            per_row = np.diff(rowptr.astype(np.int64))
            kept += int(per_row.sum())
            if per_row.sum() > 0:
                ratio = max(ratio, float(per_row.max()) / float(per_row.mean()))
            max_row = max(max_row, int(per_row.max()))
            row_max_sum += int(per_row.max())
        out["types"][short] = {"kept_fraction": kept / total if total else 0.0, "max_over_mean": ratio,
                               "max_row_blocks": max_row, "block_cols": nbc,
                               "mean_max_row_blocks": row_max_sum / len(layers) if layers else 0.0, "kept": kept, "total": total}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--json", action="store_true", help="print one JSON object per checkpoint")
    a = ap.parse_args()
    for ckpt in a.checkpoints:
        c = clustering(ckpt)
        if a.json:
            print(json.dumps(c))
            continue
        print(f"{ckpt}  (block {c['block']}, row_cap {c['row_cap']})")
        print(f"  {'type':5} {'kept':>8} {'max/mean':>9} {'max row':>10} {'avg max':>8}")
        for short, t in c["types"].items():
            print(f"  {short:5} {100 * t['kept_fraction']:7.2f}% {t['max_over_mean']:9.2f} "
                  f"{t['max_row_blocks']:5d} / {t['block_cols']:<3d} {t['mean_max_row_blocks']:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
