#!/usr/bin/env bash
# Builds every libFuzzer target fuzz/fuzz_<name>.cpp (clang, ASan + UBSan, CUDA off) and runs each
# one on its seeds fuzz/seeds/<name>/ for an equal share of FUZZ_SECONDS (default 60, the total
# for all targets). The seeds are copied to a temporary corpus, so nothing is written into the
# repository. Exits non-zero on any crash, sanitizer report, leak, timeout or out-of-memory; the
# inputs that triggered it are kept under $BUILD/fuzz-artifacts/ for replay:
#   build-fuzz/fuzz_<name> build-fuzz/fuzz-artifacts/<name>/crash-...
# Environment: FUZZ_SECONDS, JOBS (build parallelism), MOSAIC_FUZZ_BUILD_DIR (default build-fuzz),
# FUZZ_CC / FUZZ_CXX (default clang / clang++).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${MOSAIC_FUZZ_BUILD_DIR:-build-fuzz}
TOTAL=${FUZZ_SECONDS:-60}
JOBS=${JOBS:-$(nproc)}
FUZZ_CC=${FUZZ_CC:-clang}
FUZZ_CXX=${FUZZ_CXX:-clang++}

if ! command -v "$FUZZ_CXX" >/dev/null; then
  echo "fuzz.sh: $FUZZ_CXX not found (libFuzzer needs clang; scripts/install-deps.sh installs it)" >&2
  exit 1
fi

targets=()
for src in fuzz/fuzz_*.cpp; do
  [ -e "$src" ] && targets+=("$(basename "$src" .cpp)")
done
if [ ${#targets[@]} -eq 0 ]; then
  echo "fuzz.sh: no fuzz/fuzz_*.cpp targets"
  exit 0
fi

CC=$FUZZ_CC CXX=$FUZZ_CXX cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DMOSAIC_FUZZ=ON -DMOSAIC_CUDA=OFF -DMOSAIC_BUILD_TESTS=OFF -DMOSAIC_BUILD_BENCH=OFF >/dev/null
cmake --build "$BUILD" -j "$JOBS" --target "${targets[@]}"

per=$((TOTAL / ${#targets[@]}))
[ "$per" -ge 1 ] || per=1
work=$(mktemp -d "${TMPDIR:-/tmp}/mosaic-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT

failed=()
for t in "${targets[@]}"; do
  name=${t#fuzz_}
  corpus="$work/corpus-$name"
  artifacts="$BUILD/fuzz-artifacts/$name"
  mkdir -p "$corpus" "$artifacts"
  if [ -d "fuzz/seeds/$name" ]; then
    cp -R "fuzz/seeds/$name/." "$corpus/"
  else
    echo "fuzz.sh: warning: no seeds in fuzz/seeds/$name/" >&2
  fi
  echo "== $t: ${per}s on $(find "$corpus" -type f | wc -l) seeds"
  log="$work/$t.log"
  # -timeout: one input taking 10 s is a hang; -rss_limit_mb: runaway allocation is a bug too.
  if "$BUILD/$t" -max_total_time="$per" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
      -print_final_stats=1 -artifact_prefix="$artifacts/" "$corpus" >"$log" 2>&1; then
    grep -E "^stat::number_of_executed_units|^Done [0-9]+ runs" "$log" | tr '\n' ' ' || true
    echo
  else
    echo "fuzz.sh: $t FAILED; last lines of its log:" >&2
    tail -n 60 "$log" >&2
    echo "fuzz.sh: crashing input(s) in $artifacts/" >&2
    failed+=("$t")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: failures in: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz.sh: ${#targets[@]} target(s) ran ${per}s each without a finding"
