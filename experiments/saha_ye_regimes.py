"""Saha & Ye's two regimes: min IO vs SRAM size M for FlashAttention-style vs small-cache square tilings, crossover near M = d^2.

Saha & Ye (ICML 2024, arXiv 2402.07443), Theorem 3.1: with standard matrix multiplication
the IO of attention is Θ(min(N²d/√M, N²d²/M)); the branches meet at M = d². For M ≥ d²
FlashAttention is optimal; for M < d² their SquareTilingAttention (tile B ≈ √(M/4), exp(QKᵀ)
written to HBM) does Θ(N²d/√M) and is optimal.

For N = 16384 and d = 64, 128 this script draws, against M (elements) from d²/64 to 256 d²:

* the minimum over **FA-style** tilings that fit (``iosim.search`` restricted to the FA-2 and
  FA-1 mappings, every block size on its grid),
* the minimum over **Saha–Ye square** tilings that fit (every tile B),
* FlashAttention's paper tiling (Algorithm 1, B_c = ⌈M/4d⌉, even where its blocks do not fit)
  and Saha & Ye's paper tile B = ⌊√(M/4)⌋,
* the bounds: the two branches with constant 1 and the compulsory 4Nd;

and, in a second panel, the local log-log slope of each minimum against M (expected: −1/2
below d², −1 above). Writes ``saha_ye_regimes.png`` and ``saha_ye_regimes.csv`` into ``--out``
(default ``./out``; the committed copies are in ``figures/``):

    python experiments/saha_ye_regimes.py --out DIR   # or: iosim experiment saha_ye_regimes
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from iosim.plots import experiment_cli, progress, save_csv

N = 16384
HEAD_DIMS = (64, 128)
DTYPE = "bf16"


def compute(n: int = N, head_dims=HEAD_DIMS, per_octave: int = 2, bar=None):
    import pandas as pd

    from iosim.bounds import get_bound
    from iosim.hardware import dtype_bytes
    from iosim.search import search
    from iosim.verify import ref_fa1, ref_saha_ye

    eb = dtype_bytes(DTYPE)
    rows = []
    for d in head_dims:
        d2 = d * d
        Ms = np.unique(np.round(np.geomspace(d2 / 64, d2 * 256, 14 * per_octave + 1)))
        Ms = Ms[Ms >= 16]
        fa = search("attention-1pass", "two-level", n=n, d=d, sram_bytes=Ms * eb, dtype=DTYPE,
                    mappings=["fa2", "fa1"]).frame
        sy = search("attention-1pass", "two-level", n=n, d=d, sram_bytes=Ms * eb, dtype=DTYPE,
                    mappings=["saha-ye"]).frame
        allm = search("attention-1pass", "two-level", n=n, d=d, sram_bytes=Ms * eb,
                      dtype=DTYPE).frame
        sy_b = get_bound("saha_ye_standard_matmul")
        if bar is not None:
            bar.update()
        for i, M in enumerate(Ms):
            def val(fr):
                return float(fr["traffic_elements"].iloc[i]) if bool(fr["fits"].iloc[i]) else np.nan

            B = int(np.floor(np.sqrt(M / 4)))
            rows.append({
                "n": n, "d": d, "M": float(M), "M_over_d2": float(M / d2),
                "fa_min": val(fa), "fa_variant": fa["variant"].iloc[i],
                "fa_block_q": fa["block_q"].iloc[i], "fa_block_kv": fa["block_kv"].iloc[i],
                "sy_min": val(sy), "sy_block": sy["block_q"].iloc[i],
                "best": val(allm), "best_variant": allm["variant"].iloc[i],
                "fa1_paper": float(ref_fa1(n, d, M)),
                "saha_ye_paper": float(ref_saha_ye(n, d, B)) if B >= 1 else np.nan,
                "bound_small_cache": n * n * d / np.sqrt(M),
                "bound_large_cache": n * n * d * d / M,
                "bound_saha_ye": float(sy_b.evaluate(N=n, d=d, M=M)),
                "bound_compulsory": 4.0 * n * d,
            })
    df = pd.DataFrame(rows)
    # local slopes (central differences in log-log) of the three minima
    for col in ("fa_min", "sy_min", "best"):
        df[f"slope_{col}"] = np.nan
        for d in head_dims:
            sel = df["d"] == d
            x = np.log(df.loc[sel, "M"].to_numpy())
            y = np.log(df.loc[sel, col].to_numpy())
            df.loc[sel, f"slope_{col}"] = np.gradient(y, x)
    return df


def crossover(df, d: int) -> float | None:
    """The M (elements) where the FA-style minimum first drops below the Saha–Ye minimum,
    interpolated log-linearly; None if it never does."""
    s = df[df["d"] == d].sort_values("M")
    diff = np.log(s["fa_min"].to_numpy()) - np.log(s["sy_min"].to_numpy())
    M = s["M"].to_numpy()
    ok = np.isfinite(diff)
    for i in range(1, len(M)):
        if ok[i - 1] and ok[i] and diff[i - 1] > 0 >= diff[i]:
            t = diff[i - 1] / (diff[i - 1] - diff[i])
            return float(np.exp(np.log(M[i - 1]) + t * (np.log(M[i]) - np.log(M[i - 1]))))
    return None


def plot(df, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from iosim.plots import save_figure

    ds = sorted(df["d"].unique())
    fig, axes = plt.subplots(2, len(ds), figsize=(6.6 * len(ds), 9.0), squeeze=False,
                             gridspec_kw={"height_ratios": [2.2, 1.0]})
    for j, d in enumerate(ds):
        s = df[df["d"] == d].sort_values("M")
        M = s["M"].to_numpy()
        d2 = d * d
        ax = axes[0][j]
        ax.plot(M, s["fa_min"], "o-", color="#1f77b4", ms=3.5, lw=1.8, label="min over FA-style tilings (FA-2/FA-1, fit)")
        ax.plot(M, s["sy_min"], "s-", color="#2ca02c", ms=3.5, lw=1.8, label="min over Saha–Ye square tilings (fit)")
        ax.plot(M, s["fa1_paper"], ":", color="#1f77b4", lw=1.1, label="FA1 paper blocks B_c=⌈M/4d⌉ (fit or not)")
        ax.plot(M, s["saha_ye_paper"], ":", color="#2ca02c", lw=1.1, label="Saha–Ye paper tile B=⌊√(M/4)⌋")
        ax.plot(M, s["bound_small_cache"], "--", color="0.55", lw=1.0, label="N²d/√M (const. 1)")
        ax.plot(M, s["bound_large_cache"], "-.", color="0.55", lw=1.0, label="N²d²/M (const. 1)")
        ax.plot(M, s["bound_compulsory"], "--", color="0.2", lw=1.0, label="compulsory 4Nd")
        ax.axvline(d2, color="0.7", lw=0.9)
        ax.annotate(" M = d²", (d2, 0.02), xycoords=("data", "axes fraction"), fontsize=8, color="0.35")
        x = crossover(df, d)
        if x is not None:
            ax.axvline(x, color="#d62728", lw=1.0, ls="--")
            ax.annotate(f" crossover\n M ≈ {x / d2:.2g} d²", (x, 0.80), xycoords=("data", "axes fraction"),
                        fontsize=8, color="#d62728")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        lo = np.nanmin(s["bound_compulsory"]) * 0.5
        hi = np.nanmax(s[["fa_min", "sy_min"]].to_numpy()) * 3
        ax.set_ylim(lo, hi)
        ax.set_xlabel("SRAM size M (elements)")
        ax.set_ylabel("HBM traffic per head (elements)")
        ax.set_title(f"N = {int(s['n'].iloc[0])}, d = {d}", fontsize=10)
        ax.grid(True, alpha=0.3, which="both")
        if j == 0:
            ax.legend(fontsize=7.5, loc="upper right")
        ax = axes[1][j]
        ax.plot(M, s["slope_fa_min"], "o-", color="#1f77b4", ms=3, label="FA-style min")
        ax.plot(M, s["slope_sy_min"], "s-", color="#2ca02c", ms=3, label="Saha–Ye min")
        ax.plot(M, s["slope_best"], "-", color="k", lw=2.2, alpha=0.55, label="min over all tilings")
        for v in (-0.5, -1.0):
            ax.axhline(v, color="0.6", lw=0.8, ls="--")
        ax.axvline(d2, color="0.7", lw=0.9)
        ax.set_xscale("log", base=2)
        ax.set_ylim(-1.6, 0.2)
        ax.set_xlabel("SRAM size M (elements)")
        ax.set_ylabel("local slope d log IO / d log M")
        ax.grid(True, alpha=0.3)
        if j == 0:
            ax.legend(fontsize=7.5, loc="lower left")
    fig.suptitle("Saha & Ye's two regimes: IO = Θ(min(N²d/√M, N²d²/M)), branches meet at M = d²",
                 fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


def main(out_dir: Path | None = None, quick: bool = False) -> dict:
    out = Path(out_dir) if out_dir is not None else Path("out")
    bar = _bar(len(HEAD_DIMS) + 1, "saha_ye_regimes")
    df = compute(per_octave=1 if quick else 2, bar=bar)
    save_csv(df, out / "saha_ye_regimes.csv")
    png = plot(df, out / "saha_ye_regimes.png")
    bar.update()
    bar.close()
    lines = ["Saha & Ye regimes (N = 16384): crossover of FA-style and square-tiling minima"]
    summary = {}
    for d in sorted(df["d"].unique()):
        x = crossover(df, int(d))
        s = df[df["d"] == d]
        small = s[s["M_over_d2"] <= 1 / 8]["slope_best"].mean()
        large = s[(s["M_over_d2"] >= 4) & (s["M"] <= N * d / 8)]["slope_best"].mean()
        summary[int(d)] = {"crossover_M": x, "crossover_over_d2": None if x is None else x / (d * d),
                           "slope_small": float(small), "slope_large": float(large)}
        lines.append(f"d = {int(d)}: crossover at M = {x:.0f} elements = {x / (d * d):.2f} d²; "
                     f"mean slope {small:+.2f} for M ≤ d²/8, {large:+.2f} for 4 d² ≤ M ≤ Nd/8")
    return {"written": [str(out / "saha_ye_regimes.csv"), str(png)], "lines": lines,
            "summary": summary}


def _cli(argv=None) -> int:
    return experiment_cli(main, __doc__, argv)


def _bar(total: int, desc: str):
    return progress(total, desc)


if __name__ == "__main__":
    raise SystemExit(_cli())
