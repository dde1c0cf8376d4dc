"""Measured serving decode launches (``experiments/device/serving_decode.py`` and
``serving_paged.py`` on a GPU) against the current serving model (:mod:`iosim.serving`):
per launch the predicted time beside the measured one, and per shape the speedups between the
schedules (stream-K over the split, over no split; the split over no split), measured and
predicted. No GPU: the recorded CSVs are read.

A paged launch whose ``paged_loads`` column is not the kernel's current
:data:`~cascades.triton.emit_decode.PAGED_LOADS` ran an earlier paged kernel (the first one,
recorded without the column, read its block-table entries inside the key loop, right before
the K/V loads that needed them, an entry per key where pages are shorter than a key block).
Such rows are reported, marked ``superseded``, and left out of the checks: the model
describes the current kernel.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from cascades.triton.emit_decode import PAGED_LOADS
from iosim.errors import IosimError

__all__ = ["RECORDED", "read_launches", "predict_launches", "speedups", "summary"]

_DATA = Path(__file__).resolve().parents[1] / "experiments" / "data"
#: the recorded measurement files, in order (a missing one is skipped)
RECORDED = (_DATA / "gpu_serving_decode.csv", _DATA / "gpu_serving_paged.csv")
#: the pairs of schedules whose speedups are compared: (faster, slower)
PAIRS = (("streamk", "split"), ("streamk", "nosplit"), ("split", "nosplit"))
_SHAPE = ("layout", "page_size", "batch", "heads", "kv_heads", "q_len", "causal", "head_dim",
          "kv_lens")


def _int(x):
    return int(float(x)) if str(x).strip() not in ("", "nan", "None") else None


def read_launches(path) -> list[dict]:
    """The rows of a measured serving CSV, typed; a missing file or column: one line."""
    p = Path(path)
    if not p.is_file():
        raise IosimError(f"{path}: measured serving launches file not found")
    with open(p, newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"launch", "layout", "schedule", "kv_lens", "heads", "kv_heads", "ms"}
    if rows and not need <= set(rows[0]):
        raise IosimError(f"{path}: not a serving decode measurement (columns "
                         f"{', '.join(sorted(need - set(rows[0])))} missing)")
    out = []
    for r in rows:
        d = dict(r, source=p.name)
        for k in ("launch", "batch", "heads", "kv_heads", "q_len", "head_dim"):
            d[k] = int(r[k])
        for k in ("split_kv", "programs", "page_size"):
            d[k] = _int(r.get(k, ""))
        d["causal"] = str(r.get("causal")).strip() == "True"
        d["kv_lens"] = tuple(int(x) for x in r["kv_lens"].split(";"))
        d["ms"] = float(r["ms"]) if r.get("ms") not in (None, "") else math.nan
        d["superseded"] = d["layout"] == "paged" and r.get("paged_loads") != PAGED_LOADS
        out.append(d)
    return out


def predict(r: dict, hardware="h100"):
    """The :class:`~iosim.serving.ServingReport` of one recorded launch."""
    from iosim.serving import evaluate_serving
    return evaluate_serving("decode", hardware, n=r["q_len"], kv_lens=r["kv_lens"],
                            e=r["head_dim"], heads=r["heads"],
                            kv_heads=r["kv_heads"] if r["kv_heads"] != r["heads"] else None,
                            causal=r["causal"], schedule=r["schedule"],
                            split_kv=r["split_kv"], programs=r["programs"],
                            page_size=r["page_size"])


def predict_launches(rows: list[dict], hardware="h100") -> list[dict]:
    """Each row with ``pred_ms`` (the current model) and ``err`` = predicted / measured - 1."""
    out = []
    for r in rows:
        rep = predict(r, hardware)
        pred = rep.time_s * 1e3
        lim = rep.report.time["kernels"][0]["limiter"]
        ok = r["ms"] == r["ms"] and r["ms"] > 0
        out.append(dict(r, pred_ms=pred, err=pred / r["ms"] - 1 if ok else math.nan,
                        limiter=lim))
    return out


def label(r: dict) -> str:
    """A short text of a launch's shape and schedule."""
    s = r["schedule"] + (f" {r['split_kv']}" if r["schedule"] == "split" else "")
    return f"{shape_label(r)} {s}"


def shape_label(r: dict) -> str:
    """A short text of a launch's shape: requests x query/K/V heads x keys, and the rest."""
    lens = r["kv_lens"]
    n = (f"{_k(lens[0])}" if len(set(lens)) == 1 else
         f"ragged {_k(min(lens))}-{_k(max(lens))}")
    extra = "".join([f" pages {r['page_size']}" if r["page_size"] else "",
                     f" d{r['head_dim']}" if r["head_dim"] != 128 else "",
                     f" P{r['q_len']}" if r["q_len"] != 1 else "",
                     " varlen" if r["layout"] == "ragged" else ""])
    return f"{len(lens)}x{r['heads']}/{r['kv_heads']}x{n}{extra}"


def _k(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def speedups(rows: list[dict]) -> list[dict]:
    """Per shape measured with two schedules of :data:`PAIRS`: the measured and predicted
    speedup of the first over the second and the prediction's relative error."""
    groups: dict = {}
    for r in rows:
        if r.get("err") == r.get("err") and not r["superseded"]:
            groups.setdefault(tuple(r[k] for k in _SHAPE), {})[r["schedule"]] = r
    out = []
    for g in groups.values():
        for fast, slow in PAIRS:
            if fast in g and slow in g:
                a, b = g[fast], g[slow]
                meas, pred = b["ms"] / a["ms"], b["pred_ms"] / a["pred_ms"]
                out.append(dict(shape=shape_label(a), faster=fast, slower=slow, measured=meas, predicted=pred,
                                err=pred / meas - 1))
    return out


def summary(rows: list[dict]) -> dict:
    """|error| of the current launches (superseded rows left out): count, median, p90, max."""
    e = np.array([abs(r["err"]) for r in rows if r["err"] == r["err"] and not r["superseded"]])
    if not len(e):
        return {"n": 0, "median": math.nan, "p90": math.nan, "max": math.nan}
    return {"n": int(len(e)), "median": float(np.median(e)),
            "p90": float(np.percentile(e, 90)), "max": float(e.max())}
