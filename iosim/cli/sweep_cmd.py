"""``iosim sweep``: evaluate algorithms over SRAM sizes and sequence lengths -> CSV + figures."""
from __future__ import annotations

import time
from pathlib import Path

import click

from iosim.cli.evaluate_cmd import (DEFAULT_DTYPE, DEFAULT_HEAD_DIM, DEFAULT_SEQ_LEN,
                                    OneLineErrors, causal_option, head_options)


@click.command("sweep", cls=OneLineErrors)
@click.argument("names", nargs=-1, required=True)
@click.option("--hw", "hardware", default="two-level", show_default=True,
              help="Hardware preset name or TOML file. The default differs from evaluate and "
                   "search (h100): a sweep over SRAM sizes models one SRAM level in front of "
                   "the backing store, which the two-level machine is.")
@click.option("--sram", default=None,
              help="SRAM sizes with units: 64KiB,192KiB | 4KiB:1MiB:x2 | 1024el:65536el:x4 "
                   "(default: the preset's SRAM size).")
@click.option("--seq-len", "seq_len", default=str(DEFAULT_SEQ_LEN), show_default=True,
              help="Sequence lengths: 1K,4K,16K | 1K:64K:x2 | 512:4096:+512.")
@click.option("--head-dim", "head_dim", default=str(DEFAULT_HEAD_DIM), show_default=True,
              help="Head dimensions (list or range).")
@click.option("--mapping", default=None,
              help="Mapping for NAMEs that are cascades: a mapping name or 'best' (the "
                   "minimum-traffic tiling that fits; default).")
@click.option("--dtype", default=DEFAULT_DTYPE, show_default=True,
              help="Element type (bytes per element).")
@head_options
@causal_option
@click.option("--out", "out_dir", default="sweep-out", show_default=True,
              type=click.Path(file_okay=False),
              help="Output directory: sweep.csv (resumable) and the figures.")
@click.option("--no-plots", is_flag=True, help="Write the CSV only.")
@click.option("--no-progress", "--quiet", "-q", "no_progress", is_flag=True,
              help="No progress bar (it shows on a terminal when the sweep takes over 2 s).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of text.")
@click.option("--system", default=None, metavar="PRESET|FILE",
              help="Sweep the multi-device model on a system (dgx-h100, ...; docs/multidevice.md) "
                   "over --parallel schemes, --devices and --seq-len: parallel_sweep.csv and "
                   "parallel_sweep.png (time and memory per device, the ring's crossover).")
@click.option("--parallel", default=None, metavar="LIST",
              help="With --system: ring,striped,ulysses,usp.")
@click.option("--devices", default=None, metavar="LIST_OR_RANGE",
              help="With --system: device counts, e.g. 2,4,8 or 2:16:x2 (default: all).")
def command(names, hardware, sram, seq_len, head_dim, mapping, dtype, batch, heads, kv_heads,
            causal, out_dir, no_plots, no_progress, as_json, system, parallel, devices):
    """Traffic of algorithms over SRAM sizes and sequence lengths: CSV, figures.

    NAME is a mapping (fa1, fa2, saha-ye, unfused, fused-2pass, ...), a cascade
    (attention-1pass or a .casc file: tiled by --mapping, default 'best'), or
    cascade:mapping. Each cascade's own defaults apply (a file's 'param causal = true',
    its key block): the algorithms of one sweep must agree on causal masking unless
    --causal/--no-causal is given.

    \b
    Example:
      iosim sweep fa1 fa2 saha-ye attention-1pass --hw two-level \\
          --sram 2KiB:1MiB:x2 --seq-len 1K:16K:x4 --out out/
    Writes out/sweep.csv (rerunning resumes: points already there are skipped) and
    out/sweep_vs_sram.png, out/sweep_vs_seqlen.png. Multi-device:

    \b
      iosim sweep attention-1pass --system dgx-h100 --parallel ring,striped \\
          --devices 2,4,8 --seq-len 2K:1M:x2 --heads 32 --batch 4 --causal --out out/
    """
    from iosim.cli.common import echo_json
    if system is not None or parallel is not None or devices is not None:
        from iosim.parallel.sweep import sweep_command
        src = click.get_current_context().get_parameter_source("hardware")
        res = sweep_command(names, system=system, parallel=parallel, devices=devices,
                            seq_len=seq_len, head_dim=head_dim, mapping=mapping, dtype=dtype,
                            batch=batch, heads=heads, kv_heads=kv_heads, causal=causal,
                            out_dir=out_dir, no_plots=no_plots, sram=sram,
                            progress=not (no_progress or as_json),
                            hw_given=src is not None and src.name != "DEFAULT")
        lines = res.pop("lines")
        return echo_json(res) if as_json else click.echo("\n".join(lines))
    from iosim.errors import IosimError
    from iosim.hardware import dtype_bytes, load_hardware
    from iosim.mapping import Shapes, resolve_causal
    from iosim.plots import sweep_figures
    from iosim.sweep import SweepSpec, parse_counts, parse_srams, resolve_algorithm, run_sweep

    dtype_bytes(dtype)  # validates
    Shapes(n=1, heads=heads, kv_heads=kv_heads)  # validates the heads
    hw = load_hardware(hardware)
    if sram is None:
        srams = [float(hw.innermost_sram.usable_bytes)]
    else:
        srams = parse_srams(sram, dtype, "--sram")
    Ns = parse_counts(seq_len, "--seq-len")
    ds = parse_counts(head_dim, "--head-dim")
    algs = []
    for n in names:
        a = resolve_algorithm(n, mapping)
        if a.label not in [x.label for x in algs]:
            algs.append(a)
    # causal masking: the flag, else each cascade's own default (they must agree)
    modes = {a.label: resolve_causal(a.cascade, causal) for a in algs}
    if len(set(modes.values())) > 1:
        on = [k for k, v in modes.items() if v]
        raise IosimError(f"the algorithms disagree on causal masking ({', '.join(on)} "
                         f"{'is' if len(on) == 1 else 'are'} causal by default): give "
                         f"--causal or --no-causal")
    causal = next(iter(modes.values()))
    spec = SweepSpec(tuple(algs), hardware, tuple(srams), tuple(Ns), tuple(ds), dtype=dtype,
                     batch=batch, heads=heads, causal=causal, kv_heads=kv_heads)
    if spec.points() > 2_000_000:
        raise IosimError(f"{spec.points():,} points is too many for one sweep (limit 2,000,000); "
                         f"narrow --sram or --seq-len")
    t0 = time.perf_counter()
    df = run_sweep(spec, out_dir, progress=not (no_progress or as_json))
    elapsed = time.perf_counter() - t0
    figures = [] if no_plots else [str(p) for p in sweep_figures(df, out_dir)]
    csv = str(Path(out_dir) / "sweep.csv")
    if as_json:
        echo_json({"csv": csv, "figures": figures, "rows": int(len(df)), "points": spec.points(),
                   "seconds": round(elapsed, 3),
                   "algorithms": [a.__dict__ for a in algs]})
        return
    click.echo(f"{spec.points()} points ({len(algs)} algorithms x {len(srams)} SRAM sizes x "
               f"{len(Ns)} sequence lengths x {len(ds)} head dims) in {elapsed:.2f} s")
    click.echo(f"wrote {csv}")
    for f in figures:
        click.echo(f"wrote {f}")
