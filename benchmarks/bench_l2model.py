"""Speed of the dynamic L2 model (iosim.l2.simulate.predict_dram) on validated launches.

    python benchmarks/bench_l2model.py [--quick]

For each launch: seconds per prediction with the NRU state's reads in numpy's rounds
(``NruSets(..., compiled=False)``, the model before the twentieth session) and compiled (numba,
the default), one pace-noise draw (the default of rounds 13-15) and three (the default since
round 15); checks that both paths predict the same bytes. One process; the numba compile is
done (and cached) before timing. Numbers are recorded in docs/validation.md ("Speed of the
model").
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: (batch, heads, N, d, causal, grid order): validated launches, from quick to the slowest
LAUNCHES = [(8, 16, 1024, 64, True, "head-major"),
            (4, 16, 4096, 128, True, "head-major"),
            (1, 16, 16384, 64, True, "head-major"),
            (1, 8, 65536, 64, True, "head-major")]


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the first two launches only")
    a = ap.parse_args()
    from iosim.l2 import state as l2state
    from iosim.l2.simulate import GpuL2, Workload, predict_dram
    launches = LAUNCHES[:2] if a.quick else LAUNCHES
    predict_dram(Workload(1, 2, 1024, 1024, 64), GpuL2(pace_draws=1))   # compile (cached)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")
    print(f"{'launch':28s} {'numpy 1 draw':>13s} {'numba 1 draw':>13s} {'numba 3 draws':>14s} "
          f"{'speed-up':>9s}")
    for b, h, n, d, c, o in launches:
        w = Workload(b, h, n, n, d, causal=c, grid_order=o)
        one = GpuL2(pace_draws=1)
        real = l2state.NruSets

        def rounds(*args, **kw):
            return real(*args, **{**kw, "compiled": False})
        with mock.patch("iosim.l2.simulate.NruSets", rounds):
            t_np, p_np = _timed(lambda: predict_dram(w, one))
        t_nb, p_nb = _timed(lambda: predict_dram(w, one))
        t_3, _ = _timed(lambda: predict_dram(w, GpuL2(pace_draws=3)))
        assert p_np["dram_read_bytes"] == p_nb["dram_read_bytes"], (b, h, n, d, c, o)
        label = f"{b}x{h}x{n}x{d}{'-causal' if c else ''} {o[:5]}"
        print(f"{label:28s} {t_np:12.2f}s {t_nb:12.2f}s {t_3:13.2f}s {t_np / t_nb:8.1f}x",
              flush=True)


if __name__ == "__main__":
    main()
