"""One description of a tiling for a cascade: the Mapping.

The single most important design rule of the project: one :class:`Mapping` drives the
analytical model (:mod:`iosim.traffic`), the tile-level simulator (:mod:`iosim.trace`) and
the generated Triton kernel (:mod:`cascades.triton`, through :mod:`iosim.gpu`).

Rank names follow the cascades: ``P`` query rows, ``M`` keys/values, ``E``/``F`` the head
dimensions, ``B`` batch and ``H`` heads. Tile sizes use the kernel's vocabulary too:
``block_q`` (FlashAttention's B_r, Triton's BLOCK_M) tiles P, ``block_kv`` (B_c, Triton's
BLOCK_N) tiles M.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from iosim.errors import IosimError

GRID_ORDERS = ("query-major", "head-major")


@dataclass(frozen=True)
class Mapping:
    """A tiling of an attention cascade onto a memory hierarchy (see module docstring)."""
    name: str
    cascade: str
    loop_order: tuple[str, ...] = ("B", "H", "P", "M")   # temporal loops, outermost first
    block_q: int = 128                                  # tile of P (B_r, BLOCK_M)
    block_kv: int = 64                                  # tile of M (B_c, BLOCK_N)
    resident: tuple[tuple[str, str], ...] = ()          # (tensor, level) overrides, e.g. S in HBM
    fused: bool = True
    grid_order: str = "query-major"                     # thread-block order on a GPU
    num_warps: int = 8                                  # kernel-only knobs
    num_stages: int = 3
    split_kv: int = 1                                   # decode split-K chunks
    init_writes: bool = True                            # FA1: count O, l, m initialisation
    notes: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        for k in ("block_q", "block_kv", "num_warps", "num_stages", "split_kv"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise IosimError(f"mapping '{self.name}': {k} must be a positive integer, "
                                 f"got {v!r}")
        if self.grid_order not in GRID_ORDERS:
            raise IosimError(f"mapping '{self.name}': grid order '{self.grid_order}' is not one "
                             f"of {', '.join(GRID_ORDERS)}")

    def with_(self, **changes) -> "Mapping":
        return replace(self, **changes)

    def level_of(self, tensor: str, default: str) -> str:
        return dict(self.resident).get(tensor, default)

    def to_dict(self) -> dict:
        return {"name": self.name, "cascade": self.cascade, "loop_order": list(self.loop_order),
                "block_q": self.block_q, "block_kv": self.block_kv,
                "resident": dict(self.resident), "fused": self.fused,
                "grid_order": self.grid_order, "num_warps": self.num_warps,
                "num_stages": self.num_stages, "split_kv": self.split_kv,
                "init_writes": self.init_writes}
