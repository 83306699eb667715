#!/usr/bin/env python3
"""QuantizedLinear on the GPU beside its peers: one run, one GPU, one result file.

The script

  (a) runs our `bench_linear_cuda` (JSON): the device copy ceiling, cuBLAS
      fp16 from C++ (cublasGemmEx), and hqq::QuantizedLinear (backend "cuda",
      f16 activations) on the Llama shapes N x K = 4096x4096, 11008x4096,
      4096x11008, 14336x4096, 4096x14336, 28672x8192, 8192x28672: nbits
      8/4/3/2/1 at group 64 and 4-bit at groups 32/128 with M = 1, and 4-bit
      g64 with M = 1, 2, 4, 8, 16; every configuration checked against a CPU
      QuantizedLinear first (a wrong one is FAILED, never a speed);
  (b) measures the PyTorch peers on the same GPU, right after: a torch
      device-to-device copy (1 GiB, read + write bytes/s), cuBLAS fp16
      through `torch.matmul(x, W.t())` and PyTorch's int4 tinygemm
      `torch.ops.aten._weight_int4pack_mm(x_bf16, W_packed, group, scales_and_zeros)`
      (groups 64 for every M, 32 and 128 at M = 1), with CUDA events,
      warm-up, medians, calls rotating among copies of the weight totalling
      >= 3x the L2, each timed eagerly and replayed from a CUDA graph
      (the graph is the headline when the capture works, as for ours);
      a peer this torch lacks, or whose signature differs, is recorded with
      its error instead of stopping the run;
  (c) merges both into <out-dir>/gpu-linear-<YYYY-MM-DD>-<gpu>-<commit>.{json,md}
      for every --out-dir (a -2, -3, ... suffix when that name is taken):
      per row GB/s of weight + metadata bytes (QuantizedLinear::weight_bytes();
      peers: their own weight bytes, fp16 = 2 N K), fraction of the copy
      measured by bench_linear_cuda, speed-up over cuBLAS fp16 (the faster of
      the C++ cuBLAS and torch.matmul) and over tinygemm (same shape and M;
      same group for 4-bit, g64 otherwise), and the DESIGN.md section 6
      targets as PASS / MISS / FAILED: 4-bit g64 M=1 >= 80 % of the copy and
      >= 3.2x cuBLAS fp16; 8/3/2/1-bit g64 M=1 >= 70 %; 4-bit g64 time at
      M=8 <= 1.3x time at M=1.

--gemm is another mode: `bench_linear_cuda --gemm` (4-bit g64 f16 M sweep
1..4096 with the tensor-core GEMM at every M, the GEMV up to M = 64 and
cuBLAS fp16; 8/3/2-bit g64 and 4-bit g32/g128 at M = 16, 256, 4096 beside
dequantize-then-cuBLAS; bf16 x at M = 256), then torch.matmul fp16 and
tinygemm (g64) on the same shapes and M, merged into
<out-dir>/gpu-gemm-<YYYY-MM-DD>-<gpu>-<commit>.{json,md}: per shape and M
TC us, TFLOP/s, x cuBLAS, x torch.matmul, x tinygemm, GEMV us, check; the
GEMV -> tensor-core crossover per shape and a suggested kAuto threshold;
the widths table; and the targets as PASS / MISS / FAILED / NO DATA: 4-bit
g64 M=16 >= 3x cuBLAS fp16 (the faster of our two kernels), 4-bit g64
M >= 256 >= 0.9x cuBLAS fp16 (tensor cores), 8/3/2-bit g64 faster than
dequantize+cuBLAS at every M of the widths part (cuBLAS fp16 = the faster of
cublasGemmEx and torch.matmul).

Exit status: 0 when bench_linear_cuda exited 0 and every configuration was
correct (missed targets do not fail the run: they are in the table), 1
otherwise. Usage, from the repository root of the GPU machine:

    python3 bench/compare_linear_gpu.py --bin build-gpu/bench/bench_linear_cuda --commit <sha>
    ... --quick                 # fewer repetitions everywhere
    ... --linear-json FILE      # reuse a bench_linear_cuda JSON instead of running it
    ... --skip-peers            # ours only
    ... --gemm [--quick]        # the tensor-core GEMM mode (gpu-gemm-*.{json,md})
"""

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

T0 = time.monotonic()
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:  # the helpers of the other comparison scripts (same folder): git, result naming, GPU slug
    from compare_reference import git, results_path
    from compare_reference_gpu import gpu_slug
except ImportError as _e:  # those modules import numpy at the top; these three helpers need none of it
    print(f"compare_linear_gpu: using local helpers ({_e})", file=sys.stderr)

    def git(*args):
        try:
            return subprocess.run(["git", "-C", REPO, *args], capture_output=True, text=True,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    def results_path(out_dir, stamp, commit, kind="cpu", device=""):
        device = f"-{device}" if device else ""
        base = os.path.join(out_dir, f"{kind}-{stamp}{device}-{commit or 'nocommit'}")
        path, n = base, 1
        while os.path.exists(path + ".json") or os.path.exists(path + ".md"):
            n += 1
            path = f"{base}-{n}"
        return path

    def gpu_slug(name):
        import re
        m = re.search(r"\b([A-Za-z]{1,2}\d{2,4}[A-Za-z]?)\b", name.replace("NVIDIA", ""))
        return (m.group(1) if m else re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")).lower()
SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008), (14336, 4096), (4096, 14336), (28672, 8192), (8192, 28672)]
SMALL_SHAPES = [(256, 256), (512, 256), (256, 512)]  # bench_linear_cuda --small; --cpu-dry-run
MS = [1, 2, 4, 8, 16]
TINYGEMM_GROUPS = {64: MS, 32: [1], 128: [1]}  # group -> batches
TARGET_FRAC4 = 0.80
TARGET_CUBLAS4 = 3.2
TARGET_FRAC_OTHER = 0.70
TARGET_BATCH8 = 1.3
L2_FACTOR = 3.0
COPY_BYTES = 1 << 30
DEV = "cuda"  # "cpu" under --cpu-dry-run (a check of this script without a GPU; never a measurement)


def shape_name(n, k):
    return f"{n}x{k}"


def short_error(e, limit=300):
    first = (str(e).strip().splitlines() or [""])[0][:limit]
    return f"{type(e).__name__}: {first}"


# ---------------------------------------------------------------- timing

class _CpuEvent:
    """torch.cuda.Event stand-in for --cpu-dry-run (wall clock)."""

    def __init__(self, enable_timing=True):
        self.t = None

    def record(self):
        self.t = time.perf_counter()

    def synchronize(self):
        pass

    def elapsed_time(self, other):
        return (other.t - self.t) * 1e3


class Timer:
    def __init__(self, torch, quick):
        self.torch = torch
        self.reps = 10 if quick else 30
        self.min_reps = 3 if quick else 5
        self.budget_ms = 100.0 if quick else 300.0
        self.warmup_ms = 5.0 if quick else 20.0
        self.sample_ms = 1.0
        self.max_graph_calls = 4096

    def event(self):
        return self.torch.cuda.Event(enable_timing=True) if DEV == "cuda" else _CpuEvent()

    def sync(self):
        if DEV == "cuda":
            self.torch.cuda.synchronize()

    def _samples(self, launch, calls, est_sample_ms):
        n = int(max(self.min_reps, min(self.reps, self.budget_ms // max(est_sample_ms, 1e-4))))
        start, stop = self.event(), self.event()
        ms = []
        for _ in range(n):
            start.record()
            launch()
            stop.record()
            stop.synchronize()
            ms.append(start.elapsed_time(stop) / calls)
        return {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms), "samples": len(ms),
                "calls_per_sample": calls}

    def eager(self, fn, nsets):
        """fn(set) enqueued call by call, rotating set over range(nsets)."""
        nxt = [0]

        def call():
            fn(nxt[0])
            nxt[0] = (nxt[0] + 1) % nsets

        for _ in range(nsets):
            call()
        self.sync()
        start, stop = self.event(), self.event()
        start.record()
        for _ in range(nsets):
            call()
        stop.record()
        stop.synchronize()
        est = max(start.elapsed_time(stop) / nsets, 1e-4)
        extra = int(min(4000, math.ceil(self.warmup_ms / est))) - 2 * nsets
        if extra > 0:
            start.record()
            for _ in range(extra):
                call()
            stop.record()
            stop.synchronize()
            est = max(start.elapsed_time(stop) / extra, 1e-4)
        k = int(min(4000, max(1, math.ceil(self.sample_ms / est))))

        def launch():
            for _ in range(k):
                call()

        t = self._samples(launch, k, est * k)
        t["rotating_sets"] = nsets
        return t

    def graph(self, fn, nsets, est_ms):
        """The same calls captured into one CUDA graph (k a multiple of nsets) and replayed."""
        torch = self.torch
        if DEV != "cuda":
            raise RuntimeError("no CUDA graphs in a CPU dry run")
        # Twice what the eager estimate asks for: replayed calls are usually faster.
        k = int(min(self.max_graph_calls, max(1, math.ceil(2 * self.sample_ms / max(est_ms, 1e-4)))))
        k = max(nsets, -(-k // nsets) * nsets)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graph asks
            for i in range(max(3, nsets)):
                fn(i % nsets)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for i in range(k):
                fn(i % nsets)
        g.replay()
        torch.cuda.synchronize()
        start, stop = self.event(), self.event()
        start.record()
        g.replay()
        stop.record()
        stop.synchronize()
        replay_ms = max(start.elapsed_time(stop), 1e-4)
        for _ in range(int(min(200, math.ceil(self.warmup_ms / replay_ms)))):
            g.replay()
        t = self._samples(g.replay, k, replay_ms)
        t["rotating_sets"] = nsets
        del g
        return t

    def measure(self, fn, nsets, graphs=True):
        out = {"eager": self.eager(fn, nsets)}
        ms, mn, method = out["eager"]["median_ms"], out["eager"]["min_ms"], "eager"
        if graphs:
            try:
                out["graph"] = self.graph(fn, nsets, out["eager"]["median_ms"])
                ms, mn, method = out["graph"]["median_ms"], out["graph"]["min_ms"], "graph"
            except Exception as e:  # noqa: BLE001 - a capture that fails is recorded
                out["graph"] = {"error": short_error(e)}
                try:
                    self.sync()
                except Exception:  # noqa: BLE001 - the error above is what counts
                    pass
        out.update({"method": method, "median_ms": ms, "min_ms": mn})
        return out


def rotation_sets(l2_bytes, set_bytes):
    """Copies whose total reaches L2_FACTOR x L2 (at least 2), as bench_linear_cuda."""
    return int(min(256, max(2, math.ceil(L2_FACTOR * l2_bytes / max(set_bytes, 1)))))


def gbps(nbytes, ms):
    return nbytes / (ms * 1e-3) / 1e9 if ms and ms > 0 else None


# ---------------------------------------------------------------- peers

def tinygemm_ops(torch):
    """(pack, mm): the tinygemm ops. The CPU dry run uses their CPU twins (a check of the script only)."""
    if DEV == "cuda":
        return torch.ops.aten._convert_weight_to_int4pack, torch.ops.aten._weight_int4pack_mm
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu, torch.ops.aten._weight_int4pack_mm_for_cpu


def tinygemm_pack(torch, q, inner_k_tiles=8):
    """q: int32 codes [N, K] in 0..15 -> the tinygemm weight, whichever input this torch takes.

    torch >= 2.5 packs uint8 [N, K/2] (two codes a byte, high nibble first); older torch
    packs int32 [N, K]. Returns (packed, variant)."""
    pack = tinygemm_ops(torch)[0]
    errors = []
    variants = [("uint8 [N, K/2]", lambda: ((q[:, ::2] << 4) | q[:, 1::2]).to(torch.uint8)),
                ("int32 [N, K]", lambda: q.contiguous())]
    if DEV != "cuda":
        variants.reverse()  # the CPU twin takes int32 [N, K]
    for name, make in variants:
        try:
            return pack(make(), inner_k_tiles), name
        except Exception as e:  # noqa: BLE001
            errors.append(f"{name}: {short_error(e, 150)}")
    raise RuntimeError("_convert_weight_to_int4pack: " + "; ".join(errors))


NOT_RUN = "not run: time budget (--max-seconds) spent"


def past(deadline):
    """Whether `deadline` (time.monotonic(); None = none) has passed: no new shape starts then."""
    return deadline is not None and time.monotonic() > deadline


# How a peer row states its speed: (JSON key, value from (weight bytes, m, n, k, ms), print format, unit).
RATE_GBPS = ("gbps", lambda wbytes, m, n, k, ms: gbps(wbytes, ms), "7.0f", "weight GB/s")
RATE_TFLOPS = ("tflops", lambda wbytes, m, n, k, ms: tflops(m, n, k, ms), "7.1f", "TFLOP/s")


def peer_matmul_fp16(torch, timer, shapes, ms, l2, graphs, deadline, rate):
    """cuBLAS fp16 through torch.matmul, every shape and M, the weight rotating among copies past L2."""
    key, value, spec, unit = rate
    rows = []
    print(f"  torch.matmul fp16 (cuBLAS): N x K, M, headline us [method], {unit}", flush=True)
    for (n, k) in shapes:
        if past(deadline):
            rows.append({"n": n, "k": k, "error": NOT_RUN})
            continue
        try:
            wbytes = 2 * n * k
            nsets = rotation_sets(l2, wbytes)
            g = torch.Generator(device=DEV).manual_seed(n * 131 + k)
            w0 = (torch.rand(n, k, device=DEV, generator=g, dtype=torch.float32) * 0.1 - 0.05).to(torch.float16)
            ws = [w0] + [w0.clone() for _ in range(nsets - 1)]
            x16 = torch.rand(max(ms), k, device=DEV, generator=g, dtype=torch.float32).mul_(2).sub_(1).to(
                torch.float16)
            for m in ms:
                x = x16[:m].contiguous()
                try:
                    t = timer.measure(lambda s: torch.matmul(x, ws[s].t()), nsets, graphs)
                    v = value(wbytes, m, n, k, t["median_ms"])
                    rows.append({"n": n, "k": k, "m": m, "weight_bytes": wbytes, "rotating_sets": nsets, **t, key: v})
                    print(f"    {shape_name(n, k):<12} M={m:<4} {t['median_ms'] * 1e3:10.2f} us [{t['method']}] "
                          f"{v:{spec}}", flush=True)
                except Exception as e:  # noqa: BLE001
                    rows.append({"n": n, "k": k, "m": m, "error": short_error(e)})
            del ws, w0, x16
        except Exception as e:  # noqa: BLE001
            rows.append({"n": n, "k": k, "error": short_error(e)})
        if DEV == "cuda":
            torch.cuda.empty_cache()
    return {"call": "torch.matmul(x_f16 [M, K], W_f16 [N, K].t())", "rows": rows}


def peer_tinygemm(torch, timer, shapes, groups, l2, graphs, deadline, rate):
    """PyTorch's int4 tinygemm, every shape, group and its M (groups: {group: [M, ...]}), random codes and
    scales, the packed weight rotating among copies past L2."""
    key, value, spec, unit = rate
    rows = []
    info = {"call": "torch.ops.aten._weight_int4pack_mm(x_bf16 [M, K], W_packed, group, scales_and_zeros bf16 "
                    "[K/group, N, 2]); W_packed = torch.ops.aten._convert_weight_to_int4pack(codes, 8)"}
    try:
        pack_op, mm_op = tinygemm_ops(torch)
        info["schema_pack"] = str(pack_op.default._schema)
        info["schema_mm"] = str(mm_op.default._schema)
    except Exception as e:  # noqa: BLE001
        info["error"] = f"this torch has no int4 tinygemm: {short_error(e)}"
    print("  tinygemm int4 (torch.ops.aten._weight_int4pack_mm): N x K, group, M, headline us [method], "
          f"{unit}", flush=True)
    if "error" not in info:
        for (n, k) in shapes:
            for group, batches in groups.items():
                if past(deadline):
                    rows.append({"n": n, "k": k, "group_size": group, "error": NOT_RUN})
                    continue
                try:
                    g = torch.Generator(device=DEV).manual_seed(n * 7 + k + group)
                    q = torch.randint(0, 16, (n, k), dtype=torch.int32, device=DEV, generator=g)
                    packed, variant = tinygemm_pack(torch, q)
                    info["packing"] = variant
                    del q
                    sz = (torch.rand(k // group, n, 2, device=DEV, generator=g) * 0.01 + 0.001).to(torch.bfloat16)
                    wbytes = packed.numel() * packed.element_size() + sz.numel() * sz.element_size()
                    nsets = rotation_sets(l2, wbytes)
                    sets = [(packed, sz)] + [(packed.clone(), sz.clone()) for _ in range(nsets - 1)]
                    xb = (torch.rand(max(batches), k, device=DEV, generator=g) * 2 - 1).to(torch.bfloat16)
                    for m in batches:
                        x = xb[:m].contiguous()
                        try:
                            t = timer.measure(lambda s: mm_op(x, sets[s][0], group, sets[s][1]), nsets, graphs)
                            v = value(wbytes, m, n, k, t["median_ms"])
                            rows.append({"n": n, "k": k, "m": m, "group_size": group, "weight_bytes": wbytes,
                                         "rotating_sets": nsets, **t, key: v})
                            print(f"    {shape_name(n, k):<12} g{group:<3} M={m:<4} {t['median_ms'] * 1e3:10.2f} us "
                                  f"[{t['method']}] {v:{spec}}", flush=True)
                        except Exception as e:  # noqa: BLE001
                            rows.append({"n": n, "k": k, "m": m, "group_size": group, "error": short_error(e)})
                    del sets, packed, sz, xb
                except Exception as e:  # noqa: BLE001
                    rows.append({"n": n, "k": k, "group_size": group, "error": short_error(e, 600)})
                    print(f"    {shape_name(n, k):<12} g{group:<3} ERROR {short_error(e, 600)}", flush=True)
                if DEV == "cuda":
                    torch.cuda.empty_cache()
    info["rows"] = rows
    return info


def run_peers(torch, shapes, l2, quick, graphs, deadline=None):
    """The PyTorch peers; past `deadline` (time.monotonic()) no new shape starts."""
    timer = Timer(torch, quick)
    peers = {"torch": torch.__version__, "torch_cuda": torch.version.cuda}

    # Device copy, 1 GiB each way (bench_linear_cuda measures the same with cudaMemcpyAsync).
    try:
        nbytes = COPY_BYTES if DEV == "cuda" else 1 << 22
        src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=DEV)
        dst = torch.empty_like(src)
        saved = timer.sample_ms
        timer.sample_ms = 0.0
        t = timer.eager(lambda s: dst.copy_(src), 1)
        timer.sample_ms = saved
        peers["torch_copy"] = {"bytes_copied": nbytes, "bytes_read_plus_written": 2 * nbytes, **t,
                               "gbps": gbps(2 * nbytes, t["median_ms"])}
        del src, dst
        print(f"  torch copy {nbytes >> 20} MiB: {t['median_ms']:.3f} ms -> {peers['torch_copy']['gbps']:.0f} GB/s "
              "read+write", flush=True)
    except Exception as e:  # noqa: BLE001
        peers["torch_copy"] = {"error": short_error(e)}

    peers["torch_matmul_fp16"] = peer_matmul_fp16(torch, timer, shapes, MS, l2, graphs, deadline, RATE_GBPS)
    peers["tinygemm_int4"] = peer_tinygemm(torch, timer, shapes, TINYGEMM_GROUPS, l2, graphs, deadline, RATE_GBPS)
    return peers


# ---------------------------------------------------------------- ours

def run_ours(binary, quick, commit, json_dir, extra, name="bench_linear_cuda"):
    out_json = os.path.join(json_dir, f"{name}-{commit or 'nocommit'}.json")
    cmd = [binary, "--json", out_json] + (["--commit", commit] if commit else []) + (["--quick"] if quick else [])
    cmd += extra
    print(f"$ {shlex.join(cmd)}", flush=True)
    p = subprocess.run(cmd, stdout=sys.stdout, stderr=sys.stderr)
    result = {}
    if os.path.exists(out_json):
        with open(out_json) as f:
            result = json.load(f)
    result["exit_code"] = p.returncode
    result["command"] = shlex.join(cmd)
    if p.returncode != 0:
        sys.stderr.write(f"compare_linear_gpu: bench_linear_cuda exited {p.returncode}\n")
    return result


# ---------------------------------------------------------------- the comparison

def find(rows, **key):
    for r in rows or []:
        if "error" not in r and all(r.get(k) == v for k, v in key.items()):
            return r
    return None


def merge(ours, peers):
    """One row per configuration of ours, with the peers of the same shape and M."""
    copy = (ours.get("copy") or {}).get("gbps")
    cpp_cublas = (ours.get("cublas_fp16") or {}).get("rows", [])
    torch_mm = ((peers or {}).get("torch_matmul_fp16") or {}).get("rows", [])
    tiny = ((peers or {}).get("tinygemm_int4") or {}).get("rows", [])
    rows = []
    for r in ours.get("linear", []) or []:
        n, k, m, b, g = r.get("n"), r.get("k"), r.get("m"), r.get("nbits"), r.get("group_size")
        status = r.get("status", "error" if "error" in r else "ok")
        ok = status == "ok"
        ms = r.get("median_ms") if ok else None
        cb = find(cpp_cublas, n=n, k=k, m=m)
        tm = find(torch_mm, n=n, k=k, m=m)
        fp16 = [x["median_ms"] for x in (cb, tm) if x]
        fp16_ms = min(fp16) if fp16 else None
        tg = find(tiny, n=n, k=k, m=m, group_size=g if b == 4 else 64)
        row = {
            "n": n, "k": k, "m": m, "nbits": b, "group_size": g, "status": status,
            "error": r.get("error"), "check": r.get("check"),
            "weight_bytes": r.get("weight_bytes"), "method": r.get("method"),
            "ours_ms": ms, "ours_stream_ms": (r.get("stream") or {}).get("median_ms") if ok else None,
            "ours_gbps": gbps(r.get("weight_bytes"), ms) if ok else None,
            "fraction_of_copy": (gbps(r.get("weight_bytes"), ms) / copy) if ok and copy else None,
            "cublas_cpp_ms": cb and cb["median_ms"], "torch_matmul_ms": tm and tm["median_ms"],
            "fp16_ms": fp16_ms,
            "speedup_vs_fp16": fp16_ms / ms if ok and fp16_ms else None,
            "speedup_vs_cublas_cpp": cb["median_ms"] / ms if ok and cb else None,
            "speedup_vs_torch_matmul": tm["median_ms"] / ms if ok and tm else None,
            "tinygemm_group": tg and tg["group_size"], "tinygemm_ms": tg and tg["median_ms"],
            "speedup_vs_tinygemm": tg["median_ms"] / ms if ok and tg else None,
        }
        rows.append(row)
    return rows


def targets(rows, shapes):
    def get(n, k, b, g, m):
        for r in rows:
            if (r["n"], r["k"], r["nbits"], r["group_size"]) == (n, k, b, g) and r["m"] in (m, None):
                return r
        return None

    out = []

    def add(what, r, value, passed):
        if r is None or r["status"] == "not run":
            verdict = "NO DATA"
        elif r["status"] != "ok":
            verdict = "FAILED"
        elif value is None:
            verdict = "NO DATA"
        else:
            verdict = "PASS" if passed else "MISS"
        out.append({"what": what, "value": value, "verdict": verdict})

    for (n, k) in shapes:
        s = shape_name(n, k)
        r4 = get(n, k, 4, 64, 1)
        f = r4 and r4["fraction_of_copy"]
        add(f"{s} 4-bit g64 M=1 >= {100 * TARGET_FRAC4:.0f} % of copy", r4,
            None if f is None else f"{100 * f:.1f} %", f is not None and f >= TARGET_FRAC4)
        x = r4 and r4["speedup_vs_fp16"]
        add(f"{s} 4-bit g64 M=1 >= {TARGET_CUBLAS4}x cuBLAS fp16", r4,
            None if x is None else f"{x:.2f}x", x is not None and x >= TARGET_CUBLAS4)
        for b in (8, 3, 2, 1):
            r = get(n, k, b, 64, 1)
            f = r and r["fraction_of_copy"]
            add(f"{s} {b}-bit g64 M=1 >= {100 * TARGET_FRAC_OTHER:.0f} % of copy", r,
                None if f is None else f"{100 * f:.1f} %", f is not None and f >= TARGET_FRAC_OTHER)
        r8 = get(n, k, 4, 64, 8)
        ratio = r8["ours_ms"] / r4["ours_ms"] if r4 and r8 and r4["ours_ms"] and r8["ours_ms"] else None
        worst = r4 if r4 is None or r4["status"] != "ok" or (r8 and r8["status"] == "not run") else r8
        add(f"{s} 4-bit g64 time(M=8) <= {TARGET_BATCH8}x time(M=1)", worst,
            None if ratio is None else f"{ratio:.2f}x", ratio is not None and ratio <= TARGET_BATCH8)
    return out


def peer_rows(ours, peers):
    return {"cublas": (ours.get("cublas_fp16") or {}).get("rows", []) or [],
            "matmul": ((peers or {}).get("torch_matmul_fp16") or {}).get("rows", []) or [],
            "tinygemm": ((peers or {}).get("tinygemm_int4") or {}).get("rows", []) or []}


def f(x, spec=".2f", scale=1.0):
    return "-" if x is None else format(x * scale, spec)


def markdown(meta, rows, peers, ours, tgts):
    dev = meta["device"]
    copy = ours.get("copy") or {}
    out = [f"# QuantizedLinear on the GPU: {dev.get('name', '?')}, commit {meta['commit'] or '-'}\n"]
    out.append(f"- date {meta['date']}; driver {meta.get('driver') or '-'}; torch {meta.get('torch') or '-'} "
               f"(CUDA {meta.get('torch_cuda') or '-'}); hqq-cpp {ours.get('hqq_version', '-')}; "
               f"{'--quick' if meta['quick'] else 'full run'}")
    out.append(f"- L2 {f(dev.get('l2_bytes'), '.1f', 1e-6)} MB; every call rotates among copies of its weight "
               f"totalling >= {L2_FACTOR:g}x L2; CUDA events, warm-up, medians; headline = CUDA graph replay of "
               "back-to-back calls when the capture works, else calls enqueued one by one")
    out.append(f"- device copy ceiling (bench_linear_cuda, cudaMemcpyAsync 1 GiB): **{f(copy.get('gbps'), '.0f')} "
               f"GB/s** read+write; torch copy: {f(((peers or {}).get('torch_copy') or {}).get('gbps'), '.0f')} GB/s")
    cb = ours.get("cublas_fp16") or {}
    out.append(f"- cuBLAS fp16 = the faster of cublasGemmEx from C++ "
               f"({'cuBLAS ' + str(cb.get('version')) if cb.get('available') else cb.get('error', 'not run')}) "
               "and torch.matmul; tinygemm = torch.ops.aten._weight_int4pack_mm (bf16 x; same group for 4-bit, "
               "g64 for the other widths)")
    out.append("- ours: f16 x [M, K] -> f16 y [M, N]; GB/s = QuantizedLinear::weight_bytes() (codes + scale/zero) "
               "/ time; check = max over rows of ||y - y_cpu|| / ||y_cpu|| against the CPU QuantizedLinear "
               f"(<= 1e-3, else FAILED)\n")

    def line(r):
        chk = r.get("check") or {}
        status = "ok" if r["status"] == "ok" else f"**{r['status'].upper()}**"
        return "| " + " | ".join([
            shape_name(r["n"], r["k"]), str(r["nbits"]), str(r["group_size"]), "-" if r["m"] is None else str(r["m"]),
            f(r["ours_ms"], ".2f", 1e3), f(r["ours_stream_ms"], ".2f", 1e3), f(r["ours_gbps"], ".0f"),
            f(r["fraction_of_copy"], ".3f"),
            f(r["fp16_ms"], ".2f", 1e3), f(r["speedup_vs_fp16"]), f(r["tinygemm_ms"], ".2f", 1e3),
            f(r["speedup_vs_tinygemm"]), f(chk.get("max_rel_err_row"), ".1e"), status,
        ]) + " |"

    head = ("| N x K | bits | group | M | ours us | stream us | GB/s | x copy | cuBLAS fp16 us | x cuBLAS "
            "| tinygemm us | x tinygemm | rel err | check |")
    sep = "|" + "---|" * (head.count("|") - 1)
    out.append("## M = 1, every width\n")
    out += [head, sep] + [line(r) for r in rows if r["m"] in (1, None)]
    out.append("\n## 4-bit g64, M = 1 .. 16\n")
    head2 = head.replace("| check |", "| check | t / t(M=1) |")
    out += [head2, "|" + "---|" * (head2.count("|") - 1)]
    for r in rows:
        if r["nbits"] == 4 and r["group_size"] == 64 and r["m"] is not None:
            base = next((x for x in rows if (x["n"], x["k"], x["nbits"], x["group_size"], x["m"])
                         == (r["n"], r["k"], 4, 64, 1)), None)
            ratio = r["ours_ms"] / base["ours_ms"] if base and base["ours_ms"] and r["ours_ms"] else None
            out.append(line(r) + f" {f(ratio)} |")

    out.append("\n\"ours us\" is the headline (CUDA graph replay when the capture worked); \"stream us\" the same "
               "calls enqueued one by one from the host (host launch overhead included).\n")

    out.append("## Peers (headline us, GB/s of their weight bytes, fraction of the copy)\n")
    out.append("| N x K | M | cuBLAS C++ us | GB/s | x copy | torch.matmul us | GB/s | x copy | tinygemm g64 us | GB/s "
               "| x copy |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    copy_gbps = copy.get("gbps")
    pr = peer_rows(ours, peers)
    measured = [r for r in pr["cublas"] + pr["matmul"] + pr["tinygemm"] if "error" not in r and "m" in r]
    for key in sorted({(r["n"], r["k"], r["m"]) for r in measured},
                      key=lambda t: ([s for s in SHAPES + SMALL_SHAPES].index(t[:2])
                                     if t[:2] in SHAPES + SMALL_SHAPES else 99, t[2])):
        cells = [shape_name(*key[:2]), str(key[2])]
        for name, extra in (("cublas", {}), ("matmul", {}), ("tinygemm", {"group_size": 64})):
            x = find(pr[name], n=key[0], k=key[1], m=key[2], **extra)
            g = x and gbps(x["weight_bytes"], x["median_ms"])
            cells += [f(x and x["median_ms"], ".2f", 1e3), f(g, ".0f"), f(g / copy_gbps if g and copy_gbps else None,
                                                                         ".3f")]
        out.append("| " + " | ".join(cells) + " |")

    out.append("\n## Targets (DESIGN.md section 6)\n")
    for t in tgts:
        out.append(f"- **{t['verdict']}** {t['what']}: {t['value'] or '-'}")

    problems = []
    if ours.get("exit_code"):
        problems.append(f"bench_linear_cuda exit code {ours['exit_code']}")
    if ours.get("error"):
        problems.append(f"bench_linear_cuda: {ours['error']}")
    for e in ours.get("errors", []) or []:
        problems.append(f"bench_linear_cuda {e.get('part')}: {e.get('error')}")
    skipped = [r for r in rows if r["status"] == "not run"]
    if skipped:
        problems.append(f"{len(skipped)} configurations not run (time budget): "
                        + ", ".join(sorted({shape_name(r["n"], r["k"]) for r in skipped})))
    for r in rows:
        if r["status"] not in ("ok", "not run"):
            problems.append(f"{shape_name(r['n'], r['k'])} {r['nbits']}-bit g{r['group_size']} M={r['m']}: "
                            f"{r['status']} {r['error'] or json.dumps(r['check'])}")
    for r in (ours.get("cublas_fp16") or {}).get("rows", []) or []:
        if "error" in r:
            problems.append(f"cuBLAS (C++) {r.get('n')}x{r.get('k')}: {r['error']}")
    graph_errors = {(r.get("graph") or {}).get("error") for r in ours.get("linear", []) or []} - {None}
    for e in sorted(graph_errors):
        problems.append(f"ours: CUDA graph capture failed (stream timing used): {e}")
    for name in ("torch_copy", "torch_matmul_fp16", "tinygemm_int4"):
        p = (peers or {}).get(name)
        if isinstance(p, dict) and p.get("error"):
            problems.append(f"{name}: {p['error']}")
        by_error = {}  # the same error on many rows is listed once
        for r in (p or {}).get("rows", []) if isinstance(p, dict) else []:
            if "error" in r:
                where = f"{r.get('n')}x{r.get('k')}" + (f" g{r['group_size']}" if "group_size" in r else "") + \
                    (f" M={r['m']}" if "m" in r else "")
                by_error.setdefault(r["error"], []).append(where)
        for err, where in by_error.items():
            problems.append(f"{name} ({', '.join(where)}): {err}")
    if isinstance(peers, dict) and peers.get("error"):
        problems.append(f"peers: {peers['error']}")
    if problems:
        out.append("\n## Problems\n")
        out += [f"- {p}" for p in problems]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- --gemm: the tensor-core GEMM mode

GEMM_MS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096]
GEMM_QUICK_SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336)]  # also the shapes of the widths part
GEMV_MAX_M = 64
WIDTH_MS = [16, 256, 4096]
TARGET_GEMM16 = 3.0     # 4-bit g64 M=16 >= 3x cuBLAS fp16 (the faster of our GEMV and tensor-core GEMM)
TARGET_GEMM_LARGE = 0.9  # 4-bit g64 M >= 256 >= 0.9x cuBLAS fp16 (tensor cores)
LARGE_M = 256
GEMM_OURS_SHARE = 0.7   # of --max-seconds for bench_linear_cuda --gemm (the peers take about a minute)


def gemm_timer(torch, quick):
    """The sample counts of bench_linear_cuda --gemm (fewer than the decode mode: large M take milliseconds)."""
    t = Timer(torch, quick)
    t.reps, t.min_reps = (10, 3) if quick else (20, 3)
    t.budget_ms, t.warmup_ms = (60.0, 5.0) if quick else (120.0, 10.0)
    return t


def run_gemm_peers(torch, shapes, ms, l2, quick, graphs, deadline=None):
    """torch.matmul fp16 and tinygemm int4 (g64) on every shape and M; past `deadline` no new shape starts."""
    timer = gemm_timer(torch, quick)
    peers = {"torch": torch.__version__, "torch_cuda": torch.version.cuda}
    peers["torch_matmul_fp16"] = peer_matmul_fp16(torch, timer, shapes, ms, l2, graphs, deadline, RATE_TFLOPS)
    peers["tinygemm_int4"] = peer_tinygemm(torch, timer, shapes, {64: ms}, l2, graphs, deadline, RATE_TFLOPS)
    return peers


def tflops(m, n, k, ms):
    return 2.0 * m * n * k / (ms * 1e-3) / 1e12 if ms and ms > 0 else None


def _ratio(a, b):
    """a / b, None when either is missing."""
    return a / b if a is not None and b else None


def _ms(r):
    return r.get("median_ms") if r and r.get("status", "ok") == "ok" and "error" not in r else None


def _status(r):
    if r is None:
        return "missing"
    return r.get("status", "error" if "error" in r else "ok")


def find_gemm(rows, **key):
    """The first row whose given keys match; a row lacking a key (an error or "not run" row of a whole shape or
    configuration) matches it too, as in bench_linear_cuda."""
    for r in rows or []:
        if all(k not in r or r[k] == v for k, v in key.items()):
            return r
    return None


def merge_gemm(ours, peers):
    """Our --gemm rows with the peers of the same shape and M: {"sweep": [...], "widths": [...], "bf16": [...]}."""
    g = ours.get("gemm") or {}
    rows = g.get("rows", []) or []
    dq_rows = (g.get("dequant_cublas") or {}).get("rows", []) or []
    cpp = [r for r in (g.get("cublas_fp16") or {}).get("rows", []) or [] if "error" not in r]
    tmm = [r for r in ((peers or {}).get("torch_matmul_fp16") or {}).get("rows", []) or [] if "error" not in r]
    tiny = [r for r in ((peers or {}).get("tinygemm_int4") or {}).get("rows", []) or [] if "error" not in r]

    def fp16(n, k, m):
        cb, tm = find(cpp, n=n, k=k, m=m), find(tmm, n=n, k=k, m=m)
        cands = [x["median_ms"] for x in (cb, tm) if x]
        return (cb and cb["median_ms"]), (tm and tm["median_ms"]), (min(cands) if cands else None)

    def tg(n, k, m):
        x = find(tiny, n=n, k=k, m=m, group_size=64)
        return x and x["median_ms"]

    out = {"sweep": [], "widths": [], "bf16": []}
    # Sweep: one row per shape and M (tensor cores + GEMV); rows without M are errors of a whole shape.
    seen = []
    for r in rows:
        if r.get("part") not in ("sweep", "inputs"):
            continue
        key = (r.get("n"), r.get("k"), r.get("m"))
        if key not in seen:
            seen.append(key)
    for (n, k, m) in seen:
        if m is None:
            r = next(x for x in rows if x.get("part") in ("sweep", "inputs") and (x.get("n"), x.get("k")) == (n, k)
                     and "m" not in x)
            out["sweep"].append({"n": n, "k": k, "m": None, "status": _status(r), "error": r.get("error")})
            continue
        tc = next((x for x in rows if x.get("part") == "sweep" and (x.get("n"), x.get("k"), x.get("m")) == (n, k, m)
                   and x.get("kernel") == "tensor_core"), None)
        gv = next((x for x in rows if x.get("part") == "sweep" and (x.get("n"), x.get("k"), x.get("m")) == (n, k, m)
                   and x.get("kernel") == "gemv"), None)
        mma = next((x for x in rows if x.get("part") == "sweep" and (x.get("n"), x.get("k"), x.get("m")) == (n, k, m)
                    and x.get("kernel") == "tensor_core_mma_sync"), None)
        if tc is None and gv is None:
            continue
        cb_ms, tm_ms, fp16_ms = fp16(n, k, m)
        tg_ms = tg(n, k, m)
        tc_ms, gv_ms, mma_ms = _ms(tc), _ms(gv), _ms(mma)
        best = min((x for x in ((gv_ms, "gemv"), (tc_ms, "tensor_core"), (mma_ms, "tensor_core_mma_sync"))
                    if x[0] is not None), default=(None, None))
        out["sweep"].append({
            "n": n, "k": k, "m": m, "status": _status(tc), "error": (tc or {}).get("error"),
            "check": (tc or {}).get("check"), "method": (tc or {}).get("method"),
            "tc_ms": tc_ms, "tc_stream_ms": ((tc or {}).get("stream") or {}).get("median_ms") if tc_ms else None,
            "tflops": tflops(m, n, k, tc_ms),
            "gemv_status": _status(gv) if gv is not None else None, "gemv_error": (gv or {}).get("error"),
            "gemv_check": (gv or {}).get("check"), "gemv_ms": gv_ms,
            "best_kernel": best[1], "best_ms": best[0],
            "cublas_cpp_ms": cb_ms, "torch_matmul_ms": tm_ms, "fp16_ms": fp16_ms, "tinygemm_ms": tg_ms,
            "speedup_vs_cublas_cpp": _ratio(cb_ms, tc_ms), "speedup_vs_torch_matmul": _ratio(tm_ms, tc_ms),
            "speedup_vs_fp16": _ratio(fp16_ms, tc_ms), "speedup_vs_tinygemm": _ratio(tg_ms, tc_ms),
            "gemv_speedup_vs_fp16": _ratio(fp16_ms, gv_ms),
            "mma_status": _status(mma) if mma is not None else None, "mma_error": (mma or {}).get("error"),
            "mma_check": (mma or {}).get("check"), "mma_ms": mma_ms, "mma_tflops": tflops(m, n, k, mma_ms),
            "mma_speedup_vs_fp16": _ratio(fp16_ms, mma_ms), "mma_speedup_vs_tc": _ratio(tc_ms, mma_ms),
        })
    # Widths: our tensor cores beside dequantize + cuBLAS (4-bit g64 from the sweep).
    keys = []
    for r in rows:
        if r.get("part") == "widths":
            key = (r.get("n"), r.get("k"), r.get("m"), r.get("nbits"), r.get("group_size"))
            if key not in keys:
                keys.append(key)
    for r in dq_rows:
        key = (r.get("n"), r.get("k"), r.get("m"), r.get("nbits"), r.get("group_size"))
        if key not in keys:
            keys.append(key)
    for (n, k, m, b, gs) in keys:
        part = "sweep" if (b, gs) == (4, 64) else "widths"
        if m is None:
            r = next((x for x in rows if x.get("part") == part and (x.get("n"), x.get("k"), x.get("nbits"),
                      x.get("group_size")) == (n, k, b, gs) and "m" not in x), None) or \
                next((x for x in dq_rows if (x.get("n"), x.get("k"), x.get("nbits"), x.get("group_size"))
                      == (n, k, b, gs) and "m" not in x), {})
            out["widths"].append({"n": n, "k": k, "m": None, "nbits": b, "group_size": gs, "status": _status(r),
                                  "error": r.get("error"), "dq_status": None})
            continue
        o = find_gemm(rows, part=part, n=n, k=k, m=m, nbits=b, group_size=gs, dtype="f16", kernel="tensor_core")
        t = find_gemm(rows, part=part, n=n, k=k, m=m, nbits=b, group_size=gs, dtype="f16", kernel="tensor_core_mma_sync")
        if _ms(t) is not None and (_ms(o) is None or _ms(t) < _ms(o)):
            o = t  # the faster of our tensor-core kernels
        d = find_gemm(dq_rows, n=n, k=k, m=m, nbits=b, group_size=gs)
        o_ms, d_ms = _ms(o), _ms(d)
        _, _, fp16_ms = fp16(n, k, m)
        out["widths"].append({
            "n": n, "k": k, "m": m, "nbits": b, "group_size": gs, "status": _status(o), "error": (o or {}).get("error"),
            "check": (o or {}).get("check"), "ours_ms": o_ms, "tflops": tflops(m, n, k, o_ms),
            "ours_kernel": (o or {}).get("kernel"),
            "dq_status": _status(d), "dq_error": (d or {}).get("error"), "dq_check": (d or {}).get("check"),
            "dq_ms": d_ms, "speedup_vs_dequant_cublas": _ratio(d_ms, o_ms),
            "fp16_ms": fp16_ms, "speedup_vs_fp16": _ratio(fp16_ms, o_ms),
        })
    for r in rows:
        if r.get("part") != "bf16":
            continue
        n, k, m = r.get("n"), r.get("k"), r.get("m")
        ms = _ms(r)
        _, _, fp16_ms = fp16(n, k, m)
        tg_ms = tg(n, k, m)
        out["bf16"].append({"n": n, "k": k, "m": m, "status": _status(r), "error": r.get("error"),
                            "check": r.get("check"), "ours_ms": ms, "tflops": tflops(m, n, k, ms),
                            "fp16_ms": fp16_ms, "speedup_vs_fp16": _ratio(fp16_ms, ms),
                            "tinygemm_ms": tg_ms, "speedup_vs_tinygemm": _ratio(tg_ms, ms)})
    return out


def gemm_crossover(sweep):
    """The rule of bench_linear_cuda --gemm, on the merged sweep rows: per shape the smallest M from which the
    tensor cores beat the GEMV at every larger M where both were measured (not even at the largest: the next M of
    the sweep, "beyond_measured"); suggested_m = the threshold T (GEMV below T, tensor cores from T) minimising the
    worst slowdown over shapes and measured M against the faster kernel (ties: smaller mean, then smaller T)."""
    shapes = []
    for r in sweep:
        if (r["n"], r["k"]) not in shapes:
            shapes.append((r["n"], r["k"]))

    def next_m(m):
        return next((x for x in GEMM_MS if x > m), 2 * m)

    times = {s: {r["m"]: (r["gemv_ms"], r["tc_ms"]) for r in sweep if (r["n"], r["k"]) == s and r["m"] is not None
                 and r.get("gemv_ms") is not None and r.get("tc_ms") is not None} for s in shapes}
    per_shape, cands = [], set()
    for s in shapes:
        both = sorted(times[s])
        if not both:
            per_shape.append({"n": s[0], "k": s[1], "crossover_m": None, "beyond_measured": False, "ratios": {}})
            continue
        i = len(both)
        while i > 0 and times[s][both[i - 1]][1] < times[s][both[i - 1]][0]:
            i -= 1
        beyond = i == len(both)
        cross = next_m(both[-1]) if beyond else both[i]
        per_shape.append({"n": s[0], "k": s[1], "crossover_m": cross, "beyond_measured": beyond,
                          "ratios": {m: times[s][m][0] / times[s][m][1] for m in both}})
        cands.update(both)
        cands.add(next_m(both[-1]))
    best = None
    for t in sorted(cands):
        slows = [(tc if m >= t else gv) / min(gv, tc) for s in shapes for m, (gv, tc) in times[s].items()]
        worst, mean = max(slows, default=1.0), (sum(slows) / len(slows) if slows else 1.0)
        if best is None or worst < best[1] - 1e-12 or (abs(worst - best[1]) <= 1e-12 and mean < best[2] - 1e-12):
            best = (t, worst, mean)
    crosses = [p["crossover_m"] for p in per_shape if p["crossover_m"] is not None]
    return {"per_shape": per_shape, "max_over_shapes": max(crosses) if crosses else None,
            "suggested_m": best and best[0], "suggested_worst_slowdown": best and best[1],
            "suggested_mean_slowdown": best and best[2]}


def gemm_targets(merged, sweep_shapes, width_shapes):
    """The issue's targets, with cuBLAS fp16 = the faster of cublasGemmEx (C++) and torch.matmul."""
    out = []

    def add(what, need, value, passed):
        st = [_status(r) if r is not None else "missing" for r in need]
        if any(s not in ("ok", "not run", "missing") for s in st):
            verdict = "FAILED"
        elif any(s in ("not run", "missing") for s in st) or value is None:
            verdict = "NO DATA"
        else:
            verdict = "PASS" if passed else "MISS"
        out.append({"what": what, "value": value if verdict in ("PASS", "MISS") else None, "verdict": verdict})

    def sweep_row(n, k, m):
        return find_gemm(merged["sweep"], n=n, k=k, m=m)

    for (n, k) in sweep_shapes:
        s = shape_name(n, k)
        r = sweep_row(n, k, 16)
        gv = r if r is None or r.get("m") is None else {"status": r.get("gemv_status") or "missing"}
        x = _ratio(r and r.get("fp16_ms"), r and r.get("best_ms")) if r and r.get("m") is not None else None
        label = {"gemv": "GEMV", "tensor_core_mma_sync": "mma.sync tensor cores"}.get(r and r.get("best_kernel"), "tensor cores")
        shown = None if x is None else f"{x:.2f}x ({label})"
        add(f"{s} 4-bit g64 M=16 >= {TARGET_GEMM16:.0f}x cuBLAS fp16 (the faster of our GEMV and tensor-core GEMM)",
            [r, gv], shown, x is not None and x >= TARGET_GEMM16)
        need, worst = [], None
        for m in [m for m in GEMM_MS if m >= LARGE_M]:
            r = sweep_row(n, k, m)
            need.append(r)
            # the faster of our tensor-core kernels (default, mma.sync where measured)
            x = r and r.get("m") is not None and max(
                (v for v in (r.get("speedup_vs_fp16"), r.get("mma_speedup_vs_fp16")) if v), default=None)
            if not x:
                worst = "missing"
            elif worst != "missing" and (worst is None or x < worst[0]):
                worst = (x, m)
        ok = isinstance(worst, tuple)
        add(f"{s} 4-bit g64 M>={LARGE_M} >= {TARGET_GEMM_LARGE}x cuBLAS fp16 (tensor cores, M = 256, 1024, 4096)",
            need, f"worst {worst[0]:.2f}x at M={worst[1]}" if ok else None, ok and worst[0] >= TARGET_GEMM_LARGE)
    for (n, k) in width_shapes:
        s = shape_name(n, k)
        for b in (8, 3, 2):
            need, worst = [], None
            for m in WIDTH_MS:
                r = find_gemm(merged["widths"], n=n, k=k, m=m, nbits=b, group_size=64)
                need.append(r)
                if r is not None and r.get("m") is not None:
                    need.append({"status": r.get("dq_status") or "missing"})
                x = r and r.get("m") is not None and r.get("speedup_vs_dequant_cublas")
                if not x:
                    worst = "missing"
                elif worst != "missing" and (worst is None or x < worst[0]):
                    worst = (x, m)
            ok = isinstance(worst, tuple)
            add(f"{s} {b}-bit g64 faster than dequantize+cuBLAS (tensor cores, M = 16, 256, 4096)", need,
                f"worst {worst[0]:.2f}x at M={worst[1]}" if ok else None, ok and worst[0] > 1.0)
    return out


def gemm_problems(ours, peers, merged):
    problems = []
    if ours.get("exit_code"):
        problems.append(f"bench_linear_cuda --gemm exit code {ours['exit_code']}")
    if ours.get("error"):
        problems.append(f"bench_linear_cuda: {ours['error']}")
    for e in ours.get("errors", []) or []:
        problems.append(f"bench_linear_cuda {e.get('part')}: {e.get('error')}")
    g = ours.get("gemm") or {}
    cb = g.get("cublas_fp16") or {}
    if cb and not cb.get("available"):
        problems.append(f"cuBLAS (C++): {cb.get('error')}")
    skipped = sorted({shape_name(r["n"], r["k"]) for part in ("sweep", "widths", "bf16") for r in merged[part]
                      if r["status"] == "not run"})
    if skipped:
        problems.append("not run (time budget): " + ", ".join(skipped))
    for part in ("sweep", "widths", "bf16"):
        for r in merged[part]:
            where = shape_name(r["n"], r["k"]) + (f" {r['nbits']}-bit g{r['group_size']}" if "nbits" in r else "") \
                + (f" M={r['m']}" if r.get("m") is not None else "")
            if r["status"] not in ("ok", "not run", "missing"):
                problems.append(f"ours ({part}) {where}: {r['status']} {r.get('error') or json.dumps(r.get('check'))}")
            if r.get("gemv_status") not in (None, "ok", "not run", "missing"):
                problems.append(f"ours GEMV {where}: {r['gemv_status']} "
                                f"{r.get('gemv_error') or json.dumps(r.get('gemv_check'))}")
            if r.get("dq_status") not in (None, "ok", "not run", "missing"):
                problems.append(f"dequantize+cuBLAS {where}: {r['dq_status']} "
                                f"{r.get('dq_error') or json.dumps(r.get('dq_check'))}")
    for r in cb.get("rows", []) or []:
        if "error" in r:
            problems.append(f"cuBLAS (C++) {r.get('n')}x{r.get('k')} M={r.get('m')}: {r['error']}")
    graph_errors = {(r.get("graph") or {}).get("error") for r in (g.get("rows", []) or [])
                    + ((g.get("dequant_cublas") or {}).get("rows", []) or [])} - {None}
    for e in sorted(graph_errors):
        problems.append(f"ours: CUDA graph capture failed (stream timing used): {e}")
    for name in ("torch_matmul_fp16", "tinygemm_int4"):
        p = (peers or {}).get(name)
        if isinstance(p, dict) and p.get("error"):
            problems.append(f"{name}: {p['error']}")
        by_error = {}
        for r in (p or {}).get("rows", []) if isinstance(p, dict) else []:
            if "error" in r:
                by_error.setdefault(r["error"], []).append(f"{r.get('n')}x{r.get('k')}"
                                                           + (f" M={r['m']}" if "m" in r else ""))
        for err, where in by_error.items():
            problems.append(f"{name} ({', '.join(where)}): {err}")
    if isinstance(peers, dict) and peers.get("error"):
        problems.append(f"peers: {peers['error']}")
    return problems


def markdown_gemm(meta, merged, cross, tgts, ours, peers):
    dev = meta["device"]
    g = ours.get("gemm") or {}
    cb = g.get("cublas_fp16") or {}
    out = [f"# QuantizedLinear tensor-core GEMM on the GPU: {dev.get('name', '?')}, commit {meta['commit'] or '-'}\n"]
    out.append(f"- date {meta['date']}; driver {meta.get('driver') or '-'}; torch {meta.get('torch') or '-'} "
               f"(CUDA {meta.get('torch_cuda') or '-'}); hqq-cpp {ours.get('hqq_version', '-')}; "
               f"{'--quick' if meta['quick'] else 'full run'}; `bench_linear_cuda --gemm`")
    out.append(f"- L2 {f(dev.get('l2_bytes'), '.1f', 1e-6)} MB; every call rotates among copies of its weight "
               f"totalling >= {L2_FACTOR:g}x L2 (x and y: one buffer each); CUDA events, warm-up, medians; headline = "
               "CUDA graph replay of back-to-back calls when the capture works, else calls enqueued one by one")
    out.append("- TFLOP/s = 2 M N K / time; x cuBLAS = cublasGemmEx fp16 (C++, "
               f"{'cuBLAS ' + str(cb.get('version')) if cb.get('available') else cb.get('error', 'not run')}; "
               "f16 in and out, f32 accumulation) time / ours; x torch.matmul = torch.matmul fp16 time / ours; the "
               "targets take the faster of the two as cuBLAS fp16; x tinygemm = torch.ops.aten._weight_int4pack_mm "
               "(int4 g64, bf16 x) time / ours")
    out.append("- ours: QuantizedLinear::forward with ForwardOptions::kernel = kTensorCore (\"TC\") or kGemv "
               f"(M <= {GEMV_MAX_M}); f16 x [M, K] -> f16 y [M, N]; check = max over the checked rows of "
               "||y - y_cpu|| / ||y_cpu|| against the CPU QuantizedLinear (every row up to M = 64, beyond: the first "
               "64, the last and 64 spread over M; every value finite; <= 1e-3 f16, 8e-3 bf16, else FAILED)\n")

    def chk(r, key="check", status="status"):
        c = r.get(key) or {}
        st = r.get(status)
        s = "ok" if st == "ok" else ("-" if st in (None, "missing") else f"**{st.upper()}**")
        return f(c.get("max_rel_err_row"), ".1e"), s

    out.append("## 4-bit g64, f16: M sweep\n")
    head = ("| N x K | M | TC us | TFLOP/s | x cuBLAS | x torch.matmul | x tinygemm | GEMV us | GEMV x cuBLAS "
            "| mma.sync us | mma.sync x cuBLAS | faster | cuBLAS us | torch.matmul us | tinygemm us | rel err | check |")
    out += [head, "|" + "---|" * (head.count("|") - 1)]
    for r in merged["sweep"]:
        if r["m"] is None:
            out.append(f"| {shape_name(r['n'], r['k'])} | - | " + " | ".join(["-"] * 14)
                       + f" | **{r['status'].upper()}** |")
            continue
        err, st = chk(r)
        gst = r.get("gemv_status")
        gv = f(r["gemv_ms"], ".2f", 1e3) if gst in (None, "ok") else f"**{gst.upper()}**"
        tst = r.get("mma_status")
        mma = f(r.get("mma_ms"), ".2f", 1e3) if tst in (None, "ok") else f"**{tst.upper()}**"
        out.append("| " + " | ".join([
            shape_name(r["n"], r["k"]), str(r["m"]), f(r["tc_ms"], ".2f", 1e3), f(r["tflops"], ".1f"),
            f(r["speedup_vs_cublas_cpp"]), f(r["speedup_vs_torch_matmul"]), f(r["speedup_vs_tinygemm"]), gv,
            f(_ratio(r["fp16_ms"], r["gemv_ms"])), mma, f(r.get("mma_speedup_vs_fp16")),
            {"gemv": "GEMV", "tensor_core": "TC", "tensor_core_mma_sync": "mma.sync"}.get(r["best_kernel"], "-")
            if r["gemv_ms"] is not None or r.get("mma_ms") is not None else "-",
            f(r["cublas_cpp_ms"], ".2f", 1e3), f(r["torch_matmul_ms"], ".2f", 1e3), f(r["tinygemm_ms"], ".2f", 1e3),
            err, st]) + " |")
    out.append("\n\"GEMV x cuBLAS\" and \"mma.sync x cuBLAS\" against the faster of cublasGemmEx and torch.matmul; "
               "TC: LinearKernelChoice::kTensorCore (the TMA + wgmma kernels on sm_90); mma.sync: "
               "kTensorCoreMmaSync, timed where TC runs the TMA kernels; \"faster\": the fastest of our kernels "
               "timed at that M.\n")

    out.append("## Crossover GEMV -> tensor cores (4-bit g64, f16)\n")
    ms_both = sorted({m for p in cross["per_shape"] for m in p["ratios"]})
    head = "| N x K | crossover M | " + " | ".join(f"GEMV/TC M={m}" for m in ms_both) + " |"
    out += [head, "|" + "---|" * (head.count("|") - 1)]
    for p in cross["per_shape"]:
        c = "-" if p["crossover_m"] is None else (f"{p['crossover_m']}" + (" (beyond the measured M)"
                                                                         if p["beyond_measured"] else ""))
        out.append(f"| {shape_name(p['n'], p['k'])} | {c} | "
                   + " | ".join(f(p["ratios"].get(m)) for m in ms_both) + " |")
    lib = (g.get("crossover") or {}).get("library_tensor_core_min_m")
    out.append(f"\n- **suggested kAuto threshold: M = {cross['suggested_m'] if cross['suggested_m'] else '-'}** "
               f"(worst slowdown against the faster kernel {f(cross['suggested_worst_slowdown'], '.3f')}x, mean "
               f"{f(cross['suggested_mean_slowdown'], '.3f')}x over the shapes and M above); max over shapes of the "
               f"per-shape crossover: {cross['max_over_shapes'] or '-'}; "
               f"QuantizedLinear::tensor_core_min_m() of this build: {'-' if lib is None else lib}")
    out.append("- rule: per shape, the smallest M from which the tensor cores beat the GEMV at every larger M where "
               f"both were timed (M <= {GEMV_MAX_M}; \"beyond\": not even at the largest, so the next M of the sweep); "
               "the suggested threshold T (GEMV below T, tensor cores from T) minimises the worst slowdown against "
               "the faster kernel over every shape and M (ties: the smaller mean, then the smaller T)\n")

    out.append("## Other widths and groups vs dequantize then cuBLAS (tensor cores, f16)\n")
    out.append("dequantize+cuBLAS = `hqq::cuda::dequantize` into an f16 [N, K] buffer followed by cublasGemmEx on it, "
               "both in every timed call (what a caller without our GEMM runs per call); its output is checked like "
               "ours.\n")
    head = ("| N x K | bits | group | M | TC us | TFLOP/s | dequant+cuBLAS us | x dequant+cuBLAS | x cuBLAS fp16 "
            "| rel err | check | dequant+cuBLAS check |")
    out += [head, "|" + "---|" * (head.count("|") - 1)]
    order = []
    for r in merged["widths"]:
        if (r["n"], r["k"]) not in order:
            order.append((r["n"], r["k"]))
    for r in sorted(merged["widths"], key=lambda r: (order.index((r["n"], r["k"])), -r["nbits"], r["group_size"],
                                                     r["m"] or 0)):
        if r["m"] is None:
            out.append(f"| {shape_name(r['n'], r['k'])} | {r['nbits']} | {r['group_size']} | - | "
                       + " | ".join(["-"] * 6) + f" | **{r['status'].upper()}** | - |")
            continue
        err, st = chk(r)
        _, dst = chk(r, "dq_check", "dq_status")
        out.append("| " + " | ".join([
            shape_name(r["n"], r["k"]), str(r["nbits"]), str(r["group_size"]), str(r["m"]), f(r["ours_ms"], ".2f", 1e3),
            f(r["tflops"], ".1f"), f(r["dq_ms"], ".2f", 1e3), f(r["speedup_vs_dequant_cublas"]),
            f(r["speedup_vs_fp16"]), err, st, dst]) + " |")

    out.append("\n## bf16 activations (bf16 x -> bf16 y, 4-bit g64, tensor cores)\n")
    head = "| N x K | M | TC us | TFLOP/s | x cuBLAS fp16 | x tinygemm (bf16) | rel err | check |"
    out += [head, "|" + "---|" * (head.count("|") - 1)]
    for r in merged["bf16"]:
        err, st = chk(r)
        out.append("| " + " | ".join([shape_name(r["n"], r["k"]), str(r["m"]), f(r["ours_ms"], ".2f", 1e3),
                                      f(r["tflops"], ".1f"), f(r["speedup_vs_fp16"]), f(r["speedup_vs_tinygemm"]),
                                      err, st]) + " |")

    out.append("\n## Targets\n")
    for t in tgts:
        out.append(f"- **{t['verdict']}** {t['what']}: {t['value'] or '-'}")
    problems = gemm_problems(ours, peers, merged)
    if problems:
        out.append("\n## Problems\n")
        out += [f"- {p}" for p in problems]
    return "\n".join(out) + "\n"


def driver_version():
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, check=True).stdout.strip().splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return None


# ---------------------------------------------------------------- the run (both modes)

def start_run(args):
    """Start time, commit, tree state, and torch (or why not) of one comparison run."""
    started = datetime.datetime.now(datetime.timezone.utc)
    commit = args.commit or git("rev-parse", "--short", "HEAD") or os.environ.get("HQQ_COMMIT", "")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no")) if git("rev-parse", "HEAD") else None
    torch, torch_error = None, None
    if not args.skip_peers:
        try:
            import torch  # noqa: F811
            if DEV == "cuda" and not torch.cuda.is_available():
                torch_error = "torch sees no CUDA device"
        except Exception as e:  # noqa: BLE001
            torch, torch_error = None, f"cannot import torch: {short_error(e)}"
    return started, commit, dirty, torch, torch_error


def measure_ours(args, commit, tmp, gemm):
    """bench_linear_cuda's JSON (or the one given with --linear-json): the decode mode, or --gemm."""
    if args.linear_json:
        with open(args.linear_json) as fh:
            ours = json.load(fh)
        ours.setdefault("exit_code", 0)
        return ours
    if args.skip_ours:
        return {}
    binary = os.path.abspath(args.bin)
    if not os.access(binary, os.X_OK):
        sys.exit(f"compare_linear_gpu: {binary} is not an executable; build bench_linear_cuda "
                 "(cmake -DHQQ_CUDA=ON -DHQQ_BUILD_BENCH=ON) or pass --bin")
    extra = (["--gemm"] if gemm else []) + (["--no-graphs"] if args.no_graphs else []) + \
        (["--small"] if args.cpu_dry_run else [])
    if args.max_seconds > 0:
        share = GEMM_OURS_SHARE if gemm else 0.6
        extra += ["--max-seconds", f"{max(20.0, share * args.max_seconds):.0f}"]
    if args.raw_dir:
        os.makedirs(args.raw_dir, exist_ok=True)
    name = "bench_linear_cuda-gemm" if gemm else "bench_linear_cuda"
    return run_ours(binary, args.quick, commit, args.raw_dir or tmp, extra, name=name)


def peer_device(ours, torch, torch_error, args):
    """The device the peers run on (ours's, completed by torch) and its L2 bytes, and
    the peers' error entry when they cannot run (else None); prints which."""
    device = dict((ours.get("device") or {}))
    l2 = device.get("l2_bytes")
    error = None
    if args.skip_peers:
        error = {"error": "skipped (--skip-peers)"}
    elif torch is None or torch_error:
        error = {"error": torch_error}
        print(f"compare_linear_gpu: peers not measured: {torch_error}", file=sys.stderr)
    elif DEV == "cuda":
        props = torch.cuda.get_device_properties(0)
        l2 = l2 or int(getattr(props, "L2_cache_size", 50 * 2**20))
        device.setdefault("name", torch.cuda.get_device_name(0))
    else:
        l2 = 1 << 20
        device.setdefault("name", "CPU dry run")
    if error is None:
        print(f"peers on {device['name']} (torch {torch.__version__}):", flush=True)
    return device, l2, error


def run_meta(args, started, commit, dirty, device, torch):
    """The metadata fields both modes record."""
    return {
        "date": started.isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable] + sys.argv),
        "commit": commit,
        "tree_dirty": dirty,
        "device": device,
        "driver": driver_version(),
        "host": {"cpus": os.cpu_count(), "os": platform.platform()},
        "python": platform.python_version(),
        "torch": getattr(torch, "__version__", None),
        "torch_cuda": getattr(getattr(torch, "version", None), "cuda", None),
        "quick": args.quick,
        "cpu_dry_run": args.cpu_dry_run,
        "l2_factor": L2_FACTOR,
    }


def save_results(args, meta, kind, payload, md, measured_anything, failed):
    """Writes <kind>-<date>-<gpu>-<commit>.{json,md} into each --out-dir; exits 1 when
    nothing was measured (no files) or something failed."""
    if not measured_anything:
        print("compare_linear_gpu: nothing was measured; no result files written", file=sys.stderr)
        sys.exit(1)
    if not args.no_save:
        stamp = meta["date"][:10]
        slug = "cpu-dry-run" if args.cpu_dry_run else gpu_slug(meta["device"]["name"])
        for out_dir in (args.out_dir or [os.path.join(REPO, "bench", "results")]):
            os.makedirs(out_dir, exist_ok=True)
            base = results_path(out_dir, stamp, meta["commit"], kind=kind, device=slug)
            with open(base + ".json", "w") as fh:
                json.dump(payload, fh, indent=2)
                fh.write("\n")
            with open(base + ".md", "w") as fh:
                fh.write(md)
            print(f"wrote {base}.json and {base}.md")
    if failed:
        sys.exit(1)


def peer_rows_measured(peers):
    return [r for p in ("torch_matmul_fp16", "tinygemm_int4")
            for r in ((peers or {}).get(p) or {}).get("rows", []) if "error" not in r]


def main_gemm(args):
    global DEV
    sweep_shapes = GEMM_QUICK_SHAPES if args.quick else SHAPES
    width_shapes = GEMM_QUICK_SHAPES
    if args.cpu_dry_run:
        DEV, sweep_shapes, width_shapes = "cpu", SMALL_SHAPES, SMALL_SHAPES

    started, commit, dirty, torch, torch_error = start_run(args)
    # (a) ours first, before torch holds GPU memory.
    with tempfile.TemporaryDirectory(prefix="hqq-gemm-") as tmp:
        ours = measure_ours(args, commit, tmp, gemm=True)

    # The shapes ours measured (they follow its options); else the defaults above.
    opt_shapes = [tuple(int(v) for v in s.split("x")) for s in (ours.get("options") or {}).get("shapes", []) or []]
    if opt_shapes:
        sweep_shapes = [s for s in sweep_shapes if s in opt_shapes] or sweep_shapes
        width_shapes = [s for s in width_shapes if s in opt_shapes]

    # (b) the peers.
    device, l2, peers = peer_device(ours, torch, torch_error, args)
    if peers is None:
        deadline = T0 + args.max_seconds - 10 if args.max_seconds > 0 else None
        peers = run_gemm_peers(torch, sweep_shapes, GEMM_MS, l2, args.quick, not args.no_graphs, deadline)
    device.setdefault("name", "unknown GPU")
    device.setdefault("l2_bytes", l2)

    merged = merge_gemm(ours, peers)
    cross = gemm_crossover(merged["sweep"])
    tgts = gemm_targets(merged, sweep_shapes, width_shapes)
    meta = run_meta(args, started, commit, dirty, device, torch)
    meta.update({
        "speedups": "peer median ms / our median ms, same shape and M; the targets' cuBLAS fp16 = the faster of "
                    "cublasGemmEx (C++) and torch.matmul",
        "crossover": cross,
        "targets": tgts,
    })
    md = markdown_gemm(meta, merged, cross, tgts, ours, peers)
    print()
    print(md)

    rows = merged["sweep"] + merged["widths"] + merged["bf16"]
    failed = bool(ours.get("exit_code")) or any(r["status"] != "ok" for r in rows) or \
        any(r.get(k) not in (None, "ok", "missing") for r in rows for k in ("gemv_status", "dq_status"))
    save_results(args, meta, "gpu-gemm", {"meta": meta, "rows": merged, "peers": peers, "ours": ours}, md,
                 bool(rows or peer_rows_measured(peers)), failed)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.path.join(REPO, "build-gpu", "bench", "bench_linear_cuda"),
                    help="path to bench_linear_cuda")
    ap.add_argument("--linear-json", help="use this bench_linear_cuda JSON instead of running it")
    ap.add_argument("--skip-ours", action="store_true", help="only the peers")
    ap.add_argument("--skip-peers", action="store_true", help="only ours (no torch needed)")
    ap.add_argument("--no-graphs", action="store_true", help="no CUDA graph replay, ours or peers")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (ours and the peers)")
    ap.add_argument("--commit", default=None, help="commit id for the file names and JSON "
                    "(default: git rev-parse --short HEAD, if this is a git checkout)")
    ap.add_argument("--out-dir", action="append", default=None,
                    help="where to write gpu-linear-<date>-<gpu>-<commit>.{json,md}; repeatable "
                    "(default bench/results)")
    ap.add_argument("--no-save", action="store_true", help="print only, write no result files")
    ap.add_argument("--max-seconds", type=float, default=0,
                    help="time limit of the whole script: bench_linear_cuda gets 60 %% of it (70 %% with --gemm; "
                    "its --max-seconds), "
                    "the peers stop starting new shapes when it is near; what is left is recorded as not run")
    ap.add_argument("--raw-dir", help="bench_linear_cuda writes its own JSON here (updated as it goes, so a run "
                    "cut short keeps its numbers); default: a temporary folder")
    ap.add_argument("--gemm", action="store_true",
                    help="the tensor-core GEMM mode: bench_linear_cuda --gemm (M sweep 1..4096, crossover, other "
                    "widths vs dequantize+cuBLAS, bf16), torch.matmul and tinygemm on the same shapes and M; writes "
                    "gpu-gemm-<date>-<gpu>-<commit>.{json,md} (bench_linear_cuda gets 70 %% of --max-seconds)")
    ap.add_argument("--cpu-dry-run", action="store_true", help=argparse.SUPPRESS)  # tiny, on the CPU
    args = ap.parse_args()
    if args.gemm:
        main_gemm(args)
        return

    global DEV
    shapes = SHAPES
    if args.cpu_dry_run:
        DEV, shapes = "cpu", SMALL_SHAPES

    started, commit, dirty, torch, torch_error = start_run(args)
    # (a) ours first, before torch holds GPU memory.
    with tempfile.TemporaryDirectory(prefix="hqq-linear-") as tmp:
        ours = measure_ours(args, commit, tmp, gemm=False)

    # (b) the peers.
    device, l2, peers = peer_device(ours, torch, torch_error, args)
    if peers is None:
        deadline = T0 + args.max_seconds - 10 if args.max_seconds > 0 else None  # 10 s left to write the files
        peers = run_peers(torch, shapes, l2, args.quick, not args.no_graphs, deadline)
    device.setdefault("name", "unknown GPU")
    device.setdefault("l2_bytes", l2)

    rows = merge(ours, peers)
    measured = [s for s in shapes if any((r["n"], r["k"]) == s for r in rows)]
    tgts = targets(rows, measured or shapes)  # nothing measured: every target says NO DATA
    meta = run_meta(args, started, commit, dirty, device, torch)
    meta.update({
        "bytes": "ours: QuantizedLinear::weight_bytes() (codes + scale/zero pairs + bias); cuBLAS fp16: 2 N K; "
                 "tinygemm: packed int4 + bf16 scales_and_zeros",
        "speedups": "peer median ms / our median ms, same shape and M; cuBLAS fp16 = the faster of cublasGemmEx "
                    "(C++) and torch.matmul",
        "targets": tgts,
    })
    md = markdown(meta, rows, peers, ours, tgts)
    print()
    print(md)

    failed = bool(ours.get("exit_code")) or any(r["status"] != "ok" for r in rows)
    save_results(args, meta, "gpu-linear", {"meta": meta, "rows": rows, "peers": peers, "ours": ours}, md,
                 bool(rows or peer_rows_measured(peers)), failed)


if __name__ == "__main__":
    main()
