#!/usr/bin/env python3
"""Makes the golden data that the C++ parity tests compare against.

Runs the reference package itself (hqq==0.2.8.post1 with PyTorch, on the CPU
in float32, i.e. exactly the path HQQLinear(device="cpu") takes) and writes,
small, under tests/data/:

  golden.safetensors                  per case: input W, reference codes
                                      (unpacked), packed bytes, scale (1/s, f32),
                                      zero (f32), and the same for plain
                                      round-to-nearest (optimize=False);
                                      __metadata__["cases"] lists the settings.
  python_checkpoint.safetensors       HQQLinear layers saved by the package
                                      (state_dict keys, fp16 meta), as a model
                                      would be saved.
  python_checkpoint_dense.safetensors the package's own dequantized weights
                                      for those layers (f32), for comparison.

With --check-ours FILE --dense DENSE it instead loads every quantized layer of
FILE (written by hqq-cpp) into the package's HQQLinear and checks that its
dequantize() matches the dense f32 weights in DENSE (written by
`hqq dequantize`); exit code 0 when all match.

Environment (nothing here is used by the C++ build or its tests):
  python3 -m venv .venv
  .venv/bin/pip install torch numpy safetensors termcolor tqdm einops
  .venv/bin/pip install --no-deps hqq==0.2.8.post1
  .venv/bin/python tests/golden/make_golden.py
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file, load_file

from hqq.core.quantize import Quantizer, HQQLinear, BaseQuantizeConfig

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data")

# Axis 1: numel / G = 72 rows in the grouped view (a multiple of 8, not of 10,
# so 3-bit packing pads). Axis 0: [52, 96] has 4992 = 39 * 128 elements.
SHAPES_AXIS1 = {32: (36, 64), 64: (48, 96), 128: (72, 128)}
SHAPE_AXIS0 = (52, 96)


def make_weight(rng, shape, kind):
    if kind == "student_t":  # heavy tails
        w = rng.standard_t(3.0, size=shape) * 0.02
    elif kind == "outliers":  # gaussian with a few huge values and one outlier column
        w = rng.normal(0.0, 0.02, size=shape)
        idx = rng.choice(w.size, size=max(1, w.size // 200), replace=False)
        w.flat[idx] *= 25.0
        w[:, rng.integers(0, shape[1])] *= 8.0
    elif kind == "flat_groups":  # some constant groups hit the |max-min| <= 1e-4 rule
        w = rng.normal(0.0, 0.02, size=shape)
        w[: shape[0] // 4, :] = 0.0125
    else:
        raise ValueError(kind)
    return torch.from_numpy(w.astype(np.float32))


def reference(W, nbits, group_size, axis, optimize):
    kw = dict(nbits=nbits, channel_wise=True, group_size=group_size, optimize=optimize,
              round_zero=(nbits == 4), axis=axis, device="cpu")
    packed, meta = Quantizer.quantize(W.clone(), bitpack=True, **kw)
    codes, meta2 = Quantizer.quantize(W.clone(), bitpack=False, **kw)
    assert torch.equal(meta["scale"], meta2["scale"]) and torch.equal(meta["zero"], meta2["zero"])
    return packed, codes, meta


def make_golden():
    rng = np.random.default_rng(20261122)
    tensors, cases = {}, []
    kinds = ["student_t", "outliers", "flat_groups"]
    n = 0
    for nbits in (8, 4, 3, 2, 1):
        for axis in (1, 0):
            for group_size in (32, 64, 128):
                shape = SHAPES_AXIS1[group_size] if axis == 1 else SHAPE_AXIS0
                kind = kinds[n % len(kinds)]
                # A few cases use f16/bf16 inputs; the reference quantizes W.float().
                in_dtype = {7: "F16", 17: "BF16"}.get(n, "F32")
                W = make_weight(rng, shape, kind)
                if in_dtype == "F16":
                    W = W.half().float()
                elif in_dtype == "BF16":
                    W = W.bfloat16().float()
                name = f"c{n:02d}"
                packed, codes, meta = reference(W, nbits, group_size, axis, True)
                _, rtn_codes, rtn_meta = reference(W, nbits, group_size, axis, False)
                store = {"F32": W, "F16": W.half(), "BF16": W.bfloat16()}[in_dtype]
                tensors[f"{name}.W"] = store.contiguous()
                tensors[f"{name}.codes"] = codes.to(torch.uint8).contiguous()
                tensors[f"{name}.packed"] = packed.contiguous()
                tensors[f"{name}.scale"] = meta["scale"].float().reshape(-1).contiguous()
                tensors[f"{name}.zero"] = meta["zero"].float().reshape(-1).contiguous()
                tensors[f"{name}.rtn_codes"] = rtn_codes.to(torch.uint8).contiguous()
                tensors[f"{name}.rtn_scale"] = rtn_meta["scale"].float().reshape(-1).contiguous()
                tensors[f"{name}.rtn_zero"] = rtn_meta["zero"].float().reshape(-1).contiguous()
                cases.append(dict(name=name, shape=list(shape), nbits=nbits, group_size=group_size,
                                  axis=axis, round_zero=(nbits == 4), kind=kind, dtype=in_dtype))
                n += 1
    meta = {"cases": json.dumps(cases), "reference": "hqq 0.2.8.post1 Quantizer.quantize(device='cpu')",
            "torch": torch.__version__}
    save_file(tensors, os.path.join(DATA, "golden.safetensors"), metadata=meta)
    print(f"golden.safetensors: {len(cases)} cases")


def make_python_checkpoint():
    torch.manual_seed(7)
    layers = [  # prefix, out, in, nbits, group_size, axis, bias
        ("model.layers.0.self_attn.q_proj", 64, 128, 4, 64, 1, False),
        ("model.layers.0.mlp.up_proj", 96, 64, 3, 64, 1, True),
        ("model.layers.0.mlp.down_proj", 64, 96, 2, 32, 0, False),
        ("model.layers.1.self_attn.o_proj", 64, 64, 8, 128, 1, False),
        ("model.layers.1.mlp.gate_proj", 64, 128, 1, 64, 1, False),
    ]
    state, dense = {}, {}
    for prefix, out_f, in_f, nbits, g, axis, bias in layers:
        lin = torch.nn.Linear(in_f, out_f, bias=bias)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(
                np.random.default_rng(len(state)).standard_t(3.0, size=(out_f, in_f)).astype(np.float32) * 0.02))
        cfg = BaseQuantizeConfig(nbits=nbits, group_size=g, axis=axis)
        h = HQQLinear(lin, cfg, compute_dtype=torch.float16, device="cpu")
        for k, v in h.state_dict().items():
            state[f"{prefix}.{k}"] = v.contiguous()
        dense[f"{prefix}.weight"] = h.dequantize().float().contiguous()
    state["model.norm.weight"] = torch.ones(64, dtype=torch.float16)
    save_file(state, os.path.join(DATA, "python_checkpoint.safetensors"), metadata={"format": "pt"})
    save_file(dense, os.path.join(DATA, "python_checkpoint_dense.safetensors"))
    print(f"python_checkpoint.safetensors: {len(layers)} layers, {len(state)} tensors")


def check_ours(path, dense_path):
    sd = load_file(path)
    dense = load_file(dense_path)
    prefixes = sorted({k[: -len(".W_q")] for k in sd if k.endswith(".W_q")})
    if not prefixes:
        print(f"{path}: no quantized layers")
        return 1
    bad = 0
    for p in prefixes:
        layer = {k[len(p) + 1:]: v for k, v in sd.items() if k.startswith(p + ".")}
        shape = [int(x) for x in layer["shape"]]
        h = HQQLinear(None, BaseQuantizeConfig(), compute_dtype=torch.float32, device="cpu", initialize=False)
        h.load_state_dict(layer)
        h.meta["compute_dtype"] = torch.float32
        ours = dense[p + ".weight"].float().reshape(shape)
        theirs = h.dequantize().float().reshape(shape)
        err = (ours - theirs).abs().max().item()
        ok = err <= 1e-3 * max(1e-6, ours.abs().max().item())
        print(f"{p}: max |ours - hqq| = {err:.3g} {'ok' if ok else 'MISMATCH'}")
        bad += not ok
    return 1 if bad else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check-ours", help="checkpoint written by hqq-cpp")
    ap.add_argument("--dense", help="dense f32 weights of that checkpoint (hqq dequantize)")
    a = ap.parse_args()
    torch.set_num_threads(1)  # deterministic reductions
    if a.check_ours:
        return check_ours(a.check_ours, a.dense)
    os.makedirs(DATA, exist_ok=True)
    make_golden()
    make_python_checkpoint()
    return 0


if __name__ == "__main__":
    sys.exit(main())
