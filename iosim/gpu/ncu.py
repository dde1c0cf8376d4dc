"""Driving Nsight Compute and reading its CSV.

``profile(configs)`` writes a plan, runs ``ncu --profile-from-start off`` on
``python -m iosim.gpu.runner profile`` (which brackets one launch per configuration between
cudaProfilerStart/Stop, after a marker kernel), and returns one row per configuration with
the summed counters of its kernels: L2 sectors from the SMs (``srcunit_tex``) and from all
sources, DRAM bytes, time, and launch facts (registers, shared memory, occupancy limits).
Caches are flushed before each kernel replay (``--cache-control all``, the default) and
clocks are left alone (``--clock-control none``).
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from iosim.errors import IosimError

SECTOR = 32
METRICS = {
    "dram__bytes_read.sum": "dram_read_bytes",
    "dram__bytes_write.sum": "dram_write_bytes",
    "lts__t_sectors_srcunit_tex_op_read.sum": "l2_tex_read_sectors",
    "lts__t_sectors_srcunit_tex_op_write.sum": "l2_tex_write_sectors",
    "lts__t_sectors_op_read.sum": "l2_read_sectors",
    "lts__t_sectors_op_write.sum": "l2_write_sectors",
    "lts__t_sector_op_read_hit_rate.pct": "l2_read_hit_pct",
    "lts__t_sectors_srcunit_tex_op_read_lookup_hit.sum": "l2_tex_read_hit_sectors",
    "lts__t_sectors_srcunit_tex_op_read_lookup_miss.sum": "l2_tex_read_miss_sectors",
    "l1tex__m_xbar2l1tex_read_bytes.sum": "l1_from_l2_read_bytes",
    "gpu__time_duration.sum": "time_ns",
    "launch__registers_per_thread": "regs",
    "launch__shared_mem_per_block_dynamic": "smem_dynamic",
    "launch__shared_mem_per_block_static": "smem_static",
    "launch__occupancy_limit_registers": "occ_limit_regs",
    "launch__occupancy_limit_shared_mem": "occ_limit_smem",
    "launch__occupancy_limit_warps": "occ_limit_warps",
    "launch__occupancy_limit_blocks": "occ_limit_blocks",
    "launch__grid_size": "grid_size",
}
_SUMMED = {"l2_tex_read_hit_sectors", "l2_tex_read_miss_sectors", "l1_from_l2_read_bytes",
           "dram_read_bytes", "dram_write_bytes", "l2_tex_read_sectors", "l2_tex_write_sectors",
           "l2_read_sectors", "l2_write_sectors", "time_ns"}
MARKER = "iosim_marker"
#: fewer counters (fewer kernel replays): DRAM and L2 reads, time and launch facts
LEAN = ("dram__bytes_read.sum", "dram__bytes_write.sum", "l1tex__m_xbar2l1tex_read_bytes.sum",
        "lts__t_sectors_srcunit_tex_op_read.sum", "gpu__time_duration.sum",
        "launch__registers_per_thread", "launch__occupancy_limit_registers",
        "launch__occupancy_limit_shared_mem", "launch__occupancy_limit_warps",
        "launch__occupancy_limit_blocks", "launch__grid_size")


def find_ncu() -> str:
    for cand in (os.environ.get("NCU"), shutil.which("ncu"), "/usr/local/cuda/bin/ncu"):
        if cand and os.path.exists(cand):
            return cand
    raise IosimError("Nsight Compute (ncu) was not found; set NCU=/path/to/ncu")


def available_metrics(names: list[str]) -> list[str]:
    """The subset of ``names`` this ncu and GPU know (an unknown metric fails the whole run)."""
    try:
        r = subprocess.run([find_ncu(), "--query-metrics", "--csv"], capture_output=True,
                           text=True, timeout=120)
        text = r.stdout
    except (OSError, subprocess.SubprocessError):
        return names
    if r.returncode != 0 or not text:
        return names
    return [n for n in names if n.startswith("launch__") or n.split(".")[0] in text] or names


def _num(text: str):
    t = text.strip().replace(",", "")
    if t in ("", "n/a", "N/A"):
        return None
    try:
        return float(t)
    except ValueError:
        return None


def parse_csv(text: str) -> list[dict]:
    """ncu ``--csv`` output (one row per kernel and metric) -> one dict per kernel launch."""
    start = text.find('"ID"')
    if start < 0:
        return []
    kernels: dict[int, dict] = {}
    for row in csv.DictReader(io.StringIO(text[start:])):
        try:
            kid = int(row["ID"])
        except (KeyError, ValueError):
            continue
        k = kernels.setdefault(kid, {"id": kid, "kernel": row.get("Kernel Name", "")})
        name = METRICS.get(row.get("Metric Name", ""))
        if name:
            k[name] = _num(row.get("Metric Value", ""))
    return [kernels[i] for i in sorted(kernels)]


def group_by_marker(kernels: list[dict]) -> list[list[dict]]:
    """Split the launch sequence at marker kernels: one group per profiled configuration."""
    groups: list[list[dict]] = []
    for k in kernels:
        if MARKER in k["kernel"]:
            groups.append([])
        elif groups:
            groups[-1].append(k)
    return groups


def summarize(group: list[dict]) -> dict:
    out: dict = {"kernels": "+".join(_short(k["kernel"]) for k in group),
                 "n_kernels": len(group)}
    for key in METRICS.values():
        vals = [k.get(key) for k in group if k.get(key) is not None]
        if not vals:
            out[key] = None
        elif key in _SUMMED:
            out[key] = float(sum(vals))
        else:  # launch facts and rates: those of the heaviest kernel
            heavy = max(group, key=lambda k: k.get("time_ns") or 0)
            out[key] = heavy.get(key, vals[0])
    for s in ("l2_tex_read", "l2_tex_write", "l2_read", "l2_write"):
        v = out.get(f"{s}_sectors")
        out[f"{s}_bytes"] = None if v is None else v * SECTOR
    lims = [out.get(k) for k in ("occ_limit_regs", "occ_limit_smem", "occ_limit_warps",
                                 "occ_limit_blocks")]
    lims = [x for x in lims if x]
    out["blocks_per_sm"] = int(min(lims)) if lims else None
    return out


def _short(name: str) -> str:
    return name.split("(")[0].split("<")[0].strip()[:60]


def profile(configs, work_dir: str | Path, *, timeout: float | None = None,
            metrics: tuple | None = None) -> list[dict]:
    """Profile each :class:`~iosim.gpu.runner.Config` under ncu; rows in the same order.
    ``metrics``: the caller's list, used as given; by default :data:`METRICS`, less those this
    ncu and GPU do not know (one ``--query-metrics`` run)."""
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    plan = work / "ncu_plan.json"
    plan.write_text(json.dumps({"configs": [c.to_dict() for c in configs]}))
    log = work / "ncu.csv"
    metrics = list(metrics) if metrics else available_metrics(list(METRICS))
    cmd = [find_ncu(), "--profile-from-start", "off", "--metrics", ",".join(metrics),
           "--csv", "--print-units", "base", "--clock-control", "none",
           "--cache-control", "all", "--log-file", str(log),
           sys.executable, "-m", "iosim.gpu.runner", "profile", "--plan", str(plan)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    (work / "ncu_stdout.txt").write_text(r.stdout + "\n--- stderr ---\n" + r.stderr)
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        raise IosimError(f"ncu failed (exit {r.returncode}): {tail[0][:200]}")
    done = json.loads((work / "ncu_plan.json.done.json").read_text())
    groups = group_by_marker(parse_csv(log.read_text()))
    if len(groups) != len(done["done"]):
        raise IosimError(f"ncu returned {len(groups)} kernel groups for {len(done['done'])} "
                         f"profiled configurations (see {work / 'ncu_stdout.txt'})")
    rows = []
    for i, grp in zip(done["done"], groups):
        row = configs[i].to_dict()
        row.update(summarize(grp))
        row["device"] = done["env"]["device"]
        rows.append(row)
    return rows
