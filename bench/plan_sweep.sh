#!/usr/bin/env bash
# The GEMM plan's alternatives side by side on one GPU: for each probe shape
# of the missed targets, bench/probe_gemm_cuda under the plan's own choice
# and under forced tiles / split counts / stream-K (the HQQ_GEMM_TILE /
# HQQ_GEMM_SPLITS / HQQ_GEMM_STREAMK knobs of cuda/gemm.cu), each line with
# the plan it ran (HQQ_GEMM_PLAN=1):
#
#   bash bench/plan_sweep.sh [--build-dir DIR] [--iters N]
#
# A quick A/B for the planner (does the split-K reduction pay at M = 16, the
# 128- or the 256-row tile at M = 256, stream-K or the splits), not the
# benchmark: the probe times
# one weight (L2-warm where it fits in L2: 4096x4096 4-bit is 9 MB) and
# calls back to back; bench_linear_cuda (gpu_check.sh) is the benchmark.
# Writes the lines to stdout and, when $OUT is set, to $OUT/plan-sweep.txt.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

build=build-gpu iters=50
while [ $# -gt 0 ]; do
  case "$1" in
    --build-dir) build=$2; shift ;;
    --build-dir=*) build=${1#*=} ;;
    --iters) iters=$2; shift ;;
    --iters=*) iters=${1#*=} ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0"; exit 0 ;;
    *) echo "plan_sweep: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
probe=$build/bench/probe_gemm_cuda
[ -x "$probe" ] || { echo "plan_sweep: no $probe (bench/gpu_check.sh --gemm-only builds it)" >&2; exit 2; }

# shape | the knob settings to try beside the plan's own ("tile:splits:sk",
# 0 = the plan's; sk 1 = stream-K)
sweeps=(
  "--n 4096 --k 4096 --m 16|0:1:0 0:2:0 0:4:0 0:8:0 32:0:0 0:0:1"
  "--n 28672 --k 8192 --m 16|0:1:0 0:2:0 0:3:0 0:5:0 0:0:1"
  "--n 4096 --k 14336 --m 16|0:0:1"
  "--n 14336 --k 4096 --m 32|0:0:1"
  "--n 11008 --k 4096 --m 256|0:1:0 0:2:0 0:4:0 128:0:0 128:1:0 0:0:1 128:0:1"
  "--n 4096 --k 4096 --m 256|0:1:0 0:2:0 128:0:0 128:1:0 0:0:1"
  "--n 14336 --k 4096 --m 1024|0:0:1"
  "--n 4096 --k 4096 --m 4096|128:0:0 0:0:1"
)
failed=$(mktemp)
trap 'rm -f "$failed"' EXIT
run() {  # tile splits stream_k args...
  local tile=$1 splits=$2 sk=$3
  shift 3
  local env=(HQQ_GEMM_PLAN=1)
  [ "$tile" = 0 ] || env+=("HQQ_GEMM_TILE=$tile")
  [ "$splits" = 0 ] || env+=("HQQ_GEMM_SPLITS=$splits")
  [ "$sk" = 0 ] || env+=("HQQ_GEMM_STREAMK=1")
  local out
  if ! out=$(env "${env[@]}" "$probe" "$@" --kernel tma --iters "$iters" 2>&1); then
    echo "  FAILED (${env[*]}): $(echo "$out" | tail -1)"
    echo x >>"$failed"
    return
  fi
  local plan time
  plan=$(echo "$out" | grep -m1 'hqq gemm plan:' | sed 's/.*hqq gemm plan: //')
  time=$(echo "$out" | grep -oE '[0-9.]+ us per call back to back' | head -1)
  printf '  %-44s %-26s %s\n' "${env[*]:1}" "$time" "$plan"
}
dest=/dev/null
[ -n "${OUT:-}" ] && dest=$OUT/plan-sweep.txt
: >"$dest"
for entry in "${sweeps[@]}"; do
  read -r -a args <<<"${entry%%|*}"
  echo "${args[*]}:" | tee -a "$dest"
  run 0 0 0 "${args[@]}" | tee -a "$dest"
  for ts in ${entry#*|}; do
    IFS=: read -r tile splits sk <<<"$ts"
    run "$tile" "$splits" "$sk" "${args[@]}" | tee -a "$dest"
  done
done
[ -s "$failed" ] && exit 1
exit 0
