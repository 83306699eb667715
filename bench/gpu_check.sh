#!/usr/bin/env bash
# One whole GPU run (shared/GPU.md), from the repository root of the GPU machine:
#   1. the C++ build dependencies: used from the system when present, else
#      unpacked from the carried .debs/ into a private prefix (the machine has
#      no network; bench/fetch_gpu_deps.sh makes .debs/ and .pydeps/ elsewhere);
#   2. configure + build with CUDA for sm_90 into build-gpu/ (Release, tests,
#      benchmarks and examples on);
#   3. ctest: the `gpu` label first, then everything else; prints the counts,
#      and fails the run if any gpu-labelled test was skipped or none exists;
#   4. bench/compare_reference_gpu.py: runs build-gpu/bench/bench_cuda and the
#      reference hqq (from the carried .pydeps/) and the peers on the same GPU;
#      then bench/compare_linear_gpu.py: runs build-gpu/bench/bench_linear_cuda
#      (QuantizedLinear, the copy ceiling, cuBLAS fp16) and the PyTorch peers
#      (torch.matmul fp16, int4 tinygemm) on the same GPU;
#   5. results: bench/results/gpu-<date>-<gpu>-<commit>.{json,md} and
#      gpu-linear-<date>-<gpu>-<commit>.{json,md} and, when $OUT is set (the
#      device tool), the same files plus logs under $OUT.
#
#   bash bench/gpu_check.sh [--quick] [--commit SHA] [--jobs N] [--build-dir DIR]
#                           [--skip-build] [--skip-tests] [--skip-bench]
#                           [--skip-linear] [--linear-only] [--gemm-only]
#   --skip-bench: no benchmark at all; --skip-linear: not the QuantizedLinear one;
#   --linear-only: no tests and only the QuantizedLinear benchmark (after the build);
#   --gemm-only: the tensor-core GEMM work in one short call: builds only what it
#   needs, runs test_gemm_cuda and test_linear_cuda (one process each; the GEMM
#   tests a second time with stream-K forced, HQQ_GEMM_STREAMK=1), counts the
#   mma instructions in the GEMM's SASS, and runs the GEMM benchmark
#   (compare_linear_gpu.py --gemm: bench_linear_cuda --gemm and the PyTorch peers);
#   it also builds probe_gemm_cuda for bench/ncu_gemm.sh (the counters, a second call).
#
# Through the device tool (see bench/README.md): on the dev machine run
# bench/fetch_gpu_deps.sh once, then
#   run(command="bash bench/gpu_check.sh --commit <sha>", carry=[".pydeps", ".debs"], timeout_s=600)
# and copy the returned gpu-*.json/.md and gpu-linear-*.json/.md into bench/results/.
#
# Exit status: 0 when the build, every test and the benchmarks passed (every
# QuantizedLinear configuration correct; missed speed targets are reported,
# not failed) and no gpu test was skipped; 1 otherwise; 2 when something
# needed is missing.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
repo=$(pwd)
t0=$(date +%s)

quick=0 commit="" jobs=$(nproc) skip_build=0 skip_tests=0 skip_bench=0 skip_linear=0 gemm_only=0 build="build-gpu"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --commit) commit=$2; shift ;;
    --commit=*) commit=${1#*=} ;;
    --jobs) jobs=$2; shift ;;
    --jobs=*) jobs=${1#*=} ;;
    --build-dir) build=$2; shift ;;
    --build-dir=*) build=${1#*=} ;;
    --skip-build) skip_build=1 ;;
    --skip-tests) skip_tests=1 ;;
    --skip-bench) skip_bench=1; skip_linear=1 ;;
    --skip-linear) skip_linear=1 ;;
    --linear-only) skip_tests=1; skip_bench=1; skip_linear=0 ;;
    --gemm-only) gemm_only=1; skip_tests=1; skip_bench=1; skip_linear=1 ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

out=${OUT:-}
logdir=$(mktemp -d /tmp/gpu_check.XXXXXX)
log=$logdir/gpu_check.log
if [ -n "$out" ]; then
  mkdir -p "$out"
  log=$out/gpu_check.log
fi
# Everything this script prints also goes to the log ($OUT/gpu_check.log under the device tool).
exec > >(tee -a "$log") 2>&1

stamp() { echo "[gpu_check +$(( $(date +%s) - t0 ))s] $*"; }
status=0
fail() { echo "gpu_check: FAIL: $*"; status=1; }
finish() {
  if [ -n "$out" ]; then
    cp "$logdir"/ctest-*.xml "$out/" 2>/dev/null || true
  fi
  stamp "done, exit status $1"
  exit "$1"
}
need() {  # need WHAT HINT: exit 2 with a clear message
  echo "gpu_check: MISSING: $1"
  echo "  $2"
  finish 2
}

# ---------------------------------------------------------------- 0. the machine
if [ -z "$commit" ]; then
  commit=$(git rev-parse --short HEAD 2>/dev/null || true)
  commit=${commit:-${HQQ_COMMIT:-nocommit}}
fi
stamp "hqq-cpp GPU check, commit $commit, $jobs jobs$([ $quick = 1 ] && echo ', --quick')"
grep -h PRETTY_NAME /etc/os-release 2>/dev/null || true
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>/dev/null ||
  echo "(nvidia-smi not available)"

nvcc=$(command -v nvcc || true)
[ -z "$nvcc" ] && [ -x /usr/local/cuda/bin/nvcc ] && nvcc=/usr/local/cuda/bin/nvcc
[ -n "$nvcc" ] || need "nvcc" "the CUDA toolkit's compiler is not on PATH nor in /usr/local/cuda/bin"
cxx=$(command -v g++ || command -v c++ || true)
[ -n "$cxx" ] || need "a C++ compiler" "no g++/c++ on PATH"
command -v cmake >/dev/null || need "cmake" "no cmake on PATH"
generator=(-G Ninja)
command -v ninja >/dev/null || generator=(-G "Unix Makefiles")
python=${PYTHON:-python3}
echo "nvcc: $("$nvcc" --version | tail -1)"
echo "c++:  $("$cxx" --version | head -1)"
echo "cmake: $(cmake --version | head -1); generator ${generator[*]:1}"
echo "python: $("$python" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1)"

# ---------------------------------------------------------------- 1. dependencies
# A dependency counts as present when its marker file exists under one of the prefixes.
prefix=/tmp/hqq-deps
multiarch=$("$cxx" -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
declare -A marker=(
  [Eigen3]=include/eigen3/Eigen/Core
  [fmt]=lib/$multiarch/cmake/fmt/fmt-config.cmake
  [nlohmann_json]=include/nlohmann/json.hpp
  [CLI11]=include/CLI/CLI.hpp
  [GTest]=include/gtest/gtest.h
  [GMock]=include/gmock/gmock.h
  [benchmark]=include/benchmark/benchmark.h
)
missing_deps() {
  local name m p found lack=()
  for name in "${!marker[@]}"; do
    m=${marker[$name]}
    found=0
    for p in /usr /usr/local "$prefix/usr"; do
      [ -e "$p/$m" ] && found=1 && break
    done
    # fmt may install its CMake files elsewhere (lib/, lib64/): the header is enough to try.
    if [ $found = 0 ] && [ "$name" = fmt ]; then
      for p in /usr /usr/local "$prefix/usr"; do [ -e "$p/include/fmt/format.h" ] && found=1; done
    fi
    [ $found = 1 ] || lack+=("$name")
  done
  echo "${lack[*]}"
}
unpack_deb() {  # unpack_deb FILE DEST: never into /
  if command -v dpkg-deb >/dev/null; then
    dpkg-deb -x "$1" "$2"
  else
    local d
    d=$(mktemp -d)
    (cd "$d" && ar x "$1" && tar -xf data.tar.* -C "$2")
    rm -rf "$d"
  fi
}
use_prefix() {  # the prefix goes first; the environment also reaches install_consumer's own cmake
  case ":${CMAKE_PREFIX_PATH:-}:" in *":$prefix/usr:"*) return ;; esac
  export CMAKE_PREFIX_PATH="$prefix/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  export LD_LIBRARY_PATH="$prefix/usr/lib/$multiarch${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}
unpack_debs() {  # all carried .deb files into $prefix; 1 when there are none
  compgen -G ".debs/*.deb" >/dev/null || return 1
  stamp "unpacking the carried .debs/ into $prefix"
  mkdir -p "$prefix"
  for f in .debs/*.deb; do unpack_deb "$repo/$f" "$prefix" || need "$f" "could not unpack it"; done
  use_prefix
}
if [ $skip_build = 0 ]; then
  miss=$(missing_deps)
  if [ -n "$miss" ]; then
    stamp "not on this machine: $miss"
    unpack_debs || need "$miss" "the GPU machine has no network: run bench/fetch_gpu_deps.sh on the dev machine and name .debs (and .pydeps) in the device run's carry list"
    miss=$(missing_deps)
    [ -z "$miss" ] || need "$miss" "not in the carried .debs/ either: re-run bench/fetch_gpu_deps.sh"
  else
    stamp "build dependencies: all on the system"
  fi
fi
# A prefix unpacked by an earlier call on a warm machine is used again.
[ -d "$prefix/usr" ] && use_prefix

# The reference package (pure Python) travels in .pydeps/.
if [ -d .pydeps ]; then
  export PYTHONPATH="$repo/.pydeps${PYTHONPATH:+:$PYTHONPATH}"
fi
have_ref=0
if "$python" -c "import torch, hqq.core.quantize" >/dev/null 2>&1; then
  have_ref=1
  export HQQ_REFERENCE_PYTHON=$python  # tests/interop_python.sh
  echo "reference: hqq $("$python" -c 'import importlib.metadata as m; print(m.version("hqq"))')"
else
  echo "gpu_check: WARNING: the reference hqq is not importable (carry .pydeps, made by bench/fetch_gpu_deps.sh);"
  echo "  python_interop skips and the benchmark runs without the reference"
fi

# ---------------------------------------------------------------- 2. build
if [ $skip_build = 0 ]; then
  stamp "configure $build (CUDA, sm_90, Release)"
  # CMake 4 refuses package config files that declare compatibility with CMake < 3.5.
  policy=()
  [ "$(cmake --version | awk 'NR == 1 {split($3, v, "."); print v[1]}')" -ge 4 ] &&
    policy=(-DCMAKE_POLICY_VERSION_MINIMUM=3.5)
  configure() {
    cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DHQQ_CUDA=ON \
      -DCMAKE_CUDA_COMPILER="$nvcc" -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_CXX_COMPILER="$cxx" \
      -DHQQ_BUILD_TESTS=ON -DHQQ_BUILD_BENCH=ON -DHQQ_BUILD_EXAMPLES=ON "${policy[@]}"
  }
  if ! configure; then
    # The system's copy of a dependency may be incomplete (headers without CMake files):
    # once more with the carried packages first.
    if [ ! -d "$prefix/usr" ] && unpack_debs; then
      stamp "configure again with the carried packages"
      rm -f "$build/CMakeCache.txt"
      configure || { fail "cmake configure"; finish 1; }
    else
      fail "cmake configure"
      finish 1
    fi
  fi
  stamp "build with $jobs jobs"
  targets=()
  [ $gemm_only = 1 ] && targets=(--target hqq_cuda test_gemm_cuda test_linear_cuda test_gemm_layout bench_linear_cuda probe_gemm_cuda)
  cmake --build "$build" -j "$jobs" "${targets[@]}" || { fail "build"; finish 1; }
  stamp "built"
fi
[ -d "$build" ] || need "$build/" "nothing built yet: run without --skip-build"

# ---------------------------------------------------------------- 3. tests
tests_json=$logdir/tests.json
echo '{}' >"$tests_json"
if [ $skip_tests = 0 ]; then
  n_gpu=$(cd "$build" && ctest -N -L gpu | awk '/^Total Tests:/ {print $3}')
  stamp "ctest: ${n_gpu:-0} tests carry the label gpu"
  (cd "$build" && ctest --output-on-failure -j "$jobs" --timeout 600 -L gpu --output-junit "$logdir/ctest-gpu.xml")
  rc_gpu=$?
  stamp "ctest: the other tests"
  (cd "$build" && ctest --output-on-failure -j "$jobs" --timeout 600 -LE gpu --output-junit "$logdir/ctest-other.xml")
  rc_other=$?
  # Counts from the JUnit files (ctest >= 3.21): tests, failures, skipped, and the names.
  "$python" - "$logdir" "$tests_json" "$rc_gpu" "$rc_other" <<'EOF'
import json, os, sys
import xml.etree.ElementTree as ET
logdir, out, rc_gpu, rc_other = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
res = {}
for part in ("gpu", "other"):
    path = os.path.join(logdir, f"ctest-{part}.xml")
    d = {"exit_code": rc_gpu if part == "gpu" else rc_other, "total": 0, "passed": 0, "failed": [], "skipped": []}
    if os.path.exists(path):
        for tc in ET.parse(path).getroot().iter("testcase"):
            name, st = tc.get("name"), tc.get("status", "")
            d["total"] += 1
            if tc.find("skipped") is not None or st in ("notrun", "disabled"):
                d["skipped"].append(name)
            elif tc.find("failure") is not None or tc.find("error") is not None or st == "fail":
                d["failed"].append(name)
            else:
                d["passed"] += 1
    else:
        d["junit_missing"] = True
    res[part] = d
json.dump(res, open(out, "w"), indent=1)
for part, d in res.items():
    print(f"ctest {part:5}: {d['total']} tests, {d['passed']} passed, {len(d['failed'])} failed, "
          f"{len(d['skipped'])} skipped" + (" (no JUnit file: ctest < 3.21?)" if d.get("junit_missing") else ""))
    for n in d["skipped"]:
        print(f"  skipped: {n}")
    for n in d["failed"]:
        print(f"  FAILED:  {n}")
EOF
  [ "${n_gpu:-0}" -gt 0 ] || fail "no test carries the label gpu"
  [ $rc_gpu = 0 ] || fail "gpu-labelled tests (ctest exit $rc_gpu)"
  [ $rc_other = 0 ] || fail "other tests (ctest exit $rc_other)"
  # The *NoDevice tests check the errors of a machine without a device: they skip on a GPU machine.
  skipped_gpu=$("$python" -c "import json,sys; print(len([n for n in json.load(open(sys.argv[1]))['gpu']['skipped'] if 'NoDevice.' not in n]))" "$tests_json")
  [ "${skipped_gpu:-0}" = 0 ] || fail "$skipped_gpu gpu-labelled tests were SKIPPED on a GPU machine"
fi

# ---------------------------------------------------------------- 4. benchmarks
out_dirs=(--out-dir bench/results)
[ -n "$out" ] && out_dirs+=(--out-dir "$out")
if [ $skip_bench = 0 ]; then
  bench_bin=$build/bench/bench_cuda
  [ -x "$bench_bin" ] || { fail "$bench_bin was not built"; finish 1; }
  bench_quick=()
  elapsed=$(( $(date +%s) - t0 ))
  if [ $quick = 1 ] || [ $elapsed -gt 300 ]; then
    bench_quick=(--quick)
    [ $quick = 1 ] || stamp "already ${elapsed}s in: benchmarks with --quick to stay inside a 10-minute call"
  fi
  if [ $have_ref = 1 ]; then
    stamp "benchmarks: bench_cuda + reference hqq + peers"
    PYTHONUNBUFFERED=1 "$python" bench/compare_reference_gpu.py --bin "$bench_bin" --commit "$commit" \
      --tests-json "$tests_json" "${out_dirs[@]}" "${bench_quick[@]}" || fail "compare_reference_gpu.py"
  else
    stamp "benchmarks: bench_cuda alone (no reference)"
    mkdir -p bench/results
    gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 |
          sed -E 's/NVIDIA //; s/^([A-Za-z]+[0-9]+).*/\1/' | tr 'A-Z ' 'a-z-')
    name=gpu-$(date +%F)-${gpu:-gpu}-$commit-bench_cuda.json
    "$bench_bin" --json "bench/results/$name" --commit "$commit" "${bench_quick[@]}" || fail "bench_cuda"
    [ -n "$out" ] && cp "bench/results/$name" "$out/" 2>/dev/null
  fi
fi

# QuantizedLinear (about 2 minutes on an H100): bench_linear_cuda and the PyTorch peers.
# The device tool stops a call at 600 s: the script gets what is left up to 570 s
# (--max-seconds; configurations it cannot start are recorded as not run, and fail the
# run), with --quick past 360 s. Its raw JSON also goes to $OUT as it is written.
if [ $skip_linear = 0 ]; then
  lin_bin=$build/bench/bench_linear_cuda
  elapsed=$(( $(date +%s) - t0 ))
  lin_budget=$(( 570 - elapsed ))
  lin_quick=()
  if [ $quick = 1 ] || [ $elapsed -gt 360 ]; then
    lin_quick=(--quick)
    [ $quick = 1 ] || stamp "already ${elapsed}s in: the QuantizedLinear benchmark with --quick"
  fi
  lin_raw=()
  [ -n "$out" ] && lin_raw=(--raw-dir "$out")
  if [ ! -x "$lin_bin" ]; then
    fail "$lin_bin was not built"
  elif [ $lin_budget -lt 90 ]; then
    fail "QuantizedLinear benchmark not run: already ${elapsed}s in (run again with --skip-build --linear-only on the warm machine)"
  else
    stamp "benchmarks: bench_linear_cuda + PyTorch peers (compare_linear_gpu.py, at most ${lin_budget}s)"
    PYTHONUNBUFFERED=1 "$python" bench/compare_linear_gpu.py --bin "$lin_bin" --commit "$commit" \
      --max-seconds "$lin_budget" "${out_dirs[@]}" "${lin_raw[@]}" "${lin_quick[@]}" ||
      fail "compare_linear_gpu.py (QuantizedLinear: a configuration FAILED, errored or was not run)"
  fi
fi

# ---------------------------------------------------------------- 4b. tensor-core GEMM (--gemm-only)
if [ $gemm_only = 1 ]; then
  # name|executable|filter|environment: the GEMM tests once more with stream-K
  # forced (the plan leaves it off unless asked; the ctest gemm_stream_k).
  for spec in "test_gemm_layout|test_gemm_layout|*|" "test_gemm_cuda|test_gemm_cuda|*|" \
              "test_linear_cuda|test_linear_cuda|*|" \
              "test_gemm_cuda_stream_k|test_gemm_cuda|CudaGemm.*|HQQ_GEMM_STREAMK=1"; do
    IFS='|' read -r t exe filter envs <<<"$spec"
    stamp "tests: $t"
    # One process for the whole executable; a skipped test on this GPU machine is a failure
    # (except the *NoDevice ones, which check the errors of a machine without a device).
    set_env=()
    [ -z "$envs" ] || set_env=("$envs")
    env "${set_env[@]}" "$build/tests/$exe" --gtest_brief=1 --gtest_filter="$filter" \
      --gtest_output="xml:$logdir/$t.xml" || fail "$t"
    "$python" - "$logdir/$t.xml" "$t" <<'EOF2' || fail "$t: gpu tests skipped"
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
cases = list(root.iter("testcase"))
skipped = [c.get("classname") + "." + c.get("name") for c in cases
           if c.find("skipped") is not None or c.get("result") == "skipped"]
bad = [n for n in skipped if "NoDevice" not in n and "OlderDevice" not in n]
print(f"{sys.argv[2]}: {len(cases)} tests, {len(skipped)} skipped ({len(bad)} unexpected)")
for n in bad: print("  SKIPPED:", n)
sys.exit(1 if bad else 0)
EOF2
    [ -n "$out" ] && cp "$logdir/$t.xml" "$out/" 2>/dev/null
  done
  # The instructions each GEMM object holds: HMMA (mma.sync), HGMMA (wgmma), local memory;
  # for the TMA objects also the TMA loads (UTMALDG), bulk copies (UBLKCP) and the full
  # wgmma waits (WARPGROUP.DEPBAR.LE gsb0, 0x0: one per round when nothing is serialised).
  found=0
  for obj in $(find "$build" -name 'gemm.cu.o' -o -name 'gemm_tma_*.cu.o' | sort); do
    command -v cuobjdump >/dev/null || break
    found=1
    sass=$logdir/$(basename "$obj").sass
    cuobjdump -sass "$obj" >"$sass" 2>&1
    echo "SASS of $obj: $(grep -c 'Function :' "$sass") kernels; HMMA $(grep -c 'HMMA' "$sass"), HGMMA $(grep -c 'HGMMA' "$sass"), local memory (LDL/STL) $(grep -cE 'LDL|STL' "$sass"), UTMALDG $(grep -c 'UTMALDG' "$sass"), UBLKCP $(grep -c 'UBLKCP' "$sass"), full wgmma waits $(grep -c 'DEPBAR.LE gsb0, 0x0' "$sass")"
  done
  [ $found = 1 ] || echo "(cuobjdump or the GEMM objects not found: no SASS count)"
  # The static SASS checks CI runs (no serialised wgmmas, TMA, no spills), on this build.
  sass_rc=0; "$python" scripts/sass_check.py "$build" || sass_rc=$?
  [ $sass_rc = 0 ] || [ $sass_rc = 77 ] || fail "sass_check"
  # Consumer instructions per k tile (4-bit f16/f16), the static measure beside the timings.
  tma_objs=$(find "$build" -name 'gemm_tma_*.cu.o' | sort)
  [ -z "$tma_objs" ] || "$python" scripts/sass_loop_stats.py $tma_objs || true
fi
if [ $gemm_only = 1 ] && [ "${HQQ_GEMM_BENCH:-1}" = 1 ]; then
  stamp "benchmarks: bench_linear_cuda --gemm + PyTorch peers (compare_linear_gpu.py --gemm)"
  elapsed=$(( $(date +%s) - t0 ))
  lin_raw=()
  [ -n "$out" ] && lin_raw=(--raw-dir "$out")
  PYTHONUNBUFFERED=1 "$python" bench/compare_linear_gpu.py --gemm --bin "$build/bench/bench_linear_cuda" \
    --commit "$commit" --max-seconds $(( 570 - elapsed )) "${out_dirs[@]}" "${lin_raw[@]}" ||
    fail "compare_linear_gpu.py --gemm"
fi

# ---------------------------------------------------------------- 5. summary
if [ -f "$tests_json" ] && [ $skip_tests = 0 ]; then
  "$python" -c "
import json, sys
d = json.load(open(sys.argv[1]))
for k, v in d.items():
    print(f'tests {k}: {v[\"passed\"]} passed, {len(v[\"failed\"])} failed, {len(v[\"skipped\"])} skipped')
" "$tests_json"
fi
if [ $status = 0 ]; then stamp "ALL OK"; else stamp "SOMETHING FAILED (see the FAIL lines above)"; fi
finish $status
