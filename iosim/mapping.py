"""One description of a tiling for a cascade: the Mapping, and the loop nest it stands for.

The single most important design rule of the project: one :class:`Mapping` drives the
analytical model (:mod:`iosim.traffic`), the tile-level simulator (:mod:`iosim.trace`) and
the generated Triton kernel (:mod:`cascades.triton`, through :mod:`iosim.gpu`).

Rank names follow the cascades: ``P`` query rows, ``M`` keys/values, ``E``/``F`` the head
dimensions (``e``/``f``), ``G`` query heads sharing one K/V head (GQA), and ``B``/``H`` batch
and heads, which the models multiply through. Tile sizes use the kernel's vocabulary too:
``block_q`` (FlashAttention's B_r, Triton's BLOCK_M) tiles P, ``block_kv`` (B_c, Triton's
BLOCK_N) tiles M.

A mapping is turned into a :class:`LoopNest` by :func:`loop_nest`: phases (kernels), each a
tree of :class:`Loop` nodes over tiles whose bodies :class:`Load` tiles from the backing store
(HBM) into on-chip buffers, :class:`Alloc` on-chip scratch (accumulators, running softmax
state, score tiles) and :class:`Store` tiles back. The nest is *symbolic*: tile sizes are
named (``"block_q"``) and extents are ranks (``"P"``); the analytical model sums it in closed
form, the simulator walks it tile by tile, and the report prints it. Both count the same
events, so they agree to the element.

Named mappings (see :data:`MAPPINGS` and ``docs/model.md``):

===============  =========================================================================
``fa2``          FlashAttention-2: a program per query block, K/V streamed, O and LSE once;
                 with grouped heads (GQA) the G query heads of a K/V head are packed into
                 the rows of a program (row r = query r // G), as the generated kernel does
``fa1``          FlashAttention-1 Algorithm 1: outer loop over K/V blocks, inner over Q
                 blocks, O, l, m read and written in HBM at every inner step
``unfused``      standard attention: S = QKᵀ and P = softmax(S) materialised in HBM
``fused-3pass``  the 3-pass cascade fused per query block; the score row is buffered on
                 chip, spilled to HBM, or recomputed (``row_policy``)
``fused-2pass``  the 2-pass cascade fused per query block; per-key-block partials
                 buffered on chip or spilled (``row_policy``)
``decode-splitk`` FlashDecoding: K/V split into ``split_kv`` chunks, partial O and LSE per
                 chunk in HBM, then a combining kernel
``linear``       linear attention: the E×F state built in one pass, then read per Q block
``lightning2``   Lightning Attention-2: one pass, intra-block product, E×F state on chip
``saha-ye``      Saha & Ye's square tiling for small caches (B = ⌊√(M/4)⌋), exp(QKᵀ) in HBM
``chunked``      a spatial accelerator's mapping (FuseMax, FLAT): chunks of ``block_q`` query
                 rows, key tiles of ``block_kv`` streamed once per chunk and pass; built
                 from a plan by :func:`chunked_nest` (:mod:`iosim.spatial` does)
===============  =========================================================================

Which mappings fit a cascade, its default mapping, its causal diagonal and the tensors a
mapping moves besides the cascade's inputs and outputs are read from the cascade's
*structure* (:func:`cascade_facts`: a recurrence over key blocks, per-block partials, a
multi-pass softmax, ...), never from its name: a copy of a library cascade under another
name, or in a user's file, is mapped exactly like the original. A mapping that does not fit
refuses the cascade with one line saying why (:func:`fit_error`).
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Iterable, Union

from iosim.errors import IosimError

__all__ = [
    "GRID_ORDERS", "ROW_POLICIES", "MAPPINGS", "KINDS",
    "Mapping", "Shapes", "Dim", "Loop", "SplitLoop", "Load", "Store", "Alloc", "Phase",
    "LoopNest", "get_mapping", "mapping_names", "default_mapping", "mappings_for",
    "loop_nest", "check_fits", "fa1_paper_blocks", "saha_ye_block", "cascade_facts",
    "format_loop_nest", "PartialLoad", "PartialStore", "ChunkPass", "chunked_nest",
    "fit_error", "default_kind", "mapping_for", "cascade_defaults", "CascadeFacts", "FAMILIES",
    "resolve_causal", "mapping_tree",
]

GRID_ORDERS = ("query-major", "head-major")
ROW_POLICIES = ("auto", "buffer", "spill", "recompute")
#: the presets (iosim.looptree.presets) and ``tree``, a user's loop tree
KINDS = ("fa2", "fa1", "unfused", "fused-3pass", "fused-2pass", "decode-splitk", "linear",
         "lightning2", "saha-ye", "chunked", "tree")


def _suggest(word: str, choices: Iterable[str]) -> str:
    hit = difflib.get_close_matches(str(word).lower(), [c.lower() for c in choices], n=1,
                                    cutoff=0.5)
    return f" (did you mean '{hit[0]}'?)" if hit else ""


def _posint(value, what: str, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise IosimError(f"{what} must be a positive integer, got {value!r}")


# ======================================================================================
# the Mapping
# ======================================================================================


@dataclass(frozen=True)
class Mapping:
    """A tiling of an attention cascade onto a memory hierarchy (see module docstring).

    ``kind`` selects the loop-nest family (one of :data:`KINDS`); ``name`` is the registry
    name (user variants may rename). ``block_q``/``block_kv`` may be ``None`` for ``fa1`` and
    ``saha-ye``: then the paper's rule derives them from the SRAM size (see
    :meth:`resolve`). ``loop_order`` is informational (set from the kind).
    """
    name: str
    cascade: str
    loop_order: tuple[str, ...] = ("B", "H", "P", "M")   # temporal loops, outermost first
    block_q: int | None = 128                            # tile of P (B_r, BLOCK_M)
    block_kv: int | None = 64                            # tile of M (B_c, BLOCK_N)
    resident: tuple[tuple[str, str], ...] = ()           # (tensor, level) overrides
    fused: bool = True
    grid_order: str = "query-major"                      # thread-block order on a GPU
    num_warps: int = 8                                   # kernel-only knobs
    num_stages: int = 3
    split_kv: int = 1                                    # decode split-K chunks
    init_writes: bool = True                             # FA1: count O, l, m initialisation
    notes: str = field(default="", compare=False)
    # --- added for the models -----------------------------------------------------------
    kind: str = "fa2"
    write_lse: bool = True               # fa2: write the log-sum-exp (N fp32 values)
    row_policy: str = "auto"             # fused-2pass/3pass: auto | buffer | spill | recompute
    softmax_rows: int = 1                # unfused: query rows per softmax program
    block_e: int | None = None           # saha-ye: tile of E (None: = block_q)
    block_f: int | None = None           # saha-ye: tile of F (None: = block_q)
    acc_dtype: str | None = None         # on-chip accumulators/state (None: the input dtype)
    stat_dtype: str = "fp32"             # softmax statistics stored in HBM (l, m, LSE, D)
    acc_level: str | None = None         # level of accumulators (None: RF if below SRAM)
    stages_in_footprint: bool = False    # count streamed tiles num_stages times
    pack_group: bool = True              # fa2: the query heads of a group share a program
    #: a loop tree written by the user (kind ``tree``; see :mod:`iosim.looptree`)
    tree: object = None

    def __post_init__(self) -> None:
        label = f"mapping '{self.name}'"
        if self.kind not in KINDS:
            raise IosimError(f"{label}: unknown kind '{self.kind}'{_suggest(self.kind, KINDS)}; "
                             f"kinds: {', '.join(KINDS)}")
        if self.preset.user_tree != (self.tree is not None):
            raise IosimError(f"{label}: a mapping of kind 'tree' (and only one) carries a "
                             f"loop tree")
        pre = self.preset
        for k in ("block_q", "block_kv", "block_e", "block_f"):
            _posint(getattr(self, k), f"{label}: {k}", allow_none=True)
        if pre.tile_rule is None:
            for k in ("block_q", "block_kv"):
                if getattr(self, k) is None:
                    raise IosimError(f"{label}: {k} must be given for a '{self.kind}' mapping")
        for k in ("num_warps", "num_stages", "split_kv", "softmax_rows"):
            _posint(getattr(self, k), f"{label}: {k}")
        if self.grid_order not in GRID_ORDERS:
            raise IosimError(f"{label}: grid order '{self.grid_order}' is not one of "
                             f"{', '.join(GRID_ORDERS)}")
        if self.row_policy not in ROW_POLICIES:
            raise IosimError(f"{label}: row_policy '{self.row_policy}'"
                             f"{_suggest(self.row_policy, ROW_POLICIES)} is not one of "
                             f"{', '.join(ROW_POLICIES)}")
        if (pre.row_policies and self.row_policy != "auto"
                and self.row_policy not in pre.row_policies):
            raise IosimError(f"{label}: {self.kind} takes row_policy "
                             f"{' or '.join(repr(p) for p in pre.row_policies)}, not "
                             f"'{self.row_policy}'")
        if pre.tiles == "tied" and self.block_kv != self.block_q:
            object.__setattr__(self, "block_kv", self.block_q)
        if pre.tiles == "square" and self.block_q != self.block_kv:
            raise IosimError(f"{label}: {self.kind}'s tiling is square: block_q and block_kv "
                             f"must be equal (got {self.block_q} and {self.block_kv})")

    # -- convenience -------------------------------------------------------------------
    @property
    def preset(self):
        """The :class:`~iosim.looptree.presets.Preset` of this mapping's kind: its tree
        builder and the properties the models read instead of its name."""
        from iosim.looptree.presets import preset_of
        return preset_of(self.kind)

    @property
    def packs_rows(self) -> bool:
        """The query heads of a group share the rows of one program (rows = queries x
        heads of the group): the preset's packing with ``pack_group``, or a user tree whose
        row loop runs over ``R``."""
        if self.tree is not None:
            return self.tree.packs_rows
        return self.preset.packs_group and self.pack_group

    def with_(self, **changes) -> "Mapping":
        """A copy with fields changed (validated); unknown fields are errors."""
        bad = [k for k in changes if k not in self.__dataclass_fields__]
        if bad:
            raise IosimError(f"mapping '{self.name}': unknown field '{bad[0]}'"
                             f"{_suggest(bad[0], self.__dataclass_fields__)}")
        return replace(self, **changes)

    def level_of(self, tensor: str, default: str) -> str:
        return dict(self.resident).get(tensor, default)

    @property
    def derived_blocks(self) -> bool:
        """True when block sizes come from the paper's rule for the SRAM size."""
        return self.block_q is None or self.block_kv is None

    def resolve(self, sram_elements: float, d: int) -> "Mapping":
        """Concrete block sizes: the paper's rule for missing ones (fa1, saha-ye).

        ``sram_elements`` is the SRAM size M in elements, ``d`` the head dimension.
        """
        rule = self.preset.tile_rule
        if not self.derived_blocks or rule is None:
            return self
        bq, bk = rule.scalar(sram_elements, d)
        if rule.both:
            return replace(self, block_q=bq, block_kv=bk)
        return replace(self, block_q=self.block_q or bq, block_kv=self.block_kv or bk)

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "cascade": self.cascade,
                "loop_order": list(self.loop_order),
                "block_q": self.block_q, "block_kv": self.block_kv,
                "block_e": self.block_e, "block_f": self.block_f,
                "resident": dict(self.resident), "fused": self.fused,
                "grid_order": self.grid_order, "num_warps": self.num_warps,
                "num_stages": self.num_stages, "split_kv": self.split_kv,
                "init_writes": self.init_writes, "write_lse": self.write_lse,
                "row_policy": self.row_policy, "softmax_rows": self.softmax_rows,
                "acc_dtype": self.acc_dtype, "stat_dtype": self.stat_dtype,
                "acc_level": self.acc_level, "stages_in_footprint": self.stages_in_footprint,
                "pack_group": self.pack_group,
                **({"tree": format_tree_text(self.tree)} if self.tree is not None else {})}


def fa1_paper_blocks(sram_elements: float, d: int) -> tuple[int, int]:
    """FlashAttention Algorithm 1's block sizes: ``(Bc, Br)`` = (⌈M/4d⌉, min(⌈M/4d⌉, d))."""
    if not sram_elements >= 1:
        raise IosimError(f"SRAM of {sram_elements} elements is too small for any tile")
    bc = math.ceil(sram_elements / (4 * d))
    return bc, min(bc, d)


def saha_ye_block(sram_elements: float) -> int:
    """Saha & Ye's square tile: B = ⌊√(M/4)⌋ (their Algorithm 1, line 1)."""
    b = math.isqrt(int(sram_elements // 4))
    if b < 1:
        raise IosimError(f"Saha & Ye's tiling needs at least 4 elements of SRAM "
                         f"(B = floor(sqrt(M/4)) >= 1), got {sram_elements:g}")
    return b


# ======================================================================================
# shapes
# ======================================================================================


@dataclass(frozen=True)
class Shapes:
    """Problem sizes: ``n`` query rows, ``kv_len`` keys (default ``n``), head dims ``e``/``f``.

    ``heads`` query heads and ``kv_heads`` key/value heads per batch (default: as many as
    query heads); ``group`` = ``heads / kv_heads`` query heads share one K/V head (GQA) and
    is derived. Giving ``group`` without ``kv_heads`` reads ``heads`` as K/V heads of
    ``group`` query heads each. ``causal_offset`` is the diagonal's offset (query ``p``
    sees keys ``m <= p + offset``; ``None``: the cascade's own mask, 0 for ``m > p`` and
    ``kv_len - n`` for a mask aligned to the end of the keys, ``m > p + M - P``).
    """
    n: int
    e: int = 64
    kv_len: int | None = None
    f: int | None = None
    batch: int = 1
    heads: int = 1
    group: int = 1
    dtype: str = "bf16"
    causal: bool = False
    causal_offset: int | None = None
    kv_heads: int | None = None
    #: a block-sparse cascade: the fraction of (query tile, key tile) blocks its mask keeps
    block_density: float = 1.0

    def __post_init__(self):
        names = {"n": "seq-len", "e": "head-dim", "kv_len": "kv-len", "f": "head-dim f",
                 "batch": "batch", "heads": "heads", "group": "group", "kv_heads": "kv-heads"}
        for k, label in names.items():
            v = getattr(self, k)
            if v is None and k in ("kv_len", "f", "kv_heads"):
                continue
            if isinstance(v, float) and v.is_integer():
                v = int(v)
                object.__setattr__(self, k, v)
            _posint(v, label)
        if self.kv_len is None:
            object.__setattr__(self, "kv_len", self.n)
        if self.f is None:
            object.__setattr__(self, "f", self.e)
        if self.kv_heads is None:
            object.__setattr__(self, "kv_heads", self.heads)
            object.__setattr__(self, "heads", self.heads * self.group)
        else:
            if self.heads % self.kv_heads:
                raise IosimError(f"heads ({self.heads}) must be a multiple of kv-heads "
                                 f"({self.kv_heads}): each K/V head serves the same number "
                                 f"of query heads")
            g = self.heads // self.kv_heads
            if self.group not in (1, g):
                raise IosimError(f"group {self.group} disagrees with heads / kv-heads = "
                                 f"{self.heads} / {self.kv_heads} = {g}")
            object.__setattr__(self, "group", g)
        from iosim.hardware import dtype_bytes
        dtype_bytes(self.dtype)  # validates
        object.__setattr__(self, "causal", bool(self.causal))
        rho = self.block_density
        if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not 0 < rho <= 1:
            raise IosimError(f"block-density must be a fraction in (0, 1], got {rho!r}")
        object.__setattr__(self, "block_density", float(rho))

    @property
    def d(self) -> int:
        return self.e

    def offset(self, default: int = 0) -> int:
        return self.causal_offset if self.causal_offset is not None else default

    def to_dict(self) -> dict:
        return {"n": self.n, "kv_len": self.kv_len, "e": self.e, "f": self.f,
                "batch": self.batch, "heads": self.heads, "kv_heads": self.kv_heads,
                "group": self.group, "dtype": self.dtype, "causal": self.causal,
                "causal_offset": self.causal_offset, "block_density": self.block_density}


# ======================================================================================
# the loop-nest IR
# ======================================================================================


@dataclass(frozen=True)
class Dim:
    """One dimension of a tile: the tensor's rank and the loop variable tiling it.

    ``var=None``: the whole rank. ``rank="Mt"``: a per-key-tile coordinate (one entry per
    tile of M by ``block_kv``); ``rank="S"``: a per-split coordinate (decode split-K).
    """
    rank: str
    var: str | None = None


@dataclass(frozen=True)
class Loop:
    """``for var in tiles of rank by block``.

    ``causal_with``: only tiles that intersect the causal (lower-triangular) region together
    with the tile of the loop ``causal_with``. ``within``: an M-tile loop over the tiles of
    one split (decode). ``grid``: iterations are independent programs (thread blocks).
    """
    var: str
    rank: str
    block: str
    body: tuple
    causal_with: str | None = None
    within: str | None = None
    grid: bool = False
    label: str = ""
    #: a block mask decides which tiles of this loop a program visits: the models count the
    #: mask's density of them (``block_density``)
    sparse: bool = False


@dataclass(frozen=True)
class SplitLoop:
    """``for var in splits`` of the key tiles (decode split-K); ``n_splits`` of them."""
    var: str
    body: tuple
    grid: bool = True
    label: str = ""


@dataclass(frozen=True)
class Load:
    """Read a tile of ``tensor`` from the backing store into an on-chip buffer.

    The buffer lives until the end of the enclosing loop body. ``streamed``: the tile is
    reloaded at every step of the innermost loop (pipelined ``num_stages`` deep on a GPU).
    ``stages``: a streamed tile's own pipeline depth (a loop tree's storage node), counted
    that many times in the footprint; ``None``: the mapping's ``num_stages``.
    """
    tensor: str
    dims: tuple
    streamed: bool = False
    stages: int | None = None


@dataclass(frozen=True)
class Store:
    """Write a tile of ``tensor`` from chip to the backing store."""
    tensor: str
    dims: tuple


@dataclass(frozen=True)
class Alloc:
    """On-chip scratch that is never loaded: an accumulator, softmax state, a score tile.

    ``role="acc"`` places it at the mapping's accumulator level (registers on a GPU),
    ``role="tile"`` at the SRAM level.
    """
    name: str
    dims: tuple
    role: str = "acc"


Node = Union[Loop, SplitLoop, Load, Store, Alloc]


@dataclass(frozen=True)
class Phase:
    """One kernel (a pass that starts after the previous one ends)."""
    name: str
    body: tuple


@dataclass(frozen=True)
class LoopNest:
    """The loop nest of a mapping on a cascade (symbolic sizes).

    ``tensors``: tensor -> (layout ranks, dtype role) where the role is ``"data"`` (the
    input dtype), ``"stat"`` (the mapping's stat dtype) or ``"mask"`` (1 byte).
    ``skips_causal``: whether blocks above the diagonal are skipped (FLOPs scale with the
    visited fraction). ``recompute``: cascade tensor -> how many times it is computed.
    """
    mapping: Mapping
    cascade: str
    phases: tuple
    tensors: dict
    skips_causal: bool = True
    recompute: dict = field(default_factory=dict)
    causal_offset_default: str = "zero"   # "zero" | "end" (decode: kv_len - n)
    rows: str = "P"                       # rank of the query-tile loop: "R" = packed groups

    def walk(self):
        """(phase, node, enclosing loops) for every node, depth first."""
        def rec(phase, nodes, encl):
            for nd in nodes:
                yield phase, nd, encl
                if isinstance(nd, (Loop, SplitLoop)):
                    yield from rec(phase, nd.body, encl + (nd,))
        for ph in self.phases:
            yield from rec(ph, ph.body, ())

    def dtype_role(self, tensor: str) -> str:
        return self.tensors.get(tensor, ((), "data"))[1]

    @property
    def splits_keys(self) -> bool:
        """The key tiles are split over programs (split-K): a split loop in the nest."""
        return any(isinstance(nd, SplitLoop) for _, nd, _ in self.walk())


# ======================================================================================
# facts about a cascade the nest builders need
# ======================================================================================

#: ranks the models size: P queries, M keys, E/F head dims, G query heads per K/V head,
#: Pt/Mt per-tile coordinates of P/M (a partition's outer rank)
MODEL_RANKS = ("P", "M", "E", "F", "G", "Pt", "Mt")

#: families of cascades, read from their structure (see :func:`cascade_facts`)
FAMILIES = ("online", "single", "multi-pass", "partials", "linear", "recurrent")


@dataclass(frozen=True)
class CascadeFacts:
    """What the nest builders know of a cascade: read from its structure, never its name.

    ``family``: ``online`` (a recurrence over key blocks: FlashAttention), ``single`` (one
    pass over the keys with no running state: sigmoid, SiLU attention), ``multi-pass`` (a
    global reduction over the whole key row read again in later passes: the 3-pass softmax),
    ``partials`` (a partitioned key rank whose per-block partials are combined by a reduction
    over the blocks: the 2-pass softmax, split-K decode), ``linear`` (no query-key score: the
    keys are reduced into a state independent of the queries), ``recurrent`` (a recurrence
    over blocks of the *queries*: Lightning Attention-2); ``None`` when none fits.
    """
    name: str
    q_inputs: tuple          # inputs with P but not M (Q), in declaration order
    kv_inputs: tuple         # inputs with M but not P (K, V)
    pm_inputs: tuple         # inputs with both P and M (a mask, a bias)
    outputs: tuple           # outputs (O)
    ranks: dict              # tensor -> model ranks (inputs and outputs)
    softmax: bool            # a max reduction over the key rank, or a running maximum
    n_state: int             # per-row running scalars carried over key blocks
    has_group: bool          # a query-only rank shared over one K/V head (GQA), as "G"
    end_aligned_causal: bool  # the causal mask is aligned to the end: m > p + M - P
    family: str | None = None
    key_passes: int = 1                  # passes over the key rank (cascades.passes)
    per_step: bool = False               # online: the output renormalised at every block
    lse_partials: bool = False           # partials: normalised, with a log-sum-exp
    partials: tuple = ()                 # partials: (tensor, has F) crossing the passes
    spilled: tuple = ()                  # multi-pass: P x M tensors crossing passes
    recompute: tuple = ()                # multi-pass: (tensor, times) if scores recomputed
    key_sums: tuple = ()                 # single: tensors summed over the keys
    states: tuple = ()                   # linear / recurrent: (tensor, ranks) of the state
    key_inputs: tuple = ()               # kv inputs that meet the queries in the score (K)
    value_inputs: tuple = ()             # the other kv inputs (V)
    bool_inputs: tuple = ()              # inputs of dtype bool (1 byte each)
    causal_param: str | None = None      # the boolean parameter that switches the mask on
    causal_default: bool = False         # its default
    key_block_param: str | None = None   # the parameter of the key rank's partition
    query_block_param: str | None = None  # the parameter of the query rank's partition
    unsized: tuple = ()                  # (tensor, rank) the models cannot size
    rank_alias: dict = field(default_factory=dict)   # cascade rank -> model rank
    #: the mask as a region of the (query, key) domain (cascades.masks.mask_region)
    mask: object = None

    @property
    def has_score(self) -> bool:
        return self.family in ("online", "single", "multi-pass", "partials")


def _base_rank(info, r: str) -> str:
    part = info.part_parent.get(r)
    return part.rank if part is not None else r


def _causal_flag(c, cond) -> tuple:
    """``(parameter, end_aligned)`` of a mask ``where(FLAG and key > query + offset, ...)``:
    the boolean parameter that switches it on and whether the offset holds ``M - P``."""
    from cascades.ir import Binary, Bool, Name, walk
    if not (isinstance(cond, Binary) and cond.op == "and"):
        return None, False
    flag = None
    cmp = None
    for side, other in ((cond.left, cond.right), (cond.right, cond.left)):
        if isinstance(side, Name):
            try:
                d = c.param(side.name).default
            except KeyError:
                continue
            if isinstance(d, Bool):
                flag, cmp = side.name, other
    if flag is None or not isinstance(cmp, Binary) or cmp.op not in (">", ">=", "<", "<="):
        return None, False
    names = {n.name for n in walk(cmp) if isinstance(n, Name)}
    ranks = set(c.info.ranks)
    end = {"M", "P"} <= (names & ranks)
    return flag, end


def _mask_region(cascade):
    from cascades.masks import mask_region
    try:
        return mask_region(cascade)
    except Exception:  # noqa: BLE001 - an unusual mask: the models treat it as dense
        return None


@lru_cache(maxsize=256)
def cascade_facts(cascade) -> CascadeFacts:
    """Structural facts of a cascade used to build loop nests (no hardware, no name)."""
    from cascades.ir import Access, Binary, Bool, Call, Name, Num, walk
    info = cascade.info
    # model ranks: P, M, E, F, G; a partition's outer rank of P / M becomes a per-tile
    # coordinate "Pt" / "Mt" (e.g. a block mask BlockMask[P1, M1]); a query-only rank of
    # the inputs (in Q and O, not in K and V) is the group rank "G"
    alias = {}
    for part in cascade.partitions:
        if part.rank in ("P", "M"):
            alias[part.outer] = part.rank + "t"
    in_ranks = {t.name: tuple(t.ranks) for t in cascade.tensors if t.role in ("input", "output")}
    base = lambda r: _base_rank(info, r)  # noqa: E731
    is_p = lambda rk: any(base(r) == "P" for r in rk)  # noqa: E731
    is_m = lambda rk: any(base(r) == "M" for r in rk)  # noqa: E731
    q_side = {r for t in cascade.inputs if is_p(t.ranks) and not is_m(t.ranks) for r in t.ranks}
    kv_side = {r for t in cascade.inputs if is_m(t.ranks) for r in t.ranks}
    for r in sorted(q_side - kv_side):
        if r not in ("P", "E", "F") and base(r) not in ("P", "M") and r not in alias:
            alias[r] = "G"
    ranks = {t: tuple(alias.get(r, r) for r in rk) for t, rk in in_ranks.items()}
    unsized = tuple((t, r) for t, rk in ranks.items() for r in rk if r not in MODEL_RANKS)
    q_in, kv_in, pm_in = [], [], []
    for t in cascade.inputs:
        rk = ranks[t.name]
        has_p, has_m = ("P" in rk or "Pt" in rk), ("M" in rk or "Mt" in rk)
        if has_p and has_m:
            pm_in.append(t.name)
        elif has_m:
            kv_in.append(t.name)
        else:
            q_in.append(t.name)
    bool_in = tuple(t.name for t in cascade.inputs if t.dtype == "bool")
    key_vars = {v for v, r in info.var_rank.items() if base(r) == "M"}
    # softmax: a max reduction over the key rank, or a running maximum over key blocks
    softmax = any(e.reduction is not None and e.reduction.op == "max"
                  and set(e.reduction.vars) & key_vars for e in cascade.einsums)
    softmax = softmax or any(
        any(getattr(n, "func", None) == "max" for n in walk(e.expr)) for e in cascade.einsums
        if e.shift is not None and base(info.var_rank[e.shift[0]]) == "M")
    # running per-row state: iterative tensors whose ranks (less the iterative rank) have
    # no F (the F-carrying ones are the output accumulator)
    n_state = 0
    it_ranks = set(info.iterative)
    for t, (var, _) in info.shifted.items():
        rest = [r for r in info.tensor_ranks[t] if r not in it_ranks]
        if "F" not in rest and "E" not in rest:
            n_state += 1
    if n_state == 0 and softmax:
        n_state = 2
    has_group = any("G" in r for r in ranks.values())
    # the causal mask: its switch and its alignment
    causal_param, end_aligned = None, False
    for e in cascade.einsums:
        for nd in walk(e.expr):
            if isinstance(nd, Call) and nd.func == "where" and nd.args:
                flag, end = _causal_flag(cascade, nd.args[0])
                if flag is not None and causal_param is None:
                    causal_param, end_aligned = flag, end
    region = _mask_region(cascade)
    if causal_param is None and region is not None and region.is_band and region.switch:
        # a band switched by a boolean parameter: causal and (m > p or p - m >= window)
        causal_param = region.switch
        end_aligned = {"M", "P"} <= set(region.upper.names())
    causal_default = False
    if causal_param is not None:
        d = cascade.param(causal_param).default
        causal_default = bool(getattr(d, "value", False))
    key_block = query_block = None
    for part in cascade.partitions:
        if isinstance(part.block, Name):
            if part.rank == "M":
                key_block = part.block.name
            elif part.rank == "P":
                query_block = part.block.name

    # ---- tensors: which ranks each intermediate carries
    tr = info.tensor_ranks
    inputs = {t.name for t in cascade.inputs}
    scores = [t for t, rk in tr.items() if t not in inputs and is_p(rk) and is_m(rk)]
    key_passes = 1
    buffered = ()
    einsum_pass = {}
    if "M" in info.ranks:
        try:
            from cascades.passes import analyze_rank
            rp = analyze_rank(cascade, "M")
            key_passes, buffered, einsum_pass = rp.passes, rp.buffered, rp.einsum_pass
        except Exception:  # noqa: BLE001 - an unusual cascade: no pass structure known
            key_passes = 1
    iter_bases = {base(r) for r in info.iterative}
    family = None
    per_step = lse = False
    partials = spilled = recompute = key_sums = states = ()
    if "P" in iter_bases and not ({"M"} & iter_bases):
        family = "recurrent"
        states = tuple((t, tuple(r for r in tr[t] if r not in info.iterative))
                       for t in info.shifted)
    elif "M" in iter_bases and scores:
        family = "online"
        for e in cascade.einsums:
            if e.shift is not None and "F" in tr[e.tensor] and any(
                    isinstance(n, Binary) and n.op == "/" for n in walk(e.expr)):
                per_step = True
    elif scores and "M" in info.partition_of and key_passes >= 2:
        outer = info.partition_of["M"].outer.lower()
        if any(e.reduction is not None and outer in e.reduction.vars for e in cascade.einsums):
            family = "partials"
            lse = any(isinstance(n, Call) and n.func == "log"
                      for e in cascade.einsums for n in walk(e.expr))
            partials = tuple((b.tensor, "F" in b.ranks) for b in buffered
                             if info.partition_of["M"].outer in b.ranks)
    elif scores and key_passes >= 2:
        family = "multi-pass"
        spilled = tuple(b.tensor for b in buffered if is_p(b.ranks) and is_m(b.ranks))
        last = key_passes
        recompute = tuple((t, last - einsum_pass[t] + 1) for t in einsum_pass
                          if t in scores and einsum_pass[t] < last)
    elif scores:
        family = "single"
        key_sums = tuple(e.tensor for e in cascade.einsums if e.reduction is not None
                         and e.reduction.op == "sum" and set(e.reduction.vars) & key_vars
                         and not is_m(tr[e.tensor]))
    elif not iter_bases and kv_in:
        reduced = [e for e in cascade.einsums if e.reduction is not None
                   and set(e.reduction.vars) & key_vars and not is_p(tr[e.tensor])
                   and not is_m(tr[e.tensor])]
        if reduced:
            family = "linear"
            states = tuple((e.tensor, tuple(alias.get(r, r) for r in tr[e.tensor]))
                           for e in reduced)
    # K: the kv inputs that meet a query input's rank (the score's contraction); V: the rest
    q_ranks = {r for t in q_in for r in ranks[t]} - {"P", "Pt", "G"}
    key_in = tuple(t for t in kv_in if set(ranks[t]) & q_ranks)
    val_in = tuple(t for t in kv_in if t not in key_in)
    if not key_in:
        key_in, val_in = tuple(kv_in[:1]), tuple(kv_in[1:])
    _ = (Access, Bool, Num)
    return CascadeFacts(cascade.name, tuple(q_in), tuple(kv_in), tuple(pm_in),
                        tuple(t.name for t in cascade.outputs), ranks, softmax, n_state,
                        has_group, end_aligned, family=family, key_passes=key_passes,
                        per_step=per_step, lse_partials=lse, partials=partials,
                        spilled=spilled, recompute=recompute, key_sums=key_sums,
                        states=states, key_inputs=key_in, value_inputs=val_in,
                        bool_inputs=bool_in, causal_param=causal_param,
                        causal_default=causal_default, key_block_param=key_block,
                        query_block_param=query_block, unsized=unsized, rank_alias=alias,
                        mask=region)


def cascade_defaults(cascade) -> dict:
    """The defaults a cascade file sets for the models: ``causal`` (its mask switch's
    default), ``block_kv``/``block_q`` (the default of the parameter its key/query rank is
    partitioned by, when that is a positive whole number)."""
    from cascades.ir import Num
    f = cascade_facts(_load_cascade(cascade))
    c = _load_cascade(cascade)
    out = {"causal": f.causal_default}
    for key, pname in (("block_kv", f.key_block_param), ("block_q", f.query_block_param)):
        if pname is None:
            continue
        d = c.param(pname).default
        if isinstance(d, Num) and float(d.value).is_integer() and d.value >= 1:
            out[key] = int(d.value)
    return out


def resolve_causal(cascade, flag: bool | None) -> bool:
    """Whether to apply the cascade's causal mask: ``flag`` if given (``--causal``/
    ``--no-causal``), else the default of the parameter that switches the mask on (a file's
    ``param causal = true`` makes it causal). Asking for a causal mask of a cascade that has
    no such switch is a one-line error."""
    c = _load_cascade(cascade)
    f = cascade_facts(c)
    if flag is None:
        return f.causal_default
    if flag and f.causal_param is None:
        raise IosimError(f"cascade '{c.name}' has no causal mask to switch on (a boolean "
                         f"parameter in 'where(causal and m > p, ...)'); its masking, if any, "
                         f"is part of the cascade")
    return bool(flag)


# ======================================================================================
# nests from loop trees
# ======================================================================================
#
# The nest of a mapping is the lowering of its loop tree (iosim.looptree): a user's tree, or
# the tree its preset builds for the cascade (iosim.looptree.presets).


# --------------------------------------------------------------------------------------
# chunked nests: spatial accelerators (FuseMax, FLAT) with a global buffer
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartialLoad(Load):
    """A :class:`Load` of only part of each tile: the fraction ``part`` (a name in the size
    table, a number in [0, 1]) of the tile that did not fit on chip and was spilled.
    :func:`iosim.traffic.nest_traffic` counts the fraction; the tile-level walkers
    (footprints, :mod:`iosim.trace`) see a whole tile."""
    part: str = "spill"


@dataclass(frozen=True)
class PartialStore(Store):
    """A :class:`Store` of the fraction ``part`` of each tile (the spilled part)."""
    part: str = "spill"


@dataclass(frozen=True)
class ChunkPass:
    """One pass over the key rank inside a chunk of query rows (see :func:`chunked_nest`).

    Tensor names, each moved once per key tile of the pass: ``loads`` read whole (K, V, a
    score tile of an unfused kernel), ``stores`` written whole (an unfused kernel's scores),
    ``spill_loads``/``spill_stores`` only their spilled part (a multi-pass fibre that did not
    fit on chip, written in the pass that makes it and read back in each later pass).
    """
    loads: tuple = ()
    stores: tuple = ()
    spill_loads: tuple = ()
    spill_stores: tuple = ()
    label: str = ""


def chunked_nest(name: str, cascade: str, ranks: dict, *, chunk_loads=(), once_loads=(),
                 passes=(), chunk_stores=(), once_stores=(), keep=(), block_q: int = 1,
                 block_kv: int = 1, label: str = "") -> LoopNest:
    """The loop nest of a spatial accelerator's chunked mapping (kind ``chunked``)::

        load once_loads
        for c in chunks of P (block_q query rows):
            load chunk_loads[c]                     # Q: once per chunk
            keep keep[c]                            # running state on chip
            for pass in passes:
                for j in key tiles of M (block_kv keys):
                    load pass.loads[j]              # K, V: once per chunk and pass
                    store pass.stores[j]
                    store the spilled part of pass.spill_stores[j]
                    load the spilled part of pass.spill_loads[j]
            store chunk_stores[c]                   # O: once
        store once_stores

    ``ranks`` maps every tensor to its ranks in this module's vocabulary: ``P`` (query rows,
    tiled by the chunk), ``M`` (keys, tiled by the key loop), ``Mt`` (one entry per key
    tile, e.g. a per-block max) and whole ranks (``E``, ``F``). ``block_q`` and ``block_kv``
    are recorded in the :class:`Mapping`; counts take them from the size table
    (:func:`iosim.traffic.nest_traffic`).
    """
    from iosim.looptree.lower import lower
    from iosim.looptree.presets import chunked_tree
    m = Mapping(name=name, cascade=cascade, kind="chunked", loop_order=("B", "H", "P", "M"),
                block_q=int(block_q), block_kv=int(block_kv), fused=True,
                notes=label or "chunks of query rows; key tiles streamed per chunk and pass")
    tree = chunked_tree(ranks, chunk_loads=chunk_loads, once_loads=once_loads, passes=passes,
                        chunk_stores=chunk_stores, once_stores=once_stores, keep=keep,
                        label=label)
    return lower(tree, m, _ChunkFacts(cascade))


@dataclass(frozen=True)
class _ChunkFacts:
    """What lowering needs of a cascade a chunked nest is built for by name (its tensors
    come with the nest)."""
    name: str
    ranks: dict = field(default_factory=dict)
    bool_inputs: tuple = ()
    end_aligned_causal: bool = False


_FAMILY_TEXT = {
    "online": "a 1-pass recurrence over key blocks",
    "single": "one pass over the keys without a running maximum",
    "multi-pass": "{k} passes over the keys (a global reduction read again)",
    "partials": "per-key-block partials combined in a second pass",
    "linear": "linear attention (the keys reduced into a state, no query-key score)",
    "recurrent": "a recurrence over blocks of the queries",
    None: "none of the shapes the mappings know",
}


def _family_text(f: CascadeFacts) -> str:
    return _FAMILY_TEXT[f.family].format(k=f.key_passes)


def fit_error(kind: str, cascade) -> str | None:
    """Why a mapping kind does not fit a cascade (one line), or ``None`` if it fits.

    Read from the cascade's structure (:func:`cascade_facts`), never from its name: the same
    text under any name, or as a user's file, fits the same mappings.
    """
    f = cascade if isinstance(cascade, CascadeFacts) else cascade_facts(_load_cascade(cascade))
    name = f"cascade '{f.name}'"
    if f.unsized:
        t, r = f.unsized[0]
        return (f"{name}: rank {r} of '{t}' is none the mappings can size (they know queries "
                f"P, keys M, head dims E and F, a group rank and blocks of P and M)")
    if not f.outputs or not f.kv_inputs:
        return (f"mapping {kind} needs a cascade with key/value inputs (indexed by M) and an "
                f"output; {name} has {'no output' if not f.outputs else 'no input indexed by M'}")
    from iosim.looptree.presets import preset_of
    return preset_of(kind).fits(f, name, _family_text(f))


def _load_cascade(cascade):
    """A cascade by name, path or object, with its ranks named by role (P, M, E, F)."""
    from cascades.roles import canonical
    if isinstance(cascade, str):
        from cascades.library import load
        cascade = load(cascade)
    return canonical(cascade)


def loop_nest(mapping: Mapping, cascade=None, *, grouped: bool | None = None) -> LoopNest:
    """The :class:`LoopNest` of ``mapping`` on ``cascade`` (default: ``mapping.cascade``).

    ``grouped``: the query heads come in groups sharing one K/V head (``Shapes.group`` > 1;
    ``None``: whether the cascade has a group rank). Raises a one-line :class:`IosimError`
    when the mapping does not fit the cascade (see :func:`fit_error`).
    """
    c = _load_cascade(cascade if cascade is not None else mapping.cascade)
    facts = cascade_facts(c)
    why = fit_error(mapping.kind, facts)
    if why is not None:
        raise IosimError(why)
    if grouped is None:
        grouped = facts.has_group
    from iosim.looptree.lower import lower
    nest = lower(mapping_tree(mapping, facts, grouped=bool(grouped)), mapping, facts)
    region = facts.mask
    if region is not None and region.kind == "block":
        nest = _sparse_key_loops(nest)
    return nest


def mapping_tree(mapping: Mapping, cascade=None, *, grouped: bool | None = None):
    """The :class:`~iosim.looptree.tree.LoopTree` of ``mapping`` on ``cascade`` (a name, a
    path, a Cascade or its :class:`CascadeFacts`): the user's tree, or the one its preset
    builds from the cascade's structure."""
    f = cascade if isinstance(cascade, CascadeFacts) else cascade_facts(
        _load_cascade(cascade if cascade is not None else mapping.cascade))
    if grouped is None:
        grouped = f.has_group
    return mapping.preset.build(mapping, f, bool(grouped))


def _sparse_key_loops(nest: LoopNest) -> LoopNest:
    """A block mask decides which key tiles a query tile visits: every key-tile loop that is
    not a grid loop becomes sparse (its visited tiles are the mask's density of them)."""
    def tx(nodes):
        out = []
        for nd in nodes:
            if isinstance(nd, Loop):
                nd = replace(nd, body=tx(nd.body),
                             sparse=nd.sparse or (nd.rank == "M" and not nd.grid))
            elif isinstance(nd, SplitLoop):
                nd = replace(nd, body=tx(nd.body))
            out.append(nd)
        return tuple(out)
    return replace(nest, phases=tuple(replace(ph, body=tx(ph.body)) for ph in nest.phases))


# ======================================================================================
# the registry
# ======================================================================================

_FA_ORDER = ("B", "H", "P", "M")
MAPPINGS: dict[str, dict] = {
    "fa2": dict(kind="fa2", cascade="attention-1pass", block_q=128, block_kv=64,
                loop_order=_FA_ORDER,
                notes="FlashAttention-2: a program per query tile (the query heads of a group "
                      "packed into its rows), K/V streamed, O and LSE written once"),
    "fa1": dict(kind="fa1", cascade="flash1", block_q=None, block_kv=None,
                loop_order=("B", "H", "M", "P"), grid_order="query-major",
                notes="FlashAttention-1 Algorithm 1: outer loop over K/V tiles, O, l, m in HBM; "
                      "paper block sizes Bc = ceil(M/4d), Br = min(Bc, d) unless given"),
    "unfused": dict(kind="unfused", cascade="attention-3pass", block_q=128, block_kv=128,
                    loop_order=_FA_ORDER, fused=False,
                    notes="standard attention: S = QK^T and P = softmax(S) in HBM"),
    "fused-3pass": dict(kind="fused-3pass", cascade="attention-3pass", block_q=64, block_kv=64,
                        loop_order=_FA_ORDER,
                        notes="3-pass cascade fused per query tile; the score row is buffered "
                              "on chip (row_policy buffer), spilled or recomputed"),
    "fused-2pass": dict(kind="fused-2pass", cascade="attention-2pass", block_q=64, block_kv=64,
                        loop_order=_FA_ORDER,
                        notes="2-pass cascade fused per query tile; per-key-tile partials "
                              "buffered on chip or spilled"),
    "decode-splitk": dict(kind="decode-splitk", cascade="decode-splitk", block_q=16,
                          block_kv=64, split_kv=8, loop_order=("B", "H", "S", "P", "M"),
                          notes="FlashDecoding: partial O and LSE per split in HBM, then a "
                                "combining kernel"),
    "linear": dict(kind="linear", cascade="linear", block_q=128, block_kv=128,
                   loop_order=("B", "H", "M", "P"),
                   notes="linear attention: E x F state built in one pass, read per query tile"),
    "lightning2": dict(kind="lightning2", cascade="lightning2", block_q=64, block_kv=64,
                       loop_order=("B", "H", "P"),
                       notes="Lightning Attention-2: intra-block product, E x F state on chip"),
    "saha-ye": dict(kind="saha-ye", cascade="attention-3pass", block_q=None, block_kv=None,
                    loop_order=("B", "H", "P", "M", "E"),
                    notes="Saha & Ye's square tiling B = floor(sqrt(M/4)): exp(QK^T) and row "
                          "sums to HBM, then D^-1 A V (arXiv 2402.07443, Algorithm 1)"),
}

#: the order in which fitting mappings are listed (after the cascade's default)
_ORDER = ("fa2", "fa1", "fused-2pass", "fused-3pass", "unfused", "saha-ye", "decode-splitk",
          "linear", "lightning2")


def mapping_names() -> tuple:
    return tuple(MAPPINGS)


def _key(name: str) -> str:
    key = str(name).strip().lower().replace("_", "-")
    if key in ("fa", "flash2", "flashattention-2"):
        key = "fa2"
    if key in ("flash1", "flashattention-1"):
        key = "fa1"
    if key in ("standard", "naive"):
        key = "unfused"
    if key not in MAPPINGS:
        raise IosimError(f"unknown mapping '{name}'{_suggest(name, MAPPINGS)}; "
                         f"mappings: {', '.join(MAPPINGS)}")
    return key


def get_mapping(name: str, cascade=None, **overrides) -> Mapping:
    """The named mapping (see :data:`MAPPINGS`), with fields overridden.

    ``cascade`` sets the cascade the mapping is for (a name, a path or a Cascade; default:
    the mapping's own). Overrides with value ``None`` for ``block_q``/``block_kv`` keep the
    registry's value except for ``fa1``/``saha-ye`` (where ``None`` means the paper rule).
    """
    key = _key(name)
    spec = dict(MAPPINGS[key])
    if cascade is not None:
        spec["cascade"] = str(getattr(cascade, "name", cascade))
    from iosim.looptree.presets import preset_of
    pre = preset_of(spec["kind"])
    for k, v in overrides.items():
        if v is None and k in ("block_q", "block_kv") and pre.tile_rule is None:
            continue
        spec[k] = v
    bad = [k for k in spec if k not in Mapping.__dataclass_fields__]
    if bad:
        raise IosimError(f"mapping '{key}': unknown field '{bad[0]}'"
                         f"{_suggest(bad[0], Mapping.__dataclass_fields__)}")
    if pre.tiles == "square":
        b = spec.get("block_q") or spec.get("block_kv")
        spec["block_q"] = spec["block_kv"] = b
    return Mapping(name=key, **spec)


def default_kind(cascade) -> str:
    """The default mapping kind of a cascade, from its structure (:func:`cascade_facts`):
    FlashAttention-2 for a 1-pass recurrence with a deferred division or a single pass,
    FlashAttention-1 when the recurrence renormalises the output at every block, the fused
    3-pass and 2-pass mappings for multi-pass and per-block-partial softmaxes (FlashDecoding
    when the partials are normalised with a log-sum-exp), linear and Lightning-2 for their
    shapes."""
    f = cascade if isinstance(cascade, CascadeFacts) else cascade_facts(_load_cascade(cascade))
    fam = f.family
    if fam == "online":
        return "fa1" if f.per_step else "fa2"
    if fam == "multi-pass":
        return "fused-3pass" if f.softmax else "unfused"
    if fam == "partials":
        return "decode-splitk" if f.lse_partials else "fused-2pass"
    if fam == "linear":
        return "linear"
    if fam == "recurrent":
        return "lightning2"
    return "fa2"


def _cascade_blocks(kind: str, f: CascadeFacts) -> tuple:
    """Which tiles of a mapping are the cascade's own key (query) blocks: a mapping that
    follows the cascade's block structure (FlashAttention-2 on a recurrence over key blocks,
    the fused 2-pass mapping on per-block partials, Lightning-2 on its query blocks) takes
    the default of the parameter the cascade partitions its key (query) rank by."""
    from iosim.looptree.presets import preset_of
    return tuple(preset_of(kind).cascade_blocks(f))


def mapping_for(cascade, name: str | None = None, **overrides) -> Mapping:
    """The mapping ``name`` (default: the cascade's, :func:`default_kind`) for a cascade,
    with the cascade file's defaults: its key/query block parameter sets ``block_kv``/
    ``block_q`` of the mappings that stream its blocks (fa2, fused-2pass, lightning2)
    unless overridden. Overrides with value ``None`` are ignored (fa1/saha-ye: the paper
    rule)."""
    c = _load_cascade(cascade)
    key = _key(name) if name is not None else default_kind(c)
    spec = {}
    dflt = cascade_defaults(c)
    for k in _cascade_blocks(MAPPINGS[key]["kind"], cascade_facts(c)):
        if k in dflt:
            spec[k] = dflt[k]
    spec.update({k: v for k, v in overrides.items() if v is not None})
    return get_mapping(key, cascade=c.name, **spec)


def default_mapping(cascade, **overrides) -> Mapping:
    """The default mapping for a cascade (a library name, a path or a Cascade), read from
    its structure; see :func:`mapping_for`."""
    return mapping_for(cascade, None, **overrides)


def mappings_for(cascade) -> tuple:
    """Names of the mappings that fit a cascade (first: its default), from its structure."""
    f = cascade_facts(_load_cascade(cascade))
    first = default_kind(f)
    kinds = [first] + [k for k in _ORDER if k != first]
    return tuple(k for k in kinds if k in MAPPINGS and fit_error(k, f) is None)


# ======================================================================================
# capacity check and loop-nest printing
# ======================================================================================


def _fmt_bytes(b: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if b >= size:
            return f"{b / size:.1f} {unit}"
    return f"{b:.0f} B"


def check_fits(mapping: Mapping, hardware, shapes: Shapes, dtype: str | None = None,
               cascade=None, *, sram_bytes: float | None = None) -> dict:
    """Raise :class:`IosimError` if the mapping's on-chip buffers overflow a level.

    Returns ``{level: bytes needed}``. ``sram_bytes`` overrides the SRAM level's capacity.
    The message names the level and the bytes needed and available, e.g.
    ``tiles need 300.0 KiB of SMEM but 227.0 KiB fit: reduce block_q or block_kv``.
    """
    from iosim.traffic import footprint
    if dtype is not None and dtype != shapes.dtype:
        shapes = replace(shapes, dtype=dtype)
    fp = footprint(mapping, hardware, shapes, cascade=cascade, sram_bytes=sram_bytes)
    for lvl, info in fp.items():
        if info["need"] > info["capacity"]:
            raise IosimError(f"tiles need {_fmt_bytes(info['need'])} of {lvl} but "
                             f"{_fmt_bytes(info['capacity'])} fit: "
                             f"{mapping.preset.reduce_hint}")
    return {lvl: info["need"] for lvl, info in fp.items()}


def format_tree_text(tree) -> str:
    from iosim.looptree.tree import format_tree
    return format_tree(tree)


def format_loop_nest(nest: LoopNest, sizes: dict | None = None) -> str:
    """The loop nest as text, Timeloop style (``for i in [0:32)``), with trip counts if
    ``sizes`` (from :func:`iosim.traffic.scalar_sizes`) is given."""
    lines = []
    blocks = {"block_q": "block_q", "block_kv": "block_kv", "block_e": "block_e",
              "block_f": "block_f", "block_rows": "softmax_rows", "one": "1"}

    def trips(nd) -> str:
        if sizes is None:
            return "?"
        if isinstance(nd, SplitLoop):
            return str(int(sizes["S"]))
        ext = sizes[nd.rank]
        b = sizes[nd.block]
        return str(int(-(-ext // b)))

    def dims_txt(dims) -> str:
        parts = []
        for d in dims:
            if d.var is None:
                parts.append(":" if d.rank not in ("Mt", "Pt", "S") else "all")
            else:
                parts.append(d.var)
        return "[" + ",".join(parts) + "]"

    def rec(nodes, depth):
        pad = "  " * depth
        pending: list[str] = []

        def flush():
            if pending:
                lines.append(pad + "; ".join(pending))
                pending.clear()

        for nd in nodes:
            if isinstance(nd, Loop):
                flush()
                extra = []
                if sizes is not None and nd.block != "one":
                    extra.append(f"tile {nd.rank}:{int(sizes[nd.block])}")
                elif nd.block != "one":
                    extra.append(f"tile {nd.rank}:{blocks[nd.block]}")
                if nd.causal_with and (sizes is None or sizes.get("causal")):
                    extra.append(f"causal: tiles meeting the diagonal of {nd.causal_with}")
                if nd.within:
                    extra.append(f"within split {nd.within}")
                if nd.grid:
                    extra.append("parallel")
                note = f"   # {nd.label}" if nd.label else ""
                lines.append(f"{pad}for {nd.var} in [0:{trips(nd)})"
                             f"{' (' + ', '.join(extra) + ')' if extra else ''}{note}")
                rec(nd.body, depth + 1)
            elif isinstance(nd, SplitLoop):
                flush()
                note = f"   # {nd.label}" if nd.label else ""
                lines.append(f"{pad}for {nd.var} in [0:{trips(nd)}){' (parallel)' if nd.grid else ''}{note}")
                rec(nd.body, depth + 1)
            elif isinstance(nd, (PartialLoad, PartialStore)):
                verb = "load" if isinstance(nd, Load) else "store"
                frac = (f"={float(sizes[nd.part]):.3g}" if sizes is not None and nd.part in sizes
                        else "")
                pending.append(f"{verb} {nd.tensor}{dims_txt(nd.dims)} x {nd.part}{frac}")
            elif isinstance(nd, Load):
                pending.append(f"load {nd.tensor}{dims_txt(nd.dims)}")
            elif isinstance(nd, Store):
                pending.append(f"store {nd.tensor}{dims_txt(nd.dims)}")
            elif isinstance(nd, Alloc):
                pending.append(f"keep {nd.name}{dims_txt(nd.dims)}")
        flush()

    for ph in nest.phases:
        lines.append(f"# kernel: {ph.name}")
        rec(ph.body, 0)
    return "\n".join(lines)
