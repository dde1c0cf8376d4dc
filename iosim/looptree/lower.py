"""Lowering: a :class:`~iosim.looptree.tree.LoopTree` -> the :class:`~iosim.mapping.LoopNest`
that the traffic model, the tile simulator and the time model evaluate.

Each loop becomes a nest loop over the tiles of its rank; each storage node's uses become
loads, stores and on-chip buffers whose tile shapes are inferred from the enclosing loops (a
rank of the tensor that an enclosing loop tiles takes that loop's variable, every other rank
is whole; a per-tile coordinate ``Pt``/``Mt`` follows ``P``/``M``); a compute node's score
tile becomes the on-chip score buffer the time model finds its steps by; passes are their
sweeps in order. Bad trees are refused with one line naming the node.
"""
from __future__ import annotations

from iosim.errors import IosimError
from iosim.looptree.tree import (MOVES, TILE_NAMES, Compute, Kernel, Loop, LoopTree, Passes,
                                 Split, Storage)

__all__ = ["lower", "LOOP_RANKS", "tile_dims", "nest_signature"]

#: ranks a loop may tile: queries, keys, head dims, the query heads of a K/V head and the
#: packed (query, query head) rows
LOOP_RANKS = ("P", "M", "E", "F", "G", "R")

#: storage levels of a preset tree: the accumulator level and the on-chip buffer
LEVELS = ("acc", "sram")


def tile_dims(ranks, tiles: dict) -> tuple:
    """Dims of a tile of a tensor with ``ranks`` under loops ``tiles`` (rank -> variable):
    a tiled rank takes its loop's variable, a per-tile coordinate ``Pt``/``Mt`` the variable
    of ``P``/``M``, the split coordinate ``S`` the split's, every other rank is whole."""
    from iosim.mapping import Dim
    return tuple(Dim(r, tiles.get(r[0] if r in ("Pt", "Mt") else r)) for r in ranks)


def _default_var(rank: str, taken: set) -> str:
    v = rank.lower()
    k = 2
    while v in taken:
        v = f"{rank.lower()}{k}"
        k += 1
    return v


def lower(tree: LoopTree, mapping, facts):
    """The loop nest of ``tree`` for the cascade described by ``facts``
    (:class:`~iosim.mapping.CascadeFacts`), recorded with ``mapping``."""
    from iosim.mapping import (Alloc, Load, LoopNest, PartialLoad, PartialStore, Phase,
                               SplitLoop, Store)
    from iosim.mapping import Loop as NLoop
    ranks = {t: tuple(rk) for t, rk in facts.ranks.items()}
    roles = {t: ("mask" if t in facts.bool_inputs else "data") for t in ranks}
    for t, (rk, role) in tree.tensors:
        ranks[t] = tuple(rk)
        roles[t] = role
    where = f"mapping tree{' ' + repr(tree.name) if tree.name else ''}"

    def ranks_of(u) -> tuple:
        if u.ranks is not None:
            return tuple(u.ranks)
        if u.tensor not in ranks:
            raise IosimError(f"{where}: tensor '{u.tensor}' is not in cascade '{facts.name}' "
                             f"(tensors: {', '.join(sorted(ranks))}); declare a tensor the "
                             f"mapping introduces with its ranks")
        return ranks[u.tensor]

    def nodes(body, tiles: dict, encl: tuple) -> tuple:
        out = []
        taken = {lp.var for lp in encl}
        for nd in body:
            if isinstance(nd, Loop):
                if nd.rank not in LOOP_RANKS:
                    raise IosimError(f"{where}: unknown rank '{nd.rank}' in a loop (ranks: "
                                     f"{', '.join(LOOP_RANKS)}, or the cascade's own names)")
                if nd.tile not in TILE_NAMES:
                    raise IosimError(f"{where}: loop over {nd.rank}: tile '{nd.tile}' is not "
                                     f"one of {', '.join(TILE_NAMES)}")
                for r in (nd.rank,) + tuple(nd.also):
                    if r in tiles:
                        raise IosimError(f"{where}: rank {r} is tiled twice on one path "
                                         f"(loops {tiles[r]} and {nd.var or r.lower()})")
                var = nd.var or _default_var(nd.rank, taken)
                if nd.mask is not None and nd.mask not in taken:
                    raise IosimError(f"{where}: loop {var} is masked with '{nd.mask}', which "
                                     f"is no enclosing loop")
                if nd.within is not None and nd.within not in taken:
                    raise IosimError(f"{where}: loop {var} runs within split '{nd.within}', "
                                     f"which is no enclosing split")
                inner = dict(tiles)
                for r in (nd.rank,) + tuple(nd.also):
                    inner[r] = var
                sub = nodes(nd.body, inner, encl + (nd if nd.var else _named(nd, var),))
                out.append(NLoop(var, nd.rank, nd.tile, sub, causal_with=nd.mask,
                                 within=nd.within, grid=nd.parallel, label=nd.label))
            elif isinstance(nd, Split):
                inner = dict(tiles)
                inner["S"] = nd.var
                sub = nodes(nd.body, inner, encl + (nd,))
                out.append(SplitLoop(nd.var, sub, grid=nd.parallel, label=nd.label))
            elif isinstance(nd, Storage):
                if nd.stages is not None and (
                        isinstance(nd.stages, bool) or not isinstance(nd.stages, int)
                        or nd.stages < 1):
                    raise IosimError(f"{where}: stages must be a positive whole number, got "
                                     f"{nd.stages!r}")
                if nd.stages is not None and not any(u.stream for u in nd.uses):
                    raise IosimError(f"{where}: a storage node with stages = {nd.stages} "
                                     f"streams nothing (stages pipeline streamed loads: "
                                     f"stream = true)")
                for u in nd.uses:
                    if u.move not in MOVES:
                        raise IosimError(f"{where}: tensor '{u.tensor}' moves by '{u.move}', "
                                         f"not one of {', '.join(MOVES)}")
                    dims = tile_dims(ranks_of(u), tiles)
                    if u.move == "load":
                        st = nd.stages if u.stream else None
                        out.append(PartialLoad(u.tensor, dims, streamed=u.stream, stages=st,
                                               part=u.part)
                                   if u.part else Load(u.tensor, dims, streamed=u.stream,
                                                       stages=st))
                    elif u.move == "store":
                        out.append(PartialStore(u.tensor, dims, part=u.part) if u.part
                                   else Store(u.tensor, dims))
                    else:
                        out.append(Alloc(u.name or u.tensor, dims,
                                         role="acc" if nd.level in tree.acc_levels else "tile"))
            elif isinstance(nd, Compute):
                if nd.score is not None:
                    out.append(Alloc("S", tile_dims(nd.score, tiles)))
            elif isinstance(nd, Passes):
                out.extend(nodes(nd.body, tiles, encl))
            else:
                raise IosimError(f"{where}: a {type(nd).__name__} cannot sit inside a kernel")
        return tuple(out)

    phases = []
    for k in tree.kernel_list():
        if not isinstance(k, Kernel):
            raise IosimError(f"{where}: the tree's top level holds kernels, not "
                             f"{type(k).__name__}")
        phases.append(Phase(k.name, nodes(k.body, {}, ())))
    tensors = {t: (ranks[t], roles[t]) for t in ranks}
    for t, (rk, role) in tree.tensors:
        tensors[t] = (tuple(rk), role)
    return LoopNest(mapping, facts.name, tuple(phases), tensors,
                    skips_causal=tree.skips_masked, recompute=dict(tree.recompute),
                    causal_offset_default="end" if facts.end_aligned_causal else "zero",
                    rows=tree.rows)


def _named(loop: Loop, var: str) -> Loop:
    from dataclasses import replace
    return replace(loop, var=var)


def nest_signature(nest) -> tuple:
    """The structure of a loop nest without its names: loops (rank, tile, parallel, masked
    with which enclosing loop, within which split, sparse), loads, stores and on-chip buffers
    (tensor, dims by enclosing-loop position, streamed, level), in order; loop variables and
    buffer names (but the score tile's) replaced by positions, labels dropped. Two mappings
    with equal signatures count the same and describe the same kernel."""
    from iosim.mapping import Alloc, Load, Loop as NLoop, SplitLoop, Store

    def dims(ds, pos):
        return tuple((d.rank, pos.get(d.var) if d.var is not None else None) for d in ds)

    def rec(nodes, pos):
        out = []
        for nd in nodes:
            if isinstance(nd, NLoop):
                inner = {**pos, nd.var: len(pos)}
                out.append(("loop", nd.rank, nd.block, nd.grid, pos.get(nd.causal_with),
                            pos.get(nd.within), nd.sparse, rec(nd.body, inner)))
            elif isinstance(nd, SplitLoop):
                inner = {**pos, nd.var: len(pos)}
                out.append(("split", nd.grid, rec(nd.body, inner)))
            elif isinstance(nd, Load):
                out.append(("load", type(nd).__name__, nd.tensor, dims(nd.dims, pos),
                            nd.streamed, getattr(nd, "part", None))
                           + ((nd.stages,) if nd.stages is not None else ()))
            elif isinstance(nd, Store):
                out.append(("store", type(nd).__name__, nd.tensor, dims(nd.dims, pos),
                            getattr(nd, "part", None)))
            elif isinstance(nd, Alloc):
                out.append(("keep", nd.name if nd.name == "S" else "", dims(nd.dims, pos),
                            nd.role))
        return tuple(out)
    return (tuple(rec(ph.body, {}) for ph in nest.phases), nest.skips_causal,
            tuple(sorted(nest.recompute.items())), nest.causal_offset_default, nest.rows,
            tuple(sorted((t, tuple(rk), role) for t, (rk, role) in nest.tensors.items())))
