#!/usr/bin/env python3
"""Side-by-side GPU comparison of hqq-cpp's CUDA backend with the reference `hqq` package.

One run, one GPU, the same matrices. The script

  (a) makes two heavy-tailed weights, 4096x4096 and 4096x11008 (Student-t
      with 4 degrees of freedom scaled to std 0.02, columns 1 and 511, 1023,
      ... scaled 10x as outlier channels; numpy, fixed --seed; the rule of
      compare_reference.py), rounds them to fp16 and saves them as tensors
      "W_4096x4096" and "W_4096x11008" of a temporary safetensors file;
  (b) runs our `bench_cuda --weights FILE` on that file (quantize for nbits
      8/4/3/2/1 x solvers proximal/legacy/none, the Llama-2-7B sum,
      dequantize/pack/unpack GB/s, the device copy ceiling; JSON);
  (c) times the reference on the same GPU and the same fp16 matrices:
      `Quantizer.quantize(W, nbits=b, group_size=64, axis=1, optimize=True,
      round_zero=(b == 4), device="cuda", compute_dtype=torch.float16,
      bitpack=True)` -- the settings of hqq's `BaseQuantizeConfig`, whose
      solver runs in fp16 on CUDA -- and with optimize=False (its
      round-to-nearest), with CUDA events, warm-up first, median of
      --ref-reps, rotating among copies of the weight larger than 2x L2;
      its error is measured on its codes dequantized in fp32 with its fp16
      scale and zero, against the same fp16 weight, in float64: the same
      basis as ours (hqq::measure_error on the stored f16 scale and zero);
      also its Quantizer.dequantize (fp16) and BitPack pack/unpack as peers
      of our dequantize/pack/unpack;
  (d) measures the peers of DESIGN section 6: a torch device-to-device copy
      (1 GiB, read + write bytes/s), cuBLAS fp16 through torch.matmul (a
      large 8192^3 product as the compute ceiling, and x @ W.T for the Llama
      shapes at batch 1/8/16/256), and PyTorch's int4 tinygemm
      (torch.ops.aten._weight_int4pack_mm, group 64) where this torch has it;
  (e) writes one JSON and one Markdown table with speed-ups (reference time
      / our time, per nbits and shape) and the error comparison, to
      <out-dir>/gpu-<YYYY-MM-DD>-<gpu>-<commit>.{json,md} for every --out-dir
      (a -2, -3, ... suffix when that name is taken).

Targets (DESIGN.md section 6): GPU quantize >= 20x the reference on the same
GPU with error <= reference; all Llama-2-7B linear layers in <= 0.5 s on an
H100 (4-bit g64); dequantize / pack / unpack >= 85 % of the copy bandwidth.

The reference package must be importable: on the GPU machine it travels as
carried files (bench/fetch_gpu_deps.sh makes .pydeps; gpu_check.sh puts it on
PYTHONPATH). Usage, from the repository root after building bench_cuda:

    PYTHONPATH=.pydeps python3 bench/compare_reference_gpu.py --bin build-gpu/bench/bench_cuda
    ... --quick                 # fewer repetitions everywhere
    ... --bench-json FILE       # reuse a bench_cuda JSON instead of running it (its weights
                                #   must come from the same --seed: it records the file it read)
"""

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile

import numpy as np

# The CPU comparison's weight rule and result naming (same folder).
from compare_reference import fmt_ok, git, make_weight as cpu_rule_weight, results_path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = [(4096, 4096), (4096, 11008)]
BITS = [8, 4, 3, 2, 1]
GROUP = 64
AXIS = 1
TARGET_SPEEDUP = 20.0
TARGET_LLAMA_S = 0.5
TARGET_FRACTION = 0.85
LLAMA_COUNTS = [32 * 4, 32 * 3]  # weights of SHAPES[0] and SHAPES[1] in Llama-2-7B
# --cpu-dry-run (a check of this script on a machine without a GPU): tiny sizes on the CPU.
DEV = "cuda"
COPY_BYTES = 1 << 30
MATMUL_N = 8192
LINEAR_SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008)]  # (out, in) of the Llama layers


class _CpuEvent:
    """torch.cuda.Event stand-in for --cpu-dry-run (wall clock)."""

    def __init__(self, enable_timing=True):
        self.t = None

    def record(self):
        import time
        self.t = time.perf_counter()

    def synchronize(self):
        pass

    def elapsed_time(self, other):
        return (other.t - self.t) * 1e3


def cuda_event(torch):
    return torch.cuda.Event(enable_timing=True) if DEV == "cuda" else _CpuEvent()


def synchronize(torch):
    if DEV == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------- inputs

def make_weight(rows, cols, seed):
    """compare_reference.py's heavy-tailed [rows, cols] weight, as float16."""
    w = cpu_rule_weight(rows, cols, seed).astype(np.float16)
    w[w == 0] = np.float16(1e-6)  # never an exact zero
    assert np.isfinite(w).all()
    return w


def shape_name(shape):
    return f"{shape[0]}x{shape[1]}"


# ---------------------------------------------------------------- timing

def time_cuda(torch, fn, nsets, reps, warmup=2, min_sample_ms=1.0, budget_ms=3000.0, min_reps=3):
    """Median/min ms per call of fn(set) with CUDA events, rotating set over range(nsets).

    Warm-up first (every set once, at least `warmup` calls); each sample times k
    back-to-back calls (k such that a sample lasts >= min_sample_ms)."""
    start, stop = cuda_event(torch), cuda_event(torch)
    nxt = [0]

    def call():
        fn(nxt[0])
        nxt[0] = (nxt[0] + 1) % nsets

    for _ in range(max(warmup, nsets)):
        call()
    synchronize(torch)
    start.record()
    for _ in range(nsets):
        call()
    stop.record()
    stop.synchronize()
    est = max(start.elapsed_time(stop) / nsets, 1e-4)
    k = int(min(1000, max(1, -(-min_sample_ms // est))))
    n = int(max(min_reps, min(reps, budget_ms // (est * k))))
    ms = []
    for _ in range(n):
        start.record()
        for _ in range(k):
            call()
        stop.record()
        stop.synchronize()
        ms.append(start.elapsed_time(stop) / k)
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms), "samples": len(ms),
            "calls_per_sample": k, "rotating_sets": nsets}


def rotation_sets(l2_bytes, set_bytes):
    """Copies whose total exceeds twice the L2 (at least 2)."""
    return int(min(64, max(2, (2 * l2_bytes) // max(set_bytes, 1) + 1)))


def gbps(nbytes, ms):
    return nbytes / (ms * 1e-3) / 1e9 if ms > 0 else 0.0


# ---------------------------------------------------------------- the reference

def errors(torch, w64, w_hat):
    """rel Frobenius, mean and max |W - W_hat| in float64 (on the GPU)."""
    d = w64 - w_hat.to(torch.float64)
    return {
        "rel_frobenius": float(torch.linalg.vector_norm(d) / torch.linalg.vector_norm(w64)),
        "mean_abs": float(d.abs().mean()),
        "max_abs": float(d.abs().max()),
    }


def run_reference(torch, Quantizer, BitPack, w_gpu, l2, quick, ref_reps):
    """Times the reference's quantize (optimize True/False), dequantize and bit-packing on w_gpu."""
    rows, cols = w_gpu.shape
    name = shape_name((rows, cols))
    nsets = rotation_sets(l2, w_gpu.numel() * 2)
    ws = [torch.roll(w_gpu, shifts=s * rows // nsets, dims=0).contiguous() for s in range(nsets)]
    w64 = w_gpu.to(torch.float64)
    out = {"quantize": [], "dequantize": [], "pack": [], "unpack": []}
    budget = 1500.0 if quick else 4000.0
    for nbits in BITS:
        for optimize in (True, False):
            kw = dict(nbits=nbits, group_size=GROUP, axis=AXIS, optimize=optimize, round_zero=(nbits == 4),
                      device=DEV, compute_dtype=torch.float16, bitpack=True)
            with torch.inference_mode():
                t = time_cuda(torch, lambda s: Quantizer.quantize(ws[s], **kw), nsets, ref_reps,
                              budget_ms=budget)
                w_q, meta = Quantizer.quantize(ws[0], **kw)
                m = dict(meta)
                m["compute_dtype"] = torch.float32
                m["scale"] = meta["scale"].float()
                m["zero"] = meta["zero"].float()
                err = errors(torch, w64, Quantizer.dequantize(w_q, m))
            row = {"shape": [rows, cols], "nbits": nbits, "group_size": GROUP, "axis": AXIS,
                   "optimize": optimize, "round_zero": nbits == 4, **t,
                   "weights_per_s": w_gpu.numel() / (t["median_ms"] * 1e-3), **err,
                   "scale_dtype": str(meta["scale"].dtype).replace("torch.", "")}
            out["quantize"].append(row)
            print(f"  reference {name} {nbits}-bit {'optimize' if optimize else 'rtn     '}: "
                  f"{t['median_ms']:9.3f} ms  relF {err['rel_frobenius']:.5e}  mean abs {err['mean_abs']:.5e}",
                  flush=True)

            if not optimize or (rows, cols) != SHAPES[-1]:
                continue
            # Peers of our dequantize / pack / unpack on the same codes (fp16 dequantize, its default).
            with torch.inference_mode():
                codes = Quantizer.unpack[meta["packing"]](w_q, dtype=torch.uint8)[: w_gpu.numel() // GROUP]
                dq_bytes = w_q.numel() * w_q.element_size() + 2 * meta["scale"].numel() * 2 + w_gpu.numel() * 2
                dsets = rotation_sets(l2, dq_bytes)
                metas = []
                for _ in range(dsets):
                    mm = dict(meta)
                    mm["compute_dtype"] = torch.float16
                    mm["scale"] = meta["scale"].clone()
                    mm["zero"] = meta["zero"].clone()
                    metas.append((w_q.clone(), mm))
                t = time_cuda(torch, lambda s: Quantizer.dequantize(*metas[s]), dsets, ref_reps, budget_ms=budget)
                out["dequantize"].append({"shape": [rows, cols], "nbits": nbits, "out_dtype": "F16",
                                          "bytes_read_plus_written": dq_bytes, **t,
                                          "gbps": gbps(dq_bytes, t["median_ms"])})
                del metas
                pk_bytes = codes.numel() + w_q.numel() * w_q.element_size()
                psets = rotation_sets(l2, pk_bytes)
                cs = [codes.clone() for _ in range(psets)]
                pk = [w_q.clone() for _ in range(psets)]
                pack = Quantizer.pack[meta["packing"]]
                unpack = Quantizer.unpack[meta["packing"]]
                t = time_cuda(torch, lambda s: pack(cs[s]), psets, ref_reps, budget_ms=budget)
                out["pack"].append({"shape": [rows, cols], "nbits": nbits, "bytes_read_plus_written": pk_bytes,
                                    **t, "gbps": gbps(pk_bytes, t["median_ms"])})
                t = time_cuda(torch, lambda s: unpack(pk[s], dtype=torch.uint8), psets, ref_reps, budget_ms=budget)
                out["unpack"].append({"shape": [rows, cols], "nbits": nbits, "bytes_read_plus_written": pk_bytes,
                                      **t, "gbps": gbps(pk_bytes, t["median_ms"])})
                del cs, pk, codes
    del ws, w64
    if DEV == "cuda":
        torch.cuda.empty_cache()
    return out


# ---------------------------------------------------------------- peers

def run_peers(torch, weights_gpu, l2, quick, reps):
    peers = {}
    # Device copy, 1 GiB each way.
    nbytes = COPY_BYTES
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=DEV)
    dst = torch.empty_like(src)
    t = time_cuda(torch, lambda s: dst.copy_(src), 1, 20 if quick else 50, min_sample_ms=0.0, min_reps=10)
    peers["torch_copy"] = {"bytes_copied": nbytes, "bytes_read_plus_written": 2 * nbytes, **t,
                           "gbps": gbps(2 * nbytes, t["median_ms"])}
    del src, dst
    print(f"  torch copy 1 GiB: {t['median_ms']:.3f} ms -> {peers['torch_copy']['gbps']:.0f} GB/s read+write",
          flush=True)

    # cuBLAS fp16 compute ceiling.
    n = MATMUL_N
    a = torch.randn(n, n, device=DEV, dtype=torch.float16)
    b = torch.randn(n, n, device=DEV, dtype=torch.float16)
    t = time_cuda(torch, lambda s: torch.matmul(a, b), 1, 10 if quick else 30, min_reps=5)
    peers["cublas_fp16_square"] = {"m": n, "n": n, "k": n, **t, "tflops": 2 * n**3 / (t["median_ms"] * 1e-3) / 1e12}
    del a, b
    print(f"  cuBLAS fp16 {n}^3: {t['median_ms']:.3f} ms -> {peers['cublas_fp16_square']['tflops']:.0f} TFLOP/s",
          flush=True)

    # x @ W.T for the Llama shapes: [out, in] = 4096x4096, 11008x4096 (gate/up), 4096x11008 (down).
    rows = []
    layer_shapes = LINEAR_SHAPES
    batches = [1, 16] if quick else [1, 8, 16, 256]
    for (o, i) in layer_shapes:
        src = weights_gpu[shape_name(SHAPES[0])] if o == i else weights_gpu[shape_name(SHAPES[1])]
        w = src.reshape(o, i)
        nsets = rotation_sets(l2, w.numel() * 2)
        ws = [torch.roll(w, shifts=s * 7, dims=0).contiguous() for s in range(nsets)]
        for m in batches:
            x = torch.randn(m, i, device=DEV, dtype=torch.float16)
            t = time_cuda(torch, lambda s: torch.matmul(x, ws[s].t()), nsets, reps, min_reps=5)
            wbytes = w.numel() * 2
            rows.append({"out_features": o, "in_features": i, "batch": m, **t,
                         "weight_gbps": gbps(wbytes, t["median_ms"]),
                         "tflops": 2 * m * o * i / (t["median_ms"] * 1e-3) / 1e12})
        del ws
    peers["cublas_fp16_linear"] = rows

    # PyTorch int4 tinygemm (bf16 activations, group 64), where this torch has it.
    tg = []
    try:
        for (o, i) in layer_shapes:
            g = torch.Generator(device=DEV).manual_seed(1)
            q = torch.randint(0, 16, (o, i), dtype=torch.int32, device=DEV, generator=g)
            packed_u8 = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)
            w_packed = torch.ops.aten._convert_weight_to_int4pack(packed_u8, 8)
            sz = torch.rand(i // GROUP, o, 2, device=DEV, dtype=torch.bfloat16) * 0.01 + 0.001
            for m in batches:
                x = torch.randn(m, i, device=DEV, dtype=torch.bfloat16)
                t = time_cuda(torch, lambda s: torch.ops.aten._weight_int4pack_mm(x, w_packed, GROUP, sz), 1, reps,
                              min_reps=5)
                wbytes = o * i // 2 + sz.numel() * 2
                tg.append({"out_features": o, "in_features": i, "batch": m, **t,
                           "weight_gbps": gbps(wbytes, t["median_ms"]),
                           "note": "one weight, not rotated (packed 4-bit weights of one layer fit in L2)"})
        peers["tinygemm_int4"] = tg
    except Exception as e:  # noqa: BLE001 - a peer that this torch lacks is recorded, not fatal
        first = (str(e).strip().splitlines() or [""])[0][:200]
        peers["tinygemm_int4"] = {"error": f"{type(e).__name__}: {first}", "partial": tg}
    if DEV == "cuda":
        torch.cuda.empty_cache()
    return peers


# ---------------------------------------------------------------- ours

def run_ours(binary, weights_file, quick, commit, tmp):
    out_json = os.path.join(tmp, "bench_cuda.json")
    cmd = [binary, "--weights", weights_file, "--json", out_json]
    if DEV != "cuda":
        cmd.append("--small")
    if commit:
        cmd += ["--commit", commit]
    if quick:
        cmd.append("--quick")
    print(f"$ {shlex.join(cmd)}", flush=True)
    p = subprocess.run(cmd, stdout=sys.stdout, stderr=sys.stderr)
    result = None
    if os.path.exists(out_json):
        with open(out_json) as f:
            result = json.load(f)
    if p.returncode != 0:
        sys.stderr.write(f"compare_reference_gpu: bench_cuda exited {p.returncode}\n")
        result = result or {}
        result["exit_code"] = p.returncode
    result["command"] = shlex.join(cmd)
    return result


# ---------------------------------------------------------------- the comparison

def ours_row(ours, part, **key):
    for r in ours.get(part, []):
        if "error" not in r and all((r.get(k) == v) for k, v in key.items()):
            return r
    return None


def not_worse(o, r):
    if o is None or r is None:
        return None
    return o["rel_frobenius"] <= r["rel_frobenius"] and o["mean_abs"] <= r["mean_abs"]


def compare(ours, ref):
    rows = []
    for shape in SHAPES:
        for nbits in BITS:
            ref_opt = next((r for r in ref["quantize"] if r["shape"] == list(shape) and r["nbits"] == nbits
                            and r["optimize"]), None)
            ref_rtn = next((r for r in ref["quantize"] if r["shape"] == list(shape) and r["nbits"] == nbits
                            and not r["optimize"]), None)
            o = {s: ours_row(ours, "quantize", shape=list(shape), nbits=nbits, solver=s)
                 for s in ("proximal", "legacy", "none")}

            def sp(ref_r, our_r):
                return ref_r["median_ms"] / our_r["median_ms"] if ref_r and our_r else None

            rows.append({
                "shape": shape_name(shape), "nbits": nbits, "group_size": GROUP, "axis": AXIS,
                "reference_ms": ref_opt and ref_opt["median_ms"],
                "reference_rtn_ms": ref_rtn and ref_rtn["median_ms"],
                "ours_proximal_ms": o["proximal"] and o["proximal"]["median_ms"],
                "ours_legacy_ms": o["legacy"] and o["legacy"]["median_ms"],
                "ours_none_ms": o["none"] and o["none"]["median_ms"],
                "speedup_proximal": sp(ref_opt, o["proximal"]),
                "speedup_legacy": sp(ref_opt, o["legacy"]),
                "speedup_none_vs_reference_rtn": sp(ref_rtn, o["none"]),
                "reference_error": ref_opt and {k: ref_opt[k] for k in ("rel_frobenius", "mean_abs", "max_abs")},
                "reference_rtn_error": ref_rtn and {k: ref_rtn[k] for k in ("rel_frobenius", "mean_abs", "max_abs")},
                "ours_proximal_error": o["proximal"] and {k: o["proximal"][k]
                                                          for k in ("rel_frobenius", "mean_abs", "max_abs")},
                "ours_legacy_error": o["legacy"] and {k: o["legacy"][k] for k in ("rel_frobenius", "mean_abs", "max_abs")},
                "ours_none_error": o["none"] and {k: o["none"][k] for k in ("rel_frobenius", "mean_abs", "max_abs")},
                "proximal_not_worse": not_worse(o["proximal"], ref_opt),
                "legacy_not_worse": not_worse(o["legacy"], ref_opt),
            })
    return rows


def mem_rows(ours, ref, ours_copy_gbps):
    """Dequantize / pack / unpack: ours (GB/s, fraction of copy) beside the reference's."""
    rows = []
    for part in ("dequantize", "pack", "unpack"):
        for r in ours.get(part, []):
            if "error" in r:
                rows.append({"op": part, "nbits": r.get("nbits"), "shape": shape_name(r.get("shape", [0, 0])),
                             "error": r["error"], "ours_ms": None, "ours_gbps": None, "fraction_of_copy": None,
                             "meets_85pct": False, "checked_ok": None, "reference_ms": None,
                             "reference_gbps": None, "speedup": None})
                continue
            if part == "dequantize":
                ref_r = next((x for x in ref.get(part, []) if x["nbits"] == r["nbits"]
                              and x["out_dtype"] == r["out_dtype"]), None)
                what = f"dequantize -> {r['out_dtype']}"
            else:
                ref_r = next((x for x in ref.get(part, []) if x["nbits"] == r["nbits"]), None)
                what = part
            ok = r.get("bit_equal_to_cpu", r.get("equal_to_cpu_pack", r.get("round_trip_exact")))
            rows.append({"op": what, "nbits": r["nbits"], "shape": shape_name(r["shape"]),
                         "ours_ms": r["median_ms"], "ours_gbps": r["gbps"], "fraction_of_copy": r["fraction_of_copy"],
                         "meets_85pct": r["fraction_of_copy"] >= TARGET_FRACTION, "checked_ok": ok,
                         "reference_ms": ref_r and ref_r["median_ms"], "reference_gbps": ref_r and ref_r["gbps"],
                         "speedup": (ref_r["median_ms"] / r["median_ms"]) if ref_r else None})
    return rows


def fmt_f(x, spec=".3f"):
    return "-" if x is None else format(x, spec)


def markdown(meta, rows, llama, mrows, peers, ours):
    out = []
    dev = meta["device"]
    out.append(f"# hqq-cpp CUDA backend vs reference hqq on {dev['name']}, {meta['date']}\n")
    out.append(f"- device: {dev['name']} ({dev.get('multiprocessors')} SMs, L2 {dev.get('l2_bytes', 0) / 1e6:.0f} MB, "
               f"{dev.get('memory_gib')} GiB); driver {meta.get('driver')}; ours: "
               f"{ours.get('device', {}).get('description', '?')}")
    out.append(f"- commit: {meta['commit']}{' + uncommitted changes' if meta.get('tree_dirty') else ''}")
    out.append(f"- reference: hqq {meta['hqq_reference']}, torch {meta['torch']} (CUDA {meta['torch_cuda']}), "
               f"python {meta['python']}")
    out.append(f"- matrices: {meta['matrix']}, seed {meta['seed']}, the same fp16 values for both")
    out.append(f"- reference call: `{meta['reference_call']}`")
    out.append(f"- ours: `hqq::cuda::quantize` (device pointers, preallocated workspace, check_finite off), "
               f"scale/zero f16")
    out.append(f"- timing: {meta['timing']}")
    out.append(f"- errors: {meta['error_basis']}")
    out.append(f"- command: `{meta['command']}`")
    for part, d in (meta.get("tests") or {}).items():
        out.append(f"- tests ({part}): {d['passed']} passed, {len(d['failed'])} failed, {len(d['skipped'])} skipped"
                   + (f" (skipped: {', '.join(d['skipped'])})" if d["skipped"] else "")
                   + (f" (FAILED: {', '.join(d['failed'])})" if d["failed"] else ""))
    out.append("")

    out.append("## Quantize (ms per weight; x = reference ms / ours ms)\n")
    head = ("| shape | bits | ref ms | ours proximal ms | ours legacy ms | x proximal | x legacy | ref RTN ms "
            "| ours none ms | ref relF | proximal relF | legacy relF | ref mean abs | proximal mean abs "
            "| legacy mean abs | proximal <= ref | legacy <= ref |")
    out.append(head)
    out.append("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        e = lambda d, k: "-" if not d else f"{d[k]:.5e}"  # noqa: E731
        out.append("| " + " | ".join([
            r["shape"], str(r["nbits"]), fmt_f(r["reference_ms"]), fmt_f(r["ours_proximal_ms"]),
            fmt_f(r["ours_legacy_ms"]), fmt_f(r["speedup_proximal"], ".1f"), fmt_f(r["speedup_legacy"], ".1f"),
            fmt_f(r["reference_rtn_ms"]), fmt_f(r["ours_none_ms"]),
            e(r["reference_error"], "rel_frobenius"), e(r["ours_proximal_error"], "rel_frobenius"),
            e(r["ours_legacy_error"], "rel_frobenius"), e(r["reference_error"], "mean_abs"),
            e(r["ours_proximal_error"], "mean_abs"), e(r["ours_legacy_error"], "mean_abs"),
            fmt_ok(r["proximal_not_worse"]), fmt_ok(r["legacy_not_worse"]),
        ]) + " |")

    out.append("\n## Llama-2-7B, all linear layers (32 x [4 x 4096x4096 + 3 x 4096x11008])\n")
    out.append("| what | ours s | reference s | x |")
    out.append("|---|---|---|---|")
    for r in llama["rows"]:
        out.append(f"| {r['what']} | {fmt_f(r['ours_s'])} | {fmt_f(r['reference_s'])} | {fmt_f(r['speedup'], '.1f')} |")
    out.append(f"\nTarget <= {TARGET_LLAMA_S} s (4-bit g64 proximal, H100): **{llama['verdict']}**\n")

    out.append(f"## Dequantize / pack / unpack, {shape_name(SHAPES[-1])} (GB/s = bytes read + written / time)\n")
    out.append(f"Copy ceiling (ours, cudaMemcpyAsync 1 GiB): {fmt_f(ours.get('copy', {}).get('gbps'), '.0f')} GB/s; "
               f"torch copy: {fmt_f(peers.get('torch_copy', {}).get('gbps'), '.0f')} GB/s.\n")
    out.append("| op | bits | ours ms | ours GB/s | x copy | >= 85 % | checked | ref ms | ref GB/s | x ref |")
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in mrows:
        out.append("| " + " | ".join([
            r["op"], str(r["nbits"]), fmt_f(r["ours_ms"], ".4f"), fmt_f(r["ours_gbps"], ".0f"),
            fmt_f(r["fraction_of_copy"], ".3f"), fmt_ok(r["meets_85pct"]), fmt_ok(r["checked_ok"]),
            fmt_f(r["reference_ms"], ".4f"), fmt_f(r["reference_gbps"], ".0f"), fmt_f(r["speedup"], ".1f"),
        ]) + " |")

    out.append("\n## Peers\n")
    cb = peers.get("cublas_fp16_square")
    if cb:
        out.append(f"- cuBLAS fp16 {cb['m']}^3 (torch.matmul): {cb['median_ms']:.3f} ms, {cb['tflops']:.0f} TFLOP/s")
    out.append("\n| linear (out x in) | batch | cuBLAS fp16 ms | weight GB/s | tinygemm int4 ms | weight GB/s |")
    out.append("|---|---|---|---|---|---|")
    tg = peers.get("tinygemm_int4")
    tg_rows = tg if isinstance(tg, list) else (tg or {}).get("partial", [])
    for r in peers.get("cublas_fp16_linear", []):
        t = next((x for x in tg_rows if x["out_features"] == r["out_features"]
                  and x["in_features"] == r["in_features"] and x["batch"] == r["batch"]), None)
        out.append(f"| {r['out_features']}x{r['in_features']} | {r['batch']} | {r['median_ms']:.4f} | "
                   f"{r['weight_gbps']:.0f} | {fmt_f(t and t['median_ms'], '.4f')} | "
                   f"{fmt_f(t and t['weight_gbps'], '.0f')} |")
    if isinstance(tg, dict) and "error" in tg:
        out.append(f"\ntinygemm: {tg['error']}")

    problems = [f"bench_cuda exit code {ours['exit_code']}"] if ours.get("exit_code") else []
    if ours.get("error"):
        problems.append(f"bench_cuda: {ours['error']}")
    for part in ("errors", "quantize", "dequantize", "pack", "unpack"):
        for r in ours.get(part, []) or []:
            if "error" in r:
                key = {k: v for k, v in r.items() if k != "error"}
                problems.append(f"{part} {json.dumps(key)}: {r['error']}")
    for part in ("quantize", "dequantize", "pack", "unpack"):
        for r in ours.get(part, []) or []:
            for check in ("timed_output_matches_owning_api", "bit_equal_to_cpu", "equal_to_cpu_pack",
                          "round_trip_exact"):
                if r.get(check) is False:
                    problems.append(f"{part} {r.get('nbits')}-bit {r.get('solver', r.get('out_dtype', ''))}: "
                                    f"{check} is false")
    if problems:
        out.append("\n## Problems\n")
        out += [f"- {p}" for p in problems]

    out.append("\n## Targets (DESIGN.md section 6)\n")
    for t in meta["targets"]:
        out.append(f"- {t['what']}: {t['value']} -> **{t['verdict']}**")
    return "\n".join(out) + "\n"


def gpu_slug(name):
    m = re.search(r"\b([A-Za-z]{1,2}\d{2,4}[A-Za-z]?)\b", name.replace("NVIDIA", ""))
    return (m.group(1) if m else re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")).lower()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.path.join(REPO, "build-gpu", "bench", "bench_cuda"),
                    help="path to bench_cuda")
    ap.add_argument("--bench-json", help="use this bench_cuda JSON instead of running bench_cuda")
    ap.add_argument("--skip-ours", action="store_true", help="only the reference and the peers")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (ours and the reference)")
    ap.add_argument("--ref-reps", type=int, default=None, help="timed samples of each reference call "
                    "(default 15, --quick 5)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--commit", default=None, help="commit id for the file names and JSON "
                    "(default: git rev-parse --short HEAD, if this is a git checkout)")
    ap.add_argument("--out-dir", action="append", default=None,
                    help="where to write gpu-<date>-<gpu>-<commit>.{json,md}; repeatable "
                    "(default bench/results)")
    ap.add_argument("--no-save", action="store_true", help="print only, write no result files")
    ap.add_argument("--tests-json", help="test counts of the same run (written by gpu_check.sh), "
                    "recorded in the results")
    ap.add_argument("--cpu-dry-run", action="store_true", help=argparse.SUPPRESS)  # tiny, on the CPU
    args = ap.parse_args()
    ref_reps = args.ref_reps or (5 if args.quick else 15)

    import torch
    if args.cpu_dry_run:
        global DEV, SHAPES, COPY_BYTES, MATMUL_N, LINEAR_SHAPES
        DEV, COPY_BYTES, MATMUL_N = "cpu", 1 << 22, 256
        SHAPES = [(256, 256), (256, 688)]  # bench_cuda --small
        LINEAR_SHAPES = [(256, 256), (688, 256), (256, 688)]
    elif not torch.cuda.is_available():
        sys.exit("compare_reference_gpu: torch sees no CUDA device")
    try:
        from hqq.core.quantize import Quantizer
        from hqq.core.bitpack import BitPack
    except ImportError as e:
        sys.exit(f"compare_reference_gpu: cannot import the reference hqq package ({e}); "
                 "run bench/fetch_gpu_deps.sh on a machine with network and put .pydeps on PYTHONPATH")

    started = datetime.datetime.now(datetime.timezone.utc)
    commit = args.commit or git("rev-parse", "--short", "HEAD") or os.environ.get("HQQ_COMMIT", "")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no")) if git("rev-parse", "HEAD") else None
    if DEV == "cuda":
        props = torch.cuda.get_device_properties(0)
        l2 = int(getattr(props, "L2_cache_size", 50 * 2**20))
        device = {"name": torch.cuda.get_device_name(0), "multiprocessors": props.multi_processor_count,
                  "l2_bytes": l2, "memory_gib": round(props.total_memory / 2**30, 1),
                  "compute_capability": f"{props.major}.{props.minor}"}
    else:
        l2 = 1 << 20
        device = {"name": "CPU dry run", "multiprocessors": None, "l2_bytes": l2, "memory_gib": None}
    driver = None
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    print(f"# {device['name']}, torch {torch.__version__}, hqq {importlib.metadata.version('hqq')}, "
          f"commit {commit or '-'}", flush=True)

    with tempfile.TemporaryDirectory(prefix="hqq-gpu-compare-") as tmp:
        from safetensors.numpy import save_file
        host = {shape_name(s): make_weight(s[0], s[1], args.seed) for s in SHAPES}
        wfile = os.path.join(tmp, "weights.safetensors")
        save_file({f"W_{k}": v for k, v in host.items()}, wfile)

        # (b) ours first, before torch holds GPU memory.
        if args.bench_json:
            with open(args.bench_json) as f:
                ours = json.load(f)
        elif args.skip_ours:
            ours = {}
        else:
            binary = os.path.abspath(args.bin)
            if not os.access(binary, os.X_OK):
                sys.exit(f"compare_reference_gpu: {binary} is not an executable; build bench_cuda "
                         "(cmake -DHQQ_CUDA=ON) or pass --bin")
            ours = run_ours(binary, wfile, args.quick, commit, tmp)

        # (c) the reference, (d) the peers.
        weights_gpu = {k: torch.from_numpy(v).to(DEV) for k, v in host.items()}
        ref = {"quantize": [], "dequantize": [], "pack": [], "unpack": []}
        print("reference hqq on the GPU:", flush=True)
        for s in SHAPES:
            part = run_reference(torch, Quantizer, BitPack, weights_gpu[shape_name(s)], l2, args.quick, ref_reps)
            for k in ref:
                ref[k] += part[k]
        print("peers:", flush=True)
        peers = run_peers(torch, weights_gpu, l2, args.quick, ref_reps)

    rows = compare(ours, ref)
    ours_copy = ours.get("copy", {}).get("gbps")
    mrows = mem_rows(ours, ref, ours_copy)

    # Llama-2-7B: ours (estimate and full run) vs the reference's estimate.
    def ref_est(nbits, optimize=True):
        tot = 0.0
        for s, count in zip(SHAPES, LLAMA_COUNTS):
            r = next((x for x in ref["quantize"] if x["shape"] == list(s) and x["nbits"] == nbits
                      and x["optimize"] == optimize), None)
            if r is None:
                return None
            tot += count * r["median_ms"] * 1e-3
        return tot

    ll = ours.get("llama2_7b", {})
    lrows = []
    for e in ll.get("estimate", []):
        if e["nbits"] != 4:
            continue
        r = ref_est(4, e["solver"] != "none")
        lrows.append({"what": f"4-bit {e['solver']}, estimate (per-shape median x count)", "ours_s": e["seconds"],
                      "reference_s": r, "speedup": r / e["seconds"] if r else None})
    for e in ll.get("full_run", []):
        r = ref_est(4, e["solver"] != "none")
        lrows.append({"what": f"4-bit {e['solver']}, full run of 224 layers (median of {e['samples']})",
                      "ours_s": e["median_s"], "reference_s": r, "speedup": r / e["median_s"] if r else None})
    prox_full = next((e for e in ll.get("full_run", []) if e["solver"] == "proximal"), None)
    prox_est = next((e for e in ll.get("estimate", []) if e["solver"] == "proximal" and e["nbits"] == 4), None)
    llama_s = prox_full["median_s"] if prox_full else (prox_est["seconds"] if prox_est else None)
    verdict = "no data" if llama_s is None else ("MET" if llama_s <= TARGET_LLAMA_S else "NOT MET")
    llama = {"rows": lrows, "seconds": llama_s, "from": "full run" if prox_full else "estimate",
             "verdict": verdict}

    # Targets.
    targets = []
    for r in rows:
        if r["speedup_proximal"] is None:
            continue
        ok = r["speedup_proximal"] >= TARGET_SPEEDUP and bool(r["proximal_not_worse"])
        targets.append({"what": f"quantize {r['shape']} {r['nbits']}-bit proximal >= {TARGET_SPEEDUP:.0f}x "
                                f"reference, error <= reference",
                        "value": f"{r['speedup_proximal']:.1f}x, error <= ref: {fmt_ok(r['proximal_not_worse'])}",
                        "verdict": "MET" if ok else "NOT MET"})
    targets.append({"what": f"Llama-2-7B linear layers 4-bit g64 proximal <= {TARGET_LLAMA_S} s ({llama['from']})",
                    "value": "-" if llama_s is None else f"{llama_s:.3f} s", "verdict": verdict})
    for r in mrows:
        targets.append({"what": f"{r['op']} {r['nbits']}-bit >= 85 % of copy",
                        "value": "error" if r["fraction_of_copy"] is None else f"{100 * r['fraction_of_copy']:.1f} %",
                        "verdict": "MET" if r["meets_85pct"] else "NOT MET"})

    meta = {
        "date": started.isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable] + sys.argv),
        "commit": commit,
        "tree_dirty": dirty,
        "device": device,
        "driver": driver,
        "host": {"cpus": os.cpu_count(), "os": platform.platform()},
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "hqq_reference": importlib.metadata.version("hqq"),
        "numpy": np.__version__,
        "seed": args.seed,
        "quick": args.quick,
        "reference_reps": ref_reps,
        "matrix": "Student-t(4) * 0.02/sqrt(2), columns 1 and c%512==511 x10, rounded to float16",
        "reference_call": "Quantizer.quantize(W_fp16_cuda, nbits=b, group_size=64, axis=1, optimize=True, "
                          "round_zero=(b==4), device='cuda', compute_dtype=torch.float16, bitpack=True)",
        "timing": "CUDA events, warm-up first, median over samples; inputs rotate among copies > 2x L2 "
                  "(ours: bench_cuda; reference: the same rule in Python)",
        "error_basis": "codes dequantized in fp32 with the fp16 scale and zero each side stores, against the "
                       "fp16 weight, in float64 (reference) / hqq::measure_error (ours)",
        "targets": targets,
    }
    if args.tests_json:
        try:
            with open(args.tests_json) as f:
                meta["tests"] = json.load(f)
        except (OSError, ValueError) as e:
            meta["tests"] = {}
            print(f"compare_reference_gpu: cannot read --tests-json {args.tests_json}: {e}", file=sys.stderr)
    md = markdown(meta, rows, llama, mrows, peers, ours)
    print()
    print(md)

    if args.no_save:
        return
    stamp = started.strftime("%Y-%m-%d")
    slug = gpu_slug(device["name"])
    payload = {"meta": meta, "comparison": rows, "llama2_7b": llama, "memory_bound": mrows,
               "reference": ref, "peers": peers, "ours": ours}
    for out_dir in (args.out_dir or [os.path.join(REPO, "bench", "results")]):
        os.makedirs(out_dir, exist_ok=True)
        base = results_path(out_dir, stamp, commit, kind="gpu", device=slug)
        with open(base + ".json", "w") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")
        with open(base + ".md", "w") as f:
            f.write(md)
        print(f"wrote {base}.json and {base}.md")
    if ours.get("exit_code"):
        sys.exit(1)


if __name__ == "__main__":
    main()
