"""Two blocks on one SM: does the one that hits go faster when the other waits on DRAM?

    python experiments/l2_research/partner_pace.py --out DIR    # no GPU; ~8 min on 2 cores

At d=64 the validation tiling fits two blocks per SM. The dynamic model splits an SM between
them by age (the older 0.571, ``SM_RATES_STARTUP``), whatever each is doing; a block that waits
for DRAM leaves its share unused. On a GPU the SM issues from whichever warps are ready, so the
time one block waits could go to the other. :func:`iosim.l2.replay.partner_pace` measures that
in a traced schedule: each block's pace (relative to its neighbours in start order) against its
own K/V miss fraction and that of the block beside it on its SM (from the replay). This runs it
on every traced d=64 launch with enough long blocks that share an SM -- the measured schedule,
the default model's (``sm_sharing="seniority"``) and the model's with the SM's time given to
the block that can use it (``GpuL2(sm_sharing="work-conserving")``, up to a lone block's rate)
-- and each model's DRAM reads against the traced run's counters. Writes
DIR/gpu_partner_pace.csv.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from _util import DATA, out_path, parser, pmap  # first: the repository root onto sys.path
from iosim.errors import IosimError  # noqa: E402
from iosim.gpu.validate import write_csv  # noqa: E402
from iosim.l2.replay import partner_pace  # noqa: E402
from iosim.l2.simulate import GpuL2, _predict_dynamic  # noqa: E402
from replay_traced import workload  # noqa: E402

TRACED = ("gpu_traced", "gpu_traced_rounds", "gpu_traced_round6", "gpu_traced_rounds78")
MODELS = {"seniority": GpuL2(), "conserving": GpuL2(sm_sharing="work-conserving")}
KEYS = ("n", "own", "partner", "hit_hit", "hit_miss", "miss_hit", "miss_miss")


def one(job) -> dict | None:
    traced, r = job
    w = workload(r)
    tr = np.load(os.path.join(DATA, f"{traced}.npz"))[r["trace_key"]]
    try:
        stats = {"trace": partner_pace(w, tr)}
    except IosimError:                       # too few long blocks that share an SM
        return None
    meas = float(r["dram_read_bytes"])
    out = {"traced": traced, "launch": r["trace_key"], "meas_dram_read_bytes": meas}
    for name, gpu in MODELS.items():
        p = _predict_dynamic(w, gpu, record=True)
        b = p["blocks"]
        out[f"err_{name}"] = p["dram_read_bytes"] / meas - 1
        stats[name] = partner_pace(w, np.c_[b["start_us"], b["end_us"], b["sm"]])
    for name, st in stats.items():
        for k in KEYS:
            out[f"{name}_{k}"] = st[k]
    return out


def jobs():
    for traced in TRACED:
        df = pd.read_csv(os.path.join(DATA, f"{traced}.csv"))
        sel = df[(df["head_dim"] == 64) & (df["grid_order"] == "head-major")]
        yield from ((traced, r.to_dict()) for _, r in sel.iterrows())


def summary(rows) -> list[str]:
    """Medians over the launches of each schedule's coefficients and class paces."""
    out = []
    for name in ("trace", *MODELS):
        own = np.median([r[f"{name}_own"] for r in rows])
        par = np.median([r[f"{name}_partner"] for r in rows])
        hm = np.nanmedian([r[f"{name}_hit_miss"] for r in rows])
        mh = np.nanmedian([r[f"{name}_miss_hit"] for r in rows])
        out.append(f"{name:10s} median own {own:+.2%} partner {par:+.2%} per unit miss "
                   f"fraction; hitter beside a misser {hm:+.2%}, misser beside a hitter "
                   f"{mh:+.2%}")
    return out


def main(argv=None) -> int:
    a = parser(__doc__).parse_args(argv)
    rows = [r for r in pmap(one, list(jobs()), "launches", a.workers) if r is not None]
    rows.sort(key=lambda r: r["meas_dram_read_bytes"])
    path = out_path(a.out, "gpu_partner_pace.csv")
    write_csv(rows, path)
    for r in rows:
        print(f"{r['launch']:34s} own/partner trace {r['trace_own']:+.4f} "
              f"{r['trace_partner']:+.4f} seniority {r['seniority_own']:+.4f} "
              f"{r['seniority_partner']:+.4f} conserving {r['conserving_own']:+.4f} "
              f"{r['conserving_partner']:+.4f} | err {r['err_seniority']:+.1%} "
              f"{r['err_conserving']:+.1%}")
    print("\n".join(summary(rows)))
    print("wrote", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
