#!/usr/bin/env python3
"""Instructions per k tile in the consumer loop of the TMA GEMM kernels, from
their machine code (SASS), no GPU needed.

At small batch the consumers' instruction issue bounds the kernel (an ncu
profile of the 16-row tile found the issue slots busy and the instructions
per 16x64 tile the cost to cut), so the count of instructions a consumer warp
issues per k tile is the static measure of a change to that loop. For each
object and kernel instance, the consumer main loop is the innermost loop (a
backward branch) holding HGMMA instructions; a k tile is 4 HGMMAs. Counted:

  loop       every instruction of the loop body, once;
  per tile   the path a k tile takes with one group change per tile (group
             size 64): the loop body without the barrier watchdog's retry loop
             and clock check, without the group cursor's division after a
             block's k tiles wrap around (once per block), and with one block
             of row-constant setup per tile (the row-constant blocks are the
             forward-branch regions holding FRND or, for f16 activations with
             f16 metadata, HMNMX2), divided by the tiles per
             loop pass.

A wait that retries runs a few more (the retry loop), not counted.

Also counted: the epilogue's instructions per 16x8 accumulator fragment on
the path of an f16 y stored in pairs (N even, rows aligned): after the main
loop every fragment of every path swaps two values with SHFL.BFLY (the pair
exchange of cuda/fragment_pairs.hpp); the median span from one fragment's
exchange to the next over the spans that pack two f16 (F2FP.F16.F32.PACK_AB
of two registers) and store 32 bits (STG.E), the last fragment (EXIT) left
out.

Usage: sass_loop_stats.py OBJECT... [--kernel REGEX] [--cuobjdump PATH]
  (OBJECT: cuda/sm90/gemm_tma_<BM>.cu.o of a build; the default REGEX picks
  the 4-bit instance with f16 activations and f16 metadata of the grid of
  tiles and splits; "...Lb1E" its stream-K instance)
"""

import argparse
import os
import re
import shutil
import subprocess
import sys

from sass_check import kernels  # (name, body) of every function of a listing


def instructions(body):
    return [(int(m.group(1), 16), re.sub(r"\s+", " ", m.group(2)))
            for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+(.*?);", body)]


def branch_target(text):
    m = re.search(r"\bBRA (0x[0-9a-f]+)", text)
    return int(m.group(1), 16) if m else None


def loop_stats(ins):
    at = {a: k for k, (a, _) in enumerate(ins)}
    best = None  # (first, last, hgmma)
    for k, (a, t) in enumerate(ins):
        tgt = branch_target(t)
        if tgt is not None and tgt < a and tgt in at:
            lo = at[tgt]
            h = sum("HGMMA" in x for _, x in ins[lo:k + 1])
            if h >= 4 and (best is None or k - lo < best[1] - best[0]):
                best = (lo, k, h)
    if best is None:
        return None
    lo, hi, hgmma = best
    cold = set()
    const_blocks = []
    for k in range(lo, hi + 1):
        a, t = ins[k]
        tgt = branch_target(t)
        if tgt is None or tgt not in at:
            continue
        if tgt < a and k != hi:  # an inner loop: the watchdog's retries
            cold.update(range(at[tgt], k + 1))
        elif a < tgt <= ins[hi][0] and re.match(r"@!?U?P\d ", t):
            region = range(k + 1, at[tgt])
            text = " ".join(ins[i][1] for i in region)
            if "I2F.RP" in text or "GLOBALTIMER" in text:
                cold.update(region)
    for k in range(lo, hi + 1):
        a, t = ins[k]
        tgt = branch_target(t)
        if tgt is not None and a < tgt <= ins[hi][0] and tgt in at and re.match(r"@!?P\d ", t):
            region = set(range(k + 1, at[tgt]))
            if not (region & cold) and any(re.search(r"\bFRND\b|\bHMNMX2\b", ins[i][1]) for i in region):
                const_blocks.append(len(region))
    tiles = hgmma // 4
    body = hi - lo + 1
    warm = body - len(cold) - sum(const_blocks)
    if const_blocks:
        warm += tiles * sum(const_blocks) / len(const_blocks)
    return body, hgmma, warm / tiles


def epilogue_per_fragment(ins):
    """Median instructions per fragment of the f16 paired-store epilogue path (None: not found)."""
    hgmma = [k for k, (_, t) in enumerate(ins) if "HGMMA" in t]
    if not hgmma:
        return None
    shfl = [k for k in range(hgmma[-1], len(ins)) if "SHFL.BFLY" in ins[k][1]]
    firsts = shfl[0::2]  # two exchanges per fragment
    spans = []
    for a, b in zip(firsts, firsts[1:]):
        text = " ".join(t for _, t in ins[a:b])
        if (re.search(r"F2FP\.F16\.F32\.PACK_AB R\d+, R\d+, R\d+", text) and re.search(r"STG\.E desc", text)
                and "EXIT" not in text):
            spans.append(b - a)
    if not spans:
        return None
    spans.sort()
    return spans[len(spans) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("objects", nargs="+")
    ap.add_argument("--kernel", default=r"gemm_tma_kernelILi4E6__halfS4_Li\d+ELb0")
    ap.add_argument("--cuobjdump", default=shutil.which("cuobjdump"))
    args = ap.parse_args()
    if not args.cuobjdump or not os.path.exists(args.cuobjdump):
        print("sass_loop_stats: no cuobjdump")
        return 77
    status = 0
    for path in args.objects:
        sass = subprocess.run([args.cuobjdump, "-sass", path], check=True, capture_output=True, text=True).stdout
        found = False
        for name, body in kernels(sass):
            if not re.search(args.kernel, name):
                continue
            found = True
            ins = instructions(body)
            stats = loop_stats(ins)
            short = re.sub(r"^.*gemm_tma_kernel", "gemm_tma_kernel", name)[:60]
            if stats is None:
                print(f"{os.path.basename(path)} {short}: no loop with HGMMA")
                status = 1
                continue
            body_n, hgmma, per_tile = stats
            epi = epilogue_per_fragment(ins)
            epi_text = f"; epilogue {epi} per 16x8 fragment (f16 y, paired stores)" if epi else ""
            print(f"{os.path.basename(path)} {short}: loop {body_n} instructions, {hgmma} HGMMA "
                  f"({hgmma // 4} k tiles), {per_tile:.1f} per k tile{epi_text}")
        if not found:
            print(f"{os.path.basename(path)}: no kernel matches {args.kernel}")
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
