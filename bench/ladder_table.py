#!/usr/bin/env python3
"""Markdown table of a ladder run (bench/ladder_run.sh): the GEMM timings of
several commits measured one after the other on one GPU, each commit's time
beside the oldest's.

Usage: ladder_table.py OUTDIR [--kit DIR]
  OUTDIR holds gemm-<sha>.json (bench_linear_cuda --gemm of each commit) and
  gemm-<oldest>-again.json (the oldest measured again last: the drift); the
  kit's MANIFEST gives the order and each commit's COMMIT line its subject.

Columns per commit: microseconds (median), and for every commit but the
oldest the oldest's time over its own (above 1: faster than the oldest).
Last columns: the newest commit's speed-up over cuBLAS fp16 (measured in the
newest commit's own run) and, where the oldest ran again, the oldest's second
time over its first (the drift; within a few % of 1 for the comparison to
mean anything). Only the tensor-core kernels (kernel "tensor_core") of the
sweep, widths and bf16 parts; a configuration that failed its check shows
FAILED instead of a time. Then, where OUTDIR has probes.tsv (ladder_run.sh's
probes: commit, configuration, us per call back to back, median us one at a
time), a table of the probe times, each commit's back-to-back time and the
first commit's over it. Python standard library only.
"""

import argparse
import json
import os
import sys


def load_rows(path):
    with open(path) as f:
        d = json.load(f)
    rows = {}
    for r in d.get("gemm", {}).get("rows", []):
        if r.get("kernel") != "tensor_core":
            continue
        key = (r["part"], r["nbits"], r["group_size"], r["dtype"], r["n"], r["k"], r["m"])
        ok = r.get("status") == "ok" and (r.get("check") or {}).get("ok", False)
        rows[key] = (r.get("median_ms") if ok else None, r.get("speedup_vs_cublas_fp16"), ok)
    return d, rows


def commit_header(lead, commits):
    """The header cells: lead, then per commit its time and (but for the first) the ratio."""
    head = list(lead)
    for i, c in enumerate(commits):
        head.append(f"{c} us")
        if i > 0:
            head.append(f"x{commits[0]}")
    return head


def ratio_cell(t0, t):
    """The first commit's time over this one's, or - where either is missing."""
    return f"{t0 / t:.3f}" if t and t0 else "-"


def print_row(cells):
    print("| " + " | ".join(cells) + " |")


def print_header(head):
    print_row(head)
    print("|" + "---|" * len(head))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir")
    ap.add_argument("--kit", default=".ladder")
    args = ap.parse_args()
    with open(os.path.join(args.kit, "MANIFEST")) as f:
        manifest = [line.strip() for line in f if line.strip()]
    commits, runs = [], {}
    for c in manifest:
        p = os.path.join(args.outdir, f"gemm-{c}.json")
        if os.path.exists(p):
            commits.append(c)
            runs[c] = load_rows(p)
    probes = read_probes(os.path.join(args.outdir, "probes.tsv"))
    if not commits and not probes:
        print("ladder_table: no gemm-<sha>.json and no probes.tsv in", args.outdir, file=sys.stderr)
        return 1
    if not commits:
        print_probes(probes, manifest)
        return 0
    first, last = commits[0], commits[-1]
    again = None
    p = os.path.join(args.outdir, f"gemm-{first}-again.json")
    if os.path.exists(p):
        again = load_rows(p)[1]

    dev = runs[last][0].get("device", {}).get("description", "?")
    print(f"# GEMM ladder on {dev}\n")
    print("Each commit's own bench_linear_cuda --gemm, one after the other in one run "
          "(bench/ladder_run.sh; binaries from scripts/ladder_build.sh). Times in us (median); "
          f"x{first}: {first}'s time over the commit's (above 1: faster).\n")
    for c in commits:
        subject = ""
        cp = os.path.join(args.kit, c, "COMMIT")
        if os.path.exists(cp):
            with open(cp) as f:
                subject = f.read().split(" ", 1)[-1].strip()[:110]
        print(f"* `{c}` {subject}")
    print()

    keys = sorted(set().union(*(runs[c][1].keys() for c in commits)),
                  key=lambda k: ({"sweep": 0, "widths": 1, "bf16": 2}.get(k[0], 3), k[1:]))
    head = commit_header(["part", "bits", "g", "x", "N x K", "M"], commits)
    head.append(f"{last} x cuBLAS")
    if again is not None:
        head.append("drift")
    print_header(head)
    for k in keys:
        part, nb, gs, dt, n, kk, m = k
        cells = [part, str(nb), str(gs), dt, f"{n}x{kk}", str(m)]
        t0 = runs[first][1].get(k, (None, None, False))[0]
        for i, c in enumerate(commits):
            t, _, ok = runs[c][1].get(k, (None, None, None))
            if ok is None:
                cells.append("-")
            elif t is None:
                cells.append("FAILED")
            else:
                cells.append(f"{1e3 * t:.1f}")
            if i > 0:
                cells.append(ratio_cell(t0, t))
        sp = runs[last][1].get(k, (None, None, None))[1]
        cells.append(f"{sp:.2f}" if sp else "-")
        if again is not None:
            t2 = again.get(k, (None,))[0]
            cells.append(ratio_cell(t2, t0))
        print_row(cells)
    print_probes(probes, manifest)
    return 0


def read_probes(path):
    """{(commit, configuration): (us back to back, median us)} from probes.tsv."""
    out = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) == 4:
                    out[(parts[0], parts[1])] = (float(parts[2]), float(parts[3]))
    return out


def print_probes(probes, manifest):
    if not probes:
        return
    commits = [c for c in manifest if any(k[0] == c for k in probes)]
    configs = []
    for _, cfg in probes:
        if cfg not in configs:
            configs.append(cfg)
    first = commits[0]
    print(f"\n## probe_gemm_cuda --kernel tma --iters 200 (us per call back to back; x{first}: "
          f"{first}'s time over the commit's)\n")
    print_header(commit_header(["configuration"], commits))
    for cfg in configs:
        t0 = probes.get((first, cfg), (None,))[0]
        cells = [f"`{cfg}`"]
        for i, c in enumerate(commits):
            t = probes.get((c, cfg), (None,))[0]
            cells.append(f"{t:.2f}" if t else "-")
            if i > 0:
                cells.append(ratio_cell(t0, t))
        print_row(cells)


if __name__ == "__main__":
    sys.exit(main())
