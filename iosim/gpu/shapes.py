"""Workload shapes for GPU validation: ``BxHxNxD`` strings, the default grid of the issue."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from iosim.errors import IosimError


@dataclass(frozen=True)
class Shape:
    """One attention forward problem: batch, heads, sequence length (P = M = N), head dim."""
    batch: int
    heads: int
    seq: int
    head_dim: int
    causal: bool = False

    @property
    def flops(self) -> float:
        """4·B·H·N²·d, halved when causal (the convention of the reference tables)."""
        f = 4.0 * self.batch * self.heads * self.seq ** 2 * self.head_dim
        return f / 2 if self.causal else f

    def qkv_bytes(self, elem: int = 2) -> int:
        return 3 * self.batch * self.heads * self.seq * self.head_dim * elem

    def label(self) -> str:
        return (f"{self.batch}x{self.heads}x{self.seq}x{self.head_dim}"
                f"{'-causal' if self.causal else ''}")

    def to_dict(self) -> dict:
        return asdict(self)


#: batch, heads, N from the reference table of the lent H100 (B·H·N kept roughly constant)
BASE = ((8, 16, 1024), (4, 16, 4096), (1, 16, 16384), (1, 8, 65536))


def default_shapes(head_dims=(64, 128), causal=(False, True)) -> list[Shape]:
    return [Shape(b, h, n, d, c) for d in head_dims for (b, h, n) in BASE for c in causal]


def parse_shapes(text: str) -> list[Shape]:
    """``"4x16x4096x128,1x8x65536x64-causal"``: B x H x N x D, '-causal' for a causal mask;
    a shape without the suffix is run both ways when ``both`` is wanted by the caller."""
    out = []
    for tok in text.replace(";", ",").replace(" ", ",").split(","):
        tok = tok.strip()
        if not tok:
            continue
        causal = tok.endswith("-causal")
        core = tok[: -len("-causal")] if causal else tok
        parts = core.lower().split("x")
        try:
            b, h, n, d = (int(p) for p in parts)
        except ValueError:
            raise IosimError(f"bad shape '{tok}': expected BxHxNxD such as 4x16x4096x128, "
                             f"optionally with '-causal'") from None
        if min(b, h, n, d) < 1:
            raise IosimError(f"bad shape '{tok}': every extent must be positive")
        out.append(Shape(b, h, n, d, causal))
    if not out:
        raise IosimError("no shapes given (expected e.g. --shapes 4x16x4096x128)")
    return out
