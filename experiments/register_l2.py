"""Register launches for an out-of-sample check of the default L2 model, before measuring them.

    python experiments/register_l2.py --seed 1 --out experiments/data/gpu_registered_l2_1.csv
    # then, on the GPU machine:
    python experiments/device/measure_unseen.py 540 experiments/data/gpu_registered_l2_1.csv
    # then merge the measurement:
    python experiments/register_l2.py --merge OUT/unseen_meas.csv \
        --out experiments/data/gpu_registered_l2_1.csv

Draws 16 launches of the generated attention-1pass kernel (BLOCK_M=128, BLOCK_N=64, 8
warps, 3 stages, bf16) with a seeded generator (see :func:`draw`), none of them a launch
recorded before. For
each it writes the default analytical model's predicted DRAM read bytes and the L2->SM
bytes (the tile model), with the commit of the model, so the file can be committed before
the launches are measured.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import glob
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
DATA = os.path.join(HERE, "data")
TILING = dict(block_m=128, block_n=64, num_warps=8, num_stages=3)


def _recorded() -> set:
    seen = set()
    for path in glob.glob(os.path.join(DATA, "gpu_unseen*.csv")) + glob.glob(
            os.path.join(DATA, "gpu_registered_l2_*.csv")) + [os.path.join(DATA, "gpu_ncu.csv")]:
        for r in csv.DictReader(open(path)):
            seen.add((int(r["batch"]) * int(r["heads"]), int(r["seq"]), int(r["head_dim"]),
                      str(r["causal"]) == "True", r["grid_order"]))
    return seen


def draw(seed: int, per_cell: int = 4) -> list:
    """Four launches per (mask, grid order): head dim 64 or 128, N log-uniform in 2K-96K
    (a multiple of 1024), and the K/V of all heads together log-uniform in 8 MiB-2 GiB (from
    well inside the 50 MiB L2 to far beyond it), as batch x heads; kernels of 0.02-60 GFLOP x
    1000 (seconds under the profiler at most)."""
    rng = np.random.default_rng(seed)
    seen = _recorded()
    out = []
    for causal in (False, True):
        for order in ("query-major", "head-major"):
            got = 0
            while got < per_cell:
                d = int(rng.choice([64, 128]))
                n = int(round(np.exp(rng.uniform(np.log(2048), np.log(98304))) / 1024)) * 1024
                kv_all = np.exp(rng.uniform(np.log(8 * 2 ** 20), np.log(2 * 2 ** 30)))
                bh = int(round(kv_all / (2 * n * d * 2)))
                if bh < 1 or bh > 512:
                    continue
                batch = int(rng.choice([b for b in (1, 2, 3, 4, 8) if bh % b == 0] or [1]))
                heads = bh // batch
                work = 4.0 * bh * n * n * d * (0.5 if causal else 1)
                if not (2e10 <= work <= 6e13):
                    continue
                key = (bh, n, d, causal, order)
                if key in seen:
                    continue
                seen.add(key)
                out.append(dict(batch=batch, heads=heads, seq=n, head_dim=d, causal=causal,
                                grid_order=order))
                got += 1
    return out


def predict(rows: list) -> list:
    from iosim.gpu.compare import analytic_row
    res = []
    for r in rows:
        row = {"impl": "generated", "cascade": "attention-1pass", "dtype": "bf16", **r,
               **TILING}
        a = analytic_row({k: str(v) for k, v in row.items()})
        shape = (f"{r['batch']}x{r['heads']}x{r['seq']}x{r['head_dim']}"
                 f"{'-causal' if r['causal'] else ''}")
        q = r["batch"] * r["heads"] * r["seq"] * r["head_dim"] * 2
        res.append({"shape": shape, **{k: r[k] for k in ("batch", "heads", "seq", "head_dim",
                                                         "causal", "grid_order")},
                    "dtype": "bf16", **TILING, "qkv_bytes": 3 * q,
                    "pred_dram_read_bytes": round(a["pred_dram_read_bytes"]),
                    "pred_l2_read_bytes": round(a["pred_l2_read_bytes"])})
    return res


def cli(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", required=True, help="the registration CSV to write (or merge into)")
    ap.add_argument("--merge", default=None, help="a measure_unseen.py result to merge")
    a = ap.parse_args(argv)
    if a.merge:
        meas = {r["shape"]: r for r in csv.DictReader(open(a.merge))}
        rows = list(csv.DictReader(open(a.out)))
        for r in rows:
            m = meas.get(r["shape"])
            if m:
                for k in ("meas_dram_read_bytes", "meas_l2_to_sm_read_bytes", "meas_time_ns",
                          "device"):
                    r[k] = m[k]
    else:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=HERE).stdout.strip()
        rows = predict(draw(a.seed))
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
        for r in rows:
            r["model_commit"] = commit
            r["registered_utc"] = stamp
    fields = list(rows[0])
    for r in rows:
        for k in r:
            if k not in fields:
                fields.append(k)
    tmp = a.out + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, a.out)
    print(f"{len(rows)} launches -> {a.out}")


if __name__ == "__main__":
    cli()
