"""Multi-device attention against the papers: Ring's overlap condition, Striped over Ring, Ulysses' constant communication, Lamina's bandwidth and throughput per dollar.

Four checks of the multi-device model (iosim.parallel; docs/multidevice.md), each a CSV and a
panel of ``multidevice.png`` in ``--out`` (default ``./out``; committed copies in figures/):

* **Ring overlap** (Ring Attention, Liu et al. 2023): on dgx-h100 (8 H100, NVLink 450 GB/s)
  and over InfiniBand (dgx-h100-2node, 16 GPUs), the step time of a ring against the tokens per
  device ``c``, compute and transfer separately, with the crossover where communication stops
  hiding; the analytic threshold ``c = F / B`` (bf16, datasheet peak ``F``) and the model's
  ``F_eff / B`` (the rate it sustains on a block); memory per device -- ``multidevice_overlap.csv``.
  The same as the sweep ``iosim sweep attention-1pass --system dgx-h100 --parallel
  ring,ulysses --devices 2,4,8 --seq-len 2K:1M:x2 --heads 32 --batch 4`` writes:
  ``multidevice_sweep.csv``, ``multidevice_sweep_crossover.csv``, ``multidevice_sweep.png``.
* **Maximum context per device count** (Ring Attention: contexts up to device-count times
  longer): the longest context whose ring buffers (Q, O, the K/V block and the one arriving,
  the fp32 accumulator and log-sum-exp; 32 heads, d 128, bf16) fit each device's HBM, on 1-8
  H100s and 16 over InfiniBand, with nothing else in memory and with 40 GB taken by weights
  and other activations -- ``multidevice_maxcontext.csv``.
* **Striped over Ring, causal** (Brandon et al. 2023: 1.45x on 8 A100s at 256K, 1.65x on 16
  TPUv4 at 786K, end-to-end training throughput): the model's ratio of the attention times
  against context on dgx-a100 (P = 2, 4, 8) and tpuv4-16 -- ``multidevice_striped.csv``.
* **Ulysses** (Jacobs et al. 2023): bytes each device sends when N and P grow together (N/P
  fixed): constant up to (P-1)/P, while a ring's per-device bytes grow with N; heads >= P --
  ``multidevice_ulysses.csv``.
* **Lamina** (Chen et al. 2024): bytes per token per layer, the link bandwidth a batch needs,
  and throughput per dollar of attention offloading over serving on the compute GPUs alone,
  against context (LLaMA-2-70B-like model: 80 layers, 64 query / 8 K/V heads, d 128) --
  ``multidevice_lamina.csv``.

    python experiments/multidevice.py --out DIR   # or: iosim experiment multidevice
"""
from __future__ import annotations

from pathlib import Path

from iosim.plots import experiment_cli, save_csv

D = 128
PAPER = {"striped_a100_256k": 1.45, "striped_tpuv4_786k": 1.65, "lamina_low": 1.48,
         "lamina_high": 12.1}


def overlap(quick=False):
    import pandas as pd
    from iosim.parallel.model import Problem, critical_tokens, evaluate_parallel
    from iosim.parallel.system import load_system
    rows = []
    cs = [256 * k for k in range(1, 33, 2 if quick else 1)] + [10240, 12288, 14336, 16384]
    for sysname, p in (("dgx-h100", 8), ("dgx-h100-2node", 16)):
        s = load_system(sysname)
        for c in cs:
            prob = Problem(n=p * c, d=D, heads=32, batch=4)
            r = evaluate_parallel("attention-1pass", None, s, prob, "ring", p)
            st = r.steps[0]
            link = s.ring_link(p)
            rows.append(dict(system=sysname, devices=p, tokens_per_device=c, n=p * c,
                             step_compute_s=st.compute_s, step_comm_s=st.comm_s,
                             hidden=st.comm_s <= st.compute_s, time_s=r.time_s,
                             memory_bytes_per_device=r.memory_bytes_per_device,
                             f_eff=4 * D * c * c * 32 * 4 / st.compute_s,
                             critical_peak=critical_tokens(s.device, link, prob),
                             link_bandwidth=link.bandwidth))
    df = pd.DataFrame(rows)
    return df


def sweep():
    from iosim.parallel.sweep import ParallelSweepSpec, crossovers, run_parallel_sweep
    spec = ParallelSweepSpec("attention-1pass", "dgx-h100", ("ring", "ulysses"), (2, 4, 8),
                             tuple(2 ** k for k in range(11, 21)), heads=32, batch=4)
    df = run_parallel_sweep(spec)
    return df, crossovers(df)


def maxcontext():
    import pandas as pd
    from iosim.parallel.model import Problem
    from iosim.parallel.sweep import max_context, ring_bytes_per_token
    prob = Problem(n=1, d=D, heads=32)
    rows = []
    for sysname, ps in (("dgx-h100", (1, 2, 4, 8)), ("dgx-h100-2node", (16,))):
        for p in ps:
            for reserved in (0.0, 40e9):
                n = max_context(sysname, prob, p, reserved_bytes=reserved)
                rows.append(dict(system=sysname, devices=p, reserved_bytes=reserved,
                                 bytes_per_token=ring_bytes_per_token(prob, p),
                                 max_context=n, tokens_per_device=n // p,
                                 over_one_device=n / max_context(sysname, prob, 1,
                                                                 reserved_bytes=reserved)))
    return pd.DataFrame(rows)


def crossover(df, system):
    s = df[df.system == system].sort_values("tokens_per_device")
    hid = s[s.hidden]
    if hid.empty:
        return None, None
    c = int(hid.tokens_per_device.iloc[0])
    row = hid.iloc[0]
    return c, float(row.f_eff / row.link_bandwidth)


def striped(quick=False):
    import pandas as pd
    from iosim.parallel.model import Problem, evaluate_parallel
    rows = []
    cases = [("dgx-a100", p, n) for p in (2, 4, 8) for n in (16384, 65536, 262144)]
    cases += [("tpuv4-16", 16, n) for n in ((196608, 786432) if quick else
                                           (49152, 196608, 393216, 786432))]
    for sysname, p, n in cases:
        prob = Problem(n=n, d=D, heads=32, causal=True)
        r = evaluate_parallel("attention-1pass", None, sysname, prob, "ring", p)
        s = evaluate_parallel("attention-1pass", None, sysname, prob, "striped", p)
        paper = (PAPER["striped_a100_256k"] if (sysname == "dgx-a100" and p == 8 and n == 262144)
                 else PAPER["striped_tpuv4_786k"] if (sysname == "tpuv4-16" and n == 786432)
                 else None)
        rows.append(dict(system=sysname, devices=p, n=n, ring_s=r.time_s, striped_s=s.time_s,
                         speedup=r.time_s / s.time_s, ideal=(p - 0.5) / (p / 2),
                         ring_overlapped=r.overlapped, striped_overlapped=s.overlapped,
                         paper_speedup=paper))
    return pd.DataFrame(rows)


def ulysses():
    import pandas as pd
    from iosim.parallel.model import Problem, evaluate_parallel
    rows = []
    for p in (2, 4, 8, 16):
        n = 8192 * p
        prob = Problem(n=n, d=D, heads=32)
        u = evaluate_parallel("attention-1pass", None, "dgx-h100-2node", prob, "ulysses", p)
        r = evaluate_parallel("attention-1pass", None, "dgx-h100-2node", prob, "ring", p)
        rows.append(dict(devices=p, n=n, ulysses_bytes_per_device=u.comm_bytes_per_device,
                         ulysses_over_4Nhd_P=u.comm_bytes_per_device / (4 * n * 32 * D * 2 / p),
                         ulysses_comm_s=u.comm_time_s, ulysses_time_s=u.time_s,
                         ring_bytes_per_device=r.comm_bytes_per_device,
                         ring_comm_s=r.comm_time_s, ring_time_s=r.time_s))
    return pd.DataFrame(rows)


def lamina(quick=False):
    import pandas as pd
    from iosim.parallel.model import Problem, evaluate_parallel
    rows = []
    for ctx in ((4096, 32768) if quick else (2048, 4096, 8192, 16384, 32768, 65536)):
        prob = Problem(n=1, kv_len=ctx, d=D, heads=64, kv_heads=8, layers=80, params=70e9)
        r = evaluate_parallel("decode-splitk", None, "lamina", prob, "offload", 4)
        e = r.extra
        rows.append(dict(context=ctx, bytes_per_token_per_layer=e["bytes_per_token_per_layer"],
                         batch_offload=e.get("batch_offload"),
                         batch_homogeneous=e.get("batch_homogeneous"),
                         tokens_per_s_offload=e.get("tokens_per_s_offload"),
                         tokens_per_s_homogeneous=e.get("tokens_per_s_homogeneous"),
                         link_bandwidth_needed=e["link_bandwidth_needed"],
                         throughput_per_dollar_ratio=e.get("throughput_per_dollar_ratio")))
    return pd.DataFrame(rows)


def plot(ov, st, ul, la, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(2, 2, figsize=(12, 9))
    a = ax[0, 0]
    for sysname, col in (("dgx-h100", "C0"), ("dgx-h100-2node", "C3")):
        s = ov[ov.system == sysname]
        a.plot(s.tokens_per_device, s.step_compute_s * 1e3, color="k", lw=1,
               label="block compute (time model)" if col == "C0" else None)
        a.plot(s.tokens_per_device, s.step_comm_s * 1e3, color=col, ls="--",
               label=f"block transfer, {sysname} ({s.link_bandwidth.iloc[0] / 1e9:.0f} GB/s)")
        c, ceff = crossover(ov, sysname)
        if c:
            a.axvline(c, color=col, lw=0.8, ls=":")
    a.axvline(ov.critical_peak.iloc[0], color="C2", lw=1, label="F/B (peak, NVLink)")
    a.set(xlabel="tokens per device c", ylabel="one ring step (ms), 32 heads x batch 4",
          title="Ring overlap: transfer hides where compute >= transfer")
    a.legend(fontsize=7)
    a = ax[0, 1]
    for (sysname, p), s in st.groupby(["system", "devices"]):
        a.plot(s.n / 1024, s.speedup, marker="o", label=f"{sysname}, P={p}")
    for key, (x, y) in {"A100x8 256K (paper)": (256, PAPER["striped_a100_256k"]),
                        "TPUv4x16 786K (paper)": (768, PAPER["striped_tpuv4_786k"])}.items():
        a.scatter([x], [y], marker="*", s=150, color="k")
        a.annotate(key, (x, y), fontsize=7, xytext=(4, -10), textcoords="offset points")
    a.set(xscale="log", xlabel="context N (K tokens)", ylabel="ring time / striped time",
          title="Striped over Ring, causal (attention only; papers end-to-end)")
    a.legend(fontsize=7)
    a = ax[1, 0]
    a.plot(ul.devices, ul.ulysses_bytes_per_device / 2**20, marker="o", label="Ulysses")
    a.plot(ul.devices, ul.ring_bytes_per_device / 2**20, marker="s", label="Ring")
    a.set(xlabel="devices P (N = 8K x P)", ylabel="MiB sent per device per layer",
          title="Ulysses: constant per-device bytes as N and P grow together", xscale="log",
          yscale="log")
    a.legend(fontsize=7)
    a = ax[1, 1]
    a.plot(la.context / 1024, la.throughput_per_dollar_ratio, marker="o",
           label="model: offload / homogeneous")
    a.axhspan(PAPER["lamina_low"], PAPER["lamina_high"], color="C1", alpha=0.15,
              label="paper: 1.48-12.1x")
    a.axhline(1, color="k", lw=0.5)
    a.set(xscale="log", yscale="log", xlabel="context (K tokens)",
          ylabel="throughput per dollar ratio", title="Lamina: 4 H100 + 4 H20 vs 4 H100")
    a.legend(fontsize=7)
    from matplotlib.ticker import NullFormatter, ScalarFormatter
    for a in ax.flat:
        for axis in (a.xaxis, a.yaxis):
            if axis.get_scale() == "log":
                axis.set_major_formatter(ScalarFormatter())
                axis.set_minor_formatter(NullFormatter())
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(out_dir: Path | None = None, quick: bool = False) -> dict:
    out = Path(out_dir) if out_dir is not None else Path("out")
    from iosim.parallel.sweep import parallel_sweep_figures
    ov, st, ul, la = overlap(quick), striped(quick), ulysses(), lamina(quick)
    sw, cx = sweep()
    mc = maxcontext()
    written = [save_csv(sw, out / "multidevice_sweep.csv"),
               save_csv(cx, out / "multidevice_sweep_crossover.csv"),
               *parallel_sweep_figures(sw, out, prefix="multidevice_sweep"),
               save_csv(mc, out / "multidevice_maxcontext.csv"),
               save_csv(ov, out / "multidevice_overlap.csv"),
               save_csv(st, out / "multidevice_striped.csv"),
               save_csv(ul, out / "multidevice_ulysses.csv"),
               save_csv(la, out / "multidevice_lamina.csv")]
    written.append(plot(ov, st, ul, la, out / "multidevice.png"))
    lines = []
    for sysname in ("dgx-h100", "dgx-h100-2node"):
        c, ceff = crossover(ov, sysname)
        lines.append(f"ring overlap on {sysname}: communication hides from c = {c} tokens per "
                     f"device (model F_eff/B = {ceff:.0f}; peak F/B = "
                     f"{ov[ov.system == sysname].critical_peak.iloc[0]:.0f})" if c else
                     f"ring overlap on {sysname}: never hides up to c = "
                     f"{ov.tokens_per_device.max()}")
    r8 = cx[(cx.scheme == "ring") & (cx.devices == 8)].iloc[0]
    lines.append(f"sweep on dgx-h100 (ring, 8 devices): crossover at c = "
                 f"{r8.crossover_tokens:.0f} tokens per device (between {r8.below_tokens:.0f} and "
                 f"{r8.above_tokens:.0f}); F/B = {r8.critical_tokens_peak:.0f} at peak, "
                 f"{r8.critical_tokens_model:.0f} at the model's rate")
    m0 = mc[mc.reserved_bytes == 0]
    lines.append("ring maximum context (32 heads, d 128, bf16, one layer's buffers): "
                 + ", ".join(f"P={int(r.devices)} {r.max_context / 2**20:.2f}M "
                             f"({r.over_one_device:.2f}x one device)" for _, r in m0.iterrows()))
    for _, r in st[st.paper_speedup.notna()].iterrows():
        lines.append(f"striped/ring causal, {r.system} P={r.devices} N={r.n}: model "
                     f"{r.speedup:.2f}x, paper {r.paper_speedup:.2f}x (end-to-end)")
    lines.append("ulysses bytes per device (N = 8K x P): "
                 + ", ".join(f"P={int(r.devices)} {r.ulysses_bytes_per_device / 2**20:.1f} MiB"
                             for _, r in ul.iterrows()))
    lines.append("lamina throughput per dollar ratio: "
                 + ", ".join(f"{int(r.context / 1024)}K {r.throughput_per_dollar_ratio:.2f}x"
                             for _, r in la.iterrows()))
    return {"written": [str(p) for p in written], "lines": lines}


def _cli(argv=None) -> int:
    return experiment_cli(main, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(_cli())
