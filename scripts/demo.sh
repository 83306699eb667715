#!/usr/bin/env bash
# The demo: installs what is missing, builds, writes a small transformer-shaped
# checkpoint of heavy-tailed synthetic weights, quantizes it to 4 bits and
# prints the report table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
TARGETS="hqq_cli make_synthetic_checkpoint run_quantized_linear" bash scripts/build.sh
mkdir -p demo_out
./build/examples/make_synthetic_checkpoint demo_out/model.safetensors --layers 2 --hidden 1024 --intermediate 2816
./build/hqq quantize demo_out/model.safetensors demo_out/model-hqq4.safetensors \
  --nbits 4 --group-size 64 --report demo_out/report.json
./build/hqq inspect demo_out/model-hqq4.safetensors > demo_out/inspect.txt
head -n 12 demo_out/inspect.txt
echo "wrote demo_out/model-hqq4.safetensors and demo_out/report.json"
./build/examples/run_quantized_linear demo_out/model-hqq4.safetensors --m 4
