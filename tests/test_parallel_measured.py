"""The comparison of measured multi-device runs with the model (experiments/multidevice_measured.py):
hand-made measurements with known answers, the committed one-GPU smoke run, and (slow) a gloo
dry run of the device script feeding it."""
from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location(
        "multidevice_measured", ROOT / "experiments" / "multidevice_measured.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write(tmp_path, c_hidden=4096, c_exposed=1024):
    base = dict(device="GPU", nccl="2.x", world=2, heads=8, d=128, dtype="bfloat16",
                kernel="generated triton attention-1pass", scheme="ring", causal=False)
    cfg, steps = [], []
    for c, xfer in ((c_exposed, 3e-3), (c_hidden, 0.5e-3)):
        cfg.append(dict(base, tokens_per_device=c, n=2 * c, time_s=3e-3, max_abs_err=2e-3,
                        tolerance=1e-2, err_ok=True))
        for rank in (0, 1):
            for step in (0, 1):
                steps.append(dict(base, rank=rank, tokens_per_device=c, n=2 * c, step=step,
                                  phase="compute", seconds=1e-3 * (1 + rank)))
            steps.append(dict(base, rank=rank, tokens_per_device=c, n=2 * c, step=0,
                              phase="transfer", seconds=xfer))
    pd.DataFrame(cfg).to_csv(tmp_path / "multidevice.csv", index=False)
    pd.DataFrame(steps).to_csv(tmp_path / "multidevice_steps.csv", index=False)
    pd.DataFrame([dict(base, bytes=2 ** 28, seconds=1.0, gb_per_s=g) for g in (290, 300, 310)]
                 ).to_csv(tmp_path / "multidevice_link.csv", index=False)


def test_hand_made_measurements(tmp_path):
    m = _script()
    _write(tmp_path)
    assert m.main(["--data", str(tmp_path / "multidevice"), "--out", str(tmp_path / "o")]) == 0
    df = pd.read_csv(tmp_path / "o" / "multidevice_measured.csv").set_index("tokens_per_device")
    # the slowest rank per step (rank 1: 2 ms), summed over the two steps
    assert df.loc[1024, "step_compute_s"] == pytest.approx(2e-3)
    assert df.loc[1024, "compute_s"] == pytest.approx(4e-3)
    assert not df.loc[1024, "hidden"] and df.loc[4096, "hidden"]    # 3 ms > 2 ms > 0.5 ms
    # the model with the measured link (median 300 GB/s): latency + K/V block over it
    block = 2 * 4096 * 128 * 8 * 2
    assert df.loc[4096, "model_link_step_transfer_s"] == pytest.approx(3e-6 + block / 300e9)
    assert df.loc[4096, "model_step_transfer_s"] == pytest.approx(3e-6 + block / 450e9)
    from iosim.parallel.model import Problem, evaluate_parallel
    want = evaluate_parallel("attention-1pass", None, "dgx-h100",
                             Problem(n=8192, d=128, heads=8), "ring", 2).time_s
    assert df.loc[4096, "model_time_s"] == pytest.approx(want)
    assert df.loc[4096, "time_over_model"] == pytest.approx(3e-3 / want)
    cx = pd.read_csv(tmp_path / "o" / "multidevice_measured_crossover.csv").iloc[0]
    assert cx.measured_hides_from == 4096
    assert (tmp_path / "o" / "multidevice_measured.png").stat().st_size > 10000


def test_the_committed_one_gpu_smoke_run(tmp_path):
    m = _script()
    data = ROOT / "experiments" / "data" / "gpu_multidevice_smoke"
    assert m.main(["--data", str(data), "--out", str(tmp_path)]) == 0
    df = pd.read_csv(tmp_path / "multidevice_measured_smoke.csv")
    assert len(df) == 12 and (df.world == 1).all()
    checked = df[df.max_abs_err.notna()]
    assert len(checked) == 8 and checked.err_ok.all() and (checked.check_dtype == "float32").all()
    assert df.hidden.isna().all()                 # one GPU: nothing to hide
    assert (df.model_step_transfer_s == 0).all()
    assert not (tmp_path / "multidevice_measured_smoke_crossover.csv").exists()


def test_missing_data_is_one_line(tmp_path, capsys):
    assert _script().main(["--data", str(tmp_path / "nothing"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not found" in err[0]


@pytest.mark.slow
def test_device_script_dry_run_on_gloo_feeds_the_comparison(tmp_path):
    pytest.importorskip("torch")
    env = dict(os.environ, OUT=str(tmp_path))
    r = subprocess.run([sys.executable, "experiments/device/multidevice.py", "--backend", "gloo",
                        "--world", "2", "--per-device", "64,128", "--heads", "2",
                        "--head-dim", "16", "--kernel", "torch", "--repeats", "1",
                        "--warmup", "0", "--link-mib", "1"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    cfg = pd.read_csv(tmp_path / "multidevice.csv")
    assert len(cfg) == 8 and cfg.err_ok.all() and (cfg.nccl_nvls_enable == 0).all()
    steps = pd.read_csv(tmp_path / "multidevice_steps.csv")
    assert set(steps.phase) == {"compute", "wait", "transfer"} and set(steps["rank"]) == {0, 1}
    assert _script().main(["--data", str(tmp_path / "multidevice"), "--out",
                           str(tmp_path / "o")]) == 0
    out = pd.read_csv(tmp_path / "o" / "multidevice_measured.csv")
    assert out.model_time_s.notna().all() and not math.isnan(out.link_bandwidth.iloc[0])


def test_the_committed_one_gpu_run_with_the_generated_kernel(tmp_path):
    """One H100, world 1, the generated kernel: every output within the bf16 tolerance, and
    where the device has work the measured time is within 15 % of the model's (the measured
    file's times are the expectations)."""
    m = _script()
    data = ROOT / "experiments" / "data" / "gpu_multidevice_w1"
    assert m.main(["--data", str(data), "--out", str(tmp_path)]) == 0
    df = pd.read_csv(tmp_path / "multidevice_measured_w1.csv")
    assert len(df) == 64 and (df.world == 1).all() and df.err_ok.all()
    assert df.kernel.str.startswith("generated").all()
    big = df[df.tokens_per_device * df.heads >= 16384 * 32]
    assert len(big) >= 16
    assert ((big.time_over_model > 0.85) & (big.time_over_model < 1.15)).all()
