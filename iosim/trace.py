"""Tile-level simulator: walks a mapping's loop nest tile by tile with bounded buffers.

It exists to check :mod:`iosim.traffic` and to model caches. It shares nothing with the
analytical model but the :class:`~iosim.mapping.LoopNest` description: it iterates the loops
explicitly (causal skipping by testing every tile pair against the definition "query ``p``
sees key ``m`` iff ``m <= p + offset``"), computes each tile's extent from its coordinates
(partial last tiles included), allocates every on-chip buffer against the level's capacity
(full, padded tiles, as a kernel allocates them) and frees it at the end of its loop body,
and counts every load and store per tensor. It counts tiles, not elements.

An optional :class:`LRUCache` sits between the programs' tiles and the backing store: the
tiles' bytes are mapped to addresses (row-major tensors, one block per batch and head) and
looked up at line (or sector) granularity, or per tile; misses are backing-store reads and
evicted dirty lines backing-store writes. Programs (thread blocks: the iterations of the
outer parallel loops, times batch and heads) run ``concurrent`` at a time, interleaved one
tile event at a time, in ``grid_order`` (``query-major``: a head's query tiles are
consecutive; ``head-major``: consecutive programs belong to different heads).
"""
from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from iosim.errors import IosimError
from iosim.mapping import (Alloc, Load, Loop, LoopNest, Mapping, Shapes, SplitLoop, Store,
                           get_mapping, loop_nest)

__all__ = ["LRUCache", "TraceResult", "simulate", "Scratchpad"]


# ======================================================================================
# an LRU cache level
# ======================================================================================


class LRUCache:
    """A write-back, write-allocate LRU cache (e.g. a GPU's L2).

    ``granularity="line"``: entries are ``line_bytes``-byte aligned lines (32 for a sector,
    128 for an L2 line); ``granularity="tile"``: one entry per tile, sized by its bytes.
    Writes of whole lines allocate without fetching. Statistics in bytes.
    """

    def __init__(self, capacity_bytes: float, line_bytes: int = 128, granularity: str = "line",
                 name: str = "L2"):
        if not capacity_bytes > 0:
            raise IosimError(f"{name}: cache capacity must be positive, got {capacity_bytes!r}")
        if granularity not in ("line", "tile"):
            raise IosimError(f"{name}: granularity must be 'line' or 'tile', got {granularity!r}")
        if int(line_bytes) < 1:
            raise IosimError(f"{name}: line size must be a positive number of bytes")
        self.name = name
        self.capacity = float(capacity_bytes)
        self.line = int(line_bytes)
        self.granularity = granularity
        self.entries: OrderedDict = OrderedDict()   # key -> [size, dirty, tensor]
        self.used = 0.0
        self.stats = {"read_hit_bytes": 0.0, "read_miss_bytes": 0.0, "write_bytes": 0.0,
                      "backing_read_bytes": 0.0, "backing_write_bytes": 0.0}
        self.backing_reads: dict = {}
        self.backing_writes: dict = {}

    def _evict(self):
        while self.used > self.capacity and self.entries:
            key, (size, dirty, tensor) = self.entries.popitem(last=False)
            self.used -= size
            if dirty:
                self.stats["backing_write_bytes"] += size
                self.backing_writes[tensor] = self.backing_writes.get(tensor, 0.0) + size

    def access(self, keys, sizes, tensor: str, write: bool) -> None:
        """Touch entries ``keys`` (with ``sizes`` bytes each) for ``tensor``."""
        ent = self.entries
        st = self.stats
        for key, size in zip(keys, sizes):
            hit = ent.get(key)
            if hit is not None:
                ent.move_to_end(key)
                if write:
                    hit[1] = True
                    st["write_bytes"] += size
                else:
                    st["read_hit_bytes"] += size
                continue
            ent[key] = [size, write, tensor]
            self.used += size
            if write:
                st["write_bytes"] += size
            else:
                st["read_miss_bytes"] += size
                st["backing_read_bytes"] += size
                self.backing_reads[tensor] = self.backing_reads.get(tensor, 0.0) + size
            if self.used > self.capacity:
                self._evict()

    def flush(self) -> None:
        """Write back every dirty entry (the end of the kernel sequence)."""
        for key, (size, dirty, tensor) in self.entries.items():
            if dirty:
                self.stats["backing_write_bytes"] += size
                self.backing_writes[tensor] = self.backing_writes.get(tensor, 0.0) + size
                self.entries[key][1] = False

    def to_dict(self) -> dict:
        return {"name": self.name, "capacity_bytes": self.capacity, "line_bytes": self.line,
                "granularity": self.granularity, **self.stats,
                "backing_reads_per_tensor": dict(self.backing_reads),
                "backing_writes_per_tensor": dict(self.backing_writes)}


# ======================================================================================
# bounded on-chip buffers
# ======================================================================================


class Scratchpad:
    """On-chip buffers of one program, allocated against a level's capacity."""

    def __init__(self, capacities: dict):
        self.cap = dict(capacities)          # level -> bytes
        self.used = {k: 0.0 for k in capacities}
        self.peak = {k: 0.0 for k in capacities}
        self.stack: list = []                # (level, bytes, name)

    def alloc(self, level: str, nbytes: float, name: str) -> None:
        used = self.used[level] + nbytes
        if used > self.cap[level] * (1 + 1e-12):
            live = ", ".join(f"{n}" for lv, _, n in self.stack if lv == level)
            raise IosimError(
                f"buffer {name} overflows {level}: {used / 1024:.1f} KiB needed "
                f"({live + ', ' if live else ''}{name}) but {self.cap[level] / 1024:.1f} KiB fit")
        self.used[level] = used
        if used > self.peak[level]:
            self.peak[level] = used
        self.stack.append((level, nbytes, name))

    def mark(self) -> int:
        return len(self.stack)

    def release(self, mark: int) -> None:
        while len(self.stack) > mark:
            level, nbytes, _ = self.stack.pop()
            self.used[level] -= nbytes


# ======================================================================================
# the simulator
# ======================================================================================


@dataclass
class TraceResult:
    """Counts of a simulated run (elements; summed over the simulated batches and heads)."""
    reads: dict
    writes: dict
    peak_bytes: dict
    programs: int
    tile_events: int
    seconds: float
    l2: dict | None = None
    sizes: dict = field(default_factory=dict)

    @property
    def total(self) -> int:
        return int(sum(self.reads.values()) + sum(self.writes.values()))

    def to_dict(self) -> dict:
        return {"reads": dict(self.reads), "writes": dict(self.writes),
                "peak_bytes": dict(self.peak_bytes), "programs": self.programs,
                "tile_events": self.tile_events, "seconds": self.seconds, "l2": self.l2,
                "total_elements": self.total}


def _sizes(nest: LoopNest, shapes: Shapes) -> dict:
    m = nest.mapping
    N, K = shapes.n, shapes.kv_len
    bq, bk = m.block_q, m.block_kv
    pre = m.preset
    if pre.tiles == "tied":
        bk = bq
    if pre.self_only and K != N:
        raise IosimError(f"{m.kind} is causal self-attention: kv-len must equal seq-len")
    Tc = -(-K // bk)
    tps = -(-Tc // m.split_kv)
    n_s = -(-Tc // tps)
    if pre.head_tiles:   # the head dims tiled too (default: the query tile, or whole)
        dq = pre.head_tiles == "block_q"
        be = (bq if dq else shapes.e) if m.block_e is None else m.block_e
        bf = (bq if dq else shapes.f) if m.block_f is None else m.block_f
    else:
        be, bf = shapes.e, shapes.f
    default_off = K - N if nest.causal_offset_default == "end" else 0
    off = shapes.causal_offset if shapes.causal_offset is not None else default_off
    return {"P": N, "R": N * shapes.group, "M": K, "E": shapes.e, "F": shapes.f,
            "G": shapes.group, "S": n_s,
            "Mt": Tc, "Pt": -(-N // bq), "tps": tps, "block_q": bq, "block_kv": bk, "block_e": be,
            "block_f": bf, "block_rows": m.softmax_rows, "one": 1, "off": off,
            "causal": shapes.causal, "stages": m.num_stages}


class _Sim:
    def __init__(self, nest: LoopNest, sz: dict, roles: dict, caps: dict, acc_level: str,
                 sram_level: str, l2: LRUCache | None, heads_layout: int):
        self.nest, self.sz, self.roles = nest, sz, roles
        self.caps, self.acc_level, self.sram_level = caps, acc_level, sram_level
        self.l2 = l2
        # every tensor the nest loads or stores appears, with 0 if no tile of it is touched
        self.reads: dict = {}
        self.writes: dict = {}
        for _, nd, _ in nest.walk():
            if isinstance(nd, Load):
                self.reads.setdefault(nd.tensor, 0)
            elif isinstance(nd, Store):
                self.writes.setdefault(nd.tensor, 0)
        self.events = 0
        self.peak = {k: 0.0 for k in caps}
        m = nest.mapping
        self.stage_mult = m.num_stages if m.stages_in_footprint else 1
        # address layout for the cache model
        self.base = {}
        self.strides = {}
        addr = 0
        for t, (ranks, role) in nest.tensors.items():
            ext = [self._rank_ext(r) for r in ranks]
            eb = roles[role]
            per_head = int(math.ceil(np.prod(ext, dtype=np.int64) * eb)) if ext else int(eb)
            self.base[t] = (addr, per_head, ext, eb)
            addr += per_head * heads_layout
            addr = -(-addr // 4096) * 4096

    def _rank_ext(self, r: str) -> int:
        return int(self.sz[r])

    # -- ranges --------------------------------------------------------------------------
    def _visible(self, i: int, j: int, bq: int, bk: int, rows: str = "P") -> bool:
        sz = self.sz
        if rows == "R":     # packed rows of G query heads: row r is query r // G
            p_last = min(((i + 1) * bq - 1) // sz["G"], sz["P"] - 1)
        else:
            p_last = min((i + 1) * bq, sz["P"]) - 1
        return j * bk <= p_last + sz["off"]

    def loop_range(self, nd, env: dict, loops: dict):
        sz = self.sz
        if isinstance(nd, SplitLoop):
            return range(sz["S"])
        ext, b = sz[nd.rank], sz[nd.block]
        n = -(-ext // b)
        if nd.within is not None:
            s = env[nd.within]
            lo, hi = s * sz["tps"], min((s + 1) * sz["tps"], n)
        else:
            lo, hi = 0, n
        rng = range(lo, hi)
        if nd.causal_with is not None and sz["causal"]:
            other = loops[nd.causal_with]
            oi = env[nd.causal_with]
            if nd.rank == "M":
                bq, bk = sz[other.block], b
                rng = [j for j in rng if self._visible(oi, j, bq, bk, other.rank)]
            else:
                bq, bk = b, sz[other.block]
                rng = [i for i in rng if self._visible(i, oi, bq, bk, nd.rank)]
        return rng

    # -- tiles ---------------------------------------------------------------------------
    def tile(self, dims, env: dict, loops: dict):
        """(element count, padded element count, [(start, stop)] per dim)."""
        sz = self.sz
        count = 1
        padded = 1
        ranges = []
        for d in dims:
            if d.var is None:
                e = sz[d.rank]
                count *= e
                padded *= e
                ranges.append((0, e))
            elif d.rank in ("Mt", "Pt", "S"):
                k = env[d.var]
                ranges.append((k, k + 1))
            else:
                lp = loops[d.var]
                b = sz[lp.block]
                start = env[d.var] * b
                stop = min(start + b, sz[d.rank])
                if stop <= start:
                    raise AssertionError(f"empty tile {d} at {env}")
                count *= stop - start
                padded *= min(b, sz[d.rank])
                ranges.append((start, stop))
        return count, padded, ranges

    def lines(self, tensor: str, ranges, head: int):
        base, per_head, ext, eb = self.base[tensor]
        start = base + head * per_head
        L = self.l2.line
        if not ext:
            a = start
            return list(range(a // L, (a + int(math.ceil(eb)) - 1) // L + 1))
        # contiguous runs: merge the trailing full dims
        k = len(ext) - 1
        while k > 0 and ranges[k] == (0, ext[k]):
            k -= 1
        strides = np.cumprod([1] + ext[::-1][:-1])[::-1]
        lead = [np.arange(a, b) for a, b in ranges[:k]]
        run_start = ranges[k][0] * strides[k]
        run_len = (ranges[k][1] - ranges[k][0]) * strides[k]
        if lead:
            grids = np.meshgrid(*lead, indexing="ij")
            offs = sum(g.ravel() * strides[q] for q, g in enumerate(grids)) + run_start
        else:
            offs = np.array([run_start])
        b0 = start + (offs * eb).astype(np.int64)
        b1 = start + ((offs + run_len) * eb).astype(np.int64) - 1
        first, last = b0 // L, b1 // L
        if len(first) == 1:
            return range(int(first[0]), int(last[0]) + 1)
        lines = np.unique(np.concatenate([np.arange(f, l + 1) for f, l in zip(first, last)]))
        return lines.tolist()

    # -- the interpreter (a generator: yields after every tile event) ---------------------
    def run(self, nodes, env: dict, loops: dict, pad: Scratchpad, head: int):
        roles = self.roles
        for nd in nodes:
            if isinstance(nd, (Loop, SplitLoop)):
                rng = self.loop_range(nd, env, loops)
                inner = dict(loops)
                inner[nd.var] = nd
                for idx in rng:
                    env[nd.var] = idx
                    mark = pad.mark()
                    yield from self.run(nd.body, env, inner, pad, head)
                    pad.release(mark)
                env.pop(nd.var, None)
            elif isinstance(nd, Load):
                cnt, padded, ranges = self.tile(nd.dims, env, loops)
                self.reads[nd.tensor] = self.reads.get(nd.tensor, 0) + cnt
                role = self.nest.dtype_role(nd.tensor)
                mult = (nd.stages or self.stage_mult) if nd.streamed else 1
                pad.alloc(self.sram_level, padded * roles[role] * mult, nd.tensor)
                self.events += 1
                if self.l2 is not None:
                    self._cache(nd.tensor, ranges, cnt, head, write=False)
                yield
            elif isinstance(nd, Store):
                cnt, padded, ranges = self.tile(nd.dims, env, loops)
                self.writes[nd.tensor] = self.writes.get(nd.tensor, 0) + cnt
                self.events += 1
                if self.l2 is not None:
                    self._cache(nd.tensor, ranges, cnt, head, write=True)
                yield
            elif isinstance(nd, Alloc):
                _, padded, _ = self.tile(nd.dims, env, loops)
                level = self.acc_level if nd.role == "acc" else self.sram_level
                pad.alloc(level, padded * (roles["acc"] if nd.role == "acc" else roles["data"]),
                          nd.name)

    def _cache(self, tensor, ranges, cnt, head, write):
        l2 = self.l2
        eb = self.base[tensor][3]
        if l2.granularity == "tile":
            key = (tensor, head, tuple(ranges))
            l2.access((key,), (cnt * eb,), tensor, write)
        else:
            lines = self.lines(tensor, ranges, head)
            keys = [(tensor, x) for x in lines]
            l2.access(keys, [l2.line] * len(keys), tensor, write)


def _grid_prefix(body) -> list:
    out = []
    while len(body) == 1 and isinstance(body[0], (Loop, SplitLoop)) and body[0].grid:
        out.append(body[0])
        body = body[0].body
    return out


def simulate(cascade=None, mapping="fa2", hardware=None, shapes: Shapes | None = None, *,
             sram_bytes: float | None = None, acc_bytes: float | None = None,
             check_capacity: bool = True, l2: LRUCache | None = None, concurrent: int = 1,
             grid_order: str | None = None, heads: int | None = None, batch: int | None = None,
             flush: bool = True, **shape_kw) -> TraceResult:
    """Simulate a mapping tile by tile and count every load and store.

    ``shapes`` (or keyword sizes ``n``, ``e``/``d``, ``f``, ``kv_len``, ``causal``, ...)
    gives the problem; by default one batch and head is simulated (``heads``/``batch``
    override, e.g. for an L2 model). Capacities: the SRAM level's (``sram_bytes`` overrides;
    ``None`` with no hardware: unbounded) and the accumulator level's (``acc_bytes``). With
    ``check_capacity`` an overflowing allocation raises :class:`IosimError`.
    ``l2``: an :class:`LRUCache` between the tiles and the backing store.
    """
    from iosim.hardware import dtype_bytes, load_hardware
    t0 = time.perf_counter()
    if shapes is None:
        if "d" in shape_kw and "e" not in shape_kw:
            shape_kw["e"] = shape_kw.pop("d")
        shapes = Shapes(**shape_kw)
    m = mapping if isinstance(mapping, Mapping) else get_mapping(
        mapping, cascade=getattr(cascade, "name", cascade))
    c = cascade if cascade is not None else m.cascade
    if isinstance(c, str):
        from cascades.library import load
        c = load(c)
    hw = load_hardware(hardware) if isinstance(hardware, str) else hardware
    if m.derived_blocks:
        if hw is None and sram_bytes is None:
            raise IosimError(f"mapping '{m.name}' derives its blocks from the SRAM size: "
                             f"give hardware or sram_bytes")
        sram = sram_bytes if sram_bytes is not None else hw.innermost_sram.usable_bytes
        m = m.resolve(sram / dtype_bytes(shapes.dtype), shapes.e)
    pols = m.preset.row_policies
    if pols and m.row_policy == "auto":   # the first row policy whose tiles fit, else the next
        pol = pols[0]
        if hw is not None or sram_bytes is not None:
            from iosim.traffic import evaluate_arrays
            r = evaluate_arrays(c, m.with_(row_policy=pols[0]), hw or "two-level",
                                n=shapes.n, e=shapes.e, f=shapes.f, kv_len=shapes.kv_len,
                                group=shapes.group, dtype=shapes.dtype, causal=shapes.causal,
                                sram_bytes=sram_bytes)
            pol = pols[0] if bool(r["fits"][0]) else pols[1]
        m = m.with_(row_policy=pol)
    nest = loop_nest(m, c, grouped=shapes.group > 1)
    sz = _sizes(nest, shapes)
    # capacities and dtype sizes
    if hw is not None:
        from iosim.traffic import _level_roles
        _, _, sram_lv, _, acc_lv = _level_roles(hw, m)
        sram_name, acc_name = sram_lv.name, acc_lv.name
        sram_cap = sram_bytes if sram_bytes is not None else sram_lv.usable_bytes
        acc_cap = acc_bytes if acc_bytes is not None else acc_lv.usable_bytes
        separate = acc_lv is not sram_lv
    else:
        sram_name, acc_name, separate = "SRAM", "SRAM", False
        sram_cap = sram_bytes if sram_bytes is not None else math.inf
        acc_cap = math.inf
    if not check_capacity:
        sram_cap = acc_cap = math.inf
    caps = {sram_name: sram_cap}
    if separate:
        caps[acc_name] = acc_cap
    else:
        acc_name = sram_name
    acc_dt = m.acc_dtype or ("fp32" if separate else shapes.dtype)
    roles = {"data": dtype_bytes(shapes.dtype), "stat": dtype_bytes(m.stat_dtype),
             "mask": 1.0, "acc": dtype_bytes(acc_dt)}
    nb = batch if batch is not None else 1
    nh = heads if heads is not None else 1
    sim = _Sim(nest, sz, roles, caps, acc_name, sram_name, l2, nb * nh)
    order = grid_order or m.grid_order
    programs = 0
    peak = {k: 0.0 for k in caps}
    for ph in nest.phases:
        prefix = _grid_prefix(ph.body)
        rest = prefix[-1].body if prefix else ph.body
        # enumerate grid coordinates (grid loops are independent of each other)
        coords = [{}]
        for lp in prefix:
            new = []
            for cdict in coords:
                for idx in sim.loop_range(lp, cdict, {}):
                    d = dict(cdict)
                    d[lp.var] = idx
                    new.append(d)
            coords = new
        loops0 = {lp.var: lp for lp in prefix}
        heads_list = range(nb * nh)
        if order == "head-major":
            work = [(h, cd) for cd in coords for h in heads_list]
        else:
            work = [(h, cd) for h in heads_list for cd in coords]
        programs += len(work)
        conc = max(1, int(concurrent))
        active: list = []
        it = iter(work)

        def start(item):
            h, cd = item
            pad = Scratchpad(caps)
            gen = sim.run(rest, dict(cd), loops0, pad, h)
            return [gen, pad]

        def finish(entry):
            for k, v in entry[1].peak.items():
                peak[k] = max(peak[k], v)

        if conc == 1:
            for item in work:
                entry = start(item)
                for _ in entry[0]:
                    pass
                finish(entry)
        else:
            for item in it:
                active.append(start(item))
                if len(active) >= conc:
                    break
            while active:
                nxt = []
                for entry in active:
                    try:
                        next(entry[0])
                        nxt.append(entry)
                    except StopIteration:
                        finish(entry)
                        item = next(it, None)
                        if item is not None:
                            nxt.append(start(item))
                active = nxt
    l2info = None
    if l2 is not None:
        if flush:
            l2.flush()
        l2info = l2.to_dict()
    return TraceResult(reads=sim.reads, writes=sim.writes, peak_bytes=peak, programs=programs,
                       tile_events=sim.events, seconds=time.perf_counter() - t0, l2=l2info,
                       sizes=sz)
