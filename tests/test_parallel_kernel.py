"""The per-device kernel of a key split: the generated single-pass kernel with a log-sum-exp
output (``Tiling(lse=True)``) and a causal offset, in Triton's interpreter (fp32) against a
float64 softmax; rows that see no key get O = 0 and LSE = -inf."""
from __future__ import annotations

import pytest

import cascades
from cascades.triton import CodegenError, Tiling, generate, triton_available

needs_triton = pytest.mark.skipif(not triton_available(), reason="needs torch and triton")


@pytest.fixture
def interpret(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("IOSIM_TRITON_CACHE", str(tmp_path_factory.getbasetemp() / "triton"))


def _softmax_and_lse(q, k, v, keep):
    import torch
    g = q.shape[1] // k.shape[1]
    kk, vv = (t.repeat_interleave(g, 1).double() for t in (k, v))
    s = (q.double() @ kk.transpose(-1, -2)) * q.shape[-1] ** -0.5
    if keep is not None:
        s = s.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(s, -1)
    w = torch.exp(s - torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))[..., None])
    return w @ vv, lse


@needs_triton
@pytest.mark.parametrize("name", ["attention-1pass", "flash1", "attention-gqa"])
def test_lse_and_offset_match_a_float64_softmax(interpret, name):
    import torch
    t = Tiling(block_m=16, block_n=16, num_warps=1, num_stages=1, head_dim=16, dtype="fp32",
               lse=True)
    mod = generate(cascades.load(name), t).load()
    hq = 4 if name == "attention-gqa" else 2
    g = torch.Generator().manual_seed(3)
    P, M = 19, 37                                   # partial tiles of queries and keys
    q = torch.randn(1, hq, P, 16, generator=g)
    k, v = (torch.randn(1, 2, M, 16, generator=g) for _ in range(2))
    for causal, off in ((False, None), (True, 0), (True, 5), (True, -3)):
        lse = torch.full((1, hq, P), float("nan"))
        o = mod.forward(q, k, v, causal=causal, offset=off, lse=lse)
        keep = (torch.arange(M)[None, :] <= torch.arange(P)[:, None] + (off or 0)
                if causal else None)
        ref_o, ref_l = _softmax_and_lse(q, k, v, keep)
        empty = torch.isinf(ref_l)
        assert bool((torch.isinf(lse) == empty).all()), (causal, off)
        assert int(empty.sum()) == (hq * 3 if off == -3 else 0)   # rows 0-2 see no key
        assert (o.double()[empty] == 0).all()
        assert (o.double() - torch.nan_to_num(ref_o)).abs().max() < 1e-5
        assert (torch.where(empty, 0.0, lse.double() - ref_l)).abs().max() < 1e-5
    # without lse= the same kernel writes O only
    o2 = mod.forward(q, k, v, causal=True)
    assert (o2.double() - _softmax_and_lse(q, k, v, torch.arange(M)[None, :]
                                           <= torch.arange(P)[:, None])[0]).abs().max() < 1e-5


def test_lse_output_is_refused_where_there_is_no_softmax():
    with pytest.raises(CodegenError, match="log-sum-exp"):
        generate(cascades.load("sigmoid"), Tiling(lse=True))
    with pytest.raises(CodegenError, match="log-sum-exp"):
        generate(cascades.load("attention-1pass"), Tiling(lse=True, trace=True))


def test_default_source_has_no_lse():
    src = generate(cascades.load("attention-1pass"), Tiling()).source
    assert "LSE" not in src and "offset" not in src
    assert "lse=None, offset=None" in generate(cascades.load("attention-1pass"),
                                               Tiling(lse=True)).source
