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
from functools import partial

from cascades.triton import emit_scores as xs
from cascades.triton.analyze import CodegenError, KernelPlan
from cascades.triton.tiling import DTYPES, Tiling

LOG2E = 1.4426950408889634


def kernel_prefix(cascade_name: str) -> str:
    s = re.sub(r"[^0-9A-Za-z]+", "_", cascade_name).strip("_").lower()
    if not s or s[0].isdigit():
        s = "c_" + s
    return s


def module_head(doc: str, cascade: str, names, dtype: str, consts: dict,
                imports: tuple = ("math",)) -> str:
    """The opening of a generated module: its docstring ``doc``, the imports, and the values it
    was generated with -- CASCADE, KERNELS, DTYPE, then ``consts`` (name -> Python source)."""
    lines = [f'"""{doc}"""', *(f"import {m}" for m in imports), "", "import torch",
             "import triton", "import triton.language as tl", "", f"CASCADE = {cascade!r}",
             f"KERNELS = {list(names)!r}", f"DTYPE = torch.{DTYPES[dtype]}",
             *(f"{k} = {v}" for k, v in consts.items())]
    return "\n".join(lines) + "\n"


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


def _keep(plan: KernelPlan) -> str:
    """The mask of a key block: in range, and within the causal band (with a sliding window's
    lower edge, baked into the source)."""
    if not plan.window_lower:
        return _KEEP
    return _KEEP + f"""\
                keep = keep & ((start_n + offs_n)[None, :] >= offs_p[:, None] + ({plan.window_lower}))
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


def _s_expr(plan: KernelPlan, qk: str = "qk") -> str:
    """The score in log2 units (exp) or natural units (sigmoid) from the raw tile ``qk``."""
    if plan.score_fn:
        return f"({plan.score_fn.replace('qk', qk)}) * qk_scale"
    return f"{qk} * qk_scale" + (" + qk_bias" if plan.bias != "0" else "")


def _exp_p(fast: bool) -> str:
    """``p = exp2(s)``: in fp32, or (fast) in the kernel's 16-bit input type, two per
    instruction (``ex2.approx`` on packed bf16x2/f16x2; P is rounded to that type for the PV
    product anyway). The interpreter runs an emulation of the same rounding."""
    return "        p = _exp2_lp(s, FAST_ASM)\n" if fast else "        p = tl.math.exp2(s)\n"


#: lazy rescaling: the running maximum (log2 units) is only moved, and the accumulator
#: rescaled, when some row's maximum grew by more than this; exp2 values stay <= 2**LAZY_TAU
LAZY_TAU = 8.0


def _deferred_update(plan: KernelPlan, prec: str, fast: bool, qk: str = "qk",
                     masked: str = "MASKED", lazy: bool = False) -> str:
    """Online-softmax update with deferred normalisation for the score tile ``qk``; loads V
    and accumulates P @ V (expects ``keep`` when masked). With ``lazy`` the unmasked update
    rescales the accumulator only when a row maximum grew by more than ``LAZY_TAU`` (a
    block-uniform branch); otherwise the stale maximum stays the exponent base, which is exact
    because the accumulator and the row sums share it."""
    bias = plan.bias != "0" or bool(plan.score_fn)
    sc = _s_expr(plan, qk)
    psum = "tl.sum(p.to(tl.float32), 1)" if fast else "tl.sum(p, 1)"
    pdot = "p" if fast else "p.to(v.dtype)"
    loadv = _LOADV if masked == "MASKED" else "        v = tl.load(v_ptrs)\n"
    masked_head = f"""\
        if MASKED:
            s = tl.where(keep, {sc}, float("-inf"))
            m_ij = tl.maximum(m_i, tl.max(s, 1))
            m_use = tl.where(m_ij == float("-inf"), 0.0, m_ij)
            s = s - m_use[:, None]
            alpha = tl.math.exp2(m_i - m_use)
"""
    if not lazy:
        unmasked = (f"""\
            m_ij = tl.maximum(m_i, tl.max({qk}, 1) * qk_scale)
            s = {qk} * qk_scale - m_ij[:, None]
            alpha = tl.math.exp2(m_i - m_ij)
""" if not bias else f"""\
            s = {sc}
            m_ij = tl.maximum(m_i, tl.max(s, 1))
            s = s - m_ij[:, None]
            alpha = tl.math.exp2(m_i - m_ij)
""")
        if masked == "MASKED":
            body = masked_head + "        else:\n" + unmasked
        else:
            body = "\n".join(ln[4:] for ln in unmasked.splitlines()) + "\n"
        return body + _exp_p(fast) + f"""\
        l_i = l_i * alpha + {psum}
        acc = acc * alpha[:, None]
""" + loadv + f"""\
        acc = tl.dot({pdot}, v, acc{prec})
        m_i = m_ij
"""
    unmasked = (f"""\
            m_ij = tl.maximum(m_i, tl.max({qk}, 1) * qk_scale)
""" if not bias else f"""\
            s = {sc}
            m_ij = tl.maximum(m_i, tl.max(s, 1))
""") + f"""\
            if tl.max(m_ij - m_i, 0) > {LAZY_TAU!r}:
                alpha = tl.math.exp2(m_i - m_ij)
                l_i = l_i * alpha
                acc = acc * alpha[:, None]
                m_i = m_ij
""" + (f"""\
            s = {qk} * qk_scale - m_i[:, None]
""" if not bias else """\
            s = s - m_i[:, None]
""")
    if masked == "MASKED":
        body = masked_head + """\
            l_i = l_i * alpha
            acc = acc * alpha[:, None]
            m_i = m_ij
        else:
""" + unmasked
    else:
        body = "\n".join(ln[4:] for ln in unmasked.splitlines()) + "\n"
    return body + _exp_p(fast) + f"""\
        l_i = l_i + {psum}
""" + loadv + f"""\
        acc = tl.dot({pdot}, v, acc{prec})
"""


def _inner_online(plan: KernelPlan, prec: str, fast: bool = False, lazy: bool = False) -> str:
    """The key-block loop of the 1-pass recurrence (deferred or per-step normalisation)."""
    body = _SCORE.format(prec=prec) + xs.loads(plan) + _keep(plan)
    if plan.normalisation == "deferred":
        body += _deferred_update(plan, prec, fast, lazy=lazy)
    else:  # per-step: FlashAttention-1's renormalised output
        body += f"""\
        s = {_s_expr(plan)}
        if MASKED:
            s = tl.where(keep, s, float("-inf"))
        lm = tl.max(s, 1)
        lm_s = tl.where(lm == float("-inf"), 0.0, lm)
        s = s - lm_s[:, None]
""" + _exp_p(fast) + ("""\
        ld = tl.sum(p.to(tl.float32), 1)
""" if fast else """\
        ld = tl.sum(p, 1)
""") + _LOADV + f"""\
        pv = tl.dot(p{'' if fast else '.to(v.dtype)'}, v{prec})
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


def _pipelined_loop_fn(name: str, plan: KernelPlan, prec: str, fast: bool,
                       lazy: bool = False) -> str:
    """The unmasked key-block loop of the deferred recurrence, software-pipelined: the score
    product of key block j+1 is issued before the softmax of block j, so the tensor cores
    work on it while the softmax of block j runs (the masked tail keeps the plain loop)."""
    upd = _deferred_update(plan, prec, fast, qk="qk", masked="NONE", lazy=lazy)
    upd = "\n".join("    " + ln if ln else ln for ln in upd.splitlines()) + "\n"
    last = _deferred_update(plan, prec, fast, qk="qk", masked="NONE", lazy=lazy)
    return f'''
@triton.jit
def {name}(acc, l_i, m_i, q, k_ptrs, v_ptrs, lo, hi, qk_scale, qk_bias, stride_kn, stride_vn,
        BLOCK_N: tl.constexpr, FAST_ASM: tl.constexpr):
    k_ptrs += lo * stride_kn
    v_ptrs += lo * stride_vn
    if hi > lo:
        k = tl.load(k_ptrs)
        qk = tl.dot(q, tl.trans(k){prec})
        for start_n in range(lo + BLOCK_N, hi, BLOCK_N):
            k_ptrs += BLOCK_N * stride_kn
            k = tl.load(k_ptrs)
            qk_next = tl.dot(q, tl.trans(k){prec})
{upd}            v_ptrs += BLOCK_N * stride_vn
            qk = qk_next
{last}    return acc, l_i, m_i
'''


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


#: a mark of the traced kernel with ``trace_every``: the time a block reaches every
#: TRACE_EVERY-th key block (absolute key position), stored in the block's trace row; Triton's
#: interpreter has no clock, so there the mark is the key reached plus one (what the tests check)
_MARK = """\
        if (start_n // BLOCK_N) % TRACE_EVERY == 0:
            if CLOCK:
                t_mark = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [],
                                                   dtype=tl.int64, is_pure=False, pack=1)
            else:
                t_mark = start_n + 1
            tl.store(TRM + (start_n // BLOCK_N) // TRACE_EVERY, t_mark)
"""


def _loop_fn(name: str, body: str, marks: bool = False, xargs: str = "") -> str:
    extra = ", TRM, TRACE_EVERY: tl.constexpr, CLOCK: tl.constexpr" if marks else ""
    return f'''
@triton.jit
def {name}(acc, l_i, m_i, q, k_ptrs, v_ptrs, offs_p, offs_n, lo, hi, M_LEN, OFF, qk_scale, qk_bias,
        stride_kn, stride_vn{xargs}, CAUSAL: tl.constexpr, MASKED: tl.constexpr, BLOCK_N: tl.constexpr,
        FAST_ASM: tl.constexpr{extra}):
    k_ptrs += lo * stride_kn
    v_ptrs += lo * stride_vn
    for start_n in range(lo, hi, BLOCK_N):
{_MARK if marks else ""}{body}    return acc, l_i, m_i
'''


# The common prologue of every query-block kernel: program ids (grid order), row offsets
# (packed rows for grouped-query attention), the Q tile, the K/V base pointers.
def _prologue(plan: KernelPlan, head_major_axes=(0, 1), extra_axis: str | None = None) -> str:
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
    # the rows of a program are (query, query head) pairs: GROUP query heads share one K/V
    # head (grouped-query attention; GROUP = 1 without grouping)
    lines += """\
    offs_p = offs_r // GROUP
    offs_g = offs_r % GROUP
    row_ok = offs_r < P_LEN * GROUP
    q_rows = Q + off_b * stride_qb + (off_hk * GROUP + offs_g) * stride_qh + tl.minimum(offs_p, P_LEN - 1) * stride_qm
    o_rows = O + off_b * stride_ob + (off_hk * GROUP + offs_g) * stride_oh + offs_p * stride_om
"""
    lines += """\
    # rows past the end of a partial query tile read the last row again (an unmasked load;
    # a masked one cost 9% at 1x16x6000x128, gpu_speed_partial.csv) and are not stored
    q_ptrs = q_rows[:, None] + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs)
    k_ptrs = K + off_b * stride_kb + off_hk * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd
    v_ptrs = V + off_b * stride_vb + off_hk * stride_vh + offs_n[:, None] * stride_vn + offs_dv[None, :] * stride_vd
"""
    return lines


_SIG = """Q, K, V, O, qk_scale, qk_bias,
        stride_qb, stride_qh, stride_qm, stride_qd, stride_kb, stride_kh, stride_kn, stride_kd,
        stride_vb, stride_vh, stride_vn, stride_vd, stride_ob, stride_oh, stride_om, stride_od,
        H_KV, P_LEN, M_LEN, OFF, KV_ROWS,"""

_CONST = """CAUSAL: tl.constexpr, GROUP: tl.constexpr, HEAD_MAJOR: tl.constexpr, EVEN_P: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr,
        FAST_ASM: tl.constexpr"""

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


def _bounds(plan: KernelPlan) -> str:
    """_BOUNDS, and with a sliding window the first key block of the band (``win_lo``) and the
    first one inside it for every row of the block (``full_lo``)."""
    if not plan.window_lower:
        return _BOUNDS
    return _BOUNDS + f"""\
    if CAUSAL:
        win_lo = tl.maximum(((q_lo + ({plan.window_lower})) // BLOCK_N) * BLOCK_N, 0)
        full_lo = tl.minimum(tl.maximum(tl.cdiv(q_hi + ({plan.window_lower}), BLOCK_N) * BLOCK_N,
                                        win_lo), full_hi)
    else:
        win_lo = 0
        full_lo = 0
"""


def _call_window_loops(loop: str, xargs: str = "") -> str:
    """Masked [win_lo, full_lo), unmasked [full_lo, full_hi), masked [full_hi, end)."""
    call = """\
    acc, l_i, m_i = {loop}(acc, l_i, m_i, q, k_ptrs, v_ptrs, offs_p, offs_n, {lo}, {hi}, M_LEN, OFF,
                          qk_scale, qk_bias, stride_kn, stride_vn%s, CAUSAL, {masked}, BLOCK_N, FAST_ASM)
""" % xargs
    return (call.format(loop=loop, lo="win_lo", hi="full_lo", masked="True")
            + call.format(loop=loop, lo="full_lo", hi="full_hi", masked="False")
            + call.format(loop=loop, lo="full_hi", hi="end", masked="True"))


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


def _tma_loop_fn(name: str, body: str) -> str:
    """The key-block loop reading K and V through tensor descriptors (TMA on Hopper): row
    ``row0 + start_n`` of the [batch x heads x keys, head dim] view; rows past the end of the
    tensor read as zeros and rows of the next head are masked like partial tiles."""
    for old in ("            k = tl.load(k_ptrs, mask=kmask[:, None], other=0.0)\n        else:\n"
                "            k = tl.load(k_ptrs)\n",):
        body = body.replace(old, "        k = desc_k.load([row0 + start_n, 0])\n")
    body = body.replace("""        if MASKED:
            v = tl.load(v_ptrs, mask=kmask[:, None], other=0.0)
        else:
            v = tl.load(v_ptrs)
""", "        v = desc_v.load([row0 + start_n, 0])\n")
    body = body.replace(_ADVANCE, "")
    assert "tl.load(" not in body, body
    return f'''
@triton.jit
def {name}(acc, l_i, m_i, q, desc_k, desc_v, row0, offs_p, offs_n, lo, hi, M_LEN, OFF, qk_scale,
        qk_bias, CAUSAL: tl.constexpr, MASKED: tl.constexpr, BLOCK_N: tl.constexpr,
        FAST_ASM: tl.constexpr, WS: tl.constexpr):
    for start_n in tl.range(lo, hi, BLOCK_N, warp_specialize=WS):
{body}    return acc, l_i, m_i
'''


_TMA_DESCS = """\
    row0 = (off_b * H_KV + off_hk) * M_LEN
    desc_k = tl.make_tensor_descriptor(K, shape=[KV_ROWS, HEAD_DIM], strides=[stride_kn, 1],
                                       block_shape=[BLOCK_N, HEAD_DIM])
    desc_v = tl.make_tensor_descriptor(V, shape=[KV_ROWS, HEAD_DIM_V], strides=[stride_vn, 1],
                                       block_shape=[BLOCK_N, HEAD_DIM_V])
"""


def _call_tma_loops(loop: str, ws: bool) -> str:
    return f"""\
    acc, l_i, m_i = {loop}(acc, l_i, m_i, q, desc_k, desc_v, row0, offs_p, offs_n, 0, full_hi, M_LEN,
                          OFF, qk_scale, qk_bias, CAUSAL, False, BLOCK_N, FAST_ASM, {ws})
    acc, l_i, m_i = {loop}(acc, l_i, m_i, q, desc_k, desc_v, row0, offs_p, offs_n, full_hi, end,
                          M_LEN, OFF, qk_scale, qk_bias, CAUSAL, True, BLOCK_N, FAST_ASM, False)
"""


def _call_loops(loop: str, full_loop: str | None = None, marks: bool = False,
                xargs: str = "") -> str:
    extra = ", TRM, TRACE_EVERY, CLOCK" if marks else ""
    if full_loop:
        first = f"""\
    acc, l_i, m_i = {full_loop}(acc, l_i, m_i, q, k_ptrs, v_ptrs, 0, full_hi, qk_scale, qk_bias,
                          stride_kn, stride_vn, BLOCK_N, FAST_ASM)
"""
    else:
        first = f"""\
    acc, l_i, m_i = {loop}(acc, l_i, m_i, q, k_ptrs, v_ptrs, offs_p, offs_n, 0, full_hi, M_LEN, OFF,
                          qk_scale, qk_bias, stride_kn, stride_vn{xargs}, CAUSAL, False, BLOCK_N, FAST_ASM{extra})
"""
    return first + f"""\
    acc, l_i, m_i = {loop}(acc, l_i, m_i, q, k_ptrs, v_ptrs, offs_p, offs_n, full_hi, end, M_LEN, OFF,
                          qk_scale, qk_bias, stride_kn, stride_vn{xargs}, CAUSAL, True, BLOCK_N, FAST_ASM{extra})
"""


# ----------------------------------------------------------------------- whole kernels
_TRACE_START = """\
    t_start = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64,
                                        is_pure=False, pack=1)
"""
_TRACE_END = """\
    t_end = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64,
                                      is_pure=False, pack=1)
    sm = tl.inline_asm_elementwise("mov.u32 $0, %smid;", "=r", [], dtype=tl.int32, is_pure=False,
                                   pack=1)
    lin = tl.program_id(0) + tl.program_id(1) * tl.num_programs(0)
    tl.store(TR + lin * 4 + 0, t_start)
    tl.store(TR + lin * 4 + 1, t_end)
    tl.store(TR + lin * 4 + 2, sm.to(tl.int64))
    tl.store(TR + lin * 4 + 3, (end - 0).to(tl.int64))
"""
# the same with marks (``trace_every``): rows of TSTRIDE int64 (start, end, SM, key extent, then
# the marks); without a clock (the interpreter) start = end = 0 and the SM is 0
_MARKED_START = """\
    lin = tl.program_id(0) + tl.program_id(1) * tl.num_programs(0)
    TRM = TR + lin * TSTRIDE + 4
    if CLOCK:
        t_start = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64,
                                            is_pure=False, pack=1)
    else:
        t_start = 0
"""
_MARKED_END = """\
    if CLOCK:
        t_end = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64,
                                          is_pure=False, pack=1)
        sm = tl.inline_asm_elementwise("mov.u32 $0, %smid;", "=r", [], dtype=tl.int32,
                                       is_pure=False, pack=1)
    else:
        t_end = 0
        sm = 0
    tl.store(TR + lin * TSTRIDE + 0, t_start)
    tl.store(TR + lin * TSTRIDE + 1, t_end)
    tl.store(TR + lin * TSTRIDE + 2, sm)
    tl.store(TR + lin * TSTRIDE + 3, end)
"""


def _single_pass(plan: KernelPlan, pre: str, prec: str, fast: bool = False,
                 pipeline: bool = False, lazy: bool = False, trace: bool = False,
                 tma: bool = False, ws: bool = False,
                 marks: bool = False, lse: bool = False) -> tuple[str, list[str]]:
    loop = f"_{pre}_loop"
    full_loop = None
    xargs = xs.loop_args(plan)
    make_loop = _tma_loop_fn if tma else partial(_loop_fn, marks=marks, xargs=xargs)
    if plan.family == "online":
        src = make_loop(loop, _inner_online(plan, prec, fast, lazy))
        if pipeline and plan.normalisation == "deferred" and not tma:
            full_loop = f"_{pre}_full_loop"
            src += _pipelined_loop_fn(full_loop, plan, prec, fast, lazy)
        final = "acc / l_i[:, None]" if plan.normalisation == "deferred" else "acc"
        if lse and plan.normalisation == "deferred":   # a row that sees no key: O = 0
            final = "acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]"
    elif plan.nonlinearity == "pointwise":
        src = make_loop(loop, xs.inner_pointwise(plan, prec, _SCORE.format(prec=prec),
                                                 _keep(plan), _LOADV) + _ADVANCE)
        final = f"acc * ({plan.out_factor})" if plan.out_factor else "acc"
    else:
        src = make_loop(loop, _inner_sigmoid(plan, prec))
        final = "acc"
    if plan.window_lower:
        calls = _call_window_loops(loop, xargs)
    else:
        calls = (_call_tma_loops(loop, ws) if tma
                 else _call_loops(loop, full_loop, marks, xargs))
    descs = _TMA_DESCS if tma else ""
    kname = f"{pre}_fwd"
    if marks:
        sig = " TR, TSTRIDE,"
        const = _CONST + ", TRACE_EVERY: tl.constexpr, CLOCK: tl.constexpr"
        t0, t1 = _MARKED_START, _MARKED_END
    else:
        sig, const = (" TR," if trace else ""), _CONST
        t0, t1 = (_TRACE_START, _TRACE_END) if trace else ("", "")
    if lse:
        sig, const, t1 = " LSE, stride_lb, stride_lh, stride_lm,", const + ", WRITE_LSE: tl.constexpr", _STORE_LSE
    src += f'''
@triton.jit
def {kname}({_SIG}{xs.kernel_args(plan)}{sig}
        {const}):
{t0}{_prologue(plan)}{xs.prologue(plan)}{descs}{_bounds(plan)}{_init_state()}{calls}{_store_o(final)}{t1}'''
    return src, [kname]


#: each row's log-sum-exp (natural log) from the running maximum and sum (log2 units)
_STORE_LSE = """\
    if WRITE_LSE:
        lse_ptrs = LSE + off_b * stride_lb + (off_hk * GROUP + offs_g) * stride_lh + offs_p * stride_lm
        lse = (m_i + tl.math.log2(tl.where(l_i == 0.0, 1.0, l_i))) * 0.6931471805599453
        tl.store(lse_ptrs, tl.where(l_i == 0.0, float("-inf"), lse), mask=row_ok)
"""


def _block_sparse(plan: KernelPlan, pre: str, prec: str,
                  fast: bool = False) -> tuple[str, list[str]]:
    """The online-softmax kernel over a block list: each query block visits only the key
    blocks its row of the block mask keeps (the launcher lists them, FlexAttention-style), all
    through the masked path (partial last key block, causal band)."""
    loop = f"_{pre}_list_loop"
    body = _inner_online(plan, prec, fast)
    src = f'''
@triton.jit
def {loop}(acc, l_i, m_i, q, k_base, v_base, offs_p, offs_n, KV_IDX, KV_CNT, row, NK, M_LEN, OFF,
        qk_scale, qk_bias, stride_kn, stride_vn, CAUSAL: tl.constexpr, MASKED: tl.constexpr,
        BLOCK_N: tl.constexpr, FAST_ASM: tl.constexpr):
    cnt = tl.load(KV_CNT + row)
    for i in range(0, cnt):
        start_n = tl.load(KV_IDX + row * NK + i) * BLOCK_N
        k_ptrs = k_base + start_n * stride_kn
        v_ptrs = v_base + start_n * stride_vn
{body}    return acc, l_i, m_i
'''
    kname = f"{pre}_fwd"
    final = "acc / l_i[:, None]" if plan.normalisation == "deferred" else "acc"
    src += f'''
@triton.jit
def {kname}({_SIG} KV_IDX, KV_CNT, NK,
        {_CONST}):
{_prologue(plan)}{_init_state()}    acc, l_i, m_i = {loop}(acc, l_i, m_i, q, k_ptrs, v_ptrs, offs_p, offs_n, KV_IDX, KV_CNT, start_m, NK,
                          M_LEN, OFF, qk_scale, qk_bias, stride_kn, stride_vn, False, True, BLOCK_N, FAST_ASM)
{_store_o(final)}'''
    return src, [kname]


def _linear(plan: KernelPlan, pre: str, prec: str) -> tuple[str, list[str]]:
    """Linear attention: a state kernel (a program per K/V head and split of the keys --
    ``split_kv`` -- adding its partial S = sum phi(K)^T V and
    z = sum phi(K) over key blocks, accumulated in fp32, the products on the matrix unit in
    the input type) and an output kernel (one program per query block: phi(Q) S, divided by
    phi(Q) z when normalised)."""
    from cascades.triton.analyze import LINEAR_FEATURES
    phi_q, phi_k, _ = plan.linear
    fq = LINEAR_FEATURES[phi_q].format("q")
    fk = LINEAR_FEATURES[phi_k].format("k")
    sname, oname = f"{pre}_state", f"{pre}_out"
    src = f'''
@triton.jit
def {sname}(K, V, S, Z, stride_kb, stride_kh, stride_kn, stride_kd, stride_vb, stride_vh,
        stride_vn, stride_vd, H_KV, M_LEN, CHUNK, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
        HEAD_DIM_V: tl.constexpr):
    pid_h = tl.program_id(0)
    split = tl.program_id(1)
    off_b = pid_h // H_KV
    off_hk = pid_h % H_KV
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_dv = tl.arange(0, HEAD_DIM_V)
    lo = split * CHUNK
    hi = tl.minimum(lo + CHUNK, M_LEN)
    k_ptrs = K + off_b * stride_kb + off_hk * stride_kh + (lo + offs_n)[:, None] * stride_kn + offs_d[None, :] * stride_kd
    v_ptrs = V + off_b * stride_vb + off_hk * stride_vh + (lo + offs_n)[:, None] * stride_vn + offs_dv[None, :] * stride_vd
    st = tl.zeros([HEAD_DIM, HEAD_DIM_V], dtype=tl.float32)
    z = tl.zeros([HEAD_DIM], dtype=tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        kmask = (start_n + offs_n) < hi
        k = tl.load(k_ptrs, mask=kmask[:, None], other=0.0).to(tl.float32)
        v = tl.load(v_ptrs, mask=kmask[:, None], other=0.0).to(tl.float32)
        kf = tl.where(kmask[:, None], {fk}, 0.0)
        st = tl.dot(tl.trans(kf.to(K.dtype.element_ty)), v.to(K.dtype.element_ty), st{prec})
        z += tl.sum(kf, 0)
        k_ptrs += BLOCK_N * stride_kn
        v_ptrs += BLOCK_N * stride_vn
    # the splits of one head add their partial states (S and Z start at zero)
    tl.atomic_add(S + pid_h * HEAD_DIM * HEAD_DIM_V + offs_d[:, None] * HEAD_DIM_V + offs_dv[None, :], st)
    tl.atomic_add(Z + pid_h * HEAD_DIM + offs_d, z)


@triton.jit
def {oname}(Q, O, S, Z, stride_qb, stride_qh, stride_qm, stride_qd, stride_ob, stride_oh,
        stride_om, stride_od, H_KV, P_LEN, NORMALIZE: tl.constexpr, BLOCK_M: tl.constexpr,
        HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr):
    start_m = tl.program_id(0)
    pid_h = tl.program_id(1)
    off_b = pid_h // H_KV
    off_hk = pid_h % H_KV
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_dv = tl.arange(0, HEAD_DIM_V)
    row_ok = offs_m < P_LEN
    q = tl.load(Q + off_b * stride_qb + off_hk * stride_qh + offs_m[:, None] * stride_qm
                + offs_d[None, :] * stride_qd, mask=row_ok[:, None], other=0.0).to(tl.float32)
    qf = {fq}
    st = tl.load(S + pid_h * HEAD_DIM * HEAD_DIM_V + offs_d[:, None] * HEAD_DIM_V + offs_dv[None, :])
    o = tl.dot(qf.to(Q.dtype.element_ty), st.to(Q.dtype.element_ty){prec})
    if NORMALIZE:
        z = tl.load(Z + pid_h * HEAD_DIM + offs_d)
        den = tl.sum(qf * z[None, :], 1)
        o = o / den[:, None]
    tl.store(O + off_b * stride_ob + off_hk * stride_oh + offs_m[:, None] * stride_om
             + offs_dv[None, :] * stride_od, o.to(O.dtype.element_ty), mask=row_ok[:, None])
'''
    return src, [sname, oname]


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


def _partials(plan: KernelPlan, pre: str, prec: str, fast: bool = False,
              lazy: bool = False) -> tuple[str, list[str]]:
    loop = f"_{pre}_chunk_loop"
    # within a chunk the local softmax runs online (deferred); the chunk's results go to HBM
    online = KernelPlan(**{**plan.to_dict(), "normalisation": "deferred", "family": "online"})
    src = _loop_fn(loop, _inner_online(online, prec, fast, lazy))
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
                          qk_scale, qk_bias, stride_kn, stride_vn, CAUSAL, True, BLOCK_N, FAST_ASM)
    stat_rows = (pid_h * N_SPLIT + split) * (P_LEN * GROUP) + offs_r
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
        GROUP: tl.constexpr, HEAD_MAJOR: tl.constexpr, BLOCK_M: tl.constexpr,
        HEAD_DIM_V: tl.constexpr):
    if HEAD_MAJOR:
        pid_h = tl.program_id(0)
        start_m = tl.program_id(1)
    else:
        start_m = tl.program_id(0)
        pid_h = tl.program_id(1)
    off_b = pid_h // H_KV
    off_hk = pid_h % H_KV
    offs_r = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_p = offs_r // GROUP
    offs_g = offs_r % GROUP
    offs_dv = tl.arange(0, HEAD_DIM_V)
    row_ok = offs_r < P_LEN * GROUP
    gm = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    for s in range(0, N_SPLIT):
        rows = (pid_h * N_SPLIT + s) * (P_LEN * GROUP) + offs_r
        gm = tl.maximum(gm, tl.load(ML + rows, mask=row_ok, other=float("-inf")))
    gm_s = tl.where(gm == float("-inf"), 0.0, gm)
    ws = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_V], dtype=tl.float32)
    for s in range(0, N_SPLIT):
        rows = (pid_h * N_SPLIT + s) * (P_LEN * GROUP) + offs_r
{second}    o = acc / ws[:, None]
    o_ptrs = (O + off_b * stride_ob + (off_hk * GROUP + offs_g)[:, None] * stride_oh
              + offs_p[:, None] * stride_om + offs_dv[None, :] * stride_od)
    tl.store(o_ptrs, o.to(O.dtype.element_ty), mask=row_ok[:, None])
'''
    return src, [pname, cname]


# -------------------------------------------------------------------------- the launcher
#: the generated launchers' checks of q, k, v's head dims (E, F), dtype and head counts (HQ, HKV)
CHECK_DIMS = """\
    if E != HEAD_DIM or F != HEAD_DIM_V:
        raise ValueError(f"this kernel was generated for head dim {HEAD_DIM}, got {E}/{F}")
    for t in (q, k, v):
        if t.dtype != DTYPE:
            raise ValueError(f"this kernel was generated for {DTYPE}, got {t.dtype}")
    if HQ % HKV:
        raise ValueError(f"{HQ} query heads are not a multiple of {HKV} key/value heads")
"""


def _launcher(plan: KernelPlan, t: Tiling, names: list[str]) -> str:
    exp = plan.nonlinearity == "exp"
    args = ", ".join(f"{k}=None" for k in plan.params
                     if k != plan.block_param and k not in plan.baked)
    param_lines = []
    for k, src in plan.params.items():
        if k == plan.block_param or k in plan.baked:
            continue
        param_lines.append(f"    {k} = ({src}) if {k} is None else {k}")
    causal = plan.causal_param or "causal"
    if plan.block_mask:
        args = ", ".join(x for x in (args, f"{plan.block_mask}=None") if x)
        causal = "False"
    if plan.extras:
        args = ", ".join(x for x in (args, *(f"{n}=None" for n, _ in plan.extras)) if x)
    if plan.family == "linear":
        causal = "False"
    scale_mul = f" * {LOG2E!r}" if exp else ""
    xsig, xoff = (", lse=None, offset=None", " if offset is None else int(offset)") if t.lse else ("", "")
    lines = [f'''

def _scratch(size, align, stream):
    """Global scratch memory for the kernel's tensor descriptors."""
    return torch.empty(size, dtype=torch.int8, device="cuda" if torch.cuda.is_available() else "cpu")


def _clock(q):
    """%globaltimer and %smid can be read: a CUDA GPU, not the interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") in ("", "0") and q.is_cuda


def trace_width(M):
    """int64 fields per thread block of a traced launch with M keys: start, end, SM, key
    extent, then (with TRACE_EVERY) one mark per TRACE_EVERY key blocks (a mark a block never
    reaches keeps the value the caller filled the tensor with)."""
    if not TRACE_EVERY:
        return 4
    return 4 + triton.cdiv(triton.cdiv(M, BLOCK_N), TRACE_EVERY)


def _native(q):
    """Packed 16-bit exp2 in PTX: a CUDA GPU of compute capability 9 or later, not the
    interpreter."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") or not q.is_cuda:
        return False
    return torch.cuda.get_device_capability(q.device)[0] >= 9


def _ranks(q, k, v):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be [batch, heads, sequence, head_dim] tensors")
    B, HQ, P, E = q.shape
    _, HKV, M, _ = k.shape
    F = v.shape[-1]
    if k.shape[0] != B or v.shape[:3] != k.shape[:3] or k.shape[-1] != E:
        raise ValueError(f"shapes do not fit: q {{tuple(q.shape)}}, k {{tuple(k.shape)}}, v {{tuple(v.shape)}}")
{CHECK_DIMS}    return B, HQ, HKV, P, M, E, F


def forward(q, k, v, {args + ", " if args else ""}grid_order=GRID_ORDER, out=None, trace=None{xsig}):
    """Run the generated kernel(s): q [B, Hq, P, E], k [B, Hkv, M, E], v [B, Hkv, M, F]."""
    B, HQ, HKV, P, M, E, F = _ranks(q, k, v)
    G = HQ // HKV''']
    if plan.family == "three-pass":
        lines.append('''\
    if G != 1:
        raise ValueError("grouped query heads (more query than key/value heads) are generated for single-pass and split-K kernels, not for three passes")''')
    lines += param_lines
    lines.append(f'''\
    if {causal} and not ({plan.causal_offset}) >= 0:
        raise ValueError("a causal mask needs at least as many keys as queries")
    qk_scale = float(({plan.scale})){scale_mul}
    qk_bias = float(({plan.bias})){scale_mul}
    off = int({plan.causal_offset}){xoff}
    o = torch.empty((B, HQ, P, F), device=q.device, dtype=q.dtype) if out is None else out
    if TMA:
        # tensor descriptors read K and V as [batch x heads x keys, head dim] row blocks
        k = k.contiguous()
        v = v.contiguous()
        triton.set_allocator(_scratch)
    head_major = grid_order == "head-major"
    rows = P * G
    BM = BLOCK_M
    even = rows % BM == 0
    nq = triton.cdiv(rows, BM)
    grid = (B * HKV, nq) if head_major else (nq, B * HKV)
    common = (qk_scale, qk_bias, *q.stride(), *k.stride(), *v.stride(), *o.stride(), HKV, P, M, off,
              B * HKV * M)
    const = dict(CAUSAL=bool({causal}), GROUP=G, HEAD_MAJOR=head_major, EVEN_P=even, BLOCK_M=BM,
                 BLOCK_N=BLOCK_N, HEAD_DIM=E, HEAD_DIM_V=F, FAST_ASM=FAST_EXP and _native(q),
                 num_warps=NUM_WARPS, num_stages=NUM_STAGES)''')
    if plan.family == "linear":
        lines.append(f'''\
    if G != 1:
        raise ValueError("linear attention is generated with as many query heads as key/value heads")
    st = torch.zeros((B * HKV, E, F), device=q.device, dtype=torch.float32)
    z = torch.zeros((B * HKV, E), device=q.device, dtype=torch.float32)
    chunk = triton.cdiv(triton.cdiv(M, SPLIT_KV), BLOCK_N) * BLOCK_N
    {names[0]}[(B * HKV, triton.cdiv(M, chunk))](k, v, st, z, *k.stride(), *v.stride(), HKV, M,
                           chunk, BLOCK_N=BLOCK_N, HEAD_DIM=E, HEAD_DIM_V=F,
                           num_warps=NUM_WARPS, num_stages=NUM_STAGES)
    {names[1]}[(triton.cdiv(P, BLOCK_M), B * HKV)](q, o, st, z, *q.stride(), *o.stride(), HKV, P,
                           NORMALIZE=bool({plan.linear[2]}), BLOCK_M=BLOCK_M, HEAD_DIM=E,
                           HEAD_DIM_V=F, num_warps=NUM_WARPS)
    return o''')
    elif plan.block_mask:
        bm = plan.block_mask
        lines.append(f'''\
    if {bm} is None:
        raise ValueError("this kernel needs its block mask {bm}: a bool tensor [query blocks, key blocks] of BLOCK_M x BLOCK_N tiles")
    nk = triton.cdiv(M, BLOCK_N)
    if G != 1:
        raise ValueError("a block-masked kernel takes as many query heads as key/value heads")
    if tuple({bm}.shape) != (nq, nk):
        raise ValueError(f"the block mask is [query blocks, key blocks] of {{BLOCK_M}} x {{BLOCK_N}} tiles: expected {{(nq, nk)}}, got {{tuple({bm}.shape)}}")
    keep = {bm}.to(device=q.device, dtype=torch.bool)
    kv_cnt = keep.sum(1).to(torch.int32)
    kv_idx = torch.argsort((~keep).to(torch.int8), dim=1, stable=True).to(torch.int32).contiguous()
    {names[0]}[grid](q, k, v, o, *common, kv_idx, kv_cnt, nk, **const)
    return o''')
    elif plan.family in ("online", "none") and plan.extras:
        lines.append(xs.launcher_lines(plan) + f'''\
    {names[0]}[grid](q, k, v, o, *common, *xargs, **const)
    return o''')
    elif plan.family in ("online", "none"):
        lines.append(f'''\
    if TRACE:
        width = trace_width(M)
        if trace is None or trace.numel() < width * grid[0] * grid[1]:
            raise ValueError(f"a traced kernel needs trace=<int64 tensor of {{width}} x thread blocks>")
        if TRACE_EVERY:
            {names[0]}[grid](q, k, v, o, *common, trace, width, **const, TRACE_EVERY=TRACE_EVERY,
                             CLOCK=_clock(q))
        else:
            {names[0]}[grid](q, k, v, o, *common, trace, **const)
        return o
    {names[0]}[grid](q, k, v, o, *common, **const)
    return o''' if not t.lse else f'''\
    if lse is not None and (tuple(lse.shape) != (B, HQ, P) or lse.dtype != torch.float32):
        raise ValueError(f"lse must be a float32 tensor [batch, heads, queries] = {{(B, HQ, P)}}")
    lt = o if lse is None else lse     # not written without lse
    {names[0]}[grid](q, k, v, o, *common, lt, *lt.stride()[:3], **const, WRITE_LSE=lse is not None)
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
    ml = torch.empty((B * HKV, n_split, P * G), device=q.device, dtype=torch.float32)
    ld = torch.empty_like(ml)
    part = torch.empty((B * HKV, n_split, P * G, F), device=q.device, dtype=torch.float32)
    grid3 = (grid[0], grid[1], n_split)
    {names[0]}[grid3](q, k, v, o, *common, ml, ld, part, chunk, n_split, **const)
    {names[1]}[grid](o, ml, ld, part, *o.stride(), HKV, P, n_split, GROUP=G, HEAD_MAJOR=head_major,
                     BLOCK_M=BM, HEAD_DIM_V=F, num_warps=4, num_stages=1)
    return o


def chunk_size(M):
    """Keys per partial (the cascade's partition block) for M keys."""
    return {chunk}''')
    return "\n".join(lines) + "\n"


#: packed 16-bit exp2 on the GPU (sm_90 for bf16x2, sm_75 for f16x2), two per instruction
_EX2_ASM = {"bf16": ("ex2.approx.ftz.bf16x2 $0, $1;", "tl.bfloat16"),
            "fp16": ("ex2.approx.f16x2 $0, $1;", "tl.float16")}


def _exp2_lp_fn(dtype: str) -> str:
    asm, tdt = _EX2_ASM[dtype]
    return f'''
@triton.jit
def _exp2_lp(x, FAST_ASM: tl.constexpr):
    """exp2 of an fp32 tile, rounded to {tdt} first and computed two per instruction;
    without FAST_ASM (Triton's interpreter, or a GPU older than sm_90) the same rounding is
    emulated with an fp32 exp2."""
    xl = x.to({tdt})
    if FAST_ASM:
        return tl.inline_asm_elementwise("{asm}", "=r,r", [xl], dtype={tdt}, is_pure=True,
                                         pack=2)
    else:
        return tl.math.exp2(xl.to(tl.float32)).to({tdt})
'''


def _eviction_hints(body: str, kv: str, q: str, o: str) -> str:
    """Add L2 eviction hints (``eviction_policy``) to the K/V loads (``kv``), the Q load
    (``q``) and the O store (``o``) of a single-pass kernel; '' leaves them as they are."""
    if kv:
        body = re.sub(r"tl\.load\(([kv]_ptrs)", rf'tl.load(\1, eviction_policy="{kv}"', body)
    if q:
        body = body.replace("tl.load(q_ptrs)", f'tl.load(q_ptrs, eviction_policy="{q}")')
    if o:
        body = body.replace("tl.store(o_ptrs, o.to(O.dtype.element_ty)",
                            f'tl.store(o_ptrs, o.to(O.dtype.element_ty), eviction_policy="{o}"')
    return body


_TANH = '''
@triton.jit
def _tanh(x):
    """tanh from exp: 1 - 2 / (exp(2x) + 1), exact at both ends (exp -> inf or 0)."""
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)
'''


def _plain_loop_params(plan: KernelPlan, tiling: Tiling, what: str) -> dict:
    """The values of the cascade's parameters (the head dims from the tiling) for baking a
    ``what`` into the source; the knobs whose key loops it does not reach are refused."""
    import math as _math
    for knob in ("pipeline", "lazy_rescale", "tma", "warp_specialize", "trace"):
        if getattr(tiling, knob):
            raise CodegenError(f"cascade '{plan.cascade}': its {what} is generated for the "
                               f"plain key loop; turn off {knob}")
    env = {"E": tiling.head_dim, "F": tiling.head_dim}
    for name, src in plan.params.items():
        try:
            env[name] = eval(src, {"math": _math}, dict(env))  # noqa: S307 - our own source
        except Exception:  # noqa: BLE001 - a parameter it does not use
            pass
    return env


def _bake_score_fn(plan: KernelPlan, tiling: Tiling) -> KernelPlan:
    """The score map with the parameters' values (the head dims are the tiling's) and the key
    and query positions of the tile; knobs whose key loops it does not reach are refused."""
    import re
    from dataclasses import replace as _replace
    env = _plain_loop_params(plan, tiling, "score map")
    baked = []

    def bake(fn):
        for name in sorted(set(re.findall(r"\b[A-Za-z_][A-Za-z_0-9]*\b", fn)), key=len,
                           reverse=True):
            if name in env and name not in ("qk", "kpos", "qpos"):
                v = env[name]
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise CodegenError(f"cascade '{plan.cascade}': the score map uses "
                                       f"'{name}', which has no numeric value")
                fn = re.sub(rf"\b{name}\b", repr(float(v)), fn)
                baked.append(name)
        return fn
    fn = bake(plan.score_fn)
    fn = fn.replace("kpos", "(start_n + offs_n)[None, :].to(tl.float32)")
    fn = fn.replace("qpos", "offs_p[:, None].to(tl.float32)")
    factor = bake(plan.out_factor) if plan.out_factor else plan.out_factor
    return _replace(plan, score_fn=fn, out_factor=factor, baked=tuple(dict.fromkeys(baked)))


def _bake_window(plan: KernelPlan, tiling: Tiling) -> KernelPlan:
    """The sliding window's lower edge as a number (its parameters' values baked in)."""
    import math as _math
    from dataclasses import replace as _replace
    env = _plain_loop_params(plan, tiling, "sliding window")
    try:
        lo = eval(plan.window_lower, {"math": _math}, dict(env))  # noqa: S307
    except Exception:  # noqa: BLE001
        raise CodegenError(f"cascade '{plan.cascade}': the sliding window's lower edge "
                           f"{plan.window_lower} has no numeric value") from None
    used = tuple(n for n in plan.params if n in plan.window_lower)
    return _replace(plan, window_lower=repr(int(_math.ceil(lo))),
                    baked=tuple(dict.fromkeys(plan.baked + used)))


def emit(plan: KernelPlan, tiling: Tiling) -> tuple[str, list[str]]:
    """Return (module source, kernel names) for ``plan`` compiled with ``tiling``."""
    if plan.family == "chunked":
        from cascades.triton.chunked import emit_chunked
        return emit_chunked(plan, tiling)
    if plan.score_fn:
        plan = _bake_score_fn(plan, tiling)
    if plan.window_lower:
        plan = _bake_window(plan, tiling)
    if tiling.lse and (plan.family != "online" or plan.extras or plan.block_mask or tiling.trace):
        raise CodegenError(f"cascade '{plan.cascade}': a log-sum-exp output (lse=True) is generated "
                           f"for single-pass softmax kernels without extra inputs, a block mask "
                           f"or trace")
    pre = kernel_prefix(plan.cascade)
    prec = ', input_precision="ieee"' if tiling.dtype == "fp32" else ""
    fast = tiling.fast_exp and tiling.dtype in _EX2_ASM
    if plan.family == "linear":
        _plain_loop_params(plan, tiling, "linear attention")
        body, names = _linear(plan, pre, prec)
    elif plan.block_mask:
        _plain_loop_params(plan, tiling, "block mask")
        body, names = _block_sparse(plan, pre, prec, fast)
    elif plan.family in ("online", "none"):
        body, names = _single_pass(plan, pre, prec, fast, tiling.pipeline, tiling.lazy_rescale,
                                   tiling.trace, tiling.tma or tiling.warp_specialize,
                                   tiling.warp_specialize, tiling.trace_every > 0, tiling.lse)
    elif plan.family == "three-pass":
        body, names = _three_pass(plan, pre, prec)
    else:
        body, names = _partials(plan, pre, prec, fast, tiling.lazy_rescale)
    if fast:
        body = _exp2_lp_fn(tiling.dtype) + body
    if plan.score_fn and "_tanh(" in plan.score_fn:
        body = _TANH + body
    if plan.family in ("online", "none"):
        body = _eviction_hints(body, tiling.kv_eviction, tiling.q_eviction, tiling.o_eviction)
    doc = f'''Triton kernels generated by cascades.triton from cascade '{plan.cascade}'.

family: {plan.family}; normalisation: {plan.normalisation}; score: {plan.nonlinearity}({plan.score_fn or f"(({plan.scale}) * S + {plan.bias})"})
causal mask: {plan.causal_param or 'none'} (key > query + {plan.causal_offset}); group rank: {plan.group_rank or 'none'}
tiling: BLOCK_M={tiling.block_m} BLOCK_N={tiling.block_n} num_warps={tiling.num_warps} num_stages={tiling.num_stages} grid={tiling.grid_order} head_dim={tiling.head_dim} dtype={tiling.dtype} fast_exp={fast} pipeline={tiling.pipeline} lazy_rescale={tiling.lazy_rescale} tma={tiling.tma} warp_specialize={tiling.warp_specialize} eviction kv={tiling.kv_eviction or 'none'} q={tiling.q_eviction or 'none'} o={tiling.o_eviction or 'none'}
kernels: {", ".join(names)}
'''
    single = plan.family in ("online", "none")
    head = module_head(doc, plan.cascade, names, tiling.dtype, dict(
        BLOCK_M=tiling.block_m, BLOCK_N=tiling.block_n, NUM_WARPS=tiling.num_warps,
        NUM_STAGES=tiling.num_stages, HEAD_DIM=tiling.head_dim, HEAD_DIM_V=tiling.head_dim,
        GRID_ORDER=repr(tiling.grid_order), SPLIT_KV=tiling.split_kv, FAST_EXP=fast,
        TRACE=tiling.trace and single,
        TRACE_EVERY=tiling.trace_every if tiling.trace and single else 0,
        TMA=(tiling.tma or tiling.warp_specialize) and single), imports=("math", "os"))
    if plan.extras:
        body += xs.EXTRA_VIEW
    return head + body + _launcher(plan, tiling, names), names


__all__ = ["emit", "kernel_prefix", "LOG2E"]
