"""Device: the generated kernels of cascades with score maps and masks beyond a * S + b and
the causal band -- tanh soft-capping, an ALiBi position bias, a sliding window -- on the GPU:
correctness against a float64 reference computed with torch on the GPU, and time against the
plain 1-pass kernel on the same shape. Run from the repository root::

    python experiments/device/score_maps.py        # -> $OUT/gpu_score_maps.csv
"""
from __future__ import annotations

import math
import os
import sys

sys.path.insert(0, os.getcwd())

BASE_SQK = "SQK[m1, m0, p]  = where(causal and m1*M0 + m0 > p, -inf, scale * BQK[m1, m0, p])"
MAPS = {
    "softcap": ("param cap = 30.0", "SQK[m1, m0, p]  = where(causal and m1*M0 + m0 > p, -inf, "
                                    "cap * tanh(scale * BQK[m1, m0, p] / cap))"),
    "alibi": ("param slope = 0.0625", "SQK[m1, m0, p]  = where(causal and m1*M0 + m0 > p, -inf, "
                                      "scale * BQK[m1, m0, p] - slope * (p - (m1*M0 + m0)))"),
}


def cascade(name):
    import cascades
    if name == "window":
        return cascades.load("attention-window")
    if name == "plain":
        return cascades.load("attention-1pass")
    base = cascades.library.text("attention-1pass")
    param, sqk = MAPS[name]
    return cascades.parse(base.replace("param block_kv = 64", f"param block_kv = 64\n{param}")
                          .replace(BASE_SQK, sqk).replace("cascade attention-1pass",
                                                          f"cascade attention-{name}"))


def reference(name, q, k, v, causal):
    import torch
    qd, kd, vd = q.double(), k.double(), v.double()
    P, M, E = qd.shape[2], kd.shape[2], qd.shape[3]
    s = qd @ kd.transpose(-1, -2) / math.sqrt(E)
    pos_q = torch.arange(P, device=q.device)[:, None]
    pos_k = torch.arange(M, device=q.device)[None, :]
    if name == "softcap":
        s = 30.0 * torch.tanh(s / 30.0)
    if name == "alibi":
        s = s - 0.0625 * (pos_q - pos_k)
    if causal:
        masked = pos_k > pos_q
        if name == "window":
            masked = masked | (pos_q - pos_k >= 256)
        s = s.masked_fill(masked, float("-inf"))
    return torch.softmax(s, dim=-1) @ vd


def main():
    import torch
    from triton.testing import do_bench
    from iosim.gpu.kernels import kernel_for, kernel_mapping
    dev = torch.cuda.get_device_name(0)
    rows = []
    for name in ("plain", "softcap", "alibi", "window"):
        c = cascade(name)
        m = kernel_mapping(c)
        mod = kernel_for(c, m, head_dim=128, dtype="bf16").load()
        for causal in (False, True):
            g = torch.Generator(device="cuda").manual_seed(3)
            q, k, v = (torch.randn(1, 2, 2048, 128, device="cuda", dtype=torch.bfloat16,
                                   generator=g) for _ in range(3))
            o = mod.forward(q, k, v, causal=causal)
            ref = reference(name, q, k, v, causal)
            rel = float((o.double() - ref).norm() / ref.norm())
            for (b, h, n) in ((4, 16, 4096), (1, 16, 32768)):
                q, k, v = (torch.randn(b, h, n, 128, device="cuda", dtype=torch.bfloat16,
                                       generator=g) for _ in range(3))
                out = torch.empty_like(q)
                ms = do_bench(lambda: mod.forward(q, k, v, causal=causal, out=out), warmup=25,
                              rep=100, return_mode="median")
                row = dict(cascade=c.name, score_map=name, batch=b, heads=h, seq=n,
                           head_dim=128, causal=causal, block_m=m.block_q, block_n=m.block_kv,
                           num_warps=m.num_warps, num_stages=m.num_stages, ms=ms,
                           rel_err_vs_fp64=rel, device=dev)
                rows.append(row)
                print(row, flush=True)
                del q, k, v, out
                torch.cuda.empty_cache()
    from iosim.gpu.validate import write_csv
    write_csv(rows, os.path.join(os.environ.get("OUT", "."), "gpu_score_maps.csv"))


if __name__ == "__main__":
    main()
