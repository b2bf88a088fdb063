#!/usr/bin/env python3
"""Write reference outputs of torch.randn for the Swift TorchGenerator tests.

Usage:  /work/venv/bin/python tools/make_rng_fixtures.py

Output (next to each other, under Tests/Fixtures/rng/):
  torch_randn.json  manifest: torch version, kernels and cases (ops and offsets into the .bin)
  torch_randn.bin   all generated values, float32 little-endian, concatenated

Every case starts from a fresh torch.Generator().manual_seed(seed) and runs a list of ops:
  {"op": "randn", "n": N, "offset": K}  -> torch.randn(N, generator=g); values at bin[K:K+N]
  {"op": "seed", "seed": "S"}           -> g.manual_seed(S) (resets the cached normal too)
Seeds are written as decimal strings (they can exceed 2**63).

torch picks the normal_fill kernel (size >= 16) by CPU capability.  normal_stub has no AVX512
variant, so AVX512 and AVX2 machines both run the AVX2 kernel (avx_mathfun.h log/sincos);
machines without AVX2 run the DEFAULT (scalar float, libm) kernel.  Each case is generated
in a subprocess with ATEN_CPU_CAPABILITY forced, and tagged with its kernel ("avx2" or
"default"), so the fixture is the same whatever machine (with AVX2) regenerates it.
"""
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, "..", "Tests", "Fixtures", "rng")

# (name, kernel, seed, ops); an op is an int n (randn(n)) or ("seed", s).
CASES = [
    # seed 0: scalar sizes, both sides of 16, a tail, a latent-sized fill
    ("s0_n1", "avx2", 0, [1]),
    ("s0_n3", "avx2", 0, [3]),
    ("s0_n15", "avx2", 0, [15]),
    ("s0_n16", "avx2", 0, [16]),
    ("s0_n17", "avx2", 0, [17]),
    ("s0_n100", "avx2", 0, [100]),
    ("s0_n12288", "avx2", 0, [12288]),
    # seed 1
    ("s1_n1", "avx2", 1, [1]),
    ("s1_n15", "avx2", 1, [15]),
    ("s1_n31", "avx2", 1, [31]),
    ("s1_n32", "avx2", 1, [32]),
    ("s1_n1000", "avx2", 1, [1000]),
    # seed 42
    ("s42_n3", "avx2", 42, [3]),
    ("s42_n16", "avx2", 42, [16]),
    ("s42_n17", "avx2", 42, [17]),
    ("s42_n3072", "avx2", 42, [3072]),
    # 64-bit seeds: mt19937 keeps only the low 32 bits
    ("s2p32p5_n3", "avx2", 2**32 + 5, [3]),
    ("s2p32p5_n17", "avx2", 2**32 + 5, [17]),
    ("s2p32p5_n1000", "avx2", 2**32 + 5, [1000]),
    ("s2p63m1_n15", "avx2", 2**63 - 1, [15]),
    ("s2p63m1_n31", "avx2", 2**63 - 1, [31]),
    ("s2p63m1_n100", "avx2", 2**63 - 1, [100]),
    ("s2p64m1_n5", "avx2", 2**64 - 1, [5]),
    # consecutive calls on one generator (the scalar path caches a second normal)
    ("seq_5_37_3_16", "avx2", 42, [5, 37, 3, 16]),
    ("seq_1_1_2_17_1_3", "avx2", 7, [1, 1, 2, 17, 1, 3]),
    ("seq_3_reseed_3", "avx2", 7, [3, ("seed", 7), 3, 1]),
    ("seq_16_624_15_700", "avx2", 123, [16, 624, 15, 700]),
    # the DEFAULT (no-AVX2) kernel, for the optional .scalarFloat mode
    ("default_s0_n16", "default", 0, [16]),
    ("default_s0_n17", "default", 0, [17]),
    ("default_s42_n1000", "default", 42, [1000]),
    ("default_seq_5_37_3_16", "default", 42, [5, 37, 3, 16]),
]

CAPABILITY_FOR_KERNEL = {"avx2": "avx2", "default": "default"}


def worker(kernel):
    """Run in a subprocess with ATEN_CPU_CAPABILITY set; print raw results as JSON."""
    import torch

    cap = torch.backends.cpu.get_cpu_capability()
    results = {}
    for name, k, seed, ops in CASES:
        if k != kernel:
            continue
        g = torch.Generator().manual_seed(seed)
        outs = []
        for op in ops:
            if isinstance(op, tuple):
                g.manual_seed(op[1])
                outs.append(None)
            else:
                t = torch.randn(op, generator=g, dtype=torch.float32)
                outs.append(t.numpy().astype("<f4").tobytes().hex())
        results[name] = outs
    json.dump({"capability": cap, "torch": torch.__version__, "results": results}, sys.stdout)


def main():
    per_kernel = {}
    for kernel, cap in CAPABILITY_FOR_KERNEL.items():
        env = dict(os.environ, ATEN_CPU_CAPABILITY=cap)
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", kernel],
                             env=env, check=True, capture_output=True, text=True).stdout
        per_kernel[kernel] = json.loads(out)
        got = per_kernel[kernel]["capability"]
        if got.lower() != cap:
            sys.exit(f"asked for ATEN_CPU_CAPABILITY={cap}, torch reports {got}")

    blob = bytearray()
    cases = []
    for name, kernel, seed, ops in CASES:
        raw = per_kernel[kernel]["results"][name]
        jops = []
        for op, hexdata in zip(ops, raw):
            if isinstance(op, tuple):
                jops.append({"op": "seed", "seed": str(op[1])})
            else:
                data = bytes.fromhex(hexdata)
                assert len(data) == 4 * op
                jops.append({"op": "randn", "n": op, "offset": len(blob) // 4})
                blob += data
        cases.append({"name": name, "kernel": kernel, "seed": str(seed), "ops": jops})

    os.makedirs(OUT_DIR, exist_ok=True)
    with open(os.path.join(OUT_DIR, "torch_randn.bin"), "wb") as f:
        f.write(blob)
    manifest = {
        "generator": "tools/make_rng_fixtures.py",
        "torch": per_kernel["avx2"]["torch"],
        "dtype": "float32-le",
        "bin": "torch_randn.bin",
        "count": len(blob) // 4,
        "cases": cases,
    }
    # One case per line keeps the manifest short and diffable.
    head = {k: v for k, v in manifest.items() if k != "cases"}
    lines = [json.dumps(c, separators=(", ", ": ")) for c in cases]
    text = json.dumps(head, indent=1)[:-2] + ',\n "cases": [\n  ' + ",\n  ".join(lines) + "\n ]\n}\n"
    assert json.loads(text) == manifest
    with open(os.path.join(OUT_DIR, "torch_randn.json"), "w") as f:
        f.write(text)
    print(f"wrote {len(cases)} cases, {len(blob) // 4} floats ({len(blob)} bytes) to {OUT_DIR}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(sys.argv[2])
    else:
        main()
