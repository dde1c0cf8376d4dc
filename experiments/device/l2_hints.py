"""Device (run on the GPU machine from the repository root:
python experiments/device/l2_hints.py [ROUNDS]): what L2 eviction hints on the generated
kernel's loads and stores do to its DRAM reads.

The same generated attention-1pass kernel (validation tiling) with ``Tiling.kv_eviction``,
``q_eviction``, ``o_eviction`` (Triton's ``eviction_policy``, PTX ``L2::evict_first`` /
``evict_last``) on the launches where the model misses (the causal query-major cliff at one
head, 56K-80K keys, and with eight heads; the validated misses of head-major order) and two
controls, under ncu with
the validation's settings (``iosim.gpu.ncu.profile``), ROUNDS times interleaved (default 2).
If the L2 treats hinted lines differently, which traffic pushes K/V out at the cliff (Q read
once and O written once, or K/V's own) shows here. Writes $OUT/gpu_l2_hints.csv."""
import os
import sys
import time

sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from iosim.gpu.runner import Config, precompile  # noqa: E402
from iosim.gpu.shapes import Shape  # noqa: E402
from iosim.gpu.validate import write_csv  # noqa: E402
from repeat_validation import profile_rounds  # noqa: E402

METRICS = ["dram__bytes_read.sum", "dram__bytes_write.sum", "l1tex__m_xbar2l1tex_read_bytes.sum",
           "gpu__time_duration.sum"]
LAUNCHES = [(Shape(1, 1, n, 128, True), "query-major") for n in (57344, 65536, 73728, 81920)]
LAUNCHES += [(Shape(1, 8, 65536, 128, True), "query-major"),
             (Shape(4, 16, 4096, 64, False), "head-major"),
             (Shape(1, 16, 16384, 128, True), "head-major"),
             (Shape(1, 8, 65536, 128, True), "head-major"),
             (Shape(1, 8, 65536, 64, False), "query-major"),
             (Shape(1, 16, 16384, 128, False), "query-major")]
#: (kv_eviction, q_eviction, o_eviction)
HINTS = [("", "", ""), ("", "evict_first", "evict_first"), ("evict_last", "", ""),
         ("evict_last", "evict_first", "evict_first"), ("evict_first", "", ""),
         ("", "evict_first", ""), ("", "", "evict_first")]


def main():
    out = os.environ["OUT"]
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    cfgs = [Config("generated", s, grid_order=g, kv_eviction=kv, q_eviction=q, o_eviction=o)
            for s, g in LAUNCHES for kv, q, o in HINTS]
    t0 = time.time()
    precompile(cfgs)
    print(f"compiled {len(cfgs)} in {time.time() - t0:.1f} s", flush=True)
    got = profile_rounds(cfgs, rounds, out, METRICS)
    rows = [{"shape": Shape(x["batch"], x["heads"], x["seq"], x["head_dim"], x["causal"]).label(),
             "grid_order": x["grid_order"], "kv_eviction": x["kv_eviction"] or "none",
             "q_eviction": x["q_eviction"] or "none", "o_eviction": x["o_eviction"] or "none",
             "round": i // len(cfgs),
             "dram_read_bytes": x["dram_read_bytes"], "dram_write_bytes": x.get("dram_write_bytes"),
             "l2_to_sm_read_bytes": x["l1_from_l2_read_bytes"], "time_ns": x["time_ns"],
             "device": x["device"]} for i, x in enumerate(got)]
    write_csv(rows, os.path.join(out, "gpu_l2_hints.csv"))
    for r in rows:
        print(r["shape"], r["grid_order"], r["kv_eviction"], r["q_eviction"], r["o_eviction"],
              r["round"], r["dram_read_bytes"], r["time_ns"], flush=True)


if __name__ == "__main__":
    main()
