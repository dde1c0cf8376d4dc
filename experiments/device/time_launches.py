"""Device: kernel times of the execution-time model's launch sets (experiments/time_plan.py).
Run on the GPU machine from the repository root::

    python experiments/device/time_launches.py calibration|validation   # -> $OUT/gpu_time_SET.csv

For every launch: the generated kernel(s) of the cascade with the launch's tiling, timed with
``triton.testing.do_bench`` (median over ``rep`` ms, inputs bf16 N(0, 1)), its compiled
registers per thread and shared memory, and, on shapes SDPA can run, SDPA flash and cuDNN as
references. Compilation runs first in parallel processes (Triton's cache is shared).
"""
from __future__ import annotations

import csv
import json
import math
import os
import sys
import time

sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.join(os.getcwd(), "experiments"))

SDPA_OK = ("attention-1pass", "flash1", "attention-gqa", "decode-splitk")


def _module(l):
    from cascades.triton import Tiling, generate
    t = Tiling(block_m=l.block_m, block_n=l.block_n, num_warps=l.num_warps,
               num_stages=l.num_stages, grid_order=l.grid_order, head_dim=l.head_dim,
               dtype="bf16", split_kv=l.split_kv)
    g = generate(l.cascade, t)
    return g, g.load()


def _inputs(l, seed=0):
    import torch
    g = torch.Generator(device="cuda").manual_seed(seed)
    hk = l.kv_heads or l.heads
    p = l.q_len or l.kv_len
    q = torch.randn(l.batch, l.heads, p, l.head_dim, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(l.batch, hk, l.kv_len, l.head_dim, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(l.batch, hk, l.kv_len, l.head_dim, device="cuda", dtype=torch.bfloat16, generator=g)
    return q, k, v


def _compile(items):
    import torch
    from time_plan import Launch
    bad = 0
    for d in items:
        l = Launch(**d)
        try:
            _, mod = _module(l)
            q, k, v = _inputs(l)
            mod.forward(q, k, v, causal=l.causal)
            torch.cuda.synchronize()
        except Exception as exc:  # noqa: BLE001 - reported again by the timed run
            print("compile failed", l.label, exc, flush=True)
            bad += 1
        torch.cuda.empty_cache()
    return bad


def _facts(mod, names):
    regs, smem, spills = [], [], []
    for nm in names:
        fn = getattr(mod, nm, None)
        try:
            for tup in fn.device_caches.values():
                for k in tup[0].values():
                    regs.append(int(k.n_regs))
                    smem.append(int(k.metadata.shared))
                    spills.append(int(k.n_spills))
        except Exception:  # noqa: BLE001
            pass
    j = lambda xs: "+".join(str(x) for x in xs)  # noqa: E731
    return j(regs), j(smem), j(spills)


def main() -> None:
    import multiprocessing as mp

    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from triton.testing import do_bench

    from time_plan import SETS
    name = sys.argv[1]
    launches = SETS[name]()
    dev = torch.cuda.get_device_name(0)
    t0 = time.time()
    items = [l.to_dict() for l in launches]
    chunks = [items[i::12] for i in range(min(12, len(items)))]
    with mp.get_context("spawn").Pool(len(chunks)) as pool:
        bad = sum(pool.map(_compile, chunks))
    print(f"compiled {len(items)} launches in {time.time() - t0:.0f} s ({bad} failed)", flush=True)
    rows = []
    for l in launches:
        base = l.to_dict()
        base.update(label=l.label, device=dev)
        try:
            g, mod = _module(l)
            q, k, v = _inputs(l, seed=1)
            o = torch.empty_like(q)
            fn = lambda: mod.forward(q, k, v, causal=l.causal, out=o)  # noqa: E731
            fn()
            torch.cuda.synchronize()
            ms = do_bench(fn, warmup=25, rep=100, return_mode="median")
            regs, smem, spills = _facts(mod, g.kernels)
            err = ""
        except Exception as exc:  # noqa: BLE001
            ms, regs, smem, spills = float("nan"), "", "", ""
            err = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        rel = float("nan")
        refs = {}
        if l.cascade in SDPA_OK and not err:
            gqa = bool(l.kv_heads and l.kv_heads != l.heads)
            causal = l.causal and l.cascade != "decode-splitk"
            for impl, be in (("sdpa-flash", SDPBackend.FLASH_ATTENTION),
                             ("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION)):
                def run(be=be):
                    with sdpa_kernel([be]):
                        return F.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                                              enable_gqa=gqa)
                try:
                    ref = run()
                    torch.cuda.synchronize()
                    if impl == "sdpa-flash" or not math.isfinite(rel):
                        rel = float((o.float() - ref.float()).abs().max()
                                    / ref.float().abs().max())
                    refs[impl] = do_bench(run, warmup=25, rep=100, return_mode="median")
                except Exception as exc:  # noqa: BLE001
                    refs[impl] = float("nan")
                    print(impl, "failed", l.label, str(exc).splitlines()[0][:120], flush=True)
        base.update(ms=ms, regs=regs, smem_bytes=smem, spills=spills, error=err,
                    max_rel_diff_vs_sdpa=rel, sdpa_flash_ms=refs.get("sdpa-flash", float("nan")),
                    sdpa_cudnn_ms=refs.get("sdpa-cudnn", float("nan")))
        rows.append(base)
        print(json.dumps(base), flush=True)
        del q, k, v, o
        torch.cuda.empty_cache()
    path = os.path.join(os.environ.get("OUT", "."), f"gpu_time_{name}.csv")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main()
