#!/usr/bin/env python3
"""Side-by-side CPU comparison of hqq-cpp with the reference `hqq` package.

One run, one machine, one matrix: a heavy-tailed weight (Student-t with 4
degrees of freedom scaled to std 0.02, columns 1 and 511, 1023, ... scaled
10x as outlier channels; fixed seed) is saved as tensor "W" of a safetensors
file. For each configuration the script

  (a) times the reference, `hqq.core.quantize.Quantizer.quantize(W, nbits=b,
      group_size=g, axis=a, optimize=True, round_zero=(b == 4), device="cpu",
      bitpack=True)`, with torch on the CPU in float32 using every core
      (one warm-up, then the median of --ref-reps runs), and measures its
      reconstruction error with scale and zero rounded to fp16 -- what a
      stored checkpoint holds, and what hqq-cpp stores -- so the errors
      compare like with like (the fp32-meta error is recorded too);
  (b) runs our `bench_quantize_file` on the same file with the `legacy` and
      `proximal` solvers and the same thread count;
  (c) prints a table of times, speed-ups and errors, and writes it as JSON
      and Markdown to bench/results/cpu-<YYYY-MM-DD>-<git short commit>.{json,md}
      (a -2, -3, ... suffix when that name is taken).

The target (DESIGN.md section 6): 4-bit, group 64, axis 1, 4096x4096 at least
10x faster than the reference, with an error no larger.

Reference environment (the reference needs torch; install hqq without its
dependency list, which pulls CUDA-only packages):

    python3 -m venv .venv
    .venv/bin/pip install torch numpy safetensors termcolor tqdm einops
    .venv/bin/pip install --no-deps hqq==0.2.8.post1

Usage (from the repository root, after building bench_quantize_file):

    .venv/bin/python bench/compare_reference.py --bin build/bench/bench_quantize_file
    .venv/bin/python bench/compare_reference.py --quick          # 4-bit only
    .venv/bin/python bench/compare_reference.py --large          # + 4096x11008
"""

import argparse
import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_SPEEDUP = 10.0


def make_weight(rows, cols, seed):
    """Heavy-tailed [rows, cols] float32 weight; the same rule as bench_quantize.cpp."""
    rng = np.random.default_rng(seed)
    w = rng.standard_t(4.0, size=(rows, cols)) * (0.02 / np.sqrt(2.0))
    outliers = [c for c in range(cols) if c == 1 or c % 512 == 511]
    w[:, outliers] *= 10.0
    w = w.astype(np.float32)
    assert np.isfinite(w).all() and np.count_nonzero(w) == w.size
    return w


def lscpu():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    info = {}
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    return info


def git(*args):
    try:
        return subprocess.run(["git", "-C", REPO, *args], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def machine_info(threads):
    cpu = lscpu()
    mem_gib = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {
        "cpu_model": cpu.get("Model name", platform.processor()),
        "logical_cpus": os.cpu_count(),
        "cores_per_socket": cpu.get("Core(s) per socket"),
        "threads_per_core": cpu.get("Thread(s) per core"),
        "sockets": cpu.get("Socket(s)"),
        "flags_avx512f": "avx512f" in cpu.get("Flags", "").split(),
        "flags_avx2": "avx2" in cpu.get("Flags", "").split(),
        "mem_total_gib": mem_gib,
        "loadavg_at_start": loadavg(),
        "threads_used": threads,
        "os": platform.platform(),
    }


def errors(w64, w_hat):
    """rel Frobenius and mean |W - W_hat|, in float64."""
    d = w64 - w_hat.astype(np.float64)
    return {
        "rel_frobenius": float(np.linalg.norm(d) / np.linalg.norm(w64)),
        "mean_abs": float(np.abs(d).mean()),
        "max_abs": float(np.abs(d).max()),
    }


def run_reference(torch, Quantizer, w_np, nbits, group, axis, reps):
    wt = torch.from_numpy(w_np)
    kw = dict(nbits=nbits, group_size=group, axis=axis, optimize=True,
              round_zero=(nbits == 4), device="cpu", bitpack=True)
    with torch.inference_mode():
        Quantizer.quantize(wt, **kw)  # warm-up
        seconds = []
        for _ in range(reps):
            t0 = time.perf_counter()
            w_q, meta = Quantizer.quantize(wt, **kw)
            seconds.append(time.perf_counter() - t0)

        def dequant(half_meta):
            m = dict(meta)
            m["compute_dtype"] = torch.float32
            if half_meta:
                m["scale"] = meta["scale"].half().float()
                m["zero"] = meta["zero"].half().float()
            return Quantizer.dequantize(w_q, m).numpy()

        w64 = w_np.astype(np.float64)
        err_f16 = errors(w64, dequant(True))
        err_f32 = errors(w64, dequant(False))
    return {
        "seconds": seconds,
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "weights_per_s": w_np.size / statistics.median(seconds),
        **err_f16,
        "f32_meta": err_f32,
    }


def run_ours(binary, path, nbits, group, axis, solver, reps, threads):
    cmd = [binary, path, "--tensor", "W", "--nbits", str(nbits), "--group-size", str(group),
           "--axis", str(axis), "--solver", solver, "--round-zero", "auto",
           "--reps", str(reps), "--threads", str(threads)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(f"{shlex.join(cmd)} failed ({p.returncode}):\n{p.stderr}\n")
        return {"error": p.stderr.strip() or f"exit {p.returncode}", "command": shlex.join(cmd)}
    out = json.loads(p.stdout)
    out["command"] = shlex.join(cmd)
    return out


def not_worse(ours, ref):
    """ours error <= reference error, on both rel Frobenius and mean abs."""
    if "error" in ours:
        return None
    return ours["rel_frobenius"] <= ref["rel_frobenius"] and ours["mean_abs"] <= ref["mean_abs"]


def fmt_s(x):
    return "-" if x is None else f"{x:.3f}"


def fmt_e(d, key):
    return "-" if d is None or "error" in d else f"{d[key]:.5e}"


def fmt_ok(b):
    return "-" if b is None else ("yes" if b else "NO")


def fmt_cmp(ours, ref):
    """'yes', or 'NO' with how much worse each failing metric is."""
    ok = not_worse(ours, ref)
    if ok is None or ok:
        return fmt_ok(ok)
    worse = [f"{name} +{100 * (ours[key] / ref[key] - 1):.3g}%"
             for key, name in (("rel_frobenius", "relF"), ("mean_abs", "mae"))
             if ours[key] > ref[key]]
    return f"NO ({', '.join(worse)})"


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[:3]
    except OSError:
        return None


def markdown_table(rows):
    head = ("| shape | config | ref s | ours legacy s | ours proximal s | x legacy | x proximal "
            "| ref relF | legacy relF | proximal relF | ref mean abs | legacy mean abs "
            "| proximal mean abs | legacy <= ref | proximal <= ref |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        ref, leg, prox = r["reference"], r["ours_legacy"], r["ours_proximal"]
        lines.append("| " + " | ".join([
            r["shape"], r["config"], fmt_s(ref["median_s"]),
            fmt_s(leg.get("median_s")), fmt_s(prox.get("median_s")),
            "-" if r["speedup_legacy"] is None else f"{r['speedup_legacy']:.1f}",
            "-" if r["speedup_proximal"] is None else f"{r['speedup_proximal']:.1f}",
            fmt_e(ref, "rel_frobenius"), fmt_e(leg, "rel_frobenius"), fmt_e(prox, "rel_frobenius"),
            fmt_e(ref, "mean_abs"), fmt_e(leg, "mean_abs"), fmt_e(prox, "mean_abs"),
            fmt_cmp(leg, ref), fmt_cmp(prox, ref),
        ]) + " |")
    return "\n".join(lines)


def results_path(out_dir, stamp, commit, kind="cpu", device=""):
    """out_dir/<kind>-<stamp>[-<device>]-<commit>, with -2, -3 ... when those files exist."""
    device = f"-{device}" if device else ""
    base = os.path.join(out_dir, f"{kind}-{stamp}{device}-{commit or 'nocommit'}")
    path, n = base, 1
    while os.path.exists(path + ".json") or os.path.exists(path + ".md"):
        n += 1
        path = f"{base}-{n}"
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.path.join("build", "bench", "bench_quantize_file"),
                    help="path to bench_quantize_file")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="threads for torch and for ours (default: all logical CPUs)")
    ap.add_argument("--reps", type=int, default=5, help="timed runs of ours (after a warm-up)")
    ap.add_argument("--ref-reps", type=int, default=3,
                    help="timed runs of the reference (after a warm-up)")
    ap.add_argument("--quick", action="store_true", help="only 4-bit g64 axis 1")
    ap.add_argument("--large", action="store_true", help="also run 4096x11008")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default=os.path.join(REPO, "bench", "results"))
    ap.add_argument("--no-save", action="store_true", help="print only, write no result files")
    args = ap.parse_args()

    binary = os.path.abspath(args.bin)
    if not os.access(binary, os.X_OK):
        sys.exit(f"compare_reference: {binary} is not an executable; build bench_quantize_file "
                 "first or pass --bin")

    import torch
    from hqq.core.quantize import Quantizer

    torch.set_num_threads(args.threads)
    started = datetime.datetime.now()

    shapes = [(4096, 4096)] + ([(4096, 11008)] if args.large else [])
    configs = [(4, 64, 1)]
    if not args.quick:
        configs += [(8, 64, 1), (3, 64, 1), (2, 64, 1), (1, 64, 1), (4, 64, 0)]

    commit = git("rev-parse", "--short", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    # Which uncommitted state was measured: a hash of the diff against HEAD.
    diff_sha = (hashlib.sha1(git("diff", "HEAD").encode()).hexdigest()[:12] if dirty else None)
    meta = {
        "date": started.isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable] + sys.argv),
        "cwd": os.getcwd(),
        "commit": commit,
        "tree_dirty": dirty,
        "tree_diff_sha1": diff_sha,
        "binary_mtime": datetime.datetime.fromtimestamp(os.path.getmtime(binary)).isoformat(
            timespec="seconds"),
        "machine": machine_info(args.threads),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "hqq_reference": importlib.metadata.version("hqq"),
        "numpy": np.__version__,
        "binary": binary,
        "reps_ours": args.reps,
        "reps_reference": args.ref_reps,
        "seed": args.seed,
        "matrix": "Student-t(4) * 0.02/sqrt(2), columns 1 and c%512==511 x10, float32",
        "reference_call": "Quantizer.quantize(W, nbits=b, group_size=g, axis=a, optimize=True, "
                          "round_zero=(b==4), device='cpu', bitpack=True)",
        "error_basis": "dequantized with scale and zero rounded to fp16 (as stored); "
                       "reference fp32-meta error in reference.f32_meta",
    }
    print(f"# {meta['machine']['cpu_model']}, {os.cpu_count()} logical CPUs, threads={args.threads}, "
          f"torch {meta['torch']}, hqq {meta['hqq_reference']}, commit {commit}{'+dirty' if dirty else ''}",
          flush=True)

    rows = []
    with tempfile.TemporaryDirectory(prefix="hqq-compare-") as tmp:
        from safetensors.numpy import save_file
        for (m, n) in shapes:
            w = make_weight(m, n, args.seed)
            path = os.path.join(tmp, f"w_{m}x{n}.safetensors")
            save_file({"W": w}, path)
            for (nbits, group, axis) in configs:
                cfg = f"{nbits}-bit g{group} axis {axis}"
                print(f"[{m}x{n}] {cfg}: reference ...", end="", flush=True)
                ref = run_reference(torch, Quantizer, w, nbits, group, axis, args.ref_reps)
                print(f" {ref['median_s']:.3f} s; ours ...", end="", flush=True)
                leg = run_ours(binary, path, nbits, group, axis, "legacy", args.reps, args.threads)
                prox = run_ours(binary, path, nbits, group, axis, "proximal", args.reps, args.threads)
                print(f" legacy {fmt_s(leg.get('median_s'))} s, proximal {fmt_s(prox.get('median_s'))} s",
                      flush=True)
                rows.append({
                    "shape": f"{m}x{n}", "config": cfg, "nbits": nbits, "group_size": group, "axis": axis,
                    "reference": ref, "ours_legacy": leg, "ours_proximal": prox,
                    "speedup_legacy": ref["median_s"] / leg["median_s"] if "median_s" in leg else None,
                    "speedup_proximal": ref["median_s"] / prox["median_s"] if "median_s" in prox else None,
                    "legacy_not_worse": not_worse(leg, ref),
                    "proximal_not_worse": not_worse(prox, ref),
                    "loadavg_after": loadavg(),
                })

    meta["machine"]["loadavg_at_end"] = loadavg()
    table = markdown_table(rows)
    print()
    print(table)

    target = next((r for r in rows if r["shape"] == "4096x4096" and r["nbits"] == 4
                   and r["group_size"] == 64 and r["axis"] == 1), None)
    verdict = None
    if target is not None:
        sp = target["speedup_proximal"]
        met = sp is not None and sp >= TARGET_SPEEDUP and bool(target["proximal_not_worse"])
        verdict = {
            "what": "4-bit g64 axis 1 4096x4096, proximal: >= 10x reference, error <= reference",
            "speedup": sp, "error_not_worse": target["proximal_not_worse"], "met": met,
        }
        print(f"\nTarget (DESIGN 6): {verdict['what']}: speed-up "
              f"{'-' if sp is None else f'{sp:.1f}x'}, error <= ref: "
              f"{fmt_ok(target['proximal_not_worse'])} -> {'MET' if met else 'NOT MET'}")

    if args.no_save:
        return
    os.makedirs(args.out_dir, exist_ok=True)
    base = results_path(args.out_dir, started.strftime("%Y-%m-%d"), commit)
    with open(base + ".json", "w") as f:
        json.dump({"meta": meta, "target": verdict, "rows": rows}, f, indent=2)
        f.write("\n")
    mach = meta["machine"]
    with open(base + ".md", "w") as f:
        f.write(f"# hqq-cpp vs reference hqq on CPU, {meta['date']}\n\n")
        f.write(f"- machine: {mach['cpu_model']}, {mach['logical_cpus']} logical CPUs "
                f"({mach['sockets']} socket(s) x {mach['cores_per_socket']} core(s) x "
                f"{mach['threads_per_core']} thread(s)), {mach['mem_total_gib']} GiB; "
                f"load average (1/5/15 min) at start {mach['loadavg_at_start']}, "
                f"at end {mach['loadavg_at_end']}\n")
        f.write(f"- threads: {args.threads} (torch.set_num_threads and --threads)\n")
        f.write(f"- commit: {commit}{f' + uncommitted changes (diff sha1 {diff_sha})' if dirty else ''}; "
                f"binary built {meta['binary_mtime']}\n")
        f.write(f"- reference: hqq {meta['hqq_reference']}, torch {meta['torch']}, "
                f"python {meta['python']}, numpy {meta['numpy']}\n")
        f.write(f"- matrix: {meta['matrix']}, seed {args.seed}\n")
        f.write(f"- timing: median of {args.ref_reps} reference runs and {args.reps} runs of ours, "
                "each after one warm-up; ours times hqq::quantize on the in-memory tensor "
                "(pack included), the reference times Quantizer.quantize (bitpack=True)\n")
        f.write(f"- errors: {meta['error_basis']}; 'x' columns = reference s / ours s\n")
        f.write(f"- command: `{meta['command']}`\n\n")
        f.write(table + "\n")
        if verdict is not None:
            f.write(f"\nTarget: {verdict['what']} -> **{'MET' if verdict['met'] else 'NOT MET'}**\n")
    print(f"\nwrote {base}.json and {base}.md")


if __name__ == "__main__":
    main()
