"""Device (run on the GPU machine from the repository root:
python experiments/device/traced_rounds.py [--name NAME] gpu_unseen4.csv gpu_unseen5.csv): the traced kernel
under ncu (``iosim.l2.microbench.traced``: per-block schedule and DRAM/L2->SM counters of the
same launch) for the launches of the given out-of-sample rounds; writes
$OUT/NAME.csv and $OUT/NAME.npz (default gpu_traced_rounds), for
experiments/l2_research/replay_traced.py and experiments/l2_research/partition_replay.py."""
import csv
import os
import sys

sys.path.insert(0, os.getcwd())
from iosim.l2.microbench import traced_to  # noqa: E402


def main():
    out = os.environ["OUT"]
    args = sys.argv[1:]
    tag = "gpu_traced_rounds"
    if args[:1] == ["--name"]:
        tag, args = args[1], args[2:]
    launches = []
    for name in args:
        for r in csv.DictReader(open(os.path.join("experiments", "data", name))):
            launches.append((int(r["batch"]), int(r["heads"]), int(r["seq"]), int(r["head_dim"]),
                             r["causal"] == "True", r["grid_order"]))
    rows = traced_to(out, tag, launches)
    for r in rows:
        print(r["trace_key"], r["dram_read_bytes"], r["l2_to_sm_read_bytes"], r["time_ns"])


if __name__ == "__main__":
    main()
