"""Chunked linear attention read from the structure and emitted: Lightning Attention-2.

A cascade belongs to this family when its iterated rank is the outer rank of a partition of
the *query* rank (the output's rank: blocks of the sequence in order, not blocks of keys as in
the online softmax) and it carries a state over two head dimensions across those blocks. Read
from the IR, nothing by name:

* the **state** ``X[p1+1, e, f] = a * X[p1, e, f] + U[p1, e, f]`` (``a`` a constant: the decay
  of a whole block), with the block's increment ``U = sum[m0] w(m0) * K[p1*M0+m0, e] *
  V[p1*M0+m0, f]`` (the keys and values of the query block's own key block, each key row
  weighted by ``w``);
* the **intra-block** product: the score ``S = sum[e] Q * K`` over the block's keys, a
  pointwise map of it and of the in-block positions (``where(m0 > p0, 0, decay ** (p0 - m0) *
  S)``: the in-block causal mask and decay), summed with V;
* the **inter-block** product ``sum[e] Q * X[p1, e, f]`` (the state before this block);
* the **output**: a sum of the two products, each times a weight of the query's in-block
  position (``decay ** (p0 + 1)``).

The kernel (:func:`emit_chunked`) runs one program per (batch, query head, block of value
columns) over the blocks of the sequence in order -- the ``lightning2`` mapping's loop nest:
Q, K and V tiles of the block, the intra product on the matrix unit, the inter product
against the E x F state kept on chip in fp32, then the state update. Constants (parameters,
the block size for ``P0``/``M0``, ``log2`` of a power's base) are baked into the source.
"""
from __future__ import annotations

import math
import re

from cascades.ir import Access, Binary, Call, IShift, ISplit, IVar, Name, Num, Unary, accesses, walk


def _fail(c, why):
    from cascades.triton.analyze import _fail as fail
    return fail(c, why)


def _terms(e):
    """``e`` as a list of additive terms (sign folded into a factor)."""
    if isinstance(e, Binary) and e.op == "+":
        return _terms(e.left) + _terms(e.right)
    if isinstance(e, Binary) and e.op == "-":
        return _terms(e.left) + [Binary("*", Num(-1.0), t) for t in _terms(e.right)]
    return [e]


def _factors(e):
    from cascades.triton.analyze import _product_factors
    f = _product_factors(e)
    if f is None:
        return None
    mul, div = f
    return mul, div


class _Tr:
    """Tile expressions as Triton source: index variables by name (``qi``, ``ki``), accesses
    by name, constants as ``{{python}}`` markers that :func:`emit_chunked` evaluates."""

    def __init__(self, c, names: dict, tensors: dict):
        self.c = c
        self.names = names          # index variable -> Triton name
        self.tensors = tensors      # tensor -> Triton name
        self.vars = set(c.info.var_rank)

    def const(self, e) -> bool:
        return not any(isinstance(n, Access) or (isinstance(n, Name) and n.name in self.vars)
                       for n in walk(e))

    def __call__(self, e) -> str | None:
        from cascades.triton.analyze import _TRITON_FUNCS, CodegenError, py_expr
        if self.const(e):
            try:
                return "{{" + py_expr(e) + "}}"
            except CodegenError:
                return None
        if isinstance(e, Access):
            return self.tensors.get(e.tensor)
        if isinstance(e, Name):
            return self.names.get(e.name)
        if isinstance(e, Unary):
            a = self(e.operand)
            if a is None:
                return None
            return f"(-{a})" if e.op == "-" else f"(~{a})"
        if isinstance(e, Binary) and e.op == "**":
            if not self.const(e.left):
                return None
            b = self(e.right)
            return None if b is None else \
                f"tl.math.exp2(({b}) * {{{{math.log2({py_expr(e.left)})}}}})"
        if isinstance(e, Binary):
            op = {"and": "&", "or": "|"}.get(e.op, e.op)
            a, b = self(e.left), self(e.right)
            return None if a is None or b is None else f"({a} {op} {b})"
        if isinstance(e, Call) and e.func == "where" and len(e.args) == 3:
            args = [self(a) for a in e.args]
            return None if None in args else f"tl.where({args[0]}, {args[1]}, {args[2]})"
        if isinstance(e, Call) and e.func in ("max", "min") and len(e.args) == 2:
            a, b = self(e.args[0]), self(e.args[1])
            return None if a is None or b is None else f"tl.{e.func}imum({a}, {b})"
        if isinstance(e, Call) and e.func in _TRITON_FUNCS and len(e.args) == 1:
            a = self(e.args[0])
            return None if a is None else _TRITON_FUNCS[e.func].format(a)
        return None


def _weight(tr, factors, div, what, c):
    """The product of ``factors`` / ``div`` (no tensor accesses) as Triton source."""
    srcs = []
    for xs, inv in ((factors, False), (div, True)):
        for x in xs:
            s = tr(x)
            if s is None:
                raise _fail(c, f"the {what} is not a pointwise expression of in-block positions "
                               f"and constants")
            srcs.append(f"(1.0 / {s})" if inv else s)
    return " * ".join(srcs) if srcs else "1.0"


def analyze_chunked(c, alias, out):
    """The :class:`KernelPlan` of a chunked linear-attention cascade, or None when the cascade
    does not iterate over blocks of its query rank (see the module docstring)."""
    from cascades.triton.analyze import KernelPlan, _compose_map, py_expr
    info = c.info
    ranks = info.tensor_ranks
    if len(c.iterations) != 1:
        return None
    it = c.iterations[0].rank
    part = next((p for p in c.partitions if p.outer == it), None)
    if part is None or part.rank not in ranks[out.name]:
        return None
    it_var, qin_var = it.lower(), part.inner.lower()
    kpart = next((p for p in c.partitions if p.rank != part.rank), None)
    if kpart is None:
        raise _fail(c, f"a recurrence over blocks of {part.rank} needs the key rank tiled too")
    kin_var = kpart.inner.lower()
    block_params = {p.block.name for p in (part, kpart) if isinstance(p.block, Name)}

    # --- the state: X[p1+1, e, f] = a * X[p1, e, f] + U[p1, e, f]
    recs = [e for e in c.einsums if e.shift == (it_var, 1)]
    if len(recs) != 1 or len(ranks[recs[0].tensor]) != 3:
        raise _fail(c, f"a recurrence over blocks of {part.rank} must carry one state "
                       f"X[{it_var}, e, f] over two head dimensions")
    rec = recs[0]
    state = rec.tensor
    a_src, inc = None, None
    for t in _terms(rec.expr):
        f = _factors(t)
        acc = [x for x in (f[0] if f else []) if isinstance(x, Access)]
        if f is None or len(acc) != 1 or f[1] and any(isinstance(x, Access) for x in f[1]):
            raise _fail(c, f"the state {state} must be 'a * {state}[{it_var}] + increment'")
        rest = [x for x in f[0] if not isinstance(x, Access)]
        if acc[0].tensor == state:
            if a_src is not None:
                raise _fail(c, f"the state {state} appears twice in its recurrence")
            if any(not _Tr(c, {}, {}).const(x) for x in rest + f[1]):
                raise _fail(c, f"the decay of the state {state} must be a constant")
            a_src = "{{" + py_expr(_mul(rest, f[1])) + "}}"
        else:
            if inc is not None or rest or f[1]:
                raise _fail(c, f"the state {state}'s increment must be one tensor")
            inc = acc[0].tensor
    if a_src is None or inc is None:
        raise _fail(c, f"the state {state} must be 'a * {state}[{it_var}] + increment'")

    # --- the increment: sum[m0] w(m0) * K[p1*M0+m0, e] * V[p1*M0+m0, f]
    inc_e = c.defining(inc)
    if len(inc_e) != 1 or inc_e[0].reduction is None or inc_e[0].reduction.vars != (kin_var,):
        raise _fail(c, f"the increment {inc} must be a sum over the keys of the block ({kin_var})")
    f = _factors(inc_e[0].expr)
    kv = [x for x in (f[0] if f else []) if isinstance(x, Access)]
    if f is None or len(kv) != 2 or any(isinstance(x, Access) for x in f[1]) or not all(
            a.tensor in alias and _own_block(a, it_var, kin_var) for a in kv):
        raise _fail(c, f"the increment {inc} must be sum[{kin_var}] weight * K * V over the keys "
                       f"of the query block ({it_var}*{kpart.inner}+{kin_var})")
    kr_tr = _Tr(c, {kin_var: "kr"}, {})
    kw_src = _weight(kr_tr, [x for x in f[0] if not isinstance(x, Access)], f[1],
                     "weight of the keys in the state", c)

    # --- the intra-block score and its map
    score_e = None
    for e in c.einsums:
        x = e.expr
        if (e.reduction is not None and e.reduction.op == "sum" and len(e.reduction.vars) == 1
                and isinstance(x, Binary) and x.op == "*" and all(
                    isinstance(y, Access) and y.tensor in alias for y in (x.left, x.right))):
            score_e = e
            break
    if score_e is None:
        raise _fail(c, "no intra-block score 'sum[e] Q * K' over the block's keys")
    pair = {alias[score_e.expr.left.tensor], alias[score_e.expr.right.tensor]}
    k_name = next((alias[a.tensor] for a in kv if alias[a.tensor] in pair), None)
    if k_name is None or len(pair) != 2:
        raise _fail(c, "the intra-block score must multiply the queries by the state's keys")
    q_name = (pair - {k_name}).pop()
    v_name = next(alias[a.tensor] for a in kv if alias[a.tensor] != k_name)
    q_access = next(y for y in (score_e.expr.left, score_e.expr.right)
                    if alias[y.tensor] == q_name)
    readers = [e for e in c.einsums if any(a.tensor == score_e.tensor for a in accesses(e.expr))]
    if len(readers) != 1 or readers[0].reduction is not None:
        raise _fail(c, f"the intra-block score '{score_e.tensor}' must be read by one "
                       f"elementwise Einsum")
    map_e, map_expr, _ = _compose_map(c, readers[0])
    intra_src = _Tr(c, {qin_var: "qi", kin_var: "ki"}, {score_e.tensor: "qk"})(map_expr)
    if intra_src is None or "qk" not in intra_src:
        raise _fail(c, f"the intra-block map of '{score_e.tensor}' is not a pointwise expression "
                       f"of the score, the in-block positions and constants")
    intra_out = [e for e in c.einsums if e.reduction is not None
                 and e.reduction.vars == (kin_var,)
                 and any(a.tensor == map_e.tensor for a in accesses(e.expr))]
    f = _factors(intra_out[0].expr) if len(intra_out) == 1 else None
    if f is None or f[1] or sorted(
            alias.get(x.tensor, x.tensor) for x in f[0] if isinstance(x, Access)) != sorted(
            (map_e.tensor, v_name)) or any(not isinstance(x, Access) for x in f[0]):
        raise _fail(c, f"the mapped intra-block score must be summed with V over {kin_var}")
    intra_t = intra_out[0].tensor

    # --- the inter-block product: sum[e] Q * X[p1, e, f]
    inter = [e for e in c.einsums if e.reduction is not None and e.reduction.op == "sum"
             and any(a.tensor == state and isinstance(a.indices[0], IVar)
                     and a.indices[0].var == it_var for a in accesses(e.expr))]
    f = _factors(inter[0].expr) if len(inter) == 1 else None
    if f is None or f[1] or sorted(alias.get(x.tensor, x.tensor) for x in f[0]
                                   if isinstance(x, Access)) != sorted((q_name, state)):
        raise _fail(c, f"the queries must read the state {state}[{it_var}] as sum[e] Q * {state}")
    inter_t = inter[0].tensor

    # --- the output: w1(p0) * intra + w2(p0) * inter
    out_e = c.defining(out.name)
    if len(out_e) != 1 or out_e[0].reduction is not None:
        raise _fail(c, "the output must be an elementwise sum of the intra and inter products")
    q_tr = _Tr(c, {qin_var: "qi"}, {})
    w = {}
    for t in _terms(out_e[0].expr):
        f = _factors(t)
        acc = [x for x in (f[0] if f else []) if isinstance(x, Access)]
        if f is None or len(acc) != 1 or acc[0].tensor not in (intra_t, inter_t) \
                or acc[0].tensor in w:
            raise _fail(c, f"the output must be w1 * {intra_t} + w2 * {inter_t}")
        w[acc[0].tensor] = _weight(q_tr, [x for x in f[0] if x is not acc[0]], f[1],
                                   "weight of the output terms", c)
    if set(w) != {intra_t, inter_t}:
        raise _fail(c, f"the output must be w1 * {intra_t} + w2 * {inter_t}")
    if any(isinstance(ix, IShift) for ix in q_access.indices):
        raise _fail(c, "the queries must be read at the current block")
    params = {p.name: py_expr(p.default) for p in c.params}
    consts = dict(block=sorted(block_params), inner=(part.inner, kpart.inner))
    return KernelPlan(cascade=c.name, family="chunked", normalisation="none",
                      nonlinearity="pointwise", scale="1", bias="0", causal_param=None,
                      causal_offset="0", mask_fill=0.0, group_rank=None, block_param=None,
                      params=params, passes=1, score_fn=intra_src,
                      baked=tuple(n for n in params),
                      chunked=(intra_src, kw_src, a_src, w[intra_t], w[inter_t],
                               tuple(consts["block"]), consts["inner"],
                               (q_name, k_name, v_name)))


def _mul(mul, div):
    e = Num(1.0)
    for x in mul:
        e = Binary("*", e, x)
    for x in div:
        e = Binary("/", e, x)
    return e


def _own_block(a, it_var, kin_var) -> bool:
    """``K[p1*M0+m0, e]``: the key rows of the query block itself (self-attention)."""
    return any(isinstance(ix, ISplit) and ix.outer == it_var and ix.inner == kin_var
               for ix in a.indices)


# ------------------------------------------------------------------------------ emission
def _bake(src: str, env: dict, cascade: str) -> str:
    from cascades.triton.analyze import CodegenError

    def one(m):
        try:
            v = eval(m.group(1), {"math": math}, dict(env))  # noqa: S307 - our own source
        except (ValueError, ZeroDivisionError, NameError, TypeError) as exc:
            raise CodegenError(f"cascade '{cascade}': the constant {m.group(1)} has no value "
                               f"({exc})") from None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise CodegenError(f"cascade '{cascade}': the constant {m.group(1)} is not a finite "
                               f"number ({v!r})")
        return repr(float(v))
    return re.sub(r"\{\{(.*?)\}\}", one, src)


def emit_chunked(plan, tiling) -> tuple[str, list[str]]:
    """The module of a chunked linear-attention plan: one kernel and ``forward``."""
    from cascades.triton.analyze import CodegenError
    from cascades.triton.emit import CHECK_DIMS, _plain_loop_params, kernel_prefix, module_head
    intra, kw, a, w_intra, w_inter, block_params, inner, _ = plan.chunked
    if tiling.block_n != tiling.block_m:
        raise CodegenError(f"cascade '{plan.cascade}': the queries and keys are tiled with one "
                           f"block (the sequence's); set block_n = block_m "
                           f"(got {tiling.block_m} and {tiling.block_n})")
    env = _plain_loop_params(plan, tiling, "chunked recurrence")
    block = tiling.block_m
    env.update({n: block for n in block_params})
    env.update({r: block for r in inner})
    intra, kw, a, w_intra, w_inter = (_bake(s, env, plan.cascade)
                                      for s in (intra, kw, a, w_intra, w_inter))
    prec = ', input_precision="ieee"' if tiling.dtype == "fp32" else ""
    pre = kernel_prefix(plan.cascade)
    name = f"{pre}_fwd"
    doc = f'''Triton kernel generated by cascades.triton from cascade '{plan.cascade}'.

family: chunked (linear attention over blocks of the sequence with a carried state)
intra-block map: {intra}
key weight: {kw}; state decay per block: {a}; output weights: {w_intra} (intra), {w_inter} (inter)
tiling: BLOCK={block} num_warps={tiling.num_warps} num_stages={tiling.num_stages} head_dim={tiling.head_dim} dtype={tiling.dtype}
kernels: {name}
'''
    src = module_head(doc, plan.cascade, [name], tiling.dtype, dict(
        BLOCK=block, BLOCK_M=block, BLOCK_N=block, NUM_WARPS=tiling.num_warps,
        NUM_STAGES=tiling.num_stages, HEAD_DIM=tiling.head_dim, HEAD_DIM_V=tiling.head_dim))
    src += f'''

@triton.jit
def {name}(Q, K, V, O, stride_qb, stride_qh, stride_qm, stride_qd, stride_kb, stride_kh,
        stride_kn, stride_kd, stride_vb, stride_vh, stride_vn, stride_vd, stride_ob, stride_oh,
        stride_om, stride_od, HQ, GROUP, N_LEN, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr,
        BLOCK_F: tl.constexpr):
    pid_h = tl.program_id(0)
    off_f = tl.program_id(1) * BLOCK_F
    off_b = pid_h // HQ
    off_h = pid_h % HQ
    off_hk = off_h // GROUP
    offs = tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_f = off_f + tl.arange(0, BLOCK_F)
    qi = offs[:, None].to(tl.float32)
    ki = offs[None, :].to(tl.float32)
    kr = offs[:, None].to(tl.float32)
    # weights of the in-block positions, the same for every block
    w_k = {kw}
    w_intra = {w_intra}
    w_inter = {w_inter}
    q_base = Q + off_b * stride_qb + off_h * stride_qh + offs_d[None, :] * stride_qd
    k_base = K + off_b * stride_kb + off_hk * stride_kh + offs_d[None, :] * stride_kd
    v_base = V + off_b * stride_vb + off_hk * stride_vh + offs_f[None, :] * stride_vd
    o_base = O + off_b * stride_ob + off_h * stride_oh + offs_f[None, :] * stride_od
    state = tl.zeros([HEAD_DIM, BLOCK_F], dtype=tl.float32)
    for start in range(0, N_LEN, BLOCK):
        rows = start + offs
        ok = rows < N_LEN
        q = tl.load(q_base + rows[:, None] * stride_qm, mask=ok[:, None], other=0.0)
        k = tl.load(k_base + rows[:, None] * stride_kn, mask=ok[:, None], other=0.0)
        v = tl.load(v_base + rows[:, None] * stride_vn, mask=ok[:, None], other=0.0)
        qk = tl.dot(q, tl.trans(k){prec})
        s = {intra}
        s = tl.where(ok[None, :], s, 0.0)
        o_intra = tl.dot(s.to(v.dtype), v{prec})
        o_inter = tl.dot(q, state.to(q.dtype){prec})
        o = w_intra * o_intra + w_inter * o_inter
        tl.store(o_base + rows[:, None] * stride_om, o.to(O.dtype.element_ty), mask=ok[:, None])
        kw = (k.to(tl.float32) * w_k).to(k.dtype)
        state = {a} * state + tl.dot(tl.trans(kw), v{prec})


def forward(q, k, v, out=None, f_blocks=1):
    """Run the kernel: q [B, Hq, N, E], k [B, Hkv, N, E], v [B, Hkv, N, F] (one sequence:
    as many queries as keys); ``f_blocks`` programs per head split the value columns."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be [batch, heads, sequence, head_dim] tensors")
    B, HQ, N, E = q.shape
    HKV = k.shape[1]
    F = v.shape[-1]
    if k.shape[0] != B or v.shape[:3] != k.shape[:3] or k.shape[-1] != E:
        raise ValueError(f"shapes do not fit: q {{tuple(q.shape)}}, k {{tuple(k.shape)}}, v {{tuple(v.shape)}}")
    if k.shape[2] != N:
        raise ValueError(f"this kernel runs self-attention over one sequence: {{N}} queries, {{k.shape[2]}} keys")
{CHECK_DIMS}    if f_blocks < 1 or F % f_blocks or (F // f_blocks) < 16 or (F // f_blocks) & (F // f_blocks - 1):
        raise ValueError(f"f_blocks must split the {{F}} value columns into powers of two of at least 16, got {{f_blocks}}")
    o = torch.empty((B, HQ, N, F), device=q.device, dtype=q.dtype) if out is None else out
    {name}[(B * HQ, f_blocks)](q, k, v, o, *q.stride(), *k.stride(), *v.stride(), *o.stride(),
                         HQ, HQ // HKV, N, BLOCK=BLOCK, HEAD_DIM=E, BLOCK_F=F // f_blocks,
                         num_warps=NUM_WARPS, num_stages=NUM_STAGES)
    return o
'''
    return src, [name]
