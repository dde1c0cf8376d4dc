"""Device: kernel times of the execution-time model's launch sets (experiments/time_plan.py).
Run on the GPU machine from the repository root::

    python experiments/device/time_launches.py calibration|validation|decode   # -> $OUT/gpu_time_SET.csv

For every launch: the generated kernel(s) built from the launch's Mapping (the one the time
model evaluates, iosim.gpu.kernels), timed with ``triton.testing.do_bench`` (median, inputs
bf16 N(0, 1)), its compiled registers per thread and shared memory, and, on shapes SDPA can
run, SDPA flash and cuDNN as references (iosim.gpu.timing.measure_launches). Compilation runs
first in parallel processes (Triton's cache is shared).
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.join(os.getcwd(), "experiments"))


def _compile(items):
    import torch
    from iosim.gpu.timing import _inputs, _launch, _module
    bad = 0
    for d in items:
        l = _launch(d)
        try:
            _, mod = _module(l)
            q, k, v = _inputs(l, seed=0)
            mod.forward(q, k, v, causal=l["causal"])
            torch.cuda.synchronize()
        except Exception as exc:  # noqa: BLE001 - reported again by the timed run
            print("compile failed", d, exc, flush=True)
            bad += 1
        torch.cuda.empty_cache()
    return bad


def main() -> None:
    import multiprocessing as mp

    from iosim.gpu.timing import measure_launches
    from time_plan import SETS
    name = sys.argv[1]
    launches = SETS[name]()
    items = [l.to_dict() for l in launches]
    t0 = time.time()
    chunks = [items[i::12] for i in range(min(12, len(items)))]
    with mp.get_context("spawn").Pool(len(chunks)) as pool:
        bad = sum(pool.map(_compile, chunks))
    print(f"compiled {len(items)} launches in {time.time() - t0:.0f} s ({bad} failed)", flush=True)
    rows = measure_launches(items, progress=False)
    for l, r in zip(launches, rows):
        r["label"] = l.label
    from iosim.gpu.validate import write_csv
    write_csv(rows, os.path.join(os.environ.get("OUT", "."), f"gpu_time_{name}.csv"))


if __name__ == "__main__":
    main()
