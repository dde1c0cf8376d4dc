"""Replacement policy, not a reuse-distance response: LRU and NRU caches of two partitions on the
L2 microbenchmarks and the measured attention schedules (no GPU; a C compiler, ~1 min on 2 cores).

    python experiments/l2_policy.py      # -> experiments/data/gpu_l2_policy.csv

The model and the replays so far apply a miss fraction that depends on a line's reuse distance
(the measured shared-scan response): exact for an LRU cache, and blind to what a policy like
NRU does — a hot line whose "used" bit was cleared can be evicted by a stream of lines read once.
``experiments/csrc/l2_policy.c`` keeps the cache state instead: each partition 26 MiB (the
shared scan's half-miss point) of 16-way sets, 4 KiB units, unit u of a tile homed in partition
u % 2, a far-side read touching a copy on the reader's side (the partitions model's
accounting), DRAM = home units that miss. Policies: LRU, and NRU (one used bit per way, set on
a fill or hit; the victim is the first way whose bit is clear; all bits of the set cleared when
none is). Nothing is fitted: 26 MiB and 16 ways are the same for every case.

Replayed: the microbenchmarks as synthetic streams (experiments/partition_variants.py's cases)
and the measured schedules of 110 launches (the same set as partition_variants.py).
"""
from __future__ import annotations

import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from iosim.gpu.partitions import side_of  # noqa: E402
from iosim.gpu.validate import write_csv  # noqa: E402
from iosim.l2model import Workload  # noqa: E402
from partition_replay import DATA, build, events  # noqa: E402
from partition_variants import micro_cases, replay_jobs  # noqa: E402

SRC = os.path.join(ROOT, "experiments", "csrc", "l2_policy.c")
#: name -> (policy number, MiB per partition, ways)
POLICIES = {"lru": (0, 26, 16), "nru": (2, 26, 16)}


def run(exe: str, ev: np.ndarray, n_tiles: int, policy: str) -> float:
    """DRAM bytes of the counted reads of events ``ev`` under ``policy``."""
    import subprocess
    num, mib, ways = POLICIES[policy]
    with tempfile.NamedTemporaryFile(suffix=".bin") as f:
        np.asarray(ev, dtype=np.int64).tofile(f.name)
        out = subprocess.run([exe, f.name, str(n_tiles), str(num), str(mib), str(ways), "3",
                              "0"], check=True, capture_output=True, text=True).stdout
    return float(out.split()[0])


def one_micro(job) -> dict:
    exe, fam, case, m, ev, n, norm = job
    row = {"kind": "microbenchmark", "family": fam, "case": case, "measured": m}
    for p in POLICIES:
        row[p] = round(norm(run(exe, ev, n, p)), 4)
    return row


def one_replay(job) -> dict:
    exe, traced, r, side_a = job
    w = Workload(int(r["batch"]), int(r["heads"]), int(r["seq"]), int(r["seq"]),
                 int(r["head_dim"]), causal=r["causal"] == "True", grid_order=r["grid_order"])
    tr = np.load(os.path.join(DATA, f"{traced}.npz"))[r["trace_key"]]
    meas = float(r["dram_read_bytes"])
    ev, n = events(w, tr, side_of(tr[:, 2].astype(np.int64), side_a))
    q = w.batch * w.heads * w.seq_q * w.head_dim * w.elem_bytes     # Q, read once (as replay)
    fam = {"gpu_query_cliff": "query-major cliff, one or two heads",
           "gpu_query_heads": "query-major, 1-8 heads at 56K/64K (one machine)"}.get(
        traced, f"{'causal ' if w.causal else ''}{w.grid_order} d={w.head_dim}")
    row = {"kind": "attention replay", "family": fam, "case": f"{traced}:{r['trace_key']}",
           "measured": meas}
    for p in POLICIES:
        row[p] = round((run(exe, ev, n, p) + q) / meas - 1, 4)
    return row


def main() -> None:
    from tqdm import tqdm
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(tmp, SRC)
        micro = [(exe, *c) for c in micro_cases()]
        rows = [one_micro(j) for j in tqdm(micro, desc="microbenchmarks")]
        jobs = [(exe, *j[1:]) for j in replay_jobs(exe)]
        with ProcessPoolExecutor(2) as ex:
            rows += list(tqdm(ex.map(one_replay, jobs), total=len(jobs), desc="replays"))
    write_csv(rows, os.path.join(DATA, "gpu_l2_policy.csv"))
    for kind in ("microbenchmark", "attention replay"):
        sel = [r for r in rows if r["kind"] == kind]
        for fam in dict.fromkeys(r["family"] for r in sel):
            part = [r for r in sel if r["family"] == fam]
            if kind == "microbenchmark":
                cells = [f"{p} {np.mean([abs(r[p] - r['measured']) for r in part]):.3f}"
                         for p in POLICIES]
                print(f"{fam:48s} mean |miss - measured|  " + "  ".join(cells))
            else:
                cells = [f"{p} {sum(abs(r[p]) <= 0.15 for r in part):3d}/{len(part)}"
                         for p in POLICIES]
                print(f"{fam:48s} within 15%  " + "  ".join(cells))
    sel = [r for r in rows if r["kind"] == "attention replay"]
    print(f"{'all attention replays':48s} within 15%  " + "  ".join(
        f"{p} {sum(abs(r[p]) <= 0.15 for r in sel):3d}/{len(sel)}" for p in POLICIES))


if __name__ == "__main__":
    main()
