"""HBM traffic behind a GPU's L2, as a backing model for :func:`iosim.traffic.evaluate`.

The analytical model counts what each program (thread block) reads from beyond its shared
memory; on a GPU those reads go to the L2, and only the misses reach HBM. For the
FlashAttention-2 tiling of a 1-pass softmax cascade, :mod:`iosim.l2.simulate` simulates which
K/V tile reads miss (L2 capacity and response measured on the H100, concurrent blocks from
occupancy, grid order, causal imbalance, block rates); this module turns that prediction
into the per-tensor, per-head elements that the report's HBM row shows. Validated against
Nsight Compute counters in docs/validation.md (where it misses, and why, is written there).
"""
from __future__ import annotations

from typing import Callable

from iosim.hardware import dtype_bytes

#: cascades whose generated kernel is the FA2 loop nest the L2 model simulates
KERNELS = ("attention-1pass", "flash1", "sigmoid")


def applies(cascade_name: str, mapping, hardware, shapes) -> bool:
    """Whether the L2 simulation describes this configuration's HBM traffic."""
    l2 = next((lv for lv in hardware.levels if lv.name.upper() == "L2"), None)
    return (l2 is not None and (l2.policy or "").lower() == "lru"
            and any(lv.name.upper() == "SMEM" for lv in hardware.levels)
            and mapping.kind == "fa2" and cascade_name in KERNELS and shapes.group == 1
            and (shapes.f is None or shapes.f == shapes.e))


def gpu_l2_backing(mapping, shapes, hardware) -> Callable:
    """A backing model ``(reads, writes, context) -> (reads, writes)`` for one configuration:
    Q and O as counted, K and V scaled to the simulated L2 misses."""
    from iosim.l2.simulate import GpuL2, Workload, predict_dram
    elem = dtype_bytes(shapes.dtype)
    w = Workload(batch=shapes.batch, heads=shapes.heads, seq_q=shapes.n,
                 seq_k=shapes.kv_len or shapes.n, head_dim=shapes.e, causal=shapes.causal,
                 elem_bytes=int(elem), block_m=mapping.block_q, block_n=mapping.block_kv,
                 grid_order=mapping.grid_order, num_warps=mapping.num_warps,
                 num_stages=mapping.num_stages)
    pred = predict_dram(w, GpuL2.from_hardware(hardware))
    programs = shapes.batch * shapes.heads

    def backing(reads: dict, writes: dict, context: dict):
        out = dict(reads)
        kv = reads["K"] + reads["V"]
        miss = pred["kv_miss_bytes"] / elem / programs  # K/V elements per head from HBM
        for t in ("K", "V"):
            out[t] = reads[t] * (miss / kv)
        return out, writes

    # everything on chip above HBM: the reuse the L2 model allows happens in this memory
    backing.fast_memory_bytes = sum(  # type: ignore[attr-defined]
        lv.total_capacity_bytes for lv in hardware.levels[1:]
        if lv.name.upper() in ("L2", "SMEM"))
    backing.description = (  # type: ignore[attr-defined]
        f"HBM sees the L2 misses that iosim.l2.simulate simulates for this launch "
        f"({w.batch * w.heads} (batch, head) pairs, {mapping.grid_order} grid order, "
        f"{pred['concurrent_blocks']} concurrent blocks; L2 hit rate of K/V reads "
        f"{1 - pred['kv_miss_bytes'] / pred['kv_access_bytes']:.1%}); "
        f"--l2 off counts every L2 read as an HBM read.")
    return backing


def backing_for(cascade_name: str, mapping, hardware, shapes, mode: str = "auto"):
    """The backing model for ``iosim evaluate``: the L2 simulation where it applies
    (``mode="auto"``), else ``None`` (HBM sees every L2 read)."""
    if mode == "off" or not applies(cascade_name, mapping, hardware, shapes):
        return None
    return gpu_l2_backing(mapping, shapes, hardware)
