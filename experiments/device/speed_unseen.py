"""Device (run on the GPU machine from the repository root:
python experiments/device/speed_unseen.py ROUNDS [SHAPES [NAME]]): criterion 4 of the GPU issue on
shapes the speed tables had not measured — other batch x heads at N = 4K (grids of 1.9 to 31
waves), N that is not a multiple of the block (partial tiles), and one head at long N. d=128,
bf16, the default tiling (cascades.triton.fast_tiling), SDPA flash and cuDNN, ROUNDS
interleaved rounds. Each generated output is also compared with SDPA flash's on the same
inputs (max |difference| / max |flash|). Writes $OUT/NAME.csv (default gpu_speed_unseen)."""
import os
import sys

sys.path.insert(0, os.getcwd())

#: chosen before measuring (2026-11-22): none of these was benchmarked before
SHAPES = ("2x8x4096x128,2x8x4096x128-causal,1x32x4096x128,8x32x4096x128-causal,"
          "1x16x6000x128,1x16x6000x128-causal,3x20x5120x128,2x12x12288x128-causal,"
          "1x4x32768x128,1x1x65536x128-causal,1x24x8192x128-causal,16x16x4096x128")


def main():
    import torch
    from cascades.triton import fast_tiling
    from iosim.gpu.runner import Config, bench_configs, env_info, make_inputs, precompile, runner_for
    from iosim.gpu.shapes import Shape, parse_shapes
    from iosim.gpu.validate import write_csv
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    shapes = parse_shapes(sys.argv[2] if len(sys.argv) > 2 else SHAPES)
    one, gen = [], {}
    for s in shapes:
        t = fast_tiling(s.head_dim, "bf16", seq_len=s.seq)
        g = Config("generated", s, block_m=t.block_m, block_n=t.block_n,
                   num_warps=t.num_warps, num_stages=t.num_stages, tma=t.tma,
                   warp_specialize=t.warp_specialize)
        gen[s] = g
        one += [Config("sdpa-flash", s), Config("sdpa-cudnn", s), g]
    precompile(one)
    env = env_info()
    agree = {}
    for s, g in gen.items():
        q, k, v = make_inputs(s, torch.bfloat16, seed=2)
        out = runner_for(g, q, k, v)()
        ref = runner_for(Config("sdpa-flash", s), q, k, v)()
        torch.cuda.synchronize()
        agree[s] = float((out.float() - ref.float()).abs().max() / ref.float().abs().max())
        del q, k, v, out, ref
        torch.cuda.empty_cache()
    rows = []
    for r in range(rounds):
        for row in bench_configs(one):
            row.update(round=r, device=env["device"])
            rows.append(row)
    for row in rows:
        if row["impl"] == "generated":
            row["rel_diff_vs_flash"] = agree[Shape(row["batch"], row["heads"], row["seq"],
                                                   row["head_dim"], row["causal"])]
    name = sys.argv[3] if len(sys.argv) > 3 else "gpu_speed_unseen"
    write_csv(rows, os.path.join(os.environ.get("OUT", "."), f"{name}.csv"))


if __name__ == "__main__":     # precompile() uses a spawn pool
    main()
