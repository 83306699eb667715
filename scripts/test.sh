#!/usr/bin/env bash
# Installs what is missing, builds everything and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
bash scripts/build.sh -DHQQ_BUILD_TESTS=ON -DHQQ_BUILD_BENCH=ON -DHQQ_BUILD_EXAMPLES=ON
cd "${BUILD_DIR:-build}"
ctest --output-on-failure -j "$(nproc)"
