"""Benchmark: the NumPy executor on attention-1pass at N = M = 4096, E = F = 128, float32.

Run: python benchmarks/bench_executor.py [--repeat 5]
Prints the machine, the median and best wall time, and the error against a direct
softmax(QK^T)V. Target (issue 2): under 2 s on a 2-core machine.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np

import cascades


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--block-kv", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((a.n, a.d)).astype(np.float32) for _ in range(3))
    c = cascades.load("attention-1pass")
    times = []
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        out = cascades.execute(c, {"Q": q, "K": k, "V": v}, dtype="float32",
                               block_kv=a.block_kv)["O"]
        times.append(time.perf_counter() - t0)
    s = (q.astype(np.float64) @ k.T.astype(np.float64)) / np.sqrt(a.d)
    p = np.exp(s - s.max(1, keepdims=True))
    ref = (p / p.sum(1, keepdims=True)) @ v
    err = float(np.abs(out - ref).max() / np.abs(ref).max())
    print(f"machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} "
          f"python={platform.python_version()} numpy={np.__version__}")
    print(f"attention-1pass N=M={a.n} E=F={a.d} block_kv={a.block_kv} float32: "
          f"median {statistics.median(times):.3f} s, best {min(times):.3f} s "
          f"over {a.repeat} runs; rel. error vs float64 reference {err:.1e}")


if __name__ == "__main__":
    main()
