"""Benchmark: sweep throughput (points/s) and the time of `iosim bounds verify`.

    python benchmarks/bench_sweep.py

* fixed mappings (fa1, fa2, saha-ye, unfused): all points of a mapping go through one
  vectorised call of the analytical model per chunk (no CSV, no progress bar);
* the same written to a CSV in a temporary directory (atomic rewrites after each chunk);
* a searched algorithm (attention-1pass:best): one search per (N, d), all SRAM sizes at once;
* `run_checks(default_counts())`, the body of `iosim bounds verify`.
"""
from __future__ import annotations

import tempfile
import time


def main():
    from iosim.sweep import SweepSpec, resolve_algorithm, run_sweep
    from iosim.verify import VerifyParams, default_counts, run_checks

    srams = tuple(float(2 ** (9 + k / 4)) for k in range(64))        # 512 B .. ~32 MiB
    Ns = tuple(int(256 * 2 ** (k / 8)) for k in range(64))             # 256 .. ~64K
    fixed = tuple(resolve_algorithm(a) for a in ("fa1", "fa2", "saha-ye", "unfused"))
    spec = SweepSpec(fixed, "two-level", srams, Ns, (64, 128))
    run_sweep(SweepSpec(fixed, "two-level", srams[:2], Ns[:2], (64,)), None, progress=False)  # warm up
    t = time.perf_counter()
    df = run_sweep(spec, None, progress=False, chunk_points=65536)
    dt = time.perf_counter() - t
    print(f"fixed mappings, in memory : {len(df):7d} points in {dt:6.2f} s = {len(df) / dt:10,.0f} points/s")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        df = run_sweep(spec, tmp, progress=False, chunk_points=4096)
        dt = time.perf_counter() - t
    print(f"fixed mappings, to CSV    : {len(df):7d} points in {dt:6.2f} s = {len(df) / dt:10,.0f} points/s")
    sspec = SweepSpec((resolve_algorithm("attention-1pass"),), "two-level", srams[::2], Ns[::8], (64,))
    run_sweep(SweepSpec(sspec.algorithms, "two-level", srams[:1], Ns[:1], (64,)), None, progress=False)
    t = time.perf_counter()
    df = run_sweep(sspec, None, progress=False)
    dt = time.perf_counter() - t
    print(f"searched (best tiling)    : {len(df):7d} points in {dt:6.2f} s = {len(df) / dt:10,.0f} points/s "
          f"({len(sspec.seq_lens)} searches)")
    p = VerifyParams()
    t = time.perf_counter()
    rep = run_checks(default_counts(p.seq_lens, p.head_dims), p)
    dt = time.perf_counter() - t
    print(f"iosim bounds verify       : {len(rep.checks)} checks, {rep.counts} in {dt:.2f} s")


if __name__ == "__main__":
    main()
