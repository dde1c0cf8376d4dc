"""Emitting Triton source and a Python launcher from a :class:`KernelPlan` and a :class:`Tiling`.

The output is one self-contained Python module (it imports only math, torch and triton):
``@triton.jit`` kernels whose names derive from the cascade's name, and a ``forward(q, k, v,
**params)`` launcher taking ``[B, H, N, d]`` tensors. The pieces that vary with the cascade
are spliced in from the plan: the score map (scale, bias, exp or sigmoid), the causal mask and
its offset, the normalisation (deferred, per step, none, three passes, partials + combine) and
grouped-query packing. Exponentials use ``exp2`` with ``log2(e)`` folded into the scale.
"""
from __future__ import annotations

import re

from cascades.triton.analyze import KernelPlan
from cascades.triton.tiling import DTYPES, Tiling

LOG2E = 1.4426950408889634


def kernel_prefix(cascade_name: str) -> str:
    s = re.sub(r"[^0-9A-Za-z]+", "_", cascade_name).strip("_").lower()
    if not s or s[0].isdigit():
        s = "c_" + s
    return s


# ------------------------------------------------------------------------ kernel pieces
# The score block: loads K, computes s (log2 units for exp, natural units for sigmoid)
# and, when MASKED, the boolean `keep` (in range and not causally masked).
_SCORE = """\
        start_n = tl.multiple_of(start_n, BLOCK_N)
        if MASKED:
            kmask = (start_n + offs_n) < M_LEN
            k = tl.load(k_ptrs, mask=kmask[:, None], other=0.0)
        else:
            k = tl.load(k_ptrs)
        qk = tl.dot(q, tl.trans(k){prec})
"""

_KEEP = """\
        if MASKED:
            keep = kmask[None, :]
            if CAUSAL:
                keep = keep & ((start_n + offs_n)[None, :] <= offs_p[:, None] + OFF)
"""

_LOADV = """\
        if MASKED:
            v = tl.load(v_ptrs, mask=kmask[:, None], other=0.0)
        else:
            v = tl.load(v_ptrs)
"""

_ADVANCE = """\
        k_ptrs += BLOCK_N * stride_kn
        v_ptrs += BLOCK_N * stride_vn
"""


def _s_expr(plan: KernelPlan) -> str:
    return "qk * qk_scale" + (" + qk_bias" if plan.bias != "0" else "")


def _inner_online(plan: KernelPlan, prec: str) -> str:
    """The key-block loop of the 1-pass recurrence (deferred or per-step normalisation)."""
    body = _SCORE.format(prec=prec) + _KEEP
    if plan.normalisation == "deferred":
        body += f"""\
        if MASKED:
            s = tl.where(keep, {_s_expr(plan)}, float("-inf"))
            m_ij = tl.maximum(m_i, tl.max(s, 1))
            m_use = tl.where(m_ij == float("-inf"), 0.0, m_ij)
            s = s - m_use[:, None]
            alpha = tl.math.exp2(m_i - m_use)
        else:
""" + ("""\
            m_ij = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            s = qk * qk_scale - m_ij[:, None]
            alpha = tl.math.exp2(m_i - m_ij)
""" if plan.bias == "0" else f"""\
            s = {_s_expr(plan)}
            m_ij = tl.maximum(m_i, tl.max(s, 1))
            s = s - m_ij[:, None]
            alpha = tl.math.exp2(m_i - m_ij)
""") + """\
        p = tl.math.exp2(s)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
""" + _LOADV + f"""\
        acc = tl.dot(p.to(v.dtype), v, acc{prec})
        m_i = m_ij
"""
    else:  # per-step: FlashAttention-1's renormalised output
        body += f"""\
        s = {_s_expr(plan)}
        if MASKED:
            s = tl.where(keep, s, float("-inf"))
        lm = tl.max(s, 1)
        lm_s = tl.where(lm == float("-inf"), 0.0, lm)
        p = tl.math.exp2(s - lm_s[:, None])
        ld = tl.sum(p, 1)
""" + _LOADV + f"""\
        pv = tl.dot(p.to(v.dtype), v{prec})
        m_new = tl.maximum(m_i, lm)
        m_new_s = tl.where(m_new == float("-inf"), 0.0, m_new)
        prm = tl.math.exp2(m_i - m_new_s)
        lrm = tl.math.exp2(lm - m_new_s)
        d_prev = l_i * prm
        l_new = d_prev + ld * lrm
        l_div = tl.where(l_new == 0.0, 1.0, l_new)
        acc = (d_prev[:, None] * acc + lrm[:, None] * pv) / l_div[:, None]
        l_i = l_new
        m_i = m_new
"""
    return body + _ADVANCE


def _inner_sigmoid(plan: KernelPlan, prec: str) -> str:
    fill = plan.mask_fill
    body = _SCORE.format(prec=prec) + _KEEP + f"""\
        x = {_s_expr(plan)}
        p = 1.0 / (1.0 + tl.math.exp2(-x * {LOG2E!r}))
        if MASKED:
            p = tl.where(keep, p, {fill!r})
            p = tl.where(kmask[None, :], p, 0.0)
""" + _LOADV + f"""\
        acc = tl.dot(p.to(v.dtype), v, acc{prec})
"""
    return body + _ADVANCE


def _inner_pass(which: int, prec: str, plan: KernelPlan) -> str:
    """Loops of the three-pass cascade: 1 = global max, 2 = global sum, 3 = normalised PV."""
    body = _SCORE.format(prec=prec) + _KEEP + f"""\
        s = {_s_expr(plan)}
        if MASKED:
            s = tl.where(keep, s, float("-inf"))
"""
    if which == 1:
        body += "        m_i = tl.maximum(m_i, tl.max(s, 1))\n"
    elif which == 2:
        body += "        l_i += tl.sum(tl.math.exp2(s - m_i[:, None]), 1)\n"
    else:
        body += "        p = tl.math.exp2(s - m_i[:, None]) / l_i[:, None]\n" + _LOADV + \
            f"        acc = tl.dot(p.to(v.dtype), v, acc{prec})\n"
    return body + _ADVANCE


def _loop_fn(name: str, body: str) -> str:
    return f'''
@triton.jit
def {name}(acc, l_i, m_i, q, k_ptrs, v_ptrs, offs_p, offs_n, lo, hi, M_LEN, OFF, qk_scale, qk_bias,
        stride_kn, stride_vn, CAUSAL: tl.constexpr, MASKED: tl.constexpr, BLOCK_N: tl.constexpr):
    k_ptrs += lo * stride_kn
    v_ptrs += lo * stride_vn
    for start_n in range(lo, hi, BLOCK_N):
{body}    return acc, l_i, m_i
'''


# The common prologue of every query-block kernel: program ids (grid order), row offsets
# (packed rows for grouped-query attention), the Q tile, the K/V base pointers.
def _prologue(plan: KernelPlan, head_major_axes=(0, 1), extra_axis: str | None = None) -> str:
    gqa = plan.group_rank is not None
    a0, a1 = head_major_axes
    lines = f"""\
    if HEAD_MAJOR:
        pid_h = tl.program_id({a0})
        start_m = tl.program_id({a1})
    else:
        start_m = tl.program_id({a0})
        pid_h = tl.program_id({a1})
"""
    if extra_axis:
        lines += f"    {extra_axis} = tl.program_id(2)\n"
    lines += """\
    off_b = pid_h // H_KV
    off_hk = pid_h % H_KV
    offs_r = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_dv = tl.arange(0, HEAD_DIM_V)
"""
    if gqa:
        lines += """\
    offs_p = offs_r // GROUP
    offs_g = offs_r % GROUP
    row_ok = offs_r < P_LEN * GROUP
    q_rows = Q + off_b * stride_qb + (off_hk * GROUP + offs_g) * stride_qh + offs_p * stride_qm
    o_rows = O + off_b * stride_ob + (off_hk * GROUP + offs_g) * stride_oh + offs_p * stride_om
"""
    else:
        lines += """\
    offs_p = offs_r
    row_ok = offs_r < P_LEN
    q_rows = Q + off_b * stride_qb + off_hk * stride_qh + offs_p * stride_qm
    o_rows = O + off_b * stride_ob + off_hk * stride_oh + offs_p * stride_om
"""
    lines += """\
    q_ptrs = q_rows[:, None] + offs_d[None, :] * stride_qd
    if EVEN_P:
        q = tl.load(q_ptrs)
    else:
        q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)
    k_ptrs = K + off_b * stride_kb + off_hk * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd
    v_ptrs = V + off_b * stride_vb + off_hk * stride_vh + offs_n[:, None] * stride_vn + offs_dv[None, :] * stride_vd
"""
    return lines


_SIG = """Q, K, V, O, qk_scale, qk_bias,
        stride_qb, stride_qh, stride_qm, stride_qd, stride_kb, stride_kh, stride_kn, stride_kd,
        stride_vb, stride_vh, stride_vn, stride_vd, stride_ob, stride_oh, stride_om, stride_od,
        H_KV, P_LEN, M_LEN, OFF,"""

_CONST = """CAUSAL: tl.constexpr, GROUP: tl.constexpr, HEAD_MAJOR: tl.constexpr, EVEN_P: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr"""

# Key range of a query block: full (unmasked) blocks [0, full_hi), masked blocks [full_hi, end).
_BOUNDS = """\
    if CAUSAL:
        q_lo = (start_m * BLOCK_M) // GROUP
        q_hi = tl.minimum(((start_m + 1) * BLOCK_M - 1) // GROUP, P_LEN - 1)
        full_hi = tl.minimum(((q_lo + OFF + 1) // BLOCK_N) * BLOCK_N, (M_LEN // BLOCK_N) * BLOCK_N)
        full_hi = tl.maximum(full_hi, 0)
        end = tl.minimum(q_hi + OFF + 1, M_LEN)
    else:
        full_hi = (M_LEN // BLOCK_N) * BLOCK_N
        end = M_LEN
"""


def _store_o(expr: str) -> str:
    return f"""\
    o = {expr}
    o_ptrs = o_rows[:, None] + offs_dv[None, :] * stride_od
    if EVEN_P:
        tl.store(o_ptrs, o.to(O.dtype.element_ty))
    else:
        tl.store(o_ptrs, o.to(O.dtype.element_ty), mask=row_ok[:, None])
"""


def _init_state() -> str:
    return """\
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_V], dtype=tl.float32)
"""


def _call_loops(loop: str) -> str:
    return f"""\
    acc, l_i, m_i = {loop}(acc, l_i, m_i, q, k_ptrs, v_ptrs, offs_p, offs_n, 0, full_hi, M_LEN, OFF,
                          qk_scale, qk_bias, stride_kn, stride_vn, CAUSAL, False, BLOCK_N)
    acc, l_i, m_i = {loop}(acc, l_i, m_i, q, k_ptrs, v_ptrs, offs_p, offs_n, full_hi, end, M_LEN, OFF,
                          qk_scale, qk_bias, stride_kn, stride_vn, CAUSAL, True, BLOCK_N)
"""


# ----------------------------------------------------------------------- whole kernels
def _single_pass(plan: KernelPlan, pre: str, prec: str) -> tuple[str, list[str]]:
    loop = f"_{pre}_loop"
    if plan.family == "online":
        src = _loop_fn(loop, _inner_online(plan, prec))
        final = "acc / l_i[:, None]" if plan.normalisation == "deferred" else "acc"
    else:
        src = _loop_fn(loop, _inner_sigmoid(plan, prec))
        final = "acc"
    kname = f"{pre}_fwd"
    src += f'''
@triton.jit
def {kname}({_SIG}
        {_CONST}):
{_prologue(plan)}{_BOUNDS}{_init_state()}{_call_loops(loop)}{_store_o(final)}'''
    return src, [kname]


def _three_pass(plan: KernelPlan, pre: str, prec: str) -> tuple[str, list[str]]:
    src = ""
    names = []
    for which, what in ((1, "max"), (2, "sum"), (3, "out")):
        loop = f"_{pre}_pass{which}_loop"
        src += _loop_fn(loop, _inner_pass(which, prec, plan))
        kname = f"{pre}_pass{which}_{what}"
        names.append(kname)
        stats = """\
    stat_rows = pid_h * P_LEN + offs_p
    if EVEN_P:
        m_i = tl.load(GM + stat_rows)
    else:
        m_i = tl.load(GM + stat_rows, mask=row_ok, other=0.0)
"""
        if which == 1:
            load, store = "", """\
    stat_rows = pid_h * P_LEN + offs_p
    tl.store(GM + stat_rows, m_i, mask=row_ok)
"""
        elif which == 2:
            load = stats
            store = "    tl.store(SD + stat_rows, l_i, mask=row_ok)\n"
        else:
            load = stats + """\
    if EVEN_P:
        l_i = tl.load(SD + stat_rows)
    else:
        l_i = tl.load(SD + stat_rows, mask=row_ok, other=1.0)
"""
            store = _store_o("acc")
        init = _init_state()
        if which > 1:
            init = init.replace('    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)\n', "")
        if which == 3:
            init = init.replace("    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)\n", "")
        src += f'''
@triton.jit
def {kname}({_SIG} GM, SD,
        {_CONST}):
{_prologue(plan)}{_BOUNDS}{init}{load}{_call_loops(loop)}{store}'''
    return src, names


def _partials(plan: KernelPlan, pre: str, prec: str) -> tuple[str, list[str]]:
    loop = f"_{pre}_chunk_loop"
    # within a chunk the local softmax runs online (deferred); the chunk's results go to HBM
    online = KernelPlan(**{**plan.to_dict(), "normalisation": "deferred", "family": "online"})
    src = _loop_fn(loop, _inner_online(online, prec))
    pname, cname = f"{pre}_partial", f"{pre}_combine"
    lse = plan.normalisation == "lse"
    if lse:
        store = """\
    l_div = tl.where(l_i == 0.0, 1.0, l_i)
    po = acc / l_div[:, None]
    lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.math.log2(l_div))
    tl.store(ML + stat_rows, lse, mask=row_ok)
    tl.store(PART + part_rows[:, None] + offs_dv[None, :], po, mask=row_ok[:, None])
"""
    else:
        store = """\
    tl.store(ML + stat_rows, m_i, mask=row_ok)
    tl.store(LD + stat_rows, l_i, mask=row_ok)
    tl.store(PART + part_rows[:, None] + offs_dv[None, :], acc, mask=row_ok[:, None])
"""
    src += f'''
@triton.jit
def {pname}({_SIG} ML, LD, PART, CHUNK, N_SPLIT,
        {_CONST}):
{_prologue(plan, extra_axis="split")}    lo = split * CHUNK
    hi = tl.minimum(lo + CHUNK, M_LEN)
    if CAUSAL:
        q_hi = tl.minimum(((start_m + 1) * BLOCK_M - 1) // GROUP, P_LEN - 1)
        hi = tl.minimum(hi, q_hi + OFF + 1)
    hi = tl.maximum(hi, lo)
{_init_state()}    acc, l_i, m_i = {loop}(acc, l_i, m_i, q, k_ptrs, v_ptrs, offs_p, offs_n, lo, hi, M_LEN, OFF,
                          qk_scale, qk_bias, stride_kn, stride_vn, CAUSAL, True, BLOCK_N)
    stat_rows = (pid_h * N_SPLIT + split) * P_LEN + offs_p
    part_rows = stat_rows * HEAD_DIM_V
{store}'''
    # the combine kernel: one program per (query block, head); loops over the splits twice
    if lse:
        second = """\
        w = tl.math.exp2(tl.load(ML + rows, mask=row_ok, other=float("-inf")) - gm_s)
        ws += w
        acc += w[:, None] * tl.load(PART + rows[:, None] * HEAD_DIM_V + offs_dv[None, :],
                                    mask=row_ok[:, None], other=0.0)
"""
    else:
        second = """\
        cf = tl.math.exp2(tl.load(ML + rows, mask=row_ok, other=float("-inf")) - gm_s)
        ws += cf * tl.load(LD + rows, mask=row_ok, other=0.0)
        acc += cf[:, None] * tl.load(PART + rows[:, None] * HEAD_DIM_V + offs_dv[None, :],
                                     mask=row_ok[:, None], other=0.0)
"""
    src += f'''
@triton.jit
def {cname}(O, ML, LD, PART, stride_ob, stride_oh, stride_om, stride_od, H_KV, P_LEN, N_SPLIT,
        HEAD_MAJOR: tl.constexpr, BLOCK_M: tl.constexpr, HEAD_DIM_V: tl.constexpr):
    if HEAD_MAJOR:
        pid_h = tl.program_id(0)
        start_m = tl.program_id(1)
    else:
        start_m = tl.program_id(0)
        pid_h = tl.program_id(1)
    off_b = pid_h // H_KV
    off_hk = pid_h % H_KV
    offs_p = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, HEAD_DIM_V)
    row_ok = offs_p < P_LEN
    gm = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    for s in range(0, N_SPLIT):
        rows = (pid_h * N_SPLIT + s) * P_LEN + offs_p
        gm = tl.maximum(gm, tl.load(ML + rows, mask=row_ok, other=float("-inf")))
    gm_s = tl.where(gm == float("-inf"), 0.0, gm)
    ws = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_V], dtype=tl.float32)
    for s in range(0, N_SPLIT):
        rows = (pid_h * N_SPLIT + s) * P_LEN + offs_p
{second}    o = acc / ws[:, None]
    o_ptrs = O + off_b * stride_ob + off_hk * stride_oh + offs_p[:, None] * stride_om + offs_dv[None, :] * stride_od
    tl.store(o_ptrs, o.to(O.dtype.element_ty), mask=row_ok[:, None])
'''
    return src, [pname, cname]


# -------------------------------------------------------------------------- the launcher
def _launcher(plan: KernelPlan, t: Tiling, names: list[str]) -> str:
    exp = plan.nonlinearity == "exp"
    gqa = plan.group_rank is not None
    args = ", ".join(f"{k}=None" for k in plan.params if k != plan.block_param)
    param_lines = []
    for k, src in plan.params.items():
        if k == plan.block_param:
            continue
        param_lines.append(f"    {k} = ({src}) if {k} is None else {k}")
    causal = plan.causal_param or "causal"
    scale_mul = f" * {LOG2E!r}" if exp else ""
    lines = [f'''

def _ranks(q, k, v):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be [batch, heads, sequence, head_dim] tensors")
    B, HQ, P, E = q.shape
    _, HKV, M, _ = k.shape
    F = v.shape[-1]
    if k.shape[0] != B or v.shape[:3] != k.shape[:3] or k.shape[-1] != E:
        raise ValueError(f"shapes do not fit: q {{tuple(q.shape)}}, k {{tuple(k.shape)}}, v {{tuple(v.shape)}}")
    if E != HEAD_DIM or F != HEAD_DIM_V:
        raise ValueError(f"this kernel was generated for head dim {{HEAD_DIM}}, got {{E}}/{{F}}")
    for t in (q, k, v):
        if t.dtype != DTYPE:
            raise ValueError(f"this kernel was generated for {{DTYPE}}, got {{t.dtype}}")
    if HQ % HKV:
        raise ValueError(f"{{HQ}} query heads are not a multiple of {{HKV}} key/value heads")
    return B, HQ, HKV, P, M, E, F


def forward(q, k, v, {args + ", " if args else ""}grid_order=GRID_ORDER, out=None):
    """Run the generated kernel(s): q [B, Hq, P, E], k [B, Hkv, M, E], v [B, Hkv, M, F]."""
    B, HQ, HKV, P, M, E, F = _ranks(q, k, v)
    G = HQ // HKV''']
    if not gqa:
        lines.append('''\
    if G != 1:
        raise ValueError("this cascade has no query group rank: q and k need the same number of heads")''')
    lines += param_lines
    lines.append(f'''\
    if {causal} and not ({plan.causal_offset}) >= 0:
        raise ValueError("a causal mask needs at least as many keys as queries")
    qk_scale = float(({plan.scale})){scale_mul}
    qk_bias = float(({plan.bias})){scale_mul}
    off = int({plan.causal_offset})
    o = torch.empty((B, HQ, P, F), device=q.device, dtype=q.dtype) if out is None else out
    head_major = grid_order == "head-major"
    rows = P * G
    BM = BLOCK_M
    even = rows % BM == 0
    nq = triton.cdiv(rows, BM)
    grid = (B * HKV, nq) if head_major else (nq, B * HKV)
    common = (qk_scale, qk_bias, *q.stride(), *k.stride(), *v.stride(), *o.stride(), HKV, P, M, off)
    const = dict(CAUSAL=bool({causal}), GROUP=G, HEAD_MAJOR=head_major, EVEN_P=even, BLOCK_M=BM,
                 BLOCK_N=BLOCK_N, HEAD_DIM=E, HEAD_DIM_V=F, num_warps=NUM_WARPS, num_stages=NUM_STAGES)''')
    if plan.family in ("online", "none"):
        lines.append(f'''\
    {names[0]}[grid](q, k, v, o, *common, **const)
    return o''')
    elif plan.family == "three-pass":
        lines.append(f'''\
    gm = torch.empty((B * HKV, P), device=q.device, dtype=torch.float32)
    sd = torch.empty((B * HKV, P), device=q.device, dtype=torch.float32)
    {names[0]}[grid](q, k, v, o, *common, gm, sd, **const)
    {names[1]}[grid](q, k, v, o, *common, gm, sd, **const)
    {names[2]}[grid](q, k, v, o, *common, gm, sd, **const)
    return o''')
    else:
        chunk = ("BLOCK_N" if plan.normalisation == "local-max"
                 else "triton.cdiv(triton.cdiv(M, SPLIT_KV), BLOCK_N) * BLOCK_N")
        lines.append(f'''\
    chunk = {chunk}
    n_split = triton.cdiv(M, chunk)
    ml = torch.empty((B * HKV, n_split, P), device=q.device, dtype=torch.float32)
    ld = torch.empty_like(ml)
    part = torch.empty((B * HKV, n_split, P, F), device=q.device, dtype=torch.float32)
    grid3 = (grid[0], grid[1], n_split)
    {names[0]}[grid3](q, k, v, o, *common, ml, ld, part, chunk, n_split, **const)
    {names[1]}[grid](o, ml, ld, part, *o.stride(), HKV, P, n_split, HEAD_MAJOR=head_major,
                     BLOCK_M=BM, HEAD_DIM_V=F, num_warps=4, num_stages=1)
    return o


def chunk_size(M):
    """Keys per partial (the cascade's partition block) for M keys."""
    return {chunk}''')
    return "\n".join(lines) + "\n"


def emit(plan: KernelPlan, tiling: Tiling) -> tuple[str, list[str]]:
    """Return (module source, kernel names) for ``plan`` compiled with ``tiling``."""
    pre = kernel_prefix(plan.cascade)
    prec = ', input_precision="ieee"' if tiling.dtype == "fp32" else ""
    if plan.family in ("online", "none"):
        body, names = _single_pass(plan, pre, prec)
    elif plan.family == "three-pass":
        body, names = _three_pass(plan, pre, prec)
    else:
        body, names = _partials(plan, pre, prec)
    head = f'''"""Triton kernels generated by cascades.triton from cascade '{plan.cascade}'.

family: {plan.family}; normalisation: {plan.normalisation}; score: {plan.nonlinearity}(({plan.scale}) * S + {plan.bias})
causal mask: {plan.causal_param or 'none'} (key > query + {plan.causal_offset}); group rank: {plan.group_rank or 'none'}
tiling: BLOCK_M={tiling.block_m} BLOCK_N={tiling.block_n} num_warps={tiling.num_warps} num_stages={tiling.num_stages} grid={tiling.grid_order} head_dim={tiling.head_dim} dtype={tiling.dtype}
kernels: {", ".join(names)}
"""
import math

import torch
import triton
import triton.language as tl

CASCADE = {plan.cascade!r}
KERNELS = {names!r}
DTYPE = torch.{DTYPES[tiling.dtype]}
BLOCK_M = {tiling.block_m}
BLOCK_N = {tiling.block_n}
NUM_WARPS = {tiling.num_warps}
NUM_STAGES = {tiling.num_stages}
HEAD_DIM = {tiling.head_dim}
HEAD_DIM_V = {tiling.head_dim}
GRID_ORDER = {tiling.grid_order!r}
SPLIT_KV = {tiling.split_kv}
'''
    return head + body + _launcher(plan, tiling, names), names


__all__ = ["emit", "kernel_prefix", "LOG2E"]
