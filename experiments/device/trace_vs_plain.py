"""Device (run on the GPU machine from the repository root:
python experiments/device/trace_vs_plain.py [ROUNDS]): does tracing a launch move its DRAM
bytes, or do the counters of the same launch move between runs? For the launches whose
traced counters differed most from the recorded ones, alternate ROUNDS times (default 2):
the traced kernel under ncu (``microbench.traced``) and the plain generated kernel under ncu
(``iosim.gpu.runner profile``, as the validation measures it). Writes
$OUT/trace_vs_plain.csv: one row per (launch, variant, round)."""
import csv
import os
import sys
import time

sys.path.insert(0, os.getcwd())
from iosim.gpu import ncu  # noqa: E402
from iosim.l2.microbench import traced  # noqa: E402
from iosim.gpu.runner import Config  # noqa: E402
from iosim.gpu.shapes import Shape  # noqa: E402
from iosim.gpu.validate import VALIDATION_TILING  # noqa: E402

LAUNCHES = [(2, 12, 8192, 64, False, "head-major"), (1, 8, 65536, 128, False, "head-major"),
            (16, 8, 2048, 64, False, "head-major"), (4, 16, 4096, 64, False, "head-major"),
            (1, 16, 16384, 64, True, "head-major"), (1, 16, 16384, 128, True, "head-major"),
            (1, 8, 65536, 128, True, "query-major"), (1, 16, 12288, 64, True, "head-major")]
METRICS = ["dram__bytes_read.sum", "l1tex__m_xbar2l1tex_read_bytes.sum", "gpu__time_duration.sum"]


def plain(out_dir: str) -> list[dict]:
    cfgs = [Config("generated", Shape(b, h, n, d, c), grid_order=o, **VALIDATION_TILING)
            for (b, h, n, d, c, o) in LAUNCHES]
    return [{"shape": Shape(r["batch"], r["heads"], r["seq"], r["head_dim"],
                            r["causal"]).label(),
             "grid_order": r["grid_order"], "dram_read_bytes": r["dram_read_bytes"],
             "time_ns": r["time_ns"]} for r in ncu.profile(cfgs, out_dir, metrics=METRICS)]


def main():
    out = os.environ["OUT"]
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    rows = []
    t0 = time.time()
    for r in range(rounds):
        for variant in ("traced", "plain"):
            d = os.path.join(out, f"{variant}_{r}")
            res = traced(d, LAUNCHES) if variant == "traced" else plain(d)
            for x in res:
                rows.append({"launch": f"{x['shape']}_{x['grid_order']}", "variant": variant,
                             "round": r, "dram_read_bytes": x["dram_read_bytes"],
                             "time_ns": x["time_ns"]})
            print(f"[{time.time() - t0:6.1f}s] {variant} round {r} done", flush=True)
    with open(os.path.join(out, "trace_vs_plain.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main()
