"""Replaying measured thread-block schedules through the L2 cache response
(iosim.l2.replay), the traced-and-counted launches and the mixed re-read microbenchmark."""
import csv
import os

from functools import partial

import numpy as np
import pytest

from iosim.errors import IosimError
from iosim.l2.simulate import GpuL2, Workload, _predict_dynamic, predict_dram
from iosim.l2.replay import key_times, replay_dram

DATA = os.path.join(os.path.dirname(__file__), "..", "experiments", "data")
MIB = 2 ** 20
#: hand-derivable: every K/V line costs a full line; no misses up to 24 MiB, all from 30 MiB
SHARED = GpuL2(kv_weight="shared", scan_shared=((0.0, 0.0), (24 / 50, 0.0), (30 / 50, 1.0)))


def _csv(name):
    with open(os.path.join(DATA, name), newline="") as f:
        return list(csv.DictReader(f))


def _one_at_a_time(w):
    """Blocks run one after another in block-id order, 1 time unit each."""
    n = w.batch * w.heads * w.n_q_blocks
    return np.c_[np.arange(n), np.arange(n) + 1.0]


def test_sequential_blocks_whose_head_fits_read_kv_once():
    # 2 heads x 16K keys x d=128: one head's K+V is 8 MiB, far below the 24 MiB where the
    # measured response starts to miss, so each head's K/V comes from DRAM once
    w = Workload(1, 2, 16384, 16384, 128, grid_order="query-major")
    q = 2 * 16384 * 128 * 2
    got = replay_dram(w, _one_at_a_time(w), SHARED)["dram_read_bytes"]
    assert got == pytest.approx(q + 2 * q, rel=1e-9)          # Q + K + V


def test_sequential_blocks_whose_head_overflows_reread_everything():
    # 1 head x 64K keys x d=128: K+V is 32 MiB; block i re-reads key block j after the other
    # 32 MiB - 1 chunk of that head (>= 30 MiB: the response misses fully), so every one of
    # the 512 query blocks fetches all of K and V (chunks of 6 key blocks: 192 KiB)
    w = Workload(1, 1, 65536, 65536, 128, grid_order="query-major")
    kv = 2 * 65536 * 128 * 2
    q = kv // 2
    got = replay_dram(w, _one_at_a_time(w), SHARED, chunk=6)["dram_read_bytes"]
    assert got == pytest.approx(q + 512 * kv, rel=1e-6)


def test_blocks_of_a_head_running_together_share_each_fetch():
    # the same 32 MiB head, but all 512 query blocks start and end together: every key block
    # is read by all of them at once, so it is fetched once
    w = Workload(1, 1, 65536, 65536, 128, grid_order="query-major")
    kv = 2 * 65536 * 128 * 2
    tr = np.c_[np.zeros(512), np.ones(512)]
    got = replay_dram(w, tr, SHARED, batch=64)["dram_read_bytes"]
    assert got == pytest.approx(kv // 2 + kv, rel=1e-6)


def test_causal_blocks_read_only_up_to_the_diagonal():
    # one head, causal, blocks one at a time, K/V fit: DRAM = Q + K + V still, and the per-block
    # misses fall on the block that first reaches a key block (block i reaches 2 new ones)
    w = Workload(1, 1, 4096, 4096, 64, causal=True, grid_order="query-major")
    r = replay_dram(w, _one_at_a_time(w), SHARED, chunk=1, per_block=True)
    kv_block = 2 * 64 * 64 * 2
    assert r["dram_read_bytes"] == pytest.approx(3 * 4096 * 64 * 2, rel=1e-9)
    assert np.allclose(r["block_miss_bytes"], 2 * kv_block)


def test_key_times_follow_the_marks():
    # two blocks, marks every 8 key blocks (Tiling(trace_every=8)): the first reads 20 key
    # blocks (marks at 0, 8, 16: t = 10, 30, 50; end 62), the second 10 (marks 5, 25, never
    # at 16; end 35). Between marks the time is linear; after the last mark it runs to the end
    tr = np.array([[0.0, 62.0, 0, 0, 10.0, 30.0, 50.0],
                   [0.0, 35.0, 1, 0, 5.0, 25.0, -1.0]])
    NK = np.array([20, 10])
    got = key_times(tr, NK, np.array([4, 12, 18, 0, 9]), np.array([0, 0, 0, 1, 1]), every=8)
    assert np.allclose(got, [20.0, 40.0, 56.0, 5.0, 30.0])
    # without marks: evenly between start and end
    assert np.allclose(key_times(tr, NK, np.array([10, 5]), np.array([0, 1])), [31.0, 17.5])


def test_marks_place_the_reads_where_the_blocks_were():
    # 512 blocks of one 32 MiB head whose start/end rows say they all ran together (every
    # fetch shared: Q + K + V), but whose marks say each read all its keys in its own time
    # unit, one after another: the re-reads are 32 MiB apart and all miss (as the sequential
    # test above: Q + 512 x (K + V))
    w = Workload(1, 1, 65536, 65536, 128, grid_order="query-major")
    kv = 2 * 65536 * 128 * 2
    nb, every = 512, 8
    marks = np.arange(nb)[:, None] + np.arange(1024 // every)[None, :] * every / 1024
    tr = np.c_[np.zeros(nb), np.full(nb, 512.0), np.zeros(nb), np.zeros(nb), marks]
    lin = replay_dram(w, tr, SHARED, chunk=8, batch=64)["dram_read_bytes"]
    seq = replay_dram(w, tr, SHARED, chunk=8, batch=64, every=every)["dram_read_bytes"]
    assert lin == pytest.approx(kv // 2 + kv, rel=1e-6)
    assert seq == pytest.approx(kv // 2 + 512 * kv, rel=1e-6)


def test_bad_trace():
    w = Workload(1, 2, 1024, 1024, 64)
    with pytest.raises(IosimError, match="the launch has 16"):
        replay_dram(w, np.zeros((5, 4)), SHARED)
    with pytest.raises(IosimError, match="one row"):
        replay_dram(w, np.zeros(16), SHARED)


# ---------------------------------------------------------------- the recorded traced launches
def _traced(name="gpu_traced"):
    z = np.load(os.path.join(DATA, f"{name}.npz"))
    for r in _csv(f"{name}.csv"):
        w = Workload(int(r["batch"]), int(r["heads"]), int(r["seq"]), int(r["seq"]),
                     int(r["head_dim"]), causal=r["causal"] == "True",
                     grid_order=r["grid_order"])
        yield r, w, z[r["trace_key"]]


def test_traced_launches_cover_validation_and_unseen_rounds():
    rows = _csv("gpu_traced.csv")
    assert len(rows) == 56 and all(r["device"].startswith("NVIDIA H100") for r in rows)
    z = np.load(os.path.join(DATA, "gpu_traced.npz"))
    for r, w, tr in _traced():
        assert tr.shape == (w.batch * w.heads * w.n_q_blocks, 4)
        assert (tr[:, 1] > tr[:, 0]).all()                        # end after start
        assert set(np.unique(tr[:, 2])) <= set(range(132))         # SM ids of the H100
    assert len(z.files) == 56


def test_traced_l2_to_sm_bytes_match_the_tile_model():
    from iosim.l2.simulate import smem_level_reads
    for r, w, _ in _traced():
        assert float(r["l2_to_sm_read_bytes"]) == pytest.approx(
            smem_level_reads(w)["read_bytes"], rel=0.05)


@pytest.mark.slow
def test_cache_response_on_measured_schedules():
    """The measured response (scan + readers) on the measured schedule reproduces the counters
    of the same run within 10% on every causal head-major launch that reads 10x Q+K+V or more
    (the thrash regime; recomputed here for those under 2^19 query rows x heads, the rest in
    the recorded table), and within 15% on at least 50 of all 56 launches (the recorded table,
    which test_recorded_replay_table_is_reproduced checks against the code)."""
    thrash = []
    for r, w, tr in _traced():
        meas = float(r["dram_read_bytes"])
        qkv = 3 * w.batch * w.heads * w.seq_q * w.head_dim * 2
        if (w.causal and w.grid_order == "head-major" and meas >= 10 * qkv
                and w.batch * w.heads * w.seq_q < 2 ** 19):
            thrash.append((r["trace_key"], replay_dram(w, tr)["dram_read_bytes"] / meas - 1))
    assert len(thrash) >= 6
    assert all(abs(e) <= 0.10 for _, e in thrash), thrash
    rec = _csv("gpu_replay.csv")
    assert len(rec) == 56
    assert sum(abs(float(r["err_replay_meas"])) <= 0.15 for r in rec) >= 50
    big = [r for r in rec if float(r["meas_dram_read_bytes"]) >= 10 * float(r["qkv_bytes"])
           and "causal_head" in r["launch"]]
    assert len(big) >= 9 and all(abs(float(r["err_replay_meas"])) <= 0.10 for r in big)


@pytest.mark.parametrize("key", ["1x16x16384x64-causal_head-major",
                                 "1x16x16384x128-causal_head-major"])
def test_model_schedule_is_what_misses_causal_head_major(key):
    """The same response on the dynamic model's own schedule (with the readers rule, as
    replayed, and fetches stopping at chunk ends: the model of that time) reads at least 10
    points more than on the measured one: in this regime the model's schedule, not the cache,
    was off (docs/notes/l2_research_history.md, "The capture range", for the fetches across chunk
    ends)."""
    r, w, tr = next(x for x in _traced() if x[0]["trace_key"] == key)
    meas = float(r["dram_read_bytes"])
    blk = _predict_dynamic(w, GpuL2(kv_weight="readers", prefetch_across_chunks=False),
                           record=True)["blocks"]
    mine = np.c_[blk["start_us"], blk["end_us"]]
    on_model = replay_dram(w, mine)["dram_read_bytes"] / meas - 1
    on_meas = replay_dram(w, tr)["dram_read_bytes"] / meas - 1
    assert abs(on_meas) < 0.10
    assert on_model > on_meas + 0.10


@pytest.mark.slow
def test_recorded_replay_table_is_reproduced():
    rec = {r["launch"]: r for r in _csv("gpu_replay.csv")}
    assert len(rec) == 56
    small = [x for x in _traced() if x[1].batch * x[1].heads * x[1].seq_q <= 2 ** 18]
    assert len(small) >= 20
    for r, w, tr in small[::3]:
        got = replay_dram(w, tr)["dram_read_bytes"]
        assert float(rec[r["trace_key"]]["replay_meas"]) == pytest.approx(got, rel=1e-9)


def test_rounds_4_and_5_traced_schedule_or_response():
    """The 16 launches of out-of-sample rounds 4 and 5, traced under ncu in a later session
    (gpu_traced_rounds.csv/.npz). On the measured schedule the response is within 5% of the
    same run's counters for every causal head-major launch reading >= 25x Q+K+V (recorded table
    gpu_replay_rounds.csv; one recomputed here): the cache half holds there. (The model of that
    time, fetches stopping at its chunk ends, read 15-36% more on its own schedule: its
    schedule missed; with fetches across chunk ends its schedule replays within 7% on four of
    the five, docs/notes/l2_research_history.md.) 2x16x3Kx64 head-major (-42%) is the
    response: it misses as much on the measured schedule (the readers rule keeps K/V that the
    GPU loses)."""
    traced = list(_traced("gpu_traced_rounds"))
    assert len(traced) == 16 and all(r["device"].startswith("NVIDIA H100") for r, _, _ in traced)
    from iosim.l2.simulate import smem_level_reads
    for r, w, tr in traced:
        assert tr.shape == (w.batch * w.heads * w.n_q_blocks, 4)
        assert float(r["l2_to_sm_read_bytes"]) == pytest.approx(
            smem_level_reads(w)["read_bytes"], rel=0.05)
    picked = ("2x16x3072x64_head-major", "1x24x12288x64-causal_head-major")
    replayed = {r["trace_key"]: (replay_dram(w, tr)["dram_read_bytes"],
                                 float(r["dram_read_bytes"]))
                for r, w, tr in traced if r["trace_key"] in picked}
    on_meas = {k: got / meas - 1 for k, (got, meas) in replayed.items()}
    assert on_meas["2x16x3072x64_head-major"] < -0.35
    assert abs(on_meas["1x24x12288x64-causal_head-major"]) < 0.05
    rec = _csv("gpu_replay_rounds.csv")
    assert len(rec) == 16
    big = [r for r in rec if "causal_head" in r["launch"]
           and float(r["meas_dram_read_bytes"]) >= 25 * float(r["qkv_bytes"])]
    assert len(big) >= 4
    for r in big:
        assert abs(float(r["err_replay_meas"])) < 0.05, r["launch"]
    k = "1x24x12288x64-causal_head-major"     # the recorded table is the code's
    assert float(next(r for r in rec if r["launch"] == k)["replay_meas"]) == pytest.approx(
        replayed[k][0], rel=1e-9)


# ------------------------------------------------------------- mixed re-read distances
def _private_scan_miss(mib):
    pts = sorted((float(r["mib"]), float(r["miss_fraction"])) for r in _csv("gpu_l2scan.csv")
                 if r["mode"] == "private")
    return float(np.interp(mib, *zip(*pts)))


def test_mix_keeps_more_than_a_scan_of_the_same_footprint():
    """A cold buffer re-read once, with a hot one re-read every round in between, misses far
    less than a cyclic scan of hot + cold bytes (which its per-line reuse distance equals):
    recorded, not (yet) in the model."""
    rows = _csv("gpu_l2mix.csv")
    assert len(rows) >= 10 and all(r["device"].startswith("NVIDIA H100") for r in rows)
    checked = 0
    for r in rows:
        foot = float(r["hot_mib"]) + float(r["cold_mib"])
        scan = _private_scan_miss(foot)
        got = float(r["cold_miss_fraction"])
        assert got <= scan + 0.02                       # never more than the scan
        if scan >= 0.4:
            assert got <= scan - 0.3
            checked += 1
    assert checked >= 3


# ------------------------------------------------------- traced vs plain kernel, run to run
def _tvp():
    out = {}
    for r in _csv("gpu_trace_vs_plain.csv"):
        out.setdefault((r["launch"], r["variant"]), []).append(float(r["dram_read_bytes"]))
    return out


def test_tracing_moves_d64_noncausal_head_major_launches():
    """Three rounds of (traced, plain) in one session: on the three d=64 non-causal
    head-major launches the traced kernel reads 15% more DRAM than the plain one in every
    round; on the causal head-major ones the two agree within their run-to-run spread."""
    d = _tvp()
    assert all(r["device"].startswith("NVIDIA H100") for r in _csv("gpu_trace_vs_plain.csv"))
    for launch in ("2x12x8192x64_head-major", "16x8x2048x64_head-major",
                   "4x16x4096x64_head-major"):
        assert min(d[(launch, "traced")]) > 1.15 * max(d[(launch, "plain")])
    for launch in ("1x16x16384x64-causal_head-major", "1x16x16384x128-causal_head-major"):
        t, p = d[(launch, "traced")], d[(launch, "plain")]
        spread = max(max(t), max(p)) - min(min(t), min(p))
        assert abs(np.mean(t) - np.mean(p)) < spread


def test_plain_counters_vary_run_to_run_at_the_cliff():
    """The same plain launch, three ncu runs in one session: 16K x 128 causal head-major
    spans 15% of its mean; a launch off the cliff (2x12x8Kx64 head-major) under 1%. The
    recorded validation counter of 4x16x4Kx64 head-major lies within this session's runs
    (+-1%)."""
    d = _tvp()

    def spread(x):
        return (max(x) - min(x)) / np.mean(x)
    assert spread(d[("1x16x16384x128-causal_head-major", "plain")]) > 0.10
    assert spread(d[("2x12x8192x64_head-major", "plain")]) < 0.01
    rec = next(r for r in _csv("gpu_validation.csv")
               if r["impl"] == "generated" and r["cascade"] == "attention-1pass"
               and r["batch"] == "4" and r["seq"] == "4096" and r["head_dim"] == "64"
               and r["causal"] == "False" and r["grid_order"] == "head-major")
    runs = d[("4x16x4096x64_head-major", "plain")]
    assert min(runs) * 0.99 <= float(rec["dram_read_bytes"]) <= max(runs) * 1.01


def test_hit_pace_classes_followers_and_leaders():
    """200 heads, two query blocks each, run head after head; the second block of a head
    starts 2 us after the first and is 1% faster per key block, never passing it. The first
    reads its head's K/V cold (all misses), the second right behind it (all hits): half
    hitters, half missers, and relative to the running mean the hitters are ~0.5% faster,
    the missers ~0.5% slower."""
    from iosim.l2.replay import hit_pace
    w = Workload(1, 200, 256, 8192, 128, causal=False, grid_order="query-major")
    start = np.repeat(np.arange(200) * 200.0, 2) + np.tile([0.0, 2.0], 200)
    dur = np.tile([100.0, 99.0], 200)
    h = hit_pace(w, np.c_[start, start + dur], SHARED)
    assert h["hitters"] == pytest.approx(0.5, abs=0.01)
    assert h["missers"] == pytest.approx(0.5, abs=0.01)
    assert h["hitter_pace"] == pytest.approx(-0.005, abs=0.0005)
    assert h["misser_pace"] == pytest.approx(0.005, abs=0.0005)
    assert h["us_per_key_block"] == pytest.approx(99.5 / 128, rel=0.01)
    with pytest.raises(IosimError, match="long blocks"):
        hit_pace(w, np.c_[start, start + dur], SHARED, window=201)


@pytest.mark.slow
def test_recorded_64k_causal_head_major_state():
    """The traced 1x8x64Kx128 causal head-major launch (gpu_traced.npz) on its measured
    schedule: about 28% of the long blocks hit all their K/V, 70% miss all, and the hitters
    run ~0.8% faster than the missers (docs/notes/l2_research_history.md, 'The convoy state')."""
    from iosim.l2.replay import hit_pace
    w = Workload(1, 8, 65536, 65536, 128, causal=True, grid_order="head-major")
    tr = np.load(os.path.join(DATA, "gpu_traced.npz"))["1x8x65536x128-causal_head-major"]
    tr = tr.astype(np.float64)
    tr[:, :2] = (tr[:, :2] - tr[:, 0].min()) / 1e3
    h = hit_pace(w, tr)
    assert 0.2 < h["hitters"] < 0.35 and 0.6 < h["missers"] < 0.8
    assert h["misser_pace"] - h["hitter_pace"] > 0.004


def test_marked_traces_trajectories_and_followers():
    """The marked traces (experiments/device/marked_traces.py): every mark lies between its
    block's start and end and the marks rise; unreached marks (-1) are exactly those past the
    block's keys. And the finding of docs/notes/l2_research_history.md, recomputed here with plain
    numpy: at
    d=128 a block that starts within 8 us of the previous query block of its head is drawn
    afresh each generation (after a follower, following is no likelier than after a
    non-follower), while at d=64 (two blocks per SM) it is inherited."""
    meta = _csv("gpu_marks.csv")
    assert {r["device"] for r in meta} == {"NVIDIA H100 80GB HBM3"}
    inherit = {}
    for r in meta:
        every = int(r["trace_every"])
        z = np.load(os.path.join(DATA, r["npz"]))[r["trace_key"]]
        if every:
            marks = z[:, 4:]
            n_kb = -(-z[:, 3].astype(int) // 64)                 # key blocks read (extent)
            want = np.arange(marks.shape[1])[None, :] * every < n_kb[:, None]
            assert np.array_equal(marks >= 0, want), r["trace_key"]
            m = np.where(want, marks, np.nan)
            assert np.all(np.nan_to_num(np.diff(m, axis=1), nan=0.0) >= 0)
            assert np.all(m[want] >= np.repeat(z[:, 0], want.sum(axis=1)))
            assert np.all(m[want] <= np.repeat(z[:, 1], want.sum(axis=1)))
        if r["grid_order"] != "head-major" or r["causal"] != "True":
            continue
        heads = int(r["batch"]) * int(r["heads"])
        s = (z[:, 0] - z[:, 0].min()).astype(np.float64) / 1e3
        s = s.reshape(-1, heads)
        close = (s[1:] - s[:-1] < 8.0)[(len(s) - 1) // 3:]
        prev, nxt = close[:-1].ravel(), close[1:].ravel()
        key = (int(r["head_dim"]), r["seq"])
        inherit.setdefault(key, []).append((nxt[prev].mean(), nxt[~prev].mean(), close.mean()))
    for (d, n), runs in inherit.items():
        after_follow, after_far, frac = np.mean(runs, axis=0)
        if d == 128:
            assert 0.1 < frac < 0.3, (n, frac)
            assert after_follow < after_far + 0.05, (n, runs)
        else:
            assert after_follow > 3 * after_far, (n, runs)


@pytest.mark.slow
def test_query_major_cliff_one_head():
    """experiments/device/query_cliff.py (H100, traced under ncu): causal query-major launches of
    one head at d=128. The GPU reads Q+K+V once up to 48K keys (24 MiB of K/V), then a little
    more, rising gently (1.2x at 64K, 1.9x at 80K): no thrash. The readers-rule model stays at
    Q+K+V through 64K (the validated 64Kx128 miss, here with one head) and then thrashes: at 72K
    it predicts more than twice what the GPU reads; the cache response on the measured schedule
    too. The partitions model with the response (the default of rounds 7-10) does not thrash
    but stays near Q+K+V: at 72K below 1.1x, where the GPU reads 1.56x -- both miss the gentle
    rise, from opposite sides. The NRU state (the default since round 11) rises, not enough:
    1.1-1.3x."""
    rows = {r["trace_key"]: r for r in _csv("gpu_query_cliff.csv")}
    assert len(rows) == 8 and all(r["device"].startswith("NVIDIA H100") for r in rows.values())
    ratio = {}
    for k, r in rows.items():
        qkv = 3 * int(r["heads"]) * int(r["seq"]) * int(r["head_dim"]) * 2
        ratio[k] = float(r["dram_read_bytes"]) / qkv
    one = [ratio[f"1x1x{n}x128-causal_query-major"]
           for n in (32768, 40960, 49152, 57344, 65536, 73728, 81920)]
    assert all(b >= a - 0.005 for a, b in zip(one, one[1:]))          # rises with N
    assert max(one[:3]) < 1.01 and 1.1 < one[4] < 1.3 and one[6] < 2.0
    w = Workload(1, 1, 73728, 73728, 128, causal=True, grid_order="query-major")
    qkv = 3 * 73728 * 128 * 2
    before = partial(GpuL2, prefetch_across_chunks=False, pace_draws=1)
    assert predict_dram(w, before(kv_weight="readers"))["dram_read_bytes"] / qkv > 2 * one[5]
    assert predict_dram(w, before(l2_policy="response"))["dram_read_bytes"] / qkv < 1.1 < one[5]
    assert 1.1 < predict_dram(w)["dram_read_bytes"] / qkv < 1.3 < one[5]
    tr = np.load(os.path.join(DATA, "gpu_query_cliff.npz"))["1x1x73728x128-causal_query-major"]
    assert replay_dram(w, tr)["dram_read_bytes"] / qkv > 1.4 * one[5]


@pytest.mark.slow
def test_query_major_cliff_marks_rule_out_the_schedule():
    """The same one-head launches traced with a mark every 8 key blocks
    (gpu_query_cliff_marks.*): placing each read on its block's measured trajectory changes the
    replay by under 2%, and past the cliff the replay still reads far more than the GPU (72K:
    over 2x; 80K: over 5x) -- the response, not the schedule, misses there."""
    rows = _csv("gpu_query_cliff_marks.csv")
    z = np.load(os.path.join(DATA, "gpu_query_cliff_marks.npz"))
    assert len(rows) == 4 and all(r["device"].startswith("NVIDIA H100") for r in rows)
    got = {}
    for r in rows:
        w = Workload(int(r["batch"]), int(r["heads"]), int(r["seq"]), int(r["seq"]), 128,
                     causal=True, grid_order="query-major")
        tr = z[r["trace_key"]]
        assert tr.shape[1] == 4 + -(-w.n_kv_blocks // 8)
        even = replay_dram(w, tr[:, :4])["dram_read_bytes"]
        marks = replay_dram(w, tr, every=8)["dram_read_bytes"]
        assert marks == pytest.approx(even, rel=0.02)
        got[(w.heads, w.seq_q)] = marks / float(r["dram_read_bytes"])
    assert got[(1, 73728)] > 2 and got[(1, 81920)] > 5
