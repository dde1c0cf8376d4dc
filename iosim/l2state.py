"""An L2 partition as a cache *state* with NRU replacement (for :mod:`iosim.l2model`).

The response-based model charges a re-read by its reuse distance (the measured cyclic-scan
miss curve): exact for LRU, blind to a policy under which lines read once can push out lines
that many blocks are still reading. :class:`NruSets` keeps a partition's contents instead:
``sets`` x ``ways`` units with one "used" bit each, set on a fill or a hit; a miss fills the
first way of its set whose bit is clear, clearing every bit of the set first when none is
(NRU). Units map to sets linearly by address (consecutive units, consecutive sets), as
``experiments/csrc/l2_policy.c`` does on the measured schedules.

The associativity and the address map matter: on the measured schedules NRU with 16 (or 32)
ways and the linear map reproduces the head changes of causal query-major launches, NRU with
128 ways behaves like LRU, and a random set hash does worse than LRU (docs/validation.md).
"""
from __future__ import annotations

import numpy as np


class NruSets:
    """One L2 partition: ``n_sets`` sets of ``ways`` units, NRU replacement. Units are named
    by non-negative integer keys; the caller gives each unit's set."""

    def __init__(self, n_sets: int, ways: int):
        if n_sets < 1 or ways < 1:
            raise ValueError(f"an NRU partition needs sets and ways (got {n_sets} x {ways})")
        self.tag = np.full((n_sets, ways), -1, dtype=np.int64)
        self.used = np.zeros((n_sets, ways), dtype=bool)
        self.clears = 0

    @property
    def n_sets(self) -> int:
        return self.tag.shape[0]

    def access(self, sets: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """Read units ``keys`` (in sets ``sets``), in order; True where a unit missed (was
        filled). A key that appears twice misses at most once."""
        sets = np.asarray(sets, dtype=np.int64)
        keys = np.asarray(keys, dtype=np.int64)
        miss = np.zeros(len(keys), dtype=bool)
        if not len(keys):
            return miss
        found = self.tag[sets] == keys[:, None]
        hit = found.any(axis=1)
        self.used[sets[hit], found[hit].argmax(axis=1)] = True
        todo = np.flatnonzero(~hit)
        if not len(todo):
            return miss
        # a key missed twice in one call is filled once (the first time)
        _, firsts = np.unique(keys[todo], return_index=True)
        todo = todo[np.sort(firsts)]
        miss[todo] = True
        s = sets[todo]
        # the r-th miss of a set in this call is filled in round r
        order = np.argsort(s, kind="stable")
        starts = np.r_[0, np.flatnonzero(np.diff(s[order])) + 1]
        rank = np.empty(len(s), dtype=np.int64)
        rank[order] = np.arange(len(s)) - np.repeat(starts, np.diff(np.r_[starts, len(s)]))
        for r in range(int(rank.max()) + 1):
            sel = rank == r
            ss = s[sel]
            full = self.used[ss].all(axis=1)
            if full.any():
                self.used[ss[full]] = False
                self.clears += int(full.sum())
            # an empty way first, else the first way whose bit is clear
            empty = self.tag[ss] < 0
            way = np.where(empty.any(axis=1), empty.argmax(axis=1),
                           (~self.used[ss]).argmax(axis=1))
            self.tag[ss, way] = keys[todo[sel]]
            self.used[ss, way] = True
        return miss
