#!/usr/bin/env bash
# Fetches, on a machine with network, what a GPU run (bench/gpu_check.sh) needs
# and the GPU machine cannot download (it reaches no network):
#
#   .pydeps/  the reference package hqq==0.2.8.post1 and termcolor (its one
#             import the GPU image lacks), pure Python, installed with
#             `pip install --no-deps --target` (DISABLE_CUDA=1: hqq's setup
#             must not try to build its optional CUDA extension);
#   .debs/    the Debian packages of the C++ build dependencies (Eigen, fmt,
#             nlohmann-json, CLI11, GoogleTest, Google Benchmark) as .deb
#             files; gpu_check.sh unpacks them into a private prefix there
#             (never into /) when the GPU machine lacks them.
#
# Both folders are added to .git/info/exclude, so they never get committed and
# travel only when named: give the device tool's `run` carry=[".pydeps", ".debs"].
# About 3 MB together. Run from anywhere; re-running refreshes both.
set -euo pipefail
cd "$(dirname "$0")/.."

HQQ_REF_VERSION=${HQQ_REF_VERSION:-0.2.8.post1}
TERMCOLOR_VERSION=${TERMCOLOR_VERSION:-3.3.0}
# Build dependencies (scripts/install_deps.sh's list less the toolchain, which the GPU image has).
DEV_PACKAGES=(libeigen3-dev libfmt-dev nlohmann-json3-dev libcli11-dev libgtest-dev libgmock-dev
              libbenchmark-dev)

# Keep both folders out of git (the device tool then sends them only when carried).
if git rev-parse --git-dir >/dev/null 2>&1; then
  exclude=$(git rev-parse --git-path info/exclude)
  mkdir -p "$(dirname "$exclude")"
  for p in /.pydeps/ /.debs/; do
    grep -qxF "$p" "$exclude" 2>/dev/null || echo "$p" >>"$exclude"
  done
fi

echo "== .pydeps: hqq==$HQQ_REF_VERSION termcolor==$TERMCOLOR_VERSION"
python=${PYTHON:-python3}
rm -rf .pydeps
DISABLE_CUDA=1 "$python" -m pip install -q --no-deps --no-compile --target .pydeps \
  "hqq==$HQQ_REF_VERSION" "termcolor==$TERMCOLOR_VERSION"
test -f .pydeps/hqq/core/quantize.py || { echo "fetch_gpu_deps: hqq did not install into .pydeps" >&2; exit 1; }

echo "== .debs: ${DEV_PACKAGES[*]} and their shared libraries"
command -v apt-get >/dev/null || { echo "fetch_gpu_deps: needs apt-get (a Debian/Ubuntu machine)" >&2; exit 1; }
# The shared libraries behind the -dev packages (libfmt9, libbenchmark1debian on Debian 12):
# the direct Depends of each -dev package that are lib*<digit> runtime packages.
runtime=()
for p in "${DEV_PACKAGES[@]}"; do
  while read -r dep; do
    case "$dep" in
      lib*-dev|libc6|libgcc-s1|libstdc++6) ;;
      lib*[0-9]*) runtime+=("$dep") ;;
    esac
  done < <(apt-cache depends --no-recommends --no-suggests --no-enhances "$p" 2>/dev/null |
           awk '$1 == "Depends:" && $2 !~ /^</ {print $2}')
done
mapfile -t all < <(printf '%s\n' "${DEV_PACKAGES[@]}" "${runtime[@]}" | sort -u)
rm -rf .debs && mkdir -p .debs
(cd .debs && apt-get download "${all[@]}")
echo "downloaded: $(cd .debs && ls)"
du -sh .pydeps .debs
echo "carry these in the device run: carry=[\".pydeps\", \".debs\"]"
