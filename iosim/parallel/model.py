"""Time, traffic and memory of multi-device attention on a :class:`~iosim.parallel.system.System`.

Per device, the compute time of every block a device computes is the single-device model's
(:func:`iosim.traffic.evaluate`: the execution-time model of :mod:`iosim.timing` where the
device preset has sustained rates, the roofline otherwise) for that block's shape and mask;
per step, the bytes each device sends over which link and how long they take (latency plus
bytes over the per-direction bandwidth). Schemes (:mod:`cascades.devices`):

* ``ring`` / ``striped`` -- P steps; at step s every device computes its query block against
  the key block it holds and, at the same time (double buffering), sends that block to the
  next device. A step takes ``max(compute, transfer)``; communication hides when every step's
  compute covers its transfer. The analytic condition (Ring Attention): block compute
  ``4 d c^2 / F`` >= block transfer ``2 c d bytes / B``, i.e. ``c >= bytes F / (2 B)`` tokens
  per device (``F / B`` in bf16), scaled by ``kv_heads / heads`` for grouped-query heads.
* ``ulysses`` -- an all-to-all turns the sequence sharding into a head sharding (q, k, v),
  each device attends over all N keys for its heads, an all-to-all brings o back; nothing
  overlaps.
* ``usp`` -- all-to-all inside groups of ``ulysses`` devices, then a ring over the groups.
* ``kv-shard`` -- decode: the query goes to the P devices holding a shard of the KV cache
  each, their partial outputs and log-sum-exps come back to one device and are combined.
* ``offload`` -- decode on an attention-offloading system: dense layers on the compute
  devices, attention on the memory devices, q, k, v out and o back for every token of every
  layer; compared with serving on the compute devices alone (throughput per dollar).

What is not modelled: contention between flows beyond the per-device link bandwidth, the
topology beyond the preset's link levels, stragglers and jitter, the compute of the combine.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from cascades.devices import (DeviceError, block_kind, partition, ring_steps,
                              scheme as make_scheme)
from iosim.errors import IosimError
from iosim.hardware import dtype_bytes
from iosim.parallel.system import Link, System, load_system
from iosim.report import fmt_bytes, fmt_time

__all__ = ["Problem", "StepRecord", "ParallelResult", "PARALLEL", "evaluate_parallel",
           "ring_memory", "ulysses_bytes", "critical_tokens"]

PARALLEL = ("ring", "striped", "ulysses", "usp", "kv-shard", "offload")
#: bytes of the fp32 partials a device sends to the combine (output and log-sum-exp)
PARTIAL_BYTES = 4


@dataclass(frozen=True)
class Problem:
    """One attention layer's sizes (``layers`` repeats it): ``n`` query rows, ``kv_len`` keys
    (default ``n``), head dim ``d``, ``heads`` query and ``kv_heads`` key/value heads, ``batch``
    requests, ``dtype``; ``params`` the model's weight count (offload only)."""
    n: int
    d: int = 128
    kv_len: int | None = None
    heads: int = 1
    kv_heads: int | None = None
    batch: int = 1
    dtype: str = "bf16"
    causal: bool = False
    layers: int = 1
    params: float = 0.0

    @property
    def keys(self) -> int:
        return self.n if self.kv_len is None else self.kv_len

    @property
    def hkv(self) -> int:
        return self.heads if self.kv_heads is None else self.kv_heads

    @property
    def bytes(self) -> float:
        return dtype_bytes(self.dtype)


@dataclass(frozen=True)
class StepRecord:
    """One step of the timeline: the slowest device's compute, the bytes each device sends and
    their transfer time over ``link``, the step's time and whether the transfer hid."""
    step: int
    phase: str
    compute_s: float
    comm_bytes: float
    comm_s: float
    link: str
    time_s: float
    busy_devices: int = 0

    @property
    def hidden(self) -> bool:
        return self.comm_s <= self.compute_s

    def to_dict(self) -> dict:
        return {"step": self.step, "phase": self.phase, "compute_s": self.compute_s,
                "comm_bytes": self.comm_bytes, "comm_s": self.comm_s, "link": self.link,
                "time_s": self.time_s, "hidden": self.hidden, "busy_devices": self.busy_devices}


@dataclass(frozen=True)
class ParallelResult:
    """The multi-device model's answer; ``to_dict()`` is the ``parallel`` object of
    ``iosim evaluate --json``. Times and bytes are per layer times ``layers``."""
    scheme: str
    system: str
    devices: int
    steps: tuple
    compute_time_s: float
    comm_time_s: float
    comm_bytes_per_device: float
    overlapped: bool
    memory_bytes_per_device: float
    time_s: float
    memory: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    notes: tuple = ()
    layers: int = 1

    @property
    def exposed_comm_s(self) -> float:
        return self.layers * sum(max(0.0, s.comm_s - s.compute_s) for s in self.steps
                                 if s.phase == "ring")

    def to_dict(self) -> dict:
        return {"scheme": self.scheme, "system": self.system, "devices": self.devices,
                "layers": self.layers,
                "comm_bytes_per_device": self.comm_bytes_per_device,
                "comm_time_s": self.comm_time_s, "compute_time_s": self.compute_time_s,
                "overlapped": self.overlapped,
                "memory_bytes_per_device": self.memory_bytes_per_device,
                "memory": dict(self.memory), "time_s": self.time_s,
                "steps": [s.to_dict() for s in self.steps], **self.extra,
                "notes": list(self.notes)}

    def render(self) -> str:
        lines = [f"Multi-device: {self.scheme} on {self.devices} devices of {self.system}"
                 + (f", x {self.layers} layers" if self.layers > 1 else "")]
        if self.steps:
            lines.append("  step  phase     compute (slowest device)  busy   sent/device   "
                         "transfer    link       step time  hidden")
            for s in self.steps:
                lines.append(f"  {s.step:4d}  {s.phase:8s}  {fmt_time(s.compute_s):>24s}  "
                             f"{s.busy_devices:4d}  {fmt_bytes(s.comm_bytes):>12s}  "
                             f"{fmt_time(s.comm_s):>9s}  {s.link:9s}  {fmt_time(s.time_s):>9s}  "
                             f"{'yes' if s.hidden else 'NO'}")
        per = " per layer" if self.layers == 1 else f" over {self.layers} layers"
        lines.append(f"  Totals{per}: time {fmt_time(self.time_s)} = compute "
                     f"{fmt_time(self.compute_time_s)} + exposed communication "
                     f"{fmt_time(max(0.0, self.time_s - self.compute_time_s))}; communication "
                     f"{fmt_time(self.comm_time_s)} ({fmt_bytes(self.comm_bytes_per_device)} "
                     f"sent per device), {'hidden under compute' if self.overlapped else 'NOT hidden'}")
        if self.memory:
            parts = ", ".join(f"{k} {fmt_bytes(v)}" for k, v in self.memory.items())
            lines.append(f"  Memory per device: {fmt_bytes(self.memory_bytes_per_device)} ({parts})")
        for k, v in self.extra.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                lines.append(f"  {k}: {v:.6g}")
            elif isinstance(v, str):
                lines.append(f"  {k}: {v}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# ---------------------------------------------------------------------- block compute
_BLOCK_CACHE: dict = {}


def _block_time(cascade, mapping, hw, rows, keys, d, heads, kv_heads, batch, dtype, causal,
                offset) -> float:
    """The single-device model's time for one block (``rows`` queries x ``keys`` keys),
    memoised per (cascade, mapping, device) objects and sizes."""
    key = (id(cascade), id(mapping), id(hw), rows, keys, d, heads, kv_heads, batch, dtype,
           bool(causal), offset if causal else 0)
    hit = _BLOCK_CACHE.get(key)
    if hit is None:
        t = _block_time_uncached(cascade, mapping, hw, rows, keys, d, heads, kv_heads, batch,
                                 dtype, causal, offset)
        if len(_BLOCK_CACHE) > 20000:
            _BLOCK_CACHE.clear()
        hit = _BLOCK_CACHE[key] = (t, cascade, mapping, hw)   # the objects keep their ids
    return hit[0]


def _block_time_uncached(cascade, mapping, hw, rows, keys, d, heads, kv_heads, batch, dtype,
                         causal, offset) -> float:
    from iosim.mapping import Shapes
    from iosim.traffic import evaluate
    if rows <= 0 or keys <= 0:
        return 0.0
    sh = Shapes(n=rows, kv_len=keys, e=d, heads=heads, kv_heads=kv_heads, batch=batch,
                dtype=dtype, causal=causal, causal_offset=offset if causal else None)
    return float(evaluate(cascade, mapping, hw, sh, check=False).time_s)


def _block_offset(qpos: np.ndarray, kpos: np.ndarray, stride: int, upper: int) -> int:
    """Local diagonal offset of a partially masked block of two progressions of one stride:
    local key b is visible to local query a where ``b <= a + offset``."""
    return (int(qpos[0]) - int(kpos[0]) + upper) // stride


def critical_tokens(hw, link: Link, prob: Problem) -> float:
    """Ring Attention's overlap condition ``c >= bytes F / (2 B) * kv_heads / heads``: the block
    size (tokens per device) above which a block's compute at the matrix unit's peak covers its
    transfer (latency ignored). ``F / B`` in bf16 for multi-head attention."""
    f = hw.matrix_rate(prob.dtype)
    return prob.bytes * f / (2 * link.bandwidth) * prob.hkv / prob.heads


def ring_memory(rows: int, keys: int, prob: Problem) -> dict:
    """Bytes one device holds for one ring layer: its query and output blocks, the key/value
    block it computes on and the one arriving (double buffering), the fp32 output accumulator
    and log-sum-exp. The first four are Ring Attention's ``6 b c h`` bytes (multi-head, c rows
    = keys, bf16 sizes)."""
    b, d = prob.bytes * prob.batch, prob.d
    return {"q": rows * d * prob.heads * b, "o": rows * d * prob.heads * b,
            "kv": 2 * keys * d * prob.hkv * b, "kv_recv": 2 * keys * d * prob.hkv * b,
            "o_acc_fp32": rows * d * prob.heads * 4 * prob.batch,
            "lse_fp32": rows * prob.heads * 4 * prob.batch}


# -------------------------------------------------------------------------- ring
def _ring(cascade, mapping, system: System, prob: Problem, devices: int, layout: str,
          heads: int, kv_heads: int, stride_devices: int = 1, phase_extra=()) -> tuple:
    """Steps of a ring over ``devices`` devices (every ``stride_devices``-th device of the
    system: usp's rings); returns (steps, compute_s, comm_s, bytes, memory)."""
    hw = system.device
    n_q, n_k = prob.n, prob.keys
    upper = n_k - n_q if (prob.causal and _end_aligned(cascade)) else 0
    qparts = partition(n_q, devices, layout)
    kparts = partition(n_k, devices, layout)
    stride = devices if layout == "striped" else 1
    link = system.ring_link(devices, stride_devices)
    sched = ring_steps(n_q, n_k, devices, layout, prob.causal, upper)
    block_bytes = max(2 * len(kj) * prob.d * kv_heads * prob.bytes * prob.batch for kj in kparts)
    steps, comp_total, comm_total, sent = [], 0.0, 0.0, 0.0
    for s, row in enumerate(sched):
        times = []
        for st in row:
            qi, kj = qparts[st.device], kparts[st.key_block]
            if st.kind == "skip":
                times.append(0.0)
                continue
            causal = st.kind == "partial"
            off = _block_offset(qpos=qi, kpos=kj, stride=stride, upper=upper) if causal else 0
            times.append(_block_time(cascade, mapping, hw, len(qi), len(kj), prob.d, heads,
                                     kv_heads, prob.batch, prob.dtype, causal, off))
        comp = max(times)
        nbytes = block_bytes if s < devices - 1 else 0.0
        tcomm = link.transfer_s(nbytes)
        steps.append(StepRecord(s, "ring", comp, nbytes, tcomm, link.name if nbytes else "-",
                                max(comp, tcomm), sum(t > 0 for t in times)))
        comp_total += comp
        comm_total += tcomm
        sent += nbytes
    rows = max(len(p) for p in qparts)
    keys = max(len(p) for p in kparts)
    sub = Problem(n=prob.n, d=prob.d, kv_len=prob.kv_len, heads=heads, kv_heads=kv_heads,
                  batch=prob.batch, dtype=prob.dtype, causal=prob.causal)
    return steps, comp_total, comm_total, sent, ring_memory(rows, keys, sub), link


def _end_aligned(cascade) -> bool:
    from cascades.masks import mask_region
    from cascades.roles import canonical
    r = mask_region(canonical(cascade))
    return bool(r.kind == "causal" and r.upper is not None and r.upper.names())


# ----------------------------------------------------------------------- all-to-all
def ulysses_bytes(prob: Problem, devices: int) -> dict:
    """Bytes each device sends in Ulysses' two all-to-alls (per layer): it holds ``N/P``
    tokens of every head and keeps ``1/P`` of them; the rest goes to the other ``P - 1``
    devices. ``qkv = (N/P) d bytes (Hq + 2 Hkv') (P-1)/P``, ``o = (N/P) d bytes Hq (P-1)/P``,
    with ``Hkv' = max(Hkv, P)`` (a device needs at least one K/V head: fewer K/V heads than
    devices are replicated). Multi-head, in all: ``4 N d H bytes (P-1) / P^2``."""
    n_local = prob.n / devices
    f = (devices - 1) / devices
    hkv = max(prob.hkv, devices)
    base = n_local * prob.d * prob.bytes * prob.batch
    return {"qkv": base * (prob.heads + 2 * hkv) * f, "o": base * prob.heads * f}


def _all_to_all_s(system: System, nbytes: float, group: int, first: int = 0) -> tuple:
    """Time of an all-to-all in which each of ``group`` devices (``first`` ...) sends
    ``nbytes`` spread evenly over the others: each link level carries the share bound for
    devices beyond the inner level; on a ring the bytes travel the shortest way round, over
    both directions."""
    if group <= 1 or nbytes <= 0:
        return 0.0, "-"
    per_dest = nbytes / (group - 1)
    if system.topology == "ring":
        lk = system.links[0]
        hops = sum(min(k, group - k) for k in range(1, group))
        return lk.latency_s + per_dest * hops / (2 * lk.bandwidth), lk.name
    worst, name = 0.0, "-"
    counts: dict = {}
    for j in range(1, group):
        lk = system.link_between(first, first + j)
        counts[lk] = counts.get(lk, 0) + 1
    for lk, cnt in counts.items():
        t = lk.latency_s + per_dest * cnt / lk.bandwidth
        if t > worst:
            worst, name = t, lk.name
    return worst, name


# ---------------------------------------------------------------------- the entry point
def evaluate_parallel(cascade, mapping, system, prob: Problem, scheme: str, devices: int, *,
                      ulysses: int | None = None) -> ParallelResult:
    """The multi-device model of ``scheme`` on ``devices`` devices of ``system``."""
    from cascades.library import load
    from iosim.mapping import mapping_for
    sys_ = load_system(system)
    c = load(cascade) if isinstance(cascade, str) else cascade
    m = mapping_for(c, mapping) if mapping is None or isinstance(mapping, str) else mapping
    if scheme not in PARALLEL:
        import difflib
        hit = difflib.get_close_matches(scheme, PARALLEL, n=1)
        raise IosimError(f"unknown --parallel '{scheme}'"
                         + (f" (did you mean '{hit[0]}'?)" if hit else "")
                         + f"; expected one of: {', '.join(PARALLEL)}")
    if scheme == "offload":
        from iosim.parallel.offload import evaluate_offload
        return evaluate_offload(c, m, sys_, prob, devices)
    sys_.check_devices(devices)
    if prob.heads % prob.hkv:
        raise IosimError(f"heads ({prob.heads}) must be a multiple of kv-heads ({prob.hkv})")
    try:
        sch = make_scheme(scheme, devices, heads=prob.heads, ulysses=ulysses, cascade=c)
    except DeviceError as e:
        raise IosimError(f"--parallel {scheme}: {e.message}") from None
    if scheme in ("ring", "striped", "usp") and prob.n != prob.keys:
        raise IosimError(f"--parallel {scheme} splits one sequence of queries and keys: give "
                         f"--kv-len equal to --seq-len (kv-shard splits a KV cache)")
    L = prob.layers
    notes = []
    extra: dict = {}
    if scheme in ("ring", "striped"):
        steps, comp, comm, sent, mem, link = _ring(c, m, sys_, prob, devices,
                                                   sch.rank("key").layout, prob.heads, prob.hkv)
        t = sum(s.time_s for s in steps)
        hidden = all(s.hidden for s in steps if s.comm_bytes > 0)
        extra["critical_tokens_per_device"] = critical_tokens(sys_.device, link, prob)
        extra["tokens_per_device"] = math.ceil(prob.n / devices)
        extra["ring_link"] = link.name
        if prob.causal:
            busy = [s.busy_devices for s in steps]
            extra["causal_balance"] = (sum(s.compute_s * s.busy_devices for s in steps)
                                       / max(1e-300, devices * comp))
            notes.append(f"causal: devices busy per step {busy}; balance = useful device-time "
                         f"/ (devices x sum of step compute)")
        if sys_.device.matrix_rate(prob.dtype) and not hidden:
            notes.append(f"communication is exposed: {math.ceil(prob.n / devices)} tokens per "
                         f"device; the analytic overlap threshold is c >= "
                         f"{extra['critical_tokens_per_device']:.0f}")
    elif scheme == "kv-shard":
        steps, comp, comm, sent, mem, t = _kv_shard(c, m, sys_, prob, devices)
        hidden = False
    else:                                             # ulysses, usp
        u, r = sch.ulysses, sch.ring
        heads_dev = math.ceil(prob.heads / u)
        hkv_dev = max(1, math.ceil(prob.hkv / u))
        if heads_dev % hkv_dev:
            hkv_dev = heads_dev
        # before its group's all-to-all a device holds N/P tokens of every head
        ab = ulysses_bytes(Problem(n=prob.n * u / devices, d=prob.d, heads=prob.heads,
                                   kv_heads=prob.hkv, batch=prob.batch, dtype=prob.dtype), u)
        t_in, lk_in = _all_to_all_s(sys_, ab["qkv"], u)
        t_out, lk_out = _all_to_all_s(sys_, ab["o"], u)
        steps = [StepRecord(0, "a2a-qkv", 0.0, ab["qkv"], t_in, lk_in, t_in, 0)]
        if r == 1:
            tc = _block_time(c, m, sys_.device, prob.n, prob.keys, prob.d, heads_dev, hkv_dev,
                             prob.batch, prob.dtype, prob.causal, 0)
            steps.append(StepRecord(1, "attend", tc, 0.0, 0.0, "-", tc, devices))
            comp, ring_comm, ring_sent = tc, 0.0, 0.0
            mem = {"q": prob.n * prob.d * heads_dev * prob.bytes * prob.batch,
                   "kv": 2 * prob.keys * prob.d * hkv_dev * prob.bytes * prob.batch,
                   "o": prob.n * prob.d * heads_dev * prob.bytes * prob.batch}
        else:
            rs, comp, ring_comm, ring_sent, mem, link = _ring(
                c, m, sys_, prob, r, "contiguous", heads_dev, hkv_dev, stride_devices=u)
            steps += [StepRecord(s.step + 1, s.phase, s.compute_s, s.comm_bytes, s.comm_s,
                                 s.link, s.time_s, s.busy_devices * u) for s in rs]
            extra["ring_devices"] = r
        extra["ulysses_devices"] = u
        steps.append(StepRecord(len(steps), "a2a-o", 0.0, ab["o"], t_out, lk_out, t_out, 0))
        comm = t_in + t_out + ring_comm
        sent = ab["qkv"] + ab["o"] + ring_sent
        t = sum(s.time_s for s in steps)
        hidden = False
        extra["heads_per_device"] = heads_dev
        notes.append("the all-to-alls do not overlap compute (they bracket the attention)")
    mem_total = float(sum(mem.values()))
    return ParallelResult(
        scheme=scheme, system=sys_.name, devices=devices, steps=tuple(steps),
        compute_time_s=comp * L, comm_time_s=comm * L, comm_bytes_per_device=sent * L,
        overlapped=bool(hidden), memory_bytes_per_device=mem_total, time_s=t * L,
        memory=mem, extra=extra, notes=tuple(notes), layers=L)


def _kv_shard(c, m, system: System, prob: Problem, devices: int) -> tuple:
    """DistAttention decode: one device sends the queries to the other ``P - 1`` holders of
    KV shards, each computes a partial output and log-sum-exp over its shard, the partials
    (fp32) come back and are combined."""
    hw = system.device
    upper = prob.keys - prob.n if (prob.causal and _end_aligned(c)) else 0
    qpos = np.arange(prob.n)
    times = []
    for kp in partition(prob.keys, devices):
        kind = block_kind(qpos, kp, prob.causal, upper)
        if kind == "skip":
            times.append(0.0)
            continue
        off = _block_offset(qpos, kp, 1, upper) if kind == "partial" else 0
        times.append(_block_time(c, m, hw, prob.n, len(kp), prob.d, prob.heads, prob.hkv,
                                 prob.batch, prob.dtype, kind == "partial", off))
    q_bytes = prob.n * prob.heads * prob.d * prob.bytes * prob.batch
    part_bytes = prob.n * prob.heads * (prob.d + 1) * PARTIAL_BYTES * prob.batch
    # the root's link carries P - 1 copies each way; the farthest shard sets the link
    link = max((system.link_between(0, j) for j in range(1, devices)),
               key=lambda lk: (1 / lk.bandwidth, lk.latency_s), default=system.links[0])
    t_q = link.transfer_s((devices - 1) * q_bytes)
    t_p = link.transfer_s((devices - 1) * part_bytes)
    comp = max(times)
    name = link.name if devices > 1 else "-"
    steps = [StepRecord(0, "send-q", 0.0, (devices - 1) * q_bytes, t_q, name, t_q, 0),
             StepRecord(1, "attend", comp, 0.0, 0.0, "-", comp, sum(x > 0 for x in times)),
             StepRecord(2, "gather", 0.0, (devices - 1) * part_bytes, t_p, name, t_p, 0)]
    shard = math.ceil(prob.keys / devices)
    mem = {"kv_cache": 2 * shard * prob.d * prob.hkv * prob.bytes * prob.batch * prob.layers,
           "q": q_bytes, "partials_fp32": devices * part_bytes}
    sent = (devices - 1) * (q_bytes + part_bytes)
    return steps, comp, t_q + t_p, sent, mem, t_q + comp + t_p
