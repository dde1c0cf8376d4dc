"""Analytical traffic, FLOPs, time and energy of a mapping — vectorised over grids.

The counts come from the mapping's :class:`~iosim.mapping.LoopNest`: every ``Load``/
``Store`` in it contributes the sum, over the loop iterations that enclose it, of its tile's
size. Independent loops contribute a factor (the rank's extent if the tile is indexed by the
loop, partial last tile included, else the trip count ⌈extent/block⌉); a pair of query/key
tile loops coupled by causal skipping contributes one of four exact block sums (see
:func:`causal_sums`). The same description yields numeric arrays (:func:`evaluate_grid`,
one call for a whole grid) and sympy expressions (:func:`symbolic_traffic`).

Model of a memory hierarchy (see ``docs/model.md``):

* the **SRAM level** (``hardware.innermost_sram``: SMEM on a GPU) holds the tiles of one
  program (thread block); what a program loads from beyond it is the *SMEM-level model*;
* levels between the backing store and the SRAM level (L2) see that traffic unchanged;
* the **backing store** (HBM) sees what a pluggable ``backing_model`` makes of it — by
  default the same bytes (no reuse across programs); an L2 model refines it later;
* levels inside the SRAM level (registers) are not modelled.

Per-tensor counts are per (batch, head) in elements; level totals are bytes over all batches
and heads. A level's ``read_bytes`` are bytes read out of it toward compute, ``write_bytes``
bytes written into it.
"""
from __future__ import annotations

import math
from dataclasses import replace, dataclass
from functools import lru_cache
from typing import Callable

import numpy as np

from iosim.errors import IosimError
from iosim.mapping import (Alloc, Load, Loop, LoopNest, Mapping, PartialLoad, PartialStore,
                           Shapes, SplitLoop, Store, get_mapping, loop_nest)

__all__ = [
    "causal_sums", "floor_sum", "compile_nest", "CompiledNest", "cascade_op_terms",
    "evaluate_arrays", "evaluate_grid", "evaluate", "footprint", "symbolic_traffic",
    "passthrough_backing", "scalar_sizes", "OP_CLASSES", "nest_terms", "count_terms",
    "nest_traffic",
]

OP_CLASSES = ("matmul", "exp", "other")


# ======================================================================================
# exact block sums for causal skipping
# ======================================================================================


def floor_sum(n, m, a, b):
    """Σ_{t=0}^{n-1} ⌊(a t + b)/m⌋ for integer arrays with n ≥ 0, m ≥ 1, a ≥ 0, b ≥ 0.

    The classic O(log) Euclid-like recursion, vectorised over arrays.
    """
    n, m, a, b = (np.array(x, dtype=np.int64, copy=True) for x in np.broadcast_arrays(n, m, a, b))
    ans = np.zeros(n.shape, dtype=np.int64)
    active = n > 0
    while active.any():
        big_a = active & (a >= m)
        ans[big_a] += (n[big_a] * (n[big_a] - 1) // 2) * (a[big_a] // m[big_a])
        a[big_a] %= m[big_a]
        big_b = active & (b >= m)
        ans[big_b] += n[big_b] * (b[big_b] // m[big_b])
        b[big_b] %= m[big_b]
        y_max = a * n + b
        cont = active & (y_max >= m)
        # (n, m, a, b) <- (y_max // m, a, m, y_max % m)
        new_n = np.where(cont, y_max // np.maximum(m, 1), n)
        new_b = np.where(cont, y_max % np.maximum(m, 1), b)
        new_m = np.where(cont, a, m)
        new_a = np.where(cont, m, a)
        n, b, m, a = new_n, new_b, new_m, new_a
        active = cont & (n > 0) & (m > 0)
    return ans


def _cdiv(a, b):
    return -(-a // b)


def causal_sums(N, K, Br, Bc, off=0):
    """Exact sums over the (query tile, key tile) pairs visited with causal skipping.

    Query ``p`` sees key ``m`` iff ``m <= p + off``. Query tile ``i`` (rows
    ``[i·Br, min((i+1)·Br, N))``) visits the key tiles ``j`` with ``j·Bc <= p_last(i) + off``:
    ``nb(i) = clip(⌊(p_last(i) + off)/Bc⌋ + 1, 0, Tc)`` of them, covering
    ``kc(i) = min(nb(i)·Bc, K)`` keys. Returns ``(S00, S10, S01, S11)`` =
    (Σ nb, Σ rows·nb, Σ kc, Σ rows·kc) over query tiles, as int64 arrays.
    """
    N, K, Br, Bc, off = (np.asarray(x, dtype=np.int64) for x in np.broadcast_arrays(N, K, Br, Bc, off))
    Tr = _cdiv(N, Br)
    Tc = _cdiv(K, Bc)
    n = Tr - 1                       # full query tiles 0 .. Tr-2
    a, m = Br, Bc
    b = Br - 1 + off + Bc            # g(i) = floor((a i + b)/m) = nb before clipping
    # first i with g >= 1 and first with g >= Tc (g is non-decreasing)
    i0 = np.clip(_cdiv(m - b, a), 0, n)
    i1 = np.clip(_cdiv(Tc * m - b, a), i0, n)
    F = floor_sum(i1 - i0, m, a, a * i0 + b)
    full = n - i1
    s_nb = F + Tc * full
    s_kc = Bc * F + K * full
    rows_last = N - n * Br
    nb_last = np.clip((N - 1 + off) // Bc + 1, 0, Tc)
    kc_last = np.minimum(nb_last * Bc, K)
    S00 = s_nb + nb_last
    S10 = Br * s_nb + rows_last * nb_last
    S01 = s_kc + kc_last
    S11 = Br * s_kc + rows_last * kc_last
    return S00, S10, S01, S11


#: ``lo`` of a band without a lower edge (no sliding window)
NO_LOWER_EDGE = -(1 << 60)


def band_lower_sums(N, K, Br, Bc, lo):
    """What a band's lower edge removes from :func:`causal_sums`: query ``p`` sees no key
    ``m < p + lo``, so query tile ``i`` (first row ``i·Br``) skips the key tiles entirely
    below ``i·Br + lo``: ``L(i) = clip(⌊(i·Br + lo)/Bc⌋, 0, Tc)`` of them, ``min(L·Bc, K)``
    keys. Returns the four sums of :func:`causal_sums` over the skipped tiles; ``lo`` equal to
    :data:`NO_LOWER_EDGE` gives zeros."""
    N, K, Br, Bc, lo = (np.asarray(x, dtype=np.int64) for x in np.broadcast_arrays(N, K, Br, Bc, lo))
    Tr = _cdiv(N, Br)
    Tc = _cdiv(K, Bc)
    has = lo > NO_LOWER_EDGE
    lo = np.where(has, lo, 0)
    n = Tr - 1                       # full query tiles 0 .. Tr-2
    a, m, b = Br, Bc, lo
    # L(i) = clip(floor((a i + b)/m), 0, Tc): 0 before i0, Tc from i1 on
    i0 = np.clip(_cdiv(m - b, a), 0, n)
    i1 = np.clip(_cdiv(Tc * m - b, a), i0, n)
    F = floor_sum(i1 - i0, m, a, np.maximum(a * i0 + b, 0))
    full = n - i1
    sL = F + Tc * full
    sK = Bc * F + K * full           # keys: L·Bc, or K once all Tc tiles are skipped
    L_last = np.clip((n * Br + lo) // Bc, 0, Tc)
    k_last = np.minimum(L_last * Bc, K)
    rows_last = N - n * Br
    S00 = sL + L_last
    S10 = Br * sL + rows_last * L_last
    S01 = sK + k_last
    S11 = Br * sK + rows_last * k_last
    z = np.zeros_like(S00)
    return tuple(np.where(has, x, z) for x in (S00, S10, S01, S11))


# ======================================================================================
# compiling a loop nest into product terms
# ======================================================================================

#: factor keys: ("ext", R) | ("trips", R, block) | ("tile", R, block) | ("causal", bP, bM, ui, uj)
#:              | ("stages",) | ("stages", k)


@dataclass(frozen=True)
class Term:
    tensor: str
    direction: str        # "read" | "write"
    phase: str
    factors: tuple


@dataclass(frozen=True)
class Buf:
    name: str
    level: str            # "sram" | "acc"
    dtype_role: str       # "data" | "stat" | "mask" | "acc"
    factors: tuple


@dataclass(frozen=True)
class CompiledNest:
    nest: LoopNest
    terms: tuple          # Term
    points: tuple         # (phase, tuple of Buf) live sets


def _loop_map(encl) -> dict:
    return {l.var: l for l in encl}


def _event_factors(dims, encl, what: str) -> tuple:
    loops = _loop_map(encl)
    for d in dims:
        if d.var is not None and d.var not in loops:
            raise AssertionError(f"{what}: tile variable '{d.var}' has no enclosing loop")
    uses = {d.var for d in dims if d.var is not None and isinstance(loops[d.var], Loop)
            and loops[d.var].rank == d.rank}
    # lightning-style self tiling: K[t] tiled by the P-loop t (same length by construction)
    uses |= {d.var for d in dims if d.var is not None and isinstance(loops[d.var], Loop)
             and {loops[d.var].rank, d.rank} == {"P", "M"}}
    coupled = None
    for l in encl:
        if isinstance(l, Loop) and l.causal_with and l.causal_with in loops:
            partner = loops[l.causal_with]
            pl, ml = (partner, l) if l.rank == "M" else (l, partner)
            coupled = (pl, ml)
    factors = []
    for l in encl:
        if isinstance(l, SplitLoop):
            if any(isinstance(x, Loop) and x.within == l.var for x in encl):
                continue
            factors.append(("ext", "S"))
            continue
        if coupled is not None and (l is coupled[0] or l is coupled[1]):
            continue
        factors.append(("ext", l.rank) if l.var in uses else ("trips", l.rank, l.block))
    if coupled is not None:
        pl, ml = coupled
        factors.append(("causal", pl.block, ml.block, pl.var in uses, ml.var in uses)
                       + (("R",) if pl.rank == "R" else ()))
    if any(isinstance(l, Loop) and l.sparse for l in encl):
        factors.append(("density",))
    for d in dims:
        if d.var is None:
            factors.append(("ext", d.rank))
    return tuple(sorted(factors, key=repr))


def _buf_factors(dims, encl, streamed_stages) -> tuple:
    """A buffer's size factors; ``streamed_stages``: counted the mapping's ``num_stages``
    times (``True``) or a streamed load's own stages (a number)."""
    loops = _loop_map(encl)
    out = []
    for d in dims:
        if d.var is None:
            out.append(("ext", d.rank))
        elif d.rank in ("Mt", "Pt", "S"):
            continue
        else:
            out.append(("tile", d.rank, loops[d.var].block))
    if streamed_stages is True:
        out.append(("stages",))
    elif streamed_stages:
        out.append(("stages", int(streamed_stages)))
    return tuple(out)


def _stage_count(load, m):
    """How a streamed load counts in the footprint: its own stages (a loop tree's storage
    node), else the mapping's ``num_stages`` when ``stages_in_footprint``, else once."""
    if not load.streamed:
        return False
    if load.stages is not None:
        return load.stages
    return bool(m.stages_in_footprint)


@lru_cache(maxsize=256)
def _compile_cached(mapping: Mapping, cascade_key) -> CompiledNest:
    return compile_nest(loop_nest(mapping, cascade_key))


def compile_nest(nest: LoopNest) -> CompiledNest:
    """Product terms for every load/store, and the live on-chip buffer sets."""
    terms = []
    points = []
    m = nest.mapping
    for ph in nest.phases:
        live: list = []

        def rec(nodes, encl):
            mark = len(live)
            for nd in nodes:
                if isinstance(nd, (Loop, SplitLoop)):
                    rec(nd.body, encl + (nd,))
                elif isinstance(nd, Load):
                    terms.append(Term(nd.tensor, "read", ph.name,
                                      _event_factors(nd.dims, encl, f"load {nd.tensor}")))
                    live.append(Buf(nd.tensor, "sram", nest.dtype_role(nd.tensor),
                                    _buf_factors(nd.dims, encl, _stage_count(nd, m))))
                    points.append((ph.name, tuple(live)))
                elif isinstance(nd, Store):
                    terms.append(Term(nd.tensor, "write", ph.name,
                                      _event_factors(nd.dims, encl, f"store {nd.tensor}")))
                elif isinstance(nd, Alloc):
                    live.append(Buf(nd.name, "acc" if nd.role == "acc" else "sram",
                                    "acc" if nd.role == "acc" else "data",
                                    _buf_factors(nd.dims, encl, False)))
                    points.append((ph.name, tuple(live)))
            del live[mark:]

        rec(ph.body, ())
    return CompiledNest(nest, tuple(terms), tuple(points))


# ======================================================================================
# FLOPs from the cascade's Einsums
# ======================================================================================

_EXP_FUNCS = {"exp", "log", "sigmoid", "softplus", "elu1", "sqrt", "tanh", "silu", "gelu"}
_OTHER_FUNCS = {"max", "min", "abs", "relu"}


@dataclass(frozen=True)
class OpTerm:
    cls: str              # "matmul" | "exp" | "other"
    count: float          # ops per point
    vars: frozenset       # index variables the op depends on
    tensor: str           # the Einsum's left-hand tensor


def cascade_op_terms(cascade, causal: bool) -> tuple:
    """Operations of every Einsum, counted per point of the index variables they depend on.

    Map operators count one op per point of the variables their operands depend on (so a
    loop-invariant subexpression is counted once per point of its own variables, i.e.
    hoisted); a reduction counts one op per point of the Einsum's whole index space; a sum
    over a product of two tensors that each keep an index of the result (a matrix product)
    counts 2 FLOPs (multiply + add) per point as ``matmul``. Constant subexpressions (such as
    ``causal and ...`` with ``causal`` false) are folded away. ``exp``, ``log``, ``sigmoid``,
    ``softplus``, ``elu1``, ``sqrt``, ``tanh``, ``silu``, ``gelu`` and ``x ** y`` with a
    varying exponent are class ``exp`` (the special-function unit's work); everything else is
    ``other``.
    """
    from cascades.ir import (Access, Binary, Bool, Call, Name, Num, Str, Unary, index_vars)
    from iosim.mapping import cascade_facts
    flag = cascade_facts(cascade).causal_param or "causal"
    params = {p.name: p.default for p in cascade.params}
    ranks = set(cascade.info.ranks)
    var_rank = cascade.info.var_rank
    out: list[OpTerm] = []

    def ev(x):
        """-> (const, value, vars, ops)"""
        if isinstance(x, (Num, Bool, Str)):
            return True, getattr(x, "value", None), frozenset(), []
        if isinstance(x, Name):
            if x.name == flag:
                return True, bool(causal), frozenset(), []
            if x.name in params:
                d = params[x.name]
                return True, (d.value if isinstance(d, (Bool, Num)) else None), frozenset(), []
            if x.name in ranks:
                return True, None, frozenset(), []
            return False, None, frozenset({x.name}), []
        if isinstance(x, Access):
            vs = frozenset(v for ix in x.indices for v in index_vars(ix))
            return False, None, vs, []
        if isinstance(x, Unary):
            c, v, vs, ops = ev(x.operand)
            if c:
                return True, (not v if x.op == "not" and v is not None else None), vs, ops
            return False, None, vs, ops + [("other", vs)]
        if isinstance(x, Binary):
            lc, lv, lvs, lops = ev(x.left)
            if x.op == "and" and lc and lv is False:
                return True, False, frozenset(), []
            if x.op == "or" and lc and lv is True:
                return True, True, frozenset(), []
            rc, rv, rvs, rops = ev(x.right)
            if x.op == "and" and rc and rv is False:
                return True, False, frozenset(), []
            if x.op == "or" and rc and rv is True:
                return True, True, frozenset(), []
            if lc and rc:
                return True, None, frozenset(), []
            vs = lvs | rvs
            cls = "exp" if (x.op == "**" and not rc) else "other"
            return False, None, vs, lops + rops + [(cls, vs)]
        if isinstance(x, Call):
            func = x.func
            if func in params and isinstance(params[func], Str):
                func = params[func].value
            if func == "where":
                cc, cv, cvs, cops = ev(x.args[0])
                if cc and cv is not None:
                    return ev(x.args[1] if cv else x.args[2])
                parts = [ev(a) for a in x.args]
                vs = frozenset().union(*(p[2] for p in parts))
                ops = [o for p in parts for o in p[3]]
                if all(p[0] for p in parts):
                    return True, None, frozenset(), []
                return False, None, vs, ops + [("other", vs)]
            parts = [ev(a) for a in x.args]
            if all(p[0] for p in parts):
                return True, None, frozenset(), []
            vs = frozenset().union(*(p[2] for p in parts))
            ops = [o for p in parts for o in p[3]]
            if func == "identity":
                return False, None, vs, ops
            cls = "exp" if func in _EXP_FUNCS else "other"
            return False, None, vs, ops + [(cls, vs)]
        raise TypeError(f"unknown expression node {type(x).__name__}")  # pragma: no cover

    def product_factors(x):
        if isinstance(x, Binary) and x.op == "*":
            return product_factors(x.left) + product_factors(x.right)
        return [x]

    for e in cascade.einsums:
        if e.is_init:
            continue
        lhs_vars = frozenset(v for ix in e.lhs.indices for v in index_vars(ix))
        full = frozenset(e.index_space())
        if e.reduction is not None and e.reduction.op == "sum":
            facs = product_factors(e.expr)
            accs = [f for f in facs if isinstance(f, Access)]
            red = frozenset(e.reduction.vars)
            mm = None
            for ai in range(len(accs)):
                for bi in range(ai + 1, len(accs)):
                    va = frozenset(v for ix in accs[ai].indices for v in index_vars(ix))
                    vb = frozenset(v for ix in accs[bi].indices for v in index_vars(ix))
                    if red <= (va & vb) and ((va - vb) & lhs_vars) and ((vb - va) & lhs_vars):
                        mm = (ai, bi)
                        break
                if mm:
                    break
            if mm is not None and len(facs) >= 2:
                ops = []
                nonconst = 0
                for f in facs:
                    c, _, vs, fops = ev(f)
                    ops += fops
                    nonconst += (not c)
                for cls, vs in ops:
                    out.append(OpTerm(cls, 1.0, vs, e.tensor))
                if nonconst > 2:
                    out.append(OpTerm("other", float(nonconst - 2), full, e.tensor))
                elif len(facs) > nonconst:   # a constant factor folded into the product
                    out.append(OpTerm("other", 1.0, full, e.tensor))
                out.append(OpTerm("matmul", 2.0, full, e.tensor))
                continue
        c, _, vs, ops = ev(e.expr)
        for cls, ovs in ops:
            out.append(OpTerm(cls, 1.0, ovs, e.tensor))
        if e.reduction is not None and not c:
            out.append(OpTerm("other", 1.0, full, e.tensor))
    _ = var_rank
    return tuple(out)


def _var_extent_factors(cascade, nest: LoopNest, vs: frozenset) -> tuple:
    """Factor keys whose product is the number of points of the variables ``vs``."""
    from iosim.mapping import cascade_facts
    info = cascade.info
    alias = cascade_facts(cascade).rank_alias
    out = []
    done = set()
    for v in sorted(vs):
        if v in done:
            continue
        r = info.var_rank[v]
        part = info.part_parent.get(r)
        if part is None:
            out.append(("ext", alias.get(r, r)))
            continue
        outer_v, inner_v = part.outer.lower(), part.inner.lower()
        split = nest.splits_keys and part.rank == "M"
        if outer_v in vs and inner_v in vs:
            out.append(("ext", part.rank))
            done |= {outer_v, inner_v}
        elif v == outer_v:
            out.append(("ext", "S") if split else
                       ("trips", part.rank, "block_kv" if part.rank == "M" else "block_q"))
        else:
            out.append(("chunk",) if split else
                       ("tile", part.rank, "block_kv" if part.rank == "M" else "block_q"))
    return tuple(out)


def _pair_kind(cascade, vs: frozenset) -> str | None:
    """'elem' if ``vs`` spans query rows and keys, 'block' if rows and key tiles, else None."""
    info = cascade.info
    has_p = has_m_el = has_m_blk = False
    for v in vs:
        r = info.var_rank[v]
        part = info.part_parent.get(r)
        base = part.rank if part is not None else r
        if base == "P":
            has_p = True
        elif base == "M":
            if part is None or r == part.inner:
                has_m_el = True
            else:
                has_m_blk = True
    if not has_p:
        return None
    if has_m_el:
        return "elem"
    if has_m_blk:
        return "block"
    return None


# ======================================================================================
# numeric evaluation
# ======================================================================================


def _as_int_array(x, what: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype == bool:
        raise IosimError(f"{what} must be a positive integer, got {x!r}")
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise IosimError(f"{what} must be a positive integer, got {x!r}")
        a = a.astype(np.int64)
    elif a.dtype.kind not in "iu":
        try:
            a = a.astype(np.int64)
        except (TypeError, ValueError):
            raise IosimError(f"{what} must be a positive integer, got {x!r}") from None
    if a.size and np.min(a) < 1:
        raise IosimError(f"{what} must be a positive integer, got {int(np.min(a))}")
    return a.astype(np.int64)


class _Factors:
    """Lazily computed factor arrays for one grid."""

    def __init__(self, sz: dict):
        self.sz = sz
        self.cache: dict = {}
        self._csums = {}

    def csums(self, bP: str, bM: str, rows: str = "P"):
        """Causal block sums; with ``rows="R"`` for packed rows of ``G`` query heads: row
        ``r`` is query ``r // G``, so a tile of rows ends at query ``floor(last row / G)``:
        the sums of ``G·P`` rows against ``G·M`` keys in tiles of ``G·block_kv`` at offset
        ``G·off``, key counts divided by ``G`` (exact: every key count is a multiple of G)."""
        key = (bP, bM, rows)
        if key not in self._csums:
            s = self.sz
            lo = s.get("lo")
            band = lo is not None and np.any(np.asarray(lo) > NO_LOWER_EDGE)
            if rows == "R":
                G = s["G"]
                sums = causal_sums(s["R"], s["M"] * G, s[bP], s[bM] * G, s["off"] * G)
                if band:   # the lower edge in the same scaled space (exact up to the group)
                    low = band_lower_sums(s["R"], s["M"] * G, s[bP], s[bM] * G,
                                          np.where(lo > NO_LOWER_EDGE, lo * G, lo))
                    sums = tuple(x - y for x, y in zip(sums, low))
                S00, S10, S01, S11 = sums
                self._csums[key] = (S00, S10, S01 // G, S11 // G)
            else:
                sums = causal_sums(s["P"], s["M"], s[bP], s[bM], s["off"])
                if band:
                    low = band_lower_sums(s["P"], s["M"], s[bP], s[bM], lo)
                    sums = tuple(x - y for x, y in zip(sums, low))
                self._csums[key] = sums
        return self._csums[key]

    def get(self, f: tuple) -> np.ndarray:
        if f in self.cache:
            return self.cache[f]
        s = self.sz
        kind = f[0]
        if kind == "ext":
            v = s[f[1]]
        elif kind == "trips":
            v = _cdiv(s[f[1]], s[f[2]])
        elif kind == "tile":
            v = np.minimum(s[f[2]], s[f[1]])
        elif kind == "stages":
            v = f[1] if len(f) > 1 else s["stages"]
        elif kind == "density":
            v = s["density"]
            self.cache[f] = v
            return v
        elif kind == "chunk":
            v = _cdiv(s["M"], s["S"])
        elif kind == "causal":
            _, bP, bM, ui, uj = f[:5]
            rows = f[5] if len(f) > 5 else "P"
            full = ((s[rows] if ui else _cdiv(s[rows], s[bP]))
                    * (s["M"] if uj else _cdiv(s["M"], s[bM])))
            if np.any(s["causal"]):
                S00, S10, S01, S11 = self.csums(bP, bM, rows)
                pick = {(False, False): S00, (True, False): S10,
                        (False, True): S01, (True, True): S11}[(ui, uj)]
                v = np.where(s["causal"], pick, full)
            else:
                v = full
        else:  # pragma: no cover
            raise KeyError(f)
        v = np.asarray(v, dtype=np.int64)
        self.cache[f] = v
        return v

    def product(self, factors: tuple) -> np.ndarray:
        out = np.ones_like(self.sz["P"], dtype=np.int64)
        for f in factors:
            out = out * self.get(f)
        return out


def passthrough_backing(reads: dict, writes: dict, context: dict) -> tuple:
    """Default backing-store model: HBM sees exactly the SRAM-level model's traffic.

    A pluggable function ``(reads, writes, context) -> (reads, writes)``: per-tensor element
    arrays (per head) in, per-tensor element arrays out. ``context`` holds ``sizes`` (the
    grid's arrays), ``hardware``, ``nest`` and ``dtype``. An L2 model replaces this.
    """
    return reads, writes


def _level_roles(hw, mapping: Mapping):
    levels = list(hw.levels)
    sram = hw.innermost_sram
    si = levels.index(sram)
    if si == 0:
        raise IosimError(f"hardware '{hw.name}': the SRAM level cannot be the backing store")
    mid = levels[1:si]
    inner = levels[si + 1:]
    if mapping.acc_level is not None:
        acc = hw.level(mapping.acc_level)
    else:
        acc = next((lv for lv in inner if lv.name.upper() in ("RF", "REG", "REGISTERS")), sram)
    return levels[0], mid, sram, inner, acc


def _dtype_bytes_roles(dtype: str, mapping: Mapping, separate_acc: bool = False) -> dict:
    """Bytes per element of each dtype role. Accumulators default to fp32 when they live at
    their own level (registers on a GPU), else to the input dtype (the theory's elements)."""
    from iosim.hardware import dtype_bytes
    acc = mapping.acc_dtype or ("fp32" if separate_acc else dtype)
    return {"data": dtype_bytes(dtype), "stat": dtype_bytes(mapping.stat_dtype),
            "mask": 1.0, "acc": dtype_bytes(acc)}


def _load_cascade(cascade):
    """A cascade by name, path or object, with its ranks named by role (P, M, E, F)."""
    from cascades.roles import canonical
    if isinstance(cascade, str):
        from cascades.library import load
        cascade = load(cascade)
    return canonical(cascade)


def _resolve_mapping(mapping, cascade) -> Mapping:
    if isinstance(mapping, Mapping):
        return mapping
    from iosim.mapping import mapping_for
    return mapping_for(cascade, mapping)   # the cascade's default, its block parameters


def _broadcast(values: dict, product: bool) -> dict:
    arrs = {k: np.asarray(v) for k, v in values.items()}
    if product:
        vary = [k for k, a in arrs.items() if a.ndim > 0 and a.size != 1]
        for k, a in arrs.items():
            if a.ndim > 1:
                raise IosimError(f"{k}: expected a scalar or a 1-D list, got shape {a.shape}")
        if vary:
            grids = np.meshgrid(*[arrs[k] for k in vary], indexing="ij")
            size = grids[0].size
            out = {k: np.full(size, a.reshape(-1)[0]) if a.size == 1 else None
                   for k, a in arrs.items()}
            for k, g in zip(vary, grids):
                out[k] = g.ravel()
            return out
        return {k: a.reshape(-1)[:1] for k, a in arrs.items()}
    try:
        b = np.broadcast_arrays(*arrs.values())
    except ValueError as e:
        raise IosimError(f"grid arrays do not broadcast together: {e}") from None
    return {k: v.ravel() for k, v in zip(arrs, b)}


def evaluate_arrays(cascade, mapping, hardware, *, n, d=None, e=None, f=None, kv_len=None,
                    batch=1, heads=1, group=1, kv_heads=None, dtype: str = "bf16", causal=False,
                    causal_offset=None, block_q=None, block_kv=None, block_e=None,
                    block_f=None, split_kv=None, sram_bytes=None, product: bool = True,
                    backing_model: Callable | None = None, check: bool = False,
                    l2: str = "auto", block_density=1.0) -> dict:
    """The engine behind :func:`evaluate_grid` and :func:`evaluate`: a dict of arrays.

    ``l2``: the GPU L2 model behind the backing store when no ``backing_model`` is given --
    ``"auto"`` (the analytical model of :mod:`iosim.l2.analytic` where the preset has an L2
    and the nest re-reads tensors across programs) or ``"off"`` (HBM sees every L2 read).

    Keys: ``sizes`` (the grid), ``model_reads``/``model_writes`` (per-tensor elements per
    head at the SRAM boundary), ``backing_reads``/``backing_writes`` (after the backing
    model), ``levels`` (per level read/write bytes, all heads), ``flops`` (per class, all
    heads), ``times`` and more; see the code of :func:`evaluate_grid` for how they become
    columns.

    Heads: ``heads`` query heads and ``kv_heads`` K/V heads per batch (``group`` = their
    ratio, derived); without ``kv_heads``, ``heads`` K/V heads of ``group`` query heads
    each. Per-tensor counts are per (batch, K/V head) — one K/V head with its ``group``
    query heads; totals multiply by ``batch * kv_heads``.
    """
    from iosim.hardware import dtype_bytes, load_hardware
    c = _load_cascade(cascade)
    m = _resolve_mapping(mapping, c)
    hw = load_hardware(hardware) if isinstance(hardware, str) else hardware
    dtype_bytes(dtype)
    if backing_model is None and l2 != "off":
        from iosim.l2.backing import grid_backing
        backing_model = grid_backing(c, m, hw, dtype=dtype, mode=l2)
    pols = m.preset.row_policies
    if pols and m.row_policy == "auto":   # the first row policy whose tiles fit, else the next
        kw = dict(n=n, d=d, e=e, f=f, kv_len=kv_len, batch=batch, heads=heads, group=group,
                  kv_heads=kv_heads, dtype=dtype, causal=causal, causal_offset=causal_offset, block_q=block_q,
                  block_kv=block_kv, block_e=block_e, block_f=block_f, split_kv=split_kv,
                  sram_bytes=sram_bytes, product=product, backing_model=backing_model,
                  block_density=block_density)
        rb = evaluate_arrays(c, m.with_(row_policy=pols[0]), hw, **kw)
        rb["row_policy"] = np.full(rb["fits"].shape, pols[0], dtype=object)
        if rb["fits"].all():
            return rb
        rs = evaluate_arrays(c, m.with_(row_policy=pols[1]), hw, **kw)
        rs["row_policy"] = np.full(rs["fits"].shape, pols[1], dtype=object)
        if not rb["fits"].any():
            return rs
        return _merge(rb["fits"].copy(), rb, rs)
    if d is not None and e is None:
        e = d
    if e is None:
        raise IosimError("give the head dimension (d or e)")
    vals = dict(n=n, e=e, f=-1 if f is None else f, kv_len=-1 if kv_len is None else kv_len,
                batch=batch, heads=heads, group=group,
                kv_heads=-1 if kv_heads is None else kv_heads, causal=causal,
                block_q=m.block_q if block_q is None else block_q,
                block_kv=m.block_kv if block_kv is None else block_kv,
                split_kv=m.split_kv if split_kv is None else split_kv)
    base, mid, sram, inner, acc_lv = _level_roles(hw, m)
    vals["sram_bytes"] = sram.usable_bytes if sram_bytes is None else sram_bytes
    vals["causal_offset"] = 0 if causal_offset is None else causal_offset
    if block_e is not None:
        vals["block_e"] = block_e
    if block_f is not None:
        vals["block_f"] = block_f
    derived = {k: vals[k] is None for k in ("block_q", "block_kv")}
    for k in ("block_q", "block_kv"):
        if vals[k] is None:
            vals[k] = 1  # placeholder, derived below
    g = _broadcast(vals, product)
    # defaults tied to another axis (not axes of their own)
    if f is None:
        g["f"] = g["e"]
    if kv_len is None:
        g["kv_len"] = g["n"]
    sz: dict = {}
    for key, label in (("n", "seq-len"), ("e", "head-dim"), ("f", "head-dim f"),
                       ("kv_len", "kv-len"), ("batch", "batch"), ("heads", "heads"),
                       ("group", "group"), ("block_q", "block_q"), ("block_kv", "block_kv"),
                       ("split_kv", "split_kv")):
        sz[key] = _as_int_array(g[key], label)
    if kv_heads is None:   # heads are K/V heads of `group` query heads each
        sz["kv_heads"] = sz["heads"]
        sz["heads"] = sz["heads"] * sz["group"]
    else:
        sz["kv_heads"] = _as_int_array(g["kv_heads"], "kv-heads")
        bad = sz["heads"] % sz["kv_heads"] != 0
        if np.any(bad):
            k = int(np.argmax(bad))
            raise IosimError(f"heads ({int(sz['heads'][k])}) must be a multiple of kv-heads "
                             f"({int(sz['kv_heads'][k])}): each K/V head serves the same "
                             f"number of query heads")
        sz["group"] = sz["heads"] // sz["kv_heads"]
    sram_b = np.asarray(g["sram_bytes"], dtype=float)
    if np.any(~(sram_b > 0)):
        raise IosimError("SRAM size must be positive")
    causal_a = np.asarray(g["causal"]).astype(bool)
    nest = loop_nest(m, c, grouped=bool(np.any(sz["group"] > 1)))
    roles = _dtype_bytes_roles(dtype, m, separate_acc=acc_lv is not sram)
    sram_el = sram_b / dtype_bytes(dtype)
    # paper rules for derived block sizes
    pre = m.preset
    rule = pre.tile_rule
    if rule is not None and (derived["block_q"] or derived["block_kv"]):
        bq_r, bk_r = rule.arrays(sram_el, sz["e"])
        if derived["block_kv"] or rule.both:
            sz["block_kv"] = bk_r
        if derived["block_q"] or rule.both:
            sz["block_q"] = bq_r
    if pre.head_tiles:   # the head dims tiled too (default: the query tile, or whole)
        dq = pre.head_tiles == "block_q"
        be = _as_int_array(g["block_e"], "block_e") if "block_e" in g else (
            (sz["block_q"] if dq else sz["e"]) if m.block_e is None
            else np.full_like(sz["block_q"], m.block_e))
        bf = _as_int_array(g["block_f"], "block_f") if "block_f" in g else (
            (sz["block_q"] if dq else sz["f"]) if m.block_f is None
            else np.full_like(sz["block_q"], m.block_f))
    else:
        be, bf = sz["e"], sz["f"]
    if pre.tiles == "tied":
        sz["block_kv"] = sz["block_q"]
    if pre.self_only and np.any(sz["kv_len"] != sz["n"]):
        raise IosimError(f"{m.kind} is causal self-attention: kv-len must equal seq-len")
    # the diagonal of the cascade's own mask: m > p, or m > p + M - P (aligned to the end)
    if nest.causal_offset_default == "end":
        default_off = sz["kv_len"] - sz["n"]
    else:
        default_off = np.zeros_like(sz["n"])
    off = default_off if causal_offset is None else np.asarray(g["causal_offset"], dtype=np.int64)
    lo = _band_lower(c, sz)
    Tc = _cdiv(sz["kv_len"], sz["block_kv"])
    tps = _cdiv(Tc, sz["split_kv"])
    n_s = _cdiv(Tc, tps)
    S = {"P": sz["n"], "M": sz["kv_len"], "E": sz["e"], "F": sz["f"], "G": sz["group"],
         "R": sz["n"] * sz["group"],
         "S": n_s, "Mt": Tc, "Pt": _cdiv(sz["n"], sz["block_q"]),
         "block_q": sz["block_q"], "block_kv": sz["block_kv"],
         "block_e": np.asarray(be, dtype=np.int64), "block_f": np.asarray(bf, dtype=np.int64),
         "block_rows": np.full_like(sz["n"], m.softmax_rows), "one": np.ones_like(sz["n"]),
         "off": np.asarray(off, dtype=np.int64), "lo": lo, "causal": causal_a,
         "density": _density(c, block_density, sz["n"].shape),
         "stages": np.full_like(sz["n"], m.num_stages)}
    for k in list(S):
        if k not in ("causal", "density"):
            S[k] = np.broadcast_to(np.asarray(S[k]), sz["n"].shape)
    S["causal"] = np.broadcast_to(causal_a, sz["n"].shape)
    F = _Factors(S)
    comp = compile_nest(nest)
    # ---- traffic at the SRAM boundary (per head, elements)
    reads: dict = {}
    writes: dict = {}
    for t in comp.terms:
        target = reads if t.direction == "read" else writes
        v = F.product(t.factors)
        target[t.tensor] = target[t.tensor] + v if t.tensor in target else v
    # one nest instance per (batch, K/V head); its query heads are G rows of it
    heads_total = (sz["batch"] * sz["kv_heads"]).astype(float)
    ctx = {"sizes": S, "hardware": hw, "nest": nest, "dtype": dtype,
           "heads_total": heads_total,
           "query_heads_total": (sz["batch"] * sz["heads"]).astype(float)}
    b_reads, b_writes = (backing_model or passthrough_backing)(reads, writes, ctx)
    rb = lambda t: roles[nest.dtype_role(t)]  # noqa: E731

    def tot_bytes(dct):
        out = np.zeros(sz["n"].shape)
        for t, v in dct.items():
            out = out + v * rb(t)
        return out * heads_total

    levels = {}
    model_r, model_w = tot_bytes(reads), tot_bytes(writes)
    levels[base.name] = (tot_bytes(b_reads), tot_bytes(b_writes))
    for lv in mid:
        levels[lv.name] = (model_r, model_w)
    levels[sram.name] = (model_r, model_r.copy())
    # ---- on-chip footprint (bytes, one program)
    need = {"sram": np.zeros(sz["n"].shape), "acc": np.zeros(sz["n"].shape)}
    for _, bufs in comp.points:
        tot = {"sram": 0.0, "acc": 0.0}
        for b in bufs:
            lvl = "acc" if (b.level == "acc" and acc_lv is not sram) else "sram"
            tot[lvl] = tot[lvl] + F.product(b.factors) * roles[b.dtype_role]
        for k in need:
            need[k] = np.maximum(need[k], tot[k])
    cap_sram = sram_b if sram_bytes is not None else np.full(sz["n"].shape, sram.usable_bytes)
    if acc_lv is sram:
        foot = {sram.name: (need["sram"], cap_sram)}
    else:
        foot = {sram.name: (need["sram"], cap_sram),
                acc_lv.name: (need["acc"], np.full(sz["n"].shape, acc_lv.usable_bytes))}
    fits = np.ones(sz["n"].shape, dtype=bool)
    for nd_, cap in foot.values():
        fits &= nd_ <= cap
    # ---- FLOPs
    flops = _flops(c, nest, S, F, causal_a, heads_total, m)
    # ---- time and energy
    times = {}
    for lv in [base] + mid + [sram]:
        r, w = levels[lv.name]
        times[lv.name] = r / lv.read_bandwidth + w / lv.write_bandwidth
    rates = _rates(hw, dtype)
    for cls in OP_CLASSES:
        rate = rates[cls]
        times[cls] = flops[cls] / rate if rate else np.where(flops[cls] > 0, np.inf, 0.0)
    names = list(times)
    stack = np.stack([np.asarray(times[k], dtype=float) for k in names])
    time_s = stack.max(axis=0)
    limiter = np.asarray(names, dtype=object)[stack.argmax(axis=0)]
    energy = None
    have_e = [lv for lv in [base] + mid + [sram]
              if lv.read_energy_pj_per_byte is not None or lv.write_energy_pj_per_byte is not None]
    if have_e:
        energy = np.zeros(sz["n"].shape)
        for lv in have_e:
            r, w = levels[lv.name]
            energy = energy + (r * (lv.read_energy_pj_per_byte or 0.0)
                               + w * (lv.write_energy_pj_per_byte or 0.0)) * 1e-12
    out = {"cascade": c, "mapping": m, "hardware": hw, "nest": nest, "compiled": comp,
            "dtype": dtype,
            "sizes": S, "grid": sz, "sram_bytes": cap_sram, "sram_elements": sram_el,
            "model_reads": reads, "model_writes": writes, "backing_reads": b_reads,
            "backing_writes": b_writes, "levels": levels, "level_roles": {
                "backing": base.name, "mid": [lv.name for lv in mid], "sram": sram.name,
                "unmodelled": [lv.name for lv in inner], "acc": acc_lv.name},
            "footprint": foot, "fits": fits, "flops": flops, "times": times,
            "time_s": time_s, "limiter": limiter, "energy_j": energy,
            "heads_total": heads_total, "dtype_roles": roles, "derived_blocks": derived}
    out["roofline_s"] = time_s
    out["roofline_limiter"] = limiter
    from iosim.timing import time_arrays
    tm = time_arrays(out)
    if tm is not None:   # the parallel machine's execution time replaces the roofline
        out["time"] = tm
        out["time_s"] = tm["time_s"]
    fast = getattr(backing_model, "fast_memory_bytes", None)
    if fast is not None:  # the backing model reuses data in a larger fast memory (an L2)
        out["bound_fast_elements"] = np.full(np.shape(sram_el), fast / dtype_bytes(dtype))
    return out


def _density(c, rho, shape) -> np.ndarray:
    """The block density as an array; refused for a cascade without a block mask (unless 1)."""
    a = np.asarray(rho, dtype=float)
    if np.any(~((a > 0) & (a <= 1))):
        raise IosimError(f"block-density must be a fraction in (0, 1], got "
                         f"{a.reshape(-1)[np.argmax(~((a > 0) & (a <= 1)).reshape(-1))]!r}")
    if np.any(a < 1):
        from iosim.mapping import cascade_facts
        region = cascade_facts(c).mask
        if region is None or region.kind != "block":
            raise IosimError(f"cascade '{c.name}' has no block mask (a boolean input over query "
                             f"and key tiles): a block density applies to block-sparse cascades")
    return np.broadcast_to(a, shape)


def _band_lower(c, sz: dict) -> np.ndarray:
    """The lower edge of the cascade's mask band (a sliding window: query ``p`` sees no key
    ``m < p + lo``) for every configuration, from the mask region read from the cascade and its
    parameters' defaults; :data:`NO_LOWER_EDGE` where it has none."""
    from cascades.ir import Num
    from iosim.mapping import cascade_facts
    region = cascade_facts(c).mask
    shape = sz["n"].shape
    if region is None or getattr(region, "lower", None) is None:
        return np.full(shape, NO_LOWER_EDGE, dtype=np.int64)
    params = {}
    for p in c.params:
        if isinstance(p.default, Num):
            params[p.name] = float(p.default.value)
    try:
        v = region.lower.value({"P": sz["n"], "M": sz["kv_len"], "E": sz["e"], "F": sz["f"]},
                               params)
    except KeyError as e:
        raise IosimError(f"cascade '{c.name}': the lower edge of its mask band needs "
                         f"{e.args[0]}, which has no numeric default") from None
    return np.broadcast_to(np.ceil(np.asarray(v, dtype=float)).astype(np.int64), shape).copy()


def _merge(mask: np.ndarray, a, b):
    """Row-wise choice between two evaluation results (``a`` where ``mask``)."""
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == mask.shape:
        return np.where(mask, a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        out = {}
        for k in list(a) + [k for k in b if k not in a]:
            if k in a and k in b:
                out[k] = _merge(mask, a[k], b[k])
            else:
                v = a.get(k, b.get(k))
                if isinstance(v, np.ndarray) and v.shape == mask.shape:
                    z = np.zeros_like(v)
                    out[k] = np.where(mask, a.get(k, z), b.get(k, z))
                else:
                    out[k] = v
        return out
    if isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b):
        return tuple(_merge(mask, x, y) for x, y in zip(a, b))
    return a


def _rates(hw, dtype: str) -> dict:
    """Peak rate (op/s) of each op class for ``dtype``; a rate the hardware lacks is an error.

    * ``matmul``: the matrix unit's rate for ``dtype`` (no fallback: a dtype the tensor cores
      do not take, such as fp32 or int4 on an H100, is refused with the rates it does have);
    * ``exp``: the special-function unit's rate for ``dtype``, else its fp32 rate (GPUs
      evaluate the exp of low-precision inputs in fp32);
    * ``other``: the vector unit's fp32 rate, else its rate for ``dtype``.

    Every message names the dtype and the hardware; no class is left without a rate, so a
    predicted time is never infinite.
    """
    out = {"matmul": hw.matrix_rate(dtype), "exp": hw.exp_rate(dtype)}
    try:
        out["other"] = hw.vector_rate("fp32")
    except IosimError:
        out["other"] = hw.vector_rate(dtype)
    return out


@lru_cache(maxsize=128)
def _op_terms_cached(cascade, causal: bool):
    return cascade_op_terms(cascade, causal)


def _flops(c, nest, S, F: _Factors, causal_a, heads_total, m: Mapping) -> dict:
    """FLOPs of every Einsum of the cascade (all heads). A cascade without a group rank
    counts one query head per point, so the ``G`` query heads of one K/V head multiply it;
    with causal skipping, pair terms scale with the visited fraction of (row, key) pairs
    (rows of packed query heads where FA2 packs them)."""
    from iosim.mapping import cascade_facts
    facts = cascade_facts(c)
    out = {cls: np.zeros(S["P"].shape) for cls in OP_CLASSES}
    has_causal_param = facts.causal_param is not None
    variants = [False, True] if (has_causal_param and np.any(causal_a)) else [False]
    rows = nest.rows
    sparse = any(isinstance(nd, Loop) and nd.sparse for _, nd, _ in nest.walk())
    for cz in variants:
        terms = _op_terms_cached(c, cz)
        acc = {cls: np.zeros(S["P"].shape) for cls in OP_CLASSES}
        for t in terms:
            pts = F.product(_var_extent_factors(c, nest, t.vars)).astype(float)
            if cz and nest.skips_causal:
                kind = _pair_kind(c, t.vars)
                if kind == "elem":
                    _, _, _, S11 = F.csums("block_q", "block_kv", rows)
                    pts = pts * (S11 / (S[rows] * S["M"]))
                elif kind == "block":
                    _, S10, _, _ = F.csums("block_q", "block_kv", rows)
                    pts = pts * (S10 / (S[rows] * _cdiv(S["M"], S["block_kv"])))
            if sparse and _pair_kind(c, t.vars) in ("elem", "block"):
                pts = pts * S["density"]
            rep = nest.recompute.get(t.tensor, 1)
            acc[t.cls] = acc[t.cls] + t.count * pts * rep
        mask = causal_a if cz else ~causal_a if len(variants) == 2 else np.ones_like(causal_a)
        for cls in OP_CLASSES:
            out[cls] = np.where(mask, acc[cls], out[cls])
    per_instance = heads_total if facts.has_group else heads_total * S["G"]
    for cls in OP_CLASSES:
        out[cls] = out[cls] * per_instance
    return out


# ======================================================================================
# public wrappers
# ======================================================================================


def evaluate_grid(cascade, mapping=None, hardware="h100", *, n, d=None, e=None, f=None,
                  kv_len=None, batch=1, heads=1, group=1, kv_heads=None, dtype: str = "bf16",
                  causal=False,
                  causal_offset=None, block_q=None, block_kv=None, split_kv=None,
                  sram_bytes=None, product: bool = True, per_tensor: bool = True,
                  backing_model: Callable | None = None, l2: str = "auto"):
    """Evaluate a mapping over a grid of shapes and tile sizes in one vectorised call.

    Every size argument (``n``, ``d``/``e``, ``f``, ``kv_len``, ``batch``, ``heads``,
    ``group``, ``causal``, ``block_q``, ``block_kv``, ``split_kv``, ``sram_bytes``) may be a
    scalar or a 1-D array. ``product=True`` evaluates the cartesian product of the arrays;
    ``product=False`` broadcasts them together (equal lengths). ``block_q``/``block_kv``
    default to the mapping's (for ``fa1``/``saha-ye`` with no block given: the paper's rule
    for the SRAM size). ``sram_bytes`` overrides the SRAM level's capacity (used by the
    capacity check and the paper rules).

    Returns a pandas DataFrame, one row per configuration: the inputs, then
    ``<level>_read_bytes``/``<level>_write_bytes`` for each modelled level, per-tensor
    backing-store columns ``hbm_read_<T>``/``hbm_write_<T>`` (elements per head; with
    ``per_tensor``), ``flops_matmul``/``flops_exp``/``flops_other``, ``time_s``,
    ``limiter``, ``energy_j``, footprint and ``fits``, and the IO lower bound columns.
    """
    import pandas as pd
    r = evaluate_arrays(cascade, mapping, hardware, n=n, d=d, e=e, f=f, kv_len=kv_len,
                        batch=batch, heads=heads, group=group, kv_heads=kv_heads, dtype=dtype,
                        causal=causal, causal_offset=causal_offset, block_q=block_q,
                        block_kv=block_kv, split_kv=split_kv, sram_bytes=sram_bytes, product=product,
                        backing_model=backing_model, l2=l2)
    return arrays_to_frame(r, per_tensor=per_tensor, pd=pd)


def arrays_to_frame(r: dict, *, per_tensor: bool = True, pd=None):
    if pd is None:
        import pandas as pd
    sz = r["grid"]
    S = r["sizes"]
    cols = {"cascade": r["cascade"].name, "mapping": r["mapping"].name,
            "hardware": r["hardware"].name, "dtype": r["dtype"],
            "batch": sz["batch"], "heads": sz["heads"], "n": sz["n"], "kv_len": sz["kv_len"],
            "e": sz["e"], "f": sz["f"], "causal": np.asarray(S["causal"]),
            "block_q": S["block_q"], "block_kv": S["block_kv"], "split_kv": sz["split_kv"],
            "sram_bytes": r["sram_bytes"], "sram_elements": r["sram_elements"]}
    if r["grid"]["group"].max() > 1:
        cols["kv_heads"] = sz["kv_heads"]
        cols["group"] = sz["group"]
    for lv, (rd, wr) in r["levels"].items():
        key = lv.lower()
        cols[f"{key}_read_bytes"] = rd
        cols[f"{key}_write_bytes"] = wr
    b = r["level_roles"]["backing"].lower()
    cols[f"{b}_bytes"] = r["levels"][r["level_roles"]["backing"]][0] + \
        r["levels"][r["level_roles"]["backing"]][1]
    hb_el = sum(r["backing_reads"].values()) + sum(r["backing_writes"].values())
    cols[f"{b}_elements_per_head"] = hb_el
    if per_tensor:
        for t, v in r["backing_reads"].items():
            cols[f"{b}_read_{t}"] = v
        for t, v in r["backing_writes"].items():
            cols[f"{b}_write_{t}"] = v
    for cls in OP_CLASSES:
        cols[f"flops_{cls}"] = r["flops"][cls]
    for k, v in r["times"].items():
        cols[f"time_{k.lower()}_s"] = v
    cols["time_s"] = r["time_s"]
    cols["limiter"] = r["limiter"]
    cols["energy_j"] = r["energy_j"] if r["energy_j"] is not None else np.nan
    for lv, (need, cap) in r["footprint"].items():
        cols[f"footprint_{lv.lower()}_bytes"] = need
    cols["fits"] = r["fits"]
    bnd = bound_arrays(r)
    cols.update(bnd)
    n = len(sz["n"])
    cols = {k: (np.full(n, v) if np.ndim(v) == 0 else v) for k, v in cols.items()}
    return pd.DataFrame(cols)


def attention_bound_applies(mapping: Mapping, cascade) -> bool:
    """Whether the softmax-attention IO lower bound applies to a mapping: its preset says so,
    or, for a user's tree, the cascade is a softmax."""
    flag = mapping.preset.attention_bound
    if flag is None:
        from iosim.mapping import cascade_facts
        return bool(cascade_facts(cascade).softmax)
    return bool(flag)


def bound_arrays(r: dict) -> dict:
    """IO lower-bound columns (elements per head) and the ratio of the backing traffic."""
    from iosim.bounds import attention_lower_envelope
    S = r["sizes"]
    N, K, E, Fd = (np.asarray(S[k], dtype=float) for k in ("P", "M", "E", "F"))
    G = np.asarray(S["G"], dtype=float)
    comp = G * N * E + K * E + K * Fd + G * N * Fd
    hb = sum(r["backing_reads"].values()) + sum(r["backing_writes"].values())
    out = {"bound_compulsory_elements": comp}
    c = r["cascade"]
    softmax_self = (attention_bound_applies(r["nest"].mapping, c)
                    and np.all(N == K) and np.all(E == Fd))
    if softmax_self:
        fast = r.get("bound_fast_elements", r["sram_elements"])  # fast memory above HBM
        env = attention_lower_envelope(N=N, d=E, M=np.maximum(fast, 1.0))
        val = np.maximum(np.asarray(env.value, dtype=float), comp)
        out["bound_envelope_elements"] = np.asarray(env.value, dtype=float)
        out["bound_binding"] = np.where(comp >= np.asarray(env.value), "compulsory",
                                        np.asarray(env.binding))
    else:
        val = comp
        out["bound_envelope_elements"] = comp
        out["bound_binding"] = np.full(len(N), "compulsory", dtype=object)
    out["bound_elements"] = val
    out["ratio_to_bound"] = hb / val
    out["ratio_to_compulsory"] = hb / comp
    _ = c
    return out


def scalar_sizes(r: dict, row: int = 0) -> dict:
    """The size table of one configuration (for printing loop nests)."""
    return {k: (int(np.asarray(v).reshape(-1)[row]) if k != "causal" else
                bool(np.asarray(v).reshape(-1)[row])) for k, v in r["sizes"].items()}


def evaluate(cascade="attention-1pass", mapping=None, hardware="h100", shapes: Shapes | None = None,
             *, check: bool = True, backing_model: Callable | None = None,
             sram_bytes: float | None = None, l2: str = "auto", **shape_kw):
    """Evaluate one configuration and return a :class:`~iosim.report.Report`.

    ``shapes`` or keyword sizes (``n``, ``d``/``e``, ``f``, ``kv_len``, ``batch``, ``heads``,
    ``group``, ``dtype``, ``causal``). With ``check`` (default) tiles that overflow a level
    raise :class:`IosimError` — except block sizes derived by a paper's rule (FA1), which
    are flagged in the report instead.
    """
    from iosim.report import report_from_arrays
    from iosim.hardware import load_hardware
    if shapes is None:
        if "d" in shape_kw and "e" not in shape_kw:
            shape_kw["e"] = shape_kw.pop("d")
        shapes = Shapes(**shape_kw)
    elif shape_kw:
        raise IosimError("give either shapes or keyword sizes, not both")
    c = _load_cascade(cascade)
    m = _resolve_mapping(mapping, c)
    hw = load_hardware(hardware) if isinstance(hardware, str) else hardware
    if backing_model is None and l2 != "off":
        from iosim.l2.backing import backing_for
        backing_model = backing_for(c, m, hw, shapes, l2)
    r = evaluate_arrays(c, m, hw, n=shapes.n, e=shapes.e, f=shapes.f, kv_len=shapes.kv_len,
                        batch=shapes.batch, heads=shapes.heads, kv_heads=shapes.kv_heads,
                        block_density=shapes.block_density,
                        dtype=shapes.dtype, causal=shapes.causal,
                        causal_offset=shapes.causal_offset, sram_bytes=sram_bytes,
                        backing_model=backing_model, l2="off")
    rep = report_from_arrays(r, shapes)
    desc = getattr(backing_model, "description", None)
    if desc:
        rep = replace(rep, backing_description=desc)
    if check and not bool(r["fits"][0]) and not any(r["derived_blocks"].values()):
        check_fits(rep.mapping_resolved, hw, shapes, cascade=c, sram_bytes=sram_bytes)
    return rep


def footprint(mapping: Mapping, hardware, shapes: Shapes, cascade=None,
              sram_bytes: float | None = None) -> dict:
    """On-chip bytes one program needs, per level: ``{level: {"need", "capacity"}}``."""
    from iosim.hardware import load_hardware
    hw = load_hardware(hardware) if isinstance(hardware, str) else hardware
    c = _load_cascade(cascade if cascade is not None else mapping.cascade)
    r = evaluate_arrays(c, mapping, hw, n=shapes.n, e=shapes.e, f=shapes.f,
                        kv_len=shapes.kv_len, batch=1, heads=shapes.group, kv_heads=1,
                        dtype=shapes.dtype, causal=shapes.causal,
                        causal_offset=shapes.causal_offset, sram_bytes=sram_bytes)
    return {lv: {"need": float(need[0]), "capacity": float(cap[0])}
            for lv, (need, cap) in r["footprint"].items()}


def check_fits(mapping, hardware, shapes, cascade=None, sram_bytes=None):
    from iosim.mapping import check_fits as _cf
    return _cf(mapping, hardware, shapes, cascade=cascade, sram_bytes=sram_bytes)


# ======================================================================================
# symbolic closed forms
# ======================================================================================


def symbolic_traffic(mapping, cascade=None, *, causal: bool = False, self_attention: bool = True,
                     equal_head_dims: bool = True, paper_blocks: bool | None = None,
                     grouped: bool | None = None) -> dict:
    """Per-tensor closed forms (elements per head) derived from the same loop nest.

    Returns ``{tensor: {"read": expr, "write": expr}, ..., "total": expr}`` in the symbols of
    :mod:`iosim.bounds` (``N``, ``Nk`` for the key length unless ``self_attention``, ``d``
    for the head dimension unless ``equal_head_dims`` — then ``e``, ``f``), the tile sizes
    ``Br``, ``Bc`` (``B`` for Saha–Ye, ``Be``/``Bf`` for its head-dim tiles), ``splits`` and
    ``M`` (SRAM elements) where a paper rule derives the blocks, ``G`` query heads per K/V
    head for a cascade with a group rank or with ``grouped``. ``ceiling`` is kept exact.
    With ``causal`` the coupled block sums stay as unevaluated ``Sum`` expressions.
    """
    import sympy as sp
    from iosim.bounds import M as Msym, N as Nsym, Nk as Nksym, d as dsym
    m = mapping if isinstance(mapping, Mapping) else get_mapping(mapping)
    c = _load_cascade(cascade if cascade is not None else m.cascade)
    nest = loop_nest(m, c, grouped=grouped)
    comp = compile_nest(nest)
    Br, Bc, B, Be, Bf = sp.symbols("Br Bc B Be Bf", positive=True, integer=True)
    e_s, f_s = (dsym, dsym) if equal_head_dims else sp.symbols("e f", positive=True, integer=True)
    K = Nsym if self_attention else Nksym
    G = sp.Symbol("G", positive=True, integer=True) if (nest.rows == "R" or any(
        "G" in rk for rk, _ in nest.tensors.values())) else sp.Integer(1)
    if paper_blocks is None:
        paper_blocks = m.derived_blocks
    pre = m.preset
    bq, bk, be, bf = Br, Bc, e_s, f_s
    if pre.tiles == "square":
        bq = bk = B
    if pre.tile_rule is not None and paper_blocks:
        bq, bk = pre.tile_rule.symbolic(Msym, dsym)
    if pre.head_tiles:
        dq = pre.head_tiles == "block_q"
        be = (bq if dq else e_s) if m.block_e is None else Be
        bf = (bq if dq else f_s) if m.block_f is None else Bf
    if pre.tiles == "tied":
        bk = bq
    Tc = sp.ceiling(K / bk)
    splits = sp.Symbol("splits", positive=True, integer=True)
    tps = sp.ceiling(Tc / splits)
    n_s = sp.ceiling(Tc / tps)
    S = {"P": Nsym, "M": K, "E": e_s, "F": f_s, "G": G, "R": Nsym * G, "S": n_s, "Mt": Tc,
         "Pt": sp.ceiling(Nsym / bq),
         "block_q": bq, "block_kv": bk, "block_e": be, "block_f": bf,
         "block_rows": sp.Integer(m.softmax_rows), "one": sp.Integer(1)}
    i = sp.Symbol("i", integer=True, nonnegative=True)

    def causal_sum(bP, bM, ui, uj, rows="P"):
        P_, M_ = S[rows], S["M"]
        bp, bm = S[bP], S[bM]
        Tr_, Tc_ = sp.ceiling(P_ / bp), sp.ceiling(M_ / bm)
        p_last = sp.Min((i + 1) * bp, P_) - 1
        if rows == "R":   # packed rows: row r is query floor(r / G)
            p_last = sp.Min(sp.floor(((i + 1) * bp - 1) / G), Nsym - 1)
        nb = sp.Min(sp.Max(sp.floor(p_last / bm) + 1, 0), Tc_)
        rows = sp.Min(bp, P_ - i * bp)
        w = (rows if ui else 1) * (sp.Min(nb * bm, M_) if uj else nb)
        return sp.Sum(w, (i, 0, Tr_ - 1))

    def fac(f):
        k = f[0]
        if k == "ext":
            return S[f[1]]
        if k == "trips":
            return sp.ceiling(S[f[1]] / S[f[2]])
        if k == "causal":
            _, bP, bM, ui, uj = f[:5]
            rows = f[5] if len(f) > 5 else "P"
            if causal:
                return causal_sum(bP, bM, ui, uj, rows)
            return ((S[rows] if ui else sp.ceiling(S[rows] / S[bP]))
                    * (S["M"] if uj else sp.ceiling(S["M"] / S[bM])))
        raise KeyError(f)  # pragma: no cover

    out: dict = {}
    total = sp.Integer(0)
    for t in comp.terms:
        expr = sp.Integer(1)
        for f in t.factors:
            expr = expr * fac(f)
        d_ = out.setdefault(t.tensor, {"read": sp.Integer(0), "write": sp.Integer(0)})
        d_[t.direction] = d_[t.direction] + expr
        total = total + expr
    out["total"] = total
    return out


# ======================================================================================
# scalar counts of one nest (spatial accelerators)
# ======================================================================================


def nest_terms(nest: LoopNest) -> tuple:
    """The load/store :class:`Term` s of a nest, as :func:`compile_nest` makes them, with a
    ``("part", name)`` factor on :class:`~iosim.mapping.PartialLoad`/``PartialStore`` (the
    fraction of each tile that moves)."""
    terms = []
    for ph, nd, encl in nest.walk():
        if isinstance(nd, (Load, Store)):
            direction = "read" if isinstance(nd, Load) else "write"
            f = _event_factors(nd.dims, encl, f"{direction} {nd.tensor}")
            if isinstance(nd, (PartialLoad, PartialStore)):
                f = tuple(sorted(f + (("part", nd.part),), key=repr))
            terms.append(Term(nd.tensor, direction, ph.name, f))
    return tuple(terms)


def _scalar_factor(f: tuple, sizes: dict) -> float:
    kind = f[0]
    if kind == "ext":
        return sizes[f[1]]
    if kind == "trips":
        return math.ceil(sizes[f[1]] / sizes[f[2]])
    if kind == "tile":
        return min(sizes[f[2]], sizes[f[1]])
    if kind == "part":
        return sizes[f[1]]
    if kind == "stages":
        return f[1] if len(f) > 1 else sizes.get("stages", 1)
    if kind == "chunk":
        return math.ceil(sizes["M"] / sizes["S"])
    if kind == "causal":
        _, bP, bM, ui, uj = f
        if sizes.get("causal"):
            raise IosimError("nest_traffic counts dense nests; causal block skipping needs "
                             "evaluate_arrays")
        return ((sizes["P"] if ui else math.ceil(sizes["P"] / sizes[bP]))
                * (sizes["M"] if uj else math.ceil(sizes["M"] / sizes[bM])))
    raise KeyError(f)  # pragma: no cover


def count_terms(terms, sizes: dict) -> tuple[dict, dict]:
    """Per-tensor elements ``(reads, writes)`` of compiled terms for one size table.

    Scalar counterpart of the grid evaluation: sizes may be fractional (a spilled fraction,
    ``("part", name)``); a missing size is a one-line error."""
    reads: dict = {}
    writes: dict = {}
    for t in terms:
        v = 1.0
        try:
            for f in t.factors:
                v *= _scalar_factor(f, sizes)
        except KeyError as e:
            raise IosimError(f"nest_traffic: no size for {e.args[0]!r} (tensor {t.tensor})") from None
        d = reads if t.direction == "read" else writes
        d[t.tensor] = d.get(t.tensor, 0.0) + v
    return reads, writes


def nest_traffic(nest: LoopNest, sizes: dict) -> tuple[dict, dict]:
    """Elements each tensor moves between the backing store and chip in one instance of
    ``nest`` (one batch x head): ``(reads, writes)``, per tensor.

    ``sizes`` maps rank names (``P``, ``M``, ``E``, ``F``, ...) to extents and block names
    (``block_q``, ``block_kv``, ...) to tile sizes, plus the fractions named by partial
    loads and stores. Same counting rule as :func:`evaluate_arrays` (every load/store
    contributes its tile times the iterations of its enclosing loops), for one scalar
    configuration and without a hardware description: :mod:`iosim.spatial` uses it for the
    DRAM traffic of its chunked mappings.
    """
    return count_terms(nest_terms(nest), sizes)
