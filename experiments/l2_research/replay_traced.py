"""Which half of the L2 model misses: the schedule or the cache response?

    python experiments/l2_research/replay_traced.py --out DIR    # no GPU; ~3 min on 2 cores
    python experiments/l2_research/replay_traced.py --traced gpu_traced_rounds --out DIR
                                            # the launches of gpu_traced_rounds (~2 min)

Reads experiments/data/gpu_traced.csv and gpu_traced.npz (``python -m iosim.l2.microbench
traced``: the generated kernel, traced, under Nsight Compute; each launch's DRAM bytes and its
per-block schedule from the same run), and for every launch computes
  * ``replay_meas``: the cache response (:mod:`iosim.l2.replay`) on the measured schedule,
  * ``replay_model``: the same on the dynamic model's own schedule,
  * ``model``: the dynamic model's prediction (its schedule and its DRAM waits together),
the model with the readers rule (``READERS``, the default when this was recorded; the
two-partition model is replayed by experiments/partition_replay.py),
each against the launch's counters. Writes DIR/gpu_replay.csv and DIR/gpu_replay.png
(``--traced gpu_traced_X``: DIR/gpu_replay_X.csv; the committed copies are in experiments/data
and figures/).
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pandas as pd

from _util import DATA, out_path, parser, pmap  # first: the repository root onto sys.path
from iosim.gpu.validate import write_csv  # noqa: E402
from iosim.l2.simulate import Workload, _predict_dynamic  # noqa: E402
from iosim.l2.replay import READERS, replay_dram  # noqa: E402


def workload(r) -> Workload:
    return Workload(int(r["batch"]), int(r["heads"]), int(r["seq"]), int(r["seq"]),
                    int(r["head_dim"]), causal=str(r["causal"]) == "True",
                    grid_order=r["grid_order"])


def one(r: dict, traced: str = "gpu_traced") -> dict:
    w = workload(r)
    tr = np.load(os.path.join(DATA, f"{traced}.npz"))[r["trace_key"]]
    meas = float(r["dram_read_bytes"])
    p = _predict_dynamic(w, READERS, record=True)
    blk = p["blocks"]
    model_sched = np.c_[blk["start_us"] * 1e3, blk["end_us"] * 1e3, blk["sm"]]
    out = {"launch": r["trace_key"], "meas_dram_read_bytes": meas,
           "qkv_bytes": 3 * w.batch * w.heads * w.seq_q * w.head_dim * 2,
           "replay_meas": replay_dram(w, tr)["dram_read_bytes"],
           "replay_model": replay_dram(w, model_sched)["dram_read_bytes"],
           "model": p["dram_read_bytes"]}
    for k in ("replay_meas", "replay_model", "model"):
        out[f"err_{k}"] = out[k] / meas - 1
    return out


def figure(df: pd.DataFrame, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    x = df["meas_dram_read_bytes"] / df["qkv_bytes"]
    lo, hi = 0.5, 2 * x.max()
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
    ax.fill_between([lo, hi], [lo * 0.85, hi * 0.85], [lo * 1.15, hi * 1.15], color="0.85")
    ax.scatter(x, df["model"] / df["qkv_bytes"], s=22, marker="o", facecolors="none",
               edgecolors="C3", label="dynamic model (its own schedule)")
    ax.scatter(x, df["replay_meas"] / df["qkv_bytes"], s=14, marker="x", color="C0",
               label="cache response on the measured schedule")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured DRAM reads / (Q+K+V)")
    ax.set_ylabel("predicted DRAM reads / (Q+K+V)")
    n_r = int((df["err_replay_meas"].abs() <= 0.15).sum())
    n_m = int((df["err_model"].abs() <= 0.15).sum())
    ax.set_title(f"{len(df)} traced launches (H100): within 15% — replay {n_r}, model {n_m}",
                 fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv=None) -> int:
    from functools import partial
    ap = parser(__doc__, workers=max(1, min(4, os.cpu_count() or 1)))
    ap.add_argument("--traced", default="gpu_traced",
                    help="experiments/data/NAME.csv and NAME.npz (default gpu_traced)")
    ap.add_argument("--no-figure", action="store_true", help="only the CSV")
    a = ap.parse_args(argv)
    suffix = a.traced[len("gpu_traced"):] if a.traced.startswith("gpu_traced") else "_" + a.traced
    rows = pd.read_csv(os.path.join(DATA, f"{a.traced}.csv")).to_dict("records")
    res = pmap(partial(one, traced=a.traced), rows, "replay", a.workers)
    df = pd.DataFrame(res)
    write_csv(res, out_path(a.out, f"gpu_replay{suffix}.csv"))
    if not suffix and not a.no_figure:
        figure(df, out_path(a.out, "gpu_replay.png"))
    for _, r in df.iterrows():
        print(f"{r['launch']:42s} DRAM/(Q+K+V) {r['meas_dram_read_bytes'] / r['qkv_bytes']:7.1f}"
              f"  replay {100 * r['err_replay_meas']:+6.1f}%  model-schedule replay "
              f"{100 * r['err_replay_model']:+6.1f}%  model {100 * r['err_model']:+6.1f}%")
    for k in ("replay_meas", "replay_model", "model"):
        print(f"{k}: within 15% on {int((df[f'err_{k}'].abs() <= 0.15).sum())} of {len(df)}")
    print("wrote", out_path(a.out, f"gpu_replay{suffix}.csv"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
