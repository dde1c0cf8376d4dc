"""Device: the generated linear-attention kernels (feature map elu1, normalised) on the GPU:
error against a float64 reference, and time, at a few shapes, with the state kernel's keys
in one program per K/V head and split 16 ways. Run from the repository root::

    python experiments/device/linear_attention.py     # -> $OUT/gpu_linear_attention.csv
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.getcwd())


def main():
    import torch
    from triton.testing import do_bench

    import cascades
    from iosim.gpu.kernels import kernel_for, kernel_mapping
    dev = torch.cuda.get_device_name(0)
    c = cascades.load("linear")
    rows = []
    for d, split in ((64, 1), (128, 1), (64, 16), (128, 16)):
        m = kernel_mapping(c, split_kv=split)
        mod = kernel_for(c, m, head_dim=d, dtype="bf16").load()
        for (b, h, n) in ((1, 16, 16384), (4, 16, 4096), (1, 8, 131072)):
            g = torch.Generator(device="cuda").manual_seed(2)
            q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16,
                                   generator=g) * 0.5 for _ in range(3))
            out = torch.empty_like(q)
            fn = lambda: mod.forward(q, k, v, out=out)  # noqa: E731
            fn()
            torch.cuda.synchronize()
            ms = do_bench(fn, warmup=25, rep=100, return_mode="median")
            f = lambda x: torch.where(x > 0, x + 1, torch.exp(torch.clamp(x, max=0)))  # noqa: E731
            qd, kd, vd = (f(t[0, 0].double()) if i < 2 else t[0, 0].double()
                          for i, t in enumerate((q, k, v)))
            ref = (qd @ (kd.T @ vd)) / (qd @ kd.sum(0))[:, None]
            rel = float((out[0, 0].double() - ref).norm() / ref.norm())
            row = dict(cascade="linear", batch=b, heads=h, seq=n, head_dim=d,
                       block_m=m.block_q, block_n=m.block_kv, split_kv=split,
                       num_warps=m.num_warps,
                       num_stages=m.num_stages, ms=ms, rel_err_vs_fp64=rel, device=dev)
            rows.append(row)
            print(row, flush=True)
    from iosim.gpu.validate import write_csv
    write_csv(rows, os.path.join(os.environ.get("OUT", "."), "gpu_linear_attention.csv"))


if __name__ == "__main__":
    main()
