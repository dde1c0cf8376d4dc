"""A thread block's time: a fixed startup plus a time per key block, from the measured block
traces (no GPU; seconds).

    python experiments/l2_research/block_time.py --out DIR      # -> DIR/gpu_block_time.csv

The dynamic L2 model (iosim.l2.simulate) used to run a block through its key blocks at one rate per
head dim, fitted to whole-block durations of 8K-32K-key launches, so the time a block spends
before its first key block (launch, its Q tile and first K/V tiles loaded and waited for) was
spread over its key blocks. The marked traces (gpu_marks_*.npz) show that time directly: 2.5-3.9
us from a block's start to the start of its first key block, whatever the launch's length. A
causal launch's blocks differ in length, so one launch gives both numbers: duration = startup +
key blocks x time per key block, fitted over its blocks (the first two waves left out: they
start together and share the DRAM).

Used, from traced launches that are **not** among the 34 validated ones (their DRAM counts are
never looked at here):

* d=128, causal query-major (one block per SM, K/V mostly L2 hits): the startup and the time
  per key block of causal launches -- the median over the launches;
* d=128, non-causal (every block the same length): time per key block = (median duration -
  startup) / key blocks, launches whose DRAM reads average under 5% of the bandwidth (no DRAM
  waits);
* d=64, non-causal, the same launches (two blocks per SM): key blocks per us of the older and
  the younger of two computing blocks and of one computing alone (a block computes from its
  startup's end), least squares over the blocks as iosim.l2.microbench.fit_traces does
  without the startup.
"""
from __future__ import annotations

import csv
import os
import re

import numpy as np

from _util import DATA, out_path, parser  # first: the repository root onto sys.path
from iosim.gpu.validate import write_csv  # noqa: E402
from iosim.l2.microbench import _shares  # noqa: E402

#: the traced launch sets (npz of block traces, csv of the same launches' counters)
TRACED = ("gpu_traced", "gpu_traced_rounds", "gpu_traced_round6", "gpu_traced_rounds78",
          "gpu_query_cliff", "gpu_query_heads")
SMS = 132
BLOCK_N = 64
DRAM_BYTES_PER_US = 3.0e6        # the H100's 3.0 TB/s (h100.md)
#: launches whose DRAM reads average less than this share of the bandwidth: no DRAM waits
QUIET = 0.05


def validated_shapes() -> set:
    """(batch, heads, seq, head_dim) of the 34 validated launches."""
    return {(int(r["batch"]), int(r["heads"]), int(r["seq"]), int(r["head_dim"]))
            for r in csv.DictReader(open(os.path.join(DATA, "gpu_validation.csv")))
            if r["impl"] == "generated"}


def launch_rows():
    """Every traced launch outside the validation set: (set, key, shape, causal, order, trace,
    its DRAM reads' average share of the DRAM bandwidth)."""
    skip = validated_shapes()
    for name in TRACED:
        z = np.load(os.path.join(DATA, f"{name}.npz"))
        for r in csv.DictReader(open(os.path.join(DATA, f"{name}.csv"))):
            key = r["trace_key"]
            b, h, n, d = (int(x) for x in re.match(r"(\d+)x(\d+)x(\d+)x(\d+)", key).groups())
            if (b, h, n, d) in skip or key not in z:
                continue
            tr = z[key].astype(np.int64)
            span_us = (tr[:, 1].max() - tr[:, 0].min()) / 1e3
            yield (name, key, (b, h, n, d), r["causal"] == "True", r["grid_order"], tr,
                   float(r["dram_read_bytes"]) / span_us / DRAM_BYTES_PER_US)


def fit(trace: np.ndarray, skip_waves: int = 2) -> tuple[float, float, float]:
    """(startup us, us per key block, residual sd us) of duration = startup + key blocks x
    rate over the blocks after the first ``skip_waves`` waves (by start time)."""
    dur = (trace[:, 1] - trace[:, 0]) / 1e3
    kb = np.ceil(trace[:, 3] / BLOCK_N)
    later = np.argsort(trace[:, 0], kind="stable")[skip_waves * SMS:]
    a = np.c_[np.ones(len(later)), kb[later]]
    coef, *_ = np.linalg.lstsq(a, dur[later], rcond=None)
    return float(coef[0]), float(coef[1]), float((dur[later] - a @ coef).std())


def pair_rates(trace: np.ndarray, startup: float) -> tuple[float, float, float]:
    """Key blocks per us of the older and the younger of two computing blocks on an SM and of a
    block computing alone, where a block computes from ``startup`` us after its start to its
    end (least squares over the blocks, each one's time split into those three states)."""
    s = (trace[:, 0] - trace[:, 0].min()) / 1e3
    e = (trace[:, 1] - trace[:, 0].min()) / 1e3
    c = np.minimum(s + startup, e)                  # when it begins computing
    tiles = np.ceil(trace[:, 3] / BLOCK_N)
    older, younger, alone = _shares(s, e, trace[:, 2], begin=c)
    a = np.c_[older, younger, alone]
    coef, *_ = np.linalg.lstsq(a, tiles, rcond=None)
    return float(coef[0]), float(coef[1]), float(coef[2])


def table() -> tuple[list[dict], dict]:
    """Per-launch rows and the constants (startup, us per key block by case)."""
    rows = []
    launches = list(launch_rows())
    for name, key, (b, h, n, d), causal, order, tr, over in launches:
        if d == 128 and causal and order == "query-major" and len(tr) >= 4 * SMS:
            a, k, sd = fit(tr)
            rows.append({"set": name, "launch": key, "head_dim": d, "causal": True,
                         "grid_order": order, "dram_utilisation": round(over, 3),
                         "case": "d128 causal", "startup_us": round(a, 3),
                         "us_per_key_block": round(k, 4), "residual_sd_us": round(sd, 2)})
    startup = float(np.median([r["startup_us"] for r in rows]))
    causal128 = float(np.median([r["us_per_key_block"] for r in rows]))
    for name, key, (b, h, n, d), causal, order, tr, over in launches:
        if causal or over > QUIET:
            continue
        row = {"set": name, "launch": key, "head_dim": d, "causal": False, "grid_order": order,
               "dram_utilisation": round(over, 4), "case": f"d{d} non-causal",
               "startup_us": round(startup, 3)}
        if d == 128:
            dur = (tr[:, 1] - tr[:, 0]) / 1e3
            later = np.argsort(tr[:, 0], kind="stable")[SMS:]
            row["us_per_key_block"] = round((float(np.median(dur[later])) - startup) /
                                            (n // BLOCK_N), 4)
        else:
            older, younger, alone = pair_rates(tr, startup)
            row.update({"older_key_blocks_per_us": round(older, 4),
                        "younger_key_blocks_per_us": round(younger, 4),
                        "alone_key_blocks_per_us": round(alone, 4),
                        "older_share": round(older / (older + younger), 4)})
        rows.append(row)
    d64 = [r for r in rows if r["case"] == "d64 non-causal"]
    consts = {"startup_us": startup, "d128 causal": causal128,
              "d128 non-causal": float(np.median([r["us_per_key_block"] for r in rows
                                                  if r["case"] == "d128 non-causal"])),
              "d64 older+younger key blocks per us": float(np.median(
                  [r["older_key_blocks_per_us"] + r["younger_key_blocks_per_us"] for r in d64])),
              "d64 alone key blocks per us": float(np.median(
                  [r["alone_key_blocks_per_us"] for r in d64])),
              "d64 older share": float(np.median([r["older_share"] for r in d64]))}
    return rows, consts


def main(argv=None) -> int:
    a = parser(__doc__, workers=None).parse_args(argv)
    rows, consts = table()
    path = out_path(a.out, "gpu_block_time.csv")
    write_csv(rows, path)
    for r in rows:
        rate = (f"{r['us_per_key_block']:.4f} us/key block" if "us_per_key_block" in r else
                f"key blocks/us older {r['older_key_blocks_per_us']:.4f} younger "
                f"{r['younger_key_blocks_per_us']:.4f} alone {r['alone_key_blocks_per_us']:.4f}")
        print(f"{r['case']:16s} {r['launch']:42s} DRAM {r['dram_utilisation']:5.1%}  "
              f"startup {r['startup_us']:6.3f} us  {rate}")
    print("medians:", {k: round(v, 4) for k, v in consts.items()})
    print("wrote", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
