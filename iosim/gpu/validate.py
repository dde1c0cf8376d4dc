"""GPU validation: which launches are measured, and running them under Nsight Compute.

``measure(shapes, out_dir)`` profiles, for each shape, the generated ``attention-1pass``
kernel in both grid orders and PyTorch SDPA's flash and cuDNN kernels, plus one shape of the
other generated cascades (FA1, sigmoid, 3-pass, 2-pass) so that their IO differences show,
and writes ``gpu_ncu.csv``. Predictions are joined afterwards (:mod:`iosim.gpu.compare`).
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

from iosim.errors import IosimError
from iosim.gpu.shapes import Shape, default_shapes

#: the tiling validated (and compiled into the generated kernel): the Mapping's knobs
VALIDATION_TILING = dict(block_m=128, block_n=64, num_warps=8, num_stages=3)
EXTRA_CASCADES = ("flash1", "sigmoid", "attention-3pass", "attention-2pass")
EXTRA_SHAPE = Shape(1, 16, 4096, 64, False)


def has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    try:
        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - a broken driver is "no GPU" for us
        return False


def require_gpu() -> None:
    import importlib.util
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("triton") is None:
        raise IosimError("GPU validation needs torch and triton (pip install 'iosim[gpu]') "
                         "and a CUDA GPU")
    if not has_cuda():
        raise IosimError("no CUDA GPU is visible on this machine: GPU validation needs one "
                         "(the recorded measurements are in experiments/data/gpu_ncu.csv)")


def validation_configs(shapes: list[Shape] | None = None, *, extras: bool = True,
                       references: bool = True):
    from iosim.gpu.runner import Config
    shapes = shapes or default_shapes()
    out = []
    for s in shapes:
        for order in ("query-major", "head-major"):
            out.append(Config("generated", s, grid_order=order, **VALIDATION_TILING))
        if references:
            out.append(Config("sdpa-flash", s))
            out.append(Config("sdpa-cudnn", s))
    if extras:
        for c in ("attention-1pass",) + EXTRA_CASCADES:
            for causal in (False, True):
                s = Shape(EXTRA_SHAPE.batch, EXTRA_SHAPE.heads, EXTRA_SHAPE.seq,
                          EXTRA_SHAPE.head_dim, causal)
                out.append(Config("generated", s, cascade=c, **VALIDATION_TILING))
    return out


def write_csv(rows: list[dict], path: str | Path) -> None:
    keys: list[str] = []
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def measure(shapes: list[Shape] | None, out_dir: str | Path, *, extras: bool = True,
            references: bool = True) -> list[dict]:
    """Profile the validation configurations under ncu; write ``out_dir/gpu_ncu.csv``."""
    require_gpu()
    from iosim.gpu import ncu
    configs = validation_configs(shapes, extras=extras, references=references)
    rows = ncu.profile(configs, Path(out_dir) / "ncu_work")
    write_csv(rows, os.path.join(out_dir, "gpu_ncu.csv"))
    return rows
