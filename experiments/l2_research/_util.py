"""Plumbing shared by the L2 research scripts: paths, ``--out``, a parallel map with a progress
bar. Importing it puts the repository root (for ``iosim``) and this folder (for the sibling
scripts) on ``sys.path``.

The scripts read their inputs from ``experiments/data`` (measured on the GPU, or the committed
output of another script) and write only into ``--out`` (default ``./out``): regenerating a
committed file means passing ``--out experiments/data`` (or figures/) explicitly, or comparing
a fresh copy with it (tests/test_committed_outputs.py).
"""
from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
DATA = os.path.join(ROOT, "experiments", "data")
CSRC = os.path.join(HERE, "csrc")
for _p in (HERE, ROOT):
    if _p not in sys.path:
        sys.path.insert(0, _p)


def parser(doc: str, workers: int | None = 2) -> argparse.ArgumentParser:
    """An argument parser with ``--out`` (and ``--workers`` unless ``workers`` is None)."""
    ap = argparse.ArgumentParser(description=doc.strip().splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(doc.strip().splitlines()[1:]))
    ap.add_argument("--out", default="out",
                    help="output directory, created if missing (default: ./out)")
    if workers is not None:
        ap.add_argument("--workers", type=int, default=workers,
                        help=f"worker processes (default {workers})")
    return ap


def out_path(out: str, name: str) -> str:
    """``out/name``, with ``out`` created."""
    os.makedirs(out, exist_ok=True)
    return os.path.join(out, name)


def pmap(fn, jobs: list, desc: str, workers: int = 2) -> list:
    """``[fn(j) for j in jobs]`` in ``workers`` processes (one process: in this one), in order,
    with a progress bar on stderr."""
    from tqdm import tqdm
    jobs = list(jobs)
    if workers <= 1:
        return [fn(j) for j in tqdm(jobs, desc=desc, file=sys.stderr)]
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(workers) as ex:
        return list(tqdm(ex.map(fn, jobs), total=len(jobs), desc=desc, file=sys.stderr))


def launch_label(w) -> str:
    """A Workload's shape as the data files write it: BxHxNxD[-causal] (Shape.label)."""
    from iosim.gpu.shapes import Shape
    return Shape(w.batch, w.heads, w.seq_q, w.head_dim, w.causal).label()
