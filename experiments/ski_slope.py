"""Ski-slope curves: minimum HBM traffic vs SRAM size for every library cascade the model supports.

Orojenesis (Huang et al., ISCA 2024) draws, for an Einsum or a fused chain, the minimum
backing-store traffic over a mapping space against the on-chip buffer size: a "ski slope"
that falls as the buffer grows and flattens at the compulsory traffic once everything that
must be reused fits. Here every library cascade is searched (``iosim.search``: all mapping
kinds that fit the cascade, every tile size on the grid, softmax state and score tiles
counted in the footprint) at SRAM sizes from 512 B to 4 MiB (bf16), one head:

* prefill cascades at N = 4096, d = 64 (softmax, masked, sigmoid, GQA, 2-pass, 3-pass);
* linear attention and Lightning Attention-2 at N = 4096, d = 64;
* decode (split-K) with one query row against a KV cache of 4096 rows.

Cascades the search rejects are listed in the CSV with ``supported = False`` and the error.
Writes ``ski_slope.png`` and ``ski_slope.csv`` into ``--out`` (default ``./out``; the
committed copies are in ``figures/``):

    python experiments/ski_slope.py --out DIR       # or: iosim experiment ski_slope --out DIR
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from iosim.plots import experiment_cli, progress, save_csv

N, D = 4096, 64
DECODE_KV = 4096
DTYPE = "bf16"
PANELS = {
    "prefill (softmax and variants), N = 4096, d = 64": (
        "attention-1pass", "flash1", "attention-2pass", "attention-3pass", "attention-gqa",
        "attention-masked", "sigmoid", "attention-blocksparse"),
    "linear attention (N = 4096) and decode (1 query, KV 4096), d = 64": (
        "linear", "lightning2", "decode-splitk"),
}


def shapes_for(cascade: str) -> dict:
    if cascade == "decode-splitk":
        return {"n": 1, "kv_len": DECODE_KV, "d": D}
    return {"n": N, "d": D}


def compute(srams_bytes=None, bar=None):
    import pandas as pd

    import cascades.library as lib
    from iosim.search import search

    if srams_bytes is None:
        srams_bytes = 2.0 ** np.arange(9, 23)      # 512 B ... 4 MiB
    names = lib.names()
    frames, unsupported = [], []
    for c in names:
        if bar is not None:
            bar.update()
        kw = shapes_for(c)
        t0 = time.perf_counter()
        try:
            res = search(c, "two-level", sram_bytes=np.asarray(srams_bytes, dtype=float),
                         dtype=DTYPE, **kw)
        except Exception as exc:  # noqa: BLE001 - reported, not hidden
            unsupported.append({"cascade": c, "supported": False,
                                "error": f"{type(exc).__name__}: {exc}".splitlines()[0]})
            continue
        dt = time.perf_counter() - t0
        f = res.frame
        frames.append(pd.DataFrame({
            "cascade": c, "supported": True, "error": "",
            "n": kw["n"], "kv_len": kw.get("kv_len", kw["n"]), "d": D,
            "sram_bytes": f["sram_bytes"].to_numpy(float),
            "sram_elements": f["sram_elements"].to_numpy(float),
            "fits": f["fits"].to_numpy(bool),
            "variant": f["variant"].to_numpy(object),
            "block_q": f.get("block_q", np.nan), "block_kv": f.get("block_kv", np.nan),
            "traffic_elements": f["traffic_elements"].to_numpy(float),
            "backing_bytes": f["backing_bytes"].to_numpy(float),
            "bound_compulsory_elements": f.get("bound_compulsory_elements", np.nan),
            "ratio_to_bound": f.get("ratio_to_bound", np.nan),
            "search_seconds": dt, "candidates": res.candidates,
        }))
    df = pd.concat(frames + ([pd.DataFrame(unsupported)] if unsupported else []), ignore_index=True)
    return df


def plot(df, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from iosim.hardware import dtype_bytes
    from iosim.plots import COLORS, MARKERS, fmt_bytes, save_figure

    eb = dtype_bytes(DTYPE)
    fig, axes = plt.subplots(1, len(PANELS), figsize=(7.2 * len(PANELS), 5.4), squeeze=False)
    for ax, (title, names) in zip(axes[0], PANELS.items()):
        k = 0
        for c in names:
            s = df[(df["cascade"] == c) & (df["supported"] == True)]  # noqa: E712
            if not len(s):
                continue
            s = s.sort_values("sram_bytes")
            x = s["sram_bytes"].to_numpy(float)
            y = np.where(s["fits"].to_numpy(bool), s["backing_bytes"].to_numpy(float), np.nan)
            col = COLORS[k % len(COLORS)]
            # identical curves (cascades the search tiles the same way) stay visible:
            # decreasing widths and alternating dashes
            ls = ["-", "--", "-.", (0, (4, 2, 1, 2))][k % 4]
            ax.plot(x, y, linestyle=ls, lw=max(0.9, 3.2 - 0.35 * k), marker=MARKERS[k % len(MARKERS)],
                    ms=max(2.5, 6 - 0.5 * k), color=col, label=c, alpha=0.9)
            floor = np.nanmax(s["bound_compulsory_elements"].to_numpy(float)) * eb
            ax.axhline(floor, color=col, lw=0.7, ls=":", alpha=0.8)
            k += 1
        missing = [c for c in names if not len(df[(df["cascade"] == c) & (df["supported"] == True)])]  # noqa: E712
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        xs = sorted(df["sram_bytes"].dropna().unique())
        ticks = xs[::2]
        ax.set_xticks(ticks)
        ax.set_xticklabels([fmt_bytes(t) for t in ticks], rotation=30, ha="right")
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.grid(True, alpha=0.3)
        ax.set_xlabel(f"SRAM size ({DTYPE}; elements = bytes / {eb:g})")
        ax.set_ylabel("minimum HBM traffic per head (bytes)")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8, loc="upper right",
                  title="dotted: compulsory traffic" + (f"\nnot supported: {', '.join(missing)}" if missing else ""),
                  title_fontsize=7.5)
    fig.suptitle("Ski-slope curves: minimum HBM traffic over all tilings that fit, vs SRAM size "
                 "(iosim.search; gaps: nothing fits)", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


def main(out_dir: Path | None = None, quick: bool = False) -> dict:
    import cascades.library as lib

    out = Path(out_dir) if out_dir is not None else Path("out")
    srams = 2.0 ** np.arange(9, 23, 2 if quick else 1)
    bar = _bar(len(lib.names()) + 1, "ski_slope")
    df = compute(srams, bar=bar)
    save_csv(df, out / "ski_slope.csv")
    png = plot(df, out / "ski_slope.png")
    bar.update()
    bar.close()
    lines = [f"ski-slope curves over {len(srams)} SRAM sizes (512 B ... 4 MiB, {DTYPE}), one head"]
    for c, s in df.groupby("cascade", sort=False):
        if not bool(s["supported"].iloc[0]):
            lines.append(f"{c:<22} not supported by the search: {s['error'].iloc[0]}")
            continue
        ok = s[s["fits"]]
        first = ok["sram_bytes"].min() if len(ok) else float("nan")
        lines.append(f"{c:<22} search {1e3 * s['search_seconds'].iloc[0]:6.0f} ms; smallest SRAM that "
                     f"fits {first:>9,.0f} B; traffic at 4 MiB = {ok['backing_bytes'].iloc[-1]:,.0f} B "
                     f"({ok['ratio_to_bound'].iloc[-1]:.2f}× the bound)" if len(ok) else f"{c}: nothing fits")
    return {"written": [str(out / "ski_slope.csv"), str(png)], "lines": lines}


def _cli(argv=None) -> int:
    return experiment_cli(main, __doc__, argv)


def _bar(total: int, desc: str):
    return progress(total, desc)


if __name__ == "__main__":
    raise SystemExit(_cli())
