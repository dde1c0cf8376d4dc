"""Device (run on the GPU machine from the repository root:
python experiments/device/l2_latency_map.py): L2 hit latency of single lines from every SM.

Each thread block (one warp, several per SM) reads its SM id and, for each of 192 lines of a
buffer already in L2, times its first load of the line (cycles, ``%clock64``; the clock is read
after a store of the loaded value, so the warp has waited for it) and then a chain of dependent
loads of it (``.cg``: past L1, to L2). If the two L2 partitions answer an SM at
different latencies by where a line lives, the (SM, line) latency matrix splits the SMs and the
lines into two groups each; if a line read once is copied to the reader's side, the chain is fast
everywhere and only the first load shows the split. Lines: 64 consecutive (128 B apart), 64 at
4 KiB and 64 at 64 KiB spacing, so the granularity of the address-to-partition map shows too.
Writes $OUT/gpu_l2_latency.npz (per launch: SM x line matrices of mean chain cycles per load
and median first-load cycles; three launches) and prints the split (iosim.l2.partitions)."""
import os
import sys

sys.path.insert(0, os.getcwd())

ITERS = 32
BLOCKS = 132 * 8


def kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def _clock_after(p, SINK):
        # a store of p (the warp waits for the load) before the clock is read, and the clock
        # read folded with p so that it cannot be dropped or hoisted above the load
        tl.store(SINK, p)
        c = tl.inline_asm_elementwise("{.reg .u64 t; mov.u64 t, %clock64; add.u64 $0, t, $1;}",
                                      "=l,l", [p], dtype=tl.int64, is_pure=False, pack=1)
        return c - p

    @triton.jit
    def iosim_l2lat(P, LINES, FIRST, CHAIN, SMS, SINK, n_lines, ITERS: tl.constexpr):
        pid = tl.program_id(0)
        sm = tl.inline_asm_elementwise("mov.u32 $0, %smid;", "=r", [], dtype=tl.int32,
                                       is_pure=False, pack=1)
        for jj in range(n_lines):
            j = (jj + pid * 7) % n_lines
            base = tl.load(LINES + j)
            c0 = _clock_after(base, SINK + pid)
            p = tl.load(P + base, cache_modifier=".cg")          # the block's first load of it
            c1 = _clock_after(p, SINK + pid)
            for i in range(ITERS):
                p = tl.load(P + p, cache_modifier=".cg")
            c2 = _clock_after(p, SINK + pid)
            tl.store(FIRST + pid * n_lines + j, c1 - c0)
            tl.store(CHAIN + pid * n_lines + j, c2 - c1)
        tl.store(SMS + pid, sm)
    return iosim_l2lat


def per_sm(first, chain, sms, n_sm=132):
    """Per-SM latency matrices of one launch (SM x line): mean chain cycles per load, median
    first-load cycles, and how many blocks ran on each SM."""
    import numpy as np
    blocks = np.bincount(sms, minlength=n_sm)
    ch = np.array([chain[sms == s].mean(0) for s in range(n_sm)], dtype=np.float32)
    fi = np.array([np.median(first[sms == s], 0) for s in range(n_sm)], dtype=np.float32)
    return ch, fi, blocks


def main():
    import numpy as np
    import torch
    from iosim.l2.partitions import split
    out = os.environ.get("OUT", ".")
    kern = kernel()
    n_elem = 8 * 1024 * 1024                   # 64 MiB of int64
    lines = np.r_[np.arange(64) * 16, 131072 + np.arange(64) * 512,
                  262144 + np.arange(64) * 8192].astype(np.int64)   # element (8 B) offsets
    P = torch.zeros(n_elem, dtype=torch.int64, device="cuda")
    P[torch.from_numpy(lines).cuda()] = torch.from_numpy(lines).cuda()   # each line points to itself
    L = torch.from_numpy(lines).cuda()
    n = len(lines)
    res = {"line_bytes": lines * 8}
    for rep in range(3):
        first = torch.zeros(BLOCKS * n, dtype=torch.int64, device="cuda")
        chain = torch.zeros_like(first)
        sms = torch.zeros(BLOCKS, dtype=torch.int32, device="cuda")
        sink = torch.zeros(BLOCKS, dtype=torch.int64, device="cuda")
        _ = P.sum()                             # the lines are in L2 (read once by all SMs)
        kern[(BLOCKS,)](P, L, first, chain, sms, sink, n, ITERS=ITERS, num_warps=1)
        torch.cuda.synchronize()
        ch, fi, blocks = per_sm(first.view(BLOCKS, n).cpu().numpy(),
                                chain.view(BLOCKS, n).cpu().numpy() / ITERS,
                                sms.cpu().numpy().astype(np.int64))
        res[f"chain_{rep}"], res[f"first_{rep}"], res[f"blocks_{rep}"] = ch, fi, blocks
        sp = split(ch)
        print(f"launch {rep}: blocks per SM {blocks.min()}-{blocks.max()}; near "
              f"{sp.near_cycles:.1f} far {sp.far_cycles:.1f} cycles (residual sd "
              f"{sp.residual_cycles:.1f}); side A: {np.flatnonzero(sp.sm_side == 0).tolist()}")
    np.savez_compressed(os.path.join(out, "gpu_l2_latency.npz"),
                        device=torch.cuda.get_device_name(0), iters=ITERS, **res)


if __name__ == "__main__":
    main()
