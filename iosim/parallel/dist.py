"""Ring and Striped attention and the KV-shard decode combine on ``torch.distributed``.

The split is the one of :mod:`cascades.devices` (the same partition of queries and keys, the
same step order: at step ``s`` rank ``i`` holds key block ``(i - s) mod P``), the exchange is
point-to-point: every step each rank posts ``isend`` of the K/V block it holds to rank
``i + 1`` and ``irecv`` of the next block from rank ``i - 1`` into a second buffer (double
buffering), computes on the block it holds, then waits and swaps. The combine is the
cascade's log-sum-exp reduction. The per-rank kernel (:func:`select_kernel`) is the generated
Triton kernel of the cascade with its log-sum-exp output (``Tiling(lse=True)``: each block
launched with the causal diagonal's offset, derived from the positions) on a GPU, or in
Triton's interpreter on the CPU when ``TRITON_INTERPRET=1``; otherwise :func:`partial_attention`,
a torch reference returning the same ``(O, LSE)``.

Works with the gloo backend on CPU (tests/test_parallel_dist.py, 2 and 4 processes) and NCCL on
GPUs (experiments/device/multidevice.py). torch is imported lazily: the module imports
without it.
"""
from __future__ import annotations

import os
import socket

__all__ = ["partial_attention", "combine", "ring_attention", "kv_shard_decode",
           "local_rows", "free_port", "spawn", "select_kernel", "BlockKernel",
           "ring_transfer"]


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


# --------------------------------------------------------------------- the per-rank kernel
_KERNELS: dict = {}
#: the torch reference's largest score tile or mask (elements): rows go in groups below it
_REF_ELEMS = 2 ** 27
_TORCH_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


class BlockKernel:
    """The per-rank kernel: ``(q [H, P, E], k [Hkv, M, E], v [Hkv, M, F], scale, causal,
    offset) -> (O, LSE)`` in fp32, key ``b`` visible to query ``a`` where ``b <= a + offset``
    (causal); ``name`` says which kernel it is (the generated Triton kernel or the torch
    reference)."""

    def __init__(self, name: str, mod=None, plan=None):
        self.name, self._mod, self._plan = name, mod, plan

    @property
    def generated(self) -> bool:
        return self._mod is not None

    def __call__(self, q, k, v, scale, causal=False, offset=0):
        import torch
        if self._mod is None:
            g = q.shape[0] // k.shape[0]
            if g > 1:                        # grouped-query heads share a K/V head
                k, v = k.repeat_interleave(g, 0), v.repeat_interleave(g, 0)
            # rows at a time: scores (keys 4096 at a time) and mask of at most _REF_ELEMS
            rows = max(1, min(_REF_ELEMS // (q.shape[0] * max(1, min(k.shape[-2], 4096))),
                              _REF_ELEMS // max(1, k.shape[-2])))
            parts = []
            for a in range(0, q.shape[-2], rows):
                b = min(a + rows, q.shape[-2])
                keep = None
                if causal:
                    dev = q.device
                    keep = (torch.arange(k.shape[-2], device=dev)[None, :]
                            <= torch.arange(a, b, device=dev)[:, None] + int(offset))
                parts.append(partial_attention(q[..., a:b, :], k, v, scale, keep))
            if len(parts) == 1:
                return parts[0]
            return torch.cat([p[0] for p in parts], -2), torch.cat([p[1] for p in parts], -1)
        hq, p, f = q.shape[0], q.shape[1], v.shape[-1]
        o = torch.empty((1, hq, p, f), device=q.device, dtype=torch.float32)
        lse = torch.empty((1, hq, p), device=q.device, dtype=torch.float32)
        kw = {}
        if "scale" in self._plan.params:
            kw["scale"] = float(scale)
        if self._plan.causal_param:
            kw[self._plan.causal_param] = bool(causal)
        self._mod.forward(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), out=o, lse=lse,
                          offset=int(offset), **kw)
        return o[0], lse[0]


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def select_kernel(kernel="auto", *, dtype=None, head_dim: int = 128, device=None,
                  cascade: str = "attention-1pass") -> BlockKernel:
    """The per-rank kernel: ``"triton"`` the cascade's generated kernel with its log-sum-exp
    output (on a CUDA device, or on the CPU in Triton's interpreter, ``TRITON_INTERPRET=1``),
    ``"torch"`` the torch reference, ``"auto"`` the first where it can run. A
    :class:`BlockKernel` passes through."""
    if isinstance(kernel, BlockKernel):
        return kernel
    if kernel not in ("auto", "triton", "torch"):
        raise ValueError(f"kernel must be 'auto', 'triton' or 'torch', got {kernel!r}")
    ref = BlockKernel("torch reference (fp32 statistics)")
    if kernel == "torch":
        return ref
    import torch
    from cascades.triton import CodegenError, triton_available
    cuda = device is not None and torch.device(device).type == "cuda"
    why = None
    if not triton_available():
        why = "torch and triton are not both installed"
    elif not (cuda or _interpreting()):
        why = "a CPU tensor needs Triton's interpreter (TRITON_INTERPRET=1)"
    dt = _TORCH_DTYPES.get(str(dtype).replace("torch.", ""), None) if dtype is not None else "bf16"
    if why is None and dt is None:
        why = f"no generated kernel for {dtype}"
    if why is None:
        try:
            return _generated(cascade, dt, head_dim, cuda)
        except CodegenError as e:
            why = str(e)
    if kernel == "triton":
        raise ValueError(f"the generated per-device kernel cannot run: {why}")
    return ref


def _generated(cascade: str, dt: str, head_dim: int, cuda: bool) -> BlockKernel:
    from cascades.triton import Tiling, fast_tiling, generate
    if cuda and dt != "fp32":
        t = fast_tiling(head_dim, dt, lse=True)
    elif cuda:
        t = Tiling(block_m=64, block_n=32, num_warps=4, num_stages=2, head_dim=head_dim,
                   dtype="fp32", lse=True)
    else:                                    # the interpreter: small tiles
        t = Tiling(block_m=16, block_n=16, num_warps=4, num_stages=1, head_dim=head_dim,
                   dtype=dt, lse=True)
    key = (cascade, t, cuda, _interpreting())
    hit = _KERNELS.get(key)
    if hit is None:
        gen = generate(cascade, t)
        where = "" if cuda else ", interpreter"
        hit = _KERNELS[key] = BlockKernel(
            f"generated triton {gen.cascade} ({dt}, BLOCK_M={t.block_m}, BLOCK_N={t.block_n}"
            f"{where})", gen.load(), gen.plan)
    return hit


# ------------------------------------------------------------------ positions of a block
def _progression(pos):
    """``[length, first, stride, ok]`` (an int64 tensor on ``pos``'s device, no host sync) of
    a block's positions: ``ok`` where they are an increasing arithmetic progression (stride 0:
    fewer than two positions)."""
    import torch
    n = pos.numel()
    p = pos.reshape(-1).to(torch.int64)
    if n < 2:
        first = p[:1] if n else torch.zeros(1, dtype=torch.int64, device=p.device)
        return torch.cat([torch.tensor([n], device=p.device), first,
                          torch.tensor([0, 1], device=p.device)])
    st = p[1] - p[0]
    ok = ((p[1:] - p[:-1]) == st).all() & (st > 0)
    return torch.stack([torch.tensor(n, device=p.device), p[0], st, ok.to(torch.int64)])


def block_plan(q: tuple, k: tuple, causal: bool):
    """How a query block meets a key block (each ``(length, first, stride, ok)``): ``("skip",
    0)`` no query sees a key, ``("full", 0)`` every query sees every key, ``("partial", off)``
    key ``b`` visible to query ``a`` where ``b <= a + off``; ``None`` where the positions are
    not progressions of one stride (the kernel then takes an explicit mask)."""
    (cq, q0, qs, qok), (ck, k0, ks, kok) = q, k
    if cq == 0 or ck == 0:
        return ("skip", 0)
    if not causal:
        return ("full", 0)
    if not (qok and kok) or (qs and ks and qs != ks):
        return None
    off = (q0 - k0) // (qs or ks or 1)
    if off >= ck - 1:
        return ("full", 0)
    if off + cq - 1 < 0:
        return ("skip", 0)
    return ("partial", off)


def _empty(q, f):
    import torch
    return (torch.zeros(q.shape[:-1] + (f,), device=q.device, dtype=torch.float32),
            torch.full(q.shape[:-1], float("-inf"), device=q.device, dtype=torch.float32))


def _post(cur, nxt, rank, world, group):
    import torch.distributed as dist
    dst, src = (rank + 1) % world, (rank - 1) % world
    ops = [dist.P2POp(dist.isend, cur[0], dst, group), dist.P2POp(dist.isend, cur[1], dst, group),
           dist.P2POp(dist.irecv, nxt[0], src, group), dist.P2POp(dist.irecv, nxt[1], src, group)]
    return dist.batch_isend_irecv(ops)


def ring_attention(q, k, v, qpos, kpos, *, causal: bool, scale: float | None = None,
                   group=None, timer=None, kernel="auto"):
    """Ring attention on this rank: ``q`` ``[H, c, E]`` its query rows at global positions
    ``qpos``, ``k``/``v`` ``[Hkv, c, *]`` its key block at ``kpos`` (any partition: contiguous
    gives Ring Attention, striped gives Striped Attention). Returns ``(O, LSE)`` (fp32) for its
    queries. Blocks of unequal length travel padded to the longest; each block is computed at
    its own length, with the causal offset its positions imply (blocks no query sees are
    skipped). ``kernel``: see :func:`select_kernel`. ``timer(step, phase, fn)`` may wrap each
    step's compute and wait (CUDA events)."""
    import torch
    import torch.distributed as dist
    world = dist.get_world_size(group) if dist.is_initialized() else 1
    rank = dist.get_rank(group) if dist.is_initialized() else 0
    if scale is None:
        scale = q.shape[-1] ** -0.5
    kern = select_kernel(kernel, dtype=q.dtype, head_dim=q.shape[-1], device=q.device)
    meta = _progression(kpos.to(q.device))
    parts = [meta]
    if world > 1:                         # every block's length and positions, once
        parts = [torch.empty_like(meta) for _ in range(world)]
        dist.all_gather(parts, meta, group=group)
    both = torch.stack([_progression(qpos.to(q.device))] + parts).tolist()   # one host sync
    qinfo, metas = tuple(both[0]), [tuple(m) for m in both[1:]]
    plans = [block_plan(qinfo, m, causal) for m in metas]
    cmax = max(m[0] for m in metas)
    pad = cmax - kpos.numel()
    kb = torch.nn.functional.pad(k, (0, 0, 0, pad))
    vb = torch.nn.functional.pad(v, (0, 0, 0, pad))
    pb = torch.nn.functional.pad(kpos.to(torch.int64), (0, pad), value=-1)
    cur = (torch.cat([kb, vb], -1).contiguous(), pb.contiguous())   # K|V and positions
    nxt = (torch.empty_like(cur[0]), torch.empty_like(cur[1]))
    e, f = k.shape[-1], v.shape[-1]
    acc = None
    for s in range(world):
        reqs = _post(cur, nxt, rank, world, group) if s < world - 1 else []
        j = (rank - s) % world

        def step():
            kv, pos = cur
            plan, ck = plans[j], metas[j][0]
            if plan is None:              # not progressions: an explicit mask
                keep = (pos >= 0).unsqueeze(0).expand(qpos.numel(), -1)
                keep = keep & (pos.unsqueeze(0) <= qpos.unsqueeze(1))
                return partial_attention(q, kv[..., :e], kv[..., e:e + f], scale, keep)
            if plan[0] == "skip":
                return None
            return kern(q, kv[..., :ck, :e], kv[..., :ck, e:e + f], scale,
                        plan[0] == "partial", plan[1])

        part = timer(s, "compute", step) if timer else step()
        if part is not None:
            acc = part if acc is None else combine(acc, part)

        def wait():
            for r in reqs:
                r.wait()

        if reqs:
            timer(s, "wait", wait) if timer else wait()
            cur, nxt = nxt, cur
    return acc if acc is not None else _empty(q, f)


def ring_transfer(k, v, *, group=None, timer=None) -> None:
    """Only the exchange of :func:`ring_attention` (``world - 1`` steps of sending a K/V block
    like ``k``/``v`` and its positions to the next rank and receiving the previous rank's),
    each step wrapped in ``timer(step, "transfer", fn)``: the transfer time of a step, which
    the ring's own wait shows only where it is not hidden."""
    import torch
    import torch.distributed as dist
    world = dist.get_world_size(group) if dist.is_initialized() else 1
    rank = dist.get_rank(group) if dist.is_initialized() else 0
    cur = (torch.cat([k, v], -1).contiguous(),
           torch.zeros(k.shape[-2], dtype=torch.int64, device=k.device))
    nxt = (torch.empty_like(cur[0]), torch.empty_like(cur[1]))
    for s in range(world - 1):
        def go():
            for r in _post(cur, nxt, rank, world, group):
                r.wait()
        timer(s, "transfer", go) if timer else go()
        cur, nxt = nxt, cur


def kv_shard_decode(q, k, v, kpos, n_keys: int, *, causal: bool, scale: float | None = None,
                    group=None, root: int = 0, kernel="auto"):
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
    kern = select_kernel(kernel, dtype=q.dtype, head_dim=q.shape[-1], device=q.device)
    p = q.shape[-2]
    plan = block_plan((p, n_keys - p, 1, 1), tuple(_progression(kpos).tolist()), causal)
    if plan is None:
        qpos = torch.arange(n_keys - p, n_keys, device=q.device)
        keep = (kpos.unsqueeze(0) <= qpos.unsqueeze(1)) if causal else None
        o, lse = partial_attention(q, k, v, scale, keep)
    elif plan[0] == "skip":
        o, lse = _empty(q, v.shape[-1])
    else:
        o, lse = kern(q, k, v, scale, plan[0] == "partial", plan[1])
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
