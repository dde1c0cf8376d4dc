"""Plain-NumPy reference attention for ``iosim cascades run``: the numbers a cascade's
output is compared with. Written from the papers' formulas, independent of the IR.

``reference_for(cascade)`` picks the reference of a library cascade by name; a user's
cascade is compared with softmax attention unless another kind is asked for.
"""
from __future__ import annotations

import numpy as np

from cascades.errors import CascadeError

KINDS = ("softmax", "sigmoid", "linear", "lightning", "none")

#: library cascade -> (reference kind, causal alignment: "start" (query i sees keys <= i)
#: or "end" (the queries are the last P positions of the key sequence))
LIBRARY_KIND = {
    "attention-1pass": ("softmax", "start"), "attention-2pass": ("softmax", "start"),
    "attention-3pass": ("softmax", "start"), "flash1": ("softmax", "start"),
    "attention-gqa": ("softmax", "start"), "attention-masked": ("softmax", "start"),
    "attention-blocksparse": ("softmax", "start"), "attention-window": ("softmax", "start"),
    "decode-splitk": ("softmax", "end"), "sigmoid": ("sigmoid", "start"),
    "linear": ("linear", "start"), "lightning2": ("lightning", "start"),
}


def expit(x):
    """The logistic sigmoid 1 / (1 + exp(-x)), elementwise, without overflow: exp is taken of
    -|x| only, and the branch for x < 0 keeps the relative accuracy of the small outputs."""
    x = np.asarray(x)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))[()]


def softmax(x, axis=-1):
    """exp(x) / sum(exp(x)) along ``axis``, the maximum subtracted first (no overflow)."""
    x = np.asarray(x)
    shifted = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return shifted / np.sum(shifted, axis=axis, keepdims=True)


_FEATURE = {"elu1": lambda x: np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0))),
            "relu": lambda x: np.maximum(x, 0.0), "identity": lambda x: x, "exp": np.exp,
            "softplus": lambda x: np.logaddexp(0.0, x), "sigmoid": expit,
            "abs": np.abs, "tanh": np.tanh, "silu": lambda x: x * expit(x),
            "gelu": lambda x: 0.5 * x * (1.0 + _erf(x / np.sqrt(2.0)))}


def _erf(x):
    from scipy.special import erf
    return erf(x)


def allowed(n_q: int, n_k: int, causal: bool, align: str = "start") -> np.ndarray | None:
    if not causal:
        return None
    shift = n_k - n_q if align == "end" else 0
    return np.arange(n_k)[None, :] <= np.arange(n_q)[:, None] + shift


def softmax_attention(q, k, v, scale, keep=None):
    logits = scale * np.einsum("...pe,me->...pm", q, k)
    if keep is not None:
        logits = np.where(keep, logits, -np.inf)
    return np.einsum("...pm,mf->...pf", softmax(logits, axis=-1), v)


def reference(kind: str, inputs: dict, params: dict, align: str = "start") -> np.ndarray:
    """Reference output ``O`` for ``inputs`` (Q, K, V and optionally Mask) and ``params``."""
    q, k, v = (np.asarray(inputs[n], dtype=np.float64) for n in ("Q", "K", "V"))
    n_q, n_k = q.shape[-2], k.shape[0]
    causal = bool(params.get("causal", False))
    keep = allowed(n_q, n_k, causal, align)
    if causal and "window" in params:   # a sliding window: the last `window` keys only
        shift = n_k - n_q if align == "end" else 0
        gap = np.arange(n_q)[:, None] + shift - np.arange(n_k)[None, :]
        keep = keep & (gap < int(params["window"]))
    if "Mask" in inputs:
        keep = np.asarray(inputs["Mask"], bool) if keep is None else keep & inputs["Mask"]
    if "BlockMask" in inputs:  # expand (query block, key block) pairs to elements
        bm = np.asarray(inputs["BlockMask"], bool)
        bq = int(params.get("block_q", -(-n_q // bm.shape[0])))
        bk = int(params.get("block_kv", -(-n_k // bm.shape[1])))
        full = np.repeat(np.repeat(bm, bq, axis=0), bk, axis=1)[:n_q, :n_k]
        keep = full if keep is None else keep & full
    scale = params.get("scale", 1.0 / np.sqrt(q.shape[-1]))
    if kind == "softmax":
        return softmax_attention(q, k, v, scale, keep)
    if kind == "sigmoid":
        bias = params.get("bias", -np.log(n_k))
        w = expit(scale * np.einsum("pe,me->pm", q, k) + bias)
        return (w if keep is None else np.where(keep, w, 0.0)) @ v
    if kind == "linear":
        f = _FEATURE[params.get("phi", "elu1")]
        w = f(q) @ f(k).T
        out = w @ v
        return out / w.sum(axis=1, keepdims=True) if params.get("normalize", True) else out
    if kind == "lightning":
        lam = params.get("decay", 0.99)
        t = np.arange(n_q)[:, None] - np.arange(n_k)[None, :]
        w = np.where(t >= 0, lam ** np.maximum(t, 0), 0.0) * (q @ k.T)
        return w @ v
    raise CascadeError(f"unknown reference '{kind}' (expected one of {', '.join(KINDS)})")
