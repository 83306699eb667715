#!/usr/bin/env python3
"""Static checks of the sm_90a GEMM kernels' machine code (SASS), no GPU needed.

What ptxas made of the Hopper kernels decides their speed before any run:
  - every kernel of cuda/sm90/gemm_tma_<BM>.cu
    holds warpgroup MMAs (HGMMA) and no local memory (LDL/STL: spills);
  - every TMA kernel loads its activations by TMA (UTMALDG) and its weights
    and metadata by bulk copies (UBLKCP: one for the weight words of a k
    tile, one or two for the metadata) and issues HGMMA.64x<BM>x16, 4 per
    k tile, with the waits of its schedule (gemm_tma.cuh) and no others:
      BM >= 64, the pipeline: 16 HGMMAs (the first tile, the loop's two,
      the odd last one), a wait for all but the newest group
      (WARPGROUP.DEPBAR.LE gsb0, 0x1) after each of the 3 later tiles and
      one wait for all (0x0) at the end;
      BM < 64, rounds of two tiles: 12 HGMMAs (a two-tile round, a
      one-tile round for an odd count), 4 waits for the first tile's step
      (0x3) in the two-tile round and a wait for all (0x0) per round;
    any other wait means ptxas serialised the wgmmas, which costs the
    overlap the kernel is built for (ptxas advisories C7511/C7512, too few
    registers, and C7513, A registers redefined while in flight);
  - the 256-row TMA kernels move registers to the consumers (SETMAXREG), and
    so do the stream-K instances from 128 rows.

Each object holds every instance twice: the grid of tiles and splits and
the stream-K instance (template argument kSK, "Lb1E" in the name); both
follow the same schedule.

Usage: sass_check.py BUILD_DIR [--cuobjdump PATH]
Exit status: 0 all checks pass, 1 a check failed or an object is missing,
77 no cuobjdump (or nvdisasm) to read the objects with, or a build without
the sm_90a objects (nothing to check).
"""

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys

TMA_BMS = (16, 32, 64, 128, 256)
INSTANCES = 40  # 5 widths x (f16, bf16 activations) x (f16, f32 metadata) x (grid, stream-K)


# HGMMA instructions and wgmma waits (by the number of groups a wait leaves
# in flight) of one TMA kernel, by its schedule (gemm_tma.cuh, kPipelined).
PIPELINED_FROM_BM = 64
SCHEDULES = {
    "pipeline": {"hgmma": 4 + 8 + 4, "waits": {"0x0": 1, "0x1": 3}},
    "rounds": {"hgmma": 8 + 4, "waits": {"0x0": 2, "0x3": 4}},
}


def schedule(bm):
    return SCHEDULES["pipeline" if bm >= PIPELINED_FROM_BM else "rounds"]


def kernels(sass):
    """(name, body) of every function in a cuobjdump -sass listing."""
    parts = re.split(r"^\s*Function : (\S+)\s*$", sass, flags=re.M)
    return [(parts[i], parts[i + 1]) for i in range(1, len(parts) - 1, 2)]


def count(body, pattern):
    return len(re.findall(pattern, body))


def check_object(path, bm, cuobjdump, problems):
    name = os.path.basename(path)
    try:
        sass = subprocess.run([cuobjdump, "-sass", path], check=True, capture_output=True, text=True).stdout
    except subprocess.CalledProcessError as e:
        problems.append(f"{name}: cuobjdump failed: {e.stderr.strip()}")
        return
    ks = [(n, b) for n, b in kernels(sass) if "gemm" in n]
    if len(ks) != INSTANCES:
        problems.append(f"{name}: {len(ks)} GEMM kernels, want {INSTANCES}")
    for kname, body in ks:
        short = kname[-60:]
        hgmma = count(body, r"\bHGMMA\.")
        local = count(body, r"\b(LDL|STL)\b")
        if hgmma == 0:
            problems.append(f"{name} {short}: no HGMMA")
        if local:
            problems.append(f"{name} {short}: {local} local-memory instructions (spills)")
        if bm is None:
            continue
        sched = schedule(bm)
        want = sched["hgmma"]
        shape = count(body, rf"\bHGMMA\.64x{bm}x16\.")
        if hgmma != want or shape != want:
            problems.append(f"{name} {short}: {hgmma} HGMMA ({shape} of them 64x{bm}x16), want {want}")
        waits = dict(collections.Counter(re.findall(r"WARPGROUP\.DEPBAR\.LE gsb0, (0x[0-9a-f]+)", body)))
        if waits != sched["waits"]:
            problems.append(f"{name} {short}: wgmma waits {waits}, want {sched['waits']} "
                            "(serialised wgmmas: ptxas advisory C7511/C7512/C7513)")
        stream_k = "Lb1E" in kname
        if (bm >= 256 or (stream_k and bm >= 128)) and count(body, r"\bU?SETMAXREG\.") < 2:
            problems.append(f"{name} {short}: no register reallocation (SETMAXREG)")
        if count(body, r"\bUTMALDG\b") < 1:
            problems.append(f"{name} {short}: no TMA load (UTMALDG)")
        if count(body, r"\bUBLKCP\b") < 3:
            problems.append(f"{name} {short}: {count(body, r'UBLKCP')} bulk copies, want 1 weight + 1-2 metadata")
    print(f"{name}: {len(ks)} kernels checked")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("build_dir")
    ap.add_argument("--cuobjdump", default=shutil.which("cuobjdump"))
    args = ap.parse_args()
    if not args.cuobjdump or not os.path.exists(args.cuobjdump):
        print("sass_check: SKIPPED: no cuobjdump (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)")
        return 77
    objdir = None
    for root, _, files in os.walk(args.build_dir):
        if "gemm_tma_16.cu.o" in files and root.endswith(os.path.join("cuda", "sm90")):
            objdir = root
            break
    if objdir is None:
        print(f"sass_check: SKIPPED: no sm_90a objects under {args.build_dir} (a build without sm_90)")
        return 77
    problems = []
    for bm in TMA_BMS:
        path = os.path.join(objdir, f"gemm_tma_{bm}.cu.o")
        if not os.path.exists(path):
            problems.append(f"missing {path}")
            continue
        check_object(path, bm, args.cuobjdump, problems)
    for p in problems:
        print("FAILED:", p)
    print("sass_check:", "FAILED" if problems else "all checks pass")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
