"""The generated MLA decode kernel: multi-head latent attention (DeepSeek-V2/V3, FlashMLA) with
the absorbed queries against one latent cache shared by every query head.

Read from the cascade's structure (:func:`mla_plan`), never its name: two cache inputs indexed
by the key rank (the rank the softmax maximum runs over), each contracted with a query input in
a score; the one whose feature rank is also kept by the sum over the keys is the latent cache
(keys *and* values), the other the rotary key (scores only); an output that contracts the
latent output with a per-head weight is the value up-projection. So the kernel is the serving
decode kernel (:mod:`cascades.triton.emit_decode`) with one "K/V head" of ``d_qk = latent +
rope`` score dims and ``d_v = latent`` value dims, the values being the latent tile itself:

* a program owns ``BLOCK_M`` (token, head) rows of one request (64, as FlashMLA packs them;
  row ``r`` is token ``r // H``, head ``r % H``) -- a *pair* is (request, row tile, value
  part), so a request's cache is read once per pair (from L2 after the first);
* the keys of every pair are cut by the serving kernels' schedule (``decode_schedule``: no
  split, FlashDecoding's split, stream-K) and partial outputs are merged by the log-sum-exp
  rule in a combine kernel (a program per pair and ``CHUNK`` columns);
* the latent dim is handled in ``CHUNK``-wide column chunks (128 of the 512): the query's
  chunks are loaded once per segment, each key block's latent tile is loaded chunk by chunk,
  used for the score (``QL_c · CKV_cᵀ`` accumulated, plus ``QR · KRᵀ``) and, after the
  softmax, for the value product ``P · CKV_c`` into that chunk's accumulator -- one
  exponentiated P tile, one read of the cache tile, no score recomputed;
* the latent output OL is written ``[H, B, P, latent]`` in memory (a ``[B, H, P, latent]``
  view) so the per-head up-projection ``O = OL · W_UV`` is one batched torch matmul in the
  launcher (``torch.bmm`` over heads, no copy) -- not a generated kernel.

Registers: the 64 x 512 fp32 accumulator is 32768 values per program: 256 per thread with 4
warps (more than the 255 a thread may hold), 128 with 8 (FlashMLA's two warp groups hold
64 x 256 each the same way). The rest is not small: the tensor-core operands are in shared
memory, but the score tile, its exponentials, the cache tiles' addresses in flight (one per
16-byte copy and stage) and the rescale take the other half. Compiled offline for sm_90a
(Triton 3.9, ptxas; 8 warps, chunks of 128), the whole 512 in one program uses all 255
registers and spills: 412 bytes per thread with 64-key blocks and 2 stages, 128 with 32-key
blocks and 3 stages, 24 with 16-key blocks. Two programs per row tile, each owning 256 value
columns (``value_split=2``), use 250 registers with 32-key blocks and 2 stages (176 KiB of
shared memory) and 228 with 16-key blocks and 3 stages, without a spill -- at the price of
computing every 576-dim score twice (tensor work x 1.53 at 1088 FLOPs a key and row, and
the cache tile read from L2 by both). Measured on the H100 (bf16, 128 heads, 32-key blocks,
2 stages; experiments/data/gpu_serving_mla.csv) the one-program form (``value_split=1``)
compiled to 248-250 registers without a spill and ran 1.14-1.86x faster than two programs
per row tile (1.7-1.9x on the batched shapes), so it is the default (:data:`MLA_VALUE_SPLIT`);
``value_split=2`` stays available. Within a program the latent dim
goes in chunks of 128 columns (one ``tl.dot`` per chunk; without a value split each cache
chunk serves both products); the chunks do not shrink the accumulator.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from cascades.ir import Access, Binary, Call, Cascade, Name, walk
from cascades.triton.analyze import CodegenError, bool_flag, py_expr
from cascades.triton.emit import LOG2E, kernel_prefix, module_head
from cascades.triton.emit_decode import SCHEDULE_SOURCE
from cascades.triton.tiling import Tiling

__all__ = ["MLAPlan", "mla_plan", "emit_mla", "generate_mla", "MLA_TILING", "MLA_VALUE_SPLIT",
           "LATENT", "ROPE", "CHUNK"]

#: DeepSeek-V2/V3's latent and rotary dims; the value columns a program handles per dot
LATENT, ROPE, CHUNK = 512, 64, 128
#: 64 (token, head) rows per program as FlashMLA; 32-key blocks, 2 stages, 8 warps, all 512
#: value columns in one program: no register spill on sm_90a (see the module text)
MLA_TILING = dict(block_m=64, block_n=32, num_warps=8, num_stages=2, split_kv=4)
MLA_VALUE_SPLIT = 1


@dataclass(frozen=True)
class MLAPlan:
    """What the MLA decode module needs from the cascade (tensor and rank names are the
    cascade's; the generated ``forward`` takes them in the order below)."""
    cascade: str
    latent_query: str        # QL [heads, tokens, latent]
    rope_query: str          # QR [heads, tokens, rope]
    latent_cache: str        # CKV [keys, latent]: keys and values
    rope_cache: str          # KR [keys, rope]: keys only
    up_proj: str | None      # WUV [heads, latent, F], or None (the output stays latent)
    latent_output: str       # OL [heads, tokens, latent]
    output: str
    ranks: dict              # role -> rank name: key, latent, rope, head, token, value
    scale: str               # Python source of the score coefficient (dims as _dims[...])
    causal_param: str | None
    params: dict             # parameter -> Python source of its default

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


# ------------------------------------------------------------------- reading the cascade
def mla_plan(c: Cascade) -> MLAPlan | None:
    """The MLA roles of ``c`` (see the module text), ``None`` when it is not latent attention;
    a one-line :class:`CodegenError` for latent attention the kernel cannot run."""
    info = c.info

    def base(r):
        part = info.part_parent.get(r)
        return part.rank if part is not None else r

    inputs = [t for t in c.inputs if t.dtype != "bool"]
    if len(c.outputs) != 1:
        return None
    maxed = {base(r) for r in info.iterative}
    for e in c.einsums:
        if e.reduction is not None and e.reduction.op == "max":
            maxed |= {base(info.var_rank[v]) for v in e.reduction.vars}
    out_ranks = set(c.outputs[0].ranks)
    count: dict = {}
    for t in inputs:
        for r in set(t.ranks):
            count[r] = count.get(r, 0) + 1
    keys = [r for r, n in count.items() if n >= 2 and r not in out_ranks and r in maxed]
    if len(keys) != 1:
        return None
    key = keys[0]
    cache = {t.name: [r for r in t.ranks if r != key] for t in inputs if key in t.ranks}
    if len(cache) != 2 or any(len(f) != 1 for f in cache.values()):
        return None
    feat = {n: f[0] for n, f in cache.items()}
    # carriers: tensors that are a cache input re-indexed (BC[m1, m0, e] = CKV[m1*M0+m0, e])
    carrier = {n: n for n in cache}
    for e in c.einsums:
        if e.reduction is None and isinstance(e.expr, Access) and e.expr.tensor in carrier:
            carrier[e.tensor] = carrier[e.expr.tensor]
    reads = lambda e: [n.tensor for n in walk(e.expr) if isinstance(n, Access)]  # noqa: E731
    pairs, kept = {}, set()
    others = {t.name for t in inputs} - set(cache)
    for e in c.einsums:
        if e.reduction is None or e.reduction.op != "sum":
            continue
        red = {base(info.var_rank[v]) for v in e.reduction.vars}
        src = [carrier[t] for t in reads(e) if t in carrier]
        qs = [t for t in reads(e) if t in others]
        if len(src) == 1 and red == {feat[src[0]]} and len(qs) == 1:
            pairs[src[0]] = qs[0]                       # a score: query . cache over a feature
        if key in red and src:
            kept |= {base(r) for r in info.tensor_ranks[e.tensor]} & {feat[s] for s in src}
    lat = [n for n in cache if feat[n] in kept]
    if len(lat) != 1 or len(pairs) != 2:
        return None
    latent = lat[0]
    rope = next(n for n in cache if n != latent)
    why = None
    out = c.outputs[0]
    ol, up = out.name, None
    if feat[latent] not in out.ranks:        # the output is an up-projection of the latent one
        d = c.defining(out.name)
        e = d[0] if len(d) == 1 else None
        acc = [a for a in walk(e.expr) if isinstance(a, Access)] if e is not None else []
        ws = [a.tensor for a in acc if a.tensor in others and a.tensor not in pairs.values()]
        ls = [a.tensor for a in acc if a.tensor not in others]
        if (e is None or e.reduction is None or len(ws) != 1 or len(ls) != 1
                or {base(info.var_rank[v]) for v in e.reduction.vars} != {feat[latent]}):
            why = "its output is neither the latent output nor one per-head product of it"
        else:
            ol, up = ls[0], ws[0]
    ql, qr = pairs[latent], pairs[rope]
    q_ranks = [r for r in info.tensor_ranks[ql] if r != feat[latent]]
    if why is None and (len(q_ranks) != 2 or [r for r in info.tensor_ranks[qr]
                                             if r != feat[rope]] != q_ranks):
        why = "its queries are not [heads, tokens, dims] with the same heads and tokens"
    if why:
        raise CodegenError(f"cannot generate an MLA decode kernel for cascade '{c.name}': {why}")
    # heads: the query rank the up-projection also has; otherwise the first
    head = q_ranks[0]
    if up is not None:
        shared = [r for r in q_ranks if r in info.tensor_ranks[up]]
        head = shared[0] if len(shared) == 1 else head
    token = next(r for r in q_ranks if r != head)
    value = ([r for r in info.tensor_ranks[up] if r not in (head, feat[latent])] or [None])[0] \
        if up is not None else None
    ranks = dict(key=key, latent=feat[latent], rope=feat[rope], head=head, token=token,
                 value=value)
    dims = {r: f"_dims[{r!r}]" for r in ranks.values() if r}
    scale, causal = _score_map(c, dims, ranks)
    skip = {p.block.name for p in c.partitions if isinstance(p.block, Name)}
    params = {p.name: py_expr(p.default, dims) for p in c.params if p.name not in skip}
    return MLAPlan(c.name, ql, qr, latent, rope, up, ol, out.name, ranks, scale, causal, params)


def _score_map(c: Cascade, dims: dict, ranks: dict) -> tuple:
    """(scale source, causal parameter) of the score ``where(FLAG and key > ..., -inf,
    scale * (...))``; the mask must be aligned to the end of the keys (query p sees keys
    m <= p + M - P), as a request's new tokens are."""
    for e in c.einsums:
        for n in walk(e.expr):
            if not (isinstance(n, Call) and n.func == "where" and len(n.args) == 3):
                continue
            val = n.args[2]
            if not (isinstance(val, Binary) and val.op == "*"):
                continue
            facs = [f for f in (val.left, val.right)
                    if not any(isinstance(a, Access) for a in walk(f))]
            if len(facs) != 1:
                continue
            flag = bool_flag(c, n.args[0])
            if flag is not None and not _end_aligned(c, n.args[0], flag, ranks):
                raise CodegenError(f"cannot generate an MLA decode kernel for cascade "
                                   f"'{c.name}': its causal mask is not aligned to the end of "
                                   f"the keys (query p sees keys m <= p + M - P)")
            return py_expr(facs[0], dims), flag
    raise CodegenError(f"cannot generate an MLA decode kernel for cascade '{c.name}': no score "
                       f"'where(mask, -inf, scale * (...))' found")


def _end_aligned(c: Cascade, cond, flag: str, ranks: dict) -> bool:
    """Evaluate the mask (flag on) on a small grid: 10 keys in blocks of 4, 3 new tokens."""
    info = c.info
    key, token = ranks["key"], ranks["token"]
    part = info.partition_of.get(key)
    size = {key: 10, token: 3}
    if part is not None:
        size.update({part.inner: 4, part.outer: 3})
    env = {r: size.get(r, 1) for r in info.ranks}
    env.update({p.name: 0 for p in c.params})
    env[flag] = True
    kvars = [v for v, r in info.var_rank.items() if r in (key, getattr(part, "inner", None),
                                                           getattr(part, "outer", None))]
    pvars = [v for v, r in info.var_rank.items() if r == token]
    try:
        src = py_expr(cond)
        for k in range(12):
            for p in range(3):
                loc = dict(env)
                for v in kvars:
                    r = info.var_rank[v]
                    loc[v] = (k if r == key else k // 4 if part is not None and r == part.outer
                              else k % 4)
                for v in pvars:
                    loc[v] = p
                if bool(eval(src, {"math": math}, loc)) != (k > p + 7):  # noqa: S307
                    return False
    except Exception:  # noqa: BLE001 - an expression this check cannot evaluate: not aligned
        return False
    return True


# ------------------------------------------------------------------------------- kernels
_PARTIAL = '''
@triton.jit
def {pre}_mla_partial(QL, QR, CKV, KR, OL, ML, PART, CBASE, RBASE, LENS, TABLE, PROG_SEG,
        SEG_PAIR, SEG_LO, SEG_HI, qk_scale,
        stride_lb, stride_lh, stride_lp, stride_ld, stride_rb, stride_rh, stride_rp, stride_rd,
        stride_cn, stride_cd, stride_kn, stride_kd, stride_cpage, stride_kpage, stride_tb,
        stride_ob, stride_oh, stride_op, stride_od, TILES, P_LEN,
        CAUSAL: tl.constexpr, HEADS: tl.constexpr, PAGED: tl.constexpr,
        PAGE_SIZE: tl.constexpr, WHOLE_PAGES: tl.constexpr, DIRECT: tl.constexpr,
        ALIGNED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        CHUNK: tl.constexpr, ROPE: tl.constexpr, LATENT: tl.constexpr,
        VALUE_SPLIT: tl.constexpr):
    pid = tl.program_id(0)
    s0 = tl.load(PROG_SEG + pid)
    s1 = tl.load(PROG_SEG + pid + 1)
    offs_r = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_c = tl.arange(0, CHUNK)
    offs_k = tl.arange(0, ROPE)
    for s in range(s0, s1):
        pair = tl.load(SEG_PAIR + s)
        off_b = pair // (TILES * VALUE_SPLIT)
        rows = (pair // VALUE_SPLIT % TILES) * BLOCK_M + offs_r
        col0 = (pair % VALUE_SPLIT) * (LATENT // VALUE_SPLIT)   # this program's value columns
        row_ok = rows < P_LEN * HEADS
        rows_c = tl.minimum(rows, P_LEN * HEADS - 1)
        offs_p = rows_c // HEADS           # row r: token r // H, head r % H
        offs_h = rows_c % HEADS
        L = tl.load(LENS + off_b)
        lo = tl.load(SEG_LO + s) * BLOCK_N
        hi = tl.minimum(tl.load(SEG_HI + s) * BLOCK_N, L)
        off = L - P_LEN
        ql_rows = QL + off_b.to(tl.int64) * stride_lb + offs_h * stride_lh + offs_p * stride_lp
        qr = tl.load(QR + off_b.to(tl.int64) * stride_rb + (offs_h * stride_rh
                     + offs_p * stride_rp)[:, None] + offs_k[None, :] * stride_rd)
{q_loads}        cb = tl.load(CBASE + off_b)
        kb = tl.load(RBASE + off_b)
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
{acc_init}        if PAGED:
            tb = TABLE + off_b.to(tl.int64) * stride_tb
            if WHOLE_PAGES:   # a page holds whole key blocks: its entry read a block ahead
                pg_nx = tl.load(tb + lo // PAGE_SIZE).to(tl.int64)
        for start_n in range(lo, hi, BLOCK_N):
            n = start_n + offs_n
            kmask = n < hi
            if PAGED:
                if WHOLE_PAGES:
                    pg = pg_nx
                    pg_nx = tl.load(tb + tl.minimum(start_n + BLOCK_N, hi - 1) // PAGE_SIZE).to(tl.int64)
                    within = (start_n % PAGE_SIZE + offs_n).to(tl.int64)
                else:         # pages shorter than a block: each row's page
                    pg = tl.load(tb + n // PAGE_SIZE, mask=kmask, other=0).to(tl.int64)
                    within = (n % PAGE_SIZE).to(tl.int64)
                c_rows = cb + pg * stride_cpage + within * stride_cn
                k_rows = kb + pg * stride_kpage + within * stride_kn
            else:
                c_rows = cb + n.to(tl.int64) * stride_cn
                k_rows = kb + n.to(tl.int64) * stride_kn
            if ALIGNED:   # every row starts at a multiple of 16 elements: wide loads
                c_rows = tl.multiple_of(c_rows, 16)
                k_rows = tl.multiple_of(k_rows, 16)
            kr = tl.load(KR + k_rows[:, None] + offs_k[None, :] * stride_kd, mask=kmask[:, None],
                         other=0.0)
            qk = tl.dot(qr, tl.trans(kr){prec})
{c_loads}            qk = qk * qk_scale
            keep = kmask[None, :]
            if CAUSAL:
                keep = keep & (n[None, :] <= offs_p[:, None] + off)
            qk = tl.where(keep, qk, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            m_s = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(qk - m_s[:, None])
            alpha = tl.math.exp2(m_i - m_s)
            l_i = l_i * alpha + tl.sum(p, 1)
            p = p.to(c0.dtype)
{pv}            m_i = m_new
        l_div = tl.where(l_i == 0.0, 1.0, l_i)
        if DIRECT:
            o_rows = (OL + off_b.to(tl.int64) * stride_ob + offs_h.to(tl.int64) * stride_oh
                      + offs_p * stride_op)
{direct}        else:
            prow = tl.cast(s, tl.int64) * BLOCK_M + offs_r
            tl.store(ML + prow, tl.where(l_i == 0.0, float("-inf"), m_i + tl.math.log2(l_div)),
                     mask=row_ok)
{parts}

@triton.jit
def {pre}_mla_combine(OL, ML, PART, PAIR_SEG, stride_ob, stride_oh, stride_op, stride_od,
        TILES, P_LEN, HEADS: tl.constexpr, BLOCK_M: tl.constexpr, CHUNK: tl.constexpr,
        LATENT: tl.constexpr, VALUE_SPLIT: tl.constexpr):
    pair = tl.program_id(0)
    # a program per CHUNK of the pair's value columns
    col = ((pair % VALUE_SPLIT) * (LATENT // VALUE_SPLIT) + tl.program_id(1) * CHUNK
           + tl.arange(0, CHUNK))
    off_b = pair // (TILES * VALUE_SPLIT)
    offs_r = tl.arange(0, BLOCK_M)
    rows = (pair // VALUE_SPLIT % TILES) * BLOCK_M + offs_r
    row_ok = rows < P_LEN * HEADS
    rows_c = tl.minimum(rows, P_LEN * HEADS - 1)
    s0 = tl.load(PAIR_SEG + pair)
    s1 = tl.load(PAIR_SEG + pair + 1)
    gm = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    for s in range(s0, s1):
        gm = tl.maximum(gm, tl.load(ML + tl.cast(s, tl.int64) * BLOCK_M + offs_r))
    gm_s = tl.where(gm == float("-inf"), 0.0, gm)
    ws = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, CHUNK], dtype=tl.float32)
    for s in range(s0, s1):
        prow = tl.cast(s, tl.int64) * BLOCK_M + offs_r
        w = tl.math.exp2(tl.load(ML + prow) - gm_s)
        ws += w
        acc += w[:, None] * tl.load(PART + prow[:, None] * LATENT + col[None, :])
    o = acc / tl.where(ws == 0.0, 1.0, ws)[:, None]
    o_rows = (OL + off_b.to(tl.int64) * stride_ob + (rows_c % HEADS).to(tl.int64) * stride_oh
              + (rows_c // HEADS) * stride_op)
    tl.store(o_rows[:, None] + col[None, :] * stride_od, o.to(OL.dtype.element_ty),
             mask=row_ok[:, None])
'''


def _chunked(n: int, value_split: int = 1) -> dict:
    """The per-chunk lines of the partial kernel: ``n`` chunks of CHUNK latent columns in the
    score, ``n // value_split`` of them (from column ``col0``) accumulated. Without a value
    split each cache chunk serves both products; with one, a program reloads its own value
    chunks (the tile it just read, from L1/L2)."""
    i12, i8 = " " * 12, " " * 8
    cols = "({i} * CHUNK + offs_c)"
    na = n // value_split
    q = "".join(f"{i8}ql{i} = tl.load(ql_rows[:, None] + {cols.format(i=i)}[None, :] * stride_ld)\n"
                for i in range(n))
    acc = "".join(f"{i8}acc{i} = tl.zeros([BLOCK_M, CHUNK], dtype=tl.float32)\n"
                  for i in range(na))
    c = "".join(f"{i12}c{i} = tl.load(CKV + c_rows[:, None] + {cols.format(i=i)}[None, :] * "
                f"stride_cd, mask=kmask[:, None], other=0.0)\n"
                f"{i12}qk = tl.dot(ql{i}, tl.trans(c{i}), qk{{prec}})\n" for i in range(n))
    if value_split == 1:
        pv = "".join(f"{i12}acc{i} = tl.dot(p, c{i}, acc{i} * alpha[:, None]{{prec}})\n"
                     for i in range(na))
    else:
        pv = "".join(f"{i12}v{i} = tl.load(CKV + c_rows[:, None] + (col0 + {cols.format(i=i)})"
                     f"[None, :] * stride_cd, mask=kmask[:, None], other=0.0)\n"
                     f"{i12}acc{i} = tl.dot(p, v{i}, acc{i} * alpha[:, None]{{prec}})\n"
                     for i in range(na))
    cols = "(col0 + {i} * CHUNK + offs_c)"
    direct = "".join(f"{i12}tl.store(o_rows[:, None] + {cols.format(i=i)}[None, :] * stride_od, "
                     f"(acc{i} / l_div[:, None]).to(OL.dtype.element_ty), mask=row_ok[:, None])\n"
                     for i in range(na))
    parts = "".join(f"{i12}tl.store(PART + prow[:, None] * LATENT + {cols.format(i=i)}[None, :], "
                    f"acc{i} / l_div[:, None], mask=row_ok[:, None])\n" for i in range(na))
    return dict(q_loads=q, acc_init=acc, c_loads=c, pv=pv, direct=direct, parts=parts)


_LAUNCHER = '''

def _layout(ql, qr, ckv, kr, kv_lens, cu_seqlens, block_table):
    """(lengths, per-request cache bases, strides, paged facts) of the cache layout."""
    if ql.dim() != 4 or qr.dim() != 4 or qr.shape[:3] != ql.shape[:3]:
        raise ValueError("ql and qr must be [batch, heads, new tokens, latent / rope dims]")
    B, H, P, E = ql.shape
    R = qr.shape[-1]
    if E != LATENT or R != ROPE:
        raise ValueError(f"this kernel was generated for {{LATENT}} latent + {{ROPE}} rope dims, got {{E}} + {{R}}")
    dev = ql.device
    if block_table is not None:
        if ckv.dim() != 3 or kr.dim() != 3 or kr.shape[:2] != ckv.shape[:2]:
            raise ValueError("a paged cache is ckv [pages, page size, latent], kr [pages, page size, rope]")
        if kv_lens is None:
            raise ValueError("a paged cache needs kv_lens (the keys of each request)")
        page = ckv.shape[1]
        lens = [int(x) for x in kv_lens]
        if block_table.dim() != 2 or block_table.shape[0] != B:
            raise ValueError(f"block_table must be [batch, pages per request] with {{B}} rows")
        need = max(-(-n // page) for n in lens) if lens else 0
        if block_table.shape[1] < need:
            raise ValueError(f"block_table has {{block_table.shape[1]}} pages per request; the longest request needs {{need}}")
        cbase = torch.zeros(B, dtype=torch.int64, device=dev)
        rbase = cbase
        table = block_table.to(device=dev, dtype=torch.int32).contiguous()
        strides = (ckv.stride(1), ckv.stride(2), kr.stride(1), kr.stride(2), ckv.stride(0), kr.stride(0))
        paged = (page, table, table.stride(0))
    elif cu_seqlens is not None:
        if ckv.dim() != 2 or kr.dim() != 2 or kr.shape[0] != ckv.shape[0]:
            raise ValueError("a ragged cache is ckv [total keys, latent], kr [total keys, rope] with cu_seqlens")
        cu = [int(x) for x in cu_seqlens]
        if len(cu) != B + 1 or cu[0] != 0 or cu[-1] > ckv.shape[0]:
            raise ValueError(f"cu_seqlens must be {{B + 1}} cumulative key counts from 0 to at most {{ckv.shape[0]}}")
        lens = [b - a for a, b in zip(cu, cu[1:])]
        if kv_lens is not None and [int(x) for x in kv_lens] != lens:
            raise ValueError("kv_lens disagree with cu_seqlens")
        cbase = torch.tensor([a * ckv.stride(0) for a in cu[:-1]], dtype=torch.int64, device=dev)
        rbase = torch.tensor([a * kr.stride(0) for a in cu[:-1]], dtype=torch.int64, device=dev)
        strides = (ckv.stride(0), ckv.stride(1), kr.stride(0), kr.stride(1), 0, 0)
        paged = None
    else:
        if ckv.dim() != 3 or kr.dim() != 3 or kr.shape[:2] != ckv.shape[:2] or ckv.shape[0] != B:
            raise ValueError("a dense cache is ckv [batch, keys, latent], kr [batch, keys, rope]")
        M = ckv.shape[1]
        lens = [M] * B if kv_lens is None else [int(x) for x in kv_lens]
        if any(n > M for n in lens):
            raise ValueError(f"kv_lens exceed the cache's {{M}} keys")
        cbase = torch.arange(B, dtype=torch.int64, device=dev) * ckv.stride(0)
        rbase = torch.arange(B, dtype=torch.int64, device=dev) * kr.stride(0)
        strides = (ckv.stride(1), ckv.stride(2), kr.stride(1), kr.stride(2), 0, 0)
        paged = None
    if len(lens) != B:
        raise ValueError(f"{{len(lens)}} key lengths for a batch of {{B}} requests")
    if any(n < 1 for n in lens):
        raise ValueError("every request needs at least one key")
    if ckv.shape[-1] != E or kr.shape[-1] != R:
        raise ValueError(f"the cache holds {{ckv.shape[-1]}} + {{kr.shape[-1]}} dims, the queries {{E}} + {{R}}")
    for t in (ql, qr, ckv, kr):
        if t.dtype != DTYPE:
            raise ValueError(f"this kernel was generated for {{DTYPE}}, got {{t.dtype}}")
    return lens, cbase, rbase, strides, paged


def plan(ql, qr, ckv, kr, kv_lens=None, cu_seqlens=None, block_table=None, schedule=SCHEDULE,
         split_kv=None, programs=None):
    """The launch plan (layout, schedule, partial buffers) of the arguments; pass it to
    forward(..., plan=) to launch without rebuilding it (kv_lens etc. must not change)."""
    lens, cbase, rbase, strides, paged = _layout(ql, qr, ckv, kr, kv_lens, cu_seqlens, block_table)
    B, H, P, E = ql.shape
    bm = min(BLOCK_M, max(16, triton.next_power_of_2(P * H)))
    tiles = -(-(P * H) // bm)
    # a pair: (request, row tile, value part), in that order
    blocks = [-(-n // BLOCK_N) for n in lens for _ in range(tiles * VALUE_SPLIT)]
    if schedule == "streamk" and programs is None:
        programs = (torch.cuda.get_device_properties(ql.device).multi_processor_count * PROGRAMS_PER_SM
                    if ql.is_cuda else 4)
    if split_kv is None:
        split_kv = SPLIT_KV
    prog_seg, seg_pair, seg_lo, seg_hi, pair_seg = decode_schedule(blocks, schedule, split_kv,
                                                                   programs or 1)
    dev = ql.device
    t32 = lambda x: torch.tensor(x, dtype=torch.int32, device=dev)  # noqa: E731
    direct = len(seg_pair) == len(blocks)
    n_seg = len(seg_pair)
    ml = torch.empty((1 if direct else n_seg) * bm, device=dev, dtype=torch.float32)
    part = torch.empty(((1 if direct else n_seg) * bm, E), device=dev, dtype=torch.float32)
    cn, cd, kn, kd, cp, kp = strides
    aligned = (all(x % 16 == 0 for x in (cn, kn, cp, kp)) and cd == 1 and kd == 1
               and bool(((cbase % 16) == 0).all()) and bool(((rbase % 16) == 0).all())
               and ckv.storage_offset() % 16 == 0 and kr.storage_offset() % 16 == 0)
    return dict(lens=lens, lens_t=t32(lens), aligned=aligned, block_m=bm, tiles=tiles, P=P, H=H,
                cbase=cbase, rbase=rbase, strides=strides, paged=paged, prog_seg=t32(prog_seg),
                seg_pair=t32(seg_pair), seg_lo=t32(seg_lo), seg_hi=t32(seg_hi),
                pair_seg=t32(pair_seg), programs=len(prog_seg) - 1, segments=n_seg,
                pairs=len(blocks), direct=direct, ml=ml, part=part, schedule=schedule)


def attention(ql, qr, ckv, kr, {args}kv_lens=None, cu_seqlens=None, block_table=None,
              schedule=SCHEDULE, split_kv=None, programs=None, plan=None, out=None, _dims=None):
    """The latent output OL [B, H, P, latent] (an [H, B, P, latent] buffer in memory) of the
    absorbed queries ql [B, H, P, latent], qr [B, H, P, rope] against a dense (ckv [B, M,
    latent], kr [B, M, rope]), ragged (cu_seqlens) or paged (block_table) cache; schedule
    'nosplit', 'split' (split_kv chunks per row tile) or 'streamk' (programs shares)."""
    if _dims is None:
        _dims = {{{dims}}}
{params}    if plan is None:
        plan = globals()["plan"](ql, qr, ckv, kr, kv_lens, cu_seqlens, block_table, schedule,
                                 split_kv, programs)
    pl = plan
    B, H, P, E = ql.shape
    if {causal} and min(pl["lens"]) < P:
        raise ValueError("a causal mask needs at least as many keys as new tokens in every request")
    if out is None:
        out = torch.empty((H, B, P, E), device=ql.device, dtype=ql.dtype).permute(1, 0, 2, 3)
    if pl["paged"] is None:
        page, table, stb = 1, pl["lens_t"], 0
    else:
        page, table, stb = pl["paged"]
    qk_scale = float({scale}) * {log2e!r}
    bm = pl["block_m"]
    {pre}_mla_partial[(pl["programs"],)](
        ql, qr, ckv, kr, out, pl["ml"], pl["part"], pl["cbase"], pl["rbase"], pl["lens_t"], table,
        pl["prog_seg"], pl["seg_pair"], pl["seg_lo"], pl["seg_hi"], qk_scale, *ql.stride(),
        *qr.stride(), *pl["strides"], stb, *out.stride(), pl["tiles"], P,
        CAUSAL=bool({causal}), HEADS=H, PAGED=pl["paged"] is not None, PAGE_SIZE=page,
        WHOLE_PAGES=page % BLOCK_N == 0, DIRECT=pl["direct"], ALIGNED=pl["aligned"],
        BLOCK_M=bm, BLOCK_N=BLOCK_N, CHUNK=CHUNK, ROPE=ROPE, LATENT=LATENT,
        VALUE_SPLIT=VALUE_SPLIT, num_warps=NUM_WARPS, num_stages=NUM_STAGES)
    if not pl["direct"]:
        {pre}_mla_combine[(pl["pairs"], LATENT // CHUNK // VALUE_SPLIT)](
            out, pl["ml"], pl["part"], pl["pair_seg"], *out.stride(), pl["tiles"], P, HEADS=H,
            BLOCK_M=bm, CHUNK=CHUNK, LATENT=LATENT, VALUE_SPLIT=VALUE_SPLIT, num_warps=4,
            num_stages=1)
    return out


def forward(ql, qr, ckv, kr, wuv=None, {args}kv_lens=None, cu_seqlens=None, block_table=None,
            schedule=SCHEDULE, split_kv=None, programs=None, plan=None, out=None, latent_out=None):
    """{forward_doc}"""
    if ql.dim() != 4 or qr.dim() != 4 or ql.shape[-1] != LATENT or qr.shape[-1] != ROPE:
        raise ValueError(f"this kernel was generated for {{LATENT}} latent + {{ROPE}} rope dims: ql, qr must be [batch, heads, new tokens, {{LATENT}} / {{ROPE}}]")
    B, H, P, E = ql.shape
    _dims = {{{dims}}}
    if UP_PROJECTION:
        if wuv is None or wuv.dim() != 3 or wuv.shape[:2] != (H, E):
            raise ValueError(f"wuv must be [heads, latent, value dims] = [{{H}}, {{E}}, F] (the up-projection)")
        if wuv.dtype != DTYPE:
            raise ValueError(f"this kernel was generated for {{DTYPE}}, got {{wuv.dtype}} for wuv")
        _dims[{value!r}] = wuv.shape[-1]
    elif wuv is not None:
        raise ValueError("this cascade ends at the latent output: it takes no wuv")
    ol = attention(ql, qr, ckv, kr, {pass_args}kv_lens=kv_lens, cu_seqlens=cu_seqlens,
                   block_table=block_table, schedule=schedule, split_kv=split_kv,
                   programs=programs, plan=plan, out=latent_out, _dims=_dims)
    if not UP_PROJECTION:
        return ol
    # O = OL . W_UV per head: one batched matmul over the heads (OL is [H, B, P, E] in memory)
    F = wuv.shape[-1]
    if out is None:
        out = torch.empty((H, B, P, F), device=ql.device, dtype=ql.dtype).permute(1, 0, 2, 3)
    torch.bmm(ol.permute(1, 0, 2, 3).reshape(H, B * P, E), wuv,
              out=out.permute(1, 0, 2, 3).view(H, B * P, F))
    return out
'''


def emit_mla(plan: MLAPlan, tiling: Tiling, *, latent: int = LATENT, rope: int = ROPE,
             chunk: int = CHUNK, value_split: int = 1,
             programs_per_sm: int = 1) -> tuple[str, list]:
    """(module source, kernel names) of the MLA decode module for ``plan``: ``value_split``
    programs share a row tile's value columns (each recomputes the scores)."""
    for what, v, lo in (("latent dims", latent, 16), ("rope dims", rope, 16),
                        ("chunk", chunk, 16)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or v & (v - 1):
            raise CodegenError(f"MLA {what} must be a power of two of at least {lo}, got {v!r}")
    if latent % chunk:
        raise CodegenError(f"MLA latent dims {latent} are not a multiple of the chunk {chunk}")
    if value_split not in (1, 2, 4, 8) or (latent // chunk) % value_split:
        raise CodegenError(f"MLA value_split must be 1, 2, 4 or 8 and divide the {latent // chunk} "
                           f"chunks of {chunk} latent columns, got {value_split!r}")
    pre = kernel_prefix(plan.cascade)
    prec = ', input_precision="ieee"' if tiling.dtype == "fp32" else ""
    names = [f"{pre}_mla_partial", f"{pre}_mla_combine"]
    own = list(plan.params)
    args = "".join(f"{k}=None, " for k in own)
    pass_args = "".join(f"{k}={k}, " for k in own)
    params = "".join(
        f"    try:\n        {k} = ({v}) if {k} is None else {k}\n"
        f"    except KeyError as exc:\n        raise ValueError(f\"the default {k} needs the "
        f"dims of rank {{exc}} (the up-projection's): pass {k}= or wuv\") from None\n"
        if "_dims" in v else f"    {k} = ({v}) if {k} is None else {k}\n"
        for k, v in plan.params.items())
    r = plan.ranks
    dims = ", ".join(f"{r[k]!r}: {v}" for k, v in (("head", "ql.shape[1]"),
                                                  ("token", "ql.shape[2]"),
                                                  ("latent", "ql.shape[3]"),
                                                  ("rope", "qr.shape[3]")))
    causal = plan.causal_param if plan.causal_param in own else "False"
    up = plan.up_proj is not None
    fdoc = ("O [B, H, P, F] = attention(...) . wuv [H, latent, F] per head (a batched torch "
            "matmul); latent_out: OL's buffer" if up else
            "The latent output OL [B, H, P, latent] (the cascade ends there): attention(...)")
    doc = f'''MLA decode kernels generated by cascades.triton.emit_mla from cascade '{plan.cascade}'.

inputs: {plan.latent_query} (absorbed latent query), {plan.rope_query} (rope query), {plan.latent_cache} (latent cache: keys and values), {plan.rope_cache} (rope keys){f", {plan.up_proj} (value up-projection, a torch matmul after the kernel)" if up else ""}
schedule: split (forward's default; nosplit, split and streamk all run); causal mask: {plan.causal_param or 'none'}
tiling: BLOCK_M={tiling.block_m} (token, head) rows, BLOCK_N={tiling.block_n} keys, latent {latent} in chunks of {chunk}, {value_split} program(s) per row tile's value columns, rope {rope}, num_warps={tiling.num_warps} num_stages={tiling.num_stages} dtype={tiling.dtype}
kernels: {", ".join(names)}
'''
    head = module_head(doc, plan.cascade, names, tiling.dtype, dict(
        BLOCK_M=tiling.block_m, BLOCK_N=tiling.block_n, NUM_WARPS=tiling.num_warps,
        NUM_STAGES=tiling.num_stages, LATENT=latent, ROPE=rope, CHUNK=chunk,
        SPLIT_KV=tiling.split_kv, SCHEDULE='"split"', PROGRAMS_PER_SM=int(programs_per_sm),
        UP_PROJECTION=up, VALUE_SPLIT=value_split))
    ch = _chunked(latent // chunk, value_split)
    kern = _PARTIAL
    for k, v in ch.items():
        kern = kern.replace("{" + k + "}", v)
    kern = kern.replace("{pre}", pre).replace("{prec}", prec)
    body = (SCHEDULE_SOURCE + kern
            + _LAUNCHER.format(pre=pre, args=args, params=params, causal=causal,
                               scale=plan.scale, log2e=LOG2E, dims=dims, value=r["value"],
                               pass_args=pass_args, forward_doc=fdoc))
    return head + body, names


def generate_mla(cascade, tiling: Tiling | None = None, *, latent: int = LATENT,
                 rope: int = ROPE, chunk: int = CHUNK, value_split: int | None = None,
                 programs_per_sm: int = 1, **kw):
    """The MLA decode module (:class:`cascades.triton.GeneratedSource`) of ``cascade``; the
    tiling defaults to :data:`MLA_TILING` (``kw`` changes its fields), ``value_split`` to
    :data:`MLA_VALUE_SPLIT` where the latent dim holds that many chunks (else 1)."""
    from dataclasses import replace

    from cascades.triton import GeneratedSource
    if isinstance(cascade, str):
        from cascades.library import load
        cascade = load(cascade)
    plan = mla_plan(cascade)
    if plan is None:
        raise CodegenError(f"cannot generate an MLA decode kernel for cascade '{cascade.name}': "
                           f"it is not latent attention (no cache input whose rank is both "
                           f"contracted by the scores and kept as the value)")
    if tiling is None:
        tiling = Tiling(**{**MLA_TILING, **kw})
    elif kw:
        tiling = replace(tiling, **kw)
    chunk = min(chunk, latent) if isinstance(latent, int) else chunk
    if value_split is None:
        value_split = (MLA_VALUE_SPLIT if isinstance(latent, int) and isinstance(chunk, int)
                       and chunk and (latent // chunk) % MLA_VALUE_SPLIT == 0 else 1)
    src, names = emit_mla(plan, tiling, latent=latent, rope=rope, chunk=chunk,
                          value_split=value_split, programs_per_sm=programs_per_sm)
    return GeneratedSource(cascade=cascade.name, plan=plan, tiling=tiling, source=src,
                           kernels=tuple(names))

