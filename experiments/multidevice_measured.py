"""Multi-device attention measured against the model: end-to-end and per-step times, overlap, error.

Reads what experiments/device/multidevice.py wrote (``PREFIX.csv``, ``PREFIX_steps.csv`` and,
with two or more GPUs, ``PREFIX_link.csv``) and puts the multi-device model (iosim.parallel)
beside every configuration: on the ``dgx-h100`` preset (NVLink at the datasheet's 450 GB/s),
and with the link bandwidth the run measured (its 256 MiB send/recv). Per configuration:
measured and predicted end-to-end time, per step the compute (the slowest rank) and the
transfer alone, whether every transfer hid under its step's compute (measured: the transfer
alone <= the compute; model: the same comparison of its numbers), and the error check
(bf16 < 1e-2 against single-GPU attention). Per (world, heads, scheme, causal): the tokens
per device where the transfer stops hiding, measured and predicted.

    python experiments/multidevice_measured.py --data experiments/data/gpu_multidevice --out DIR
    iosim experiment multidevice_measured --data $OUT/multidevice --out DIR

Writes ``multidevice_measured{SUFFIX}.csv``, ``multidevice_measured{SUFFIX}_crossover.csv``
and ``multidevice_measured{SUFFIX}.png`` (SUFFIX from the data's name after
``multidevice``, e.g. ``_smoke``) into ``--out``.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import replace
from pathlib import Path

_DT = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
TOL = {"bfloat16": 1e-2, "float16": 1e-2, "float32": 1e-5}


def load(prefix: str):
    """(configurations, steps or None, link or None) DataFrames; older files (one GPU, an fp32
    check at small N) get the columns of the present format."""
    import pandas as pd
    p = Path(prefix)
    base = p.with_suffix("") if p.suffix == ".csv" else p
    cfg = pd.read_csv(f"{base}.csv")
    steps = pd.read_csv(f"{base}_steps.csv") if Path(f"{base}_steps.csv").exists() else None
    link = pd.read_csv(f"{base}_link.csv") if Path(f"{base}_link.csv").exists() else None
    if "tokens_per_device" not in cfg:
        cfg["tokens_per_device"] = -(-cfg.n // cfg.world)
    if steps is not None and "tokens_per_device" not in steps:
        steps["tokens_per_device"] = -(-steps.n // steps.world)
    if "max_abs_err" not in cfg:
        if "max_abs_err_fp32" in cfg:   # an fp32 check (NaN: not checked)
            cfg["max_abs_err"] = cfg.max_abs_err_fp32
            cfg["tolerance"] = TOL["float32"]
            cfg["check_dtype"] = "float32"
        else:
            cfg["max_abs_err"], cfg["tolerance"] = float("nan"), float("nan")
    if "tolerance" not in cfg:
        cfg["tolerance"] = cfg["dtype"].map(TOL)
    if "check_dtype" not in cfg:
        cfg["check_dtype"] = cfg["dtype"]
    if "kernel" not in cfg:
        cfg["kernel"] = "torch reference (fp32 statistics)"
    return cfg, steps, link


def measured_link(link) -> float | None:
    """The median bandwidth (bytes/s) of the send/recv; None without it."""
    if link is None or not len(link):
        return None
    return float(link.gb_per_s.median()) * 1e9


def _system(bandwidth: float | None):
    from iosim.parallel.system import load_system
    s = load_system("dgx-h100")
    if bandwidth is None:
        return s
    return replace(s, name="dgx-h100 (measured link)",
                   links=tuple(replace(lk, bandwidth=bandwidth) for lk in s.links))


def _per_step(steps, r, phase):
    """Per step, the slowest rank's median seconds of ``phase`` for configuration ``r``."""
    if steps is None:
        return []
    m = steps[(steps.world == r.world) & (steps.n == r.n) & (steps.heads == r.heads)
              & (steps.scheme == r.scheme) & (steps.causal == r.causal) & (steps.phase == phase)]
    if "d" in m:
        m = m[m.d == r.d]
    return m.groupby("step").seconds.max().sort_index().tolist()


def compare(cfg, steps, link):
    """One row per configuration: measured beside the model (preset link and measured link)."""
    import pandas as pd
    from iosim.errors import IosimError
    from iosim.parallel.model import Problem, evaluate_parallel
    bw = measured_link(link)
    systems = {"model": _system(None)}
    if bw is not None:
        systems["model_link"] = _system(bw)
    rows = []
    for _, r in cfg.iterrows():
        comp = _per_step(steps, r, "compute")
        xfer = _per_step(steps, r, "transfer")
        wait = _per_step(steps, r, "wait")
        row = dict(device=r.device, world=int(r.world), n=int(r.n),
                   tokens_per_device=int(r.tokens_per_device), heads=int(r.heads), d=int(r.d),
                   dtype=r["dtype"], scheme=r.scheme, causal=bool(r.causal), kernel=r.kernel,
                   time_s=float(r.time_s),
                   step_compute_s=max(comp) if comp else float("nan"),
                   compute_s=sum(comp) if comp else float("nan"),
                   step_transfer_s=max(xfer) if xfer else float("nan"),
                   exposed_wait_s=sum(wait) if wait else float("nan"),
                   hidden=(all(t <= c for t, c in zip(xfer, comp)) if xfer else None),
                   max_abs_err=float(r.max_abs_err), check_dtype=r.check_dtype,
                   tolerance=float(r.tolerance),
                   err_ok=(bool(r.max_abs_err < r.tolerance) if not math.isnan(r.max_abs_err)
                           else None),
                   sdpa_max_abs_err=float(r.get("sdpa_max_abs_err", float("nan"))),
                   max_abs_diff_single_gpu=float(r.get("max_abs_diff_single_gpu", float("nan"))),
                   single_gpu_sdpa_s=float(r.get("single_gpu_sdpa_s", float("nan"))),
                   link_bandwidth=bw)
        prob = Problem(n=int(r.n), d=int(r.d), heads=int(r.heads), dtype=_DT[r["dtype"]],
                       causal=bool(r.causal))
        for key, s in systems.items():
            try:
                res = evaluate_parallel("attention-1pass", None, s, prob, r.scheme,
                                        int(r.world))
            except IosimError as e:        # e.g. no fp32 matrix rate: nothing to compare
                row.update({f"{key}_time_s": float("nan"), f"{key}_step_compute_s": float("nan"),
                            f"{key}_step_transfer_s": float("nan"), f"{key}_hidden": None,
                            "model_note": str(e)})
                continue
            ring = [x for x in res.steps if x.phase == "ring"]
            row[f"{key}_time_s"] = res.time_s
            row[f"{key}_step_compute_s"] = max(x.compute_s for x in ring)
            row[f"{key}_step_transfer_s"] = max((x.comm_s for x in ring), default=0.0)
            row[f"{key}_hidden"] = res.overlapped if int(r.world) > 1 else None
        row["time_over_model"] = row["time_s"] / row["model_time_s"]
        rows.append(row)
    return pd.DataFrame(rows)


def crossovers(df):
    """Per (world, heads, scheme, causal, d): the smallest tokens per device from which every
    transfer hid, measured and in the model (NaN where none in the range)."""
    import pandas as pd
    out = []
    multi = df[df.world > 1]
    for key, g in multi.groupby(["world", "heads", "scheme", "causal", "d"]):
        g = g.sort_values("tokens_per_device")
        row = dict(zip(["world", "heads", "scheme", "causal", "d"], key))
        for what, col in (("measured", "hidden"), ("model", "model_hidden"),
                          ("model_link", "model_link_hidden")):
            if col not in g or g[col].isna().all():
                continue
            h = g[col].astype(bool).to_numpy()
            c = g.tokens_per_device.to_numpy()
            first = next((int(c[i]) for i in range(len(h)) if h[i:].all()), float("nan"))
            row[f"{what}_hides_from"] = first
        out.append(row)
    return pd.DataFrame(out)


def plot(df, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 3, figsize=(17, 5))
    a = ax[0]
    pred = df[df.model_time_s.notna() & (df.model_time_s > 0)]
    for (w, s), g in pred.groupby(["world", "scheme"]):
        a.scatter(g.model_time_s * 1e3, g.time_s * 1e3, s=18, label=f"{s}, {w} GPU(s)",
                  marker="o" if s == "ring" else "s")
    if len(pred):
        lo = min(pred.model_time_s.min(), pred.time_s.min()) * 1e3 / 2
        hi = max(pred.model_time_s.max(), pred.time_s.max()) * 1e3 * 2
        a.plot([lo, hi], [lo, hi], color="k", lw=0.8)
        a.set(xscale="log", yscale="log")
        a.legend(fontsize=7)
    else:
        a.text(0.5, 0.5, "no model prediction for these runs", ha="center",
               transform=a.transAxes)
    a.set(xlabel="model (dgx-h100 preset), ms", ylabel="measured, ms",
          title="end-to-end time per layer")
    a = ax[1]
    top = df[(df.world == df.world.max()) & (~df.causal) & (df.scheme == "ring")]
    if len(top):
        top = top[top.heads == top.heads.max()].sort_values("tokens_per_device")
        a.plot(top.tokens_per_device, top.step_compute_s * 1e3, "o", color="k",
               label="compute, measured")
        a.plot(top.tokens_per_device, top.model_step_compute_s * 1e3, "-", color="k",
               label="compute, model")
        if top.step_transfer_s.notna().any():
            a.plot(top.tokens_per_device, top.step_transfer_s * 1e3, "s", color="C3",
                   label="transfer, measured")
            a.plot(top.tokens_per_device, top.model_step_transfer_s * 1e3, "--", color="C3",
                   label="transfer, model (450 GB/s)")
            if "model_link_step_transfer_s" in top:
                a.plot(top.tokens_per_device, top.model_link_step_transfer_s * 1e3, ":",
                       color="C3", label="transfer, model (measured link)")
        a.set_title(f"ring step, {int(top.world.iloc[0])} GPU(s), {int(top.heads.iloc[0])} "
                    f"heads, not causal")
        a.set(xscale="log", yscale="log")
        a.legend(fontsize=7)
    a.set(xlabel="tokens per device c", ylabel="ms (slowest rank)")
    a = ax[2]
    chk = df[df.max_abs_err.notna()]
    for dt, g in chk.groupby("check_dtype"):
        # an exact zero (one GPU: the same computation) is drawn at the axis' floor
        a.scatter(g.n, g.max_abs_err.clip(lower=1e-9), s=14, label=f"{dt}")
        a.axhline(TOL.get(dt, float("nan")), lw=0.8, ls="--", color="k")
    a.set(xlabel="context N", ylabel="max |O - O_single-GPU| (floor 1e-9)",
          title="error against single-GPU attention (dashed: tolerance)")
    if len(chk):
        a.set(xscale="log", yscale="log")
        a.legend(fontsize=7)
    from matplotlib.ticker import NullFormatter
    for a in ax:
        a.xaxis.set_minor_formatter(NullFormatter())
    fig.suptitle(f"{df.device.iloc[0]}: measured vs the multi-device model", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    from iosim.plots import save_csv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="experiments/data/gpu_multidevice",
                    help="the measured CSVs' path without .csv (PREFIX.csv, PREFIX_steps.csv, "
                         "PREFIX_link.csv)")
    ap.add_argument("--out", default="out")
    a = ap.parse_args(argv)
    base = Path(a.data).with_suffix("") if a.data.endswith(".csv") else Path(a.data)
    if not Path(f"{base}.csv").exists():
        print(f"error: {base}.csv not found (run experiments/device/multidevice.py on GPUs)",
              file=sys.stderr)
        return 2
    cfg, steps, link = load(str(base))
    df = compare(cfg, steps, link)
    suffix = base.name.split("multidevice", 1)[1] if "multidevice" in base.name else ""
    out = Path(a.out)
    written = [save_csv(df, out / f"multidevice_measured{suffix}.csv")]
    cx = crossovers(df)
    if len(cx):
        written.append(save_csv(cx, out / f"multidevice_measured{suffix}_crossover.csv"))
    written.append(plot(df, out / f"multidevice_measured{suffix}.png"))
    r = df.time_over_model
    print(f"{len(df)} configurations on {df.device.iloc[0]} ({', '.join(sorted(set(df.kernel)))}); "
          f"measured / model time: median {r.median():.2f}, range {r.min():.2f}-{r.max():.2f}")
    if link is not None:
        print(f"link: {measured_link(link) / 1e9:.0f} GB/s measured (preset 450 GB/s)")
    checked = df[df.err_ok.notna()]
    print(f"error check: {int(checked.err_ok.astype(bool).sum())} of {len(checked)} within "
          f"tolerance" + ("" if len(checked) == len(df) else f" ({len(df) - len(checked)} "
                                                             f"not checked)"))
    hid = df[df.hidden.notna() & df.model_hidden.notna()]
    if len(hid):
        agree = (hid.hidden.astype(bool) == hid.model_hidden.astype(bool)).mean()
        print(f"overlap: measured and model agree on {agree:.0%} of {len(hid)} configurations")
    for _, x in cx.iterrows():
        print(f"  {x.scheme} {'causal' if x.causal else 'full'} {x.world} GPUs {x.heads} heads: "
              f"hides from c = {x.get('measured_hides_from')} measured, "
              f"{x.get('model_hides_from')} model")
    for p in written:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
