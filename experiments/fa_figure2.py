"""FlashAttention Figure 2: GPT-2 medium fwd+bwd HBM traffic and FLOPs, standard vs FlashAttention; forward HBM vs block size.

Dao et al. 2022 (arXiv 2205.14135), Figure 2. Workload: sequence length N = 1024, head
dimension d = 64, 16 heads, batch 64 (1024 (batch, head) pairs), fp16, A100.

* Left panel: forward + backward of standard attention (Algorithms 0 and 3, with the optional
  unfused element-wise passes of a framework implementation) and of FlashAttention
  (Algorithms 1/2 and 4, block sizes from the paper's rule for the A100's 192 KB of SRAM per
  SM), HBM reads + writes in GB (10^9 bytes) and GFLOPs; the paper's printed values beside them.
* Middle panel: FlashAttention's forward HBM traffic against the block size B_c
  (64 ... 512, B_r = 64), with a roofline time on the ``a100`` preset.

Counts come from :mod:`iosim.backward` (both passes); the forward counts are cross-checked
against the analytical model :mod:`iosim.traffic` (mapping ``fa1``), which must agree exactly.
Writes ``fa_figure2.png``, ``fa_figure2.csv`` (left panel) and ``fa_figure2_blocksize.csv``
(middle panel) into ``--out`` (default ``./out``; the committed copies are in ``figures/``):

    python experiments/fa_figure2.py --out DIR      # or: iosim experiment fa_figure2 --out DIR
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from iosim.plots import experiment_cli, progress, save_csv

N, D, HEADS, BATCH = 1024, 64, 16, 64
BH = HEADS * BATCH
DTYPE = "fp16"
SRAM_BYTES = 192 * 1024          # "192KB" per SM on the A100 (paper Section 2.1)
GB = 1e9

#: The numbers printed in Figure 2 (left), in the two revisions of the paper's text we read.
PAPER = {
    "A": {"caption": "GPT-2 medium (seq. length 1024, head dim. 64, 16 heads, batch size 64) on A100 GPU",
          "standard": {"gflops": 66.6, "hbm_gb": 40.3, "ms": 41.7},
          "flash": {"gflops": 75.2, "hbm_gb": 4.4, "ms": 7.3}},
    "B": {"caption": "seq. length 1024, head dim. 64, 16 heads, batch size 64, key-padding mask and "
                     "no dropout on A100 GPU",
          "standard": {"gflops": 66.6, "hbm_gb": 35.3, "ms": 35.1},
          "flash": {"gflops": 75.2, "hbm_gb": 4.4, "ms": 11.7}},
}

STANDARD_VARIANTS = [
    ("Alg. 0 + 3 as printed", {}),
    ("+ mask pass", {"mask_pass": True}),
    ("+ dropout", {"dropout": True}),
    ("+ mask + dropout", {"mask_pass": True, "dropout": True}),
    ("+ scale + mask + dropout", {"scale_pass": True, "mask_pass": True, "dropout": True}),
]
BLOCK_SIZES = (64, 128, 256, 512)


def _roofline_ms(hw, nbytes: float, flops: dict) -> float:
    t = [nbytes / hw.backing.read_bandwidth,
         flops.get("matmul", 0.0) / hw.matrix_rate(DTYPE),
         (flops.get("vector", 0.0) + flops.get("other", 0.0)) / hw.vector_rate("fp32"),
         flops.get("exp", 0.0) / hw.exp_rate("fp32")]
    return 1e3 * max(t)


def left_panel():
    """Rows of the fwd+bwd comparison (one per algorithm variant)."""
    import pandas as pd

    from iosim.backward import fwd_bwd, paper_block_sizes
    from iosim.hardware import dtype_bytes, load_hardware

    hw = load_hardware("a100")
    rows = []
    for label, kw in STANDARD_VARIANTS:
        c = fwd_bwd("standard", N, D, dtype=DTYPE, **kw).scaled(BH)
        rows.append(_row("standard", label, c, hw, block_kv=None, block_q=None))
    M = SRAM_BYTES // int(dtype_bytes(DTYPE))
    bc, br = paper_block_sizes(M, D)
    for init in (False, True):
        c = fwd_bwd("flash", N, D, M, init_writes=init, dtype=DTYPE).scaled(BH)
        label = f"B_c={bc}, B_r={br} (192 KB rule)" + (", init writes" if init else "")
        rows.append(_row("flash", label, c, hw, block_kv=bc, block_q=br))
    for b in (128, 256):
        c = fwd_bwd("flash", N, D, block_kv=b, block_q=64, dtype=DTYPE).scaled(BH)
        rows.append(_row("flash", f"B_c={b}, B_r=64", c, hw, block_kv=b, block_q=64))
    df = pd.DataFrame(rows)
    for key, ver in PAPER.items():
        df[f"paper_{key}_hbm_gb"] = [ver[a]["hbm_gb"] for a in df["algorithm"]]
        df[f"paper_{key}_gflops"] = [ver[a]["gflops"] for a in df["algorithm"]]
        df[f"paper_{key}_ms"] = [ver[a]["ms"] for a in df["algorithm"]]
    return df


def _row(alg, label, c, hw, block_kv, block_q):
    fl = {k: float(v) for k, v in c.flops.items()}
    return {
        "algorithm": alg, "variant": label, "block_kv": block_kv, "block_q": block_q,
        "hbm_read_gb": c.read_bytes / GB, "hbm_write_gb": c.write_bytes / GB,
        "hbm_gb": c.bytes / GB,
        "gflops": c.total_flops / 1e9, "gflops_matmul": fl.get("matmul", 0.0) / 1e9,
        "roofline_ms_a100": _roofline_ms(hw, c.bytes, fl),
        "io_ms_a100": 1e3 * c.bytes / hw.backing.read_bandwidth,
    }


def middle_panel():
    """Forward FlashAttention HBM traffic vs block size B_c (B_r = 64), ours and the model's."""
    import pandas as pd

    from iosim.backward import flash_forward
    from iosim.hardware import load_hardware
    from iosim.mapping import get_mapping
    from iosim.traffic import evaluate_arrays

    hw = load_hardware("a100")
    rows = []
    for init in (False, True):
        m = get_mapping("fa1", init_writes=init)
        r = evaluate_arrays(m.cascade, m, hw, n=N, d=D, batch=BATCH, heads=HEADS, dtype=DTYPE,
                            block_q=64, block_kv=np.array(BLOCK_SIZES))
        model_bytes = r["levels"]["HBM"][0] + r["levels"]["HBM"][1]
        for i, bc in enumerate(BLOCK_SIZES):
            c = flash_forward(N, D, block_kv=bc, block_q=64, init_writes=init, dtype=DTYPE).scaled(BH)
            fl = {k: float(v) for k, v in c.flops.items()}
            rows.append({"block_kv": bc, "block_q": 64, "init_writes": init,
                         "T_c": -(-N // bc), "hbm_gb": c.bytes / GB,
                         "model_hbm_gb": float(model_bytes[i]) / GB,
                         "gflops": c.total_flops / 1e9,
                         "roofline_ms_a100": _roofline_ms(hw, c.bytes, fl),
                         "io_ms_a100": 1e3 * c.bytes / hw.backing.read_bandwidth,
                         "matmul_ms_a100": 1e3 * fl["matmul"] / hw.matrix_rate(DTYPE)})
    return pd.DataFrame(rows)


def plot(left, middle, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from iosim.plots import save_figure

    fig, axes = plt.subplots(1, 3, figsize=(16, 5.2), gridspec_kw={"width_ratios": [1.5, 1.0, 1.1]})
    # (1) HBM GB
    ax = axes[0]
    labels, vals, colors = [], [], []
    for _, r in left.iterrows():
        labels.append(("std: " if r.algorithm == "standard" else "FA: ") + r.variant)
        vals.append(r.hbm_gb)
        colors.append("#d62728" if r.algorithm == "standard" else "#1f77b4")
    y = np.arange(len(labels))[::-1]
    ax.barh(y, vals, color=colors, alpha=0.85)
    for yi, v in zip(y, vals):
        ax.text(v * 1.02, yi, f"{v:.1f}", va="center", fontsize=8)
    for alg, col in (("standard", "#7f0000"), ("flash", "#0b3d91")):
        va, vb = PAPER["A"][alg]["hbm_gb"], PAPER["B"][alg]["hbm_gb"]
        marks = [("A & B", va, "-")] if va == vb else [("A", va, "-"), ("B", vb, "--")]
        for k, (key, v, ls) in enumerate(marks):
            ax.axvline(v, color=col, ls=ls, lw=1.2)
            ax.text(v, len(labels) - 0.35 + 0.45 * k, f" paper {key}: {v}", color=col,
                    fontsize=7.5, ha="left", va="bottom")
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlabel("HBM reads + writes, fwd + bwd (GB = 1e9 B)")
    ax.set_title("HBM traffic: ours (bars) vs paper's printed values (lines)", fontsize=10)
    ax.set_xlim(0, max(max(vals), 41) * 1.22)
    ax.set_ylim(-0.7, len(labels) + 0.6)
    # (2) GFLOPs
    ax = axes[1]
    std = left[left.algorithm == "standard"].iloc[0]
    fa = left[left.algorithm == "flash"].iloc[0]
    x = np.arange(2)
    w = 0.35
    ours = [std.gflops_matmul, fa.gflops_matmul]
    paper = [PAPER["A"]["standard"]["gflops"], PAPER["A"]["flash"]["gflops"]]
    b1 = ax.bar(x - w / 2, ours, w, label="ours: matmul FLOPs (2 per MAC)", color="#2ca02c")
    b2 = ax.bar(x + w / 2, paper, w, label="paper (printed)", color="#7f7f7f")
    for bars in (b1, b2):
        for b in bars:
            ax.text(b.get_x() + b.get_width() / 2, b.get_height() * 1.05, f"{b.get_height():.1f}",
                    ha="center", fontsize=8)
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels(["standard", "FlashAttention"])
    ax.set_ylabel("GFLOPs, fwd + bwd (log scale)")
    ax.set_ylim(10, 5000)
    ax.set_title(f"FLOPs: ratio FA/standard ours {ours[1] / ours[0]:.3f}, paper {paper[1] / paper[0]:.3f}",
                 fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    # (3) forward HBM vs block size
    ax = axes[2]
    mid = middle[~middle.init_writes]
    xb = np.arange(len(mid))
    ax.bar(xb, mid.hbm_gb, color="#1f77b4", alpha=0.85, label="HBM accesses (GB)")
    for xi, v in zip(xb, mid.hbm_gb):
        ax.text(xi, v + 0.08, f"{v:.2f}", ha="center", fontsize=8)
    ax.set_xticks(xb)
    ax.set_xticklabels([str(b) for b in mid.block_kv])
    ax.set_xlabel("block size B_c (B_r = 64)")
    ax.set_ylabel("forward HBM reads + writes (GB)")
    ax2 = ax.twinx()
    ax2.plot(xb, mid.roofline_ms_a100, "o-", color="#ff7f0e", label="roofline time, a100 preset (ms)")
    ax2.plot(xb, mid.matmul_ms_a100, ":", color="0.4", label="matmul time at peak (ms)")
    ax2.set_ylabel("forward time lower bound (ms)")
    ax2.set_ylim(0, max(mid.roofline_ms_a100) * 1.3)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper right")
    ax.set_title("Forward: HBM accesses vs block size (Alg. 1)", fontsize=10)
    fig.suptitle("FlashAttention Figure 2 reproduced from loop-nest counts: N=1024, d=64, "
                 "16 heads x batch 64, fp16 (paper A: GPT-2 medium caption; B: key-padding mask, no dropout)",
                 fontsize=10.5)
    fig.tight_layout()
    return save_figure(fig, path)


def main(out_dir: Path | None = None, quick: bool = False) -> dict:
    out = Path(out_dir) if out_dir is not None else Path("out")
    bar = _bar(3, "fa_figure2")
    left = left_panel()
    bar.update()
    middle = middle_panel()
    bar.update()
    if not np.allclose(middle.hbm_gb, middle.model_hbm_gb, rtol=0, atol=1e-12):
        raise RuntimeError("iosim.backward and iosim.traffic disagree on the FA1 forward count")
    written = []
    for df, name in ((left, "fa_figure2.csv"), (middle, "fa_figure2_blocksize.csv")):
        save_csv(df, out / name)
        written.append(str(out / name))
    written.append(str(plot(left, middle, out / "fa_figure2.png")))
    bar.update()
    bar.close()
    lines = ["FlashAttention Figure 2 (left): fwd + bwd, N=1024, d=64, 16 heads x batch 64, fp16",
             f"{'algorithm':<9} {'variant':<34} {'HBM GB':>7} {'GFLOPs':>7} {'roofline ms':>11}"]
    for _, r in left.iterrows():
        lines.append(f"{r.algorithm:<9} {r.variant:<34} {r.hbm_gb:7.2f} {r.gflops:7.1f} "
                     f"{r.roofline_ms_a100:11.2f}")
    lines.append("paper A: standard 40.3 GB, 66.6 GFLOPs, 41.7 ms; FlashAttention 4.4 GB, 75.2 GFLOPs, 7.3 ms")
    lines.append("paper B: standard 35.3 GB, 66.6 GFLOPs, 35.1 ms; FlashAttention 4.4 GB, 75.2 GFLOPs, 11.7 ms")
    lines.append("middle panel (forward, B_r=64): " + ", ".join(
        f"B_c={int(r.block_kv)}: {r.hbm_gb:.2f} GB" for _, r in middle[~middle.init_writes].iterrows()))
    return {"written": written, "lines": lines,
            "left": left.to_dict(orient="records"), "middle": middle.to_dict(orient="records")}


def _cli(argv=None) -> int:
    return experiment_cli(main, __doc__, argv)


def _bar(total: int, desc: str):
    return progress(total, desc)


if __name__ == "__main__":
    raise SystemExit(_cli())
