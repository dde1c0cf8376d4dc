"""The dynamic L2 model with each block's measured startup, against the default, on every
measured launch (no GPU; ~35 min on 2 cores).

    python experiments/l2_research/startup_model.py --out DIR  # -> DIR/gpu_startup_model.csv,
                                                               #    DIR/gpu_startup_seeds.csv
    python experiments/l2_research/startup_model.py --summary  # the committed CSVs' summary
    python experiments/l2_research/startup_model.py --upto 12 --out DIR  # the committed tables

``GpuL2(**BLOCK_STARTUP)`` (iosim.l2.simulate): a block spends its first 3.48 us loading and
waiting (the median intercept of the traced causal launches outside the validation set,
experiments/l2_research/block_time.py) and then runs through its key blocks at the rates measured without
that startup (d=128 non-causal 1.049, causal 1.066 us per key block; d=64 from the sharing fit
of the computing time); a block in its startup leaves its SM to the other block. Everything
else is the default of rounds 11-13 (NRU state with the first clear way as the victim, fetches
across chunk ends; ``FIRST_CLEAR_NO_STARTUP``, the column ``default``); the present default adds
CLOCK to the startup (experiments/l2_research/nru_model.py, column ``clock_startup``). Nothing is fitted
to DRAM counts.

* gpu_startup_model.csv -- the 130 launches of gpu_nru_model.csv (34 validated, rounds 1-12):
  measured DRAM reads and kernel time (ncu), each model's DRAM prediction and makespan (seed 0);
* gpu_startup_seeds.csv -- the d=128 causal head-major launches with at least 24K keys (the
  regime whose convoy or spread state turns on the blocks' pace noise): both models at seeds 1
  and 2 (seed 0 is the first file's), DRAM prediction and makespan.
"""
from __future__ import annotations

import os

import numpy as np

from _util import DATA, launch_label, out_path, parser, pmap  # first: the root onto sys.path
from iosim.gpu.compare import workload  # noqa: E402
from iosim.gpu.validate import write_csv  # noqa: E402
from nru_model import launches, over_launches  # noqa: E402

SEEDS = (1, 2)


def _models():
    from iosim.l2.simulate import BLOCK_STARTUP, FIRST_CLEAR_NO_STARTUP, GpuL2
    # the default of rounds 11-13 and that with the startup (NRU's first-clear victim)
    return {"default": GpuL2(**FIRST_CLEAR_NO_STARTUP),
            "startup": GpuL2(nru_victim="first", pace_draws=1, **BLOCK_STARTUP)}


def one(r: dict) -> dict:
    from iosim.l2.simulate import _predict_dynamic
    w = workload(r)
    t = r.get("time_ns") or r.get("meas_time_ns")
    row = {"set": r["set"], "shape": launch_label(w), "grid_order": w.grid_order,
           "measured": r["measured"], "measured_time_us": float(t) / 1e3 if t else ""}
    for name, gpu in _models().items():
        p = _predict_dynamic(w, gpu)
        row[name] = round(p["dram_read_bytes"])
        row[f"err_{name}"] = p["dram_read_bytes"] / r["measured"] - 1
        row[f"span_{name}_us"] = round(p["makespan_us"], 1)
    return row


def one_seed(job) -> dict:
    from iosim.l2.simulate import _predict_dynamic
    r, name, seed = job
    w = workload(r)
    p = _predict_dynamic(w, _models()[name], seed=seed)
    return {"set": r["set"], "shape": launch_label(w), "grid_order": w.grid_order, "model": name,
            "seed": seed, "measured": r["measured"],
            "err": p["dram_read_bytes"] / r["measured"] - 1,
            "span_us": round(p["makespan_us"], 1)}


def thrash(shape: str, grid_order: str) -> bool:
    """A d=128 causal head-major launch with at least 24K keys (``shape``: launch_label's)."""
    b, h, n, d = (int(x) for x in shape.split("-")[0].split("x"))
    return d == 128 and shape.endswith("-causal") and grid_order == "head-major" and n >= 24576


def summary(rows, seeds) -> list[str]:
    out = []
    for name in ("default", "startup"):
        e = np.array([float(r[f"err_{name}"]) for r in rows])
        v = np.array([r["set"] == "validated" for r in rows])
        t = np.array([float(r["measured_time_us"] or "nan") for r in rows])
        s = np.array([float(r[f"span_{name}_us"]) for r in rows]) / t - 1
        out.append(f"{name:8s} DRAM within 15%: validated {int((abs(e[v]) <= .15).sum())}/"
                   f"{v.sum()}, all {int((abs(e) <= .15).sum())}/{len(e)} (mean |error| "
                   f"{abs(e).mean():.1%}); makespan within 10% of the ncu time: "
                   f"{int((abs(s) <= .1).sum())}/{np.isfinite(s).sum()} (median {np.nanmedian(s):+.1%})")
        th = [r for r in rows if thrash(r["shape"], r["grid_order"])]
        errs = [float(r[f"err_{name}"]) for r in th] + [float(x["err"]) for x in seeds
                                                        if x["model"] == name]
        out.append(f"{'':8s} d=128 causal head-major >= 24K keys, seeds 0-2: "
                   f"{sum(abs(x) <= .15 for x in errs)}/{len(errs)} within 15%")
    return out


def main(argv=None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--summary", action="store_true",
                    help="only print the summary of the committed CSVs (experiments/data)")
    ap.add_argument("--upto", type=int, default=None, metavar="N",
                    help="only the registered batches 1..N (the committed tables: --upto 12)")
    a = ap.parse_args(argv)
    if a.summary:       # from the committed CSVs
        from iosim.gpu.compare import read_csv
        print("\n".join(summary(read_csv(os.path.join(DATA, "gpu_startup_model.csv")),
                                 read_csv(os.path.join(DATA, "gpu_startup_seeds.csv")))))
        return 0
    todo = launches(a.upto)
    rows = over_launches(one, todo, workers=a.workers)
    write_csv(rows, out_path(a.out, "gpu_startup_model.csv"))
    jobs = [(r, name, s) for r in todo if thrash(launch_label(workload(r)), r["grid_order"])
            for name in ("default", "startup") for s in SEEDS]
    jobs.sort(key=lambda j: -int(j[0]["heads"]) * int(j[0]["seq"]) ** 2)
    seeds = pmap(one_seed, jobs, "seeds", a.workers)
    write_csv(seeds, out_path(a.out, "gpu_startup_seeds.csv"))
    print("\n".join(summary(rows, seeds)))
    print("wrote", out_path(a.out, "gpu_startup_model.csv"),
          out_path(a.out, "gpu_startup_seeds.csv"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
