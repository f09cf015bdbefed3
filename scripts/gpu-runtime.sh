# Sourced by the GPU machine scripts (gpu-e2e.sh, gpu-quant.sh) after they set DEPS (the carried
# .devdeps) and B (their build directory): finds the CUDA toolkit, unpacks the Debian runtime
# libraries the full mosaic links (OpenBLAS, PCRE2, utf8proc; the GPU image lacks them) from
# $DEPS/debs once per machine, and sets CUDA_HOME, LIBS (link flags incl. cuBLAS and cuSOLVER),
# LD_LIBRARY_PATH and OPENBLAS_CORETYPE.
CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc)")")}
[ -d "$CUDA_HOME/lib64" ] || CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
R=$B/root
if ! ls "$DEPS"/debs/*.deb > /dev/null 2>&1; then
  echo "gpu-runtime: no Debian packages in $DEPS/debs: run scripts/make-devdeps.sh here and pass carry [\"$DEPS\"]" >&2
  exit 1
fi
if [ ! -e "$R/.done" ]; then
  mkdir -p "$R"
  for d in "$DEPS"/debs/*.deb; do
    if command -v dpkg-deb > /dev/null; then dpkg-deb -x "$d" "$R"
    else (t=$(mktemp -d) && cd "$t" && ar x "$OLDPWD/$d" && tar -xf data.tar.* -C "$R" && rm -rf "$t"); fi
  done
  touch "$R/.done"
fi
LA=$R/usr/lib/x86_64-linux-gnu
LIBS="-L$LA/openblas-pthread -l:libopenblas.so.0 -L$LA -l:libpcre2-8.so.0 -l:libutf8proc.so.2 -Wl,--disable-new-dtags \
  -Wl,-rpath,$LA/openblas-pthread -Wl,-rpath,$LA -Wl,-rpath-link,$LA -L$CUDA_HOME/lib64 -L$CUDA_HOME/lib \
  -L$CUDA_HOME/targets/x86_64-linux/lib -lcudart -lcublas -lcusolver -lpthread"
export LD_LIBRARY_PATH=$LA:$LA/openblas-pthread:${LD_LIBRARY_PATH:-}
export OPENBLAS_CORETYPE=SkylakeX
