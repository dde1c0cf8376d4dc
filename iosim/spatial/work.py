"""The work of each Einsum, derived from the cascade: operations per element and index spaces.

Nothing here is typed per algorithm. For an Einsum, :func:`einsum_ops` walks its expression
and reduction and returns the primitive operations (see :mod:`iosim.spatial.arch`) spent per
point of its index space (left-hand indices plus reduced indices):

* ``+``/``-`` -> ``add``; ``*`` -> ``mul``; ``/`` -> ``div``; comparisons, ``max``, ``min``
  -> ``max``; ``exp`` -> ``exp`` (and ``sqrt``, ``log``, ``sigmoid`` likewise);
* a ``sum`` reduction adds one ``add``, a ``max``/``min`` reduction one ``max``; a ``sum``
  of a product fuses the ``mul`` and the ``add`` into one ``mac``;
* sub-expressions that do not depend on any index (parameters, constants) cost nothing, and
  ``where(c, a, b)`` with a condition that is constant for the given parameters costs only
  the branch it takes (the causal mask of a non-causal run is free).

:func:`element_cycles` turns an op multiset into cycles per element on an array, with its
native op costs, its emulation recipes (FuseMax's ``exp = 6 MACs``) and its issue model.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from cascades.ir import (Access, Binary, Bool, Call, Cascade, Einsum, Name,
                         Num, Str, Unary, accesses, index_vars)
from iosim.errors import IosimError
from iosim.spatial.arch import ArraySpec

__all__ = ["einsum_ops", "element_cycles", "element_energy", "native_ops", "is_view",
           "fold_candidates", "EinsumInfo"]

_CMP = ("<", "<=", ">", ">=", "==", "!=")
_CALL_OPS = {"exp": "exp", "sqrt": "sqrt", "log": "log", "sigmoid": "sigmoid", "max": "max",
             "min": "max", "softplus": "exp", "elu1": "exp", "relu": "max", "abs": "max"}


def _const_value(expr, params: dict):
    """The value of an index-free expression, or None when it is not a known constant."""
    if isinstance(expr, Num):
        return expr.value
    if isinstance(expr, Bool):
        return expr.value
    if isinstance(expr, Name):
        v = params.get(expr.name)
        return v if isinstance(v, (bool, int, float)) else None
    if isinstance(expr, Unary):
        v = _const_value(expr.operand, params)
        if v is None:
            return None
        return (not v) if expr.op == "not" else -v
    if isinstance(expr, Binary):
        if expr.op == "and":
            a = _const_value(expr.left, params)
            if a is not None and not a:
                return False
            b = _const_value(expr.right, params)
            if b is not None and not b:
                return False
            return (a and b) if a is not None and b is not None else None
        if expr.op == "or":
            a = _const_value(expr.left, params)
            if a is not None and a:
                return True
            b = _const_value(expr.right, params)
            if b is not None and b:
                return True
            return (a or b) if a is not None and b is not None else None
    return None


def _indexed(expr, ivars: set) -> bool:
    """Whether the expression depends on a tensor element or an index coordinate."""
    if isinstance(expr, Access):
        return True
    if isinstance(expr, Name):
        return expr.name in ivars
    if isinstance(expr, Unary):
        return _indexed(expr.operand, ivars)
    if isinstance(expr, Binary):
        return _indexed(expr.left, ivars) or _indexed(expr.right, ivars)
    if isinstance(expr, Call):
        return any(_indexed(a, ivars) for a in expr.args)
    return False


def _ops(expr, params: dict, ivars: set, out: Counter) -> None:
    if not _indexed(expr, ivars):
        return
    if isinstance(expr, (Access, Name, Num, Bool, Str)):
        return
    if isinstance(expr, Unary):
        _ops(expr.operand, params, ivars, out)   # sign flip / logical not: free
        return
    if isinstance(expr, Binary):
        op = expr.op
        if op in ("+", "-"):
            out["add"] += 1
        elif op == "*":
            out["mul"] += 1
        elif op == "/":
            out["div"] += 1
        elif op == "**":
            out["mul"] += 1
        elif op in _CMP:
            out["max"] += 1
        elif op in ("and", "or"):
            v = _const_value(expr, params)
            if v is not None:
                return
        _ops(expr.left, params, ivars, out)
        _ops(expr.right, params, ivars, out)
        return
    if isinstance(expr, Call):
        if expr.func == "where":
            cond, a, b = expr.args
            v = _const_value(cond, params)
            if v is not None:
                _ops(a if v else b, params, ivars, out)
                return
            _ops(cond, params, ivars, out)
            _ops(a, params, ivars, out)
            _ops(b, params, ivars, out)
            return
        if expr.func == "identity":
            _ops(expr.args[0], params, ivars, out)
            return
        f = expr.func
        if f in params and isinstance(params[f], str):   # a feature-map parameter
            f = params[f]
        op = _CALL_OPS.get(f)
        if op is None:
            raise IosimError(f"no cost model for function '{expr.func}'")
        out[op] += 1
        for a in expr.args:
            _ops(a, params, ivars, out)
        return
    raise IosimError(f"no cost model for expression node {type(expr).__name__}")


def einsum_ops(e: Einsum, params: dict | None = None) -> Counter:
    """Primitive operations per point of the Einsum's index space (see module docstring)."""
    params = params or {}
    ivars = set(e.index_space())
    out: Counter = Counter()
    _ops(e.expr, params, ivars, out)
    if e.reduction is not None:
        if e.reduction.op == "sum":
            if isinstance(e.expr, Binary) and e.expr.op == "*" and out["mul"] > 0:
                out["mul"] -= 1
                out["mac"] += 1
            else:
                out["add"] += 1
        else:
            out["max"] += 1
    return Counter({k: v for k, v in out.items() if v})


def native_ops(ops: Counter, arr: ArraySpec) -> Counter:
    """The array's native ops for an op multiset (emulation expanded)."""
    out: Counter = Counter()
    for op, n in ops.items():
        for base, k in arr.native(op).items():
            out[base] += n * k
    return out


def element_cycles(ops: Counter, arr: ArraySpec) -> float:
    """Cycles one PE spends per element: the sum of op cycles (serial issue) or the busiest
    functional unit (pipelined issue)."""
    nat = native_ops(ops, arr)
    if not nat:
        return 0.0
    per_unit = {op: n * arr.ops[op] for op, n in nat.items()}
    if arr.issue == "pipelined":
        return max(per_unit.values())
    return sum(per_unit.values())


def element_energy(ops: Counter, arr: ArraySpec) -> dict:
    """pJ per element by native op."""
    return {op: n * arr.op_energy(op) for op, n in native_ops(ops, arr).items()}


def is_view(e: Einsum) -> bool:
    """A pure re-indexing such as ``BK[m1, m0, e] = K[m1*M0 + m0, e]`` (no work, no storage)."""
    return isinstance(e.expr, Access) and e.reduction is None and not e.shift and not e.is_init


def fold_candidates(c: Cascade, params: dict) -> list[str]:
    """Einsums that only scale or mask one tensor element-wise (``SQK = scale * BQK``, with a
    mask that is constant for these parameters): a PE applies them to its producer's output
    in the same pass, FuseMax folds the scale into BQK."""
    out = []
    for e in c.einsums:
        if e.is_init or e.reduction is not None or is_view(e):
            continue
        accs = accesses(e.expr)
        if len(accs) != 1:
            continue
        src = accs[0]
        if [v for ix in src.indices for v in index_vars(ix)] != \
                [v for ix in e.lhs.indices for v in index_vars(ix)]:
            continue
        ops = einsum_ops(e, params)
        if set(ops) <= {"mul"} and ops.get("mul", 0) <= 1:
            out.append(e.tensor)
    return out


@dataclass(frozen=True)
class EinsumInfo:
    """What the model needs of one Einsum (after views and folds are resolved)."""
    tensor: str
    index: int                   # position in the cascade (program order)
    ivars: tuple[str, ...]       # index space
    lhs_vars: tuple[str, ...]
    reduce_vars: tuple[str, ...]
    reduce_op: str | None
    ops: Counter
    reads: tuple                 # (tensor, kind) with kind 'stream' | 'prev' | 'final' | 'whole'
