"""Device (run on the GPU machine from the repository root:
python experiments/device/l2_sets.py): does the H100's L2 map addresses to sets linearly?

One warp chases pointers through K lines (128 B each) placed ``stride`` bytes apart in a 4 GiB
buffer, with ``.cg`` loads (past L1, to L2): one pass to fill, then PASSES timed passes; the
result is the mean clock cycles per load (``%clock64``), and of the fill pass (the DRAM
reference: 128 MiB of other traffic pushed the lines out before it). K lines always fit in a 50 MiB L2; they
miss only if they fall into too few sets. Under a linear set map (set = line address modulo the
number of sets, as experiments/csrc/l2_policy.c and iosim.l2.state assume), some power-of-two
strides put every line in one set, and once K exceeds the associativity each load goes to DRAM
(hit ~270-300 cycles, DRAM ~600+); under a hashed map no stride does. Strides: 128 B (the
control: consecutive lines), powers of two from 4 KiB to 64 MiB, the model's 1.625 MiB (416
sets x 4 KiB) and odd multiples of 128 B; K = 4 ... 256. Writes $OUT/gpu_l2_sets.csv."""
import os
import sys

sys.path.insert(0, os.getcwd())

from iosim.gpu.validate import write_csv  # noqa: E402

PASSES = 16
BUFFER = 4 << 30


def kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def iosim_l2sets(P, START, OUT, SINK, n_lines, PASSES: tl.constexpr):
        p = tl.load(START)
        tl.store(SINK, p)
        cf = tl.inline_asm_elementwise("{.reg .u64 t; mov.u64 t, %clock64; add.u64 $0, t, $1;}",
                                       "=l,l", [p], dtype=tl.int64, is_pure=False, pack=1) - p
        for i in range(n_lines):                      # fill (from DRAM: timed too)
            p = tl.load(P + p, cache_modifier=".cg")
        tl.store(SINK, p)
        c0 = tl.inline_asm_elementwise("{.reg .u64 t; mov.u64 t, %clock64; add.u64 $0, t, $1;}",
                                       "=l,l", [p], dtype=tl.int64, is_pure=False, pack=1) - p
        for i in range(PASSES * n_lines):
            p = tl.load(P + p, cache_modifier=".cg")
        tl.store(SINK, p)
        c1 = tl.inline_asm_elementwise("{.reg .u64 t; mov.u64 t, %clock64; add.u64 $0, t, $1;}",
                                       "=l,l", [p], dtype=tl.int64, is_pure=False, pack=1) - p
        tl.store(OUT, c1 - c0)
        tl.store(OUT + 1, c0 - cf)
    return iosim_l2sets


def main():
    import torch
    out_dir = os.environ.get("OUT", ".")
    k = kernel()
    buf = torch.zeros(BUFFER // 8, dtype=torch.int64, device="cuda")
    start = torch.zeros(1, dtype=torch.int64, device="cuda")
    res = torch.zeros(2, dtype=torch.int64, device="cuda")
    sink = torch.zeros(1, dtype=torch.int64, device="cuda")
    flush = torch.zeros((128 << 20) // 8, dtype=torch.int64, device="cuda")
    strides = [128, 4096] + [1 << e for e in range(13, 27)] + [1703936, 3 * 128 * 1024 + 128,
                                                              12800 * 128, 25600 * 128]
    rows = []
    for stride in strides:
        for n in (4, 8, 12, 16, 20, 24, 32, 48, 64, 128, 256):
            if (n - 1) * stride + 8 > BUFFER:
                continue
            idx = torch.arange(n, dtype=torch.int64, device="cuda") * (stride // 8)
            buf[idx] = torch.roll(idx, -1)
            start[0] = idx[0]
            torch.cuda.synchronize()
            flush.add_(1)          # 128 MiB elsewhere: the fill pass starts from DRAM
            k[(1,)](buf, start, res, sink, n, PASSES=PASSES, num_warps=1)
            torch.cuda.synchronize()
            cyc = res[0].item() / (PASSES * n)
            fill = res[1].item() / n
            rows.append({"stride_bytes": stride, "lines": n, "cycles_per_load": round(cyc, 1),
                         "fill_cycles_per_load": round(fill, 1),
                         "device": torch.cuda.get_device_name()})
            print(stride, n, round(cyc, 1), round(fill, 1), flush=True)
            buf[idx] = 0
    write_csv(rows, os.path.join(out_dir, "gpu_l2_sets.csv"))


if __name__ == "__main__":
    main()
