"""The score hook read by structure: any pointwise map of the score, the key and query
positions and tiles of extra inputs, in the family with an online softmax or without
normalisation (its weights times V, summed, times constants). Each cascade here is new text
(none is looked up by name); the generated kernel runs in Triton's interpreter against the
executor."""
from __future__ import annotations

import zlib

import pytest

import cascades
from cascades.triton import CodegenError, Tiling, analyze, generate
from test_hstu import interpret, needs_triton, run_and_compare  # noqa: F401 - fixture

_BASE = cascades.library.text("attention-1pass")
_SQK = "SQK[m1, m0, p]  = where(causal and m1*M0 + m0 > p, -inf, scale * BQK[m1, m0, p])"

#: the HSTU cascade written another way: the bias and the SiLU in two Einsums, SiLU spelled
#: out, and the division by the key count in the output's sum
HSTU_SPLIT = """
cascade hstu-split "pointwise SiLU attention with a relative attention bias"
param scale  = 1 / sqrt(E)
param causal = false
input  Q[P, E]
input  K[M, E]
input  V[M, F]
input  RAB[P, M]
output O[P, F]
QK[m, p] = sum[e] Q[p, e] * K[m, e]
SB[m, p] = scale * QK[m, p] + RAB[p, m]
SA[m, p] = where(causal and m > p, 0, SB[m, p] * sigmoid(SB[m, p]))
O[p, f]  = sum[m] SA[m, p] * V[m, f] / M
"""

#: squared-ReLU attention over a sliding window, normalised by the window (no extra input)
RELU2_WINDOW = """
cascade relu2-window "relu(s)^2 / window over the last window keys, no softmax"
param scale  = 1 / sqrt(E)
param causal = false
param window = 20
input  Q[P, E]
input  K[M, E]
input  V[M, F]
output O[P, F]
QK[m, p] = sum[e] Q[p, e] * K[m, e]
SA[m, p] = where(causal and (m > p or p - m >= window), 0, relu(scale * QK[m, p]) * relu(scale * QK[m, p]) / window)
O[p, f]  = sum[m] SA[m, p] * V[m, f]
"""


def _online(name, extra_decl, sqk):
    """attention-1pass with another score map and extra inputs."""
    assert _SQK in _BASE
    text = _BASE.replace("input  V[M, F]", f"input  V[M, F]\n{extra_decl}")
    return cascades.parse(text.replace(_SQK, sqk).replace("cascade attention-1pass",
                                                          f"cascade {name}"))


def softmax_with_bias_tile():
    """A softmax over scores plus a [P, M] bias (a T5-style or FlexAttention score_mod bias)."""
    return _online("softmax-bias", "input  Bias[P, M]",
                   "SQK[m1, m0, p]  = where(causal and m1*M0 + m0 > p, -inf, "
                   "scale * BQK[m1, m0, p] + Bias[p, m1*M0+m0])")


def softmax_with_key_bias():
    """A per-key additive bias (key padding as a large negative bias) and a per-query
    temperature, both vectors."""
    return _online("softmax-keybias", "input  KB[M]\ninput  QT[P]",
                   "SQK[m1, m0, p]  = where(causal and m1*M0 + m0 > p, -inf, "
                   "QT[p] * scale * BQK[m1, m0, p] + KB[m1*M0+m0])")


def test_plans_by_structure():
    plan = analyze(cascades.parse(HSTU_SPLIT))
    assert (plan.family, plan.nonlinearity) == ("none", "pointwise")
    assert plan.out_factor == "(1.0 / M_LEN)" and plan.extras == (("RAB", ("q", "k")),)
    plan = analyze(cascades.parse(RELU2_WINDOW))
    assert (plan.family, plan.extras, plan.out_factor) == ("none", (), "(1.0 / window)")
    assert plan.window_lower is not None
    plan = analyze(softmax_with_key_bias())
    assert (plan.family, plan.normalisation) == ("online", "deferred")
    assert plan.extras == (("KB", ("k",)), ("QT", ("q",)))
    # sigmoid attention keeps its affine path (scale and bias as launcher arguments)
    plan = analyze(cascades.load("sigmoid"))
    assert (plan.nonlinearity, plan.score_fn, plan.extras) == ("sigmoid", None, ())


def test_extra_inputs_outside_the_score_map_are_refused():
    bad = HSTU_SPLIT.replace("O[p, f]  = sum[m] SA[m, p] * V[m, f] / M",
                             "O[p, f]  = sum[m] SA[m, p] * V[m, f] * RAB[p, m]")
    with pytest.raises(CodegenError, match="extra input 'RAB' is read outside the score map"):
        analyze(cascades.parse(bad))
    bad = HSTU_SPLIT.replace("input  RAB[P, M]", "input  RAB[P, F]").replace(
        "RAB[p, m]", "RAB[p, 0]")
    with pytest.raises(CodegenError, match="indexed by the query and/or key") as ei:
        analyze(cascades.parse(bad))
    assert "\n" not in str(ei.value)


def test_score_hook_knobs_refused():
    with pytest.raises(CodegenError, match="turn off tma"):
        generate(cascades.parse(HSTU_SPLIT), Tiling(head_dim=64, tma=True))


@needs_triton
@pytest.mark.parametrize("causal", [False, True])
def test_split_hstu_matches_the_executor(interpret, causal):
    import torch
    g = torch.Generator().manual_seed(zlib.crc32(f"split{causal}".encode()))
    q, k, v = (torch.randn(1, 2, 40, 16, generator=g) for _ in range(3))
    rab = torch.randn(1, 2, 40, 40, generator=g)
    err = run_and_compare(cascades.parse(HSTU_SPLIT), q, k, v, {"RAB": rab},
                          {"causal": causal}, "fp32")
    assert err < 1e-5, err


@needs_triton
@pytest.mark.parametrize("causal", [False, True])
def test_pointwise_window_matches_the_executor(interpret, causal):
    """No extra input; the band's two edges masked, the blocks outside it skipped."""
    import torch
    g = torch.Generator().manual_seed(zlib.crc32(f"relu2{causal}".encode()))
    q, k, v = (torch.randn(1, 2, 70, 16, generator=g) for _ in range(3))
    err = run_and_compare(cascades.parse(RELU2_WINDOW), q, k, v, {}, {"causal": causal}, "fp32")
    assert err < 1e-5, err


@needs_triton
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_softmax_with_a_bias_tile_matches_the_executor(interpret, dtype):
    import torch
    tdt = {"fp32": torch.float32, "fp16": torch.float16}[dtype]
    g = torch.Generator().manual_seed(zlib.crc32(f"bias{dtype}".encode()))
    q, k, v = (torch.randn(1, 2, 45, 16, generator=g).to(tdt) for _ in range(3))
    bias = (torch.randn(2, 45, 45, generator=g) * 2).to(tdt)
    err = run_and_compare(softmax_with_bias_tile(), q, k, v, {"Bias": bias}, {"causal": True},
                          dtype)
    assert err < (1e-5 if dtype == "fp32" else 1e-2), err


@needs_triton
def test_softmax_with_vector_biases_matches_the_executor(interpret):
    """A per-key bias (the last 10 keys padded out by -1e4) and a per-query temperature,
    grouped query heads."""
    import torch
    g = torch.Generator().manual_seed(5)
    q = torch.randn(1, 4, 45, 16, generator=g)
    k, v = (torch.randn(1, 2, 45, 16, generator=g) for _ in range(2))
    kb = torch.zeros(45)
    kb[35:] = -1e4
    qt = torch.rand(45, generator=g) + 0.5
    err = run_and_compare(softmax_with_key_bias(), q, k, v, {"KB": kb, "QT": qt},
                          {"causal": False}, "fp32")
    assert err < 1e-5, err
