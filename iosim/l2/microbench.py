"""Microbenchmarks that measure the facts the L2 model (:mod:`iosim.l2.simulate`) needs, on shapes
and access patterns that are NOT the validated attention launches.

    python -m iosim.l2.microbench scan  --out DIR    # L2 survival curve (under ncu)
    python -m iosim.l2.microbench trace --out DIR    # thread-block schedules (globaltimer)
    python -m iosim.l2.microbench readers --out DIR  # L2 cost of a line by its readers (ncu)
    python -m iosim.l2.microbench sides --out DIR    # the same, read by one GPC's SMs (ncu)
    python -m iosim.l2.microbench fetch --out DIR    # key-block time from DRAM vs L2
    python -m iosim.l2.microbench follow --out DIR   # the same, leader vs follower, one moment
    python -m iosim.l2.microbench mix --out DIR      # two re-read distances at once (ncu)
    python -m iosim.l2.microbench traced --out DIR   # block schedule + counters, same run

**scan** — how much of a cyclically re-read buffer of W bytes survives in L2. Thread blocks
read a bf16 buffer ``passes`` times in the same order; ``shared``: 32 blocks each read every
tile (each line is read by many blocks, as K and V are in an attention kernel), ``private``:
132 blocks, block b reads tiles b, b+132, ... (each line by one SM). Nsight
Compute (caches flushed before the launch) counts DRAM reads; the miss fraction of a re-read
is ``(DRAM - W) / ((passes - 1) W)``, a function of the reuse distance W. This is the L2's
response to reuse distance: its effective capacity for lines every block reads, and
how sharp the capacity cliff is (all or nothing under LRU).

**trace** — the generated attention kernel compiled with ``Tiling(trace=True)`` writes, for
each thread block, its start and end time (``%globaltimer``, ns) and its SM; run on shapes
outside the validation set, in both grid orders. From these: how many blocks run at once,
the order blocks start in, and how fast a block goes through its key blocks when its K/V
tiles come from L2 and when they come from DRAM, and whether co-resident blocks of one SM
progress at equal rates.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

MIB = 1 << 20
SCAN_TILE = 4096            # bf16 elements per load (8 KiB)
SCAN_SIZES_MIB = (8, 16, 20, 22, 24, 26, 28, 30, 32, 36, 40, 48, 64)
SCAN_PRIVATE_MIB = (16, 24, 28, 32, 36, 40, 48, 64)
SCAN_PASSES = 2
SCAN_SHARED_BLOCKS = 32     # each reads the whole buffer


def _scan_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def iosim_l2scan(X, OUT, n_tiles, passes, NPROG, PRIVATE: tl.constexpr, TILE: tl.constexpr):
        pid = tl.program_id(0)
        offs = tl.arange(0, TILE)
        acc = tl.zeros([TILE], dtype=tl.float32)
        if PRIVATE:
            first = pid
            step = NPROG
        else:
            first = 0
            step = 1
        for r in range(passes):
            for t in range(first, n_tiles, step):
                acc += tl.load(X + t * TILE + offs).to(tl.float32)
        tl.store(OUT + pid * TILE + offs, acc)
    return iosim_l2scan


HOT_MIB = 16
STREAM_MIB = (0, 4, 8, 12, 16, 20, 24, 32, 48)


def _hotstream_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def iosim_hotstream(X, Y, OUT, hot_tiles, stream_tiles, NPROG, TILE: tl.constexpr,
                        WRITE: tl.constexpr):
        """Read the hot set (every block), then the block's share of the stream: read from X
        (WRITE=False) or written to Y (WRITE=True), then the hot set again."""
        pid = tl.program_id(0)
        offs = tl.arange(0, TILE)
        acc = tl.zeros([TILE], dtype=tl.float32)
        for t in range(0, hot_tiles):
            acc += tl.load(X + t * TILE + offs).to(tl.float32)
        for t in range(pid, stream_tiles, NPROG):
            if WRITE:
                tl.store(Y + t * TILE + offs, (acc + t).to(tl.bfloat16))
            else:
                acc += tl.load(X + (hot_tiles + t) * TILE + offs).to(tl.float32)
        for t in range(0, hot_tiles):
            acc += tl.load(X + t * TILE + offs).to(tl.float32)
        tl.store(OUT + pid * TILE + offs, acc)
    return iosim_hotstream


#: the write test: the hot/stream test with the stream read or written, on one machine
HOTWRITE_STREAM_MIB = (0, 4, 8, 12, 16, 20, 24, 32)


# ------------------------------------------------------- running a test under Nsight Compute
def _profile_session(plan_path: str):
    """For the scripts ncu runs: the plan's configurations, and ``launch(kern, grid, *args,
    **kw)`` that warms a launch up with the profiler off, then profiles [marker, the launch]."""
    import torch
    from iosim.gpu import runner
    plan = json.loads(Path(plan_path).read_text())
    marker = runner._marker()
    marker()
    cudart = torch.cuda.cudart()

    def profiled(fn):
        fn()
        runner.profiled(fn, marker, cudart)

    def launch(kern, grid, *args, **kw):
        profiled(lambda: kern[grid](*args, **kw))
    launch.profiled = profiled
    return plan["configs"], launch


def _end_session(plan_path: str, done: list) -> None:
    Path(plan_path + ".done.json").write_text(json.dumps({"done": done}))


def _under_ncu(out_dir: str, name: str, what: str, configs: list[dict], metrics: list[str]):
    """Run ``python -m iosim.l2.microbench WHAT-profile`` on ``configs`` under ncu (caches
    flushed before each profiled launch); per configuration the kernels after its marker,
    and what the profile script recorded as done."""
    from iosim.gpu import ncu
    from iosim.errors import IosimError
    work = Path(out_dir) / f"{what}_work"
    work.mkdir(parents=True, exist_ok=True)
    plan = work / "plan.json"
    plan.write_text(json.dumps({"configs": configs}))
    log = work / "ncu.csv"
    cmd = [ncu.find_ncu(), "--profile-from-start", "off", "--metrics", ",".join(metrics),
           "--csv", "--print-units", "base", "--clock-control", "none", "--cache-control", "all",
           "--log-file", str(log), sys.executable, "-m", "iosim.l2.microbench",
           f"{what}-profile", "--plan", str(plan)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    (work / "stdout.txt").write_text(r.stdout + "\n--- stderr ---\n" + r.stderr)
    if r.returncode != 0:
        raise IosimError(f"ncu failed on the {name}: {(r.stderr or r.stdout)[-300:]}")
    groups = ncu.group_by_marker(ncu.parse_csv(log.read_text()))
    done = json.loads(Path(str(plan) + ".done.json").read_text())["done"]
    return groups, done


def _reread_row(summary: dict, w: float, passes: int = SCAN_PASSES) -> dict:
    """DRAM bytes, L2 reads and time of a launch that reads ``w`` bytes ``passes`` times,
    and the miss fraction of the re-reads."""
    dram = summary.get("dram_read_bytes") or 0.0
    return {"passes": passes, "dram_read_bytes": dram,
            "l2_tex_read_bytes": summary.get("l2_tex_read_bytes"),
            "time_ns": summary.get("time_ns"),
            "miss_fraction": (dram - w) / ((passes - 1) * w)}


def _per_sm_profile(plan_path: str, kern, max_mib: int, passes: int, label: str,
                    extra=lambda c: ()) -> None:
    """The script ncu runs for the per-SM re-read tests: one block per SM re-reads
    ``c["mib"]`` of a buffer ``passes`` times (``kern(X, OUT, SMS, n_tiles, passes, NPROG,
    *extra(c))``); records how many distinct SMs the blocks ran on."""
    import torch
    configs, launch = _profile_session(plan_path)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    big = torch.randn(max_mib * MIB // 2, device="cuda", dtype=torch.bfloat16)
    out = torch.empty(sms * SCAN_TILE, device="cuda", dtype=torch.float32)
    sm_ids = torch.zeros(sms, device="cuda", dtype=torch.int32)
    done = []
    for i, c in enumerate(configs):
        launch(kern, (sms,), big, out, sm_ids, c["mib"] * MIB // 2 // SCAN_TILE, passes, sms,
               *extra(c), TILE=SCAN_TILE, num_warps=8)
        done.append({"i": i, "distinct_sms": len(set(sm_ids.cpu().tolist()))})
        print(f"{label} {c}", flush=True)
    _end_session(plan_path, done)


def _hotstream_profile(plan_path: str) -> None:
    import torch
    configs, launch = _profile_session(plan_path)
    kern = _hotstream_kernel()
    big = torch.randn((HOT_MIB + max(STREAM_MIB)) * MIB // 2, device="cuda",
                      dtype=torch.bfloat16)
    out = torch.empty(SCAN_SHARED_BLOCKS * SCAN_TILE, device="cuda", dtype=torch.float32)
    for c in configs:
        launch(kern, (SCAN_SHARED_BLOCKS,), big, big, out, c["hot"] * MIB // 2 // SCAN_TILE,
               c["stream"] * MIB // 2 // SCAN_TILE, SCAN_SHARED_BLOCKS, TILE=SCAN_TILE,
               WRITE=False, num_warps=8)
    _end_session(plan_path, list(range(len(configs))))


def _hotwrite_profile(plan_path: str) -> None:
    import torch
    configs, launch = _profile_session(plan_path)
    kern = _hotstream_kernel()
    big = torch.randn((HOT_MIB + max(HOTWRITE_STREAM_MIB)) * MIB // 2, device="cuda",
                      dtype=torch.bfloat16)
    dst = torch.empty(max(HOTWRITE_STREAM_MIB) * MIB // 2 + SCAN_TILE, device="cuda",
                      dtype=torch.bfloat16)
    out = torch.empty(SCAN_SHARED_BLOCKS * SCAN_TILE, device="cuda", dtype=torch.float32)
    for c in configs:
        launch(kern, (SCAN_SHARED_BLOCKS,), big, dst, out, c["hot"] * MIB // 2 // SCAN_TILE,
               c["stream"] * MIB // 2 // SCAN_TILE, SCAN_SHARED_BLOCKS, TILE=SCAN_TILE,
               WRITE=c["mode"] == "write", num_warps=8)
    _end_session(plan_path, list(range(len(configs))))


def hotwrite(out_dir: str) -> list[dict]:
    """The hot/stream test with the stream read (each line by one block) or written (each
    line by one block, never read): how much of the hot set does a written byte push out,
    against a read one? The miss fraction counts the hot re-read's DRAM reads only (written
    lines are not read from DRAM)."""
    from iosim.gpu import ncu
    configs = [{"hot": HOT_MIB, "stream": s, "mode": m} for m in ("read", "write")
               for s in HOTWRITE_STREAM_MIB]
    groups, _ = _under_ncu(out_dir, "hot/write test", "hotwrite", configs,
                           ["dram__bytes_read.sum", "dram__bytes_write.sum",
                            "gpu__time_duration.sum"])
    rows = []
    for c, g in zip(configs, groups):
        sm = ncu.summarize(g)
        dram = sm.get("dram_read_bytes") or 0.0
        hot, stream = c["hot"] * MIB, c["stream"] * MIB
        read_once = hot + (stream if c["mode"] == "read" else 0)
        rows.append({"mode": c["mode"], "hot_mib": c["hot"], "stream_mib": c["stream"],
                     "dram_read_bytes": dram, "dram_write_bytes": sm.get("dram_write_bytes"),
                     "hot_reread_miss_fraction": (dram - read_once) / hot})
    return rows


def hotstream(out_dir: str) -> list[dict]:
    """A hot set read by every block, then a stream read once (each line by one block), then
    the hot set again: which fraction of the hot set survives the stream? Under LRU it
    survives while hot + stream fit; a policy that protects re-used lines keeps it longer."""
    from iosim.gpu import ncu
    configs = [{"hot": HOT_MIB, "stream": s} for s in STREAM_MIB]
    groups, _ = _under_ncu(out_dir, "hot/stream test", "hot", configs,
                           ["dram__bytes_read.sum", "gpu__time_duration.sum"])
    rows = []
    for c, g in zip(configs, groups):
        dram = ncu.summarize(g).get("dram_read_bytes") or 0.0
        hot, stream = c["hot"] * MIB, c["stream"] * MIB
        rows.append({"hot_mib": c["hot"], "stream_mib": c["stream"], "dram_read_bytes": dram,
                     "hot_reread_miss_fraction": (dram - hot - stream) / hot})
    return rows

def scan_configs() -> list[dict]:
    out = [{"mode": "shared", "mib": m} for m in SCAN_SIZES_MIB]
    out += [{"mode": "private", "mib": m} for m in SCAN_PRIVATE_MIB]
    return out


def _scan_profile(plan_path: str) -> None:
    """The script ncu runs: for each configuration, [marker, one scan launch]."""
    import torch
    configs, launch = _profile_session(plan_path)
    kern = _scan_kernel()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    big = torch.randn(max(c["mib"] for c in configs) * MIB // 2, device="cuda",
                      dtype=torch.bfloat16)
    out = torch.empty(sms * SCAN_TILE, device="cuda", dtype=torch.float32)
    for c in configs:
        private = c["mode"] == "private"
        grid = (sms if private else SCAN_SHARED_BLOCKS,)
        launch(kern, grid, big, out, c["mib"] * MIB // 2 // SCAN_TILE, SCAN_PASSES, grid[0],
               PRIVATE=private, TILE=SCAN_TILE, num_warps=8)
        print(f"scanned {c['mode']} {c['mib']} MiB", flush=True)
    _end_session(plan_path, list(range(len(configs))))


def scan(out_dir: str) -> list[dict]:
    """Run the scan under ncu; rows with the measured DRAM reads and the miss fraction."""
    from iosim.gpu import ncu
    configs = scan_configs()
    groups, _ = _under_ncu(out_dir, "scan", "scan", configs, [
        "dram__bytes_read.sum", "lts__t_sectors_srcunit_tex_op_read.sum",
        "lts__t_sectors_srcunit_tex_op_read_lookup_miss.sum", "gpu__time_duration.sum"])
    return [{"mode": c["mode"], "mib": c["mib"],
             **_reread_row(ncu.summarize(g), c["mib"] * MIB)} for c, g in zip(configs, groups)]

# ------------------------------------------------------------------------------ L2 sides
#: SM groups for the sides test: SM ids of one GPC each, as the block dispatch in the traces
#: groups them (TPC pairs dealt round-robin over these ranges); the last three are the SMs the
#: traces cannot place
SIDE_GROUPS = ((0, 16), (16, 32), (32, 48), (48, 64), (64, 78), (78, 92), (92, 106),
               (106, 120), (120, 124), (124, 128), (128, 132))
SIDE_MIB = 30                # a shared line's cliff is over by 30 MiB; a one-side line's not
SIDE_BLOCKS_PER_SM = 2


def _sides_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def iosim_l2sides(X, OUT, ALLOW, n_tiles, passes, TILE: tl.constexpr):
        pid = tl.program_id(0)
        sm = tl.inline_asm_elementwise("mov.u32 $0, %smid;", "=r", [], dtype=tl.int32,
                                       is_pure=False, pack=1)
        offs = tl.arange(0, TILE)
        acc = tl.zeros([TILE], dtype=tl.float32)
        if tl.load(ALLOW + sm) != 0:
            for r in range(passes):
                for t in range(0, n_tiles):
                    acc += tl.load(X + t * TILE + offs).to(tl.float32)
        tl.store(OUT + pid * TILE + offs, acc)
    return iosim_l2sides


def sides_configs() -> list[dict]:
    """Each SM group alone, then each with group 0, then all SMs: which SM groups read a
    buffer decides whether its lines are one-side lines (the private cliff) or both-side lines
    (the shared cliff, over by 30 MiB)."""
    out = [{"groups": [g]} for g in range(len(SIDE_GROUPS))]
    out += [{"groups": [0, g]} for g in range(1, len(SIDE_GROUPS))]
    out.append({"groups": list(range(len(SIDE_GROUPS)))})
    return out


#: metrics of the sides and readers tests
REREAD_METRICS = ["dram__bytes_read.sum", "lts__t_sectors_srcunit_tex_op_read.sum",
                  "gpu__time_duration.sum"]


def _sides_profile(plan_path: str) -> None:
    """The script ncu runs: for each SM set, [marker, one launch]."""
    import torch
    configs, launch = _profile_session(plan_path)
    kern = _sides_kernel()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    big = torch.randn(SIDE_MIB * MIB // 2, device="cuda", dtype=torch.bfloat16)
    grid = (sms * SIDE_BLOCKS_PER_SM,)
    out = torch.empty(grid[0] * SCAN_TILE, device="cuda", dtype=torch.float32)
    for c in configs:
        allow = torch.zeros(sms + 64, device="cuda", dtype=torch.int32)
        for g in c["groups"]:
            lo, hi = SIDE_GROUPS[g]
            allow[lo:hi] = 1
        launch(kern, grid, big, out, allow, SIDE_MIB * MIB // 2 // SCAN_TILE, SCAN_PASSES,
               TILE=SCAN_TILE, num_warps=8)
        print(f"sides {c['groups']}", flush=True)
    _end_session(plan_path, list(range(len(configs))))


def sides(out_dir: str) -> list[dict]:
    """Run the sides test under ncu: the miss fraction of the re-read for each SM set."""
    from iosim.gpu import ncu
    configs = sides_configs()
    groups, _ = _under_ncu(out_dir, "sides test", "sides", configs, REREAD_METRICS)
    rows = []
    for c, g in zip(configs, groups):
        sm_ids = [f"{SIDE_GROUPS[k][0]}-{SIDE_GROUPS[k][1] - 1}" for k in c["groups"]]
        rows.append({"groups": "+".join(str(k) for k in c["groups"]),
                     "sms": " ".join(sm_ids), "mib": SIDE_MIB,
                     **_reread_row(ncu.summarize(g), SIDE_MIB * MIB)})
    return rows

# ---------------------------------------------------------------------- readers per line
#: the readers test: 132 blocks (one per SM); each line is read by READERS of them
READERS = (1, 2, 4, 11, 33, 132)
READERS_MIB = (24, 28, 32, 36, 40, 48)


def _readers_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def iosim_l2readers(X, OUT, SMS, n_tiles, passes, NPROG, READERS, TILE: tl.constexpr):
        pid = tl.program_id(0)
        sm = tl.inline_asm_elementwise("mov.u32 $0, %smid;", "=r", [], dtype=tl.int32,
                                       is_pure=False, pack=1)
        offs = tl.arange(0, TILE)
        acc = tl.zeros([TILE], dtype=tl.float32)
        first = pid // READERS
        step = NPROG // READERS
        for r in range(passes):
            for t in range(first, n_tiles, step):
                acc += tl.load(X + t * TILE + offs).to(tl.float32)
        tl.store(OUT + pid * TILE + offs, acc)
        tl.store(SMS + pid, sm)
    return iosim_l2readers


def readers_configs() -> list[dict]:
    return [{"readers": k, "mib": m} for k in READERS for m in READERS_MIB]


def _readers_profile(plan_path: str) -> None:
    _per_sm_profile(plan_path, _readers_kernel(), max(READERS_MIB), SCAN_PASSES, "readers",
                    lambda c: (c["readers"],))


def readers(out_dir: str) -> list[dict]:
    """The cyclic scan with each line read by k of 132 blocks (one per SM): the re-read's miss
    fraction vs the buffer size, for k = 1 (the 'private' scan) up to 132 (every SM)."""
    return _per_sm_rows(out_dir, "readers test", "readers", readers_configs(), SCAN_PASSES)


def _per_sm_rows(out_dir: str, name: str, what: str, configs: list[dict],
                 passes: int) -> list[dict]:
    """Run a per-SM re-read test under ncu: per configuration its fields, the passes, how many
    SMs the blocks ran on, and the DRAM bytes and re-read miss fraction (``_reread_row``)."""
    from iosim.gpu import ncu
    groups, done = _under_ncu(out_dir, name, what, configs, REREAD_METRICS)
    rows = []
    for c, g, d in zip(configs, groups, done):
        row = _reread_row(ncu.summarize(g), c["mib"] * MIB, passes)
        rows.append({**c, "passes": row.pop("passes"), "distinct_sms": d["distinct_sms"], **row})
    return rows

# ------------------------------------------------------------ readers that take turns
#: the rotate test: each of 132 blocks reads its share of the buffer every pass; in pass r the
#: share of block (pid + r * shift) mod 132 -- shift 0: the same SM re-reads a line (the
#: 'private' scan / one reader), shift != 0: a line's one reader is another SM each pass (as a
#: K/V line in head-major attention, read level after level by blocks on different SMs)
ROTATE_SHIFTS = (0, 1, 66)
ROTATE_MIB = (24, 28, 32, 36, 40)
ROTATE_PASSES = 4
#: and groups of k blocks reading the same share each pass, in lock step (stagger 0, as the
#: readers test) or each starting 1/k of the share further on (stagger 1: the k readers of a
#: line come one after another, as the blocks of one head in flight in head-major attention)
ROTATE_READERS = (4, 12, 33)


def _rotate_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def iosim_l2rotate(X, OUT, SMS, n_tiles, passes, NPROG, SHIFT, READERS, STAGGER,
                       TILE: tl.constexpr):
        pid = tl.program_id(0)
        sm = tl.inline_asm_elementwise("mov.u32 $0, %smid;", "=r", [], dtype=tl.int32,
                                       is_pure=False, pack=1)
        offs = tl.arange(0, TILE)
        acc = tl.zeros([TILE], dtype=tl.float32)
        groups = NPROG // READERS
        for r in range(passes):
            share = (pid // READERS + r * SHIFT) % groups
            cnt = (n_tiles - share + groups - 1) // groups
            off = ((pid % READERS) * cnt // READERS) * STAGGER
            for i in range(0, cnt):
                t = share + ((i + off) % cnt) * groups
                acc += tl.load(X + t * TILE + offs).to(tl.float32)
        tl.store(OUT + pid * TILE + offs, acc)
        tl.store(SMS + pid, sm)
    return iosim_l2rotate


def rotate_configs() -> list[dict]:
    one = [{"shift": k, "readers": 1, "stagger": 0, "mib": m}
           for k in ROTATE_SHIFTS for m in ROTATE_MIB]
    many = [{"shift": 0, "readers": k, "stagger": st, "mib": m}
            for k in ROTATE_READERS for st in (0, 1) for m in ROTATE_MIB]
    return one + many


def _rotate_profile(plan_path: str) -> None:
    _per_sm_profile(plan_path, _rotate_kernel(), max(ROTATE_MIB), ROTATE_PASSES, "rotate",
                    lambda c: (c["shift"], c["readers"], c["stagger"]))


def rotate(out_dir: str) -> list[dict]:
    """Cyclic re-reads of a buffer by 132 blocks (one per SM): each line read by one block per
    pass, the same SM every pass (shift 0) or another SM each pass (shift 1, 66); or by k
    blocks per pass, in lock step or one after another (stagger). The miss fraction of the
    re-reads (passes 2..ROTATE_PASSES) vs the buffer size."""
    return _per_sm_rows(out_dir, "rotate test", "rotate", rotate_configs(), ROTATE_PASSES)

# ------------------------------------------------------------- every SM, together or spread
#: the sweep test: every one of 132 blocks (one per SM) reads the whole buffer each pass, in
#: lock step (stagger 0: the shared scan) or each starting 1/132 of the buffer further on
#: (stagger 1: a line's 132 readers come one after another, as in a causal query-major sweep).
#: An LRU sees the same reuse distance (the buffer) in both; the GPU need not
SWEEP_MIB = (24, 28, 32, 36, 40, 48)


def sweep_configs() -> list[dict]:
    return [{"stagger": st, "mib": m} for st in (0, 1) for m in SWEEP_MIB]


def _sweep_profile(plan_path: str) -> None:
    import torch
    sms = torch.cuda.get_device_properties(0).multi_processor_count    # every block reads it all
    _per_sm_profile(plan_path, _rotate_kernel(), max(SWEEP_MIB), ROTATE_PASSES, "sweep",
                    lambda c: (0, sms, c["stagger"]))


def sweep(out_dir: str) -> list[dict]:
    """The re-read miss fraction of a buffer read by all 132 SMs each pass, in lock step or
    spread over the pass, vs its size (passes 2..ROTATE_PASSES)."""
    return _per_sm_rows(out_dir, "sweep test", "sweep", sweep_configs(), ROTATE_PASSES)

# ------------------------------------------------------------------ mixed re-read distances
#: the mix test: a hot buffer re-read every round and a cold one read a slice per round
MIX_CONFIGS = tuple({"hot": a, "cold": c, "rounds": 8}
                    for a in (8, 16) for c in (12, 16, 20, 24, 28, 32) if a + c <= 44)
MIX_EPOCHS = 2


def _mix_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def iosim_l2mix(X, OUT, hot_tiles, cold_tiles, rounds, epochs, NPROG, TILE: tl.constexpr):
        """Each block reads its share (tiles pid, pid+NPROG, ...) of the hot buffer, then of
        slice r of the cold buffer, for rounds r = 0..rounds-1; the whole, ``epochs`` times."""
        pid = tl.program_id(0)
        offs = tl.arange(0, TILE)
        acc = tl.zeros([TILE], dtype=tl.float32)
        per = cold_tiles // rounds
        for e in range(epochs):
            for r in range(rounds):
                for t in range(pid, hot_tiles, NPROG):
                    acc += tl.load(X + t * TILE + offs).to(tl.float32)
                for t in range(pid, per, NPROG):
                    acc += tl.load(X + (hot_tiles + r * per + t) * TILE + offs).to(tl.float32)
        tl.store(OUT + pid * TILE + offs, acc)
    return iosim_l2mix


def _mix_profile(plan_path: str) -> None:
    import torch
    configs, launch = _profile_session(plan_path)
    kern = _mix_kernel()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    big = torch.randn(max(c["hot"] + c["cold"] for c in configs) * MIB // 2, device="cuda",
                      dtype=torch.bfloat16)
    out = torch.empty(sms * SCAN_TILE, device="cuda", dtype=torch.float32)
    for c in configs:
        launch(kern, (sms,), big, out, c["hot"] * MIB // 2 // SCAN_TILE,
               c["cold"] * MIB // 2 // SCAN_TILE, c["rounds"], MIX_EPOCHS, sms, TILE=SCAN_TILE,
               num_warps=8)
        print(f"mix {c}", flush=True)
    _end_session(plan_path, list(range(len(configs))))


def mix(out_dir: str) -> list[dict]:
    """Two re-read distances in one launch (each line read by one SM): a hot buffer of A bytes
    re-read every round (distance A + C/rounds) and a cold one of C bytes re-read once per
    epoch (distance A + C). Under a per-line reuse-distance response the cold re-read misses
    as a private scan of A + C does, and the hot one not at all; the miss fraction reported
    is ``(DRAM - A - C) / C`` (the cold re-read's, if the hot lines all hit)."""
    from iosim.gpu import ncu
    configs = list(MIX_CONFIGS)
    groups, _ = _under_ncu(out_dir, "mix test", "mix", configs, REREAD_METRICS)
    rows = []
    for c, g in zip(configs, groups):
        s = ncu.summarize(g)
        dram = s.get("dram_read_bytes") or 0.0
        hot, cold = c["hot"] * MIB, c["cold"] * MIB
        rows.append({"hot_mib": c["hot"], "cold_mib": c["cold"], "rounds": c["rounds"],
                     "epochs": MIX_EPOCHS, "dram_read_bytes": dram,
                     "l2_tex_read_bytes": s.get("l2_tex_read_bytes"), "time_ns": s.get("time_ns"),
                     "cold_miss_fraction": (dram - hot - cold) / cold})
    return rows

# ------------------------------------------------------------------- traced launches, counted
def _traced_launches():
    """The validated launches (default shapes, both grid orders) and the pre-registered unseen
    ones of the first three batches (gpu_unseen.csv, gpu_unseen2.csv, gpu_unseen3.csv):
    (batch, heads, N, d, causal, grid order)."""
    import csv
    from iosim.gpu.shapes import default_shapes
    out = [(s.batch, s.heads, s.seq, s.head_dim, s.causal, o)
           for s in default_shapes() for o in ("query-major", "head-major")]
    data = Path(__file__).resolve().parents[2] / "experiments" / "data"
    for name in ("gpu_unseen.csv", "gpu_unseen2.csv", "gpu_unseen3.csv"):
        if (data / name).exists():
            for r in csv.DictReader(open(data / name)):
                out.append((int(r["batch"]), int(r["heads"]), int(r["seq"]), int(r["head_dim"]),
                            r["causal"] == "True", r["grid_order"]))
    return out


#: the traced-and-counted test's metrics (the validation's DRAM, L2->SM and time)
TRACED_METRICS = ["dram__bytes_read.sum", "l1tex__m_xbar2l1tex_read_bytes.sum",
                  "gpu__time_duration.sum"]


def _traced_profile(plan_path: str) -> None:
    """The script ncu runs: per configuration (shape, grid order), one profiled launch of the
    traced kernel; its block trace (the profiled launch's) saved next to the plan."""
    import numpy as np
    import torch
    from cascades.triton import Tiling, generate
    from iosim.gpu.runner import make_inputs
    from iosim.gpu.shapes import Shape
    from iosim.gpu.validate import VALIDATION_TILING
    configs, launch = _profile_session(plan_path)
    arrays = {}
    for c in configs:
        shape = Shape(c["batch"], c["heads"], c["seq"], c["head_dim"], c["causal"])
        torch.cuda.empty_cache()
        q, k, v = make_inputs(shape, torch.bfloat16, seed=2)
        o = torch.empty_like(q)
        every = c.get("trace_every", 0)
        t = Tiling(grid_order=c["grid_order"], head_dim=shape.head_dim, dtype="bf16", trace=True,
                   trace_every=every, **VALIDATION_TILING)
        mod = generate("attention-1pass", t).load()
        nq = -(-shape.seq // t.block_m)
        width = mod.trace_width(shape.seq)
        tr = torch.zeros(width * shape.batch * shape.heads * nq, device="cuda", dtype=torch.int64)
        launch.profiled(lambda: mod.forward(q, k, v, causal=shape.causal, out=o, trace=tr))
        a = tr.view(-1, width).cpu().numpy().copy()
        if every:   # times from the first start (they compress); marks not reached: -1
            t0 = a[:, 0].min()
            a[:, :2] -= t0
            marks = a[:, 4:]
            unreached = marks == 0
            marks -= t0
            marks[unreached] = -1
        key = c.get("key", f"{shape.label()}_{c['grid_order']}")
        arrays[key] = a
        print(f"traced {key}", flush=True)
        del q, k, v, o
    np.savez_compressed(plan_path + ".trace.npz", **arrays)
    _end_session(plan_path, list(arrays))


def traced(out_dir: str, launches, *, trace_every: int = 0) -> list[dict]:
    """The generated kernel (validation tiling, traced) under ncu: for each (batch, heads, N, d,
    causal, grid order) the DRAM and L2->SM bytes, the time, and the per-block schedule of the
    same launch (``traced.npz``: start ns, end ns, SM, key extent per block, in block-id
    order). What :mod:`iosim.l2.replay` replays. With ``trace_every`` the rows go on with the
    time each block reached every ``trace_every``-th key block (``Tiling.trace_every``; times
    from the launch's first start, -1 where not reached); a launch listed more than once gets
    ``_2``, ``_3``, ... on its key."""
    import shutil
    from iosim.gpu import ncu
    from iosim.gpu.shapes import Shape
    configs, seen = [], {}
    for (b, h, n, d, c, o) in launches:
        lab = Shape(b, h, n, d, bool(c)).label()
        key = f"{lab}_{o}" + (f"_every{trace_every}" if trace_every else "")
        seen[key] = seen.get(key, 0) + 1
        key += f"_{seen[key]}" if seen[key] > 1 else ""
        configs.append({"batch": b, "heads": h, "seq": n, "head_dim": d, "causal": bool(c),
                        "grid_order": o, "trace_every": trace_every, "key": key})
    groups, done = _under_ncu(out_dir, "traced test", "traced", configs, TRACED_METRICS)
    shutil.copy(Path(out_dir) / "traced_work" / "plan.json.trace.npz",
                Path(out_dir) / "traced.npz")
    rows = []
    for c, g in zip(configs, groups):
        s = ncu.summarize(g)
        lab = Shape(c["batch"], c["heads"], c["seq"], c["head_dim"], c["causal"]).label()
        c = dict(c)
        key = c.pop("key")
        rows.append({"shape": lab, **c, "trace_key": key,
                     "dram_read_bytes": s.get("dram_read_bytes"),
                     "l2_to_sm_read_bytes": s.get("l1_from_l2_read_bytes"),
                     "time_ns": s.get("time_ns")})
    return rows

def traced_to(out_dir: str, name: str, launches, *, trace_every: int = 0) -> list[dict]:
    """:func:`traced`, kept as ``out_dir/NAME.csv`` (rows with the device) and
    ``out_dir/NAME.npz`` (the schedules); the ncu work folder is removed."""
    import shutil
    from iosim.gpu.validate import write_csv
    work = os.path.join(out_dir, "work")
    rows = [{**r, "device": _device_name()}
            for r in traced(work, launches, trace_every=trace_every)]
    write_csv(rows, os.path.join(out_dir, f"{name}.csv"))
    shutil.copy(os.path.join(work, "traced.npz"), os.path.join(out_dir, f"{name}.npz"))
    shutil.rmtree(work, ignore_errors=True)
    return rows


# ------------------------------------------------------------------------------ traces
TRACE_SHAPES = (  # (B, H, N, d, causal): none of them is a validated shape
    (2, 16, 8192, 64, False), (2, 16, 8192, 64, True),
    (2, 16, 8192, 128, False), (2, 16, 8192, 128, True),
    (1, 4, 32768, 64, False), (1, 4, 32768, 128, False),
)


def trace(out_dir: str, shapes=TRACE_SHAPES, *, reps: int = 3) -> dict:
    """Per-block (start ns, end ns, SM, key extent) of the generated kernel (validation tiling,
    both grid orders); saved as ``trace.npz`` (one int64 array per launch)."""
    import numpy as np
    import torch
    from cascades.triton import Tiling, generate
    from iosim.gpu.runner import make_inputs
    from iosim.gpu.shapes import Shape
    from iosim.gpu.validate import VALIDATION_TILING
    arrays = {}
    meta = []
    for (b, h, n, d, causal) in shapes:
        shape = Shape(b, h, n, d, causal)
        q, k, v = make_inputs(shape, torch.bfloat16, seed=7)
        o = torch.empty_like(q)
        for order in ("query-major", "head-major"):
            t = Tiling(grid_order=order, head_dim=d, dtype="bf16", trace=True,
                       **VALIDATION_TILING)
            mod = generate("attention-1pass", t).load()
            nq = -(-n // t.block_m)
            tr = torch.zeros(4 * b * h * nq, device="cuda", dtype=torch.int64)
            for r in range(reps + 1):       # the first launch compiles and warms up
                torch.cuda.synchronize()
                mod.forward(q, k, v, causal=causal, out=o, trace=tr)
                torch.cuda.synchronize()
                if r:
                    key = f"{shape.label()}_{order}_{r}"
                    arrays[key] = tr.view(-1, 4).cpu().numpy().copy()
                    a = arrays[key]
                    meta.append({"key": key, "shape": shape.label(), "order": order, "rep": r,
                                 "blocks": int(a.shape[0]),
                                 "span_us": float((a[:, 1].max() - a[:, 0].min()) / 1e3)})
                    print(json.dumps(meta[-1]), flush=True)
    np.savez_compressed(os.path.join(out_dir, "trace.npz"), **arrays)
    with open(os.path.join(out_dir, "trace_meta.json"), "w") as f:
        json.dump(meta, f)
    return {"launches": len(meta)}


def _shares(s, e, sm, begin=None):
    """Per block: time spent as the older / younger of two blocks on its SM, and alone --
    counting a block from ``begin`` (when it starts computing; default its start ``s``) to its
    end; seniority is by start."""
    import numpy as np
    n = len(s)
    c = s if begin is None else begin
    senior, junior, solo = np.zeros(n), np.zeros(n), np.zeros(n)
    for m in np.unique(sm):
        idx = np.flatnonzero(sm == m)
        pts = np.unique(np.concatenate([c[idx], e[idx]]))
        for a, b in zip(pts[:-1], pts[1:]):
            mid = (a + b) / 2
            res = [i for i in idx if c[i] <= mid < e[i]]
            if len(res) == 1:
                solo[res[0]] += b - a
            elif len(res) == 2:
                i, j = sorted(res, key=lambda i: (s[i], i))
                senior[i] += b - a
                junior[j] += b - a
    return senior, junior, solo


def fit_traces(npz_path: str, block_m: int = 128, block_n: int = 64) -> list[dict]:
    """Rates from the block traces (first repetition of each launch): for one block per SM, the
    time per key block (least squares of duration on key blocks); for two, the key blocks per
    us of the older and the younger block and of a block alone. Also the dynamic L2 model's
    schedule for the same launch (makespan, mean |start time difference|)."""
    import numpy as np
    from iosim.l2.simulate import GpuL2, Workload, _predict_dynamic
    z = np.load(npz_path)
    rows = []
    for key in sorted(z.files):
        if not key.endswith("_1"):
            continue
        label, order = key[:-2].rsplit("_", 1)
        core = label.replace("-causal", "")
        b, h, n, d = (int(x) for x in core.split("x"))
        causal = label.endswith("-causal")
        a = z[key].astype(np.float64)
        t0 = a[:, 0].min()
        s, e, sm = (a[:, 0] - t0) / 1e3, (a[:, 1] - t0) / 1e3, a[:, 2].astype(int)
        tiles = np.ceil(a[:, 3] / block_n)
        conc = int(np.max(np.cumsum(np.r_[np.ones(len(s)), -np.ones(len(e))][
            np.argsort(np.r_[s, e], kind="stable")])))
        row = {"launch": label, "grid_order": order, "blocks": len(s), "head_dim": d,
               "blocks_per_sm": conc // 132, "span_us": e.max(),
               "block_us_median": float(np.median(e - s)),
               "block_us_p10": float(np.percentile(e - s, 10)),
               "block_us_p90": float(np.percentile(e - s, 90))}
        if row["blocks_per_sm"] == 1:
            A = np.vstack([np.ones_like(tiles), tiles]).T
            c = np.linalg.lstsq(A, e - s, rcond=None)[0]
            row.update({"overhead_us": c[0], "us_per_key_block": c[1]})
        else:
            sen, jun, solo = _shares(s, e, sm)
            A = np.vstack([sen, jun, solo]).T
            c = np.linalg.lstsq(A, tiles, rcond=None)[0]
            row.update({"older_key_blocks_per_us": c[0], "younger_key_blocks_per_us": c[1],
                        "alone_key_blocks_per_us": c[2], "older_share": c[0] / (c[0] + c[1])})
        w = Workload(b, h, n, n, d, causal=causal, grid_order=order,
                     blocks_per_sm=row["blocks_per_sm"])
        p = _predict_dynamic(w, GpuL2(), record=True)
        blk = p["blocks"]
        row.update({"model_span_us": float(blk["end_us"].max()),
                    "model_block_us_median": float(np.median(blk["end_us"] - blk["start_us"])),
                    "model_mean_abs_start_diff_us": float(np.mean(np.abs(blk["start_us"] - s)))})
        rows.append(row)
    return rows


def head_start_gaps(starts, heads: int, waves: int, slots: int = 132):
    """Median start gap between blocks b and b + heads (one head, head-major order) in each of
    the first ``waves`` waves of ``slots`` blocks (nan where a wave has none)."""
    import numpy as np
    starts = np.asarray(starts, dtype=float)
    gap = np.abs(starts[heads:] - starts[:-heads])
    wave = np.arange(len(gap)) // slots
    return np.array([np.median(gap[wave == k]) if (wave == k).any() else np.nan
                     for k in range(waves)])


def pace_stats(npz_path: str, *, waves: int = 16) -> list[dict]:
    """How much blocks' paces differ, from the traces of the one-block-per-SM launches (every
    repetition; the first, cold wave left out): after removing each wave's mean duration,
    the spread of a block's duration about its SM's mean (``within_sm_sd_us``; relative, and
    scaled by sqrt(key blocks) -> ``block_jitter``: the spread of one key block's time if key
    blocks vary independently) and the spread of the SMs' means beyond what that noise
    explains (``sm_pace_spread``, relative). For head-major launches, also the median start
    gap between consecutive blocks of one head (ids b and b + heads) in waves 0..waves-1,
    which is what the L2 model's sharing of K/V tiles depends on."""
    import numpy as np
    z = np.load(npz_path)
    rows = []
    for key in sorted(z.files):
        label, order, rep = key.rsplit("_", 2)
        core = label.replace("-causal", "")
        b, h, n, d = (int(x) for x in core.split("x"))
        if d != 128 or label.endswith("-causal"):
            continue          # one block per SM and equal block lengths only
        a = z[key].astype(np.float64)
        st, en, sm = (a[:, 0] - a[:, 0].min()) / 1e3, (a[:, 1] - a[:, 0].min()) / 1e3, a[:, 2]
        dur = en - st
        wave = np.empty(len(st), dtype=int)
        wave[np.argsort(st, kind="stable")] = np.arange(len(st)) // 132
        keep = wave > 0
        wmean = np.array([dur[wave == i].mean() for i in range(wave.max() + 1)])
        res, smk = (dur - wmean[wave])[keep], sm[keep].astype(int)
        ids = np.unique(smk)
        cnt = np.array([(smk == i).sum() for i in ids], dtype=float)
        per_sm = np.array([res[smk == i].mean() for i in ids])
        within = np.concatenate([res[smk == i] - res[smk == i].mean() for i in ids])
        sw = float(within.std() * np.sqrt(cnt.mean() / (cnt.mean() - 1)))
        persist = float(np.sqrt(max(per_sm.var() - sw ** 2 / cnt.mean(), 0.0)))
        mean = float(dur[keep].mean())
        row = {"launch": label, "grid_order": order, "rep": int(rep), "block_us_mean": mean,
               "key_blocks": n // 64, "within_sm_sd_us": sw,
               "block_jitter": sw / mean * np.sqrt(n / 64), "sm_pace_spread": persist / mean}
        if order == "head-major":
            for k, g in enumerate(head_start_gaps(st, b * h, waves)):
                row[f"gap_wave{k}_us"] = float(g)
        rows.append(row)
    return rows


def pair_jitter(npz_path: str, csv_path: str, *, max_dram_over_qkv: float = 1.5,
                exclude: set | None = None) -> list[dict]:
    """Pace noise of two blocks sharing an SM, from traced launches (``microbench traced``):
    for each non-causal query-major launch with two blocks per SM whose DRAM reads stay under
    ``max_dram_over_qkv`` x Q+K+V (no DRAM waits) and that is not in ``exclude``: fit the key
    blocks of each block to its time as the older, the younger and the only block of its SM
    (least squares, as :func:`fit_traces`), and report the residual's spread times
    sqrt(key blocks) (``jitter_per_key_block``; first wave left out) and the older share."""
    import csv
    import numpy as np
    z = np.load(npz_path)
    out = []
    for r in csv.DictReader(open(csv_path)):
        b, h, n, d = (int(r[k]) for k in ("batch", "heads", "seq", "head_dim"))
        qkv = 3 * b * h * n * d * 2
        if (r["causal"] == "True" or r["grid_order"] != "query-major"
                or float(r["dram_read_bytes"]) > max_dram_over_qkv * qkv
                or r["trace_key"] in (exclude or set())):
            continue
        a = z[r["trace_key"]].astype(np.float64)
        s, e, sm = (a[:, 0] - a[:, 0].min()) / 1e3, (a[:, 1] - a[:, 0].min()) / 1e3, a[:, 2]
        if int(np.max(np.bincount(sm[np.argsort(s)][:264].astype(int)))) < 2:
            continue                                  # one block per SM
        tiles = np.ceil(a[:, 3] / 64)
        sen, jun, solo = _shares(s, e, sm.astype(int))
        A = np.vstack([sen, jun, solo]).T
        c = np.linalg.lstsq(A, tiles, rcond=None)[0]
        rel = (tiles - A @ c) / tiles
        wave = np.empty(len(s), dtype=int)
        wave[np.argsort(s, kind="stable")] = np.arange(len(s)) // 264
        keep = wave > 0
        out.append({"launch": r["trace_key"], "older_share": float(c[0] / (c[0] + c[1])),
                    "jitter_per_key_block": float(np.std(rel[keep] * np.sqrt(tiles[keep])))})
    return out


#: the fetch microbenchmark: heads (one 128-query block each, so one thread block per head and,
#: up to 132, one per SM) x head dim; 8192 keys per head (128 key blocks)
FETCH_HEADS = (1, 4, 16, 33, 66, 132, 264)
FETCH_KEYS = 8192
FETCH_WARM_HEADS = (1, 4)


def fetch(out_dir: str, *, reps: int = 5, heads=FETCH_HEADS, keys: int = FETCH_KEYS) -> list[dict]:
    """How fast a thread block goes through its key blocks when its K/V come from DRAM (cold:
    the L2 was filled with other data first) and when they come from L2 (warm: the same launch
    again, K/V of all heads fit), with ``H`` blocks missing at once. Each head has one query
    block, so blocks never share K/V: every key block of a cold launch is a DRAM read. From
    the traces (``%globaltimer``): time per key block; for large ``H`` the DRAM bandwidth the
    kernel's misses actually get."""
    import numpy as np
    import torch
    from cascades.triton import Tiling, generate
    from iosim.gpu.validate import VALIDATION_TILING
    flush = torch.ones(64 * MIB, device="cuda", dtype=torch.float32)     # 256 MiB
    rows, arrays = [], {}
    for d in (128, 64):
        t = Tiling(grid_order="head-major", head_dim=d, dtype="bf16", trace=True,
                   **VALIDATION_TILING)
        mod = generate("attention-1pass", t).load()
        for h in heads:
            g = torch.Generator(device="cuda").manual_seed(11)
            q = torch.randn(1, h, t.block_m, d, device="cuda", dtype=torch.bfloat16, generator=g)
            k = torch.randn(1, h, keys, d, device="cuda", dtype=torch.bfloat16, generator=g)
            v = torch.randn(1, h, keys, d, device="cuda", dtype=torch.bfloat16, generator=g)
            o = torch.empty_like(q)
            tr = torch.zeros(4 * h, device="cuda", dtype=torch.int64)
            mod.forward(q, k, v, causal=False, out=o, trace=tr)   # compile and warm up
            states = ("cold", "warm") if h in FETCH_WARM_HEADS else ("cold",)
            for state in states:
                for r in range(reps):
                    float(flush.sum())                          # fills the L2 with other data
                    if state == "warm":
                        mod.forward(q, k, v, causal=False, out=o, trace=tr)
                    torch.cuda.synchronize()
                    mod.forward(q, k, v, causal=False, out=o, trace=tr)
                    torch.cuda.synchronize()
                    a = tr.view(-1, 4).cpu().numpy().copy()
                    arrays[f"d{d}_h{h}_{state}_{r}"] = a
                    dur = (a[:, 1] - a[:, 0]) / 1e3
                    span = (a[:, 1].max() - a[:, 0].min()) / 1e3
                    nk = keys // t.block_n
                    rows.append({
                        "head_dim": d, "heads": h, "keys": keys, "state": state, "rep": r,
                        "blocks": int(a.shape[0]), "sms": int(len(np.unique(a[:, 2]))),
                        "block_us_median": float(np.median(dur)), "block_us_max": float(dur.max()),
                        "us_per_key_block": float(np.median(dur)) / nk,
                        "span_us": float(span),
                        "kv_gb_per_s": float(2 * h * keys * d * 2 / (span * 1e3)),
                        "device": torch.cuda.get_device_name()})
                    print(json.dumps(rows[-1]), flush=True)
    np.savez_compressed(os.path.join(out_dir, "fetch.npz"), **arrays)
    return rows


def fetch_stats(rows) -> dict:
    """Per head dim: time per key block from L2 (warm, median) and from DRAM with 1 block
    missing alone; the DRAM bandwidth of the widest cold launches (K/V bytes / span)."""
    import numpy as np
    out = {}
    for d in sorted({int(r["head_dim"]) for r in rows}):
        sel = [r for r in rows if int(r["head_dim"]) == d]

        def med(state, h, col="us_per_key_block"):
            v = [float(r[col]) for r in sel if r["state"] == state and int(r["heads"]) == h]
            return float(np.median(v)) if v else float("nan")
        hs = sorted({int(r["heads"]) for r in sel})
        out[d] = {"hit_us": med("warm", 1), "miss_alone_us": med("cold", 1),
                  "miss_us": {h: med("cold", h) for h in hs},
                  "cold_gb_per_s": {h: med("cold", h, "kv_gb_per_s") for h in hs}}
    return out


#: follow: blocks missing at once (leaders + lone missers); followers trail the first
#: min(n, 132 - n) of them; the followers' launch waits this many GPU cycles behind the leaders'
FOLLOW_MISSERS = (4, 16, 33, 50, 66, 83, 100, 116)
FOLLOW_DELAYS = (0, 3000, 6000, 10000, 16000, 60000)
FOLLOW_KEYS = 16384


def follow(out_dir: str, *, reps: int = 4, missers=FOLLOW_MISSERS, delays=FOLLOW_DELAYS,
           keys: int = FOLLOW_KEYS, dims=(128, 64)) -> list[dict]:
    """How much slower a block goes through key blocks it fetches from DRAM than a block that
    reads the same K/V a few microseconds later from L2, at the same moment and DRAM load.

    Two launches of the generated kernel (validation tiling, traced) on two streams, released
    together by one event: the *leaders* (``n`` heads, one 128-query block each, ``keys`` keys:
    every K/V line from DRAM, ``n`` blocks fetching at once) and, ``delay`` GPU cycles later,
    the *followers*: other queries on the K/V of the first ``min(n, 132 - n)`` heads, so each
    reads the lines its leader fetched shortly before. At d=128 one block fits an SM, so the
    two launches share no SM. From the traces: per key block, the followers', the leaders'
    and the lone missers' time, the start gap, and the DRAM load (K/V bytes / time)."""
    import numpy as np
    import torch
    from cascades.triton import Tiling, generate
    from iosim.gpu.validate import VALIDATION_TILING
    flush = torch.ones(64 * MIB, device="cuda", dtype=torch.float32)     # 256 MiB
    rows, arrays = [], {}
    lead_s, foll_s = torch.cuda.Stream(), torch.cuda.Stream()
    for d in dims:
        t = Tiling(grid_order="head-major", head_dim=d, dtype="bf16", trace=True,
                   **VALIDATION_TILING)
        mod = generate("attention-1pass", t).load()
        h_max = max(missers)
        g = torch.Generator(device="cuda").manual_seed(13)
        q = torch.randn(1, h_max, t.block_m, d, device="cuda", dtype=torch.bfloat16, generator=g)
        qf = torch.randn(1, h_max, t.block_m, d, device="cuda", dtype=torch.bfloat16, generator=g)
        k = torch.randn(1, h_max, keys, d, device="cuda", dtype=torch.bfloat16, generator=g)
        v = torch.randn(1, h_max, keys, d, device="cuda", dtype=torch.bfloat16, generator=g)
        o, of = torch.empty_like(q), torch.empty_like(qf)
        nk = keys // t.block_n
        kv_head = 2 * keys * d * 2
        for n in missers:
            nf = min(n, 132 - n)
            tl_ = torch.zeros(4 * n, device="cuda", dtype=torch.int64)
            tf_ = torch.zeros(4 * nf, device="cuda", dtype=torch.int64)
            mod.forward(q[:, :n], k[:, :n], v[:, :n], causal=False, out=o[:, :n], trace=tl_)
            for delay in delays:
                for r in range(reps):
                    float(flush.sum())                      # fills the L2 with other data
                    torch.cuda.synchronize()
                    go = torch.cuda.Event()
                    torch.cuda._sleep(1000000)              # time to enqueue both launches
                    go.record()
                    with torch.cuda.stream(lead_s):
                        lead_s.wait_event(go)
                        mod.forward(q[:, :n], k[:, :n], v[:, :n], causal=False, out=o[:, :n],
                                    trace=tl_)
                    with torch.cuda.stream(foll_s):
                        foll_s.wait_event(go)
                        if delay:
                            torch.cuda._sleep(delay)
                        mod.forward(qf[:, :nf], k[:, :nf], v[:, :nf], causal=False,
                                    out=of[:, :nf], trace=tf_)
                    torch.cuda.synchronize()
                    a = tl_.view(-1, 4).cpu().numpy().copy()
                    b = tf_.view(-1, 4).cpu().numpy().copy()
                    arrays[f"d{d}_n{n}_delay{delay}_{r}_lead"] = a
                    arrays[f"d{d}_n{n}_delay{delay}_{r}_follow"] = b
                    da = (a[:, 1] - a[:, 0]) / 1e3 / nk
                    db = (b[:, 1] - b[:, 0]) / 1e3 / nk
                    span = (a[:, 1].max() - a[:, 0].min()) / 1e3
                    gap = (b[:, 0] - a[:nf, 0]) / 1e3
                    lone = da[nf:]
                    rows.append({
                        "head_dim": d, "missers": n, "followers": nf, "keys": keys,
                        "delay_cycles": delay, "rep": r,
                        "gap_us_median": float(np.median(gap)), "gap_us_min": float(gap.min()),
                        "gap_us_max": float(gap.max()),
                        "end_gap_us_median": float(np.median((b[:, 1] - a[:nf, 1]) / 1e3)),
                        "shared_sms": int(len(np.intersect1d(a[:, 2], b[:, 2]))),
                        "leader_us_per_key_block": float(da[:nf].mean()),
                        "lone_us_per_key_block": float(lone.mean()) if len(lone) else "",
                        "follower_us_per_key_block": float(db.mean()),
                        "miss_over_hit": float(da[:nf].mean() / db.mean()),
                        "dram_gb_per_s": float(n * kv_head / (span * 1e3)),
                        "device": torch.cuda.get_device_name()})
                    print(json.dumps(rows[-1]), flush=True)
        del q, qf, k, v, o, of
        torch.cuda.empty_cache()
    np.savez_compressed(os.path.join(out_dir, "follow.npz"), **arrays)
    return rows


def follow_stats(rows, *, min_gap_us: float = 2.5, max_gap_us: float = 8.0,
                 min_end_gap_us: float = 1.0) -> dict:
    """Per (head dim, keys, blocks missing): the median DRAM load (GB/s) and the median of
    leader / follower time per key block, over the repeats whose followers started ``min_gap_us`` to
    ``max_gap_us`` behind their leaders (so they read the leaders' lines from L2: not still in
    flight, not yet evicted) and still trailed them by ``min_end_gap_us`` at the end: a
    follower that reaches its leader goes on at the leader's pace (it waits for the fetches in
    flight), and the ratio would understate the slowdown (at d=128 near 3 TB/s the followers
    gain 4% and reach their leaders even over 128 key blocks: no clean point there)."""
    import numpy as np
    out = {}
    for r in rows:
        if not (min_gap_us <= float(r["gap_us_median"]) <= max_gap_us
                and float(r["end_gap_us_median"]) >= min_end_gap_us):
            continue
        key = (int(r["head_dim"]), int(r["keys"]), int(r["missers"]))
        out.setdefault(key, []).append((float(r["dram_gb_per_s"]), float(r["miss_over_hit"])))
    return {k: {"gb_per_s": float(np.median([x for x, _ in v])),
                "miss_over_hit": float(np.median([y for _, y in v])), "n": len(v)}
            for k, v in sorted(out.items())}


def _device_name():
    import torch
    return torch.cuda.get_device_name(0)


def _print_rows(fmt):
    def show(rows):
        for r in rows:
            print(fmt(r))
    return show


def _print_fetch(rows):
    for d, st in fetch_stats(rows).items():
        print(f"d={d}: key block from L2 {st['hit_us']:.3f} us, from DRAM alone "
              f"{st['miss_alone_us']:.3f} us; cold GB/s by heads {st['cold_gb_per_s']}")


def _print_follow(rows):
    for (d, _, n), st in follow_stats(rows).items():
        print(f"d={d} {n:3d} missing at {st['gb_per_s']:6.0f} GB/s: a key block from DRAM takes "
              f"{st['miss_over_hit']:.4f}x one read behind it from L2 ({st['n']} launches)")


#: the scripts ncu runs, one per test measured under it
PROFILE_SCRIPTS = {"scan-profile": _scan_profile, "sides-profile": _sides_profile,
                   "readers-profile": _readers_profile, "mix-profile": _mix_profile,
                   "traced-profile": _traced_profile, "hot-profile": _hotstream_profile,
                   "hotwrite-profile": _hotwrite_profile,
                   "rotate-profile": _rotate_profile, "sweep-profile": _sweep_profile}
#: test -> (rows from the output folder, CSV written there, whether rows get the device name,
#: what is printed)
TESTS = {
    "mix": (mix, "gpu_l2mix.csv", True, _print_rows(
        lambda r: f"hot {r['hot_mib']} MiB + cold {r['cold_mib']} MiB: miss fraction of the "
                  f"cold re-read {r['cold_miss_fraction']:.3f}")),
    "traced": (lambda out: traced(out, _traced_launches()), "gpu_traced.csv", True, _print_rows(
        lambda r: f"{r['shape']} {r['grid_order']}: DRAM {r['dram_read_bytes'] / 1e9:.3f} GB")),
    "readers": (readers, "gpu_l2readers.csv", False, _print_rows(
        lambda r: f"{r['readers']:4d} readers/line {r['mib']:3d} MiB ({r['distinct_sms']} SMs): "
                  f"miss fraction {r['miss_fraction']:.3f}")),
    "sides": (sides, "gpu_l2sides.csv", False, _print_rows(
        lambda r: f"SMs {r['sms']:>40}: miss fraction of the re-read at {r['mib']} MiB "
                  f"{r['miss_fraction']:.3f}")),
    "hot": (hotstream, "gpu_l2hot.csv", False, _print_rows(
        lambda r: f"hot {r['hot_mib']} MiB, stream {r['stream_mib']:3d} MiB: miss fraction of "
                  f"the hot re-read {r['hot_reread_miss_fraction']:.3f}")),
    "hotwrite": (hotwrite, "gpu_l2hotwrite.csv", True, _print_rows(
        lambda r: f"hot {r['hot_mib']} MiB, stream {r['stream_mib']:3d} MiB {r['mode']:5s}: miss "
                  f"fraction of the hot re-read {r['hot_reread_miss_fraction']:.3f}")),
    "scan": (scan, "gpu_l2scan.csv", False, _print_rows(
        lambda r: f"{r['mode']:>8} {r['mib']:4d} MiB  DRAM {r['dram_read_bytes'] / MIB:9.1f} MiB"
                  f"  miss fraction of a re-read {r['miss_fraction']:.3f}")),
    "fetch": (fetch, "gpu_fetch.csv", False, _print_fetch),
    "follow": (follow, "gpu_follow.csv", False, _print_follow),
    "rotate": (rotate, "gpu_l2rotate.csv", True, _print_rows(
        lambda r: f"shift {r['shift']:3d} readers {r['readers']:3d} stagger {r['stagger']} "
                  f"{r['mib']:3d} MiB ({r['distinct_sms']} SMs): miss fraction of the re-reads "
                  f"{r['miss_fraction']:.3f}")),
    "sweep": (sweep, "gpu_l2sweep.csv", True, _print_rows(
        lambda r: f"stagger {r['stagger']} {r['mib']:3d} MiB ({r['distinct_sms']} SMs): miss "
                  f"fraction of the re-reads {r['miss_fraction']:.3f}")),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m iosim.l2.microbench")
    ap.add_argument("what", choices=[*TESTS, "trace", *PROFILE_SCRIPTS])
    ap.add_argument("--out", default=".")
    ap.add_argument("--plan", default=None)
    a = ap.parse_args(argv)
    if a.what in PROFILE_SCRIPTS:
        PROFILE_SCRIPTS[a.what](a.plan)
    elif a.what in TESTS:
        from iosim.gpu.validate import write_csv
        run, name, device, show = TESTS[a.what]
        rows = run(a.out)
        if device:
            rows = [{**r, "device": _device_name()} for r in rows]
        write_csv(rows, os.path.join(a.out, name))
        show(rows)
    else:
        trace(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
