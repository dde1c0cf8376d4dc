"""Reading a cascade for code generation: which kernel family it is and its pieces.

The generator does not look cascades up by name. It reads the IR and extracts:

* the tensor roles: the query tensor (``Q[..., P, E]``, with an optional group rank such as
  ``G`` shared over one key/value head), the keys ``K[M, E]`` and values ``V[M, F]`` (also
  through block aliases such as ``BK[m1, m0, e] = K[m1*M0+m0, e]``), the output;
* the *score Einsum* (``sum[e] Q * K``) and the *score map* applied to it (the elementwise
  Einsums that follow it one by one, composed): an affine map ``a * S + b`` (``a``, ``b``
  expressions of parameters and extents) optionally wrapped in a nonlinearity (``sigmoid``),
  or any pointwise map of the score, the positions, parameters and tiles of *extra inputs*
  (a bias ``RAB[p, m]``, vectors over the keys or queries), with an optional causal mask
  ``where(causal and key > query + offset, fill, ...)`` or a sliding window;
* the normalisation: ``online`` (an iterative running maximum over key blocks), with the
  division ``deferred`` to the end (FlashAttention-2) or done ``per-step`` (FlashAttention-1);
  ``none`` (the mapped scores multiply V directly, times constants: sigmoid attention,
  HSTU's SiLU attention); ``three-pass`` (a global maximum,
  a global sum, then the normalised product: three kernels); ``partials`` (a partitioned key
  rank without iteration, the partial results combined by a reduction over the outer rank:
  split-K decode with normalised partials and a log-sum-exp, or the 2-pass cascade with
  unnormalised partials and local maxima: a partial kernel and a combine kernel);
  ``linear`` (feature maps and a state over the keys) and ``chunked`` (a state carried across
  blocks of the queries: Lightning-2, :mod:`cascades.triton.chunked`).

Anything outside these shapes raises :class:`CodegenError` with one line saying why.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from cascades.errors import CascadeError
from cascades.ir import (Access, Binary, Bool, Call, Cascade, Einsum, Expr, IFixed, ISplit,
                         IVar, Name, Num, Str, Unary, accesses, walk)


class CodegenError(CascadeError):
    """The cascade or the tiling cannot be turned into a Triton kernel (one line: why)."""


@dataclass(frozen=True)
class KernelPlan:
    """What the generator needs to know about a cascade (see module docstring)."""
    cascade: str
    family: str                     # "online" | "none" | "three-pass" | "partials"
    normalisation: str              # "deferred" | "per-step" | "none" | "three-pass" | "lse" | "local-max"
    nonlinearity: str               # "exp" (softmax) | "sigmoid"
    scale: str                      # Python expression for the score coefficient a
    bias: str                       # Python expression for the score offset b ("0" if none)
    causal_param: str | None        # name of the boolean parameter that enables the mask
    causal_offset: str              # Python expression: key m is masked when m > p + offset
    mask_fill: float                # value a masked score takes (-inf before exp, 0 after sigmoid)
    group_rank: str | None          # query-only rank shared over one K/V head (GQA)
    block_param: str | None         # parameter that sets the key block (block_kv, chunk_size)
    params: dict = field(default_factory=dict)   # name -> Python expression of its default
    passes: int = 1
    #: a pointwise score map that is not ``a * S + b`` (softcapping, ALiBi, SiLU, ...): a
    #: Triton expression of the raw score tile ``qk``, the key and query positions ``kpos`` and
    #: ``qpos`` and the cascade's parameters (by name; the emitter bakes their values)
    score_fn: str | None = None
    #: parameters whose values the emitter baked into the score map (not launcher arguments)
    baked: tuple = ()
    #: a sliding-window band: key m is also masked when m < p + window_lower (a Python
    #: expression of parameters and head dims; the emitter bakes its value)
    window_lower: str | None = None
    #: a block mask input over [query blocks, key blocks]: the launcher turns it into a list of
    #: key blocks per query block, and the kernel visits only those
    block_mask: str | None = None
    #: linear attention: (feature map of the queries, of the keys, Python expression of
    #: whether the output is normalised) -- family "linear"
    linear: tuple | None = None
    #: extra input tensors the score map reads (a bias tile ``RAB[p, m]``, a per-key or
    #: per-query vector): ``(name, roles)`` with roles the declared axes as ``"q"``/``"k"``;
    #: the score map names their tiles ``_x_<name>``
    extras: tuple = ()
    #: a factor of the output sum (``sum[m] A * V / M``) as a Triton expression of the
    #: parameters and ``M_LEN``/``P_LEN`` (the no-normalisation family), None if there is none
    out_factor: str | None = None
    #: chunked linear attention (an intra-block masked product and a state carried across the
    #: blocks of the sequence): the pieces read by :mod:`cascades.triton.chunked`
    chunked: tuple | None = None

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


# ------------------------------------------------------------------ expressions -> Python
_PY_FUNCS = {"sqrt": "math.sqrt", "log": "math.log", "exp": "math.exp", "abs": "abs"}


def py_expr(e: Expr, names: dict[str, str] | None = None) -> str:
    """Translate a scalar IR expression (parameters, extents, numbers) into Python source."""
    names = names or {}
    if isinstance(e, Num):
        if math.isinf(e.value):
            return "math.inf" if e.value > 0 else "-math.inf"
        return repr(float(e.value)) if not float(e.value).is_integer() else repr(int(e.value))
    if isinstance(e, Bool):
        return repr(bool(e.value))
    if isinstance(e, Str):
        return repr(e.value)
    if isinstance(e, Name):
        return names.get(e.name, e.name)
    if isinstance(e, Unary):
        if e.op == "-":
            return f"(-{py_expr(e.operand, names)})"
        return f"(not {py_expr(e.operand, names)})"
    if isinstance(e, Binary):
        op = e.op
        return f"({py_expr(e.left, names)} {op} {py_expr(e.right, names)})"
    if isinstance(e, Call) and e.func in _PY_FUNCS:
        return f"{_PY_FUNCS[e.func]}({', '.join(py_expr(a, names) for a in e.args)})"
    if isinstance(e, Call) and e.func in ("max", "min"):
        return f"{e.func}({', '.join(py_expr(a, names) for a in e.args)})"
    raise CodegenError(f"cannot translate the expression {e!r} into launcher code")


def _eval_py(src: str, env: dict) -> float:
    return eval(src, {"math": math}, dict(env))  # noqa: S307 - our own generated expression


# ----------------------------------------------------------------------------- helpers
def _fail(c: Cascade, why: str) -> CodegenError:
    return CodegenError(f"cannot generate a Triton kernel for cascade '{c.name}': {why}")


def _is_param_expr(e: Expr, c: Cascade) -> bool:
    """An expression of parameters, rank extents and numbers only (no tensors, no indices)."""
    var_names = set(c.info.var_rank)
    for n in walk(e):
        if isinstance(n, Access):
            return False
        if isinstance(n, Name) and n.name in var_names:
            return False
    return True


def _affine(e: Expr, score: str, c: Cascade):
    """``e`` as ``a * S + b`` in the score tensor ``S``: returns (a, b) IR expressions or None."""
    if isinstance(e, Access):
        return (Num(1.0), Num(0.0)) if e.tensor == score else None
    if _is_param_expr(e, c):
        return (Num(0.0), e)
    if isinstance(e, Binary) and e.op in ("+", "-"):
        l, r = _affine(e.left, score, c), _affine(e.right, score, c)
        if l is None or r is None:
            return None
        return (Binary(e.op, l[0], r[0]), Binary(e.op, l[1], r[1]))
    if isinstance(e, Binary) and e.op == "*":
        for s, k in ((e.left, e.right), (e.right, e.left)):
            if _is_param_expr(k, c):
                a = _affine(s, score, c)
                if a is not None:
                    return (Binary("*", k, a[0]), Binary("*", k, a[1]))
        return None
    if isinstance(e, Binary) and e.op == "/" and _is_param_expr(e.right, c):
        a = _affine(e.left, score, c)
        if a is not None:
            return (Binary("/", a[0], e.right), Binary("/", a[1], e.right))
    if isinstance(e, Unary) and e.op == "-":
        a = _affine(e.operand, score, c)
        if a is not None:
            return (Unary("-", a[0]), Unary("-", a[1]))
    return None


def _simplify_py(src: str, env_names: list[str]) -> str:
    """Drop an expression that is identically zero (checked numerically)."""
    rng = random.Random(0)
    try:
        for _ in range(3):
            env = {n: rng.randint(2, 200) + rng.random() * (n[:1].islower())
                   for n in env_names}
            if _eval_py(src, env) != 0:
                return src
    except Exception:  # noqa: BLE001 - parameters we cannot evaluate stay symbolic
        return src
    return "0"


# ----------------------------------------------------------------------------- analysis
def analyze(c: Cascade) -> KernelPlan:
    """Read ``c`` and return its :class:`KernelPlan`; raise :class:`CodegenError` if unsupported."""
    inputs = c.inputs
    bools = [t for t in inputs if t.dtype == "bool"]
    block_mask = None
    if bools:
        from cascades.masks import mask_region
        region = mask_region(c)
        outer = {p.rank: p.outer for p in c.partitions}
        if (len(bools) == 1 and region.kind == "block" and region.tensor == bools[0].name
                and tuple(bools[0].ranks) == (outer.get("P"), outer.get("M"))):
            block_mask = bools[0].name
        else:
            raise _fail(c, f"the boolean mask input '{bools[0].name}' is not supported (a "
                           f"causal mask given by a boolean parameter, a sliding window, or a "
                           f"block mask over [query blocks, key blocks] are generated)")
        inputs = [t for t in inputs if t.dtype != "bool"]
    if len(inputs) < 3 or len(c.outputs) != 1:
        raise _fail(c, f"expected three inputs (queries, keys, values) and one output, found "
                       f"{len(inputs)} input(s) and {len(c.outputs)} output(s)")
    ranks = c.info.tensor_ranks
    out = c.outputs[0]
    # alias map: tensors that are a pure re-indexing of an input (BK = K[m1*M0+m0, e])
    alias: dict[str, str] = {t.name: t.name for t in inputs}
    for e in c.einsums:
        if isinstance(e.expr, Access) and e.expr.tensor in alias and e.reduction is None:
            alias[e.tensor] = alias[e.expr.tensor]

    from cascades.triton.chunked import analyze_chunked
    chunked = analyze_chunked(c, alias, out)
    if chunked is not None:
        return chunked
    # --- the score Einsum: sum over a rank of a product of two input accesses
    score_e = None
    for e in c.einsums:
        if e.reduction is None or e.reduction.op != "sum" or len(e.reduction.vars) != 1:
            continue
        if isinstance(e.expr, Binary) and e.expr.op == "*" and all(
                isinstance(x, Access) and x.tensor in alias for x in (e.expr.left, e.expr.right)):
            score_e = e
            break
    if score_e is None:
        lin = _analyze_linear(c, alias, out)
        if lin is not None:
            return lin
        raise _fail(c, "no score Einsum 'S = sum[e] Q[p, e] * K[m, e]' over the inputs, and not "
                       "linear attention (a state sum[m] phi(K) V read by phi(Q))")
    a1, a2 = score_e.expr.left, score_e.expr.right
    e_var = score_e.reduction.vars[0]
    e_rank = c.info.var_rank[e_var]
    t1, t2 = alias[a1.tensor], alias[a2.tensor]
    # the key tensor is the one that also appears with the value tensor later; the query has
    # the output's query rank. Decide by rank count: K[M, E] has two ranks.
    q_name, k_name = (t1, t2) if len(ranks[t1]) >= len(ranks[t2]) else (t2, t1)
    if len(ranks[k_name]) != 2:
        raise _fail(c, f"the key tensor '{k_name}' must have two ranks [M, E], has {list(ranks[k_name])}")
    m_rank = ranks[k_name][0]
    rest = [t.name for t in inputs if t.name not in (q_name, k_name)]
    v_name = rest if len(rest) == 1 else [
        n for n in rest if len(ranks[n]) == 2 and ranks[n][0] == m_rank
        and ranks[n][1] == ranks[out.name][-1]]
    if len(v_name) != 1:
        raise _fail(c, "could not tell the query, key and value inputs apart")
    v_name = v_name[0]
    extra_inputs = [n for n in rest if n != v_name]
    q_ranks, k_ranks, v_ranks = ranks[q_name], ranks[k_name], ranks[v_name]
    if k_ranks[1] != e_rank or q_ranks[-1] != e_rank:
        raise _fail(c, f"the score must contract the last rank of '{q_name}' and '{k_name}'")
    if len(v_ranks) != 2 or v_ranks[0] != m_rank:
        raise _fail(c, f"the value tensor '{v_name}' must be [{m_rank}, F]")
    p_rank = q_ranks[-2] if len(q_ranks) >= 2 else None
    extra = [r for r in q_ranks[:-2]]
    if len(extra) > 1:
        raise _fail(c, f"the query tensor has more than one extra rank {extra}")
    group = extra[0] if extra else None
    if group is not None and (group in k_ranks or group in v_ranks):
        raise _fail(c, f"rank {group} of the query also indexes the keys or values")
    if tuple(ranks[out.name]) != tuple(q_ranks[:-1]) + (v_ranks[1],):
        raise _fail(c, f"the output must be [{', '.join(q_ranks[:-1] + (v_ranks[1],))}]")
    p_var = p_rank.lower()
    extras = _extra_roles(c, extra_inputs, p_rank, m_rank)

    # --- the score map: the Einsum that reads the score elementwise (no reduction), composed
    # with the elementwise Einsums that follow it alone (SB = S + bias; SA = silu(SB))
    score = score_e.tensor
    readers = [e for e in c.einsums if any(a.tensor == score for a in accesses(e.expr))]
    if len(readers) != 1 or readers[0].reduction is not None:
        raise _fail(c, f"the score '{score}' must be read by exactly one elementwise Einsum")
    map_e, expr, chain = _compose_map(c, readers[0])
    for name in extras:
        outside = [e.tensor for e in c.einsums if e not in chain
                   and any(a.tensor == name for a in accesses(e.expr))]
        if outside:
            raise _fail(c, f"the extra input '{name}' is read outside the score map "
                           f"(by {outside[0]})")
    causal_param = None
    offset_src = "0"
    fill = None
    window_lower = None
    if (block_mask is not None and isinstance(expr, Call) and expr.func == "where"
            and isinstance(expr.args[0], Access) and expr.args[0].tensor == block_mask):
        # where(BlockMask[p1, m1], score, fill): the mask keeps, the fill is the masked value
        _, expr, fill_e = expr.args
        if not _is_param_expr(fill_e, c):
            raise _fail(c, "the masked score must be a constant")
        fill = _eval_py(py_expr(fill_e), {})
    elif isinstance(expr, Call) and expr.func == "where":
        cond, fill_e, expr = expr.args
        band = _window(c)
        if band is not None:
            causal_param, offset_src, window_lower = band
        else:
            causal_param, offset_src = _causal(cond, c, p_var, m_rank)
        if not _is_param_expr(fill_e, c):
            raise _fail(c, "the masked score must be a constant")
        fill = _eval_py(py_expr(fill_e), {})
    nonlin = "exp"
    whole = expr
    if isinstance(expr, Call) and expr.func == "sigmoid":
        nonlin = "sigmoid"
        expr = expr.args[0]
    aff = _affine(expr, score, c)
    score_fn = None
    mapped = map_e.tensor
    direct = _direct_sum(c, mapped, v_name, out.name, p_rank, m_rank)
    if aff is None or (direct is not None and nonlin != "sigmoid"):
        # a general pointwise map; without normalisation (its weights multiply V directly)
        # the whole map, sigmoid included, is the hook, in natural units
        if direct is not None:
            # constant factors of the weights (silu(x) / M) move to the output: one
            # multiplication per output element instead of one per score
            nonlin, expr = "pointwise", whole
            expr, hoisted = _hoist_constants(expr, c, p_rank, m_rank)
            if hoisted != "1":
                direct = hoisted if direct == "1" else f"{direct} * {hoisted}"
        score_fn = _score_fn(expr, score, c, p_var, m_rank, extras)
        if score_fn is None:
            raise _fail(c, f"the score map of '{map_e.tensor}' is neither 'a * {score} + b' nor a "
                           f"pointwise map of {score}, the key and query positions, "
                           f"parameters and tiles of extra inputs "
                           f"({', '.join(sorted(_TRITON_FUNCS))}, + - * /)")
        aff = (Num(1.0), Num(0.0))
    extents = list(c.info.ranks) + [p.name for p in c.params]
    scale_src = py_expr(aff[0])
    bias_src = _simplify_py(py_expr(aff[1]), extents)

    # --- what consumes the mapped score decides the normalisation
    consumers = [e for e in c.einsums if any(a.tensor == mapped for a in accesses(e.expr))]
    iterative = bool(c.info.iterative)
    partitions = c.partitions
    block_param = None
    for p in partitions:
        if p.rank == m_rank and isinstance(p.block, Name):
            block_param = p.block.name
    out_factor = None
    if nonlin in ("sigmoid", "pointwise"):
        # no normalisation: the mapped scores feed a sum[m] S * V (times constants) directly
        if direct is None:
            raise _fail(c, f"a {nonlin} score must be multiplied by V and summed into the "
                           f"output")
        if direct != "1":
            out_factor = direct
        family, norm, passes = "none", "none", 1
        if fill is None:
            fill = 0.0
        if fill != 0.0:
            raise _fail(c, f"a masked {nonlin} score must be 0 (got {fill}): skipped key blocks "
                           f"would otherwise contribute")
    else:
        exps = [e for e in consumers if any(isinstance(n, Call) and n.func == "exp"
                                            for n in walk(e.expr))]
        maxes = [e for e in consumers if e.reduction is not None and e.reduction.op == "max"]
        if not exps or not maxes:
            raise _fail(c, f"the mapped score '{mapped}' is neither exponentiated against a "
                           f"maximum (softmax) nor passed through sigmoid")
        if fill is None:
            fill = -math.inf
        if iterative:
            allowed = {m_rank} | ({p_rank} if block_mask is not None else set())
            if any(p.rank not in allowed for p in partitions) or m_rank not in c.info.partition_of:
                raise _fail(c, f"the iterated rank must be a partition of the key rank {m_rank}")
            family, passes = "online", 1
            out_e = c.defining(out.name)[0]
            reads_final = any(any(isinstance(ix, IFixed) for ix in a.indices)
                              for a in accesses(out_e.expr))
            if isinstance(out_e.expr, Binary) and out_e.expr.op == "/" and reads_final:
                norm = "deferred"
            elif isinstance(out_e.expr, Access) and reads_final:
                rec = c.defining(out_e.expr.tensor)
                if any(isinstance(n, Binary) and n.op == "/" for e in rec for n in walk(e.expr)):
                    norm = "per-step"
                else:
                    raise _fail(c, "the output reads a final iterate that is never normalised")
            else:
                raise _fail(c, "the output is not a normalised final iterate of the recurrence")
        elif m_rank in c.info.partition_of:
            part = c.info.partition_of[m_rank]
            outer = part.outer.lower()
            # partial results are combined by a reduction over the outer rank
            combine = [e for e in c.einsums if e.reduction and outer in e.reduction.vars]
            if not combine:
                raise _fail(c, f"the partitioned key rank {m_rank} is never combined over {part.outer}")
            uses_log = any(isinstance(n, Call) and n.func == "log"
                           for e in c.einsums for n in walk(e.expr))
            family, passes = "partials", 2
            norm = "lse" if uses_log else "local-max"
        else:
            gmax = [e for e in maxes if e.reduction.vars == (m_rank.lower(),)]
            if not gmax:
                raise _fail(c, "the softmax maximum is not taken over the whole key rank")
            family, norm, passes = "three-pass", "three-pass", 3
    if group is not None and family != "online":
        raise _fail(c, f"a query group rank ({group}) is only generated for the 1-pass recurrence")
    if block_mask is not None and (family != "online" or group is not None):
        raise _fail(c, "a block mask is generated for the 1-pass online softmax without a "
                       "query group rank")
    if window_lower is not None and family != "online" and nonlin != "pointwise":
        raise _fail(c, "a sliding-window mask is generated for the 1-pass online softmax and "
                       "pointwise maps without normalisation")
    if score_fn is not None and family not in ("online", "none"):
        raise _fail(c, "a pointwise score map other than 'a * S + b' is generated for the 1-pass "
                       "online softmax and the kernels without normalisation")
    if extras and block_mask is not None:
        raise _fail(c, "extra input tiles in the score map are not generated with a block mask")
    params = {}
    for p in c.params:
        params[p.name] = py_expr(p.default)
    return KernelPlan(cascade=c.name, family=family, normalisation=norm, nonlinearity=nonlin,
                      scale=scale_src, bias=bias_src, causal_param=causal_param,
                      causal_offset=offset_src, mask_fill=float(fill), group_rank=group,
                      block_param=block_param, params=params, passes=passes,
                      score_fn=score_fn, window_lower=window_lower, block_mask=block_mask,
                      extras=tuple(extras.items()), out_factor=out_factor)


#: feature maps of linear attention, as Triton source of an fp32 tile
LINEAR_FEATURES = {
    "identity": "{0}", "relu": "tl.maximum({0}, 0.0)", "exp": "tl.exp({0})",
    "elu1": "tl.where({0} > 0, {0} + 1.0, tl.exp(tl.minimum({0}, 0.0)))",
    "softplus": "(tl.maximum({0}, 0.0) + tl.log(1.0 + tl.exp(-tl.abs({0}))))",
    "sigmoid": "tl.sigmoid({0})", "abs": "tl.abs({0})", "silu": "(({0}) * tl.sigmoid({0}))",
}


def _analyze_linear(c: Cascade, alias: dict, out) -> KernelPlan | None:
    """Linear attention read from the structure: feature maps of two inputs (``KF = phi(K)``,
    ``QF = phi(Q)``), a state summed over the key rank (``sum[m] KF * V``) with optionally the
    sum of the key features, read by the query features; the output normalised by the query
    features times that sum, or not, or under a boolean parameter."""
    feat = {}
    for e in c.einsums:
        x = e.expr
        if (e.reduction is None and isinstance(x, Call) and len(x.args) == 1
                and isinstance(x.args[0], Access) and x.args[0].tensor in alias):
            fn = x.func
            if fn not in LINEAR_FEATURES:
                try:
                    d = c.param(fn).default
                except KeyError:
                    return None
                fn = getattr(d, "value", None)
                if fn not in LINEAR_FEATURES:
                    raise _fail(c, f"feature map '{fn}' is not generated (one of "
                                   f"{', '.join(LINEAR_FEATURES)})")
            feat[e.tensor] = (alias[x.args[0].tensor], fn, x.func)
    state = None
    for e in c.einsums:
        x = e.expr
        if (e.reduction is not None and e.reduction.op == "sum" and isinstance(x, Binary)
                and x.op == "*" and isinstance(x.left, Access) and isinstance(x.right, Access)):
            names = [x.left.tensor, x.right.tensor]
            f = [n for n in names if n in feat]
            v = [n for n in names if n in alias and n not in feat]
            if f and v:
                state = (f[0], alias[v[0]])
    if state is None:
        return None
    k_name = feat[state[0]][0]
    q_feats = [t for t, (src, _, _) in feat.items() if src != k_name]
    if len(q_feats) != 1:
        return None
    out_e = c.defining(out.name)[0]
    x = out_e.expr
    normalize = "False"
    if isinstance(x, Call) and x.func == "where" and isinstance(x.args[0], Name):
        normalize = x.args[0].name
        x = x.args[1]
    if isinstance(x, Binary) and x.op == "/":
        normalize = normalize if normalize != "False" else "True"
    params = {p.name: py_expr(p.default) for p in c.params}
    baked = tuple(dict.fromkeys(f[2] for f in feat.values() if f[2] in params))
    return KernelPlan(cascade=c.name, family="linear", normalisation="linear",
                      nonlinearity=feat[q_feats[0]][1], scale="1", bias="0", causal_param=None,
                      causal_offset="0", mask_fill=0.0, group_rank=None, block_param=None,
                      params=params, passes=2, baked=baked,
                      linear=(feat[q_feats[0]][1], feat[state[0]][1], normalize))


#: functions a score map may use, as Triton source (``_tanh`` is emitted with the kernel)
_TRITON_FUNCS = {"tanh": "_tanh({})", "sigmoid": "tl.sigmoid({})", "exp": "tl.exp({})",
                 "log": "tl.log({})", "sqrt": "tl.sqrt({})", "abs": "tl.abs({})",
                 "silu": "(({0}) * tl.sigmoid({0}))", "relu": "tl.maximum({}, 0.0)"}


def _score_fn(e: Expr, score: str, c: Cascade, p_var: str, m_rank: str,
              extras: dict | None = None):
    """``e`` as a Triton expression of the score tile (``qk``), the key position (``kpos``),
    the query position (``qpos``), tiles of extra inputs (``_x_<name>``), parameters, the
    head-dim extents and the key count (``M_LEN``); None if it is not one."""
    extras = extras or {}
    info = c.info
    part = info.partition_of.get(m_rank)
    key_vars = {v for v, r in info.var_rank.items() if r == m_rank}
    params = {p.name for p in c.params}

    def is_key_pos(x) -> bool:
        if isinstance(x, Name) and x.name in key_vars:
            return True
        if part is None or not (isinstance(x, Binary) and x.op == "+"):
            return False
        for a, b in ((x.left, x.right), (x.right, x.left)):
            if (isinstance(b, Name) and info.var_rank.get(b.name) == part.inner
                    and isinstance(a, Binary) and a.op == "*"):
                names = {n.name for n in (a.left, a.right) if isinstance(n, Name)}
                if any(info.var_rank.get(n) == part.outer for n in names) and part.inner in names:
                    return True
        return False

    def tr(x):
        if isinstance(x, Access):
            if x.tensor in extras:
                return f"_x_{x.tensor}"
            return "qk" if x.tensor == score else None
        if is_key_pos(x):
            return "kpos"
        if isinstance(x, Name):
            if x.name == p_var:
                return "qpos"
            if x.name in params or x.name in ("E", "F"):
                return x.name
            if x.name == m_rank:
                return "M_LEN"
            return None
        if isinstance(x, Num):
            return repr(float(x.value))
        if isinstance(x, Unary) and x.op == "-":
            a = tr(x.operand)
            return None if a is None else f"(-{a})"
        if isinstance(x, Binary) and x.op in ("+", "-", "*", "/"):
            a, b = tr(x.left), tr(x.right)
            return None if a is None or b is None else f"({a} {x.op} {b})"
        if isinstance(x, Call) and x.func in _TRITON_FUNCS and len(x.args) == 1:
            a = tr(x.args[0])
            return None if a is None else _TRITON_FUNCS[x.func].format(a)
        if isinstance(x, Call) and x.func in ("max", "min") and len(x.args) == 2:
            a, b = tr(x.args[0]), tr(x.args[1])
            return None if a is None or b is None else f"tl.{x.func}imum({a}, {b})"
        return None
    src = tr(e)
    if src is None or "qk" not in src:
        return None
    return src


def _const_fn(e: Expr, c: Cascade, p_rank: str, m_rank: str) -> str | None:
    """A constant factor (parameters, head dims, the query and key counts) as a Triton
    expression of ``P_LEN``/``M_LEN`` and parameter names; None if ``e`` is not one."""
    params = {p.name for p in c.params}
    if isinstance(e, Num):
        return repr(float(e.value))
    if isinstance(e, Name):
        if e.name in params or e.name in ("E", "F"):
            return e.name
        return {m_rank: "M_LEN", p_rank: "P_LEN"}.get(e.name)
    if isinstance(e, Unary) and e.op == "-":
        a = _const_fn(e.operand, c, p_rank, m_rank)
        return None if a is None else f"(-{a})"
    if isinstance(e, Binary) and e.op in ("+", "-", "*", "/"):
        a, b = _const_fn(e.left, c, p_rank, m_rank), _const_fn(e.right, c, p_rank, m_rank)
        return None if a is None or b is None else f"({a} {e.op} {b})"
    if isinstance(e, Call) and e.func in ("sqrt", "log", "exp") and len(e.args) == 1:
        a = _const_fn(e.args[0], c, p_rank, m_rank)
        return None if a is None else _TRITON_FUNCS[e.func].format(a)
    return None


def _substitute(e: Expr, tensor: str, repl: Expr) -> Expr:
    """``e`` with every access of ``tensor`` replaced by ``repl``."""
    if isinstance(e, Access):
        return repl if e.tensor == tensor else e
    if isinstance(e, Unary):
        return Unary(e.op, _substitute(e.operand, tensor, repl))
    if isinstance(e, Binary):
        return Binary(e.op, _substitute(e.left, tensor, repl), _substitute(e.right, tensor, repl))
    if isinstance(e, Call):
        return Call(e.func, tuple(_substitute(a, tensor, repl) for a in e.args))
    return e


def _compose_map(c: Cascade, first: Einsum):
    """The score map as one expression: ``first`` composed with each elementwise Einsum that
    alone reads the previous one at the same coordinates (``SB = S + RAB``, ``SA = silu(SB)``).
    Returns (the last Einsum, the composed expression, the chain)."""
    outs = {t.name for t in c.outputs}
    chain, e, expr = [first], first, first.expr
    while e.tensor not in outs and len(c.defining(e.tensor)) == 1:
        nxt = [x for x in c.einsums if any(a.tensor == e.tensor for a in accesses(x.expr))]
        if len(nxt) != 1 or nxt[0].reduction is not None:
            break
        n = nxt[0]
        reads = [a for a in accesses(n.expr) if a.tensor == e.tensor]
        if any(a.indices != e.lhs.indices for a in reads) or set(n.index_space()) != set(
                e.index_space()) or len(c.defining(n.tensor)) != 1:
            break
        expr = _substitute(n.expr, e.tensor, expr)
        chain.append(n)
        e = n
    return e, expr, chain


def _extra_roles(c: Cascade, names: list, p_rank: str, m_rank: str) -> dict:
    """``{input: roles}`` for inputs beyond Q, K and V: tiles over the query and key
    coordinates (a bias ``RAB[p, m]``, a per-key ``KB[m]``, a per-query vector), each axis
    ``"q"`` or ``"k"`` in declared order, read at the coordinates themselves."""
    out = {}
    ranks = c.info.tensor_ranks
    for n in names:
        rk = tuple(ranks[n])
        if not rk or len(set(rk)) != len(rk) or not set(rk) <= {p_rank, m_rank}:
            raise _fail(c, f"the extra input '{n}' must be indexed by the query and/or key "
                           f"coordinates ({p_rank}, {m_rank}), has [{', '.join(rk)}]")
        for e in c.einsums:
            for a in accesses(e.expr):
                if a.tensor == n and not all(isinstance(ix, (IVar, ISplit)) for ix in a.indices):
                    raise _fail(c, f"the extra input '{n}' must be read at the query and key "
                                   f"coordinates themselves (in {e.tensor})")
        out[n] = tuple("q" if r == p_rank else "k" for r in rk)
    return out


def _product_factors(e: Expr):
    """``e`` as a product: (factors multiplied, factors divided), or None."""
    if isinstance(e, Binary) and e.op == "*":
        a, b = _product_factors(e.left), _product_factors(e.right)
        return None if a is None or b is None else (a[0] + b[0], a[1] + b[1])
    if isinstance(e, Binary) and e.op == "/":
        a = _product_factors(e.left)
        return None if a is None else (a[0], a[1] + [e.right])
    return ([e], [])


def _hoist_constants(e: Expr, c: Cascade, p_rank: str, m_rank: str):
    """``e`` = g * constants: (g, the constants as a Triton expression, ``"1"`` if none)."""
    fac = _product_factors(e)
    if fac is None:
        return e, "1"
    mul, div = fac
    keep_m = [x for x in mul if not _is_param_expr(x, c)]
    keep_d = [x for x in div if not _is_param_expr(x, c)]
    srcs = []
    for xs, inv in ((mul, False), (div, True)):
        for x in xs:
            if _is_param_expr(x, c):
                t = _const_fn(x, c, p_rank, m_rank)
                if t is None:
                    return e, "1"
                srcs.append(f"(1.0 / {t})" if inv else t)
    if not srcs or not keep_m:
        return e, "1"
    g = keep_m[0]
    for x in keep_m[1:]:
        g = Binary("*", g, x)
    for x in keep_d:
        g = Binary("/", g, x)
    return g, " * ".join(srcs)


def _direct_sum(c: Cascade, mapped: str, v_name: str, out_name: str, p_rank: str,
                m_rank: str) -> str | None:
    """When the mapped score is read once, by ``O = sum[m] A * V`` times constants (no
    normalisation across keys), the constant factor as a Triton expression (``"1"`` if none);
    else None."""
    readers = [e for e in c.einsums if any(a.tensor == mapped for a in accesses(e.expr))]
    if len(readers) != 1:
        return None
    e = readers[0]
    if e.tensor != out_name or e.reduction is None or e.reduction.op != "sum":
        return None
    fac = _product_factors(e.expr)
    if fac is None:
        return None
    mul, div = fac
    acc = [x for x in mul if isinstance(x, Access)]
    if sorted(a.tensor for a in acc) != sorted((mapped, v_name)) or any(
            not _is_param_expr(x, c) for x in mul + div if not isinstance(x, Access)):
        return None
    srcs = []
    for xs, inv in ((mul, False), (div, True)):
        for x in xs:
            if isinstance(x, Access):
                continue
            t = _const_fn(x, c, p_rank, m_rank)
            if t is None:
                return None
            srcs.append(f"(1.0 / {t})" if inv else t)
    return " * ".join(srcs) if srcs else "1"


def _key_index(e: Expr, c: Cascade, m_rank: str) -> bool:
    """``m`` or ``m1*M0 + m0`` (the global key coordinate)."""
    if isinstance(e, Name) and c.info.var_rank.get(e.name) == m_rank:
        return True
    part = c.info.partition_of.get(m_rank)
    if part is None:
        return False
    if (isinstance(e, Binary) and e.op == "+" and isinstance(e.right, Name)
            and e.right.name == part.inner.lower() and isinstance(e.left, Binary)
            and e.left.op == "*"):
        names = {n.name for n in (e.left.left, e.left.right) if isinstance(n, Name)}
        return names == {part.outer.lower(), part.inner}
    return False


def _window(c: Cascade):
    """(flag, upper edge, lower edge) of a sliding-window band (cascades.masks), or None."""
    from cascades.masks import mask_region
    r = mask_region(c)
    if r.kind != "window" or r.switch is None:
        return None

    def src(lin):
        terms = " + ".join(f"({coef!r}) * {name}" for name, coef in lin.terms)
        return f"({lin.const!r}{' + ' + terms if terms else ''})"
    return r.switch, src(r.upper), src(r.lower)


def bool_flag(c: Cascade, e: Expr) -> str | None:
    """The boolean parameter named in ``e`` (the last one read), or None: the flag that
    switches a mask on."""
    flags = {p.name for p in c.params if isinstance(p.default, Bool)}
    named = [n.name for n in walk(e) if isinstance(n, Name) and n.name in flags]
    return named[-1] if named else None


def _causal(cond: Expr, c: Cascade, p_var: str, m_rank: str) -> tuple[str, str]:
    """Read ``causal and key > p + offset``; return (parameter name, offset as Python)."""
    if not (isinstance(cond, Binary) and cond.op == "and" and isinstance(cond.left, Name)):
        raise _fail(c, "only a causal mask of the form 'where(causal and key > query, ...)' is "
                       "generated")
    pname = cond.left.name
    try:
        d = c.param(pname).default
    except KeyError:
        raise _fail(c, f"the mask flag '{pname}' is not a boolean parameter") from None
    if not isinstance(d, Bool):
        raise _fail(c, f"the mask flag '{pname}' is not a boolean parameter")
    cmp = cond.right
    if not (isinstance(cmp, Binary) and cmp.op in (">", ">=") and _key_index(cmp.left, c, m_rank)):
        raise _fail(c, "the causal mask must compare the key coordinate with 'key > query + offset'")
    rhs = cmp.right
    # the right side must be p + (an expression of extents): check numerically
    src = py_expr(rhs, {p_var: "_p"})
    if not any(isinstance(n, Name) and n.name == p_var for n in walk(rhs)):
        raise _fail(c, "the causal mask does not depend on the query coordinate")
    extents = list(c.info.ranks)
    rng = random.Random(1)
    for _ in range(3):
        env = {n: rng.randint(50, 500) for n in extents}
        env["_p"] = 0
        v0 = _eval_py(src, env)
        env["_p"] = 7
        if _eval_py(src, env) - v0 != 7:
            raise _fail(c, "the causal mask must be 'key > query + offset' with unit slope")
    offset = py_expr(rhs, {p_var: "0"})
    offset = _simplify_py(offset, extents)
    if cmp.op == ">=":
        offset = f"({offset}) - 1"
    return pname, offset
