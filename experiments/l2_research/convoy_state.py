"""The state of DRAM-bound causal head-major launches: which blocks hit, and how fast they go.

    python experiments/l2_research/convoy_state.py --out DIR    # no GPU; ~3 min on 2 cores

For every traced causal head-major launch (experiments/data/gpu_traced*.csv/.npz) with enough
long blocks, :func:`iosim.l2.replay.hit_pace` on three schedules: the measured one, the dynamic
model's (the readers rule, the default GpuL2 when this was recorded) and the model's with a DRAM-miss pace penalty
(``GpuL2(miss_penalty=0.005)``, the fetch microbenchmark's one-block value; not the default),
and the model's with the slowdown measured by the follow microbenchmark
(``GpuL2(miss_slowdown=MISS_SLOWDOWN)``). Also each model's DRAM prediction against the
counters. Writes DIR/gpu_convoy_state.csv.
"""
from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pandas as pd

from _util import DATA, out_path, parser, pmap  # first: the repository root onto sys.path
from iosim.errors import IosimError  # noqa: E402
from iosim.gpu.validate import write_csv  # noqa: E402
from iosim.l2.replay import READERS, hit_pace  # noqa: E402
from iosim.l2.simulate import MISS_SLOWDOWN, _predict_dynamic  # noqa: E402
from replay_traced import workload  # noqa: E402

#: the fetch microbenchmark's slow-down of a block missing alone (d=128: 1.087 vs 1.081 us)
PENALTY = 0.005


def one(job) -> dict:
    traced, r = job
    w = workload(r)
    tr = np.load(os.path.join(DATA, f"{traced}.npz"))[r["trace_key"]].astype(np.float64)
    tr[:, :2] = (tr[:, :2] - tr[:, 0].min()) / 1e3
    try:
        stats = {"trace": hit_pace(w, tr)}
    except IosimError:                       # too few long blocks to class
        return None
    meas = float(r["dram_read_bytes"])
    out = {"launch": r["trace_key"], "meas_dram_read_bytes": meas}
    for name, gpu in (("model", READERS), ("penalty", replace(READERS, miss_penalty=PENALTY)),
                      ("slowdown", replace(READERS, miss_slowdown=MISS_SLOWDOWN))):
        p = _predict_dynamic(w, gpu, record=True)
        out[f"err_{name}"] = p["dram_read_bytes"] / meas - 1
        b = p["blocks"]
        stats[name] = hit_pace(w, np.c_[b["start_us"], b["end_us"]])
    for name, h in stats.items():
        for k in ("hitters", "missers", "hitter_pace", "misser_pace", "us_per_key_block"):
            out[f"{name}_{k}"] = h[k]
    return out


def main(argv=None) -> int:
    a = parser(__doc__).parse_args(argv)
    jobs = []
    for traced in ("gpu_traced", "gpu_traced_rounds"):
        df = pd.read_csv(os.path.join(DATA, f"{traced}.csv"))
        sel = df[(df["causal"].astype(str) == "True") & (df["grid_order"] == "head-major")]
        jobs += [(traced, r.to_dict()) for _, r in sel.iterrows()]
    rows = [r for r in pmap(one, jobs, "launches", a.workers) if r is not None]
    rows.sort(key=lambda r: r["meas_dram_read_bytes"])
    path = out_path(a.out, "gpu_convoy_state.csv")
    write_csv(rows, path)
    for r in rows:
        print(f"{r['launch']:36s} hitters trace {r['trace_hitters']:.2f} model "
              f"{r['model_hitters']:.2f} penalty {r['penalty_hitters']:.2f} slowdown "
              f"{r['slowdown_hitters']:.2f} | pace gap trace "
              f"{r['trace_misser_pace'] - r['trace_hitter_pace']:+.4f} slowdown "
              f"{r['slowdown_misser_pace'] - r['slowdown_hitter_pace']:+.4f} | err model "
              f"{r['err_model']:+.1%} penalty {r['err_penalty']:+.1%} slowdown "
              f"{r['err_slowdown']:+.1%}")
    print("wrote", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
