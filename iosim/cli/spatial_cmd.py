"""``iosim spatial``: an attention cascade on a FuseMax-style spatial accelerator.

\b
  iosim spatial attention-1pass --hw fusemax --config fusemax --model bert --seq-len 64K
  iosim spatial --config flat --model xlm --seq-len 1K --seq-len 1M
  iosim spatial attention-1pass --config fusemax --bind SLN=1d     # move an Einsum
  iosim spatial attention-3pass --config fusemax --seq-len 64K    # a multi-pass cascade
  iosim spatial --config flat --seq-len 1M --nest                 # the loop nest of the traffic
  iosim spatial reproduce --out figures/                          # the whole FuseMax evaluation
  iosim spatial list                                              # presets, configurations, models
"""
from __future__ import annotations


import click

from iosim.cli.params import SIZE

from iosim.cli.common import OneLineErrors as _Cmd
from iosim.cli.common import OneLineGroup, echo_json
from iosim.errors import IosimError


class _Group(OneLineGroup):
    """``iosim spatial NAME ...`` runs a cascade; ``reproduce`` and ``list`` are subcommands."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        elif args and args[0].startswith("-") and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group("spatial", cls=_Group, invoke_without_command=False,
             context_settings={"help_option_names": ["-h", "--help"]})
def command():
    """FuseMax-style spatial arrays: run a cascade (NAME) on 2D/1D PE arrays, or reproduce
    the FuseMax evaluation.

    \b
      iosim spatial attention-1pass --hw fusemax --config fusemax --model bert --seq-len 64K
      iosim spatial --config flat --model xlm --seq-len 1K --seq-len 1M --json
      iosim spatial attention-1pass --config fusemax --bind SLN=1d
      iosim spatial reproduce --out figures/
      iosim spatial list
    """


def _parse_bind(values) -> dict:
    out = {}
    for v in values:
        if "=" not in v:
            raise IosimError(f"--bind '{v}': expected EINSUM=ARRAY, e.g. SLN=1d")
        k, a = v.split("=", 1)
        if not k.strip() or not a.strip():
            raise IosimError(f"--bind '{v}': expected EINSUM=ARRAY, e.g. SLN=1d")
        out[k.strip()] = a.strip()
    return out


@command.command("run", cls=_Cmd)
@click.argument("name", required=False, default=None)
@click.option("--config", "config", default="fusemax", show_default=True,
              help="unfused, flat, cascade, architecture (arch), fusemax (binding).")
@click.option("--hw", "hw", default=None, metavar="PRESET|FILE",
              help="Spatial hardware preset (fusemax, flat) or a TOML file [default: the "
                   "configuration's].")
@click.option("--model", default="bert", show_default=True, help="bert, trxl, t5, xlm.")
@click.option("--seq-len", "seq_lens", multiple=True, default=("64K",), show_default=True,
              help="M = P; repeat for several (1K, 64K, 1M, 4096, ...).")
@click.option("--batch", type=SIZE, default=None, help="Default 64.")
@click.option("--bind", "binds", multiple=True, metavar="EINSUM=ARRAY",
              help="Bind an Einsum to an array (repeatable), e.g. --bind SLN=1d.")
@click.option("--binding", "policy", default=None, type=click.Choice(["tile", "matmul"]),
              help="Binding policy [default: the configuration's].")
@click.option("--schedule", default=None,
              type=click.Choice(["pipelined", "sequential", "tile-sequential", "unfused"]),
              help="Schedule [default: the configuration's].")
@click.option("--issue", "issues", multiple=True, metavar="ARRAY=serial|pipelined",
              help="How an array issues an element's operations (repeatable): the array's "
                   "name, '=', and serial or pipelined (the 1D array pipelined: "
                   "'1d=pipelined') [default: the hardware's, or the configuration's].")
@click.option("--depth", type=int, default=None,
              help="Tiles an array holds in flight when pipelined.")
@click.option("--pe-dim", "pe_dim", type=int, default=None,
              help="Resize the arrays to PE_DIM x PE_DIM and PE_DIM.")
@click.option("--buffer", "buffer", default=None, metavar="SIZE",
              help="Global buffer capacity, e.g. 16MiB.")
@click.option("--json", "as_json", is_flag=True, help="Print the result(s) as JSON.")
@click.option("--einsums/--no-einsums", "show_einsums", default=True,
              help="Per-Einsum table in the text report.")
@click.option("--nest", "show_nest", is_flag=True,
              help="Print the loop nest(s) the DRAM traffic is counted from.")
def run_cmd(name, config, hw, model, seq_lens, batch, binds, policy, schedule, depth, issues,
            pe_dim, buffer, as_json, show_einsums, show_nest):
    """Run cascade NAME (default: the configuration's) for one model and sequence length(s)."""
    from iosim.hardware import parse_size
    from iosim.spatial import configs as cf
    from iosim.spatial.arch import load_spatial_hardware
    from iosim.spatial.workloads import parse_seq_len
    cfg = cf.get_config(config)
    changes = {}
    if policy:
        changes["binding"] = policy
    if schedule:
        changes["schedule"] = schedule
    if depth is not None:
        changes["depth"] = depth
    if issues:
        iss = dict(cfg.options.issue)
        for v in issues:
            k, _, mode = v.partition("=")
            if not k.strip() or mode.strip() not in ("serial", "pipelined"):
                raise IosimError(f"--issue '{v}': expected ARRAY=serial or ARRAY=pipelined, "
                                 f"e.g. 1d=serial")
            iss[k.strip()] = mode.strip()
        changes["issue"] = tuple(sorted(iss.items()))
    h = load_spatial_hardware(hw or cfg.hardware)
    if pe_dim is not None or buffer is not None:
        if pe_dim is not None and pe_dim < 1:
            raise IosimError(f"--pe-dim must be a positive number of PEs, got {pe_dim}")
        h = h.scaled(pe_dim=pe_dim, buffer_bytes=parse_size(buffer) if buffer else None)
    assign = _parse_bind(binds)
    results = []
    for s in seq_lens:
        n = parse_seq_len(s)
        results.append(cf.run(cfg, model, n, cascade=name, hardware=h, assign=assign,
                              batch=batch, **changes))
    if as_json:
        echo_json(results[0].to_dict() if len(results) == 1 else
                  {"results": [r.to_dict() for r in results]})
        return
    for i, r in enumerate(results):
        if i:
            click.echo("")
        click.echo(report_text(r, model, show_einsums))
        if show_nest:
            click.echo("  DRAM traffic counted (iosim.traffic) from the loop nest"
                       + ("s" if len(r.plans) > 1 else "") + ":")
            for p in r.plans:
                click.echo("\n".join("    " + ln for ln in p.loop_nest_text().splitlines()))


def _fmt_s(x: float) -> str:
    if x >= 1:
        return f"{x:.4g} s"
    if x >= 1e-3:
        return f"{x * 1e3:.4g} ms"
    return f"{x * 1e6:.4g} us"


def _fmt_b(x: float) -> str:
    for u, f in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if x >= f:
            return f"{x / f:.4g} {u}"
    return f"{x:.0f} B"


def _fmt_j(pj: float) -> str:
    j = pj * 1e-12
    if j >= 1:
        return f"{j:.4g} J"
    if j >= 1e-3:
        return f"{j * 1e3:.4g} mJ"
    return f"{j * 1e6:.4g} uJ"


def report_text(r, model: str | None = None, show_einsums: bool = True) -> str:
    from iosim.spatial.workloads import format_seq_len, get_model
    s = r.shape
    m = get_model(model).full_name if model else ""
    lines = [f"{r.cascade} on {r.hardware}" + (f" [{r.label}]" if r.label else "")
             + (f", {m}" if m else "")
             + f": batch {s.batch} x {s.heads} heads, E={s.E} F={s.F}, M=P={s.M} "
               f"({format_seq_len(s.M)})"]
    b = r.binding
    arrays = list(dict.fromkeys(a for _, a in b.assign))
    bind = " | ".join(f"{a}: " + " ".join(t for t, x in b.assign if x == a) for a in arrays)
    extra = ""
    if b.moved:
        extra = "; moved for missing ops: " + ", ".join(f"{e} {x}->{y}" for e, x, y in b.moved)
    if r.folded:
        extra += "; folded: " + ", ".join(f"{k} into {v}" for k, v in r.folded.items())
    lines.append(f"  binding ({b.policy}): {bind}{extra}")
    o = r.options
    p = r.plans[0]
    sched = o.schedule + (f", depth {o.depth}" if o.schedule == "pipelined" else "")
    if o.issue:
        sched += "; " + ", ".join(f"{a}: {m} issue" for a, m in o.issue)
    lines.append(f"  schedule: {sched}; tile = {p.M0} keys x {p.P0} queries; chunk = "
                 f"{p.P1} query tiles x {p.KT} key tiles; {p.chunks:,} chunks")
    if len(r.plans) > 1:
        lines.append("  kernels: " + " | ".join(
            f"{'+'.join(g['einsums'])}: {_fmt_s(g['latency_s'])} "
            f"({'DRAM' if g['dram_s'] > g['compute_s'] else 'compute'})" for g in r.schedule_info))
    lines.append(f"  latency      {_fmt_s(r.latency_s)}   (compute {_fmt_s(r.compute_s)}, "
                 f"DRAM {_fmt_s(r.dram_s)}: {r.bound}-bound)")
    lines.append("  utilization  " + "   ".join(f"{a} {u:.3f}" for a, u in r.utilization.items()))
    qbytes = s.batch * s.heads * s.P * s.E * 2
    mp = ""
    if any(pl.multipass_bytes for pl in r.plans):
        pl = max(r.plans, key=lambda x: x.multipass_bytes)
        mp = (f"; multi-pass fibres {_fmt_b(pl.multipass_bytes)} per chunk, "
              f"{pl.onchip_fraction:.0%} on chip")
    lines.append(f"  DRAM traffic {_fmt_b(r.dram_bytes)} ({r.dram_bytes / qbytes:.3g} x Q){mp}")
    tot = r.energy_pj["total"]
    parts = ", ".join(f"{k.replace('_', ' ')} {v / tot:.1%}" for k, v in r.energy_pj.items()
                      if k != "total" and v > 0)
    lines.append(f"  energy       {_fmt_j(tot)}  ({parts})")
    if show_einsums:
        lines.append(f"  {'einsum':<7}{'array':<6}{'ops/element':<22}{'cyc/el':>7}"
                     f"{'task cyc':>10}{'busy':>8}")
        for e in r.einsums:
            ops = " ".join(f"{k}x{v:g}" if v != 1 else k for k, v in e["ops_per_element"].items())
            lines.append(f"  {e['einsum']:<7}{e['array']:<6}{ops:<22}{e['cycles_per_element']:>7g}"
                         f"{e['task_cycles']:>10g}{e['busy_fraction']:>8.1%}")
    return "\n".join(lines)


@command.command("reproduce", cls=_Cmd)
@click.option("--out", "out", default="figures", show_default=True,
              help="Directory for the CSVs and PNG figures.")
@click.option("--data", "data", default=None,
              help="Directory of the paper's numbers [default: experiments/data].")
@click.option("--no-figures", "no_figures", is_flag=True, help="CSV only.")
@click.option("--json", "as_json", is_flag=True, help="Print the headline table as JSON.")
def reproduce_cmd(out, data, no_figures, as_json):
    """Reproduce the FuseMax evaluation (Figs. 6-12 and the headline means)."""
    from iosim.spatial.configs import get_config
    from iosim.spatial.reproduce import reproduce
    res = reproduce(out, data, figures_=not no_figures)
    head = res["headline"]
    if as_json:
        echo_json({"headline": head.to_dict(orient="records"),
                   "utilization_max_abs_error": res.get("util_max_err"),
                   "figures": res.get("figures", []), "seconds": res["seconds"]})
        return
    click.echo("FuseMax reproduction: means over 4 models x 6 sequence lengths")
    click.echo(f"  {'metric':<46}{'ours':>8}{'paper':>8}{'ratio':>8}")
    for r in head.itertuples():
        click.echo(f"  {r.metric:<46}{r.ours:>8.3f}{r.paper:>8.3f}{r.ratio:>8.3f}")
    if res.get("util_max_err"):
        u = res["util_max_err"]
        click.echo(f"  max |utilization - paper|: FuseMax 2D {u['fusemax_2d']:.4f}, "
                   f"FLAT 2D {u['flat_2d']:.4f}, FLAT 1D {u['flat_1d']:.4f}")
        click.echo("  (2D / 1D) " + ", ".join(
            f"{get_config(c).label} {u[c + '_2d']:.4f} / {u[c + '_1d']:.4f}"
            for c in ("unfused", "cascade", "architecture") if c + "_2d" in u))
    else:
        click.echo("  (paper numbers not found: pass --data experiments/data)")
    for f in res.get("figures", []):
        click.echo(f"  wrote {f}")
    click.echo(f"  wrote CSVs under {out}/ in {res['seconds']:.1f} s")


@command.command("list", cls=_Cmd)
@click.option("--json", "as_json", is_flag=True)
def list_cmd(as_json):
    """Hardware presets, configurations and models."""
    from iosim.spatial.arch import list_spatial_presets, load_spatial_hardware
    from iosim.spatial.configs import load_configs
    from iosim.spatial.workloads import load_models
    hws = {n: load_spatial_hardware(n).description for n in list_spatial_presets()}
    cfgs = {k: c.to_dict() for k, c in load_configs().items()}
    models = {k: m.to_dict() for k, m in load_models().items()}
    if as_json:
        echo_json({"hardware": hws, "configs": cfgs, "models": models})
        return
    click.echo("hardware presets:")
    for k, v in hws.items():
        click.echo(f"  {k:<10} {v}")
    click.echo("configurations:")
    for k, c in cfgs.items():
        click.echo(f"  {k:<13} {c['label']:<20} {c['cascade']} on {c['hardware']}, "
                   f"{c['options']['binding']} binding, {c['options']['schedule']}")
    click.echo("models:")
    for k, m in models.items():
        click.echo(f"  {k:<6} {m['full_name']:<20} heads {m['heads']}, E=F={m['E']}, "
                   f"hidden {m['hidden']}, FFN {m['ffn']}")
