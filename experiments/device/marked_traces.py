"""Device (run on the GPU machine from the repository root:
python experiments/device/marked_traces.py): the traced kernel with mid-life marks
(``Tiling(trace=True, trace_every=...)``: the time each block reaches every k-th key block) under
ncu, so the blocks' whole trajectories and the DRAM counters come from the same launch; for the
launches the model misses most (causal head-major at 16K-64K, 64Kx128 causal query-major, d=64
non-causal head-major near the cliff). Two rounds with marks and one with start/end only (what
the marks cost), and their cost in kernel time. Writes $OUT/gpu_marks.csv,
$OUT/gpu_marks_{1,2,plain}.npz and $OUT/gpu_marks_cost.csv."""
import os
import shutil
import sys

sys.path.insert(0, os.getcwd())
from iosim.l2.microbench import _device_name, traced  # noqa: E402
from iosim.gpu.validate import write_csv  # noqa: E402

#: (batch, heads, N, d, causal, grid order); long launches get a mark every 8 key blocks, the
#: short ones every 2
LONG = [(1, 16, 16384, 128, True, "head-major"), (1, 8, 65536, 128, True, "head-major"),
        (1, 16, 16384, 64, True, "head-major"), (1, 16, 20480, 128, True, "head-major"),
        (1, 6, 49152, 128, True, "head-major"), (1, 8, 65536, 128, True, "query-major")]
SHORT = [(8, 16, 1024, 64, False, "head-major"), (2, 16, 3072, 64, False, "head-major")]


def cost(out):
    """What the instrumentation costs in kernel time (do_bench medians, no profiler), and a
    sanity check of the marks: same output as the plain kernel, marks rising along each row."""
    import numpy as np
    import torch
    from triton.testing import do_bench
    from cascades.triton import Tiling, generate
    from iosim.gpu.runner import make_inputs
    from iosim.gpu.shapes import Shape
    from iosim.gpu.validate import VALIDATION_TILING
    rows = []
    for (b, h, n, d, c, o) in (LONG[0], LONG[2], SHORT[1]):
        shape = Shape(b, h, n, d, c)
        q, k, v = make_inputs(shape, torch.bfloat16, seed=2)
        ref = None
        for trace, every in ((False, 0), (True, 0), (True, 8)):
            t = Tiling(grid_order=o, head_dim=d, dtype="bf16", trace=trace, trace_every=every,
                       **VALIDATION_TILING)
            mod = generate("attention-1pass", t).load()
            nq = -(-n // t.block_m)
            tr = (torch.zeros(mod.trace_width(n) * b * h * nq, device="cuda", dtype=torch.int64)
                  if trace else None)
            out_t = mod.forward(q, k, v, causal=c, trace=tr)
            ref = out_t if ref is None else ref
            same = float((out_t.float() - ref.float()).abs().max())
            ms = do_bench(lambda: mod.forward(q, k, v, causal=c, trace=tr), warmup=50, rep=300)
            rising = None
            if every:
                a = tr.view(-1, mod.trace_width(n)).cpu().numpy()
                m = np.where(a[:, 4:] > 0, a[:, 4:], np.nan)
                dm = np.diff(np.concatenate([a[:, :1], m], axis=1), axis=1)
                rising = bool(np.all(np.isnan(dm) | (dm >= 0)))
            rows.append({"shape": shape.label(), "grid_order": o, "trace": trace,
                         "trace_every": every, "ms": ms, "max_abs_diff_vs_plain": same,
                         "marks_rising": rising, "device": _device_name()})
            print(rows[-1], flush=True)
    write_csv(rows, os.path.join(out, "gpu_marks_cost.csv"))


def main():
    out = os.environ["OUT"]
    cost(out)
    rows = []

    def one(launches, every, tag, rnd):
        work = os.path.join(out, f"work_{tag}_{every}")
        for r in traced(work, launches, trace_every=every):
            rows.append({**r, "round": rnd, "npz": f"gpu_marks_{tag}.npz",
                         "device": _device_name()})
            print(rnd, r["trace_key"], r["dram_read_bytes"], r["time_ns"], flush=True)
        return os.path.join(work, "traced.npz")

    import numpy as np
    for tag, rnd in (("1", 1), ("plain", 0), ("2", 2)):
        arrays = {}
        for launches, every in ((LONG, 8), (SHORT, 2)):
            z = np.load(one(launches, 0 if tag == "plain" else every, tag, rnd))
            arrays.update({k: z[k] for k in z.files})
        np.savez_compressed(os.path.join(out, f"gpu_marks_{tag}.npz"), **arrays)
    for d in os.listdir(out):
        if d.startswith("work_"):
            shutil.rmtree(os.path.join(out, d), ignore_errors=True)
    write_csv(rows, os.path.join(out, "gpu_marks.csv"))


if __name__ == "__main__":
    main()
