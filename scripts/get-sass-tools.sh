#!/usr/bin/env bash
# cuobjdump / nvdisasm for reading the SASS of our kernels on a machine whose CUDA toolkit lacks them
# (this project's CPU machines have nvcc and ptxas only). From NVIDIA's PyPI wheels, unpacked into
# build-tools/sass (ignored by git). Usage:
#   bash scripts/get-sass-tools.sh
#   build-tools/sass/cuobjdump -sass build/CMakeFiles/mosaic_cuda.dir/src/cuda/zipper_stream.cu.o
#   python3 scripts/sass_loop.py build/CMakeFiles/mosaic_cuda.dir/src/cuda/zipper_stream.cu.o '__halfLb1ELi8ELi1ELi8E'
set -euo pipefail
cd "$(dirname "$0")/.."
D=build-tools/sass
mkdir -p "$D/whl"
python3 -m pip download --quiet --no-deps -d "$D/whl" nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm
for w in "$D"/whl/*.whl; do python3 -m zipfile -e "$w" "$D/unpacked"; done
for t in cuobjdump nvdisasm; do
  f=$(find "$D/unpacked" -type f -name "$t" | head -1)
  [ -n "$f" ] || { echo "get-sass-tools: $t not found in the wheels" >&2; exit 1; }
  chmod +x "$f"
  ln -sf "$(realpath "$f")" "$D/$t"
done
"$D/cuobjdump" --version | tail -1
