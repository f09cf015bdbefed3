#!/usr/bin/env bash
# Copies the header-only / source dependencies that scripts/gpu-check.sh builds against into
# .devdeps/ (git-ignored), because the GPU machine's image has the CUDA toolkit but not the Debian
# dev packages. Run here, on a Debian machine with scripts/install-deps.sh done; then pass
# carry: [".devdeps"] to the device tool (docs/kernels.md, "Run it").
#   .devdeps/include/CLI        <- /usr/include/CLI          (CLI11)
#   .devdeps/include/nlohmann   <- /usr/include/nlohmann     (nlohmann-json)
#   .devdeps/googletest         <- /usr/src/googletest/googletest (sources: gtest-all.cc, gtest_main.cc)
# and, for the GPU engine build (scripts/gpu-e2e.sh: model, tokenizer and CLI need OpenBLAS, PCRE2
# and utf8proc):
#   .devdeps/include/{cblas.h,openblas_config.h,pcre2.h,utf8proc.h}   <- the dev packages' headers
#   .devdeps/debs/*.deb   the runtime libraries as Debian packages (apt-get download, ~8 MB
#                         compressed; the OpenBLAS .so alone is 36 MB unpacked, so gpu-e2e.sh
#                         unpacks them on the device instead of carrying them unpacked)
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
OB=/usr/include/x86_64-linux-gnu/openblas-pthread
for h in $OB/cblas.h $OB/openblas_config.h /usr/include/pcre2.h /usr/include/utf8proc.h; do
  [ -f "$h" ] || { echo "make-devdeps: $h missing (run scripts/install-deps.sh first)" >&2; exit 1; }
  cp "$h" "$D/include/"
done
mkdir -p "$D/debs"
(cd "$D/debs" && apt-get download -q libopenblas0-pthread libgfortran5 libquadmath0 libpcre2-8-0 libutf8proc2 2>&1 |
  grep -v "unsandboxed" || true)
ls "$D/debs"/libopenblas0-pthread_*.deb > /dev/null || { echo "make-devdeps: apt-get download failed" >&2; exit 1; }
echo "make-devdeps: $D ready ($(du -sh "$D" | cut -f1)); device tool: carry [\"$D\"]"
