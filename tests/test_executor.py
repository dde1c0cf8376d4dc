"""Every library cascade, executed in float64, equals an independent plain-NumPy reference
(tests/reference.py) to relative error < 1e-10: large logits, causal masks, partial last
blocks, cross-attention (N != M) and E != F included; shapes and blocks drawn by hypothesis."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cascades
from cascades.errors import ExecutionError
from reference import (causal_mask, decayed_causal_linear, linear_attention, rel_err,
                       sigmoid_attention, softmax_attention)

TOL = 1e-10
SOFTMAX_1PASS_FAMILY = ["attention-1pass", "attention-2pass", "flash1"]
shapes = st.tuples(st.integers(1, 70), st.integers(1, 70), st.integers(1, 9), st.integers(1, 9))


def _qkv(rng, n, m, e, f, logit=1.0):
    return (rng.standard_normal((n, e)) * logit, rng.standard_normal((m, e)),
            rng.standard_normal((m, f)))


@pytest.mark.parametrize("name", SOFTMAX_1PASS_FAMILY)
@settings(max_examples=25, deadline=None)
@given(shape=shapes, block=st.integers(1, 40), causal=st.booleans(),
       logit=st.sampled_from([1.0, 30.0, 1e3]), seed=st.integers(0, 2**16))
def test_blocked_softmax_cascades_match_reference(name, shape, block, causal, logit, seed):
    n, m, e, f = shape
    Q, K, V = _qkv(np.random.default_rng(seed), n, m, e, f, logit)
    out = cascades.execute(cascades.load(name), dict(Q=Q, K=K, V=V), block_kv=block,
                           causal=causal)["O"]
    ref = softmax_attention(Q, K, V, mask=causal_mask(n, m) if causal else None)
    assert out.shape == (n, f)
    assert rel_err(out, ref) < TOL


@settings(max_examples=25, deadline=None)
@given(shape=shapes, causal=st.booleans(), logit=st.sampled_from([1.0, 1e3]),
       seed=st.integers(0, 2**16))
def test_3pass_matches_reference(shape, causal, logit, seed):
    n, m, e, f = shape
    Q, K, V = _qkv(np.random.default_rng(seed), n, m, e, f, logit)
    out = cascades.execute(cascades.load("attention-3pass"), dict(Q=Q, K=K, V=V),
                           causal=causal)["O"]
    assert rel_err(out, softmax_attention(Q, K, V, mask=causal_mask(n, m) if causal else None)) < TOL


@settings(max_examples=25, deadline=None)
@given(shape=shapes, chunk=st.integers(1, 40), causal=st.booleans(),
       logit=st.sampled_from([1.0, 1e3]), seed=st.integers(0, 2**16))
def test_decode_splitk_matches_reference(shape, chunk, causal, logit, seed):
    n, m, e, f = shape
    Q, K, V = _qkv(np.random.default_rng(seed), n, m, e, f, logit)
    out = cascades.execute(cascades.load("decode-splitk"), dict(Q=Q, K=K, V=V),
                           chunk_size=chunk, causal=causal)["O"]
    # decode: the P queries are the last P positions, so query i sees keys <= i + M - P
    mask = causal_mask(n, m, offset=m - n) if causal else None
    if mask is not None and not mask.any(axis=1).all():
        return  # a query with no visible key has no defined output
    assert rel_err(out, softmax_attention(Q, K, V, mask=mask)) < TOL


@settings(max_examples=20, deadline=None)
@given(shape=shapes, groups=st.integers(1, 4), block=st.integers(1, 33), causal=st.booleans(),
       seed=st.integers(0, 2**16))
def test_grouped_query_attention_matches_reference_per_head(shape, groups, block, causal, seed):
    n, m, e, f = shape
    rng = np.random.default_rng(seed)
    Q = rng.standard_normal((groups, n, e)) * 10
    K, V = rng.standard_normal((m, e)), rng.standard_normal((m, f))
    out = cascades.execute(cascades.load("attention-gqa"), dict(Q=Q, K=K, V=V), block_kv=block,
                           causal=causal)["O"]
    for g in range(groups):
        ref = softmax_attention(Q[g], K, V, mask=causal_mask(n, m) if causal else None)
        assert rel_err(out[g], ref) < TOL


@settings(max_examples=20, deadline=None)
@given(shape=shapes, block=st.integers(1, 33), density=st.floats(0.05, 1.0),
       seed=st.integers(0, 2**16))
def test_general_boolean_mask_matches_reference(shape, block, density, seed):
    n, m, e, f = shape
    rng = np.random.default_rng(seed)
    Q, K, V = _qkv(rng, n, m, e, f, 5.0)
    mask = rng.random((n, m)) < density
    mask[np.arange(n), rng.integers(0, m, n)] = True  # every query sees some key
    out = cascades.execute(cascades.load("attention-masked"), dict(Q=Q, K=K, V=V, Mask=mask),
                           block_kv=block)["O"]
    assert rel_err(out, softmax_attention(Q, K, V, mask=mask)) < TOL


@settings(max_examples=20, deadline=None)
@given(shape=shapes, causal=st.booleans(), seed=st.integers(0, 2**16))
def test_sigmoid_matches_reference(shape, causal, seed):
    n, m, e, f = shape
    Q, K, V = _qkv(np.random.default_rng(seed), n, m, e, f, 3.0)
    out = cascades.execute(cascades.load("sigmoid"), dict(Q=Q, K=K, V=V), causal=causal)["O"]
    ref = sigmoid_attention(Q, K, V, mask=causal_mask(n, m) if causal else None)
    assert rel_err(out, ref) < TOL


@pytest.mark.parametrize("phi", ["elu1", "relu", "exp"])
@settings(max_examples=10, deadline=None)
@given(shape=shapes, normalize=st.booleans(), seed=st.integers(0, 2**16))
def test_linear_attention_matches_reference(phi, shape, normalize, seed):
    n, m, e, f = shape
    Q, K, V = _qkv(np.random.default_rng(seed), n, m, e, f)
    if phi == "relu":
        Q, K = np.abs(Q) + 0.1, np.abs(K) + 0.1  # keep the denominator away from zero
    out = cascades.execute(cascades.load("linear"), dict(Q=Q, K=K, V=V), phi=phi,
                           normalize=normalize)["O"]
    assert rel_err(out, linear_attention(Q, K, V, phi, normalize)) < TOL


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 70), e=st.integers(1, 8), f=st.integers(1, 8), block=st.integers(1, 30),
       decay=st.floats(0.5, 1.0), seed=st.integers(0, 2**16))
def test_lightning2_matches_causal_decayed_linear_attention(n, e, f, block, decay, seed):
    Q, K, V = _qkv(np.random.default_rng(seed), n, n, e, f)
    out = cascades.execute(cascades.load("lightning2"), dict(Q=Q, K=K, V=V), block=block,
                           decay=decay)["O"]
    assert rel_err(out, decayed_causal_linear(Q, K, V, decay)) < TOL


def test_float32_execution_stays_float32_and_is_accurate():
    Q, K, V = _qkv(np.random.default_rng(3), 300, 257, 32, 16, 4.0)
    out = cascades.execute(cascades.load("attention-1pass"), dict(Q=Q, K=K, V=V),
                           dtype="float32", block_kv=64)["O"]
    assert out.dtype == np.float32
    assert rel_err(out, softmax_attention(Q, K, V)) < 1e-5


def test_scale_parameter_overrides_default():
    Q, K, V = _qkv(np.random.default_rng(4), 20, 30, 8, 8)
    out = cascades.execute(cascades.load("attention-1pass"), dict(Q=Q, K=K, V=V), scale=0.7)["O"]
    assert rel_err(out, softmax_attention(Q, K, V, scale=0.7)) < TOL


def test_all_outputs_and_intermediates_are_returned_on_request():
    Q, K, V = _qkv(np.random.default_rng(5), 10, 21, 4, 4)
    res = cascades.execute(cascades.load("attention-1pass"), dict(Q=Q, K=K, V=V), block_kv=8,
                           keep_intermediates=True)
    # running max after the last block equals the global row max of the scaled scores
    S = Q @ K.T / 2.0
    assert np.allclose(res["RM"][-1], S.max(axis=1), rtol=0, atol=1e-12)
    assert res["RM"].shape == (4, 10)  # 3 blocks -> 4 iterates (initial + 3)


@pytest.mark.parametrize("inputs,params,fragment", [
    ({"Q": np.zeros((4, 3)), "K": np.zeros((5, 3))}, {}, "missing input 'V[M, F]'"),
    ({"Q": np.zeros((4, 3)), "K": np.zeros((5, 2)), "V": np.zeros((5, 3))}, {},
     "rank E has extent 3 in input 'Q' but 2 in input 'K'"),
    ({"Q": np.zeros((4, 3, 1)), "K": np.zeros((5, 3)), "V": np.zeros((5, 3))}, {},
     "input 'Q' has 3 dimensions"),
    ({"Q": np.zeros((4, 3)), "K": np.zeros((5, 3)), "V": np.zeros((5, 3))}, {"blok_kv": 4},
     "did you mean 'block_kv'"),
    ({"Q": np.zeros((4, 3)), "K": np.zeros((5, 3)), "V": np.zeros((5, 3))}, {"block_kv": 0},
     "must be a positive integer"),
    ({"Q": np.zeros((4, 3)), "K": np.zeros((5, 3)), "V": np.zeros((5, 3))}, {"causal": 3},
     "is a boolean"),
])
def test_bad_executor_input_is_a_clear_error(inputs, params, fragment):
    with pytest.raises(ExecutionError, match=None) as info:
        cascades.execute(cascades.load("attention-1pass"), inputs, **params)
    assert fragment in str(info.value)


@settings(max_examples=20, deadline=None)
@given(shape=shapes, bq=st.integers(1, 20), bk=st.integers(1, 20), density=st.floats(0, 1),
       seed=st.integers(0, 2**16))
def test_block_sparse_mask_matches_reference(shape, bq, bk, density, seed):
    n, m, e, f = shape
    rng = np.random.default_rng(seed)
    Q, K, V = _qkv(rng, n, m, e, f, 5.0)
    bm = rng.random((-(-n // bq), -(-m // bk))) < density
    bm[np.arange(bm.shape[0]), rng.integers(0, bm.shape[1], bm.shape[0])] = True
    out = cascades.execute(cascades.load("attention-blocksparse"),
                           dict(Q=Q, K=K, V=V, BlockMask=bm), block_q=bq, block_kv=bk)["O"]
    # expand the block mask by hand: element (i, j) is kept iff block (i // bq, j // bk) is
    keep = bm[np.arange(n)[:, None] // bq, np.arange(m)[None, :] // bk]
    assert rel_err(out, softmax_attention(Q, K, V, mask=keep)) < TOL


def test_block_mask_shape_must_agree_with_block_sizes():
    Q, K, V = _qkv(np.random.default_rng(0), 70, 45, 4, 4)
    with pytest.raises(ExecutionError, match="rank P1 has extent 5 in the inputs but partition"):
        cascades.execute(cascades.load("attention-blocksparse"),
                         dict(Q=Q, K=K, V=V, BlockMask=np.ones((5, 6), bool)), block_q=8,
                         block_kv=8)
