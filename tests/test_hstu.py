"""HSTU's pointwise attention (library cascade ``hstu``): the executor against a plain-NumPy
reference written from the paper's formula, softplus's values, and the generated kernel (the
family without normalisation, the bias tile read by the score hook) in Triton's interpreter
against the executor."""
from __future__ import annotations

import importlib.util
import math
import zlib

import numpy as np
import pytest

import cascades
from cascades.errors import CascadeError
from cascades.triton import CodegenError, Tiling, analyze, generate

HAVE_TRITON = (importlib.util.find_spec("torch") is not None
               and importlib.util.find_spec("triton") is not None)
needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="torch and triton are not installed")


def hstu_reference(Q, K, V, rab, causal):
    """Zhai et al. 2024, eq. (2): A(X) V(X) = phi2(Q K^T + rab) V / N with phi2 = SiLU, here
    with the scores scaled by 1/sqrt(d) and N the number of keys; masked weights are 0."""
    s = Q @ K.T / math.sqrt(Q.shape[1]) + rab
    w = s / (1.0 + np.exp(-s)) / K.shape[0]
    if causal:
        w = np.where(np.arange(K.shape[0])[None, :] > np.arange(Q.shape[0])[:, None], 0.0, w)
    return w @ V


@pytest.mark.parametrize("n,m,causal", [(9, 9, True), (9, 9, False), (5, 12, False),
                                        (12, 12, True)])
def test_hstu_executor_matches_the_formula(n, m, causal):
    rng = np.random.default_rng(n * 100 + m + causal)
    Q, K, V = rng.standard_normal((n, 8)), rng.standard_normal((m, 8)), rng.standard_normal((m, 6))
    rab = rng.standard_normal((n, m))
    out = cascades.execute(cascades.load("hstu"), {"Q": Q, "K": K, "V": V, "RAB": rab},
                           causal=causal)["O"]
    ref = hstu_reference(Q, K, V, rab, causal)
    assert np.abs(out - ref).max() <= 1e-12 * np.abs(ref).max()


def test_softplus_values():
    text = "cascade f\ninput X[P]\noutput Y[P]\nY[p] = softplus(X[p])\n"
    x = np.array([-40.0, -3.0, -0.5, 0.0, 0.7, 4.0, 40.0])
    y = cascades.execute(cascades.parse(text), {"X": x})["Y"]
    want = [math.log1p(math.exp(v)) if v < 30 else v + math.log1p(math.exp(-v)) for v in x]
    assert np.allclose(y, want, rtol=1e-13, atol=1e-300)


def test_hstu_plan_is_read_from_the_structure():
    plan = analyze(cascades.load("hstu"))
    assert (plan.family, plan.normalisation, plan.nonlinearity) == ("none", "none", "pointwise")
    assert plan.extras == (("RAB", ("q", "k")),)
    assert plan.causal_param == "causal" and plan.mask_fill == 0.0
    # the constant 1 / M leaves the per-score map for the output (one multiplication per row)
    assert "_x_RAB" in plan.score_fn and "M_LEN" not in plan.score_fn
    assert plan.out_factor == "(1.0 / M_LEN)"


# ------------------------------------------------------------------------ interpreter
@pytest.fixture
def interpret(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("IOSIM_TRITON_CACHE", str(tmp_path_factory.getbasetemp() / "triton"))


def run_and_compare(c, q, k, v, extras, params, dtype, tiling=None, bias_per_head=True):
    """Run the generated kernel and the executor per (batch, query head); relative error."""
    t = tiling or Tiling(block_m=16, block_n=16, num_warps=4, num_stages=1, head_dim=q.shape[-1],
                         dtype=dtype)
    gen = generate(c, t)
    out = q.new_full((*q.shape[:3], v.shape[-1]), float("nan"))
    o = gen.load().forward(q, k, v, out=out, **extras, **params)
    B, HQ, P, _ = q.shape
    G = HQ // k.shape[1]
    ref = np.zeros(o.shape)
    for b in range(B):
        for h in range(HQ):
            ins = {"Q": q[b, h].double().numpy(), "K": k[b, h // G].double().numpy(),
                   "V": v[b, h // G].double().numpy()}
            for name, x in extras.items():
                x = x.double()
                while x.dim() < len(c.tensor_ranks(name)) + 2:
                    x = x.unsqueeze(0)
                ins[name] = x.expand(B, HQ, *x.shape[2:])[b, h].numpy()
            ref[b, h] = cascades.execute(c, ins, **params)["O"]
    got = o.double().numpy()
    assert np.isfinite(got).all()
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


@needs_triton
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_hstu_kernel_matches_the_executor(interpret, causal, dtype):
    """Partial query and key tiles (45 = 2 x 16 + 13), a bias tile per (batch, head)."""
    import torch
    tdt = {"fp32": torch.float32, "fp16": torch.float16}[dtype]
    g = torch.Generator().manual_seed(zlib.crc32(f"hstu{causal}{dtype}".encode()))
    q, k, v = (torch.randn(2, 2, 45, 16, generator=g).to(tdt) for _ in range(3))
    rab = torch.randn(2, 2, 45, 45, generator=g).to(tdt)
    err = run_and_compare(cascades.load("hstu"), q, k, v, {"RAB": rab}, {"causal": causal},
                          dtype)
    assert err < (1e-5 if dtype == "fp32" else 1e-2), err


@needs_triton
def test_hstu_grouped_heads_and_a_broadcast_bias(interpret):
    """Four query heads on two K/V heads (packed rows), one [P, M] bias for all, P != M."""
    import torch
    g = torch.Generator().manual_seed(11)
    q = torch.randn(1, 4, 37, 16, generator=g)
    k, v = (torch.randn(1, 2, 50, 16, generator=g) for _ in range(2))
    rab = torch.randn(37, 50, generator=g)
    err = run_and_compare(cascades.load("hstu"), q, k, v, {"RAB": rab}, {"causal": False},
                          "fp32")
    assert err < 1e-5, err


@needs_triton
def test_hstu_bias_shape_is_checked(interpret):
    import torch
    mod = generate("hstu", Tiling(block_m=16, block_n=16, num_warps=4, num_stages=1,
                                  head_dim=16, dtype="fp32")).load()
    q = torch.randn(1, 2, 20, 16)
    with pytest.raises(CodegenError, match="needs its input RAB"):
        mod.forward(q, q, q)
    with pytest.raises(CodegenError, match=r"RAB must be \[batch, heads, 20, 20\]"):
        mod.forward(q, q, q, RAB=torch.randn(20, 21))
    with pytest.raises(CodegenError, match="do not fit"):
        mod.forward(q, q, q, RAB=torch.randn(1, 3, 20, 20))


def test_hstu_cli_codegen():
    from click.testing import CliRunner
    from iosim.cli import main
    r = CliRunner().invoke(main, ["codegen", "hstu", "--head-dim", "64"])
    assert r.exit_code == 0, r.output
    assert "def hstu_fwd" in r.output and "RAB=None" in r.output
