"""A GPU L2 model: which bytes of an attention kernel's L2 traffic reach DRAM.

The SMEM-level model (what each thread block reads from beyond its own shared memory: Q once,
K and V once per query block, O once) is what the L2 *sees*. Which of those reads *miss*
depends on the cache and on which thread blocks run at the same time. This module simulates
that, at the granularity of key/value tiles:

* **concurrency** — ``SMs x blocks per SM``; blocks per SM come from the kernel's
  occupancy limits (registers, shared memory, warps), measured by Nsight Compute's launch
  statistics or estimated from the tiling (:func:`occupancy`);
* **dispatch order** — thread blocks start in linear block-id order as slots free up. The
  grid order decides what that order means: ``query-major`` (all query blocks of one head,
  then the next head: concurrent blocks share K/V) or ``head-major`` (one query block of every
  head, then the next: concurrent blocks belong to different heads);
* **causal imbalance** — a causal query block ``i`` reads only key blocks up to its diagonal,
  so blocks have different lengths and start at staggered times;
* **time** — blocks advance in lock step, one key block (K and V tile) per tick; all reads
  of one tick go through the cache in block-id order, so blocks that read the same tile in
  the same tick share one miss;
* **capacity** — an LRU cache of ``effective_fraction x L2 bytes``. On an H100 the 50 MiB L2
  is two partitions, and a line read by SMs on both sides is held in both, so data that every
  SM reads (K/V here) effectively has half the capacity: ``effective_fraction = 0.5``.

Predicted DRAM reads = compulsory Q reads + every K/V miss. Writes: O once.
"""
from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from dataclasses import asdict, dataclass

from iosim.errors import IosimError

MIB = 1024 * 1024


@dataclass(frozen=True)
class GpuL2:
    """The few GPU facts the L2 model needs (defaults: the lent H100 SXM)."""
    sms: int = 132
    l2_bytes: float = 50 * MIB
    effective_fraction: float = 0.5
    smem_per_sm: int = 228 * 1024
    smem_per_block: int = 227 * 1024
    regs_per_sm: int = 65536
    max_threads_per_sm: int = 2048
    max_blocks_per_sm: int = 32

    @property
    def capacity(self) -> float:
        return self.l2_bytes * self.effective_fraction

    @classmethod
    def from_hardware(cls, hw, **kw) -> "GpuL2":
        """From an :class:`iosim.hardware.Hardware` preset with L2 and SMEM levels."""
        l2 = hw.level("L2")
        smem = hw.level("SMEM")
        args = dict(l2_bytes=l2.total_capacity_bytes(),
                    sms=int(getattr(smem, "instances", 132) or 132))
        args.update(kw)
        return cls(**args)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Workload:
    """One forward attention launch as the L2 sees it."""
    batch: int
    heads: int
    seq_q: int
    seq_k: int
    head_dim: int
    causal: bool = False
    elem_bytes: int = 2
    block_m: int = 128
    block_n: int = 64
    grid_order: str = "query-major"
    blocks_per_sm: int | None = None
    num_warps: int = 8
    num_stages: int = 3
    kv_heads: int | None = None

    def __post_init__(self):
        if self.grid_order not in ("query-major", "head-major"):
            raise IosimError(f"grid order '{self.grid_order}' is not query-major or head-major")
        for k in ("batch", "heads", "seq_q", "seq_k", "head_dim", "block_m", "block_n"):
            if getattr(self, k) < 1:
                raise IosimError(f"{k} must be positive")

    @property
    def n_q_blocks(self) -> int:
        return -(-self.seq_q // self.block_m)

    @property
    def n_kv_blocks(self) -> int:
        return -(-self.seq_k // self.block_n)

    def kv_blocks_of(self, i: int) -> int:
        """Key blocks read by query block ``i`` (its diagonal when causal)."""
        if not self.causal:
            return self.n_kv_blocks
        last = min(self.seq_k, (i + 1) * self.block_m + (self.seq_k - self.seq_q))
        return max(0, -(-last // self.block_n))


def occupancy(w: Workload, gpu: GpuL2 = GpuL2(), *, regs_per_thread: int | None = None,
              smem_bytes: int | None = None) -> int:
    """Thread blocks per SM: the tightest of the register, shared-memory, thread and block
    limits. Without measured registers the estimate assumes a full register budget for
    d >= 128 (FA2-style kernels use about 200-255 registers per thread there)."""
    threads = 32 * w.num_warps
    if smem_bytes is None:
        smem_bytes = w.elem_bytes * (w.block_m * w.head_dim
                                     + max(1, w.num_stages - 1) * w.block_n * 2 * w.head_dim)
    if regs_per_thread is None:
        regs_per_thread = 224 if w.head_dim >= 128 else 128
    lim_smem = gpu.smem_per_sm // max(1, smem_bytes + 1024)
    regs_block = threads * (-(-regs_per_thread // 8) * 8)
    lim_regs = gpu.regs_per_sm // max(1, regs_block)
    lim_threads = gpu.max_threads_per_sm // threads
    return max(1, min(lim_smem, lim_regs, lim_threads, gpu.max_blocks_per_sm))


def smem_level_reads(w: Workload) -> dict:
    """The tile model (what L2 sees): Q once, K and V once per query block, O written once."""
    hq = w.batch * w.heads
    hk = w.batch * (w.kv_heads or w.heads)
    q = hq * w.seq_q * w.head_dim * w.elem_bytes
    tile_kv = 2 * w.block_n * w.head_dim * w.elem_bytes
    kv = 0
    for i in range(w.n_q_blocks):
        nk = w.kv_blocks_of(i)
        full = nk * tile_kv
        # the last key block may be partial: count only the keys that exist
        if nk == w.n_kv_blocks and w.seq_k % w.block_n:
            full -= (w.block_n - w.seq_k % w.block_n) * 2 * w.head_dim * w.elem_bytes
        kv += full
    kv *= hq
    o = hq * w.seq_q * w.head_dim * w.elem_bytes
    return {"q_bytes": q, "kv_bytes": kv, "read_bytes": q + kv, "write_bytes": o,
            "kv_compulsory_bytes": 2 * hk * w.seq_k * w.head_dim * w.elem_bytes}


def _schedule(w: Workload, slots: int, g: int):
    """(start tick, head, query block, length in chunks) of each block, in dispatch order."""
    hq = w.batch * w.heads
    nq = w.n_q_blocks
    if w.grid_order == "query-major":
        order = ((h, i) for h in range(hq) for i in range(nq))
    else:
        order = ((h, i) for i in range(nq) for h in range(hq))
    free = [0] * slots
    heapq.heapify(free)
    out = []
    for h, i in order:
        n = -(-w.kv_blocks_of(i) // g)
        t = heapq.heappop(free)
        out.append((t, h, i, n))
        heapq.heappush(free, t + max(n, 1))
    return out


def predict_dram(w: Workload, gpu: GpuL2 = GpuL2(), *, max_chunks: int = 64) -> dict:
    """Simulate the L2 for ``w``; return predicted DRAM read/write bytes and the breakdown.

    Key/value tiles are grouped into chunks of ``g`` consecutive key blocks so that a query
    block makes at most ``max_chunks`` steps (exact for ``g = 1``; coarser chunks keep the
    simulation fast at long sequences)."""
    bps = w.blocks_per_sm or occupancy(w, gpu)
    slots = gpu.sms * bps
    g = max(1, -(-w.n_kv_blocks // max_chunks))
    group = w.heads // (w.kv_heads or w.heads)
    kv_key_bytes = 2 * w.head_dim * w.elem_bytes          # one key's K and V
    chunk_keys = g * w.block_n
    n_chunks = -(-w.seq_k // chunk_keys)
    last_keys = w.seq_k - (n_chunks - 1) * chunk_keys
    q_tile = w.block_m * w.head_dim * w.elem_bytes
    sched = _schedule(w, slots, g)
    # accesses (tick, order, kind, key, bytes)
    events = []
    for order, (t0, h, i, n) in enumerate(sched):
        kvh = (h // w.heads) * (w.kv_heads or w.heads) + (h % w.heads) // group
        events.append((t0, order, 0, ("q", h, i), q_tile))
        for c in range(n):
            nb = (last_keys if c == n_chunks - 1 else chunk_keys) * kv_key_bytes
            events.append((t0 + c, order, 1, (kvh, c), nb))
        events.append((t0 + max(n, 1) - 1, order, 2, ("o", h, i), q_tile))
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    cap = gpu.capacity
    lru: OrderedDict = OrderedDict()
    used = 0.0
    kv_miss = 0.0
    kv_access = 0.0
    for _, _, kind, key, nb in events:
        if kind == 1:
            kv_access += nb
        if key in lru:
            lru.move_to_end(key)
            continue
        if kind == 1:
            kv_miss += nb
        lru[key] = nb
        used += nb
        while used > cap and lru:
            _, b = lru.popitem(last=False)
            used -= b
    sm = smem_level_reads(w)
    dram_read = sm["q_bytes"] + kv_miss
    return {"dram_read_bytes": dram_read, "dram_write_bytes": sm["write_bytes"],
            "kv_miss_bytes": kv_miss, "kv_access_bytes": kv_access,
            "q_bytes": sm["q_bytes"], "kv_compulsory_bytes": sm["kv_compulsory_bytes"],
            "l2_read_bytes": sm["read_bytes"], "blocks_per_sm": bps, "concurrent_blocks": slots,
            "chunk_key_blocks": g, "capacity_bytes": cap,
            "dram_over_compulsory": dram_read / (sm["q_bytes"] + sm["kv_compulsory_bytes"])}
