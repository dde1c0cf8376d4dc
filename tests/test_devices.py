"""The multi-device cascade executor (cascades.devices): ring, striped, ulysses, usp and kv-shard
on 1-16 simulated devices equal single-device attention, causal or not, for any N and P."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import cascades
from cascades.devices import (DeviceError, execute_devices, lse_combine, partial_attention,
                              partition, ring_steps, scheme)
from cascades.reference import allowed, softmax_attention


def _ref(q, k, v, causal, align="start"):
    keep = allowed(q.shape[-2], k.shape[-2], causal, align)
    return np.stack([softmax_attention(q[h], k[h], v[h], 1 / np.sqrt(q.shape[-1]), keep)
                     for h in range(q.shape[0])])


C1 = cascades.load("attention-1pass")


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(["ring", "striped", "ulysses", "usp", "kv-shard"]),
       devices=st.integers(1, 16), n=st.integers(1, 37), heads=st.integers(1, 4),
       causal=st.booleans(), seed=st.integers(0, 2**16))
def test_schemes_equal_attention(name, devices, n, heads, causal, seed):
    if name == "ulysses":
        heads = max(heads, devices)
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((heads, n, 8)) * 2 for _ in range(3))
    out = execute_devices(C1, {"Q": q, "K": k, "V": v}, name, devices, causal=causal)["O"]
    assert np.abs(out - _ref(q, k, v, causal)).max() < 1e-10


@settings(max_examples=25, deadline=None)
@given(devices=st.integers(1, 16), n_k=st.integers(1, 60), n_q=st.integers(1, 4),
       causal=st.booleans(), seed=st.integers(0, 2**16))
def test_kv_shard_decode_with_an_end_aligned_mask(devices, n_k, n_q, causal, seed):
    """decode-splitk's mask is aligned to the end of the keys (query p sees m <= p + M - P):
    the executor reads the alignment from the cascade."""
    n_q = min(n_q, n_k)
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((2, n_q, 8))
    k, v = rng.standard_normal((2, n_k, 8)), rng.standard_normal((2, n_k, 8))
    c = cascades.load("decode-splitk")
    out = execute_devices(c, {"Q": q, "K": k, "V": v}, "kv-shard", devices, causal=causal)["O"]
    assert np.abs(out - _ref(q, k, v, causal, "end")).max() < 1e-10


def test_grouped_query_heads_share_kv_heads():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((8, 20, 4))
    k, v = rng.standard_normal((2, 20, 4)), rng.standard_normal((2, 20, 4))
    out = execute_devices(C1, {"Q": q, "K": k, "V": v}, "striped", 3, causal=True)["O"]
    kk, vv = np.repeat(k, 4, 0), np.repeat(v, 4, 0)
    assert np.abs(out - _ref(q, kk, vv, True)).max() < 1e-10


def test_lse_of_the_combine_is_the_log_sum_exp_of_all_scores():
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((1, 9, 4)) for _ in range(3))
    res = execute_devices(C1, {"Q": q, "K": k, "V": v}, "ring", 4)
    s = q[0] @ k[0].T / 2.0
    assert np.allclose(res["LSE"][0], np.log(np.exp(s).sum(axis=1)), atol=1e-12)


def test_partitions_by_hand():
    assert [list(p) for p in partition(7, 3)] == [[0, 1, 2], [3, 4], [5, 6]]
    assert [list(p) for p in partition(7, 3, "striped")] == [[0, 3, 6], [1, 4], [2, 5]]
    assert [len(p) for p in partition(2, 4)] == [1, 1, 0, 0]


def test_ring_step_order_and_causal_balance():
    """Step s: device i holds key block (i - s) mod P. Causal, contiguous: block j > i is
    skipped, j == i is the masked diagonal; striped: every block is partial (masked) work."""
    steps = ring_steps(16, 16, 4, causal=True)
    assert [st.key_block for st in steps[1]] == [3, 0, 1, 2]
    kinds = [[st.kind for st in row] for row in steps]
    assert kinds[0] == ["partial"] * 4
    assert kinds[1] == ["skip", "full", "full", "full"]
    assert sum(k == "skip" for row in kinds for k in row) == 6         # P(P-1)/2
    striped = ring_steps(16, 16, 4, "striped", causal=True)
    assert all(st.kind == "partial" for row in striped for st in row)


def test_lse_combine_is_associative_and_handles_empty_rows():
    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal((5, 4)) for _ in range(3))
    parts = [partial_attention(q, k[i:i + 1], v[i:i + 1], 0.5) for i in range(5)]
    empty = partial_attention(q, k[:0], v[:0], 0.5)
    a = lse_combine([lse_combine(parts[:2]), lse_combine(parts[2:] + [empty])])
    b = lse_combine(parts)
    assert np.allclose(a[0], b[0], atol=1e-13) and np.allclose(a[1], b[1], atol=1e-13)
    assert np.allclose(b[0], softmax_attention(q, k, v, 0.5), atol=1e-12)


def test_a_device_block_computed_by_the_cascade_equals_the_kernel():
    """The per-device kernel computes what the cascade computes on the device's block."""
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((12, 8)) for _ in range(3))
    o, _ = partial_attention(q[4:8], k[8:12], v[8:12], 1 / np.sqrt(8))
    ref = cascades.execute(C1, {"Q": q[4:8], "K": k[8:12], "V": v[8:12]}, block_kv=2)["O"]
    assert np.abs(o - ref).max() < 1e-12


def test_errors_are_one_line():
    with pytest.raises(DeviceError, match="4 heads < 8 devices"):
        scheme("ulysses", 8, heads=4)
    with pytest.raises(DeviceError, match="did you mean 'ring'"):
        scheme("rign", 2)
    with pytest.raises(DeviceError, match="not reduced by a max"):
        scheme("ring", 2, cascade=cascades.load("linear"))
    s = scheme("usp", 8, heads=4)
    assert (s.ulysses, s.ring) == (4, 2)
