#!/usr/bin/env bash
# Tests and times the GEMM of several commits side by side on the GPU machine,
# from the binaries scripts/ladder_build.sh made on the dev machine (carried as
# .ladder/: no build on the GPU machine). For changes committed without a GPU
# at hand: which commit broke a test, and what each one did to the timings,
# all measured in one run on one GPU.
#
#   bash bench/ladder_run.sh [--kit DIR] [--commits a,b,...] [--tests head|all|none]
#                            [--no-bench] [--max-seconds S] [-- BENCH ARGS...]
#
#   --kit        the ladder (default .ladder; its MANIFEST lists the commits, oldest first)
#   --commits    only these (short shas, in MANIFEST order); default all
#   --tests      head (default): the newest commit's test_gemm_cuda, once as is and once
#                with stream-K forced (HQQ_GEMM_STREAMK=1); if either fails, every
#                other commit's, to find the first that fails. all: the newest's
#                both ways and every other commit's regardless. none.
#   --no-bench   tests only (no benchmark, no probes)
#   --probes "ARGS;ARGS"  probe_gemm_cuda configurations timed for every commit
#                that has the probe (default: --kernel tma at N x K x M =
#                28672x8192x16, 14336x4096x16, 4096x4096x16, 4096x4096x4096,
#                --iters 200); --probes none: none. The probe checks nothing:
#                it times experiments whose products are wrong too.
#   --max-seconds S: start no commit's benchmark after S seconds (default 480)
#   BENCH ARGS   for every bench_linear_cuda --gemm (default: --quick --shapes
#                4096x4096,14336x4096: about 40 s a commit on an H100)
#
# The benchmark runs the commits oldest first and then the oldest again, so the
# table shows how far the GPU drifted during the run. Results under $OUT (the
# device tool) or /tmp/ladder-out: ladder.log, tests-<sha>.log, gemm-<sha>.json,
# ladder.md (bench/ladder_table.py). A test binary is stopped after 150 s and a
# benchmark after 180 s (a hang of one commit does not take the call).
# Exit status: 0 all ran and passed; 1 a test or benchmark failed; 2 something
# needed is missing; 77 no GPU.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
kit=.ladder tests=head bench=1 max_seconds=480 only="" test_limit=150 bench_limit=180
probes="--n 28672 --k 8192 --m 16;--n 14336 --k 4096 --m 16;--n 4096 --k 4096 --m 16;--n 4096 --k 4096 --m 4096"
bench_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --kit) kit=$2; shift ;;
    --commits) only=$2; shift ;;
    --tests) tests=$2; shift ;;
    --no-bench) bench=0 ;;
    --probes) probes=$2; shift ;;
    --max-seconds) max_seconds=$2; shift ;;
    --) shift; bench_args=("$@"); break ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0"; exit 0 ;;
    *) echo "ladder_run: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[ ${#bench_args[@]} -gt 0 ] || bench_args=(--quick --shapes 4096x4096,14336x4096)
case "$tests" in head|all|none) ;; *) echo "ladder_run: --tests head|all|none" >&2; exit 2 ;; esac
out=${OUT:-/tmp/ladder-out}
mkdir -p "$out"
exec > >(tee -a "$out/ladder.log") 2>&1
t0=$(date +%s)
stamp() { echo "[ladder +$(( $(date +%s) - t0 ))s] $*"; }

[ -f "$kit/MANIFEST" ] || { echo "ladder_run: no $kit/MANIFEST (make it with scripts/ladder_build.sh, carry $kit)"; exit 2; }
commits=()
while read -r c; do
  [ -n "$c" ] || continue
  if [ -z "$only" ] || [[ ",$only," == *",$c,"* ]]; then commits+=("$c"); fi
done < "$kit/MANIFEST"
[ ${#commits[@]} -gt 0 ] || { echo "ladder_run: no commit of $kit/MANIFEST selected"; exit 2; }
head_c=${commits[-1]}

nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader 2>/dev/null ||
  { echo "ladder_run: no GPU (nvidia-smi)"; exit 77; }
# The binaries link fmt (carried in $kit/lib) and cuBLAS (the toolkit's).
kit_lib=$(cd "$kit" && pwd)/lib
export LD_LIBRARY_PATH="$kit_lib:/usr/local/cuda/lib64:/usr/local/cuda/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
bin=/tmp/ladder-bin
unxz_to() {  # unxz_to FILE.xz DEST: xz, else Python's lzma
  if command -v xz >/dev/null; then
    xz -dc "$1" > "$2"
  else
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$2"
  fi
}
for c in "${commits[@]}"; do
  mkdir -p "$bin/$c"
  for f in "$kit/$c"/*.xz; do
    unxz_to "$f" "$bin/$c/$(basename "$f" .xz)" && chmod +x "$bin/$c/$(basename "$f" .xz)" ||
      { echo "ladder_run: cannot unpack $f"; exit 2; }
  done
  stamp "$c: $(cut -c1-110 "$kit/$c/COMMIT")"
done
missing=$(ldd "$bin/$head_c/bench_linear_cuda" | grep "not found")
[ -z "$missing" ] || { echo "ladder_run: missing libraries: $missing"; exit 2; }

status=0
# run_tests SHA [sk]: the commit's GEMM tests, 0 when all passed (skips are
# counted, not failed: some tests are for other devices or ctest's own runs);
# sk: the CudaGemm tests with stream-K forced, as ctest's gemm_stream_k.
run_tests() {
  local c=$1 sk=${2:-}
  local log="$out/tests-$c${sk:+-sk}.log"
  local run=("$bin/$c/test_gemm_cuda")
  [ -n "$sk" ] && run=(env HQQ_GEMM_STREAMK=1 "$bin/$c/test_gemm_cuda" --gtest_filter='CudaGemm.*')
  timeout -k 10 "$test_limit" "${run[@]}" > "$log" 2>&1
  local rc=$?
  [ $rc = 124 ] && echo "ladder_run: $c's tests ran past ${test_limit}s (a hang?): stopped"
  local skipped
  skipped=$(grep -c "^\[  SKIPPED \]" "$log")
  stamp "tests $c${sk:+ (stream-K forced)}: exit $rc, $(grep -E '^\[  PASSED  \]|^\[  FAILED  \] [0-9]+ test' "$log" | tr '\n' ' ') skipped lines $skipped"
  grep -E "^\[  FAILED  \] [A-Z]" "$log" | head -20
  return $rc
}
if [ "$tests" != none ]; then
  head_ok=1
  run_tests "$head_c" || head_ok=0
  run_tests "$head_c" sk || head_ok=0
  [ $head_ok = 1 ] || status=1
  if [ $head_ok = 0 ] || [ "$tests" = all ]; then
    first_failing=""
    for c in "${commits[@]}"; do
      [ "$c" = "$head_c" ] && continue
      run_tests "$c" || { status=1; first_failing=${first_failing:-$c}; }
    done
    [ $head_ok = 1 ] || first_failing=${first_failing:-$head_c}
    [ -n "$first_failing" ] && stamp "the first commit (MANIFEST order) whose tests fail: $first_failing"
  fi
fi

if [ $bench = 1 ]; then
  order=("${commits[@]}")
  [ ${#commits[@]} -gt 1 ] && order+=("${commits[0]}")  # the oldest again: drift
  n=0
  for c in "${order[@]}"; do
    if [ $(( $(date +%s) - t0 )) -gt "$max_seconds" ]; then
      stamp "--max-seconds $max_seconds spent: no benchmark of $c"
      continue
    fi
    n=$((n + 1))
    json="$out/gemm-$c.json"
    [ $n -gt ${#commits[@]} ] && json="$out/gemm-$c-again.json"
    timeout -k 10 "$bench_limit" "$bin/$c/bench_linear_cuda" --gemm --commit "$c" --json "$json" "${bench_args[@]}" > "$out/bench-$c-$n.log" 2>&1
    rc=$?
    [ $rc = 124 ] && echo "ladder_run: $c's benchmark ran past ${bench_limit}s: stopped"
    stamp "bench $c: exit $rc ($(wc -l < "$out/bench-$c-$n.log") lines of output)"
    [ $rc = 0 ] || { status=1; tail -5 "$out/bench-$c-$n.log"; }
  done
  # The probes: each configuration of every commit that has the probe, one
  # after the other (a line of probes.tsv: commit, configuration, us per call
  # back to back, median us one call at a time).
  if [ "$probes" != none ]; then
    : > "$out/probes.tsv"
    IFS=';' read -r -a cfgs <<< "$probes"
    for c in "${commits[@]}"; do
      [ -x "$bin/$c/probe_gemm_cuda" ] || continue
      for cfg in "${cfgs[@]}"; do
        # shellcheck disable=SC2086
        line=$(timeout -k 5 120 "$bin/$c/probe_gemm_cuda" --kernel tma --iters 200 $cfg 2>&1 | tail -1)
        t=$(sed -n 's/.*: \([0-9.]*\) us per call back to back, median \([0-9.]*\) us.*/\1\t\2/p' <<< "$line")
        if [ -n "$t" ]; then
          printf '%s\t%s\t%s\n' "$c" "$cfg" "$t" >> "$out/probes.tsv"
        else
          status=1
          echo "ladder_run: probe $c $cfg: $line"
        fi
      done
      stamp "probes $c done"
    done
  fi
  python3 bench/ladder_table.py --kit "$kit" "$out" > "$out/ladder.md" && cat "$out/ladder.md" ||
    { status=1; echo "ladder_run: ladder_table.py failed"; }
fi
stamp "done, exit status $status"
exit $status
