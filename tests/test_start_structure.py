"""Timeline or structure inside a wave (experiments/l2_research/start_structure.py): the deviation
statistics against a hand-built schedule, and the recorded table of the 25 traced causal
head-major thrash launches."""
import csv
import os
import sys

import numpy as np
import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "experiments", "l2_research"))
DATA = os.path.join(ROOT, "experiments", "data")


def test_deviation_stats_of_a_built_schedule():
    """Starts on a line, every other generation of ``heads`` blocks a µs early or late
    (alternating with period 2 x heads): the running mean over a wave of a whole number of
    periods is the line, so the deviations are +-1 µs (sd 1), the same two generations on
    (autocorrelation +1); durations that carry the same deviation correlate +1, and durations
    carrying its opposite -1."""
    from start_structure import deviation_stats
    heads, wave, n = 4, 32, 3000
    i = np.arange(n)
    dev = np.where((i // heads) % 2 == 0, 1e3, -1e3)
    start = 50.0 * i + dev
    for sign in (1, -1):
        sched = np.c_[start, start + 2e4 + sign * dev, np.zeros(n)]
        s = deviation_stats(sched, wave, heads)
        assert s["start_dev_sd_us"] == pytest.approx(1.0, abs=0.01)
        assert s["acf_two_generations"] == pytest.approx(1.0, abs=0.01)
        assert s["corr_start_duration"] == pytest.approx(sign, abs=0.01)


def _rows():
    return list(csv.DictReader(open(os.path.join(DATA, "gpu_start_structure.csv"))))


def test_recorded_table_the_structure_inside_a_wave_sets_the_hits():
    """The model's timeline with the trace's deviations inside a wave replays within 7.5% of
    the counters on all 25 launches; the trace's timeline with the model's deviations misses
    five, as the model's own schedule misses eight: what the model gets wrong is the start-time
    structure inside a wave, not its timeline."""
    rows = _rows()
    assert len(rows) == 25 and {r["head_dim"] for r in rows} == {"64", "128"}

    def within(col, tol=0.15):
        return sum(abs(float(r[col])) <= tol for r in rows)
    assert within("replay_trace") == 25
    assert within("replay_model_timeline_trace_fine", 0.075) == 25
    assert within("replay_trace_timeline_model_fine") == 20
    assert within("replay_model") == within("err_model") == 17
    # the d=64 over-counts: the model's deviations persist longer than the trace's
    over = [r for r in rows if r["head_dim"] == "64" and float(r["err_model"]) > 0.15]
    assert len(over) == 5
    for r in over:
        assert float(r["acf_two_generations_model"]) > float(r["acf_two_generations_trace"])
        assert float(r["corr_start_duration_model"]) < float(r["corr_start_duration_trace"])


def test_recorded_trace_statistics_recomputed():
    """The trace columns of one launch of each head dim, from the stored schedule."""
    from start_structure import deviation_stats, trace_schedule
    by = {r["launch"]: r for r in _rows()}
    for key, traced in (("1x10x32768x64-causal_head-major", "gpu_traced_round16"),
                        ("1x12x24576x128-causal_head-major", "gpu_traced_rounds78")):
        r = by[key]
        s = deviation_stats(trace_schedule(traced, key), int(r["wave"]), int(key.split("x")[1]))
        for k, v in s.items():
            assert v == pytest.approx(float(r[f"{k}_trace"]), abs=1e-3), (key, k)


def test_recorded_variants_persistence_tracks_the_error():
    """`start_structure.py --variants`: the ten d=64 launches under the default and three SM
    sharing variants (seed 0). Across those 40 model runs, every one whose schedule's deviations
    persist less (autocorrelation two generations on below 0.65) is within 15% of the counters,
    and all but one of the others over-count by more than 15%; no variant gets all ten. With
    the measured miss slowdown the relation breaks: high persistence, under-counts."""
    rows = list(csv.DictReader(open(os.path.join(DATA, "gpu_start_structure_variants.csv"))))
    assert len(rows) == 50 and len({r["variant"] for r in rows}) == 5
    share = [r for r in rows if r["variant"] != "miss_slowdown"]
    err = np.array([float(r["err_model"]) for r in share])
    acf = np.array([float(r["acf_two_generations"]) for r in share])
    assert np.all(np.abs(err[acf < 0.65]) <= 0.15) and (acf < 0.65).sum() == 17
    assert (err[acf >= 0.65] > 0.15).sum() == 22
    assert np.corrcoef(acf, err)[0, 1] > 0.9
    slow = {r["launch"]: r for r in rows if r["variant"] == "miss_slowdown"}
    under = [r for r in slow.values() if float(r["err_model"]) < -0.15]
    assert len(under) == 3 and all(float(r["acf_two_generations"]) > 0.75 for r in under)
    main = {r["launch"]: float(r["err_model"]) for r in _rows()}
    for r in rows:
        if r["variant"] == "default":      # the same model run as the main table's
            assert float(r["err_model"]) == main[r["launch"]]
    by = {}
    for r in rows:
        by.setdefault(r["variant"], []).append(abs(float(r["err_model"])) <= 0.15)
    assert {v: sum(x) for v, x in by.items()} == {"default": 5, "pair_jitter_x2": 4,
                                                  "no_seniority_causal": 7, "work_conserving": 2,
                                                  "miss_slowdown": 7}
