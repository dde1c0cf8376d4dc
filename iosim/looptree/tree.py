"""The loop tree: a general mapping of a cascade onto a memory hierarchy.

A tree is a sequence of kernels; a kernel's body is a sequence of nodes:

* :class:`Loop` -- ``for var in tiles of rank by tile``: a rank of the cascade (``P``
  queries, ``M`` keys, ``E``/``F`` head dims, ``G`` query heads of a K/V head, ``R`` the
  (query, query head) rows of a packed group), a tile that is a *name* (``block_q``,
  ``block_kv``, ``block_e``, ``block_f``, ``block_rows``, ``one``: its value comes from the
  :class:`~iosim.mapping.Mapping`, so a grid of tile sizes never rebuilds the tree); spatial
  (``parallel``: its iterations are independent programs) or temporal; bounded by the mask
  region together with another loop (``mask``: only the key tiles the query tile's mask
  region meets, or the other way round).
* :class:`Split` -- the key tiles split into chunks (programs when ``parallel``); a key loop
  inside runs ``within`` one chunk.
* :class:`Storage` -- a level keeps tensors for the rest of the enclosing body: each
  :class:`Use` is filled from the backing store (``load``), drained to it at the end of the
  scope (``store``), or only kept on chip (``keep``: an accumulator, running state, a buffered
  row). A tile's shape is *inferred* from the loops above it (LoopTree's rule): a rank of the
  tensor that an enclosing loop tiles takes that loop's tile, every other rank is whole.
* :class:`Compute` -- the Einsums evaluated here; a query-key score tile kept on chip.
* :class:`Passes` -- sweeps (or kernels) one after the other over the same rank, with the
  tensors that cross them kept on chip, spilled to the backing store or recomputed
  (``policy``), as the pass analysis of the cascade (:mod:`cascades.passes`) finds them.

:func:`iosim.looptree.lower.lower` turns a tree into the :class:`~iosim.mapping.LoopNest`
the traffic model, the tile simulator and the time model evaluate; :func:`format_tree`
prints it. The named algorithms (FlashAttention-1/2, split-K decode, ...) are presets that
build trees (:mod:`iosim.looptree.presets`); a user writes one in TOML
(:mod:`iosim.looptree.files`) or Python.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

__all__ = ["Loop", "Split", "Storage", "Use", "Compute", "Passes", "Kernel", "LoopTree",
           "TILE_NAMES", "MOVES", "format_tree"]

#: the tile names a loop may take; each is a field of the Mapping (block_rows: softmax_rows)
TILE_NAMES = ("block_q", "block_kv", "block_e", "block_f", "block_rows", "one")

#: how a tensor reaches a storage node: read from the backing store, written to it at the
#: end of the scope, or kept on chip only
MOVES = ("load", "store", "keep")


@dataclass(frozen=True)
class Loop:
    """``for var in tiles of rank by tile`` (see the module docstring).

    ``also``: further ranks the same variable tiles (one loop over the diagonal blocks of
    queries and keys). ``mask``: the variable of the loop whose tile, with this one's, must
    meet the cascade's mask region (a causal band, a window, a block mask). ``within``: the
    :class:`Split` whose chunk of key tiles this loop runs over.
    """
    rank: str
    tile: str
    body: tuple = ()
    var: str = ""
    parallel: bool = False
    mask: str | None = None
    within: str | None = None
    also: tuple = ()
    label: str = ""


@dataclass(frozen=True)
class Split:
    """The key tiles split into chunks (rank ``S``), one program each when ``parallel``."""
    var: str
    body: tuple = ()
    parallel: bool = True
    label: str = ""


@dataclass(frozen=True)
class Use:
    """One tensor at a storage node: how it moves (:data:`MOVES`), whether it is streamed
    (reloaded at every step of the innermost loop, pipelined ``num_stages`` deep), the name
    of its on-chip buffer (``keep``; default the tensor's), its ranks where the cascade does
    not declare them, and ``part``: only that fraction of each tile moves (a spill)."""
    tensor: str
    move: str = "load"
    stream: bool = False
    name: str | None = None
    ranks: tuple | None = None
    part: str | None = None


@dataclass(frozen=True)
class Storage:
    """``level`` keeps ``uses`` for the rest of the enclosing body. ``level`` is ``"acc"``
    (the accumulator level: registers on a GPU) or ``"sram"`` (the on-chip buffer), or a level
    name of the hardware that a user file gives (checked against the hardware).
    ``stages``: the streamed uses are pipelined this many tiles deep (and counted that many
    times against the level), instead of the mapping's ``num_stages``."""
    level: str
    uses: tuple
    stages: int | None = None


@dataclass(frozen=True)
class Compute:
    """The Einsums evaluated here (names of the tensors they write, for the print), and
    ``score``: the ranks of a query-key score tile kept on chip while they run."""
    einsums: tuple = ()
    score: tuple | None = None


@dataclass(frozen=True)
class Passes:
    """Sweeps (loops) or kernels one after the other; ``crossing``: the tensors that cross
    from one to the next (the pass analysis), ``policy``: ``keep`` (on chip), ``spill`` (to
    the backing store and back) or ``recompute``."""
    body: tuple
    crossing: tuple = ()
    policy: str = "keep"
    label: str = ""


@dataclass(frozen=True)
class Kernel:
    """One kernel (a launch that starts after the previous one ends)."""
    name: str
    body: tuple


Node = Union[Loop, Split, Storage, Compute, Passes]


@dataclass(frozen=True)
class LoopTree:
    """A mapping as a tree: kernels (or :class:`Passes` of kernels) and the tensors the
    mapping itself introduces (``tensors``: name -> (ranks, dtype role), the role ``data``,
    ``stat`` or ``mask``), e.g. a log-sum-exp written for the backward pass or split-K
    partials. ``recompute``: cascade tensor -> how many times it is computed.
    ``skips_masked``: whether tiles outside the mask region are skipped (their FLOPs too).
    ``rows``: the rank of the query-tile loop (``R`` when a group's query heads are packed
    into the rows of a program). ``acc_levels``: the storage levels at the accumulator level
    (``acc``, or a hardware's register level); the others are the on-chip buffer."""
    kernels: tuple
    tensors: tuple = ()
    recompute: tuple = ()
    skips_masked: bool = True
    rows: str = "P"
    name: str = ""
    #: storage levels whose on-chip buffers sit at the accumulator level (registers)
    acc_levels: tuple = ("acc",)
    #: tile names a user's file sets by a number on a loop (fixed: a search leaves them)
    fixed_tiles: tuple = ()
    notes: str = field(default="", compare=False)

    def kernel_list(self) -> tuple:
        """The kernels in launch order (:class:`Passes` of kernels flattened)."""
        out = []
        for k in self.kernels:
            out.extend(k.body if isinstance(k, Passes) else (k,))
        return tuple(out)

    def walk(self):
        """Every node with its enclosing nodes, depth first."""
        def rec(nodes, encl):
            for nd in nodes:
                yield nd, encl
                if isinstance(nd, (Loop, Split, Passes, Kernel)):
                    yield from rec(nd.body, encl + (nd,))
        yield from rec(self.kernels, ())

    @property
    def tile_names(self) -> tuple:
        """The tile names of the tree's loops (``one`` left out), in :data:`TILE_NAMES`
        order: the symbolic tiles a grid or a search sets."""
        used = {nd.tile for nd, _ in self.walk() if isinstance(nd, Loop)}
        return tuple(t for t in TILE_NAMES if t in used and t != "one")

    # -- properties the models read instead of a mapping's name ------------------------
    @property
    def splits_keys(self) -> bool:
        """A split of the key tiles over programs (split-K)."""
        return any(isinstance(nd, Split) for nd, _ in self.walk())

    @property
    def packs_rows(self) -> bool:
        """A group's query heads packed into the rows of a program (a loop over ``R``)."""
        return self.rows == "R"

    @property
    def spills(self) -> tuple:
        """Tensors stored in one pass and loaded in a later one."""
        stored = {u.tensor for nd, _ in self.walk() if isinstance(nd, Storage)
                  for u in nd.uses if u.move == "store"}
        loaded = {u.tensor for nd, _ in self.walk() if isinstance(nd, Storage)
                  for u in nd.uses if u.move == "load"}
        return tuple(sorted(stored & loaded))


def _tile_txt(t) -> str:
    return str(t)


def format_tree(tree: LoopTree, sizes: dict | None = None) -> str:
    """The tree as text, one node a line, children indented::

        kernel forward
          for i in P by block_q (parallel)
            sram: load Q
            acc: keep O_acc, m, l
            for j in M by block_kv (mask with i)
              sram: load K (stream), V (stream)
              compute S[P, M]
            ...

    With ``sizes`` (a size table) the tiles are printed with their values."""
    lines = []

    def tile(t):
        if sizes is not None and t in sizes:
            return f"{t}={int(sizes[t])}"
        return _tile_txt(t)

    def use_txt(u: Use) -> str:
        nm = u.name or u.tensor
        bits = []
        if u.move == "keep" and u.name and u.name != u.tensor:
            nm = f"{u.name}"
        if u.stream:
            bits.append("stream")
        if u.part:
            bits.append(f"part {u.part}")
        return nm + (f" ({', '.join(bits)})" if bits else "")

    def rec(nodes, depth):
        pad = "  " * depth
        for nd in nodes:
            if isinstance(nd, Kernel):
                lines.append(f"{pad}kernel {nd.name}")
                rec(nd.body, depth + 1)
            elif isinstance(nd, Passes):
                what = f" ({nd.policy}: {', '.join(nd.crossing)})" if nd.crossing else ""
                lines.append(f"{pad}passes{what}" + (f"   # {nd.label}" if nd.label else ""))
                rec(nd.body, depth + 1)
            elif isinstance(nd, Loop):
                extra = []
                if nd.also:
                    extra.append("also " + ", ".join(nd.also))
                if nd.parallel:
                    extra.append("parallel")
                if nd.mask:
                    extra.append(f"mask with {nd.mask}")
                if nd.within:
                    extra.append(f"within {nd.within}")
                note = f"   # {nd.label}" if nd.label else ""
                lines.append(f"{pad}for {nd.var} in {nd.rank} by {tile(nd.tile)}"
                             f"{' (' + ', '.join(extra) + ')' if extra else ''}{note}")
                rec(nd.body, depth + 1)
            elif isinstance(nd, Split):
                note = f"   # {nd.label}" if nd.label else ""
                lines.append(f"{pad}split {nd.var} of the key tiles"
                             f"{' (parallel)' if nd.parallel else ''}{note}")
                rec(nd.body, depth + 1)
            elif isinstance(nd, Storage):
                groups: dict = {}
                for u in nd.uses:
                    groups.setdefault(u.move, []).append(use_txt(u))
                txt = "; ".join(f"{mv} {', '.join(ts)}" for mv, ts in groups.items())
                deep = f"   # {nd.stages} stages" if nd.stages else ""
                lines.append(f"{pad}{nd.level}: {txt}{deep}")
            elif isinstance(nd, Compute):
                what = ", ".join(nd.einsums)
                score = f"score[{', '.join(nd.score)}]" if nd.score else ""
                lines.append(f"{pad}compute {' '.join(x for x in (what, score) if x)}".rstrip())
    rec(tree.kernels, 0)
    return "\n".join(lines)
