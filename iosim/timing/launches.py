"""Measured kernel launches and the model's prediction for each: the mapping that drives the
generated kernel of a launch, evaluated with the launch's tiling and shapes."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from iosim.errors import IosimError

__all__ = ["predict_rows", "read_rows", "set_summary", "tiling_groups"]


def read_rows(path) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        raise IosimError(f"{path}: measured launches file not found")
    with open(p, newline="") as f:
        return list(csv.DictReader(f))


def _b(x) -> bool:
    return str(x).strip().lower() in ("true", "1", "yes")


def predict_rows(rows: list[dict], hardware="h100") -> list[dict]:
    """Each row with ``pred_ms`` (the time model), ``roofline_ms`` and the model's breakdown."""
    from iosim.traffic import evaluate_arrays
    out = []
    for r in rows:
        casc = r["cascade"]
        from iosim.gpu.timing import _launch, launch_mapping
        m = launch_mapping(_launch(r))
        heads = int(r["heads"])
        kvh = int(r.get("kv_heads") or 0) or heads
        n_kv = int(r["kv_len"])
        q = int(r.get("q_len") or 0) or n_kv
        res = evaluate_arrays(casc, m, hardware, n=q, kv_len=n_kv, d=int(r["head_dim"]),
                              batch=int(r["batch"]), heads=heads,
                              kv_heads=kvh if kvh != heads else None,
                              causal=_b(r["causal"]) and casc != "decode-splitk")
        t = res.get("time")
        row = dict(r)
        row["pred_ms"] = float(res["time_s"][0]) * 1e3
        row["roofline_ms"] = float(res["roofline_s"][0]) * 1e3
        if t is not None:
            ph = t["phases"]
            row["programs"] = "+".join(str(int(p["programs"][0])) for p in ph)
            row["programs_per_sm"] = "+".join(str(int(p["programs_per_sm"][0])) for p in ph)
            row["limiter"] = "+".join(str(p["limiter"][0]) for p in ph)
        ms = float(r.get("ms") or "nan")
        row["err"] = row["pred_ms"] / ms - 1 if ms == ms and ms > 0 else float("nan")
        out.append(row)
    return out


def set_summary(rows: list[dict]) -> dict:
    """|relative error| of the predicted times: median, 90th percentile, max, and how many
    launches are within 25 % and 40 %."""
    e = np.array([abs(r["err"]) for r in rows if r["err"] == r["err"]])
    if not len(e):
        return {"n": 0, "median": float("nan"), "p90": float("nan"), "max": float("nan"),
                "within_25": 0, "within_40": 0}
    return {"n": int(len(e)), "median": float(np.median(e)), "p90": float(np.percentile(e, 90)),
            "max": float(e.max()), "within_25": int((e <= 0.25).sum()),
            "within_40": int((e <= 0.40).sum())}



def tiling_groups(rows: list[dict]) -> list[dict]:
    """Launches of one cascade and shape measured with several tilings: per group, the
    Spearman rank correlation of predicted and measured times, the predicted best tiling and
    how much slower it measured than the measured best (``best_gap``)."""
    from scipy.stats import spearmanr
    groups: dict = {}
    for r in rows:
        if r["err"] != r["err"]:
            continue
        key = tuple(str(r.get(k)) for k in ("cascade", "batch", "heads", "kv_heads", "q_len",
                                            "kv_len", "head_dim", "causal", "split_kv"))
        groups.setdefault(key, []).append(r)
    out = []
    for key, g in groups.items():
        tilings = {(r["block_m"], r["block_n"], r["num_warps"], r["num_stages"]) for r in g}
        if len(tilings) < 4:
            continue
        meas = np.array([float(r["ms"]) for r in g])
        pred = np.array([r["pred_ms"] for r in g])
        pick = int(np.argmin(pred))
        t = lambda r: f"{r['block_m']}/{r['block_n']}/{r['num_warps']}w/{r['num_stages']}s"  # noqa: E731
        out.append({"shape": g[0]["label"].rsplit(" ", 1)[0] if "label" in g[0] else str(key),
                    "tilings": len(g), "spearman": float(spearmanr(meas, pred).statistic),
                    "predicted_best": t(g[pick]), "measured_best": t(g[int(np.argmin(meas))]),
                    "best_gap": float(meas[pick] / meas.min() - 1)})
    return out
