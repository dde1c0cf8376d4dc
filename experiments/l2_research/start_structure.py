"""Which part of a schedule sets the L2 hits: the timeline or the structure inside a wave.

    python experiments/l2_research/start_structure.py --out DIR   # no GPU; a C compiler;
                                                                  # ~2 min on 2 cores
    python experiments/l2_research/start_structure.py --variants --out DIR
                                                # the d=64 launches, five models; ~2 min

For every traced causal head-major launch reading at least 20 x Q+K+V (the thrash regime,
experiments/data/gpu_traced*.csv/.npz), the default model's schedule at seed 0 (one draw) and
the measured one are replayed by the same cache (CLOCK with the balanced set hash,
l2_policy.py's ``clock_balanced``, within 15% of the counters on 132 of the 134
traced launches), and so are two hybrids that split each schedule's start times into a
timeline (the running mean over one wave: as many blocks as slots, SMs x blocks per SM) and
the deviations from it:

- ``replay_model_timeline_trace_fine``: the model's timeline plus the trace's deviations;
- ``replay_trace_timeline_model_fine``: the trace's timeline plus the model's deviations;

both with the trace's durations and SMs. Whichever hybrid keeps the trace's replay says which
part of the model's schedule is wrong. Next to them, three statistics of the start-time
deviations (the last two thirds of the launch, each schedule): their standard deviation, their
correlation with the blocks' duration deviations (the same running mean), and their
autocorrelation two generations apart (2 x heads blocks: the same head's query block two
steps on). Writes DIR/gpu_start_structure.csv.

``--variants``: the d=64 launches among them under the default (seed 0) and three variants
of how blocks share an SM (options of GpuL2, none the default): twice the pair pace noise,
no seniority in causal launches (the older block's share 0.5 instead of the measured 0.534)
and work-conserving sharing; and the measured miss slowdown (the follow microbenchmark's
restoring force) -- each run's DRAM error against the traced counters next to its
schedule's persistence (autocorrelation two generations on): does the persistence track the
error across models, not only across launches? Writes DIR/gpu_start_structure_variants.csv.
"""
from __future__ import annotations

import csv
import glob
import os
import tempfile

import numpy as np
from scipy.ndimage import uniform_filter1d

from _util import DATA, out_path, parser, pmap  # first: the repository root onto sys.path
from iosim.gpu.validate import write_csv  # noqa: E402
from iosim.l2.partitions import side_of  # noqa: E402
from iosim.l2.simulate import (BLOCK_JITTER_PAIR, MISS_SLOWDOWN, GpuL2,  # noqa: E402
                               _predict_dynamic, occupancy)
from l2_policy import SRC, run  # noqa: E402
from partition_replay import build, events, side_maps  # noqa: E402
from replay_traced import workload  # noqa: E402

#: the thrash regime: measured DRAM reads at least this many times Q+K+V
MIN_RATIO = 20.0
POLICY = "clock_balanced"


def launches() -> list[tuple[str, dict]]:
    """(traced file, row) of every traced causal head-major launch in the thrash regime."""
    out = []
    for path in sorted(glob.glob(os.path.join(DATA, "gpu_traced*.csv"))):
        name = os.path.basename(path)[:-4]
        if not os.path.exists(os.path.join(DATA, f"{name}.npz")):
            continue
        for r in csv.DictReader(open(path)):
            if r["causal"] != "True" or r["grid_order"] != "head-major":
                continue
            w = workload(r)
            qkv = 3 * w.batch * w.heads * w.seq_q * w.head_dim * w.elem_bytes
            if float(r["dram_read_bytes"]) >= MIN_RATIO * qkv:
                out.append((name, r))
    return out


def trace_schedule(traced: str, key: str) -> np.ndarray:
    """(start, end, SM) of a traced launch's blocks, ns from its first start: shifted in int64
    before the float conversion (the %globaltimer stamps, ~1.8e18 ns, would lose their 32 ns
    ticks in float64)."""
    raw = np.load(os.path.join(DATA, f"{traced}.npz"))[key][:, :3]
    out = raw.copy()
    out[:, :2] -= raw[:, 0].min()
    return out.astype(np.float64)


def model_schedule(w, gpu: GpuL2) -> tuple[dict, np.ndarray]:
    """The dynamic model's prediction (one draw) and its schedule as (start, end, SM), ns from
    its first start, like :func:`trace_schedule`."""
    p = _predict_dynamic(w, gpu, record=True)
    b = p["blocks"]
    ms = np.c_[b["start_us"] * 1e3, b["end_us"] * 1e3, b["sm"]]
    ms[:, :2] -= ms[:, 0].min()
    return p, ms


def wave_size(w) -> int:
    """Blocks in flight at once: SMs x blocks per SM."""
    gpu = GpuL2()
    return gpu.sms * (w.blocks_per_sm or occupancy(w, gpu))


def deviation_stats(sched: np.ndarray, wave: int, heads: int) -> dict:
    """sd of the start deviations (us), their correlation with the duration deviations and
    their autocorrelation 2 x heads blocks apart, over the last two thirds of the blocks."""
    st = sched[:, 0]
    dur = sched[:, 1] - sched[:, 0]
    dev = (st - uniform_filter1d(st, wave, mode="nearest"))[len(st) // 3:]
    ddev = (dur - uniform_filter1d(dur, wave, mode="nearest"))[len(st) // 3:]
    lag = 2 * heads
    return {"start_dev_sd_us": round(float(dev.std()) / 1e3, 3),
            "corr_start_duration": round(float(np.corrcoef(dev, ddev)[0, 1]), 3),
            "acf_two_generations": round(float(np.corrcoef(dev[:-lag], dev[lag:])[0, 1]), 3)}


def one(job) -> dict:
    exe, traced, r, side_a = job
    w = workload(r)
    tr = trace_schedule(traced, r["trace_key"])
    meas = float(r["dram_read_bytes"])
    p, ms = model_schedule(w, GpuL2(pace_draws=1))
    q = w.batch * w.heads * w.seq_q * w.head_dim * w.elem_bytes      # Q, read once

    def replay(s: np.ndarray) -> float:
        ev, n = events(w, s, side_of(s[:, 2].astype(np.int64), side_a))
        return round((run(exe, ev, n, POLICY) + q) / meas - 1, 4)

    wave = wave_size(w)
    dur = tr[:, 1] - tr[:, 0]
    line_t = uniform_filter1d(tr[:, 0], wave, mode="nearest")
    line_m = uniform_filter1d(ms[:, 0], wave, mode="nearest")
    mix_a = line_m + (tr[:, 0] - line_t)
    mix_b = line_t + (ms[:, 0] - line_m)
    row = {"traced": traced, "launch": r["trace_key"], "head_dim": w.head_dim, "wave": wave,
           "meas_dram_read_bytes": meas,
           "meas_over_qkv": round(meas / (3 * q), 1),
           "err_model": round(p["dram_read_bytes"] / meas - 1, 4),
           "makespan_model_over_trace": round(float(ms[:, 1].max() / tr[:, 1].max()), 4),
           "replay_trace": replay(tr), "replay_model": replay(ms),
           "replay_model_timeline_trace_fine": replay(np.c_[mix_a, mix_a + dur, tr[:, 2]]),
           "replay_trace_timeline_model_fine": replay(np.c_[mix_b, mix_b + dur, tr[:, 2]])}
    for name, s in (("trace", tr), ("model", ms)):
        row.update({f"{k}_{name}": v for k, v in deviation_stats(s, wave, w.heads).items()})
    return row


#: --variants: GpuL2 options (with pace_draws=1), none the default
VARIANTS = {"default": {}, "pair_jitter_x2": {"block_jitter_pair": 2 * BLOCK_JITTER_PAIR},
            "no_seniority_causal": {"sm_share_causal": {64: 0.5}},
            "work_conserving": {"sm_sharing": "work-conserving"},
            "miss_slowdown": {"miss_slowdown": MISS_SLOWDOWN}}


def one_variant(job) -> dict:
    traced, r, name = job
    w = workload(r)
    p, ms = model_schedule(w, GpuL2(pace_draws=1, **VARIANTS[name]))
    return {"traced": traced, "launch": r["trace_key"], "variant": name,
            "err_model": round(p["dram_read_bytes"] / float(r["dram_read_bytes"]) - 1, 4),
            **deviation_stats(ms, wave_size(w), w.heads)}


def variants(path: str, workers: int = 2) -> None:
    jobs = [(t, r, v) for t, r in launches() if r["head_dim"] == "64" for v in VARIANTS]
    share = [v for v in VARIANTS if v != "miss_slowdown"]
    rows = pmap(one_variant, jobs, "model runs", workers)
    write_csv(rows, path)
    for r in rows:
        print(f"{r['launch']:36s} {r['variant']:20s} err {r['err_model']:+.3f} "
              f"persistence {r['acf_two_generations']:+.2f}")
    for name, sel in (("the default and the SM-sharing options", share), ("all", list(VARIANTS))):
        part = [r for r in rows if r["variant"] in sel]
        err = np.array([r["err_model"] for r in part])
        acf = np.array([r["acf_two_generations"] for r in part])
        print(f"correlation of persistence and error, {name} ({len(part)} runs): "
              f"{np.corrcoef(acf, err)[0, 1]:.2f}")
    print("wrote", path)


def main(argv=None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--variants", action="store_true",
                    help="the d=64 launches under five models "
                         "(-> gpu_start_structure_variants.csv)")
    a = ap.parse_args(argv)
    if a.variants:
        variants(out_path(a.out, "gpu_start_structure_variants.csv"), a.workers)
        return 0
    maps = side_maps()      # the second latency map's sides for round 6 (partition_variants)
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(tmp, SRC)
        jobs = [(exe, t, r, maps["map2" if t == "gpu_traced_round6" else "map1"])
                for t, r in launches()]
        rows = pmap(one, jobs, "replays", a.workers)
    path = out_path(a.out, "gpu_start_structure.csv")
    write_csv(rows, path)
    cols = ("err_model", "replay_trace", "replay_model", "replay_model_timeline_trace_fine",
            "replay_trace_timeline_model_fine")
    print(f"{'launch':36s} " + " ".join(f"{c[:24]:>24s}" for c in cols))
    for r in rows:
        print(f"{r['launch']:36s} " + " ".join(f"{r[c]:+24.3f}" for c in cols))
    for c in cols:
        print(f"{c}: within 15% on {sum(abs(r[c]) <= 0.15 for r in rows)} of {len(rows)}")
    print("wrote", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
