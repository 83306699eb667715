#!/usr/bin/env bash
# Nsight Compute counters of the TMA GEMM kernels (and the split-K reduction
# or stream-K fixup after them) for the shapes whose speed targets are
# missed, two of them also with stream-K forced, in one call:
#
#   bash bench/ncu_gemm.sh [--build-dir DIR] [--commit SHA] [--full]
#
# Profiles bench/probe_gemm_cuda (built into DIR, default build-gpu, if it is
# not there yet: bench/gpu_check.sh --gemm-only builds it) with
# `ncu --clock-control none` (shared/GPU.md: leave the clocks alone), the
# sections below (--full: `--set full`, slower), past the first forward()
# of each probe (a warm-up): skip 2 and profile 2 launches, that is the
# second forward's GEMM and reduction where K is split, else the GEMM of the
# third and fourth. Writes a digest of the lines that say where the time
# goes (duration, DRAM / L2 / SM / tensor pipe use, issue slots, stall
# reasons, occupancy, instructions executed, and those per consumer warp and
# k tile: the GEMM kernel's executed instructions over ceil(N / 16) x
# (K / 64) x ceil(M / BM) warp tiles, BM the probe's tile (16 at M = 16, else
# 256), to set beside the static count of scripts/sass_loop_stats.py; what
# is above it is barrier retries, the producer, the prologue and the
# epilogue) to bench/results/ncu-<date>-<gpu>-<commit>-gemm.txt
# and, when $OUT is set (the device tool), that file and the whole report
# text (...-gemm-full.txt) to $OUT.
#
# Exit status: 0 done, 1 a probe or ncu failed, 2 ncu or the probe missing
# (a machine whose runtime has no hardware counters says so and exits 2).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

build=build-gpu commit="" full=0
while [ $# -gt 0 ]; do
  case "$1" in
    --build-dir) build=$2; shift ;;
    --build-dir=*) build=${1#*=} ;;
    --commit) commit=$2; shift ;;
    --commit=*) commit=${1#*=} ;;
    --full) full=1 ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0"; exit 0 ;;
    *) echo "ncu_gemm: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

command -v ncu >/dev/null || { echo "ncu_gemm: ncu is not on the PATH" >&2; exit 2; }
probe=$build/bench/probe_gemm_cuda
if [ ! -x "$probe" ]; then
  [ -f "$build/CMakeCache.txt" ] || { echo "ncu_gemm: no build in $build (run bench/gpu_check.sh --gemm-only)" >&2; exit 2; }
  cmake --build "$build" -j "$(nproc)" --target probe_gemm_cuda || exit 1
fi
[ -n "$commit" ] || commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
# The GPU's short name as the other results files spell it (h100, h200).
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | sed 's/NVIDIA//' |
      grep -oE '\b[A-Za-z]{1,2}[0-9]{2,4}[A-Za-z]?\b' | head -1 | tr '[:upper:]' '[:lower:]')
result=bench/results/ncu-$(date +%F)-${gpu:-gpu}-$commit-gemm.txt

if [ $full = 1 ]; then
  what=(--set full)
else
  what=(--section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis
        --section SchedulerStats --section WarpStateStats --section LaunchStats --section Occupancy
        --section InstructionStats)
fi
# name | probe arguments | environment: the 16-row tile on the largest Llama
# shape and on a small one (split K: the reduction kernel follows), a
# 256-row tile that splits (M = 256) and one that does not (M = 4096); and
# two of them again with stream-K forced (its fixup kernel follows).
probes=(
  "m16-28672x8192|--n 28672 --k 8192 --m 16|"
  "m16-4096x4096|--n 4096 --k 4096 --m 16|"
  "m256-11008x4096|--n 11008 --k 4096 --m 256|"
  "m4096-4096x4096|--n 4096 --k 4096 --m 4096|"
  "m16-28672x8192-streamk|--n 28672 --k 8192 --m 16|HQQ_GEMM_STREAMK=1"
  "m256-11008x4096-streamk|--n 11008 --k 4096 --m 256|HQQ_GEMM_STREAMK=1"
)
digest='Duration|Elapsed Cycles|DRAM Throughput|L2 Cache Throughput|Compute \(SM\) Throughput|Tensor|Issue Slots Busy|Issued Ipc Active|No Eligible|Eligible Warps|Stall (Wait|Long Scoreboard|Barrier|GMMA|Math Pipe|Not Selected|No Instruction|Short Scoreboard|Branch|Dispatch|Sleeping)|Warp Cycles Per Issued|Registers Per Thread|Grid Size|Waves Per SM|Achieved Occupancy|Dynamic Shared Memory|Executed Instructions|Issued Instructions'

# The GEMM kernel's executed instructions per consumer warp and k tile (see
# the header): report text, then the probe's --n N --k K --m M.
per_tile() {
  local report=$1 n=0 k=0 m=0
  shift
  while [ $# -gt 1 ]; do
    case "$1" in
      --n) n=$2 ;;
      --k) k=$2 ;;
      --m) m=$2 ;;
    esac
    shift
  done
  awk -v n="$n" -v k="$k" -v m="$m" '
    /^  [A-Za-z_].*\(/ { gemm = ($0 ~ /gemm_tma_kernel/) }
    gemm && !done && /Executed Instructions / {
      v = $NF; gsub(",", "", v)
      bm = m <= 16 ? 16 : 256
      tiles = int((n + 15) / 16) * int(k / 64) * int((m + bm - 1) / bm)
      if (tiles > 0) printf "    Executed per consumer warp and k tile    %.1f  (%s instructions / %d warp tiles, BM %d)\n", v / tiles, v, tiles, bm
      done = 1
    }' "$report"
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
status=0
{
  echo "# Nsight Compute ($(ncu --version | tail -1)), $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1), $(date -u +%FT%TZ)"
  echo "# commit $commit; probe: $probe (4-bit g64, f16 x, --kernel tma); past the first forward() of each probe"
  echo "# command: [env] ncu --clock-control none ${what[*]} -k regex:'gemm_tma_kernel|gemm_reduce|gemm_streamk_fixup' --launch-skip 2 --launch-count 2 $probe <args> --kernel tma --iters 2"
} >"$tmp/head.txt"
for entry in "${probes[@]}"; do
  IFS='|' read -r name arg_text envs <<<"$entry"
  read -r -a args <<<"$arg_text"
  set_env=()
  [ -z "$envs" ] || set_env=("$envs")
  echo "==> $name: ${args[*]} ${envs}"
  if ! env "${set_env[@]}" ncu --clock-control none "${what[@]}" \
       -k regex:'gemm_tma_kernel|gemm_reduce|gemm_streamk_fixup' --launch-skip 2 \
       --launch-count 2 "$probe" "${args[@]}" --kernel tma --iters 2 >"$tmp/$name.txt" 2>&1; then
    echo "ncu_gemm: ncu failed on $name (tail below)" >&2
    tail -5 "$tmp/$name.txt" >&2
    grep -q "LibraryNotLoaded\|ERR_NVGPUCTRPERM\|not supported" "$tmp/$name.txt" && exit 2
    status=1
    continue
  fi
  {
    echo
    echo "==================== $name (${args[*]} ${envs})"
    grep -E "^  [A-Za-z_].*\(|$digest" "$tmp/$name.txt"
    per_tile "$tmp/$name.txt" "${args[@]}"
  } >>"$tmp/digest.txt"
  {
    echo
    echo "==================== $name (${args[*]} ${envs}): whole report"
    cat "$tmp/$name.txt"
  } >>"$tmp/full.txt"
done
[ -f "$tmp/digest.txt" ] || { echo "ncu_gemm: nothing profiled" >&2; exit 1; }
cat "$tmp/head.txt" "$tmp/digest.txt" >"$result"
cat "$tmp/digest.txt"
echo "ncu_gemm: digest in $result"
if [ -n "${OUT:-}" ]; then
  cp "$result" "$OUT/"
  cat "$tmp/head.txt" "$tmp/full.txt" >"$OUT/$(basename "$result" .txt)-full.txt"
fi
exit $status
