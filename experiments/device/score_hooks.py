"""Device: the kernels of two structures beyond softmax attention, generated from their
cascades -- HSTU's pointwise attention (``hstu``: silu(scale * q.k + rab) / M times V, the
bias tile read by the score hook, no normalisation) and Lightning Attention-2 (``lightning2``:
the chunked family, an intra-block decayed product plus a state carried across blocks) -- on
the GPU: error against a float64 reference computed with torch, time (median of
``triton.testing.do_bench``), the time model's prediction for the same Mapping, and baselines
on the same shapes (the plain 1-pass kernel, sigmoid attention's kernel without an extra input,
HSTU in eager torch). Run from the repository root (about two minutes on an H100)::

    python experiments/device/score_hooks.py          # -> $OUT/gpu_score_hooks.csv

``--dry-run`` runs the same code at tiny shapes in fp16 (for Triton's interpreter on a CPU:
``TRITON_INTERPRET=1 python experiments/device/score_hooks.py --dry-run``); its times mean
nothing.
"""
from __future__ import annotations

import math
import os
import sys
import time

sys.path.insert(0, os.getcwd())

DECAY = 0.99


def hstu_reference(q, k, v, rab, causal):
    """silu(q.k / sqrt(d) + rab) / M times V in float64 (HSTU, Zhai et al. 2024, eq. 2)."""
    import torch
    qd, kd, vd = q.double(), k.double(), v.double()
    s = qd @ kd.transpose(-1, -2) / math.sqrt(q.shape[-1]) + rab.double()
    w = torch.nn.functional.silu(s) / k.shape[2]
    if causal:
        n, m = s.shape[-2:]
        w = w.masked_fill(torch.ones(n, m, dtype=torch.bool, device=q.device).triu(1), 0.0)
    return w @ vd


def lightning_reference(q, k, v, decay):
    """o_t = sum over s <= t of decay^(t-s) (q_t . k_s) v_s in float64."""
    import torch
    qd, kd, vd = q.double(), k.double(), v.double()
    n = q.shape[2]
    t = torch.arange(n, device=q.device, dtype=torch.float64)
    dist = t[:, None] - t[None, :]
    w = torch.where(dist >= 0, decay ** dist.clamp(min=0), torch.zeros((), dtype=torch.float64,
                                                                       device=q.device))
    return ((qd @ kd.transpose(-1, -2)) * w) @ vd


def hstu_eager(q, k, v, rab, causal):
    """HSTU's attention in eager torch in the input type (the baseline a user would write)."""
    import torch
    s = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1])) + rab
    w = torch.nn.functional.silu(s) / k.shape[2]
    if causal:
        w = torch.tril(w)
    return w @ v


def main(argv=None):
    import torch

    import cascades
    from iosim.gpu.kernels import kernel_for, kernel_mapping
    from iosim.gpu.validate import write_csv
    from iosim.traffic import evaluate
    dry = "--dry-run" in (argv if argv is not None else sys.argv[1:])
    dev_name = "cpu (Triton interpreter)" if dry else torch.cuda.get_device_name(0)
    device = "cpu" if dry else "cuda"
    dtype, tdt = ("fp16", torch.float16) if dry else ("bf16", torch.bfloat16)
    D = 32 if dry else 128
    tiles = dict(block_m=16, block_n=16, num_warps=4, num_stages=1) if dry else {}
    check_shape = (1, 2, 40) if dry else (1, 2, 2048)
    hstu_shapes = ([(1, 2, 48, "per-head"), (1, 2, 40, "shared")] if dry else
                   [(4, 16, 4096, "per-head"), (1, 16, 16384, "shared")])
    l2_shapes = [(1, 2, 48)] if dry else [(4, 16, 4096), (1, 16, 32768)]
    rows = []

    def bench(fn):
        fn()
        if dry:
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
        torch.cuda.synchronize()
        from triton.testing import do_bench
        return do_bench(fn, warmup=25, rep=100, return_mode="median")

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, device=device, generator=g) * scale).to(tdt)

    def model_ms(c, m, B, H, N, causal):
        rep = evaluate(c, m, "h100", n=N, d=D, batch=B, heads=H, causal=causal)
        return rep.time["time_s"] * 1e3

    def emit(row):
        row.update(head_dim=D, dtype=dtype, device=dev_name)
        rows.append(row)
        print(row, flush=True)

    # ---------------------------------------------------------------- HSTU and baselines
    for name in ("hstu", "attention-1pass", "sigmoid"):
        c = cascades.load(name)
        m = kernel_mapping(c, **tiles)
        mod = kernel_for(c, m, head_dim=D, dtype=dtype).load()
        for causal in (False, True):
            g = torch.Generator(device=device).manual_seed(3)
            rel = float("nan")
            if name == "hstu":
                B, H, N = check_shape
                q, k, v = randn(B, H, N, D), randn(B, H, N, D), randn(B, H, N, D)
                rab = randn(B, H, N, N)
                o = mod.forward(q, k, v, RAB=rab, causal=causal)
                ref = hstu_reference(q, k, v, rab, causal)
                rel = float((o.double() - ref).norm() / ref.norm())
            for B, H, N, bias in hstu_shapes:
                q, k, v = randn(B, H, N, D), randn(B, H, N, D), randn(B, H, N, D)
                out = torch.empty_like(q)
                kw = {}
                if name == "hstu":
                    kw["RAB"] = randn(B, H, N, N) if bias == "per-head" else randn(N, N)
                ms = bench(lambda: mod.forward(q, k, v, causal=causal, out=out, **kw))
                emit(dict(kernel=f"{name} generated", cascade=name, batch=B, heads=H, seq=N,
                          causal=causal, bias=bias if name == "hstu" else "",
                          block_m=m.block_q, block_n=m.block_kv, num_warps=m.num_warps,
                          num_stages=m.num_stages, f_blocks="", ms=ms,
                          model_ms=model_ms(c, m, B, H, N, causal), rel_err_vs_fp64=rel))
                if name == "hstu" and bias == "per-head":
                    ms = bench(lambda: hstu_eager(q, k, v, kw["RAB"], causal))
                    emit(dict(kernel="hstu eager torch", cascade=name, batch=B, heads=H,
                              seq=N, causal=causal, bias=bias, block_m="", block_n="",
                              num_warps="", num_stages="", f_blocks="", ms=ms,
                              model_ms=float("nan"), rel_err_vs_fp64=float("nan")))
                del q, k, v, out, kw
                if not dry:
                    torch.cuda.empty_cache()

    # ------------------------------------------------------------------------ Lightning-2
    c = cascades.load("lightning2")
    l2_tiles = dict(tiles) if dry else dict(block_m=64, num_warps=4, num_stages=2)
    m = kernel_mapping(c, **l2_tiles)
    mod = kernel_for(c, m, head_dim=D, dtype=dtype).load()
    g = torch.Generator(device=device).manual_seed(5)
    B, H, N = check_shape
    q, k, v = randn(B, H, N, D, scale=0.3), randn(B, H, N, D, scale=0.3), randn(B, H, N, D)
    ref = lightning_reference(q, k, v, DECAY)
    f_splits = (1, 2) if dry else (1, 2, 4)
    rel = {f: float((mod.forward(q, k, v, f_blocks=f).double() - ref).norm() / ref.norm())
           for f in f_splits}
    for B, H, N in l2_shapes:
        q, k, v = randn(B, H, N, D, scale=0.3), randn(B, H, N, D, scale=0.3), randn(B, H, N, D)
        out = torch.empty_like(q)
        pred = model_ms(c, m, B, H, N, False)
        for f in f_splits:
            ms = bench(lambda: mod.forward(q, k, v, out=out, f_blocks=f))
            emit(dict(kernel="lightning2 generated", cascade="lightning2", batch=B, heads=H,
                      seq=N, causal=True, bias="", block_m=m.block_q, block_n=m.block_kv,
                      num_warps=m.num_warps, num_stages=m.num_stages, f_blocks=f, ms=ms,
                      model_ms=pred, rel_err_vs_fp64=rel[f]))
        del q, k, v, out
    write_csv(rows, os.path.join(os.environ.get("OUT", "."), "gpu_score_hooks.csv"))


if __name__ == "__main__":
    main()
