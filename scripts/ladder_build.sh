#!/usr/bin/env bash
# Builds the GPU GEMM binaries of several commits on this machine (no GPU
# needed: nvcc compiles and links), so that one device run can test and time
# all of them side by side (bench/ladder_run.sh). Made for changes that were
# committed without a GPU at hand: the run tells which commit broke a test or
# moved a timing, without a build per commit on the GPU machine.
#
#   bash scripts/ladder_build.sh [--out DIR] [--work DIR] [--jobs N] [--append]
#                                [--probes last|all|none] SHA...
#
# For each SHA, in the order given (oldest first keeps the rebuilds small),
# one worktree is checked out at it (--work, default /tmp/hqq-ladder) and one
# build directory there is rebuilt incrementally (Release, CUDA for sm_90 /
# sm_90a, tests and benchmarks on), and into DIR/<short sha>/ go, xz-compressed:
#   test_gemm_cuda     the GEMM tests (gtest)
#   bench_linear_cuda  the QuantizedLinear benchmark (--gemm: the GEMM sweep)
#   probe_gemm_cuda    one forward() configuration, timed (--probes: the last SHA
#                      named only, the default, or all, or none; the ncu target;
#                      the kit must fit the device tool's 64 MiB carry)
# plus COMMIT (the full sha and subject). DIR/lib/ gets the shared libraries
# the binaries need that a GPU machine may lack (fmt), DIR/MANIFEST the list
# in order (--append: the commits already there keep their places, new ones
# go after them, e.g. experiments off the newest). DIR defaults to .ladder/
# (git-ignored; name it in the device run's carry list).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
out=$repo/.ladder work=/tmp/hqq-ladder jobs=$(nproc) append=0 probes=last
shas=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$(realpath -m "$2"); shift ;;
    --work) work=$(realpath -m "$2"); shift ;;
    --jobs) jobs=$2; shift ;;
    --append) append=1 ;;
    --probes) probes=$2; shift ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0"; exit 0 ;;
    -*) echo "ladder_build: unknown option $1" >&2; exit 2 ;;
    *) shas+=("$1") ;;
  esac
  shift
done
[ ${#shas[@]} -gt 0 ] || { echo "ladder_build: name at least one commit" >&2; exit 2; }
case "$probes" in last|all|none) ;; *) echo "ladder_build: --probes last|all|none" >&2; exit 2 ;; esac
nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
[ -x "$nvcc" ] || { echo "ladder_build: no nvcc" >&2; exit 2; }
command -v xz >/dev/null || { echo "ladder_build: no xz" >&2; exit 2; }

src=$work/src build=$work/build
if [ ! -e "$src/.git" ]; then
  git worktree add --detach "$src" "${shas[0]}" >/dev/null
fi
mkdir -p "$out/lib"
: > "$out/MANIFEST.new"
[ $append = 1 ] && [ -f "$out/MANIFEST" ] && cp "$out/MANIFEST" "$out/MANIFEST.new"
for sha in "${shas[@]}"; do
  full=$(git rev-parse --verify "$sha^{commit}")
  short=${full:0:7}
  echo "[ladder_build $(date +%T)] $short: $(git log -1 --format=%s "$full" | cut -c1-100)"
  git -C "$src" checkout -q --detach "$full"
  cmake -S "$src" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DHQQ_CUDA=ON \
    -DCMAKE_CUDA_COMPILER="$nvcc" -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DHQQ_BUILD_TESTS=ON -DHQQ_BUILD_BENCH=ON -DHQQ_BUILD_EXAMPLES=OFF > "$work/configure-$short.log"
  targets=(test_gemm_cuda bench_linear_cuda)
  if [ "$probes" = all ] || { [ "$probes" = last ] && [ "$sha" = "${shas[-1]}" ]; }; then
    grep -q probe_gemm_cuda "$src/bench/CMakeLists.txt" && targets+=(probe_gemm_cuda)
  fi
  args=()
  for t in "${targets[@]}"; do args+=(--target "$t"); done
  cmake --build "$build" -j "$jobs" "${args[@]}" > "$work/build-$short.log" 2>&1 ||
    { tail -30 "$work/build-$short.log"; echo "ladder_build: $short did not build" >&2; exit 1; }
  rm -rf "$out/$short"
  mkdir -p "$out/$short"
  for t in "${targets[@]}"; do
    f=$(find "$build" -name "$t" -type f -perm -u+x | head -1)
    [ -n "$f" ] || { echo "ladder_build: $short: no $t built" >&2; exit 1; }
    strip -o "$out/$short/$t" "$f"
    xz -T"$jobs" -6 -f "$out/$short/$t"
  done
  git log -1 --format='%H %s' "$full" > "$out/$short/COMMIT"
  grep -qxF "$short" "$out/MANIFEST.new" || echo "$short" >> "$out/MANIFEST.new"
  echo "[ladder_build $(date +%T)] $short: $(du -sh "$out/$short" | cut -f1)"
done
# Shared libraries outside the CUDA toolkit and libc/libstdc++/libgomp that the binaries link.
for lib in $(ldd "$(find "$build" -name bench_linear_cuda -type f | head -1)" | awk '/libfmt/ {print $3}'); do
  cp -L "$lib" "$out/lib/"
done
mv "$out/MANIFEST.new" "$out/MANIFEST"
echo "[ladder_build $(date +%T)] done: $(du -sh "$out" | cut -f1) in $out"
