"""The execution-time model: a launch as a parallel machine runs it, from the loop nest.

For each kernel (phase) of the mapping's loop nest, on arrays over a grid of configurations:

* **programs** -- the phase's grid loops (``parallel`` in the printed nest) times batch x K/V
  heads; a phase without a grid loop is one program per (batch, K/V head) instance;
* **programs per SM** -- the tightest of shared memory (the program's on-chip tiles, the
  streamed ones ``num_stages`` deep, or a storage node's own depth), registers (the fp32
  accumulators and 16-bit operand tiles of the program, spread over its threads, with the
  measured allocation overhead), threads and the block limit. Reported, and the spread of a
  small grid: a launch of no more programs than SMs runs each program alone on its own SM;
* **one step** -- an iteration of an innermost loop of the program. A step that builds a score
  tile costs the matmul loop's measured cycles for that tile (scaled to the cascade's matmul
  work per (row, key) pair) plus the tile's exponentials at the measured exp rate: one
  program issues them in order (Triton's pipelining overlaps the loads, not the units). Full
  tiles are paid for at partial and masked tiles, as the kernel computes them. A step that
  loads tiles from HBM (the L2 model's miss fraction of the step's loads) takes at least those
  bytes at the rate one program streams (``stream_bytes_per_clock``);
* **one program** -- the calibrated fixed cost ``program_start`` plus its steps;
* **the makespan** -- programs of equal length run in waves over the SMs
  (``ceil(programs / SMs)`` program times; co-resident programs share an SM's units, so more
  programs per SM do not shorten a wave's work); programs of unequal length (a causal mask)
  are list-scheduled: the fluid time ``work / SMs`` plus half a mean program for the ragged
  end, and never less than the longest program. The phase's HBM bytes over the sustained HBM
  bandwidth bound it from below (the launch is then memory-bound);
* **several kernels** add, each with the measured launch overhead; the whole call takes at
  least the measured host time of a generated module's call with that many kernels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iosim.mapping import Alloc, Load, Loop, SplitLoop, Store
from iosim.timing.rates import TimingRates, timing_rates

__all__ = ["time_arrays", "phase_plans", "occupancy", "registers_per_thread", "MAX_REGISTERS"]

#: registers one thread may hold on the GPUs modelled (more spill to local memory)
MAX_REGISTERS = 255


@dataclass(frozen=True)
class StepLoop:
    """An innermost loop of a program: its enclosing loops (itself last), its score tile's
    dims (or ``None``), and its loads and stores."""
    encl: tuple
    score_dims: tuple | None
    loads: tuple
    stores: tuple


@dataclass(frozen=True)
class PhasePlan:
    name: str
    grid: tuple           # the grid loops, outermost first
    steps: tuple          # StepLoop
    start_loads: tuple    # (tensor, dims, encl) of the program's loads outside its step loops
    end_stores: tuple     # (tensor, dims, encl) of its stores outside its step loops
    causal: bool          # a step loop is coupled to a grid loop (programs of unequal length)


def _score_factors(dims, encl) -> tuple:
    """The factors of a step loop's score elements: its events over the score tile's dims,
    and, where two dims of the tile are tiled by the same loop (a block of the sequence
    against itself, as chunked linear attention builds it), the tile size of each repeat."""
    from iosim.traffic import _event_factors
    loops = {l.var: l for l in encl if isinstance(l, Loop)}
    seen, extra = set(), []
    for d in dims:
        if d.var is not None and d.var in seen and d.var in loops:
            extra.append(("tile", d.rank, loops[d.var].block))
        seen.add(d.var)
    return _event_factors(dims, encl, "S") + tuple(extra)


def _is_grid(nd) -> bool:
    return isinstance(nd, (Loop, SplitLoop)) and nd.grid


def phase_plans(nest) -> tuple:
    """What the time model needs from each phase of the loop nest."""
    plans = []
    for ph in nest.phases:
        grid: list = []
        body = ph.body
        while len([nd for nd in body if isinstance(nd, (Loop, SplitLoop))]) == 1 and \
                all(not isinstance(nd, (Load, Store, Alloc)) for nd in body) and \
                _is_grid(body[0]):
            grid.append(body[0])
            body = body[0].body
        steps: list = []
        start: list = []
        end: list = []

        def rec(nodes, encl):
            inner = [nd for nd in nodes if isinstance(nd, (Loop, SplitLoop))]
            for nd in nodes:
                if isinstance(nd, (Loop, SplitLoop)):
                    sub = [x for x in nd.body if isinstance(x, (Loop, SplitLoop))]
                    if sub:
                        rec(nd.body, encl + (nd,))
                    else:
                        score = next((x.dims for x in nd.body
                                      if isinstance(x, Alloc) and x.name == "S"), None)
                        steps.append(StepLoop(
                            encl + (nd,), score,
                            tuple(x for x in nd.body if isinstance(x, Load)),
                            tuple(x for x in nd.body if isinstance(x, Store))))
                elif isinstance(nd, Load) and encl == tuple(grid):
                    start.append((nd.tensor, nd.dims, encl))
                elif isinstance(nd, Store) and encl == tuple(grid):
                    end.append((nd.tensor, nd.dims, encl))
            return inner

        rec(body, tuple(grid))
        grid_vars = {g.var for g in grid}
        causal = any(isinstance(l, Loop) and l.causal_with in grid_vars
                     for s in steps for l in s.encl)
        plans.append(PhasePlan(ph.name, tuple(grid), tuple(steps), tuple(start), tuple(end),
                               causal))
    return tuple(plans)


def registers_per_thread(*, block_m, block_n, head_dim, num_warps) -> np.ndarray:
    """Registers a thread of a FlashAttention-style program needs (arrays broadcast): the
    fp32 output and score accumulators and the 16-bit query and probability operands,
    spread over the program's threads, x 1.6 (the compiled kernels' registers over that count
    were 1.5-1.9 on the calibration launches), in steps of 8. Above :data:`MAX_REGISTERS`
    the kernel spills, which the time model does not model."""
    bm, bn, d = (np.asarray(x, dtype=float) for x in (block_m, block_n, head_dim))
    threads = 32 * np.asarray(num_warps, dtype=float)
    words = 1.5 * (bm * d + bm * bn)
    return np.ceil(1.6 * words / threads / 8) * 8


def occupancy(*, block_m, block_n, head_dim, num_warps, num_stages, elem_bytes, gpu) -> np.ndarray:
    """Programs per SM of a FlashAttention-style program (arrays broadcast): shared memory
    holds the query tile and ``num_stages`` K/V tile pairs (Triton's allocation, checked
    against the compiled kernels' shared memory), registers the fp32 output and score
    accumulators and the 16-bit query and probability operands, x 1.6 (the compiled kernels'
    measured registers over that count: 1.5-1.9), at most 255 per thread."""
    bm, bn, d = (np.asarray(x, dtype=float) for x in (block_m, block_n, head_dim))
    w = np.asarray(num_warps, dtype=float)
    st = np.maximum(1, np.asarray(num_stages, dtype=float))
    smem = elem_bytes * (bm * d + st * 2 * bn * d)
    threads = 32 * w
    regs = np.minimum(MAX_REGISTERS, registers_per_thread(block_m=bm, block_n=bn, head_dim=d,
                                                          num_warps=w))
    lim_smem = np.floor(gpu.smem_per_sm / (smem + 1024))
    lim_regs = np.floor(gpu.regs_per_sm / (threads * regs))
    lim_threads = np.floor(gpu.max_threads_per_sm / threads)
    k = np.minimum(np.minimum(lim_smem, lim_regs), np.minimum(lim_threads, gpu.max_blocks_per_sm))
    return np.maximum(1, k)


def _phase_bytes(r: dict, phase: str, F, dtype_bytes_role) -> tuple:
    """(HBM bytes, SRAM-boundary bytes) a phase moves, all heads: each tensor's backing
    (HBM) share of its SRAM-boundary traffic applied to the phase's loads and stores."""
    hbm = np.zeros(np.shape(r["time_s"]))
    comp = r["compiled"]
    tile = np.zeros_like(hbm)
    for t in comp.terms:
        if t.phase != phase:
            continue
        v = F.product(t.factors).astype(float) * dtype_bytes_role(t.tensor)
        if t.direction == "read":
            model, back = r["model_reads"].get(t.tensor), r["backing_reads"].get(t.tensor)
        else:
            model, back = r["model_writes"].get(t.tensor), r["backing_writes"].get(t.tensor)
        frac = np.where(np.asarray(model) > 0, np.asarray(back, dtype=float)
                        / np.maximum(np.asarray(model, dtype=float), 1e-300), 1.0) \
            if model is not None and back is not None else 1.0
        hbm = hbm + v * frac
        tile = tile + v
    heads = r["heads_total"]
    return hbm * heads, tile * heads


def time_arrays(r: dict) -> dict | None:
    """The predicted time of every configuration of an :func:`iosim.traffic.evaluate_arrays`
    result, with its breakdown (arrays); ``None`` when the hardware has no ``[timing]``."""
    from iosim.l2.analytic import GpuFacts
    from iosim.traffic import OP_CLASSES, _event_factors, _Factors, _buf_factors
    hw = r["hardware"]
    rates: TimingRates | None = timing_rates(hw)
    if rates is None:
        return None
    S = r["sizes"]
    F = _Factors(S)
    m = r["mapping"]
    nest = r["nest"]
    roles = r["dtype_roles"]
    role_of = lambda t: roles[nest.dtype_role(t)]  # noqa: E731
    heads = np.asarray(r["heads_total"], dtype=float)
    shape = np.shape(r["time_s"])
    clock = rates.clock_hz
    sms = rates.sms
    gpu = GpuFacts.from_hardware(hw)
    from iosim.hardware import dtype_bytes
    el = dtype_bytes(r["dtype"])
    flops = r["flops"]
    plans = phase_plans(nest)
    # the score elements of every step loop, all phases: the pair work spreads over them
    score_el = np.zeros(shape)
    for p in plans:
        for s in p.steps:
            if s.score_dims is not None:
                score_el = score_el + F.product(_score_factors(s.score_dims, s.encl))
    score_el = score_el * heads
    per_pair = {c: np.where(score_el > 0, flops[c] / np.maximum(score_el, 1), 0.0)
                for c in OP_CLASSES}
    e = S["E"]
    phases = []
    total = np.zeros(shape)
    for p in plans:
        progs_inst = F.product(_event_factors((), p.grid, "grid")).astype(float)
        programs = progs_inst * heads
        steps_total = np.zeros(shape)
        step_work = np.zeros(shape)     # seconds of all steps of one instance
        mma_s = np.zeros(shape)
        exp_s = np.zeros(shape)
        load_s = np.zeros(shape)
        longest = np.zeros(shape)       # steps of the longest program
        tiles = None
        stage_of: list = []             # each step loop's pipeline depth
        hbm_b, tile_b = _phase_bytes(r, p.name, F, role_of)
        hbm_frac = np.where(tile_b > 0, hbm_b / np.maximum(tile_b, 1e-300), 0.0)
        for s in p.steps:
            n_steps = F.product(_event_factors((), s.encl, "step")).astype(float)
            loops = {l.var: l for l in s.encl if isinstance(l, Loop)}
            step_bytes = np.zeros(shape)
            for ld in s.loads:
                step_bytes = step_bytes + F.product(_buf_factors(ld.dims, s.encl, False)) * \
                    role_of(ld.tensor)
            # the step's pipeline depth: its streamed tiles' own stages (a loop tree's storage
            # node), else the mapping's num_stages
            st = max((ld.stages for ld in s.loads if ld.streamed and ld.stages), default=None) \
                or m.num_stages
            stage_of.append(st)
            # the step's loads that miss in L2 come from HBM at one program's streaming rate
            # (hits are part of the matmul loop's measured cycles)
            t_load = rates.stream_seconds(step_bytes, st) * hbm_frac \
                / rates.load_efficiency
            if s.score_dims is not None:
                rows_b = loops[s.score_dims[0].var].block
                keys_b = loops[s.score_dims[1].var].block
                bq, bk = S[rows_b], S[keys_b]
                tiles = (bq, bk)
                cyc = rates.mma_cycles(bq, bk, e, m.num_warps, st)
                t_mma = cyc * per_pair["matmul"] / (4.0 * e) / clock
                t_exp = bq * bk * per_pair["exp"] / rates.exp_per_clock / clock
            else:
                t_mma = t_exp = np.zeros(shape)
            t_step = (np.maximum(t_mma + t_exp, t_load) if st > 1
                      else t_mma + t_exp + t_load)
            steps_total = steps_total + n_steps
            step_work = step_work + n_steps * t_step
            mma_s = mma_s + n_steps * t_mma
            exp_s = exp_s + n_steps * t_exp
            load_s = load_s + n_steps * t_load
            # the longest program: the loop's full trips (no causal skipping)
            full = 1.0
            for l in s.encl:
                if l in p.grid:
                    continue
                if isinstance(l, SplitLoop):
                    continue
                if l.within is not None:
                    trips = np.ceil(F.get(("trips", l.rank, l.block)) / np.maximum(S["S"], 1))
                else:
                    trips = F.get(("trips", l.rank, l.block))
                if l.causal_with is not None and "lo" in S:
                    # a band (sliding window): a query tile sees at most its rows plus the
                    # band's width of keys, in tiles of this loop
                    from iosim.traffic import NO_LOWER_EDGE
                    lo = np.asarray(S["lo"])
                    rows_b = next((g.block for g in s.encl if g.var == l.causal_with), None)
                    if rows_b is not None and np.any(lo > NO_LOWER_EDGE):
                        span = S[rows_b] + (np.asarray(S["off"]) - lo)
                        band_trips = np.ceil(span / S[l.block]) + 1
                        trips = np.where(lo > NO_LOWER_EDGE,
                                         np.minimum(trips, band_trips), trips)
                full = full * trips
            longest = longest + full * t_step
        # a program's start: its first loads and its last stores, each a latency plus the
        # bytes at the streaming rate (the program's loads outside its step loops, its stores)
        edge_b = np.zeros(shape)
        for t, dims, encl in p.start_loads + p.end_stores:
            edge_b = edge_b + F.product(_buf_factors(dims, encl, False)) * role_of(t)
        start = ((2 * rates.stream_latency_cycles + edge_b / rates.stream_bytes_per_clock)
                 / clock) + rates.program_start_s
        if tiles is not None:
            k = occupancy(block_m=tiles[0], block_n=tiles[1], head_dim=e,
                          num_warps=m.num_warps, num_stages=max(stage_of), elem_bytes=el,
                          gpu=gpu)
        else:
            k = np.ones(shape)
        k = np.broadcast_to(k, shape)
        # co-resident programs hide each other's start (its latency: first loads, the
        # epilogue's stores); a program alone on its SM pays it in full
        k_eff = np.clip(programs / sms, 1.0, k)
        per_prog = step_work / np.maximum(progs_inst, 1)
        w_mean = start + per_prog
        w_max = start + np.maximum(longest, per_prog)
        w_sm = start / k_eff + per_prog          # SM time one program costs in a full grid
        causal = p.causal and np.asarray(S["causal"], dtype=bool)
        equal_t = np.where(programs <= sms, w_mean,
                           np.ceil(programs / sms) * w_sm)
        fluid = programs * w_sm / sms
        ragged_t = np.where(programs <= sms, w_max, np.maximum(w_max, fluid + 0.5 * w_mean))
        compute_t = np.where(causal, ragged_t, equal_t)
        hbm_t = hbm_b / rates.hbm_read_bps
        phase_t = np.maximum(compute_t, hbm_t)
        waves = programs / (sms * k)
        limiter = np.where(hbm_t >= compute_t, "HBM bandwidth",
                           np.where(programs <= sms, "one program (fewer programs than SMs)",
                                    np.where(load_s > mma_s + exp_s, "loads of each program",
                                             np.where(mma_s >= exp_s, "tensor cores",
                                                      "exponentials"))))
        regs = (registers_per_thread(block_m=tiles[0], block_n=tiles[1], head_dim=e,
                                     num_warps=m.num_warps) if tiles is not None
                else np.zeros(shape))
        phases.append({"name": p.name, "programs": programs, "programs_per_sm": k,
                       "registers": np.broadcast_to(regs, shape),
                       "waves": waves, "steps_per_program": steps_total / np.maximum(progs_inst, 1),
                       "program_s": w_mean, "longest_program_s": w_max, "sm_program_s": w_sm,
                       "compute_s": mma_s / np.maximum(progs_inst, 1),
                       "exp_s": exp_s / np.maximum(progs_inst, 1),
                       "load_s": load_s / np.maximum(progs_inst, 1),
                       "start_s": np.full(shape, start), "makespan_s": compute_t,
                       "hbm_bound_s": hbm_t, "hbm_bytes": hbm_b, "time_s": phase_t,
                       "limiter": limiter})
        total = total + phase_t + rates.launch_s
    # the host issues the kernels while the GPU runs them: a call takes at least its host time
    host = rates.host_seconds(len(phases)) if phases else 0.0
    total = np.maximum(total, host)
    mm = flops["matmul"]
    peak = hw.matrix_rate(r["dtype"])
    hbm_all = sum(ph["hbm_bytes"] for ph in phases) if phases else np.zeros(shape)
    return {"time_s": total, "phases": phases, "launch_s": rates.launch_s * len(phases),
            "host_s": host,
            "tensor_utilisation": mm / np.maximum(total, 1e-30) / peak,
            "hbm_bytes_per_s": hbm_all / np.maximum(total, 1e-30),
            "rates": rates}


def _pick(v, row: int):
    a = np.asarray(v)
    return a.reshape(-1)[row] if a.ndim else a[()]


def time_breakdown(tm: dict, row: int = 0) -> dict:
    """The ``time`` object of one configuration (JSON-ready): the predicted time, the launch
    overhead, the tensor-core utilisation and achieved HBM bandwidth, and per kernel its
    programs, programs per SM, waves, one program's time split into compute / exp / load /
    start, the makespan, the HBM lower bound and the limiting unit."""
    r = tm["rates"]
    out = {"time_s": float(_pick(tm["time_s"], row)),
           "model": "parallel: programs over SMs, one program's time from its loop nest",
           "launch_s": float(tm["launch_s"]),
           "host_s": float(tm.get("host_s", 0.0)),
           "tensor_utilisation": float(_pick(tm["tensor_utilisation"], row)),
           "hbm_bytes_per_s": float(_pick(tm["hbm_bytes_per_s"], row)),
           "rates": {"source": r.source, "sms": r.sms, "clock_hz": r.clock_hz,
                     "hbm_read_bytes_per_s": r.hbm_read_bps,
                     "exp_per_clock_per_sm": r.exp_per_clock,
                     "load_efficiency (calibrated)": r.load_efficiency,
                     "calibration": r.calibration},
           "kernels": []}
    for ph in tm["phases"]:
        k = {"name": ph["name"]}
        for key in ("programs", "programs_per_sm", "registers", "waves", "steps_per_program",
                    "program_s",
                    "longest_program_s", "compute_s", "exp_s", "load_s", "start_s",
                    "makespan_s", "hbm_bound_s", "hbm_bytes", "time_s"):
            k[key] = float(_pick(ph[key], row))
        k["stall_s"] = max(0.0, k["time_s"] - k["makespan_s"])
        k["limiter"] = str(_pick(ph["limiter"], row))
        out["kernels"].append(k)
    return out


def render_time(t: dict, roofline_s: float | None, roofline_limiter: str | None) -> list:
    """Text lines explaining a :func:`time_breakdown`."""
    from iosim.report import fmt_bytes, fmt_time
    L = [f"Time (parallel model): {fmt_time(t['time_s'])} -- "
         f"{len(t['kernels'])} kernel{'s' if len(t['kernels']) > 1 else ''}, launch "
         f"{fmt_time(t['launch_s'])}; tensor cores {t['tensor_utilisation']:.0%} busy, HBM "
         f"{t['hbm_bytes_per_s'] / 1e12:.2f} TB/s."]
    for k in t["kernels"]:
        regs = (f", ~{k['registers']:.0f} registers per thread" if k.get("registers") else "")
        L.append(f"  {k['name']}: {k['programs']:.0f} programs, {k['programs_per_sm']:.0f} per "
                 f"SM{regs} ({k['waves']:.2f} waves on {t['rates']['sms']} SMs); one program "
                 f"{fmt_time(k['program_s'])} = start {fmt_time(k['start_s'])} + "
                 f"{k['steps_per_program']:.3g} steps (tensor cores {fmt_time(k['compute_s'])}, "
                 f"exp {fmt_time(k['exp_s'])}, HBM loads {fmt_time(k['load_s'])}); "
                 f"makespan {fmt_time(k['makespan_s'])}, HBM bound {fmt_time(k['hbm_bound_s'])} "
                 f"({fmt_bytes(k['hbm_bytes'])}); limited by {k['limiter']}.")
        if k.get("registers", 0) > MAX_REGISTERS:
            L.append(f"  Note: {k['name']} needs about {k['registers']:.0f} registers per thread, "
                     f"more than {MAX_REGISTERS}: the compiled kernel will spill, which this "
                     f"model does not time (measured spilling tilings ran up to 1.6x slower).")
    if t.get("host_s") and t["host_s"] >= t["time_s"] * (1 - 1e-12):
        L.append(f"  The host's call ({fmt_time(t['host_s'])}: allocations and "
                 f"{len(t['kernels'])} launches) takes longer than the kernels: it sets the time.")
    if roofline_s is not None:
        L.append(f"  Roofline lower bound (every unit and level of the whole device "
                 f"overlapping): {fmt_time(roofline_s)}, bound by {roofline_limiter}.")
    return L


def combine_requests(tm: dict, rates: TimingRates | None = None) -> dict:
    """One launch serving a batch of requests of different lengths (a ragged batch): the
    per-request arrays of :func:`time_arrays` (one configuration per request) become one
    launch per kernel whose programs are all the requests' programs: list-scheduled over the
    SMs (fluid work / SMs plus half a mean program, never less than the longest program; the
    longest one when they fit the SMs), bound below by the HBM bytes of all requests. Arrays of
    length one come back, in :func:`time_arrays`' layout."""
    rates = rates or tm["rates"]
    sms = rates.sms
    phases = []
    total = 0.0
    for ph in tm["phases"]:
        progs = np.asarray(ph["programs"], dtype=float)
        n = progs.sum()
        w = lambda key: float((progs * np.asarray(ph[key])).sum() / max(n, 1))  # noqa: E731
        work = float((progs * np.asarray(ph["sm_program_s"])).sum())
        longest = float(np.max(ph["longest_program_s"]))
        mean = work / max(n, 1)
        sm = np.asarray(ph["sm_program_s"], dtype=float)
        if np.ptp(sm) == 0 and np.ptp(np.asarray(ph["longest_program_s"])) == 0 \
                and np.all(np.asarray(ph["longest_program_s"]) == np.asarray(ph["program_s"])):
            # equal programs (requests of one length, no mask): waves, as time_arrays has them
            mk = float(ph["program_s"][0]) if n <= sms else float(np.ceil(n / sms) * sm[0])
        else:
            mk = longest if n <= sms else max(longest, work / sms + 0.5 * mean)
        hbm_b = float(np.sum(ph["hbm_bytes"]))
        hbm_t = hbm_b / rates.hbm_read_bps
        t = max(mk, hbm_t)
        i = int(np.argmax(ph["longest_program_s"]))
        k = float(np.asarray(ph["programs_per_sm"]).reshape(-1)[i])
        one = lambda v: np.array([v])  # noqa: E731
        phases.append({
            "name": ph["name"], "programs": one(n), "programs_per_sm": one(k),
            "registers": one(float(np.asarray(ph["registers"]).reshape(-1)[i])),
            "waves": one(n / (sms * k)), "steps_per_program": one(w("steps_per_program")),
            "program_s": one(w("program_s")), "longest_program_s": one(longest),
            "sm_program_s": one(w("sm_program_s")), "compute_s": one(w("compute_s")),
            "exp_s": one(w("exp_s")), "load_s": one(w("load_s")),
            "start_s": one(w("start_s")), "makespan_s": one(mk), "hbm_bound_s": one(hbm_t),
            "hbm_bytes": one(hbm_b), "time_s": one(t),
            "limiter": np.array(["HBM bandwidth" if hbm_t >= mk else
                                 str(np.asarray(ph["limiter"]).reshape(-1)[i])], dtype=object)})
        total += t + rates.launch_s
    host = rates.host_seconds(len(phases)) if phases else 0.0
    total = max(total, host)
    mm = float(np.sum(tm["tensor_utilisation"] * tm["time_s"]))   # utilisation x time = FLOPs/peak
    hbm_all = sum(float(ph["hbm_bytes"][0]) for ph in phases)
    return {"time_s": np.array([total]), "phases": phases,
            "launch_s": rates.launch_s * len(phases), "host_s": host,
            "tensor_utilisation": np.array([mm / max(total, 1e-30)]),
            "hbm_bytes_per_s": np.array([hbm_all / max(total, 1e-30)]), "rates": rates}
