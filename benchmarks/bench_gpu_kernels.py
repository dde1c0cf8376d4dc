"""Speed of the generated attention-1pass forward against PyTorch SDPA's backends (GPU only).

    python benchmarks/bench_gpu_kernels.py --out DIR [--quick]

bf16, N >= 4096, d = 64 and 128, causal and not; the generated kernel in a few tilings (the
best is reported) and SDPA's flash, cuDNN and memory-efficient backends. FLOPs are 4·B·H·N²·d,
halved when causal; times are medians of triton.testing.do_bench. Writes DIR/gpu_bench.csv.
The numbers recorded on the lent H100 are in docs/validation.md.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from iosim.gpu.runner import Config, bench_configs, env_info  # noqa: E402
from iosim.gpu.shapes import Shape  # noqa: E402

SHAPES = [(4, 16, 4096), (1, 16, 16384), (1, 8, 65536)]
TILINGS = {  # (block_m, block_n, num_warps, num_stages)
    128: [(128, 64, 8, 3), (128, 128, 8, 2), (128, 64, 8, 4), (128, 128, 8, 3)],
    64: [(128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 4, 3), (64, 64, 4, 4)],
}


def configs(quick: bool = False) -> list[Config]:
    out = []
    for d in (128, 64):
        for (b, h, n) in (SHAPES[:2] if quick else SHAPES):
            for causal in (False, True):
                s = Shape(b, h, n, d, causal)
                for impl in ("sdpa-flash", "sdpa-cudnn", "sdpa-efficient"):
                    out.append(Config(impl, s))
                for (bm, bn, w, st) in TILINGS[d]:
                    out.append(Config("generated", s, block_m=bm, block_n=bn, num_warps=w,
                                      num_stages=st))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    env = env_info()
    rows = bench_configs(configs(a.quick))
    for r in rows:
        r["device"] = env["device"]
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, "gpu_bench.csv")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(a.out, "gpu_env.json"), "w") as f:
        json.dump(env, f)
    # summary: best generated tiling vs each backend
    print(f"device: {env['device']}  torch {env['torch']}  triton {env['triton']}")
    print(f"{'shape':>22} {'gen best':>9} {'tiling':>14} {'flash':>7} {'cudnn':>7} {'x flash':>7}")
    keys = sorted({(r["batch"], r["heads"], r["seq"], r["head_dim"], r["causal"]) for r in rows},
                  key=lambda k: (k[3], k[2], k[4]))
    for k in keys:
        sel = [r for r in rows if (r["batch"], r["heads"], r["seq"], r["head_dim"], r["causal"]) == k]
        gen = [r for r in sel if r["impl"] == "generated" and r["tflops"] == r["tflops"]]
        best = max(gen, key=lambda r: r["tflops"]) if gen else None
        fl = next((r["tflops"] for r in sel if r["impl"] == "sdpa-flash"), float("nan"))
        cu = next((r["tflops"] for r in sel if r["impl"] == "sdpa-cudnn"), float("nan"))
        til = f"{best['block_m']}/{best['block_n']}/{best['num_warps']}/{best['num_stages']}" if best else "-"
        bt = best["tflops"] if best else float("nan")
        print(f"{'x'.join(map(str, k[:4])) + (' causal' if k[4] else ''):>22} {bt:9.1f} {til:>14} "
              f"{fl:7.1f} {cu:7.1f} {bt / fl:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
