"""Device (run on the GPU machine from the repository root:
python experiments/device/query_cliff.py): the causal query-major cliff, one head at a time.

The validated 1x8x64Kx128 causal query-major launch reads 1.46x Q+K+V where the model (and the
cache response on its measured schedule) says 1.05x; round 6's 1x4x64Kx128 misses alike. Here
the traced kernel under ncu (``iosim.l2.microbench.traced``: per-block schedule and counters of
one launch) runs causal query-major launches of ONE head (and two at 64K) at d=128 for K/V of
16 to 40 MiB (N = 32K ... 80K): where the excess starts and how it grows, for one head's
staggered sweep alone. Writes $OUT/gpu_query_cliff.csv and $OUT/gpu_query_cliff.npz.

    python experiments/device/query_cliff.py marks

traces 64K-80K (one head) and 64K (two heads) with a mark every 8 key blocks
(``trace_every=8``: when each block reached them), so the replay can place each read on the
block's measured trajectory: $OUT/gpu_query_cliff_marks.csv/.npz.

    python experiments/device/query_cliff.py heads

the same kernel with 1, 2, 3, 4, 6 and 8 heads at 64K and 1, 4 and 8 heads at 56K on one
machine, so that what each change of head adds is not mixed with machine-to-machine
differences: $OUT/gpu_query_heads.csv/.npz."""
import os
import sys

sys.path.insert(0, os.getcwd())
from iosim.l2.microbench import traced_to  # noqa: E402

LAUNCHES = [(1, 1, n, 128, True, "query-major") for n in (32768, 40960, 49152, 57344, 65536,
                                                          73728, 81920)]
LAUNCHES += [(1, 2, 65536, 128, True, "query-major")]


MARKED = [lw for lw in LAUNCHES if lw[2] >= 65536]
HEADS = [(1, h, 65536, 128, True, "query-major") for h in (1, 2, 3, 4, 6, 8)]
HEADS += [(1, h, 57344, 128, True, "query-major") for h in (1, 4, 8)]


def main():
    out = os.environ["OUT"]
    marks = sys.argv[1:] == ["marks"]
    if sys.argv[1:] == ["heads"]:
        rows = traced_to(out, "gpu_query_heads", HEADS)
    else:
        name = "gpu_query_cliff_marks" if marks else "gpu_query_cliff"
        rows = traced_to(out, name, MARKED if marks else LAUNCHES,
                         trace_every=8 if marks else 0)
    for r in rows:
        print(r["trace_key"], r["dram_read_bytes"], r["l2_to_sm_read_bytes"], r["time_ns"])


if __name__ == "__main__":
    main()
