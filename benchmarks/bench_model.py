"""Speed of the analytical model, the mapping search and the tile simulator.

    python benchmarks/bench_model.py [--quick]

Targets (issue 3): >= 1e5 analytical evaluations per second on 2 cores; the ski-slope search
for one head over 20 SRAM sizes in under 0.5 s; the tile simulator for one head at
N = 16384, d = 128 with 128 x 128 tiles in under 5 s. Numbers are recorded in docs/model.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def best_of(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller grids (CI)")
    args = ap.parse_args()

    t_import = time.perf_counter()
    from iosim.hardware import load_hardware
    from iosim.mapping import Shapes, get_mapping
    from iosim.search import search
    from iosim.trace import LRUCache, simulate
    from iosim.traffic import evaluate_arrays, evaluate_grid
    t_import = time.perf_counter() - t_import

    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, numpy {np.__version__}")
    print(f"import time of the modules: {t_import:.2f} s")
    hw = load_hardware("h100")

    # 1. analytical evaluations per second -------------------------------------------------
    ns = np.unique(np.round(np.geomspace(256, 131072, 20)).astype(int))
    ds = np.array([64, 96, 128, 256])
    tiles = np.arange(8, 513, 8) if not args.quick else np.array([32, 64, 128])
    bkv = np.arange(16, 257, 16) if not args.quick else np.array([32, 64])
    causal = np.array([False, True])
    n_cfg = len(ns) * len(ds) * len(tiles) * len(bkv) * len(causal)
    kw = dict(n=ns, d=ds, block_q=tiles, block_kv=bkv, causal=causal, batch=4, heads=16)
    # cold call (caches, lazy imports), then timed
    evaluate_grid("attention-1pass", "fa2", hw, **kw)
    t_eng = best_of(lambda: evaluate_arrays("attention-1pass", "fa2", hw, **kw))
    t_df = best_of(lambda: evaluate_grid("attention-1pass", "fa2", hw, **kw))
    print(f"\n[analytical] {n_cfg:,} configurations (fa2 on h100: N x d x block_q x block_kv x causal)")
    print(f"  engine (evaluate_arrays):     {t_eng * 1e3:8.1f} ms  -> {n_cfg / t_eng:,.0f} configurations/s")
    print(f"  with DataFrame (evaluate_grid): {t_df * 1e3:6.1f} ms  -> {n_cfg / t_df:,.0f} configurations/s")
    for name, casc in (("fa1", "flash1"), ("saha-ye", "attention-3pass"),
                       ("unfused", "attention-3pass")):
        m = get_mapping(name, block_q=64, block_kv=64)
        t = best_of(lambda: evaluate_arrays(casc, m, hw, **kw))
        print(f"  {name:8s} engine: {n_cfg / t:,.0f} configurations/s")

    # 2. ski-slope search -------------------------------------------------------------------
    srams = np.geomspace(1024, 4 * 2**20, 20)
    print("\n[search] one head, 20 SRAM sizes 1 KiB .. 4 MiB, two-level machine, bf16")
    for n, d in ((4096, 128), (16384, 128), (1024, 64)):
        t_cold = time.perf_counter()
        res = search("attention-1pass", "two-level", n=n, d=d, sram_bytes=srams)
        t_cold = time.perf_counter() - t_cold
        t = best_of(lambda: search("attention-1pass", "two-level", n=n, d=d, sram_bytes=srams))
        print(f"  attention-1pass N={n:6d} d={d:3d}: {t * 1e3:6.1f} ms "
              f"({res.candidates:,} candidates; first call {t_cold * 1e3:.0f} ms)")
    for casc in ("attention-3pass", "attention-2pass"):
        t = best_of(lambda: search(casc, "two-level", n=4096, d=128, sram_bytes=srams))
        print(f"  {casc} N=  4096 d=128: {t * 1e3:6.1f} ms")

    # 3. tile simulator ---------------------------------------------------------------------
    print("\n[trace] one head, N=16384, d=128, 128 x 128 tiles (h100 capacities)")
    m = get_mapping("fa2", block_q=128, block_kv=128)
    for causal_ in (False, True):
        s = Shapes(n=16384, e=128, causal=causal_)
        t = best_of(lambda: simulate("attention-1pass", m, hw, s), repeat=2)
        r = simulate("attention-1pass", m, hw, s)
        print(f"  fa2 {'causal    ' if causal_ else 'non-causal'}: {t:6.3f} s, "
              f"{r.tile_events:,} tile events")
    m1 = get_mapping("fa1", block_q=128, block_kv=128)
    t = best_of(lambda: simulate("flash1", m1, hw, Shapes(n=16384, e=128)), repeat=2)
    print(f"  fa1 non-causal: {t:6.3f} s")
    s = Shapes(n=16384 if not args.quick else 4096, e=128)
    l2 = LRUCache(capacity_bytes=25 * 2**20, line_bytes=128, granularity="tile")
    t0 = time.perf_counter()
    r = simulate("attention-1pass", m, hw, s, l2=l2, heads=8, concurrent=132,
                 grid_order="head-major")
    print(f"  fa2 + LRU L2 (tile granularity), 8 heads, 132 concurrent programs: "
          f"{time.perf_counter() - t0:6.3f} s, HBM reads {r.l2['backing_read_bytes'] / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
