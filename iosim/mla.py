"""Multi-head latent attention (MLA) decode: DeepSeek-V2/V3's attention with the key and
value up-projections absorbed, as FlashMLA runs it.

The cache holds one latent vector (``latent`` dims, 512 in DeepSeek) and one decoupled rotary
key (``rope`` dims, 64) per token, shared by all query heads: the limit of grouped-query decode
with one latent "K/V head" of ``latent + rope`` score dims and ``latent`` value dims. A
program packs 64 (new token, query head) rows, as FlashMLA does; the row tiles of a request
read its cache from L2 after the first brings it from HBM, so HBM reads it once per request.

Traffic per launch: the cache ``sum(M) (latent + rope)`` elements once, the absorbed queries,
the latent output, and where the cascade ends with the per-head value up-projection, a batched
GEMM after the attention (its weights read once per launch, the latent output read back, O
written). Split and stream-K schedules (:func:`cascades.triton.emit_decode.decode_schedule`,
the same code as the serving kernels) add fp32 partials and a combine; a paged cache its
block table.

Time: a program's key block costs the most of its tensor-core FLOPs at the preset's tensor
rate per SM, its exponentials at the SFU rate per SM and its bytes at one SM's streaming
rate; the programs are list-scheduled on the SMs; the kernel takes at least its HBM bytes over
the sustained HBM read bandwidth. FLOP per HBM byte (the arithmetic intensity) is reported
against the preset's ridge point (tensor rate / sustained HBM bandwidth).

The structure, never the name, says a cascade is MLA (:func:`latent_attention`): cache inputs
(indexed by the key rank, the rank the softmax's maximum runs over) one of whose ranks is contracted in a score *and*
kept by the sum over the keys (the latent vector is both key and value).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from iosim.errors import IosimError

__all__ = ["LatentFacts", "MLAReport", "latent_attention", "evaluate_mla", "LATENT", "ROPE"]

#: DeepSeek-V2/V3's latent and rotary dims (d_c = 4 d_h, d_h^R = d_h / 2 with d_h = 128)
LATENT, ROPE = 512, 64
#: FlashMLA's tiles: 64 (token, head) rows per program, 64 keys per block (its page size too)
ROW_TILE, BLOCK_N = 64, 64


@dataclass(frozen=True)
class LatentFacts:
    """The roles of an MLA cascade's ranks and inputs."""
    key: str                 # the cached tokens (M)
    latent: str              # the latent rank: contracted by a score and kept as the value
    rope: tuple              # other cache ranks: scores only
    cache: tuple             # the cache inputs
    up_proj: str | None      # the output's value rank after the per-head up-projection


def latent_attention(cascade) -> LatentFacts | None:
    """The MLA roles of ``cascade``, or ``None`` when it is not latent attention."""
    from cascades.ir import Access, walk
    from iosim.mapping import _base_rank
    info = cascade.info
    base = lambda r: _base_rank(info, r)  # noqa: E731
    inputs = [t for t in cascade.inputs if t.dtype != "bool"]
    out_ranks = {r for t in cascade.outputs for r in t.ranks}
    count = {}
    for t in inputs:
        for r in set(t.ranks):
            count[r] = count.get(r, 0) + 1
    # the key rank: in two or more inputs and no output, the softmax's maximum taken over it
    # (a max reduction, or the iterative rank of a running maximum)
    maxed = {base(r) for r in info.iterative}
    for e in cascade.einsums:
        if e.reduction is not None and e.reduction.op == "max":
            maxed |= {base(info.var_rank[v]) for v in e.reduction.vars}
    keys = [r for r, n in count.items() if n >= 2 and r not in out_ranks and r in maxed]
    if len(keys) != 1:
        return None
    key = keys[0]
    cache = [t for t in inputs if key in t.ranks]
    feats = {r for t in cache for r in t.ranks if r != key}
    scored, kept = set(), set()
    for e in cascade.einsums:
        if e.reduction is None or e.reduction.op != "sum":
            continue
        red = {base(info.var_rank[v]) for v in e.reduction.vars}
        if red & feats and any(isinstance(n, Access) for n in walk(e.expr)):
            scored |= red & feats
        if key in red:
            kept |= {base(r) for r in info.tensor_ranks[e.tensor]} & feats
    latent = sorted(scored & kept)
    if len(latent) != 1 or not cascade.outputs:
        return None
    out = cascade.outputs[0].ranks
    up = out[-1] if out[-1] != latent[0] else None
    return LatentFacts(key=key, latent=latent[0], rope=tuple(sorted(feats - {latent[0]})),
                       cache=tuple(t.name for t in cache), up_proj=up)


@dataclass(frozen=True)
class MLAReport:
    """One MLA decode launch: bytes, FLOPs, intensity against the ridge, the time model."""
    cascade: str
    hardware: str
    schedule: str
    shape: dict
    bytes: dict
    flops: dict
    kernels: tuple
    time_s: float
    roofline: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"cascade": self.cascade, "hardware": self.hardware,
                "mapping": {"cascade": self.cascade, "name": f"mla-{self.schedule}",
                            "schedule": self.schedule, "row_tile": ROW_TILE,
                            "block_kv": self.shape.get("block_kv", BLOCK_N),
                            "value_split": self.shape.get("value_split", 1)},
                "shape": dict(self.shape), "bytes": dict(self.bytes), "flops": dict(self.flops),
                "roofline": dict(self.roofline), "kernels": [dict(k) for k in self.kernels],
                "time_s": self.time_s}

    def render(self) -> str:
        from iosim.report import fmt_bytes, fmt_time
        s, b, f, r = self.shape, self.bytes, self.flops, self.roofline
        lens = s["kv_lens"]
        keys = (f"{lens[0]} keys" if len(set(lens)) == 1 else
                f"{min(lens)}-{max(lens)} keys ({sum(lens)} in all)")
        L = [f"{self.cascade} on {self.hardware}: MLA decode, {s['requests']} requests x "
             f"{s['heads']} query heads x {s['tokens']} new token{'s' if s['tokens'] > 1 else ''}, {keys}, one latent cache of "
             f"{s['latent']} + {s['rope']} dims per token shared by all heads"
             + (f", up-projection to {s['value_dim']} per head" if s["value_dim"] else
                ", output left in latent space") + f" ({s['dtype']})",
             f"cache per token: {fmt_bytes(b['cache_per_token'])}; multi-head attention with "
             f"{s['heads']} heads of {s['mha_head_dim']} would read {fmt_bytes(b['mha_per_token'])}"
             f" ({b['mha_per_token'] / b['cache_per_token']:.1f}x), grouped-query with 8 K/V "
             f"heads {fmt_bytes(b['mha_per_token'] * 8 / s['heads'])}, multi-query "
             f"{fmt_bytes(b['mha_per_token'] / s['heads'])}",
             "HBM bytes: " + ", ".join(f"{k} {fmt_bytes(v)}" for k, v in b["hbm"].items())
             + f"; total {fmt_bytes(b['hbm_total'])}",
             f"FLOPs: attention {f['attention']:.4g} (scores {f['scores']:.4g}, values "
             f"{f['values']:.4g}), up-projection {f['up_proj']:.4g}; exponentials "
             f"{f['exp']:.4g}",
             f"attention kernel: {r['intensity']:.1f} FLOP per HBM byte against the ridge "
             f"{r['ridge']:.1f} ({r['tensor_flops'] / 1e12:.0f} TFLOP/s / "
             f"{r['hbm_bps'] / 1e12:.2f} TB/s): {r['bound']}-bound; HBM time "
             f"{fmt_time(r['hbm_s'])}, tensor-core time {fmt_time(r['tensor_s'])}",
             f"time: {fmt_time(self.time_s)} ({'; '.join(k['name'] + ' ' + fmt_time(k['time_s']) + ', ' + k['limiter'] for k in self.kernels)}); "
             f"cache read at {b['cache'] / self.time_s / 1e12:.2f} TB/s, "
             f"{f['attention'] / self.time_s / 1e12:.0f} TFLOP/s"]
        import textwrap
        out = []
        for ln in L:
            out += textwrap.wrap(ln, 96, subsequent_indent="    ")
        return "\n".join(out)


def _sfu_rate(hw) -> float | None:
    for u in hw.compute:
        if u.kind == "sfu" and u.rates:
            return float(max(u.rates.values()))
    return None


def _list_schedule(costs, sms) -> float:
    """Makespan of programs taken in order by the first free SM."""
    if len(costs) <= sms:
        return max(costs, default=0.0)
    free = [0.0] * sms
    for c in costs:
        t = heapq.heappop(free)
        heapq.heappush(free, t + c)
    return max(free)


def evaluate_mla(cascade, hardware="h100", *, n: int = 1, kv_lens=None, kv_len=None,
                 batch: int | None = None, heads: int = 128, value_dim: int = 128,
                 dtype: str = "bf16", causal: bool = False, schedule: str = "split",
                 split_kv: int | None = None, programs: int | None = None,
                 page_size: int | None = None, latent: int = LATENT,
                 rope: int = ROPE, block_kv: int = BLOCK_N,
                 value_split: int = 1) -> MLAReport:
    """The predicted MLA decode launch (see the module text). ``value_dim`` is the per-head
    value dim of the up-projection (DeepSeek's d_h = 128; also the head dim of the
    multi-head attention the cache is compared with). ``block_kv``: keys per block;
    ``value_split``: programs that share a row tile's latent value columns, each computing
    the whole score (the generated kernel's option, :mod:`cascades.triton.emit_mla`)."""
    from cascades.library import load
    from cascades.triton.emit_decode import decode_schedule
    from iosim.hardware import dtype_bytes
    from iosim.serving import (SCHEDULES, flashdecoding_splits, gpu_timing,
                                page_entries_per_block, request_lengths)
    c = load(cascade) if isinstance(cascade, str) else cascade
    facts = latent_attention(c)
    if facts is None:
        raise IosimError(f"cascade '{c.name}' is not latent attention (no cache input whose "
                         f"rank is both contracted by the scores and kept as the value)")
    if schedule not in SCHEDULES:
        raise IosimError(f"--schedule {schedule!r} is not one of {', '.join(SCHEDULES)}")
    for what, v in (("--heads", heads), ("--seq-len", n), ("--head-dim", value_dim),
                    ("latent dims", latent), ("rope dims", rope), ("--split-kv", split_kv),
                    ("--programs", programs), ("--page-size", page_size),
                    ("block_kv", block_kv), ("value_split", value_split)):
        if v is not None and (isinstance(v, bool) or int(v) < 1):
            raise IosimError(f"{what} must be a positive number, got {v}")
    lens = request_lengths(kv_lens, kv_len, batch, n, causal)
    hw, rates = gpu_timing(hardware, "MLA decode needs")
    el = dtype_bytes(dtype)
    tensor = hw.matrix_rate(dtype)
    sfu = _sfu_rate(hw)
    up = facts.up_proj is not None
    d_qk, d_v = latent + rope, latent
    rows = n * heads
    tiles = -(-rows // ROW_TILE)
    # keys each new token sees: all, or (causal, end-aligned) M - P + 1 + p
    seen = [x * n - (n * (n - 1) // 2 if causal else 0) for x in lens]
    qk = 2.0 * heads * d_qk * sum(seen)
    pv = 2.0 * heads * d_v * sum(seen)
    exps = float(heads * sum(seen))
    up_f = 2.0 * len(lens) * rows * latent * value_dim if up else 0.0
    # the schedule of (request, row tile) units over their key blocks
    bn, vs = int(block_kv), int(value_split)
    blocks = [-(-x // bn) for x in lens for _ in range(tiles * vs)]
    units = len(blocks)
    if schedule == "split" and split_kv is None:
        split_kv = flashdecoding_splits(units, max(blocks), rates.sms)
    if schedule == "streamk" and programs is None:
        programs = rates.sms
    prog_seg, seg_pair, seg_lo, seg_hi, pair_seg = decode_schedule(
        blocks, "nosplit" if schedule == "split" and split_kv == 1 else schedule,
        split_kv=split_kv or 1, programs=programs or 1)
    n_seg = len(seg_pair)
    split = n_seg > units
    # one key block of one row tile on one SM (all SMs busy): tensor cores, SFU, streaming
    r_tile = min(rows, ROW_TILE)
    # (a value split's program computes the whole score and its share of the values)
    blk_t = 2.0 * r_tile * bn * (d_qk + d_v / vs) / (tensor / rates.sms)
    blk_e = r_tile * bn / (sfu / rates.sms) if sfu else 0.0
    blk_b = bn * d_qk * el / (rates.sm_bytes_per_clock * rates.clock_hz)
    step = max(blk_t, blk_e, blk_b)
    start = rates.program_start_s
    costs = [sum(start + (seg_hi[s] - seg_lo[s]) * step for s in range(prog_seg[j], prog_seg[j + 1]))
             for j in range(len(prog_seg) - 1)]
    makespan = _list_schedule(costs, rates.sms)
    # HBM bytes
    cache_b = float(sum(lens) * d_qk * el)
    q_b = float(len(lens) * rows * d_qk * el)
    out_lat = float(len(lens) * rows * d_v * el)
    part_b = float(n_seg * r_tile * (d_v / vs + 1) * 4) if split else 0.0
    hbm = {"cache": cache_b, "Q": q_b * vs * (n_seg / units if split else 1.0)}
    table_l2 = table_hbm = 0.0
    if page_size is not None:
        page = int(page_size)
        table_hbm = 4.0 * sum(-(-x // page) for x in lens)
        table_l2 = 4.0 * page_entries_per_block(page) * (sum(blocks) + n_seg)
        hbm["block table"] = table_hbm
    if split:
        hbm["partials (written, read)"] = 2 * part_b
    hbm["O latent" if not up else "O latent (written, read back)"] = out_lat * (2 if up else 1)
    kernels = []
    attn_hbm = cache_b + hbm["Q"] + table_hbm + part_b + (0.0 if split else out_lat)
    kernels.append(_kernel("attention", len(costs), makespan, attn_hbm, rates))
    if split:
        comb_hbm = part_b + out_lat
        kernels.append(_kernel("combine", units, start, comb_hbm, rates))
    if up:
        w_b = float(heads * latent * value_dim * el)
        o_b = float(len(lens) * rows * value_dim * el)
        hbm["W_UV"] = w_b
        hbm["O"] = o_b
        gemm_b = w_b + out_lat + o_b
        kernels.append(_kernel("up-projection", heads, up_f / tensor, gemm_b, rates))
    time_s = sum(k["time_s"] for k in kernels) + rates.launch_s * len(kernels)
    attn_f = qk + pv
    hbm_s, tensor_s = attn_hbm / rates.hbm_read_bps, attn_f / tensor
    intensity = attn_f / attn_hbm
    ridge = tensor / rates.hbm_read_bps
    roof = dict(intensity=intensity, ridge=ridge, tensor_flops=tensor,
                hbm_bps=rates.hbm_read_bps, hbm_s=hbm_s, tensor_s=tensor_s,
                bound="compute" if intensity >= ridge else "memory",
                attention_s=kernels[0]["time_s"])
    shape = dict(requests=len(lens), kv_lens=list(lens), heads=heads, tokens=n, latent=latent,
                 rope=rope, value_dim=value_dim if up else None, mha_head_dim=value_dim,
                 dtype=dtype, causal=causal, row_tiles=tiles, units=units,
                 split_kv=split_kv if schedule == "split" else None, programs=len(costs),
                 segments=n_seg, page_size=page_size, block_kv=bn, value_split=vs)
    byts = dict(cache=cache_b, cache_per_token=float(d_qk * el),
                mha_per_token=float(2 * heads * value_dim * el),
                l2_cache_reads=cache_b * tiles * vs, table_l2=table_l2, hbm=hbm,
                hbm_total=float(sum(hbm.values())))
    flops = dict(scores=qk, values=pv, attention=attn_f, up_proj=up_f, exp=exps,
                 scores_executed=qk * vs)
    return MLAReport(cascade=c.name, hardware=hw.name, schedule=schedule, shape=shape,
                     bytes=byts, flops=flops, kernels=tuple(kernels), time_s=time_s,
                     roofline=roof)


def _kernel(name, programs, makespan, hbm_b, rates) -> dict:
    hbm_t = hbm_b / rates.hbm_read_bps
    t = max(makespan, hbm_t)
    return {"name": name, "programs": float(programs), "makespan_s": makespan,
            "hbm_bytes": hbm_b, "hbm_bound_s": hbm_t, "time_s": t,
            "limiter": "HBM bandwidth" if hbm_t >= makespan else
                       "tensor cores" if name == "up-projection" else "the busiest SM"}

