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
if [ -x scripts/fuzz.sh ]; then
  FUZZ_SECONDS=${FUZZ_SECONDS:-60} bash scripts/fuzz.sh
fi
