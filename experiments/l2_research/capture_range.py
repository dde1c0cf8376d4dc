"""How close a follower must start to run onto its leader: the capture range of causal
head-major d=128 launches, measured and in the model (no GPU; ~3 min on 2 cores).

    python experiments/l2_research/capture_range.py --out DIR   # -> DIR/gpu_capture_range.csv

Three tables in one CSV (column ``table``):

* ``gpu_lag`` -- from the marked traces (gpu_marks_{1,2}.npz: the time each block began every
  8th key block): for every pair of consecutive query blocks of one head (block ids ``heads``
  apart) in the last two thirds of the launch, the lag at the first key mark both reached
  and how it changed by the last one, by the initial lag (median per bin);
* ``replay_miss`` -- the cache response (readers rule, :func:`iosim.l2.replay.replay_dram`) on
  the measured schedule of 1x16x16Kx128 causal head-major (gpu_traced.npz), each block's K/V
  miss fraction by its start lag behind the previous query block of its head (query blocks
  >= 48, where the K/V of the running blocks no longer fits);
* ``model_chunk`` -- the dynamic model's prediction for the same launch with chunks of 1-16
  key blocks (``_predict_dynamic(..., chunk=g)``; the default picks 6 there), the default
  and the NRU state with fetches across chunk ends, against the counters of
  gpu_validation.csv, with the start-lag spread of its schedule (and the traced GPU's).
"""
from __future__ import annotations

import os

import numpy as np

from _util import DATA, out_path, parser, pmap  # first: the repository root onto sys.path
from iosim.gpu.compare import read_csv, workload  # noqa: E402
from iosim.gpu.validate import write_csv  # noqa: E402

LAG_BINS = (0, 4, 8, 12, 16, 20, 25, 30, 40, 60, np.inf)
MARKED = ("1x16x16384x128-causal_head-major_every8", "1x16x20480x128-causal_head-major_every8",
          "1x6x49152x128-causal_head-major_every8", "1x8x65536x128-causal_head-major_every8")
TRACED = "1x16x16384x128-causal_head-major"


def _bins(lag, value, stat=np.median, min_n: int = 4):
    out = []
    for lo, hi in zip(LAG_BINS[:-1], LAG_BINS[1:]):
        m = (lag >= lo) & (lag < hi)
        if m.sum() >= min_n:
            out.append({"lag_lo_us": lo, "lag_hi_us": hi, "n": int(m.sum()),
                        "value": float(stat(value[m]))})
    return out


def gpu_lag() -> list[dict]:
    rows = []
    for run in (1, 2):
        z = np.load(os.path.join(DATA, f"gpu_marks_{run}.npz"))
        for key in MARKED:
            tr = z[key].astype(np.float64)
            heads = int(key.split("x")[1])
            t0 = tr[:, 0].min()
            marks = np.where(tr[:, 4:] >= 0, (tr[:, 4:] - t0) / 1e3, np.nan)
            q = np.arange(len(tr)) // heads
            lag0, change = [], []
            for j in np.flatnonzero(q >= q.max() / 3):
                both = np.flatnonzero(~np.isnan(marks[j]) & ~np.isnan(marks[j - heads]))
                if len(both) < 4:
                    continue
                d = marks[j, both] - marks[j - heads, both]
                lag0.append(d[0])
                change.append(d[-1] - d[0])
            for b in _bins(np.array(lag0), np.array(change)):
                rows.append({"table": "gpu_lag", "launch": key.split("_")[0], "run": run,
                             **b, "what": "median lag change over the pair's life (us)"})
    return rows


def replay_miss() -> list[dict]:
    from iosim.l2.simulate import _blocks
    from iosim.l2.replay import READERS, replay_dram
    w, _ = _validated(TRACED)
    tr = np.load(os.path.join(DATA, "gpu_traced.npz"))[TRACED]
    _, q, nk = _blocks(w)
    o = replay_dram(w, tr, READERS, per_block=True)
    miss = o["block_miss_bytes"] / np.maximum(nk * 2 * w.block_n * w.head_dim * w.elem_bytes, 1)
    s = (tr[:, 0] - tr[:, 0].min()) / 1e3
    hq = w.batch * w.heads
    lag = np.r_[np.full(hq, np.inf), s[hq:] - s[:-hq]]
    late = q >= 48
    return [{"table": "replay_miss", "launch": TRACED, "run": 0, **b,
             "what": "mean K/V miss fraction of the block (readers-rule replay)"}
            for b in _bins(lag[late], miss[late], stat=np.mean, min_n=1)]


def _validated(label: str):
    for r in read_csv(os.path.join(DATA, "gpu_validation.csv")):
        if r["impl"] == "generated" and r["cascade"] == "attention-1pass":
            w = workload(r)
            name = (f"{w.batch}x{w.heads}x{w.seq_q}x{w.head_dim}"
                    f"{'-causal' if w.causal else ''}_{w.grid_order}")
            if name == label:
                return w, float(r["dram_read_bytes"])
    raise KeyError(label)


#: the model variants of the chunk sweep: the default and the NRU state with fetches running
#: on across chunk ends
VARIANTS = {"default": {}, "nru_prefetch": {"l2_policy": "nru", "prefetch_across_chunks": True}}


def _lags(w, starts):
    """5th percentile and sd of the start lag behind the previous query block of the head
    (query blocks >= 80)."""
    from iosim.l2.simulate import _blocks
    _, q, _ = _blocks(w)
    hq = w.batch * w.heads
    late = np.flatnonzero(q >= 80)
    gap = starts[late] - starts[late - hq]
    return float(np.percentile(gap, 5)), float(gap.std())


def _chunk(job):
    from iosim.l2.simulate import FIRST_CLEAR_NO_STARTUP, GpuL2, _predict_dynamic
    variant, g = job
    w, measured = _validated(TRACED)
    o = _predict_dynamic(w, GpuL2(**FIRST_CLEAR_NO_STARTUP, **VARIANTS[variant]), chunk=g,
                         record=True)
    p5, sd = _lags(w, o["blocks"]["start_us"])
    return {"table": "model_chunk", "launch": TRACED, "run": 0, "variant": variant,
            "chunk_key_blocks": o["chunk_key_blocks"],
            "err_dram": o["dram_read_bytes"] / measured - 1,
            "makespan_us": o["makespan_us"], "lag_p5_us": p5, "lag_sd_us": sd,
            "what": "model: DRAM error, start lags of query blocks >= 80"}


def gpu_schedule() -> dict:
    w, _ = _validated(TRACED)
    tr = np.load(os.path.join(DATA, "gpu_traced.npz"))[TRACED].astype(np.float64)
    p5, sd = _lags(w, (tr[:, 0] - tr[:, 0].min()) / 1e3)
    return {"table": "model_chunk", "launch": TRACED, "run": 0, "variant": "gpu (traced)",
            "makespan_us": (tr[:, 1].max() - tr[:, 0].min()) / 1e3, "lag_p5_us": p5,
            "lag_sd_us": sd, "what": "measured schedule: start lags of query blocks >= 80"}


def main(argv=None) -> int:
    a = parser(__doc__).parse_args(argv)
    rows = gpu_lag() + replay_miss()
    rows += pmap(_chunk, [(v, g) for v in VARIANTS for g in (1, 2, 4, 6, 8, 10, 12, 16)],
                 "model chunks", a.workers)
    rows.append(gpu_schedule())
    path = out_path(a.out, "gpu_capture_range.csv")
    write_csv(rows, path)
    for r in rows:
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()
               if k != "what"})
    print("wrote", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
