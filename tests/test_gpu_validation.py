"""The simulator against the RECORDED H100 measurements (experiments/data/gpu_*.csv), and the
GPU entry points' behaviour on a machine without a GPU. Live GPU tests are marked ``gpu``."""
import os
import subprocess
import sys

import numpy as np
import pytest

from iosim.gpu.compare import compare, read_csv, summary
from iosim.gpu.ncu import group_by_marker, parse_csv, summarize
from iosim.gpu.shapes import parse_shapes
from iosim.gpu.validate import has_cuda
from iosim.errors import IosimError

DATA = os.path.join(os.path.dirname(__file__), "..", "experiments", "data")


@pytest.fixture(scope="module")
def rows():
    """The dynamic L2 simulation on the 34 validated launches (minutes: the tests that use it
    are marked slow; the default analytical model's counterpart is test_l2analytic.py)."""
    return compare(read_csv(os.path.join(DATA, "gpu_ncu.csv")), workers=2)


def _gen(rows):
    return [r for r in rows if r["impl"] == "generated" and r["cascade"] == "attention-1pass"]


@pytest.mark.slow
def test_recorded_on_h100(rows):
    assert {r["device"] for r in rows} == {"NVIDIA H100 80GB HBM3"}
    assert len(_gen(rows)) == 34
    assert {r["grid_order"] for r in _gen(rows)} == {"query-major", "head-major"}


@pytest.mark.slow
def test_l2_reads_within_5pct_everywhere(rows):
    """SMEM-level model vs bytes the SMs read from L2 (l1tex__m_xbar2l1tex_read_bytes)."""
    for r in _gen(rows):
        assert abs(r["err_l2_read"]) <= 0.05, r


@pytest.mark.slow
def test_head_major_l2_tag_lookups_match(rows):
    """Tag lookups from the SMs (lts__t_sectors_srcunit_tex) equal the tile model when
    concurrent blocks belong to different heads; query-major lands below (merged requests)."""
    for r in _gen(rows):
        if r["grid_order"] == "head-major":
            assert abs(r["err_l2_tex_read"]) <= 0.08, r
        else:
            assert r["err_l2_tex_read"] >= -0.01, r


@pytest.mark.slow
def test_dram_reads(rows):
    """DRAM reads: the recorded state of the dynamic L2 model (docs/validation.md lists the
    misses: all 34 within 15% with the fastest of three pace-noise draws, the default since
    round 15 -- 33 with seed 0 alone, the default of rounds 13-15 (CLOCK and each block's
    startup), 32 with the NRU state and fetches across chunk ends before it, 30 with the
    response before that and with the readers rule before that; 31 with the earlier L2-sides
    rule, which the sides microbenchmark contradicts; the lock-step model 23); fails if it
    gets worse."""
    s = summary(rows)
    assert s["dram_read_within_15pct"] == 34
    assert s["dram_read_max_abs_err"] <= 0.15
    assert s["dram_read_within_15pct_lockstep"] == 23
    # the regime the lock-step model missed most (-36% to -49%): non-causal head-major, two
    # blocks per SM (8x16x1Kx64 was at -22% before CLOCK)
    for r in _gen(rows):
        if r["grid_order"] == "head-major" and r["causal"] == "False" and r["head_dim"] == "64":
            assert abs(r["err_dram_read"]) <= 0.15, r
    # the thrashing regime: measured DRAM far above Q+K+V is predicted as such
    for r in _gen(rows):
        if r["dram_over_qkv"] > 10:
            assert r["pred_dram_read_bytes"] > 5 * r["qkv_bytes"], r
        if r["dram_over_qkv"] < 1.05:   # K/V read once (the NRU state: up to +2.8%)
            assert abs(r["err_dram_read"]) < 0.03, r


@pytest.mark.slow
def test_three_pass_reads_more_than_one_pass(rows):
    ext = {(r["cascade"], r["causal"]): float(r["l1_from_l2_read_bytes"]) for r in rows
           if r["impl"] == "generated" and r["seq"] == "4096" and r["batch"] == "1"}
    assert ext[("attention-3pass", "False")] > 1.9 * ext[("attention-1pass", "False")]
    dram = {(r["cascade"], r["causal"]): float(r["dram_read_bytes"]) for r in rows
            if r["impl"] == "generated" and r["seq"] == "4096" and r["batch"] == "1"}
    assert dram[("attention-2pass", "False")] > 10 * dram[("attention-1pass", "False")]


def _tflops(r):
    try:
        v = float(r["tflops"])
    except (TypeError, ValueError):
        return float("nan")
    return v


def test_recorded_speed_and_correctness():
    """The default tiling of cascades.triton.fast_tiling against the faster of SDPA flash's two
    runs in the same session: >= 1.35x non-causal and >= 1.1x causal at d=128."""
    from cascades.triton import fast_tiling
    bench = read_csv(os.path.join(DATA, "gpu_bench.csv"))
    assert {r["device"] for r in bench} == {"NVIDIA H100 80GB HBM3"}
    for d in ("128", "64"):
        for causal, need in (("False", 1.35), ("True", 1.1)):
            for n in ("4096", "16384", "65536"):
                sel = [r for r in bench if r["head_dim"] == d and r["causal"] == causal
                       and r["seq"] == n]
                t = fast_tiling(int(d), "bf16", seq_len=int(n))
                knobs = "tma" if t.tma else "plain"
                default = [_tflops(r) for r in sel if r["impl"] == "generated"
                           and r["knobs"] == knobs and int(r["block_m"]) == t.block_m
                           and int(r["block_n"]) == t.block_n
                           and int(r["num_warps"]) == t.num_warps
                           and int(r["num_stages"]) == t.num_stages]
                assert len(default) == 1, (d, causal, n)
                flash = max(_tflops(r) for r in sel if r["impl"] == "sdpa-flash")
                floor = need if d == "128" else 1.1
                assert default[0] >= floor * flash, (d, causal, n, default, flash)
    check = read_csv(os.path.join(DATA, "gpu_check.csv"))
    assert len(check) >= 60 and all(r["ok"] == "True" for r in check)
    knobs = read_csv(os.path.join(DATA, "gpu_check_knobs.csv"))
    assert len(knobs) >= 150 and all(r["ok"] == "True" for r in knobs)
    assert {"tma", "warp_specialize", "lazy_rescale"} <= {r["knobs"] for r in knobs}


def test_ncu_csv_parsing():
    text = ('==PROF== noise\n"ID","Kernel Name","Metric Name","Metric Unit","Metric Value"\n'
            '"0","iosim_marker","dram__bytes_read.sum","byte","32"\n'
            '"1","attention_1pass_fwd","dram__bytes_read.sum","byte","1,024"\n'
            '"1","attention_1pass_fwd","gpu__time_duration.sum","ns","10"\n'
            '"2","iosim_marker","dram__bytes_read.sum","byte","32"\n'
            '"3","k_a","dram__bytes_read.sum","byte","5"\n'
            '"4","k_b","dram__bytes_read.sum","byte","7"\n')
    groups = group_by_marker(parse_csv(text))
    assert [len(g) for g in groups] == [1, 2]
    assert summarize(groups[0])["dram_read_bytes"] == 1024
    assert summarize(groups[1])["dram_read_bytes"] == 12


def test_shapes_parsing():
    s = parse_shapes("4x16x4096x128, 1x8x65536x64-causal")
    assert s[1].causal and s[1].seq == 65536 and s[0].flops == 4 * 4 * 16 * 4096 ** 2 * 128
    with pytest.raises(IosimError):
        parse_shapes("4x16x4096")


@pytest.mark.skipif(has_cuda(), reason="this machine has a GPU")
def test_validate_gpu_without_gpu_one_line():
    r = subprocess.run([sys.executable, "-c", "import sys; from iosim.cli import main; "
                        "sys.exit(main())", "validate", "--gpu"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "GPU" in r.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not has_cuda(), reason="needs a CUDA GPU")
def test_generated_kernel_on_gpu_matches_sdpa_math():
    from iosim.gpu.runner import check
    import tempfile
    rows = check(tempfile.mkdtemp())
    assert all(r["ok"] for r in rows)


def _unseen_rounds():
    """The rounds' files in round order (gpu_unseen.csv is round 1; gpu_unseen10.csv comes
    after gpu_unseen9.csv, which a plain sort of the names would not give)."""
    import glob
    return sorted(glob.glob(os.path.join(DATA, "gpu_unseen*.csv")),
                  key=lambda p: int(os.path.basename(p)[10:-4] or 1))


def test_unseen_shapes_are_not_validated_launches():
    """Every pre-registered launch (experiments/data/gpu_unseen*.csv, one file per round) differs
    from every validated launch and from the launches of earlier rounds in (B*H, N, d, mask,
    grid order), the kernel's grid flattening B and H; each round covers both grid orders and
    both masks, and both regimes (DRAM = Q+K+V and far above it; round 13's nearest is 1.2x)."""
    seen = {(int(r["batch"]) * int(r["heads"]), r["seq"], r["head_dim"], r["causal"],
             r["grid_order"]) for r in read_csv(os.path.join(DATA, "gpu_validation.csv"))
            if r["impl"] == "generated"}
    rounds = _unseen_rounds()
    assert len(rounds) >= 1
    for path in rounds:
        pre = read_csv(path)
        assert len(pre) == 8
        assert {r["grid_order"] for r in pre} == {"query-major", "head-major"}
        assert {r["causal"] for r in pre} == {"True", "False"}
        keys = {(int(r["batch"]) * int(r["heads"]), r["seq"], r["head_dim"], r["causal"],
                 r["grid_order"]) for r in pre}
        assert len(keys) == 8 and not keys & seen, path
        seen |= keys
        ratios = [float(r["pred_dram_read_bytes"]) / float(r["qkv_bytes"]) for r in pre]
        # round 13 was chosen where its options differ: its nearest to Q+K+V is 1.2x
        assert min(ratios) < (1.25 if path.endswith("gpu_unseen13.csv") else 1.05), path
        assert max(ratios) > 10


@pytest.mark.slow
def test_newest_preregistered_predictions_unchanged():
    """The newest round's predictions were fixed (and committed, with the model's commit)
    before its launches were measured. The model must still give exactly those numbers: a
    change of the model shows up here, and a new round must then be registered before new
    measurements. Older rounds keep the predictions of the model of their time (round 1:
    commit c5901b4; docs/validation.md gives the present model's numbers for it, post hoc)."""
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    from iosim.l2.simulate import BLOCK_STARTUP, FIRST_CLEAR_NO_STARTUP, ONE_PACE_DRAW, GpuL2
    # the default until round 11 (and the rates without the startup, as until round 13)
    before = partial(GpuL2, prefetch_across_chunks=False, **FIRST_CLEAR_NO_STARTUP)
    # the newest round, and the one before where the newest has fewer than three quick
    # launches (round 15 was chosen in the slow bistable regime)
    pre = read_csv(_unseen_rounds()[-1])
    if len(_unseen_rounds()) > 1 and "pred_dram_read_bytes_draws3" in pre[0]:
        pre = read_csv(_unseen_rounds()[-2]) + pre
    jobs = []
    for r in pre:
        row = dict(impl="generated", cascade="attention-1pass", dtype=r["dtype"],
                   grid_order=r["grid_order"], batch=r["batch"], heads=r["heads"],
                   seq=r["seq"], head_dim=r["head_dim"], causal=r["causal"],
                   block_m=r["block_m"], block_n=r["block_n"], num_warps=r["num_warps"],
                   num_stages=r["num_stages"])
        # rounds 6-7 registered the default of their time (the readers rule) and the partitions
        # model; from round 8 the default is the partitions model, the readers rule next to it;
        # all with fetches stopping at chunk ends
        cols = ({"pred_dram_read_bytes": before(kv_weight="readers"),
                 "pred_dram_read_bytes_partitions": before(kv_weight="partitions",
                                                           l2_policy="response")}
                if r.get("pred_dram_read_bytes_partitions") else
                {"pred_dram_read_bytes": before(l2_policy="response"),
                 "pred_dram_read_bytes_readers": before(kv_weight="readers")})
        # from round 12 the default is the NRU state with fetches across chunk ends, the
        # model of rounds 7-10 next to it
        if r.get("pred_dram_read_bytes_response"):
            cols = {"pred_dram_read_bytes": GpuL2(**FIRST_CLEAR_NO_STARTUP),
                    "pred_dram_read_bytes_response": before(l2_policy="response")}
        # round 13 registered the default of rounds 11-13 next to CLOCK, the startup and both
        # (the default since); recomputed on the launches that are quick (CI's time: the
        # default's other launches are checked by test_dram_reads on the validated ones)
        if r.get("pred_dram_read_bytes_clock"):
            cols = {}
            if _work(r) <= 2 ** 33:
                cols = {"pred_dram_read_bytes": GpuL2(**FIRST_CLEAR_NO_STARTUP),
                        "pred_dram_read_bytes_clock_startup": GpuL2(**ONE_PACE_DRAW),
                        "pred_dram_read_bytes_clock": GpuL2(
                            **{**FIRST_CLEAR_NO_STARTUP, "nru_victim": "clock"}),
                        "pred_dram_read_bytes_startup": GpuL2(nru_victim="first", pace_draws=1,
                                                              **BLOCK_STARTUP)}
        # round 14 registered the default since round 13 (CLOCK with the startup) next to the
        # default of rounds 11-13 and the work-conserving SM option; the quick launches
        if r.get("pred_dram_read_bytes_rounds_11_13"):
            cols = {}
            if _work(r) <= 2 ** 32:
                cols = {"pred_dram_read_bytes": GpuL2(**ONE_PACE_DRAW),
                        "pred_dram_read_bytes_rounds_11_13": GpuL2(**FIRST_CLEAR_NO_STARTUP),
                        "pred_dram_read_bytes_conserving": GpuL2(sm_sharing="work-conserving",
                                                                 pace_draws=1)}
        # round 15 registered the default next to the fastest of three pace-noise draws
        if r.get("pred_dram_read_bytes_draws3"):
            cols = {}
            if _work(r) <= 2 ** 32:
                cols = {"pred_dram_read_bytes": GpuL2(**ONE_PACE_DRAW),
                        "pred_dram_read_bytes_draws3": GpuL2(pace_draws=3)}
        # round 16 on: the default is the fastest of three draws, seed 0 alone next to it
        if r.get("pred_dram_read_bytes_seed0"):
            cols = {}
            if _work(r) <= 2 ** 32:
                cols = {"pred_dram_read_bytes": GpuL2(),
                        "pred_dram_read_bytes_seed0": GpuL2(**ONE_PACE_DRAW)}
        # round 10 registered the present NRU state (hashed sets) next to them (round 9's NRU
        # column is the state of commit 57efadf, corrected later: docs/validation.md)
        if r.get("pred_dram_read_bytes_nru"):
            cols["pred_dram_read_bytes_nru"] = before(l2_policy="nru")
        # round 11 added the NRU state with fetches across chunk ends (the default of 11-13)
        if r.get("pred_dram_read_bytes_nru_prefetch"):
            cols["pred_dram_read_bytes_nru_prefetch"] = GpuL2(**FIRST_CLEAR_NO_STARTUP)
        jobs += [(r, col, row, gpu) for col, gpu in cols.items()]
    assert len({r["shape"] for r, *_ in jobs}) >= 3
    with ProcessPoolExecutor(2) as ex:     # two cores, as CI has
        got = list(ex.map(_registered, [(row, gpu) for _, _, row, gpu in jobs]))
    for (r, col, _, _), p in zip(jobs, got):
        assert abs(p["pred_dram_read_bytes"] - float(r[col])) <= 1, (r["shape"], col)
        assert abs(p["pred_l2_read_bytes"] - float(r["pred_l2_read_bytes"])) <= 1, r["shape"]


def _work(r) -> int:
    """B * H * N^2 of a registered launch: what its model run costs, roughly."""
    return int(r["heads"]) * int(r["batch"]) * int(r["seq"]) ** 2


def _registered(job):
    from iosim.gpu.compare import compare_row
    row, gpu = job
    return compare_row(row, gpu, baseline=False)


def _measured_round(name):
    """A measured out-of-sample round: its 8 rows, measured on the H100, L2->SM bytes as
    predicted exactly; the DRAM errors by shape."""
    pre = read_csv(os.path.join(DATA, name))
    assert len(pre) == 8 and all("H100" in r["device"] for r in pre)
    for r in pre:
        assert float(r["pred_l2_read_bytes"]) == float(r["meas_l2_to_sm_read_bytes"]), r["shape"]
    return pre, _dram_errors(pre)


def _dram_errors(pre, column: str = "pred_dram_read_bytes") -> dict:
    """A round's DRAM errors by shape, of the prediction registered in ``column``."""
    return {r["shape"]: float(r[column]) / float(r["meas_dram_read_bytes"]) - 1 for r in pre}


def test_unseen_shapes_measured_on_the_h100():
    """The out-of-sample measurement (docs/validation.md): the SMEM-level model predicts the
    L2->SM bytes of all 8 unseen launches exactly; the L2 model's DRAM prediction is within
    15% in query-major order only (head-major misses by 20-28% there, as in the validated
    set). Asserts what was measured, so a model change that breaks it shows up."""
    pre, err = _measured_round("gpu_unseen.csv")
    qm = [s for s, r in zip(err, pre) if r["grid_order"] == "query-major"]
    assert all(abs(err[s]) <= 0.15 for s in qm)
    assert sum(abs(e) <= 0.15 for e in err.values()) == 4


def test_round2_unseen_shapes_measured_on_the_h100():
    """Round 2 (docs/validation.md): predictions of the present model registered (commit
    b230265) before the device run; measured on the H100: L2->SM bytes exact on all 8, DRAM
    within 15% on all 8 (6 of them head-major, DRAM up to 83x Q+K+V)."""
    pre, err = _measured_round("gpu_unseen2.csv")
    assert sum(r["grid_order"] == "head-major" for r in pre) == 6
    assert all(abs(e) <= 0.15 for e in err.values()), err
    assert max(float(r["meas_dram_read_bytes"]) / float(r["qkv_bytes"]) for r in pre) > 50


def test_speed_repeats_recorded():
    """Five interleaved rounds on the H100 (experiments/data/gpu_speed_repeats.csv): the
    generated attention-1pass at d=128, N >= 4096, bf16 is at least 1.35x SDPA flash
    non-causal and 1.1x causal in every round, not only on the median."""
    rows = read_csv(os.path.join(DATA, "gpu_speed_repeats.csv"))
    assert all("H100" in r["device"] for r in rows)
    by = {}
    for r in rows:
        by.setdefault((r["batch"], r["heads"], r["seq"], r["causal"], r["round"]), {})[
            r["impl"]] = float(r["tflops"])
    assert len(by) == 20
    for (b, h, n, causal, rnd), t in by.items():
        assert int(n) >= 4096
        ratio = t["generated"] / t["sdpa-flash"]
        assert ratio >= (1.1 if causal == "True" else 1.35), (b, h, n, causal, rnd, ratio)



def _median_ratios(name: str) -> dict:
    """Per shape: the generated kernel's TFLOP/s over SDPA flash's, median over the rounds."""
    rows = read_csv(os.path.join(DATA, name))
    assert all("H100" in r["device"] for r in rows)
    by = {}
    for r in rows:
        by.setdefault((int(r["batch"]), int(r["heads"]), int(r["seq"]), r["causal"] == "True"),
                      {}).setdefault(r["round"], {})[r["impl"]] = float(r["tflops"])
    return {k: float(np.median([t["generated"] / t["sdpa-flash"] for t in rounds.values()]))
            for k, rounds in by.items()}


def test_speed_unseen_recorded():
    """Shapes the speed tables had not measured (gpu_speed_unseen*.csv, three rounds each):
    before the unmasked query load, 1x16x6000x128 (a partial query tile) fell to 1.29x flash;
    after it, all 16 shapes (d=128, N >= 4096, bf16) clear 1.35x non-causal and 1.1x causal on
    the median; the partial-tile penalty of the plain 128/128/8/3 kernel (6000 vs 6016 rows)
    is gone (gpu_speed_partial*.csv)."""
    before = _median_ratios("gpu_speed_unseen.csv")
    assert before[(1, 16, 6000, False)] < 1.35
    after = _median_ratios("gpu_speed_unseen_after.csv")
    assert len(after) == 16 and set(before) < set(after)
    for (b, h, n, causal), x in after.items():
        assert n >= 4096
        assert x >= (1.1 if causal else 1.35), (b, h, n, causal, x)

    def plain(name, n):
        return next(float(r["tflops"]) for r in read_csv(os.path.join(DATA, name))
                    if r["impl"] == "generated" and r["knobs"] == "plain" and r["batch"] == "1"
                    and r["seq"] == str(n) and r["causal"] == "False" and r["block_m"] == "128"
                    and r["block_n"] == "128" and r["num_stages"] == "3")
    masked = plain("gpu_speed_partial_masked_q.csv", 6000) / plain("gpu_speed_partial_masked_q.csv", 6016)
    clamped = plain("gpu_speed_partial.csv", 6000) / plain("gpu_speed_partial.csv", 6016)
    assert masked < 0.93 and clamped > 0.98, (masked, clamped)


def test_round3_unseen_shapes_measured_on_the_h100():
    """Round 3 (docs/validation.md): predictions of the readers-rule model registered (commit
    e96ef43) before the device run; measured on the H100: L2->SM bytes exact on all 8, DRAM
    within 15% on 7 of 8 -- the miss is the regime the validated set also misses, d=64 causal
    head-major with 16 heads (1x16x12Kx64: +62%, the model thrashes more than the GPU)."""
    _, err = _measured_round("gpu_unseen3.csv")
    assert sum(abs(e) <= 0.15 for e in err.values()) == 7
    assert err["1x16x12288x64-causal"] > 0.5


def test_ncu_repeats_of_the_validated_misses():
    """The three validated launches the model misses, measured again three times in a later
    session (experiments/data/gpu_ncu_repeats.csv): the counters repeat within 2% of their
    mean (L2->SM bytes exactly), so the misses are not measurement noise; the recorded
    16Kx64 value sits 7% above the repeats."""
    rows = read_csv(os.path.join(DATA, "gpu_ncu_repeats.csv"))
    assert len(rows) == 9 and all("H100" in r["device"] for r in rows)
    by = {}
    for r in rows:
        by.setdefault(r["shape"], []).append(float(r["meas_dram_read_bytes"]))
        assert len({float(x["meas_l2_to_sm_read_bytes"]) for x in rows
                    if x["shape"] == r["shape"]}) == 1
    for shape, v in by.items():
        m = sum(v) / len(v)
        assert max(abs(x / m - 1) for x in v) < 0.02, shape


def test_round4_unseen_shapes_measured_on_the_h100():
    """Round 4 (docs/validation.md): predictions of the two-block pace-noise model registered
    (commit 0017e2a) before the device run; measured on the H100: L2->SM bytes exact on all
    8, DRAM within 15% on 5 of 8. Misses: d=64 non-causal head-major 3x16x4K +24% and
    2x16x6K +16% (the model reads more than the GPU, as at the validated 4x16x4Kx64 +13%),
    and 1x24x12Kx64 causal head-major +18%."""
    _, err = _measured_round("gpu_unseen4.csv")
    assert sum(abs(e) <= 0.15 for e in err.values()) == 5
    assert err["3x16x4096x64"] > 0.2 and 0.15 < err["2x16x6144x64"] < 0.2
    assert 0.15 < err["1x24x12288x64-causal"] < 0.2


def test_round5_unseen_shapes_measured_on_the_h100():
    """Round 5 (docs/validation.md): the round-4 model, unchanged, registered again (commit
    e704655) for 8 more launches before the device run; measured on the H100: L2->SM bytes
    exact on all 8, DRAM within 15% on 4 of 8. Misses: causal head-major at the cliff reads
    less than predicted (1x16x20Kx128 +32%, 1x6x48Kx128 +31%, 1x12x20Kx64 +24%: the regime of
    the validated 16Kx128 and 64Kx128 causal head-major misses), and 2x16x3Kx64 non-causal
    head-major reads more (-43%: 2.0x Q+K+V where the model keeps K/V, 1.2x)."""
    pre, err = _measured_round("gpu_unseen5.csv")
    assert sum(abs(e) <= 0.15 for e in err.values()) == 4
    for shape in ("1x16x20480x128-causal", "1x6x49152x128-causal", "1x12x20480x64-causal"):
        assert 0.2 < err[shape] < 0.35, shape
    assert err["2x16x3072x64"] < -0.4
    assert {r["model_commit"][:7] for r in pre} == {"e704655"}


def test_round6_two_models_registered_and_measured():
    """Round 6 (docs/validation.md): the default model and the model with the two L2 partitions
    (GpuL2(kv_weight="partitions")), both registered (commit 1823a64) before the device run, on
    launches where they differ most; measured on an H100 (another machine than the latency
    map's): L2->SM bytes exact on all 8; DRAM within 15% on 2 of 8 (default) and 3 of 8
    (partitions). They miss 1x16x10Kx64 causal head-major in opposite directions (+33% / -57%),
    and both controls alike: 1x20x12Kx128 causal head-major +22% / +23% (the schedule, as at the
    validated 16Kx128) and 1x4x64Kx128 causal query-major -29% / -30% (the query-major cliff
    of the validated 1x8x64Kx128, with 4 heads instead of 8)."""
    pre, err = _measured_round("gpu_unseen6.csv")
    part = _dram_errors(pre, "pred_dram_read_bytes_partitions")
    assert {r["model_commit"][:7] for r in pre} == {"1823a64"}
    assert sum(abs(e) <= 0.15 for e in err.values()) == 2
    assert sum(abs(e) <= 0.15 for e in part.values()) == 3
    assert err["1x16x10240x64-causal"] > 0.3 and part["1x16x10240x64-causal"] < -0.5
    for e in (err, part):
        assert 0.2 < e["1x20x12288x128-causal"] < 0.25
        assert -0.32 < e["1x4x65536x128-causal"] < -0.27
    assert sum(abs(e) for e in part.values()) < sum(abs(e) for e in err.values())


def test_round7_partitions_model_ahead():
    """Round 7 (docs/validation.md): both models registered again (commit b9437f3, unchanged
    since round 6) before the device run, on launches across the regimes earlier rounds
    missed: L2->SM bytes exact on all 8; DRAM within 15% on 4 of 8 with the default (readers
    rule) and 7 of 8 with the partitions model. Both miss 2x20x8Kx128 head-major by -19% (as
    round 1's 2x32x8Kx128, -28%); the default also misses three d=64 head-major launches that
    the partitions model has within 6% (3x16x3Kx64 -23%, 1x40x4Kx64 -18%, 1x24x10Kx64 causal
    +18%)."""
    pre, err = _measured_round("gpu_unseen7.csv")
    part = _dram_errors(pre, "pred_dram_read_bytes_partitions")
    assert {r["model_commit"][:7] for r in pre} == {"b9437f3"}
    assert sum(abs(e) <= 0.15 for e in err.values()) == 4
    assert sum(abs(e) <= 0.15 for e in part.values()) == 7
    for e in (err, part):
        assert -0.2 < e["2x20x8192x128"] < -0.18
    for s in ("3x16x3072x64", "1x40x4096x64", "1x24x10240x64-causal"):
        assert abs(err[s]) > 0.15 and abs(part[s]) < 0.06, s


def test_round16_default_registered_and_measured():
    """Round 16 (docs/validation.md): the default since round 15 (the fastest of three
    pace-noise draws) registered next to seed 0 alone (the default of rounds 13-15; model commit
    34fc34a) on launches chosen before either ran on them, across the regimes, measured twice
    on one H100: L2->SM bytes exact on all 8; DRAM within 15% on 6 of 8 with either. Both miss
    the two d=64 causal head-major thrash launches (1x6x56Kx64 +32% and +37%, 1x10x32Kx64 +20%)
    with makespans within 2.5% of the kernel's time; the traced schedules replayed by CLOCK
    are within 3.3% there (test_partitions): the model's schedule, not its cache, over-counts.
    The two runs agree within 5%."""
    pre, err = _measured_round("gpu_unseen16.csv")
    s0 = _dram_errors(pre, "pred_dram_read_bytes_seed0")
    assert {r["model_commit"][:7] for r in pre} == {"34fc34a"}
    assert [sum(abs(e) <= 0.15 for e in x.values()) for x in (err, s0)] == [6, 6]
    thrash = ("1x6x57344x64-causal", "1x10x32768x64-causal")
    assert {s for s, e in err.items() if abs(e) > 0.15} == set(thrash)
    assert err[thrash[0]] > 0.3 and s0[thrash[0]] > err[thrash[0]] and 0.15 < err[thrash[1]] < 0.25
    by = {r["shape"]: r for r in pre}
    for s in thrash:
        assert abs(float(by[s]["model_makespan_us"]) * 1e3 / float(by[s]["meas_time_ns"]) - 1) < 0.025
    for r in pre:
        runs = [float(r[c]) for c in ("meas_dram_read_bytes", "meas_dram_read_bytes_repeat1")]
        assert max(runs) / min(runs) < 1.05, r["shape"]


def test_round15_draws_registered_and_measured():
    """Round 15 (docs/validation.md): the default registered next to the fastest of three
    pace-noise draws (GpuL2(pace_draws=3); model commit 4ad738d) on launches chosen before
    either ran on them, mostly in the bistable causal head-major regime, measured twice on one
    H100: L2->SM bytes exact on all 8; DRAM within 15% on 6 of 8 with the default, 7 with the
    draws. The default over-counts both d=64 thrash launches (1x8x56Kx64 +29%, 1x7x64Kx64 +26%)
    with makespans 7-8% over the kernel's time (spread-state draws); the draws bring the first
    to +14% with a makespan within 1% of the kernel's, the second stays (+24%: all three draws
    spread). The two runs agree within 5%."""
    pre, err = _measured_round("gpu_unseen15.csv")
    d3 = _dram_errors(pre, "pred_dram_read_bytes_draws3")
    assert {r["model_commit"][:7] for r in pre} == {"4ad738d"}
    assert [sum(abs(e) <= 0.15 for e in x.values()) for x in (err, d3)] == [6, 7]
    assert err["1x8x57344x64-causal"] > 0.25 and 0.1 < d3["1x8x57344x64-causal"] < 0.15
    assert err["1x7x65536x64-causal"] > 0.25 and d3["1x7x65536x64-causal"] > 0.2
    by = {r["shape"]: r for r in pre}
    t = {s: float(by[s]["meas_time_ns"]) / 1e3 for s in by}
    for s in ("1x8x57344x64-causal", "1x7x65536x64-causal"):
        assert float(by[s]["model_makespan_us"]) > 1.07 * t[s]
    assert abs(float(by["1x8x57344x64-causal"]["model_makespan_us_draws3"]) /
               t["1x8x57344x64-causal"] - 1) < 0.01
    for r in pre:
        runs = [float(r[c]) for c in ("meas_dram_read_bytes", "meas_dram_read_bytes_repeat1")]
        assert max(runs) / min(runs) < 1.05, r["shape"]


def test_round14_default_registered_and_measured():
    """Round 14 (docs/validation.md): the default since round 13 (CLOCK with each block's
    startup) registered next to the default of rounds 11-13 and the work-conserving SM option
    (model commit 5d81b76) on launches chosen before any of the three ran on them, measured
    twice on one H100: L2->SM bytes exact on all 8; DRAM within 15% on 7 of 8 with the default
    (mean |error| 13.2%), 6 with the default of rounds 11-13 (9.8%) and 6 with the option. All three
    over-count 3x8x6Kx64 causal head-major (+64%, +26%, +64%; its traced schedule replayed gives
    +53%: the cache at the capacity edge, not the schedule); the option also the 40K d=64
    causal head-major thrash (+17%; the default +5%). Its query-major launch reading K/V once
    is within 0.1% for all. The two runs agree within 5%."""
    pre, err = _measured_round("gpu_unseen14.csv")
    old, cons = (_dram_errors(pre, f"pred_dram_read_bytes_{c}")
                 for c in ("rounds_11_13", "conserving"))
    assert {r["model_commit"][:7] for r in pre} == {"5d81b76"}
    assert [sum(abs(e) <= 0.15 for e in x.values()) for x in (err, old, cons)] == [7, 6, 6]
    assert np.mean([abs(e) for e in err.values()]) == pytest.approx(0.132, abs=0.001)
    assert err["3x8x6144x64-causal"] > 0.6 and cons["3x8x6144x64-causal"] > 0.6
    assert 0.2 < old["3x8x6144x64-causal"] < 0.3
    assert abs(err["1x10x40960x64-causal"]) < 0.06 and cons["1x10x40960x64-causal"] > 0.15
    for e in (err, old, cons):
        assert abs(e["3x16x4096x64"]) < 0.001
    for r in pre:
        runs = [float(r[c]) for c in ("meas_dram_read_bytes", "meas_dram_read_bytes_repeat1")]
        assert max(runs) / min(runs) < 1.055, r["shape"]


def test_round13_options_registered_and_measured():
    """Round 13 (docs/validation.md): the default (unchanged since round 12) registered next to
    CLOCK's victim rule, each block's measured startup and both (model commit 3014a12) on
    launches chosen before any of the four ran on them, measured twice on one H100: L2->SM bytes
    exact on all 8; DRAM within 15% on 5 of 8 with the default (mean |error| 13.9%), 4 with
    CLOCK, 5 with the startup, 6 with both (11.6%). CLOCK with or without the startup gets the
    1K d=64 head-major launch within 6% (the default and the startup alone -10%); all four
    over-count the 48K causal d=64 head-major thrash (+24% to +34%) and under-count the
    causal query-major launch past the cliff (-30% to -38%). The two runs agree within 4%."""
    pre, err = _measured_round("gpu_unseen13.csv")
    clock, startup, both = (_dram_errors(pre, f"pred_dram_read_bytes_{c}")
                            for c in ("clock", "startup", "clock_startup"))
    assert {r["model_commit"][:7] for r in pre} == {"3014a12"}
    assert [sum(abs(e) <= 0.15 for e in x.values()) for x in (err, clock, startup, both)] == \
        [5, 4, 5, 6]
    assert sum(map(abs, both.values())) < sum(map(abs, err.values()))
    assert abs(clock["9x16x1024x64"]) < 0.06 and abs(both["9x16x1024x64"]) < 0.06
    assert err["9x16x1024x64"] < -0.09 and startup["9x16x1024x64"] < -0.09
    for e in (err, clock, startup, both):
        assert 0.2 < e["1x6x49152x64-causal"] < 0.35
        assert -0.4 < e["1x2x73728x128-causal"] < -0.25
    for r in pre:
        runs = [float(r[c]) for c in ("meas_dram_read_bytes", "meas_dram_read_bytes_repeat1")]
        assert max(runs) / min(runs) < 1.04, r["shape"]


def test_round12_new_default_registered_and_measured():
    """Round 12 (docs/validation.md): the default since round 11 (NRU state, fetches across
    chunk ends) registered next to the model of rounds 7-10 (model commit 5dfd246) on launches
    chosen across the regimes before either model ran on them, measured twice on one H100:
    L2->SM bytes exact on all 8; DRAM within 15% on 7 of 8 with either (mean |error| 6.9%
    both). The default misses 1x12x24Kx64 causal head-major (+20%; the earlier model +12%),
    the earlier model 1x10x40Kx128 causal head-major (+27%; the default +12%). The two runs
    agree within 4%."""
    pre, err = _measured_round("gpu_unseen12.csv")
    before = _dram_errors(pre, "pred_dram_read_bytes_response")
    assert {r["model_commit"][:7] for r in pre} == {"5dfd246"}
    assert [sum(abs(e) <= 0.15 for e in x.values()) for x in (err, before)] == [7, 7]
    assert 0.15 < err["1x12x24576x64-causal"] < 0.25 and abs(before["1x12x24576x64-causal"]) < 0.15
    assert abs(err["1x10x40960x128-causal"]) < 0.15 and before["1x10x40960x128-causal"] > 0.25
    for r in pre:
        runs = [float(r[c]) for c in ("meas_dram_read_bytes", "meas_dram_read_bytes_repeat1")]
        assert max(runs) / min(runs) < 1.04, r["shape"]


def test_round11_nru_prefetch_registered_and_measured():
    """Round 11 (docs/validation.md): the NRU state with fetches running on across the model's
    chunk ends registered next to the default, the readers rule and the NRU state (model commit
    1f9ed49) before the device run, measured twice on one H100: L2->SM bytes exact on all 8;
    DRAM within 15% on 5 of 8 with it (mean |error| 15%), 3 with the default (22%), 4 with the
    readers rule, 5 with the NRU state. It gets the 16K and 32K causal d=128 head-major launches
    that the default over-counts by 19% and 30%, and the 4K causal d=64 head-major one the
    default under-counts by 22%; it, the default and the readers rule over-count the 64K causal
    d=128 head-major thrash by 25-28% (the NRU state without the prefetch: +12%), and all but
    the readers rule under-count the launch past the query-major cliff. The two runs agree
    within 10% (9% on that launch, the rest within 6%)."""
    pre, err = _measured_round("gpu_unseen11.csv")
    cols = ("pred_dram_read_bytes_readers", "pred_dram_read_bytes_nru",
            "pred_dram_read_bytes_nru_prefetch")
    readers, nru, pf = (_dram_errors(pre, c) for c in cols)
    assert {r["model_commit"][:7] for r in pre} == {"1f9ed49"}
    assert [sum(abs(e) <= 0.15 for e in x.values()) for x in (err, readers, nru, pf)] == \
        [3, 4, 5, 5]
    assert sum(map(abs, pf.values())) < sum(map(abs, err.values()))
    for shape in ("1x20x16384x128-causal", "1x12x32768x128-causal", "2x16x4096x64-causal"):
        assert abs(pf[shape]) < 0.07 and abs(err[shape]) > 0.15, shape
    for e in (err, readers, pf):
        assert e["1x6x65536x128-causal"] > 0.15
    assert 0.1 < nru["1x6x65536x128-causal"] < 0.15
    assert abs(readers["1x4x73728x128-causal"]) < 0.05
    assert max(err["1x4x73728x128-causal"], pf["1x4x73728x128-causal"]) < -0.4
    for r in pre:
        runs = [float(r[c]) for c in ("meas_dram_read_bytes", "meas_dram_read_bytes_repeat1")]
        assert max(runs) / min(runs) < 1.1, r["shape"]


def test_round10_hashed_nru_registered_and_measured():
    """Round 10 (docs/validation.md): the NRU cache state with hashed sets registered next to
    the default and the readers rule (model commit 8cb8305, recorded as 1fc6379, which only adds
    the round's shapes) before the device run, measured twice on one H100: L2->SM bytes exact on
    all 8; DRAM within 15% on 6 of 8 with NRU, 4 with the default, 2 with the readers rule. NRU
    gets the causal query-major launch at the cliff and the small-N causal d=64 head-major one
    that the default misses by 18% and 33%; both miss the launch beyond the cliff (68K, 2.2x
    Q+K+V measured) and the d=128 causal head-major thrash (+20%, +24%). The two runs agree
    within 3%."""
    pre, err = _measured_round("gpu_unseen10.csv")
    nru = _dram_errors(pre, "pred_dram_read_bytes_nru")
    readers = _dram_errors(pre, "pred_dram_read_bytes_readers")
    assert {r["model_commit"][:7] for r in pre} == {"1fc6379"}
    assert [sum(abs(e) <= 0.15 for e in x.values()) for x in (err, nru, readers)] == [4, 6, 2]
    assert sum(map(abs, nru.values())) < sum(map(abs, err.values()))
    for shape in ("1x7x61440x128-causal", "5x16x2048x64-causal"):
        assert abs(nru[shape]) < 0.05 and abs(err[shape]) > 0.15, shape
    assert nru["1x3x69632x128-causal"] < -0.3 and err["1x3x69632x128-causal"] < -0.3
    assert err["1x10x24576x128-causal"] > 0.15 and nru["1x10x24576x128-causal"] > 0.15
    for r in pre:
        runs = [float(r[c]) for c in ("meas_dram_read_bytes", "meas_dram_read_bytes_repeat1")]
        assert max(runs) / min(runs) < 1.03, r["shape"]


def test_round9_nru_registered_and_measured():
    """Round 9 (docs/validation.md): the default (reuse-distance response) and the NRU cache
    state (GpuL2(l2_policy="nru")) registered side by side (commit 57efadf) before the device
    run, measured three times on one H100: L2->SM bytes exact on all 8; DRAM within 15% on 5 of
    8 with either (readers rule 4). NRU moves each d=128 causal launch towards the counters and
    misses the small-N d=64 head-major launch the response gets; the three runs agree within
    7%, so the misses are not run-to-run noise."""
    pre, err = _measured_round("gpu_unseen9.csv")
    nru = _dram_errors(pre, "pred_dram_read_bytes_nru")
    readers = _dram_errors(pre, "pred_dram_read_bytes_readers")
    assert {r["model_commit"][:7] for r in pre} == {"57efadf"}
    assert sum(abs(e) <= 0.15 for e in err.values()) == 5
    assert sum(abs(e) <= 0.15 for e in nru.values()) == 5
    assert sum(abs(e) <= 0.15 for e in readers.values()) == 4
    for shape in ("1x6x65536x128-causal", "1x10x32768x128-causal", "1x14x20480x128-causal"):
        assert abs(nru[shape]) < abs(err[shape]) - 0.05 and abs(err[shape]) > 0.2, shape
    assert abs(err["6x16x2048x64"]) < 0.02 and nru["6x16x2048x64"] < -0.15
    for r in pre:
        runs = [float(r[c]) for c in ("meas_dram_read_bytes", "meas_dram_read_bytes_repeat1",
                                      "meas_dram_read_bytes_repeat2")]
        assert max(runs) / min(runs) < 1.07, r["shape"]
        # the registered default's misses hold against every run
        if abs(err[r["shape"]]) > 0.2:
            assert all(abs(float(r["pred_dram_read_bytes"]) / m - 1) > 0.15 for m in runs)


def test_round8_partitions_default_registered_and_measured():
    """Round 8 (docs/validation.md): the partitions model as the default and the readers rule
    next to it, registered (commit 6026e9d) before the device run: L2->SM bytes exact on all 8;
    DRAM within 15% on 6 of 8 with the default, 5 of 8 with the readers rule. Both miss the two
    regimes every model variant misses: many heads at d=128 non-causal head-major
    (2x24x8Kx128 -35%) and d=128 causal head-major (1x12x24Kx128 +23%)."""
    pre, err = _measured_round("gpu_unseen8.csv")
    readers = _dram_errors(pre, "pred_dram_read_bytes_readers")
    assert {r["model_commit"][:7] for r in pre} == {"6026e9d"}
    assert sum(abs(e) <= 0.15 for e in err.values()) == 6
    assert sum(abs(e) <= 0.15 for e in readers.values()) == 5
    for e in (err, readers):
        assert e["2x24x8192x128"] < -0.3 and 0.2 < e["1x12x24576x128-causal"] < 0.25
    assert sum(abs(e) for e in err.values()) < sum(abs(e) for e in readers.values())
    # traced again in a later session (gpu_traced_rounds78.*): on its own measured schedule the
    # partitions response is within 5% of that run's counters for both misses, while the
    # registered prediction misses that run by over 25%: the model's schedule
    rep = {r["launch"]: r for r in read_csv(os.path.join(DATA, "gpu_partition_replay.csv"))
           if r["traced"] == "gpu_traced_rounds78"}
    pred = {r["shape"]: float(r["pred_dram_read_bytes"]) for r in pre}
    for shape, key in (("2x24x8192x128", "2x24x8192x128_head-major"),
                       ("1x12x24576x128-causal", "1x12x24576x128-causal_head-major")):
        assert abs(float(rep[key]["err_partitions_map1"])) < 0.05
        assert abs(pred[shape] / float(rep[key]["meas_dram_read_bytes"]) - 1) > 0.25


def test_partial_tiles_measured_l2_exact():
    """`iosim validate --gpu` on shapes whose N is not a multiple of the tiles (1x16x6000x128
    both masks, 2x8x1000x64, 2x12x10000x128 causal; both grid orders; gpu_ncu_partial.csv,
    measured after the unmasked query load): the SMEM-level model's L2->SM bytes, recomputed
    here, equal the counters within 0.01% on all 8 -- rows past the last query row are read
    again but add no L2 traffic. DRAM with the default analytical L2 model: within 15% on 7
    of 8 (1x16x6000x128 causal head-major +89%: a causal head-major launch below the thrash)."""
    from iosim.gpu.compare import analytic_row
    measured = read_csv(os.path.join(DATA, "gpu_ncu_partial.csv"))
    rows = [analytic_row(r) for r in measured if r["impl"] == "generated"]
    assert len(rows) == 8 and all("H100" in r["device"] for r in rows)
    assert any(int(r["seq"]) % 128 for r in rows)
    assert all(abs(r["err_l2_read"]) < 1e-4 for r in rows)
    assert sum(abs(r["err_dram_read"]) <= 0.15 for r in rows) == 7


@pytest.mark.slow
def test_partial_tiles_dynamic_simulation():
    """The same 8 launches with the dynamic simulation: DRAM within 15% on 8 of 8 (its
    earlier form with the measured response and fetches stopping at chunk ends: 6 of 8,
    1x16x6000x128 causal head-major -27%, 2x12x10000x128 causal head-major +16%)."""
    from iosim.l2.simulate import GpuL2
    measured = read_csv(os.path.join(DATA, "gpu_ncu_partial.csv"))
    rows = [r for r in compare(measured, workers=2) if r["impl"] == "generated"]
    assert all(abs(r["err_l2_read"]) < 1e-4 for r in rows)
    assert sum(abs(r["err_dram_read"]) <= 0.15 for r in rows) == 8
    before = GpuL2(l2_policy="response", prefetch_across_chunks=False, pace_draws=1)
    rows = [r for r in compare(measured, before, workers=2) if r["impl"] == "generated"]
    assert sum(abs(r["err_dram_read"]) <= 0.15 for r in rows) == 6


def test_validated_launches_measured_five_times_in_one_session():
    """The 34 validated launches, five interleaved ncu rounds in a later session
    (experiments/data/gpu_ncu_rounds.csv): L2->SM bytes identical in every round; DRAM bytes
    repeat within 1% for launches whose K/V stay in L2 (DRAM < 1.1x Q+K+V) but not at the
    cliff: 1x8x64Kx128 head-major reads 8.7-10.0 G in four rounds and 26.6 G in the fifth,
    and the recorded run-1 counter of 1x8x64Kx64 head-major (4.34 G) lies 17% below the
    lowest of this session's five. Against this session's medians the model (the default
    since round 15, the fastest of three draws) is within 15% on 31 of 34 (34 against the
    recorded counters; the default of rounds 11-13 30 and 32, the model of rounds 7-10 30 and
    30, the readers rule 29 and 30)."""
    rounds = read_csv(os.path.join(DATA, "gpu_ncu_rounds.csv"))
    assert len(rounds) == 170 and all("H100" in r["device"] for r in rounds)
    by = {}
    for r in rounds:
        by.setdefault((r["shape"], r["grid_order"]), []).append(r)
    assert len(by) == 34 and all(len(v) == 5 for v in by.values())
    rec = {}
    for r in read_csv(os.path.join(DATA, "gpu_validation.csv")):
        if r["impl"] == "generated" and r["cascade"] == "attention-1pass":
            lab = f"{r['batch']}x{r['heads']}x{r['seq']}x{r['head_dim']}" + (
                "-causal" if r["causal"] == "True" else "")
            rec[(lab, r["grid_order"])] = r
    within = 0
    for key, v in by.items():
        assert len({x["l2_to_sm_read_bytes"] for x in v}) == 1, key
        dram = sorted(float(x["dram_read_bytes"]) for x in v)
        qkv = float(rec[key]["qkv_bytes"])
        if dram[-1] < 1.1 * qkv:
            assert dram[-1] / dram[0] - 1 < 0.01, key
        med = dram[2]
        within += abs(float(rec[key]["pred_dram_read_bytes"]) / med - 1) <= 0.15
    assert within == 31
    big = sorted(float(x["dram_read_bytes"]) for x in by[("1x8x65536x128", "head-major")])
    assert big[3] < 10.1e9 and big[4] > 2.5 * big[3]
    low = min(float(x["dram_read_bytes"]) for x in by[("1x8x65536x64", "head-major")])
    assert float(rec[("1x8x65536x64", "head-major")]["dram_read_bytes"]) < 0.85 * low
