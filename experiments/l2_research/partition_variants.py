"""How does a far-side read treat the copy on its side? Four variants of the two-partition cache
response, against the L2 microbenchmarks and the measured attention schedules (no GPU; a C
compiler, ~3 min on 2 cores).

    python experiments/l2_research/partition_variants.py --out DIR
                                                # -> DIR/gpu_partition_variants.csv

The variants (experiments/l2_research/csrc/partition_variants.c): ``refresh`` (the model's:
every read touches both halves where they live and a copy of the far half on the reader's
side), ``copy-serves`` (a far-side read served by its side's copy does not touch the home
half), ``copy-on-fill`` (copies are left only when a far-side read fills the home half from
DRAM or merges into such a fill; hits never refresh them), ``half-refresh`` (as copy-on-fill,
and a far-side hit refreshes the copy with probability 0.5). All use the measured shared-scan
response per partition; nothing is fitted.

Microbenchmarks are replayed as synthetic event streams (132 blocks, one per SM, L2 sides by
the model's dispatch order and side map, even pace: every block reads its next 64 KiB tile in
turn), against the recorded re-read miss fractions: private scan (gpu_l2scan.csv, 2 passes),
rotate, readers in lock step and one after another (gpu_l2rotate.csv, 4 passes), mix
(gpu_l2mix.csv), the hot set + stream test (gpu_l2hot.csv: 32 blocks on alternating sides,
streams of 8 MiB and more), and the shared scan (32 blocks, sides alternating: the calibration; and on the
first 32 SMs of the model's dispatch order, which are all on side A). Attention:
every traced launch of up to 2^19 query rows x heads, the one-head query-major cliff
(gpu_query_cliff) and the causal query-major launches of 1-8 heads traced on one machine
(gpu_query_heads: its latency map, gpu_l2_latency_4.npz, is the first machine's), replayed on its measured schedule as
experiments/l2_research/partition_replay.py does.
"""
from __future__ import annotations

import csv
import os
import sys
import tempfile

import numpy as np

from _util import CSRC, DATA, out_path, parser, pmap  # first: the repository root onto sys.path
from iosim.gpu.validate import write_csv  # noqa: E402
from iosim.l2.partitions import side_of  # noqa: E402
from iosim.l2.simulate import DISPATCH_ORDER, L2_SIDE_A, MIB, Workload  # noqa: E402
from partition_replay import build, events, run_events, side_maps  # noqa: E402

SRC = os.path.join(CSRC, "partition_variants.c")
VARIANTS = ("refresh", "copy-serves", "copy-on-fill", "half-refresh")
TILE = 64 * 1024
SMS = 132
#: L2 side of block i of a one-block-per-SM launch (the model's dispatch order and side map)
DISPATCH_SIDE = np.array([0 if DISPATCH_ORDER[i] in L2_SIDE_A else 1 for i in range(SMS)])


def run(exe: str, ev: np.ndarray, n_tiles: int, variant: int) -> float:
    return run_events(exe, ev, n_tiles, (variant,))


def stream(lists, side) -> list:
    """Events of blocks that read their lists of tiles in step (one tile each in turn)."""
    ev = []
    for i in range(max(len(x) for x in lists)):
        for b, x in enumerate(lists):
            if i < len(x):
                ev.append((int(x[i]), int(side[b]), TILE, 1))
    return ev


def passes(mib: int, n_pass: int, tiles_of, side=DISPATCH_SIDE):
    n = int(mib * MIB // TILE)
    ev = []
    for p in range(n_pass):
        ev += stream([tiles_of(b, p, n) for b in range(SMS)], side)
    return np.array(ev), n


def private(b, p, n):
    return np.arange(b, n, SMS)


def rotate(shift):
    return lambda b, p, n: np.arange((b + p * shift) % SMS, n, SMS)


def readers(k, stagger):
    groups = SMS // k

    def tiles(b, p, n):
        if b >= groups * k:
            return np.zeros(0, dtype=np.int64)
        t = np.arange(b // k, n, groups)
        off = ((b % k) * len(t) // k) * stagger
        return t[(np.arange(len(t)) + off) % len(t)]
    return tiles


def shared(b, p, n):
    return np.arange(n) if b < 32 else np.zeros(0, dtype=np.int64)


def mix(hot: int, cold: int, rounds: int = 8, epochs: int = 2):
    na, nc = int(hot * MIB // TILE), int(cold * MIB // TILE)
    ev = []
    for _ in range(epochs):
        for r in range(rounds):
            ev += stream([np.arange(b, na, SMS) for b in range(SMS)], DISPATCH_SIDE)
            ev += stream([na + np.arange(b, nc, SMS)[r::rounds] for b in range(SMS)],
                         DISPATCH_SIDE)
    return np.array(ev), na + nc


def hot_stream(hot: int, st: int, blocks: int = 32):
    """The hot/stream microbenchmark (iosim.l2.microbench.hotstream, gpu_l2hot.csv): 32 blocks
    on alternating sides read the hot set in step, then a stream read once (each tile by one
    block), then the hot set again."""
    nh, ns = int(hot * MIB // TILE), int(st * MIB // TILE)
    side = np.arange(blocks) % 2
    ev = stream([np.arange(nh)] * blocks, side)
    ev += stream([nh + np.arange(b, ns, blocks) for b in range(blocks)], side)
    ev += stream([np.arange(nh)] * blocks, side)
    return np.array(ev), nh + ns


def micro_cases():
    """(family, case, measured miss fraction, events, tiles, normalise(dram) -> fraction)."""
    meas = {}
    for r in csv.DictReader(open(os.path.join(DATA, "gpu_l2scan.csv"))):
        meas[("scan", r["mode"], int(r["mib"]))] = float(r["miss_fraction"])
    for r in csv.DictReader(open(os.path.join(DATA, "gpu_l2rotate.csv"))):
        meas[("rotate", int(r["shift"]), int(r["readers"]), int(r["stagger"]), int(r["mib"]))] = \
            float(r["miss_fraction"])
    for r in csv.DictReader(open(os.path.join(DATA, "gpu_l2mix.csv"))):
        meas[("mix", int(r["hot_mib"]), int(r["cold_mib"]))] = float(r["cold_miss_fraction"])
    hot_rows = [r for r in csv.DictReader(open(os.path.join(DATA, "gpu_l2hot.csv")))
                if int(r["stream_mib"]) >= 8]

    def rereads(mib, n_pass):
        return lambda d: (d - mib * MIB) / (mib * MIB * (n_pass - 1))
    alternate = np.arange(SMS) % 2
    for mib in (24, 26, 28, 30):
        ev, n = passes(mib, 2, shared, alternate)
        yield "shared scan (calibration)", f"{mib} MiB", meas[("scan", "shared", mib)], ev, n, \
            rereads(mib, 2)
        # the same 32 blocks on the SMs of the model's first-wave dispatch order: all side A
        ev, n = passes(mib, 2, shared)
        yield "shared scan, 32 blocks by DISPATCH_ORDER", f"{mib} MiB", \
            meas[("scan", "shared", mib)], ev, n, rereads(mib, 2)
    for mib in (32, 36, 40):
        ev, n = passes(mib, 2, private)
        yield "one reader", f"private scan {mib} MiB", meas[("scan", "private", mib)], ev, n, \
            rereads(mib, 2)
        for shift in (0, 1, 66):
            ev, n = passes(mib, 4, rotate(shift))
            yield "one reader", f"rotate shift {shift} {mib} MiB", \
                meas[("rotate", shift, 1, 0, mib)], ev, n, rereads(mib, 4)
        for k in (4, 12, 33):
            for stagger, fam in ((0, "k readers in lock step"), (1, "k readers one after another")):
                ev, n = passes(mib, 4, readers(k, stagger))
                yield fam, f"k={k} {mib} MiB", meas[("rotate", 0, k, stagger, mib)], ev, n, \
                    rereads(mib, 4)
    for r in hot_rows:
        hot, st = int(r["hot_mib"]), int(r["stream_mib"])
        yield "hot set + stream", f"{hot}+{st} MiB", float(r["hot_reread_miss_fraction"]), \
            *hot_stream(hot, st), (lambda d, a=hot, c=st: (d - (a + c) * MIB) / (a * MIB))
    for hot, cold in ((8, 24), (8, 28), (8, 32), (16, 20), (16, 24), (16, 28)):
        ev, n = mix(hot, cold)
        yield "mix (hot + cold)", f"{hot}+{cold} MiB", meas[("mix", hot, cold)], ev, n, \
            (lambda d, a=hot, c=cold: (d - (a + c) * MIB) / (c * MIB))


def micro_row(job, columns, dram) -> dict:
    """A microbenchmark case's row: the re-read miss fraction of each column c, from
    ``dram(exe, events, n_tiles, c)`` (DRAM bytes)."""
    exe, fam, case, m, ev, n, norm = job
    row = {"kind": "microbenchmark", "family": fam, "case": case, "measured": m}
    for c in columns:
        row[c] = round(norm(dram(exe, ev, n, c)), 4)
    return row


def replay_row(job, columns, dram) -> dict:
    """A measured launch's row: the error of each column c against its counters, Q read once
    plus ``dram(exe, events, n_tiles, c)``."""
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
    for c in columns:
        row[c] = round((dram(exe, ev, n, c) + q) / meas - 1, 4)
    return row


def _variant_dram(exe, ev, n, v) -> float:
    return run(exe, ev, n, VARIANTS.index(v))


def one_micro(job) -> dict:
    return micro_row(job, VARIANTS, _variant_dram)


def one_replay(job) -> dict:
    return replay_row(job, VARIANTS, _variant_dram)


def replay_jobs(exe: str):
    maps = side_maps()
    for traced in ("gpu_traced", "gpu_traced_rounds", "gpu_traced_round6",
                   "gpu_traced_rounds78", "gpu_query_cliff", "gpu_query_heads"):
        for r in csv.DictReader(open(os.path.join(DATA, f"{traced}.csv"))):
            if traced in ("gpu_query_cliff", "gpu_query_heads") or \
                    int(r["batch"]) * int(r["heads"]) * int(r["seq"]) <= 2 ** 19:
                yield exe, traced, r, maps["map2" if traced == "gpu_traced_round6" else "map1"]


def summary(rows, columns=VARIANTS) -> list[str]:
    """Per family: mean |miss - measured| (microbenchmarks) or launches within 15% (replays)
    of each column."""
    out = []
    for kind in ("microbenchmark", "attention replay"):
        sel = [r for r in rows if r["kind"] == kind]
        for fam in dict.fromkeys(r["family"] for r in sel):
            part = [r for r in sel if r["family"] == fam]
            if kind == "microbenchmark":
                cells = [f"{np.mean([abs(r[v] - r['measured']) for r in part]):.3f}"
                         for v in columns]
                out.append(f"{fam:38s} mean |miss - measured|  " + "  ".join(cells))
            else:
                cells = [f"{sum(abs(r[v]) <= 0.15 for r in part):3d}/{len(part):<3d}"
                         for v in columns]
                out.append(f"{fam:38s} within 15%  " + "  ".join(cells))
        if kind == "attention replay":
            cells = [f"{sum(abs(r[v]) <= 0.15 for r in sel):3d}/{len(sel):<3d}" for v in columns]
            out.append(f"{'all attention replays':38s} within 15%  " + "  ".join(cells))
    return out


def run_table(src: str, path: str, columns, micro_fn, replay_fn,
              workers: int = 2) -> list[dict]:
    """Compile the C helper ``src``, make every microbenchmark row (``micro_fn``) and every
    replay row (``replay_fn``, ``workers`` processes), write the CSV ``path`` and print the
    summary of ``columns``."""
    from tqdm import tqdm
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(tmp, src)
        micro = [(exe, *c) for c in micro_cases()]
        rows = [micro_fn(j) for j in tqdm(micro, desc="microbenchmarks", file=sys.stderr)]
        rows += pmap(replay_fn, list(replay_jobs(exe)), "replays", workers)
    write_csv(rows, path)
    print(f"{'':38s} {'':22s}" + "  ".join(f"{v:>12s}" for v in columns))
    print("\n".join(summary(rows, tuple(columns))))
    print("wrote", path)
    return rows


def main(argv=None) -> int:
    a = parser(__doc__).parse_args(argv)
    run_table(SRC, out_path(a.out, "gpu_partition_variants.csv"), VARIANTS, one_micro,
              one_replay, a.workers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
