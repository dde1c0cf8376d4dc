"""The multi-device model (iosim.parallel) against hand derivations."""
from __future__ import annotations

import pytest

from iosim.errors import IosimError
from iosim.parallel.model import Problem, critical_tokens, evaluate_parallel, ulysses_bytes
from iosim.parallel.offload import offload_bytes_per_token
from iosim.parallel.system import load_system

N, D, H, BF16 = 16384, 128, 8, 2


def _ring(scheme="ring", n=N, devices=8, causal=False, system="dgx-h100", **kw):
    p = Problem(n=n, d=D, heads=H, causal=causal, **kw)
    return evaluate_parallel("attention-1pass", None, system, p, scheme, devices)


def test_ring_kv_bytes_per_device_per_layer():
    """Each device sends its K/V block on to the next device P - 1 times:
    2 (P-1)/P N d H bytes."""
    for p in (2, 4, 8):
        r = _ring(devices=p)
        assert r.comm_bytes_per_device == pytest.approx(2 * (p - 1) / p * N * D * H * BF16)
        assert len(r.steps) == p and r.steps[-1].comm_bytes == 0
    # GQA: K/V heads only
    r = _ring(devices=4, kv_heads=2)
    assert r.comm_bytes_per_device == pytest.approx(2 * 3 / 4 * N * D * 2 * BF16)
    # layers multiply
    assert _ring(devices=4, layers=3).comm_bytes_per_device == pytest.approx(
        3 * 2 * 3 / 4 * N * D * H * BF16)


def test_ring_step_transfer_time_and_memory():
    r = _ring(devices=8)
    c = N // 8
    block = 2 * c * D * H * BF16
    assert r.steps[0].comm_s == pytest.approx(3e-6 + block / 450e9)
    # Ring Attention's 6 b c h: q, o, the K/V block in use and the one arriving
    m = r.memory
    assert m["q"] + m["o"] + m["kv"] + m["kv_recv"] == 6 * c * D * H * BF16
    assert r.memory_bytes_per_device == pytest.approx(6 * c * D * H * BF16 + c * D * H * 4
                                                      + c * H * 4)


def test_overlap_condition_on_nvlink():
    """c >= F / B tokens per device in bf16 (Ring Attention): H100 989 TFLOP/s over 450 GB/s."""
    s = load_system("dgx-h100")
    c_star = critical_tokens(s.device, s.links[0], Problem(n=1, d=D, heads=H))
    assert c_star == pytest.approx(989e12 / 450e9)
    # the model: with enough heads x batch that a step is throughput-bound, communication
    # hides above c* = F_eff / B and not below, F_eff the rate the model sustains on the block
    def ring(c):
        return evaluate_parallel("attention-1pass", None, "dgx-h100",
                                 Problem(n=8 * c, d=D, heads=32, batch=4), "ring", 8)
    cs = list(range(256, 4097, 128))   # whole query tiles (partial tiles cost full ones)
    hidden = [ring(c).overlapped for c in cs]
    first = hidden.index(True)
    assert all(hidden[first:]) and not any(hidden[:first])
    c_model = cs[first]
    step = ring(c_model).steps[0]
    f_eff = 4 * D * c_model ** 2 * 32 * 4 / step.compute_s
    assert c_model == pytest.approx(f_eff / 450e9, rel=0.2)
    assert c_model < c_star                       # the model sustains less than the peak F
    # over InfiniBand (50 GB/s) a block that hid on NVLink is exposed
    assert ring(2048).overlapped
    assert not evaluate_parallel("attention-1pass", None, "dgx-h100-2node",
                                 Problem(n=16 * 2048, d=D, heads=32, batch=4), "ring",
                                 16).overlapped


def test_causal_balance_striped_over_ring():
    """Contiguous causal ring: step 0 computes diagonals, step s leaves s devices idle; striped
    gives every device a triangle at every step, so it is about twice as fast at large P."""
    big = dict(n=8 * 8192, heads=32)
    ring = evaluate_parallel("attention-1pass", None, "dgx-h100", Problem(d=D, causal=True, **big),
                             "ring", 8)
    striped = evaluate_parallel("attention-1pass", None, "dgx-h100",
                                Problem(d=D, causal=True, **big), "striped", 8)
    assert [s.busy_devices for s in ring.steps] == [8, 7, 6, 5, 4, 3, 2, 1]
    assert all(s.busy_devices == 8 for s in striped.steps)
    speedup = ring.time_s / striped.time_s
    assert 1.4 < speedup < 2.0
    # non-causal: the two are the same computation
    assert _ring(causal=False).time_s == pytest.approx(_ring("striped").time_s, rel=1e-9)


def test_ulysses_all_to_all_bytes():
    """Each device keeps 1/P of its N/P tokens of every head: sent (N/P) d bytes (Hq + 2 Hkv)
    (P-1)/P for q, k, v and (N/P) d bytes Hq (P-1)/P for o: 4 N d H bytes (P-1)/P^2."""
    for p in (2, 4, 8):
        b = ulysses_bytes(Problem(n=N, d=D, heads=H), p)
        assert b["qkv"] + b["o"] == pytest.approx(4 * N * D * H * BF16 * (p - 1) / p ** 2)
    r = evaluate_parallel("attention-1pass", None, "dgx-h100", Problem(n=N, d=D, heads=H),
                          "ulysses", 8)
    assert r.comm_bytes_per_device == pytest.approx(4 * N * D * H * BF16 * 7 / 64)
    # constant per device when N and P grow together
    per = [ulysses_bytes(Problem(n=2048 * p, d=D, heads=64), p) for p in (8, 16, 32)]
    tot = [b["qkv"] + b["o"] for b in per]
    assert tot[0] * 16 / 14 == pytest.approx(tot[1] * 16 / 15)   # only (P-1)/P moves


def test_ulysses_needs_heads_at_least_devices():
    with pytest.raises(IosimError, match="ulysses splits heads over devices: 4 heads < 8 devices"):
        evaluate_parallel("attention-1pass", None, "dgx-h100", Problem(n=N, d=D, heads=4),
                          "ulysses", 8)
    r = evaluate_parallel("attention-1pass", None, "dgx-h100", Problem(n=N, d=D, heads=4),
                          "usp", 8)
    assert (r.extra["ulysses_devices"], r.extra["ring_devices"]) == (4, 2)


def test_kv_shard_decode_exchange():
    """DistAttention: the query goes to P - 1 shards, fp32 partials (d + 1 per head) come back."""
    p = Problem(n=1, kv_len=65536, d=D, heads=32, kv_heads=8, batch=4)
    r = evaluate_parallel("decode-splitk", None, "dgx-h100", p, "kv-shard", 4)
    q = 4 * 32 * D * BF16
    part = 4 * 32 * (D + 1) * 4
    assert r.comm_bytes_per_device == pytest.approx(3 * (q + part))
    assert r.steps[0].comm_bytes == 3 * q and r.steps[2].comm_bytes == 3 * part


def test_offload_bytes_per_token_and_link_need():
    assert offload_bytes_per_token(64, 8, 128, 2) == (2 * 64 + 2 * 8) * 128 * 2
    p = Problem(n=1, kv_len=32768, d=128, heads=64, kv_heads=8, batch=8, layers=80, params=70e9)
    r = evaluate_parallel("decode-splitk", None, "lamina", p, "offload", 4)
    assert r.extra["bytes_per_token_per_layer"] == 36864
    assert r.extra["link_bandwidth_needed"] == pytest.approx(8 * 80 * 36864 / r.time_s)
    assert r.extra["throughput_per_dollar_ratio"] > 1
    with pytest.raises(IosimError, match="no \\[offload\\] memory devices"):
        evaluate_parallel("decode-splitk", None, "dgx-h100", p, "offload", 4)
    with pytest.raises(IosimError, match="--params"):
        evaluate_parallel("decode-splitk", None, "lamina",
                          Problem(n=1, kv_len=8192, d=128, heads=64, kv_heads=8), "offload", 4)


def test_bad_input():
    with pytest.raises(IosimError, match="exceeds the 8 devices"):
        _ring(devices=9)
    with pytest.raises(IosimError, match="did you mean 'striped'"):
        evaluate_parallel("attention-1pass", None, "dgx-h100", Problem(n=N), "stripped", 2)
    with pytest.raises(IosimError, match="not reduced by a max"):
        evaluate_parallel("linear", None, "dgx-h100", Problem(n=N, d=64), "ring", 2)


def test_committed_paper_checks():
    """figures/multidevice_*.csv (regenerated and compared by test_committed_outputs): the
    trends the papers report."""
    from pathlib import Path

    import pandas as pd
    root = Path(__file__).resolve().parents[1] / "figures"
    ul = pd.read_csv(root / "multidevice_ulysses.csv")
    assert list(ul.ulysses_over_4Nhd_P) == pytest.approx([(p - 1) / p for p in ul.devices])
    assert ul.ring_bytes_per_device.is_monotonic_increasing
    st = pd.read_csv(root / "multidevice_striped.csv")
    a100 = st[(st.system == "dgx-a100") & (st.n == 262144)].sort_values("devices")
    assert a100.speedup.is_monotonic_increasing and (a100.speedup > 1.3).all()
    assert (st.speedup <= st.ideal + 1e-9).all()
    la = pd.read_csv(root / "multidevice_lamina.csv")
    assert (la.throughput_per_dollar_ratio > 1.48).all()


def test_cli_json_parallel_object():
    import json

    from click.testing import CliRunner

    from iosim.cli import main
    r = CliRunner().invoke(main, ["evaluate", "--system", "dgx-h100", "--parallel", "ring",
                                  "--devices", "4", "--seq-len", "16K", "--heads", "8", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    p = d["parallel"]
    # the single-device report of the whole problem on the system's device comes with it
    one = CliRunner().invoke(main, ["evaluate", "--hw", "h100", "--seq-len", "16K", "--heads",
                                    "8", "--json"])
    one = json.loads(one.output)
    assert d["time_s"] == one["time_s"] and d["levels"] == one["levels"]
    assert d["time_s"] > p["time_s"]              # four devices beat one
    for k in ("devices", "comm_bytes_per_device", "comm_time_s", "compute_time_s", "overlapped",
              "memory_bytes_per_device", "time_s"):
        assert k in p
    assert p["comm_bytes_per_device"] == 2 * 3 / 4 * N * D * H * BF16
    r = CliRunner().invoke(main, ["evaluate", "--system", "dgx-h100", "--parallel", "ulysses",
                                  "--devices", "8", "--heads", "4"])
    assert r.exit_code == 2 and "4 heads < 8 devices" in r.output
    r = CliRunner().invoke(main, ["evaluate", "--system", "nowhere.toml", "--parallel", "ring"])
    assert r.exit_code == 2 and "system file not found" in r.output
