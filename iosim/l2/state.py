"""An L2 partition as a cache *state* with NRU replacement (for :mod:`iosim.l2.simulate`).

The response-based model charges a re-read by its reuse distance (the measured cyclic-scan
miss curve): exact for LRU, blind to a policy under which lines read once can push out lines
that many blocks are still reading. :class:`NruSets` keeps a partition's contents instead:
``sets`` x ``ways`` units with one "used" bit each, set on a fill or a hit; a miss fills the
first way of its set whose bit is clear, clearing every bit of the set first when none is
(NRU); with ``victim="clock"`` a hand per set walks on from where it last stopped, clearing the
bits it passes, to the first clear way (CLOCK: within 15% on 109 of the 110 measured schedules
where the first-clear-way rule is on 103, experiments/l2_research/l2_policy.py). The caller gives each
unit's set (:func:`iosim.l2.simulate.set_index`: linear by address,
or hashed so that every aligned run of as many unit pairs as sets covers each set once), as
``experiments/l2_research/csrc/l2_policy.c`` does on the measured schedules.

:func:`scan_ways` gives the sets unequal numbers of ways, distributed as the measured shared-scan
response says a partition's capacity is (a cyclic scan of S MiB thrashes in the sets that hold
less than S): the state's capacity is then as soft as the response's.

The associativity and the address map matter: on the measured schedules NRU with 16 ways
and the balanced hash is within 15% on 103 of 110 traced launches (LRU 85, the linear map 94,
an uneven random hash 82; 128 ways behave like LRU; docs/notes/l2_research_history.md). The
H100's L2 hashes its set index (experiments/device/l2_sets.py: no stride puts lines in too few
sets). With the balanced hash and the CLOCK victim this state is each L2 partition of the
dynamic model's default (the model keeps both partitions in one state, partition p's set s
being its set p x sets + s).
"""
from __future__ import annotations

import numpy as np

try:   # the sequential access loop compiled (the same results; numpy's rounds without numba)
    from numba import njit
except ImportError:   # pragma: no cover - numba is optional ([sim]): numpy is the fallback
    njit = None

#: tag of an empty way, and of a way a set does not have (sets with fewer ways)
EMPTY, ABSENT = -1, -2


class NruSets:
    """One L2 partition: ``n_sets`` sets of ``ways`` units (one number, or one per set), NRU
    replacement. Units are named by non-negative integer keys; the caller gives each unit's
    set."""

    def __init__(self, n_sets: int, ways, victim: str = "first", compiled: bool = True):
        per_set = np.broadcast_to(np.asarray(ways, dtype=np.int64), (max(n_sets, 0),))
        if n_sets < 1 or per_set.min() < 1:
            raise ValueError(f"an NRU partition needs sets and ways (got {n_sets} x {ways})")
        if victim not in ("first", "clock"):
            raise ValueError(f"unknown NRU victim rule {victim!r} (expected first or clock)")
        self.victim = victim
        #: access one unit at a time in compiled code (_access_loop) rather than numpy's
        #: rounds: the same state and misses (tests/test_l2state.py), about 30x faster
        self.compiled = compiled and _access_loop is not None
        self.absent = np.arange(per_set.max())[None, :] >= per_set[:, None]
        self.tag = np.where(self.absent, ABSENT, EMPTY).astype(np.int64)
        self.used = self.absent.copy()          # a way the set lacks is never a victim
        self.hand = np.zeros(n_sets, dtype=np.int64)   # victim="clock": where each set's hand is
        nw = self.tag.shape[1]
        self._ways = np.arange(nw)
        self._rot = (self._ways[:, None] + self._ways[None, :]) % nw   # ways from a hand
        self._has_absent = bool(self.absent.any())
        self._n_empty = int((self.tag == EMPTY).sum())                # victim="clock" only

    def note_empty_filled(self, n: int) -> None:
        """``n`` empty ways were filled by a caller's compiled loop over :func:`access_one`."""
        if self.victim == "clock":
            self._n_empty -= int(n)

    @property
    def n_sets(self) -> int:
        return self.tag.shape[0]

    def access(self, sets: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """Read units ``keys`` (in sets ``sets``) in order, exactly as one at a time; True
        where a unit missed (was filled). Sets are independent, so the r-th access of every
        set is made in round r."""
        sets = np.asarray(sets, dtype=np.int64)
        keys = np.asarray(keys, dtype=np.int64)
        miss = np.zeros(len(keys), dtype=bool)
        if not len(keys):
            return miss
        if self.compiled:
            self.note_empty_filled(_access_loop(self.tag, self.used, self.absent, self.hand,
                                                sets, keys, self.victim == "clock", miss))
            return miss
        order = np.argsort(sets, kind="stable")
        s_o = sets[order]
        starts = np.flatnonzero(np.concatenate(([True], s_o[1:] != s_o[:-1])))
        rank = np.empty(len(sets), dtype=np.int64)
        rank[order] = np.arange(len(sets)) - np.repeat(starts, np.diff(
            np.append(starts, len(sets))))
        by_round = np.argsort(rank, kind="stable")
        bounds = np.searchsorted(rank[by_round], np.arange(int(rank.max()) + 2))
        for r in range(len(bounds) - 1):
            idx = by_round[bounds[r]:bounds[r + 1]]
            ss, kk = sets[idx], keys[idx]
            found = self.tag[ss] == kk[:, None]
            hit = found.any(axis=1)
            self.used[ss[hit], found[hit].argmax(axis=1)] = True
            m = ~hit
            if not m.any():
                continue
            miss[idx[m]] = True
            ss, kk = ss[m], kk[m]
            if self.victim == "clock":
                self._clock_fill(ss, kk)
                continue
            full = self.used[ss].all(axis=1)
            if full.any():
                self.used[ss[full]] = self.absent[ss[full]]
            # an empty way first, else the first way whose bit is clear
            empty = self.tag[ss] == EMPTY
            way = np.where(empty.any(axis=1), empty.argmax(axis=1),
                           (~self.used[ss]).argmax(axis=1))
            self.tag[ss, way] = kk
            self.used[ss, way] = True
        return miss

    def _clock_fill(self, ss: np.ndarray, kk: np.ndarray) -> None:
        """Fill keys ``kk`` into sets ``ss`` (distinct sets): an empty way first (the hand
        stays), else CLOCK -- from the set's hand, the first way whose bit is clear, clearing
        the bits it passes (all of them and back to the hand when every bit is set); the hand
        then points past the victim."""
        n = len(ss)
        order = self._rot[self.hand[ss]]              # the ways of each set from its hand
        used = self.used[ss[:, None], order]
        none = used.all(axis=1)
        if self._has_absent:
            # every bit set: the hand clears them all and comes back to itself (absent ways
            # are set for good, so the first present way from the hand)
            absent = self.absent[ss[:, None], order]
            clear = ~used
            clear[none] = ~absent[none]
            k = clear.argmax(axis=1)                  # steps from the hand to the victim
        else:
            k = (~used).argmax(axis=1)                # 0 (the hand) where every bit is set
        way = order[np.arange(n), k]
        passed = (self._ways[None, :] < k[:, None]) | none[:, None]
        if self._has_absent:
            passed &= ~absent
        moves = slice(None)
        if self._n_empty:
            empty = self.tag[ss] == EMPTY
            has_empty = empty.any(axis=1)
            if has_empty.any():
                way = np.where(has_empty, empty.argmax(axis=1), way)
                passed &= ~has_empty[:, None]
                moves = ~has_empty
                self._n_empty -= int(has_empty.sum())
        r, c = np.nonzero(passed)
        self.used[ss[r], order[r, c]] = False
        self.tag[ss, way] = kk
        self.used[ss, way] = True
        self.hand[ss[moves]] = (way[moves] + 1) % self.tag.shape[1]


def _access_one_py(tag, used, absent, hand, s, k, clock):
    """One unit ``k`` read in set ``s`` under :meth:`NruSets.access`'s rules, in loops
    (compiled with numba): 0 a hit, 1 a miss into a way in use, 2 a miss into an empty way."""
    nw = tag.shape[1]
    for j in range(nw):
        if tag[s, j] == k:
            used[s, j] = True
            return 0
    empty = -1
    for j in range(nw):
        if tag[s, j] == EMPTY:
            empty = j
            break
    if clock:
        if empty >= 0:                          # an empty way first; the hand stays
            tag[s, empty] = k
            used[s, empty] = True
            return 2
        h = hand[s]
        way = -1
        for step in range(nw):                  # from the hand to the first clear bit
            j = (h + step) % nw
            if not used[s, j]:
                way = j
                break
            if not absent[s, j]:
                used[s, j] = False              # the hand clears the bits it passes
        if way < 0:                             # every bit was set: all cleared; the first
            for step in range(nw):              # present way from the hand
                j = (h + step) % nw
                if not absent[s, j]:
                    way = j
                    break
        tag[s, way] = k
        used[s, way] = True
        hand[s] = (way + 1) % nw
        return 1
    full = True
    for j in range(nw):
        if not used[s, j]:
            full = False
            break
    if full:                                    # every bit set: cleared first
        for j in range(nw):
            used[s, j] = absent[s, j]
    way = empty
    if way < 0:
        for j in range(nw):
            if not used[s, j]:
                way = j
                break
    tag[s, way] = k
    used[s, way] = True
    return 2 if empty >= 0 else 1


def _access_loop_py(tag, used, absent, hand, sets, keys, clock, miss):
    """:meth:`NruSets.access` one unit at a time: fills ``miss``, returns how many empty ways
    were filled."""
    filled_empty = 0
    for i in range(len(keys)):
        r = access_one(tag, used, absent, hand, sets[i], keys[i], clock)
        miss[i] = r > 0
        filled_empty += r == 2
    return filled_empty


if njit is not None:
    #: compiled: one read of a state's arrays (NruSets.tag, used, absent, hand), for callers
    #: that loop over units in compiled code themselves (iosim.l2.simulate's unit map)
    access_one = njit(cache=True, nogil=True)(_access_one_py)
    _access_loop = njit(cache=True, nogil=True)(_access_loop_py)
else:   # pragma: no cover
    access_one, _access_loop = _access_one_py, None


def scan_ways(curve, l2_bytes: float, n_sets: int, unit_bytes: int, seed: int = 0) -> np.ndarray:
    """Ways of each of ``n_sets`` sets such that the fraction of sets holding less than S bytes
    of a partition's evenly spread load is the measured miss fraction m(S) of a cyclic scan of
    S bytes (``curve``: (S / l2_bytes, m) points, m increasing). Set s gets the m-quantile
    (rank + 1/2) / n_sets of a fixed random order; its capacity C = m^-1(quantile) holds
    floor(C / (unit_bytes x n_sets)) ways -- exact where the load is a whole number of units
    per set."""
    xs, ms = (np.asarray(v, dtype=float) for v in zip(*curve))
    q = (np.random.default_rng(seed).permutation(n_sets) + 0.5) / n_sets
    cap = np.interp(q, ms, xs) * l2_bytes
    return np.maximum(1, np.floor(cap / (unit_bytes * n_sets))).astype(np.int64)
