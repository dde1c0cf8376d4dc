"""Kernel times of generated kernels on this machine's GPU (for ``iosim validate --time
--gpu``): each launch of a recorded file re-measured with ``triton.testing.do_bench`` (median),
its compiled registers and shared memory, and SDPA flash and cuDNN on the shapes SDPA runs.
Imports torch and triton lazily."""
from __future__ import annotations

import math
import time

__all__ = ["measure_launches", "LAUNCH_KEYS"]

#: the columns that describe a launch (the rest of a row is measurement)
LAUNCH_KEYS = ("cascade", "batch", "heads", "kv_heads", "q_len", "kv_len", "head_dim", "causal",
               "block_m", "block_n", "num_warps", "num_stages", "split_kv", "grid_order")

def _b(x) -> bool:
    return str(x).strip().lower() in ("true", "1", "yes")


def _launch(row: dict) -> dict:
    out = {}
    for k in LAUNCH_KEYS:
        v = row.get(k, "")
        if k in ("cascade", "grid_order"):
            out[k] = v or ("query-major" if k == "grid_order" else v)
        elif k == "causal":
            out[k] = _b(v)
        else:
            out[k] = int(v or 0)
    out["split_kv"] = out["split_kv"] or 1
    return out


def launch_mapping(l: dict):
    """The Mapping of a launch: the one the time model evaluates and the kernel is built from."""
    from iosim.gpu.kernels import kernel_mapping
    return kernel_mapping(l["cascade"], block_m=l["block_m"], block_n=l["block_n"],
                          num_warps=l["num_warps"], num_stages=l["num_stages"],
                          split_kv=l["split_kv"], grid_order=l["grid_order"],
                          kv_len=l["kv_len"])


def _module(l: dict):
    from iosim.gpu.kernels import kernel_for
    g = kernel_for(l["cascade"], launch_mapping(l), head_dim=l["head_dim"], dtype="bf16")
    return g, g.load()


def _inputs(l: dict, seed: int):
    import torch
    g = torch.Generator(device="cuda").manual_seed(seed)
    hk = l["kv_heads"] or l["heads"]
    p = l["q_len"] or l["kv_len"]
    mk = lambda h, n: torch.randn(l["batch"], h, n, l["head_dim"], device="cuda",  # noqa: E731
                                  dtype=torch.bfloat16, generator=g)
    return mk(l["heads"], p), mk(hk, l["kv_len"]), mk(hk, l["kv_len"])


def _facts(mod, names) -> tuple:
    regs, smem, spills = [], [], []
    for nm in names:
        try:
            for tup in getattr(mod, nm).device_caches.values():
                for k in tup[0].values():
                    regs.append(int(k.n_regs))
                    smem.append(int(k.metadata.shared))
                    spills.append(int(k.n_spills))
        except Exception:  # noqa: BLE001 - metadata is informative only
            pass
    j = lambda xs: "+".join(str(x) for x in xs)  # noqa: E731
    return j(regs), j(smem), j(spills)


def measure_launches(rows: list[dict], *, rep_ms: int = 100, progress: bool = True) -> list[dict]:
    """Measure every launch described by ``rows`` (the :data:`LAUNCH_KEYS` columns)."""
    import torch
    import torch.nn.functional as F
    from cascades.triton import analyze
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from tqdm import tqdm
    from triton.testing import do_bench
    dev = torch.cuda.get_device_name(0)
    out = []
    for row in tqdm(rows, desc="launches", unit="launch", disable=None if progress else True):
        l = _launch(row)
        rec = dict(l, device=dev)
        t0 = time.time()
        try:
            g, mod = _module(l)
            q, k, v = _inputs(l, seed=1)
            o = torch.empty_like(q)
            fn = lambda: mod.forward(q, k, v, causal=l["causal"], out=o)  # noqa: E731
            fn()
            torch.cuda.synchronize()
            ms = do_bench(fn, warmup=25, rep=rep_ms, return_mode="median")
            regs, smem, spills = _facts(mod, g.kernels)
            err = ""
        except Exception as exc:  # noqa: BLE001 - recorded, the next launch goes on
            ms, regs, smem, spills = float("nan"), "", "", ""
            err = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            q = k = v = o = None
        refs = {}
        import cascades
        plan = analyze(cascades.load(l["cascade"])) if not err else None
        # SDPA computes softmax attention: references for the softmax cascades it can run
        if plan is not None and plan.nonlinearity == "exp" and plan.family in (
                "online", "partials", "three-pass"):
            gqa = bool(l["kv_heads"] and l["kv_heads"] != l["heads"])
            causal = l["causal"] and not l["q_len"]
            for impl, be in (("sdpa_flash_ms", SDPBackend.FLASH_ATTENTION),
                             ("sdpa_cudnn_ms", SDPBackend.CUDNN_ATTENTION)):
                def run(be=be):
                    with sdpa_kernel([be]):
                        return F.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                                              enable_gqa=gqa)
                try:
                    run()
                    torch.cuda.synchronize()
                    refs[impl] = do_bench(run, warmup=25, rep=rep_ms, return_mode="median")
                except Exception:  # noqa: BLE001 - a backend that does not take the shape
                    refs[impl] = float("nan")
        rec.update(ms=ms, regs=regs, smem_bytes=smem, spills=spills, error=err,
                   sdpa_flash_ms=refs.get("sdpa_flash_ms", math.nan),
                   sdpa_cudnn_ms=refs.get("sdpa_cudnn_ms", math.nan),
                   seconds=round(time.time() - t0, 2))
        out.append(rec)
        del q, k, v, o
        torch.cuda.empty_cache()
    return out
