"""Serving decode kernels: ragged batches, paged K/V caches, and three schedules of the key work.

One generated module per decode cascade. Its ``forward(q, k, v, ...)`` runs the P newest query
tokens of each request (``q [B, Hq, P, E]``) against that request's cache, with the G = Hq / Hkv
query heads of a K/V head packed into the rows of one program (K/V read once per K/V head).
The cache is one of

* dense ``k, v [B, Hkv, M, E]``, optionally with ``kv_lens`` (request b uses its first
  ``kv_lens[b]`` keys);
* ragged (varlen) ``k, v [T, Hkv, E]``: the requests' keys back to back, ``cu_seqlens [B + 1]``
  their cumulative lengths;
* paged ``k, v [pages, page_size, Hkv, E]`` with ``block_table [B, max_pages]`` (the pages of
  request b in order; any page anywhere) and ``kv_lens``.

The work of all (request, K/V head) pairs is a list of key blocks of ``BLOCK_N`` keys laid end
to end; a *schedule* cuts it into segments (a run of key blocks of one pair) and gives each
program a run of segments (:func:`decode_schedule`, host side, shared with the time model):

* ``nosplit``: a program per pair (FlashAttention-2's decode) -- it writes O directly;
* ``split``: FlashDecoding, each pair's blocks in ``split_kv`` equal chunks, a program each;
* ``streamk``: LeanAttention, all pairs' blocks cut into ``programs`` equal shares across pair
  boundaries.

A segment writes its partial output (normalised) and log-sum-exp; a combine kernel (a program
per pair) reduces a pair's partials by the associative log-sum-exp rule. The kernels are read
from the cascade's structure: a per-request decode cascade (one of ``analyze``'s softmax
families with the causal mask aligned to the end of the keys) or a stream-K cascade (queries
of every pair, the keys of all pairs in one rank, per-pair key bounds, log-sum-exp partials).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from cascades.errors import CascadeError
from cascades.ir import Access, Binary, Call, Cascade, walk
from cascades.triton.analyze import CodegenError, analyze, bool_flag, py_expr
from cascades.triton.emit import LOG2E, kernel_prefix, module_head
from cascades.triton.tiling import Tiling

__all__ = ["SCHEDULES", "PAGED_LOADS", "ServingPlan", "serving_plan", "streamk_plan", "emit_serving", "decode_schedule",
           "SCHEDULE_SOURCE"]

SCHEDULES = ("nosplit", "split", "streamk")
#: how the paged path reads its block table, recorded with every GPU measurement of it: the
#: entries of the next key block are read while the current block computes (one per block
#: where a page holds whole blocks, one per page where a block holds whole pages)
PAGED_LOADS = "table-ahead"


@dataclass(frozen=True)
class ServingPlan:
    """What a serving decode module needs from the cascade."""
    cascade: str
    schedule: str          # the cascade's own schedule (forward's default)
    scale: str             # Python expression of the score coefficient (names: params, E)
    causal_param: str | None
    params: dict           # parameter -> Python expression of its default

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


# ---------------------------------------------------------------- the schedule (host side)
#: pure Python, spliced into every generated module and executed here for the model: one
#: source for the kernel's schedule and the time model's
SCHEDULE_SOURCE = '''
def decode_schedule(blocks, schedule, split_kv=1, programs=1):
    """Segments of the key blocks of each (request, K/V head) pair (``blocks[i]`` >= 1 blocks
    for pair i) under ``schedule``: returns (prog_seg, seg_pair, seg_lo, seg_hi, pair_seg) --
    program j runs segments prog_seg[j] .. prog_seg[j+1]-1; segment s covers key blocks
    seg_lo[s] .. seg_hi[s]-1 of pair seg_pair[s]; pair i's segments are pair_seg[i] ..
    pair_seg[i+1]-1."""
    seg_pair, seg_lo, seg_hi, prog_seg = [], [], [], [0]
    if schedule == "streamk":
        total = sum(blocks)
        n = max(1, min(int(programs), total))
        starts = [0]
        for b in blocks:
            starts.append(starts[-1] + b)
        pair = 0
        for j in range(n):
            lo, hi = j * total // n, (j + 1) * total // n
            while lo < hi:
                while starts[pair + 1] <= lo:
                    pair += 1
                end = min(hi, starts[pair + 1])
                seg_pair.append(pair)
                seg_lo.append(lo - starts[pair])
                seg_hi.append(end - starts[pair])
                lo = end
            prog_seg.append(len(seg_pair))
    elif schedule in ("split", "nosplit"):
        s = 1 if schedule == "nosplit" else max(1, int(split_kv))
        for pair, b in enumerate(blocks):
            chunk = -(-b // min(s, b))
            for lo in range(0, b, chunk):
                seg_pair.append(pair)
                seg_lo.append(lo)
                seg_hi.append(min(lo + chunk, b))
                prog_seg.append(len(seg_pair))
    else:
        raise ValueError(f"unknown schedule {schedule!r} (expected nosplit, split or streamk)")
    # segments in pair order for the combine (a stream-K segment list is already in it)
    pair_seg = [0] * (len(blocks) + 1)
    for p in seg_pair:
        pair_seg[p + 1] += 1
    for i in range(len(blocks)):
        pair_seg[i + 1] += pair_seg[i]
    return prog_seg, seg_pair, seg_lo, seg_hi, pair_seg
'''
_ns: dict = {}
exec(SCHEDULE_SOURCE, _ns)  # noqa: S102 - our own source, shared with the generated modules
decode_schedule = _ns["decode_schedule"]


# ------------------------------------------------------------------- reading the cascade
def streamk_plan(c: Cascade) -> ServingPlan | None:
    """A stream-K cascade: Q over (pairs, [group,] queries, head dim), K and V over one key
    rank partitioned into shares, per-pair bounds compared with the key coordinate in the
    score's mask, log-sum-exp partials combined over the shares. ``None`` if not this shape."""
    ins = {t.name: tuple(t.ranks) for t in c.inputs}
    if len(c.outputs) != 1 or not c.partitions:
        return None
    key_ranks = {p.rank for p in c.partitions}
    kv = [t for t, rk in ins.items() if len(rk) == 2 and rk[0] in key_ranks]
    qs = [t for t, rk in ins.items() if len(rk) >= 3 and not set(rk) & key_ranks]
    bounds = [t for t, rk in ins.items() if len(rk) == 1]
    if len(kv) != 2 or len(qs) != 1 or not bounds:
        return None
    pair_rank = ins[qs[0]][0]
    if any(ins[b] != (pair_rank,) for b in bounds):
        return None
    has_log = any(isinstance(n, Call) and n.func == "log" for e in c.einsums for n in walk(e.expr))
    if not has_log:
        return None
    # the score's mask: where(COND, -inf, a * S) with the bounds read in COND
    scale = causal = None
    for e in c.einsums:
        for n in walk(e.expr):
            if not (isinstance(n, Call) and n.func == "where" and len(n.args) == 3):
                continue
            reads = {a.tensor for a in walk(n.args[0]) if isinstance(a, Access)}
            if not set(bounds) <= reads:
                continue
            val = n.args[2]
            if isinstance(val, Binary) and val.op == "*":
                facs = [val.left, val.right]
                names = [f for f in facs if not isinstance(f, Access)]
                if len(names) == 1 and len(facs) - len(names) == 1:
                    scale = py_expr(names[0])
            causal = bool_flag(c, n.args[0]) or causal
    if scale is None:
        return None
    params = {p.name: py_expr(p.default) for p in c.params}
    return ServingPlan(c.name, "streamk", scale, causal, params)


_streamk_plan = streamk_plan     # the name cascades.triton.generate imports


def serving_plan(c: Cascade) -> ServingPlan:
    """The serving plan of a decode cascade, or a one-line :class:`CodegenError` why not."""
    sk = streamk_plan(c)
    if sk is not None:
        return sk
    try:
        p = analyze(c)
    except CascadeError as exc:
        raise CodegenError(f"cannot generate a serving decode kernel for cascade '{c.name}': "
                           f"{str(exc).split(': ', 1)[-1]}") from None
    why = None
    if p.nonlinearity != "exp" or p.family not in ("online", "partials"):
        why = "it is not a softmax over the keys in one pass or in split partials"
    elif p.score_fn or p.window_lower or p.block_mask or p.bias != "0":
        why = "its score map is not a plain scale (a bias, a score function or a window)"
    elif p.normalisation not in ("deferred", "per-step", "lse"):
        why = f"its {p.normalisation} normalisation has no log-sum-exp partials"
    elif p.causal_param is not None:
        env = {**{k: 0 for k in p.params}, "M": 10, "P": 3, "E": 64, "F": 64}
        try:
            off = eval(p.causal_offset, {"math": math}, env)  # noqa: S307 - our own expression
        except Exception:  # noqa: BLE001
            off = None
        if off != 7:
            why = ("its causal mask is not aligned to the end of the keys (query p sees keys "
                   "m <= p + M - P), as a request's new tokens are")
    if why:
        raise CodegenError(f"cannot generate a serving decode kernel for cascade '{c.name}': "
                           f"{why}")
    schedule = "split" if p.family == "partials" else "nosplit"
    return ServingPlan(c.name, schedule, p.scale, p.causal_param, dict(p.params))


# ------------------------------------------------------------------------------- kernels
_KERNELS = '''
@triton.jit
def {pre}_serve_partial(Q, K, V, O, ML, PART, KBASE, VBASE, LENS, TABLE, PROG_SEG, SEG_PAIR,
        SEG_LO, SEG_HI, qk_scale,
        stride_qb, stride_qh, stride_qm, stride_qd, stride_kh, stride_kn, stride_kd,
        stride_vh, stride_vn, stride_vd, stride_kpage, stride_vpage, stride_tb,
        stride_ob, stride_oh, stride_om, stride_od, H_KV, P_LEN,
        CAUSAL: tl.constexpr, GROUP: tl.constexpr, PAGED: tl.constexpr,
        PAGE_SIZE: tl.constexpr, WHOLE_PAGES: tl.constexpr, PAGES_PER_BLOCK: tl.constexpr,
        DIRECT: tl.constexpr,
        ALIGNED: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
        HEAD_DIM_V: tl.constexpr):
    pid = tl.program_id(0)
    s0 = tl.load(PROG_SEG + pid)
    s1 = tl.load(PROG_SEG + pid + 1)
    offs_r = tl.arange(0, BLOCK_M)
    offs_p = offs_r // GROUP
    offs_g = offs_r % GROUP
    row_ok = offs_r < P_LEN * GROUP
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_dv = tl.arange(0, HEAD_DIM_V)
    for s in range(s0, s1):
        pair = tl.load(SEG_PAIR + s)
        off_b = pair // H_KV
        off_hk = pair % H_KV
        L = tl.load(LENS + off_b)
        lo = tl.load(SEG_LO + s) * BLOCK_N
        hi = tl.minimum(tl.load(SEG_HI + s) * BLOCK_N, L)
        off = L - P_LEN
        q_ptrs = (Q + off_b.to(tl.int64) * stride_qb + (off_hk * GROUP + offs_g)[:, None] * stride_qh
                  + tl.minimum(offs_p, P_LEN - 1)[:, None] * stride_qm + offs_d[None, :] * stride_qd)
        q = tl.load(q_ptrs)
        kb = tl.load(KBASE + off_b) + off_hk.to(tl.int64) * stride_kh
        vb = tl.load(VBASE + off_b) + off_hk.to(tl.int64) * stride_vh
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM_V], dtype=tl.float32)
        if PAGED:   # the block table read one key block ahead: no table load between a
            # block's addresses and its K/V loads (which would serialise the key loop)
            tb = TABLE + off_b.to(tl.int64) * stride_tb
            if WHOLE_PAGES:     # a page holds whole key blocks: one entry per block
                pg_nx = tl.load(tb + lo // PAGE_SIZE).to(tl.int64)
            elif PAGES_PER_BLOCK > 0:   # a block is PAGES_PER_BLOCK whole pages: their
                # entries (one each) loaded at the top of the previous block, spread over
                # the rows at its bottom
                offs_pg = tl.arange(0, PAGES_PER_BLOCK)
                last_pg = (hi - 1) // PAGE_SIZE
                e = tl.load(tb + tl.minimum(lo // PAGE_SIZE + offs_pg, last_pg)).to(tl.int64)
                pg_nx = tl.sum(tl.where((offs_n // PAGE_SIZE)[:, None] == offs_pg[None, :],
                                        e[None, :], 0), 1)
            else:               # pages not aligned to blocks: each row's page
                pg_nx = tl.load(tb + (lo + offs_n) // PAGE_SIZE, mask=lo + offs_n < hi,
                                other=0).to(tl.int64)
        for start_n in range(lo, hi, BLOCK_N):
            n = start_n + offs_n
            kmask = n < hi
            if PAGED:
                pg = pg_nx
                nx = start_n + BLOCK_N
                if WHOLE_PAGES:
                    pg_nx = tl.load(tb + tl.minimum(nx, hi - 1) // PAGE_SIZE).to(tl.int64)
                    within = (start_n % PAGE_SIZE + offs_n).to(tl.int64)
                elif PAGES_PER_BLOCK > 0:
                    e = tl.load(tb + tl.minimum(nx // PAGE_SIZE + offs_pg, last_pg)).to(tl.int64)
                    within = (offs_n % PAGE_SIZE).to(tl.int64)
                else:
                    pg_nx = tl.load(tb + (nx + offs_n) // PAGE_SIZE, mask=nx + offs_n < hi,
                                    other=0).to(tl.int64)
                    within = (n % PAGE_SIZE).to(tl.int64)
                k_rows = kb + pg * stride_kpage + within * stride_kn
                v_rows = vb + pg * stride_vpage + within * stride_vn
            else:
                k_rows = kb + n.to(tl.int64) * stride_kn
                v_rows = vb + n.to(tl.int64) * stride_vn
            if ALIGNED:   # every row starts at a multiple of 16 elements: wide loads
                k_rows = tl.multiple_of(k_rows, 16)
                v_rows = tl.multiple_of(v_rows, 16)
            k = tl.load(K + k_rows[:, None] + offs_d[None, :] * stride_kd, mask=kmask[:, None],
                        other=0.0)
            qk = tl.dot(q, tl.trans(k){prec}) * qk_scale
            keep = kmask[None, :]
            if CAUSAL:
                keep = keep & (n[None, :] <= offs_p[:, None] + off)
            qk = tl.where(keep, qk, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            m_s = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(qk - m_s[:, None])
            alpha = tl.math.exp2(m_i - m_s)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(V + v_rows[:, None] + offs_dv[None, :] * stride_vd, mask=kmask[:, None],
                        other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v{prec})
            m_i = m_new
            if PAGED:
                if not WHOLE_PAGES:
                    if PAGES_PER_BLOCK > 0:   # the next block's pages, its rows' entries
                        pg_nx = tl.sum(tl.where((offs_n // PAGE_SIZE)[:, None] == offs_pg[None, :],
                                                e[None, :], 0), 1)
        l_div = tl.where(l_i == 0.0, 1.0, l_i)
        if DIRECT:
            o_ptrs = (O + off_b.to(tl.int64) * stride_ob + (off_hk * GROUP + offs_g)[:, None] * stride_oh
                      + offs_p[:, None] * stride_om + offs_dv[None, :] * stride_od)
            tl.store(o_ptrs, (acc / l_div[:, None]).to(O.dtype.element_ty), mask=row_ok[:, None])
        else:
            rows = tl.cast(s, tl.int64) * (P_LEN * GROUP) + offs_r
            tl.store(ML + rows, tl.where(l_i == 0.0, float("-inf"), m_i + tl.math.log2(l_div)),
                     mask=row_ok)
            tl.store(PART + rows[:, None] * HEAD_DIM_V + offs_dv[None, :], acc / l_div[:, None],
                     mask=row_ok[:, None])


@triton.jit
def {pre}_serve_combine(O, ML, PART, PAIR_SEG, stride_ob, stride_oh, stride_om, stride_od,
        H_KV, P_LEN, GROUP: tl.constexpr, BLOCK_M: tl.constexpr, HEAD_DIM_V: tl.constexpr):
    pair = tl.program_id(0)
    off_b = pair // H_KV
    off_hk = pair % H_KV
    s0 = tl.load(PAIR_SEG + pair)
    s1 = tl.load(PAIR_SEG + pair + 1)
    offs_r = tl.arange(0, BLOCK_M)
    offs_p = offs_r // GROUP
    offs_g = offs_r % GROUP
    offs_dv = tl.arange(0, HEAD_DIM_V)
    row_ok = offs_r < P_LEN * GROUP
    gm = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    for s in range(s0, s1):
        rows = tl.cast(s, tl.int64) * (P_LEN * GROUP) + offs_r
        gm = tl.maximum(gm, tl.load(ML + rows, mask=row_ok, other=float("-inf")))
    gm_s = tl.where(gm == float("-inf"), 0.0, gm)
    ws = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_V], dtype=tl.float32)
    for s in range(s0, s1):
        rows = tl.cast(s, tl.int64) * (P_LEN * GROUP) + offs_r
        w = tl.math.exp2(tl.load(ML + rows, mask=row_ok, other=float("-inf")) - gm_s)
        ws += w
        acc += w[:, None] * tl.load(PART + rows[:, None] * HEAD_DIM_V + offs_dv[None, :],
                                    mask=row_ok[:, None], other=0.0)
    o = acc / tl.where(ws == 0.0, 1.0, ws)[:, None]
    o_ptrs = (O + off_b.to(tl.int64) * stride_ob + (off_hk * GROUP + offs_g)[:, None] * stride_oh
              + offs_p[:, None] * stride_om + offs_dv[None, :] * stride_od)
    tl.store(o_ptrs, o.to(O.dtype.element_ty), mask=row_ok[:, None])
'''

_LAUNCHER = '''

def _layout(q, k, v, kv_lens, cu_seqlens, block_table):
    """(lengths list, kbase, vbase, strides, paged facts) of the cache layout."""
    if q.dim() != 4:
        raise ValueError("q must be [batch, query heads, new tokens, head dim]")
    B, HQ, P, E = q.shape
    dev = q.device
    if block_table is not None:
        if k.dim() != 4 or v.shape[:3] != k.shape[:3]:
            raise ValueError("a paged cache is k, v [pages, page size, K/V heads, head dim]")
        if kv_lens is None:
            raise ValueError("a paged cache needs kv_lens (the keys of each request)")
        page = k.shape[1]
        HKV = k.shape[2]
        kh, kn, kd, kp = k.stride(2), k.stride(1), k.stride(3), k.stride(0)
        vh, vn, vd, vp = v.stride(2), v.stride(1), v.stride(3), v.stride(0)
        lens = [int(x) for x in kv_lens]
        if block_table.dim() != 2 or block_table.shape[0] != B:
            raise ValueError(f"block_table must be [batch, pages per request] with {{B}} rows")
        need = max(-(-n // page) for n in lens) if lens else 0
        if block_table.shape[1] < need:
            raise ValueError(f"block_table has {{block_table.shape[1]}} pages per request; the longest request needs {{need}}")
        kbase = torch.zeros(B, dtype=torch.int64, device=dev)
        vbase = kbase
        table = block_table.to(device=dev, dtype=torch.int32).contiguous()
        paged = (page, table, table.stride(0))
    elif cu_seqlens is not None:
        if k.dim() != 3 or v.shape[:2] != k.shape[:2]:
            raise ValueError("a ragged cache is k, v [total keys, K/V heads, head dim] with cu_seqlens")
        cu = [int(x) for x in cu_seqlens]
        if len(cu) != B + 1 or cu[0] != 0 or cu[-1] > k.shape[0]:
            raise ValueError(f"cu_seqlens must be {{B + 1}} cumulative key counts from 0 to at most {{k.shape[0]}}")
        lens = [b - a for a, b in zip(cu, cu[1:])]
        if kv_lens is not None and [int(x) for x in kv_lens] != lens:
            raise ValueError("kv_lens disagree with cu_seqlens")
        HKV = k.shape[1]
        kh, kn, kd, kp = k.stride(1), k.stride(0), k.stride(2), 0
        vh, vn, vd, vp = v.stride(1), v.stride(0), v.stride(2), 0
        kbase = torch.tensor([a * kn for a in cu[:-1]], dtype=torch.int64, device=dev)
        vbase = torch.tensor([a * vn for a in cu[:-1]], dtype=torch.int64, device=dev)
        paged = None
    else:
        if k.dim() != 4 or v.shape[:3] != k.shape[:3] or k.shape[0] != B:
            raise ValueError("a dense cache is k, v [batch, K/V heads, keys, head dim]")
        HKV, M = k.shape[1], k.shape[2]
        lens = [M] * B if kv_lens is None else [int(x) for x in kv_lens]
        if any(n > M for n in lens):
            raise ValueError(f"kv_lens exceed the cache's {{M}} keys")
        kh, kn, kd, kp = k.stride(1), k.stride(2), k.stride(3), 0
        vh, vn, vd, vp = v.stride(1), v.stride(2), v.stride(3), 0
        kbase = torch.arange(B, dtype=torch.int64, device=dev) * k.stride(0)
        vbase = torch.arange(B, dtype=torch.int64, device=dev) * v.stride(0)
        paged = None
    if len(lens) != B:
        raise ValueError(f"{{len(lens)}} key lengths for a batch of {{B}} requests")
    if any(n < 1 for n in lens):
        raise ValueError("every request needs at least one key")
    if HQ % HKV:
        raise ValueError(f"{{HQ}} query heads are not a multiple of {{HKV}} key/value heads")
    if k.shape[-1] != E or E != HEAD_DIM or v.shape[-1] != HEAD_DIM_V:
        raise ValueError(f"this kernel was generated for head dim {{HEAD_DIM}}, got {{E}}/{{v.shape[-1]}}")
    for t in (q, k, v):
        if t.dtype != DTYPE:
            raise ValueError(f"this kernel was generated for {{DTYPE}}, got {{t.dtype}}")
    return lens, HKV, kbase, vbase, (kh, kn, kd, kp, vh, vn, vd, vp), paged


def plan(q, k, v, kv_lens=None, cu_seqlens=None, block_table=None, schedule=SCHEDULE,
         split_kv=None, programs=None):
    """The launch plan (layout, schedule, partial buffers) of forward's arguments; pass it to
    forward(..., plan=) to launch without rebuilding it (kv_lens etc. must not change)."""
    lens, HKV, kbase, vbase, strides, paged = _layout(q, k, v, kv_lens, cu_seqlens, block_table)
    B, HQ, P, E = q.shape
    G = HQ // HKV
    if P * G > 256:
        raise ValueError(f"{{P}} tokens x {{G}} query heads per K/V head = {{P * G}} rows; at most 256 fit one program")
    blocks = [-(-n // BLOCK_N) for n in lens for _ in range(HKV)]
    if schedule == "streamk" and programs is None:
        programs = (torch.cuda.get_device_properties(q.device).multi_processor_count * PROGRAMS_PER_SM
                    if q.is_cuda else 4)
    if split_kv is None:
        split_kv = SPLIT_KV
    prog_seg, seg_pair, seg_lo, seg_hi, pair_seg = decode_schedule(blocks, schedule, split_kv,
                                                                   programs or 1)
    dev = q.device
    t32 = lambda x: torch.tensor(x, dtype=torch.int32, device=dev)  # noqa: E731
    direct = len(seg_pair) == len(blocks)
    n_seg = len(seg_pair)
    F = v.shape[-1]
    ml = torch.empty((1 if direct else n_seg) * P * G, device=dev, dtype=torch.float32)
    part = torch.empty(((1 if direct else n_seg) * P * G, F), device=dev, dtype=torch.float32)
    kh, kn, kd, kp, vh, vn, vd, vp = strides
    aligned = (all(x % 16 == 0 for x in (kh, kn, kp, vh, vn, vp)) and kd == 1 and vd == 1
               and bool(((kbase % 16) == 0).all()) and bool(((vbase % 16) == 0).all())
               and k.storage_offset() % 16 == 0 and v.storage_offset() % 16 == 0)
    return dict(lens=lens, lens_t=t32(lens), HKV=HKV, aligned=aligned, G=G, P=P, kbase=kbase, vbase=vbase,
                strides=strides, paged=paged, prog_seg=t32(prog_seg), seg_pair=t32(seg_pair),
                seg_lo=t32(seg_lo), seg_hi=t32(seg_hi), pair_seg=t32(pair_seg),
                programs=len(prog_seg) - 1, segments=n_seg, pairs=len(blocks), direct=direct,
                ml=ml, part=part, schedule=schedule)


def forward(q, k, v, {args}kv_lens=None, cu_seqlens=None, block_table=None, schedule=SCHEDULE,
            split_kv=None, programs=None, plan=None, out=None):
    """Decode q [B, Hq, P, E] against a dense, ragged (cu_seqlens) or paged (block_table) cache;
    schedule 'nosplit', 'split' (split_kv chunks per pair) or 'streamk' (programs shares)."""
{params}    if plan is None:
        plan = globals()["plan"](q, k, v, kv_lens, cu_seqlens, block_table, schedule, split_kv,
                                 programs)
    pl = plan
    B, HQ, P, E = q.shape
    if {causal} and min(pl["lens"]) < P:
        raise ValueError("a causal mask needs at least as many keys as new tokens in every request")
    o = torch.empty((B, HQ, P, v.shape[-1]), device=q.device, dtype=q.dtype) if out is None else out
    G = pl["G"]
    BM = max(16, triton.next_power_of_2(P * G))
    if pl["paged"] is None:
        page, table, stb = 1, pl["lens_t"], 0
    else:
        page, table, stb = pl["paged"]
    kh, kn, kd, kp, vh, vn, vd, vp = pl["strides"]
    qk_scale = float({scale}) * {log2e!r}
    {pre}_serve_partial[(pl["programs"],)](
        q, k, v, o, pl["ml"], pl["part"], pl["kbase"], pl["vbase"], pl["lens_t"], table,
        pl["prog_seg"], pl["seg_pair"], pl["seg_lo"], pl["seg_hi"], qk_scale, *q.stride(),
        kh, kn, kd, vh, vn, vd, kp, vp, stb, *o.stride(), pl["HKV"], P,
        CAUSAL=bool({causal}), GROUP=G, PAGED=pl["paged"] is not None, PAGE_SIZE=page,
        WHOLE_PAGES=page % BLOCK_N == 0,
        PAGES_PER_BLOCK=BLOCK_N // page if BLOCK_N % page == 0 and page < BLOCK_N else 0,
        DIRECT=pl["direct"], ALIGNED=pl["aligned"],
        BLOCK_M=BM, BLOCK_N=BLOCK_N,
        HEAD_DIM=E, HEAD_DIM_V=v.shape[-1], num_warps=NUM_WARPS, num_stages=NUM_STAGES)
    if not pl["direct"]:
        {pre}_serve_combine[(pl["pairs"],)](o, pl["ml"], pl["part"], pl["pair_seg"], *o.stride(),
                                            pl["HKV"], P, GROUP=G, BLOCK_M=BM,
                                            HEAD_DIM_V=v.shape[-1], num_warps=4, num_stages=1)
    return o
'''


def emit_serving(plan: ServingPlan, tiling: Tiling, programs_per_sm: int = 2) -> tuple[str, list]:
    """(module source, kernel names) of the serving decode module for ``plan``."""
    pre = kernel_prefix(plan.cascade)
    prec = ', input_precision="ieee"' if tiling.dtype == "fp32" else ""
    names = [f"{pre}_serve_partial", f"{pre}_serve_combine"]
    skip = {"share_size", "chunk_size", "block_kv"}
    own = [k for k in plan.params if k not in skip]
    args = "".join(f"{k}=None, " for k in own)
    params = "".join(f"    {k} = ({plan.params[k]}) if {k} is None else {k}\n" for k in own)
    params = params.replace("(E)", "(q.shape[-1])").replace("(F)", "(v.shape[-1])")
    scale = plan.scale.replace("(E)", "(q.shape[-1])")
    doc = f'''Serving decode kernels generated by cascades.triton.emit_decode from cascade '{plan.cascade}'.

schedule: {plan.schedule} (forward's default; nosplit, split and streamk all run); causal mask: {plan.causal_param or 'none'}
tiling: BLOCK_N={tiling.block_n} num_warps={tiling.num_warps} num_stages={tiling.num_stages} head_dim={tiling.head_dim} dtype={tiling.dtype}
kernels: {", ".join(names)}
'''
    head = module_head(doc, plan.cascade, names, tiling.dtype, dict(
        BLOCK_N=tiling.block_n, NUM_WARPS=tiling.num_warps, NUM_STAGES=tiling.num_stages,
        HEAD_DIM=tiling.head_dim, HEAD_DIM_V=tiling.head_dim, SPLIT_KV=tiling.split_kv,
        SCHEDULE=repr(plan.schedule), PROGRAMS_PER_SM=int(programs_per_sm)))
    causal = plan.causal_param if plan.causal_param in own else "False"
    body = (SCHEDULE_SOURCE + _KERNELS.replace("{pre}", pre).replace("{prec}", prec)
            + _LAUNCHER.format(pre=pre, args=args, params=params, causal=causal,
                               scale=scale, log2e=LOG2E))
    return head + body, names


def generate_serving(cascade, tiling: Tiling | None = None, programs_per_sm: int = 2, **kw):
    """The serving decode module (:class:`cascades.triton.GeneratedSource`) of ``cascade``."""
    from dataclasses import replace

    from cascades.triton import GeneratedSource
    if isinstance(cascade, str):
        from cascades.library import load
        cascade = load(cascade)
    tiling = Tiling(**kw) if tiling is None else (replace(tiling, **kw) if kw else tiling)
    plan = serving_plan(cascade)
    src, names = emit_serving(plan, tiling, programs_per_sm)
    return GeneratedSource(cascade=cascade.name, plan=plan, tiling=tiling, source=src,
                           kernels=tuple(names))
