"""Scheduling Einsum tasks on PE arrays: a list scheduler over a stream of tiles.

A *task* is one Einsum over one tile (or one query tile, for Einsums that do not traverse the
key rank); it occupies one array for ``duration`` cycles and may start only when its
predecessors have finished (plus an edge latency, e.g. the drain of a reduction across PE
rows). Tasks are generated in *stream order* (tile by tile, Einsums in cascade order inside a
tile), and ``pos`` numbers the tile-steps of that stream.

Three policies:

``sequential``
    Every array executes its own tasks strictly in stream order (a static, in-order schedule).
    Arrays overlap only as far as the data dependencies allow, so an array that needs a
    value from the other array stalls (FuseMax's 2D array waiting for the running max).
``tile-sequential``
    No interleaving of tiles at all: a tile starts only when every task of the previous tile
    has finished, on every array (a barrier between consecutive tile-steps; tasks marked
    ``sync=False``, such as the final division that runs once per query tile, neither wait
    for nor hold the barrier; they fill the arrays' idle time). Inside a tile the arrays run
    as a dataflow machine: an idle array starts the oldest of the tile's tasks whose operands
    are ready. This is the FuseMax artifact's non-pipelined "+Architecture" schedule
    (``stall_proposal.py``): the next tile's QK waits for the previous tile's last Einsums
    (SPNV, RNV) on the 1D array.
``pipelined``
    Software pipelining across tiles: an idle array starts the oldest *ready* task among its
    tasks of a window of ``depth`` consecutive tile-steps (the oldest of which still has work
    on that array), so it works on the next tile while the current one waits for the other
    array. ``depth`` is the number of tiles an array can hold in flight (its registers).

:func:`simulate` returns the makespan in cycles. :func:`extrapolate` evaluates a stream that is
too long to simulate (millions of tiles) from a few short simulations: the makespan of a chunk
is affine in its number of key tiles and the increment per extra chunk is constant once the
pipeline is in steady state; both are checked by the tests.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from iosim.errors import IosimError

__all__ = ["TaskGraph", "simulate", "SCHEDULES"]

SCHEDULES = ("pipelined", "sequential", "tile-sequential")


@dataclass
class TaskGraph:
    """Tasks in stream order (index = priority)."""
    array: list = field(default_factory=list)      # array index
    duration: list = field(default_factory=list)   # cycles
    pos: list = field(default_factory=list)        # tile-step in the stream
    preds: list = field(default_factory=list)      # [(task, latency)]
    label: list = field(default_factory=list)      # (einsum, chunk, pass, key tile, query tile)
    sync: list = field(default_factory=list)       # takes part in the tile barrier

    def add(self, array: int, duration: float, pos: int, preds, label=None,
            sync: bool = True) -> int:
        self.sync.append(bool(sync))
        self.array.append(array)
        self.duration.append(float(duration))
        self.pos.append(pos)
        self.preds.append(list(preds))
        self.label.append(label)
        return len(self.array) - 1

    def __len__(self) -> int:
        return len(self.array)


def simulate(g: TaskGraph, n_arrays: int, policy: str = "pipelined", depth: int = 4,
             record: bool = False):
    """Makespan (cycles) of the task graph under ``policy``; with ``record`` also the start
    and finish time of every task."""
    if policy not in SCHEDULES:
        raise IosimError(f"unknown schedule '{policy}' (expected {', '.join(SCHEDULES)})")
    if depth < 1:
        raise IosimError(f"pipeline depth must be at least 1, got {depth}")
    n = len(g)
    if n == 0:
        return (0.0, [], []) if record else 0.0
    succ = [[] for _ in range(n)]
    indeg = [0] * n
    for t, ps in enumerate(g.preds):
        for p, lat in ps:
            if p >= t:
                raise IosimError("task graph is not in stream order (a task precedes its producer)")
            succ[p].append((t, lat))
            indeg[t] += 1
    ready_at = [0.0] * n
    start = [0.0] * n
    finish = [0.0] * n
    busy_until = [0.0] * n_arrays
    running = [False] * n_arrays
    completions: list = []          # (time, task)
    arrivals: list = []             # (time, task) tasks whose predecessors are done
    released = [[] for _ in range(n_arrays)]   # heaps of released task ids
    free = [[] for _ in range(n_arrays)]       # tile-sequential: released tasks outside the barrier
    # per-array windows: an array holds at most `depth` tile-steps in flight
    npos = max(g.pos) + 1
    open_count = [[0] * npos for _ in range(n_arrays)]
    for t, p in enumerate(g.pos):
        open_count[g.array[t]][p] += 1
    low = [0] * n_arrays             # lowest position with unfinished tasks, per array
    for a in range(n_arrays):
        while low[a] < npos and open_count[a][low[a]] == 0:
            low[a] += 1
    # in-order queues
    queues = [[] for _ in range(n_arrays)]
    for t in range(n):
        queues[g.array[t]].append(t)
    qhead = [0] * n_arrays
    is_released = [False] * n
    # tile barrier (tile-sequential): lowest tile-step with an unfinished sync task
    barrier = policy == "tile-sequential"
    sync = g.sync if len(g.sync) == n else [True] * n
    open_sync = [0] * npos
    for t, p in enumerate(g.pos):
        if sync[t]:
            open_sync[p] += 1
    glow = 0
    while glow < npos and open_sync[glow] == 0:
        glow += 1
    for t in range(n):
        if indeg[t] == 0:
            heapq.heappush(arrivals, (0.0, t))
    now = 0.0
    done = 0
    pipelined = policy == "pipelined"
    while done < n:
        while arrivals and arrivals[0][0] <= now:
            _, t = heapq.heappop(arrivals)
            is_released[t] = True
            if pipelined or (barrier and sync[t]):
                heapq.heappush(released[g.array[t]], t)
            elif barrier:
                heapq.heappush(free[g.array[t]], t)
        # start tasks on idle arrays
        for a in range(n_arrays):
            if running[a]:
                continue
            if pipelined:
                h = released[a]
                if h and g.pos[h[0]] < low[a] + depth:
                    t = heapq.heappop(h)
                else:
                    continue
            elif barrier:
                # the oldest ready task of the current tile; tasks outside the barrier fill
                # the array's idle time
                h, f = released[a], free[a]
                if h and g.pos[h[0]] <= glow:
                    t = heapq.heappop(h)
                elif f:
                    t = heapq.heappop(f)
                else:
                    continue
            else:
                if qhead[a] >= len(queues[a]):
                    continue
                t = queues[a][qhead[a]]
                if not is_released[t]:
                    continue
                qhead[a] += 1
            start[t] = now
            finish[t] = now + g.duration[t]
            running[a] = True
            busy_until[a] = finish[t]
            heapq.heappush(completions, (finish[t], t))
        # advance time
        nxt = []
        if completions:
            nxt.append(completions[0][0])
        if arrivals:
            nxt.append(arrivals[0][0])
        if not nxt:
            raise IosimError("schedule deadlock: no task can start (a dependency cycle or a "
                             "window too small for the stream)")
        now = max(now, min(nxt))
        while completions and completions[0][0] <= now:
            ft, t = heapq.heappop(completions)
            a = g.array[t]
            running[a] = False
            done += 1
            p = g.pos[t]
            oc = open_count[a]
            oc[p] -= 1
            while low[a] < npos and oc[low[a]] == 0:
                low[a] += 1
            if sync[t]:
                open_sync[p] -= 1
                while glow < npos and open_sync[glow] == 0:
                    glow += 1
            for s, lat in succ[t]:
                r = ft + lat
                if r > ready_at[s]:
                    ready_at[s] = r
                indeg[s] -= 1
                if indeg[s] == 0:
                    heapq.heappush(arrivals, (ready_at[s], s))
    makespan = max(finish)
    if record:
        return makespan, start, finish
    return makespan
