"""Matplotlib figures for sweeps and experiments, written atomically.

Every function takes a DataFrame (the sweep's CSV columns) or plain arrays, draws with the
``Agg`` backend and writes the PNG through :func:`save_figure` (a temporary file and a
rename), so an interrupted run never leaves half a picture.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = [
    "save_figure",
    "fmt_bytes",
    "bound_curves",
    "plot_vs_sram",
    "plot_vs_seqlen",
    "sweep_figures",
    "COLORS",
]

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
          "#17becf", "#7f7f7f", "#bcbd22"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "*"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 130) -> Path:
    """Save ``fig`` as PNG to ``path`` atomically and close it."""
    from iosim.cli.common import atomic_write

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    _plt().close(fig)
    atomic_write(path, buf.getvalue())
    return Path(path)


def _series(ax, x, y, fit, k: int, label: str) -> None:
    """One algorithm's line: solid where its tiles fit, dotted with open markers where not."""
    c = COLORS[k % len(COLORS)]
    mk = MARKERS[k % len(MARKERS)]
    ax.plot(x, np.where(fit, y, np.nan), "-", color=c, marker=mk, ms=4, label=label)
    if (~fit).any():
        ax.plot(x, y, ":", color=c, lw=0.9, alpha=0.6)
        ax.plot(x[~fit], y[~fit], mk, mfc="none", color=c, ms=4, alpha=0.7)


def save_csv(df, path: str | Path) -> Path:
    """Write a DataFrame as CSV to ``path`` atomically (12 significant digits)."""
    from iosim.cli.common import atomic_write

    buf = io.StringIO()
    df.to_csv(buf, index=False, float_format="%.12g")
    atomic_write(path, buf.getvalue())
    return Path(path)


def figures_dir(script: str | Path) -> Path:
    """``figures/`` beside the ``experiments/`` folder that holds ``script``."""
    return Path(script).resolve().parents[1] / "figures"


def fmt_bytes(b: float) -> str:
    """``65536 -> '64 KiB'`` (binary units, no trailing .0)."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if b >= size:
            v = b / size
            return f"{v:.0f} {unit}" if abs(v - round(v)) < 1e-9 else f"{v:.3g} {unit}"
    return f"{b:.0f} B"


def fmt_count(n: float) -> str:
    n = float(n)
    for unit, size in (("M", 2**20), ("K", 2**10)):
        if n >= size and n % size == 0:
            return f"{n / size:.0f}{unit}"
    return f"{n:g}"


def bound_curves(N, d, M) -> dict:
    """Bound curves in elements per head: compulsory (exact), the standard-matmul lower
    envelope (Saha & Ye, constant 1) and FlashAttention's Θ(N²d²/M) (constant 1)."""
    from iosim.bounds import attention_lower_envelope, get_bound

    env = attention_lower_envelope(N, d, M)
    return {
        "compulsory 4Nd (exact)": np.asarray(get_bound("compulsory").evaluate(N=N, d=d), dtype=float)
        * np.ones_like(np.asarray(M, dtype=float)),
        "lower envelope (Saha–Ye, const. 1)": np.asarray(env.value, dtype=float),
    }


def _log_axes(ax, xlabel: str, ylabel: str):
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)


def _bytes_ticks(ax, values: Sequence[float]):
    vals = sorted(set(float(v) for v in values))
    if len(vals) > 8:
        step = int(np.ceil(len(vals) / 8))
        vals = vals[::step]
    ax.set_xticks(vals)
    ax.set_xticklabels([fmt_bytes(v) for v in vals], rotation=30, ha="right")
    ax.minorticks_off()


def plot_vs_sram(df, path, *, d: int, seq_lens: Sequence[int] | None = None,
                 title: str = "HBM traffic vs SRAM size", per_head: bool = True):
    """Traffic against SRAM size (log-log), one line per algorithm, one panel per N.

    Points whose tiles do not fit the SRAM (``fits`` False) are drawn hollow on a dotted
    line. Bound curves are dashed grey.
    """
    from iosim.hardware import dtype_bytes

    plt = _plt()
    sub = df[df["d"] == d]
    Ns = sorted(sub["n"].unique()) if seq_lens is None else list(seq_lens)
    if len(Ns) > 4:
        idx = np.unique(np.round(np.linspace(0, len(Ns) - 1, 4)).astype(int))
        Ns = [Ns[i] for i in idx]
    algs = list(dict.fromkeys(sub["algorithm"]))
    fig, axes = plt.subplots(1, len(Ns), figsize=(5.2 * len(Ns), 4.4), squeeze=False)
    for ax, N in zip(axes[0], Ns):
        s = sub[sub["n"] == N]
        eb = dtype_bytes(str(s["dtype"].iloc[0])) if len(s) else 2
        ycol = "hbm_elements_per_head" if per_head else "hbm_bytes"
        for k, alg in enumerate(algs):
            a = s[s["algorithm"] == alg].sort_values("sram_bytes")
            if not len(a):
                continue
            x = a["sram_bytes"].to_numpy(float)
            y = a[ycol].to_numpy(float) * (eb if per_head else 1)
            fit = a["fits"].astype(bool).to_numpy()
            _series(ax, x, y, fit, k, alg)
        xs = np.geomspace(s["sram_bytes"].min(), s["sram_bytes"].max(), 200) if len(s) else None
        if xs is not None:
            M = xs / eb
            for j, (name, v) in enumerate(bound_curves(N, d, M).items()):
                mult = eb if per_head else eb * float(s["batch"].iloc[0]) * float(s["heads"].iloc[0])
                ax.plot(xs, v * mult, "--", color=["0.35", "0.6"][j % 2], lw=1.2, label=name)
        _log_axes(ax, f"SRAM size (bytes; {s['dtype'].iloc[0] if len(s) else ''} elements = bytes / "
                      f"{eb:g})", "HBM traffic per head (bytes)" if per_head else "HBM traffic (bytes)")
        if xs is not None:
            if xs[0] <= d * d * eb <= xs[-1]:
                ax.axvline(d * d * eb, color="0.75", lw=0.8)
                ax.annotate(" M = d²", (d * d * eb, 0.02), xycoords=("data", "axes fraction"),
                            color="0.4", fontsize=7, rotation=90, va="bottom")
            _bytes_ticks(ax, s["sram_bytes"].unique())
        ax.set_title(f"N = {fmt_count(N)}, d = {d}", fontsize=10)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8,
               bbox_to_anchor=(0.5, -0.02), frameon=False)
    fig.suptitle(title + "  (hollow markers: the tiles do not fit the SRAM)", fontsize=11)
    fig.tight_layout(rect=(0, 0.08 + 0.03 * (len(labels) > 5), 1, 1))
    return save_figure(fig, path)


def plot_vs_seqlen(df, path, *, d: int, sram_bytes: float | None = None,
                   title: str = "HBM traffic vs sequence length", per_head: bool = True):
    """Traffic against N (log-log) at one SRAM size, one line per algorithm, with bounds."""
    from iosim.hardware import dtype_bytes

    plt = _plt()
    sub = df[df["d"] == d]
    if sram_bytes is None:
        srams = sorted(sub["sram_bytes"].unique())
        sram_bytes = srams[len(srams) // 2]
    s = sub[np.isclose(sub["sram_bytes"], sram_bytes)]
    eb = dtype_bytes(str(s["dtype"].iloc[0])) if len(s) else 2
    fig, ax = plt.subplots(figsize=(6.2, 4.6))
    ycol = "hbm_elements_per_head" if per_head else "hbm_bytes"
    for k, alg in enumerate(dict.fromkeys(s["algorithm"])):
        a = s[s["algorithm"] == alg].sort_values("n")
        x = a["n"].to_numpy(float)
        y = a[ycol].to_numpy(float) * (eb if per_head else 1)
        fit = a["fits"].astype(bool).to_numpy()
        _series(ax, x, y, fit, k, alg)
    if len(s):
        Ns = np.geomspace(s["n"].min(), s["n"].max(), 100)
        mult = eb if per_head else eb * float(s["batch"].iloc[0]) * float(s["heads"].iloc[0])
        for j, (name, v) in enumerate(bound_curves(Ns, d, sram_bytes / eb).items()):
            ax.plot(Ns, v * mult, "--", color=["0.35", "0.6"][j % 2], lw=1.2, label=name)
    _log_axes(ax, "sequence length N", "HBM traffic per head (bytes)" if per_head else "HBM traffic (bytes)")
    if len(s):
        vals = sorted(s["n"].unique())
        if len(vals) > 10:
            vals = vals[:: int(np.ceil(len(vals) / 10))]
        ax.set_xticks(vals)
        ax.set_xticklabels([fmt_count(v) for v in vals])
    ax.minorticks_off()
    ax.set_title(f"{title}\nSRAM {fmt_bytes(sram_bytes)}, d = {d}  (hollow: tiles do not fit)", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def sweep_figures(df, out_dir, *, prefix: str = "sweep") -> list:
    """The sweep's figures: traffic vs SRAM and vs N for every head dimension."""
    out_dir = Path(out_dir)
    paths = []
    ds = sorted(df["d"].unique())
    for d in ds:
        suf = "" if len(ds) == 1 else f"_d{int(d)}"
        if df[df["d"] == d]["sram_bytes"].nunique() >= 2:
            paths.append(plot_vs_sram(df, out_dir / f"{prefix}_vs_sram{suf}.png", d=int(d)))
        if df[df["d"] == d]["n"].nunique() >= 2:
            paths.append(plot_vs_seqlen(df, out_dir / f"{prefix}_vs_seqlen{suf}.png", d=int(d)))
    return paths


def progress(total: int, desc: str):
    """A progress bar on stderr for an experiment (shown on a terminal only)."""
    import sys

    from tqdm import tqdm
    return tqdm(total=total, desc=desc, file=sys.stderr, disable=None, leave=False)


def experiment_cli(main, doc: str, argv=None) -> int:
    """The command line of a claim-reproducing experiment script: ``--out DIR`` (default
    ./out) and ``--quick``; runs ``main(out_dir=..., quick=...)`` and prints its lines and
    the files it wrote."""
    import argparse
    from pathlib import Path
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--out", default="out", help="output directory (default: ./out)")
    ap.add_argument("--quick", action="store_true", help="a smaller grid (for smoke tests)")
    a = ap.parse_args(argv)
    res = main(out_dir=Path(a.out), quick=a.quick)
    for line in res["lines"]:
        print(line)
    for path in res["written"]:
        print("wrote", path)
    return 0
