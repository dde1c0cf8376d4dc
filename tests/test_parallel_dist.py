"""Ring and Striped attention and the KV-shard decode combine on torch.distributed (gloo, CPU):
2 and 4 processes, causal and not, N not a multiple of the world size, the per-rank kernel the
torch reference or the generated Triton kernel (in the interpreter); output equal to
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


def _worker(rank, world, n, kernels):
    for kernel in kernels:
        _check(rank, world, n, kernel)


def _check(rank, world, n, kernel):
    if kernel == "triton":      # the generated kernel runs, not the fallback
        assert pd.select_kernel("triton", dtype=torch.float32, head_dim=16).generated
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(3, n, 16, generator=g) for _ in range(3))
    for striped in (False, True):
        rows = torch.as_tensor(pd.local_rows(n, world, rank, striped))
        for causal in (False, True):
            o, _ = pd.ring_attention(q[:, rows], k[:, rows], v[:, rows], rows, rows,
                                     causal=causal, kernel=kernel)
            ref = _reference(q, k, v, causal)[:, rows]
            err = (o.double() - ref).abs().max().item() if rows.numel() else 0.0
            assert err < 1e-5, (world, rank, striped, causal, err)
    # decode: 2 new queries against n keys sharded over the ranks
    keys = torch.as_tensor(pd.local_rows(n, world, rank, False))
    qd = torch.randn(3, 2, 16, generator=g)
    for causal in (False, True):
        out = pd.kv_shard_decode(qd, k[:, keys], v[:, keys], keys, n, causal=causal,
                                 kernel=kernel)
        if rank == 0:
            ref = _reference(qd, k, v, causal, align_end=True)
            assert (out[0].double() - ref).abs().max().item() < 1e-5


def _triton_or_skip(monkeypatch, tmp_path_factory):
    from cascades.triton import triton_available
    if not triton_available():
        pytest.skip("needs triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")          # the spawned ranks inherit it
    monkeypatch.setenv("IOSIM_TRITON_CACHE", str(tmp_path_factory.getbasetemp() / "triton"))


@pytest.mark.parametrize("world", [2, 4])
def test_ring_striped_and_kv_shard_on_gloo(world, monkeypatch, tmp_path_factory):
    from cascades.triton import triton_available
    kernels = ["torch"]
    if triton_available():           # and the generated kernel, in Triton's interpreter
        _triton_or_skip(monkeypatch, tmp_path_factory)
        kernels.append("triton")
    pd.spawn(_worker, world, 23, kernels)    # 23 rows: not a multiple of 2 or 4


def test_block_plans_from_positions():
    # (length, first, stride, ok); hand-derived from key b visible to query a iff kpos <= qpos
    contiguous = [(4, 0, 1, 1), (4, 4, 1, 1), (4, 8, 1, 1)]
    assert pd.block_plan(contiguous[1], contiguous[1], True) == ("partial", 0)   # diagonal
    assert pd.block_plan(contiguous[1], contiguous[0], True) == ("full", 0)      # earlier keys
    assert pd.block_plan(contiguous[1], contiguous[2], True) == ("skip", 0)      # later keys
    # striped over 4 devices: queries 1, 5, 9 (device 1); keys 3, 7, 11 (device 3): query 5
    # sees key 3, query 9 keys 3 and 7 -> b <= a - 1
    assert pd.block_plan((3, 1, 4, 1), (3, 3, 4, 1), True) == ("partial", -1)
    assert pd.block_plan((3, 3, 4, 1), (3, 1, 4, 1), True) == ("partial", 0)
    assert pd.block_plan((3, 3, 4, 1), (3, 1, 4, 1), False) == ("full", 0)
    assert pd.block_plan((0, 0, 0, 1), (3, 1, 4, 1), True) == ("skip", 0)
    # decode: 2 queries at 21, 22 against keys 12..23 -> b <= a + 9; against 0..11: all
    assert pd.block_plan((2, 21, 1, 1), (12, 12, 1, 1), True) == ("partial", 9)
    assert pd.block_plan((2, 21, 1, 1), (12, 0, 1, 1), True) == ("full", 0)
    assert pd.block_plan((3, 0, 2, 1), (3, 0, 3, 1), True) is None     # two strides: a mask


def test_generated_kernel_with_grouped_heads_on_one_rank(monkeypatch, tmp_path_factory):
    _triton_or_skip(monkeypatch, tmp_path_factory)
    g = torch.Generator().manual_seed(4)
    q = torch.randn(4, 21, 16, generator=g)
    k, v = (torch.randn(2, 21, 16, generator=g) for _ in range(2))
    pos = torch.arange(21)
    kern = pd.select_kernel("triton", dtype=torch.float32, head_dim=16)
    assert kern.generated and "generated triton attention-1pass" in kern.name
    o, lse = pd.ring_attention(q, k, v, pos, pos, causal=True, kernel=kern)
    kk, vv = k.repeat_interleave(2, 0), v.repeat_interleave(2, 0)
    assert (o.double() - _reference(q, kk, vv, True)).abs().max() < 1e-5
    s = (q.double() @ kk.double().transpose(-1, -2)) * 0.25
    s = s.masked_fill(torch.arange(21)[None, :] > torch.arange(21)[:, None], float("-inf"))
    assert (lse.double() - torch.logsumexp(s, -1)).abs().max() < 1e-5
    with pytest.raises(ValueError, match="cannot run"):
        pd.select_kernel("triton", dtype=torch.float32, head_dim=24)      # no pow2 head dim
    assert not pd.select_kernel("auto", dtype=torch.float32, head_dim=24).generated


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 kernels need a CUDA GPU")
def test_generated_kernel_bf16_on_cuda_matches_fp32_attention():
    g = torch.Generator().manual_seed(5)
    n, world = 1000, 4
    q, k, v = (torch.randn(8, n, 128, generator=g) for _ in range(3))
    kern = pd.select_kernel("triton", dtype=torch.bfloat16, head_dim=128, device="cuda")
    assert kern.generated
    for causal in (False, True):
        ref = _reference(q, k, v, causal)
        for striped in (False, True):       # every rank's blocks, one after another
            for r in range(world):
                rows = torch.as_tensor(pd.local_rows(n, world, r, striped))
                acc = None
                for j in range(world):
                    keys = torch.as_tensor(pd.local_rows(n, world, j, striped))
                    plan = pd.block_plan(tuple(pd._progression(rows).tolist()),
                                         tuple(pd._progression(keys).tolist()), causal)
                    if plan[0] == "skip":
                        continue
                    part = kern(*(t[:, idx].cuda().bfloat16() for t, idx in
                                  ((q, rows), (k, keys), (v, keys))), 128 ** -0.5,
                                plan[0] == "partial", plan[1])
                    acc = part if acc is None else pd.combine(acc, part)
                err = (acc[0].double().cpu() - ref[:, rows]).abs().max().item()
                assert err < 1e-2, (causal, striped, r, err)


def test_world_size_one_without_a_process_group():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 9, 8, generator=g) for _ in range(3))
    pos = torch.arange(9)
    o, lse = pd.ring_attention(q, k, v, pos, pos, causal=True)
    assert (o.double() - _reference(q, k, v, True)).abs().max() < 1e-5
    assert torch.isfinite(lse).all()


def test_reference_kernel_in_groups_of_rows(monkeypatch):
    g = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(2, 37, 8, generator=g) for _ in range(3))
    ref = pd.select_kernel("torch")
    whole = ref(q, k, v, 0.3, True, -2)
    monkeypatch.setattr(pd, "_REF_ELEMS", 100)           # 1 row at a time
    rows = ref(q, k, v, 0.3, True, -2)
    assert torch.equal(torch.isinf(whole[1]), torch.isinf(rows[1]))
    assert torch.isinf(rows[1][:, :2]).all() and (rows[0][:, :2] == 0).all()
    assert (whole[0] - rows[0]).abs().max() < 1e-6
    fin = torch.isfinite(whole[1])
    assert (whole[1][fin] - rows[1][fin]).abs().max() < 1e-6


def test_key_chunks_combine_to_the_same_partial():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 50, 8, generator=g) for _ in range(3))
    keep = torch.arange(50)[None, :] <= torch.arange(50)[:, None]
    a = pd.partial_attention(q, k, v, 0.3, keep, chunk=7)
    b = pd.partial_attention(q, k, v, 0.3, keep)
    assert (a[0] - b[0]).abs().max() < 1e-5 and (a[1] - b[1]).abs().max() < 1e-5
