"""The multi-device sweep (iosim sweep --system --parallel --devices): per-point numbers against
hand derivations, the ring's overlap crossover on 8 H100s over NVLink against Ring Attention's
threshold c = F / B, the longest context that fits, the CLI's files and one-line errors."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from click.testing import CliRunner

from iosim.cli import main as cli
from iosim.errors import IosimError
from iosim.parallel.model import Problem
from iosim.parallel.sweep import (ParallelSweepSpec, crossovers, max_context,
                                  parallel_sweep_figures, ring_bytes_per_token,
                                  run_parallel_sweep)

F_H100 = 989e12           # bf16 dense matrix rate of the h100 preset (datasheet)
NVLINK = 450e9            # per direction per GPU
HBM = 80e9


@pytest.fixture(scope="module")
def nvlink_sweep():
    spec = ParallelSweepSpec("attention-1pass", "dgx-h100", ("ring", "striped"), (2, 8),
                             tuple(2 ** k for k in range(11, 18)), heads=32, batch=4)
    return run_parallel_sweep(spec)


def test_points_against_hand_derivations(nvlink_sweep):
    df = nvlink_sweep
    r = df[(df.scheme == "ring") & (df.devices == 8) & (df.n == 65536)].iloc[0]
    c = 65536 // 8
    block = 2 * c * 128 * 32 * 2 * 4                  # K and V, bf16, 32 heads x batch 4
    assert r.tokens_per_device == c
    assert r.step_comm_s == pytest.approx(3e-6 + block / NVLINK, rel=1e-12)
    assert r.comm_bytes_per_device == pytest.approx(7 * block)   # 2 (P-1)/P N d H bytes
    assert r.critical_tokens_peak == pytest.approx(F_H100 / NVLINK)   # F / B in bf16
    # memory: Q, O, K/V and the arriving K/V (bf16), fp32 accumulator and LSE
    per_row = 4 * 32 * (128 * 2 + 128 * 2 + 2 * 128 * 2 * 2 + 128 * 4 + 4)
    assert r.memory_bytes_per_device == pytest.approx(c * per_row)
    assert r.time_s >= r.compute_time_s > 0 and r.hbm_bytes == HBM


def test_crossover_sits_at_the_ring_threshold_on_nvlink(nvlink_sweep):
    cx = crossovers(nvlink_sweep)
    row = cx[(cx.scheme == "ring") & (cx.devices == 8)].iloc[0]
    fb = F_H100 / NVLINK                                       # 2198 tokens
    # the model sustains ~40% of peak on these blocks: the crossover sits at F_eff / B,
    # below F / B at peak and within a factor of three of it
    assert fb / 3 < row.crossover_tokens < fb
    assert row.crossover_tokens == pytest.approx(row.critical_tokens_model, rel=0.25)
    assert row.below_tokens < row.crossover_tokens < row.above_tokens
    s = nvlink_sweep[(nvlink_sweep.scheme == "ring") & (nvlink_sweep.devices == 8)]
    assert not s[s.tokens_per_device < row.crossover_tokens].overlapped.any()
    assert s[s.tokens_per_device > row.crossover_tokens].overlapped.all()


def test_crossover_interpolates_on_a_log_scale():
    # compute / transfer = c / 1000: equal at c = 1000 exactly, between the points 512 and 2048
    cs = [128, 512, 2048, 8192]
    df = pd.DataFrame(dict(scheme="ring", devices=4, d=128, tokens_per_device=cs,
                           step_ratio=[c / 1000 for c in cs], critical_tokens_peak=2198.0,
                           critical_tokens_model=float("nan")))
    row = crossovers(df).iloc[0]
    assert row.crossover_tokens == pytest.approx(1000.0)
    assert (row.below_tokens, row.above_tokens) == (512, 2048)
    hidden = crossovers(df.assign(step_ratio=2.0)).iloc[0]
    assert math.isnan(hidden.crossover_tokens) and hidden.hidden_at_smallest


def test_max_context_per_device_count():
    prob = Problem(n=1, d=128, heads=32)
    # bytes per token: q, o 8 KiB each, K/V 16 KiB, arriving K/V 16 KiB, fp32 acc 16 KiB, LSE
    assert ring_bytes_per_token(prob, 8) == 8192 * 2 + 16384 * 3 + 128
    assert ring_bytes_per_token(prob, 1) == 8192 * 2 + 16384 * 2 + 128   # nothing arrives
    for p in (2, 4, 8):
        assert max_context("dgx-h100", prob, p) == p * (80_000_000_000 // 65664)
    # up to device-count times longer than one device (the arriving block costs a quarter)
    ratio = max_context("dgx-h100", prob, 8) / max_context("dgx-h100", prob, 1)
    assert ratio == pytest.approx(8 * 49280 / 65664, rel=1e-5)
    assert max_context("dgx-h100", prob, 8, reserved_bytes=40e9) == 8 * (40_000_000_000 // 65664)
    with pytest.raises(IosimError, match="leave nothing"):
        max_context("dgx-h100", prob, 8, reserved_bytes=90e9)


def test_causal_striped_beats_ring_and_the_figure(nvlink_sweep, tmp_path):
    spec = ParallelSweepSpec("attention-1pass", "dgx-h100", ("ring", "striped"), (8,),
                             (65536, 262144), heads=32, causal=True)
    df = run_parallel_sweep(spec)
    t = df.set_index(["scheme", "n"]).time_s
    assert t["striped", 262144] < t["ring", 262144]
    paths = parallel_sweep_figures(nvlink_sweep, tmp_path)
    assert [p.name for p in paths] == ["parallel_sweep.png"] and paths[0].stat().st_size > 10000


def test_cli_writes_the_csv_and_figure(tmp_path):
    r = CliRunner().invoke(cli, ["sweep", "attention-1pass", "--system", "dgx-h100",
                                 "--parallel", "ring,ulysses", "--devices", "2,4",
                                 "--seq-len", "4K:16K:x2", "--heads", "8", "--out",
                                 str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["rows"] == 12 and d["figures"] == [str(tmp_path / "parallel_sweep.png")]
    df = pd.read_csv(tmp_path / "parallel_sweep.csv")
    assert set(df.scheme) == {"ring", "ulysses"} and set(df.devices) == {2, 4}
    u = df[(df.scheme == "ulysses") & (df.devices == 4) & (df.n == 16384)].iloc[0]
    # Ulysses' two all-to-alls: 4 N d H bytes (P-1) / P^2
    assert u.comm_bytes_per_device == pytest.approx(4 * 16384 * 128 * 8 * 2 * 3 / 16)
    assert (tmp_path / "parallel_sweep_crossover.csv").exists()


@pytest.mark.parametrize("args, msg", [
    (["--parallel", "kv-shard"], "kv-shard and offload are decode"),
    (["--parallel", "ring", "--hw", "h100"], "does not go with --hw"),
    (["--parallel", "ring", "--sram", "64KiB"], "does not go with --sram"),
    (["--parallel", "ring", "--devices", "16"], "exceeds the 8 devices"),
    (["--parallel", "ulysses", "--heads", "4"], "4 heads < 8 devices"),
    (["--devices", "4"], "--system and --parallel go together"),
    (["--parallel", "ring", "--devices", "0"], "--devices"),
])
def test_bad_input_is_one_line(tmp_path, args, msg):
    base = ["sweep", "attention-1pass", "--out", str(tmp_path)]
    if "--devices" not in args or "--parallel" in args:
        base += ["--system", "dgx-h100"]
    r = CliRunner().invoke(cli, base + args)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and msg in lines[0], r.output
