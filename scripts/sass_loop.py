#!/usr/bin/env python3
"""Instruction counts of a kernel's main loop, from its SASS (scripts/get-sass-tools.sh first).

The stream kernel's loop starts at its `DEPBAR.LE SB0, 0x2` (cp.async.wait_group) and ends at the
branch back to it; the issue region is the loop head up to the first LDGDEPBAR (commit). Static
counts (every path of the loop), useful to compare two builds of the same kernel: v13's instruction
diet showed there before it was run (docs/kernels-notes.md, sixth session).

    python3 scripts/sass_loop.py OBJECT NAME_REGEX [--list]
"""
import re
import subprocess
import sys
from pathlib import Path


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__)
        return 2
    obj, pattern, listing = sys.argv[1], sys.argv[2], "--list" in sys.argv[3:]
    tool = Path(__file__).resolve().parent.parent / "build-tools/sass/cuobjdump"
    if not tool.exists():
        print("sass_loop: run scripts/get-sass-tools.sh first", file=sys.stderr)
        return 1
    sass = subprocess.run([str(tool), "-sass", obj], capture_output=True, text=True, check=True).stdout
    found = False
    for func in re.split(r"\n\s*Function : ", sass)[1:]:
        name = func.split("\n", 1)[0]
        if not re.search(pattern, name):
            continue
        found = True
        ins = re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", func)
        addr = [int(a, 16) for a, _ in ins]
        text = [t.strip() for _, t in ins]
        for head in (a for a, t in zip(addr, text) if "DEPBAR.LE SB0, 0x2" in t):
            backs = []
            for a, t in zip(addr, text):
                m = re.search(r"BRA\s.*?0x([0-9a-f]+)", t)
                if m and a > head and head - 0x40 <= int(m.group(1), 16) <= head:
                    backs.append(a)
            if not backs:
                continue
            end = max(backs)
            i0 = addr.index(head)
            commit = next((k for k in range(i0, len(text)) if "LDGDEPBAR" in text[k]), i0)
            print(f"{name}\n  loop {hex(head)}..{hex(end)}: {sum(head <= a <= end for a in addr)} instructions; "
                  f"issue region {commit - i0}; HMMA {sum('HMMA' in t for a, t in zip(addr, text) if head <= a <= end)}")
            if listing:
                for k in range(i0, addr.index(end) + 1):
                    print(f"    {hex(addr[k])} {text[k]}")
    if not found:
        print(f"sass_loop: no function matches {pattern!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
