"""Device: the generated MLA decode kernel (cascades.triton.emit_mla, from the `decode-mla`
cascade) on the GPU -- bf16, 128 query heads, 1 and 2 new tokens (2: causal among them),
batches of 1-64 requests, 4K-64K keys, FlashDecoding's split and stream-K, dense and paged
(pages of 64) latent caches of 512 + 64 dims; the default spill-free tiling (two programs per
row tile's value columns) and, on a few shapes, the one-program form (value_split 1).

Per launch: the median of CUDA-event times (warmup first, L2 flushed before every repeat) of
the whole decode (attention, combine, the per-head up-projection O = OL . W_UV as a torch
batched matmul) and of the attention alone (OL); the cache bandwidth achieved (576 . 2 bytes
per cached token of every request over the whole time) and the attention's TFLOP/s
(2 . heads . (576 + 512) per key and new token); the relative error of O against MLA computed
the non-absorbed way in float64 (per head K = c_KV . W_UK with k_R appended, V = c_KV . W_UV)
on two requests; the registers and spills of the compiled kernels; and the time model's
prediction (iosim.mla), registered in the plan before any launch ran.

The launches are the rows of the committed plan, experiments/data/serving_mla_plan.csv
(written by ``--plan`` on any machine, before measuring). Run from the repository root::

    python experiments/device/serving_mla.py            # -> $OUT/gpu_serving_mla.csv
    python experiments/device/serving_mla.py --plan experiments/data/serving_mla_plan.csv
    TRITON_INTERPRET=1 python experiments/device/serving_mla.py --dry-run   # CPU, tiny
"""
from __future__ import annotations

import math
import os
import sys

sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import serving_common as sc  # noqa: E402 - plan, pages, timer, measuring loop, command line

PLAN = os.path.join("experiments", "data", "serving_mla_plan.csv")
SMS = 132                    # H100 SXM: stream-K's programs (one per SM) in the plan
K = 1024
HEADS, LATENT, ROPE, DH, DV = 128, 512, 64, 128, 128   # DeepSeek-V3: d_h = 128 no-rope dims
FIELDS = ("launch", "layout", "schedule", "split_kv", "programs", "page_size", "batch", "heads",
          "q_len", "causal", "value_split", "block_kv", "kv_lens")


#: the value split of the registered plan's launches (the kernel's default when the plan was
#: written; the one-program form, value_split 1, is measured on a few shapes beside it)
PLAN_VALUE_SPLIT = 2


def launches() -> list[dict]:
    """The launch list (deterministic; the plan CSV is this list plus the predictions)."""
    from cascades.triton.emit_mla import MLA_TILING
    from iosim.mla import ROW_TILE
    from iosim.serving import flashdecoding_splits
    bn = MLA_TILING["block_n"]
    out = []

    def add(layout, sched, lens, q_len=1, page=None, vs=PLAN_VALUE_SPLIT):
        units = len(lens) * -(-(q_len * HEADS) // ROW_TILE) * vs
        blocks = max(-(-n // bn) for n in lens)
        split = flashdecoding_splits(units, blocks, SMS) if sched == "split" else ""
        out.append(dict(launch=len(out), layout=layout, schedule=sched, split_kv=split,
                        programs=SMS if sched == "streamk" else "", page_size=page or "",
                        batch=len(lens), heads=HEADS, q_len=q_len, causal=q_len > 1,
                        value_split=vs, block_kv=bn, kv_lens=";".join(str(n) for n in lens)))

    uniform = ((1, 4 * K), (1, 64 * K), (8, 16 * K), (16, 32 * K), (64, 4 * K), (64, 32 * K))
    for q_len in (1, 2):
        for b, n in uniform:
            for s in ("split", "streamk"):
                add("dense", s, (n,) * b, q_len)
    for q_len, shapes in ((1, ((1, 64 * K), (16, 32 * K), (64, 8 * K), (64, 32 * K))),
                          (2, ((64, 16 * K),))):
        for b, n in shapes:
            for s in ("split", "streamk"):
                add("paged", s, (n,) * b, q_len, page=64)
    for s in ("split", "streamk"):          # one long request among short ones
        add("dense", s, (64 * K, 2 * K, 2 * K, 2 * K))
    for q_len, b, n in ((1, 64, 32 * K), (2, 64, 32 * K), (1, 1, 64 * K), (1, 16, 32 * K)):
        add("dense", "split", (n,) * b, q_len, vs=1)     # the one-program form beside it
    return out


def predict(l: dict) -> dict:
    """The MLA time model's prediction of launch ``l`` (H100 preset)."""
    from iosim.mla import evaluate_mla
    lens = tuple(int(x) for x in str(l["kv_lens"]).split(";"))
    r = evaluate_mla("decode-mla", "h100", n=int(l["q_len"]), kv_lens=lens, heads=int(l["heads"]),
                     value_dim=DV, dtype="bf16", causal=l["causal"] in (True, "True"),
                     schedule=l["schedule"], split_kv=int(l["split_kv"]) if l["split_kv"] else None,
                     programs=int(l["programs"]) if l["programs"] else None,
                     page_size=int(l["page_size"]) if l["page_size"] else None,
                     block_kv=int(l["block_kv"]), value_split=int(l["value_split"]))
    return dict(predicted_ms=round(r.time_s * 1e3, 5),
                predicted_attention_ms=round(r.kernels[0]["time_s"] * 1e3, 5),
                predicted_cache_tb_s=round(r.bytes["cache"] / r.time_s / 1e12, 4),
                predicted_limiter=r.kernels[0]["limiter"])


def read_plan(path: str = PLAN) -> list[dict]:
    return sc.read_plan(path, ("launch", "batch", "heads", "q_len", "value_split", "block_kv"))


# dims of a launch: DeepSeek's on the GPU, tiny ones in the interpreter (--dry-run)
FULL = dict(latent=LATENT, rope=ROPE, dh=DH, dv=DV, chunk=128, heads=None)
TINY = dict(latent=32, rope=16, dh=8, dv=8, chunk=16, heads=8)


def _shrink(l: dict) -> dict:
    """A tiny version of a launch for the CPU interpreter (same layout, schedule, split)."""
    lens = [max(l["q_len"], n // 1024) for n in l["kv_lens"][:3]]
    return dict(l, batch=len(lens), heads=TINY["heads"], kv_lens=lens,
                programs=5 if l["programs"] else None,
                split_kv=min(l["split_kv"], 3) if l["split_kv"] else None,
                page_size=8 if l["page_size"] else None)


def _inputs(l, dims, dtype, dev, gen):
    """Non-absorbed weights and queries, the absorbed queries and the cache in the layout."""
    import torch
    B, H, P = l["batch"], l["heads"], l["q_len"]
    E, R, Dh, Dv = dims["latent"], dims["rope"], dims["dh"], dims["dv"]
    lens = l["kv_lens"]
    rnd = lambda *s, sc=1.0: (torch.randn(*s, device=dev, generator=gen) * sc).to(dtype)  # noqa: E731
    q_nope, q_rope = rnd(B, H, P, Dh), rnd(B, H, P, R)
    w_uk, w_uv = rnd(H, E, Dh, sc=E ** -0.5), rnd(H, E, Dv, sc=E ** -0.5)
    # absorbed query: q_nope . W_UKᵀ per head (in fp32, then the kernel's dtype)
    ql = torch.einsum("bhpd,hed->bhpe", q_nope.float(), w_uk.float()).to(dtype)
    kw = {}
    if l["layout"] == "dense":
        m = max(lens)
        ckv, kr = rnd(B, m, E), rnd(B, m, R)
        if len(set(lens)) > 1:
            kw["kv_lens"] = lens
        rows = [(ckv[b, :n], kr[b, :n]) for b, n in enumerate(lens)]
    else:       # pages of the pool in a random order: no request's pages are contiguous
        page = l["page_size"]
        table, need = sc.scattered_pages(lens, page, dev)
        ckv, kr = rnd(sum(need), page, E), rnd(sum(need), page, R)
        kw.update(block_table=table, kv_lens=lens)
        rows = list(zip(sc.request_rows(ckv, table, need, lens),
                        sc.request_rows(kr, table, need, lens)))
    return dict(ql=ql, qr=q_rope, ckv=ckv, kr=kr, wuv=w_uv, kw=kw, q_nope=q_nope, w_uk=w_uk,
                rows=rows)


def _rel_err(o, x, causal, scale, requests):
    """Relative error of O against non-absorbed MLA in float64 on ``requests`` (16 heads at a
    time: a head's keys and values of 64K tokens are 160 MB in float64)."""
    import torch
    num = den = 0.0
    for b in requests:
        ckv, kr = (t.double() for t in x["rows"][b])
        n = ckv.shape[0]
        for h in range(0, o.shape[1], 16):
            hs = slice(h, h + 16)
            k = torch.einsum("me,hed->hmd", ckv, x["w_uk"][hs].double())      # [h, M, Dh]
            k = torch.cat([k, kr[None].expand(k.shape[0], -1, -1)], -1)      # [h, M, Dh + R]
            v = torch.einsum("me,hef->hmf", ckv, x["wuv"][hs].double())      # [h, M, Dv]
            q = torch.cat([x["q_nope"][b, hs].double(), x["qr"][b, hs].double()], -1)
            s = scale * q @ k.transpose(1, 2)
            if causal:
                p = s.shape[-2]
                keep = (torch.arange(n, device=s.device)[None, :]
                        <= torch.arange(p, device=s.device)[:, None] + n - p)
                s = s.masked_fill(~keep, float("-inf"))
            ref = torch.softmax(s, -1) @ v
            num += float((o[b, hs].double() - ref).norm() ** 2)
            den += float(ref.norm() ** 2)
    return math.sqrt(num / den)


def _resources(mod) -> tuple:
    """(max registers, max spills) over the compiled partial kernels of ``mod`` (GPU only)."""
    regs = spills = None
    try:
        fn = getattr(mod, mod.KERNELS[0])
        for cache in fn.device_caches.values():
            for k in cache[0].values():
                regs = max(regs or 0, int(k.n_regs))
                spills = max(spills or 0, int(k.n_spills))
    except Exception:  # noqa: BLE001 - another Triton's cache layout: left empty
        pass
    return regs, spills


def run(rows: list[dict], dry: bool = False) -> list[dict]:
    """The launches measured (see the module text); ``dry``: tiny ones in the interpreter."""
    from cascades.triton.emit_mla import generate_mla
    mods = {}

    def kernel(l, env):
        vs = l["value_split"]
        if vs not in mods:
            dims = FULL if env.cuda else TINY
            tile = (dict(block_n=l["block_kv"]) if env.cuda
                    else dict(block_m=16, block_n=16, num_warps=4, num_stages=1))
            mods[vs] = generate_mla("decode-mla", latent=dims["latent"], rope=dims["rope"],
                                    chunk=dims["chunk"], value_split=vs,
                                    dtype="bf16" if env.cuda else "fp16", **tile).load()
        return mods[vs]

    return sc.measure_rows(rows, dry, FIELDS, _shrink, kernel, _measure)


def _measure(l, mod, env) -> dict:
    """One launch: the whole decode's and the attention's times, bandwidth, TFLOP/s, error,
    registers and spills."""
    import torch
    dims = FULL if env.cuda else TINY
    gen = torch.Generator(device=env.dev).manual_seed(l["launch"])
    x = _inputs(l, dims, env.dtype, env.dev, gen)
    scale = 1 / math.sqrt(dims["dh"] + dims["rope"])
    args = (x["ql"], x["qr"], x["ckv"], x["kr"])
    pl = mod.plan(*args, schedule=l["schedule"], split_kv=l["split_kv"],
                  programs=l["programs"], **x["kw"])
    ol = mod.attention(*args, scale=scale, causal=l["causal"], plan=pl)
    o = mod.forward(*args, x["wuv"], scale=scale, causal=l["causal"], plan=pl, latent_out=ol)
    full = lambda: mod.forward(*args, x["wuv"], scale=scale, causal=l["causal"],  # noqa: E731
                               plan=pl, latent_out=ol, out=o)
    attn = lambda: mod.attention(*args, scale=scale, causal=l["causal"], plan=pl,  # noqa: E731
                                 out=ol)
    full()
    lens, p = l["kv_lens"], l["q_len"]
    err = _rel_err(o, x, l["causal"], scale, sorted({0, len(lens) - 1}))
    ms = sc.time_ms(full, env.cuda)
    ms_attn = sc.time_ms(attn, env.cuda)
    seen = sum(n * p - (p * (p - 1) // 2 if l["causal"] else 0) for n in lens)
    flops = 2.0 * l["heads"] * (dims["latent"] + dims["rope"] + dims["latent"]) * seen
    cache = sum(lens) * (dims["latent"] + dims["rope"]) * 2
    regs, spills = _resources(mod) if env.cuda else (None, None)
    return dict(ms=ms, attention_ms=ms_attn, cache_tb_s=cache / ms / 1e9,
                attention_cache_tb_s=cache / ms_attn / 1e9,
                attention_tflop_s=flops / ms_attn / 1e9, rel_err_vs_fp64=err,
                programs_run=pl["programs"], segments=pl["segments"], n_regs=regs,
                n_spills=spills, error="")


def main(argv=None):
    sc.main(argv, doc=__doc__, stem="serving_mla",
            write_plan=lambda path: sc.write_plan(path, launches(), predict),
            read_plan=read_plan, run=run)


if __name__ == "__main__":
    main()
