"""Triton source generated from a cascade plus a tiling.

>>> import cascades
>>> from cascades.triton import Tiling, generate
>>> src = generate(cascades.load("attention-1pass"), Tiling(head_dim=128, dtype="bf16"))
>>> print(src.source)            # a self-contained module: kernels + forward(q, k, v, ...)
>>> mod = src.load()             # needs torch and triton; compiles lazily on first launch
>>> o = mod.forward(q, k, v, causal=True)

The generator reads the cascade's IR (:func:`analyze`): the score map (scale, bias, exp or
sigmoid), the causal mask and its offset, the normalisation (deferred, per step, none, three
passes, partials plus combine) and grouped-query sharing. Unsupported cascades and tilings
raise :class:`CodegenError` (a one-line :class:`~cascades.errors.CascadeError`). This package
imports neither ``torch`` nor ``triton`` until :meth:`GeneratedSource.load` is called.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cascades.ir import Cascade
from cascades.triton.analyze import CodegenError, KernelPlan, analyze
from cascades.triton.emit import emit, kernel_prefix
from cascades.triton.tiling import DTYPE_BYTES, DTYPES, GRID_ORDERS, SMEM_LIMIT, Tiling

__all__ = ["Tiling", "GeneratedSource", "KernelPlan", "CodegenError", "analyze", "generate",
           "kernel_prefix", "GRID_ORDERS", "DTYPES", "DTYPE_BYTES", "SMEM_LIMIT",
           "triton_available", "fast_tiling", "FAST_TILINGS", "generate_serving"]

#: the fastest measured tiling and knobs per head dim for the forward kernel on the lent H100
#: (benchmarks/bench_gpu_kernels.py; docs/validation.md has the numbers). ``tma_from``: K/V
#: through tensor descriptors from this many keys on (faster at 16K and 64K, slower at 4K).
FAST_TILINGS = {
    128: dict(block_m=128, block_n=128, num_warps=8, num_stages=3, tma_from=8192),
    64: dict(block_m=128, block_n=64, num_warps=4, num_stages=3, tma_from=None),
}


def fast_tiling(head_dim: int, dtype: str = "bf16", seq_len: int | None = None, **kw) -> Tiling:
    """The speed-tuned tiling for ``head_dim`` and (optionally) the key length (falls back to
    the nearest measured head dim)."""
    near = min(FAST_TILINGS, key=lambda d: (abs(d - head_dim), d))
    args = dict(FAST_TILINGS[near])
    tma_from = args.pop("tma_from")
    args["tma"] = bool(tma_from and seq_len and seq_len >= tma_from)
    if dtype in ("fp32", "float32", "float"):
        args.update(fast_exp=False)
    args.update(kw)
    return Tiling(head_dim=head_dim, dtype=dtype, **args)


@dataclass(frozen=True)
class GeneratedSource:
    """The generated module's source, the plan it came from and the kernel names."""
    cascade: str
    plan: KernelPlan
    tiling: Tiling
    source: str
    kernels: tuple[str, ...]

    def load(self):
        """Write the source to a cache file and import it (Triton needs real source files)."""
        if not triton_available():
            raise CodegenError("running a generated kernel needs torch and triton "
                               "(pip install 'iosim[gpu]')")
        digest = hashlib.sha1(self.source.encode()).hexdigest()[:16]
        root = Path(os.environ.get("IOSIM_TRITON_CACHE",
                                   Path(tempfile.gettempdir()) / "iosim-triton"))
        root.mkdir(parents=True, exist_ok=True)
        name = f"{kernel_prefix(self.cascade)}_{digest}"
        path = root / f"{name}.py"
        if not path.exists() or path.read_text() != self.source:
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(self.source)
            os.replace(tmp, path)
        if name in sys.modules:
            return _Guarded(sys.modules[name])
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        return _Guarded(mod)

    def to_dict(self) -> dict:
        return {"cascade": self.cascade, "plan": self.plan.to_dict(),
                "tiling": self.tiling.to_dict(), "kernels": list(self.kernels)}


class _Guarded:
    """The loaded module, with Triton's compile and resource errors turned into one line."""

    def __init__(self, mod):
        self._mod = mod

    def __getattr__(self, name):
        return getattr(self._mod, name)

    def forward(self, *args, **kwargs):
        try:
            return self._mod.forward(*args, **kwargs)
        except ValueError as exc:
            raise CodegenError(str(exc).splitlines()[0]) from None
        except Exception as exc:  # noqa: BLE001 - Triton raises many types; report one line
            kind = type(exc).__name__
            if kind in ("OutOfResources", "CompilationError", "CompileTimeAssertionFailure") or (
                    kind == "RuntimeError" and "PassManager" in str(exc)):
                first = next((ln for ln in str(exc).splitlines() if ln.strip()), kind)
                raise CodegenError(f"Triton could not build the kernel ({kind}): "
                                   f"{first.strip()[:300]}") from None
            raise


def generate_serving(cascade, tiling: Tiling | None = None, **kw) -> GeneratedSource:
    """The serving decode module of a decode cascade: ragged, paged and dense caches; no
    split, FlashDecoding's split or stream-K (:mod:`cascades.triton.emit_decode`)."""
    from cascades.triton.emit_decode import generate_serving as gen
    return gen(cascade, tiling, **kw)


def triton_available() -> bool:
    return (importlib.util.find_spec("torch") is not None
            and importlib.util.find_spec("triton") is not None)


def generate(cascade: Cascade | str, tiling: Tiling | None = None, **tiling_kw) -> GeneratedSource:
    """Generate Triton source for ``cascade`` (a Cascade or a library name/path)."""
    if isinstance(cascade, str):
        from cascades.library import load
        cascade = load(cascade)
    from cascades.triton.emit_mla import generate_mla, mla_plan
    if mla_plan(cascade) is not None:        # latent attention: the MLA decode module
        return generate_mla(cascade, tiling, **tiling_kw)
    if tiling is None:
        tiling = Tiling(**tiling_kw)
    elif tiling_kw:
        from dataclasses import replace
        tiling = replace(tiling, **tiling_kw)
    from cascades.triton.emit_decode import _streamk_plan, generate_serving
    if _streamk_plan(cascade) is not None:   # stream-K decode: the serving decode module
        return generate_serving(cascade, tiling)
    plan = analyze(cascade)
    source, names = emit(plan, tiling)
    return GeneratedSource(cascade=cascade.name, plan=plan, tiling=tiling, source=source,
                           kernels=tuple(names))
