"""The launches that calibrate and validate the execution-time model, chosen before the model
saw any of them (the calibration set fixes the one kernel-specific constant; the validation set
is never used to set anything). Measured on the GPU machine by::

    python experiments/device/time_launches.py calibration     # -> $OUT/gpu_time_calibration.csv
    python experiments/device/time_launches.py validation      # -> $OUT/gpu_time_validation.csv

A launch: ``(cascade, batch, heads, kv_heads, q_len, kv_len, head_dim, causal, tiling, split)``
with the tiling ``(block_m, block_n, num_warps, num_stages)``; ``kv_heads`` 0 = ``heads``,
``q_len`` 0 = ``kv_len`` (self-attention). SDPA flash and cuDNN are measured beside every
generated launch of an SDPA-expressible shape, as references.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

DEFAULT = (128, 64, 8, 3)          # the generated kernel's default tiling
DEC = (16, 64, 4, 3)               # decode: one query row per program tile of 16


@dataclass(frozen=True)
class Launch:
    cascade: str
    batch: int
    heads: int
    kv_heads: int
    q_len: int
    kv_len: int
    head_dim: int
    causal: bool
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    split_kv: int = 1
    grid_order: str = "query-major"

    @property
    def label(self) -> str:
        h = f"{self.heads}/{self.kv_heads}" if self.kv_heads and self.kv_heads != self.heads \
            else f"{self.heads}"
        q = f"{self.q_len}:" if self.q_len and self.q_len != self.kv_len else ""
        return (f"{self.cascade} {self.batch}x{h}x{q}{self.kv_len}x{self.head_dim}"
                f"{' causal' if self.causal else ''} {self.block_m}/{self.block_n}/"
                f"{self.num_warps}w/{self.num_stages}s"
                + (f" split {self.split_kv}" if self.cascade == "decode-splitk" else ""))

    def to_dict(self) -> dict:
        return asdict(self)


def _l(cascade, b, h, n, d, causal=False, tiling=DEFAULT, kv_heads=0, q_len=0, split=1):
    return Launch(cascade, b, h, kv_heads, q_len, n, d, causal, *tiling, split_kv=split)


def calibration() -> list[Launch]:
    a = "attention-1pass"
    out = []
    for t in ((128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 2), (128, 32, 4, 3)):
        out.append(_l(a, 8, 16, 4096, 128, False, t))
    for t in ((128, 64, 4, 3), (128, 128, 8, 3), (64, 64, 4, 3), (64, 128, 4, 3)):
        out.append(_l(a, 4, 16, 8192, 64, True, t))
    out += [_l(a, 1, 16, 16384, 128), _l(a, 1, 1, 8192, 128), _l(a, 1, 2, 8192, 64, True),
            _l(a, 2, 24, 2048, 128, True), _l(a, 1, 6, 4096, 64), _l(a, 4, 32, 1024, 128)]
    d = "decode-splitk"
    out += [_l(d, 1, 16, 65536, 128, q_len=1, tiling=DEC, split=2),
            _l(d, 1, 16, 65536, 128, q_len=1, tiling=DEC, split=8),
            _l(d, 8, 8, 16384, 128, q_len=1, tiling=DEC, split=1),
            _l(d, 8, 8, 16384, 128, q_len=1, tiling=DEC, split=4)]
    out += [_l("attention-3pass", 1, 16, 4096, 128), _l("attention-2pass", 1, 16, 2048, 64),
            _l("sigmoid", 1, 16, 4096, 64), _l("flash1", 1, 16, 4096, 64)]
    return out


def validation() -> list[Launch]:
    a = "attention-1pass"
    out = []
    tilings = ((128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 32, 4, 3),
               (64, 128, 4, 2), (64, 32, 4, 2))
    for shape in ((4, 16, 4096, 128, False), (2, 16, 8192, 64, True),
                  (1, 8, 16384, 128, True), (8, 16, 2048, 64, False)):
        for t in tilings:
            out.append(_l(a, *shape, tiling=t))
    # small grids (fewer programs than SMs), partial tiles
    out += [_l(a, 1, 1, 4096, 128), _l(a, 1, 2, 2048, 64), _l(a, 1, 1, 16384, 128, True),
            _l(a, 1, 4, 512, 128), _l(a, 2, 2, 3000, 64), _l(a, 1, 1, 1000, 128),
            _l(a, 1, 3, 5000, 128, True)]
    # larger grids, long sequences
    out += [_l(a, 1, 8, 65536, 64, True), _l(a, 1, 2, 131072, 128, True),
            _l(a, 3, 20, 6144, 128), _l(a, 1, 4, 8192, 128), _l(a, 2, 12, 3000, 128, True),
            _l(a, 16, 32, 512, 64), _l(a, 4, 8, 1024, 128), _l(a, 1, 16, 32768, 64)]
    # other cascades
    out += [_l("flash1", 2, 16, 4096, 128), _l("flash1", 2, 16, 4096, 128, True),
            _l("flash1", 1, 4, 2048, 64),
            _l("sigmoid", 2, 16, 4096, 128), _l("sigmoid", 1, 8, 8192, 64, True),
            _l("attention-gqa", 1, 32, 8192, 128, kv_heads=8),
            _l("attention-gqa", 1, 32, 8192, 128, True, kv_heads=8),
            _l("attention-gqa", 2, 32, 4096, 64, kv_heads=4)]
    d = "decode-splitk"
    out += [_l(d, 1, 8, 131072, 128, q_len=1, tiling=DEC, split=s) for s in (1, 2, 4, 8, 16, 32)]
    out += [_l(d, 4, 32, 32768, 128, q_len=1, tiling=DEC, split=s) for s in (1, 4, 8)]
    out += [_l(d, 1, 16, 8192, 128, q_len=1, tiling=DEC, split=s) for s in (1, 4)]
    out += [_l("attention-3pass", 2, 16, 4096, 64), _l("attention-3pass", 1, 8, 8192, 128, True),
            _l("attention-2pass", 2, 16, 4096, 128), _l("attention-2pass", 1, 4, 8192, 64)]
    return out


def decode() -> list[Launch]:
    """Decode launches (one or four query tokens per request against a KV cache): grouped-query
    (32 query / 8 K/V heads), multi-query (32 / 1) and multi-head attention, d 128 and 64, at
    several split counts; SDPA flash and cuDNN beside each."""
    d = "decode-splitk"
    out = []
    for b, n, splits in ((1, 131072, (8, 16, 32)), (8, 32768, (2, 4, 8)), (64, 4096, (1, 2)),
                         (4, 65536, (4, 16)), (1, 8192, (4, 16))):
        out += [_l(d, b, 32, n, 128, kv_heads=8, q_len=1, tiling=DEC, split=s) for s in splits]
    out += [_l(d, 8, 32, 32768, 128, kv_heads=1, q_len=1, tiling=DEC, split=s) for s in (8, 16)]
    out += [_l(d, 1, 32, 131072, 128, kv_heads=1, q_len=1, tiling=DEC, split=32)]
    out += [_l(d, 16, 32, 16384, 128, q_len=1, tiling=DEC, split=s) for s in (2, 4)]
    out += [_l(d, 1, 32, 131072, 128, q_len=1, tiling=DEC, split=s) for s in (4, 8)]
    out += [_l(d, 8, 32, 32768, 64, kv_heads=8, q_len=1, tiling=DEC, split=s) for s in (4, 8)]
    out += [_l(d, 8, 32, 32768, 128, c, kv_heads=8, q_len=4, tiling=DEC, split=8)
            for c in (False, True)]
    return out


SETS = {"calibration": calibration, "validation": validation, "decode": decode}

if __name__ == "__main__":
    for name, fn in SETS.items():
        print(name, len(fn()))
