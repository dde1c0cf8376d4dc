"""MLA decode (DeepSeek-V2/V3's multi-head latent attention, FlashMLA's computation) in the
executor against MLA computed the non-absorbed way: per head, the keys are the latent cache
up-projected by W_UK with the shared rotary key appended, the values the latent cache
up-projected by W_UV, and plain softmax attention over them. The cascade takes the absorbed
queries (q_nope . W_UKᵀ) and multiplies by W_UV after the attention; the two must agree --
ragged cache lengths, a few new tokens per request with the causal mask aligned to the end of
the cache."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import cascades

TOL = 1e-10


def _mla_reference(q_nope, q_rope, ckv, k_rope, w_uk, w_uv, scale, causal):
    """Non-absorbed MLA for one request: q_nope [H, P, Dh], q_rope [H, P, R], ckv [M, C],
    k_rope [M, R], w_uk [H, C, Dh], w_uv [H, C, Dv] -> [H, P, Dv]."""
    h_n, p, _ = q_nope.shape
    m = ckv.shape[0]
    out = np.empty((h_n, p, w_uv.shape[2]))
    for h in range(h_n):
        k = np.concatenate([ckv @ w_uk[h], k_rope], axis=1)        # [M, Dh + R]
        v = ckv @ w_uv[h]                                          # [M, Dv]
        q = np.concatenate([q_nope[h], q_rope[h]], axis=1)         # [P, Dh + R]
        s = scale * (q @ k.T)
        if causal:   # the P new tokens are the newest: token i sees keys j <= i + M - P
            s = np.where(np.arange(m)[None, :] <= np.arange(p)[:, None] + m - p, s, -np.inf)
        w = np.exp(s - s.max(axis=1, keepdims=True))
        out[h] = (w / w.sum(axis=1, keepdims=True)) @ v
    return out


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def _request(rng, heads, p, m, c, r, dh, dv, logit):
    return dict(q_nope=rng.standard_normal((heads, p, dh)) * logit,
                q_rope=rng.standard_normal((heads, p, r)) * logit,
                ckv=rng.standard_normal((m, c)), k_rope=rng.standard_normal((m, r)),
                w_uk=rng.standard_normal((heads, c, dh)) / np.sqrt(c),
                w_uv=rng.standard_normal((heads, c, dv)))


def _absorbed(x):
    """The cascade's inputs: the no-rope query pre-multiplied by W_UKᵀ per head."""
    ql = np.einsum("hpd,hcd->hpc", x["q_nope"], x["w_uk"])
    return dict(QL=ql, QR=x["q_rope"], CKV=x["ckv"], KR=x["k_rope"], WUV=x["w_uv"])


@settings(max_examples=25, deadline=None)
@given(lens=st.lists(st.integers(1, 70), min_size=1, max_size=3), heads=st.integers(1, 4),
       p=st.integers(1, 4), block=st.integers(1, 33), causal=st.booleans(),
       logit=st.sampled_from([1.0, 30.0]), seed=st.integers(0, 2**16))
def test_absorbed_cascade_equals_non_absorbed_mla(lens, heads, p, block, causal, logit, seed):
    """Each request of a ragged batch: the cascade (default scale 1 / sqrt(Dv + R), which is
    DeepSeek's 1 / sqrt(Dh + R) when the no-rope query/key and value head dims are equal)."""
    rng = np.random.default_rng(seed)
    c = cascades.load("decode-mla")
    dims = dict(c=12, r=4, dh=6, dv=6)
    for m in lens:
        m = max(m, p) if causal else m
        x = _request(rng, heads, p, m, logit=logit, **dims)
        out = cascades.execute(c, _absorbed(x), block_kv=block, causal=causal)["O"]
        ref = _mla_reference(**x, scale=1 / np.sqrt(dims["dh"] + dims["r"]), causal=causal)
        assert out.shape == (heads, p, dims["dv"])
        assert _rel(out, ref) < TOL


def test_unequal_head_dims_with_an_explicit_scale_and_the_latent_output():
    """No-rope and value head dims that differ (the scale passed, as FlashMLA takes it), and
    the output in latent space (OL, what FlashMLA's kernel writes): OL · W_UV per head is O,
    and OL is the softmax-weighted sum of the latent rows themselves."""
    rng = np.random.default_rng(7)
    x = _request(rng, heads=3, p=2, m=45, c=16, r=4, dh=5, dv=7, logit=4.0)
    scale = 1 / np.sqrt(5 + 4)
    run = cascades.execute(cascades.load("decode-mla"), _absorbed(x), scale=scale, causal=True,
                           block_kv=8, keep_intermediates=True)
    ref = _mla_reference(**x, scale=scale, causal=True)
    assert _rel(run["O"], ref) < TOL
    assert _rel(np.einsum("hpc,hcf->hpf", run["OL"], x["w_uv"]), ref) < TOL
    # the latent output is a convex combination of cache rows: with W_UV = identity it is O
    eye = dict(_absorbed(x), WUV=np.broadcast_to(np.eye(16), (3, 16, 16)).copy())
    lat = cascades.execute(cascades.load("decode-mla"), eye, scale=scale, causal=True)["O"]
    assert _rel(lat, run["OL"]) < TOL


def test_one_latent_cache_serves_every_head():
    """The key structural fact: the cache tensors have no head rank (read once for all heads),
    and the latent cache feeds both the scores and the values."""
    c = cascades.load("decode-mla")
    ranks = {t.name: tuple(t.ranks) for t in c.inputs}
    assert "H" in ranks["QL"] and "H" not in ranks["CKV"] and "H" not in ranks["KR"]
    from cascades.ir import Access, walk

    def readers(t):
        return {e.tensor for e in c.einsums
                if any(isinstance(n, Access) and n.tensor == t for n in walk(e.expr))}
    assert readers("CKV") == {"BC"}
    assert readers("BC") == {"SL", "SLNV"}     # the scores and the values


def test_prints_and_parses_back():
    c = cascades.load("decode-mla")
    assert cascades.parse(c.to_text()) == c
