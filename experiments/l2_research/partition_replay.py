"""The two L2 partitions on the measured schedules (no GPU; a C compiler, ~4 min on 2 cores).

    python experiments/l2_research/partition_replay.py --out DIR
                                                # -> DIR/gpu_partition_replay.csv

Replays every traced launch of up to 2^19 query rows x heads (gpu_traced*.npz: each block's
start, end and SM, from the same ncu run as its DRAM counters) through a cache of two
partitions: the SM ids of the trace give each block's L2 side by a measured latency map
(iosim.l2.partitions.split of gpu_l2_latency.npz, machine 1, and gpu_l2_latency_2.npz,
machine 2: the map differs between machines; gpu_traced_round6 was traced on machine 2), half
of every K/V tile, Q tile and O tile lives in each partition, a
block's touch refreshes both halves where they live and a copy of the far half on its own side,
and a half is read from DRAM with the measured shared-scan miss fraction of its distance in
its own partition (experiments/l2_research/csrc/partition_replay.c: exact LRU distances per key block, one
touch per key block, placed evenly between a block's start and end; no chunks, no fetches in
flight). Against the counters, next to the readers-rule replay (iosim.l2.replay: the recorded
gpu_replay*.csv, computed here for gpu_traced_round6) and the same partitions with every SM put on one
side (the control: what the side map adds). Nothing here is fitted.
"""
from __future__ import annotations

import csv
import os
import subprocess
import tempfile

import numpy as np

from _util import CSRC, DATA, out_path, parser, pmap  # first: the repository root onto sys.path
from iosim.gpu.validate import write_csv  # noqa: E402
from iosim.l2.partitions import side_of, split  # noqa: E402
from iosim.l2.replay import replay_dram  # noqa: E402
from iosim.l2.simulate import MIB, SCAN_SHARED, Workload, _blocks  # noqa: E402

SRC = os.path.join(CSRC, "partition_replay.c")


def build(tmp: str, src: str = SRC) -> str:
    """Compile the C helper ``src`` into ``tmp``; its path."""
    exe = os.path.join(tmp, os.path.splitext(os.path.basename(src))[0])
    subprocess.run(["cc", "-O2", "-o", exe, src], check=True)
    return exe


def events(w: Workload, tr: np.ndarray, side: np.ndarray):
    """(tile, side, bytes, kind) in time order: K/V tiles at even pace, Q at the start, O at
    the end of each block."""
    t0 = tr[:, 0].min()
    s = (tr[:, 0] - t0).astype(np.float64)
    e = (tr[:, 1] - t0).astype(np.float64)
    H, _, NK = _blocks(w)
    nb, nkv = len(H), w.n_kv_blocks
    b = np.repeat(np.arange(nb), NK)
    x = np.arange(len(b)) - np.repeat(np.cumsum(NK) - NK, NK)
    t = s[b] + (e[b] - s[b]) * x / np.maximum(NK[b], 1)
    n_kv_tiles = w.batch * w.heads * nkv
    tile = np.concatenate([H[b] * nkv + x, n_kv_tiles + np.arange(nb),
                           n_kv_tiles + nb + np.arange(nb)])
    when = np.concatenate([t, s, e])
    kind = np.concatenate([np.zeros(len(b)), np.ones(nb), np.full(nb, 2.0)])
    nbytes = np.concatenate([np.full(len(b), 2 * w.block_n * w.head_dim * w.elem_bytes),
                             np.full(2 * nb, w.block_m * w.head_dim * w.elem_bytes)])
    sides = np.concatenate([side[b], side, side])
    o = np.lexsort((kind, when))
    ev = np.c_[tile[o], sides[o], nbytes[o], (kind[o] == 0)].astype(np.int64)
    return ev, n_kv_tiles + 2 * nb


def run_events(exe: str, ev: np.ndarray, n_tiles: int, extra=()) -> float:
    """The K/V DRAM bytes a C helper counts for events ``ev`` (its arguments: the events file,
    ``n_tiles``, ``extra``, then the shared-scan response as byte / miss-fraction pairs)."""
    curve = [f"{v:.6g}" for x, y in SCAN_SHARED for v in (x * 50 * MIB, y)]
    with tempfile.NamedTemporaryFile(suffix=".bin") as f:
        np.asarray(ev, dtype=np.int64).tofile(f.name)
        out = subprocess.run([exe, f.name, str(n_tiles), *map(str, extra)] + curve, check=True,
                             capture_output=True, text=True).stdout.split()
    return float(out[0])


def replay(exe: str, w: Workload, tr: np.ndarray, side: np.ndarray) -> float:
    """Predicted DRAM read bytes of launch ``w`` on its measured schedule ``tr``: Q once plus
    the K/V misses the helper counts."""
    ev, n_tiles = events(w, tr, side)
    return run_events(exe, ev, n_tiles) + \
        w.batch * w.heads * w.seq_q * w.head_dim * w.elem_bytes


def side_maps() -> dict:
    """Side A of each latency map (the first launch of each file)."""
    out = {}
    for name, f in (("map1", "gpu_l2_latency.npz"), ("map2", "gpu_l2_latency_2.npz")):
        sp = split(np.load(os.path.join(DATA, f))["chain_0"])
        out[name] = tuple(int(x) for x in np.flatnonzero(sp.sm_side == 0))
    return out


def one(job) -> dict:
    exe, traced, r, readers, maps = job
    w = Workload(int(r["batch"]), int(r["heads"]), int(r["seq"]), int(r["seq"]),
                 int(r["head_dim"]), causal=r["causal"] == "True", grid_order=r["grid_order"])
    tr = np.load(os.path.join(DATA, f"{traced}.npz"))[r["trace_key"]]
    meas = float(r["dram_read_bytes"])
    if readers is None:
        readers = replay_dram(w, tr)["dram_read_bytes"]
    sm = tr[:, 2].astype(np.int64)
    out = {"launch": r["trace_key"], "traced": traced, "meas_dram_read_bytes": meas,
           "qkv_bytes": 3 * w.batch * w.heads * w.seq_q * w.head_dim * w.elem_bytes,
           "readers_replay": round(readers)}
    for name, side_a in maps.items():
        out[f"partitions_{name}"] = round(replay(exe, w, tr, side_of(sm, side_a)))
    out["partitions_one_side"] = round(replay(exe, w, tr, np.zeros(len(sm), dtype=np.int64)))
    for k in [k for k in out if k.startswith(("partitions", "readers"))]:
        out[f"err_{k}"] = out[k] / meas - 1
    return out


def main(argv=None) -> int:
    a = parser(__doc__).parse_args(argv)
    maps = side_maps()
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(tmp)
        jobs = []
        for traced, rec in (("gpu_traced", "gpu_replay"), ("gpu_traced_rounds", "gpu_replay_rounds"),
                            ("gpu_traced_round6", None), ("gpu_traced_rounds78", None)):
            readers = {r["launch"]: float(r["replay_meas"])
                       for r in csv.DictReader(open(os.path.join(DATA, f"{rec}.csv")))} if rec else {}
            for r in csv.DictReader(open(os.path.join(DATA, f"{traced}.csv"))):
                if int(r["batch"]) * int(r["heads"]) * int(r["seq"]) <= 2 ** 19:
                    jobs.append((exe, traced, r, readers.get(r["trace_key"]), maps))
        rows = pmap(one, jobs, "replay", a.workers)
    path = out_path(a.out, "gpu_partition_replay.csv")
    write_csv(rows, path)
    for sel, label in ((lambda r: r["traced"] not in ("gpu_traced_round6", "gpu_traced_rounds78"),
                        "earlier traces"),
                       (lambda r: r["traced"] == "gpu_traced_round6", "round 6 (machine 2)"),
                       (lambda r: r["traced"] == "gpu_traced_rounds78", "rounds 7-8")):
        part = [r for r in rows if sel(r)]
        for c in ("partitions_map1", "partitions_map2", "partitions_one_side", "readers_replay"):
            e = np.array([r[f"err_{c}"] for r in part])
            print(f"{label:20s} {c:20s} within 15%: {int((abs(e) <= 0.15).sum())} of {len(e)}, "
                  f"within 5%: {int((abs(e) <= 0.05).sum())}, mean |error| {abs(e).mean():.1%}")
    print("wrote", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
