"""Serving decode: a batch of requests (ragged key lengths), a paged K/V cache, and the three
schedules of the generated serving decode kernel (:mod:`cascades.triton.emit_decode`):

* ``nosplit`` -- a program per (request, K/V head) pair with the group's query heads packed in
  its rows, writing O directly (FlashAttention-2's decode): the ``fa2`` loop nest;
* ``split`` -- FlashDecoding: each pair's key blocks in ``split_kv`` chunks (default:
  FlashAttention's wave-efficiency heuristic, :func:`flashdecoding_splits`), a partial output
  and log-sum-exp per chunk, then a combine kernel: the ``decode-splitk`` loop nest;
* ``streamk`` -- LeanAttention: the key blocks of all pairs laid end to end, cut into
  ``programs`` equal shares (default: one per SM); a program pays a start (Q loaded, state
  reset, partial stored) for every pair its share touches, and its blocks at the step time of
  the no-split program; the partials are combined per pair by the split-K combine kernel.

Traffic and FLOPs of every schedule are the loop nest's (:func:`iosim.ragged.evaluate_ragged`
sums the requests); stream-K adds the Q reloads and partials of its segments. A paged cache
(``page_size``) reads the same K/V bytes (a partial last page's tail is never loaded; pages
anywhere in the pool, each ``page_size`` rows of one K/V head contiguous) plus its block
table from L2: per key block one int32 entry where a page holds whole blocks, one per page
where a block holds whole pages, one per key otherwise (and one more block's worth per
segment, read ahead); each request's table once from HBM. The kernel reads a block's entries
while the block before it computes, so a block's K/V loads never wait on the table: the time
model charges the table its bytes and no latency.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from iosim.errors import IosimError

__all__ = ["SCHEDULES", "ServingReport", "evaluate_serving", "flashdecoding_splits",
           "check_heads", "gpu_timing", "refuse_batched_cascade", "refuse_with_schedule",
           "request_lengths"]

SCHEDULES = ("nosplit", "split", "streamk")
#: the generated serving kernel's tiling (the one measured on the GPU)
BLOCK_N, NUM_WARPS, NUM_STAGES = 64, 4, 3


def flashdecoding_splits(pairs: int, n_blocks: int, sms: int, max_splits: int = 128) -> int:
    """FlashAttention's ``num_splits_heuristic``: the fewest splits whose wave efficiency
    (programs / (SMs x waves)) is within 85 % of the best over 1 .. max_splits."""
    top = max(1, min(max_splits, sms, n_blocks))
    eff = []
    for s in range(1, top + 1):
        waves = pairs * s / sms
        eff.append(waves / math.ceil(waves))
    best = max(eff)
    return next(s for s, e in enumerate(eff, start=1) if e >= 0.85 * best)


def check_heads(heads: int, kv_heads: int | None) -> None:
    """More K/V heads than query heads, or query heads not a multiple of them: one line."""
    if kv_heads is None:
        return
    if kv_heads > heads:
        raise IosimError(f"--kv-heads {kv_heads} exceeds --heads {heads}: every K/V head serves "
                         f"at least one query head")
    if heads % kv_heads:
        raise IosimError(f"--heads {heads} is not a multiple of --kv-heads {kv_heads}: each K/V "
                         f"head serves the same number of query heads")


def refuse_batched_cascade(cascade) -> None:
    """A cascade whose queries carry two ranks besides the tokens and head dim (the pairs of a
    whole batch and the group, as the stream-K cascade holds them) is one the models, which
    multiply batch and heads through themselves, cannot size: a one-line error."""
    from iosim.mapping import cascade_facts
    from cascades.roles import canonical
    f = cascade_facts(canonical(cascade))
    extra = [r for r, a in f.rank_alias.items() if a == "G"]
    if len(extra) >= 2:
        raise IosimError(f"cascade '{cascade.name}' holds a whole batch of (request, K/V head) "
                         f"pairs in its ranks ({', '.join(sorted(extra))}); the models take one "
                         f"request's cascade and multiply the batch through: evaluate a "
                         f"per-request decode cascade with --schedule streamk")


def refuse_with_schedule(**given) -> None:
    """Options the serving model fixes itself (the generated kernel's tiling and mapping):
    one line naming the first one given."""
    for k, v in given.items():
        if v not in (None, False):
            raise IosimError(f"--{k.replace('_', '-')} does not go with --schedule, "
                             f"--page-size or --programs (the serving kernel's own tiling and "
                             f"schedule are modelled)")


@dataclass(frozen=True)
class ServingReport:
    """A :class:`~iosim.report.Report` of one decode launch plus what serving adds."""
    report: object
    schedule: str
    serving: dict = field(default_factory=dict)

    @property
    def time_s(self) -> float:
        return self.report.time_s

    def level(self, name):
        return self.report.level(name)

    def to_dict(self) -> dict:
        return dict(self.report.to_dict(), serving=dict(self.serving))

    def render(self) -> str:
        import textwrap

        from iosim.report import fmt_bytes, fmt_time
        s = self.serving
        L = [f"Serving decode ({s['schedule_text']}):"]
        L.append(f"{s['requests']} requests x {s['kv_heads']} K/V heads = {s['pairs']} pairs, "
                 f"{s['key_blocks']} key blocks of {s['block_kv']}; {s['programs']} programs, "
                 f"{s['segments']} segments (a run of one pair's blocks: a partial each"
                 f"{'' if s['segments'] > s['pairs'] else ', none here: O written directly'})")
        if s.get("page_size"):
            L.append(f"paged cache: pages of {s['page_size']} keys, {s['pages']} pages "
                     f"({fmt_bytes(s['cache_bytes'])} of cache for "
                     f"{fmt_bytes(s['kv_bytes'])} of keys and values); block table "
                     f"{fmt_bytes(s['table_l2_bytes'])} read from L2, "
                     f"{fmt_bytes(s['table_hbm_bytes'])} from HBM")
        L.append(f"K/V read {fmt_bytes(s['kv_bytes'])} in {fmt_time(self.time_s)}: "
                 f"{s['achieved_bytes_per_s'] / 1e12:.2f} TB/s, "
                 f"{s['achieved_bytes_per_s'] / s['sustained_bytes_per_s']:.0%} of the preset's "
                 f"sustained {s['sustained_bytes_per_s'] / 1e12:.2f} TB/s HBM read bandwidth")
        out = [self.report.render(), ""]
        for i, ln in enumerate(L):
            out += textwrap.wrap(ln, 96, initial_indent="" if i == 0 else "  ",
                                 subsequent_indent="    ") if i else [ln]
        return "\n".join(out)


def _lens(kv_lens, kv_len, batch):
    if kv_lens is None:
        return (int(kv_len),) * int(batch or 1)
    lens = tuple(int(x) for x in kv_lens)
    if batch not in (None, 1, len(lens)):
        raise IosimError(f"--batch {batch} does not match the {len(lens)} key lengths of "
                         f"--kv-lens")
    return lens


def request_lengths(kv_lens, kv_len, batch, n: int, causal: bool) -> tuple:
    """The key length of each request (``kv_lens``, or ``batch`` times ``kv_len``), checked
    against the batch and the causal mask's ``n`` new tokens: one-line errors."""
    if kv_lens is None and kv_len is None:
        raise IosimError("give the keys per request: --kv-len or --kv-lens")
    lens = _lens(kv_lens, kv_len, batch)
    if any(x < 1 for x in lens):
        raise IosimError("--kv-lens: every key length must be positive")
    if causal and min(lens) < n:
        raise IosimError(f"a causal mask needs at least as many keys ({min(lens)}) as new "
                         f"tokens ({n}) in every request")
    return lens


def gpu_timing(hardware, needs: str) -> tuple:
    """The hardware (a preset name or a loaded one) and its timing rates; a preset without
    them: one line, ``needs`` saying what wanted them."""
    from iosim.hardware import load_hardware
    from iosim.timing import timing_rates
    hw = load_hardware(hardware) if isinstance(hardware, str) else hardware
    rates = timing_rates(hw)
    if rates is None:
        raise IosimError(f"hardware '{hw.name}' has no timing rates: {needs} a GPU preset")
    return hw, rates


def evaluate_serving(cascade, hardware="h100", *, n: int = 1, kv_lens=None, kv_len=None,
                     batch: int | None = None, e: int = 128, heads: int = 1, kv_heads=None,
                     dtype: str = "bf16", causal: bool = False, schedule: str = "split",
                     split_kv: int | None = None, programs: int | None = None,
                     page_size: int | None = None, l2: str = "auto") -> ServingReport:
    """The predicted launch of the generated serving decode kernel (see the module text)."""
    from cascades.library import load
    from cascades.triton.emit_decode import decode_schedule
    from iosim.mapping import get_mapping
    from iosim.ragged import evaluate_ragged
    c = load(cascade) if isinstance(cascade, str) else cascade
    refuse_batched_cascade(c)
    if schedule not in SCHEDULES:
        raise IosimError(f"--schedule {schedule!r} is not one of {', '.join(SCHEDULES)}")
    check_heads(heads, kv_heads)
    hkv = kv_heads or heads
    if page_size is not None and (isinstance(page_size, bool) or int(page_size) < 1):
        raise IosimError(f"--page-size must be a positive number of keys per page, got "
                         f"{page_size}")
    for what, v in (("--split-kv", split_kv), ("--programs", programs)):
        if v is not None and int(v) < 1:
            raise IosimError(f"{what} must be positive, got {v}")
    lens = request_lengths(kv_lens, kv_len, batch, n, causal)
    hw, rates = gpu_timing(hardware, "serving schedules need")
    group = heads // hkv
    rows = n * group
    if rows > 256:
        raise IosimError(f"{n} new tokens x {group} query heads per K/V head = {rows} rows; the "
                         f"serving kernel packs at most 256 into one program")
    block_q = max(16, 1 << (rows - 1).bit_length())
    pairs = len(lens) * hkv
    blocks = [-(-x // BLOCK_N) for x in lens for _ in range(hkv)]
    kw = dict(block_q=block_q, block_kv=BLOCK_N, num_warps=NUM_WARPS, num_stages=NUM_STAGES)
    shape = dict(n=n, kv_lens=lens, e=e, heads=heads, kv_heads=kv_heads, dtype=dtype,
                 causal=causal, l2=l2)
    if schedule == "split" and split_kv is None:
        split_kv = flashdecoding_splits(pairs, max(blocks), rates.sms)
    split = min(int(split_kv or 1), max(blocks))
    seg = None
    if schedule == "nosplit" or (schedule == "split" and split == 1):
        rep = evaluate_ragged(c, get_mapping("fa2", **kw), hw, **shape)
        prog_seg, seg_pair, *_ = decode_schedule(blocks, "nosplit")
    elif schedule == "split":
        rep = evaluate_ragged(c, get_mapping("decode-splitk", split_kv=split, **kw), hw, **shape)
        prog_seg, seg_pair, *_ = decode_schedule(blocks, "split", split_kv=split)
    else:
        if programs is None:
            programs = rates.sms
        seg = decode_schedule(blocks, "streamk", programs=int(programs))
        prog_seg, seg_pair = seg[0], seg[1]
        rep = _streamk(c, hw, rates, kw, shape, blocks, seg, rows, e, dtype)
    n_prog, n_seg = len(prog_seg) - 1, len(seg_pair)
    info = dict(schedule=schedule, requests=len(lens), kv_heads=hkv, pairs=pairs,
                key_blocks=int(sum(blocks)), block_kv=BLOCK_N, programs=n_prog, segments=n_seg,
                split_kv=split if schedule == "split" else None,
                schedule_text={"nosplit": "no split: a program per pair",
                               "split": f"FlashDecoding's split, {split} chunks per pair",
                               "streamk": f"stream-K, {n_prog} equal shares of all pairs' key "
                                          f"blocks"}[schedule])
    from iosim.hardware import dtype_bytes
    el = dtype_bytes(dtype)
    kv_bytes = float(2 * hkv * sum(lens) * e * el)
    if page_size is not None:
        rep, paged = _paged(rep, lens, hkv, blocks, int(page_size), e, el, n_seg)
        info.update(paged)
    rep = replace(rep, mapping_resolved=rep.mapping_resolved.with_(name=f"serving-{schedule}"),
                  kv_lens=None if kv_lens is None else rep.kv_lens)
    info.update(kv_bytes=kv_bytes, achieved_bytes_per_s=kv_bytes / rep.time_s,
                sustained_bytes_per_s=rates.hbm_read_bps)
    return ServingReport(rep, schedule, info)


def page_entries_per_block(page: int) -> int:
    """Block-table entries the kernel reads per key block: one where a page holds whole key
    blocks, one per page where a block holds whole pages, one per key otherwise."""
    if page % BLOCK_N == 0:
        return 1
    return BLOCK_N // page if BLOCK_N % page == 0 else BLOCK_N


def _paged(rep, lens, hkv, blocks, page, e, el, n_seg):
    """The block table's bytes added to the report (see the module text)."""
    pages = sum(-(-x // page) for x in lens)
    # a segment reads its first block's entries before its loop and every block's next
    # ones inside it (the last block's re-read): blocks + 1 reads per segment
    table_l2 = 4.0 * page_entries_per_block(page) * (sum(blocks) + n_seg)
    table_hbm = 4.0 * pages
    levels = []
    for lv in rep.levels:
        add = table_hbm if lv.role == "backing" else table_l2
        pt = dict(lv.per_tensor)
        pt["BlockTable"] = {"read_bytes": add, "write_bytes": 0.0}
        levels.append(replace(lv, read_bytes=lv.read_bytes + add, per_tensor=pt))
    rep = replace(rep, levels=tuple(levels))
    return rep, dict(page_size=page, pages=pages, cache_bytes=float(2 * hkv * pages * page * e * el),
                     table_l2_bytes=table_l2, table_hbm_bytes=table_hbm)


def _kernel(name, programs, k, steps, program_s, start_s, makespan, hbm_b, rates,
            parts=(0.0, 0.0, 0.0), **extra):
    """A kernel's time entry; ``parts``: one program's (tensor-core, exponential, load)
    seconds."""
    hbm_t = hbm_b / rates.hbm_read_bps
    t = max(makespan, hbm_t)
    lim = ("HBM bandwidth" if hbm_t >= makespan else
           "one program (fewer programs than SMs)" if programs <= rates.sms else
           "the longest share")
    return dict({"name": name, "programs": float(programs), "programs_per_sm": float(k),
                 "registers": 0.0, "waves": programs / (rates.sms * k),
                 "steps_per_program": float(steps), "program_s": program_s,
                 "longest_program_s": makespan if programs <= rates.sms else program_s,
                 "compute_s": parts[0], "exp_s": parts[1], "load_s": parts[2],
                 "start_s": start_s,
                 "makespan_s": makespan, "hbm_bound_s": hbm_t, "hbm_bytes": hbm_b,
                 "time_s": t, "stall_s": max(0.0, t - makespan), "limiter": lim}, **extra)


def _streamk(c, hw, rates, kw, shape, blocks, seg, rows, e, dtype):
    """Stream-K's report: the no-split program's step and start costs, a program per share
    (a start per segment, its blocks' steps), the split-K combine of the segments per pair."""
    from iosim.hardware import dtype_bytes
    from iosim.mapping import get_mapping
    from iosim.ragged import evaluate_ragged
    prog_seg, seg_pair, seg_lo, seg_hi, pair_seg = seg
    one = evaluate_ragged(c, get_mapping("fa2", **kw), hw, **shape)
    k1 = one.time["kernels"][0]
    step_s = (k1["program_s"] - k1["start_s"]) / max(k1["steps_per_program"], 1e-30)
    start_s = k1["start_s"]
    n_prog = len(prog_seg) - 1
    per_prog = np.array([(prog_seg[j + 1] - prog_seg[j]) * start_s
                         + sum(seg_hi[s] - seg_lo[s] for s in range(prog_seg[j], prog_seg[j + 1]))
                         * step_s for j in range(n_prog)])
    k_sm = max(1.0, min(k1["programs_per_sm"], n_prog / rates.sms))
    if n_prog <= rates.sms:
        makespan = float(per_prog.max())
    else:   # more programs than SMs: list-scheduled, co-resident programs share an SM
        makespan = max(float(per_prog.max()),
                       float(per_prog.sum()) / rates.sms + 0.5 * float(per_prog.mean()))
    el = dtype_bytes(dtype)
    n_seg = len(seg_pair)
    f = e
    pairs = len(blocks)
    per_seg = rows * (f + 1) * 4.0          # a partial output row and its LSE, fp32
    hbm_one = one.level("HBM")
    q_b = hbm_one.per_tensor.get("Q", {}).get("read_bytes", 0.0)
    extra_q = q_b * (n_seg / pairs - 1.0)
    part_hbm = hbm_one.read_bytes + extra_q + n_seg * per_seg
    steps_mean = sum(blocks) / n_prog
    per_step = [k1[x] / max(k1["steps_per_program"], 1e-30) for x in ("compute_s", "exp_s",
                                                                      "load_s")]
    partial = _kernel("stream-K partials", n_prog, k_sm, steps_mean, float(per_prog.mean()),
                      start_s, makespan, part_hbm, rates,
                      parts=tuple(v * steps_mean for v in per_step))
    if n_seg > pairs:
        spp = max(pair_seg[i + 1] - pair_seg[i] for i in range(pairs))
        sk = evaluate_ragged(c, get_mapping("decode-splitk", split_kv=max(2, spp), **kw), hw,
                             **shape)
        comb = dict(sk.time["kernels"][1])
        comb_hbm = n_seg * per_seg + pairs * rows * f * el
        comb = _kernel("combine", pairs, comb["programs_per_sm"], spp, comb["program_s"],
                       comb["start_s"], comb["makespan_s"], comb_hbm, rates,
                       parts=(comb["compute_s"], comb["exp_s"], comb["load_s"]))
        kernels = [partial, comb]
    else:
        kernels = [partial]
    total = sum(k["time_s"] for k in kernels) + rates.launch_s * len(kernels)
    host = rates.host_seconds(len(kernels))
    total = max(total, host)
    t = dict(one.time)
    hbm_all = sum(k["hbm_bytes"] for k in kernels)
    t.update(time_s=total, kernels=kernels, launch_s=rates.launch_s * len(kernels), host_s=host,
             hbm_bytes_per_s=hbm_all / total,
             tensor_utilisation=one.time["tensor_utilisation"] * one.time_s / total,
             model=("stream-K: a program per equal share of all pairs' key blocks, a start per "
                    "pair it touches, the no-split program's step time; the split-K combine"))
    levels = []
    for lv in one.levels:
        pt = {kk: dict(v) for kk, v in lv.per_tensor.items()}
        add_r = extra_q + (n_seg * per_seg if n_seg > pairs else 0.0)
        add_w = n_seg * per_seg if n_seg > pairs else 0.0
        if "Q" in pt:
            pt["Q"]["read_bytes"] += extra_q
        if n_seg > pairs:
            pt["PO+LSE"] = {"read_bytes": n_seg * per_seg, "write_bytes": n_seg * per_seg}
        levels.append(replace(lv, read_bytes=lv.read_bytes + add_r,
                              write_bytes=lv.write_bytes + add_w, per_tensor=pt))
    nest = (f"# kernel: stream-K partials ({n_prog} programs, equal shares of the "
            f"{sum(blocks)} key blocks of all {pairs} pairs laid end to end)\n"
            f"for j in [0:{n_prog}) (parallel)   # a share of the key blocks\n"
            f"  for s in segments of share j   # a run of one pair's key blocks ({n_seg} in all)\n"
            f"    load Q[pair rows]; keep O_acc; keep m; keep l\n"
            f"    for key blocks of segment s\n"
            f"      load K[j,:]; load V[j,:]; keep S\n"
            f"    store PO[s], LSE[s]   (O directly where a pair is one segment)\n"
            f"# kernel: combine\n"
            f"for pair in [0:{pairs}) (parallel)\n"
            f"  for s in the pair's segments\n"
            f"    load PO[s], LSE[s]\n"
            f"  store O[pair rows]")
    return replace(one, time=t, time_s=total, levels=tuple(levels), loop_nest=nest)
