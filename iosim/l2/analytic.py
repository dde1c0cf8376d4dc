"""The default GPU L2 model: a vectorised reuse-distance model of the HBM reads behind the L2.

What each program (thread block) reads from beyond its shared memory is what the L2 *sees*
(the tile model counts it exactly). Which of those reads reach HBM depends on whether a tile
that another program read earlier is still in the L2. This module answers that in closed
form, from the loop nest, the grid order and the occupancy, for every configuration of a grid
at once (no per-tile or per-program loop):

* **what is re-read across programs** -- found in the loop nest: tensors loaded inside a key
  loop of a grid (program) loop whose tile does not depend on that program loop (K and V in
  the FlashAttention-2 nest of any 1-pass cascade: library, user file, GQA, sigmoid ...).
  Their first read per head is compulsory; every later program of the head re-reads them;
* **who re-reads when** -- the programs of one head in dispatch order: consecutive
  (``query-major``: distance 1) or one per head in turn (``head-major``: distance = the
  number of heads). ``SMs x programs per SM`` are in flight (occupancy from the tile's
  shared memory, the warps' registers, the thread and block limits);
* **equal program lengths (no mask)** -- programs start in cohorts of one per SM; readers of a
  head in one cohort read each tile together (a convoy: one fetch). With two programs per SM
  the cohorts of a wave drift apart from a common start, by the measured seniority share and
  startup (:func:`two_slot_phases`). A re-read that crosses a cohort boundary after a gap of
  ``g`` periods has the reuse distance ``heads in flight x F x min(1, programs per SM x g)``
  plus the Q/O tiles of the programs started meanwhile;
* **causal, head-major** -- programs of unequal length free their slots in an order that
  mixes heads: the gap between consecutive readers of a head is random around its fluid mean
  (exponential), and the measured response is averaged over it in closed form;
* **causal, query-major** -- a head's programs keep together; at cohort boundaries the reuse
  distance is the re-reader's prefix plus the heads before it still in flight;
* **capacity response** -- a re-read after ``D`` bytes misses with the probability that the
  cyclic-scan microbenchmark measured on the H100 (0 up to 24 MiB, 0.36 at 26, 0.82 at 28,
  1 from 30 MiB of the 50 MiB L2, as fractions of the preset's L2), a line read by ``k``
  programs costing the capacity the readers microbenchmark measured (0.72 of a shared line
  for one reader to 1.0 for all SMs).

Nothing here is fitted to the validated launches; docs/l2_model.md gives the accuracy of this
model and of the slower dynamic simulation (:mod:`iosim.l2.simulate`) side by side on every
recorded launch, and where each misses.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from iosim.l2.measured import BLOCK_STARTUP_US as STARTUP_US
from iosim.l2.measured import READER_WEIGHTS, SCAN_SHARED
from iosim.l2.measured import SM_RATES_STARTUP as SM_SHARING

MIB = 1024 * 1024

#: what a line read (or written) by one SM costs: the ratio of the half-miss points of the
#: shared and the one-SM scans (26.6 / 36.6 MiB = 0.727, used rounded)
PRIVATE_WEIGHT = 0.73
#: waves over which the sub-cohorts' phases are followed before their steady state
EARLY_WAVES = 8
#: quadrature points over the pairs of consecutive readers (exact up to this many programs
#: per head; beyond it, evenly spaced representatives weighted by what they stand for)
PAIRS = 24


@dataclass(frozen=True)
class GpuFacts:
    """The GPU facts the analytical model needs (defaults: the H100 SXM)."""
    sms: int = 132
    l2_bytes: float = 50 * MIB
    smem_per_sm: float = 228 * 1024
    regs_per_sm: int = 65536
    max_threads_per_sm: int = 2048
    max_blocks_per_sm: int = 32

    @property
    def fast_memory_bytes(self) -> float:
        """Everything on chip above HBM (the L2 and every SM's shared memory): where the
        reuse an L2 model allows happens, for the IO lower bound."""
        return self.l2_bytes + self.sms * self.smem_per_sm

    @classmethod
    def from_hardware(cls, hw) -> "GpuFacts":
        l2 = hw.level("L2")
        smem = hw.level("SMEM")
        rf = next((lv for lv in hw.levels if lv.name.upper() == "RF"), None)
        kw = dict(sms=int(smem.instances or 1), l2_bytes=float(l2.total_capacity_bytes),
                  smem_per_sm=float(smem.capacity_bytes))
        if rf is not None:
            kw["regs_per_sm"] = int(rf.capacity_bytes // 4)
        return cls(**kw)


def applies_to_hardware(hw) -> bool:
    """A GPU-like preset: an L2 cache level and a per-SM shared memory level."""
    names = {lv.name.upper() for lv in hw.levels}
    return "L2" in names and "SMEM" in names


def occupancy(*, head_dim, block_m, block_n, num_warps, num_stages, elem_bytes,
              gpu: GpuFacts = GpuFacts()) -> np.ndarray:
    """Programs per SM (arrays broadcast): the tightest of shared memory (the Q tile plus
    ``num_stages - 1`` K/V tile pairs, 1 KiB reserved), registers (224 per thread for
    d >= 128, 128 below, as FlashAttention-2-style kernels compile), threads and blocks."""
    d = np.asarray(head_dim, dtype=float)
    smem = elem_bytes * (np.asarray(block_m) * d
                         + np.maximum(1, np.asarray(num_stages) - 1) * np.asarray(block_n) * 2 * d)
    threads = 32 * np.asarray(num_warps)
    regs = np.where(d >= 128, 224, 128)
    lim_smem = np.floor(gpu.smem_per_sm / (smem + 1024))
    lim_regs = np.floor(gpu.regs_per_sm / (threads * (np.ceil(regs / 8) * 8)))
    lim_threads = np.floor(gpu.max_threads_per_sm / threads)
    return np.maximum(1, np.minimum(np.minimum(lim_smem, lim_regs),
                                    np.minimum(lim_threads, gpu.max_blocks_per_sm))).astype(float)


@lru_cache(maxsize=None)
def two_slot_phases(head_dim: int, key_blocks: int = 256, waves: int = EARLY_WAVES) -> tuple:
    """Offset (fraction of a program's period) of the younger of two programs that share an
    SM, wave by wave, from a common start: each SM's older program runs at the measured
    larger share, a program computes nothing during its startup, and a finished program's
    slot takes the next one. The offsets grow from 0 towards 1/2 (the two slots of every SM
    end up half a period apart): 0, 0.22, 0.34, 0.41, 0.46, ... at d = 64; 0 throughout
    where the share is even (d = 128)."""
    near = min(SM_SHARING, key=lambda d: (abs(d - head_dim), d))
    solo, pair, share = SM_SHARING[near]
    work = 4.0 * 128 * 64 * near * key_blocks / 1e6          # MFLOP of one program
    slots = [[0.0, work, STARTUP_US], [0.0, work, STARTUP_US]]   # start, work left, startup
    starts: list = [[0.0], [0.0]]
    t = 0.0
    while min(len(starts[0]), len(starts[1])) <= waves:
        act = [k for k in (0, 1) if slots[k][2] <= 0]
        rate = [0.0, 0.0]
        if len(act) == 2:
            old = 0 if slots[0][0] <= slots[1][0] else 1
            rate[old], rate[1 - old] = pair * share, pair * (1 - share)
        elif act:
            rate[act[0]] = solo
        dts = [sl[2] if sl[2] > 0 else (sl[1] / rate[k] if rate[k] > 0 else np.inf)
               for k, sl in enumerate(slots)]
        dt = min(dts)
        t += dt
        for k, sl in enumerate(slots):
            if sl[2] > 0:
                sl[2] -= dt
            else:
                sl[1] -= rate[k] * dt
        for k in (0, 1):
            if slots[k][2] <= 1e-12 and slots[k][1] <= 1e-9:
                slots[k] = [t, work, STARTUP_US]
                starts[k].append(t)
    a, b = np.array(starts[0][:waves]), np.array(starts[1][:waves])
    period = (np.array(starts[0][1:waves + 1]) - a).mean()
    ph = ((b - a) / period) % 1.0
    return tuple(float(x) for x in np.minimum(ph, 1.0 - ph))


def miss_probability(reuse_bytes, l2_bytes) -> np.ndarray:
    xs, ys = zip(*SCAN_SHARED)
    return np.interp(np.asarray(reuse_bytes, dtype=float) / l2_bytes, xs, ys)


def miss_probability_random_gap(mean_reuse_bytes, l2_bytes) -> np.ndarray:
    """Expected miss probability of a re-read whose reuse distance is exponentially
    distributed with the given mean: the measured response averaged over the gap, in closed
    form (the response is piecewise linear)."""
    mu = np.maximum(np.asarray(mean_reuse_bytes, dtype=float), 1e-300)
    xs = [x * l2_bytes for x, _ in SCAN_SHARED]
    ys = [y for _, y in SCAN_SHARED]
    inv = 1.0 / mu
    e = [np.exp(-x * inv) for x in xs]                  # survival at each knot
    out = np.zeros_like(mu)
    for k in range(len(xs) - 1):
        s = (ys[k + 1] - ys[k]) / (xs[k + 1] - xs[k])
        # integral over the segment of (y_k + s (x - x_k)) exp(-x/mu) / mu dx
        out += (ys[k] * e[k] - ys[k + 1] * e[k + 1]) + s * mu * (e[k] - e[k + 1])
    return out + ys[-1] * e[-1]


def reader_weight(readers) -> np.ndarray:
    ks, ws = zip(*READER_WEIGHTS)
    return np.interp(np.log(np.maximum(np.asarray(readers, dtype=float), 1.0)), np.log(ks), ws)


def _tiles(i, *, causal, n, kv_len, block_q, block_kv, offset, q_per_row=1):
    """Key tiles read by program ``i`` of a head (its causal prefix, or all)."""
    nk = np.ceil(kv_len / block_kv)
    last = np.minimum(kv_len, np.minimum(np.ceil((i + 1) * block_q / q_per_row), n) + offset)
    pref = np.clip(np.ceil(np.maximum(last, 0) / block_kv), 0, nk)
    return np.where(causal, pref, nk)


def _cohort_rereads(P, H, SL, HM, F, QO, u, w, head_dim, gpu: GpuFacts):
    """HBM bytes (per head) of the cross-program re-reads with equal program lengths.

    Programs run in cohorts of one per SM in dispatch order; ``bps = in flight / SMs``
    cohorts make a wave, the k-th started ``k * 2 phi_w / bps`` of a period after the first
    (``phi_w`` from :func:`two_slot_phases`, 1/2 from the steady state on). A re-read in the
    same cohort is a convoy hit; one that crosses a cohort boundary after a gap ``g`` (in
    periods) has a reuse distance of ``u F min(1, bps g)`` (the heads in flight streaming,
    the offset cohorts each their part of the period) plus the Q/O tiles of the programs
    started meanwhile. Query-major: each boundary is crossed by one re-read of the head it
    splits; head-major: by ``heads`` re-reads (all of them, ``heads / SMs`` boundaries
    each, when ``heads >= SMs``). All arguments are arrays ending in an axis of length 1."""
    W = float(gpu.sms)
    bps = np.maximum(np.round(SL / W), 1.0)
    delta = np.where(HM, H, 1.0)                     # dispatch distance of a head's readers
    total = H * P
    # re-read pairs (p, p + delta) that cross a cohort boundary: delta of them at each
    # boundary while delta <= SMs (query-major: those within one head), else all of them,
    # each crossing delta / SMs boundaries
    far = delta > W
    n_events = np.where(far, np.maximum(total - delta, 0) / W,
                        np.maximum(np.ceil(total / W) - 1, 0))
    per_event = np.where(far, W, delta) * np.where(HM, 1.0, (P - 1) / np.maximum(P, 1))
    hops = np.maximum(delta / W, 1.0)
    dims = np.array(sorted(SM_SHARING), dtype=float)
    table = np.array([two_slot_phases(int(dd)) for dd in dims])  # (head dims, waves)
    near = np.abs(np.asarray(head_dim, dtype=float)[..., None] - dims).argmin(-1)
    c = np.arange(2 * EARLY_WAVES, dtype=float)                 # the early boundaries
    wave = np.floor(c / bps)
    k = c - wave * bps
    wi = np.minimum(wave, table.shape[1] - 1).astype(int)
    phi = np.where(wave < table.shape[1], table[np.broadcast_to(near, wi.shape), wi], 0.5)
    step = np.where(bps > 1, 2 * phi / bps, 1.0)                 # gap to the next sub-cohort
    gap = np.where(k >= bps - 1, 1.0 - (bps - 1) * step, step) * hops

    def hbm(g):
        D = (u * F * np.minimum(1.0, bps * g) + QO * np.minimum(1.0, g)) * w
        return F * miss_probability(D, gpu.l2_bytes)

    n_early = np.minimum(n_events, len(c))
    out = np.where(c < n_early, hbm(gap), 0.0).sum(-1, keepdims=True)
    out = out + np.maximum(n_events - n_early, 0) * hbm(hops / bps)
    return out * per_event / np.maximum(H, 1)


def reread_miss_fraction(*, programs, heads, n, kv_len, block_q, block_kv, causal, offset,
                         tile_bytes, private_bytes, grid_order, slots, gpu: GpuFacts,
                         rows_per_query=1, head_dim=64) -> dict:
    """The fraction of the cross-program re-reads that reach HBM, per configuration.

    ``programs``: programs per head that read the shared tensors (in dispatch order, the
    query blocks); ``heads``: heads in the launch (each its own shared tensors);
    ``tile_bytes``: bytes of the shared tensors per key tile; ``private_bytes``: bytes a
    program reads or writes only itself (its Q and O tiles); ``slots``: programs in flight.
    Arrays broadcast. Returns ``miss`` (HBM re-read bytes / L2 re-read bytes), ``reread``
    (L2 re-read bytes per head) and ``hbm_reread`` (their HBM part, per head)."""
    a = np.broadcast_arrays(*(np.asarray(x, dtype=float) for x in (
        programs, heads, n, kv_len, block_q, block_kv, offset, tile_bytes, private_bytes,
        slots)), np.asarray(causal, dtype=bool),
        np.asarray(grid_order == "head-major" if isinstance(grid_order, str)
                   else np.asarray(grid_order) == "head-major"))
    shape = a[0].shape
    G = np.broadcast_to(np.asarray(rows_per_query, dtype=float), shape)
    Dh = np.broadcast_to(np.asarray(head_dim, dtype=float), shape)
    flat = [np.ravel(x) for x in a] + [np.ravel(G), np.ravel(Dh)]
    (P, H, N, K, BQ, BK, OFF, TB, PB, SL, C, HM, G, Dh) = flat
    l2_re = np.zeros(P.shape)
    hbm_re = np.zeros(P.shape)
    in_flight = np.where(HM, H, np.minimum(H, 1 + SL / np.maximum(P, 1)))
    nc = np.flatnonzero(~C)
    if len(nc):
        # equal program lengths (no causal mask): cohorts of one program per SM, the cohorts
        # of a wave started at the sub-slots' phases; re-reads that cross a cohort boundary
        col = lambda x: x[nc][:, None]  # noqa: E731
        F = col(np.ceil(K / BK) * TB)
        l2_re[nc] = (col(np.maximum(P - 1, 0)) * F)[:, 0]
        hbm_re[nc] = _cohort_rereads(col(P), col(H), col(SL), col(HM), F,
                                     col(SL * PB * PRIVATE_WEIGHT), col(in_flight),
                                     reader_weight(col(P)), col(Dh), gpu)[:, 0]
    ca = np.flatnonzero(C)
    if len(ca):
        l2_re[ca], hbm_re[ca] = _causal_rereads(
            *(x[ca][:, None] for x in (P, H, N, K, BQ, BK, OFF, TB, PB, SL, HM, G,
                                       in_flight)), gpu)
    frac = np.divide(hbm_re, l2_re, out=np.zeros_like(l2_re), where=l2_re > 0)
    return {"miss": frac.reshape(shape), "reread": l2_re.reshape(shape),
            "hbm_reread": hbm_re.reshape(shape), "in_flight_heads": in_flight.reshape(shape)}


def _causal_rereads(P, H, N, K, BQ, BK, OFF, TB, PB, SL, HM, G, in_flight, gpu: GpuFacts):
    """(L2, HBM) re-read bytes per head with a causal mask: program i+1 of a head re-reads
    program i's key prefix, summed over the query blocks by quadrature. Head-major: after a
    random gap around the fluid mean; query-major: a convoy except at cohort boundaries,
    where the programs in flight are the re-reader's predecessors."""
    pairs = np.maximum(P - 1, 0)
    k = np.arange(PAIRS, dtype=float)
    exact = pairs <= PAIRS
    idx = np.where(exact, k, np.floor((k + 0.5) * pairs / PAIRS))
    wgt = np.where(exact, (k < pairs).astype(float), pairs / PAIRS)
    kw = dict(causal=True, n=N, kv_len=K, block_q=BQ, block_kv=BK, offset=OFF, q_per_row=G)
    L0 = _tiles(idx, **kw)
    reread = np.minimum(L0, _tiles(idx + 1, **kw)) * TB
    qo = SL * PB * PRIVATE_WEIGHT
    # head-major: the heads stream their prefixes between two reads of a head's tile
    # query-major: the re-reader's own prefix and the heads before it still in flight
    full = np.ceil(np.minimum(K, N + OFF) / BK) * TB
    before = np.clip(SL - (idx + 1), 0, None) / np.maximum(P, 1) * full
    reuse = np.where(HM, in_flight * L0 * TB, L0 * TB + before) + qo
    eff = reuse * reader_weight(P - idx / 2.0)
    hm = np.broadcast_to(HM, eff.shape)
    miss = miss_probability(eff, gpu.l2_bytes)
    if hm.any():
        # programs of unequal length free their slots in an order that mixes heads, so the
        # gap between consecutive readers of a head is random around its fluid mean
        # (exponential: completions of many slots)
        miss[hm] = miss_probability_random_gap(eff[hm], gpu.l2_bytes)
    convoy = np.where(HM, 0.0, 1.0 - 1.0 / gpu.sms)
    return (reread * wgt).sum(-1), (reread * wgt * (1 - convoy) * miss).sum(-1)


# ------------------------------------------------------------------ the loop-nest side


@dataclass(frozen=True)
class SharedReads:
    """What the loop nest says about reads shared across programs."""
    tensors: tuple          # tensors re-read by every program of a head
    group_programs: bool    # a grid loop over G encloses it (one program per group member)
    rows: str = "P"         # the rank that loop tiles: P, or R = packed (query, head) rows


def shared_reads(nest) -> SharedReads | None:
    """The structure the analytical model covers, found in the nest: one kernel whose grid
    loop over query tiles encloses a key-tile loop that streams tensors whose tiles do not
    depend on the query tile. ``None`` where the nest has no such structure."""
    from iosim.mapping import Load, Loop
    if len(nest.phases) != 1:
        return None
    found = None
    for _, nd, encl in nest.walk():
        if isinstance(nd, Loop) and nd.grid and nd.rank in ("P", "R"):
            inner = [b for b in nd.body if isinstance(b, Loop) and not b.grid and b.rank == "M"]
            if len(inner) != 1:
                continue
            shared = tuple(b.tensor for b in inner[0].body if isinstance(b, Load)
                           and all(dm.var != nd.var for dm in b.dims))
            group = any(isinstance(lp, Loop) and lp.grid and lp.rank == "G" for lp in encl)
            if shared:
                if found is not None:
                    return None
                found = SharedReads(shared, group, nd.rank)
    return found


def backing(nest, hardware, *, elem_bytes: float):
    """A backing model ``(reads, writes, context) -> (reads, writes)`` for
    :func:`iosim.traffic.evaluate_arrays`: the shared tensors' re-reads scaled to their
    predicted HBM part; everything else as the tile model counts it. ``None`` where the nest
    has no cross-program re-reads (then HBM sees every L2 read)."""
    sr = shared_reads(nest)
    if sr is None:
        return None
    gpu = GpuFacts.from_hardware(hardware)
    m = nest.mapping

    def model(reads: dict, writes: dict, context: dict):
        S = context["sizes"]
        # the nest of this evaluation (grouped heads pack their rows): its shared reads
        ev_nest = context.get("nest", nest)
        here = shared_reads(ev_nest) or sr
        heads = np.asarray(context["heads_total"], dtype=float)   # (batch, K/V head) pairs
        groups = np.asarray(S["G"], dtype=float) if here.group_programs else 1.0
        packed = here.rows == "R"
        e, f = np.asarray(S["E"], dtype=float), np.asarray(S["F"], dtype=float)
        bk = np.asarray(S["block_kv"], dtype=float)
        bq = np.asarray(S["block_q"], dtype=float)
        # shared tensors' elements per key tile, from what the nest reads
        comp = {t: _compulsory(t, ev_nest, S) for t in here.tensors}
        per_key = sum(comp[t] for t in here.tensors) / np.asarray(S["M"], dtype=float)
        tile_bytes = per_key * bk * elem_bytes
        private_bytes = bq * (e + f) * elem_bytes
        slots = gpu.sms * occupancy(head_dim=e, block_m=bq, block_n=bk, num_warps=m.num_warps,
                                    num_stages=m.num_stages, elem_bytes=elem_bytes, gpu=gpu)
        if packed:
            progs = np.ceil(np.asarray(S["R"], dtype=float) / bq)
            per_row = np.asarray(S["G"], dtype=float)
        else:
            progs = np.asarray(S["Pt"], dtype=float) * groups
            per_row = 1.0
        r = reread_miss_fraction(
            programs=progs, heads=heads, n=S["P"], kv_len=S["M"], block_q=bq, block_kv=bk,
            causal=S["causal"], offset=S["off"], tile_bytes=tile_bytes,
            private_bytes=private_bytes, grid_order=m.grid_order, slots=slots, gpu=gpu,
            rows_per_query=per_row, head_dim=e)
        out = dict(reads)
        for t in here.tensors:
            extra = np.maximum(np.asarray(reads[t], dtype=float) - comp[t], 0.0)
            out[t] = np.minimum(reads[t], comp[t] + extra * r["miss"])
        context["l2_model"] = {"miss_fraction": r["miss"], "slots": slots}
        return out, writes

    model.fast_memory_bytes = gpu.fast_memory_bytes  # type: ignore[attr-defined]
    return model


def _compulsory(tensor: str, nest, S) -> np.ndarray:
    """Elements of ``tensor`` per head: the product of its ranks' sizes."""
    ranks = nest.tensors.get(tensor, ((), "data"))[0]
    out = np.ones(np.shape(S["P"]), dtype=float)
    for r in ranks:
        if r in S:
            out = out * np.asarray(S[r], dtype=float)
    return out

