"""HBM traffic and FLOPs of attention's forward and backward passes, standard and FlashAttention.

The counts follow the loop nests printed in FlashAttention (Dao et al. 2022, arXiv 2205.14135):

* **Algorithm 0** -- standard attention forward: ``S = Q K^T`` written to HBM, ``P = softmax(S)``
  written to HBM, ``O = P V``;
* **Algorithm 3** (Appendix B.4) -- standard attention backward: ``dV = P^T dO``,
  ``dP = dO V^T``, ``dS = P o (dP - rowsum(P o dP))``, ``dQ = dS K``, ``dK = dS^T Q``, every
  N x N intermediate going through HBM;
* **Algorithm 1 / 2** -- FlashAttention forward: outer loop over the T_c K/V blocks, inner loop
  over the T_r Q blocks, loading ``Q_i, O_i, l_i, m_i`` and writing ``O_i, l_i, m_i`` back;
* **Algorithm 4** -- FlashAttention backward: the same loop order; the inner loop loads
  ``Q_i, O_i, dO_i, dQ_i, l_i, m_i`` and writes ``dQ_i``; ``dK_j, dV_j`` are written once per
  outer iteration.

Every count is per (batch, head), in **elements** per tensor (reads and writes kept apart), so
that a caller multiplies by ``batch * heads`` and by the bytes of each tensor's dtype
(:meth:`PassCounts.bytes`). Partial last blocks are exact: the element counts of the
FlashAttention loops depend on the block sizes only through ``T_c = ceil(N / B_c)``.

Switches describe what an implementation does beyond the printed algorithms:

* ``init_writes`` -- count the zero/-inf initialisation of ``O, l, m`` (forward) and
  ``dQ, dK, dV`` (backward) in HBM, which the printed algorithms perform (line 2 of Algorithm
  1, line 5 of Algorithm 4); off by default, as in ``iosim.bounds.flash_attention_alg1_exact``;
* for standard attention, ``scale_pass``, ``mask_pass`` and ``dropout`` add the separate
  element-wise kernels an unfused framework implementation launches (``S * tau``,
  ``masked_fill``, dropout); each is one read and one write of an N x N matrix per pass, plus
  the dropout mask (1 byte per element) written in the forward pass and read in the backward.
  FlashAttention fuses all three (it regenerates the dropout mask from the RNG state), so they
  add no HBM traffic there.

FLOPs are counted per class: ``matmul`` (2 per multiply-add), ``exp`` and ``vector`` (other
element-wise and reduction operations, one per element per operation; the exact number of
vector operations depends on the implementation and is documented at each function).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from iosim.errors import IosimError
from iosim.hardware import dtype_bytes

__all__ = [
    "PassCounts",
    "paper_block_sizes",
    "standard_forward",
    "standard_backward",
    "flash_forward",
    "flash_backward",
    "simulate_flash_forward",
    "simulate_flash_backward",
    "fwd_bwd",
]


def _arr(x, name: str):
    a = np.asarray(x)
    if a.dtype.kind not in "iuf":
        raise IosimError(f"{name} must be numeric, got {x!r}")
    if not np.all(a > 0):
        raise IosimError(f"{name} must be positive, got {x!r}")
    return a


def _int(x, name: str):
    a = _arr(x, name)
    if not np.all(np.floor(a) == a):
        raise IosimError(f"{name} must be an integer, got {x!r}")
    return a.astype(np.int64)


def _ceil_div(a, b):
    return -(-np.asarray(a, dtype=np.int64) // np.asarray(b, dtype=np.int64))


def _out(x):
    x = np.asarray(x)
    if x.ndim == 0:
        v = x.item()
        return int(v) if float(v).is_integer() else float(v)
    return x


def paper_block_sizes(M, d):
    """FlashAttention's block sizes: ``B_c = ceil(M / (4 d))``, ``B_r = min(B_c, d)``.

    ``M`` is the SRAM size in elements. Arrays broadcast. Returns ``(B_c, B_r)``.
    """
    M = _int(M, "M (SRAM elements)")
    d = _int(d, "d")
    bc = _ceil_div(M, 4 * d)
    br = np.minimum(bc, d)
    return _out(bc), _out(br)


@dataclass(frozen=True)
class PassCounts:
    """HBM reads and writes per tensor (elements, per batch*head) and FLOPs of one pass.

    ``elem_bytes`` gives each tensor's bytes per element; tensors not listed use ``dtype``.
    Values may be NumPy arrays (a grid of shapes evaluates in one call).
    """

    algorithm: str
    pass_name: str
    reads: dict
    writes: dict
    flops: dict
    dtype: str = "fp16"
    elem_bytes: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)

    def _eb(self, tensor: str) -> float:
        return self.elem_bytes.get(tensor, dtype_bytes(self.dtype))

    @property
    def tensors(self) -> tuple:
        return tuple(dict.fromkeys(list(self.reads) + list(self.writes)))

    @property
    def read_elements(self):
        return _out(sum(np.asarray(v) for v in self.reads.values()))

    @property
    def write_elements(self):
        return _out(sum(np.asarray(v) for v in self.writes.values()))

    @property
    def elements(self):
        return _out(np.asarray(self.read_elements) + np.asarray(self.write_elements))

    @property
    def read_bytes(self):
        return _out(sum(np.asarray(v) * self._eb(t) for t, v in self.reads.items()))

    @property
    def write_bytes(self):
        return _out(sum(np.asarray(v) * self._eb(t) for t, v in self.writes.items()))

    @property
    def bytes(self):
        return _out(np.asarray(self.read_bytes) + np.asarray(self.write_bytes))

    @property
    def total_flops(self):
        return _out(sum(np.asarray(v) for v in self.flops.values()))

    def __add__(self, other: "PassCounts") -> "PassCounts":
        if not isinstance(other, PassCounts):
            return NotImplemented

        def merge(a, b):
            out = dict(a)
            for k, v in b.items():
                out[k] = _out(np.asarray(out.get(k, 0)) + np.asarray(v))
            return out

        eb = dict(self.elem_bytes)
        for k, v in other.elem_bytes.items():
            if k in eb and eb[k] != v:
                raise IosimError(f"tensor {k} has {eb[k]} and {v} bytes per element in the two passes")
            eb[k] = v
        if self.dtype != other.dtype:
            raise IosimError(f"cannot add passes of dtypes {self.dtype} and {other.dtype}")
        return PassCounts(
            algorithm=self.algorithm if self.algorithm == other.algorithm else f"{self.algorithm}+{other.algorithm}",
            pass_name=f"{self.pass_name}+{other.pass_name}",
            reads=merge(self.reads, other.reads),
            writes=merge(self.writes, other.writes),
            flops=merge(self.flops, other.flops),
            dtype=self.dtype,
            elem_bytes=eb,
            params={**self.params, **other.params},
        )

    def scaled(self, factor) -> "PassCounts":
        """Every count multiplied by ``factor`` (e.g. ``batch * heads``)."""
        f = np.asarray(factor)
        return PassCounts(
            algorithm=self.algorithm, pass_name=self.pass_name,
            reads={k: _out(np.asarray(v) * f) for k, v in self.reads.items()},
            writes={k: _out(np.asarray(v) * f) for k, v in self.writes.items()},
            flops={k: _out(np.asarray(v) * f) for k, v in self.flops.items()},
            dtype=self.dtype, elem_bytes=dict(self.elem_bytes), params=dict(self.params),
        )

    def to_dict(self) -> dict:
        def conv(x):
            x = np.asarray(x)
            return x.tolist() if x.ndim else x.item()

        return {
            "algorithm": self.algorithm,
            "pass": self.pass_name,
            "dtype": self.dtype,
            "params": {k: conv(v) if isinstance(v, (np.ndarray, np.generic)) else v for k, v in self.params.items()},
            "per_tensor": {
                t: {
                    "read_elements": conv(self.reads.get(t, 0)),
                    "write_elements": conv(self.writes.get(t, 0)),
                    "bytes_per_element": self._eb(t),
                }
                for t in self.tensors
            },
            "read_elements": conv(self.read_elements),
            "write_elements": conv(self.write_elements),
            "read_bytes": conv(self.read_bytes),
            "write_bytes": conv(self.write_bytes),
            "bytes": conv(self.bytes),
            "flops": {k: conv(v) for k, v in self.flops.items()},
        }


def _stats_bytes(stats_dtype: str | None, dtype: str) -> float:
    return dtype_bytes(stats_dtype or dtype)


# --------------------------------------------------------------------------------------
# standard attention (Algorithms 0 and 3)
# --------------------------------------------------------------------------------------


def standard_forward(N, d, *, scale_pass: bool = False, mask_pass: bool = False,
                     dropout: bool = False, dtype: str = "fp16") -> PassCounts:
    """Standard attention forward (Algorithm 0), optionally with unfused element-wise passes.

    Algorithm 0: read Q, K (2 N d), write S (N^2); read S, write P (2 N^2); read P, V
    (N^2 + N d), write O (N d): ``4 N d + 4 N^2`` elements. ``scale_pass`` and ``mask_pass``
    each add a read and a write of S; ``dropout`` reads P and writes the dropped P (``Pd``) and
    a 1-byte mask ``Z``, and the product then reads ``Pd`` instead of P.

    FLOPs: matmul ``4 N^2 d``; exp ``N^2``; vector ``4 N^2`` (row max, subtract, row sum,
    divide) plus ``N^2`` for the scale (fused into the matmul epilogue when there is no scale
    pass, still one multiply per element), ``N^2`` for the mask and ``2 N^2`` for dropout
    (compare, multiply).
    """
    N = _int(N, "N")
    d = _int(d, "d")
    n2 = N * N
    nd = N * d
    reads = {"Q": nd, "K": nd, "S": n2, "V": nd}
    writes = {"S": n2, "P": n2, "O": nd}
    reads["P"] = n2
    extra_s = int(scale_pass) + int(mask_pass)
    if extra_s:
        reads["S"] = reads["S"] + extra_s * n2
        writes["S"] = writes["S"] + extra_s * n2
    eb = {}
    if dropout:
        # P read once more by the dropout kernel, which writes Pd and the mask Z; P V reads Pd
        writes["Pd"] = n2
        writes["Z"] = n2
        reads["Pd"] = n2  # the P V product reads the dropped matrix instead of P ...
        # ... and the dropout kernel reads P: P's read count stays n2
        eb["Z"] = 1.0
    flops = {
        "matmul": 4 * n2 * d,
        "exp": n2,
        "vector": 4 * n2 + n2 + (n2 if mask_pass else 0) + (2 * n2 if dropout else 0),
    }
    return PassCounts(
        "standard", "forward",
        {k: _out(v) for k, v in reads.items()}, {k: _out(v) for k, v in writes.items()},
        {k: _out(v) for k, v in flops.items()}, dtype, eb,
        {"N": _out(N), "d": _out(d), "scale_pass": scale_pass, "mask_pass": mask_pass, "dropout": dropout},
    )


def standard_backward(N, d, *, scale_pass: bool = False, mask_pass: bool = False,
                      dropout: bool = False, dtype: str = "fp16") -> PassCounts:
    """Standard attention backward (Algorithm 3), optionally with unfused element-wise passes.

    Algorithm 3, line by line: (1) read P, dO, write dV; (2) read dO, V, write dP; (3) read P,
    dP, write dS; (4) read dS, K, write dQ; (5) read dS, Q, write dK. Total
    ``7 N^2 + 8 N d`` elements. ``scale_pass`` and ``mask_pass`` each add a read and a write
    of dS (the backward of ``S * tau`` and of ``masked_fill``). ``dropout``: line 1 reads Pd
    instead of P; the backward of dropout reads dPd (the product dO V^T) and Z and writes dP.

    FLOPs: matmul ``8 N^2 d`` (four N x N x d products); vector ``4 N^2`` (P o dP, row sum,
    subtract, multiply) plus ``N^2`` for the scale, ``N^2`` for the mask and ``N^2`` for
    dropout.
    """
    N = _int(N, "N")
    d = _int(d, "d")
    n2 = N * N
    nd = N * d
    reads = {"P": 2 * n2, "dO": 2 * nd, "V": nd, "dP": n2, "dS": 2 * n2, "K": nd, "Q": nd}
    writes = {"dV": nd, "dP": n2, "dS": n2, "dQ": nd, "dK": nd}
    extra = int(scale_pass) + int(mask_pass)
    if extra:
        reads["dS"] = reads["dS"] + extra * n2
        writes["dS"] = writes["dS"] + extra * n2
    eb = {}
    if dropout:
        reads["P"] = n2       # line 3 only; line 1 reads Pd
        reads["Pd"] = n2
        writes["dPd"] = n2    # line 2 writes dPd = dO V^T ...
        reads["dPd"] = n2     # ... which the dropout backward reads with Z, writing dP
        reads["Z"] = n2
        eb["Z"] = 1.0
    flops = {
        "matmul": 8 * n2 * d,
        "vector": 4 * n2 + n2 + (n2 if mask_pass else 0) + (n2 if dropout else 0),
    }
    return PassCounts(
        "standard", "backward",
        {k: _out(v) for k, v in reads.items()}, {k: _out(v) for k, v in writes.items()},
        {k: _out(v) for k, v in flops.items()}, dtype, eb,
        {"N": _out(N), "d": _out(d), "scale_pass": scale_pass, "mask_pass": mask_pass, "dropout": dropout},
    )


# --------------------------------------------------------------------------------------
# FlashAttention (Algorithms 1/2 and 4)
# --------------------------------------------------------------------------------------


def _flash_blocks(N, d, M, block_kv, block_q):
    if block_kv is None:
        if M is None:
            raise IosimError("give the SRAM size M (elements) or the block sizes block_kv/block_q")
        bc, br = paper_block_sizes(M, d)
        bc = np.asarray(bc)
        br = np.asarray(br) if block_q is None else _int(block_q, "block_q")
    else:
        bc = _int(block_kv, "block_kv")
        if block_q is None:
            br = np.minimum(bc, _int(d, "d"))
        else:
            br = _int(block_q, "block_q")
    return bc, br


def flash_forward(N, d, M=None, *, block_kv=None, block_q=None, init_writes: bool = False,
                  dtype: str = "fp16", stats_dtype: str | None = "fp32") -> PassCounts:
    """FlashAttention forward (Algorithm 1, or Algorithm 2 with mask/dropout fused).

    Block sizes: ``block_kv`` (B_c) and ``block_q`` (B_r), or the paper's rule from the SRAM
    size ``M`` in elements (``B_c = ceil(M/4d)``, ``B_r = min(B_c, d)``). With
    ``T_c = ceil(N / B_c)``: K and V read once (``2 N d``); per outer iteration the inner loop
    reads Q, O (``2 N d``) and l, m (``2 N``) and writes O (``N d``) and l, m (``2 N``). Total
    ``2 N d + T_c (3 N d + 4 N)``, plus ``N d + 2 N`` initialisation writes when
    ``init_writes``. Independent of B_r (partial blocks included).

    FLOPs: matmul ``4 N^2 d``; exp ``N^2 + 2 T_c N`` (the block's P~ and the two rescale
    factors per row and block); vector ``4 N^2`` (row max, subtract, row sum, scale) plus
    ``T_c N (3 d + 4)`` for the per-block rescaling of O, l and m.
    """
    N = _int(N, "N")
    d = _int(d, "d")
    bc, br = _flash_blocks(N, d, M, block_kv, block_q)
    tc = _ceil_div(N, bc)
    nd = N * d
    reads = {"Q": tc * nd, "K": nd, "V": nd, "O": tc * nd, "l": tc * N, "m": tc * N}
    writes = {"O": tc * nd + (nd if init_writes else 0),
              "l": tc * N + (N if init_writes else 0),
              "m": tc * N + (N if init_writes else 0)}
    n2 = N * N
    flops = {"matmul": 4 * n2 * d, "exp": n2 + 2 * tc * N, "vector": 4 * n2 + tc * N * (3 * d + 4)}
    sb = _stats_bytes(stats_dtype, dtype)
    return PassCounts(
        "flash", "forward",
        {k: _out(v) for k, v in reads.items()}, {k: _out(v) for k, v in writes.items()},
        {k: _out(v) for k, v in flops.items()}, dtype, {"l": sb, "m": sb},
        {"N": _out(N), "d": _out(d), "M": None if M is None else _out(np.asarray(M)),
         "block_kv": _out(bc), "block_q": _out(br), "T_c": _out(tc), "init_writes": init_writes},
    )


def flash_backward(N, d, M=None, *, block_kv=None, block_q=None, init_writes: bool = False,
                   dtype: str = "fp16", stats_dtype: str | None = "fp32") -> PassCounts:
    """FlashAttention backward (Algorithm 4), exact element counts per tensor.

    With ``T_c = ceil(N / B_c)``: K and V read once (line 7, ``2 N d``); each of the T_c outer
    iterations reads all of Q, O, dO, dQ (``4 N d``) and l, m (``2 N``) in the inner loop
    (line 10) and writes all of dQ (``N d``, line 21); dK and dV are written once (line 24,
    ``2 N d``). Total ``4 N d + T_c (5 N d + 2 N)``, plus ``3 N d`` when ``init_writes`` counts
    the zero initialisation of dQ, dK, dV in HBM (line 5).

    FLOPs: matmul ``10 N^2 d`` (S recomputed, dV, dP, dQ, dK); exp ``N^2``; vector ``4 N^2``
    (subtract m, divide by l, subtract D, multiply by P) plus ``2 T_c N d`` for
    ``D_i = rowsum(dO_i o O_i)``, which line 19 recomputes in every inner iteration.
    """
    N = _int(N, "N")
    d = _int(d, "d")
    bc, br = _flash_blocks(N, d, M, block_kv, block_q)
    tc = _ceil_div(N, bc)
    nd = N * d
    reads = {"Q": tc * nd, "K": nd, "V": nd, "O": tc * nd, "dO": tc * nd, "dQ": tc * nd,
             "l": tc * N, "m": tc * N}
    init = nd if init_writes else 0
    writes = {"dQ": tc * nd + init, "dK": nd + init, "dV": nd + init}
    n2 = N * N
    flops = {"matmul": 10 * n2 * d, "exp": n2, "vector": 4 * n2 + 2 * tc * nd}
    sb = _stats_bytes(stats_dtype, dtype)
    return PassCounts(
        "flash", "backward",
        {k: _out(v) for k, v in reads.items()}, {k: _out(v) for k, v in writes.items()},
        {k: _out(v) for k, v in flops.items()}, dtype, {"l": sb, "m": sb},
        {"N": _out(N), "d": _out(d), "M": None if M is None else _out(np.asarray(M)),
         "block_kv": _out(bc), "block_q": _out(br), "T_c": _out(tc), "init_writes": init_writes},
    )


def fwd_bwd(algorithm: str, N, d, M=None, **kw) -> PassCounts:
    """Forward + backward counts of ``algorithm`` (``"standard"`` or ``"flash"``)."""
    key = str(algorithm).strip().lower()
    if key in ("standard", "std", "unfused"):
        return standard_forward(N, d, **kw) + standard_backward(N, d, **kw)
    if key in ("flash", "flashattention", "fa", "fa1"):
        return flash_forward(N, d, M, **kw) + flash_backward(N, d, M, **kw)
    raise IosimError(f"unknown algorithm '{algorithm}': expected 'standard' or 'flash'")


# --------------------------------------------------------------------------------------
# loop-nest walkers (independent of the closed forms above; they exist to check them)
# --------------------------------------------------------------------------------------


def _blocks(n: int, b: int) -> list:
    """Sizes of the blocks of a rank of length n tiled by b (the last may be partial)."""
    return [min(b, n - s) for s in range(0, n, b)]


class _Counter:
    def __init__(self):
        self.reads: dict[str, int] = {}
        self.writes: dict[str, int] = {}
        self.resident = 0
        self.peak = 0

    def load(self, t: str, n: int) -> None:
        self.reads[t] = self.reads.get(t, 0) + n

    def store(self, t: str, n: int) -> None:
        self.writes[t] = self.writes.get(t, 0) + n

    def hold(self, n: int) -> None:
        self.resident += n
        self.peak = max(self.peak, self.resident)

    def free(self, n: int) -> None:
        self.resident -= n


def simulate_flash_forward(N: int, d: int, block_kv: int, block_q: int, *,
                           init_writes: bool = False) -> dict:
    """Walk Algorithm 1's loop nest block by block; count every HBM load and store.

    Returns ``{"reads": {...}, "writes": {...}, "peak_sram": elements}``; ``peak_sram`` is
    the most elements held on chip at once (K_j, V_j, Q_i, O_i, l_i, m_i, S_ij/P_ij).
    """
    c = _Counter()
    if init_writes:
        c.store("O", N * d)
        c.store("l", N)
        c.store("m", N)
    for bc in _blocks(N, block_kv):
        c.load("K", bc * d)
        c.load("V", bc * d)
        c.hold(2 * bc * d)
        for br in _blocks(N, block_q):
            for t, n in (("Q", br * d), ("O", br * d), ("l", br), ("m", br)):
                c.load(t, n)
            c.hold(2 * br * d + 2 * br + br * bc)
            for t, n in (("O", br * d), ("l", br), ("m", br)):
                c.store(t, n)
            c.free(2 * br * d + 2 * br + br * bc)
        c.free(2 * bc * d)
    return {"reads": c.reads, "writes": c.writes, "peak_sram": c.peak}


def simulate_flash_backward(N: int, d: int, block_kv: int, block_q: int, *,
                            init_writes: bool = False) -> dict:
    """Walk Algorithm 4's loop nest block by block; count every HBM load and store.

    ``peak_sram`` counts K_j, V_j, dK~_j, dV~_j, then per inner step Q_i, O_i, dO_i, dQ_i,
    l_i, m_i and the B_r x B_c tiles S/P and dP/dS.
    """
    c = _Counter()
    if init_writes:
        for t in ("dQ", "dK", "dV"):
            c.store(t, N * d)
    for bc in _blocks(N, block_kv):
        c.load("K", bc * d)
        c.load("V", bc * d)
        c.hold(4 * bc * d)
        for br in _blocks(N, block_q):
            for t, n in (("Q", br * d), ("O", br * d), ("dO", br * d), ("dQ", br * d),
                         ("l", br), ("m", br)):
                c.load(t, n)
            c.hold(4 * br * d + 2 * br + 2 * br * bc)
            c.store("dQ", br * d)
            c.free(4 * br * d + 2 * br + 2 * br * bc)
        c.store("dK", bc * d)
        c.store("dV", bc * d)
        c.free(4 * bc * d)
    return {"reads": c.reads, "writes": c.writes, "peak_sram": c.peak}


def describe(counts: PassCounts) -> dict[str, Any]:
    """A flat summary row (elements, bytes, FLOPs) for tables and CSVs."""
    return {
        "algorithm": counts.algorithm,
        "pass": counts.pass_name,
        "read_elements": counts.read_elements,
        "write_elements": counts.write_elements,
        "elements": counts.elements,
        "bytes": counts.bytes,
        "flops": counts.total_flops,
        **{f"flops_{k}": v for k, v in counts.flops.items()},
    }
