"""Device-side work: correctness checks, timings and the script Nsight Compute profiles.

Run on a machine with a CUDA GPU, torch and triton::

    python -m iosim.gpu.runner check   --out DIR      # generated kernels vs SDPA math / fp64
    python -m iosim.gpu.runner bench   --out DIR      # TFLOP/s: generated vs SDPA backends
    python -m iosim.gpu.runner profile --plan P.json  # launched by iosim.gpu.ncu under ncu

Everything here imports torch and triton lazily; the rest of iosim never needs them.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass

from iosim.gpu.shapes import Shape

SDPA_BACKENDS = {"sdpa-flash": "FLASH_ATTENTION", "sdpa-cudnn": "CUDNN_ATTENTION",
                 "sdpa-efficient": "EFFICIENT_ATTENTION", "sdpa-math": "MATH"}


@dataclass(frozen=True)
class Config:
    """One measured launch: an implementation on a shape (generated: cascade + tiling)."""
    impl: str                     # "generated" or a key of SDPA_BACKENDS
    shape: Shape
    cascade: str = "attention-1pass"
    block_m: int = 128
    block_n: int = 64
    num_warps: int = 8
    num_stages: int = 3
    grid_order: str = "query-major"
    dtype: str = "bf16"
    split_kv: int = 4
    fast_exp: bool = False
    pipeline: bool = False
    lazy_rescale: bool = False
    tma: bool = False
    warp_specialize: bool = False
    kv_eviction: str = ""
    q_eviction: str = ""
    o_eviction: str = ""

    def knobs(self) -> str:
        """The code-generation knobs as a short label ('plain' when none is on)."""
        on = [k for k in ("lazy_rescale", "pipeline", "fast_exp", "tma", "warp_specialize")
              if getattr(self, k)]
        return "+".join(on) or "plain"

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "shape"}
        d.update({"batch": self.shape.batch, "heads": self.shape.heads, "seq": self.shape.seq,
                  "head_dim": self.shape.head_dim, "causal": self.shape.causal})
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        shape = Shape(d["batch"], d["heads"], d["seq"], d["head_dim"], bool(d["causal"]))
        kw = {k: d[k] for k in cls.__dataclass_fields__ if k in d and k != "shape"}
        return cls(shape=shape, **kw)


def env_info() -> dict:
    import torch
    import triton
    p = torch.cuda.get_device_properties(0)
    return {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
            "triton": triton.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "sms": p.multi_processor_count,
            "l2_bytes": getattr(p, "L2_cache_size", None),
            "smem_per_sm": getattr(p, "shared_memory_per_multiprocessor", None)}


_MODS: dict = {}


def _module(cfg: Config):
    key = (cfg.cascade, cfg.block_m, cfg.block_n, cfg.num_warps, cfg.num_stages,
           cfg.grid_order, cfg.shape.head_dim, cfg.dtype, cfg.split_kv, cfg.fast_exp,
           cfg.pipeline, cfg.lazy_rescale, cfg.tma, cfg.warp_specialize, cfg.kv_eviction,
           cfg.q_eviction, cfg.o_eviction)
    if key not in _MODS:
        from iosim.gpu.kernels import kernel_for, kernel_mapping
        m = kernel_mapping(cfg.cascade, block_m=cfg.block_m, block_n=cfg.block_n,
                           num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                           split_kv=cfg.split_kv, grid_order=cfg.grid_order,
                           kv_len=cfg.shape.seq)
        knobs = dict(fast_exp=cfg.fast_exp, pipeline=cfg.pipeline,
                     lazy_rescale=cfg.lazy_rescale, tma=cfg.tma,
                     warp_specialize=cfg.warp_specialize, kv_eviction=cfg.kv_eviction,
                     q_eviction=cfg.q_eviction, o_eviction=cfg.o_eviction)
        _MODS[key] = kernel_for(cfg.cascade, m, head_dim=cfg.shape.head_dim, dtype=cfg.dtype,
                                **knobs).load()
    return _MODS[key]


def make_inputs(shape: Shape, dtype, *, seed: int = 0, kv_heads: int | None = None,
                q_len: int | None = None):
    import torch
    g = torch.Generator(device="cuda").manual_seed(seed)
    B, H, N, D = shape.batch, shape.heads, shape.seq, shape.head_dim
    hk = kv_heads or H
    q = torch.randn(B, H, q_len or N, D, device="cuda", dtype=dtype, generator=g)
    k = torch.randn(B, hk, N, D, device="cuda", dtype=dtype, generator=g)
    v = torch.randn(B, hk, N, D, device="cuda", dtype=dtype, generator=g)
    return q, k, v


def runner_for(cfg: Config, q, k, v):
    """A zero-argument callable launching ``cfg`` on (q, k, v)."""
    import torch
    import torch.nn.functional as F
    if cfg.impl == "generated":
        mod = _module(cfg)
        o = torch.empty_like(q)
        causal = cfg.shape.causal
        return lambda: mod.forward(q, k, v, causal=causal, out=o)
    from torch.nn.attention import SDPBackend, sdpa_kernel
    backend = getattr(SDPBackend, SDPA_BACKENDS[cfg.impl])

    def run():
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=cfg.shape.causal)
    return run


def _dt(name):
    import torch
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


# ------------------------------------------------------------------------------ check
def check(out_dir: str, knobs: dict | None = None, tag: str = "",
          names: tuple | None = None) -> list[dict]:
    """Generated kernels vs a float64 reference (SDPA math on upcast inputs), random inputs
    with partial tiles and causal masks; bf16/fp16 against 1e-2, fp32 against 1e-5.
    ``knobs``: code-generation knobs (fast_exp, pipeline, lazy_rescale) for every kernel."""
    import torch
    import torch.nn.functional as F
    knobs = dict(knobs or {})
    rows = []
    cases = []
    for name in names or ("attention-1pass", "flash1", "sigmoid", "attention-gqa",
                          "decode-splitk", "attention-3pass", "attention-2pass"):
        for d in (64, 128):
            for dtype in ("bf16", "fp16", "fp32"):
                if dtype == "fp32" and d == 128:
                    continue
                for causal in (False, True):
                    cases.append((name, d, dtype, causal))
    cfgs = []
    for name, d, dtype, causal in cases:
        n = 1000 if name != "attention-2pass" else 600
        B, H = 2, 4
        shape = Shape(B, H, n, d, causal)
        bm = 64 if dtype == "fp32" else 128
        bn = 32 if dtype == "fp32" else 64
        if name == "decode-splitk":
            bm = 16
        cfgs.append(Config("generated", shape, cascade=name, dtype=dtype, block_m=bm,
                           block_n=bn, num_warps=4 if dtype == "fp32" else 8, num_stages=2,
                           split_kv=5, grid_order="head-major" if causal else "query-major",
                           **knobs))
    precompile(cfgs, shrink=False)
    for (name, d, dtype, causal), cfg in zip(cases, cfgs):
        shape = cfg.shape
        n = shape.seq
        torch.manual_seed(hash((name, d, dtype, causal)) % 2**31)
        kvh = 2 if name == "attention-gqa" else None
        qlen = 9 if name == "decode-splitk" else None
        q, k, v = make_inputs(shape, _dt(dtype), seed=len(rows), kv_heads=kvh, q_len=qlen)
        mod = _module(cfg)
        out = torch.full_like(q, float("nan"))
        t0 = time.time()
        try:
            o = mod.forward(q, k, v, causal=causal, out=out)
            torch.cuda.synchronize()
            err_msg = ""
        except Exception as exc:  # noqa: BLE001 - record and go on
            o, err_msg = None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        ref = _reference(name, q, k, v, causal)
        if o is not None:
            got = o.double()
            finite = bool(torch.isfinite(got).all())
            rel = float((got - ref).norm() / ref.norm())
        else:
            finite, rel = False, float("nan")
        tol = 1e-5 if dtype == "fp32" else 1e-2
        rows.append({"cascade": name, "knobs": cfg.knobs(), "head_dim": d, "dtype": dtype,
                     "causal": causal, "seq": n, "q_len": q.shape[2], "rel_err": rel, "tol": tol,
                     "ok": finite and rel < tol, "error": err_msg,
                     "seconds": round(time.time() - t0, 2)})
        print(json.dumps(rows[-1]), flush=True)
    _ = F
    with open(os.path.join(out_dir, f"gpu_check{tag}.json"), "w") as f:
        json.dump(rows, f, indent=1)
    return rows


def _reference(name, q, k, v, causal):
    """float64 reference of each cascade family on the GPU."""
    import torch
    qd, kd, vd = q.double(), k.double(), v.double()
    G = qd.shape[1] // kd.shape[1]
    if G > 1:
        kd = kd.repeat_interleave(G, dim=1)
        vd = vd.repeat_interleave(G, dim=1)
    P, M, E = qd.shape[2], kd.shape[2], qd.shape[3]
    s = (qd @ kd.transpose(-1, -2)) / math.sqrt(E)
    off = M - P if name == "decode-splitk" else 0
    mask = torch.arange(M, device=q.device)[None, :] > torch.arange(P, device=q.device)[:, None] + off
    if name == "sigmoid":
        p = torch.sigmoid(s - math.log(M))
        if causal:
            p = p.masked_fill(mask, 0.0)
        return p @ vd
    if causal:
        s = s.masked_fill(mask, float("-inf"))
    return torch.softmax(s, dim=-1) @ vd


# ------------------------------------------------------------------------------ bench
def _warm(cfg_dicts: list[dict], shrink: bool = True) -> int:
    """Compile (by launching once on a small problem with the same specialisation: same
    heads, N a multiple of 512) each generated configuration; returns how many failed."""
    import torch
    bad = 0
    for d in cfg_dicts:
        cfg = Config.from_dict(d)
        small = (Shape(1, cfg.shape.heads, 512, cfg.shape.head_dim, cfg.shape.causal)
                 if shrink else cfg.shape)
        q, k, v = make_inputs(small, _dt(cfg.dtype), seed=0)
        try:
            runner_for(Config(**{**{f: getattr(cfg, f) for f in cfg.__dataclass_fields__},
                                 "shape": small}), q, k, v)()
            torch.cuda.synchronize()
        except Exception:  # noqa: BLE001 - reported again by the timed run
            bad += 1
    return bad


def _warm_full(cfg_dicts: list[dict]) -> int:
    return _warm(cfg_dicts, shrink=False)


def precompile(configs: list[Config], workers: int = 12, *, shrink: bool = True) -> None:
    """Compile the generated kernels of ``configs`` in parallel processes (they share Triton's
    cache), so that the timed run loads them instead of compiling one after another."""
    import multiprocessing as mp
    gen = {}
    for c in configs:
        if c.impl == "generated":
            key = (c.cascade, c.block_m, c.block_n, c.num_warps, c.num_stages, c.grid_order,
                   c.shape.heads % 16 == 0, c.shape.head_dim, c.shape.causal, c.dtype,
                   c.fast_exp, c.pipeline, c.lazy_rescale, c.tma, c.warp_specialize,
                   c.kv_eviction, c.q_eviction, c.o_eviction)
            gen.setdefault(key, c.to_dict())
    items = list(gen.values())
    if not items:
        return
    chunks = [items[i::workers] for i in range(min(workers, len(items)))]
    t0 = time.time()
    with mp.get_context("spawn").Pool(len(chunks)) as pool:
        bad = sum(pool.map(_warm if shrink else _warm_full, chunks))
    print(f"precompiled {len(items)} kernels in {time.time() - t0:.0f} s ({bad} failed)",
          flush=True)


def bench_configs(configs: list[Config], *, rep_ms: int = 200) -> list[dict]:
    """Median time (triton.testing.do_bench) and TFLOP/s of each configuration."""
    import torch
    from triton.testing import do_bench
    rows = []
    cache = {}
    for cfg in configs:
        key = (cfg.shape, cfg.dtype)
        if key not in cache:
            cache.clear()
            torch.cuda.empty_cache()
            cache[key] = make_inputs(cfg.shape, _dt(cfg.dtype), seed=1)
        q, k, v = cache[key]
        ms, err = float("nan"), ""
        try:
            fn = runner_for(cfg, q, k, v)
            fn()
            torch.cuda.synchronize()
            ms = do_bench(fn, warmup=25, rep=rep_ms, return_mode="median")
            err = ""
        except Exception as exc:  # noqa: BLE001
            ms, err = float("nan"), f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        row = cfg.to_dict()
        row.update({"knobs": cfg.knobs() if cfg.impl == "generated" else "",
                    "ms": ms, "tflops": cfg.shape.flops / (ms * 1e-3) / 1e12 if ms == ms else
                    float("nan"), "error": err})
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


# ---------------------------------------------------------------------------- profile
def _marker():
    import torch
    import triton
    import triton.language as tl

    @triton.jit
    def iosim_marker(x):
        tl.store(x, tl.load(x) + 1)
    buf = torch.zeros(1, device="cuda")
    return lambda: iosim_marker[(1,)](buf)


def profiled(fn, marker, cudart) -> None:
    """Run ``fn`` once more between cudaProfilerStart/Stop, after the marker kernel (how
    :mod:`iosim.gpu.ncu` tells the profiled launches apart)."""
    import torch
    torch.cuda.synchronize()
    cudart.cudaProfilerStart()
    marker()
    fn()
    torch.cuda.synchronize()
    cudart.cudaProfilerStop()


def profile(plan_path: str) -> None:
    """The script Nsight Compute runs (``--profile-from-start off``): for each configuration,
    warm up with the profiler off, then profile [marker kernel, one launch] between
    cudaProfilerStart/Stop. ``iosim.gpu.ncu`` splits the kernel rows at the markers."""
    import torch
    with open(plan_path) as f:
        plan = json.load(f)
    configs = [Config.from_dict(d) for d in plan["configs"]]
    marker = _marker()
    marker()
    cudart = torch.cuda.cudart()
    done = []
    cache = {}
    for i, cfg in enumerate(configs):
        key = (cfg.shape, cfg.dtype)
        if key not in cache:
            cache.clear()
            torch.cuda.empty_cache()
            cache[key] = make_inputs(cfg.shape, _dt(cfg.dtype), seed=2)
        q, k, v = cache[key]
        try:
            fn = runner_for(cfg, q, k, v)
            fn()
            torch.cuda.synchronize()
        except Exception as exc:  # noqa: BLE001 - skip a config that cannot run, say why
            print(f"skip {i}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}",
                  flush=True)
            continue
        profiled(fn, marker, cudart)
        done.append(i)
        print(f"profiled {i} {cfg.impl} {cfg.cascade} {cfg.shape.label()} {cfg.grid_order}",
              flush=True)
    with open(plan_path + ".done.json", "w") as f:
        json.dump({"done": done, "env": env_info()}, f)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m iosim.gpu.runner")
    ap.add_argument("what", choices=["check", "bench", "profile", "env"])
    ap.add_argument("--out", default=".")
    ap.add_argument("--plan", default=None)
    ap.add_argument("--knobs", default="",
                    help="comma-separated: fast_exp,pipeline,lazy_rescale,tma,warp_specialize")
    ap.add_argument("--cascades", default="", help="comma-separated subset of the cascades")
    a = ap.parse_args(argv)
    if a.what == "env":
        print(json.dumps(env_info()))
    elif a.what == "check":
        knobs = {k: True for k in a.knobs.split(",") if k}
        rows = check(a.out, knobs, tag=("_" + "+".join(sorted(knobs))) if knobs else "",
                     names=tuple(c for c in a.cascades.split(",") if c) or None)
        bad = [r for r in rows if not r["ok"]]
        print(f"check: {len(rows) - len(bad)} passed, {len(bad)} failed")
        return 1 if bad else 0
    elif a.what == "profile":
        profile(a.plan)
    elif a.what == "bench":
        with open(a.plan) as f:
            configs = [Config.from_dict(d) for d in json.load(f)["configs"]]
        rows = bench_configs(configs)
        with open(os.path.join(a.out, "bench.json"), "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
