"""Device (run on the GPU machine from the repository root:
python experiments/device/speed_partial.py [SHAPES [NAME]]): where the generated attention-1pass
forward loses to SDPA flash when N is not a multiple of the tile (1x16x6000x128 non-causal:
1.29x flash, gpu_speed_unseen.csv). Neighbouring N that are multiples of 128 next to partial
ones, every tiling and knob the generator has at d=128 (bf16), flash before and after.
Writes $OUT/NAME.csv (default gpu_speed_partial)."""
import os
import sys

sys.path.insert(0, os.getcwd())

SHAPES = ("1x16x5888x128,1x16x6000x128,1x16x6016x128,1x16x6144x128,1x16x6000x128-causal,"
          "4x16x4000x128,4x16x4096x128,2x16x8000x128,2x16x8192x128")
TILINGS = ((128, 128, 8, 3), (128, 64, 8, 3), (128, 128, 8, 2), (64, 128, 4, 3))
KNOBS = ({}, {"tma": True}, {"warp_specialize": True})


def main():
    from iosim.gpu.runner import Config, bench_configs, env_info, precompile
    from iosim.gpu.shapes import parse_shapes
    from iosim.gpu.validate import write_csv
    shapes = parse_shapes(sys.argv[1] if len(sys.argv) > 1 else SHAPES)
    cf = []
    for s in shapes:
        cf.append(Config("sdpa-flash", s))
        for bm, bn, w, st in TILINGS:
            for kn in KNOBS:
                if kn.get("warp_specialize") and w < 8:
                    continue
                cf.append(Config("generated", s, block_m=bm, block_n=bn, num_warps=w,
                                 num_stages=st, **kn))
        cf.append(Config("sdpa-flash", s))
    precompile(cf)
    env = env_info()
    rows = bench_configs(cf)
    for r in rows:
        r["device"] = env["device"]
    name = sys.argv[2] if len(sys.argv) > 2 else "gpu_speed_partial"
    write_csv(rows, os.path.join(os.environ.get("OUT", "."), f"{name}.csv"))


if __name__ == "__main__":     # precompile() uses a spawn pool
    main()
