"""Device: the generated block-sparse kernel (attention-blocksparse: a bool mask over
[query blocks, key blocks], listed per query block by the launcher) at densities 1, 0.5 and
0.1 on the GPU: error against a float64 reference, and time (the dense 1-pass kernel beside).
Run from the repository root::

    python experiments/device/block_sparse.py     # -> $OUT/gpu_block_sparse.csv
"""
from __future__ import annotations

import math
import os
import sys

sys.path.insert(0, os.getcwd())


def main():
    import numpy as np
    import torch
    from triton.testing import do_bench

    import cascades
    from iosim.gpu.kernels import kernel_for, kernel_mapping
    dev = torch.cuda.get_device_name(0)
    rows = []
    B, H, N, D = 1, 16, 16384, 128
    for name in ("attention-1pass", "attention-blocksparse"):
        c = cascades.load(name)
        m = kernel_mapping(c)
        mod = kernel_for(c, m, head_dim=D, dtype="bf16").load()
        g = torch.Generator(device="cuda").manual_seed(5)
        q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16, generator=g)
                   for _ in range(3))
        nq, nk = -(-N // m.block_q), -(-N // m.block_kv)
        for density in ((1.0,) if name == "attention-1pass" else (1.0, 0.5, 0.1)):
            mask = np.random.default_rng(7).random((nq, nk)) < density
            for i in range(nq):                     # every query block keeps a key block
                mask[i, min(i * m.block_q // m.block_kv, nk - 1)] = True
            kw = {} if name == "attention-1pass" else {"BlockMask": torch.from_numpy(mask)}
            out = torch.empty_like(q)
            fn = lambda: mod.forward(q, k, v, out=out, **kw)  # noqa: E731
            fn()
            torch.cuda.synchronize()
            ms = do_bench(fn, warmup=25, rep=100, return_mode="median")
            # error on the first head in float64
            qd, kd, vd = q[0, 0].double(), k[0, 0].double(), v[0, 0].double()
            s = qd @ kd.T / math.sqrt(D)
            if name != "attention-1pass":
                full = torch.from_numpy(np.repeat(np.repeat(mask, m.block_q, 0), m.block_kv, 1)
                                        [:N, :N]).to(s.device)
                s = s.masked_fill(~full, float("-inf"))
            ref = torch.softmax(s, -1) @ vd
            rel = float((out[0, 0].double() - ref).norm() / ref.norm())
            row = dict(cascade=name, batch=B, heads=H, seq=N, head_dim=D, block_m=m.block_q,
                       block_n=m.block_kv, num_warps=m.num_warps, num_stages=m.num_stages,
                       target_density=density, density=float(mask.mean()), ms=ms,
                       rel_err_vs_fp64=rel, device=dev)
            rows.append(row)
            print(row, flush=True)
    from iosim.gpu.validate import write_csv
    write_csv(rows, os.path.join(os.environ.get("OUT", "."), "gpu_block_sparse.csv"))


if __name__ == "__main__":
    main()
