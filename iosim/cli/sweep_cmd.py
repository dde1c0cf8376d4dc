"""``iosim sweep``: evaluate algorithms over SRAM sizes and sequence lengths -> CSV + figures."""
from __future__ import annotations

import time
from pathlib import Path

import click


@click.command("sweep")
@click.argument("names", nargs=-1, required=True)
@click.option("--hw", "hardware", default="two-level", show_default=True,
              help="Hardware preset name or TOML file.")
@click.option("--sram", default=None,
              help="SRAM sizes with units: 64KiB,192KiB | 4KiB:1MiB:x2 | 1024el:65536el:x4 "
                   "(default: the preset's SRAM size).")
@click.option("--seq-len", "seq_len", required=True,
              help="Sequence lengths: 1K,4K,16K | 1K:64K:x2 | 512:4096:+512.")
@click.option("--head-dim", "head_dim", default="64", show_default=True,
              help="Head dimensions (list or range).")
@click.option("--mapping", default=None,
              help="Mapping for NAMEs that are cascades: a mapping name or 'best' (the "
                   "minimum-traffic tiling that fits; default).")
@click.option("--dtype", default="bf16", show_default=True, help="Element type (bytes per element).")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--heads", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--causal", is_flag=True, help="Causal masking.")
@click.option("--out", "out_dir", default="sweep-out", show_default=True,
              type=click.Path(file_okay=False),
              help="Output directory: sweep.csv (resumable) and the figures.")
@click.option("--no-plots", is_flag=True, help="Write the CSV only.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of text.")
def command(names, hardware, sram, seq_len, head_dim, mapping, dtype, batch, heads, causal,
            out_dir, no_plots, no_progress, as_json):
    """Traffic of algorithms over SRAM sizes and sequence lengths: CSV, figures.

    NAME is a mapping (fa1, fa2, saha-ye, unfused, fused-2pass, ...), a cascade
    (attention-1pass: tiled by --mapping, default 'best'), or cascade:mapping.

    \b
    Example:
      iosim sweep fa1 fa2 saha-ye attention-1pass --hw two-level \\
          --sram 2KiB:1MiB:x2 --seq-len 1K:16K:x4 --out out/
    Writes out/sweep.csv (rerunning resumes: points already there are skipped) and
    out/sweep_vs_sram.png, out/sweep_vs_seqlen.png.
    """
    from iosim.cli.common import echo_json
    from iosim.hardware import dtype_bytes, load_hardware
    from iosim.plots import sweep_figures
    from iosim.sweep import SweepSpec, parse_counts, parse_srams, resolve_algorithm, run_sweep

    dtype_bytes(dtype)  # validates
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
    spec = SweepSpec(tuple(algs), hardware, tuple(srams), tuple(Ns), tuple(ds), dtype=dtype,
                     batch=batch, heads=heads, causal=causal)
    if spec.points() > 2_000_000:
        from iosim.errors import IosimError

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
