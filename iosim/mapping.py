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
    "resolve_causal",
]

GRID_ORDERS = ("query-major", "head-major")
ROW_POLICIES = ("auto", "buffer", "spill", "recompute")
KINDS = ("fa2", "fa1", "unfused", "fused-3pass", "fused-2pass", "decode-splitk", "linear",
         "lightning2", "saha-ye", "chunked")


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

    def __post_init__(self) -> None:
        label = f"mapping '{self.name}'"
        if self.kind not in KINDS:
            raise IosimError(f"{label}: unknown kind '{self.kind}'{_suggest(self.kind, KINDS)}; "
                             f"kinds: {', '.join(KINDS)}")
        for k in ("block_q", "block_kv", "block_e", "block_f"):
            _posint(getattr(self, k), f"{label}: {k}", allow_none=True)
        if self.kind not in ("fa1", "saha-ye"):
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
        if self.kind == "fused-2pass" and self.row_policy == "recompute":
            raise IosimError(f"{label}: fused-2pass keeps per-block partials: row_policy must "
                             f"be 'buffer' or 'spill'")
        if self.kind == "lightning2" and self.block_kv != self.block_q:
            object.__setattr__(self, "block_kv", self.block_q)
        if self.kind == "saha-ye" and self.block_q != self.block_kv:
            raise IosimError(f"{label}: Saha & Ye's tiling is square: block_q and block_kv must "
                             f"be equal (got {self.block_q} and {self.block_kv})")

    # -- convenience -------------------------------------------------------------------
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
        if not self.derived_blocks:
            return self
        if self.kind == "fa1":
            bc, br = fa1_paper_blocks(sram_elements, d)
            return replace(self, block_q=self.block_q or br, block_kv=self.block_kv or bc)
        b = saha_ye_block(sram_elements)
        return replace(self, block_q=b, block_kv=b)

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
                "pack_group": self.pack_group}


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
    """
    tensor: str
    dims: tuple
    streamed: bool = False


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
# nest builders
# ======================================================================================


def _tile_dims(ranks, tiles: dict) -> tuple:
    """Dims of a tensor with ranks ``ranks``: tiled by ``tiles[rank]`` (a var) or whole.
    Per-tile coordinates ``Pt``/``Mt`` take the var of ``P``/``M``."""
    return tuple(Dim(r, tiles.get(r[0] if r in ("Pt", "Mt") else r)) for r in ranks)


def _tensor_roles(f: CascadeFacts) -> dict:
    """tensor -> (ranks, dtype role): boolean inputs take one byte, the rest the dtype."""
    return {t: (f.ranks[t], "mask" if t in f.bool_inputs else "data") for t in f.ranks}


def _gv(grouped: bool) -> dict:
    """The tile variable of the group rank G: the grid loop's ``g`` when the heads are
    grouped, else none (a G rank of extent 1 is whole)."""
    return {"G": "g"} if grouped else {}


def _group_wrap(f: CascadeFacts, body: tuple, grouped: bool) -> tuple:
    """One program per query head of a group: a grid loop over ``G`` (the query heads that
    share one K/V head), whether the cascade has a group rank or the heads are grouped."""
    if grouped:
        return (Loop("g", "G", "one", body, grid=True, label="query heads of the group"),)
    return body


def _stats(f: CascadeFacts, var: str, names=("m", "l"), rank: str = "P") -> tuple:
    out = []
    for k in range(f.n_state):
        nm = names[k] if k < len(names) else f"state{k}"
        out.append(Alloc(nm, (Dim(rank, var),)))
    return tuple(out)


def _out_tiles(f: CascadeFacts, tiles: dict) -> tuple:
    return tuple(Store(o, _tile_dims(f.ranks[o], tiles)) for o in f.outputs)


def _acc_tiles(f: CascadeFacts, tiles: dict) -> tuple:
    return tuple(Alloc(f"{o}_acc", _tile_dims(f.ranks[o], tiles)) for o in f.outputs)


def _packs(m: Mapping, f: CascadeFacts, grouped: bool) -> bool:
    """Whether FA2 packs the query heads of a group into the rows of one program (as the
    generated kernel does): with grouped heads, no mask input and no per-tile input."""
    return (grouped and m.pack_group and not f.pm_inputs
            and not any(r == "Pt" for rk in f.ranks.values() for r in rk))


def _row_ranks(ranks) -> tuple:
    """A tensor's ranks with the query rank P and the group rank G folded into rows R."""
    out = []
    for r in ranks:
        if r == "G":
            continue
        out.append("R" if r == "P" else r)
    return tuple(out)


def _fa2(m: Mapping, f: CascadeFacts, grouped: bool = False) -> LoopNest:
    tensors = _tensor_roles(f)
    if _packs(m, f, grouped):
        # rows of a program are (query, query head) pairs, GROUP consecutive heads of one
        # K/V head: a program covers block_q / G queries of all G heads and reads each K/V
        # tile once for all of them
        rows = {t: _row_ranks(f.ranks[t]) for t in f.q_inputs + f.outputs}
        for t, rk in rows.items():
            tensors[t] = (rk, tensors[t][1])
        ti = {"R": "i"}
        inner = tuple(Load(t, _tile_dims(f.ranks[t], {"M": "j"}), streamed=True)
                      for t in f.kv_inputs)
        inner += (Alloc("S", (Dim("R", "i"), Dim("M", "j"))),)
        body = tuple(Load(t, _tile_dims(rows[t], ti)) for t in f.q_inputs)
        body += tuple(Alloc(f"{o}_acc", _tile_dims(rows[o], ti)) for o in f.outputs)
        body += _stats(f, "i", rank="R")
        body += (Loop("j", "M", "block_kv", inner, causal_with="i", label="key/value tiles"),)
        body += tuple(Store(o, _tile_dims(rows[o], ti)) for o in f.outputs)
        if m.write_lse and f.softmax:
            body += (Store("LSE", (Dim("R", "i"),)),)
            tensors["LSE"] = (("R",), "stat")
        nest = (Loop("i", "R", "block_q", body, grid=True,
                     label="row tiles: (query, query head) pairs of the group, one program "
                           "each"),)
        return LoopNest(m, f.name, (Phase("forward", nest),), tensors,
                        causal_offset_default=_offset_kind(f), rows="R")
    ti = {"P": "i", **_gv(grouped)}
    tij = {"P": "i", "M": "j", **_gv(grouped)}
    inner = tuple(Load(t, _tile_dims(f.ranks[t], tij), streamed=True)
                  for t in f.kv_inputs + f.pm_inputs)
    inner += (Alloc("S", (Dim("P", "i"), Dim("M", "j"))),)
    body = tuple(Load(t, _tile_dims(f.ranks[t], ti)) for t in f.q_inputs)
    body += _acc_tiles(f, ti) + _stats(f, "i")
    body += (Loop("j", "M", "block_kv", inner, causal_with="i", label="key/value tiles"),)
    body += _out_tiles(f, ti)
    if m.write_lse and f.softmax:
        body += (Store("LSE", (Dim("P", "i"),)),)
        tensors["LSE"] = (("P",), "stat")
    nest = (Loop("i", "P", "block_q", body, grid=True, label="query tiles (one program each)"),)
    return LoopNest(m, f.name, (Phase("forward", _group_wrap(f, nest, grouped)),), tensors,
                    causal_offset_default=_offset_kind(f))


def _fa1(m: Mapping, f: CascadeFacts, grouped: bool = False) -> LoopNest:
    ti = {"P": "i", **_gv(grouped)}
    tij = {"P": "i", "M": "j", **_gv(grouped)}
    stat_names = ("m", "l") if f.softmax else ()
    stats = stat_names[: f.n_state] if f.softmax else ()
    tensors = _tensor_roles(f)
    for s in stats:
        tensors[s] = (("P",), "stat")
    phases = []
    if m.init_writes:
        init = tuple(Store(o, _tile_dims(f.ranks[o], ti)) for o in f.outputs)
        init += tuple(Store(s, (Dim("P", "i"),)) for s in stats)
        phases.append(Phase("init O, l, m in HBM",
                            _group_wrap(f, (Loop("i", "P", "block_q", init, grid=True,
                                                 label="query tiles"),), grouped)))
    inner = tuple(Load(t, _tile_dims(f.ranks[t], ti)) for t in f.q_inputs)
    inner += tuple(Load(o, _tile_dims(f.ranks[o], ti)) for o in f.outputs)
    inner += tuple(Load(s, (Dim("P", "i"),)) for s in stats)
    inner += tuple(Load(t, _tile_dims(f.ranks[t], tij)) for t in f.pm_inputs)
    inner += (Alloc("S", (Dim("P", "i"), Dim("M", "j"))),)
    inner += tuple(Alloc(f"{s}~", (Dim("P", "i"),)) for s in stats)
    inner += tuple(Store(o, _tile_dims(f.ranks[o], ti)) for o in f.outputs)
    inner += tuple(Store(s, (Dim("P", "i"),)) for s in stats)
    outer = tuple(Load(t, _tile_dims(f.ranks[t], {"M": "j"})) for t in f.kv_inputs)
    outer += (Loop("i", "P", "block_q", inner, causal_with="j", label="query tiles"),)
    nest = (Loop("j", "M", "block_kv", outer, label="key/value tiles"),)
    phases.append(Phase("forward", _group_wrap(f, nest, grouped)))
    return LoopNest(m, f.name, tuple(phases), tensors, causal_offset_default=_offset_kind(f))


def _unfused(m: Mapping, f: CascadeFacts, grouped: bool = False) -> LoopNest:
    ti = {"P": "i", **_gv(grouped)}
    tensors = _tensor_roles(f)
    tensors["S"] = (("P", "M"), "data")
    tensors["P~"] = (("P", "M"), "data")
    k_in, v_in = f.key_inputs, f.value_inputs
    s_dims = (Dim("P", "i"), Dim("M", "j"))
    k1 = tuple(Load(t, _tile_dims(f.ranks[t], ti)) for t in f.q_inputs)
    k1 += (Loop("j", "M", "block_kv",
                tuple(Load(t, _tile_dims(f.ranks[t], {"M": "j"}), streamed=True) for t in k_in)
                + (Alloc("S", s_dims), Store("S", s_dims)), label="key tiles"),)
    ph1 = Phase("S = Q K^T", _group_wrap(f, (Loop("i", "P", "block_q", k1, grid=True,
                                                  label="query tiles"),), grouped))
    row = (Dim("P", "r"), Dim("M"))
    k2 = (Load("S", row),) + tuple(Load(t, _tile_dims(f.ranks[t], {"P": "r"}))
                                   for t in f.pm_inputs)
    k2 += _stats(f, "r") + (Store("P~", row),)
    ph2 = Phase("P = softmax(S)" if f.softmax else "P = map(S)",
                _group_wrap(f, (Loop("r", "P", "block_rows", k2, grid=True,
                                     label="query rows"),), grouped))
    k3 = _acc_tiles(f, ti)
    k3 += (Loop("j", "M", "block_kv",
                (Load("P~", s_dims, streamed=True),)
                + tuple(Load(t, _tile_dims(f.ranks[t], {"M": "j"}), streamed=True) for t in v_in),
                label="key/value tiles"),)
    k3 += _out_tiles(f, ti)
    ph3 = Phase("O = P V", _group_wrap(f, (Loop("i", "P", "block_q", k3, grid=True,
                                                label="query tiles"),), grouped))
    return LoopNest(m, f.name, (ph1, ph2, ph3), tensors, skips_causal=False,
                    causal_offset_default=_offset_kind(f))


def _fused3(m: Mapping, f: CascadeFacts, grouped: bool = False) -> LoopNest:
    ti = {"P": "i", **_gv(grouped)}
    tensors = _tensor_roles(f)
    k_in, v_in = f.key_inputs, f.value_inputs
    pol = m.row_policy
    sd = lambda v: (Dim("P", "i"), Dim("M", v))  # noqa: E731
    spill = f.spilled[0] if f.spilled else "S"

    def kv(ts, v):
        return tuple(Load(t, _tile_dims(f.ranks[t], {"P": "i", "M": v, **_gv(grouped)}),
                          streamed=True) for t in ts)

    body = tuple(Load(t, _tile_dims(f.ranks[t], ti)) for t in f.q_inputs)
    body += _acc_tiles(f, ti) + (Alloc("GM", (Dim("P", "i"),)), Alloc("SD", (Dim("P", "i"),)))
    recompute = {}
    pm = f.pm_inputs
    if pol in ("buffer", "auto"):
        body += (Alloc("S_row", (Dim("P", "i"), Dim("M")), role="tile"),)
        body += (Loop("j", "M", "block_kv", kv(k_in + pm, "j"), causal_with="i",
                      label="pass 1: scores and max (row kept on chip)"),)
        body += (Loop("k", "M", "block_kv", kv(v_in, "k"), causal_with="i",
                      label="pass 3: normalise, times V (pass 2 runs on chip)"),)
    elif pol == "spill":
        tensors[spill] = (("P", "M"), "data")
        body += (Loop("j", "M", "block_kv",
                      kv(k_in + pm, "j") + (Alloc("S", sd("j")), Store(spill, sd("j"))),
                      causal_with="i", label="pass 1: scores spilled, max"),)
        body += (Loop("j2", "M", "block_kv", (Load(spill, sd("j2"), streamed=True),),
                      causal_with="i", label="pass 2: exp and sum"),)
        body += (Loop("k", "M", "block_kv",
                      (Load(spill, sd("k"), streamed=True),) + kv(v_in, "k"),
                      causal_with="i", label="pass 3: normalise, times V"),)
    else:  # recompute
        body += (Loop("j", "M", "block_kv", kv(k_in + pm, "j") + (Alloc("S", sd("j")),),
                      causal_with="i", label="pass 1: scores, max"),)
        body += (Loop("j2", "M", "block_kv", kv(k_in + pm, "j2") + (Alloc("S", sd("j2")),),
                      causal_with="i", label="pass 2: recompute scores, exp, sum"),)
        body += (Loop("k", "M", "block_kv", kv(k_in + pm, "k") + kv(v_in, "k")
                      + (Alloc("S", sd("k")),),
                      causal_with="i", label="pass 3: recompute, normalise, times V"),)
        recompute = dict(f.recompute)
    body += _out_tiles(f, ti)
    nest = (Loop("i", "P", "block_q", body, grid=True, label="query tiles (one program each)"),)
    return LoopNest(m, f.name, (Phase("fused 3-pass", _group_wrap(f, nest, grouped)),), tensors,
                    recompute=recompute, causal_offset_default=_offset_kind(f))


def _fused2(m: Mapping, f: CascadeFacts, grouped: bool = False) -> LoopNest:
    ti = {"P": "i", **_gv(grouped)}
    tensors = _tensor_roles(f)
    kvl = lambda v: tuple(  # noqa: E731
        Load(t, _tile_dims(f.ranks[t], {"P": "i", "M": v, **_gv(grouped)}), streamed=True)
        for t in f.kv_inputs + f.pm_inputs)
    body = tuple(Load(t, _tile_dims(f.ranks[t], ti)) for t in f.q_inputs)
    part = lambda v, F=False: (Dim("P", "i"), Dim("Mt", v)) + ((Dim("F"),) if F else ())  # noqa: E731
    parts = f.partials
    if m.row_policy in ("buffer", "auto"):
        body += tuple(Alloc(t, part(None, F), role="tile") for t, F in parts)
        body += (Loop("j", "M", "block_kv", kvl("j") + (Alloc("S", (Dim("P", "i"), Dim("M", "j"))),),
                      causal_with="i", label="pass 1: per-block partials (kept on chip)"),)
        body += _acc_tiles(f, ti)
    else:
        for t, F in parts:
            tensors[t] = (("P", "Mt") + (("F",) if F else ()), "stat" if not F else "data")
        body += (Loop("j", "M", "block_kv",
                      kvl("j") + (Alloc("S", (Dim("P", "i"), Dim("M", "j"))),)
                      + tuple(Store(t, part("j", F)) for t, F in parts),
                      causal_with="i", label="pass 1: per-block partials spilled"),)
        body += _acc_tiles(f, ti) + (Alloc("GM", (Dim("P", "i"),)), Alloc("SD", (Dim("P", "i"),)))
        body += (Loop("j2", "M", "block_kv",
                      tuple(Load(t, part("j2", F), streamed=True) for t, F in parts),
                      causal_with="i", label="pass 2: combine partials"),)
    body += _out_tiles(f, ti)
    nest = (Loop("i", "P", "block_q", body, grid=True, label="query tiles (one program each)"),)
    return LoopNest(m, f.name, (Phase("fused 2-pass", _group_wrap(f, nest, grouped)),), tensors,
                    causal_offset_default=_offset_kind(f))


def _decode(m: Mapping, f: CascadeFacts, grouped: bool = False) -> LoopNest:
    """Split-K: a program per (split, row tile) writes a partial output and its log-sum-exp
    (for a softmax; the partial sums for a plain sum over the keys), in the stat dtype (fp32
    by default, as the generated kernel keeps them); a combining kernel reads them per row
    tile. Grouped query heads are packed into the rows of a program when the mapping packs
    them (rows are then (query, query head) pairs of one K/V head, so every split reads its
    K/V chunk once for the whole group), else one program per query head of the group."""
    packed = _packs(m, f, grouped)
    r = "R" if packed else "P"
    ti = {"R": "i"} if packed else {"P": "i", **_gv(grouped)}
    tensors = _tensor_roles(f)
    ranks = dict(f.ranks)
    if packed:
        for t in f.q_inputs + f.outputs:
            ranks[t] = _row_ranks(f.ranks[t])
            tensors[t] = (ranks[t], tensors[t][1])
    tensors["PO"] = (("S", r, "F"), "stat")
    parts = [("PO", (Dim("S", "s"), Dim(r, "i"), Dim("F")))]
    if f.softmax:
        tensors["LSE"] = (("S", r), "stat")
        parts.append(("LSE", (Dim("S", "s"), Dim(r, "i"))))
    inner = tuple(Load(t, _tile_dims(f.ranks[t], {"P": "i", "M": "j", **_gv(grouped)}),
                       streamed=True) for t in f.kv_inputs + f.pm_inputs)
    inner += (Alloc("S", (Dim(r, "i"), Dim("M", "j"))),)
    acc = tuple(Alloc(f"{o}_acc", _tile_dims(ranks[o], ti)) for o in f.outputs)
    body = tuple(Load(t, _tile_dims(ranks[t], ti)) for t in f.q_inputs)
    body += acc + _stats(f, "i", rank=r)
    body += (Loop("j", "M", "block_kv", inner, causal_with="i", within="s",
                  label="key/value tiles of this split"),)
    body += tuple(Store(t, d) for t, d in parts)
    tiles = ("row tiles: (query, query head) pairs of the group" if packed
             else "query tiles")
    wrap = (lambda nodes: nodes) if packed else (lambda nodes: _group_wrap(f, nodes, grouped))
    ph1 = Phase("partials per split", wrap((
        SplitLoop("s", (Loop("i", r, "block_q", body, grid=True, label=tiles),),
                  label="splits of the keys (one program each)"),)))
    comb = acc + _stats(f, "i", rank=r)
    comb += (SplitLoop("s", tuple(Load(t, d, streamed=True) for t, d in parts),
                       grid=False, label="splits"),)
    comb += tuple(Store(o, _tile_dims(ranks[o], ti)) for o in f.outputs)
    ph2 = Phase("combine", wrap((Loop("i", r, "block_q", comb, grid=True,
                                      label="row tiles" if packed else "query tiles"),)))
    return LoopNest(m, f.name, (ph1, ph2), tensors, causal_offset_default=_offset_kind(f),
                    rows=r)


def _linear(m: Mapping, f: CascadeFacts, grouped: bool = False) -> LoopNest:
    ti = {"P": "i", **_gv(grouped)}
    tensors = _tensor_roles(f)
    for t, rk in f.states:
        tensors[t] = (rk, "data")
    whole = lambda rk: tuple(Dim(r) for r in rk)  # noqa: E731
    st = tuple(Alloc(t, whole(rk)) for t, rk in f.states)
    split = m.split_kv > 1
    st += (Loop("j", "M", "block_kv",
                tuple(Load(t, _tile_dims(f.ranks[t], {"M": "j"}), streamed=True)
                      for t in f.kv_inputs), within="s" if split else None,
                label="key/value tiles" + (" of this split" if split else "")),)
    st += tuple(Store(t, whole(rk)) for t, rk in f.states)
    names = ", ".join(t for t, _ in f.states)
    if split:   # the keys split over programs, each adding its partial state (atomically)
        st = (SplitLoop("s", st, label="splits of the keys (one program each; partial "
                                       "states added)"),)
    ph1 = Phase(f"state {names} from the keys and values", st)
    body = tuple(Load(t, whole(rk)) for t, rk in f.states)
    body += tuple(Load(t, _tile_dims(f.ranks[t], ti)) for t in f.q_inputs)
    body += _out_tiles(f, ti)
    ph2 = Phase(f"O from the queries and {names}", _group_wrap(f, (
        Loop("i", "P", "block_q", body, grid=True, label="query tiles"),), grouped))
    return LoopNest(m, f.name, (ph1, ph2), tensors, skips_causal=False)


def _lightning(m: Mapping, f: CascadeFacts, grouped: bool = False) -> LoopNest:
    tensors = _tensor_roles(f)
    tt = {"P": "t", "M": "t", **_gv(grouped)}
    body = tuple(Load(t, _tile_dims(f.ranks[t], tt)) for t in f.q_inputs + f.kv_inputs)
    body += (Alloc("S", (Dim("P", "t"), Dim("M", "t"))),) + _acc_tiles(f, tt)
    body += _out_tiles(f, tt)
    nest = tuple(Alloc(t, tuple(Dim(r) for r in rk)) for t, rk in f.states)
    nest += (Loop("t", "P", "block_q", body, label="blocks of the sequence (in order)"),)
    return LoopNest(m, f.name, (Phase("forward", _group_wrap(f, nest, grouped)),), tensors,
                    skips_causal=False)


def _saha_ye(m: Mapping, f: CascadeFacts, grouped: bool = False) -> LoopNest:
    q, (k, v) = f.q_inputs[0], (f.key_inputs[0], f.value_inputs[0])
    tensors = _tensor_roles(f)
    tensors["A"] = (("P", "M"), "data")
    tensors["D"] = (("P",), "stat")
    o = f.outputs[0]
    p1_inner = (Load(q, (Dim("P", "i"), Dim("E", "l"))), Load(k, (Dim("M", "j"), Dim("E", "l"))))
    p1_j = (Alloc("A_tile", (Dim("P", "i"), Dim("M", "j"))),
            Loop("l", "E", "block_e", p1_inner, label="head-dim tiles"),
            Store("A", (Dim("P", "i"), Dim("M", "j"))))
    p1 = (Alloc("D_acc", (Dim("P", "i"),)),
          Loop("j", "M", "block_kv", p1_j, causal_with="i", label="key tiles"),
          Store("D", (Dim("P", "i"),)))
    ph1 = Phase("phase 1: A = exp(QK^T) and D = rowsum(A) to HBM", _group_wrap(f, (
        Loop("i", "P", "block_q", p1, grid=True, label="query tiles"),), grouped))
    p2_k = (Load("A", (Dim("P", "i"), Dim("M", "k")), streamed=True),
            Load(v, (Dim("M", "k"), Dim("F", "c")), streamed=True))
    p2_c = (Alloc(f"{o}_acc", (Dim("P", "i"), Dim("F", "c"))),
            Loop("k", "M", "block_kv", p2_k, causal_with="i", label="key tiles"),
            Store(o, (Dim("P", "i"), Dim("F", "c"))))
    p2 = (Load("D", (Dim("P", "i"),)), Loop("c", "F", "block_f", p2_c, label="output-column tiles"))
    ph2 = Phase("phase 2: O = D^-1 A V", _group_wrap(f, (
        Loop("i", "P", "block_q", p2, grid=True, label="query tiles"),), grouped))
    return LoopNest(m, f.name, (ph1, ph2), tensors, causal_offset_default=_offset_kind(f))


def _offset_kind(f: CascadeFacts) -> str:
    """The causal diagonal of the cascade's own mask: ``"end"`` when it is aligned to the
    end of the keys (``m > p + M - P``, decode), else ``"zero"`` (``m > p``)."""
    return "end" if f.end_aligned_causal else "zero"


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


def _chunk_dims(ranks, key_var: str | None) -> tuple:
    """Dims of a tensor in a chunked nest: ``P`` by the chunk loop ``c``, ``M`` (and a key-tile
    coordinate ``Mt``) by the key loop, every other rank whole."""
    out = []
    for r in ranks:
        if r == "P":
            out.append(Dim("P", "c"))
        elif r in ("M", "Mt") and key_var is not None:
            out.append(Dim(r, key_var))
        else:
            out.append(Dim(r))
    return tuple(out)


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
    tensors = {t: (tuple(r), "data") for t, r in ranks.items()}
    m = Mapping(name=name, cascade=cascade, kind="chunked", loop_order=("B", "H", "P", "M"),
                block_q=int(block_q), block_kv=int(block_kv), fused=True,
                notes=label or "chunks of query rows; key tiles streamed per chunk and pass")
    body = tuple(Load(t, _chunk_dims(ranks[t], None)) for t in chunk_loads)
    body += tuple(Alloc(t, _chunk_dims(ranks[t], None), role="tile") for t in keep)
    for k, ps in enumerate(passes, start=1):
        v = f"j{k}"
        inner = tuple(Load(t, _chunk_dims(ranks[t], v), streamed=True) for t in ps.loads)
        inner += tuple(Store(t, _chunk_dims(ranks[t], v)) for t in ps.stores)
        inner += tuple(PartialStore(t, _chunk_dims(ranks[t], v)) for t in ps.spill_stores)
        inner += tuple(PartialLoad(t, _chunk_dims(ranks[t], v), streamed=True)
                       for t in ps.spill_loads)
        body += (Loop(v, "M", "block_kv", inner,
                      label=ps.label or f"pass {k}: key tiles"),)
    body += tuple(Store(t, _chunk_dims(ranks[t], None)) for t in chunk_stores)
    nest = tuple(Load(t, _chunk_dims(ranks[t], None)) for t in once_loads)
    nest += (Loop("c", "P", "block_q", body, label="chunks of query rows"),)
    nest += tuple(Store(t, _chunk_dims(ranks[t], None)) for t in once_stores)
    return LoopNest(m, cascade, (Phase(label or "chunked", nest),), tensors, skips_causal=False)


def _chunked(m: Mapping, f: CascadeFacts, grouped: bool = False) -> LoopNest:
    """The registry form of ``chunked``: every intermediate on chip, so one pass streams the
    key/value inputs per chunk (what FuseMax does with the 1-pass cascade)."""
    ranks = {t: tuple("M" if r == "M" else "Mt" if r == "Mt" else r for r in rk)
             for t, rk in f.ranks.items()}
    nest = chunked_nest(m.name, f.name, ranks, chunk_loads=f.q_inputs,
                        passes=(ChunkPass(loads=f.kv_inputs + f.pm_inputs,
                                          label="key/value tiles"),),
                        chunk_stores=f.outputs, block_q=m.block_q, block_kv=m.block_kv)
    return replace(nest, mapping=m)


_BUILDERS = {"fa2": _fa2, "fa1": _fa1, "unfused": _unfused, "fused-3pass": _fused3,
             "fused-2pass": _fused2, "decode-splitk": _decode, "linear": _linear,
             "lightning2": _lightning, "saha-ye": _saha_ye, "chunked": _chunked}

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
    if kind in ("fused-2pass", "fused-3pass", "saha-ye") and not f.softmax:
        return (f"mapping {kind} needs a softmax cascade (a max reduction over the key rank); "
                f"{name} has none")
    fam = f.family
    if kind in ("linear", "lightning2") and f.pm_inputs:
        return (f"mapping {kind} reads no input over (query, key) pairs; {name} has "
                f"{', '.join(f.pm_inputs)}")
    if kind == "linear":
        if fam != "linear":
            return (f"mapping linear needs linear attention (the keys reduced into a state "
                    f"without a query-key score); {name} makes {_family_text(f)}")
        return None
    if kind == "lightning2":
        if fam != "recurrent":
            return (f"mapping lightning2 needs a recurrence over blocks of the queries (a "
                    f"running state over a partition of P); {name} makes {_family_text(f)}")
        return None
    if not f.has_score:
        return (f"mapping {kind} needs a query-key score (a tensor over queries and keys); "
                f"{name} makes {_family_text(f)}")
    if kind in ("fa2", "chunked"):
        if fam == "multi-pass":
            return (f"mapping {kind} makes one pass over the keys; {name} needs {f.key_passes} "
                    f"(its global maximum is complete only after a whole pass): use "
                    f"fused-3pass, unfused or saha-ye")
        return None
    if kind == "fa1":
        if fam not in ("online", "single"):
            return (f"mapping fa1 updates O (and l, m) in HBM over one pass of key blocks; "
                    f"{name} makes {_family_text(f)}")
        return None
    if kind == "unfused":
        return None
    if kind == "fused-3pass":
        if fam != "multi-pass":
            return (f"mapping fused-3pass needs a multi-pass softmax cascade (a global maximum "
                    f"over the whole key row, read again in later passes); {name} makes "
                    f"{_family_text(f)}")
        return None
    if kind == "fused-2pass":
        if fam != "partials" or not f.partials:
            return (f"mapping fused-2pass needs a 2-pass cascade with per-key-block partials "
                    f"(a partitioned key rank combined over its blocks); {name} makes "
                    f"{_family_text(f)}")
        return None
    if kind == "decode-splitk":
        if fam == "multi-pass":
            return (f"mapping decode-splitk makes one pass over each split of the keys; {name} "
                    f"needs {f.key_passes}")
        if not f.softmax and set(f.key_sums) - set(f.outputs):
            return (f"mapping decode-splitk combines split partials of a softmax or of a plain "
                    f"sum over the keys into the output; {name} also sums "
                    f"{', '.join(sorted(set(f.key_sums) - set(f.outputs)))} over the keys")
        return None
    if kind == "saha-ye":
        if fam not in ("online", "multi-pass"):
            return (f"mapping saha-ye needs a softmax over whole key rows (a running or global "
                    f"maximum); {name} makes {_family_text(f)}")
        want = {"P", "E"}
        extra = [t for t in f.ranks if t not in f.q_inputs + f.kv_inputs + f.outputs]
        extra += list(f.pm_inputs)
        if (len(f.q_inputs) != 1 or len(f.key_inputs) != 1 or len(f.value_inputs) != 1
                or extra):
            return (f"mapping saha-ye reads exactly Q[P, E], K[M, E], V[M, F] and writes "
                    f"O[P, F]; {name} has inputs {', '.join(f.q_inputs + f.kv_inputs + f.pm_inputs)}")
        if f.has_group or set(f.ranks[f.q_inputs[0]]) != want or len(f.outputs) != 1:
            return (f"mapping saha-ye reads exactly Q[P, E], K[M, E], V[M, F] and writes "
                    f"O[P, F]; {name} has Q[{', '.join(f.ranks[f.q_inputs[0]])}]")
        return None
    return None  # pragma: no cover


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
    nest = _BUILDERS[mapping.kind](mapping, facts, bool(grouped))
    region = facts.mask
    if region is not None and region.kind == "block":
        nest = _sparse_key_loops(nest)
    return nest


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
    for k, v in overrides.items():
        if v is None and k in ("block_q", "block_kv") and spec["kind"] not in ("fa1", "saha-ye"):
            continue
        spec[k] = v
    bad = [k for k in spec if k not in Mapping.__dataclass_fields__]
    if bad:
        raise IosimError(f"mapping '{key}': unknown field '{bad[0]}'"
                         f"{_suggest(bad[0], Mapping.__dataclass_fields__)}")
    if spec["kind"] == "saha-ye":
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
    if kind in ("fa2", "chunked") and f.family == "online":
        return ("block_kv", "block_q")
    if kind == "fused-2pass" and f.family == "partials":
        return ("block_kv", "block_q")
    if kind == "lightning2" and f.family == "recurrent":
        return ("block_q",)
    return ()


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
            hint = _reduce_hint(mapping)
            raise IosimError(f"tiles need {_fmt_bytes(info['need'])} of {lvl} but "
                             f"{_fmt_bytes(info['capacity'])} fit: {hint}")
    return {lvl: info["need"] for lvl, info in fp.items()}


def _reduce_hint(m: Mapping) -> str:
    if m.kind == "saha-ye":
        return "reduce the square block (block_q = block_kv)"
    if m.kind in ("fused-3pass", "fused-2pass") and m.row_policy in ("buffer", "auto"):
        return "reduce block_q or block_kv, or use row_policy 'spill'"
    if m.kind == "unfused":
        return "reduce block_q, block_kv or softmax_rows"
    if m.kind == "linear":
        return "reduce block_q or block_kv (the E x F state must fit)"
    return "reduce block_q or block_kv"


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
