"""Replacement policy, not a reuse-distance response: LRU and NRU caches of two partitions on the
L2 microbenchmarks and the measured attention schedules (no GPU; a C compiler, ~3 min on 2 cores).

    python experiments/l2_research/l2_policy.py --out DIR      # -> DIR/gpu_l2_policy.csv
    python experiments/l2_research/l2_policy.py --traced gpu_traced_round14 --out DIR
                                            # one traced file's launches (~1 min)

The model and the replays so far apply a miss fraction that depends on a line's reuse distance
(the measured shared-scan response): exact for an LRU cache, and blind to what a policy like
NRU does — a hot line whose "used" bit was cleared can be evicted by a stream of lines read once.
``experiments/l2_research/csrc/l2_policy.c`` keeps the cache state instead: each partition 26 MiB (the
shared scan's half-miss point) of 16-way sets, 4 KiB units, unit u of a tile homed in partition
u % 2, a far-side read touching a copy on the reader's side (the partitions model's
accounting), DRAM = home units that miss. Policies: LRU, and NRU (one used bit per way, set on
a fill or hit; the victim is the first way whose bit is clear; all bits of the set cleared when
none is). Nothing is fitted: 26 MiB and 16 ways are the same for every case. Next to them, NRU
with 8, 32 and 128 ways and with a random set hash: how much of what NRU does depends on the
associativity and on the set map; and NRU and LRU with a balanced hash (each aligned run of as
many unit pairs as sets a permutation of the sets, like an XOR set index): the set-conflict
probe (experiments/device/l2_sets.py) rules out the linear map, not a balanced hash. Last,
DRRIP with the balanced hash (set dueling between SRRIP and bimodal RRIP, as in many CPU
last-level caches): a scan-resistant policy, for the microbenchmarks where the L2 keeps more
than LRU does. Then three more textbook policies with the balanced hash: CLOCK (the same used
bits, the victim found by a hand per set that walks on from where it stopped, clearing the bits
it passes, instead of from way 0 with all bits cleared at once), tree pseudo-LRU and FIFO.

Replayed: the microbenchmarks as synthetic streams (partition_variants.py's cases) and the
measured schedules of 110 launches (the same set as partition_variants.py).
"""
from __future__ import annotations

import csv
import os
import subprocess
import tempfile

import numpy as np

from _util import CSRC, DATA, out_path, parser, pmap  # first: the repository root onto sys.path
from iosim.gpu.validate import write_csv  # noqa: E402
from partition_replay import build, side_maps  # noqa: E402
from partition_variants import micro_row, replay_row, run_table  # noqa: E402

SRC = os.path.join(CSRC, "l2_policy.c")
#: name -> (policy number, MiB per partition, ways, set map): LRU and NRU as above (0: the
#: linear set map), NRU with other associativities, with a random set hash (1: uneven) and with a
#: balanced hash (2: like an XOR set index, what the set-conflict probe allows), LRU with it, and
#: DRRIP (set dueling of SRRIP and bimodal RRIP; policy 3 of the helper) with it; NRU with it at
#: 8 and 32 ways; and three more standard policies with it: CLOCK (NRU's
#: bits with a hand per set), tree pseudo-LRU and FIFO
POLICIES = {"lru": (0, 26, 16, 0), "nru": (2, 26, 16, 0), "nru_8way": (2, 26, 8, 0),
            "nru_32way": (2, 26, 32, 0), "nru_128way": (2, 26, 128, 0),
            "nru_hashed": (2, 26, 16, 1), "nru_balanced": (2, 26, 16, 2),
            "lru_balanced": (0, 26, 16, 2), "drrip_balanced": (3, 26, 16, 2),
            "nru_balanced_8way": (2, 26, 8, 2), "nru_balanced_32way": (2, 26, 32, 2),
            "clock_balanced": (8, 26, 16, 2), "plru_balanced": (4, 26, 16, 2),
            "fifo_balanced": (7, 26, 16, 2)}


def run(exe: str, ev: np.ndarray, n_tiles: int, policy: str) -> float:
    """DRAM bytes of the counted reads of events ``ev`` under ``policy``."""
    num, mib, ways, hashed = POLICIES[policy]
    with tempfile.NamedTemporaryFile(suffix=".bin") as f:
        np.asarray(ev, dtype=np.int64).tofile(f.name)
        out = subprocess.run([exe, f.name, str(n_tiles), str(num), str(mib), str(ways), "3",
                              "0", str(hashed)], check=True, capture_output=True, text=True).stdout
    return float(out.split()[0])


def one_micro(job) -> dict:
    return micro_row(job, POLICIES, run)


def one_replay(job) -> dict:
    return replay_row(job, POLICIES, run)


def traced_table(name: str, path: str, workers: int = 2) -> list[dict]:
    """Every policy on the launches of one traced file (``--traced NAME``: experiments/data/
    NAME.csv/.npz, side map 1), against each traced run's counters; writes the CSV ``path``
    (gpu_l2_policy_NAME.csv)."""
    side_a = side_maps()["map1"]
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(tmp, SRC)
        jobs = [(exe, name, r, side_a)
                for r in csv.DictReader(open(os.path.join(DATA, f"{name}.csv")))]
        rows = pmap(one_replay, jobs, "replays", workers)
    write_csv(rows, path)
    for r in rows:
        print(f"{r['case']:52s} " + " ".join(f"{p} {r[p]:+.3f}" for p in POLICIES))
    print("wrote", path)
    return rows


def main(argv=None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--traced", metavar="NAME",
                    help="only the launches of experiments/data/NAME.csv/.npz "
                         "(-> DIR/gpu_l2_policy_NAME.csv)")
    a = ap.parse_args(argv)
    if a.traced:
        traced_table(a.traced, out_path(a.out, f"gpu_l2_policy_{a.traced}.csv"), a.workers)
        return 0
    run_table(SRC, out_path(a.out, "gpu_l2_policy.csv"), tuple(POLICIES), one_micro,
              one_replay, a.workers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
