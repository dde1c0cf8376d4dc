"""Pass analysis: how many passes a cascade must make over each rank.

Definition (FuseMax, Nayak et al. 2024, Sec. III): a pass over a fiber of a rank traverses
every element of it; an Einsum that reads a value which is only complete after a whole
fiber was traversed, and then traverses that fiber again, starts another pass. We compute
this on the dependency graph of the cascade:

* an Einsum *traverses* rank R when its index space contains R's index (or, for a
  partitioned rank ``R -> R1, R0``, the outer index ``r1``);
* a tensor access *streams along* R when it is indexed by R (or R1); such a value is
  available element by element during the pass that produces it;
* a value without R that depends on a traversal of R (a reduction over R, or a fixed
  coordinate such as ``RD[M1, p]``) is complete only after that pass ends, so an Einsum
  that traverses R and reads it belongs to the next pass;
* reads of an iterative tensor at the current iterate (``RM[m1, p]`` in the recurrence
  ``RM[m1+1, p] = ...``) come from earlier fibers and add no pass.

A cascade that needs k >= 2 passes over R must keep, for every value produced in one pass
and read again in a later one, a whole R-fiber on chip, or spill and re-read it: traffic
proportional to R whatever the mapping. :func:`analyze` reports those tensors and sizes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from cascades.ir import Access, Cascade, Einsum, ISplit, accesses, index_vars, previous_iterate


@dataclass(frozen=True)
class Buffered:
    """A tensor whose R-fibers are produced in one pass and read again in a later pass."""
    tensor: str
    produced_in: int          # 0 for an input (read again in several passes)
    read_in: tuple[int, ...]  # passes whose Einsums read it
    ranks: tuple[str, ...]
    fiber_elements: int | None = None   # elements of one R-fiber, for the given shapes
    total_elements: int | None = None   # the whole tensor, for the given shapes

    def to_dict(self) -> dict:
        return {"tensor": self.tensor, "produced_in": self.produced_in,
                "read_in": list(self.read_in), "ranks": list(self.ranks),
                "fiber_elements": self.fiber_elements, "total_elements": self.total_elements}


@dataclass(frozen=True)
class RankPasses:
    rank: str
    passes: int
    einsum_pass: dict = field(default_factory=dict)   # tensor written -> pass number
    buffered: tuple[Buffered, ...] = ()
    parts: frozenset = frozenset()                     # the rank and its partition's ranks

    def to_dict(self) -> dict:
        return {"rank": self.rank, "passes": self.passes, "einsum_pass": dict(self.einsum_pass),
                "buffered": [b.to_dict() for b in self.buffered]}


@dataclass(frozen=True)
class PassReport:
    cascade: str
    ranks: dict  # rank -> RankPasses
    extents: dict | None = None

    def passes(self, rank: str) -> int:
        return self.ranks[rank].passes

    def to_dict(self) -> dict:
        return {"cascade": self.cascade, "extents": self.extents,
                "ranks": {r: rp.to_dict() for r, rp in self.ranks.items()}}

    def to_text(self) -> str:
        lines = [f"cascade {self.cascade}: passes per rank"]
        if self.extents:
            lines.append("  shapes: " + ", ".join(f"{k}={v}" for k, v in self.extents.items()))
        for r, rp in self.ranks.items():
            lines.append(f"  {r:<8} {rp.passes} pass{'es' if rp.passes != 1 else ''}")
            for b in rp.buffered:
                src = "input" if b.produced_in == 0 else f"pass {b.produced_in}"
                size = ""
                if b.fiber_elements is not None:
                    size = (f": a {r}-fiber of {b.fiber_elements:,} elements per "
                            f"({', '.join(x for x in b.ranks if x not in rp.parts)}) "
                            f"point, {b.total_elements:,} elements in all")
                lines.append(f"           {b.tensor}[{', '.join(b.ranks)}] from {src}, read "
                             f"again in pass {', '.join(map(str, b.read_in))} -> buffer on "
                             f"chip or spill{size}")
        return "\n".join(lines)


def _parts(c: Cascade, rank: str) -> set[str]:
    """``rank`` and, if it is partitioned, its outer and inner ranks."""
    p = c.info.partition_of.get(rank)
    return {rank} if p is None else {rank, p.outer, p.inner}


def _rank_vars(c: Cascade, rank: str) -> set[str]:
    """Index variables whose presence means 'streams along / traverses ``rank``'."""
    info = c.info
    vs = {rank.lower()}
    p = info.partition_of.get(rank)
    if p is not None:
        vs.add(p.outer.lower())
    return vs



def _einsum_order(c: Cascade) -> list[Einsum]:
    out = []
    for step in c.info.order:
        if step[0] == "einsum":
            out.append(c.einsums[step[1]])
        else:
            out.extend(c.einsums[k] for k in step[2])
    return [e for e in out if not e.is_init]


def analyze_rank(c: Cascade, rank: str, extents: dict | None = None) -> RankPasses:
    rv = _rank_vars(c, rank)
    avail: dict[str, int] = {t.name: 0 for t in c.inputs}
    epass: dict[str, int] = {}
    reads: dict[str, set[int]] = {}
    for e in _einsum_order(c):
        if isinstance(e.expr, Access) and e.reduction is None and not e.shift:
            # a pure re-indexing (BK[m1, m0, e] = K[m1*M0+m0, e]) is a view of its source
            src = e.expr.tensor
            avail[e.tensor] = avail.get(src, 0)
            if src in epass:
                epass[e.tensor] = epass[src]
            continue
        traverses = bool(rv & set(e.index_space())) or any(
            isinstance(ix, ISplit) and c.info.part_parent[ix.inner_rank].rank == rank
            for a in accesses(e.expr) for ix in a.indices)
        contrib = []
        streamed = []
        for a in accesses(e.expr):
            if previous_iterate(c, a):
                continue
            has = any(v in rv for ix in a.indices for v in index_vars(ix)) or any(
                isinstance(ix, ISplit) and c.info.part_parent[ix.inner_rank].rank == rank
                for ix in a.indices)
            base = avail.get(a.tensor, 0)
            contrib.append(base if (has or not traverses) else base + 1)
            if has:
                streamed.append(a.tensor)
        if traverses:
            k = max([1] + contrib)
            epass[e.tensor] = k
            for t in streamed:
                reads.setdefault(t, set()).add(k)
        else:
            k = max([0] + contrib)
        avail[e.tensor] = k
    n = max(epass.values(), default=0)
    buffered = []
    for t, ps in reads.items():
        made = epass.get(t, 0)
        if made == 0:  # an input: a problem only when several passes read it
            later = sorted(ps)[1:] if len(ps) > 1 else []
        else:
            later = sorted(p for p in ps if p > made)
        if later:
            buffered.append(_sized(c, t, made, tuple(later), rank, extents))
    return RankPasses(rank, n, epass, tuple(buffered), frozenset(_parts(c, rank)))


def _sized(c: Cascade, t: str, made: int, later: tuple, rank: str, extents) -> Buffered:
    ranks = c.info.tensor_ranks[t]
    if not extents:
        return Buffered(t, made, later, ranks)
    fiber = 1
    total = 1
    for r in ranks:
        n = extents.get(r)
        if n is None:
            return Buffered(t, made, later, ranks)
        total *= n
        if r in _parts(c, rank):
            fiber *= n
    return Buffered(t, made, later, ranks, fiber, total)


def analyze(c: Cascade, ranks: list[str] | None = None, shapes: dict | None = None,
            **params) -> PassReport:
    """Passes over every rank some Einsum traverses (or over ``ranks``).

    ``shapes`` (input rank -> extent, e.g. ``{"P": 4096, "M": 4096, "E": 64, "F": 64}``)
    sizes the fibers that a multi-pass cascade must buffer or spill.
    """
    extents = None
    if shapes:
        from cascades.executor import resolve
        extents, _ = resolve(c, {r: n for r, n in shapes.items() if r in c.info.ranks},
                             **params)
    if ranks is None:
        ranks = []
        for r in c.info.ranks:
            if any(_rank_vars(c, r) & set(e.index_space()) for e in c.einsums):
                ranks.append(r)
    out = {}
    for r in ranks:
        if r not in c.info.ranks:
            from cascades.errors import CascadeError
            raise CascadeError(f"cascade '{c.name}' has no rank '{r}' (ranks: "
                               f"{', '.join(c.info.ranks)})")
        out[r] = analyze_rank(c, r, extents)
    return PassReport(c.name, out, extents)


def fiber_bytes(b: Buffered, dtype_bytes: float) -> float:
    return math.nan if b.fiber_elements is None else b.fiber_elements * dtype_bytes
