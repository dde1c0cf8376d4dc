"""Speed of the default analytical L2 model.

    python benchmarks/bench_l2analytic.py

Prints configurations per second of the vectorised grid path (evaluate_arrays with the L2
backing: what sweep and search use) and the wall time of single ``iosim evaluate`` runs on
large shapes (each a fresh process, the way a user runs it)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time

import numpy as np


def grid_rate(n_configs: int = 200_000) -> float:
    from iosim.hardware import load_hardware
    from iosim.l2.backing import grid_backing
    from iosim.mapping import get_mapping
    from iosim.traffic import evaluate_arrays
    hw = load_hardware("h100")
    m = get_mapping("fa2", grid_order="head-major")
    rng = np.random.default_rng(0)
    n = rng.integers(512, 1 << 20, n_configs)
    heads = rng.integers(1, 128, n_configs)
    causal = rng.random(n_configs) < 0.5
    b = grid_backing("attention-1pass", m, hw)
    evaluate_arrays("attention-1pass", m, hw, n=n[:10], d=128, heads=heads[:10],
                    causal=causal[:10], product=False, backing_model=b)
    t = time.perf_counter()
    evaluate_arrays("attention-1pass", m, hw, n=n, d=128, heads=heads, causal=causal,
                    product=False, backing_model=b)
    return n_configs / (time.perf_counter() - t)


def cli_time(args: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run([shutil.which("iosim") or "iosim", "evaluate", *args, "--json"],
                   check=True, capture_output=True)
    return time.perf_counter() - t


if __name__ == "__main__":
    print(f"grid path with the L2 model: {grid_rate():,.0f} configurations/s")
    for args in (["--seq-len", "65536", "--heads", "32", "--batch", "4", "--causal"],
                 ["--seq-len", "1M"], ["--seq-len", "1M", "--batch", "1000", "--heads", "100",
                                       "--causal", "--grid-order", "head-major"]):
        try:
            print(f"iosim evaluate {' '.join(args)}: {cli_time(args):.2f} s")
        except subprocess.CalledProcessError as e:
            print(f"iosim evaluate {' '.join(args)}: failed ({e.stderr.decode().strip()[:120]})")
