"""Device: Ring and Striped attention and the KV-shard decode combine on NCCL, timed per step.
Run on the GPU machine from the repository root (one process per GPU)::

    python experiments/device/multidevice.py --world 1            # one GPU: a smoke test
    python experiments/device/multidevice.py --world 8            # all GPUs of a node
    python experiments/device/multidevice.py --world 2 --seq-len 16384,65536 --heads 8

Writes ``$OUT/multidevice_steps.csv`` (per rank and step: compute time, the wait for the
block in flight, from CUDA events), ``$OUT/multidevice.csv`` (per configuration: end-to-end
time, the slowest rank's compute and exposed wait, the error against single-GPU attention
where it fits, the model's prediction for the same split) and ``$OUT/multidevice_link.csv``
(a plain 256 MiB send/recv between ranks 0 and 1: the link's bandwidth), each row with the
device name and the NCCL version. The per-rank kernel is the torch reference of
iosim.parallel.dist (fp32 statistics, bf16 inputs); the gloo backend runs the same on CPU
(``--backend gloo``, for a dry run without a GPU).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.getcwd())


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
        out = []
        for step, phase, t in self.rows:
            s = t[0].elapsed_time(t[1]) / 1e3 if isinstance(t, tuple) else t
            out.append((step, phase, s))
        return out


def _worker(rank, world, args):
    import torch
    import torch.distributed as dist
    from iosim.parallel import dist as pd
    from iosim.gpu.validate import write_csv
    dev = torch.device("cuda", rank) if args.backend == "nccl" else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dtype = getattr(torch, args.dtype)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    nccl = ".".join(map(str, torch.cuda.nccl.version())) if dev.type == "cuda" else "-"
    steps_rows, rows, link_rows = [], [], []
    for n in [int(x) for x in args.seq_len.split(",")]:
        g = torch.Generator(device="cpu").manual_seed(0)
        for striped in (False, True):
            for causal in (False, True):
                rowsi = torch.as_tensor(pd.local_rows(n, world, rank, striped))
                q, k, v = (torch.randn(args.heads, rowsi.numel(), args.head_dim, generator=g)
                           .to(dev, dtype) for _ in range(3))
                pos = rowsi.to(dev)
                for _ in range(args.warmup):
                    pd.ring_attention(q, k, v, pos, pos, causal=causal)
                _sync(dev)
                dist.barrier()
                times = []
                for rep in range(args.repeats):
                    tm = Timer(dev)
                    _sync(dev)
                    t0 = time.perf_counter()
                    pd.ring_attention(q, k, v, pos, pos, causal=causal, timer=tm)
                    _sync(dev)
                    times.append(time.perf_counter() - t0)
                    if rep == args.repeats - 1:
                        for step, phase, s in tm.resolve():
                            steps_rows.append(dict(device=name, nccl=nccl, world=world, rank=rank,
                                                   n=n, heads=args.heads, d=args.head_dim,
                                                   scheme="striped" if striped else "ring",
                                                   causal=causal, step=step, phase=phase,
                                                   seconds=s))
                t = torch.tensor([sorted(times)[len(times) // 2]], device=dev)
                dist.all_reduce(t, op=dist.ReduceOp.MAX)
                err = float("nan")
                if n <= args.check_max:       # every rank checks its rows against one GPU
                    qf, kf, vf = (torch.randn(args.heads, n, args.head_dim,
                                              generator=torch.Generator().manual_seed(1))
                                  .to(dev, torch.float32) for _ in range(3))
                    o, _ = pd.ring_attention(qf[:, rowsi], kf[:, rowsi], vf[:, rowsi], pos, pos,
                                             causal=causal)
                    ref, _ = pd.partial_attention(
                        qf, kf, vf, args.head_dim ** -0.5,
                        (torch.arange(n, device=dev)[None, :] <= torch.arange(n, device=dev)[:, None])
                        if causal else None)
                    e = torch.tensor([(o - ref[:, rowsi]).abs().max().item()
                                      if rowsi.numel() else 0.0], device=dev)
                    dist.all_reduce(e, op=dist.ReduceOp.MAX)
                    err = e.item()
                rows.append(dict(device=name, nccl=nccl, world=world, n=n, heads=args.heads,
                                 d=args.head_dim, dtype=args.dtype,
                                 scheme="striped" if striped else "ring", causal=causal,
                                 time_s=t.item(), max_abs_err_fp32=err))
    # the link: a plain send/recv of 256 MiB from rank 0 to rank 1
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
                link_rows.append(dict(device=name, nccl=nccl, world=world, bytes=buf.numel() * 2,
                                      seconds=dt, gb_per_s=buf.numel() * 2 / dt / 1e9))
    out = os.environ.get("OUT", "out")
    # every rank's steps; rank 0 writes the summary
    gathered = [None] * world
    dist.all_gather_object(gathered, steps_rows)
    links = [None] * world
    dist.all_gather_object(links, link_rows)
    if rank == 0:
        write_csv([r for part in gathered for r in part], os.path.join(out, "multidevice_steps.csv"))
        write_csv(_with_model(rows, world, args), os.path.join(out, "multidevice.csv"))
        lr = [r for part in links for r in part]
        if lr:
            write_csv(lr, os.path.join(out, "multidevice_link.csv"))
        for r in rows:
            print(f"{r['scheme']:8s} causal={r['causal']!s:5s} N={r['n']:7d} world={world} "
                  f"time {r['time_s'] * 1e3:8.3f} ms  err {r['max_abs_err_fp32']:.2e}")
        for r in lr:
            print(f"link send/recv {r['bytes'] / 2 ** 20:.0f} MiB: {r['gb_per_s']:.1f} GB/s")
        print(f"device {name}, NCCL {nccl}; wrote {out}/multidevice*.csv")


def _with_model(rows, world, args):
    """The model's time for each row's split (dgx-h100 links; the device preset h100)."""
    try:
        from iosim.parallel.model import Problem, evaluate_parallel
    except Exception:       # noqa: BLE001 - the measurement stands without the model
        return rows
    out = []
    for r in rows:
        try:
            res = evaluate_parallel("attention-1pass", None, "dgx-h100",
                                    Problem(n=r["n"], d=r["d"], heads=r["heads"],
                                            dtype="bf16", causal=r["causal"]),
                                    r["scheme"], world)
            out.append(dict(r, model_time_s=res.time_s, model_overlapped=res.overlapped))
        except Exception as e:  # noqa: BLE001
            out.append(dict(r, model_time_s=float("nan"), model_note=str(e)[:80]))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=int, default=None, help="processes (default: GPUs visible)")
    ap.add_argument("--backend", default=None, choices=["nccl", "gloo"])
    ap.add_argument("--seq-len", default="4096,16384,65536")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--check-max", type=int, default=16384,
                    help="check against one-GPU attention up to this N (fp32)")
    ap.add_argument("--link-mib", type=int, default=256)
    args = ap.parse_args(argv)
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
