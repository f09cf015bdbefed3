#!/usr/bin/env bash
# Installs the system packages mosaic builds against (Debian names).
# Idempotent: skips apt entirely when every package is already present.
set -euo pipefail
PKGS=(cmake g++ make pkg-config
      nlohmann-json3-dev   # JSON (config.json, safetensors headers, tokenizer.json)
      libpcre2-dev         # Unicode regex with lookahead: the BPE pre-tokenizer patterns
      libutf8proc-dev      # NFC normalization (Qwen3 tokenizer normalizer)
      libcli11-dev         # command-line parsing
      libopenblas-dev      # SGEMM for the fast CPU path (the scalar path stays the oracle)
      libgtest-dev libgmock-dev libbenchmark-dev
      clang libclang-rt-dev  # libFuzzer + ASan/UBSan for scripts/fuzz.sh
      python3)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "[install-deps] installing: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "[install-deps] all system packages present"
fi
