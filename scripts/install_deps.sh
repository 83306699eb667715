#!/usr/bin/env bash
# Installs the Debian packages the build needs, only those missing.
set -euo pipefail
pkgs=(g++ cmake ninja-build libeigen3-dev libfmt-dev nlohmann-json3-dev libcli11-dev
      libgtest-dev libgmock-dev libbenchmark-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
fi

# Where nvcc is present (the CUDA backend gets built): cuobjdump and nvdisasm,
# which the toolkit here lacks, for the static SASS check of the sm_90a GEMM
# kernels (scripts/sass_check.py, ctest sass_check). Pinned wheels from PyPI,
# unpacked into .tools/ (git-ignored); without them that test skips, saying so.
nvcc_bin=$(command -v nvcc || true)
[ -z "$nvcc_bin" ] && [ -x /usr/local/cuda/bin/nvcc ] && nvcc_bin=/usr/local/cuda/bin/nvcc
tools="$(cd "$(dirname "$0")/.." && pwd)/.tools/cuda-sass"
if [ -n "$nvcc_bin" ] && [ ! -x "$tools/nvidia/cu13/bin/cuobjdump" ]; then
  if python3 -m pip download -q --no-deps -d "$tools/wheels" \
      nvidia-cuda-cuobjdump==13.5.37 nvidia-cuda-nvdisasm==13.5.37 >/dev/null 2>&1; then
    for w in "$tools"/wheels/*.whl; do python3 -m zipfile -e "$w" "$tools"; done
    chmod +x "$tools"/nvidia/cu13/bin/* 2>/dev/null || true
    echo "cuobjdump + nvdisasm in $tools/nvidia/cu13/bin (for the SASS check)"
  else
    echo "note: could not fetch cuobjdump/nvdisasm from PyPI: the SASS check will skip"
  fi
fi
