"""GPU validation: the simulator's predicted L2 and DRAM bytes vs Nsight Compute on an H100.

    python experiments/gpu_validation.py              # from the recorded CSVs (no GPU)
    python experiments/gpu_validation.py --measure    # re-measure first (needs a CUDA GPU)

Reads experiments/data/gpu_ncu.csv (the counters of the generated kernel, SDPA flash and
cuDNN on each shape, recorded on the lent H100), joins the predictions for the same Mapping
on the ``h100`` preset (iosim.gpu.compare), and writes experiments/data/gpu_validation.csv
and figures/gpu_l2_pred_vs_meas.png, figures/gpu_dram_pred_vs_meas.png and
figures/gpu_speed.png (from experiments/data/gpu_bench.csv).
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

from iosim.gpu.compare import compare, read_csv, summary  # noqa: E402
from iosim.gpu.validate import write_csv  # noqa: E402

DATA = os.path.join(ROOT, "experiments", "data")
FIG = os.path.join(ROOT, "figures")


def _label(r) -> str:
    c = " c" if str(r["causal"]) == "True" else ""
    return f"{r['batch']}x{r['heads']}x{int(r['seq']) // 1024}Kx{r['head_dim']}{c}"


def figures(rows: list[dict], bench: list[dict] | None) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(FIG, exist_ok=True)
    out = []
    gen = [r for r in rows if r["impl"] == "generated" and r["cascade"] == "attention-1pass"
           and r.get("pred_dram_read_bytes") is not None]
    colors = {"query-major": "tab:blue", "head-major": "tab:red"}
    # L2 reads
    fig, ax = plt.subplots(figsize=(6.2, 5.2))
    for order, col in colors.items():
        sel = [r for r in gen if r["grid_order"] == order]
        ax.scatter([float(r["l1_from_l2_read_bytes"]) for r in sel],
                   [r["pred_l2_read_bytes"] for r in sel], c=col, marker="o",
                   label=f"{order}: SM-side reads from L2")
        ax.scatter([float(r["l2_tex_read_bytes"]) for r in sel],
                   [r["pred_l2_read_bytes"] for r in sel], facecolors="none", edgecolors=col,
                   marker="s", label=f"{order}: L2 tag lookups (srcunit_tex)")
    lo, hi = 1e8, 3e11
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
    ax.fill_between([lo, hi], [lo * 0.95, hi * 0.95], [lo * 1.05, hi * 1.05], color="0.85")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured L2 read bytes (ncu)")
    ax.set_ylabel("predicted (SMEM-level model, iosim.traffic)")
    ax.set_title("L2 reads: generated attention-1pass, H100, 34 launches\n(grey band: ±5%)",
                 fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    p = os.path.join(FIG, "gpu_l2_pred_vs_meas.png")
    fig.savefig(p, dpi=130)
    plt.close(fig)
    out.append(p)
    # DRAM reads
    fig, ax = plt.subplots(figsize=(6.2, 5.2))
    for order, col in colors.items():
        for causal, mk in (("False", "o"), ("True", "^")):
            sel = [r for r in gen if r["grid_order"] == order and str(r["causal"]) == causal]
            ax.scatter([float(r["dram_read_bytes"]) for r in sel],
                       [r["pred_dram_read_bytes"] for r in sel], c=col, marker=mk,
                       label=f"{order}{', causal' if causal == 'True' else ''}")
            for r in sel:
                if abs(r["err_dram_read"]) > 0.15:
                    ax.annotate(_label(r), (float(r["dram_read_bytes"]), r["pred_dram_read_bytes"]),
                                fontsize=6, xytext=(3, -3), textcoords="offset points")
    lo, hi = 3e7, 1e11
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
    ax.fill_between([lo, hi], [lo * 0.85, hi * 0.85], [lo * 1.15, hi * 1.15], color="0.85")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured DRAM read bytes (dram__bytes_read.sum)")
    ax.set_ylabel("predicted (iosim.l2model: LRU, 25 MiB effective, lock-step blocks)")
    ax.set_title("DRAM reads, H100 (grey band: ±15%; labels: misses)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    p = os.path.join(FIG, "gpu_dram_pred_vs_meas.png")
    fig.savefig(p, dpi=130)
    plt.close(fig)
    out.append(p)
    if bench:
        keys = []
        for r in bench:
            k = (int(r["head_dim"]), int(r["seq"]), r["causal"], int(r["batch"]), int(r["heads"]))
            if k not in keys:
                keys.append(k)
        keys.sort()
        best, flash, cudnn = [], [], []
        for k in keys:
            sel = [r for r in bench if (int(r["head_dim"]), int(r["seq"]), r["causal"],
                                        int(r["batch"]), int(r["heads"])) == k]
            g = [float(r["tflops"]) for r in sel if r["impl"] == "generated"
                 and r["tflops"] not in ("", "nan")]
            best.append(max(g) if g else 0)
            flash.append(next(float(r["tflops"]) for r in sel if r["impl"] == "sdpa-flash"))
            cudnn.append(next(float(r["tflops"]) for r in sel if r["impl"] == "sdpa-cudnn"))
        fig, ax = plt.subplots(figsize=(9, 4.2))
        x = range(len(keys))
        wdt = 0.27
        ax.bar([i - wdt for i in x], flash, wdt, label="SDPA flash (FA2)", color="tab:gray")
        ax.bar(list(x), best, wdt, label="generated attention-1pass (best tiling)",
               color="tab:green")
        ax.bar([i + wdt for i in x], cudnn, wdt, label="SDPA cuDNN", color="tab:purple")
        ax.axhline(798, color="k", ls="--", lw=0.8)
        ax.text(len(keys) - 0.5, 805, "bf16 matmul ≈ 798", ha="right", fontsize=7)
        ax.set_xticks(list(x))
        ax.set_xticklabels([f"d{k[0]} N{k[1] // 1024}K{' c' if k[2] == 'True' else ''}"
                            for k in keys], fontsize=7, rotation=30)
        ax.set_ylabel("TFLOP/s (bf16, forward)")
        ax.set_title(f"Forward attention on {bench[0].get('device', 'the GPU')}", fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
        ax.set_ylim(0, 900)
        fig.tight_layout()
        p = os.path.join(FIG, "gpu_speed.png")
        fig.savefig(p, dpi=130)
        plt.close(fig)
        out.append(p)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--measure", action="store_true", help="re-measure on this machine's GPU")
    ap.add_argument("--no-figures", action="store_true")
    a = ap.parse_args(argv)
    if a.measure:
        from iosim.gpu.validate import measure
        measure(None, DATA)
    rows = compare(read_csv(os.path.join(DATA, "gpu_ncu.csv")))
    write_csv(rows, os.path.join(DATA, "gpu_validation.csv"))
    bench_path = os.path.join(DATA, "gpu_bench.csv")
    bench = read_csv(bench_path) if os.path.exists(bench_path) else None
    if not a.no_figures:
        for p in figures(rows, bench):
            print("wrote", os.path.relpath(p, ROOT))
    s = summary(rows)
    print(f"{s['shapes']} launches: L2 reads (SM side) max |err| {s['l2_read_max_abs_err']:.4f}; "
          f"L2 tag lookups max |err| {s['l2_tex_read_max_abs_err']:.3f}; DRAM reads within 15% "
          f"on {s['dram_read_within_15pct']}/{s['shapes']} (max |err| "
          f"{s['dram_read_max_abs_err']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
