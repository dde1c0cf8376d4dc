"""Frozen outputs of every library cascade under every mapping that fits it.

The numbers in ``tests/data/golden_mappings.json`` were recorded from the hand-written loop
nests before mappings became loop trees with presets; every preset must keep reproducing them
(the counts were checked against hand derivations and papers by the other tests when they
were recorded). Per configuration: per-tensor reads and writes at the SRAM boundary and at the
backing store, per-level bytes, FLOPs per class, the on-chip footprint, the predicted time, the
tile simulator's counts on a small shape and the closed form evaluated at one point.

Regenerate only when a change of the counts is intended and explained (a correction with its
own hand-derived test), or after a change of the time model (then ``git diff`` shows only
``time_s`` moving)::

    python tests/test_golden_mappings.py --write

It keeps the cascades the file covers (``--all`` takes every committed library cascade).
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

GOLDEN = Path(__file__).parent / "data" / "golden_mappings.json"

#: mapping variants beside a preset's defaults (fields of ``Mapping``)
VARIANTS = {
    "fa2": [{}, {"pack_group": False}, {"write_lse": False}],
    "fa1": [{}, {"block_q": 32, "block_kv": 64}, {"init_writes": False}],
    "unfused": [{}, {"softmax_rows": 4}],
    "fused-3pass": [{"row_policy": p} for p in ("auto", "buffer", "spill", "recompute")],
    "fused-2pass": [{"row_policy": p} for p in ("auto", "buffer", "spill")],
    "decode-splitk": [{}, {"split_kv": 1}, {"split_kv": 3}, {"pack_group": False}],
    "linear": [{}, {"split_kv": 4}],
    "lightning2": [{}],
    "saha-ye": [{}, {"block_q": 16, "block_kv": 16}, {"block_q": 8, "block_kv": 8,
                                                      "block_e": 4, "block_f": 16}],
    "chunked": [{}],
}

#: shapes (keyword sizes of evaluate_arrays): plain, partial tiles and causal, grouped query
#: heads, decode (few queries, long keys), end-aligned causal decode, a block density
SHAPES = {
    "plain": dict(n=1024, d=64),
    "partial-causal": dict(n=1000, d=128, causal=True),
    "gqa": dict(n=512, d=64, heads=8, kv_heads=2),
    "gqa-causal": dict(n=300, d=64, heads=4, kv_heads=1, causal=True),
    "decode": dict(n=16, kv_len=4000, d=128, heads=8, kv_heads=2),
    "decode-causal": dict(n=16, kv_len=4000, d=128, causal=True),
    "cross": dict(n=700, kv_len=2000, d=64, f=32),
    "sparse": dict(n=1024, d=64, block_density=0.25),
}

#: shapes the tile simulator walks (small: it visits every tile)
TRACE_SHAPES = {
    "plain": dict(n=96, e=32),
    "causal-gqa": dict(n=80, e=16, heads=2, group=2, causal=True),
}

HARDWARE = ("h100", "two-level")


def _num(x) -> float:
    v = float(np.asarray(x, dtype=float).reshape(-1)[0])
    return v


def _frozen_cascades() -> list:
    """The library cascades the golden file covers: those committed when it was written."""
    import subprocess
    root = Path(__file__).resolve().parents[1]
    files = subprocess.run(["git", "ls-files", "cascades/library/*.casc"], cwd=root, check=True,
                           capture_output=True, text=True).stdout.split()
    return sorted(Path(f).stem for f in files)


def _cases(cascades=None):
    from iosim.mapping import fit_error, mappings_for
    for casc in (cascades if cascades is not None else _frozen_cascades()):
        kinds = list(mappings_for(casc))
        if fit_error("chunked", casc) is None:
            kinds.append("chunked")
        for kind in kinds:
            for k, var in enumerate(VARIANTS.get(kind, [{}])):
                yield casc, kind, k, var


def _mapping(casc, kind, var):
    from iosim.mapping import mapping_for
    if kind == "chunked":   # not in the registry: the spatial models build it from a plan
        from iosim.mapping import Mapping
        return Mapping(name="chunked", cascade=casc, kind="chunked", **var)
    return mapping_for(casc, kind, **var)


def _evaluate(casc, m, hw, shape) -> dict:
    from iosim.errors import IosimError
    from iosim.traffic import evaluate_arrays
    try:
        r = evaluate_arrays(casc, m, hw, **shape)
    except IosimError:
        return {"error": True}
    out = {
        "model_reads": {t: _num(v) for t, v in sorted(r["model_reads"].items())},
        "model_writes": {t: _num(v) for t, v in sorted(r["model_writes"].items())},
        "backing_reads": {t: _num(v) for t, v in sorted(r["backing_reads"].items())},
        "backing_writes": {t: _num(v) for t, v in sorted(r["backing_writes"].items())},
        "levels": {lv: [_num(a), _num(b)] for lv, (a, b) in sorted(r["levels"].items())},
        "flops": {k: _num(v) for k, v in sorted(r["flops"].items())},
        "footprint": {lv: _num(need) for lv, (need, _) in sorted(r["footprint"].items())},
        "fits": bool(np.asarray(r["fits"]).reshape(-1)[0]),
        "time_s": _num(r["time_s"]),
        "kernels": len(r["nest"].phases),
    }
    return out


def _trace(casc, m, shape) -> dict:
    from iosim.errors import IosimError
    from iosim.trace import simulate
    try:
        t = simulate(casc, m, None, check_capacity=False, sram_bytes=1 << 30, **shape)
    except IosimError:
        return {"error": True}
    return {"reads": {k: float(v) for k, v in sorted(t.reads.items())},
            "writes": {k: float(v) for k, v in sorted(t.writes.items())},
            "programs": int(t.programs)}


def _closed_form(casc, m) -> dict:
    """The symbolic per-tensor totals evaluated at one point (non-causal)."""
    import sympy as sp
    from iosim.errors import IosimError
    from iosim.traffic import symbolic_traffic
    try:
        cf = symbolic_traffic(m, casc)
    except (IosimError, NotImplementedError, KeyError):
        return {"error": True}
    expr = cf["total"]
    vals = {"N": 1000, "Nk": 1000, "d": 64, "e": 64, "f": 64, "Br": 64, "Bc": 32, "B": 16,
            "Be": 8, "Bf": 16, "splits": 4, "M": 8192, "G": 1}
    subs = {s: vals[s.name] for s in expr.free_symbols if s.name in vals}
    v = expr.subs(subs)
    try:
        return {"total": float(sp.N(v))}
    except TypeError:
        return {"error": True}


def _record(casc, kind, var) -> dict:
    """One configuration's numbers: every hardware x shape, the traces, the closed form."""
    m = _mapping(casc, kind, var)
    rec = {"variant": var}
    for hw in HARDWARE:
        for sname, shape in SHAPES.items():
            rec[f"{hw}/{sname}"] = _evaluate(casc, m, hw, shape)
    for sname, shape in TRACE_SHAPES.items():
        rec[f"trace/{sname}"] = _trace(casc, m, shape)
    rec["closed_form"] = _closed_form(casc, m)
    return rec


def compute(cascades=None) -> dict:
    return {f"{casc}|{kind}|{k}": _record(casc, kind, var)
            for casc, kind, k, var in _cases(cascades)}


def _close(a, b, path=""):
    """Differences between two records (relative 1e-9; exact for integers and flags)."""
    if isinstance(a, dict) and isinstance(b, dict):
        diffs = []
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                diffs.append(f"{path}/{k}: only in {'golden' if k in a else 'now'}")
                continue
            diffs += _close(a[k], b[k], f"{path}/{k}")
        return diffs
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if math.isinf(a) or math.isinf(b):
            return [] if a == b else [f"{path}: {a} != {b}"]
        return [] if math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) else \
            [f"{path}: golden {a!r}, now {b!r}"]
    return [] if a == b else [f"{path}: golden {a!r}, now {b!r}"]


@pytest.fixture(scope="module")
def golden():
    return json.loads(GOLDEN.read_text())


def test_every_golden_mapping_still_fits(golden):
    """A mapping that fitted a library cascade when the numbers were frozen still fits it
    (cascades added later are not in the file)."""
    keys = {f"{c}|{k}|{i}" for c, k, i, _ in _cases(sorted({k.split("|")[0] for k in golden}))}
    assert set(golden) <= keys, sorted(set(golden) - keys)[:5]


def _golden_keys():
    try:
        return sorted(json.loads(GOLDEN.read_text()))
    except FileNotFoundError:  # pragma: no cover - before the first --write
        return []


@pytest.mark.parametrize("key", _golden_keys())
def test_mapping_counts_unchanged(golden, key):
    casc, kind, k = key.split("|")
    now = _record(casc, kind, golden[key]["variant"])
    diffs = _close(golden[key], now, key)
    assert not diffs, "\n".join(diffs[:20])


if __name__ == "__main__":
    if "--write" not in sys.argv:
        sys.exit("usage: python tests/test_golden_mappings.py --write")
    keep = None
    if GOLDEN.exists() and "--all" not in sys.argv:
        keep = sorted({k.split("|")[0] for k in json.loads(GOLDEN.read_text())})
    data = compute(keep)
    GOLDEN.write_text("{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v, sort_keys=True)}"
                                         for k, v in sorted(data.items())) + "\n}\n")
    print(f"wrote {len(data)} configurations to {GOLDEN}")
