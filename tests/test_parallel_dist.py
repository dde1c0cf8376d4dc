"""Ring and Striped attention and the KV-shard decode combine on torch.distributed (gloo, CPU):
2 and 4 processes, causal and not, N not a multiple of the world size; output equal to
single-device attention (fp32 < 1e-5)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

from iosim.parallel import dist as pd  # noqa: E402


def _reference(q, k, v, causal, align_end=False):
    s = (q.double() @ k.double().transpose(-1, -2)) * q.shape[-1] ** -0.5
    if causal:
        nq, nk = q.shape[-2], k.shape[-2]
        shift = nk - nq if align_end else 0
        keep = torch.arange(nk)[None, :] <= torch.arange(nq)[:, None] + shift
        s = s.masked_fill(~keep, float("-inf"))
    return torch.softmax(s, -1) @ v.double()


def _worker(rank, world, n):
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(3, n, 16, generator=g) for _ in range(3))
    for striped in (False, True):
        rows = torch.as_tensor(pd.local_rows(n, world, rank, striped))
        for causal in (False, True):
            o, _ = pd.ring_attention(q[:, rows], k[:, rows], v[:, rows], rows, rows,
                                     causal=causal)
            ref = _reference(q, k, v, causal)[:, rows]
            err = (o.double() - ref).abs().max().item() if rows.numel() else 0.0
            assert err < 1e-5, (world, rank, striped, causal, err)
    # decode: 2 new queries against n keys sharded over the ranks
    keys = torch.as_tensor(pd.local_rows(n, world, rank, False))
    qd = torch.randn(3, 2, 16, generator=g)
    for causal in (False, True):
        out = pd.kv_shard_decode(qd, k[:, keys], v[:, keys], keys, n, causal=causal)
        if rank == 0:
            ref = _reference(qd, k, v, causal, align_end=True)
            assert (out[0].double() - ref).abs().max().item() < 1e-5


@pytest.mark.parametrize("world", [2, 4])
def test_ring_striped_and_kv_shard_on_gloo(world):
    pd.spawn(_worker, world, 23)          # 23 rows: not a multiple of 2 or 4


def test_world_size_one_without_a_process_group():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 9, 8, generator=g) for _ in range(3))
    pos = torch.arange(9)
    o, lse = pd.ring_attention(q, k, v, pos, pos, causal=True)
    assert (o.double() - _reference(q, k, v, True)).abs().max() < 1e-5
    assert torch.isfinite(lse).all()


def test_key_chunks_combine_to_the_same_partial():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 50, 8, generator=g) for _ in range(3))
    keep = torch.arange(50)[None, :] <= torch.arange(50)[:, None]
    a = pd.partial_attention(q, k, v, 0.3, keep, chunk=7)
    b = pd.partial_attention(q, k, v, 0.3, keep)
    assert (a[0] - b[0]).abs().max() < 1e-5 and (a[1] - b[1]).abs().max() < 1e-5
