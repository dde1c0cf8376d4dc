"""Ring and Striped attention and the KV-shard decode combine on ``torch.distributed``.

The split is the one of :mod:`cascades.devices` (the same partition of queries and keys, the
same step order: at step ``s`` rank ``i`` holds key block ``(i - s) mod P``), the exchange is
point-to-point: every step each rank posts ``isend`` of the K/V block it holds to rank
``i + 1`` and ``irecv`` of the next block from rank ``i - 1`` into a second buffer (double
buffering), computes on the block it holds, then waits and swaps. The combine is the
cascade's log-sum-exp reduction. The per-rank kernel is :func:`partial_attention`, a torch
reference returning ``(O, LSE)``: the generated single-pass Triton kernels write O only, so
they cannot serve as the per-device kernel of a key split yet.

Works with the gloo backend on CPU (tests/test_parallel_dist.py, 2 and 4 processes) and NCCL on
GPUs (experiments/device/multidevice.py). torch is imported lazily: the module imports
without it.
"""
from __future__ import annotations

import os
import socket

__all__ = ["partial_attention", "combine", "ring_attention", "kv_shard_decode",
           "local_rows", "free_port", "spawn"]


def partial_attention(q, k, v, scale: float, keep=None, chunk: int = 4096):
    """``(O, LSE)`` of queries ``q`` ``[..., P, E]`` over keys ``k``/values ``v`` ``[..., M, *]``,
    ``keep`` a boolean ``[P, M]`` mask (``None``: all keys); fp32 statistics. Rows that see no
    key get ``O = 0`` and ``LSE = -inf``. Keys go ``chunk`` at a time (combined by their
    log-sum-exp), so the scores held are ``P x chunk``."""
    if k.shape[-2] > chunk:
        acc = None
        for a in range(0, k.shape[-2], chunk):
            b = min(a + chunk, k.shape[-2])
            part = partial_attention(q, k[..., a:b, :], v[..., a:b, :], scale,
                                     None if keep is None else keep[..., a:b], chunk)
            acc = part if acc is None else combine(acc, part)
        return acc
    return _partial(q, k, v, scale, keep)


def _partial(q, k, v, scale, keep):
    import torch
    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if keep is not None:
        s = s.masked_fill(~keep, float("-inf"))
    m = s.amax(dim=-1)
    mf = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    w = torch.exp(s - mf.unsqueeze(-1))
    z = w.sum(dim=-1)
    o = torch.matmul(w, v.float()) / z.clamp_min(torch.finfo(z.dtype).tiny).unsqueeze(-1)
    lse = torch.where(z > 0, mf + torch.log(z), torch.full_like(z, float("-inf")))
    return o, lse


def combine(a, b):
    """The log-sum-exp combine of two partials ``(O, LSE)`` over disjoint keys."""
    import torch
    (oa, la), (ob, lb) = a, b
    top = torch.maximum(la, lb)
    topf = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    wa = torch.where(torch.isfinite(la), torch.exp(la - topf), torch.zeros_like(la))
    wb = torch.where(torch.isfinite(lb), torch.exp(lb - topf), torch.zeros_like(lb))
    z = wa + wb
    o = (wa.unsqueeze(-1) * oa + wb.unsqueeze(-1) * ob) / z.clamp_min(1e-30).unsqueeze(-1)
    lse = torch.where(z > 0, topf + torch.log(z), torch.full_like(z, float("-inf")))
    return o, lse


def local_rows(n: int, world: int, rank: int, striped: bool):
    """The global positions rank ``rank`` holds (the partition of :mod:`cascades.devices`)."""
    from cascades.devices import partition
    return partition(n, world, "striped" if striped else "contiguous")[rank]


def ring_attention(q, k, v, qpos, kpos, *, causal: bool, scale: float | None = None,
                   group=None, timer=None):
    """Ring attention on this rank: ``q`` ``[H, c, E]`` its query rows at global positions
    ``qpos``, ``k``/``v`` ``[H, c, *]`` its key block at ``kpos`` (any partition: contiguous
    gives Ring Attention, striped gives Striped Attention). Returns ``(O, LSE)`` for its
    queries. Blocks of unequal length travel padded to the longest (padding masked out).
    ``timer(step, phase, fn)`` may wrap each step's compute and wait (CUDA events)."""
    import torch
    import torch.distributed as dist
    world = dist.get_world_size(group) if dist.is_initialized() else 1
    rank = dist.get_rank(group) if dist.is_initialized() else 0
    if scale is None:
        scale = q.shape[-1] ** -0.5
    # pad the block to the longest of any rank so every message has one shape
    cmax = int(kpos.numel())
    if world > 1:
        t = torch.tensor([cmax], device=q.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
        cmax = int(t.item())
    pad = cmax - kpos.numel()
    kb = torch.nn.functional.pad(k, (0, 0, 0, pad))
    vb = torch.nn.functional.pad(v, (0, 0, 0, pad))
    pb = torch.nn.functional.pad(kpos.to(torch.int64), (0, pad), value=-1)
    cur = (torch.cat([kb, vb], -1).contiguous(), pb.contiguous())   # K|V and positions
    nxt = (torch.empty_like(cur[0]), torch.empty_like(cur[1]))
    e, f = k.shape[-1], v.shape[-1]
    acc = None
    for s in range(world):
        reqs = []
        if s < world - 1:
            dst, src = (rank + 1) % world, (rank - 1) % world
            ops = [dist.P2POp(dist.isend, cur[0], dst, group), dist.P2POp(dist.isend, cur[1], dst, group),
                   dist.P2POp(dist.irecv, nxt[0], src, group), dist.P2POp(dist.irecv, nxt[1], src, group)]
            reqs = dist.batch_isend_irecv(ops)

        def step():
            kv, pos = cur
            keep = (pos >= 0).unsqueeze(0).expand(qpos.numel(), -1)
            if causal:
                keep = keep & (pos.unsqueeze(0) <= qpos.unsqueeze(1))
            return partial_attention(q, kv[..., :e], kv[..., e:e + f], scale, keep)

        part = timer(s, "compute", step) if timer else step()
        acc = part if acc is None else combine(acc, part)

        def wait():
            for r in reqs:
                r.wait()

        if reqs:
            timer(s, "wait", wait) if timer else wait()
            cur, nxt = nxt, cur
    return acc


def kv_shard_decode(q, k, v, kpos, n_keys: int, *, causal: bool, scale: float | None = None,
                    group=None, root: int = 0):
    """Decode over a KV cache sharded across ranks (DistAttention): every rank holds the
    queries ``q`` ``[H, P, E]`` (the newest ``P`` positions of ``n_keys``) and its shard of keys
    at ``kpos``; the partials are gathered on ``root`` and combined. Returns ``(O, LSE)`` on
    ``root`` (``None`` elsewhere)."""
    import torch
    import torch.distributed as dist
    world = dist.get_world_size(group) if dist.is_initialized() else 1
    rank = dist.get_rank(group) if dist.is_initialized() else 0
    if scale is None:
        scale = q.shape[-1] ** -0.5
    qpos = torch.arange(n_keys - q.shape[-2], n_keys, device=q.device)
    keep = (kpos.unsqueeze(0) <= qpos.unsqueeze(1)) if causal else None
    o, lse = partial_attention(q, k, v, scale, keep)
    if world == 1:
        return o, lse
    msg = torch.cat([o, lse.unsqueeze(-1)], -1).contiguous()
    bufs = [torch.empty_like(msg) for _ in range(world)] if rank == root else None
    dist.gather(msg, bufs, dst=root, group=group)
    if rank != root:
        return None
    acc = None
    for b in bufs:
        part = (b[..., :-1], b[..., -1])
        acc = part if acc is None else combine(acc, part)
    return acc


def free_port() -> int:
    """A TCP port free on this host (for a local process group's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world, port, backend, fn, args):
    import torch.distributed as dist
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def spawn(fn, world: int, *args, backend: str = "gloo"):
    """Run ``fn(rank, world, *args)`` in ``world`` processes joined in a process group on a free
    local port (``fn`` must be importable: a module-level function)."""
    import torch.multiprocessing as mp
    mp.spawn(_entry, args=(world, free_port(), backend, fn, args), nprocs=world, join=True)
