"""Functional NumPy executor: runs any valid cascade on concrete arrays.

Every Einsum is evaluated generically from the IR — nothing is written per algorithm:

* ordinary Einsums are vectorised over all their indices (products under a ``sum`` become
  one ``np.einsum`` call); a Python loop runs only over iterative ranks, evaluating the
  Einsums of a recurrence one step at a time;
* a partitioned rank whose last block is partial is padded; padded elements are tracked as
  *invalid* and every reduction ignores them (they take the reduction's identity), so the
  result is exactly what the cascade says for any extent and block size.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass

import numpy as np

from cascades.errors import ExecutionError
from cascades.ir import (Access, Binary, Bool, Call, Cascade, Einsum, Expr, IConst, IFixed, IInit,
                         IShift, ISplit, IVar, Name, Num, Str, Unary)
from cascades.reference import expit


def _erf(x):
    from scipy.special import erf
    return erf(x)

_DTYPES = {"float64": np.float64, "fp64": np.float64, "float32": np.float32, "fp32": np.float32}
_IDENTITY = {"sum": 0.0, "max": -np.inf, "min": np.inf}
_UNARY = {
    "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "abs": np.abs,
    "sigmoid": expit, "relu": lambda x: np.maximum(x, 0),
    "elu1": lambda x: np.where(x > 0, x + 1, np.exp(np.minimum(x, 0))),
    "softplus": lambda x: np.logaddexp(0, x), "identity": lambda x: x,
    "tanh": np.tanh,
    # x * sigmoid(x) (the Swish / SiLU of HSTU's pointwise attention)
    "silu": lambda x: x * expit(x),
    # the exact GELU, x * Phi(x) with the standard normal CDF Phi
    "gelu": lambda x: 0.5 * x * (1.0 + _erf(x / np.sqrt(2.0))),
}
_BINARY = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide, "**": np.power,
           "<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal,
           "==": np.equal, "!=": np.not_equal, "and": np.logical_and, "or": np.logical_or}


@dataclass
class _Val:
    """An array over named axes, with an optional validity mask (same ndim, broadcastable)."""
    data: np.ndarray
    axes: tuple[str, ...]
    valid: np.ndarray | None = None


@dataclass
class _Stored:
    data: np.ndarray
    valid: np.ndarray | None = None


def _align(arr: np.ndarray, axes: tuple[str, ...], target: tuple[str, ...]) -> np.ndarray:
    """Transpose ``arr`` (over ``axes``) into ``target`` order, size-1 for missing axes."""
    if axes == target:
        return arr
    perm = [axes.index(a) for a in target if a in axes]
    arr = np.transpose(arr, perm) if perm != list(range(len(perm))) else arr
    shape = []
    it = iter(arr.shape)
    for a in target:
        shape.append(next(it) if a in axes else 1)
    return arr.reshape(shape)


def _union(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
    return a + tuple(x for x in b if x not in a)


def _and_valid(vals: list[_Val], axes: tuple[str, ...]) -> np.ndarray | None:
    out = None
    for v in vals:
        if v.valid is not None:
            m = _align(v.valid, v.axes, axes)
            out = m if out is None else np.logical_and(out, m)
    return out


class _Run:
    def __init__(self, cascade: Cascade, inputs: dict | None, dtype, params: dict,
                 extents: dict[str, int] | None = None):
        self.c = cascade
        self.info = cascade.info
        self.dtype = dtype
        self.store: dict[str, _Stored] = {}
        self.ext: dict[str, int] = {}  # rank -> extent
        if inputs is None:
            for r, n in (extents or {}).items():
                if r not in self.info.ranks:
                    raise ExecutionError(f"cascade '{cascade.name}' has no rank {r}")
                if int(n) < 1:
                    raise ExecutionError(f"rank {r} must have a positive extent, got {n}")
                self.ext[r] = int(n)
            for t in cascade.inputs:
                missing = [r for r in t.ranks
                           if r not in self.ext and r not in self.info.part_parent]
                if missing:
                    raise ExecutionError(f"extent of rank {missing[0]} (of input '{t.name}') "
                                         f"is not given")
        else:
            self._bind_inputs(inputs)
        self.params = self._resolve_params(params)
        self._partition_extents()
        self.steps = {}
        for rank, it in self.info.iterative.items():
            s = self._scalar(it.stop, f"the stopping condition of {rank}")
            if not float(s).is_integer() or s < 0 or s > self.ext[rank]:
                raise ExecutionError(f"stopping condition of iterative rank {rank} gives {s}; "
                                     f"expected an integer in [0, {self.ext[rank]}]")
            self.steps[rank] = int(s)
        self.bound: dict[str, int] = {}

    # ---------------------------------------------------------------- setup
    def _bind_inputs(self, inputs: dict) -> None:
        names = [t.name for t in self.c.inputs]
        for k in inputs:
            if k not in names:
                close = difflib.get_close_matches(k, names, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ExecutionError(f"'{k}' is not an input of cascade '{self.c.name}' "
                                     f"(inputs: {', '.join(names)}){hint}")
        origin: dict[str, str] = {}
        for t in self.c.inputs:
            if t.name not in inputs:
                raise ExecutionError(f"missing input '{t.name}[{', '.join(t.ranks)}]' for "
                                     f"cascade '{self.c.name}'")
            arr = np.asarray(inputs[t.name])
            if arr.ndim != len(t.ranks):
                raise ExecutionError(f"input '{t.name}' has {arr.ndim} dimensions {arr.shape} "
                                     f"but is declared [{', '.join(t.ranks)}]")
            for r, n in zip(t.ranks, arr.shape):
                if r in self.ext and self.ext[r] != n:
                    raise ExecutionError(f"rank {r} has extent {self.ext[r]} in input "
                                         f"'{origin[r]}' but {n} in input '{t.name}'")
                if n == 0:
                    raise ExecutionError(f"input '{t.name}' has an empty rank {r}")
                self.ext[r] = n
                origin.setdefault(r, t.name)
            if t.dtype == "bool":
                arr = arr.astype(bool)
            else:
                arr = arr.astype(self.dtype, copy=False)
            self.store[t.name] = _Stored(arr)

    def _resolve_params(self, given: dict) -> dict:
        known = [p.name for p in self.c.params]
        for k in given:
            if k not in known:
                close = difflib.get_close_matches(k, known, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ExecutionError(f"unknown parameter '{k}' for cascade '{self.c.name}' "
                                     f"(parameters: {', '.join(known) or 'none'}){hint}")
        self.params = {}
        for p in self.c.params:
            if p.name in given and given[p.name] is not None:
                v = given[p.name]
                d = p.default
                if isinstance(d, Bool) and not isinstance(v, (bool, np.bool_)):
                    raise ExecutionError(f"parameter '{p.name}' is a boolean, got {v!r}")
                if isinstance(d, Str) and not isinstance(v, str):
                    raise ExecutionError(f"parameter '{p.name}' is a string, got {v!r}")
                self.params[p.name] = v
            else:
                # partition extents may be needed by a default (e.g. a block of M0)
                self.params[p.name] = self._scalar(p.default, f"parameter '{p.name}'",
                                                   allow_str=True)
        return self.params

    def _partition_extents(self) -> None:
        for p in self.c.partitions:
            if p.rank not in self.ext:
                raise ExecutionError(f"partitioned rank {p.rank} has no extent from the inputs")
            b = self._scalar(p.block, f"the block size of {p.rank}")
            if isinstance(b, (bool, np.bool_)) or not float(b).is_integer() or b < 1:
                raise ExecutionError(f"block size of partition {p.rank} -> {p.outer}, "
                                     f"{p.inner} must be a positive integer, got {b}")
            b = int(b)
            outer = -(-self.ext[p.rank] // b)
            for r, n in ((p.inner, b), (p.outer, outer)):
                if r in self.ext and self.ext[r] != n:
                    raise ExecutionError(f"rank {r} has extent {self.ext[r]} in the inputs but "
                                         f"partition {p.rank} -> {p.outer}, {p.inner} gives "
                                         f"{n} (block size {b}, {p.rank} = {self.ext[p.rank]})")
                self.ext[r] = n

    def _scalar(self, expr: Expr, what: str, allow_str: bool = False):
        try:
            v = self.eval(expr)
        except ExecutionError as exc:
            raise ExecutionError(f"{what}: {exc.message}") from None
        if v.axes:
            raise ExecutionError(f"{what} must be a scalar")
        x = v.data.item() if isinstance(v.data, np.ndarray) else v.data
        if isinstance(x, str) and not allow_str:
            raise ExecutionError(f"{what} must be a number, got the string {x!r}")
        return x

    # ---------------------------------------------------------- expressions
    def var_extent(self, var: str) -> int:
        rank = self.info.var_rank[var]
        if rank not in self.ext:
            raise ExecutionError(f"extent of rank {rank} is unknown")
        return self.ext[rank]

    def const(self, x) -> _Val:
        if isinstance(x, (bool, np.bool_)):
            return _Val(np.asarray(bool(x)), ())
        if isinstance(x, str):
            return _Val(x, ())  # type: ignore[arg-type]
        return _Val(np.asarray(x, dtype=self.dtype), ())

    def eval(self, e: Expr) -> _Val:
        if isinstance(e, Num):
            return self.const(e.value)
        if isinstance(e, Bool):
            return self.const(e.value)
        if isinstance(e, Str):
            return self.const(e.value)
        if isinstance(e, Name):
            n = e.name
            if hasattr(self, "params") and n in self.params:
                return self.const(self.params[n])
            if n in self.ext:
                return self.const(float(self.ext[n]))
            if n in self.info.var_rank:
                if n in self.bound:
                    return _Val(np.asarray(self.bound[n]), ())
                return _Val(np.arange(self.var_extent(n)), (n,))
            raise ExecutionError(f"'{n}' has no value yet (a default may only use inputs' "
                                 f"rank extents and earlier parameters)")
        if isinstance(e, Access):
            return self.access(e)
        if isinstance(e, Unary):
            v = self.eval(e.operand)
            f = np.negative if e.op == "-" else np.logical_not
            return _Val(f(v.data), v.axes, v.valid)
        if isinstance(e, Binary):
            return self.binary(_BINARY[e.op], self.eval(e.left), self.eval(e.right))
        if isinstance(e, Call):
            args = [self.eval(a) for a in e.args]
            func = e.func
            if func in self.params and func not in _UNARY:
                func = self.params[func]
                if func not in _UNARY:
                    raise ExecutionError(f"feature map '{func}' is unknown (expected one of "
                                         f"{', '.join(_UNARY)})")
            if func in _UNARY:
                a = args[0]
                return _Val(_UNARY[func](a.data), a.axes, a.valid)
            if func in ("max", "min"):
                f = np.maximum if func == "max" else np.minimum
                return self.binary(f, args[0], args[1])
            if func == "where":
                cnd, a, b = args
                axes = _union(_union(cnd.axes, a.axes), b.axes)
                data = np.where(_align(cnd.data, cnd.axes, axes), _align(a.data, a.axes, axes),
                                _align(b.data, b.axes, axes))
                return _Val(data, axes, _and_valid(args, axes))
        raise ExecutionError(f"cannot evaluate {e!r}")  # pragma: no cover - validated earlier

    def binary(self, f, a: _Val, b: _Val) -> _Val:
        axes = _union(a.axes, b.axes)
        data = f(_align(a.data, a.axes, axes), _align(b.data, b.axes, axes))
        return _Val(data, axes, _and_valid([a, b], axes))

    # --------------------------------------------------------------- access
    def _specs(self, acc: Access, shape: tuple[int, ...]):
        """Per position: ("scalar", index) or ("range", var, start, n) or ("split", ...)."""
        specs = []
        for ix, dim in zip(acc.indices, shape):
            if isinstance(ix, (IVar, IShift)):
                off = ix.offset if isinstance(ix, IShift) else 0
                if ix.var in self.bound:
                    specs.append(("scalar", self.bound[ix.var] + off))
                else:
                    specs.append(("range", ix.var, off, self.var_extent(ix.var)))
            elif isinstance(ix, IFixed):
                specs.append(("scalar", self.steps[ix.rank]))
            elif isinstance(ix, IConst):
                specs.append(("scalar", ix.value))
            elif isinstance(ix, ISplit):
                blk = self.ext[ix.inner_rank]
                if ix.outer in self.bound:
                    specs.append(("range", ix.inner, self.bound[ix.outer] * blk, blk))
                else:
                    specs.append(("split", ix.outer, ix.inner, self.var_extent(ix.outer), blk))
            else:  # pragma: no cover - validated
                raise ExecutionError(f"bad index {ix!r}")
        return specs

    @staticmethod
    def _gather(arr: np.ndarray, specs, fancy_ok: bool = True):
        """Index ``arr`` by ``specs``; returns (array, axes, in-range mask or None)."""
        axes: list[str] = []
        simple = True
        for s, dim in zip(specs, arr.shape):
            if s[0] == "split" or (s[0] == "range" and s[2] + s[3] > dim and dim != 1) \
                    or (s[0] == "scalar" and not 0 <= s[1] < dim and dim != 1):
                simple = False
            axes.extend([s[1]] if s[0] == "range" else [s[1], s[2]] if s[0] == "split" else [])
        if simple:
            sl = []
            for s, dim in zip(specs, arr.shape):
                if dim == 1:  # broadcast dimension (masks)
                    sl.append(0 if s[0] == "scalar" else slice(None))
                    if s[0] == "split":  # pragma: no cover - split is never simple
                        raise AssertionError
                elif s[0] == "scalar":
                    sl.append(s[1])
                else:
                    sl.append(slice(s[2], s[2] + s[3]))
            return arr[tuple(sl)], tuple(axes), None
        # general path: broadcast integer index arrays over the result axes
        nres = len(axes)
        idx, ok = [], None
        pos = 0
        for s, dim in zip(specs, arr.shape):
            if s[0] == "scalar":
                coord = np.asarray(s[1])
                shape = [1] * nres
                width = 0
            elif s[0] == "range":
                shape = [1] * nres
                shape[pos] = s[3]
                coord = (np.arange(s[3]) + s[2]).reshape(shape)
                width = 1
            else:
                n1, blk = s[3], s[4]
                shape = [1] * nres
                shape[pos], shape[pos + 1] = n1, blk
                coord = (np.arange(n1)[:, None] * blk + np.arange(blk)[None, :]).reshape(shape)
                width = 2
            if dim == 1:
                # a size-1 (broadcast) dimension keeps size 1 along the result axes
                idx.append(np.zeros([1] * nres, dtype=np.intp) if nres else 0)
            else:
                inside = (coord >= 0) & (coord < dim)
                if not np.all(inside):
                    ok = inside if ok is None else ok & inside
                idx.append(np.clip(coord, 0, dim - 1))
            pos += width
        out = arr[tuple(idx)] if idx else arr
        if nres and out.ndim != nres:  # pragma: no cover - defensive
            out = out.reshape(out.shape + (1,) * (nres - out.ndim))
        return out, tuple(axes), ok

    def access(self, acc: Access) -> _Val:
        st = self.store.get(acc.tensor)
        if st is None:  # pragma: no cover - the plan orders definitions first
            raise ExecutionError(f"tensor '{acc.tensor}' is read before it is computed")
        specs = self._specs(acc, st.data.shape)
        data, axes, ok = self._gather(st.data, specs)
        valid = None
        if st.valid is not None:
            valid, _, vok = self._gather(st.valid, specs)
            if vok is not None:
                valid = valid & vok
        if ok is not None:
            valid = ok if valid is None else np.logical_and(valid, ok)
        if valid is not None and valid.ndim != len(axes):  # pragma: no cover - defensive
            valid = valid.reshape(valid.shape + (1,) * (len(axes) - valid.ndim))
        return _Val(data, axes, valid)

    # --------------------------------------------------------------- einsum
    def einsum(self, e: Einsum) -> None:
        red = e.reduction
        val = None
        if red is not None and red.op == "sum":
            factors = _product_factors(e.expr)
            if len(factors) > 1:
                val = self._einsum_product(factors, red.vars)
        if val is None:
            val = self.eval(e.expr)
            if red is not None:
                val = self._reduce(val, red.op, red.vars)
        self.write(e, val)

    def _reduce(self, v: _Val, op: str, rvars: tuple[str, ...]) -> _Val:
        rvars = tuple(r for r in rvars if r not in self.bound)
        data = v.data
        # a reduced index the expression never ranged over (e.g. a bound loop index)
        axes = tuple(v.axes)
        for r in rvars:
            if r not in axes:  # pragma: no cover - validated: reduced vars appear on the right
                raise ExecutionError(f"cannot reduce over '{r}'")
        ax = tuple(axes.index(r) for r in rvars)
        if v.valid is not None:
            data = np.where(v.valid, data, _IDENTITY[op])
        f = {"sum": np.sum, "max": np.max, "min": np.min}[op]
        out = f(data, axis=ax)
        keep = tuple(a for a in axes if a not in rvars)
        valid = None
        if v.valid is not None:
            valid = np.any(v.valid, axis=ax)
            if np.all(valid):
                valid = None
        return _Val(np.asarray(out), keep, valid)

    def _einsum_product(self, factors: list[Expr], rvars: tuple[str, ...]) -> _Val:
        vals = [self.eval(f) for f in factors]
        all_axes: tuple[str, ...] = ()
        for v in vals:
            all_axes = _union(all_axes, v.axes)
        rvars = tuple(r for r in rvars if r not in self.bound)
        out_axes = tuple(a for a in all_axes if a not in rvars)
        letters = {a: chr(ord("a") + i) for i, a in enumerate(all_axes)}
        if len(letters) > 52:  # pragma: no cover - absurdly many indices
            return None  # type: ignore[return-value]
        ops, subs = [], []
        for v in vals:
            d = v.data
            if v.valid is not None:
                d = np.where(v.valid, d, 0)
            if isinstance(d, np.ndarray) and d.dtype == bool:
                d = d.astype(self.dtype)
            ops.append(d)
            subs.append("".join(letters[a] for a in v.axes))
        spec = ",".join(subs) + "->" + "".join(letters[a] for a in out_axes)
        data = np.einsum(spec, *ops, optimize=True)
        valid = _and_valid(vals, all_axes)
        if valid is not None:
            valid = np.any(valid, axis=tuple(all_axes.index(r) for r in rvars))
            if np.all(valid):
                valid = None
        return _Val(np.asarray(data), out_axes, valid)

    def _storage_shape(self, tensor: str) -> tuple[int, ...]:
        shape = []
        sh = self.info.shifted.get(tensor)
        for r in self.info.tensor_ranks[tensor]:
            n = self.ext.get(r)
            if n is None:
                raise ExecutionError(f"extent of rank {r} of tensor '{tensor}' is unknown")
            if sh is not None and r.lower() == sh[0]:
                n += sh[1]
            shape.append(n)
        return tuple(shape)

    def write(self, e: Einsum, v: _Val) -> None:
        t = e.tensor
        st = self.store.get(t)
        shape = self._storage_shape(t) if st is None else st.data.shape
        lhs_axes: list[str] = []
        sl: list = []
        merges = []  # (position in lhs_axes, rank extent) for split coordinates
        for ix in e.lhs.indices:
            if isinstance(ix, IInit):
                sl.append(ix.value)
            elif isinstance(ix, (IVar, IShift)):
                off = ix.offset if isinstance(ix, IShift) else 0
                if ix.var in self.bound:
                    sl.append(self.bound[ix.var] + off)
                else:
                    n = self.var_extent(ix.var)
                    sl.append(slice(off, off + n))
                    lhs_axes.append(ix.var)
            elif isinstance(ix, ISplit):
                rank = self.info.part_parent[ix.inner_rank].rank
                blk = self.ext[ix.inner_rank]
                if ix.outer in self.bound:
                    start = self.bound[ix.outer] * blk
                    stop = min(start + blk, self.ext[rank])
                    sl.append(slice(start, stop))
                    merges.append((len(lhs_axes), None, stop - start))
                    lhs_axes.append(ix.inner)
                else:
                    sl.append(slice(0, self.ext[rank]))
                    merges.append((len(lhs_axes), ix.inner, self.ext[rank]))
                    lhs_axes.extend([ix.outer, ix.inner])
        axes = tuple(lhs_axes)
        extra = [a for a in v.axes if a not in axes]
        if extra:  # pragma: no cover - validated
            raise ExecutionError(f"{e.label()}: index '{extra[0]}' is neither kept nor reduced")
        data = _align(np.asarray(v.data), v.axes, axes)
        full = tuple(self.var_extent(a) for a in axes)
        data = np.broadcast_to(data, full)
        valid = None
        if v.valid is not None and not self.bound:
            valid = np.broadcast_to(_align(v.valid, v.axes, axes), full)
        for pos, inner, n in reversed(merges):
            if inner is None:  # bound outer: crop the block
                data = data[(slice(None),) * pos + (slice(0, n),)]
                if valid is not None:
                    valid = valid[(slice(None),) * pos + (slice(0, n),)]
                continue
            shp = data.shape
            data = data.reshape(shp[:pos] + (shp[pos] * shp[pos + 1],) + shp[pos + 2:])
            data = data[(slice(None),) * pos + (slice(0, n),)]
            if valid is not None:
                valid = valid.reshape(data.shape[:pos] + (-1,) + data.shape[pos + 1:])
                valid = valid[(slice(None),) * pos + (slice(0, n),)]
        if st is None:
            if data.shape == shape:  # the first write covers the tensor: keep the array
                st = self.store[t] = _Stored(np.ascontiguousarray(data, dtype=self.dtype))
                if valid is not None and not np.all(valid):
                    st.valid = np.ascontiguousarray(valid)
                return
            st = self.store[t] = _Stored(np.full(shape, np.nan, dtype=self.dtype))
        st.data[tuple(sl)] = data
        if valid is not None and not np.all(valid):
            if st.valid is None:
                st.valid = np.ones(st.data.shape, dtype=bool)
            st.valid[tuple(sl)] = valid

    # ------------------------------------------------------------------ run
    def run(self) -> None:
        einsums = self.c.einsums
        for step in self.info.order:
            if step[0] == "einsum":
                self.einsum(einsums[step[1]])
            else:
                _, var, body = step
                n = self.steps[self.info.var_rank[var]]
                for i in range(n):
                    self.bound = {var: i}
                    for k in body:
                        self.einsum(einsums[k])
                self.bound = {}


def _product_factors(expr: Expr) -> list[Expr]:
    if isinstance(expr, Binary) and expr.op == "*":
        return _product_factors(expr.left) + _product_factors(expr.right)
    return [expr]


def execute(cascade: Cascade, inputs: dict, *, dtype="float64", keep_intermediates: bool = False,
            **params) -> dict[str, np.ndarray]:
    """Run ``cascade`` on ``inputs`` (tensor name -> array in declared rank order).

    ``params`` override the cascade's parameters (e.g. ``causal=True, block_m=32``).
    Returns the output tensors (all tensors with ``keep_intermediates=True``).
    """
    dt = _DTYPES.get(str(np.dtype(dtype)) if not isinstance(dtype, str) else dtype)
    if dt is None:
        raise ExecutionError(f"unsupported dtype '{dtype}' (expected float64 or float32)")
    with np.errstate(all="ignore"):
        run = _Run(cascade, inputs, dt, params)
        check_memory(cascade, run.ext, dt, inputs=False)
        try:
            run.run()
        except MemoryError:
            need, _ = memory_estimate(cascade, run.ext, dt, inputs=False)
            raise ExecutionError(f"out of memory running cascade '{cascade.name}' (it needs "
                                 f"about {_fmt_bytes(need)} beyond its inputs)") from None
    names = list(run.store) if keep_intermediates else [t.name for t in cascade.outputs]
    return {n: run.store[n].data for n in names}


def _itemsize(dtype) -> int:
    dt = _DTYPES.get(str(np.dtype(dtype)) if not isinstance(dtype, str) else dtype)
    return np.dtype(dt or np.float64).itemsize


def memory_estimate(cascade: Cascade, extents: dict[str, int], dtype="float64",
                    inputs: bool = True) -> tuple[int, str]:
    """Bytes the executor needs for ``cascade`` at rank ``extents`` (every rank, as from
    :func:`resolve`): every tensor it stores (inputs too, unless ``inputs=False``) plus the
    largest temporary of one Einsum (two arrays over its index space, a loop's own index
    excluded; a sum of products, which runs as one ``np.einsum``, only over its result's
    indices). Returns ``(bytes, the largest tensor as 'T[R1, R2]')``.
    """
    info = cascade.info
    item = _itemsize(dtype)
    roles = {t.name: t for t in cascade.tensors}
    in_loop = {k: var for step in info.order if step[0] == "loop" for var in [step[1]]
               for k in step[2]}
    total, largest, largest_name = 0, 0, ""
    for t, ranks in info.tensor_ranks.items():
        decl = roles.get(t)
        if decl is not None and decl.role == "input" and not inputs:
            continue
        sh = info.shifted.get(t)
        n = 1
        for r in ranks:
            n *= int(extents.get(r, 1)) + (sh[1] if sh is not None and r.lower() == sh[0] else 0)
        size = n * (1 if decl is not None and decl.dtype == "bool" else item)
        total += size
        if size > largest:
            largest, largest_name = size, f"{t}[{', '.join(ranks)}]"
    temp = 0
    for i, e in enumerate(cascade.einsums):
        space = [v for v in e.index_space() if v != in_loop.get(i)]
        red = e.reduction
        if red is not None and red.op == "sum" and len(_product_factors(e.expr)) > 1:
            # a sum of products runs as one np.einsum: no array over the reduced indices
            space = [v for v in space if v not in red.vars]
        n = 1
        for v in space:
            n *= int(extents.get(info.var_rank.get(v, ""), 1))
        temp = max(temp, 2 * n * item)
    return total + temp, largest_name


def available_memory() -> int | None:
    """Bytes of memory this process may still use: the kernel's MemAvailable, capped by a
    cgroup limit; None where neither can be read."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = None
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                raw = f.read().strip()
            if raw.isdigit():
                lim = int(raw)
                try:
                    with open(path.replace("max", "current").replace("limit_in_bytes",
                                                                     "usage_in_bytes")) as f:
                        lim -= int(f.read().strip())
                except (OSError, ValueError):
                    pass
                if lim < (1 << 60):
                    avail = lim if avail is None else min(avail, lim)
            break
        except (OSError, ValueError):
            continue
    return avail


def _fmt_bytes(n: float) -> str:
    for unit, k in (("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20),
                    ("KiB", 2**10)):
        if n >= k:
            return f"{n / k:.1f} {unit}"
    return f"{int(n)} B"


def check_memory(cascade: Cascade, extents: dict[str, int], dtype="float64", *,
                 inputs: bool = True, extra_bytes: int = 0, limit: int | None = None,
                 hint: str = "use smaller extents") -> int:
    """Refuse, with one line, a run whose arrays would not fit in memory.

    ``limit`` defaults to :func:`available_memory`; returns the estimate in bytes.
    """
    need, largest = memory_estimate(cascade, extents, dtype, inputs=inputs)
    need += int(extra_bytes)
    if limit is None:
        limit = available_memory()
    if limit is not None and need > limit:
        shape = ", ".join(f"{r}={extents[r]}" for r in cascade.info.ranks if r in extents)
        raise ExecutionError(f"running cascade '{cascade.name}' at {shape} needs about "
                             f"{_fmt_bytes(need)} of memory (largest array {largest}), but "
                             f"{_fmt_bytes(limit)} is available: {hint}")
    return need


def resolve(cascade: Cascade, extents: dict[str, int], **params) -> tuple[dict, dict]:
    """Rank extents (partitions included) and parameter values for given input extents.

    ``extents`` maps the ranks of the inputs (e.g. ``{"P": 4096, "M": 4096, "E": 128,
    "F": 128}``) to sizes; returns ``(extents of every rank, parameter values)``.
    """
    run = _Run(cascade, None, np.float64, params, extents=extents)
    return dict(run.ext), dict(run.params)
