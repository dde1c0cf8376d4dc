"""Two blocks on one SM (d=64): a block's pace against its own misses and its neighbour's
(iosim.l2.replay.partner_pace), on the traced schedules and the model's, and the option that
gives a waiting block's SM time to the other (GpuL2(sm_sharing="work-conserving"))."""
import csv
import os

import numpy as np
import pytest

from iosim.errors import IosimError
from iosim.l2.simulate import GpuL2, Workload, _predict_dynamic
from iosim.l2.replay import partner_pace

DATA = os.path.join(os.path.dirname(__file__), "..", "experiments", "data")


def _table():
    with open(os.path.join(DATA, "gpu_partner_pace.csv"), newline="") as f:
        return list(csv.DictReader(f))


def test_work_conserving_changes_nothing_with_one_block_per_sm():
    """At d=128 one block fills an SM: there is no other block to give time to, so the option
    gives exactly the default's bytes and makespan (a causal head-major launch that waits on
    DRAM)."""
    w = Workload(1, 8, 8192, 8192, 128, causal=True, grid_order="head-major")
    a = _predict_dynamic(w, GpuL2())
    b = _predict_dynamic(w, GpuL2(sm_sharing="work-conserving"))
    assert a["blocks_per_sm"] == 1
    assert a["dram_read_bytes"] == b["dram_read_bytes"]
    assert a["makespan_us"] == b["makespan_us"]


def test_work_conserving_moves_time_not_bytes():
    """At d=64 (two blocks per SM, 512 blocks) with a DRAM far too slow for the launch
    (100 GB/s) every block waits on its fetches: giving a waiting block's time to the other
    changes the schedule (the makespan) but not the bytes -- all cold misses, one head's K/V
    fits -- and neither schedule beats the bandwidth bound."""
    from dataclasses import replace
    w = Workload(1, 16, 4096, 4096, 64, causal=True, grid_order="head-major")
    slow = replace(GpuL2(), dram_bytes_per_us=1.0e5)
    a = _predict_dynamic(w, slow)
    b = _predict_dynamic(w, replace(slow, sm_sharing="work-conserving"))
    assert a["blocks_per_sm"] == 2
    cold = 16 * 4096 * 64 * 2 * 2                      # K and V of 16 heads, once
    assert a["kv_miss_bytes"] == b["kv_miss_bytes"] == cold
    assert min(a["makespan_us"], b["makespan_us"]) >= cold / 1.0e5
    assert a["makespan_us"] != b["makespan_us"]


def test_bad_sm_sharing():
    with pytest.raises(IosimError, match="sm_sharing 'fair'"):
        GpuL2(sm_sharing="fair")


def test_recorded_partner_pace_table():
    """experiments/l2_research/partner_pace.py over the 37 traced d=64 head-major launches: on the
    20 causal
    ones a block that misses goes slower (own > 0 on all 20) and one beside a block that misses
    goes faster (partner < 0 on 19); on the 17 non-causal ones both signs are reversed on all
    17, so the fit is not a clean measure of sharing (there the older of two blocks is the one
    that fetches and the faster by age). The work-conserving option brings the causal partner
    coefficient closer to the trace's on 12 of the 16 launches where the two models differ,
    but not the DRAM bytes: within 15% of the traced counters on 14 of 20 (default 15), so it
    is not adopted."""
    rows = _table()
    assert len(rows) == 37
    causal = [r for r in rows if "causal" in r["launch"]]
    other = [r for r in rows if "causal" not in r["launch"]]
    assert len(causal) == 20 and len(other) == 17
    f = lambda r, k: float(r[k])  # noqa: E731
    assert sum(f(r, "trace_own") > 0 for r in causal) == 20
    assert sum(f(r, "trace_partner") < 0 for r in causal) == 19
    assert all(f(r, "trace_own") < 0 < f(r, "trace_partner") for r in other)
    d_sen = [abs(f(r, "seniority_partner") - f(r, "trace_partner")) for r in causal]
    d_con = [abs(f(r, "conserving_partner") - f(r, "trace_partner")) for r in causal]
    differ = [(a, b) for a, b in zip(d_sen, d_con) if a != b]
    assert len(differ) == 16 and sum(b < a for a, b in differ) == 12
    assert sum(abs(f(r, "err_seniority")) <= 0.15 for r in causal) == 15
    assert sum(abs(f(r, "err_conserving")) <= 0.15 for r in causal) == 14


def test_partner_pace_row_recomputed():
    """One row of the table from the trace and the two models' schedules."""
    key = "4x16x4096x64-causal_head-major"
    rec = next(r for r in _table() if r["launch"] == key)
    z = np.load(os.path.join(DATA, "gpu_traced.npz"))[key]
    w = Workload(4, 16, 4096, 4096, 64, causal=True, grid_order="head-major")
    got = partner_pace(w, z)
    assert got["own"] == pytest.approx(float(rec["trace_own"]), rel=1e-9)
    assert got["partner"] == pytest.approx(float(rec["trace_partner"]), rel=1e-9)
    assert got["n"] == int(rec["trace_n"])
    assert got["hit_miss"] == pytest.approx(float(rec["trace_hit_miss"]), rel=1e-9, nan_ok=True)
    for name, gpu in (("seniority", GpuL2()), ("conserving", GpuL2(sm_sharing="work-conserving"))):
        b = _predict_dynamic(w, gpu, record=True)["blocks"]
        p = partner_pace(w, np.c_[b["start_us"], b["end_us"], b["sm"]])
        assert p["partner"] == pytest.approx(float(rec[f"{name}_partner"]), rel=1e-6), name
