"""A batch of requests with their own key lengths (a ragged batch, as a serving trace gives
them): one launch whose programs are all the requests' programs. Traffic, FLOPs and energy are
the sums over the requests; the time is the parallel time model's list schedule of all their
programs (:func:`iosim.timing.model.combine_requests`). The L2 model sees each request's
heads alone, not the other requests' programs in flight beside them (an approximation that
matters where the requests' K/V together overflow the L2)."""
from __future__ import annotations

import numpy as np

from iosim.errors import IosimError

__all__ = ["evaluate_ragged", "parse_lengths"]


def parse_lengths(text: str) -> tuple:
    """``"1K,32K,128K"`` or ``"@file"`` (one length per line, ``#`` comments) -> lengths."""
    from pathlib import Path

    from iosim.sweep import _count
    src, where = text, "--kv-lens"
    if text.startswith("@"):
        path = Path(text[1:])
        if not path.is_file():
            raise IosimError(f"--kv-lens: file {path} not found")
        src = ",".join(ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines())
        where = f"--kv-lens {path}"
    items = [x.strip() for x in src.split(",") if x.strip()]
    if not items:
        raise IosimError(f"{where}: give at least one key length")
    out = tuple(_count(x, where) for x in items)
    if any(v < 1 for v in out):
        raise IosimError(f"{where}: every key length must be positive")
    return out


def _sum(v):
    if isinstance(v, dict):
        return {k: _sum(x) for k, x in v.items()}
    if isinstance(v, tuple):
        return tuple(_sum(x) for x in v)
    return np.array([float(np.sum(v))])


def evaluate_ragged(cascade, mapping, hardware, *, n: int, kv_lens, e: int, heads: int = 1,
                    kv_heads=None, dtype: str = "bf16", causal: bool = False, l2: str = "auto"):
    """The :class:`~iosim.report.Report` of one launch over requests with ``kv_lens`` keys each
    (``n`` query tokens per request, ``heads``/``kv_heads`` per request)."""
    from iosim.hardware import load_hardware
    from iosim.mapping import Shapes
    from iosim.report import report_from_arrays
    from iosim.timing.model import combine_requests, time_breakdown
    from iosim.traffic import bound_arrays, evaluate_arrays
    kv = np.asarray(kv_lens, dtype=np.int64)
    if kv.ndim != 1 or not len(kv) or np.any(kv < 1):
        raise IosimError("kv-lens: give one positive key length per request")
    if causal and np.any(kv < n):
        raise IosimError(f"kv-lens: a causal mask needs at least as many keys ({int(kv.min())}) "
                         f"as query tokens ({n}) in every request")
    hw = load_hardware(hardware) if isinstance(hardware, str) else hardware
    r = evaluate_arrays(cascade, mapping, hw, n=n, e=e, kv_len=kv, batch=1, heads=heads,
                        kv_heads=kv_heads, dtype=dtype, causal=causal, product=False, l2=l2)
    longest = int(np.argmax(kv))
    one = {}
    for key, v in r.items():
        if key in ("model_reads", "model_writes", "backing_reads", "backing_writes", "levels",
                   "flops", "times"):
            one[key] = _sum(v)
        elif key in ("time_s", "energy_j") and v is not None:
            one[key] = _sum(v)
        elif isinstance(v, np.ndarray) and v.shape == kv.shape:
            one[key] = v[longest: longest + 1]
        elif isinstance(v, dict) and key in ("sizes", "grid"):
            one[key] = {k: (x[longest: longest + 1] if isinstance(x, np.ndarray)
                            and x.shape == kv.shape else x) for k, x in v.items()}
        elif key == "footprint":
            one[key] = {lv: (np.array([np.max(a)]), np.array([np.max(b)]))
                        for lv, (a, b) in v.items()}
        else:
            one[key] = v
    # the roofline over the whole batch: the slowest of the summed terms
    names = list(one["times"])
    stack = np.stack([one["times"][k] for k in names])
    one["roofline_s"] = stack.max(axis=0)
    one["roofline_limiter"] = np.asarray(names, dtype=object)[stack.argmax(axis=0)]
    one["limiter"] = one["roofline_limiter"]
    one["time_s"] = one["roofline_s"]
    if r.get("time") is not None:
        one["time"] = combine_requests(r["time"])
        one["time_s"] = one["time"]["time_s"]
    shapes = Shapes(n=n, e=e, kv_len=int(kv.max()), batch=len(kv), heads=heads,
                    kv_heads=kv_heads, dtype=dtype, causal=causal)
    # per-request heads: report_from_arrays multiplies per-head counts by heads_total, one
    # request's heads, and the counts are summed over the requests
    rep = report_from_arrays(one, shapes)
    b = bound_arrays(r)
    bound = dict(rep.bound)
    bound.update(elements=float(np.sum(b["bound_elements"])),
                 compulsory_elements=float(np.sum(b["bound_compulsory_elements"])),
                 note="elements per head summed over the requests")
    total = sum(p["read"] + p["write"] for p in rep.per_head_elements.values())
    bound["ratio"] = total / bound["elements"] if bound["elements"] else float("nan")
    bound["ratio_compulsory"] = (total / bound["compulsory_elements"]
                                 if bound["compulsory_elements"] else float("nan"))
    from dataclasses import replace
    notes = tuple(rep.notes) + (f"a ragged batch of {len(kv)} requests with "
                                f"{int(kv.min())}-{int(kv.max())} keys (total "
                                f"{int(kv.sum())}): traffic and FLOPs summed, one launch of all "
                                f"their programs",)
    return replace(rep, bound=bound, notes=notes, kv_lens=tuple(int(x) for x in kv))
