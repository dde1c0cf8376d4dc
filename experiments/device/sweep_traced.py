"""Device (run on the GPU machine from the repository root:
python experiments/device/sweep_traced.py [MARK]): the sweep microbenchmark's staggered re-read with a
clock. 132 blocks (one per SM) each read a buffer four times, starting 1/132 of it apart
(``iosim.l2.microbench.sweep``, stagger 1), and store ``%globaltimer`` every MARK tiles, so the
order in which the lines were really read is known (did readers bunch up?). No profiler: the
DRAM counters of the same pattern are in gpu_l2sweep.csv. Writes $OUT/gpu_l2sweep_traced.npz:
per buffer size, the (blocks x marks) times in ns from the first mark, the SM of each block."""
import os
import sys

sys.path.insert(0, os.getcwd())

MIB = 1024 * 1024
TILE = 4096                     # bf16 elements per load (8 KiB), as the sweep test
MARK = int(sys.argv[1]) if len(sys.argv) > 1 else 4     # tiles between clock reads
PASSES = 4
SIZES = (32, 40, 48)


def kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def iosim_sweep_traced(X, OUT, TR, SMS, n_tiles, passes, n_marks, MARK_T: tl.constexpr,
                           TILE_T: tl.constexpr):
        pid = tl.program_id(0)
        nprog = tl.num_programs(0)
        sm = tl.inline_asm_elementwise("mov.u32 $0, %smid;", "=r", [], dtype=tl.int32,
                                       is_pure=False, pack=1)
        offs = tl.arange(0, TILE_T)
        acc = tl.zeros([TILE_T], dtype=tl.float32)
        off = pid * n_tiles // nprog
        k = 0
        for r in range(passes):
            for i in range(0, n_tiles):
                if k % MARK_T == 0:
                    t = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [],
                                                  dtype=tl.int64, is_pure=False, pack=1)
                    tl.store(TR + pid * n_marks + k // MARK_T, t)
                tile = (i + off) % n_tiles
                acc += tl.load(X + tile * TILE_T + offs).to(tl.float32)
                k += 1
        tl.store(OUT + pid * TILE_T + offs, acc)
        tl.store(SMS + pid, sm)
    return iosim_sweep_traced


def main():
    import numpy as np
    import torch
    out = os.environ.get("OUT", ".")
    kern = kernel()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    big = torch.randn(max(SIZES) * MIB // 2, device="cuda", dtype=torch.bfloat16)
    flush = torch.empty(256 * MIB // 4, device="cuda", dtype=torch.float32)
    res = {"device": torch.cuda.get_device_name(0), "mark_tiles": MARK, "tile_bytes": TILE * 2,
           "passes": PASSES}
    for mib in SIZES:
        n_tiles = mib * MIB // 2 // TILE
        n_marks = -(-n_tiles * PASSES // MARK)
        o = torch.empty(sms * TILE, device="cuda", dtype=torch.float32)
        tr = torch.full((sms * n_marks,), -1, device="cuda", dtype=torch.int64)
        sm = torch.zeros(sms, device="cuda", dtype=torch.int32)
        for rep in range(2):                       # the second run is recorded (warm code)
            flush.zero_()                          # the L2 starts cold, as under ncu
            torch.cuda.synchronize()
            kern[(sms,)](big, o, tr, sm, n_tiles, PASSES, n_marks, MARK_T=MARK, TILE_T=TILE,
                         num_warps=8)
            torch.cuda.synchronize()
        t = tr.view(sms, n_marks).cpu().numpy()
        t = t - t[t > 0].min()
        res[f"marks_{mib}"] = t
        res[f"sm_{mib}"] = sm.cpu().numpy()
        span = t.max() / 1e3
        print(f"{mib} MiB: {n_tiles} tiles, {n_marks} marks per block, span {span:.0f} us", flush=True)
    np.savez_compressed(os.path.join(out, "gpu_l2sweep_traced.npz"), **res)


if __name__ == "__main__":
    main()
