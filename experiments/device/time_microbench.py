"""Device: the sustained rates the execution-time model reads, from kernels that are not
attention. Run on the GPU machine from the repository root::

    python experiments/device/time_microbench.py          # writes $OUT/gpu_time_microbench.csv

Each row is one microbenchmark (``kind``) with its measured rate:

* ``mma`` -- a back-to-back matmul loop: every iteration one program multiplies its
  ``block_m x d`` operand by a ``d x block_n`` tile and the ``block_m x block_n`` result (cast
  to bf16) by a ``block_n x d`` tile into an fp32 accumulator; the two tiles come from a small
  buffer that stays in L2, ``num_stages`` deep. ``cycles_per_iter`` is one iteration of one
  launch of ``programs_per_sm`` programs per SM (132 x 1 ... 4 programs): the SM time of one
  iteration of that many co-resident programs (where fewer fit, they run in turns).
* ``exp`` -- exp2 of a ``block_m x block_n`` fp32 tile per iteration (one multiply each):
  exp results per clock per SM.
* ``rowops`` -- per iteration a row maximum, a subtraction, a row sum and a scaling of a
  ``block_m x block_n`` fp32 tile (four vector operations per element, two of them row
  reductions): vector operations per clock per SM.
* ``copy`` / ``read`` -- a 2 GiB device-to-device copy and a reduction reading 2 GiB: HBM
  bytes per second.
* ``l2read`` -- every SM's programs reading a 16 MiB buffer (resident in L2) many times:
  L2-to-SM bytes per second, all SMs and one SM alone.
* ``launch`` -- an empty kernel, back to back: microseconds per launch; ``launch_args`` the
  same for a kernel of 36 arguments called through a Python function that first allocates its
  output (as a generated module's ``forward`` does).
* ``stream`` -- each program reads its own contiguous region from HBM in tiles of
  ``block_n x d`` (two per iteration), ``num_stages`` deep, and sums them: the bytes per clock
  one program streams, with one program on each of ``programs`` SMs.

* ``stream_masked`` -- the same with the access pattern of the generated kernels: runtime
  strides, pointer tiles advanced every iteration and loads masked at the end of the keys.
* ``fma`` -- ``x = x * a + b`` on a ``block_m x block_n`` fp32 tile per iteration: vector
  operations per clock per SM.
* ``launch_forward`` -- a generated module's ``forward`` on the smallest problem (one query
  row of 16 keys, d=64): the fixed cost of a call (host, launches, allocations), per cascade.

``python experiments/device/time_microbench.py stream,launch_args`` runs only those kinds.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.getcwd())
try:     # the kernels' annotations are read in this module's namespace
    import triton.language as tl
except ImportError:  # pragma: no cover - device only
    tl = None


def main() -> None:
    import torch
    import triton
    import triton.language as tl
    from triton.testing import do_bench

    @triton.jit
    def mma_loop(A, KV, Out, iters, R: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                 D: tl.constexpr, STAGES: tl.constexpr):
        pid = tl.program_id(0)
        rm = tl.arange(0, BM)
        rn = tl.arange(0, BN)
        rd = tl.arange(0, D)
        a = tl.load(A + rm[:, None] * D + rd[None, :])
        acc = tl.zeros([BM, D], dtype=tl.float32)
        for i in tl.range(0, iters, num_stages=STAGES):
            base = (i % R) * 2 * BN * D
            kt = tl.load(KV + base + rn[None, :] * D + rd[:, None])          # D x BN
            vt = tl.load(KV + base + BN * D + rn[:, None] * D + rd[None, :])  # BN x D
            s = tl.dot(a, kt)
            acc = tl.dot(s.to(tl.bfloat16), vt, acc)
        tl.store(Out + pid * BM * D + rm[:, None] * D + rd[None, :], acc)

    @triton.jit
    def exp_loop(X, Out, iters, BM: tl.constexpr, BN: tl.constexpr):
        pid = tl.program_id(0)
        rm = tl.arange(0, BM)
        rn = tl.arange(0, BN)
        x = tl.load(X + rm[:, None] * BN + rn[None, :])
        for i in range(iters):
            x = tl.exp2(x * -0.75)
        tl.store(Out + pid * BM * BN + rm[:, None] * BN + rn[None, :], x)

    @triton.jit
    def rowops_loop(X, Out, iters, BM: tl.constexpr, BN: tl.constexpr):
        pid = tl.program_id(0)
        rm = tl.arange(0, BM)
        rn = tl.arange(0, BN)
        x = tl.load(X + rm[:, None] * BN + rn[None, :])
        for i in range(iters):
            m = tl.max(x, 1)
            y = x - m[:, None]
            s = tl.sum(y, 1)
            x = y * (1.0 / (1.0 + tl.abs(s)))[:, None] + 0.5
        tl.store(Out + pid * BM * BN + rm[:, None] * BN + rn[None, :], x)

    @triton.jit
    def l2_read(X, Out, words, passes, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        r = tl.arange(0, BLOCK)
        start = (pid * 4096) % words
        for p in range(passes):
            for off in range(0, words, BLOCK):
                idx = (start + off + r) % words
                acc += tl.load(X + idx)
        tl.store(Out + pid * BLOCK + r, acc)

    @triton.jit
    def empty(X):
        pass

    @triton.jit
    def empty_args(X, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, d0, d1, d2, d3, d4, BLOCK: tl.constexpr):  # noqa: E501
        pass

    @triton.jit
    def stream_masked(X, Out, n_rows, stride_r, stride_d, BN: tl.constexpr, D: tl.constexpr):
        pid = tl.program_id(0)
        rn = tl.arange(0, BN)
        rd = tl.arange(0, D)
        base = X + pid.to(tl.int64) * n_rows * 2 * stride_r
        k_ptrs = base + rn[:, None] * stride_r + rd[None, :] * stride_d
        v_ptrs = base + n_rows * stride_r + rn[:, None] * stride_r + rd[None, :] * stride_d
        acc = tl.zeros([BN, D], dtype=tl.float32)
        for start in range(0, n_rows, BN):
            m = (start + rn) < n_rows
            k = tl.load(k_ptrs, mask=m[:, None], other=0.0)
            v = tl.load(v_ptrs, mask=m[:, None], other=0.0)
            acc += k.to(tl.float32) * v.to(tl.float32)
            k_ptrs += BN * stride_r
            v_ptrs += BN * stride_r
        tl.store(Out + pid * BN * D + rn[:, None] * D + rd[None, :], acc)

    @triton.jit
    def fma_loop(X, Out, iters, BM: tl.constexpr, BN: tl.constexpr):
        pid = tl.program_id(0)
        rm = tl.arange(0, BM)
        rn = tl.arange(0, BN)
        x = tl.load(X + rm[:, None] * BN + rn[None, :])
        for i in range(iters):
            x = x * 0.999 + 0.001
        tl.store(Out + pid * BM * BN + rm[:, None] * BN + rn[None, :], x)

    @triton.jit
    def stream(X, Out, per_prog, BN: tl.constexpr, D: tl.constexpr, STAGES: tl.constexpr):
        pid = tl.program_id(0)
        base = X + pid.to(tl.int64) * per_prog
        rn = tl.arange(0, BN)
        rd = tl.arange(0, D)
        acc = tl.zeros([BN, D], dtype=tl.float32)
        for off in tl.range(0, per_prog, 2 * BN * D, num_stages=STAGES):
            k = tl.load(base + off + rn[:, None] * D + rd[None, :])
            v = tl.load(base + off + BN * D + rn[:, None] * D + rd[None, :])
            acc += k.to(tl.float32) + v.to(tl.float32)
        tl.store(Out + pid * BN * D + rn[:, None] * D + rd[None, :], acc)

    dev = torch.cuda.get_device_name(0)
    props = torch.cuda.get_device_properties(0)
    sms = props.multi_processor_count
    clock_hz = 1.98e9
    rows = []

    def put(**kw):
        kw["device"] = dev
        rows.append(kw)
        print(kw, flush=True)

    bf = torch.bfloat16
    only = set(sys.argv[1].split(",")) if len(sys.argv) > 1 else None
    want = lambda kind: only is None or kind in only  # noqa: E731
    if want("stream"):
        for bn, d in ((32, 128), (64, 128), (128, 128), (64, 64)):
            for stages in (2, 3, 4):
                for grid in (1, 8, 32, 132):
                    per_prog = 2 * bn * d * 1024          # elements: 1024 iterations
                    x = torch.empty(grid * per_prog, device="cuda", dtype=bf).uniform_()
                    out = torch.empty(grid * bn * d, device="cuda", dtype=torch.float32)
                    k = stream[(grid,)](x, out, per_prog, BN=bn, D=d, STAGES=stages,
                                        num_warps=4)
                    torch.cuda.synchronize()
                    ms = do_bench(lambda: stream[(grid,)](x, out, per_prog, BN=bn, D=d,
                                                          STAGES=stages, num_warps=4),
                                  warmup=5, rep=50)
                    by = 2.0 * per_prog * grid
                    put(kind="stream", block_n=bn, head_dim=d, num_stages=stages,
                        num_warps=4, programs=grid, bytes=by, ms=ms, rate=by / (ms * 1e-3),
                        unit="B/s",
                        per_clock_per_program=by / grid / (ms * 1e-3) / clock_hz)
                    del x, out
    if want("stream_masked"):
        for bn, d in ((32, 128), (64, 128), (128, 128), (64, 64)):
            for stages in (2, 3, 4):
                for grid in (1, 32, 132):
                    n_rows = 1024 * bn + bn // 2          # a partial last tile
                    x = torch.empty(grid * 2 * n_rows * d, device="cuda", dtype=bf).uniform_()
                    out = torch.empty(grid * bn * d, device="cuda", dtype=torch.float32)
                    stream_masked[(grid,)](x, out, n_rows, d, 1, BN=bn, D=d, num_warps=4,
                                           num_stages=stages)
                    torch.cuda.synchronize()
                    ms = do_bench(lambda: stream_masked[(grid,)](
                        x, out, n_rows, d, 1, BN=bn, D=d, num_warps=4, num_stages=stages),
                        warmup=5, rep=50)
                    by = 2.0 * 2 * n_rows * d * grid
                    put(kind="stream_masked", block_n=bn, head_dim=d, num_stages=stages,
                        num_warps=4, programs=grid, bytes=by, ms=ms, rate=by / (ms * 1e-3),
                        unit="B/s",
                        per_clock_per_program=by / grid / (ms * 1e-3) / clock_hz)
                    del x, out
    if want("fma"):
        for bm, bn in ((64, 64), (128, 64), (128, 128)):
            for warps in (4, 8):
                grid = sms
                x = torch.rand(bm * bn, device="cuda", dtype=torch.float32)
                out = torch.empty(grid * bm * bn, device="cuda", dtype=torch.float32)
                it = 4096
                fma_loop[(grid,)](x, out, it, BM=bm, BN=bn, num_warps=warps)
                torch.cuda.synchronize()
                ms = do_bench(lambda: fma_loop[(grid,)](x, out, it, BM=bm, BN=bn,
                                                        num_warps=warps), warmup=5, rep=60)
                el = bm * bn * it * grid
                put(kind="fma", block_m=bm, block_n=bn, num_warps=warps, programs_per_sm=1,
                    ms=ms, cycles_per_iter=ms * 1e-3 * clock_hz / it, rate=el / (ms * 1e-3),
                    unit="op/s", per_clock_per_sm=el / (ms * 1e-3) / sms / clock_hz)
    if want("launch_forward"):
        from cascades.triton import Tiling, generate
        for casc in ("attention-1pass", "flash1", "sigmoid", "attention-gqa", "decode-splitk",
                     "attention-3pass", "attention-2pass"):
            g = generate(casc, Tiling(block_m=16 if casc == "decode-splitk" else 64,
                                      block_n=16, num_warps=4, num_stages=2, head_dim=64,
                                      dtype="bf16", split_kv=1))
            mod = g.load()
            q = torch.randn(1, 1, 1, 64, device="cuda", dtype=bf)
            k = torch.randn(1, 1, 16, 64, device="cuda", dtype=bf)
            v = torch.randn(1, 1, 16, 64, device="cuda", dtype=bf)
            o = torch.empty_like(q)
            mod.forward(q, k, v, out=o)
            torch.cuda.synchronize()
            ms = do_bench(lambda: mod.forward(q, k, v, out=o), warmup=50, rep=200)
            put(kind="launch_forward", cascade=casc, kernels=len(g.kernels), ms=ms,
                rate=float("nan"), unit="")
    if want("launch_args"):
        z = torch.empty(16, device="cuda")

        def call(q):
            o = torch.empty_like(q)
            empty_args[(1,)](o, *range(35), BLOCK=64)
            return o
        call(z)
        torch.cuda.synchronize()
        ms = do_bench(lambda: call(z), warmup=50, rep=200)
        put(kind="launch_args", ms=ms, rate=float("nan"), unit="")
    # ---- matmul loop
    R = 4
    iters = 4096
    for d in ((64, 128) if want("mma") else ()):
        for bm in (64, 128):
            for bn in (32, 64, 128):
                for warps in (4, 8):
                    for stages in (2, 3):
                        a = torch.randn(bm, d, device="cuda", dtype=bf) * 0.05
                        kv = torch.randn(R * 2 * bn * d, device="cuda", dtype=bf) * 0.05
                        for per_sm in (1, 2, 3, 4):
                            grid = sms * per_sm
                            out = torch.empty(grid * bm * d, device="cuda", dtype=torch.float32)
                            try:
                                k = mma_loop[(grid,)](a, kv, out, iters, R=R, BM=bm, BN=bn, D=d,
                                                      STAGES=stages, num_warps=warps,
                                                      num_stages=stages)
                                torch.cuda.synchronize()
                                ms = do_bench(lambda: mma_loop[(grid,)](
                                    a, kv, out, iters, R=R, BM=bm, BN=bn, D=d, STAGES=stages,
                                    num_warps=warps, num_stages=stages), warmup=5, rep=60)
                                regs, smem, spills = k.n_regs, k.metadata.shared, k.n_spills
                            except Exception as exc:  # noqa: BLE001
                                print("mma failed", bm, bn, d, warps, stages, exc, flush=True)
                                continue
                            flops = 4.0 * bm * bn * d * iters * grid
                            put(kind="mma", block_m=bm, block_n=bn, head_dim=d, num_warps=warps,
                                num_stages=stages, programs_per_sm=per_sm, regs=regs,
                                smem_bytes=smem, spills=spills, ms=ms,
                                cycles_per_iter=ms * 1e-3 * clock_hz / iters,
                                rate=flops / (ms * 1e-3), unit="FLOP/s")
    if only is not None:
        return _write(rows)
    # ---- exp and row operations
    for kern, kind, ops in ((exp_loop, "exp", 1), (rowops_loop, "rowops", 4)):
        for bm, bn in ((64, 64), (128, 64), (128, 128)):
            for warps in (4, 8):
                for per_sm in (1, 2, 4):
                    grid = sms * per_sm
                    x = torch.rand(bm * bn, device="cuda", dtype=torch.float32)
                    out = torch.empty(grid * bm * bn, device="cuda", dtype=torch.float32)
                    it = 2048
                    k = kern[(grid,)](x, out, it, BM=bm, BN=bn, num_warps=warps)
                    torch.cuda.synchronize()
                    ms = do_bench(lambda: kern[(grid,)](x, out, it, BM=bm, BN=bn,
                                                         num_warps=warps), warmup=5, rep=60)
                    el = bm * bn * it * grid
                    put(kind=kind, block_m=bm, block_n=bn, num_warps=warps,
                        programs_per_sm=per_sm, regs=k.n_regs, ms=ms,
                        cycles_per_iter=ms * 1e-3 * clock_hz / it,
                        rate=el * ops / (ms * 1e-3), unit="op/s",
                        per_clock_per_sm=el * ops / (ms * 1e-3) / sms / clock_hz)
    # ---- HBM
    n = 2 ** 30
    x = torch.empty(n, device="cuda", dtype=bf).uniform_()
    y = torch.empty_like(x)
    ms = do_bench(lambda: y.copy_(x), warmup=5, rep=200)
    put(kind="copy", bytes=4 * n, ms=ms, rate=4 * n / (ms * 1e-3), unit="B/s")
    ms = do_bench(lambda: x.sum(), warmup=5, rep=200)
    put(kind="read", bytes=2 * n, ms=ms, rate=2 * n / (ms * 1e-3), unit="B/s")
    del x, y
    torch.cuda.empty_cache()
    # ---- L2 -> SM
    words = 16 * 2 ** 20 // 4
    x = torch.rand(words, device="cuda", dtype=torch.float32)
    for grid, warps, passes in ((sms, 8, 2), (sms * 2, 8, 2), (sms * 4, 4, 2), (1, 8, 1),
                                (1, 4, 1)):
        out = torch.empty(grid * 1024, device="cuda", dtype=torch.float32)
        l2_read[(grid,)](x, out, words, passes, BLOCK=1024, num_warps=warps)
        ms = do_bench(lambda: l2_read[(grid,)](x, out, words, passes, BLOCK=1024,
                                               num_warps=warps), warmup=3, rep=100)
        by = 4.0 * words * passes * grid
        put(kind="l2read", programs=grid, num_warps=warps, bytes=by, ms=ms,
            rate=by / (ms * 1e-3), unit="B/s")
    # ---- launch overhead
    z = torch.empty(1, device="cuda")
    empty[(1,)](z)
    torch.cuda.synchronize()
    ms = do_bench(lambda: empty[(1,)](z), warmup=50, rep=200)
    put(kind="launch", ms=ms, rate=float("nan"), unit="")
    ms = do_bench(lambda: empty[(sms * 8,)](z), warmup=50, rep=200)
    put(kind="launch_grid", programs=sms * 8, ms=ms, rate=float("nan"), unit="")
    _write(rows)


def _write(rows, name="gpu_time_microbench.csv"):
    from iosim.gpu.validate import write_csv
    write_csv(rows, os.path.join(os.environ.get("OUT", "."), name if len(sys.argv) < 2
                                 else "gpu_time_microbench_extra.csv"))


if __name__ == "__main__":
    main()
