#!/usr/bin/env python3
"""Compare the kernels of two sets of PTX files: same entries, same bodies.

For refactors that move kernels between files: the names nvcc gives anonymous namespaces and
internal symbols contain the file name and a hash, block labels and call-sequence numbers count
per file; those are normalised, everything else must match byte for byte.

    nvcc -std=c++17 -O3 -gencode arch=compute_90a,code=sm_90a --expt-relaxed-constexpr -I src -ptx OLD.cu -o old.ptx
    (the same for each new .cu)
    python3 scripts/ptx_compare.py old.ptx [more old .ptx ...] -- new1.ptx [new2.ptx ...]
Exit status 0 when every kernel is identical.
"""
import re
import sys


def entries(paths):
    out = {}
    for path in paths:
        s = open(path).read()
        s = re.sub(r"\d+_GLOBAL__N__[0-9a-f]+_\d+_[A-Za-z0-9_]+?_cu_[0-9a-f]+", "ANON", s)
        s = re.sub(r"\d+_INTERNAL_[0-9a-f]+_\d+_[A-Za-z0-9_]+?_cu_[0-9a-f]+", "INTL", s)
        for m in re.finditer(r"(?:\.visible |\.weak )?\.entry (\S+)\(", s):
            body = s[m.start(): s.find("\n}\n", m.start())]
            body = re.sub(r"\$L__BB\d+_", "$L__BB_", body)
            out[m.group(1)] = re.sub(r"callseq \d+", "callseq", body)
    return out


def main() -> int:
    if "--" not in sys.argv:
        print(__doc__)
        return 2
    cut = sys.argv.index("--")
    old, new = entries(sys.argv[1:cut]), entries(sys.argv[cut + 1:])
    missing, extra = sorted(set(old) - set(new)), sorted(set(new) - set(old))
    differ = sorted(k for k in old if k in new and old[k] != new[k])
    print(f"kernels: {len(old)} before, {len(new)} after; missing {len(missing)}, new {len(extra)}, differing {len(differ)}")
    for k in (missing + extra + differ)[:10]:
        print("  ", k)
    return 0 if not (missing or extra or differ) else 1


if __name__ == "__main__":
    sys.exit(main())
