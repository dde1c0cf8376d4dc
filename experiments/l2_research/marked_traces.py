"""Whole block trajectories, measured: what the mid-life marks say about the schedule.

    python experiments/l2_research/marked_traces.py --out DIR   # no GPU, ~3 min on 2 cores

Reads experiments/data/gpu_marks.csv and gpu_marks_{1,2,plain}.npz
(``python experiments/device/marked_traces.py`` on the GPU: the traced kernel with
``Tiling(trace_every=8)`` -- the time each block began every 8th key block -- under Nsight
Compute, so trajectories and DRAM counters come from one launch) and writes

* ``DIR/gpu_marks_replay.csv`` -- the cache response (:mod:`iosim.l2.replay`)
  on each launch's measured schedule, with the reads placed evenly between a block's start and
  end (``lin``) and on its measured trajectory (``marks``), against that run's counters;
* ``DIR/gpu_marks_schedule.csv`` -- for the causal head-major launches, how the
  query blocks of one head follow each other, on the GPU (each run) and in the dynamic model's
  schedule (the readers-rule model, the default when this was recorded, and it with
  ``prefetch_across_chunks``, ``miss_slowdown``; seed 0): the fraction of
  blocks that start within ``WINDOW_US`` of the previous query block of their head (in the
  last two thirds of the launch), that fraction after a close start and after a far one (is a
  close pair inherited by the next generation?), and how the lag of a close pair changes over
  its life (from the marks);
* ``DIR/gpu_marks_noise.csv`` -- pace noise per 8-key-block segment (relative to
  the median of the segments running at the same time), its lag-1 autocorrelation, and the
  spread of the blocks' mean paces;
* ``DIR/gpu_marks.png`` -- one head's trajectories (key block vs time), GPU and model.
"""
from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pandas as pd

from _util import DATA, out_path, parser, pmap  # first: the repository root onto sys.path
from iosim.gpu.validate import write_csv  # noqa: E402
from iosim.l2.replay import READERS, replay_dram  # noqa: E402
from iosim.l2.simulate import MISS_SLOWDOWN, _predict_dynamic  # noqa: E402
from replay_traced import workload  # noqa: E402

#: a query block "follows" the previous one of its head when it starts within this time of it:
#: at ~3 TB/s of DRAM traffic the L2 keeps shared lines for ~24 MiB of other traffic, ~8 us
WINDOW_US = 8.0
VARIANTS = {"default": {}, "prefetch": {"prefetch_across_chunks": True},
            "slowdown": {"miss_slowdown": MISS_SLOWDOWN}}


def _trace(r) -> np.ndarray:
    """The launch's trace rows, times from its first start (shifted in int64: absolute
    %globaltimer values lose 100+ ns as float64)."""
    a = np.load(os.path.join(DATA, r["npz"]))[r["trace_key"]].copy()
    a[:, :2] -= a[:, 0].min()
    return a.astype(np.float64)


def replay_row(r: dict) -> dict:
    w, tr = workload(r), _trace(r)
    every = int(r["trace_every"])
    meas = float(r["dram_read_bytes"])
    out = {"launch": r["trace_key"], "round": int(r["round"]), "trace_every": every,
           "meas_dram_read_bytes": meas,
           "replay_lin": replay_dram(w, tr[:, :4])["dram_read_bytes"]}
    out["err_lin"] = out["replay_lin"] / meas - 1
    if every:
        out["replay_marks"] = replay_dram(w, tr, every=every)["dram_read_bytes"]
        out["err_marks"] = out["replay_marks"] / meas - 1
    return out


def follow_stats(start_us: np.ndarray, end_us: np.ndarray, heads: int,
                 marks_us: np.ndarray | None = None) -> dict:
    """How the query blocks of each head follow each other (head-major block ids: head h's
    query block i is block h + i * heads), and how clustered the block ends are (ends per
    4 us in the second half of the launch: variance / mean and lag-1 autocorrelation).
    ``marks_us``: each block's mark times (NaN where not reached) for the lag of a pair along
    its life."""
    nq = len(start_us) // heads
    s = start_us.reshape(nq, heads)
    lag = s[1:] - s[:-1]                                   # [level - 1, head]
    late = lag[len(lag) // 3:]
    close = late < WINDOW_US
    prev, nxt = close[:-1].ravel(), close[1:].ravel()
    gaps = np.percentile(lag[len(lag) // 2:], [5, 25, 50, 75, 95])
    half = np.median(end_us)
    counts = np.histogram(end_us[end_us > half], bins=np.arange(half, end_us.max(), 4.0))[0]
    c = counts - counts.mean()
    out = {"follow_frac": float(close.mean()),
           "follow_after_follow": float(nxt[prev].mean()) if prev.any() else float("nan"),
           "follow_after_far": float(nxt[~prev].mean()),
           **{f"start_gap_p{q}_us": float(g) for q, g in zip((5, 25, 50, 75, 95), gaps)},
           "end_count_var_over_mean": float(counts.var() / counts.mean()),
           "end_count_lag1_autocorr": float(c[:-1] @ c[1:] / (c @ c))}
    if marks_us is not None:
        m = marks_us.reshape(nq, heads, -1)
        d = m[1:] - m[:-1]                                 # lag at each shared mark
        first = d[..., 0]
        n_ok = np.sum(~np.isnan(d), axis=-1)
        last = np.take_along_axis(d, np.maximum(n_ok - 1, 0)[..., None], -1)[..., 0]
        sel = (first < WINDOW_US) & (n_ok >= 3)
        sel[: len(sel) // 3] = False
        change = (last - first)[sel]
        out.update({"close_pairs": int(sel.sum()),
                    "lag_change_close_p10_us": float(np.percentile(change, 10)),
                    "lag_change_close_p50_us": float(np.percentile(change, 50)),
                    "lag_change_close_p90_us": float(np.percentile(change, 90)),
                    "follow_frac_at_end": float(np.mean((last < WINDOW_US)[len(d) // 3:]))})
    return out


def schedule_rows(r: dict) -> list[dict]:
    w, tr = workload(r), _trace(r)
    heads = w.batch * w.heads
    every = int(r["trace_every"])
    marks = None
    if every:
        marks = np.where(tr[:, 4:] >= 0, tr[:, 4:], np.nan) / 1e3
    base = {"launch": r["trace_key"].replace(f"_every{every}", ""),
            "meas_dram_read_bytes": float(r["dram_read_bytes"])}
    rows = [{**base, "schedule": f"gpu run {r['round']}", "pred_dram_read_bytes": float("nan"),
             **follow_stats(tr[:, 0] / 1e3, tr[:, 1] / 1e3, heads, marks)}]
    if int(r["round"]) == 1:
        for name, kw in VARIANTS.items():
            p = _predict_dynamic(w, replace(READERS, **kw), record=True, seed=0)
            rows.append({**base, "schedule": f"model {name}",
                         "pred_dram_read_bytes": p["dram_read_bytes"],
                         **follow_stats(p["blocks"]["start_us"], p["blocks"]["end_us"],
                                        heads)})
    return rows


def noise_row(r: dict, min_segments: int = 24) -> dict | None:
    tr = _trace(r)
    m = np.where(tr[:, 4:] >= 0, tr[:, 4:], np.nan) / 1e3
    seg = np.diff(m, axis=1)
    keep = np.sum(~np.isnan(seg), axis=1) >= min_segments
    if keep.sum() < 100:
        return None
    m = m[keep]
    mid = ((m[:, :-1] + m[:, 1:]) / 2)[:, 2:-2]
    seg = seg[keep][:, 2:-2]                                # drop first and last segments
    ok = ~np.isnan(seg)
    bins = np.floor(mid[ok] / 20.0).astype(int)            # 20 us time bins
    med = pd.Series(seg[ok]).groupby(bins).transform("median").to_numpy()
    rel = np.full(seg.shape, np.nan)
    rel[ok] = seg[ok] / med - 1
    a, b = rel[:, :-1].ravel(), rel[:, 1:].ravel()
    both = ~np.isnan(a) & ~np.isnan(b)
    return {"launch": r["trace_key"], "round": int(r["round"]), "blocks": int(keep.sum()),
            "segment_key_blocks": int(r["trace_every"]),
            "segment_sd": float(np.nanstd(rel)),
            "segment_lag1_autocorr": float(np.corrcoef(a[both], b[both])[0, 1]),
            "block_mean_sd": float(np.nanstd(np.nanmean(rel, axis=1)))}


def figure(path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    meta = pd.read_csv(os.path.join(DATA, "gpu_marks.csv"))
    r = meta[(meta.trace_key == "1x16x16384x128-causal_head-major_every8")
             & (meta["round"] == 1)].iloc[0].to_dict()
    w, tr = workload(r), _trace(r)
    p = _predict_dynamic(w, READERS, record=True, seed=0)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    levels = range(64, 80)
    for ax, name in zip(axes, ("GPU (marks every 8 key blocks)", "model (default; start to end)")):
        for j, i in enumerate(levels):
            b = i * 16                                     # head 0
            nk = 2 * (i + 1)
            if name.startswith("GPU"):
                mk = tr[b, 4:] / 1e3
                x = np.r_[np.arange(len(mk))[mk >= 0] * 8, nk]
                t = np.r_[mk[mk >= 0], tr[b, 1] / 1e3]
            else:
                x = np.array([0, nk])
                t = np.array([p["blocks"]["start_us"][b], p["blocks"]["end_us"][b]])
            ax.plot(t, x, color=plt.cm.viridis(j / len(levels)), lw=1.2)
        ax.set_title(f"{name}", fontsize=10)
        ax.set_xlabel("time (us)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("key block reached")
    fig.suptitle("1x16x16Kx128 causal head-major: query blocks 64-79 of head 0 (H100)",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--no-figure", action="store_true", help="only the CSVs")
    a = ap.parse_args(argv)
    meta = pd.read_csv(os.path.join(DATA, "gpu_marks.csv")).to_dict("records")
    rep = pmap(replay_row, meta, "replays", a.workers)
    heads = [r for r in meta if r["grid_order"] == "head-major" and str(r["causal"]) == "True"]
    sched = [x for rows in pmap(schedule_rows, heads, "schedules", a.workers) for x in rows]
    write_csv(rep, out_path(a.out, "gpu_marks_replay.csv"))
    write_csv(sched, out_path(a.out, "gpu_marks_schedule.csv"))
    noise = [x for x in (noise_row(r) for r in meta if int(r["trace_every"]) == 8) if x]
    write_csv(noise, out_path(a.out, "gpu_marks_noise.csv"))
    if not a.no_figure:
        figure(out_path(a.out, "gpu_marks.png"))
    pd.set_option("display.width", 200)
    print(pd.DataFrame(rep).round(3).to_string())
    print(pd.DataFrame(sched).round(3).to_string())
    print(pd.DataFrame(noise).round(4).to_string())
    print("wrote", ", ".join(out_path(a.out, f"gpu_marks_{n}.csv")
                             for n in ("replay", "schedule", "noise")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
