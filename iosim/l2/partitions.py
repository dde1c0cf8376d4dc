"""The two L2 partitions of the H100, as measured: which SMs sit on which side.

``experiments/device/l2_latency_map.py`` times L2 hits of single lines from every SM (chains of
dependent ``.cg`` loads). The (SM, line) latency matrix is two blocks: 66 SMs answer one half of
the lines ~31 cycles faster than the other half, the other 66 SMs the reverse; which half a line
belongs to alternates every 256 bytes. :func:`split` recovers the two groups from such a matrix
(the sign of its first principal component); :data:`H100_SIDE_A` is the split measured on the
first lent H100 (three launches, identical), and :func:`side_of` gives the side of each SM id.
The map belongs to one GPU: a second H100 (gpu_l2_latency_2.npz) splits 64/68 SMs, 23% of them
on the same side as on the first; on both, every GPC has SMs on both sides (8 and 8 in the
16-SM GPCs, 6 and 8 in the 14-SM ones).

What it explains (``tests/test_partitions.py`` checks both against the recorded data):
the sides microbenchmark (``gpu_l2sides.csv``), where a 30 MiB buffer re-read only by the SMs
of a group missed fully for every GPC but half (0.50) for SMs 124-127 and 128-131 -- those two
groups lie on one side, every GPC straddles both; and the readers rule's shape (a line read by
k blocks costs 0.72-0.79 up to k = 11, 0.95-1 from 33): consecutive block ids are dispatched to
runs of SMs on one side.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iosim.l2.simulate import L2_SIDE_A

#: SM ids on one side ("A") of the L2 on the first lent H100 (the rest are side "B"; the
#: model's iosim.l2.simulate.L2_SIDE_A): experiments/data/gpu_l2_latency.npz
H100_SIDE_A = L2_SIDE_A


def side_of(sm_ids, side_a=H100_SIDE_A) -> np.ndarray:
    """0 for SMs on side A, 1 for the others."""
    a = np.zeros(max(int(np.max(sm_ids)) + 1, max(side_a) + 1), dtype=np.int64)
    a[list(side_a)] = 1
    return 1 - a[np.asarray(sm_ids, dtype=np.int64)]


@dataclass(frozen=True)
class Split:
    """Two groups of SMs and of lines from an (SM, line) latency matrix."""
    sm_side: np.ndarray          # 0/1 per SM (row); side 0 holds the SM with the lowest id
    line_side: np.ndarray        # 0/1 per line (column): the side that answers it faster
    near_cycles: float           # mean latency of a line from its own side's SMs
    far_cycles: float            # ... from the other side's SMs
    residual_cycles: float       # sd of what the 2 x 2 block means leave


def split(latency: np.ndarray) -> Split:
    """Split the rows (SMs) and columns (lines) of a latency matrix into two groups each: the
    sign of the first principal component of the doubly centred matrix."""
    m = np.asarray(latency, dtype=np.float64)
    if m.ndim != 2 or min(m.shape) < 2 or not np.isfinite(m).all():
        raise ValueError("split needs a finite (SMs x lines) latency matrix")
    x = m - m.mean(0, keepdims=True)
    x = x - x.mean(1, keepdims=True)
    u, _, vt = np.linalg.svd(x, full_matrices=False)
    sm = (u[:, 0] > 0).astype(np.int64)
    if sm[0]:
        sm, u, vt = 1 - sm, -u, -vt
    # a line is near for the side whose SMs answer it faster
    lat0 = m[sm == 0].mean(0)
    lat1 = m[sm == 1].mean(0)
    line = (lat1 < lat0).astype(np.int64)
    near = m[sm[:, None] == line[None, :]]
    far = m[sm[:, None] != line[None, :]]
    blocks = np.where(sm[:, None] == line[None, :], near.mean(), far.mean())
    return Split(sm, line, float(near.mean()), float(far.mean()), float(np.std(m - blocks)))
