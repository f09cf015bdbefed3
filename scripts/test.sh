#!/usr/bin/env bash
# The one test command (README, .ci/run): installs the system packages, builds everything (CUDA
# kernels compile whenever nvcc is present, GPU or not), runs every CPU test, then the fuzz targets
# for a bounded time. GPU tests live under the ctest label "cuda" and are run on a GPU machine by
# scripts/gpu-check.sh; here they print a visible skip when no GPU is present.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${MOSAIC_BUILD_DIR:-build}
JOBS=${JOBS:-$(nproc)}
bash scripts/install-deps.sh
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DMOSAIC_BUILD_TESTS=ON
cmake --build "$BUILD" -j "$JOBS"
(cd "$BUILD" && ctest --output-on-failure -j "$JOBS" --timeout 600)
# The compiled kernels' SASS, checked for compiler output known to fault on the GPU (an odd
# descriptor register: "illegal instruction" on the H200; scripts/sass_check.py). cuobjdump comes
# from NVIDIA's PyPI wheel when the toolkit lacks it (scripts/get-sass-tools.sh, ~5 MB).
KOBJ=$(find "$BUILD" -name '*.cu.o' 2> /dev/null | sort)
if [ -n "$KOBJ" ]; then
  if command -v cuobjdump > /dev/null || [ -x build-tools/sass/cuobjdump ] || bash scripts/get-sass-tools.sh > /dev/null; then
    python3 scripts/sass_check.py --self-test
    python3 scripts/sass_check.py $KOBJ
  else
    echo "SKIPPED: sass_check (no cuobjdump and its PyPI wheel could not be fetched)"
  fi
fi
if [ -x scripts/fuzz.sh ]; then
  FUZZ_SECONDS=${FUZZ_SECONDS:-60} bash scripts/fuzz.sh
fi
