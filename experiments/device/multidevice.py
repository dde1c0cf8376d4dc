"""Device: Ring and Striped attention on NCCL, timed per step and end to end, checked against one GPU.
Run on the GPU machine from the repository root (one process per GPU)::

    python experiments/device/multidevice.py --world 8          # all GPUs of a node
    python experiments/device/multidevice.py --world 2 --per-device 4K,16K --heads 8
    python experiments/device/multidevice.py --world 1          # one GPU: a smoke test
    TRITON_INTERPRET=1 python experiments/device/multidevice.py --backend gloo --world 2 \\
        --per-device 64,96 --heads 2 --head-dim 16 --dtype float32   # a CPU dry run

For every context per device ``c`` (default 512 ... 64K), heads (8 and 32), causal and not,
ring and striped (N = c x world, d = 128, bf16): the end-to-end time (median over repeats of the
slowest rank), per rank and step the compute and the wait for the block in flight (CUDA
events), per rank and step the transfer alone (the same exchange without compute), the
ring's extra peak memory, and the error of its output against attention of the same inputs
computed in fp32 (sampled rows) -- bf16 must stay below 1e-2 (fp32 below 1e-5) on every run
-- with, beside it, single-GPU SDPA's error on the same rows and the largest difference from
SDPA's output (flash in bf16, whose output rounding alone reaches 2**-9 |o|). Then a plain 256 MiB send/recv between ranks 0 and 1 (the link). NVLink multicast is off
(``NCCL_NVLS_ENABLE=0``) unless ``--nvls``. The per-device kernel is the generated Triton
kernel with its log-sum-exp (``--kernel auto``: the torch reference where it cannot run; the
``kernel`` column says which ran). Configurations run from the smallest; ``--budget-s``
stops starting new ones (the CSVs are rewritten after each).

Writes ``$OUT/multidevice.csv`` (one row per configuration, the model's prediction beside:
dgx-h100), ``$OUT/multidevice_steps.csv`` (rank, step, phase: compute | wait | transfer,
median seconds) and ``$OUT/multidevice_link.csv``; every row carries the device, the NCCL
version and the multicast setting. Compare with the model: ``python
experiments/multidevice_measured.py --data $OUT/multidevice``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.getcwd())

TOL = {"bfloat16": 1e-2, "float16": 1e-2, "float32": 1e-5}
_DT = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


def _sync(dev):
    import torch
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


class Timer:
    """Per-step phase timer: CUDA events on a GPU, wall clock on the CPU."""

    def __init__(self, dev):
        self.dev, self.rows = dev, []

    def __call__(self, step, phase, fn):
        import torch
        if self.dev.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            out = fn()
            b.record()
            self.rows.append((step, phase, (a, b)))
        else:
            t0 = time.perf_counter()
            out = fn()
            self.rows.append((step, phase, time.perf_counter() - t0))
        return out

    def resolve(self):
        _sync(self.dev)
        return [(step, phase, t[0].elapsed_time(t[1]) / 1e3 if isinstance(t, tuple) else t)
                for step, phase, t in self.rows]


def _medians(timers) -> dict:
    """{(step, phase): median seconds} over the repeats' timers."""
    acc: dict = {}
    for tm in timers:
        for step, phase, s in tm.resolve():
            acc.setdefault((step, phase), []).append(s)
    return {k: statistics.median(v) for k, v in acc.items()}


def _reference(q, k, v, causal):
    """Single-device attention of the whole sequence (SDPA: flash on a GPU) and its time."""
    import torch
    import torch.nn.functional as F
    dev = q.device
    F.scaled_dot_product_attention(q[None, :, :256], k[None, :, :256], v[None, :, :256],
                                   is_causal=causal)                # warm up
    _sync(dev)
    t0 = time.perf_counter()
    ref = F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=causal)[0]
    _sync(dev)
    return ref, time.perf_counter() - t0


def d_scale(q) -> float:
    return q.shape[-1] ** -0.5


def _config(rank, world, dev, args, kern, q, k, v, ref, n, c, heads, causal, striped, base):
    """Time one configuration on this rank; returns (row dict for rank 0, step rows)."""
    import torch
    import torch.distributed as dist
    from iosim.parallel import dist as pd
    idx = torch.as_tensor(pd.local_rows(n, world, rank, striped), device=dev)
    ql, kl, vl = (t.index_select(1, idx).contiguous() for t in (q, k, v))

    def run(timer=None):
        return pd.ring_attention(ql, kl, vl, idx, idx, causal=causal, timer=timer, kernel=kern)

    for _ in range(args.warmup):
        run()
    _sync(dev)
    e2e, timers = [], []
    for _ in range(args.repeats):
        dist.barrier()
        _sync(dev)
        tm = Timer(dev)
        t0 = time.perf_counter()
        o, _ = run(tm)
        _sync(dev)
        e2e.append(time.perf_counter() - t0)
        timers.append(tm)
    steps = _medians(timers)
    transfer = []
    for _ in range(args.repeats if world > 1 else 0):
        dist.barrier()
        tt = Timer(dev)
        pd.ring_transfer(kl, vl, timer=tt)
        transfer.append(tt)
    steps.update(_medians(transfer))
    # the ring's own memory: peak over one run above what was allocated before it
    extra = 0
    if dev.type == "cuda":
        before = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        run()
        _sync(dev)
        extra = torch.cuda.max_memory_allocated(dev) - before
    # the error: sampled rows (all up to 2048) against attention of the same inputs in fp32
    # (keys 4096 at a time); beside it single-GPU SDPA's error on those rows and the largest
    # difference between the ring's output and SDPA's over all rows
    err = err_sdpa = diff = 0.0
    if idx.numel():
        pick = torch.arange(idx.numel(), device=dev)
        if idx.numel() > 2048:
            gen = torch.Generator(device="cpu").manual_seed(rank)
            rest = 64 + torch.randperm(idx.numel() - 64, generator=gen)[:192].to(dev)
            pick = torch.cat([pick[:64], rest])
        rows = idx.index_select(0, pick)
        keep = None
        if causal:
            keep = torch.arange(n, device=dev)[None, :] <= rows[:, None]
        truth, _ = pd.partial_attention(q.index_select(1, rows), k, v, d_scale(q), keep)
        err = (o.index_select(1, pick) - truth).abs().max().item()
        err_sdpa = (ref.index_select(1, rows).float() - truth).abs().max().item()
        diff = (o - ref.index_select(1, idx).float()).abs().max().item()
    # across ranks: each repeat's slowest rank, the worst errors, the largest memory
    t = torch.tensor(e2e + [err, err_sdpa, diff, float(extra)], device=dev, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    vals = t.tolist()
    e2e_max, (err, err_sdpa, diff, extra) = vals[:-4], vals[-4:]
    comp = [steps.get((s, "compute"), 0.0) for s in range(world)]
    row = dict(base, tokens_per_device=c, n=n, heads=heads, scheme="striped" if striped else "ring",
               causal=causal, time_s=statistics.median(e2e_max), time_min_s=min(e2e_max),
               rank0_compute_s=sum(comp),
               rank0_wait_s=sum(steps.get((s, "wait"), 0.0) for s in range(world)),
               rank0_transfer_s=sum(steps.get((s, "transfer"), 0.0) for s in range(world)),
               ring_peak_extra_bytes=extra, max_abs_err=err, tolerance=TOL[args.dtype],
               err_ok=err < TOL[args.dtype], sdpa_max_abs_err=err_sdpa,
               max_abs_diff_single_gpu=diff, repeats=args.repeats)
    srows = [dict(base, rank=rank, tokens_per_device=c, n=n, heads=heads,
                  scheme=row["scheme"], causal=causal, step=s, phase=ph, seconds=sec)
             for (s, ph), sec in sorted(steps.items())]
    return row, srows


def _worker(rank, world, args):
    import torch
    import torch.distributed as dist
    from iosim.gpu.validate import write_csv
    from iosim.parallel import dist as pd
    dev = torch.device("cuda", rank) if args.backend == "nccl" else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dtype = getattr(torch, args.dtype)
    d = args.head_dim
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    nccl = ".".join(map(str, torch.cuda.nccl.version())) if dev.type == "cuda" else "-"
    kern = pd.select_kernel(args.kernel, dtype=dtype, head_dim=d, device=dev)
    base = dict(device=name, nccl=nccl, nccl_nvls_enable=os.environ.get("NCCL_NVLS_ENABLE", ""),
                backend=args.backend, world=world, d=d, dtype=args.dtype, kernel=kern.name)
    out = os.environ.get("OUT", "out")
    rows, step_rows, link_rows = [], [], []
    t_start = time.perf_counter()
    stopped = None
    for c in args.per_device:
        n = c * world
        for heads in args.heads:
            go = torch.tensor([float(time.perf_counter() - t_start > args.budget_s)], device=dev)
            dist.all_reduce(go, op=dist.ReduceOp.MAX)         # rank 0's clock may differ
            if go.item() > 0:
                stopped = (c, heads)
                break
            g = torch.Generator(device=dev).manual_seed(1000 * c + heads)   # same on every rank
            q, k, v = (torch.randn(heads, n, d, device=dev, generator=g).to(dtype)
                       for _ in range(3))
            for causal in (False, True):
                ref, single_s = _reference(q, k, v, causal)
                for striped in (False, True):
                    row, srows = _config(rank, world, dev, args, kern, q, k, v, ref, n, c,
                                         heads, causal, striped, base)
                    row["single_gpu_sdpa_s"] = single_s
                    rows.append(row)
                    parts = [None] * world
                    dist.all_gather_object(parts, srows)
                    step_rows += [r for p in parts for r in p]
                    if rank == 0:
                        write_csv(_with_model(rows), os.path.join(out, "multidevice.csv"))
                        write_csv(step_rows, os.path.join(out, "multidevice_steps.csv"))
                        print(f"{row['scheme']:8s} causal={causal!s:5s} c={c:6d} H={heads:2d} "
                              f"world={world} time {row['time_s'] * 1e3:9.3f} ms (one GPU "
                              f"{single_s * 1e3:9.3f} ms) err {row['max_abs_err']:.2e} (SDPA "
                              f"{row['sdpa_max_abs_err']:.2e})"
                              f"{'' if row['err_ok'] else '  FAIL'}", flush=True)
                del ref
            del q, k, v
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        if stopped:
            break
    # the link: a plain send/recv of --link-mib MiB from rank 0 to rank 1
    if world > 1:
        buf = torch.empty(args.link_mib * 2 ** 20 // 2, dtype=torch.bfloat16, device=dev)
        for rep in range(args.repeats + 1):
            dist.barrier()
            _sync(dev)
            t0 = time.perf_counter()
            if rank == 0:
                dist.send(buf, 1)
            elif rank == 1:
                dist.recv(buf, 0)
            _sync(dev)
            dt = time.perf_counter() - t0
            if rank == 1 and rep > 0:
                link_rows.append(dict(base, bytes=buf.numel() * 2, seconds=dt,
                                      gb_per_s=buf.numel() * 2 / dt / 1e9))
    links = [None] * world
    dist.all_gather_object(links, link_rows)
    if rank == 0:
        lr = [r for part in links for r in part]
        if lr:
            write_csv(lr, os.path.join(out, "multidevice_link.csv"))
            print(f"link send/recv {lr[0]['bytes'] / 2 ** 20:.0f} MiB: median "
                  f"{statistics.median(r['gb_per_s'] for r in lr):.1f} GB/s")
        bad = [r for r in rows if not r["err_ok"]]
        print(f"device {name}, NCCL {nccl}, NCCL_NVLS_ENABLE={base['nccl_nvls_enable']}, "
              f"kernel: {kern.name}; {len(rows)} configurations, {len(bad)} over the tolerance"
              + (f"; budget reached before c={stopped[0]}, heads={stopped[1]}" if stopped else "")
              + f"; wrote {out}/multidevice*.csv")


def _with_model(rows):
    """The model's time for each row's split (dgx-h100: H100 devices on NVLink)."""
    try:
        from iosim.parallel.model import Problem, evaluate_parallel
    except Exception:       # noqa: BLE001 - the measurement stands without the model
        return rows
    out = []
    for r in rows:
        try:
            res = evaluate_parallel("attention-1pass", None, "dgx-h100",
                                    Problem(n=r["n"], d=r["d"], heads=r["heads"],
                                            dtype=_DT[r["dtype"]], causal=r["causal"]),
                                    r["scheme"], r["world"])
            out.append(dict(r, model_time_s=res.time_s, model_overlapped=res.overlapped))
        except Exception as e:  # noqa: BLE001
            out.append(dict(r, model_time_s=float("nan"), model_note=str(e)[:80]))
    return out


def main(argv=None):
    from iosim.sweep import parse_counts
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=int, default=None, help="processes (default: GPUs visible)")
    ap.add_argument("--backend", default=None, choices=["nccl", "gloo"])
    ap.add_argument("--per-device", default="512:64K:x2",
                    help="context per device c (N = c x world): a list or range")
    ap.add_argument("--heads", default="8,32")
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--kernel", default="auto", choices=["auto", "triton", "torch"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--link-mib", type=int, default=256)
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="start no configuration after this many seconds")
    ap.add_argument("--nvls", action="store_true", help="leave NVLink multicast to NCCL")
    args = ap.parse_args(argv)
    args.per_device = parse_counts(args.per_device, "--per-device")
    args.heads = parse_counts(args.heads, "--heads")
    if not args.nvls:
        os.environ["NCCL_NVLS_ENABLE"] = "0"          # the spawned ranks inherit it
    import torch
    from iosim.parallel.dist import spawn
    if args.backend is None:
        args.backend = "nccl" if torch.cuda.is_available() else "gloo"
    if args.world is None:
        args.world = torch.cuda.device_count() if args.backend == "nccl" else 2
    if args.backend == "nccl" and args.world > torch.cuda.device_count():
        sys.exit(f"error: --world {args.world} exceeds the {torch.cuda.device_count()} GPUs")
    spawn(_worker, args.world, args, backend=args.backend)
    return 0


if __name__ == "__main__":
    sys.exit(main())
