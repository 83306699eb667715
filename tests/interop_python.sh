#!/usr/bin/env bash
# Checkpoints written by hqq-cpp load in the reference Python package: each
# quantized layer goes through HQQLinear.load_state_dict + dequantize() and is
# compared with our own dequantization. Skips (exit 77) where no Python with
# torch and hqq is at hand (set HQQ_REFERENCE_PYTHON, or make .venv as in
# tests/golden/make_golden.py).
set -euo pipefail
hqq_bin=$1 synth_bin=$2 src_dir=$3 work=$4
py=${HQQ_REFERENCE_PYTHON:-}
for cand in "$py" "$src_dir/.venv/bin/python" /opt/hqqref/bin/python python3; do
  if [ -n "$cand" ] && command -v "$cand" >/dev/null 2>&1 && "$cand" -c "import torch, hqq" >/dev/null 2>&1; then
    py=$cand
    break
  fi
  py=""
done
if [ -z "$py" ]; then
  echo "SKIPPED: no Python with torch and hqq==0.2.8.post1 (set HQQ_REFERENCE_PYTHON)"
  exit 77
fi
rm -rf "$work" && mkdir -p "$work"
"$synth_bin" "$work/model.safetensors" --layers 1 --hidden 256 --intermediate 512 --vocab 512 >/dev/null
for cfg in "--nbits 4" "--nbits 3 --axis 0 --group-size 128" "--nbits 2 --solver legacy" \
           "--nbits 1 --scale-dtype bf16" "--nbits 8 --group-size 32 --scale-dtype f32"; do
  echo "== hqq quantize $cfg"
  # shellcheck disable=SC2086
  "$hqq_bin" quantize "$work/model.safetensors" "$work/q.safetensors" $cfg >/dev/null
  "$hqq_bin" dequantize "$work/q.safetensors" "$work/dense.safetensors" >/dev/null
  "$py" "$src_dir/tests/golden/make_golden.py" --check-ours "$work/q.safetensors" --dense "$work/dense.safetensors"
  rm -f "$work/q.safetensors" "$work/dense.safetensors"
done
