"""A block's startup and its time per key block: the trace fits
(experiments/l2_research/block_time.py)
against hand-built traces, the model's constants against the fits, and the model's blocks
against hand-computed durations."""
import os
import sys

import numpy as np
import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "experiments", "l2_research"))

from iosim.l2.simulate import (BLOCK_STARTUP, BLOCK_STARTUP_US, FIRST_CLEAR_NO_STARTUP,  # noqa: E402
                           SM_RATES, SM_RATES_CAUSAL_STARTUP, SM_RATES_STARTUP, GpuL2, Workload,
                           _predict_dynamic)


def _trace(rows):
    """int64 trace rows (start ns, end ns, SM, keys) from (start us, end us, SM, key blocks)."""
    return np.array([[round(s * 1e3), round(e * 1e3), sm, kb * 64] for s, e, sm, kb in rows],
                    dtype=np.int64)


def test_fit_recovers_startup_and_rate_of_a_built_trace():
    from block_time import SMS, fit
    rng = np.random.default_rng(3)
    kb = rng.integers(2, 400, size=6 * SMS)
    start = np.sort(rng.uniform(0, 500, size=len(kb)))
    rows = [(s, s + 3.2 + 1.07 * k, i % SMS, k) for i, (s, k) in enumerate(zip(start, kb))]
    a, b, sd = fit(_trace(rows))
    assert a == pytest.approx(3.2, abs=0.01) and b == pytest.approx(1.07, abs=1e-4)
    assert sd < 0.01


def test_pair_rates_recover_the_sharing_of_a_built_trace():
    """Two blocks start together on each SM, compute from the startup's end, the older at ro
    and the younger at ry key blocks per us while both compute, the one left at ra: end times
    by hand; the fit gets the three rates back."""
    from block_time import pair_rates
    ro, ry, ra, st = 0.95, 0.72, 1.27, 3.5
    rows = []
    for sm, (na, nb) in enumerate([(100, 80), (60, 90), (120, 40), (50, 50), (30, 110)]):
        if na / ro <= nb / ry:                 # the older (na) ends first
            ea = st + na / ro
            eb = ea + (nb - ry * na / ro) / ra
        else:
            eb = st + nb / ry
            ea = eb + (na - ro * nb / ry) / ra
        rows += [(0.0, ea, sm, na), (0.0, eb, sm, nb)]
    got = pair_rates(_trace(rows), st)
    assert got == pytest.approx((ro, ry, ra), rel=2e-3)


def test_model_constants_are_the_trace_medians():
    """The startup and the key-block rates of the model are what
    experiments/l2_research/block_time.py
    gets from the traced launches outside the validation set."""
    from block_time import table, validated_shapes
    rows, c = table()
    assert len(rows) >= 20
    assert not any(tuple(int(x) for x in r["launch"].split("_")[0].split("-")[0].split("x"))
                   in validated_shapes() for r in rows)
    t128 = 4 * 128 * 64 * 128 / 1e6
    t64 = 4 * 128 * 64 * 64 / 1e6
    assert BLOCK_STARTUP_US == pytest.approx(c["startup_us"], abs=0.005)
    assert SM_RATES_STARTUP[128][0] == pytest.approx(t128 / c["d128 non-causal"], rel=1e-3)
    assert SM_RATES_CAUSAL_STARTUP[128][0] == pytest.approx(t128 / c["d128 causal"], rel=1e-3)
    assert SM_RATES_STARTUP[64][1] == pytest.approx(
        c["d64 older+younger key blocks per us"] * t64, rel=1e-3)
    assert SM_RATES_STARTUP[64][0] == pytest.approx(c["d64 alone key blocks per us"] * t64,
                                                    rel=1e-3)
    assert SM_RATES_STARTUP[64][2] == pytest.approx(c["d64 older share"], abs=1e-3)
    # the startup was inside the durations the default rates come from: without it the key
    # blocks alone run faster (d=128 by 2.6%, two d=64 blocks by 2.0%)
    assert SM_RATES_STARTUP[128][0] > SM_RATES[128][0]
    assert SM_RATES_STARTUP[64][1] > SM_RATES[64][1]
    # the startup is seen directly in the marked traces: start -> first key block 2.5-3.9 us
    assert 2.5 < c["startup_us"] < 4.0


@pytest.mark.parametrize("head_dim", [128, 64])
def test_a_lone_block_takes_startup_plus_its_key_blocks(head_dim):
    """One block (128 queries, 8192 keys, no pace noise): the DRAM is never the limit, so it
    takes the startup plus its key blocks at the SM's rate for one block -- with no startup
    (the default of rounds 11-13) and with the measured one and its rates (the default
    since)."""
    w = Workload(1, 1, 128, 8192, head_dim, grid_order="query-major")
    tile = 4 * 128 * 64 * head_dim / 1e6
    for gpu in (GpuL2(**FIRST_CLEAR_NO_STARTUP, block_jitter=0.0), GpuL2(block_jitter=0.0)):
        p = _predict_dynamic(w, gpu, record=True)
        want = gpu.block_startup_us + 128 * tile / gpu.rates(head_dim)[0]
        assert p["makespan_us"] == pytest.approx(want, rel=5e-3)   # the model's time step
        assert p["blocks"]["end_us"][0] == pytest.approx(p["makespan_us"])
    assert GpuL2().rates(128, causal=True)[:2] == SM_RATES_CAUSAL_STARTUP[128]
    assert GpuL2(**BLOCK_STARTUP).rates(128, causal=True) == GpuL2().rates(128, causal=True)
    assert GpuL2(**FIRST_CLEAR_NO_STARTUP).rates(128, causal=True) == SM_RATES[128]


def test_a_block_in_its_startup_leaves_its_sm_to_the_other():
    """d=64, two blocks per SM, 396 one-query-block heads on one shared K/V (no DRAM limit),
    no pace noise: the first wave's older blocks end at startup + n / ro; the new blocks then
    wait out their startup while the first wave's younger ones compute alone (ra), then as
    the older of two (ro). Their end time by hand, for startups short and long enough that the
    younger ones end after or within the new blocks' startup."""
    n = 128                                             # key blocks of every block
    w = Workload(1, 396, 128, n * 64, 64, grid_order="query-major", blocks_per_sm=2,
                 kv_heads=1)
    for st in (0.0, 20.0, 40.0):
        gpu = GpuL2(block_startup_us=st, block_jitter=0.0, block_jitter_pair=0.0)
        solo, pair, share = gpu.rates(64)
        tile = 4 * 128 * 64 * 64 / 1e6
        ro, ry, ra = share * pair / tile, (1 - share) * pair / tile, solo / tile
        t1 = st + n / ro                                # the older ones end
        left = n - ry * (t1 - st)                       # the younger: alone during startup
        end = t1 + left / ra if left <= ra * st else t1 + st + (left - ra * st) / ro
        b = _predict_dynamic(w, gpu, record=True)["blocks"]
        assert np.median(b["end_us"][:132]) == pytest.approx(t1, rel=5e-3)
        assert np.median(b["end_us"][132:264]) == pytest.approx(end, rel=5e-3)


def test_startup_model_table_recorded():
    """experiments/l2_research/startup_model.py's table: its default column is the recorded default
    of
    rounds 11-13 in gpu_nru_model.csv, its startup column is what that with the startup gives
    (NRU's first-clear victim; recomputed on the small launches), and the counts
    docs/notes/l2_research_history.md gives follow from the measured columns."""
    import pandas as pd
    from iosim.l2.simulate import predict_dram
    data = os.path.join(ROOT, "experiments", "data")
    t = pd.read_csv(os.path.join(data, "gpu_startup_model.csv"))
    nru = pd.read_csv(os.path.join(data, "gpu_nru_model.csv"))
    nru = nru[~nru["set"].isin(("round 13", "round 14"))].reset_index(drop=True)  # measured after
    assert len(t) == len(nru) == 130 and (t["shape"] == nru["shape"]).all()
    assert (abs(t["default"] - nru["nru_prefetch"]) <= 1).all()
    assert (abs(t["measured"] - nru["measured"]) <= 1).all()
    small = t[t["shape"].str.startswith(("8x16x1024x", "6x16x1024x", "4x16x2048x"))]
    assert len(small) >= 6
    for _, r in small.iterrows():
        b, h, n, d = (int(x) for x in r["shape"].split("-")[0].split("x"))
        w = Workload(b, h, n, n, d, causal=r["shape"].endswith("-causal"),
                     grid_order=r["grid_order"])
        p = predict_dram(w, GpuL2(nru_victim="first", pace_draws=1, **BLOCK_STARTUP))
        assert abs(p["dram_read_bytes"] - r["startup"]) <= 1, r["shape"]
        assert p["makespan_us"] == pytest.approx(r["span_startup_us"], abs=0.06)
    ok = {m: abs(t[m] / t["measured"] - 1) <= 0.15 for m in ("default", "startup")}
    val = t["set"] == "validated"
    assert [int(ok["default"][val].sum()), int(ok["startup"][val].sum())] == [32, 31]
    assert [int(ok["default"].sum()), int(ok["startup"].sum())] == [108, 109]
    span = {m: abs(t[f"span_{m}_us"] / t["measured_time_us"] - 1) <= 0.10
            for m in ("default", "startup")}
    assert [int(span["default"].sum()), int(span["startup"].sum())] == [100, 111]
