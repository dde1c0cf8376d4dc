"""The dynamic L2 model's cache answers against each other, on every measured launch (no GPU;
~45 min on 2 cores).

    python experiments/l2_research/nru_model.py --out DIR     # -> DIR/gpu_nru_model.csv
    python experiments/l2_research/nru_model.py --all --upto 14 --out DIR   # the committed table

All columns but the last with the rates of rounds 11-13 (no startup: ``FIRST_CLEAR_NO_STARTUP``).
``GpuL2(l2_policy="nru")`` replaces each L2 partition's reuse-distance response (the measured
shared-scan curve) by a cache state: 16-way sets of 4 KiB units, 26 MiB per partition, NRU
replacement, the partitions model's copy accounting (iosim.l2.state; the layout of
experiments/csrc/l2_policy.c, which replays the measured schedules), sets hashed (balanced:
``nru_set_map="hashed"``) or, in the column nru_linear, the linear set map the set-conflict
probe rules out; nru_scan gives the sets unequal numbers of ways, distributed as the measured
shared-scan response (``nru_capacity="scan"``). These four with fetches stopping at the
model's chunk ends (the model before round 11; ``response`` is its default); the columns
``*_prefetch`` with the fetches running on across chunk ends (``nru_prefetch`` is the default
since round 11); ``clock_prefetch`` is the default with CLOCK's victim rule (a hand per set
walks on from where it stopped: ``nru_victim="clock"``); ``clock_startup`` is that with each
block's measured startup and the matching rates (``BLOCK_STARTUP``): the default of rounds
13-15 (seed 0 of the pace noise alone; the default since is the fastest of three draws,
experiments/draws.py); ``conserving`` is that with the SM's time given to the block that can use it
(``sm_sharing="work-conserving"``, the eighteenth session's option; at one block per SM the
default's bytes exactly, copied). Each column predicts DRAM read bytes
for the 34 validated launches (gpu_ncu.csv's counters, as gpu_validation.csv) and every launch
of the pre-registered rounds
(gpu_unseen*.csv; post hoc, except the registered predictions: response for rounds 9-12, nru
for rounds 10-11, nru_prefetch for rounds 11-14 (the default of rounds 11-13), clock_prefetch
and clock_startup for round 13, clock_startup and conserving for round 14). Nothing is
fitted. A rerun computes only the cells DIR/gpu_nru_model.csv lacks (new launches, new
columns); ``--all`` recomputes every cell.
"""
from __future__ import annotations

import os

import numpy as np

from _util import DATA, launch_label, out_path, parser, pmap  # first: the root onto sys.path
from iosim.gpu.compare import read_csv, workload  # noqa: E402
from iosim.gpu.validate import write_csv  # noqa: E402
from iosim.l2.simulate import FIRST_CLEAR_NO_STARTUP, ONE_PACE_DRAW  # noqa: E402

#: column -> GpuL2 arguments: the response (the default of rounds 7-10), the NRU state (hashed
#: sets), the same with the linear set map, the NRU state whose sets have unequal ways
#: distributed as the measured shared-scan response (a soft capacity) -- these four with fetches
#: stopping at chunk ends -- and the response and the NRU state with fetches across chunk ends
#: (the latter the default of rounds 11-13), and that with CLOCK's victim rule (a hand per set,
#: ``nru_victim="clock"``; the sixteenth session) -- all with the rates of rounds 11-13, no
#: startup -- and CLOCK with each block's startup (the default of rounds 13-15, seed 0 alone)
_R = FIRST_CLEAR_NO_STARTUP
_D = ONE_PACE_DRAW      # clock_startup: the default of rounds 13-15 (seed 0 alone)
POLICIES = {"response": {**_R, "l2_policy": "response", "prefetch_across_chunks": False},
            "nru": {**_R, "l2_policy": "nru", "prefetch_across_chunks": False},
            "nru_linear": {**_R, "l2_policy": "nru", "nru_set_map": "linear",
                           "prefetch_across_chunks": False},
            "nru_scan": {**_R, "l2_policy": "nru", "nru_capacity": "scan",
                         "prefetch_across_chunks": False},
            "response_prefetch": {**_R, "l2_policy": "response", "prefetch_across_chunks": True},
            "nru_prefetch": {**_R},
            "clock_prefetch": {**_R, "nru_victim": "clock"},
            "clock_startup": {**_D},
            "conserving": {**_D, "sm_sharing": "work-conserving"}}


def launches(upto: int | None = None) -> list[dict]:
    """(set, shape, measured DRAM read bytes, the row) of every measured launch: the validated
    ones and those of the registered batches (``upto``: of batches 1..upto only)."""
    out = []
    for r in read_csv(os.path.join(DATA, "gpu_validation.csv")):
        if r["impl"] == "generated" and r["cascade"] == "attention-1pass":
            out.append({**r, "set": "validated", "measured": float(r["dram_read_bytes"])})
    files = [p for p in os.listdir(DATA) if p.startswith("gpu_unseen") and p.endswith(".csv")]
    for p in sorted(files, key=lambda p: int(p[10:-4] or 1)):
        if upto is not None and int(p[10:-4] or 1) > upto:
            continue
        for r in read_csv(os.path.join(DATA, p)):
            if r.get("meas_dram_read_bytes"):
                out.append({**r, "impl": "generated", "cascade": "attention-1pass",
                            "set": f"round {p[10:-4] or 1}",
                            "measured": float(r["meas_dram_read_bytes"])})
    return out


def one(r: dict, done: dict | None = None) -> dict:
    """Every column's prediction for launch ``r``; the cells of ``done`` (a recorded row of
    the same launch) are kept, not recomputed."""
    from iosim.l2.simulate import GpuL2, occupancy, predict_dram
    w = workload(r)
    row = {"set": r["set"], "shape": launch_label(w), "grid_order": w.grid_order,
           "measured": r["measured"],
           "qkv_bytes": 3 * w.batch * w.heads * w.seq_q * w.head_dim * w.elem_bytes}
    done = done or {}
    for pol, kw in POLICIES.items():
        if done.get(pol) not in (None, ""):
            row[pol] = float(done[pol])
            row[f"err_{pol}"] = float(done[pol]) / r["measured"] - 1
            continue
        if pol == "conserving" and occupancy(w) == 1:
            # one block per SM: no other block to give time to, the default's bytes exactly
            # (tests/test_partner_pace.py)
            v = float(row["clock_startup"])
        else:
            v = predict_dram(w, GpuL2(**kw))["dram_read_bytes"]
        row[pol] = round(v)
        row[f"err_{pol}"] = v / r["measured"] - 1
    return row


def summary(rows) -> list[str]:
    out = []
    late = ("validated", "round 9", "round 10", "round 11", "round 12", "round 13", "round 14")
    groups = [("validated", lambda r: r["set"] == "validated"),
              ("rounds 1-8 (post hoc)", lambda r: r["set"] not in late),
              ("round 9", lambda r: r["set"] == "round 9"),
              ("round 10", lambda r: r["set"] == "round 10"),
              ("round 11", lambda r: r["set"] == "round 11"),
              ("round 12", lambda r: r["set"] == "round 12"),
              ("round 13", lambda r: r["set"] == "round 13"),
              ("round 14", lambda r: r["set"] == "round 14"),
              ("all", lambda r: True)]
    for name, sel in groups:
        part = [r for r in rows if sel(r)]
        cells = []
        for pol in POLICIES:
            e = np.array([float(r[f"err_{pol}"]) for r in part])
            cells.append(f"{pol} {int((abs(e) <= 0.15).sum()):3d}/{len(e)} "
                         f"(mean |error| {abs(e).mean():.1%})")
        out.append(f"{name:24s} within 15%: " + "   ".join(cells))
    return out


def over_launches(fn, todo: list, extra: list | None = None, workers: int = 2) -> list:
    """``fn`` on every launch of ``todo`` (``fn((launch, extra[i]))`` where ``extra`` is given)
    in ``workers`` processes, the longest first so that they finish together; the results in
    ``todo``'s order."""
    big = sorted(range(len(todo)), key=lambda i: -int(todo[i]["batch"]) * int(
        todo[i]["heads"]) * int(todo[i]["seq"]) ** 2)
    jobs = [todo[i] if extra is None else (todo[i], extra[i]) for i in big]
    out = pmap(fn, jobs, "launches", workers)
    return [row for _, row in sorted(zip(big, out), key=lambda x: x[0])]


def _one_kept(job):
    return one(*job)


def main(argv=None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--all", action="store_true",
                    help="recompute every cell (default: only those DIR/gpu_nru_model.csv lacks)")
    ap.add_argument("--upto", type=int, default=None, metavar="N",
                    help="only the registered batches 1..N (the committed table: --upto 14)")
    a = ap.parse_args(argv)
    path = out_path(a.out, "gpu_nru_model.csv")
    todo = launches(a.upto)
    kept = {} if a.all or not os.path.exists(path) else {
        (r["set"], r["shape"], r["grid_order"]): r for r in read_csv(path)}
    done = [kept.get((r["set"], launch_label(workload(r)), r["grid_order"])) for r in todo]
    rows = over_launches(_one_kept, todo, done, workers=a.workers)
    write_csv(rows, path)
    print("\n".join(summary(rows)))
    print("wrote", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
