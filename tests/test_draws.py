"""The fastest of several pace-noise draws (GpuL2(pace_draws=n), experiments/l2_research/draws.py,
`iosim validate --draws`)."""
import csv
import json
import os

import pytest

from iosim.l2.simulate import GpuL2, Workload, _predict_dynamic

DATA = os.path.join(os.path.dirname(__file__), "..", "experiments", "data")


def _rows():
    return list(csv.DictReader(open(os.path.join(DATA, "gpu_draws.csv"))))


def _fastest(r):
    return min((0, 1, 2), key=lambda k: (float(r[f"makespan_us_seed{k}"]), k))


def test_recorded_draws_on_the_validated_launches():
    """experiments/l2_research/draws.py's table (gpu_draws.csv): seeds 0-2 of the model on the 34
    validated launches. The draw with the shortest makespan is the default's recorded
    prediction since round 15 (gpu_validation.csv), within 15% on all 34 (mean |error| 3.0%);
    seed 0 alone (the default of rounds 13-15) on 33 (1x8x64Kx64 causal head-major +27%). Where the draws split (the two 64K causal
    head-major thrash launches), the fastest draw's makespan is within 4% of the kernel's
    measured time and the slowest 7-11% over it: the GPU runs in the fast (convoy) state."""
    rows = _rows()
    assert len(rows) == 34 and all(r["set"] == "validated" for r in rows)
    rec = {(f"{r['batch']}x{r['heads']}x{r['seq']}x{r['head_dim']}"
            + ("-causal" if r["causal"] == "True" else ""), r["grid_order"]): r
           for r in csv.DictReader(open(os.path.join(DATA, "gpu_validation.csv")))
           if r["impl"] == "generated" and r["cascade"] == "attention-1pass"}
    for r in rows:
        assert float(r[f"dram_seed{_fastest(r)}"]) == pytest.approx(
            float(rec[r["shape"], r["grid_order"]]["pred_dram_read_bytes"]), abs=1)

    def err(r, k):
        return float(r[f"dram_seed{k}"]) / float(r["measured"]) - 1
    assert sum(abs(err(r, 0)) <= 0.15 for r in rows) == 33
    assert sum(abs(err(r, _fastest(r))) <= 0.15 for r in rows) == 34
    assert sum(abs(err(r, _fastest(r))) for r in rows) / 34 == pytest.approx(0.030, abs=0.001)
    split = [r for r in rows if max(err(r, k) for k in range(3)) -
             min(err(r, k) for k in range(3)) > 0.1]
    assert {(r["shape"], r["grid_order"]) for r in split} == {
        ("1x8x65536x64-causal", "head-major"), ("1x8x65536x128-causal", "head-major")}
    for r in split:
        spans = [float(r[f"makespan_us_seed{k}"]) for k in range(3)]
        t = float(r["meas_time_us"])
        assert abs(min(spans) / t - 1) < 0.04 and 1.07 < max(spans) / t < 1.11


def test_draws_table_row_recomputed():
    """One row of the table (a launch whose three draws differ) from the model."""
    r = next(x for x in _rows() if x["shape"] == "1x16x16384x64-causal"
             and x["grid_order"] == "head-major")
    w = Workload(1, 16, 16384, 16384, 64, causal=True, grid_order="head-major")
    for k in range(3):
        p = _predict_dynamic(w, GpuL2(), seed=k)
        assert p["dram_read_bytes"] == pytest.approx(float(r[f"dram_seed{k}"]), abs=1)
        assert p["makespan_us"] == pytest.approx(float(r[f"makespan_us_seed{k}"]), abs=0.06)


def test_validate_cli_draws(tmp_path):
    """`iosim validate --draws 3` predicts each launch by its fastest draw (as
    GpuL2(pace_draws=3)), and so does `iosim validate` (the default since round 15);
    `--draws 1` by seed 0 alone; --draws 0 or --draws with the lock-step model is a one-line
    error."""
    from click.testing import CliRunner

    from iosim.cli import main
    from iosim.l2.simulate import predict_dram
    rows = list(csv.DictReader(open(os.path.join(DATA, "gpu_ncu.csv"))))
    sel = [r for r in rows if r["impl"] == "generated" and r["cascade"] == "attention-1pass"
           and (r["batch"], r["seq"], r["head_dim"], r["causal"], r["grid_order"]) ==
           ("8", "1024", "64", "True", "head-major")]
    assert len(sel) == 1
    path = tmp_path / "one.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(sel)
    res = CliRunner().invoke(main, ["validate", "--l2", "simulate",
                                        "--csv", str(path), "--draws", "3", "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)["rows"][0]["pred_dram_read_bytes"]
    wl = Workload(8, 16, 1024, 1024, 64, causal=True, grid_order="head-major")
    assert got == pytest.approx(predict_dram(wl, GpuL2(pace_draws=3))["dram_read_bytes"],
                                rel=1e-12)
    res = CliRunner().invoke(main, ["validate", "--l2", "simulate",
                                        "--csv", str(path), "--json"])
    assert json.loads(res.output)["rows"][0]["pred_dram_read_bytes"] == got
    res = CliRunner().invoke(main, ["validate", "--l2", "simulate",
                                        "--csv", str(path), "--draws", "1", "--json"])
    assert json.loads(res.output)["rows"][0]["pred_dram_read_bytes"] == pytest.approx(
        _predict_dynamic(wl, GpuL2(), seed=0)["dram_read_bytes"], rel=1e-12)
    for bad in (["--draws", "0"], ["--draws", "2", "--model", "lockstep"]):
        res = CliRunner().invoke(main, ["validate", "--l2", "simulate",
                                        "--csv", str(path), *bad])
        assert res.exit_code == 2 and "Traceback" not in res.output, bad


def test_recorded_draws_on_the_rounds_thrash_launches():
    """`draws.py --thrash` (gpu_draws_thrash.csv): the 49 pre-registered launches (batches
    1-16, post hoc) whose measured DRAM reads are at least 10x Q+K+V. Seed 0 is the
    seed-0 default's prediction (as gpu_nru_model.csv's clock_startup for batches 1-14, the
    registered one for batch 15, the registered seed-0 one for batch 16); within 15% on 35,
    the fastest of three draws on 38 (mean |error| 9.8% -> 8.8%): it gains 1x24x12Kx64 and
    1x8x56Kx64 causal head-major and 1x6x48Kx128 causal head-major, and loses none."""
    rows = list(csv.DictReader(open(os.path.join(DATA, "gpu_draws_thrash.csv"))))
    assert len(rows) == 49 and "validated" not in {r["set"] for r in rows}
    nru = {(r["set"], r["shape"], r["grid_order"]): r for r in
           csv.DictReader(open(os.path.join(DATA, "gpu_nru_model.csv")))}
    reg = {n: {r["shape"]: r for r in csv.DictReader(open(os.path.join(DATA,
                                                                        f"gpu_unseen{n}.csv")))}
           for n in (15, 16)}
    col = {15: "pred_dram_read_bytes", 16: "pred_dram_read_bytes_seed0"}
    for r in rows:
        n = int(r["set"].split()[-1])
        src = reg[n][r["shape"]] if n in reg else nru[r["set"], r["shape"], r["grid_order"]]
        assert float(r["measured"]) >= 10 * float(src["qkv_bytes"])
        want = src[col[n]] if n in reg else src["clock_startup"]
        assert float(r["dram_seed0"]) == pytest.approx(float(want), abs=1)

    def err(r, k):
        return float(r[f"dram_seed{k}"]) / float(r["measured"]) - 1
    ok0 = {r["shape"] for r in rows if abs(err(r, 0)) <= 0.15}
    okf = {r["shape"] for r in rows if abs(err(r, _fastest(r))) <= 0.15}
    assert len(ok0) == 35 and len(okf) == 38 and ok0 < okf
    assert okf - ok0 == {"1x24x12288x64-causal", "1x8x57344x64-causal", "1x6x49152x128-causal"}
