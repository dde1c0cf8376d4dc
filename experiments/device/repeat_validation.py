"""Device (run on the GPU machine from the repository root:
python experiments/device/repeat_validation.py [ROUNDS]): the counters of the 34 validated
generated attention-1pass launches, ROUNDS times (default 5) in one ncu run, interleaved
(round r profiles every launch once before round r+1 starts), with the validation's ncu
settings (``iosim.gpu.ncu.profile``). Writes $OUT/gpu_ncu_rounds.csv: one row per (launch,
round)."""
import csv
import os
import sys
import time

sys.path.insert(0, os.getcwd())
from iosim.gpu import ncu  # noqa: E402
from iosim.gpu.runner import Config  # noqa: E402
from iosim.gpu.shapes import Shape  # noqa: E402

METRICS = ["dram__bytes_read.sum", "l1tex__m_xbar2l1tex_read_bytes.sum", "gpu__time_duration.sum"]


def validated_configs():
    rows = list(csv.DictReader(open("experiments/data/gpu_validation.csv")))
    out = []
    for r in rows:
        if r["impl"] != "generated" or r["cascade"] != "attention-1pass":
            continue
        s = Shape(int(r["batch"]), int(r["heads"]), int(r["seq"]), int(r["head_dim"]),
                  r["causal"] == "True")
        out.append(Config("generated", s, grid_order=r["grid_order"], block_m=int(r["block_m"]),
                          block_n=int(r["block_n"]), num_warps=int(r["num_warps"]),
                          num_stages=int(r["num_stages"])))
    return out


def profile_rounds(cfgs, rounds: int, out: str, metrics=METRICS) -> list[dict]:
    """``cfgs`` profiled ``rounds`` times under ncu, interleaved (row i is ``cfgs[i %
    len(cfgs)]`` in round ``i // len(cfgs)``); stops if ncu returned fewer launches."""
    t0 = time.time()
    got = ncu.profile([c for _ in range(rounds) for c in cfgs], os.path.join(out, "work"),
                      metrics=metrics)
    print(f"ncu {time.time() - t0:.1f} s", flush=True)
    if len(got) != rounds * len(cfgs):
        raise SystemExit(f"error: {len(got)} of {rounds * len(cfgs)} launches profiled")
    return got


def main():
    out = os.environ["OUT"]
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    cfgs = validated_configs()
    got = profile_rounds(cfgs, rounds, out)
    rows = [{"shape": Shape(x["batch"], x["heads"], x["seq"], x["head_dim"], x["causal"]).label(),
             "grid_order": x["grid_order"], "round": i // len(cfgs),
             "dram_read_bytes": x["dram_read_bytes"],
             "l2_to_sm_read_bytes": x["l1_from_l2_read_bytes"], "time_ns": x["time_ns"],
             "device": x["device"]} for i, x in enumerate(got)]
    with open(os.path.join(out, "gpu_ncu_rounds.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"{len(rows)} rows", flush=True)


if __name__ == "__main__":
    main()
