"""Device (run on the GPU machine from the repository root:
python experiments/device/speed_repeats.py ROUNDS): the generated attention-1pass forward
(default tiling, cascades.triton.fast_tiling) against SDPA's flash and cuDNN backends at
d=128, bf16, ROUNDS interleaved rounds (every configuration once per round), so the ratio to
flash comes with its run-to-run spread. Writes $OUT/gpu_speed_repeats.csv."""
import csv, os, sys
sys.path.insert(0, os.getcwd())


def main():
    from cascades.triton import fast_tiling
    from iosim.gpu.runner import Config, bench_configs, env_info, precompile
    from iosim.gpu.shapes import Shape
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    shapes = [Shape(4, 16, 4096, 128, False), Shape(4, 16, 4096, 128, True),
              Shape(2, 16, 8192, 128, False), Shape(1, 16, 16384, 128, False)]
    one = []
    for s in shapes:
        t = fast_tiling(128, "bf16", seq_len=s.seq)
        one += [Config("sdpa-flash", s), Config("sdpa-cudnn", s),
                Config("generated", s, block_m=t.block_m, block_n=t.block_n,
                       num_warps=t.num_warps, num_stages=t.num_stages, tma=t.tma,
                       warp_specialize=t.warp_specialize)]
    precompile(one)
    env = env_info()
    rows = []
    for r in range(rounds):
        for row in bench_configs(one):
            row.update(round=r, device=env["device"])
            rows.append(row)
    with open(os.path.join(os.environ.get("OUT", "."), "gpu_speed_repeats.csv"), "w",
              newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":     # precompile() uses a spawn pool
    main()
