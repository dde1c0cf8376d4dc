"""tanh, silu and gelu in the notation: the executor's values against the math module, a
softcapped (tanh) attention and HSTU-style SiLU attention against plain NumPy written here,
and their class in the FLOP count."""
from __future__ import annotations

import math

import numpy as np
import pytest

import cascades
from iosim.traffic import evaluate

SOFTCAP = """
cascade softcap "softmax attention with the logits soft-capped: cap * tanh(s / cap)"
param scale = 1 / sqrt(E)
param cap = 5.0
input  Q[P, E]
input  K[M, E]
input  V[M, F]
output O[P, F]
QK[m, p] = sum[e] Q[p, e] * K[m, e]
S[m, p]  = cap * tanh(scale * QK[m, p] / cap)
GM[p]    = max[m] S[m, p]
SN[m, p] = exp(S[m, p] - GM[p])
SD[p]    = sum[m] SN[m, p]
O[p, f]  = sum[m] SN[m, p] * V[m, f] / SD[p]
"""

SILU = """
cascade silu-attn "pointwise SiLU attention with a relative bias, normalised by the key count"
input  Q[P, E]
input  K[M, E]
input  V[M, F]
input  Bias[M, P]
output O[P, F]
QK[m, p] = sum[e] Q[p, e] * K[m, e]
A[m, p]  = silu(QK[m, p] + Bias[m, p]) / M
O[p, f]  = sum[m] A[m, p] * V[m, f]
"""


@pytest.mark.parametrize("func,ref", [
    ("tanh", math.tanh),
    ("silu", lambda x: x / (1 + math.exp(-x))),
    ("gelu", lambda x: 0.5 * x * (1 + math.erf(x / math.sqrt(2)))),
])
def test_function_values(func, ref):
    text = f"""
cascade f
input  X[P]
output Y[P]
Y[p] = {func}(X[p])
"""
    x = np.array([-6.0, -1.5, -0.2, 0.0, 0.3, 2.0, 7.0])
    y = cascades.execute(cascades.parse(text), {"X": x})["Y"]
    assert np.allclose(y, [ref(v) for v in x], rtol=1e-12, atol=1e-14)


def test_softcapped_attention_matches_numpy():
    rng = np.random.default_rng(3)
    Q, K, V = (rng.standard_normal((n, 16)) * 3 for n in (9, 13, 13))
    out = cascades.execute(cascades.parse(SOFTCAP), {"Q": Q, "K": K, "V": V})["O"]
    s = 5.0 * np.tanh((Q @ K.T) / 4.0 / 5.0)
    p = np.exp(s - s.max(axis=1, keepdims=True))
    assert np.allclose(out, (p / p.sum(axis=1, keepdims=True)) @ V, rtol=1e-10)


def test_silu_attention_with_bias_matches_numpy():
    rng = np.random.default_rng(4)
    Q, K, V = (rng.standard_normal((n, 8)) for n in (5, 7, 7))
    B = rng.standard_normal((7, 5))
    out = cascades.execute(cascades.parse(SILU), {"Q": Q, "K": K, "V": V, "Bias": B})["O"]
    x = Q @ K.T + B.T
    assert np.allclose(out, (x / (1 + np.exp(-x)) / 7) @ V, rtol=1e-10)


def test_tanh_counts_as_special_function_work():
    n, d = 256, 64
    soft = evaluate(cascades.parse(SOFTCAP), None, "two-level", n=n, d=d,
                    sram_bytes=1 << 20)
    # one tanh and one exp per score (the exp of the softmax): 2 N^2 special-function ops
    assert soft.flops["exp"] == pytest.approx(2 * n * n, rel=0.02)
