#!/usr/bin/env bash
# Builds llama.cpp's llama-quantize and llama-imatrix (the peers of the accuracy study,
# scripts/accuracy_study.py) from the source distribution of llama-cpp-python on PyPI, which
# vendors llama.cpp: the same llama.cpp version the Python reference (llamacpp_reference.py) runs.
# No Debian package ships these tools. CPU only, Release, no CURL; only the needed targets.
#
# Usage: scripts/get-llamacpp-tools.sh [DIR]   (default: build-study/llamacpp, git-ignored)
# Prints the directory holding the binaries (DIR/build/bin) on its last line.
set -euo pipefail
VERSION=0.3.36
DIR=${1:-build-study/llamacpp}
JOBS=${JOBS:-2}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
SDIST="$DIR/llama_cpp_python-$VERSION.tar.gz"
if [ ! -f "$SDIST" ]; then
  if [ -f "/tmp/llsd/llama_cpp_python-$VERSION.tar.gz" ]; then  # a cached download, if any
    cp "/tmp/llsd/llama_cpp_python-$VERSION.tar.gz" "$SDIST"
  else
    python3 -m pip download "llama-cpp-python==$VERSION" --no-binary :all: --no-deps -d "$DIR"
  fi
fi
SRC="$DIR/llama_cpp_python-$VERSION/vendor/llama.cpp"
if [ ! -f "$SRC/CMakeLists.txt" ]; then
  tar xzf "$SDIST" -C "$DIR"
fi
BIN="$DIR/build/bin"
if [ -x "$BIN/llama-quantize" ] && [ -x "$BIN/llama-imatrix" ]; then
  echo "$BIN"; exit 0
fi
cmake -S "$SRC" -B "$DIR/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DGGML_CUDA=OFF \
  -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DBUILD_SHARED_LIBS=OFF >&2
cmake --build "$DIR/build" -j"$JOBS" --target llama-quantize llama-imatrix >&2
echo "$BIN"
