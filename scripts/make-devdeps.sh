#!/usr/bin/env bash
# Copies the header-only / source dependencies that scripts/gpu-check.sh builds against into
# .devdeps/ (git-ignored), because the GPU machine's image has the CUDA toolkit but not the Debian
# dev packages. Run here, on a Debian machine with scripts/install-deps.sh done; then pass
# carry: [".devdeps"] to the device tool (docs/kernels.md, "Run it").
#   .devdeps/include/CLI        <- /usr/include/CLI          (CLI11)
#   .devdeps/include/nlohmann   <- /usr/include/nlohmann     (nlohmann-json)
#   .devdeps/googletest         <- /usr/src/googletest/googletest (sources: gtest-all.cc, gtest_main.cc)
set -euo pipefail
cd "$(dirname "$0")/.."
D=${DEPS:-.devdeps}
for p in /usr/include/CLI /usr/include/nlohmann /usr/src/googletest/googletest; do
  [ -d "$p" ] || { echo "make-devdeps: $p missing (run scripts/install-deps.sh first)" >&2; exit 1; }
done
rm -rf "$D"
mkdir -p "$D/include"
cp -r /usr/include/CLI /usr/include/nlohmann "$D/include/"
cp -r /usr/src/googletest/googletest "$D/googletest"
echo "make-devdeps: $D ready ($(du -sh "$D" | cut -f1)); device tool: carry [\"$D\"]"
