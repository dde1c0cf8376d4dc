"""The tiling a generated kernel is compiled with (the kernel-side view of a Mapping).

``cascades`` knows nothing of ``iosim``: :class:`iosim.mapping.Mapping` is converted into this
small dataclass by :mod:`iosim.gpu` (``Tiling.from_mapping`` reads the same attribute names).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from cascades.triton.analyze import CodegenError

GRID_ORDERS = ("query-major", "head-major")
#: L2 eviction hints a load or store may carry ('' = none)
EVICTION_POLICIES = ("", "evict_first", "evict_last")
DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
DTYPE_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4}
_DTYPE_ALIASES = {"float16": "fp16", "half": "fp16", "bfloat16": "bf16", "float32": "fp32",
                  "float": "fp32"}
#: shared memory one thread block may allocate on an H100 (227 KiB, opt-in)
SMEM_LIMIT = 227 * 1024


def _pow2(x: int) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x > 0 and (x & (x - 1)) == 0


@dataclass(frozen=True)
class Tiling:
    """Tile sizes and launch knobs: ``block_m`` tiles the queries P (Triton's BLOCK_M, the
    Mapping's ``block_q``), ``block_n`` tiles the keys M (BLOCK_N, ``block_kv``)."""
    block_m: int = 128
    block_n: int = 64
    num_warps: int = 8
    num_stages: int = 3
    grid_order: str = "query-major"
    head_dim: int = 128
    dtype: str = "bf16"
    split_kv: int = 4            # number of key chunks of a split-K (partials) cascade
    smem_limit: int = SMEM_LIMIT
    #: exp2 of the scores in the 16-bit input type, two per instruction (bf16/fp16 only;
    #: P is rounded to that type for the P @ V product anyway)
    fast_exp: bool = False
    #: software-pipeline the score product one key block ahead (deferred online softmax)
    pipeline: bool = False
    #: rescale the accumulator only when a row maximum grew by more than 2**8 (deferred
    #: online softmax; exact: the accumulator and the row sums keep a common base)
    lazy_rescale: bool = False
    #: instrumentation (GPU only, single-pass kernels): each thread block writes its start and
    #: end time (%globaltimer), SM id and key range to ``forward(..., trace=int64 tensor)``
    trace: bool = False
    #: with ``trace``: also the time each thread block reaches every ``trace_every``-th key
    #: block (absolute key position, so the blocks of one head are compared at the same keys);
    #: 0 = start and end only. Plain key loop only (no pipeline, tma or warp_specialize)
    trace_every: int = 0
    #: read K and V through tensor descriptors (TMA on Hopper; single-pass kernels)
    tma: bool = False
    #: warp-specialise the unmasked key-block loop (tl.range(..., warp_specialize=True));
    #: implies tma
    warp_specialize: bool = False
    #: L2 eviction hint on the K and V loads ('' = none, 'evict_first', 'evict_last'; Triton's
    #: ``eviction_policy``, PTX ``L2::evict_*``); single-pass kernels without tma
    kv_eviction: str = ""
    #: the same on the Q load
    q_eviction: str = ""
    #: the same on the O store
    o_eviction: str = ""
    #: single-pass softmax kernels: ``forward(..., lse=, offset=)`` also writes each row's
    #: log-sum-exp (natural log, fp32 ``[B, Hq, P]``) where ``lse`` is given, and takes the
    #: causal diagonal's ``offset`` (key b visible to query a where b <= a + offset; a row
    #: that sees no key gets O = 0, LSE = -inf): the per-device kernel of a key split
    lse: bool = False

    def __post_init__(self) -> None:
        dt = _DTYPE_ALIASES.get(self.dtype, self.dtype)
        object.__setattr__(self, "dtype", dt)
        if dt not in DTYPES:
            raise CodegenError(f"dtype '{self.dtype}' is not supported (expected one of "
                               f"{', '.join(DTYPES)})")
        for k, lo, hi in (("block_m", 16, 256), ("block_n", 16, 256)):
            v = getattr(self, k)
            if not _pow2(v) or not lo <= v <= hi:
                raise CodegenError(f"{k} must be a power of two in [{lo}, {hi}], got {v!r}")
        if not _pow2(self.head_dim) or not 16 <= self.head_dim <= 256:
            raise CodegenError(f"head dim {self.head_dim!r} is not supported (expected a power "
                               f"of two from 16 to 256, e.g. 64 or 128)")
        if self.num_warps not in (1, 2, 4, 8, 16):
            raise CodegenError(f"num_warps must be 1, 2, 4, 8 or 16, got {self.num_warps!r}")
        if not isinstance(self.num_stages, int) or not 1 <= self.num_stages <= 8:
            raise CodegenError(f"num_stages must be an integer from 1 to 8, got "
                               f"{self.num_stages!r}")
        if self.grid_order not in GRID_ORDERS:
            raise CodegenError(f"grid order '{self.grid_order}' is not one of "
                               f"{', '.join(GRID_ORDERS)}")
        for k in ("fast_exp", "pipeline", "lazy_rescale", "trace", "tma", "warp_specialize",
                  "lse"):
            if not isinstance(getattr(self, k), bool):
                raise CodegenError(f"{k} must be true or false, got {getattr(self, k)!r}")
        if (not isinstance(self.trace_every, int) or isinstance(self.trace_every, bool)
                or self.trace_every < 0):
            raise CodegenError(f"trace_every must be a non-negative integer (key blocks between "
                               f"marks), got {self.trace_every!r}")
        if self.trace_every and not self.trace:
            raise CodegenError("trace_every needs trace=True")
        if self.trace_every and (self.pipeline or self.tma or self.warp_specialize):
            raise CodegenError("trace_every marks the plain key loop: it cannot be combined with "
                               "pipeline, tma or warp_specialize")
        if self.warp_specialize and self.num_warps < 8:
            raise CodegenError("warp_specialize needs num_warps=8 or more (with 4, Triton 3.6's "
                               "warp-specialisation pass fails on Hopper)")
        hints = {k: getattr(self, k) for k in ("kv_eviction", "q_eviction", "o_eviction")}
        for k, v in hints.items():
            if v not in EVICTION_POLICIES:
                raise CodegenError(f"{k} must be one of "
                                   f"{', '.join(repr(x) for x in EVICTION_POLICIES)}, got {v!r}")
        if any(hints.values()) and (self.tma or self.warp_specialize):
            raise CodegenError("kv_eviction, q_eviction and o_eviction hint tl.load and tl.store: "
                               "they cannot be combined with tma or warp_specialize "
                               "(tensor-descriptor loads)")
        if not isinstance(self.split_kv, int) or self.split_kv < 1:
            raise CodegenError(f"split_kv must be a positive integer, got {self.split_kv!r}")
        need = self.smem_bytes()
        if need > self.smem_limit:
            raise CodegenError(
                f"tiling needs about {need / 1024:.0f} KiB of shared memory (Q tile "
                f"{self.block_m}x{self.head_dim} plus {self.num_stages} stage(s) of K and V "
                f"tiles {self.block_n}x{self.head_dim}), more than the {self.smem_limit // 1024} "
                f"KiB a thread block may use; lower block_m, block_n or num_stages")

    def smem_bytes(self) -> int:
        """Estimated shared memory: the Q tile plus ``num_stages`` K and V tiles (one more K
        tile when the score product is software-pipelined)."""
        b = DTYPE_BYTES[self.dtype]
        kv = self.num_stages * self.block_n * 2 * self.head_dim
        if self.pipeline:
            kv += self.block_n * self.head_dim
        return b * (self.block_m * self.head_dim + kv)

    @classmethod
    def from_mapping(cls, mapping, *, head_dim: int = 128, dtype: str = "bf16") -> "Tiling":
        """Build from any object with the Mapping's attribute names (``block_q``, ...)."""
        return cls(block_m=mapping.block_q, block_n=mapping.block_kv,
                   num_warps=mapping.num_warps, num_stages=mapping.num_stages,
                   grid_order=mapping.grid_order, head_dim=head_dim, dtype=dtype,
                   split_kv=getattr(mapping, "split_kv", 1) or 1)

    def to_dict(self) -> dict:
        return asdict(self)
