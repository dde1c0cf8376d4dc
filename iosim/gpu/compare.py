"""Joining measured counters with the simulator's predictions for the same Mapping.

For every measured row of a generated kernel: the SMEM-level model of :mod:`iosim.traffic`
(the bytes thread blocks read from beyond shared memory, which is what L2 serves) and the L2
model of :mod:`iosim.l2.simulate` (which of them reach DRAM: the dynamic model, plus the earlier
lock-step model as ``*_lockstep`` columns), both for the Mapping the kernel was compiled with,
on the ``h100`` preset. Works on recorded CSVs: no GPU needed.
"""
from __future__ import annotations

import math

from iosim.l2.simulate import GpuL2, Workload, predict_dram, smem_level_reads

#: blocks per SM of the validated tiling (128/64, 8 warps, 3 stages), from Nsight Compute's
#: launch statistics on the H100 (run 1): d=128: 214 registers, 128 KiB shared -> 1;
#: d=64: 121 registers, 64 KiB shared -> 2. Used when a CSV row lacks launch facts.
MEASURED_BLOCKS_PER_SM = {128: 1, 64: 2}


def _f(x):
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def mapping_for(row: dict):
    """The Mapping a measured generated kernel was compiled with: the code generator's own
    Mapping of the row's cascade (:func:`iosim.gpu.kernels.kernel_mapping`) at the row's
    tiles, warps, stages and grid order."""
    from iosim.gpu.kernels import kernel_mapping
    return kernel_mapping(row["cascade"], block_m=int(row["block_m"]),
                          block_n=int(row["block_n"]), num_warps=int(row["num_warps"]),
                          num_stages=int(row["num_stages"]), grid_order=row["grid_order"])


def smem_model_bytes(row: dict, hardware: str = "h100") -> float | None:
    """L2 read bytes predicted by iosim.traffic's SMEM-level model (None if it cannot)."""
    try:
        from iosim import traffic
        rep = traffic.evaluate(row["cascade"], mapping_for(row), hardware,
                               n=int(row["seq"]), e=int(row["head_dim"]),
                               batch=int(row["batch"]), heads=int(row["heads"]),
                               causal=_bool(row["causal"]), dtype=row.get("dtype", "bf16"),
                               check=False)
        return float(rep.to_dict()["levels"]["L2"]["read_bytes"])
    except Exception:  # noqa: BLE001 - a cascade the analytical model does not cover
        return None


def _bool(x) -> bool:
    return x if isinstance(x, bool) else str(x).strip().lower() in ("true", "1", "yes")


def workload(row: dict) -> Workload:
    bps = _f(row.get("blocks_per_sm"))
    if not bps:
        bps = MEASURED_BLOCKS_PER_SM.get(int(row["head_dim"]))
    return Workload(batch=int(row["batch"]), heads=int(row["heads"]), seq_q=int(row["seq"]),
                    seq_k=int(row["seq"]), head_dim=int(row["head_dim"]),
                    causal=_bool(row["causal"]), elem_bytes=4 if row.get("dtype") == "fp32" else 2,
                    block_m=int(row["block_m"]), block_n=int(row["block_n"]),
                    grid_order=row["grid_order"], blocks_per_sm=int(bps) if bps else None,
                    num_warps=int(row["num_warps"]), num_stages=int(row["num_stages"]))


def compare_row(row: dict, gpu: GpuL2 | None = None, *, baseline: bool = True,
                model: str = "dynamic") -> dict:
    """Predictions and relative errors for one measured generated-kernel row."""
    gpu = gpu or GpuL2()
    out = dict(row)
    w = workload(row)
    is_1pass = row["cascade"] == "attention-1pass"
    pred_l2 = smem_model_bytes(row)
    if pred_l2 is None and is_1pass:
        pred_l2 = float(smem_level_reads(w)["read_bytes"])
    out["pred_l2_read_bytes"] = pred_l2
    sm_side = _f(row.get("l1_from_l2_read_bytes"))
    tag_side = _f(row.get("l2_tex_read_bytes"))
    out["err_l2_read"] = (pred_l2 / sm_side - 1) if pred_l2 and sm_side else None
    out["err_l2_tex_read"] = (pred_l2 / tag_side - 1) if pred_l2 and tag_side else None
    if is_1pass:
        p = predict_dram(w, gpu, model=model)
        out["pred_dram_read_bytes"] = p["dram_read_bytes"]
        out["pred_dram_write_bytes"] = p["dram_write_bytes"]
        out["qkv_bytes"] = p["q_bytes"] + p["kv_compulsory_bytes"]
        out["model_blocks_per_sm"] = p["blocks_per_sm"]
        meas = _f(row.get("dram_read_bytes"))
        out["err_dram_read"] = (p["dram_read_bytes"] / meas - 1) if meas else None
        out["dram_over_qkv"] = meas / out["qkv_bytes"] if meas else None
        out["model_makespan_us"] = p.get("makespan_us")
        if baseline:   # the earlier lock-step LRU model, for comparison
            q = predict_dram(w, gpu, model="lockstep")
            out["pred_dram_read_bytes_lockstep"] = q["dram_read_bytes"]
            out["err_dram_read_lockstep"] = (q["dram_read_bytes"] / meas - 1) if meas else None
    return out


def compare(rows: list[dict], gpu: GpuL2 | None = None, *, baseline: bool = True,
            model: str = "dynamic", workers: int = 1) -> list[dict]:
    """Compare every generated-kernel row; reference rows (SDPA) pass through unchanged.
    ``workers > 1``: the rows in that many processes, the costliest first (same results)."""
    gen = [i for i, r in enumerate(rows) if r["impl"] == "generated"]
    out = [dict(r) for r in rows]
    if workers <= 1 or len(gen) < 2:
        for i in gen:
            out[i] = compare_row(rows[i], gpu, baseline=baseline, model=model)
        return out
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial
    cost = {i: int(rows[i]["batch"]) * int(rows[i]["heads"]) * int(rows[i]["seq"]) ** 2
            for i in gen}
    todo = sorted(gen, key=lambda i: -cost[i])
    fn = partial(compare_row, gpu=gpu, baseline=baseline, model=model)
    with ProcessPoolExecutor(workers) as ex:
        for i, r in zip(todo, ex.map(fn, [rows[i] for i in todo])):
            out[i] = r
    return out


def summary(rows: list[dict]) -> dict:
    gen = [r for r in rows if r["impl"] == "generated" and r["cascade"] == "attention-1pass"
           and r.get("err_dram_read") is not None]
    l2 = [abs(r["err_l2_read"]) for r in gen if r.get("err_l2_read") is not None]
    tex = [abs(r["err_l2_tex_read"]) for r in gen if r.get("err_l2_tex_read") is not None]
    dram = [abs(r["err_dram_read"]) for r in gen]
    lock = [abs(r["err_dram_read_lockstep"]) for r in gen
            if r.get("err_dram_read_lockstep") is not None]
    return {"shapes": len(gen),
            "dram_read_within_15pct_lockstep": sum(e <= 0.15 for e in lock) if lock else None,
            "l2_read_max_abs_err": max(l2) if l2 else None,
            "l2_tex_read_max_abs_err": max(tex) if tex else None,
            "dram_read_max_abs_err": max(dram) if dram else None,
            "dram_read_within_15pct": sum(e <= 0.15 for e in dram),
            "l2_read_within_5pct": sum(e <= 0.05 for e in l2)}


def read_csv(path) -> list[dict]:
    import csv
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------- the default analytical model

def _recorded_dir():
    from pathlib import Path
    return Path(__file__).resolve().parents[2] / "experiments" / "data"


def _measured_rows(pattern: str, set_name: str, data_dir=None) -> list[dict]:
    """Rows of the measured-counter schema from registration CSVs (``pattern`` in the data
    folder, in numeric order of their names): each launch's shape and tiling, the measured
    DRAM and L2->SM bytes, and the registered prediction as ``pred_dram_read_bytes_registered``
    (a dynamic-simulation prediction, registered or recomputed, as ``..._simulated``)."""
    import glob
    import os
    d = data_dir or _recorded_dir()
    paths = sorted(glob.glob(os.path.join(str(d), pattern)),
                   key=lambda p: int("0" + "".join(ch for ch in os.path.basename(p)
                                                   if ch.isdigit())))
    keep = ("batch", "heads", "seq", "head_dim", "causal", "grid_order", "dtype", "block_m",
            "block_n", "num_warps", "num_stages", "device")
    out = []
    for path in paths:
        for r in read_csv(path):
            if not r.get("meas_dram_read_bytes"):
                continue
            row = {"impl": "generated", "cascade": "attention-1pass", "set": set_name,
                   **{k: r[k] for k in keep},
                   "dram_read_bytes": r["meas_dram_read_bytes"],
                   "l1_from_l2_read_bytes": r["meas_l2_to_sm_read_bytes"],
                   "pred_dram_read_bytes_registered": r["pred_dram_read_bytes"]}
            if r.get("pred_dram_read_bytes_simulated"):
                row["pred_dram_read_bytes_simulated"] = r["pred_dram_read_bytes_simulated"]
            out.append(row)
    return out


def registered_rows(data_dir=None) -> list[dict]:
    """The launches registered with the dynamic simulation's predictions before they were
    measured (``gpu_unseen*.csv``), with that prediction as ``pred_dram_read_bytes_simulated``."""
    rows = _measured_rows("gpu_unseen*.csv", "registered", data_dir)
    for r in rows:
        r["pred_dram_read_bytes_simulated"] = r.pop("pred_dram_read_bytes_registered")
    return rows


def registered_analytic_rows(data_dir=None) -> list[dict]:
    """Launches drawn and predicted by the analytical L2 model, committed before they were
    measured (``gpu_registered_l2_*.csv``, experiments/register_l2.py)."""
    return _measured_rows("gpu_registered_l2_*.csv", "registered (analytical)", data_dir)


def _key(r: dict) -> tuple:
    return (int(r["batch"]), int(r["heads"]), int(r["seq"]), int(r["head_dim"]),
            _bool(r["causal"]), r["grid_order"], int(r["block_m"]), int(r["block_n"]),
            r.get("cascade", "attention-1pass"))


def recorded_simulation(path=None) -> dict:
    """The dynamic simulation's recorded predictions of the validated launches
    (``gpu_validation.csv``), by launch."""
    p = path or (_recorded_dir() / "gpu_validation.csv")
    out = {}
    for r in read_csv(p):
        if r["impl"] == "generated" and _f(r.get("pred_dram_read_bytes")) is not None:
            out[_key(r)] = _f(r["pred_dram_read_bytes"])
    return out


def analytic_row(row: dict, hardware="h100") -> dict:
    """The row with the default model's predictions: L2 reads from the tile model, HBM reads
    from the analytical L2 model -- the very path of ``iosim evaluate``."""
    from iosim import traffic
    from iosim.hardware import load_hardware
    from iosim.l2.backing import backing_for
    from iosim.mapping import Shapes, loop_nest
    out = dict(row)
    try:
        m = mapping_for(row)
    except Exception:  # noqa: BLE001 - a cascade the code generator does not emit
        return out
    from iosim.timing.model import phase_plans
    plans = phase_plans(loop_nest(m, row["cascade"]))
    if len(plans) != 1 or len(plans[0].steps) != 1:
        return out          # the L2 model covers one kernel whose programs sweep the keys once
    hw = load_hardware(hardware) if isinstance(hardware, str) else hardware
    shapes = Shapes(n=int(row["seq"]), e=int(row["head_dim"]), batch=int(row["batch"]),
                    heads=int(row["heads"]), causal=_bool(row["causal"]),
                    dtype=row.get("dtype") or "bf16")
    try:
        rep = traffic.evaluate(row["cascade"], m, hw, shapes, check=False,
                               backing_model=backing_for(row["cascade"], m, hw, shapes, "auto"))
    except Exception:  # noqa: BLE001 - a cascade or nest the model does not cover
        return out
    d = rep.to_dict()["levels"]
    pred_l2 = float(d["L2"]["read_bytes"])
    pred_hbm = float(d["HBM"]["read_bytes"])
    out["pred_l2_read_bytes"] = pred_l2
    out["pred_dram_read_bytes"] = pred_hbm
    sm_side = _f(row.get("l1_from_l2_read_bytes"))
    meas = _f(row.get("dram_read_bytes"))
    out["err_l2_read"] = (pred_l2 / sm_side - 1) if sm_side else None
    out["err_dram_read"] = (pred_hbm / meas - 1) if meas else None
    sim = _f(row.get("pred_dram_read_bytes_simulated"))
    out["err_dram_read_simulated"] = (sim / meas - 1) if sim and meas else None
    return out


def side_by_side_summary(rows: list[dict]) -> dict:
    """Within-15% counts of both L2 models per set of launches."""
    out = {}
    for name in ("validated", "registered", "registered (analytical)"):
        rs = [r for r in rows if r.get("set") == name and r.get("err_dram_read") is not None]
        if not rs:
            continue
        a = [abs(r["err_dram_read"]) for r in rs]
        s = [abs(r["err_dram_read_simulated"]) for r in rs
             if r.get("err_dram_read_simulated") is not None]
        l2 = [abs(r["err_l2_read"]) for r in rs if r.get("err_l2_read") is not None]
        out[name] = {"launches": len(rs),
                     "analytical_within_15pct": sum(e <= 0.15 for e in a),
                     "analytical_median_abs_err": sorted(a)[len(a) // 2],
                     "simulated_within_15pct": sum(e <= 0.15 for e in s) if s else None,
                     "simulated_launches": len(s),
                     "l2_exact": sum(e <= 1e-9 for e in l2),
                     "l2_within_1pct": sum(e <= 0.01 for e in l2)}
    return out
