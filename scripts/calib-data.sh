#!/usr/bin/env bash
# Default calibration text for `mosaic quantize`: English prose from the Debian package
# "fortunes" (fortune-mod's data files: quotations, literature, humour, science, ~2.5 MB, about
# 600k SmolLM2 tokens). Deliberately not WikiText-2, which is the evaluation text.
# Writes data/calib.txt (git-ignored). Needs apt-get (downloads the .deb only, installs nothing).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/data/calib.txt}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
apt-get download fortunes >/dev/null 2>&1 || { echo "calib-data: 'apt-get download fortunes' failed" >&2; exit 1; }
dpkg-deb -x fortunes_*.deb x
dir=x/usr/share/games/fortunes
mkdir -p "$(dirname "$out")"
# Each file is fortunes separated by lines holding a single '%': turn those into blank lines.
# Skip the .dat indexes, the .u8 links and the ASCII-art collection (not prose).
find "$dir" -maxdepth 1 -type f ! -name '*.dat' ! -name 'ascii-art' ! -name 'art' | sort | while read -r f; do
  sed -e 's/^%$//' "$f"
  echo
done >"$out.tmp"
mv "$out.tmp" "$out"
echo "calib-data: wrote $out ($(wc -c <"$out") bytes) from Debian package fortunes $(dpkg-deb -f fortunes_*.deb Version)"
