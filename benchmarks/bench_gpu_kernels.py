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

from iosim.gpu.runner import Config, bench_configs, env_info, precompile  # noqa: E402
from iosim.gpu.shapes import Shape  # noqa: E402

SHAPES = [(4, 16, 4096), (1, 16, 16384), (1, 8, 65536)]
TILINGS = {  # (block_m, block_n, num_warps, num_stages)
    128: [(128, 128, 8, 3), (128, 64, 8, 3), (128, 128, 8, 2)],
    64: [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3)],
}
#: code-generation knobs tried with every tiling (cascades.triton.Tiling). Measured slower on
#: the H100 (first run, docs/validation.md) and not tried again: lazy_rescale, pipeline,
#: fast_exp.
KNOBS = {
    "plain": {},
    "tma": {"tma": True},
    "warp_specialize": {"warp_specialize": True},
}


def configs(quick: bool = False, knobs=None, tilings=None, refs=("sdpa-flash", "sdpa-cudnn"),
            shapes=None) -> list[Config]:
    knobs = KNOBS if knobs is None else knobs
    tilings = TILINGS if tilings is None else tilings
    out = []
    for d in (128, 64):
        for (b, h, n) in (shapes or (SHAPES[:2] if quick else SHAPES)):
            for causal in (False, True):
                s = Shape(b, h, n, d, causal)
                for impl in refs:
                    out.append(Config(impl, s))
                for (bm, bn, w, st) in tilings[d]:
                    for kn in knobs.values():
                        out.append(Config("generated", s, block_m=bm, block_n=bn, num_warps=w,
                                          num_stages=st, **kn))
                # flash once more after the generated kernels: its spread within one run
                if "sdpa-flash" in refs:
                    out.append(Config("sdpa-flash", s))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--knobs", default=None,
                    help="comma-separated subset of " + ", ".join(KNOBS))
    ap.add_argument("--final", action="store_true",
                    help="only the chosen default of each head dim (cascades.triton.fast_tiling)")
    a = ap.parse_args(argv)
    env = env_info()
    if a.final:
        from cascades.triton import fast_tiling
        cf = []
        for d in (128, 64):
            for (b, h, n) in SHAPES:
                for causal in (False, True):
                    s = Shape(b, h, n, d, causal)
                    cf += [Config("sdpa-flash", s), Config("sdpa-cudnn", s)]
                    t = fast_tiling(d, "bf16", seq_len=n)
                    cf.append(Config("generated", s, block_m=t.block_m, block_n=t.block_n,
                                     num_warps=t.num_warps, num_stages=t.num_stages,
                                     fast_exp=t.fast_exp, pipeline=t.pipeline,
                                     lazy_rescale=t.lazy_rescale, tma=t.tma,
                                     warp_specialize=t.warp_specialize))
                    # flash again after the generated kernel: its run-to-run spread in the table
                    cf.append(Config("sdpa-flash", s))
    else:
        kn = KNOBS if not a.knobs else {k: KNOBS[k] for k in a.knobs.split(",")}
        cf = configs(a.quick, kn)
    precompile(cf)
    rows = bench_configs(cf)
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
    print(f"{'shape':>22} {'gen best':>9} {'tiling':>14} {'knobs':>22} {'flash':>7} {'cudnn':>7} "
          f"{'x flash':>7}")
    keys = sorted({(r["batch"], r["heads"], r["seq"], r["head_dim"], r["causal"]) for r in rows},
                  key=lambda k: (k[3], k[2], k[4]))
    for k in keys:
        sel = [r for r in rows if (r["batch"], r["heads"], r["seq"], r["head_dim"], r["causal"]) == k]
        gen = [r for r in sel if r["impl"] == "generated" and r["tflops"] == r["tflops"]]
        best = max(gen, key=lambda r: r["tflops"]) if gen else None
        fls = [r["tflops"] for r in sel if r["impl"] == "sdpa-flash" and r["tflops"] == r["tflops"]]
        fl = max(fls) if fls else float("nan")      # the faster of flash's runs
        cu = next((r["tflops"] for r in sel if r["impl"] == "sdpa-cudnn"), float("nan"))
        til = f"{best['block_m']}/{best['block_n']}/{best['num_warps']}/{best['num_stages']}" if best else "-"
        bt = best["tflops"] if best else float("nan")
        kn = best["knobs"] if best else "-"
        print(f"{'x'.join(map(str, k[:4])) + (' causal' if k[4] else ''):>22} {bt:9.1f} {til:>14} "
              f"{kn:>22} {fl:7.1f} {cu:7.1f} {bt / fl:7.2f}")
    # every knob variant: best tiling per shape
    kns = sorted({r["knobs"] for r in rows if r["impl"] == "generated"})
    print(f"{'shape':>22} " + " ".join(f"{k[:14]:>14}" for k in kns) + f" {'flash':>7}")
    for k in keys:
        sel = [r for r in rows if (r["batch"], r["heads"], r["seq"], r["head_dim"], r["causal"]) == k]
        fl = [r["tflops"] for r in sel if r["impl"] == "sdpa-flash"]
        cells = []
        for kn in kns:
            g = [r["tflops"] for r in sel if r["impl"] == "generated" and r["knobs"] == kn
                 and r["tflops"] == r["tflops"]]
            cells.append(f"{max(g):14.1f}" if g else f"{'-':>14}")
        print(f"{'x'.join(map(str, k[:4])) + (' causal' if k[4] else ''):>22} " + " ".join(cells)
              + f" {('/'.join(f'{x:.0f}' for x in fl)):>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
