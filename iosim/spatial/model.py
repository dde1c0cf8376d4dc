"""The spatial-accelerator model: an attention cascade on PE arrays, end to end.

:func:`evaluate` takes a cascade, a :class:`~iosim.spatial.arch.SpatialHardware`, a
:class:`Shape` (batch, heads, E, F, M, P) and the choices a configuration makes (binding
policy and overrides, schedule, fusion, mapping limits) and returns a
:class:`SpatialResult`. Every number is derived, step by step:

1. **Einsums** (:mod:`iosim.spatial.work`): the operations per index-space point of every
   Einsum come from its expression; pure re-indexings (``BK = K[m1*M0+m0, e]``) are views,
   element-wise scalings (``SQK = scale * BQK``) are folded into their producer.
2. **Binding** (:mod:`iosim.spatial.binding`), checked against each array's operations.
3. **Tiles.** A tile is M0 keys x P0 queries; M0 and P0 are the 2D array's rows and columns
   (for a group that runs on the 1D array only, one query row at a time with M0 keys across
   the PEs). A task is one Einsum over one tile: its index space restricted to the tile
   (``p`` -> P0, ``m0`` -> M0, ``m1`` -> 1, every other rank whole), spread over the array
   by a spatial assignment (2D: inner key rank on the rows, query rank on the columns; 1D:
   the query rank, or the key rank for row-at-a-time groups), for ``prod(ceil(extent /
   spatial)) x cycles-per-element`` cycles; cycles per element follow from the Einsum's
   operations and the array's issue model (serial: their sum; pipelined: the busiest unit),
   which a configuration may set (``Options.issue``). A value computed by another task that
   does not vary along a spatial dimension of its consumer (the running max RM, one per
   query, needed by all 256 rows of SLN's column) is forwarded PE to PE along it: one cycle
   per PE, the latency the schedule must hide (``operand_latency`` of the array).
4. **Passes and mapping.** :func:`cascades.passes.analyze_rank` says in which pass over the
   key rank each Einsum runs. A *chunk* is P1 query tiles that run through every pass
   together; the mapper chooses P1 (a divisor of the number of query tiles) so that what
   must stay on chip fits the buffer: the chunk's query-side inputs, one key tile of each
   key-side input, per-query state (running max, denominators, accumulators) and — for a
   multi-pass cascade — the key-rank fibres of every tensor produced in one pass and read in
   a later one. What does not fit is spilled to DRAM (written once, re-read per later pass).
5. **DRAM traffic** comes from the memory-hierarchy model: the group's mapping is written as
   a chunked loop nest (:func:`iosim.mapping.chunked_nest`: query-side inputs once per chunk,
   key-side inputs once per chunk and pass, spilled fibres written once and read per later
   pass, outputs once) and :func:`iosim.traffic.count_terms` counts it.
6. **Schedule** (:mod:`iosim.spatial.schedule`): the tasks of a stream of chunks (passes,
   key tiles, query tiles interleaved) with their dependencies — same tile, previous iterate
   of a recurrence, completed reductions, accumulation across key tiles — run under the
   configuration's policy (pipelined across tiles, in order per array, or tile-sequential:
   a barrier between consecutive tiles); long streams are extrapolated from short
   simulations.
7. **Latency** = max(compute, DRAM time) for a fused configuration (perfect overlap, the
   artifact's "TeAAL heuristic"); an unfused configuration runs one kernel per run of
   consecutive Einsums on the same array, through DRAM, and adds max(compute, DRAM) per
   kernel. **Utilization** of an array = busy PE-cycles / (PEs x latency).
8. **Energy** = operations x per-op energy + register-file reads per op + global-buffer word
   accesses + DRAM accesses, per component.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import lru_cache

import cascades
from cascades.ir import Cascade, IFixed, accesses, index_vars, previous_iterate
from cascades.passes import analyze_rank
from iosim.errors import IosimError
from iosim.spatial.arch import SpatialHardware, load_spatial_hardware
from iosim.spatial.binding import Binding, bind
from iosim.spatial.schedule import TaskGraph, simulate
from iosim.spatial.work import einsum_ops, element_cycles, fold_candidates, is_view, native_ops

__all__ = ["Shape", "Options", "SpatialResult", "evaluate", "prepare", "SCHEDULES_ALL"]

SCHEDULES_ALL = ("pipelined", "sequential", "tile-sequential", "unfused")
ISSUE_MODELS = ("serial", "pipelined")
QUERY_RANK = "P"
KEY_RANK = "M"


@dataclass(frozen=True)
class Shape:
    """One attention layer: ``batch`` x ``heads`` independent (M x P) problems."""
    batch: int
    heads: int
    E: int
    F: int
    M: int
    P: int

    def __post_init__(self):
        for k in ("batch", "heads", "E", "F", "M", "P"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise IosimError(f"workload shape: {k} must be a positive integer, got {v!r}")

    @property
    def bh(self) -> int:
        return self.batch * self.heads

    def to_dict(self) -> dict:
        return {"batch": self.batch, "heads": self.heads, "E": self.E, "F": self.F,
                "M": self.M, "P": self.P}


@dataclass(frozen=True)
class Options:
    """What a configuration decides besides the cascade and the hardware."""
    binding: str = "tile"                 # binding policy
    overrides: tuple = ()                 # ((einsum, array), ...)
    schedule: str = "pipelined"           # pipelined | sequential | tile-sequential | unfused
    depth: int = 8                        # tiles an array holds in flight (pipelined)
    fold: bool = True                     # fold element-wise scalings into their producer
    min_onchip_fraction: float = 0.0      # keep multi-pass fibres on chip only if >= this fits
    max_query_rows: int | None = None     # cap of P1 * P0 (FLAT's row-block limit)
    query_tiles: int | None = None        # force P1
    issue: tuple = ()                     # ((array, "serial"|"pipelined"), ...): how the
    #                                       configuration issues operations on an array

    def __post_init__(self):
        if self.schedule not in SCHEDULES_ALL:
            raise IosimError(f"unknown schedule '{self.schedule}' (expected "
                             f"{', '.join(SCHEDULES_ALL)})")
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth < 1:
            raise IosimError(f"pipeline depth must be a positive integer, got {self.depth!r}")
        if not 0.0 <= self.min_onchip_fraction <= 1.0:
            raise IosimError("min_onchip_fraction must be within [0, 1]")
        if isinstance(self.issue, dict):
            object.__setattr__(self, "issue", tuple(sorted(self.issue.items())))
        for item in self.issue:
            if not (isinstance(item, tuple) and len(item) == 2):
                raise IosimError(f"issue: expected (array, model) pairs, got {item!r}")
            if item[1] not in ISSUE_MODELS:
                raise IosimError(f"issue model '{item[1]}' for array '{item[0]}' is not one of "
                                 f"{', '.join(ISSUE_MODELS)}")

    def to_dict(self) -> dict:
        return {"binding": self.binding, "overrides": dict(self.overrides),
                "schedule": self.schedule, "depth": self.depth, "fold": self.fold,
                "min_onchip_fraction": self.min_onchip_fraction,
                "max_query_rows": self.max_query_rows, "query_tiles": self.query_tiles,
                "issue": dict(self.issue)}


# --------------------------------------------------------------------------------------
# Einsums of the model
# --------------------------------------------------------------------------------------

@dataclass
class Ein:
    tensor: str
    index: int
    ivars: tuple
    lhs_vars: tuple
    reduce_vars: tuple
    ops: Counter
    reads: list                    # [(tensor, kind, access vars)]
    traversing: bool
    key_inner: bool
    is_contraction: bool
    accumulates: bool
    shifted: bool
    pass_: int = 0                 # pass over the key rank (traversing Einsums)
    level: int = 0                 # after which pass a non-traversing Einsum runs
    array: str = ""
    group: int = 0
    # per task, on the bound array
    ext: dict = field(default_factory=dict)
    spatial: dict = field(default_factory=dict)
    cpe: float = 0.0               # cycles per element
    duration: float = 0.0          # cycles per task
    active_pes: int = 0
    latency: float = 0.0           # drain latency of its result (operand_latency "reduction")
    forward: dict = field(default_factory=dict)   # operand -> forwarding latency ("broadcast")
    elements: int = 0              # index-space points per task


@dataclass
class Prepared:
    cascade: Cascade
    shape: Shape
    hw: SpatialHardware
    options: Options
    extents: dict
    params: dict
    key_vars: tuple                # index vars of the key rank and its parts
    tile_var: str                  # the key var that enumerates key tiles (m1, or m)
    inner_var: str                 # the key var inside a tile (m0, or m)
    M0: int
    P0: int
    einsums: list
    binding: Binding
    folded: dict                   # folded tensor -> source tensor
    views: dict                    # view tensor -> (source tensor, source ranks)
    producers: dict                # tensor -> Ein
    inputs: tuple
    outputs: tuple
    npasses: int



def _source(c: Cascade, t: str, views: dict, folded: dict) -> str:
    seen = set()
    while t in views or t in folded:
        if t in seen:
            break
        seen.add(t)
        t = views[t][0] if t in views else folded[t]
    return t


def prepare(cascade, hw, shape: Shape, options: Options = Options()) -> Prepared:
    """Everything about the cascade on this hardware that does not depend on the mapping."""
    c = cascades.load(cascade) if isinstance(cascade, str) else cascade
    hw = load_spatial_hardware(hw) if not isinstance(hw, SpatialHardware) else hw
    if options.issue:
        ov = dict(options.issue)
        for a in ov:
            hw.array(a)                      # raises for an unknown array
        hw = replace(hw, arrays=tuple(replace(a, issue=ov.get(a.name, a.issue))
                                      for a in hw.arrays))
    for a in hw.arrays:
        if any(d < 1 for d in a.dims):
            raise IosimError(f"array '{a.name}' of '{hw.name}' has size zero")
    ranks = c.info.ranks
    for r in (QUERY_RANK, KEY_RANK):
        if r not in ranks:
            raise IosimError(f"cascade '{c.name}' has no rank '{r}': the spatial model needs an "
                             f"attention-like cascade over queries P and keys M")
    big = hw.matrix_array()
    rows = big.dims[0]
    cols = big.dims[-1]
    M0 = rows
    part = c.info.partition_of.get(KEY_RANK)
    given = {"P": shape.P, "M": shape.M, "E": shape.E, "F": shape.F}
    given = {k: v for k, v in given.items() if k in ranks}
    params = {}
    if part is not None:
        from cascades.ir import Name as _Name
        if isinstance(part.block, _Name) and part.block.name in {p.name for p in c.params}:
            params[part.block.name] = M0
    from cascades.executor import resolve
    try:
        extents, pvals = resolve(c, given, **params)
    except Exception as e:  # cascades errors are one-liners
        raise IosimError(f"cascade '{c.name}': {str(e).splitlines()[0]}") from None
    pvals = {k: (v.item() if hasattr(v, "item") else v) for k, v in pvals.items()}
    if part is not None:
        if extents.get(part.inner) != M0:
            raise IosimError(f"cascade '{c.name}': key block {part.inner}={extents.get(part.inner)} "
                             f"must equal the 2D array's rows ({M0})")
        tile_var, inner_var = part.outer.lower(), part.inner.lower()
        key_vars = (KEY_RANK.lower(), tile_var, inner_var)
    else:
        tile_var = inner_var = KEY_RANK.lower()
        key_vars = (tile_var,)
    # views and folds
    views, folded = {}, {}
    for e in c.einsums:
        if is_view(e):
            views[e.tensor] = (e.expr.tensor, None)
    if options.fold:
        for t in fold_candidates(c, pvals):
            e = [x for x in c.einsums if x.tensor == t][0]
            folded[t] = accesses(e.expr)[0].tensor
    # Einsum records
    ein: list[Ein] = []
    for i, e in enumerate(c.einsums):
        if e.is_init or e.tensor in views or e.tensor in folded:
            continue
        ivars = e.index_space()
        lhs_vars = tuple(v for ix in e.lhs.indices for v in index_vars(ix))
        red = tuple(e.reduction.vars) if e.reduction else ()
        ops = einsum_ops(e, pvals)
        reads = []
        for a in accesses(e.expr):
            src = _source(c, a.tensor, views, folded)
            avars = tuple(v for ix in a.indices for v in index_vars(ix))
            if any(isinstance(ix, IFixed) for ix in a.indices):
                kind = "final"
            elif previous_iterate(c, a):
                kind = "prev"
            elif set(avars) & set(key_vars):
                kind = "stream"
            else:
                kind = "whole"
            reads.append((src, kind, avars))
        trav = bool(set(ivars) & set(key_vars))
        ein.append(Ein(
            tensor=e.tensor, index=i, ivars=tuple(ivars), lhs_vars=lhs_vars, reduce_vars=red,
            ops=ops, reads=reads, traversing=trav, key_inner=inner_var in ivars,
            is_contraction=(e.reduction is not None and e.reduction.op == "sum"
                            and ops.get("mac", 0) > 0),
            accumulates=tile_var in red, shifted=e.shift is not None))
    if not ein:
        raise IosimError(f"cascade '{c.name}' has no Einsum to run")
    binding = bind(ein, hw, options.binding, dict(options.overrides))
    for e in ein:
        e.array = binding.of(e.tensor)
    producers = {e.tensor: e for e in ein}
    # passes over the key rank
    rp = analyze_rank(c, KEY_RANK)
    for e in ein:
        if e.traversing:
            e.pass_ = max(1, int(rp.einsum_pass.get(e.tensor, 1)))
    npasses = max([e.pass_ for e in ein if e.traversing] or [1])

    def level(e: Ein, stack=()) -> int:
        lv = 0
        for src, _, _ in e.reads:
            p = producers.get(src)
            if p is None or p is e or src in stack:
                continue
            lv = max(lv, p.pass_ if p.traversing else level(p, stack + (e.tensor,)))
        return lv
    for e in ein:
        if not e.traversing:
            e.level = level(e)
    inputs = tuple(t.name for t in c.inputs)
    outputs = tuple(t.name for t in c.outputs)
    return Prepared(c, shape, hw, options, extents, pvals, key_vars, tile_var, inner_var, M0,
                    cols, ein, binding, folded, views, producers, inputs, outputs, npasses)


# --------------------------------------------------------------------------------------
# groups (kernels), tiles and spatial assignment
# --------------------------------------------------------------------------------------

@dataclass
class Group:
    index: int
    einsums: list
    arrays: tuple
    P0: int
    M0: int


def _groups(pp: Prepared) -> list[Group]:
    hw = pp.hw
    big = hw.matrix_array()
    if pp.options.schedule == "unfused":
        runs: list[list[Ein]] = []
        for e in sorted(pp.einsums, key=lambda x: x.index):
            if runs and runs[-1][-1].array == e.array:
                runs[-1].append(e)
            else:
                runs.append([e])
    else:
        runs = [sorted(pp.einsums, key=lambda x: x.index)]
    out = []
    for gi, es in enumerate(runs):
        arrays = tuple(dict.fromkeys(e.array for e in es))
        if big.name in arrays:
            P0, M0 = big.dims[-1], big.dims[0]
        else:
            a = hw.array(arrays[0])
            P0, M0 = 1, a.dims[0]
        if pp.tile_var != pp.inner_var:          # partitioned: the key block is the 2D rows
            M0 = pp.M0
        for e in es:
            e.group = gi
        out.append(Group(gi, es, arrays, P0, M0))
    return out


def _task_extents(pp: Prepared, g: Group, e: Ein) -> dict:
    ext = {}
    for v in e.ivars:
        rank = pp.cascade.info.var_rank[v]
        n = int(pp.extents[rank])
        if v == QUERY_RANK.lower():
            n = min(n, g.P0)
        elif v == pp.tile_var and pp.tile_var != pp.inner_var:
            n = 1
        elif v == pp.inner_var:
            n = min(n, g.M0)
        ext[v] = n
    return ext


def _spatial(pp: Prepared, g: Group, e: Ein, arr) -> dict:
    prefs = []
    if len(arr.dims) == 2:
        prefs = [pp.inner_var, QUERY_RANK.lower()]
    else:
        prefs = [QUERY_RANK.lower() if g.P0 > 1 else pp.inner_var]
    used, out = set(), {}
    for d, pref in zip(arr.dims, prefs + [None] * len(arr.dims)):
        v = pref if (pref in e.ext and pref not in used and e.ext[pref] > 1) else None
        if v is None:
            cands = [(n, x) for x, n in e.ext.items() if x not in used and n > 1]
            if not cands:
                continue
            v = max(cands)[1]
        used.add(v)
        out[v] = min(e.ext[v], d)
    return out


def _tile_model(pp: Prepared, groups: list[Group]) -> None:
    for g in groups:
        for e in g.einsums:
            arr = pp.hw.array(e.array)
            e.ext = _task_extents(pp, g, e)
            e.spatial = _spatial(pp, g, e, arr)
            e.cpe = element_cycles(e.ops, arr)
            steps = 1
            for v, n in e.ext.items():
                steps *= math.ceil(n / e.spatial.get(v, 1))
            e.duration = steps * e.cpe
            e.active_pes = math.prod(e.spatial.values()) if e.spatial else 1
            e.elements = math.prod(e.ext.values()) if e.ext else 1
            red_sp = [s for v, s in e.spatial.items() if v in e.reduce_vars]
            mode = arr.operand_latency
            e.latency = float(max(red_sp)) if (red_sp and mode == "reduction") else 0.0
            e.forward = {}
            if mode == "broadcast":
                for src, _, avars in e.reads:
                    hops = [n for v, n in e.spatial.items() if v not in avars and n > 1]
                    if hops and src in pp.producers and src != e.tensor:
                        e.forward[src] = float(max(max(hops), e.forward.get(src, 0.0)))


# --------------------------------------------------------------------------------------
# tensors, footprints, the mapper and DRAM traffic
# --------------------------------------------------------------------------------------

@dataclass
class TensorClass:
    name: str
    role: str          # q_input | k_input | qk_input | other_input | state | multipass | local | output
    vars: tuple
    read_passes: tuple = ()
    produced_pass: int = 0
    group_output: bool = False
    cross_array: bool = False


def _tensor_vars(pp: Prepared, t: str) -> tuple:
    return tuple(r.lower() for r in pp.cascade.info.tensor_ranks[t])


def _size_elems(pp: Prepared, vars_, skip=()) -> int:
    n = 1
    for v in vars_:
        if v in skip:
            continue
        n *= int(pp.extents[pp.cascade.info.var_rank[v]])
    return n


def _classify(pp: Prepared, g: Group) -> dict:
    """Classify every tensor a group touches."""
    q = QUERY_RANK.lower()
    keyish = set(pp.key_vars) | {KEY_RANK.lower()}
    inside = {e.tensor for e in g.einsums}
    out: dict[str, TensorClass] = {}
    consumers: dict[str, list] = {}
    for e in g.einsums:
        for src, kind, _ in e.reads:
            consumers.setdefault(src, []).append((e, kind))
    later_groups_read = set()
    for e in pp.einsums:
        if e.group != g.index:
            for src, _, _ in e.reads:
                later_groups_read.add(src)
    for t, cons in consumers.items():
        if t in inside:
            continue
        vs = _tensor_vars(pp, t)
        hq, hk = q in vs, bool(set(vs) & keyish)
        passes = tuple(sorted({e.pass_ if e.traversing else e.level for e, _ in cons}))
        role = ("qk_input" if hq and hk else "q_input" if hq else "k_input" if hk
                else "other_input")
        if role == "qk_input" and len(passes) > 1:
            role = "multipass"
        out[t] = TensorClass(t, role, vs, read_passes=passes, produced_pass=0)
    for e in g.einsums:
        t = e.tensor
        vs = _tensor_vars(pp, t)
        cons = consumers.get(t, [])
        is_out = t in pp.outputs or t in later_groups_read
        later = sorted({c.pass_ for c, k in cons
                        if c.traversing and e.traversing and k == "stream" and c.pass_ > e.pass_})
        state = e.traversing and (e.accumulates or e.shifted or any(
            k in ("prev", "final", "whole") for _, k in cons))
        cross = any(c.array != e.array for c, k in cons if k == "stream") or any(
            c.array != e.array and not c.traversing for c, k in cons)
        if later:
            role = "multipass"
        elif state:
            role = "state"
        elif is_out:
            role = "output"
        else:
            role = "local"
        out[t] = TensorClass(t, role, vs, read_passes=tuple(later),
                             produced_pass=e.pass_ if e.traversing else e.level,
                             group_output=is_out, cross_array=cross)
    return out


def _footprints(pp: Prepared, g: Group, tc: dict, P1: int):
    """(mandatory bytes, multi-pass bytes) per chunk of P1 query tiles."""
    wb = pp.hw.word_bytes
    q = QUERY_RANK.lower()
    keyish = set(pp.key_vars) | {KEY_RANK.lower()}
    rows = P1 * g.P0
    mand = 0.0
    for t, c in tc.items():
        other = _size_elems(pp, c.vars, skip=keyish | {q})
        if c.role == "q_input":
            mand += rows * other * wb
        elif c.role == "k_input":
            mand += g.M0 * other * wb
        elif c.role == "state" or (c.role == "output" and pp.producers.get(t) is not None
                                    and pp.producers[t].accumulates):
            mand += rows * other * wb
    # multi-pass: live across pass boundaries
    mp = 0.0
    npass = max([e.pass_ for e in g.einsums if e.traversing] or [1])
    for b in range(1, npass):
        live = 0.0
        for t, c in tc.items():
            if c.role != "multipass":
                continue
            made = c.produced_pass if c.produced_pass else min(c.read_passes)
            last = max(c.read_passes)
            if made <= b < last:
                fiber = _size_elems(pp, c.vars, skip={q})
                live += rows * fiber * wb
        mp = max(mp, live)
    return mand, mp


def _nest_ranks(pp: Prepared, t: str) -> tuple:
    """A tensor's ranks in the loop-nest vocabulary of :mod:`iosim.mapping`: ``P`` (query
    rows), ``M`` (keys), ``Mt`` (one entry per key tile: the outer rank of the key
    partition), other ranks whole."""
    ranks = list(pp.cascade.info.tensor_ranks[t])
    part = pp.cascade.info.partition_of.get(KEY_RANK)
    if part is not None and part.outer in ranks:
        if part.inner in ranks:
            ranks.remove(part.inner)
            ranks[ranks.index(part.outer)] = "M"
        else:
            ranks[ranks.index(part.outer)] = "Mt"
    return tuple(ranks)


def _loop_nest(pp: Prepared, g: Group, tc: dict, P1: int = 1):
    """The group's chunked loop nest (:func:`iosim.mapping.chunked_nest`): chunks of P1 query
    tiles; per chunk the query-side inputs once, every pass over the key tiles with the
    key-side inputs it reads, multi-pass fibres whose spilled part is written in the pass
    that makes them and read back in each later pass, outputs once."""
    from iosim.mapping import ChunkPass, chunked_nest
    npass = max([e.pass_ for e in g.einsums if e.traversing] or [1])
    ps = [{"loads": [], "stores": [], "spill_loads": [], "spill_stores": []}
          for _ in range(npass)]

    def at(k):
        return ps[min(max(int(k), 1), npass) - 1]
    ranks = {t: _nest_ranks(pp, t) for t in tc}
    chunk_loads, once_loads, chunk_stores, once_stores, keep = [], [], [], [], []
    for t, c in tc.items():
        rk = ranks[t]
        keyed = "M" in rk or "Mt" in rk
        if c.role == "q_input":
            chunk_loads.append(t)
        elif c.role == "other_input":
            once_loads.append(t)
        elif c.role == "k_input":
            for k in (c.read_passes or (1,)):
                at(k)["loads"].append(t)
        elif c.role == "qk_input":
            at(min(c.read_passes or (1,)))["loads"].append(t)
        elif c.role == "multipass":
            rp = sorted(c.read_passes)
            if c.produced_pass == 0:              # an input read in several passes
                at(rp[0])["loads"].append(t)
                for k in rp[1:]:
                    at(k)["spill_loads"].append(t)
            else:
                at(c.produced_pass)["stores" if c.group_output else "spill_stores"].append(t)
                for k in rp:
                    at(k)["spill_loads"].append(t)
        elif c.role == "state":
            keep.append(t)
            ranks[t + "~"] = tuple(r for r in rk if r not in ("M", "Mt"))
        if c.group_output and c.role != "multipass":
            if keyed and c.produced_pass:
                at(c.produced_pass)["stores"].append(t)
            elif "P" in rk:
                chunk_stores.append(t)
            else:
                once_stores.append(t)
    passes = tuple(ChunkPass(**{k: tuple(v) for k, v in d.items()},
                             label=f"pass {i + 1} over the key tiles" if npass > 1
                             else "key tiles")
                   for i, d in enumerate(ps) if any(d.values()))
    return chunked_nest(f"{pp.cascade.name} group {g.index}", pp.cascade.name, ranks,
                        chunk_loads=chunk_loads, once_loads=once_loads, passes=passes,
                        chunk_stores=chunk_stores, once_stores=once_stores,
                        keep=tuple(t + "~" for t in keep), block_q=P1 * g.P0, block_kv=g.M0,
                        label=" ".join(e.tensor for e in g.einsums))


def _nest_sizes(pp: Prepared, g: Group, P1: int, onchip: float) -> dict:
    sizes = {r: float(n) for r, n in pp.extents.items()}
    sizes.update({"block_q": P1 * g.P0, "block_kv": g.M0, "spill": 1.0 - onchip,
                  "Mt": math.ceil(pp.extents[KEY_RANK] / g.M0)})
    return sizes


def _traffic(pp: Prepared, g: Group, terms, P1: int, onchip: float) -> dict:
    """DRAM bytes (read, write) per tensor for the whole layer: the group's loop nest counted
    by :func:`iosim.traffic.count_terms`, times batch x heads and the word size."""
    from iosim.traffic import count_terms
    rd, wr = count_terms(terms, _nest_sizes(pp, g, P1, onchip))
    k = pp.shape.bh * pp.hw.word_bytes
    return {"read": {t: v * k for t, v in rd.items()}, "write": {t: v * k for t, v in wr.items()}}


@dataclass
class Plan:
    group: int
    P0: int
    M0: int
    P1: int
    KT: int
    chunks: int                      # over the whole layer
    mandatory_bytes: float
    multipass_bytes: float
    onchip_fraction: float
    dram_read: dict
    dram_write: dict
    roles: dict
    nest: object = None              # the iosim.mapping.LoopNest the DRAM traffic comes from
    nest_sizes: dict = field(default_factory=dict)

    def loop_nest_text(self) -> str:
        """The chunked loop nest with this plan's trip counts (Timeloop style)."""
        from iosim.mapping import format_loop_nest
        if self.nest is None:
            return ""
        return format_loop_nest(self.nest, self.nest_sizes)

    @property
    def dram_bytes(self) -> float:
        return sum(self.dram_read.values()) + sum(self.dram_write.values())

    def to_dict(self) -> dict:
        return {"group": self.group, "P0": self.P0, "M0": self.M0, "P1": self.P1,
                "key_tiles": self.KT, "chunks": self.chunks,
                "buffer_mandatory_bytes": self.mandatory_bytes,
                "buffer_multipass_bytes": self.multipass_bytes,
                "multipass_onchip_fraction": self.onchip_fraction,
                "dram_read_bytes": dict(self.dram_read), "dram_write_bytes": dict(self.dram_write),
                "tensor_roles": dict(self.roles), "loop_nest": self.loop_nest_text(),
                "spill_fraction": self.nest_sizes.get("spill", 0.0)}


def _plan(pp: Prepared, g: Group) -> Plan:
    from iosim.traffic import nest_terms
    tc = _classify(pp, g)
    terms = nest_terms(_loop_nest(pp, g, tc))
    cap = pp.hw.buffer.capacity_bytes
    QT = math.ceil(pp.extents[QUERY_RANK] / g.P0)
    KT = math.ceil(pp.extents[KEY_RANK] / g.M0)
    opts = pp.options
    cands = [d for d in range(1, QT + 1) if QT % d == 0]
    if opts.max_query_rows:
        cands = [d for d in cands if d * g.P0 <= max(opts.max_query_rows, g.P0)]
    if opts.query_tiles is not None:
        if QT % opts.query_tiles:
            raise IosimError(f"query tiles per chunk ({opts.query_tiles}) must divide the "
                             f"{QT} query tiles")
        cands = [opts.query_tiles]
    best = None
    for P1 in cands:
        mand, mp = _footprints(pp, g, tc, P1)
        if mand > cap:
            continue
        onchip = 1.0 if mp == 0 else max(0.0, min(1.0, (cap - mand) / mp))
        if onchip < opts.min_onchip_fraction:
            onchip = 0.0
        tr = _traffic(pp, g, terms, P1, onchip)
        total = sum(tr["read"].values()) + sum(tr["write"].values())
        key = (round(total, 6), -P1)
        if best is None or key < best[0]:
            best = (key, P1, mand, mp, onchip, tr)
    if best is None:
        mand, _ = _footprints(pp, g, tc, min(cands) if cands else 1)
        raise IosimError(f"buffer of {_fmt_bytes(cap)} is too small for the tiles of "
                         f"{', '.join(e.tensor for e in g.einsums[:3])}...: one chunk needs "
                         f"{_fmt_bytes(mand)} on chip")
    _, P1, mand, mp, onchip, tr = best
    chunks = pp.shape.bh * math.ceil(QT / P1)
    sizes = {k: (int(v) if float(v).is_integer() else v)
             for k, v in _nest_sizes(pp, g, P1, onchip).items()}
    return Plan(g.index, g.P0, g.M0, P1, KT, chunks, mand, mp, onchip, tr["read"], tr["write"],
                {t: c.role for t, c in tc.items()}, _loop_nest(pp, g, tc, P1), sizes)


def _fmt_bytes(b: float) -> str:
    for unit, f in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if b >= f:
            return f"{b / f:.3g} {unit}"
    return f"{b:.0f} B"


# --------------------------------------------------------------------------------------
# the task stream and its schedule
# --------------------------------------------------------------------------------------

def _build_graph(sig, C, KT, P1) -> TaskGraph:
    """The task stream of C chunks of KT key tiles x P1 query tiles: for each pass, key tiles
    outer and query tiles inner (the P1 query tiles interleave), then the Einsums that run
    once per query tile after that pass (the final division)."""
    g = TaskGraph()
    tid = {}
    body, post = {}, {}
    ens = [dict(zip(_SIG_KEYS, s)) for s in sig]
    for e in ens:
        (body.setdefault(e["pass_"], []) if e["traversing"] else post.setdefault(e["level"], [])
         ).append(e)
    npass = max(list(body) + [1])
    pos = 0
    for c in range(C):
        for k in range(0, npass + 1):
            if k >= 1:
                for j in range(KT):
                    for i in range(P1):
                        for e in body.get(k, []):
                            tid[(e["tensor"], c, j, i)] = g.add(
                                e["array"], e["duration"], pos, _sig_preds(e, c, j, i, KT, tid),
                                (e["tensor"], c, k, j, i))
                        pos += 1
            if post.get(k):
                for i in range(P1):
                    for e in post[k]:
                        tid[(e["tensor"], c, None, i)] = g.add(
                            e["array"], e["duration"], pos, _sig_preds(e, c, None, i, KT, tid),
                            (e["tensor"], c, k, None, i), sync=False)
                    pos += 1
    return g


@lru_cache(maxsize=4096)
def _sim_cached(sig, C, KT, P1, policy, depth, narr):
    return simulate(_build_graph(sig, C, KT, P1), narr, policy, depth)


_SIG_KEYS = ("tensor", "array", "duration", "traversing", "pass_", "level", "accumulates",
             "deps")


def _sig_preds(e, c, j, i, KT, tid):
    out = []
    for src, kind, ptrav, lat in e["deps"]:
        if ptrav:
            if kind == "prev":
                if j is None or j == 0:
                    continue
                key = (src, c, j - 1, i)
            elif kind == "stream" and j is not None:
                key = (src, c, j, i)
            else:
                key = (src, c, KT - 1, i)
        else:
            key = (src, c, None, i)
        t = tid.get(key)
        if t is not None:
            out.append((t, lat))
    if e["accumulates"] and j is not None and j > 0:
        t = tid.get((e["tensor"], c, j - 1, i))
        if t is not None:
            out.append((t, 0.0))
    return out


def _signature(pp: Prepared, g: Group) -> tuple:
    aidx = {a: i for i, a in enumerate(pp.hw.array_names)}
    inside = {e.tensor for e in g.einsums}
    sig = []
    for e in sorted(g.einsums, key=lambda x: x.index):
        deps = []
        for src, kind, _ in e.reads:
            if src not in inside or src == e.tensor:
                continue
            p = pp.producers[src]
            deps.append((src, kind, p.traversing, p.latency + e.forward.get(src, 0.0)))
        sig.append((e.tensor, aidx[e.array], e.duration, e.traversing, e.pass_, e.level,
                    e.accumulates, tuple(deps)))
    return tuple(sig)


#: query tiles simulated exactly up to P1_SIM[1]; beyond, interpolated between P1_SIM. Key tiles
#: are simulated exactly while the chunk has at most TILES_SIM[1] tiles, else at two lengths
#: of at least TILES_SIM[0] and TILES_SIM[1] tiles and extrapolated linearly.
P1_SIM = (8, 12)
TILES_SIM = (48, 72)


def _compute_cycles(pp: Prepared, g: Group, plan: Plan) -> tuple[float, dict]:
    """Cycles of the group's whole stream under the schedule policy, and how they were got."""
    policy = "pipelined" if pp.options.schedule == "unfused" else pp.options.schedule
    narr = len(pp.hw.arrays)
    if len(g.arrays) == 1 and pp.options.schedule == "unfused":
        # one array, one kernel: the array streams through its tasks back to back
        per_chunk = sum(e.duration * (plan.KT if e.traversing else 1) for e in g.einsums)
        return per_chunk * plan.P1 * plan.chunks, {"method": "sum (single-array kernel)"}
    sig = _signature(pp, g)
    depth = pp.options.depth

    def T(C, KT, P1):
        return _sim_cached(sig, C, KT, P1, policy, depth, narr)

    def lin(f, x, a, b):
        fa, fb = f(a), f(b)
        return fa + (x - a) * (fb - fa) / (b - a)

    def over_kt(C, P1):
        KT = plan.KT
        ka = max(4, math.ceil(TILES_SIM[0] / P1))
        kb = max(ka + 2, math.ceil(TILES_SIM[1] / P1))
        if KT <= kb:
            return T(C, KT, P1)
        return lin(lambda k: T(C, k, P1), KT, ka, kb)

    def chunk(C):
        P1 = plan.P1
        if P1 <= P1_SIM[1]:
            return over_kt(C, P1)
        return lin(lambda p: over_kt(C, p), P1, *P1_SIM)
    nchunks = plan.chunks
    t1 = chunk(1)
    if nchunks == 1:
        total, info = t1, {"method": "simulated", "chunk_cycles": t1}
    else:
        t2 = chunk(2)
        total = t1 + (nchunks - 1) * (t2 - t1)
        info = {"method": "simulated+extrapolated", "first_chunk_cycles": t1,
                "chunk_period_cycles": t2 - t1}
    # no schedule beats the busiest array (guards the extrapolation)
    floor = max((sum(e.duration * (plan.KT if e.traversing else 1) for e in g.einsums
                     if e.array == a) * plan.P1 * plan.chunks) for a in g.arrays)
    if total < floor:
        info["clamped_from_cycles"] = total
        total = floor
    return total, info


# --------------------------------------------------------------------------------------
# energy and results
# --------------------------------------------------------------------------------------

def _tasks(pp: Prepared, plan: Plan, e: Ein) -> float:
    return plan.chunks * plan.P1 * (plan.KT if e.traversing else 1)


def _buffer_accesses(pp: Prepared, g: Group, plan: Plan) -> tuple[float, float]:
    """(word reads, word writes) of the global buffer for the group.

    Every DRAM transfer is staged in the global buffer (a fill is a buffer write, a
    write-back a buffer read). An Einsum reads from the buffer every operand that is not in
    its PEs' registers: inputs, per-query state, multi-pass fibres (the spilled part after
    its refill), and tile results produced by the other array; it writes to the buffer what
    must outlive the tile or cross to the other array: state (read-modify-write for an
    accumulation across key tiles), multi-pass fibres, hand-offs. A value a PE keeps for the
    next Einsum on the same array costs register-file accesses only.
    """
    wb = pp.hw.word_bytes
    roles = plan.roles
    reads = sum(plan.dram_write.values()) / wb       # write-backs leave through the buffer
    writes = sum(plan.dram_read.values()) / wb       # fills land in the buffer
    handed = set()
    for e in g.einsums:
        n = _tasks(pp, plan, e)
        for src, kind, avars in e.reads:
            role = roles.get(src)
            p = pp.producers.get(src)
            if p is not None and p.group == g.index and role in ("local", "output"):
                if p.array == e.array:
                    continue                           # stays in the PE registers
                handed.add(src)                        # handed to the other array
            per = 1
            for v in avars:
                per *= e.ext.get(v, 1)
            reads += n * per
        if e.accumulates:                              # read-modify-write of the partials
            reads += n * math.prod(e.ext.get(v, 1) for v in e.lhs_vars)
    for e in g.einsums:
        role = roles.get(e.tensor)
        if role in ("state", "multipass", "output") or e.tensor in handed:
            writes += math.prod(e.ext.get(v, 1) for v in e.lhs_vars) * _tasks(pp, plan, e)
    return reads, writes


@dataclass
class SpatialResult:
    cascade: str
    hardware: str
    shape: Shape
    options: Options
    binding: Binding
    latency_s: float
    compute_s: float
    dram_s: float
    bound: str
    dram_bytes: float
    utilization: dict
    energy_pj: dict
    einsums: list
    plans: list
    schedule_info: list
    clock_hz: float
    label: str = ""
    folded: dict = field(default_factory=dict)     # folded Einsum -> the producer it joins

    @property
    def energy_total_pj(self) -> float:
        return self.energy_pj["total"]

    def to_dict(self) -> dict:
        return {"cascade": self.cascade, "hardware": self.hardware, "label": self.label,
                "shape": self.shape.to_dict(), "options": self.options.to_dict(),
                "binding": self.binding.to_dict(), "latency_s": self.latency_s,
                "compute_s": self.compute_s, "dram_s": self.dram_s, "bound": self.bound,
                "dram_bytes": self.dram_bytes, "utilization": dict(self.utilization),
                "energy_pj": dict(self.energy_pj), "einsums": list(self.einsums),
                "plans": [p.to_dict() for p in self.plans],
                "schedule": list(self.schedule_info), "folded": dict(self.folded)}


def evaluate(cascade, hw, shape: Shape, options: Options = Options(), label: str = "") -> SpatialResult:
    """Run ``cascade`` on ``hw`` for one layer of ``shape`` (see the module docstring)."""
    pp = prepare(cascade, hw, shape, options)
    hw = pp.hw
    groups = _groups(pp)
    _tile_model(pp, groups)
    plans = [_plan(pp, g) for g in groups]
    clock = hw.clock_hz
    bw = hw.dram.bandwidth_Bps
    wb = hw.word_bytes
    comp_total = dram_total = lat_total = 0.0
    sched = []
    for g, plan in zip(groups, plans):
        cyc, info = _compute_cycles(pp, g, plan)
        comp_s = cyc / clock
        dram_s = plan.dram_bytes / bw
        info = dict(info, group=g.index, einsums=[e.tensor for e in g.einsums],
                    compute_s=comp_s, dram_s=dram_s, latency_s=max(comp_s, dram_s))
        sched.append(info)
        comp_total += comp_s
        dram_total += dram_s
        lat_total += max(comp_s, dram_s)
    if options.schedule != "unfused":
        lat_total = max(comp_total, dram_total)
    latency = lat_total
    lat_cycles = latency * clock
    # utilization and energy
    busy = Counter()
    energy = Counter()
    rows = []
    for g, plan in zip(groups, plans):
        for e in g.einsums:
            arr = hw.array(e.array)
            n = _tasks(pp, plan, e)
            busy[e.array] += n * e.duration * e.active_pes
            nat = native_ops(e.ops, arr)
            elems = n * e.elements
            comp_pj = sum(cnt * arr.op_energy(op) for op, cnt in nat.items()) * elems
            nops = sum(nat.values()) * elems
            rf_pj = nops * (arr.rf_reads_per_op * arr.rf_read_pj
                            + arr.rf_writes_per_op * arr.rf_write_pj)
            energy[f"{e.array}_compute"] += comp_pj
            energy[f"{e.array}_regfile"] += rf_pj
            rows.append({"einsum": e.tensor, "array": e.array, "group": g.index,
                         "pass": e.pass_ if e.traversing else None,
                         "ops_per_element": dict(e.ops),
                         "cycles_per_element": e.cpe, "task_extents": dict(e.ext),
                         "spatial": dict(e.spatial), "task_cycles": e.duration,
                         "tasks": n, "busy_cycles": n * e.duration,
                         "busy_fraction": (n * e.duration * e.active_pes)
                         / (arr.n_pes * lat_cycles) if lat_cycles else 0.0,
                         "drain_latency_cycles": e.latency,
                         "operand_latency_cycles": dict(e.forward),
                         "energy_pj": comp_pj + rf_pj})
        br, bwr = _buffer_accesses(pp, g, plan)
        energy["buffer"] += br * hw.buffer.word_read_pj(wb) + bwr * hw.buffer.word_write_pj(wb)
        energy["dram"] += (sum(plan.dram_read.values()) * hw.dram.pj_per_byte_read
                           + sum(plan.dram_write.values()) * hw.dram.pj_per_byte_write)
    util = {a.name: (busy[a.name] / (a.n_pes * lat_cycles) if lat_cycles else 0.0)
            for a in hw.arrays}
    en = {k: float(v) for k, v in energy.items()}
    en["total"] = float(sum(energy.values()))
    dram_bytes = sum(p.dram_bytes for p in plans)
    bound = "memory" if dram_total > comp_total else "compute"
    if options.schedule == "unfused":
        bound = "+".join("memory" if s["dram_s"] > s["compute_s"] else "compute" for s in sched)
    return SpatialResult(pp.cascade.name, hw.name, shape, options, pp.binding, latency,
                         comp_total, dram_total, bound, dram_bytes, util, en, rows, plans,
                         sched, clock, label, dict(pp.folded))


def schedule_trace(cascade, hw, shape: Shape, options: Options = Options(), key_tiles: int = 6,
                   query_tiles: int = 4, chunks: int = 1) -> list[dict]:
    """The simulated schedule of a short stream (``chunks`` x ``key_tiles`` x ``query_tiles``
    tiles), task by task: which array ran which Einsum of which tile, when. This is the
    "waterfall" the latency comes from."""
    pp = prepare(cascade, hw, shape, options)
    groups = _groups(pp)
    _tile_model(pp, groups)
    g = groups[0]
    policy = "pipelined" if options.schedule == "unfused" else options.schedule
    graph = _build_graph(_signature(pp, g), chunks, key_tiles, query_tiles)
    _, start, finish = simulate(graph, len(pp.hw.arrays), policy, options.depth, record=True)
    names = pp.hw.array_names
    out = []
    for t in range(len(graph)):
        ein, c, k, j, i = graph.label[t]
        out.append({"array": names[graph.array[t]], "einsum": ein, "chunk": c, "pass": k,
                    "key_tile": j, "query_tile": i, "start": start[t], "end": finish[t]})
    return sorted(out, key=lambda d: (d["start"], d["array"]))
