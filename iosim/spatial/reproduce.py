"""Reproduce the FuseMax evaluation (Nayak et al., MICRO 2024) with :mod:`iosim.spatial`.

:func:`reproduce` runs every configuration (Unfused, FLAT, +Cascade, +Architecture,
+Binding = FuseMax) on BERT-Base, TrXL-wt103, T5-small and XLM at 1K..1M tokens, adds the
encoder's linear layers for end-to-end numbers, sweeps FuseMax's array size at 256K (the
area/latency Pareto curve), runs the 1-, 2- and 3-pass cascades on FuseMax's hardware, and
compares everything with the numbers of the paper's artifact (``experiments/data``); it
writes CSVs and PNG figures. ``iosim spatial reproduce --out figures/`` and
``python experiments/fusemax.py`` call it.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import pandas as pd

from iosim.spatial.arch import load_spatial_hardware
from iosim.spatial.configs import CONFIG_ORDER, get_config, run
from iosim.spatial.model import evaluate
from iosim.spatial.workloads import (SEQ_LENS, attention_shape, format_seq_len, get_model,
                                     linear_layers)

__all__ = ["sweep", "summarize", "pareto", "passes_study", "load_paper", "compare",
           "headline_table", "figures", "reproduce", "MODELS", "PAPER_CONFIG"]

MODELS = ("bert", "trxl", "t5", "xlm")
#: our configuration name -> the artifact's
PAPER_CONFIG = {"unfused": "unfused", "flat": "flat", "cascade": "cascade",
                "architecture": "arch", "fusemax": "binding"}
#: which architecture's linear layers a configuration adds end to end (artifact graph.py)
LINEAR_HW = {"unfused": "flat", "flat": "flat", "cascade": "flat", "architecture": "fusemax",
             "fusemax": "fusemax"}
EINSUMS_2D = ("BQK", "QK", "LM", "SLN", "SLD", "SLNV", "O")


# --------------------------------------------------------------------------------------
# sweeps
# --------------------------------------------------------------------------------------

def sweep(models=MODELS, seq_lens=SEQ_LENS, configs=CONFIG_ORDER) -> pd.DataFrame:
    """One row per (configuration, model, sequence length): attention, linear layers, end to
    end, and the 2D array's busy fraction per Einsum."""
    rows = []
    lin_cache = {}
    for cfg in configs:
        c = get_config(cfg)
        for mk in models:
            m = get_model(mk)
            for n in seq_lens:
                r = run(c, mk, n)
                lhw = LINEAR_HW.get(c.name, c.hardware)
                key = (mk, n, lhw)
                if key not in lin_cache:
                    lin_cache[key] = linear_layers(m, n, lhw)
                lin = lin_cache[key]
                row = {"config": c.name, "label": c.label, "model": m.label, "N": n,
                       "seq_len": format_seq_len(n), "latency_s": r.latency_s,
                       "compute_s": r.compute_s, "dram_s": r.dram_s, "bound": r.bound,
                       "dram_bytes": r.dram_bytes, "util_2d": r.utilization.get("2d", 0.0),
                       "util_1d": r.utilization.get("1d", 0.0),
                       "energy_pj": r.energy_total_pj, "query_tiles_per_chunk": r.plans[0].P1,
                       "linear_latency_s": lin.latency_s, "linear_energy_pj": lin.energy_pj["total"],
                       "e2e_latency_s": r.latency_s + lin.latency_s,
                       "e2e_energy_pj": r.energy_total_pj + lin.energy_pj["total"]}
                for k, v in r.energy_pj.items():
                    if k != "total":
                        row[f"energy_{k}_pj"] = v
                for e in r.einsums:
                    if e["array"] == "2d":
                        name = "QK" if e["einsum"] in ("BQK", "QK") else e["einsum"]
                        row[f"busy2d_{name}"] = row.get(f"busy2d_{name}", 0.0) + e["busy_fraction"]
                rows.append(row)
    df = pd.DataFrame(rows)
    for scope, lat, en in (("attn", "latency_s", "energy_pj"), ("e2e", "e2e_latency_s", "e2e_energy_pj")):
        base = df[df.config == "unfused"].set_index(["model", "N"])
        flat = df[df.config == "flat"].set_index(["model", "N"])
        idx = list(zip(df.model, df.N))
        if len(base):
            df[f"{scope}_speedup_vs_unfused"] = [base.loc[i, lat] / v for i, v in zip(idx, df[lat])]
            df[f"{scope}_energy_vs_unfused"] = [v / base.loc[i, en] for i, v in zip(idx, df[en])]
        if len(flat):
            df[f"{scope}_speedup_vs_flat"] = [flat.loc[i, lat] / v for i, v in zip(idx, df[lat])]
            df[f"{scope}_energy_vs_flat"] = [v / flat.loc[i, en] for i, v in zip(idx, df[en])]
    return df


def summarize(df: pd.DataFrame) -> dict:
    """Arithmetic means over the (model, length) points, as the paper's abstract reports."""
    out = {}
    for cfg in df.config.unique():
        d = df[df.config == cfg]
        for col in ("attn_speedup_vs_flat", "attn_energy_vs_flat", "attn_speedup_vs_unfused",
                    "attn_energy_vs_unfused", "e2e_speedup_vs_flat", "e2e_energy_vs_flat",
                    "e2e_speedup_vs_unfused", "e2e_energy_vs_unfused", "util_2d", "util_1d"):
            if col in d:
                out[f"{cfg}.{col}"] = float(d[col].mean())
    return out


def _min_buffer(hw, shape) -> float:
    """Bytes one chunk of one query tile needs on chip (the smallest feasible buffer)."""
    rows = hw.matrix_array().dims[0]
    cols = hw.matrix_array().dims[-1]
    wb = hw.word_bytes
    return (cols * (shape.E + 2 + shape.F) + rows * (shape.E + shape.F)) * wb


def pareto(models=MODELS, pe_dims=(16, 32, 64, 128, 256, 512), seq_len=262144,
           config="fusemax", improvement=0.01, max_buffer=64 * 2**20) -> pd.DataFrame:
    """FuseMax with PE_dim x PE_dim and PE_dim-PE arrays at ``seq_len``. Buffers from the
    smallest that holds one query tile's chunk, doubling up to ``max_buffer``, are tried; the
    row reports the smallest whose latency is within ``improvement`` of the fastest (large
    enough not to be memory-bound, with enough query tiles interleaved to hide the
    running-max round trip), with its area.
    The tiles an array holds in flight scale with its side (a reduction across PE_dim rows
    drains in PE_dim cycles): 8 up to 256, then 8 per 256 rows."""
    from dataclasses import replace as _replace
    cfg = get_config(config)
    base = load_spatial_hardware(cfg.hardware)
    rows = []
    for mk in models:
        m = get_model(mk)
        shape = attention_shape(m, seq_len)
        for d in pe_dims:
            hw = base.scaled(pe_dim=d)
            opts = _replace(cfg.options, depth=max(cfg.options.depth,
                                                   cfg.options.depth * d // 256))
            buf = _min_buffer(hw, shape)
            tried = []
            while buf <= max_buffer:
                hwb = hw.scaled(buffer_bytes=buf)
                tried.append((hwb, evaluate(cfg.cascade, hwb, shape, opts, label=cfg.label)))
                buf *= 2
            fastest = min(r.latency_s for _, r in tried)
            hwb, r = next((h, r) for h, r in tried if r.latency_s <= fastest * (1 + improvement))
            area = hwb.area_um2()
            rows.append({"model": m.label, "PE_dim": d, "buffer_bytes": hwb.buffer.capacity_bytes,
                         "latency_s": r.latency_s, "compute_s": r.compute_s, "dram_s": r.dram_s,
                         "dram_bytes": r.dram_bytes, "util_2d": r.utilization["2d"],
                         "util_1d": r.utilization["1d"], "area_um2": area["total"],
                         "array_2d_area_um2": area.get("2d", 0.0),
                         "energy_pj": r.energy_total_pj,
                         "query_tiles_per_chunk": r.plans[0].P1})
    return pd.DataFrame(rows)


def passes_study(model="bert", seq_lens=SEQ_LENS[:5],
                 cascades_=("attention-1pass", "attention-2pass", "attention-3pass")) -> pd.DataFrame:
    """The 1-, 2- and 3-pass cascades on FuseMax's hardware with FuseMax's binding policy and
    schedule: a multi-pass cascade must hold key-rank fibres on chip or spill them."""
    rows = []
    m = get_model(model)
    for casc in cascades_:
        for n in seq_lens:
            r = run("fusemax", model, n, cascade=casc)
            p = r.plans[0]
            qkv = attention_shape(m, n).bh * n * m.E * 2
            fiber = (p.multipass_bytes / p.P1) if p.P1 else 0.0
            rows.append({"cascade": casc, "model": m.label, "N": n, "seq_len": format_seq_len(n),
                         "latency_s": r.latency_s, "bound": r.bound, "dram_bytes": r.dram_bytes,
                         "dram_over_qkv": r.dram_bytes / qkv,
                         "multipass_bytes_per_query_tile": fiber,
                         "onchip_fraction": p.onchip_fraction, "query_tiles_per_chunk": p.P1,
                         "util_2d": r.utilization["2d"], "util_1d": r.utilization["1d"],
                         "energy_pj": r.energy_total_pj,
                         "binding": " ".join(f"{k}:{v}" for k, v in r.binding.assign)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------
# the paper's numbers
# --------------------------------------------------------------------------------------

def find_data_dir(data_dir=None) -> Path | None:
    cands = [Path(data_dir)] if data_dir else []
    cands += [Path.cwd() / "experiments" / "data",
              Path(__file__).resolve().parents[2] / "experiments" / "data"]
    for c in cands:
        if (c / "fusemax_paper_utilization.csv").is_file():
            return c
    return None


def load_paper(data_dir=None) -> dict | None:
    d = find_data_dir(data_dir)
    if d is None:
        return None
    rev = {v: k for k, v in PAPER_CONFIG.items()}
    out = {}
    for name in ("utilization", "speedup", "energy", "traffic", "pareto", "summary",
                 "util_breakdown", "linear_layers"):
        f = d / f"fusemax_paper_{name}.csv"
        if f.is_file():
            t = pd.read_csv(f)
            if "config" in t:
                t["config"] = t["config"].map(lambda x: rev.get(x, x))
            out[name] = t
    return out


def compare(df: pd.DataFrame, paper: dict) -> pd.DataFrame:
    """Per point: ours vs the artifact's latency, energy, utilization, traffic."""
    u = paper["utilization"].pivot_table(index=["config", "model", "N"], columns="array",
                                         values="utilization")
    s = paper["speedup"]
    e = paper["energy"]
    t = paper["traffic"].set_index(["config", "model", "N"])["dram_traffic_bytes"]
    sa = s[s.scope == "attention"].set_index(["config", "model", "N"])
    se = s[s.scope == "end_to_end"].set_index(["config", "model", "N"])
    ea = e[e.scope == "attention"].set_index(["config", "model", "N"])
    ee = e[e.scope == "end_to_end"].set_index(["config", "model", "N"])
    rows = []
    for r in df.itertuples():
        k = (r.config, r.model, r.N)
        if k not in sa.index:
            continue
        rows.append({
            "config": r.config, "model": r.model, "N": r.N,
            "util_2d": r.util_2d, "paper_util_2d": u.loc[k, "2d"],
            "util_1d": r.util_1d, "paper_util_1d": u.loc[k, "1d"],
            "latency_s": r.latency_s, "paper_latency_s": sa.loc[k, "latency_s"],
            "energy_pj": r.energy_pj, "paper_energy_pj": ea.loc[k, "energy_pJ"],
            "dram_bytes": r.dram_bytes, "paper_dram_bytes": t.loc[k],
            "e2e_latency_s": r.e2e_latency_s, "paper_e2e_latency_s": se.loc[k, "latency_s"],
            "e2e_energy_pj": r.e2e_energy_pj, "paper_e2e_energy_pj": ee.loc[k, "energy_pJ"],
            "attn_speedup_vs_flat": r.attn_speedup_vs_flat,
            "paper_attn_speedup_vs_flat": sa.loc[k, "speedup_vs_flat"],
            "attn_speedup_vs_unfused": r.attn_speedup_vs_unfused,
            "paper_attn_speedup_vs_unfused": sa.loc[k, "speedup_vs_unfused"],
            "attn_energy_vs_flat": r.attn_energy_vs_flat,
            "paper_attn_energy_vs_flat": ea.loc[k, "energy_vs_flat"],
            "e2e_speedup_vs_flat": r.e2e_speedup_vs_flat,
            "paper_e2e_speedup_vs_flat": se.loc[k, "speedup_vs_flat"],
            "e2e_energy_vs_flat": r.e2e_energy_vs_flat,
            "paper_e2e_energy_vs_flat": ee.loc[k, "energy_vs_flat"],
        })
    out = pd.DataFrame(rows)
    for c in ("util_2d", "util_1d"):
        out[f"{c}_abs_err"] = (out[c] - out[f"paper_{c}"]).abs()
    for c in ("latency_s", "energy_pj", "dram_bytes", "e2e_latency_s", "e2e_energy_pj"):
        out[f"{c}_ratio"] = out[c] / out[f"paper_{c}"]
    return out


HEADLINE = (
    ("attention speedup over FLAT", "fusemax", "attn_speedup_vs_flat", 6.7),
    ("attention energy / FLAT", "fusemax", "attn_energy_vs_flat", 0.79),
    ("attention speedup over Unfused", "fusemax", "attn_speedup_vs_unfused", 10.05),
    ("end-to-end speedup over FLAT", "fusemax", "e2e_speedup_vs_flat", 5.3),
    ("end-to-end energy / FLAT", "fusemax", "e2e_energy_vs_flat", 0.83),
    ("FLAT attention speedup over Unfused", "flat", "attn_speedup_vs_unfused", 1.507),
    ("+Cascade attention speedup over Unfused", "cascade", "attn_speedup_vs_unfused", 1.358),
    ("+Architecture attention speedup over Unfused", "architecture", "attn_speedup_vs_unfused", 3.270),
    ("+Cascade attention energy / FLAT", "cascade", "attn_energy_vs_flat", 0.908),
)


def headline_table(df: pd.DataFrame, paper: dict | None = None) -> pd.DataFrame:
    """Means over the 4 models x 6 lengths, ours vs the paper (abstract / artifact means)."""
    rows = []
    for name, cfg, col, pv in HEADLINE:
        d = df[df.config == cfg]
        if col not in d or d.empty:
            continue
        ours = float(d[col].mean())
        rows.append({"metric": name, "ours": ours, "paper": pv,
                     "ratio": ours / pv, "within_10pct": abs(ours / pv - 1) <= 0.10})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------

_COLORS = {"unfused": "#7f7f7f", "flat": "#1f77b4", "cascade": "#ff7f0e",
           "architecture": "#2ca02c", "fusemax": "#d62728"}


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def figures(df: pd.DataFrame, out: Path, paper: dict | None = None, par: pd.DataFrame | None = None,
            passes: pd.DataFrame | None = None) -> list[Path]:
    from iosim.cli.common import ensure_dir
    plt = _plt()
    out = ensure_dir(out)
    written = []
    labels = {c: get_config(c).label for c in df.config.unique()}
    models = list(dict.fromkeys(df.model))
    lens = sorted(df.N.unique())
    xt = [format_seq_len(int(n)) for n in lens]
    pu = None
    if paper is not None:
        pu = paper["utilization"].pivot_table(index=["config", "model", "N"], columns="array",
                                              values="utilization")

    # --- Fig. 6: utilization vs sequence length
    fig, axes = plt.subplots(2, len(models), figsize=(4.2 * len(models), 7), sharey=True,
                             squeeze=False)
    for row, arr in enumerate(("1d", "2d")):
        for col, m in enumerate(models):
            ax = axes[row][col]
            for ci, cfg in enumerate(df.config.unique()):
                d = df[(df.config == cfg) & (df.model == m)].sort_values("N")
                # later configurations draw thinner lines on top: coinciding ones stay visible
                ax.plot(range(len(d)), d[f"util_{arr}"], "-o", color=_COLORS.get(cfg),
                        ms=4, lw=max(1.2, 4.6 - 0.9 * ci), label=f"{labels[cfg]} (ours)")
                if pu is not None:
                    pv = [pu.loc[(cfg, m, n), arr] if (cfg, m, n) in pu.index else math.nan
                          for n in d.N]
                    ax.plot(range(len(d)), pv, "x", color=_COLORS.get(cfg), ms=9, mew=1.5,
                            label=f"{labels[cfg]} (paper)")
            ax.set_xticks(range(len(lens)), xt)
            ax.set_ylim(0, 1.05)
            ax.grid(alpha=0.3)
            ax.set_title(f"{m}: {arr.upper()} array")
            if col == 0:
                ax.set_ylabel("utilization")
            if row == 1:
                ax.set_xlabel("sequence length (M = P)")
    h, lab = axes[0][0].get_legend_handles_labels()
    fig.legend(h, lab, loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.suptitle("FuseMax Fig. 6: per-array utilization (lines: iosim.spatial, x: paper artifact; "
                 "on the 1D array FLAT up to 64K, +Cascade and FuseMax all sit at 1.0)")
    fig.tight_layout(rect=(0, 0.07, 1, 0.97))
    written.append(_save(fig, out / "fusemax_utilization.png"))

    # --- Fig. 7: 2D-array busy fraction per Einsum, BERT
    b = df[df.model == models[0]]
    cfgs = [c for c in ("flat", "cascade", "architecture", "fusemax") if c in set(b.config)]
    parts = [c for c in ("QK", "LM", "SLN", "SLD", "SLNV", "O") if f"busy2d_{c}" in b]
    fig, ax = plt.subplots(figsize=(12, 4.5))
    width = 0.8 / max(1, len(cfgs))
    cmap = plt.get_cmap("tab10")
    for ci, cfg in enumerate(cfgs):
        d = b[b.config == cfg].sort_values("N")
        bottom = [0.0] * len(d)
        for pi, p in enumerate(parts):
            vals = d[f"busy2d_{p}"].fillna(0.0).tolist()
            xs = [i + (ci - (len(cfgs) - 1) / 2) * width for i in range(len(d))]
            ax.bar(xs, vals, width, bottom=bottom, color=cmap(pi),
                   label=("AV" if p == "O" else p) if ci == 0 else None, edgecolor="white", lw=0.3)
            bottom = [x + y for x, y in zip(bottom, vals)]
        if paper is not None and "util_breakdown" in paper:
            ub = paper["util_breakdown"]
            tot = ub[(ub.config == cfg) & (ub.model == models[0])].groupby("N").proportion_active_2d.sum()
            xs = [i + (ci - (len(cfgs) - 1) / 2) * width for i in range(len(d))]
            ax.plot(xs, [tot.get(n, math.nan) for n in d.N], "k_", ms=10, mew=2,
                    label="paper total" if ci == 0 else None)
        for i, top in enumerate(bottom):
            ax.text(i + (ci - (len(cfgs) - 1) / 2) * width, top + 0.025,
                    {"flat": "F", "cascade": "C", "architecture": "A", "fusemax": "B"}[cfg],
                    ha="center", fontsize=7)
    ax.set_xticks(range(len(lens)), xt)
    ax.set_ylim(0, 1.2)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("fraction of time the 2D array is busy")
    ax.set_xlabel("sequence length (bars: F = FLAT, C = +Cascade, A = +Architecture, B = +Binding)")
    ax.set_title(f"FuseMax Fig. 7: 2D-array activity per Einsum, {models[0]} (bars: ours; "
                 "black ticks: the paper's total)")
    ax.legend(ncol=7, fontsize=8, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    written.append(_save(fig, out / "fusemax_einsum_breakdown.png"))

    # --- Figs. 8-11: speedup and energy vs unfused, attention and end to end
    ps = pe = None
    if paper is not None:
        ps = paper["speedup"].set_index(["config", "model", "N", "scope"])
        pe = paper["energy"].set_index(["config", "model", "N", "scope"])
    for scope, tag, pscope in (("attn", "attention", "attention"), ("e2e", "end_to_end", "end_to_end")):
        fig, axes = plt.subplots(2, len(models), figsize=(4.2 * len(models), 7.5), squeeze=False)
        cfgs = [c for c in CONFIG_ORDER if c in set(df.config)]
        w = 0.8 / len(cfgs)
        for col, m in enumerate(models):
            for row, (metric, pcol, ylab) in enumerate(
                    ((f"{scope}_speedup_vs_unfused", "speedup_vs_unfused", "speedup over Unfused"),
                     (f"{scope}_energy_vs_unfused", "energy_vs_unfused", "energy / Unfused"))):
                ax = axes[row][col]
                for ci, cfg in enumerate(cfgs):
                    d = df[(df.config == cfg) & (df.model == m)].sort_values("N")
                    xs = [i + (ci - (len(cfgs) - 1) / 2) * w for i in range(len(d))]
                    ax.bar(xs, d[metric], w, color=_COLORS[cfg], label=labels[cfg])
                    src = ps if row == 0 else pe
                    if src is not None:
                        pv = [src.loc[(cfg, m, n, pscope), pcol] if (cfg, m, n, pscope) in src.index
                              else math.nan for n in d.N]
                        ax.plot(xs, pv, "k_", ms=7, mew=1.6,
                                label="paper" if ci == 0 else None)
                ax.set_xticks(range(len(lens)), xt, fontsize=8)
                ax.set_title(f"{m}")
                if col == 0:
                    ax.set_ylabel(ylab)
                ax.grid(axis="y", alpha=0.3)
                if row == 0:
                    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator
                    ax.set_yscale("log")
                    ax.yaxis.set_major_locator(FixedLocator([1, 1.5, 2, 3, 4, 6, 8, 12, 16]))
                    ax.yaxis.set_major_formatter(lambda v, _: f"{v:g}")
                    ax.yaxis.set_minor_locator(NullLocator())
                    ax.yaxis.set_minor_formatter(NullFormatter())
        h, lab = axes[0][0].get_legend_handles_labels()
        fig.legend(h, lab, loc="lower center", ncol=6, fontsize=9, frameon=False)
        title = ("Figs. 8/9: attention" if scope == "attn" else "Figs. 10/11: end to end "
                 "(attention + linear layers)")
        fig.suptitle(f"FuseMax {title}: speedup and energy vs Unfused (bars: ours, black ticks: paper)")
        fig.tight_layout(rect=(0, 0.05, 1, 0.96))
        written.append(_save(fig, out / f"fusemax_{'speedup_energy' if scope == 'attn' else 'end_to_end'}.png"))

    # --- Fig. 12: Pareto
    if par is not None and len(par):
        fig, ax = plt.subplots(figsize=(7, 5))
        cm = plt.get_cmap("tab10")
        pp = paper.get("pareto") if paper else None
        for i, m in enumerate(dict.fromkeys(par.model)):
            d = par[par.model == m].sort_values("PE_dim")
            ax.plot(d.area_um2 * 1e-8, d.latency_s, "-o", color=cm(i), label=f"{m} (ours)")
            for x, y, pe_ in zip(d.area_um2 * 1e-8, d.latency_s, d.PE_dim):
                if i == 0:
                    ax.annotate(str(pe_), (x, y), textcoords="offset points", xytext=(4, 4),
                                fontsize=7)
            if pp is not None:
                q = pp[pp.model == m].sort_values("PE_dim")
                ax.plot(q.area_um2 * 1e-8, q.latency_s, "x", color=cm(i), ms=9, mew=1.5,
                        label=f"{m} (paper)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("area (cm$^2$)")
        ax.set_ylabel("attention latency at 256K (s)")
        ax.set_title("FuseMax Fig. 12: array size sweep (labels: PE array side)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        written.append(_save(fig, out / "fusemax_pareto.png"))

    # --- passes
    if passes is not None and len(passes):
        fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.4))
        for casc, mk in zip(dict.fromkeys(passes.cascade), ("o", "s", "^")):
            d = passes[passes.cascade == casc].sort_values("N")
            axes[0].plot(d.N, d.dram_over_qkv, "-" + mk, label=casc)
            mib = d.multipass_bytes_per_query_tile / 2**20
            if (mib > 0).any():
                axes[1].plot(d.N[mib > 0], mib[mib > 0], "-" + mk, label=casc)
            else:
                axes[1].plot([], [], "-" + mk, label=f"{casc}: none")
        axes[0].set_ylabel("DRAM traffic / bytes of Q")
        axes[1].set_ylabel("multi-pass fibres per query tile (MiB)")
        buf = load_spatial_hardware("fusemax").buffer.capacity_bytes / 2**20
        axes[1].axhline(buf, color="k", ls="--", lw=1)
        axes[1].text(passes.N.min(), buf * 1.25, "FuseMax buffer: 16 MiB", fontsize=8)
        axes[0].set_title("DRAM traffic (1-pass: K, V re-read per chunk)", fontsize=10)
        axes[1].set_title("what a chunk of one query tile must keep on chip", fontsize=10)
        for ax in axes:
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("sequence length (M = P)")
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=8)
        fig.suptitle(f"1-, 2- and 3-pass cascades on FuseMax's hardware ({passes.model.iloc[0]}): "
                     "multi-pass fibres grow with M and spill")
        fig.tight_layout()
        written.append(_save(fig, out / "fusemax_passes.png"))

    # --- parity plot ours vs paper
    if paper is not None:
        cmp_ = compare(df, paper)
        fig, axes = plt.subplots(1, 3, figsize=(14, 4.4))
        for ax, (col, lab, log) in zip(axes, (("latency_s", "attention latency (s)", True),
                                              ("energy_pj", "attention energy (pJ)", True),
                                              ("util", "utilization", False))):
            for cfg in CONFIG_ORDER:
                d = cmp_[cmp_.config == cfg]
                if col == "util":
                    ax.plot(d.paper_util_2d, d.util_2d, "o", color=_COLORS[cfg], ms=4,
                            label=f"{labels.get(cfg, cfg)} 2D")
                    ax.plot(d.paper_util_1d, d.util_1d, "^", color=_COLORS[cfg], ms=4,
                            mfc="none", label=f"{labels.get(cfg, cfg)} 1D")
                else:
                    ax.plot(d[f"paper_{col}"], d[col], "o", color=_COLORS[cfg], ms=4,
                            label=labels.get(cfg, cfg))
            lo, hi = ax.get_xlim()
            lo2, hi2 = ax.get_ylim()
            lo, hi = min(lo, lo2), max(hi, hi2)
            ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
            if log:
                ax.set_xscale("log")
                ax.set_yscale("log")
            ax.set_xlabel(f"paper artifact: {lab}")
            ax.set_ylabel(f"iosim.spatial: {lab}")
            ax.grid(alpha=0.3, which="both")
        axes[0].legend(fontsize=7)
        axes[2].legend(fontsize=6, ncol=2)
        fig.suptitle("iosim.spatial vs the FuseMax artifact, every configuration x model x length")
        fig.tight_layout()
        written.append(_save(fig, out / "fusemax_vs_paper.png"))
    return written


def _save(fig, path: Path) -> Path:
    """Write ``fig`` as PNG atomically (a temporary file and a rename)."""
    import io

    import matplotlib.pyplot as plt

    from iosim.cli.common import atomic_write
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=110)
    finally:
        plt.close(fig)
    atomic_write(path, buf.getvalue())
    return path


def _write_csv(df: pd.DataFrame, path: Path) -> Path:
    """Write ``df`` as CSV atomically (never a half-written file)."""
    from iosim.cli.common import atomic_write
    atomic_write(path, df.to_csv(index=False))
    return path


def _md(df: pd.DataFrame, floatfmt: str = "{:.3f}") -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in df.itertuples(index=False):
        cells = []
        for v in r:
            if isinstance(v, float):
                cells.append(floatfmt.format(v))
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reproduce(out_dir="figures", data_dir=None, figures_: bool = True) -> dict:
    """Run the whole reproduction; write CSVs (and figures) under ``out_dir``.

    ``out_dir`` is checked (created, writable) before the work starts; every file is written
    atomically after it, so an unwritable directory is a one-line
    :class:`~iosim.errors.IosimError` and no file is ever half-written.
    """
    from iosim.cli.common import ensure_dir
    t0 = time.time()
    out = ensure_dir(out_dir)
    paper = load_paper(data_dir)
    df = sweep()
    par = pareto()
    passes = passes_study()
    head = headline_table(df, paper)
    csvs = {"fusemax_results.csv": df, "fusemax_passes.csv": passes,
            "fusemax_headline.csv": head}
    res = {"headline": head, "results": df, "pareto": par, "passes": passes, "paper": paper}
    if paper is not None:
        cmp_ = compare(df, paper)
        csvs["fusemax_vs_paper.csv"] = cmp_
        res["compare"] = cmp_
        sel = cmp_[cmp_.config.isin(["fusemax", "flat"])]
        res["util_max_err"] = {
            f"{cfg}_{a}": float(cmp_[cmp_.config == cfg][f"util_{a}_abs_err"].max())
            for cfg in CONFIG_ORDER if (cmp_.config == cfg).any() for a in ("2d", "1d")}
        res["util_max_err"].update({"all_2d": float(cmp_.util_2d_abs_err.max()),
                                    "all_1d": float(cmp_.util_1d_abs_err.max())})
        if "pareto" in paper:
            pp = paper["pareto"].set_index(["model", "PE_dim"])
            par = par.copy()
            par["paper_latency_s"] = [pp.loc[(m, d), "latency_s"] if (m, d) in pp.index else math.nan
                                      for m, d in zip(par.model, par.PE_dim)]
            par["paper_area_um2"] = [pp.loc[(m, d), "area_um2"] if (m, d) in pp.index else math.nan
                                     for m, d in zip(par.model, par.PE_dim)]
            res["pareto"] = par
        del sel
    csvs["fusemax_pareto.csv"] = par
    for name in ("fusemax_results.csv", "fusemax_pareto.csv", "fusemax_passes.csv",
                 "fusemax_headline.csv", "fusemax_vs_paper.csv"):
        if name in csvs:
            _write_csv(csvs[name], out / name)
    if figures_:
        res["figures"] = [str(p) for p in figures(df, out, paper, par, passes)]
    res["seconds"] = time.time() - t0
    return res
