"""HBM traffic behind a GPU's L2, as a backing model for :func:`iosim.traffic.evaluate`.

The tile model counts what each program (thread block) reads from beyond its shared memory;
on a GPU those reads go to the L2, and only the misses reach HBM. Which model answers that:

* ``"auto"`` (the default) -- :mod:`iosim.l2.analytic`, the vectorised reuse-distance model,
  wherever the loop nest re-reads a tensor across programs (found in the nest, whatever the
  cascade is called) and the preset is GPU-like (an L2 and a per-SM shared memory);
* ``"simulate"`` -- :mod:`iosim.l2.simulate`, the slower dynamic simulation (thread blocks,
  paces, an NRU state per L2 partition), for the same nests with one query head per K/V head;
* ``"off"`` -- HBM sees every L2 read.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from iosim.errors import IosimError
from iosim.hardware import dtype_bytes

MODES = ("auto", "simulate", "off")


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise IosimError(f"--l2 '{mode}' is not one of {', '.join(MODES)}")


def grid_backing(cascade, mapping, hardware, *, dtype: str = "bf16",
                 mode: str = "auto") -> Callable | None:
    """The analytical L2 backing for a grid of configurations (sweep, search, evaluate_grid):
    ``None`` where it does not apply (``mode="off"``, no L2, no cross-program re-reads)."""
    _check_mode(mode)
    if mode == "simulate":
        raise IosimError("--l2 simulate runs one launch at a time: use it with 'iosim evaluate' "
                         "or 'iosim validate', not with a grid")
    if mode == "off":
        return None
    from iosim.l2 import analytic
    from iosim.mapping import loop_nest
    if not analytic.applies_to_hardware(hardware):
        return None
    return analytic.backing(loop_nest(mapping, cascade), hardware,
                            elem_bytes=dtype_bytes(dtype))


def backing_for(cascade, mapping, hardware, shapes, mode: str = "auto"):
    """The backing model for ``iosim evaluate`` (one configuration), with a one-line
    ``description`` of what the report's HBM row means; ``None`` where no L2 model applies."""
    from iosim.l2 import analytic
    from iosim.mapping import loop_nest
    from iosim.traffic import _load_cascade
    _check_mode(mode)
    if mode == "off" or not analytic.applies_to_hardware(hardware):
        return None
    c = _load_cascade(cascade)
    nest = loop_nest(mapping, c)
    sr = analytic.shared_reads(nest)
    if sr is None:
        return _not_covered(nest)
    elem = dtype_bytes(shapes.dtype)
    if mode == "simulate":
        return _simulated(sr, mapping, shapes, hardware, elem)
    inner = analytic.backing(nest, hardware, elem_bytes=elem)
    gpu = analytic.GpuFacts.from_hardware(hardware)
    seen: dict = {}

    def model(reads, writes, context):
        out = inner(reads, writes, context)
        seen.update(context.get("l2_model", {}))
        model.description = _describe(seen, sr, mapping, shapes, gpu)  # type: ignore
        return out

    model.fast_memory_bytes = inner.fast_memory_bytes  # type: ignore[attr-defined]
    model.description = ""  # type: ignore[attr-defined]
    return model


def _not_covered(nest) -> Callable:
    """HBM sees every L2 read, said so: the nest has no tensor that one kernel's programs
    re-read from each other (several kernels, or no grid loop over query tiles)."""
    from functools import partial

    from iosim.traffic import passthrough_backing
    kernels = len(nest.phases)
    model = partial(passthrough_backing)
    why = (f"{kernels} kernels" if kernels > 1 else
           "no grid loop over query tiles whose key loop streams a shared tensor")
    model.description = (  # type: ignore[attr-defined]
        f"HBM sees every L2 read: the analytical L2 model covers loop nests whose programs "
        f"re-read a tensor from each other, and this {nest.mapping.kind} nest has {why}; its "
        f"HBM traffic is an upper bound on a GPU.")
    return model


def _scalar(x) -> float:
    return float(np.asarray(x).reshape(-1)[0])


def _describe(seen: dict, sr, mapping, shapes, gpu) -> str:
    miss = _scalar(seen.get("miss_fraction", 0.0))
    slots = int(_scalar(seen.get("slots", gpu.sms)))
    txt = (f"HBM sees the L2 misses of the analytical L2 model (iosim.l2.analytic): "
           f"{'/'.join(sr.tensors)} re-read by the programs of a head, {mapping.grid_order} "
           f"grid order, {slots} programs in flight; {miss:.1%} of those re-reads miss. "
           f"--l2 simulate runs the slower dynamic simulation, --l2 off counts every L2 read "
           f"as an HBM read.")
    two_per_sm = slots > gpu.sms
    kv_head = 2 * (shapes.kv_len or shapes.n) * shapes.e * 2
    if shapes.causal and mapping.grid_order == "head-major" and two_per_sm and 0.02 < miss < 0.5:
        txt += (" Note: causal head-major launches with two programs per SM that do not thrash "
                "the L2 are over-counted on recorded launches (+20% to several x); --l2 "
                "simulate models their convoys.")
    elif shapes.causal and mapping.grid_order == "query-major" and kv_head >= 20 * 2 ** 20:
        txt += (" Note: long causal query-major launches (a head's K/V of 20 MiB or more) "
                "ranged on the GPU from Q+K+V to 11x; this model's estimate can be far off "
                "there; --l2 simulate models convoy break-up.")
    elif not shapes.causal and two_per_sm and 0.02 < miss < 0.98:
        txt += (" Note: with two programs per SM and re-reads near the L2's 24-30 MiB knee "
                "this model is within +-30-80% on recorded launches; --l2 simulate is closer "
                "there.")
    return txt


def _simulated(sr, mapping, shapes, hardware, elem) -> Callable:
    """The dynamic simulation as a backing model (one configuration)."""
    from iosim.l2.simulate import GpuL2, Workload, predict_dram
    if sr.group_programs or shapes.group != 1:
        raise IosimError("--l2 simulate models one query head per K/V head; use --l2 auto "
                         "for grouped-query attention")
    if shapes.f != shapes.e:
        raise IosimError("--l2 simulate needs equal head dims for K and V")
    w = Workload(batch=shapes.batch, heads=shapes.heads, seq_q=shapes.n,
                 seq_k=shapes.kv_len or shapes.n, head_dim=shapes.e, causal=shapes.causal,
                 elem_bytes=int(elem), block_m=mapping.block_q, block_n=mapping.block_kv,
                 grid_order=mapping.grid_order, num_warps=mapping.num_warps,
                 num_stages=mapping.num_stages)
    pred = predict_dram(w, GpuL2.from_hardware(hardware))
    programs = shapes.batch * shapes.heads
    kv_miss = pred["kv_miss_bytes"] / elem / programs

    def model(reads: dict, writes: dict, context: dict):
        out = dict(reads)
        tot = sum(np.asarray(reads[t], dtype=float) for t in sr.tensors)
        for t in sr.tensors:
            out[t] = np.asarray(reads[t], dtype=float) * (kv_miss / tot)
        return out, writes

    from iosim.l2.analytic import GpuFacts
    model.fast_memory_bytes = GpuFacts.from_hardware(hardware).fast_memory_bytes  # type: ignore
    model.description = (  # type: ignore[attr-defined]
        f"HBM sees the L2 misses that the dynamic simulation (iosim.l2.simulate, --l2 "
        f"simulate) predicts for this launch ({w.batch * w.heads} heads, {mapping.grid_order} "
        f"grid order, {pred['concurrent_blocks']} concurrent blocks; L2 hit rate of the "
        f"re-read tensors {1 - pred['kv_miss_bytes'] / pred['kv_access_bytes']:.1%}).")
    return model
