"""Sweeps of the multi-device model over schemes, device counts and context lengths -> CSV and
figures: time and memory per device against the context, and where a ring's communication
stops hiding under its compute.

``iosim sweep CASCADE --system PRESET --parallel ring,striped --devices 2,4,8 --seq-len
2K:1M:x2`` evaluates :func:`iosim.parallel.model.evaluate_parallel` at every (scheme, devices,
N, d) point and writes ``parallel_sweep.csv`` and ``parallel_sweep.png`` to ``--out``.

Per point the CSV holds the totals of the model (time, compute, exposed communication, bytes
and memory per device, whether every transfer hid), the ring's tightest step (its compute and
transfer: the step whose compute covers its transfer least) and Ring Attention's analytic
threshold ``c = bytes F / (2 B)`` tokens per device at the matrix unit's peak ``F`` and at the
rate the single-device model sustains on that step's block (``F_eff``). :func:`crossovers`
finds, per scheme and device count, the tokens per device where the step's compute first
covers its transfer (interpolated between grid points on a log scale); :func:`max_context`
the longest context whose ring buffers fit the devices' memory.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from iosim.errors import IosimError

__all__ = ["SWEEP_SCHEMES", "ParallelSweepSpec", "run_parallel_sweep", "crossovers",
           "max_context", "ring_bytes_per_token", "parallel_sweep_figures"]

#: the schemes a sweep over one sequence's length covers (kv-shard and offload are decode)
SWEEP_SCHEMES = ("ring", "striped", "ulysses", "usp")
RING_SCHEMES = ("ring", "striped")


@dataclass(frozen=True)
class ParallelSweepSpec:
    """The grid: ``schemes`` x ``devices`` x ``seq_lens`` (N, the whole context) x
    ``head_dims`` of ``cascade`` on ``system`` (a preset name, a path or a loaded
    :class:`~iosim.parallel.system.System`); the other sizes fixed."""
    cascade: object
    system: object
    schemes: tuple
    devices: tuple
    seq_lens: tuple
    head_dims: tuple = (128,)
    heads: int = 1
    kv_heads: int | None = None
    batch: int = 1
    dtype: str = "bf16"
    causal: bool = False
    mapping: object = None

    def points(self) -> int:
        return len(self.schemes) * len(self.devices) * len(self.seq_lens) * len(self.head_dims)


def _check(spec: ParallelSweepSpec, system) -> None:
    for s in spec.schemes:
        if s not in SWEEP_SCHEMES:
            raise IosimError(f"--parallel {s}: a sweep over --seq-len covers "
                             f"{', '.join(SWEEP_SCHEMES)} (kv-shard and offload are decode: use "
                             f"iosim evaluate)")
    for p in spec.devices:
        system.check_devices(p)
        if max(spec.seq_lens) < p:
            raise IosimError(f"--devices {p}: more devices than the longest --seq-len "
                             f"({max(spec.seq_lens)} tokens)")


def run_parallel_sweep(spec: ParallelSweepSpec, progress: bool = False):
    """Evaluate every point of ``spec``; a DataFrame, one row per point (points with fewer
    tokens than devices are left out)."""
    import pandas as pd
    from cascades.library import load
    from iosim.mapping import mapping_for
    from iosim.parallel.model import Problem, _block_time, evaluate_parallel
    from iosim.parallel.system import load_system
    system = load_system(spec.system)
    _check(spec, system)
    casc = load(spec.cascade) if isinstance(spec.cascade, str) else spec.cascade
    mapping = (mapping_for(casc, spec.mapping) if spec.mapping is None
               or isinstance(spec.mapping, str) else spec.mapping)
    hw = system.device
    peak = hw.matrix_rate(spec.dtype)
    rows = []
    grid = [(s, p, n, d) for s in spec.schemes for p in spec.devices for n in spec.seq_lens
            for d in spec.head_dims if n >= p]
    it = grid
    if progress:                     # on a terminal, once the sweep has run 2 s
        import sys
        from tqdm import tqdm
        it = tqdm(grid, desc="parallel sweep", leave=False, delay=2,
                  disable=not sys.stderr.isatty())
    for scheme, p, n, d in it:
        prob = Problem(n=n, d=d, heads=spec.heads, kv_heads=spec.kv_heads, batch=spec.batch,
                       dtype=spec.dtype, causal=spec.causal)
        try:
            r = evaluate_parallel(casc, mapping, system, prob, scheme, p)
        except IosimError as e:
            raise IosimError(f"{scheme} on {p} devices, N = {n}, d = {d}: {e}") from None
        row = dict(cascade=casc.name, system=system.name,
                   scheme=scheme, devices=p, n=n, d=d, heads=spec.heads, kv_heads=prob.hkv,
                   batch=spec.batch, dtype=spec.dtype, causal=spec.causal,
                   tokens_per_device=math.ceil(n / p), time_s=r.time_s,
                   compute_time_s=r.compute_time_s, comm_time_s=r.comm_time_s,
                   exposed_comm_s=max(0.0, r.time_s - r.compute_time_s),
                   comm_bytes_per_device=r.comm_bytes_per_device,
                   memory_bytes_per_device=r.memory_bytes_per_device,
                   hbm_bytes=hw.backing.capacity_bytes,
                   fits=r.memory_bytes_per_device <= hw.backing.capacity_bytes,
                   overlapped=r.overlapped)
        ring = [s for s in r.steps if s.phase == "ring" and s.comm_bytes > 0]
        if scheme in RING_SCHEMES and ring:
            tight = min(ring, key=lambda s: s.compute_s / s.comm_s)
            c = row["tokens_per_device"]
            hq_kv = prob.hkv * prob.batch
            # a full c x c block's FLOPs over its modelled time: the rate the model sustains
            full = _block_time(casc, mapping, hw, c, c, d, spec.heads, prob.hkv, spec.batch,
                               spec.dtype, False, 0)
            f_eff = 4.0 * d * c * c * spec.heads * spec.batch / full if full > 0 else None
            crit = r.extra["critical_tokens_per_device"]
            row.update(step_compute_s=tight.compute_s, step_comm_s=tight.comm_s,
                       step_ratio=tight.compute_s / tight.comm_s,
                       link=r.extra["ring_link"],
                       link_bandwidth=system.ring_link(p).bandwidth,
                       critical_tokens_peak=crit,
                       critical_tokens_model=(crit * f_eff / peak) if f_eff else float("nan"),
                       kv_block_bytes=2 * c * d * hq_kv * prob.bytes)
        rows.append(row)
    return pd.DataFrame(rows)


def crossovers(df):
    """Per (scheme, devices, d) of a ring scheme: ``crossover_tokens`` where the tightest
    step's compute equals its transfer (log-log interpolation between the grid points around
    the last sign change of compute - transfer; NaN where it never changes sign), the grid
    points around it, and whether communication hides at the largest point."""
    import numpy as np
    import pandas as pd
    out = []
    if "step_ratio" not in df:
        return pd.DataFrame(out)
    ring = df[df.scheme.isin(RING_SCHEMES) & df.step_ratio.notna()]
    for (scheme, p, d), g in ring.groupby(["scheme", "devices", "d"]):
        g = g.sort_values("tokens_per_device")
        c = g.tokens_per_device.to_numpy(float)
        lr = np.log(g.step_ratio.to_numpy(float))
        hid = lr >= 0
        cross, lo, hi = float("nan"), float("nan"), float("nan")
        flips = np.nonzero(hid[1:] != hid[:-1])[0]
        if len(flips):
            i = flips[-1]
            lo, hi = c[i], c[i + 1]
            t = lr[i] / (lr[i] - lr[i + 1])
            cross = float(np.exp(np.log(lo) + t * (np.log(hi) - np.log(lo))))
        out.append(dict(scheme=scheme, devices=p, d=d, crossover_tokens=cross,
                        below_tokens=lo, above_tokens=hi, hidden_at_largest=bool(hid[-1]),
                        hidden_at_smallest=bool(hid[0]),
                        critical_tokens_peak=float(g.critical_tokens_peak.iloc[0]),
                        critical_tokens_model=float(np.nanmedian(g.critical_tokens_model))
                        if g.critical_tokens_model.notna().any() else float("nan")))
    return pd.DataFrame(out)


def ring_bytes_per_token(prob, devices: int) -> float:
    """Bytes one device holds per token of its block in a ring layer
    (:func:`iosim.parallel.model.ring_memory` per row): Q, O, the K/V block in use, the one
    arriving (none on one device), the fp32 output accumulator and log-sum-exp."""
    from iosim.parallel.model import ring_memory
    m = ring_memory(1, 1, prob)
    if devices == 1:
        m = {k: v for k, v in m.items() if k != "kv_recv"}
    return float(sum(m.values()))


def max_context(system, prob, devices: int, reserved_bytes: float = 0.0) -> int:
    """The longest context N whose ring buffers (:func:`ring_bytes_per_token` per token of a
    device's block of ``ceil(N / devices)``) fit each device's memory less ``reserved_bytes``
    (weights, other layers' activations): ``devices * floor((HBM - reserved) / bytes per
    token)``. The attention layer's own buffers only."""
    from iosim.parallel.system import load_system
    s = load_system(system)
    s.check_devices(devices)
    free = s.device.backing.capacity_bytes - reserved_bytes
    if not free > 0:
        raise IosimError(f"reserved {reserved_bytes:.4g} bytes leave nothing of the "
                         f"{s.device.backing.capacity_bytes:.4g} bytes of device memory")
    return devices * int(free // ring_bytes_per_token(prob, devices))


# --------------------------------------------------------------------------- figures
def parallel_sweep_figures(df, out_dir, *, prefix: str = "parallel_sweep") -> list:
    """One figure per head dim: time per layer and memory per device against the context N,
    and the ring's compute / transfer per step against the tokens per device with the
    crossover and the analytic threshold ``F / B``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    ds = sorted(df.d.unique())
    cx = crossovers(df)
    tok = FuncFormatter(lambda x, _: (f"{x / 2**20:.3g}M" if x >= 2**20 else
                                      f"{x / 1024:.3g}K" if x >= 1024 else f"{x:.3g}"))
    for d in ds:
        sub = df[df.d == d]
        ring = sub[sub.scheme.isin(RING_SCHEMES)] if "step_ratio" in sub else sub.iloc[:0]
        fig, ax = plt.subplots(1, 3 if len(ring) else 2, figsize=(17 if len(ring) else 12, 5))
        keys = list(sub.groupby(["scheme", "devices"]).groups)
        colors = {k: f"C{i % 10}" for i, k in enumerate(keys)}
        for (scheme, p), g in sub.groupby(["scheme", "devices"]):
            g = g.sort_values("n")
            col = colors[(scheme, p)]
            ax[0].plot(g.n, g.time_s * 1e3, color=col, marker="o", ms=3,
                       label=f"{scheme}, P={p}")
            ax[0].plot(g.n, g.compute_time_s * 1e3, color=col, ls=":", lw=1)
        for p, g in sub.groupby("devices"):         # schemes of equal memory share a line
            series = {}
            for scheme, h in g.groupby("scheme", sort=False):
                h = h.sort_values("n")
                same = next((k for k, v in series.items() if len(v) == len(h)
                             and (v.memory_bytes_per_device.to_numpy()
                                  == h.memory_bytes_per_device.to_numpy()).all()), None)
                if same is None:
                    series[scheme] = h
                else:
                    series[f"{same}/{scheme}"] = series.pop(same)
            for label, h in series.items():
                col = colors[(label.split("/")[0], p)]
                ax[1].plot(h.n, h.memory_bytes_per_device / 2**30, color=col, marker="o",
                           ms=3, label=f"{label}, P={p}")
                last = h.iloc[-1]          # memory grows linearly in N: where it fills HBM
                n_cap = last.n * last.hbm_bytes / last.memory_bytes_per_device
                if n_cap <= 4 * h.n.max():
                    ax[1].plot([n_cap], [last.hbm_bytes / 2**30], marker="x", ms=8,
                               color=col, ls="none")
        r0 = sub.iloc[0]
        what = (f"{r0['cascade']}, {int(r0['heads'])} heads x batch {int(r0['batch'])}, "
                f"d={int(d)}, {r0['dtype']}{', causal' if r0['causal'] else ''}")
        ax[0].set(yscale="log", xlabel="context N (tokens)",
                  ylabel="time per layer (ms); dotted: compute",
                  title=f"{r0.system}: time per layer\n{what}")
        ax[1].axhline(r0.hbm_bytes / 2**30, color="k", lw=1, ls="--",
                      label=f"device memory {r0.hbm_bytes / 1e9:.0f} GB")
        ax[1].set(yscale="log", xlabel="context N (tokens)",
                  ylabel="GiB per device (one layer's buffers)",
                  title="memory per device (x: where it fills the device)")
        for a in ax[:2]:
            a.set_xscale("log", base=2)
            a.xaxis.set_major_formatter(tok)
            a.legend(fontsize=7)
        if len(ring):
            a = ax[2]
            for (scheme, p), g in ring.groupby(["scheme", "devices"]):
                g = g.sort_values("tokens_per_device")
                a.plot(g.tokens_per_device, g.step_ratio, color=colors[(scheme, p)],
                       marker="o", ms=3, label=f"{scheme}, P={p}")
            a.axhline(1.0, color="k", lw=0.8)
            fb = float(ring.critical_tokens_peak.iloc[0])
            a.axvline(fb, color="C3", lw=1.2, ls="--",
                      label=f"F/B at peak F: {fb:.0f} tokens")
            fe = ring.critical_tokens_model.dropna()
            if len(fe):
                a.axvline(float(fe.median()), color="C2", lw=1.2, ls="-.",
                          label=f"F_eff/B (model's rate, median over P): {fe.median():.0f}")
            c = cx[(cx.d == d)] if len(cx) else cx
            shown = False
            for _, x in c.iterrows():
                if math.isfinite(x.crossover_tokens):
                    a.plot([x.crossover_tokens], [1.0], marker="X", ms=9, color="k",
                           ls="none", label=None if shown else "crossover (model)")
                    shown = True
            a.set(yscale="log", xlabel="tokens per device c",
                  ylabel="step compute / step transfer (tightest step)",
                  title=f"ring: transfers hide where the ratio is above 1 ({ring.iloc[0]['link']}, "
                        f"{ring.iloc[0]['link_bandwidth'] / 1e9:.0f} GB/s)")
            a.set_xscale("log", base=2)
            a.xaxis.set_major_formatter(tok)
            a.legend(fontsize=7)
        fig.tight_layout()
        suf = "" if len(ds) == 1 else f"_d{int(d)}"
        path = out_dir / f"{prefix}{suf}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------ the CLI's entry
def sweep_command(names, *, system, parallel, devices, seq_len, head_dim, mapping, dtype, batch,
                  heads, kv_heads, causal, out_dir, no_plots, progress, hw_given, sram) -> dict:
    """``iosim sweep NAME --system ... --parallel ... --devices ...``: parse, run, write
    ``parallel_sweep.csv`` (and the figure) to ``out_dir``; returns the summary (``lines`` for
    the text output)."""
    import time
    from iosim.hardware import dtype_bytes
    from iosim.mapping import resolve_causal
    from iosim.parallel.system import load_system
    from iosim.plots import save_csv
    from iosim.sweep import parse_counts
    if system is None or parallel is None:
        raise IosimError("--system and --parallel go together (e.g. --system dgx-h100 "
                         "--parallel ring,striped --devices 2,4,8)")
    for bad, what in ((hw_given, "--hw (the device is the system's)"), (sram is not None,
                                                                       "--sram")):
        if bad:
            raise IosimError(f"--system does not go with {what}")
    if len(names) != 1:
        raise IosimError(f"--system sweeps one cascade, got {len(names)}: {' '.join(names)}")
    dtype_bytes(dtype)
    from cascades.library import load
    casc = load(names[0])
    schemes = tuple(dict.fromkeys(x.strip() for x in parallel.split(",") if x.strip()))
    if not schemes:
        raise IosimError("--parallel: give one or more of " + ", ".join(SWEEP_SCHEMES))
    sys_ = load_system(system)
    devs = tuple(parse_counts(devices, "--devices")) if devices is not None else (sys_.devices,)
    spec = ParallelSweepSpec(casc, sys_, schemes, devs, tuple(parse_counts(seq_len)),
                             tuple(parse_counts(head_dim, "--head-dim")), heads=heads,
                             kv_heads=kv_heads, batch=batch, dtype=dtype,
                             causal=resolve_causal(casc, causal), mapping=mapping)
    if spec.points() > 20_000:
        raise IosimError(f"{spec.points():,} points is too many for one multi-device sweep "
                         f"(limit 20,000); narrow --seq-len or --devices")
    t0 = time.perf_counter()
    df = run_parallel_sweep(spec, progress=progress)
    secs = time.perf_counter() - t0
    out = Path(out_dir)
    csv = save_csv(df, out / "parallel_sweep.csv")
    cx = crossovers(df)
    if len(cx):
        save_csv(cx, out / "parallel_sweep_crossover.csv")
    figures = [] if no_plots else [str(p) for p in parallel_sweep_figures(df, out)]
    lines = [f"{len(df)} points ({len(schemes)} schemes x {len(devs)} device counts x "
             f"{len(spec.seq_lens)} sequence lengths x {len(spec.head_dims)} head dims) on "
             f"{sys_.name} in {secs:.2f} s"]
    for _, x in cx.iterrows():
        where = (f"communication hides from c = {x.crossover_tokens:.0f} tokens per device"
                 if math.isfinite(x.crossover_tokens) else
                 "communication hides at every point" if x.hidden_at_smallest else
                 "communication never hides" if not x.hidden_at_largest else
                 "communication hides only in parts of the range")
        lines.append(f"{x.scheme} on {x.devices} devices (d={x.d}): {where} "
                     f"(F/B at peak {x.critical_tokens_peak:.0f}, at the model's rate "
                     f"{x.critical_tokens_model:.0f})")
    lines.append(f"wrote {csv}")
    if len(cx):
        lines.append(f"wrote {out / 'parallel_sweep_crossover.csv'}")
    lines += [f"wrote {f}" for f in figures]
    return {"csv": str(csv), "figures": figures, "rows": int(len(df)),
            "points": spec.points(), "seconds": round(secs, 3),
            "crossovers": cx.to_dict(orient="records"), "lines": lines}
