#!/usr/bin/env python3
"""Static checks of compiled kernels' SASS that catch compiler output known to fault at run time.

    python3 scripts/sass_check.py OBJECT...      (exit 1 when a check fails)
    python3 scripts/sass_check.py --self-test    (the pattern on known SASS lines)

- A 64-bit memory descriptor (`desc[URn]`, the L2 cache-policy operand of cp.async / loads with a
  cache hint) must sit at an even uniform register. ptxas 13.0 once emitted `desc[UR1]` for the
  stream kernel's group < 128 instantiations (seventh session, 2026-11-28): "illegal instruction" on
  the H200 at the first copy. docs/kernels-notes.md has the story.
Uses cuobjdump from PATH, else from build-tools/sass (scripts/get-sass-tools.sh).
"""
import re
import shutil
import subprocess
import sys
from pathlib import Path


def cuobjdump() -> str:
    local = Path(__file__).resolve().parent.parent / "build-tools/sass/cuobjdump"
    found = shutil.which("cuobjdump") or (str(local) if local.exists() else None)
    if not found:
        sys.exit("sass_check: no cuobjdump (PATH or scripts/get-sass-tools.sh)")
    return found


ODD_DESC = re.compile(r"/\*([0-9a-f]{4,})\*/\s+([^;]*desc\[UR\d*[13579]\][^;]*);")


def self_test() -> int:
    """The pattern on SASS lines of both kinds (the faulting one is from the H200 run of 2026-11-28)."""
    bad = "/*13a0*/                   LDGSTS.E.BYPASS.128 [R51+UR0], desc[UR1][R10.64] ;"
    good = ["/*2070*/                   LDGSTS.E.BYPASS.128 [R42], desc[UR4][R12.64] ;",
            "/*4310*/               @P0 LDGSTS.E.BYPASS.128 [R8+0x220], desc[UR10][R16.64] ;"]
    ok = len(ODD_DESC.findall(bad)) == 1 and all(not ODD_DESC.findall(g) for g in good)
    print(f"sass_check self-test: {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    if sys.argv[1] == "--self-test":
        return self_test()
    tool, bad = cuobjdump(), 0
    for obj in sys.argv[1:]:
        run = subprocess.run([tool, "-sass", obj], capture_output=True, text=True)
        if "does not contain device code" in run.stderr:
            continue  # a host object
        if run.returncode != 0:
            print(f"sass_check: {obj}: cuobjdump failed: {run.stderr.strip()}")
            bad += 1
            continue
        sass = run.stdout
        for func in re.split(r"\n\s*Function : ", sass)[1:]:
            name = func.split("\n", 1)[0]
            hits = ODD_DESC.findall(func)
            if hits:
                bad += 1
                print(f"sass_check: {obj}: {name}: {len(hits)} instruction(s) with an odd descriptor register, "
                      f"e.g. {hits[0][0]}: {hits[0][1].strip()}")
    print(f"sass_check: {len(sys.argv) - 1} object(s), {bad} function(s) failing")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
