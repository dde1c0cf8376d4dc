"""Independent plain-NumPy reference implementations, written from the papers' formulas
(not from the cascades): the expected values of the executor tests."""
from __future__ import annotations

import numpy as np


def causal_mask(n_q: int, n_k: int, offset: int = 0) -> np.ndarray:
    """True where query i may see key j: j <= i + offset."""
    return np.arange(n_k)[None, :] <= np.arange(n_q)[:, None] + offset


def softmax_attention(Q, K, V, scale=None, mask=None):
    """softmax(scale * Q K^T, masked) V, computed row by row with a stable softmax."""
    scale = 1.0 / np.sqrt(Q.shape[-1]) if scale is None else scale
    S = scale * (Q @ K.T)
    if mask is not None:
        S = np.where(mask, S, -np.inf)
    S = S - S.max(axis=-1, keepdims=True)
    P = np.exp(S)
    return (P / P.sum(axis=-1, keepdims=True)) @ V


def sigmoid_attention(Q, K, V, scale=None, bias=None, mask=None):
    scale = 1.0 / np.sqrt(Q.shape[-1]) if scale is None else scale
    bias = -np.log(K.shape[0]) if bias is None else bias
    S = 1.0 / (1.0 + np.exp(-(scale * (Q @ K.T) + bias)))
    if mask is not None:
        S = np.where(mask, S, 0.0)
    return S @ V


FEATURE_MAPS = {
    "elu1": lambda x: np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0))),
    "relu": lambda x: np.maximum(x, 0.0),
    "identity": lambda x: x,
    "exp": np.exp,
}


def linear_attention(Q, K, V, phi="elu1", normalize=True):
    f = FEATURE_MAPS[phi]
    A = f(Q) @ f(K).T  # quadratic form: an independent order of evaluation
    out = A @ V
    return out / A.sum(axis=1, keepdims=True) if normalize else out


def decayed_causal_linear(Q, K, V, decay):
    """o_t = sum_{s <= t} decay^(t-s) (q_t . k_s) v_s, by an explicit loop over t."""
    out = np.zeros((Q.shape[0], V.shape[1]))
    for t in range(Q.shape[0]):
        w = decay ** (t - np.arange(t + 1)) * (K[: t + 1] @ Q[t])
        out[t] = w @ V[: t + 1]
    return out


def rel_err(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def fmix64(x: int) -> int:
    """MurmurHash3's 64-bit finaliser, in Python integers."""
    m = (1 << 64) - 1
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & m
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & m
    return x ^ (x >> 33)


def balanced_set(pair: int, nset: int) -> int:
    """Unit pair ``pair``'s set under a balanced hash: its index within its aligned run of
    ``nset`` pairs, rotated by fmix64 of the run."""
    return (pair % nset + fmix64(pair // nset)) % nset
