"""Replay a measured thread-block schedule through the L2 model's cache response.

:func:`iosim.l2.simulate.predict_dram` simulates two things at once: *when* each thread block
reads each key/value tile (dispatch, SM sharing, DRAM waits, convoys) and *whether* the L2
still holds the tile then (reuse distance -> miss probability, measured by microbenchmarks).
When it misses a launch, the question is which half is wrong. A traced launch
(``python -m iosim.l2.microbench traced``) records every block's start and end time and SM
in the same Nsight Compute run that counts its DRAM bytes; :func:`replay_dram` takes that
schedule as given — a block reads its key blocks evenly between its start and its end, Q at
its start, O at its end — and runs only the cache half on it. If the replay matches the
counters where the model does not, the schedule is what the model gets wrong there; if the
replay misses too, the cache response is.

The replay implements the per-line responses (``GpuL2.kv_weight`` "readers", the default
here, "shared" and "sides"); the two-partition response is replayed by
``experiments/l2_research/partition_replay.py``.
"""
from __future__ import annotations

import numpy as np

from iosim.errors import IosimError
from iosim.l2.simulate import (FIRST_CLEAR_NO_STARTUP, GpuL2, Workload, _blocks, _held_fraction,
                           _Touches, smem_level_reads)

#: the replay's default response: the readers rule (GpuL2's default is the two partitions,
#: which this per-line replay does not implement); as a dynamic model, with the rates without
#: each block's startup (FIRST_CLEAR_NO_STARTUP), as the experiments that use it recorded
READERS = GpuL2(kv_weight="readers", **FIRST_CLEAR_NO_STARTUP)


def key_times(trace: np.ndarray, NK: np.ndarray, x: np.ndarray, b: np.ndarray,
              every: int = 0) -> np.ndarray:
    """When block ``b`` began key block ``x`` (its own index from 0), by a trace row.

    Without marks (``every = 0``) a block goes through its ``NK`` key blocks evenly between its
    start and its end (columns 0 and 1). With marks (``Tiling(trace_every=every)``: column
    ``4 + j`` holds when the block began key block ``j * every``, -1 where it never did) the
    time is interpolated between the marks around ``x``, the last segment ending at the block's
    end at key block ``NK``."""
    trace = np.asarray(trace, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    start, end = trace[b, 0], trace[b, 1]
    nk = np.maximum(NK[b].astype(np.float64), 1.0)
    if not every:
        return start + (end - start) * x / nk
    marks = trace[:, 4:]
    n_marks = marks.shape[1]
    j = np.minimum((x // every).astype(np.int64), n_marks - 1)
    t0 = marks[b, j]
    t0 = np.where(t0 >= 0, t0, start)          # a mark missing (not reached): from the start
    x0 = np.where(marks[b, j] >= 0, j * every, 0.0)
    j1 = np.minimum(j + 1, n_marks - 1)
    has_next = (j + 1 < n_marks) & (marks[b, j1] >= 0)
    t1 = np.where(has_next, marks[b, j1], end)
    x1 = np.where(has_next, j1 * every, nk)
    return t0 + (t1 - t0) * (x - x0) / np.maximum(x1 - x0, 1e-9)


def replay_dram(w: Workload, trace: np.ndarray, gpu: GpuL2 = READERS, *, batch: int = 32,
                chunk: int | None = None, per_block: bool = False, every: int = 0) -> dict:
    """Expected DRAM read bytes of ``w`` when its blocks run as ``trace`` says.

    ``trace``: one row per thread block in block-id order (the order of
    :func:`iosim.l2.simulate._blocks`): start and end time (any unit), SM id, ... (the layout of
    ``Tiling(trace=True)``). Reads are processed in time order, ``batch`` at a time (a chunk
    read twice within a batch is fetched once; the others' reuse distances count the batch's
    earlier touches, so the batch only groups work, it does not blur the order).
    ``per_block``: also return each block's expected K/V miss bytes (``"block_miss_bytes"``).
    ``every``: the trace carries marks every ``every`` key blocks (:func:`key_times`): reads
    are placed on the measured trajectory instead of evenly between start and end."""
    if gpu.kv_weight == "partitions":
        raise IosimError("replay_dram replays per-line responses (kv_weight readers, shared or "
                         "sides); the partitions replay is "
                         "experiments/l2_research/partition_replay.py")
    trace = np.asarray(trace)
    if not np.issubdtype(trace.dtype, np.integer):
        trace = trace.astype(np.float64)        # integer traces stay exact until shifted
    if trace.ndim != 2 or trace.shape[1] < 2:
        raise IosimError("a trace needs one row (start, end, ...) per thread block")
    H, QB, NK = _blocks(w)
    nb = len(H)
    if trace.shape[0] != nb:
        raise IosimError(f"the trace has {trace.shape[0]} thread blocks, the launch has {nb}")
    eb = w.elem_bytes
    kvh = w.kv_heads or w.heads
    group = w.heads // kvh
    KVH = (H // w.heads) * kvh + (H % w.heads) // group
    tile_bytes = 2 * w.block_n * w.head_dim * eb
    # chunks of g key blocks, fine against the reuse horizon (1/640 of it: 48 KiB at 30 MiB)
    g = chunk or max(1, int(gpu.horizon_bytes / 640 // tile_bytes))
    n_ch = -(-w.n_kv_blocks // g)
    key_bytes = 2 * w.head_dim * eb
    chunk_keys = np.full(n_ch, g * w.block_n, dtype=float)
    chunk_keys[-1] = w.seq_k - (n_ch - 1) * g * w.block_n
    # times relative to the first start, shifted before the conversion to float64 (absolute
    # %globaltimer values, ~1.7e18 ns, would be rounded to 256 ns)
    raw = trace
    t_first = raw[:, 0].min()
    trace = raw.astype(np.float64)
    trace[:, :2] = raw[:, :2] - t_first
    if every:
        trace[:, 4:] = np.where(raw[:, 4:] >= 0, raw[:, 4:] - t_first, -1)
    s0, e0 = trace[:, 0], trace[:, 1]
    # K/V events: block b reads chunk c when it starts its first key block of the chunk
    NCH = -(-NK // g)
    b_ev = np.repeat(np.arange(nb), NCH)
    c_ev = np.arange(len(b_ev)) - np.repeat(np.cumsum(NCH) - NCH, NCH)
    t_ev = key_times(trace, NK, c_ev * g, b_ev, every)
    tiles = np.minimum(g, NK[b_ev] - c_ev * g).astype(float)
    per_tile = chunk_keys[c_ev] / np.minimum(g, w.n_kv_blocks - c_ev * g) * key_bytes
    k_ev = KVH[b_ev] * n_ch + c_ev
    # Q at the start, O at the end (key -1: no chunk)
    q_tile = w.block_m * w.head_dim * eb
    t_all = np.concatenate([t_ev, s0, e0])
    k_all = np.concatenate([k_ev, np.full(2 * nb, -1)])
    tl_all = np.concatenate([tiles, np.zeros(2 * nb)])
    pt_all = np.concatenate([per_tile, np.zeros(2 * nb)])
    kind = np.concatenate([np.zeros(len(t_ev)), np.ones(nb), np.full(nb, 2.0)])
    order = np.lexsort((kind, t_all))
    t_all, k_all, tl_all, pt_all = t_all[order], k_all[order], tl_all[order], pt_all[order]
    b_all = np.concatenate([b_ev, np.arange(nb), np.arange(nb)])[order]
    block_miss = np.zeros(nb)
    scale = g * tile_bytes
    wp = gpu.private_weight
    curve = tuple(zip(*gpu.scan_shared))
    n_keys = w.batch * kvh * n_ch
    kseq = np.full(n_keys, -1)
    extent = np.zeros(n_keys)
    nread = np.zeros(n_keys)
    log = _Touches(len(t_all) + 8, gpu.horizon_bytes / scale)
    dram = 0.0
    wq = wp * q_tile / scale

    def held_frac(chunks, held):
        # a chunk costs the key blocks of it that are held (a head's last chunk is partial)
        return _held_fraction(chunks % n_ch, held, g, chunk_keys, w)

    for lo in range(0, len(t_all), batch):
        hi = min(lo + batch, len(t_all))
        k = k_all[lo:hi]
        kv = k >= 0
        # the first touch in the batch of each chunk (every Q/O touch is its own line)
        ids = np.where(kv, k, -1 - np.arange(hi - lo))
        _, pos, inv = np.unique(ids, return_index=True, return_inverse=True)
        pos_kv = pos[kv[pos]]
        ukv = k[pos_kv]
        tmax = np.zeros(hi - lo)
        np.maximum.at(tmax, pos[inv], tl_all[lo:hi])
        tmax = tmax[pos_kv]
        # what the batch's earlier first touches add to a chunk's reuse distance: each line
        # touched earlier in the batch that the log does not already count after the chunk's
        # last touch (new lines, Q/O, or lines last touched before it) -- the exact order
        sp = np.sort(pos)
        kfirst = np.where(kv[sp], k[sp], -1)
        prev = np.where(kfirst >= 0, kseq[np.maximum(kfirst, 0)], -1)
        held = np.isfinite(log.distances(prev)) & (prev >= 0)
        prev = np.where(held, prev, -1)
        kf0 = np.maximum(kfirst, 0)
        w_est = np.where(kfirst >= 0, (gpu.reader_weight(nread[kf0] + 1)
                                       if gpu.kv_weight == "readers" else 1.0)
                         * held_frac(kf0, np.maximum(extent[kf0], tl_all[lo:hi][sp])), wq)
        earlier = np.tri(len(sp), k=-1, dtype=bool).T            # [q, p]: q before p
        counts = earlier & (prev[:, None] < prev[None, :])
        before = (w_est @ counts)[np.searchsorted(sp, pos_kv)]
        old = kseq[ukv]
        d = (log.distances(old) + before) * scale
        fin = np.isfinite(d)
        m = np.where(fin, np.interp(np.where(fin, d, 0.0) / gpu.l2_bytes, *curve), 1.0)
        had = np.where(fin, extent[ukv], 0.0)
        ptu = pt_all[lo:hi][pos_kv]
        miss = m * ptu * np.minimum(tmax, had) + ptu * np.maximum(0.0, tmax - had)
        dram += float(miss.sum())
        if per_block:
            np.add.at(block_miss, b_all[lo:hi][pos_kv], miss)
        extent[ukv[~fin]] = 0.0
        nread[ukv[~fin]] = 0.0
        extent[ukv] = np.maximum(extent[ukv], tmax)
        log.drop(old[old >= 0])
        np.add.at(nread, k[kv], 1.0)
        # the touches enter the recency log in batch order, a chunk read twice at its last read
        last = (hi - lo - 1) - np.unique(ids[::-1], return_index=True)[1]
        order_last = np.sort(last)
        wts = np.full(len(order_last), wq)
        is_kv = kv[order_last]
        chunks = k[order_last[is_kv]]
        wts[is_kv] = (gpu.reader_weight(nread[chunks]) if gpu.kv_weight == "readers"
                      else 1.0) * held_frac(chunks, extent[chunks])
        seqs = log.add(wts)
        kseq[chunks] = seqs[is_kv]
        log.evict()
        log.compact(kseq)
    sm = smem_level_reads(w)
    out = {"dram_read_bytes": sm["q_bytes"] + dram, "kv_miss_bytes": dram,
           "q_bytes": sm["q_bytes"], "chunk_key_blocks": g}
    if per_block:
        out["block_miss_bytes"] = block_miss
    return out


def _block_miss_fractions(w: Workload, trace: np.ndarray, gpu: GpuL2):
    """Each block's key blocks, its K/V miss fraction in the replay of ``trace``, the replay."""
    NK = _blocks(w)[2]
    r = replay_dram(w, trace, gpu, per_block=True)
    tile = 2 * w.block_n * w.head_dim * w.elem_bytes
    return NK, r["block_miss_bytes"] / np.maximum(NK * tile, 1.0), r


def _detrended(p: np.ndarray, window: int, name: str, which: str):
    """Paces ``p`` (in start order) relative to their running mean over ``window``, minus 1,
    without the ends the mean does not cover; and the slice of ``p`` kept."""
    if len(p) < 3 * window:
        raise IosimError(f"{name} needs at least {3 * window} long blocks{which}, the launch "
                         f"has {len(p)}")
    trend = np.convolve(p, np.ones(window) / window, mode="same")
    kept = slice(window // 2 + 1, -(window // 2 + 1))
    return (p / trend - 1.0)[kept], kept


def hit_pace(w: Workload, trace: np.ndarray, gpu: GpuL2 = READERS, *, long_frac: float = 0.3,
             window: int = 65, hit_below: float = 0.3, miss_above: float = 0.9) -> dict:
    """Which blocks of a schedule hit and how fast they go: the state of a DRAM-bound launch.

    Replays ``trace`` (:func:`replay_dram`, ``per_block``) and takes each block's K/V miss
    fraction; blocks with at least ``long_frac`` of the longest block's key blocks are
    classed as hitters (miss fraction below ``hit_below``) or missers (above ``miss_above``).
    Their pace (time per key block) is taken relative to a running mean over ``window``
    blocks in start order, so slow drifts over the launch drop out. Returns the two
    fractions, each class's mean relative pace, and the median time per key block (in the
    trace's time unit)."""
    trace = np.asarray(trace)                 # int64 traces stay exact (see replay_dram)
    NK, frac, r = _block_miss_fractions(w, trace, gpu)
    pace = (trace[:, 1] - trace[:, 0]).astype(np.float64) / np.maximum(NK, 1)
    sel = NK >= long_frac * NK.max()
    order = np.argsort(trace[sel, 0], kind="stable")
    p, f = pace[sel][order], frac[sel][order]
    rel, kept = _detrended(p, window, "hit_pace", "")
    f = f[kept]
    hit, miss = f < hit_below, f > miss_above
    return {"hitters": float(hit.mean()), "missers": float(miss.mean()),
            "hitter_pace": float(rel[hit].mean()) if hit.any() else float("nan"),
            "misser_pace": float(rel[miss].mean()) if miss.any() else float("nan"),
            "us_per_key_block": float(np.median(p)), "dram_read_bytes": r["dram_read_bytes"]}


def partner_pace(w: Workload, trace: np.ndarray, gpu: GpuL2 = READERS, *,
                 long_frac: float = 0.3, window: int = 65, min_cover: float = 0.9) -> dict:
    """How a block's pace depends on its own misses and on those of the block beside it on its
    SM: the sharing of an SM that holds two blocks (d=64) under DRAM load.

    Each block's K/V miss fraction from the replay of ``trace`` (as :func:`hit_pace`); its
    *partner's* miss fraction: the other blocks on its SM (column 2), weighted by how long
    each ran beside it. Blocks with at least ``long_frac`` of the longest block's key blocks
    that had a partner for at least ``min_cover`` of their life; pace (time per key block)
    relative to a running mean over ``window`` of them in start order. Returns the least-squares
    fit ``pace = a + own * miss + partner * partner miss`` (``own``, ``partner``: relative pace
    per unit miss fraction; positive = slower), and the mean relative pace of four classes
    (hit: miss fraction below 0.3, miss: above 0.9): ``hit_hit`` (a hitter beside a hitter),
    ``hit_miss`` (a hitter beside a misser), ``miss_hit``, ``miss_miss``, with their counts.
    An SM that gives a waiting block's time to the other pushes ``partner`` towards ``-own``;
    with shares set by age alone the fit still picks up whatever correlates a block's age with
    its neighbour's misses (experiments/l2_research/partner_pace.py compares the two on traced
    launches)."""
    trace = np.asarray(trace)
    NK, frac, _ = _block_miss_fractions(w, trace, gpu)
    t0 = trace[:, 0].min()                 # ns stamps stay exact as int64 until shifted
    s = (trace[:, 0] - t0).astype(np.float64)
    e = (trace[:, 1] - t0).astype(np.float64)
    sm = trace[:, 2].astype(np.int64)
    nb = len(s)
    pfrac = np.full(nb, np.nan)
    cover = np.zeros(nb)
    for m in np.unique(sm):
        idx = np.flatnonzero(sm == m)
        ov = np.clip(np.minimum(e[idx, None], e[None, idx]) - np.maximum(s[idx, None],
                                                                         s[None, idx]), 0, None)
        np.fill_diagonal(ov, 0.0)
        tot = ov.sum(axis=1)
        cover[idx] = tot / np.maximum(e[idx] - s[idx], 1e-30)
        pfrac[idx] = np.where(tot > 0, ov @ frac[idx] / np.maximum(tot, 1e-30), np.nan)
    pace = (e - s) / np.maximum(NK, 1)
    sel = (NK >= long_frac * NK.max()) & (cover >= min_cover)
    order = np.argsort(s[sel], kind="stable")
    p, f, q = pace[sel][order], frac[sel][order], pfrac[sel][order]
    rel, kept = _detrended(p, window, "partner_pace", " that share an SM")
    f, q = f[kept], q[kept]
    coef = np.linalg.lstsq(np.c_[np.ones(len(f)), f, q], rel, rcond=None)[0]
    out = {"n": int(len(rel)), "own": float(coef[1]), "partner": float(coef[2])}
    for name, mask in (("hit_hit", (f < 0.3) & (q < 0.3)), ("hit_miss", (f < 0.3) & (q > 0.9)),
                       ("miss_hit", (f > 0.9) & (q < 0.3)), ("miss_miss", (f > 0.9) & (q > 0.9))):
        out[name] = float(rel[mask].mean()) if mask.any() else float("nan")
        out[f"n_{name}"] = int(mask.sum())
    return out
