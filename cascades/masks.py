"""The mask of an attention cascade as a region of the (query, key) domain, read from its
structure.

A cascade masks scores with ``where(COND, FILL, score)``. When ``COND`` is a disjunction of
comparisons linear in the key and query index variables through their difference (optionally
switched on by a boolean parameter, ``causal and (...)``), the visible keys of query ``p`` are
a band ``p + lower <= m <= p + upper``::

    where(causal and m > p, ...)                         causal: upper = 0
    where(causal and m > p + M - P, ...)                 causal, end-aligned: upper = M - P
    where(causal and (m > p or p - m >= window), ...)    sliding window: upper = 0,
                                                         lower = 1 - window

:func:`mask_region` returns the region's kind (``none``, ``causal``, ``window``, ``block``
for a boolean input over (query tile, key tile), ``tensor`` for any other boolean input or a
condition it cannot read) and the band's edges as linear forms over the cascade's rank sizes
and parameters (:class:`Linear`), so a model can evaluate them for any shape.
"""
from __future__ import annotations

from dataclasses import dataclass

from cascades.ir import Binary, Bool, Call, Name, Num, Unary, walk

__all__ = ["Linear", "MaskRegion", "mask_region"]


@dataclass(frozen=True)
class Linear:
    """``const + sum(coef * name)``: a linear form over rank sizes and parameters."""
    terms: tuple = ()          # (name, coefficient)
    const: float = 0.0

    def value(self, sizes: dict, params: dict):
        """The form's value; ``sizes``/``params`` map names to numbers or arrays."""
        v = self.const
        for name, coef in self.terms:
            if name in sizes:
                v = v + coef * sizes[name]
            elif name in params:
                v = v + coef * params[name]
            else:
                raise KeyError(name)
        return v

    def names(self) -> tuple:
        return tuple(n for n, _ in self.terms)


@dataclass(frozen=True)
class MaskRegion:
    """Which (query, key) pairs a cascade lets through."""
    kind: str                          # none | causal | window | block | tensor
    switch: str | None = None          # boolean parameter turning the band on (None: always)
    upper: Linear | None = None        # visible keys: m - p <= upper
    lower: Linear | None = None        # visible keys: m - p >= lower (a sliding window)
    tensor: str | None = None          # the boolean mask input (block / tensor kinds)

    @property
    def is_band(self) -> bool:
        return self.kind in ("causal", "window")


class _Pos:
    """How an index variable enters a position: ``key``/``query`` with the variables of a
    partitioned rank (outer variable times the inner size, plus the inner variable)."""

    def __init__(self, plain: dict, outer: dict):
        self.plain = plain          # var -> "key" | "query"   (unpartitioned or inner var)
        self.outer = outer          # (outer var, inner rank) -> "key" | "query"


def _linear(expr, pos: _Pos, ranks: set, params: set):
    """``(a, b, Linear)`` with expr = a*key + b*query + Linear, or None if not linear. A
    partitioned position ``outer * Inner + inner`` counts once: its two parts each count half,
    so only the whole position has coefficient 1."""
    if isinstance(expr, Num):
        return 0.0, 0.0, Linear((), float(expr.value))
    if isinstance(expr, Name):
        role = pos.plain.get(expr.name)
        if role is not None:
            w = 0.5 if role.endswith("/2") else 1.0
            return (w, 0.0, Linear()) if role.startswith("key") else (0.0, w, Linear())
        if expr.name in ranks or expr.name in params:
            return 0.0, 0.0, Linear(((expr.name, 1.0),), 0.0)
        return None
    if isinstance(expr, Binary) and expr.op == "*" and isinstance(expr.left, Name) \
            and isinstance(expr.right, Name):
        for a, b in ((expr.left.name, expr.right.name), (expr.right.name, expr.left.name)):
            role = pos.outer.get((a, b))
            if role is not None:
                return (0.5, 0.0, Linear()) if role == "key" else (0.0, 0.5, Linear())
    if isinstance(expr, Unary) and expr.op == "-":
        x = _linear(expr.operand, pos, ranks, params)
        return None if x is None else _scale(x, -1.0)
    if isinstance(expr, Binary) and expr.op in ("+", "-"):
        a = _linear(expr.left, pos, ranks, params)
        b = _linear(expr.right, pos, ranks, params)
        if a is None or b is None:
            return None
        return _add(a, b if expr.op == "+" else _scale(b, -1.0))
    if isinstance(expr, Binary) and expr.op == "*":
        for c, other in ((expr.left, expr.right), (expr.right, expr.left)):
            if isinstance(c, Num):
                x = _linear(other, pos, ranks, params)
                return None if x is None else _scale(x, float(c.value))
    return None


def _scale(x, s):
    a, b, lin = x
    return a * s, b * s, Linear(tuple((n, c * s) for n, c in lin.terms), lin.const * s)


def _add(x, y):
    terms: dict = {}
    for n, c in x[2].terms + y[2].terms:
        terms[n] = terms.get(n, 0.0) + c
    return (x[0] + y[0], x[1] + y[1],
            Linear(tuple((n, c) for n, c in terms.items() if c != 0.0), x[2].const + y[2].const))


def _edges(cond, pos, ranks, params):
    """The visible band of a masking condition (a disjunction of comparisons in m - p):
    ``(upper, lower)`` (either None), or None if the condition is not of that form."""
    atoms = []

    def flatten(c):
        if isinstance(c, Binary) and c.op == "or":
            return flatten(c.left) and flatten(c.right)
        atoms.append(c)
        return True
    flatten(cond)
    upper = lower = None
    for a in atoms:
        if not (isinstance(a, Binary) and a.op in (">", ">=", "<", "<=")):
            return None
        left = _linear(a.left, pos, ranks, params)
        right = _linear(a.right, pos, ranks, params)
        if left is None or right is None:
            return None
        km, kp, lin = _add(left, _scale(right, -1.0))     # km*m + kp*p + lin (op) 0
        op = a.op
        if km < 0:                                          # make the key coefficient positive
            km, kp, lin = -km, -kp, _scale((0, 0, lin), -1.0)[2]
            op = {">": "<", ">=": "<=", "<": ">", "<=": ">="}[op]
        if km != 1.0 or kp != -1.0:
            return None
        # masked when (m - p) + lin  op  0, i.e. m - p  op  -lin
        neg = _scale((0, 0, lin), -1.0)[2]
        if op in (">", ">="):      # masked above: visible m - p <= -lin (- 1 if >=)
            edge = neg if op == ">" else Linear(neg.terms, neg.const - 1)
            if upper is not None:
                return None
            upper = edge
        else:                      # masked below: visible m - p >= -lin (+ 1 if <=)
            edge = neg if op == "<" else Linear(neg.terms, neg.const + 1)
            if lower is not None:
                return None
            lower = edge
    return upper, lower


def mask_region(cascade) -> MaskRegion:
    """The mask region of ``cascade`` (see the module docstring)."""
    info = cascade.info
    base = {}
    for v, r in info.var_rank.items():
        part = info.part_parent.get(r)
        base[v] = part.rank if part is not None else r
    key_vars = {v for v, r in base.items() if r == "M"}
    query_vars = {v for v, r in base.items() if r == "P"}
    ranks = set(info.ranks)
    plain, outer = {}, {}
    for v, r in info.var_rank.items():
        role = {"M": "key", "P": "query"}.get(base[v])
        if role is None:
            continue
        part = info.part_parent.get(r)
        if part is None:
            plain[v] = role
        elif r == part.inner:
            plain[v] = role + "/2"
        else:
            outer[(v, part.inner)] = role
    pos = _Pos(plain, outer)
    params = {p.name for p in cascade.params}
    bool_params = {p.name for p in cascade.params if isinstance(p.default, Bool)}
    bool_inputs = [t for t in cascade.inputs if t.dtype == "bool"]
    if bool_inputs:
        t = bool_inputs[0]
        parts = {p.outer for p in cascade.partitions if p.rank in ("P", "M")}
        kind = "block" if any(r in parts for r in t.ranks) else "tensor"
        return MaskRegion(kind, tensor=t.name)
    for e in cascade.einsums:
        for nd in walk(e.expr):
            if not (isinstance(nd, Call) and nd.func == "where" and nd.args):
                continue
            cond = nd.args[0]
            switch = None
            if isinstance(cond, Binary) and cond.op == "and":
                for flag, rest in ((cond.left, cond.right), (cond.right, cond.left)):
                    if isinstance(flag, Name) and flag.name in bool_params:
                        switch, cond = flag.name, rest
                        break
            used = {n.name for n in walk(cond) if isinstance(n, Name)}
            if not (used & key_vars and used & query_vars):
                continue
            edges = _edges(cond, pos, ranks, params)
            if edges is None:
                return MaskRegion("tensor", switch=switch)
            upper, lower = edges
            if upper is None:
                return MaskRegion("tensor", switch=switch)
            return MaskRegion("window" if lower is not None else "causal", switch=switch,
                              upper=upper, lower=lower)
    return MaskRegion("none")
