"""Decode cascades in the executor against a plain per-request NumPy softmax: the grouped
decode cascade (MHA, GQA, MQA as one cascade with the group a shape), FlashDecoding's split
with grouped heads, and LeanAttention's stream-K over the keys of all (request, K/V head)
pairs laid end to end -- ragged lengths, a few query tokens per request with the causal mask
aligned to the end of each request's keys, shares crossing pair boundaries."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cascades

TOL = 1e-10


def _attend(q, k, v, causal):
    """softmax(q kᵀ / sqrt(d)) v for one (request, query head): q [P, E], k [M, E]; with a
    causal mask the P queries are the newest positions, query p sees keys m <= p + M - P."""
    p, m = q.shape[0], k.shape[0]
    s = q @ k.T / np.sqrt(q.shape[1])
    if causal:
        s = np.where(np.arange(m)[None, :] <= np.arange(p)[:, None] + m - p, s, -np.inf)
    w = np.exp(s - s.max(axis=1, keepdims=True))
    return (w / w.sum(axis=1, keepdims=True)) @ v


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


@settings(max_examples=20, deadline=None)
@given(lens=st.lists(st.integers(1, 60), min_size=1, max_size=3), group=st.integers(1, 4),
       p=st.integers(1, 4), block=st.integers(1, 33), causal=st.booleans(),
       e=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_grouped_decode_ragged_requests(lens, group, p, block, causal, e, seed):
    """One cascade for MHA (G = 1), GQA and MQA; each request with its own cache length."""
    rng = np.random.default_rng(seed)
    c = cascades.load("decode")
    for m in lens:
        if causal and m < p:
            m = p
        q = rng.standard_normal((group, p, e)) * 8
        k, v = rng.standard_normal((m, e)), rng.standard_normal((m, e + 1))
        out = cascades.execute(c, dict(Q=q, K=k, V=v), block_kv=block, causal=causal)["O"]
        for g in range(group):
            assert _rel(out[g], _attend(q[g], k, v, causal)) < TOL


@settings(max_examples=15, deadline=None)
@given(m=st.integers(1, 70), group=st.integers(1, 4), p=st.integers(1, 3),
       chunk=st.integers(1, 40), causal=st.booleans(), seed=st.integers(0, 2**16))
def test_splitk_decode_with_grouped_heads(m, group, p, chunk, causal, seed):
    """FlashDecoding's split: each query head of a group through the split cascade equals
    the grouped decode cascade's head (the same K/V)."""
    m = max(m, p)
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((group, p, 5)) * 8
    k, v = rng.standard_normal((m, 5)), rng.standard_normal((m, 3))
    grouped = cascades.execute(cascades.load("decode"), dict(Q=q, K=k, V=v), causal=causal)["O"]
    for g in range(group):
        split = cascades.execute(cascades.load("decode-splitk"), dict(Q=q[g], K=k, V=v),
                                 chunk_size=chunk, causal=causal)["O"]
        assert _rel(split, _attend(q[g], k, v, causal)) < TOL
        assert _rel(grouped[g], split) < TOL


def _streamk_inputs(rng, lens, kv_heads, group, p, e, f, logit=8.0):
    """Pairs (request b, K/V head j) in order h = b * kv_heads + j; their keys back to back."""
    pairs = [(b, j) for b in range(len(lens)) for j in range(kv_heads)]
    plen = np.array([lens[b] for b, _ in pairs])
    end = np.cumsum(plen)
    start = end - plen
    q = rng.standard_normal((len(pairs), group, p, e)) * logit
    k = rng.standard_normal((int(end[-1]), e))
    v = rng.standard_normal((int(end[-1]), f))
    return dict(Q=q, K=k, V=v, Start=start.astype(float), End=end.astype(float))


@settings(max_examples=25, deadline=None)
@given(lens=st.lists(st.integers(1, 40), min_size=1, max_size=3), kv_heads=st.integers(1, 3),
       group=st.integers(1, 3), p=st.integers(1, 3), share=st.integers(1, 50),
       causal=st.booleans(), logit=st.sampled_from([1.0, 1e3]), seed=st.integers(0, 2**16))
def test_streamk_equals_per_pair_attention(lens, kv_heads, group, p, share, causal, logit,
                                           seed):
    if causal:
        lens = [max(n, p) for n in lens]
    rng = np.random.default_rng(seed)
    x = _streamk_inputs(rng, lens, kv_heads, group, p, 4, 3, logit)
    out = cascades.execute(cascades.load("decode-streamk"), x, share_size=share,
                           causal=causal)["O"]
    assert out.shape == (len(lens) * kv_heads, group, p, 3)
    for h in range(out.shape[0]):
        a, b = int(x["Start"][h]), int(x["End"][h])
        for g in range(group):
            ref = _attend(x["Q"][h, g], x["K"][a:b], x["V"][a:b], causal)
            assert _rel(out[h, g], ref) < TOL


def test_streamk_shares_cross_pair_boundaries():
    """Equal shares of 7 keys over pairs of 5, 12 and 3 keys: most shares hold the end of one
    pair and the start of the next, and every pair's partials combine to its attention."""
    rng = np.random.default_rng(0)
    x = _streamk_inputs(rng, [5, 12, 3], 1, 2, 1, 4, 4)
    run = cascades.execute(cascades.load("decode-streamk"), x, share_size=7,
                           keep_intermediates=True)
    lse = run["LSE"][:, :, 0, 0]           # [share, pair]
    touched = np.isfinite(lse)
    # shares 0-2 over keys 0-6, 7-13, 14-19: pair 0 = 0-4, pair 1 = 5-16, pair 2 = 17-19
    assert touched.tolist() == [[True, True, False], [False, True, False], [False, True, True]]
    for h, (a, b) in enumerate([(0, 5), (5, 17), (17, 20)]):
        for g in range(2):
            ref = _attend(x["Q"][h, g], x["K"][a:b], x["V"][a:b], False)
            assert _rel(run["O"][h, g], ref) < TOL


@pytest.mark.parametrize("name", ["decode", "decode-streamk"])
def test_decode_cascades_print_and_parse_back(name):
    c = cascades.load(name)
    assert cascades.parse(c.to_text()) == c
