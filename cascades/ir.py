"""The Einsum-cascade intermediate representation.

A :class:`Cascade` is a validated sequence of extended Einsums over named ranks:

* **ranks** have names of any length starting with an upper-case letter (``M``, ``M1``,
  ``Head``); the index variable of a rank is its name in lower case (``m``, ``m1``, ``head``);
* **tensors** have a declared rank order, which is their NumPy axis order;
* an **Einsum** writes one tensor access from an expression of accesses, parameters, index
  values and map operators, optionally reducing over index variables with a named operator;
* **partitions** split a rank into an outer and an inner rank by a block size
  (``M -> M1, M0 by block_m``), read with ``K[m1*M0 + m0, e]``; the last block may be partial;
* **iterative ranks** (``iterate M1 until m1 >= M1``) carry recurrences such as
  ``RM[m1+1, p] = max(RM[m1, p], LM[m1, p])`` with an initialisation ``RM[m1=0, p] = -inf``;
  a fixed coordinate ``RM[M1, p]`` reads the final iterate.

Construction validates the cascade (see :func:`validate`); every problem is a one-line
:class:`~cascades.errors.CascadeValidationError` naming the Einsum and the tensor.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator, Union

import networkx as nx

from cascades.errors import CascadeValidationError

DTYPES = ("fp64", "fp32", "tf32", "bf16", "fp16", "fp8", "int8", "int4", "bool")
REDUCE_OPS = ("sum", "max", "min")
#: map functions and their number of arguments
FUNCTIONS = {"exp": 1, "log": 1, "sqrt": 1, "sigmoid": 1, "abs": 1, "relu": 1, "elu1": 1,
             "softplus": 1, "tanh": 1, "silu": 1, "gelu": 1, "identity": 1, "max": 2,
             "min": 2, "where": 3}
#: functions a string-valued parameter may name (a feature map such as ``phi = "elu1"``)
UNARY_FEATURE_MAPS = ("identity", "exp", "relu", "elu1", "softplus", "sigmoid", "abs", "tanh",
                      "silu", "gelu")
BINARY_OPS = ("+", "-", "*", "/", "**", "<", "<=", ">", ">=", "==", "!=", "and", "or")


# --------------------------------------------------------------------------- indices
@dataclass(frozen=True)
class IVar:
    """The index variable of a rank: ``m``."""
    var: str


@dataclass(frozen=True)
class IShift:
    """An index variable plus a constant: ``m1+1`` (the next iterate)."""
    var: str
    offset: int


@dataclass(frozen=True)
class IInit:
    """An initialisation coordinate on the left-hand side: ``m1=0``."""
    var: str
    value: int


@dataclass(frozen=True)
class IFixed:
    """A fixed coordinate named by a rank: ``M1`` reads coordinate ``M1`` (the final iterate)."""
    rank: str


@dataclass(frozen=True)
class IConst:
    """A literal coordinate: ``0``."""
    value: int


@dataclass(frozen=True)
class ISplit:
    """A coordinate of a partitioned rank built from its parts: ``m1*M0 + m0``."""
    outer: str
    inner_rank: str
    inner: str


Index = Union[IVar, IShift, IInit, IFixed, IConst, ISplit]


def index_vars(ix: Index) -> tuple[str, ...]:
    """The index variables an index coordinate ranges over."""
    if isinstance(ix, (IVar, IShift)):
        return (ix.var,)
    if isinstance(ix, ISplit):
        return (ix.outer, ix.inner)
    return ()


# ----------------------------------------------------------------------- expressions
@dataclass(frozen=True)
class Num:
    value: float


@dataclass(frozen=True)
class Bool:
    value: bool


@dataclass(frozen=True)
class Str:
    value: str


@dataclass(frozen=True)
class Name:
    """A parameter, a rank's extent (``E``) or an index variable's coordinate (``p``)."""
    name: str


@dataclass(frozen=True)
class Access:
    tensor: str
    indices: tuple[Index, ...]


@dataclass(frozen=True)
class Unary:
    op: str  # "-" or "not"
    operand: "Expr"


@dataclass(frozen=True)
class Binary:
    op: str
    left: "Expr"
    right: "Expr"


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple["Expr", ...]


Expr = Union[Num, Bool, Str, Name, Access, Unary, Binary, Call]


def walk(expr: Expr) -> Iterator[Expr]:
    """Every node of an expression, parents before children (left to right).

    Iterative, so it never meets Python's recursion limit whatever the depth.
    """
    stack = [expr]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, Unary):
            stack.append(node.operand)
        elif isinstance(node, Binary):
            stack.append(node.right)
            stack.append(node.left)
        elif isinstance(node, Call):
            stack.extend(reversed(node.args))


#: deepest expression a cascade may hold: levels of operators and calls inside each other (a
#: chain ``a + b + c`` is a left-deep tree, one level per term). The parser and validation
#: refuse deeper ones, so every walker of the IR that recurses per level (executor, passes,
#: FLOP counting, printing, code generation, dataclass equality) stays far from Python's
#: recursion limit.
MAX_DEPTH = 100


def depth(expr: Expr) -> int:
    """Levels of an expression tree (a leaf is 1), computed without recursion."""
    best = 0
    stack = [(expr, 1)]
    while stack:
        node, d = stack.pop()
        if d > best:
            best = d
        if isinstance(node, Unary):
            stack.append((node.operand, d + 1))
        elif isinstance(node, Binary):
            stack.append((node.left, d + 1))
            stack.append((node.right, d + 1))
        elif isinstance(node, Call):
            stack.extend((a, d + 1) for a in node.args)
    return best


def accesses(expr: Expr) -> list[Access]:
    return [n for n in walk(expr) if isinstance(n, Access)]


# ------------------------------------------------------------------- declarations
@dataclass(frozen=True)
class Param:
    """A scalar parameter with a default expression (which may use rank extents)."""
    name: str
    default: Expr
    line: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class TensorDecl:
    name: str
    ranks: tuple[str, ...]
    role: str  # "input" | "output" | "tensor" (a declared intermediate)
    dtype: str | None = None
    line: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Partition:
    """``rank -> outer, inner by block``: coordinate = outer*block + inner."""
    rank: str
    outer: str
    inner: str
    block: Expr
    line: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Iteration:
    """``iterate rank until var >= stop``: the recurrence runs for ``stop`` steps."""
    rank: str
    stop: Expr
    line: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Reduction:
    op: str
    vars: tuple[str, ...]


@dataclass(frozen=True)
class Einsum:
    lhs: Access
    expr: Expr
    reduction: Reduction | None = None
    line: int | None = field(default=None, compare=False)

    @property
    def tensor(self) -> str:
        return self.lhs.tensor

    @property
    def is_init(self) -> bool:
        return any(isinstance(ix, IInit) for ix in self.lhs.indices)

    @property
    def shift(self) -> tuple[str, int] | None:
        """``(var, offset)`` if the left-hand side is written at a shifted coordinate."""
        for ix in self.lhs.indices:
            if isinstance(ix, IShift):
                return ix.var, ix.offset
        return None

    def label(self) -> str:
        from cascades.notation import format_access  # local: notation imports ir
        where = f" (line {self.line})" if self.line else ""
        return f"Einsum {format_access(self.lhs)}{where}"

    def index_space(self) -> tuple[str, ...]:
        """Index variables this Einsum iterates over (left-hand side first)."""
        out: list[str] = []
        for ix in self.lhs.indices:
            for v in index_vars(ix):
                if v not in out:
                    out.append(v)
        for acc in accesses(self.expr):
            for ix in acc.indices:
                for v in index_vars(ix):
                    if v not in out:
                        out.append(v)
        return tuple(out)


# ---------------------------------------------------------------------- the cascade
@dataclass(frozen=True)
class Cascade:
    """A validated Einsum cascade. Build it with :func:`cascades.parse` or directly."""
    name: str
    params: tuple[Param, ...]
    tensors: tuple[TensorDecl, ...]
    partitions: tuple[Partition, ...]
    iterations: tuple[Iteration, ...]
    einsums: tuple[Einsum, ...]
    description: str = ""
    info: "CascadeInfo" = field(default=None, compare=False, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        object.__setattr__(self, "info", validate(self))

    # convenient views ------------------------------------------------------
    @property
    def inputs(self) -> tuple[TensorDecl, ...]:
        return tuple(t for t in self.tensors if t.role == "input")

    @property
    def outputs(self) -> tuple[TensorDecl, ...]:
        return tuple(t for t in self.tensors if t.role == "output")

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def tensor_ranks(self, name: str) -> tuple[str, ...]:
        return self.info.tensor_ranks[name]

    def defining(self, tensor: str) -> tuple[Einsum, ...]:
        return tuple(e for e in self.einsums if e.tensor == tensor)

    def to_text(self) -> str:
        from cascades.notation import format_cascade
        return format_cascade(self)

    def to_dict(self) -> dict:
        from cascades.notation import format_einsum, format_expr
        return {
            "name": self.name,
            "description": self.description,
            "params": {p.name: format_expr(p.default) for p in self.params},
            "inputs": {t.name: list(t.ranks) for t in self.inputs},
            "outputs": {t.name: list(t.ranks) for t in self.outputs},
            "partitions": [{"rank": p.rank, "outer": p.outer, "inner": p.inner,
                            "block": format_expr(p.block)} for p in self.partitions],
            "iterations": [{"rank": i.rank, "stop": format_expr(i.stop)} for i in self.iterations],
            "tensors": {k: list(v) for k, v in self.info.tensor_ranks.items()},
            "einsums": [format_einsum(e) for e in self.einsums],
        }


@dataclass(frozen=True)
class CascadeInfo:
    """Facts derived once by validation and shared by the executor and the analyses."""
    ranks: tuple[str, ...]                  # every rank, declaration order
    var_rank: dict                          # index variable -> rank name
    tensor_ranks: dict                      # tensor -> its ranks (axis order)
    iterative: dict                         # iterative rank -> Iteration
    shifted: dict                           # tensor -> (var, offset) if written shifted
    partition_of: dict                      # partitioned rank -> Partition
    part_parent: dict                       # outer/inner rank -> Partition
    order: tuple                            # execution plan: ("einsum", i) | ("loop", var, (i,...))
    graph: nx.DiGraph                       # tensor-level dependency graph


def previous_iterate(c: "Cascade", acc: Access) -> bool:
    """True for ``RM[m1, p]`` where RM is written at ``m1+1``: a read of the iterate the
    previous step produced (it comes from earlier blocks, not from this one)."""
    sh = c.info.shifted.get(acc.tensor)
    if sh is None:
        return False
    var, off = sh
    for ix in acc.indices:
        if isinstance(ix, IVar) and ix.var == var:
            return off > 0
        if isinstance(ix, IShift) and ix.var == var:
            return ix.offset < off
    return False


def _fail(msg: str, einsum: Einsum | None = None, line: int | None = None) -> CascadeValidationError:
    if einsum is not None:
        return CascadeValidationError(f"{einsum.label()}: {msg}", line=None)
    return CascadeValidationError(msg, line=line)


def validate(c: Cascade) -> CascadeInfo:
    """Check a cascade and derive its :class:`CascadeInfo`; raise on the first problem."""
    if not c.outputs:
        raise _fail(f"cascade '{c.name}' declares no output tensor")
    # ---- expression depth first: every walker below (and after) recurses per level
    deep = [(p.default, f"the default of parameter '{p.name}'", p.line, None) for p in c.params]
    deep += [(p.block, f"the block size of partition '{p.rank}'", p.line, None)
             for p in c.partitions]
    deep += [(it.stop, f"the stopping condition of rank '{it.rank}'", it.line, None)
             for it in c.iterations]
    deep += [(e.expr, "its expression", None, e) for e in c.einsums]
    for expr, where, line, einsum in deep:
        n = depth(expr)
        if n > MAX_DEPTH:
            raise _fail(f"{where} is nested {n} levels deep; at most {MAX_DEPTH}: split it "
                        f"into several Einsums", einsum, line)
    # ---- ranks and variables
    ranks: list[str] = []

    def add_rank(r: str, line: int | None) -> None:
        if not r[:1].isupper():
            raise _fail(f"rank '{r}' must start with an upper-case letter", line=line)
        if r not in ranks:
            for other in ranks:
                if other.lower() == r.lower():
                    raise _fail(f"ranks '{other}' and '{r}' differ only in case", line=line)
            ranks.append(r)

    params = {}
    for p in c.params:
        if p.name in params:
            raise _fail(f"parameter '{p.name}' is declared twice", line=p.line)
        params[p.name] = p
    decls: dict[str, TensorDecl] = {}
    for t in c.tensors:
        if t.name in decls:
            raise _fail(f"tensor '{t.name}' is declared twice", line=t.line)
        if t.dtype is not None and t.dtype not in DTYPES:
            raise _fail(f"tensor '{t.name}': unknown dtype '{t.dtype}' (expected one of "
                        f"{', '.join(DTYPES)})", line=t.line)
        if len(set(t.ranks)) != len(t.ranks):
            raise _fail(f"tensor '{t.name}' repeats a rank in {list(t.ranks)}", line=t.line)
        decls[t.name] = t
        if t.role in ("input", "output"):
            for r in t.ranks:
                add_rank(r, t.line)
    partition_of: dict[str, Partition] = {}
    part_parent: dict[str, Partition] = {}
    for p in c.partitions:
        if p.rank not in ranks:
            raise _fail(f"partition of unknown rank '{p.rank}' (ranks: {', '.join(ranks)})",
                        line=p.line)
        if p.rank in partition_of:
            raise _fail(f"rank '{p.rank}' is partitioned twice", line=p.line)
        for r in (p.outer, p.inner):
            if r in part_parent or r in partition_of or r == p.rank:
                raise _fail(f"partition of '{p.rank}' reuses the rank name '{r}'",
                            line=p.line)
            add_rank(r, p.line)  # may already be named by an input (e.g. a block mask)
            part_parent[r] = p
        partition_of[p.rank] = p
    for t in c.tensors:
        if t.role == "tensor":
            for r in t.ranks:
                if r not in ranks:
                    raise _fail(f"tensor '{t.name}' uses unknown rank '{r}'", line=t.line)
    var_rank = {r.lower(): r for r in ranks}
    for p in c.params:
        if p.name in var_rank or p.name in ranks:
            what = "index" if p.name in var_rank else "rank"
            raise _fail(f"parameter '{p.name}' has the name of the {what} '{p.name}'; rename "
                        f"one of them", line=p.line)
    iterative: dict[str, Iteration] = {}
    for it in c.iterations:
        if it.rank not in ranks:
            raise _fail(f"iterate over unknown rank '{it.rank}'", line=it.line)
        iterative[it.rank] = it

    def check_names(expr: Expr, where: str, allow_vars: set[str] | None, einsum=None, line=None):
        for node in walk(expr):
            if isinstance(node, Name):
                n = node.name
                if n in params or n in ranks:
                    continue
                if allow_vars is not None and n in allow_vars:
                    continue
                hint = ""
                if n.lower() in var_rank and allow_vars is not None:
                    hint = f" (index '{n}' is not iterated by this Einsum)"
                raise _fail(f"unknown name '{n}' in {where}{hint}", einsum, line)
            if isinstance(node, Call):
                if node.func in FUNCTIONS:
                    if len(node.args) != FUNCTIONS[node.func]:
                        raise _fail(f"{node.func}() takes {FUNCTIONS[node.func]} argument(s), "
                                    f"got {len(node.args)} in {where}", einsum, line)
                elif node.func in params:
                    if len(node.args) != 1:
                        raise _fail(f"feature map '{node.func}' takes 1 argument in {where}",
                                    einsum, line)
                    d = params[node.func].default
                    if not (isinstance(d, Str) and d.value in UNARY_FEATURE_MAPS):
                        raise _fail(f"parameter '{node.func}' is called as a function but its "
                                    f"default is not one of {', '.join(UNARY_FEATURE_MAPS)}",
                                    einsum, line)
                else:
                    raise _fail(f"unknown function '{node.func}' in {where} (expected one of "
                                f"{', '.join(FUNCTIONS)})", einsum, line)

    for p in c.params:
        check_names(p.default, f"the default of parameter '{p.name}'", None, line=p.line)
    for p in c.partitions:
        check_names(p.block, f"the block size of partition '{p.rank}'", None, line=p.line)
    for it in c.iterations:
        check_names(it.stop, f"the stopping condition of rank '{it.rank}'", None, line=it.line)

    # ---- Einsums: definitions, ranks of intermediates
    tensor_ranks: dict[str, tuple[str, ...]] = {t.name: t.ranks for t in c.tensors
                                                if t.role in ("input", "output", "tensor")}
    defined: dict[str, list[Einsum]] = {}
    for e in c.einsums:
        t = e.tensor
        if t in decls and decls[t].role == "input":
            raise _fail(f"writes to input tensor '{t}'", e)
        lhs_ranks: list[str] = []
        seen_vars: set[str] = set()
        for ix in e.lhs.indices:
            if isinstance(ix, (IVar, IShift, IInit)):
                if ix.var not in var_rank:
                    raise _fail(f"index '{ix.var}' of tensor '{t}' names no rank "
                                f"(ranks: {', '.join(ranks)})", e)
                if ix.var in seen_vars:
                    raise _fail(f"index '{ix.var}' appears twice on the left of '{t}'", e)
                seen_vars.add(ix.var)
                lhs_ranks.append(var_rank[ix.var])
                if isinstance(ix, IShift) and var_rank[ix.var] not in iterative:
                    raise _fail(f"tensor '{t}' is written at '{ix.var}+{ix.offset}' but rank "
                                f"'{var_rank[ix.var]}' is not declared with "
                                f"'iterate {var_rank[ix.var]} until ...'", e)
                if isinstance(ix, IInit) and var_rank[ix.var] not in iterative:
                    raise _fail(f"tensor '{t}' is initialised at '{ix.var}={ix.value}' but rank "
                                f"'{var_rank[ix.var]}' is not iterative", e)
            elif isinstance(ix, ISplit):
                p = part_parent.get(ix.inner_rank)
                if (p is None or p.inner != ix.inner_rank or ix.outer not in var_rank
                        or ix.inner != p.inner.lower()):
                    raise _fail(f"'{ix.outer}*{ix.inner_rank}+{ix.inner}' on the left of '{t}' "
                                f"does not match a declared partition", e)
                lhs_ranks.append(p.rank)
                seen_vars.update({ix.outer, ix.inner})
            else:
                raise _fail(f"fixed coordinates are not allowed on the left of '{t}'", e)
        prev = tensor_ranks.get(t)
        if prev is not None and tuple(lhs_ranks) != tuple(prev):
            raise _fail(f"tensor '{t}' has ranks [{', '.join(prev)}] but is written as "
                        f"[{', '.join(lhs_ranks)}]", e)
        tensor_ranks[t] = tuple(lhs_ranks)
        defined.setdefault(t, []).append(e)

    for t, es in defined.items():
        inits = [e for e in es if e.is_init]
        mains = [e for e in es if not e.is_init]
        if len(mains) != 1:
            if not mains:
                raise _fail(f"tensor '{t}' has an initialisation but no defining Einsum",
                            es[0])
            raise _fail(f"tensor '{t}' is defined by {len(mains)} Einsums (lines "
                        f"{', '.join(str(e.line) for e in mains)}); only a recurrence may "
                        f"have a second, initialising Einsum", mains[1])
        sh = mains[0].shift
        if sh is not None and not inits:
            raise _fail(f"iterative tensor '{t}' (written at {sh[0]}+{sh[1]}) has no "
                        f"initialisation such as '{t}[{sh[0]}=0, ...] = ...'", mains[0])
        if inits and sh is None:
            raise _fail(f"tensor '{t}' has an initialisation but is not written at a shifted "
                        f"coordinate such as '{t}[x+1, ...]'", inits[0])
        if len(inits) > 1:
            raise _fail(f"tensor '{t}' is initialised twice", inits[1])
    for o in c.outputs:
        if o.name not in defined:
            raise _fail(f"output tensor '{o.name}' is never computed", line=o.line)
    for t in c.tensors:
        if t.role == "tensor" and t.name not in defined:
            raise _fail(f"declared tensor '{t.name}' is never computed", line=t.line)

    shifted = {t: es_main.shift for t, es in defined.items()
               for es_main in es if not es_main.is_init and es_main.shift is not None}

    # ---- accesses on right-hand sides
    for e in c.einsums:
        lhs_vars = {v for ix in e.lhs.indices for v in index_vars(ix)}
        rhs_vars: set[str] = set()
        for acc in accesses(e.expr):
            if acc.tensor not in tensor_ranks:
                raise _fail(f"tensor '{acc.tensor}' is not defined (neither an input nor "
                            f"written by any Einsum)", e)
            tr = tensor_ranks[acc.tensor]
            if len(acc.indices) != len(tr):
                raise _fail(f"tensor '{acc.tensor}' has {len(tr)} ranks [{', '.join(tr)}] but "
                            f"is accessed with {len(acc.indices)} indices", e)
            used: set[str] = set()
            for ix, r in zip(acc.indices, tr):
                if isinstance(ix, (IVar, IShift)):
                    if ix.var not in var_rank:
                        raise _fail(f"index '{ix.var}' of tensor '{acc.tensor}' names no rank",
                                    e)
                    if var_rank[ix.var] != r:
                        raise _fail(f"index '{ix.var}' (rank {var_rank[ix.var]}) is used for "
                                    f"rank {r} of tensor '{acc.tensor}'", e)
                    if isinstance(ix, IShift):
                        if shifted.get(acc.tensor, (None,))[0] != ix.var:
                            raise _fail(f"'{acc.tensor}[..{ix.var}{ix.offset:+d}..]': only "
                                        f"iterative tensors are read at shifted coordinates",
                                        e)
                elif isinstance(ix, ISplit):
                    p = part_parent.get(ix.inner_rank)
                    if p is None or p.inner != ix.inner_rank or ix.inner != p.inner.lower():
                        raise _fail(f"'{ix.outer}*{ix.inner_rank}+{ix.inner}' in tensor "
                                    f"'{acc.tensor}' does not match a partition 'R -> R1, "
                                    f"{ix.inner_rank}'", e)
                    if p.rank != r:
                        raise _fail(f"partitioned coordinate of rank {p.rank} is used for rank "
                                    f"{r} of tensor '{acc.tensor}'", e)
                    if ix.outer not in var_rank:
                        raise _fail(f"index '{ix.outer}' names no rank", e)
                elif isinstance(ix, IFixed):
                    if ix.rank != r:
                        raise _fail(f"fixed coordinate '{ix.rank}' is used for rank {r} of "
                                    f"tensor '{acc.tensor}'", e)
                    if r not in iterative or shifted.get(acc.tensor, (None,))[0] != r.lower():
                        raise _fail(f"fixed coordinate '{ix.rank}' of tensor '{acc.tensor}' "
                                    f"reads a final iterate, but '{acc.tensor}' is not "
                                    f"iterative over {ix.rank}", e)
                elif isinstance(ix, IInit):
                    raise _fail(f"'{ix.var}={ix.value}' is only allowed on the left-hand side",
                                e)
                for v in index_vars(ix):
                    if v in used:
                        raise _fail(f"index '{v}' appears twice in tensor '{acc.tensor}'", e)
                    used.add(v)
                    rhs_vars.add(v)
        for node in walk(e.expr):
            if isinstance(node, Name) and node.name in var_rank:
                rhs_vars.add(node.name)
        check_names(e.expr, "its expression", lhs_vars | rhs_vars, e)
        init_vars = {ix.var for ix in e.lhs.indices if isinstance(ix, IInit)}
        missing = [v for v in lhs_vars - rhs_vars - init_vars]
        if missing and not e.is_init:
            v = sorted(missing)[0]
            raise _fail(f"output rank {var_rank.get(v, v)} (index '{v}') of tensor "
                        f"'{e.tensor}' does not follow from its inputs", e)
        if e.reduction is not None:
            if e.reduction.op not in REDUCE_OPS:
                raise _fail(f"unknown reduction '{e.reduction.op}' (expected "
                            f"{', '.join(REDUCE_OPS)})", e)
            for v in e.reduction.vars:
                if v in lhs_vars:
                    raise _fail(f"reduces over '{v}', which is also an index of the result "
                                f"'{e.tensor}'", e)
                if v not in rhs_vars:
                    raise _fail(f"reduces over '{v}', which no tensor on the right ranges "
                                f"over", e)
        extra = rhs_vars - lhs_vars - set(e.reduction.vars if e.reduction else ())
        if extra:
            v = sorted(extra)[0]
            raise _fail(f"index '{v}' ranges over the right-hand side but is neither on the "
                        f"left nor reduced (write 'sum[{v}] ...' or another reduction)", e)

    # ---- dependency graph, recurrences and execution order
    g = nx.DiGraph()
    for t in tensor_ranks:
        g.add_node(t)
    for i, e in enumerate(c.einsums):
        for acc in accesses(e.expr):
            g.add_edge(acc.tensor, e.tensor)
    order = _plan(c, g, shifted, var_rank)
    return CascadeInfo(ranks=tuple(ranks), var_rank=var_rank, tensor_ranks=tensor_ranks,
                       iterative=iterative, shifted=shifted, partition_of=partition_of,
                       part_parent=part_parent, order=order, graph=g)


def _plan(c: Cascade, g: nx.DiGraph, shifted: dict, var_rank: dict) -> tuple:
    """Execution plan: vectorised Einsums and loops over iterative ranks, in dependency order."""
    main_of = {e.tensor: i for i, e in enumerate(c.einsums) if not e.is_init}
    init_of = {e.tensor: i for i, e in enumerate(c.einsums) if e.is_init}
    cond = nx.condensation(g)
    plan: list[tuple] = []
    for comp in nx.topological_sort(cond):
        members = sorted(cond.nodes[comp]["members"], key=lambda t: main_of.get(t, -1))
        members = [t for t in members if t in main_of]
        if not members:
            continue
        cyclic = len(members) > 1 or g.has_edge(members[0], members[0])
        if not cyclic:
            t = members[0]
            if t in init_of:
                plan.append(("einsum", init_of[t]))
            plan.append(("einsum", main_of[t]))
            continue
        loop_vars = {shifted[t][0] for t in members if t in shifted}
        e0 = c.einsums[main_of[members[0]]]
        if not loop_vars:
            raise _fail(f"tensors {', '.join(members)} depend on each other in a cycle that is "
                        f"not an iterative recurrence (no tensor is written at 'x+1')", e0)
        if len(loop_vars) > 1:
            raise _fail(f"recurrence over tensors {', '.join(members)} mixes iterative ranks "
                        f"{', '.join(sorted(loop_vars))}", e0)
        var = loop_vars.pop()
        # Within one step, A must precede B when B reads A at the coordinate A writes now.
        step = nx.DiGraph()
        step.add_nodes_from(members)
        for t in members:
            e = c.einsums[main_of[t]]
            for acc in accesses(e.expr):
                if acc.tensor not in members:
                    continue
                write_off = shifted.get(acc.tensor, (var, 0))[1]
                read_off = None
                for ix in acc.indices:
                    if isinstance(ix, IVar) and ix.var == var:
                        read_off = 0
                    elif isinstance(ix, IShift) and ix.var == var:
                        read_off = ix.offset
                if read_off is None:
                    raise _fail(f"tensor '{acc.tensor}' is read inside the recurrence over "
                                f"'{var}' without the index '{var}'", e)
                if read_off > write_off:
                    raise _fail(f"reads '{acc.tensor}' at {var}{read_off:+d}, a future iterate "
                                f"(it is written at {var}{write_off:+d})", e)
                if read_off == write_off:
                    step.add_edge(acc.tensor, t)
        if not nx.is_directed_acyclic_graph(step):
            cyc = [u for u, _ in nx.find_cycle(step)]
            raise _fail(f"tensors {', '.join(cyc)} depend on each other within one step of "
                        f"the recurrence over '{var}'", e0)
        for t in members:
            if t not in shifted and not any(isinstance(ix, IVar) and ix.var == var
                                            for ix in c.einsums[main_of[t]].lhs.indices):
                raise _fail(f"tensor '{t}' is part of the recurrence over '{var}' but is not "
                            f"indexed by '{var}'", c.einsums[main_of[t]])
        inits = tuple(init_of[t] for t in members if t in init_of)
        for i in inits:
            plan.append(("einsum", i))
        body = tuple(main_of[t] for t in nx.lexicographical_topological_sort(
            step, key=lambda t: main_of[t]))
        plan.append(("loop", var, body))
    return tuple(plan)


def is_inf(x: float) -> bool:
    return isinstance(x, float) and math.isinf(x)
