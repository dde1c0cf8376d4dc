"""Device: the generated serving decode kernels (cascades.triton.emit_decode, from the `decode`
cascade) on the GPU -- no split, FlashDecoding's split and stream-K; dense, ragged and paged
caches; grouped-query (32/8), multi-query (32/1) and multi-head (32/32) decode -- against SDPA
flash and cuDNN on the same uniform shapes. Per launch: the median of CUDA-event times (warmup
first, L2 flushed before every repeat), the K/V bandwidth achieved, the relative error against
attention computed in float64 per request, and the time model's prediction registered in the
plan before any launch ran.

The launches are the rows of the committed plan, experiments/data/serving_decode_plan.csv
(written by ``--plan`` on any machine, before measuring). Run from the repository root::

    python experiments/device/serving_decode.py          # -> $OUT/gpu_serving_decode.csv
    python experiments/device/serving_decode.py --plan experiments/data/serving_decode_plan.csv
    TRITON_INTERPRET=1 python experiments/device/serving_decode.py --dry-run   # CPU, tiny
"""
from __future__ import annotations

import math
import os
import sys

sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import serving_common as sc  # noqa: E402 - plan, pages, timer, measuring loop, command line

PLAN = os.path.join("experiments", "data", "serving_decode_plan.csv")
SMS = 132                    # H100 SXM: stream-K's programs (one per SM) in the plan
D = 128
K = 1024
#: a serving trace's cache lengths (16 requests, 512 to 128K keys) and an unbalanced batch
TRACE = (512, 1 * K, 2 * K, 4 * K, 8 * K, 16 * K, 32 * K, 64 * K, 128 * K, 3 * K, 700, 20 * K,
         50 * K, 90 * K, 5 * K, 10 * K)
SKEWED = (256 * K, 2 * K, 2 * K, 2 * K)
FIELDS = ("launch", "layout", "schedule", "split_kv", "programs", "page_size", "batch", "heads",
          "kv_heads", "q_len", "causal", "head_dim", "kv_lens", "references")


def launches() -> list[dict]:
    """The launch list (deterministic; the plan CSV is this list plus the predictions)."""
    from iosim.serving import flashdecoding_splits
    uniform = [  # (batch, query heads, K/V heads, keys, head dim)
        (1, 32, 8, 8 * K, D), (1, 32, 8, 32 * K, D), (1, 32, 8, 128 * K, D),
        (1, 32, 8, 256 * K, D), (8, 32, 8, 32 * K, D), (16, 32, 8, 16 * K, D),
        (64, 32, 8, 4 * K, D), (64, 32, 8, 32 * K, D),
        (1, 32, 1, 128 * K, D), (8, 32, 1, 32 * K, D), (64, 32, 1, 8 * K, D),
        (1, 32, 32, 32 * K, D), (1, 32, 32, 128 * K, D), (16, 32, 32, 16 * K, D),
        (4, 32, 8, 64 * K, 64), (1, 32, 8, 256 * K, 64),
    ]
    out = []

    def add(layout, sched, b, hq, hkv, lens, d, page=None, q_len=1, causal=False, refs=False):
        blocks = max(-(-n // 64) for n in lens)
        split = flashdecoding_splits(len(lens) * hkv, blocks, SMS) if sched == "split" else ""
        out.append(dict(launch=len(out), layout=layout, schedule=sched, split_kv=split,
                        programs=SMS if sched == "streamk" else "", page_size=page or "",
                        batch=b, heads=hq, kv_heads=hkv, q_len=q_len, causal=causal,
                        head_dim=d, kv_lens=";".join(str(n) for n in lens),
                        references=refs))

    for b, hq, hkv, n, d in uniform:
        for i, s in enumerate(("nosplit", "split", "streamk")):
            add("dense", s, b, hq, hkv, (n,) * b, d, refs=(i == 0))
    for lens in (TRACE, SKEWED):
        for s in ("nosplit", "split", "streamk"):
            add("ragged", s, len(lens), 32, 8, lens, D)
    for page in (16, 64):
        for s in ("split", "streamk"):
            add("paged", s, len(TRACE), 32, 8, TRACE, D, page=page)
    add("paged", "split", 8, 32, 8, (32 * K,) * 8, D, page=16)
    for s in ("split", "streamk"):
        add("dense", s, 8, 32, 8, (32 * K,) * 8, D, q_len=4, causal=True)
    return out


def predict(l: dict) -> dict:
    """The serving model's prediction of launch ``l`` (H100 preset)."""
    from iosim.serving import evaluate_serving
    lens = tuple(int(x) for x in l["kv_lens"].split(";"))
    r = evaluate_serving("decode", "h100", n=l["q_len"], kv_lens=lens, e=l["head_dim"],
                         heads=l["heads"],
                         kv_heads=l["kv_heads"] if l["kv_heads"] != l["heads"] else None,
                         causal=l["causal"], schedule=l["schedule"],
                         split_kv=l["split_kv"] or None, programs=l["programs"] or None,
                         page_size=l["page_size"] or None)
    return dict(predicted_ms=round(r.time_s * 1e3, 5),
                predicted_tb_s=round(r.serving["achieved_bytes_per_s"] / 1e12, 4))


def read_plan(path: str = PLAN) -> list[dict]:
    return sc.read_plan(path, ("launch", "batch", "heads", "kv_heads", "q_len", "head_dim"))


def _shrink(l: dict) -> dict:
    """A tiny version of a launch for the CPU interpreter (same layout, schedule, group)."""
    g = l["heads"] // l["kv_heads"]
    hkv = min(l["kv_heads"], 2)
    lens = [max(l["q_len"], n // 4096) for n in l["kv_lens"][:3]]
    return dict(l, batch=len(lens), kv_heads=hkv, heads=hkv * g, head_dim=16, kv_lens=lens,
                programs=5 if l["programs"] else None,
                split_kv=min(l["split_kv"], 3) if l["split_kv"] else None,
                page_size=8 if l["page_size"] else None)


def _inputs(l, dtype, dev, gen):
    """q and the cache in the launch's layout, plus the per-request K/V for the reference."""
    import torch
    B, hq, hkv, d, p = l["batch"], l["heads"], l["kv_heads"], l["head_dim"], l["q_len"]
    lens = l["kv_lens"]
    q = torch.randn(B, hq, p, d, device=dev, dtype=dtype, generator=gen)
    kw = {}
    if l["layout"] == "dense":
        m = max(lens)
        k = torch.randn(B, hkv, m, d, device=dev, dtype=dtype, generator=gen)
        v = torch.randn(B, hkv, m, d, device=dev, dtype=dtype, generator=gen)
        if len(set(lens)) > 1:
            kw["kv_lens"] = lens
        per = [(k[b, :, :n], v[b, :, :n]) for b, n in enumerate(lens)]
    elif l["layout"] == "ragged":
        t = sum(lens)
        k = torch.randn(t, hkv, d, device=dev, dtype=dtype, generator=gen)
        v = torch.randn(t, hkv, d, device=dev, dtype=dtype, generator=gen)
        cu = [0]
        for n in lens:
            cu.append(cu[-1] + n)
        kw["cu_seqlens"] = cu
        per = [(k[a:b].transpose(0, 1), v[a:b].transpose(0, 1)) for a, b in zip(cu, cu[1:])]
    else:       # pages of the pool in a random order: no request's pages are contiguous
        page = l["page_size"]
        table, need = sc.scattered_pages(lens, page, dev)
        k = torch.randn(sum(need), page, hkv, d, device=dev, dtype=dtype, generator=gen)
        v = torch.randn(sum(need), page, hkv, d, device=dev, dtype=dtype, generator=gen)
        kw.update(block_table=table, kv_lens=lens)
        per = [(kb.transpose(0, 1), vb.transpose(0, 1)) for kb, vb in
               zip(sc.request_rows(k, table, need, lens), sc.request_rows(v, table, need, lens))]
    return q, k, v, kw, per


def _rel_err(o, q, per, causal):
    """Relative error of o against attention in float64, request by request."""
    import torch
    num = den = 0.0
    hq = q.shape[1]
    for b, (kb, vb) in enumerate(per):
        g = hq // kb.shape[0]
        for j in range(kb.shape[0]):       # one K/V head and its query heads at a time
            kk, vv = kb[j].double(), vb[j].double()
            s = q[b, j * g:(j + 1) * g].double() @ kk.T / math.sqrt(q.shape[-1])
            if causal:
                p, n = s.shape[-2], s.shape[-1]
                keep = torch.arange(n, device=s.device)[None, :] <= torch.arange(
                    p, device=s.device)[:, None] + n - p
                s = s.masked_fill(~keep, float("-inf"))
            ref = torch.softmax(s, -1) @ vv
            num += float((o[b, j * g:(j + 1) * g].double() - ref).norm() ** 2)
            den += float(ref.norm() ** 2)
    return math.sqrt(num / den)


def run(rows: list[dict], dry: bool = False) -> list[dict]:
    """The launches measured (see the module text); ``dry``: tiny ones in the interpreter."""
    from cascades.triton import Tiling, generate_serving
    mods = {}

    def kernel(l, env):
        d = l["head_dim"]
        if d not in mods:
            mods[d] = generate_serving("decode", Tiling(
                block_n=64 if env.cuda else 16, num_warps=4, num_stages=3 if env.cuda else 1,
                head_dim=d, dtype="bf16" if env.cuda else "fp16")).load()
        return mods[d]

    return sc.measure_rows(rows, dry, FIELDS, _shrink, kernel, _measure)


def _measure(l, mod, env) -> dict:
    """One launch: its time, bandwidth and error, SDPA flash and cuDNN beside it where the
    plan asks for references."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from cascades.triton.emit_decode import PAGED_LOADS
    gen = torch.Generator(device=env.dev).manual_seed(l["launch"])
    q, k, v, kw, per = _inputs(l, env.dtype, env.dev, gen)
    pl = mod.plan(q, k, v, schedule=l["schedule"], split_kv=l["split_kv"],
                  programs=l["programs"], **kw)
    o = torch.empty_like(q)
    fn = lambda: mod.forward(q, k, v, causal=l["causal"], plan=pl, out=o)  # noqa: E731
    fn()
    err = _rel_err(o, q, per, l["causal"])
    ms = sc.time_ms(fn, env.cuda)
    kv = 2 * l["kv_heads"] * sum(l["kv_lens"]) * l["head_dim"] * q.element_size()
    rec = dict(ms=ms, kv_tb_s=kv / ms / 1e9, rel_err_vs_fp64=err, programs_run=pl["programs"],
               segments=pl["segments"], error="",
               paged_loads=PAGED_LOADS if l["layout"] == "paged" else "")
    if l["references"] and env.cuda:
        gqa = l["kv_heads"] != l["heads"]
        for name, be in (("sdpa_flash", SDPBackend.FLASH_ATTENTION),
                         ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION)):
            def ref(be=be):
                with sdpa_kernel([be]):
                    return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
            try:
                ref()
                rms = sc.time_ms(ref, env.cuda)
                rec[f"{name}_ms"] = rms
                rec[f"{name}_tb_s"] = kv / rms / 1e9
            except Exception as exc:  # noqa: BLE001 - a backend that refuses the shape
                rec[f"{name}_ms"] = math.nan
                rec[f"{name}_error"] = str(exc).splitlines()[0][:120]
    return rec


def main(argv=None):
    sc.main(argv, doc=__doc__, stem="serving_decode",
            write_plan=lambda path: sc.write_plan(path, launches(), predict),
            read_plan=read_plan, run=run)


if __name__ == "__main__":
    main()
