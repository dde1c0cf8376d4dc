"""A GPU L2 model: which bytes of an attention kernel's L2 traffic reach DRAM.

The SMEM-level model (what each thread block reads from beyond its own shared memory: Q once,
K and V once per query block, O once) is what the L2 *sees*. Which of those reads *miss*
depends on the cache and on which thread blocks run at the same time. :func:`predict_dram`
simulates that (``model="dynamic"``, the default), from mechanisms whose parameters are
hardware facts or were measured by microbenchmarks on other shapes and access patterns
(:mod:`iosim.l2.microbench`), never fitted to the validated launches:

* **concurrency and dispatch** — ``SMs x blocks per SM`` slots (occupancy from the kernel's
  registers and shared memory); thread blocks start in linear block-id order as slots free
  up, the first wave one block per SM, then the second block of each SM. The grid order
  decides what the block-id order means: ``query-major`` (all query blocks of one head, then
  the next head) or ``head-major`` (one query block of every head, then the next);
* **progress rates** — a block goes through its key/value tiles at the SM's compute rate
  (measured per tile from ``%globaltimer`` traces of the kernel). Blocks that share an SM
  do *not* share it evenly: the older block runs about 1.3x faster than the younger one
  (measured share 0.57; 0.53 in causal launches). Before its first key block a block spends
  its measured startup (3.48 us: loads issued and waited for) computing nothing, its SM left
  to the other block (``block_startup_us``, on by default; the rates are then those of the
  key blocks alone). So, with two blocks per SM, the two slots
  of every SM drift to half
  a block's lifetime apart — two cohorts that read each head's K/V at different times;
* **DRAM** — a miss must be fetched before the block can use it; misses share the DRAM
  bandwidth (3.0 TB/s), so blocks that miss slow down, and blocks that hit run ahead. A
  block's fetches run ``num_stages - 1`` key blocks ahead of its compute, across the ends of
  the model's chunks, as the kernel's pipeline does (``prefetch_across_chunks``, on by
  default).
  A block that asks for a tile another block is still fetching waits for that fetch
  (no second DRAM read) and then moves at the fetcher's pace: blocks of a head form
  convoys that share misses;
* **pace noise** — blocks do not keep exactly equal paces: a block's time per key block
  varies by ``block_jitter`` (3.4%, independently per key block, so a block's pace differs by
  3.4%/sqrt(key blocks)), measured as the within-SM spread of block durations in the traces;
  by ``block_jitter_pair`` (7.9%) where two blocks share an SM (the residual of the sharing
  fit in traced launches without DRAM waits, ``microbench.pair_jitter``).
  This makes blocks of one head that start together in an early wave start apart in later
  ones, as the traces show;
* **the two L2 partitions** (``kv_weight="partitions"``, the default) — the H100's L2 is two
  partitions; a latency map (``experiments/device/l2_latency_map.py``) gives which SMs sit on
  which side (``L2_SIDE_A``) and shows lines alternating between the partitions every 256 B.
  Half of every chunk lives in each partition, a read touches both halves where they live and
  a copy of the far half on the reader's side, and DRAM is read when a half's own partition
  lost it. Each partition is a cache state (``l2_policy="nru"``, the default): 26 of the
  50 MiB (the shared scan's half-miss point) in 16-way sets of 4 KiB units, NRU bits with
  CLOCK's victim rule (a hand per set, ``nru_victim``), the set index hashed so that a buffer
  spreads evenly (:mod:`iosim.l2.state`); or (``l2_policy="response"``) an LRU answering by
  the measured reuse-distance response below. The first wave's blocks land on the SMs in the
  measured order ``DISPATCH_ORDER``. Registered next to the readers rule before measuring
  (16 launches), it was within 15% on 10, the readers rule on 6;
* **(the earlier default) lines read by few blocks cost less** (``kv_weight="readers"``) — a
  cyclic re-read whose lines are each read by k of 132 blocks (one per SM) keeps more of the
  buffer the fewer readers a line has: half-miss at 36.6 MiB for k = 1, 33.4 for 11, 27.9 for
  33, 26.4 for 132 (``microbench readers``). A K/V chunk costs ``reader_weight(blocks that
  read it since it was fetched)`` of a line read by every SM (0.72 for one reader to 1.0).
  The rule before it (``kv_weight="sides"``: a line read from one L2 side costs 0.73) is kept
  for comparison; the latency map explains why ``microbench sides`` seemed to contradict it;
* **causal imbalance** — a causal query block reads key blocks up to its diagonal only;
* **capacity** — the L2 answers a re-read according to its reuse distance D (bytes of
  other data touched since): the miss probability m(D) was measured by a cyclic-scan
  microbenchmark (``microbench scan``): for data that SMs on both sides of the two L2
  partitions read (K and V), m = 0 up to 24 MiB, 0.36 at 26, 0.82 at 28 and 1 from 30 MiB
  (each such line is held in both partitions: about half the 50 MiB). Data read by one SM
  (Q) or written by one (O): with the partitions, half in each and a copy of the far half on
  the block's side; with the readers rule, 0.73 of a shared line (the ratio of the two
  measured cliffs).

Predicted DRAM reads = compulsory Q reads + the expected K/V misses. Writes: O once.

``model="lockstep"`` keeps the earlier model (blocks in lock step at one key block per
tick, an LRU of ``effective_fraction x L2``) for comparison.
"""
from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import asdict, dataclass, field

import numpy as np

from iosim.errors import IosimError
from iosim.l2.measured import (BLOCK_STARTUP_US, READER_WEIGHTS, SCAN_PRIVATE,  # noqa: F401
                               SCAN_SHARED, SM_RATES_STARTUP)
from iosim.l2.state import NruSets, access_one, scan_ways

try:   # the NRU state's reads compiled (the same results; numpy without numba)
    from numba import njit
except ImportError:   # pragma: no cover - numba is optional (the [sim] extra)
    njit = None

MIB = 1024 * 1024
#: resolution of the dynamic model: a chunk of key blocks is at most 1/CHUNK_DIV of the reuse
#: horizon, and a time step is 1/DT_DIV of the time a block takes for one chunk
DT_DIV = 8.0
CHUNK_DIV = 160


#: how much longer a key block from DRAM takes than one read from L2 a few us behind the
#: block that fetched it, by the DRAM load u (bandwidth the misses get / 3.0 TB/s): the follow
#: microbenchmark (leaders and followers on the same K/V at one moment,
#: experiments/data/gpu_follow.csv and gpu_follow_8k.csv; microbench.follow_stats: followers
#: 2.5-8 us behind that still trail at the end; tests/test_l2model.py recomputes it): head dim
#: -> ((u, slowdown), ...). Beyond the last point (d=128: u = 0.89) the followers catch their
#: leaders and nothing clean is measured; it is held there (near 3 TB/s at least 4%)
MISS_SLOWDOWN = {
    128: ((0.041, 0.0016), (0.162, 0.0048), (0.332, 0.0065), (0.492, 0.0045), (0.602, 0.0045),
          (0.630, 0.0049), (0.748, 0.0102), (0.772, 0.0104), (0.888, 0.0212)),
    64: ((0.027, 0.0095), (0.107, 0.0054), (0.220, 0.0065), (0.331, 0.0077), (0.429, 0.0068),
         (0.536, 0.0096), (0.640, 0.0145), (0.735, 0.0192)),
}

#: SM ids on one side ("A") of the H100's two L2 partitions, the other 66 on side "B": the
#: latency map (experiments/device/l2_latency_map.py, experiments/data/gpu_l2_latency.npz:
#: each SM reaches half of the lines ~31 cycles sooner than the other half, and which half
#: alternates every 256 bytes; iosim.l2.partitions.split). Measured on one machine: another
#: H100 splits differently (gpu_l2_latency_2.npz), with the same one-sided dispatch rows
L2_SIDE_A = (0, 1, 2, 3, 4, 5, 12, 13, 16, 17, 18, 19, 20, 21, 28, 29, 32, 33, 34, 35, 36, 37,
             44, 45, 48, 49, 50, 51, 52, 53, 60, 61, 64, 65, 66, 67, 74, 75, 78, 79, 80, 81, 88,
             89, 92, 93, 94, 95, 102, 103, 106, 107, 108, 109, 116, 117, 120, 121, 124, 125,
             126, 127, 128, 129, 130, 131)
#: the SMs that the first wave's block ids 0, 1, 2, ... land on (the block traces: SMs 124-131,
#: then pairs of SMs dealt round-robin over the eight GPCs; where that cycle is entered varies
#: from launch to launch -- this one enters it at each GPC's first pair)
DISPATCH_ORDER = (124, 125, 126, 127, 128, 129, 130, 131, 0, 1, 16, 17, 32, 33, 48, 49, 2, 3, 18,
                  19, 34, 35, 50, 51, 64, 65, 78, 79, 92, 93, 106, 107, 4, 5, 20, 21, 36, 37,
                  52, 53, 66, 67, 80, 81, 94, 95, 108, 109, 6, 7, 22, 23, 38, 39, 54, 55, 68,
                  69, 82, 83, 96, 97, 110, 111, 8, 9, 24, 25, 40, 41, 56, 57, 70, 71, 84, 85,
                  98, 99, 112, 113, 10, 11, 26, 27, 42, 43, 58, 59, 72, 73, 86, 87, 100, 101,
                  114, 115, 12, 13, 28, 29, 44, 45, 60, 61, 74, 75, 88, 89, 102, 103, 116, 117,
                  120, 121, 14, 15, 30, 31, 46, 47, 62, 63, 76, 77, 90, 91, 104, 105, 118, 119,
                  122, 123)

#: the NRU state's partition as a fraction (numerator, denominator) of the L2: the shared
#: scan's half-miss point, 26 of the H100's 50 MiB (GpuL2.nru_partition_bytes)
NRU_PARTITION_OF_L2 = (26, 50)

#: see GpuL2.block_jitter
BLOCK_JITTER = 0.034
#: persistent pace differences between SMs measured in the same traces (relative sd, mean of
#: 12 launches); the default leaves them out (GpuL2.sm_pace_spread = 0): with them the model's
#: convoys of 64Kx128 head-major blocks dissolve (+136% DRAM), which the counters contradict
#: -- the model lacks whatever keeps real convoys together (docs/notes/l2_research_history.md)
SM_PACE_SPREAD_MEASURED = 0.0013


def _half_point(curve) -> float:
    xs = [x for x, _ in curve]
    ys = [y for _, y in curve]
    return float(np.interp(0.5, ys, xs))


#: per-SM compute rate of the validated tiling (BLOCK_M=128, BLOCK_N=64, 8 warps, 3 stages),
#: in MFLOP/us, from %globaltimer traces of shapes outside the validation set
#: (experiments/data/gpu_trace_fit.csv, query-major launches): head dim -> (one block alone,
#: two blocks together, share of the older of two co-resident blocks in non-causal launches)
SM_RATES = {128: (3.90, 3.90, 0.5), 64: (2.63, 3.46, 0.570)}
#: the older block's share in causal launches, where co-resident blocks differ in length (the
#: causal query-major trace of the same file; 0.532 in the traced 1x16x32Kx64 causal launch)
SM_SHARE_CAUSAL = {64: 0.534}
#: see GpuL2.block_jitter_pair: the per-block duration residual after the sharing fit, times
#: sqrt(key blocks), in the two-blocks-per-SM query-major launches without DRAM waits outside
#: the validation set (gpu_traced.npz: 1x24x32Kx64 8.1%, 1x6x64Kx64 7.6%; first wave left out)
BLOCK_JITTER_PAIR = 0.079
#: BLOCK_STARTUP_US, SM_RATES_STARTUP (iosim.l2.measured): a block's measured startup and the
#: rates of the key blocks alone; SM_RATES spread the startup over the key blocks of 8K-32K
#: launches. d=128 causal rates apart:
SM_RATES_CAUSAL_STARTUP = {128: (3.9365, 3.9365)}
#: GpuL2(**BLOCK_STARTUP): the dynamic model with the startup and those rates (part of the
#: default; spelled out for the earlier variants, which run without it)
BLOCK_STARTUP = {"block_startup_us": BLOCK_STARTUP_US, "sm_rates": SM_RATES_STARTUP,
                 "sm_rates_causal": SM_RATES_CAUSAL_STARTUP}
#: GpuL2(**FIRST_CLEAR_NO_STARTUP): an earlier default, kept for comparison: NRU's first-clear
#: victim, no startup, SM_RATES, one pace-noise draw. CLOCK and the startup, registered next
#: to it before measurement, replaced it (docs/notes/l2_research_history.md)
FIRST_CLEAR_NO_STARTUP = {"nru_victim": "first", "block_startup_us": 0.0, "sm_rates": SM_RATES,
                        "sm_rates_causal": {}, "pace_draws": 1}
#: GpuL2(**ONE_PACE_DRAW): the default with one draw of the pace noise (seed 0) instead
#: of the fastest of three: the earlier default, kept for comparison (``iosim validate --l2
#: simulate --draws 1``)
ONE_PACE_DRAW = {"pace_draws": 1}


def _nearest_head_dim(table: dict, head_dim: int) -> int:
    """The measured head dim of ``table`` nearest to ``head_dim`` (ties: the smaller)."""
    return min(table, key=lambda d: (abs(d - head_dim), d))


@dataclass(frozen=True)
class GpuL2:
    """The GPU facts the L2 model needs (defaults: the lent H100 SXM, measured there)."""
    sms: int = 132
    l2_bytes: float = 50 * MIB
    effective_fraction: float = 0.5          # lockstep model only
    smem_per_sm: int = 228 * 1024
    smem_per_block: int = 227 * 1024
    regs_per_sm: int = 65536
    max_threads_per_sm: int = 2048
    max_blocks_per_sm: int = 32
    dram_bytes_per_us: float = 3.0e6         # 3.0 TB/s (device-to-device copy, h100.md)
    #: relative spread of one key block's time (blocks' paces differ by block_jitter/sqrt(key
    #: blocks)), from the %globaltimer traces (iosim.l2.microbench.pace_stats,
    #: experiments/data/gpu_trace_pace.csv: within-SM spread of block durations)
    block_jitter: float = BLOCK_JITTER
    #: the same for blocks on SMs that hold two (measured separately: 7.9%, twice the one-block
    #: value -- two blocks sharing an SM vary more; microbench.pair_jitter)
    block_jitter_pair: float = BLOCK_JITTER_PAIR
    sm_pace_spread: float = 0.0
    #: a block's DRAM fetches run `num_stages - 1` key blocks ahead across the end of the
    #: model's chunk, as the kernel's pipeline does (the default); off (an earlier default), a
    #: DRAM-bound block stops fetching at each chunk's end, which wastes bandwidth,
    #: synchronises DRAM-bound blocks at chunk boundaries and, with chunks of one key block,
    #: leaves the pipeline no lead at all
    prefetch_across_chunks: bool = True
    #: time from a block's start to the start of its first key block (us): its loads issued,
    #: waited for; the block fetches its first key blocks meanwhile but computes nothing, and
    #: a block sharing its SM computes alone meanwhile (the measured 3.48 us, the default, with
    #: the rates of the key blocks alone, SM_RATES_STARTUP; 0: none, as in an earlier default
    #: whose rates SM_RATES include it: FIRST_CLEAR_NO_STARTUP)
    block_startup_us: float = BLOCK_STARTUP_US
    #: how blocks that share an SM split it: "seniority" (the default: each its share by age,
    #: whatever the other does) or "work-conserving" (an option, not adopted: the same shares,
    #: but the time a block cannot use -- waiting on DRAM, on another block's fetch -- goes to
    #: the blocks beside it, each up to a lone block's rate, as an SM issues from whichever
    #: warps are ready; it matches the traced causal d=64 schedules' pace of a block beside a
    #: missing one better, not their DRAM bytes: experiments/l2_research/partner_pace.py)
    sm_sharing: str = "seniority"
    #: how many draws of the blocks' pace noise (seeds 0, 1, ...) the dynamic model runs; the
    #: prediction is the draw with the shortest makespan (3, the default; 1: seed 0 alone,
    #: ONE_PACE_DRAW): where the model's draws split between the convoy state and the
    #: slower state in which nearly every block misses, the GPU's kernel time matches the fast
    #: draws (docs/validation.md)
    pace_draws: int = 3
    #: (measured effect, not used) a block is slower through key blocks that come from DRAM
    #: than through hits, by ``miss_penalty / (1 - u)`` of its time per key block (times the
    #: part of its chunk that misses; u: the DRAM utilisation that the blocks' paces demand):
    #: the latency the kernel's pipeline does not hide, growing with the load like a queue's.
    #: The fetch microbenchmark measures about 0.005 (d=128: 1.087 vs 1.081 us per key block,
    #: one block alone) and 0.022 at u = 0.64. In the causal head-major regime this is a
    #: restoring force for convoys, and the predictions swing with it
    #: (docs/notes/l2_research_history.md)
    miss_penalty: float = 0.0
    #: a block is slower through key blocks that come from DRAM than one reading the same
    #: lines a few us later from L2, by ``slowdown(u)`` of its time per key block (times the
    #: part of its chunk that misses), the measured table MISS_SLOWDOWN (follow
    #: microbenchmark) interpolated at the DRAM load u that the blocks' paces demand; ``{}``
    #: off. A restoring force for convoys of blocks that share K/V
    miss_slowdown: dict = field(default_factory=dict, hash=False, compare=False)
    #: what a K/V line costs in L2 capacity: "partitions" (the default: the two L2 partitions
    #: modelled, see _predict_dynamic; sides of the SMs from the latency map, ``side_a``),
    #: "readers" (an earlier default: by how many thread blocks read it since it
    #: was fetched, the readers microbenchmark, READER_WEIGHTS), "sides" (private_weight until
    #: SMs on both L2 sides read it, sides drawn at random) or "shared" (always a shared line)
    kv_weight: str = "partitions"
    #: how a partition answers a re-read (kv_weight="partitions"): "nru" (the default: a cache
    #: state with NRU replacement, iosim.l2.state: lines read once can push out lines still
    #: being read, as the eviction-hint measurements show) or "response" (an earlier
    #: default: a miss fraction by the line's reuse distance in its partition, the
    #: measured shared scan; exact for LRU). None: "nru" with kv_weight="partitions", else
    #: "response" (the other K/V costs are responses)
    l2_policy: str | None = None
    #: where a unit's set is (l2_policy="nru"): "hashed" (every aligned run of as many units
    #: as sets covers each set once, in an order that depends on the run -- what an XOR set
    #: index does: a buffer spreads evenly and strides do not collide, as the set-conflict
    #: probe measured) or "linear" (unit pair i in set i % sets: strides of the set count
    #: collide, which the probe rules out for the H100)
    nru_set_map: str = "hashed"
    #: the NRU state: each partition the shared scan's half-miss point (None: 26/50 of
    #: ``l2_bytes``, 26 MiB of the H100's 50), in sets of ``nru_ways`` units of
    #: ``nru_unit_bytes``
    nru_partition_bytes: float | None = None
    nru_unit_bytes: int = 4096
    nru_ways: int = 16
    #: "sharp": every set ``nru_ways`` ways; "scan": sets of unequal ways, distributed as the
    #: measured shared-scan response (iosim.l2.state.scan_ways; the sets stay as many)
    nru_capacity: str = "sharp"
    #: which way a miss takes when none is empty: "first" (the first way whose bit is clear,
    #: all bits cleared when none is) or "clock" (CLOCK: a hand per set walks from where it
    #: stopped, clearing the bits it passes, to the first clear way; iosim.l2.state; the
    #: default: 109 of the 110 measured schedules replayed within 15%)
    nru_victim: str = "clock"
    #: SM ids on L2 side A (the rest: side B) and the SMs the first wave's blocks land on, in
    #: block-id order (kv_weight="partitions"; measured on the H100)
    side_a: tuple = L2_SIDE_A
    dispatch_order: tuple = DISPATCH_ORDER
    reader_weights: tuple = READER_WEIGHTS
    scan_shared: tuple = SCAN_SHARED
    scan_private: tuple = SCAN_PRIVATE
    sm_rates: dict = field(default_factory=lambda: dict(SM_RATES_STARTUP), hash=False,
                           compare=False)
    sm_share_causal: dict = field(default_factory=lambda: dict(SM_SHARE_CAUSAL), hash=False,
                                  compare=False)
    #: head dim -> (one block alone, two together) in causal launches where they differ from
    #: sm_rates (SM_RATES_CAUSAL_STARTUP, with the startup; none without it)
    sm_rates_causal: dict = field(default_factory=lambda: dict(SM_RATES_CAUSAL_STARTUP),
                                  hash=False, compare=False)

    def __post_init__(self):
        if self.l2_policy is None:
            object.__setattr__(self, "l2_policy",
                               "nru" if self.kv_weight == "partitions" else "response")
        if self.kv_weight not in ("readers", "sides", "shared", "partitions"):
            raise IosimError(f"kv_weight '{self.kv_weight}' is not readers, sides, shared or "
                             "partitions")
        if self.nru_capacity not in ("sharp", "scan"):
            raise IosimError(f"nru_capacity '{self.nru_capacity}' is not sharp or scan")
        if not (isinstance(self.pace_draws, int) and self.pace_draws >= 1):
            raise IosimError(f"pace_draws must be a whole number >= 1, not {self.pace_draws!r}")
        if self.sm_sharing not in ("seniority", "work-conserving"):
            raise IosimError(f"sm_sharing '{self.sm_sharing}' is not seniority or "
                             "work-conserving")
        if self.nru_victim not in ("first", "clock"):
            raise IosimError(f"nru_victim '{self.nru_victim}' is not first or clock")
        if self.nru_set_map not in ("hashed", "linear"):
            raise IosimError(f"nru_set_map '{self.nru_set_map}' is not hashed or linear")
        if self.l2_policy not in ("response", "nru"):
            raise IosimError(f"l2_policy '{self.l2_policy}' is not response or nru")
        if self.l2_policy == "nru" and self.kv_weight != "partitions":
            raise IosimError("l2_policy 'nru' needs kv_weight 'partitions'")
        if self.l2_policy == "nru" and not (
                0 < self.nru_unit_bytes and 0 < self.nru_ways
                and self.nru_unit_bytes * self.nru_ways <= self.nru_bytes):
            raise IosimError(f"an NRU partition of {self.nru_bytes:g} bytes cannot "
                             f"hold one set of {self.nru_ways} units of {self.nru_unit_bytes}")

    @property
    def nru_bytes(self) -> float:
        """Bytes of one partition's NRU state (``nru_partition_bytes`` or 26/50 of the L2)."""
        if self.nru_partition_bytes is not None:
            return self.nru_partition_bytes
        return self.l2_bytes * NRU_PARTITION_OF_L2[0] / NRU_PARTITION_OF_L2[1]

    @property
    def capacity(self) -> float:
        return self.l2_bytes * self.effective_fraction

    @property
    def private_weight(self) -> float:
        """What a line read (or written) by one SM costs in the capacity that shared lines
        see: the ratio of the two measured cliffs (about 0.73)."""
        return _half_point(self.scan_shared) / _half_point(self.scan_private)

    def reader_weight(self, readers):
        """Capacity cost of lines read by ``readers`` thread blocks (array-like)."""
        ks, ws = zip(*self.reader_weights)
        r = np.maximum(np.asarray(readers, dtype=float), 1.0)
        return np.interp(np.log(r), np.log(ks), ws)

    def miss_fraction(self, reuse_bytes: float) -> float:
        """Measured miss probability of a re-read after ``reuse_bytes`` of other data."""
        x = reuse_bytes / self.l2_bytes
        xs, ys = zip(*self.scan_shared)
        return float(np.interp(x, xs, ys))

    @property
    def horizon_bytes(self) -> float:
        """Beyond this reuse distance nothing survives (the curve's last point)."""
        return self.scan_shared[-1][0] * self.l2_bytes

    def rates(self, head_dim: int, causal: bool = False):
        """(one block alone, two together, the older one's share) for ``head_dim``."""
        near = _nearest_head_dim(self.sm_rates, head_dim)
        solo, pair, share = self.sm_rates[near]
        if causal and near in self.sm_rates_causal:
            solo, pair = self.sm_rates_causal[near]
        if causal and near in self.sm_share_causal:
            share = self.sm_share_causal[near]
        return solo, pair, share

    def slowdown_table(self, head_dim: int):
        """(u points, slowdowns) of ``miss_slowdown`` for ``head_dim`` (the nearest measured);
        two empty tuples where the table is off."""
        if not self.miss_slowdown:
            return (), ()
        us, ss = zip(*self.miss_slowdown[_nearest_head_dim(self.miss_slowdown, head_dim)])
        return us, ss

    @classmethod
    def from_hardware(cls, hw, **kw) -> "GpuL2":
        """From an :class:`iosim.hardware.Hardware` preset with L2 and SMEM levels."""
        l2 = hw.level("L2")
        smem = hw.level("SMEM")
        args = dict(l2_bytes=l2.total_capacity_bytes,
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


def predict_dram(w: Workload, gpu: GpuL2 = GpuL2(), *, model: str = "dynamic",
                 max_chunks: int | None = None) -> dict:
    """Simulate the L2 for ``w``; return predicted DRAM read/write bytes and the breakdown.

    ``model``: ``"dynamic"`` (default; see the module docstring), ``"lockstep"`` (the earlier
    model) or ``"lru"`` (the dynamic schedule with an all-or-nothing LRU of
    ``effective_fraction x L2`` instead of the measured reuse-distance curve). Key/value
    tiles are grouped into chunks of ``g`` consecutive key blocks so that a query block makes
    at most ``max_chunks`` steps (exact for ``g = 1``; coarser chunks keep it fast)."""
    if model in ("dynamic", "lru"):
        kw = {"max_chunks": max_chunks or 48, "lru": model == "lru"}
        if gpu.pace_draws == 1:
            return _predict_dynamic(w, gpu, **kw)
        draws = [_predict_dynamic(w, gpu, seed=k, **kw) for k in range(gpu.pace_draws)]
        best = min(range(len(draws)), key=lambda k: (draws[k]["makespan_us"], k))
        return {**draws[best], "draw": best,
                "draw_makespans_us": [d["makespan_us"] for d in draws],
                "draw_dram_read_bytes": [d["dram_read_bytes"] for d in draws]}
    if model != "lockstep":
        raise IosimError(f"unknown L2 model '{model}' (expected dynamic, lockstep or lru)")
    return _predict_lockstep(w, gpu, max_chunks=max_chunks or 64)


def _predict_lockstep(w: Workload, gpu: GpuL2, *, max_chunks: int = 64) -> dict:
    """The lock-step LRU model: blocks advance one chunk per tick; LRU of capacity
    ``effective_fraction x L2``."""
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


# --------------------------------------------------------------------------- dynamic model
def _held_fraction(chunks, held, g: int, keys_in_chunk: np.ndarray, w: "Workload"):
    """What ``held`` key blocks of chunks ``chunks`` (g key blocks each; a head's last chunk may
    be partial, ``keys_in_chunk``) weigh in units of a full chunk's bytes."""
    return held * keys_in_chunk[chunks] / (
        np.minimum(g, w.n_kv_blocks - chunks * g) * g * w.block_n)


def _blocks(w: Workload):
    """(head, query block, key blocks) of every thread block in dispatch order."""
    hq = w.batch * w.heads
    nq = w.n_q_blocks
    i = np.arange(nq)
    if w.causal:
        last = np.minimum(w.seq_k, (i + 1) * w.block_m + (w.seq_k - w.seq_q))
        nk = np.maximum(0, -(-last // w.block_n))
    else:
        nk = np.full(nq, w.n_kv_blocks)
    if w.grid_order == "query-major":
        H = np.repeat(np.arange(hq), nq)
        Q = np.tile(i, hq)
    else:
        H = np.tile(np.arange(hq), nq)
        Q = np.repeat(i, hq)
    return H, Q, nk[Q]


class _Touches:
    """The L2's recency stack as a log of touches: ``w[seq]`` is the weight (bytes, in units
    of shared-line capacity) of touch ``seq`` while it is the latest touch of a line that is
    still held, 0 otherwise. The reuse distance of a line last touched at ``seq`` is the
    weight of all later touches; lines whose distance exceeds ``horizon`` are dropped."""

    def __init__(self, n: int, horizon: float):
        self.w = np.zeros(n + 1)
        self.n = 0                 # touches so far
        self.lo = 0                # oldest touch that may still be held
        self.horizon = horizon
        self._cum = None

    def distances(self, seqs: np.ndarray) -> np.ndarray:
        """Reuse distance of lines last touched at ``seqs`` (inf where no longer held)."""
        if self._cum is None:
            self._cum = np.cumsum(self.w[self.lo:self.n])
        cum = self._cum
        tot = cum[-1] if len(cum) else 0.0
        held = seqs >= self.lo
        idx = np.clip(seqs - self.lo, 0, max(len(cum) - 1, 0))
        d = tot - (cum[idx] if len(cum) else 0.0)
        return np.where(held & (seqs >= 0), d, np.inf)

    def add(self, weights: np.ndarray) -> np.ndarray:
        k = len(weights)
        if self.n + k > len(self.w):
            self.w = np.concatenate([self.w, np.zeros(max(k, len(self.w)))])
        seqs = np.arange(self.n, self.n + k)
        self.w[self.n:self.n + k] = weights
        self.n += k
        self._cum = None
        return seqs

    def drop(self, seqs: np.ndarray) -> None:
        seqs = seqs[seqs >= self.lo]
        self.w[seqs] = 0.0
        self._cum = None

    def compact(self, kseq: np.ndarray) -> None:
        """Drop dead touches from the window and renumber (``kseq`` is updated in place)."""
        win = self.w[self.lo:self.n]
        live = np.flatnonzero(win)
        if len(live) * 2 + 1024 > len(win):
            return
        old = live + self.lo
        self.w[:len(live)] = win[live]
        self.w[len(live):self.n] = 0.0
        held = kseq >= self.lo
        pos = np.searchsorted(old, kseq[held])
        ok = (pos < len(old)) & (old[np.minimum(pos, len(old) - 1)] == kseq[held])
        new = np.full(held.sum(), -1)
        new[ok] = pos[ok]
        kseq[~held] = -1
        kseq[held] = new
        self.lo, self.n = 0, len(live)
        self._cum = None

    def evict(self) -> None:
        """Advance past touches that are dead or beyond the horizon."""
        cum = np.cumsum(self.w[self.lo:self.n])
        if not len(cum):
            return
        tot = cum[-1]
        if tot > self.horizon:
            # keep the newest touches whose weight adds up to the horizon
            cut = int(np.searchsorted(cum, tot - self.horizon, side="right"))
        else:
            nz = np.flatnonzero(self.w[self.lo:self.n])
            cut = int(nz[0]) if len(nz) else len(cum)
        if cut:
            self.w[self.lo:self.lo + cut] = 0.0
            self.lo += cut
            self._cum = None


def _mix64(x: np.ndarray) -> np.ndarray:
    """A 64-bit finaliser (MurmurHash3's fmix64; the same as
    experiments/l2_research/csrc/l2_policy.c's)."""
    x = np.asarray(x, dtype=np.uint64)
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xFF51AFD7ED558CCD)
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xC4CEB9FE1A85EC53)
    return x ^ (x >> np.uint64(33))


def _read_units_py(tag, used, absent, hand, clock, unit, home, copy_side, per, hashed, miss):
    """:meth:`_UnitMap._read` one unit at a time (compiled with numba): each unit's home half,
    then its copy where ``copy_side`` is the other partition, in the state's arrays; the set
    of unit pair ``unit >> 1`` as :func:`set_index` gives it. Fills ``miss`` (home reads);
    returns how many empty ways were filled."""
    n_per = np.uint64(per)
    filled = 0
    for i in range(len(unit)):
        u = unit[i]
        pair = np.uint64(u >> 1)
        s = pair % n_per
        if hashed:
            x = pair // n_per
            x = x ^ (x >> np.uint64(33))
            x = x * np.uint64(0xFF51AFD7ED558CCD)
            x = x ^ (x >> np.uint64(33))
            x = x * np.uint64(0xC4CEB9FE1A85EC53)
            x = x ^ (x >> np.uint64(33))
            s = (s + x) % n_per
        r = access_one(tag, used, absent, hand, home[i] * per + np.int64(s), 2 * u, clock)
        miss[i] = r > 0
        filled += r == 2
        c = copy_side[i]
        if c >= 0 and c != home[i]:
            r = access_one(tag, used, absent, hand, c * per + np.int64(s), 2 * u + 1, clock)
            filled += r == 2
    return filled


_read_units = njit(cache=True, nogil=True)(_read_units_py) if njit is not None else None


def set_index(pair: np.ndarray, n_sets: int, set_map: str = "hashed") -> np.ndarray:
    """The set of unit pair ``pair`` among ``n_sets``: "linear" ``pair % n_sets``; "hashed"
    ``pair % n_sets`` rotated by a hash of ``pair // n_sets``, so that every aligned run of
    ``n_sets`` pairs is a permutation of the sets (balanced like an XOR set index)."""
    pair = np.asarray(pair, dtype=np.int64)
    if set_map == "linear":
        return pair % n_sets
    n = np.uint64(n_sets)
    u = pair.astype(np.uint64)
    return ((u % n + _mix64(u // n)) % n).astype(np.int64)


class _UnitMap:
    """Where the units of a launch's tiles live (l2_policy="nru"), as
    experiments/l2_research/csrc/l2_policy.c places them: tile t (K and V of one key block of one K/V head, or one block's Q
    or O tile) is cut into ``nu >= 2`` units of about ``unit_bytes``; unit u of it is homed in
    partition ``u % 2``; its set is ``set_index(unit id // 2)`` (``set_map``); a reader on the
    other side also reads a copy of it in its own partition."""

    def __init__(self, w: Workload, unit_bytes: int, set_map: str = "hashed"):
        self.set_map = set_map
        self.n_kv = w.n_kv_blocks
        self.nu_kv = max(2, -(-2 * w.block_n * w.head_dim * w.elem_bytes // unit_bytes))
        self.nu_q = max(2, -(-w.block_m * w.head_dim * w.elem_bytes // unit_bytes))
        n_kv_tiles = w.batch * (w.kv_heads or w.heads) * self.n_kv
        self.q_base = n_kv_tiles * self.nu_kv          # unit ids of Q and O tiles from here

    def _read(self, l2sets, unit, home, copy_side):
        """Per unit (in this order): its home half in partition ``home``, then, where
        ``copy_side`` is the other partition, a copy in that one. Whether each home read
        missed. ``l2sets`` holds both partitions: partition p's set s is its set
        ``p * sets per partition + s`` (the sets are independent, so one state for the two
        is the two states, in one call)."""
        per = l2sets.n_sets // 2
        if l2sets.compiled and _read_units is not None:
            miss = np.zeros(len(unit), dtype=bool)
            l2sets.note_empty_filled(_read_units(
                l2sets.tag, l2sets.used, l2sets.absent, l2sets.hand, l2sets.victim == "clock",
                np.asarray(unit, dtype=np.int64), np.asarray(home, dtype=np.int64),
                np.asarray(copy_side, dtype=np.int64), per, self.set_map == "hashed", miss))
            return miss
        has_copy = (copy_side >= 0) & (copy_side != home)
        n = len(unit)
        part = np.concatenate([home, copy_side[has_copy]])
        key = np.concatenate([2 * unit, 2 * unit[has_copy] + 1])
        pos = np.concatenate([2 * np.arange(n), 2 * np.flatnonzero(has_copy) + 1])
        miss = np.zeros(len(key), dtype=bool)
        o = np.argsort(pos, kind="stable")
        k = key[o]
        miss[o] = l2sets.access(part[o] * per + set_index(k >> 2, per, self.set_map), k)
        return miss[:n]

    def read_kv(self, l2sets, head, chunk, g: int, tmax, per_tile, inv, tiles, side):
        """Chunks (``head``, ``chunk``) of ``g`` key blocks, ``tmax`` of them read, by readers
        (index ``inv`` into the chunks, ``tiles`` key blocks each, on L2 side ``side``): each
        chunk's home units once (its first reader fetches them), the copies of the far units
        by the key blocks the chunk's readers on that side read. DRAM bytes of each chunk."""
        nu = self.nu_kv
        n = tmax.astype(np.int64)
        which = np.repeat(np.arange(len(n)), n)
        kb = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        unit = ((head[which] * self.n_kv + chunk[which] * g + kb)[:, None] * nu
                + np.arange(nu)).ravel()
        owner = np.repeat(which, nu)
        home = np.tile(np.arange(nu) & 1, len(kb))
        reach = np.zeros((len(n), 2))
        np.maximum.at(reach, (inv, side), tiles)
        kb_u = np.repeat(kb, nu)
        # the copy of a unit on the far side: read where a reader there reaches its key block
        far = 1 - home
        copy_side = np.where(kb_u < reach[owner, far], far, -1)
        # the chunks' key blocks interleaved (first key block of every chunk, then the
        # second, ...): the blocks of a time step read their chunks side by side, as the
        # replays of measured schedules spread each block's key blocks over its lifetime
        o = np.lexsort((np.arange(len(unit)), owner, kb_u))
        miss = np.zeros(len(unit), dtype=bool)
        miss[o] = self._read(l2sets, unit[o], home[o], copy_side[o])
        ub = np.repeat(per_tile[which] / nu, nu)
        return np.bincount(owner[miss], weights=ub[miss], minlength=len(n))

    def read_private(self, l2sets, tiles, side) -> None:
        """Q tiles (``tiles`` = block ids) or O tiles (block ids + blocks) of blocks on
        ``side``: capacity only (never re-read)."""
        nu = self.nu_q
        unit = (self.q_base + np.asarray(tiles, dtype=np.int64)[:, None] * nu
                + np.arange(nu)).ravel()
        self._read(l2sets, unit, np.tile(np.arange(nu) & 1, len(tiles)), np.repeat(side, nu))


def _predict_dynamic(w: Workload, gpu: GpuL2, *, max_chunks: int = 48,
                     chunk: int | None = None, record: bool = False, lru: bool = False,
                     jitter: float | None = None, seed: int = 0) -> dict:
    """The dynamic model (module docstring). ``record``: also return each block's start and
    end time (us) and SM; ``lru``: a sharp LRU cliff at ``effective_fraction x L2``;
    ``jitter``: override ``gpu.block_jitter``; ``seed``: of the blocks' random paces."""
    bps = w.blocks_per_sm or occupancy(w, gpu)
    sms = gpu.sms
    S = sms * bps
    eb = w.elem_bytes
    H, QB, NK = _blocks(w)
    nb = len(H)
    kvH = w.kv_heads or w.heads
    group = w.heads // kvH
    KVH = (H // w.heads) * kvH + (H % w.heads) // group
    tile_bytes = 2 * w.block_n * w.head_dim * eb            # K and V tile of one key block
    # chunks of g key blocks: fine against the reuse horizon (1/CHUNK_DIV of it); blocks with
    # few key blocks get at least min(max_chunks, key blocks) steps
    g_cap = max(1, int(gpu.horizon_bytes / CHUNK_DIV // tile_bytes))
    g = max(1, min(g_cap, -(-w.n_kv_blocks // max(8, min(max_chunks, w.n_kv_blocks)))))
    g = min(g, g_cap) if chunk is None else chunk
    NCH = -(-NK // g)
    n_ch = -(-w.n_kv_blocks // g)
    keys_in_chunk = np.full(n_ch, g * w.block_n, dtype=float)
    keys_in_chunk[-1] = w.seq_k - (n_ch - 1) * g * w.block_n
    q_tile = w.block_m * w.head_dim * eb
    key_bytes = 2 * w.head_dim * eb
    solo, pair, senior = gpu.rates(w.head_dim, w.causal)
    tile_mflop = 4.0 * w.block_m * w.block_n * w.head_dim / 1e6
    r_solo = solo / tile_mflop                               # key blocks per us
    r_pair = pair / tile_mflop
    lead = max(0, w.num_stages - 1)                          # key blocks fetched ahead
    across = gpu.prefetch_across_chunks
    bw = gpu.dram_bytes_per_us
    wp = gpu.private_weight
    curve = tuple(zip(*gpu.scan_shared))
    if lru:
        cliff = gpu.effective_fraction
        curve = ((0.0, cliff, cliff + 1e-9, 10.0), (0.0, 0.0, 1.0, 1.0))
    n_keys = (w.batch * kvH) * n_ch
    kseq = np.full(n_keys, -1)              # latest touch of each chunk
    extent = np.zeros(n_keys)               # key blocks of the chunk held
    kload = np.full(n_keys, -1)             # slot fetching the chunk
    sides = np.zeros(n_keys, dtype=np.int64)  # L2 sides whose SMs read the chunk (bits)
    nread = np.zeros(n_keys)                  # blocks that read the chunk since it was fetched
    total_touch = int(NCH.sum()) + 2 * nb + 8
    log = _Touches(total_touch, gpu.horizon_bytes)
    blk = np.full(S, -1)
    sm_of = np.arange(S) % sms
    part = gpu.kv_weight == "partitions"
    if part and len(gpu.dispatch_order) == sms:
        # slot i holds the first wave's block i: the measured dispatch order and L2 sides
        real = np.asarray(gpu.dispatch_order)
        side_of_sm = np.where(np.isin(real, gpu.side_a), 0, 1).astype(np.int64)
    else:
        # which L2 side each SM is on is not known: half of the SMs, at random (fixed seed)
        side_of_sm = np.zeros(sms, dtype=np.int64)
        side_of_sm[np.random.default_rng(12345).permutation(sms)[: sms // 2]] = 1
    side_bit = 1 << side_of_sm[sm_of]
    side_slot = side_of_sm[sm_of]
    # kv_weight="partitions": each partition is an LRU of its own (log: side A, log_b: side B).
    # Half of every chunk's lines live in each (the 256-byte interleave); a read touches both
    # halves where they live and a copy of the far half on the reader's side; DRAM is read
    # when the half's own partition no longer holds it. kside[:, 0]: touch of the half that
    # lives on the side, kside[:, 1]: of the copy of the other half (log for A, log_b for B)
    kside = [np.full((n_keys, 2), -1), np.full((n_keys, 2), -1)] if part else None
    log_b = _Touches(total_touch, gpu.horizon_bytes) if part else None
    # l2_policy="nru": each partition a cache state (iosim.l2.state) instead of the touch logs,
    # the units of every tile placed by _UnitMap
    nru = part and gpu.l2_policy == "nru" and not lru   # model="lru": the sharp cliff instead
    if nru:
        n_sets = int(gpu.nru_bytes // (gpu.nru_unit_bytes * gpu.nru_ways))
        ways = gpu.nru_ways if gpu.nru_capacity == "sharp" else scan_ways(
            gpu.scan_shared, gpu.l2_bytes, n_sets, gpu.nru_unit_bytes)
        # the two partitions in one state: partition p's set s is set p * n_sets + s
        l2sets = NruSets(2 * n_sets, np.tile(np.broadcast_to(ways, (n_sets,)), 2),
                       victim=gpu.nru_victim)
        umap = _UnitMap(w, gpu.nru_unit_bytes, gpu.nru_set_map)
    start = np.zeros(S)
    ready = np.zeros(S)                     # when a block's first key block can begin
    ch = np.zeros(S, dtype=np.int64)
    glen = np.zeros(S)
    prog = np.zeros(S)
    need = np.zeros(S)
    got = np.zeros(S)
    dep = np.full(S, -1)
    key = np.full(S, -1)
    sig = (gpu.block_jitter if bps == 1 else gpu.block_jitter_pair) if jitter is None else jitter
    rng = np.random.default_rng(seed)
    jit = np.ones(S)
    # persistent speed differences between SMs (sd gpu.sm_pace_spread), fixed per SM
    sm_pace = 1.0 + rng.standard_normal(sms) * gpu.sm_pace_spread
    st = {"dram": 0.0, "access": 0.0, "cold": 0.0, "reuse": 0.0, "follow": 0.0, "next": 0}
    hist_d, hist_b = [], []
    b_start = np.zeros(nb)
    b_end = np.zeros(nb)
    b_slot = np.zeros(nb, dtype=np.int64)

    def add_private(sl: np.ndarray, nbytes: float, out: bool = False) -> None:
        """Lines one block reads or writes (its Q tile, its O tile): a shared line's cost times
        private_weight; with partitions, half in each and a copy of the far half on the
        block's side."""
        if not part:
            log.add(np.full(len(sl), wp * nbytes / (g * tile_bytes)))
            return
        if nru:
            umap.read_private(l2sets, blk[sl] + (nb if out else 0), side_slot[sl])
            return
        h = 0.5 * nbytes / (g * tile_bytes)
        log.add(h * (1.0 + (side_slot[sl] == 0)))
        log_b.add(h * (1.0 + (side_slot[sl] == 1)))

    def access(sl: np.ndarray, now: float) -> None:
        """Slots ``sl`` start reading chunk ``ch[sl]`` of their blocks."""
        if not len(sl):
            return
        b = blk[sl]
        c = ch[sl]
        k = KVH[b] * n_ch + c
        tiles = np.minimum(g, NK[b] - c * g).astype(float)
        per_tile = keys_in_chunk[c] / np.minimum(g, w.n_kv_blocks - c * g) * key_bytes
        nbytes = tiles * per_tile
        # the first slot of the batch to touch a chunk fetches (all key blocks of it that any
        # slot of the batch reads); later ones see it just touched
        if len(set(k.tolist())) == len(k):
            uk, first, inv = k, np.arange(len(k)), np.arange(len(k))
            is_first = np.ones(len(sl), bool)
            tmax = tiles
        else:
            uk, first, inv = np.unique(k, return_index=True, return_inverse=True)
            is_first = np.zeros(len(sl), bool)
            is_first[first] = True
            tmax = np.zeros(len(uk))
            np.maximum.at(tmax, inv, tiles)
        tk = tmax[inv]
        if nru:
            dram = umap.read_kv(l2sets, uk // n_ch, uk % n_ch, g, tmax, per_tile[first], inv,
                                tiles, side_slot[sl])
            nd = np.where(is_first, dram[inv], 0.0)
            fin = extent[k] > 0
            cold = np.where(is_first, per_tile * np.maximum(0.0, tk - extent[k]), 0.0)
            cold = np.minimum(cold, nd)
            dist = np.where(fin, 0.0, np.inf)
        elif part:
            # each half of the chunk by the partition it lives in
            nd = np.zeros(len(k))
            cold = np.zeros(len(k))
            dist = np.full(len(k), np.inf)
            fin = np.zeros(len(k), bool)
            for lg, ks in ((log, kside[0]), (log_b, kside[1])):
                dh = lg.distances(ks[k, 0])
                fh = np.isfinite(dh)
                mh = np.where(fh, np.interp(np.where(fh, dh, 0.0) / gpu.l2_bytes, *curve), 1.0)
                hh = np.where(fh, extent[k], 0.0)
                ch_ = np.where(is_first, 0.5 * per_tile * np.maximum(0.0, tk - hh), 0.0)
                nd += np.where(is_first, mh, 0.0) * 0.5 * per_tile * np.minimum(tk, hh) + ch_
                cold += ch_
                dist = np.minimum(dist, dh)
                fin |= fh
        else:
            old = kseq[k]
            dist = log.distances(old)
            fin = np.isfinite(dist)
            m = np.where(fin, np.interp(np.where(fin, dist, 0.0) / gpu.l2_bytes, *curve), 1.0)
            had = np.where(fin, extent[k], 0.0)
            m = np.where(is_first, m, 0.0)
            cold = np.where(is_first, per_tile * np.maximum(0.0, tk - had), 0.0)
            nd = m * per_tile * np.minimum(tk, had) + cold
        need[sl] = nd
        got[sl] = 0.0
        prog[sl] = 0.0
        glen[sl] = tiles
        key[sl] = k
        st["dram"] += nd.sum()
        if record:
            # bytes re-read from chunks still held, by reuse distance (MiB), for diagnostics
            sel = is_first & fin & (tk > 0)
            hist_d.append(dist[sel] / MIB)
            hist_b.append((per_tile * np.minimum(tk, extent[k]))[sel])
        st["access"] += nbytes.sum()
        st["cold"] += cold.sum()
        st["reuse"] += (nd - cold).sum()
        ld = kload[k]
        following = (nd <= 0) & (ld >= 0)
        if following.any():
            lds = ld[following]
            ok = (key[lds] == k[following]) & (blk[lds] >= 0) & (got[lds] < need[lds])
            dd = np.full(following.sum(), -1)
            dd[ok] = lds[ok]
            dep[sl] = -1
            dep[sl[following]] = dd
            st["follow"] += nbytes[following][ok].sum()
        else:
            dep[sl] = -1
        fetch = nd > 0
        kload[k[fetch]] = sl[fetch]
        # key blocks held: reset where the chunk had been dropped
        gone = is_first & ~fin
        extent[k[gone]] = 0.0
        sides[k[gone]] = 0
        nread[k[gone]] = 0
        extent[uk] = np.maximum(extent[uk], tmax)
        if nru:
            return
        if part:
            # the halves where they live (both partitions), copies on the readers' sides; a
            # chunk costs the key blocks of it that are held
            frac = _held_fraction(uk % n_ch, extent[uk], g, keys_in_chunk, w)
            for side, (lg, ks) in enumerate(((log, kside[0]), (log_b, kside[1]))):
                o = ks[uk, 0]
                lg.drop(o[o >= 0])
                ks[uk, 0] = lg.add(0.5 * frac)
                kc = np.unique(k[side_slot[sl] == side])
                if len(kc):
                    o = ks[kc, 1]
                    lg.drop(o[o >= 0])
                    ks[kc, 1] = lg.add(
                        0.5 * _held_fraction(kc % n_ch, extent[kc], g, keys_in_chunk, w))
            return
        log.drop(old[first][old[first] >= 0])
        if gpu.kv_weight == "readers":
            # a K/V line's capacity cost grows with the blocks that read it (measured)
            np.add.at(nread, k, 1.0)
            wts = gpu.reader_weight(nread[uk])
        elif gpu.kv_weight == "sides":
            # the earlier rule: a shared line's cost once SMs on both sides read it, before
            # that a single-side line's (private_weight)
            np.bitwise_or.at(sides, k, side_bit[sl])
            wts = np.where(sides[uk] == 3, 1.0, wp)
        else:
            wts = np.ones(len(uk))
        kseq[uk] = log.add(wts)

    def begin(sl: np.ndarray, now: float) -> None:
        n = min(len(sl), nb - st["next"])
        sl = sl[:n]
        if not n:
            return
        b = np.arange(st["next"], st["next"] + n)
        st["next"] += n
        blk[sl] = b
        start[sl] = now
        b_start[b] = now
        b_slot[b] = sl
        ch[sl] = 0
        if sig > 0 or gpu.sm_pace_spread > 0:
            # the block's own pace: key-block times vary by sig, independently; times its SM's
            jit[sl] = sm_pace[sm_of[sl]] / np.clip(
                1.0 + rng.standard_normal(n) * sig / np.sqrt(np.maximum(NK[b], 1.0)), 0.5, 2.0)
        ready[sl] = now + gpu.block_startup_us
        add_private(sl, q_tile)
        empty = NK[b] == 0
        glen[sl[empty]] = 0.0
        prog[sl[empty]] = 0.0
        need[sl[empty]] = 0.0
        access(sl[~empty], now)

    # weights in units of one full chunk of shared lines; horizon likewise
    log.horizon = gpu.horizon_bytes / (g * tile_bytes)
    log_scale = g * tile_bytes

    def _dist_bytes(d):
        return d * log_scale
    _orig = log.distances
    log.distances = lambda seqs: _dist_bytes(_orig(seqs))
    if part:
        log_b.horizon = log.horizon
        _orig_b = log_b.distances
        log_b.distances = lambda seqs: _dist_bytes(_orig_b(seqs))

    begin(np.arange(min(S, nb)), 0.0)
    r_max = max(r_solo, r_pair * max(senior, 1 - senior))
    dt = g / r_max / DT_DIV
    t = 0.0
    finished = 0
    ar = np.arange(S)
    resident_changed = True
    timed = gpu.block_startup_us > 0        # else no block ever waits (no startup)
    waiting = np.zeros(S, dtype=bool)
    n_wait = n_wait_before = 0
    rate = np.zeros(S)
    penalty = gpu.miss_penalty
    conserve = gpu.sm_sharing == "work-conserving" and bps > 1
    slow_u, slow_s = gpu.slowdown_table(w.head_dim)
    eff = rate
    while finished < nb:
        occ = blk >= 0
        # blocks in their startup wait for loads: their SM computes for the others
        if timed:
            waiting = occ & (ready > t + 1e-12)
            n_wait = int(waiting.sum())
        if n_wait != n_wait_before:
            resident_changed = True
            n_wait_before = n_wait
        if resident_changed:
            # compute rates by seniority within each SM (they change only at dispatches and
            # where a startup ends)
            comp = occ & ~waiting
            cnt = np.bincount(sm_of[comp], minlength=sms)
            o = np.lexsort((ar, start, ~comp, sm_of))
            srt = sm_of[o]
            first = np.r_[0, np.flatnonzero(np.diff(srt)) + 1]
            rank = np.empty(S, dtype=np.int64)
            rank[o] = ar - np.repeat(first, np.diff(np.r_[first, S]))
            n_here = cnt[sm_of]
            rate = np.where(n_here <= 1, r_solo,
                            np.where(n_here == 2,
                                     np.where(rank == 0, senior, 1 - senior) * r_pair,
                                     r_pair / np.maximum(n_here, 1)))
            # paces change only at dispatches too
            rate = np.where(occ, rate, 0.0) * jit
            resident_changed = False
        if across:
            # a block keeps fetching `lead` key blocks ahead across the end of its chunk
            # (the kernel's pipeline does not stop at the model's chunk boundaries)
            more_ch = occ & (ch + 1 < NCH[np.maximum(blk, 0)])
            fetch = occ & (got < need * np.where(more_ch, (glen + lead) / np.maximum(glen, 1e-9),
                                                 1.0))
        else:
            fetch = occ & (got < need)
        fol = occ & (dep >= 0)
        if penalty > 0 or slow_u:
            # key blocks from DRAM cost more time: penalty / (1 - u) or the measured slowdown(u),
            # u: the DRAM bandwidth the blocks' present paces demand
            miss = np.where(occ & (glen > 0), need / np.maximum(glen * tile_bytes, 1e-30), 0.0)
            miss = np.minimum(miss, 1.0)
            util = float((eff * miss).sum()) * tile_bytes / bw
            extra = penalty / (1.0 - min(util, 0.98)) if penalty > 0 else \
                float(np.interp(util, slow_u, slow_s))
            eff = rate / (1.0 + extra * miss)
        else:
            eff = rate
        if n_wait:
            eff = np.where(waiting, 0.0, eff)
        if not fetch.any() and not fol.any():
            # nothing waits on DRAM: every block runs at its compute rate up to the next chunk
            # (or until the next block's startup ends)
            left = np.where(occ & ~waiting, (glen - prog) / np.maximum(eff, 1e-12), np.inf)
            if n_wait:
                left = np.minimum(left, ready[waiting].min() - t)
            step = max(dt, float(left.min()))
            prog = np.where(occ, prog + eff * step, prog)
            t += step
        else:
            target = prog + rate * dt + lead
            if across:
                target = np.where(more_ch, target, np.minimum(glen, target))
            else:
                target = np.minimum(glen, target)
            want = np.where(fetch, np.maximum(0.0, need * target / np.maximum(glen, 1e-9) - got),
                            0.0)
            tot = want.sum()
            got += want * (1.0 if tot <= bw * dt else bw * dt / tot)
            cap = np.where((need > 0) & (got < need * (1 - 1e-9)),
                           glen * got / np.maximum(need, 1e-30), np.inf)
            newp = np.minimum(prog + eff * dt, cap)
            if fol.any():
                ds = dep[fol]
                same = (key[ds] == key[fol]) & (blk[ds] >= 0)
                lim = np.where(same, newp[ds], np.inf)
                newp[fol] = np.minimum(newp[fol], lim)
                # a follower whose fetcher moved on has all of its chunk
                dep[np.flatnonzero(fol)[~same]] = -1
            if conserve:
                # the rate a computing block could not use (DRAM, another block's fetch) goes
                # to the unhindered blocks of its SM, in proportion to their rates, each up to
                # a lone block's rate
                comp = occ & ~waiting
                lost = np.where(comp, np.maximum(0.0, eff - (newp - prog) / dt), 0.0)
                free = comp & (lost <= 1e-12 * np.maximum(eff, 1e-30))
                pool = np.bincount(sm_of, weights=lost, minlength=sms)
                wsum = np.bincount(sm_of, weights=np.where(free, eff, 0.0), minlength=sms)
                bonus = np.where(free & (wsum[sm_of] > 0),
                                 pool[sm_of] * eff / np.maximum(wsum[sm_of], 1e-30), 0.0)
                bonus = np.minimum(bonus, np.maximum(0.0, r_solo * jit - eff))
                if bonus.any():
                    newp = np.minimum(newp + bonus * dt, cap)
                    if fol.any():
                        newp[fol] = np.minimum(newp[fol], lim)
            prog = np.where(occ, newp, prog)
            t += dt
        cross = np.flatnonzero(occ & (prog >= glen - 1e-9))
        if len(cross):
            excess = prog[cross] - glen[cross]
            cross = cross[np.argsort(-excess / np.maximum(rate[cross], 1e-9), kind="stable")]
            b = blk[cross]
            more = ch[cross] + 1 < NCH[b]
            nxt = cross[more]
            ch[nxt] += 1
            carry = np.minimum(prog[nxt] - glen[nxt], g)
            # bytes of the next chunk already fetched ahead (beyond this chunk's own)
            ahead = np.maximum(got[nxt] - need[nxt], 0.0) if across else None
            access(nxt, t)
            if across:
                got[nxt] = np.minimum(ahead, need[nxt] * np.minimum(lead / np.maximum(
                    glen[nxt], 1e-9), 1.0))
            prog[nxt] = np.maximum(0.0, np.minimum(carry, glen[nxt]))
            done = cross[~more]
            if len(done):
                b_end[blk[done]] = t
                finished += len(done)
                add_private(done, q_tile, out=True)
                blk[done] = -1
                key[done] = -1
                need[done] = 0.0
                dep[done] = -1
                begin(done, t)
                resident_changed = True
            if nru:
                continue
            log.evict()
            log.compact(kside[0] if part else kseq)
            if part:
                log_b.evict()
                log_b.compact(kside[1])
    sm = smem_level_reads(w)
    dram_read = sm["q_bytes"] + st["dram"]
    extra = {"blocks": {"start_us": b_start, "end_us": b_end, "sm": b_slot % sms,
                        "key_blocks": NK},
             "reuse": {"mib": np.concatenate(hist_d) if hist_d else np.zeros(0),
                       "bytes": np.concatenate(hist_b) if hist_b else np.zeros(0)}} if record else {}
    return {**extra, "dram_read_bytes": dram_read, "dram_write_bytes": sm["write_bytes"],
            "kv_miss_bytes": st["dram"], "kv_access_bytes": st["access"],
            "kv_cold_miss_bytes": st["cold"], "kv_reuse_miss_bytes": st["reuse"],
            "kv_follow_bytes": st["follow"],
            "q_bytes": sm["q_bytes"], "kv_compulsory_bytes": sm["kv_compulsory_bytes"],
            "l2_read_bytes": sm["read_bytes"], "blocks_per_sm": bps, "concurrent_blocks": S,
            "chunk_key_blocks": g, "makespan_us": t, "model": "dynamic",
            "l2_policy": gpu.l2_policy if part else "response",
            "dram_over_compulsory": dram_read / (sm["q_bytes"] + sm["kv_compulsory_bytes"])}
