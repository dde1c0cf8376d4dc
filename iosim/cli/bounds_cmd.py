"""``iosim bounds``: list and show the IO bounds; verify the theory numerically."""
from __future__ import annotations

import sys
import time

import click

from iosim.cli.common import OneLineGroup, echo_json


@click.group("bounds", cls=OneLineGroup)
def command():
    """IO lower/upper bounds of attention as formulas, and numeric checks of the theory.

    \b
      iosim bounds list                 # every bound: formula, kind, regime, constant
      iosim bounds show saha_ye_standard_matmul
      iosim bounds verify               # the numeric checks; exit 1 on any FAIL
    """


def _constant_label(b) -> str:
    return {"stated": "stated in the source", "derived": "derived (exact count)",
            "asymptotic (no constant)": "asymptotic: no constant (evaluated with 1)"}[b.constant]


@command.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_cmd(as_json):
    """List every bound with its formula (elements), kind, regime and constant."""
    from iosim.bounds import all_bounds

    bounds = all_bounds()
    if as_json:
        echo_json({"unit": "elements per (batch, head)", "bounds": [b.to_dict() for b in bounds]})
        return
    wn = max(len(b.name) for b in bounds)
    we = min(40, max(len(str(b.expr)) for b in bounds))
    click.echo(f"{'name':<{wn}}  {'formula (elements)':<{we}}  {'kind':<5}  constant")
    click.echo("-" * (wn + we + 40))
    for b in bounds:
        expr = str(b.expr)
        if len(expr) > we:
            expr = expr[: we - 1] + "…"
        click.echo(f"{b.name:<{wn}}  {expr:<{we}}  {b.kind:<5}  {b.constant}")
    click.echo("\nM = SRAM size in elements; see `iosim bounds show NAME` for regime and source.")


@command.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show_cmd(name, as_json):
    """Show one bound: formula (text, pretty, LaTeX), regime, source, constant, note."""
    import sympy as sp

    from iosim.bounds import get_bound

    b = get_bound(name)
    if as_json:
        echo_json(b.to_dict())
        return
    click.echo(f"{b.name}  ({b.kind} bound; elements per (batch, head); M = SRAM elements)")
    click.echo(f"  formula : {b.expr}")
    pretty = sp.pretty(b.expr, use_unicode=True)
    click.echo("            " + pretty.replace("\n", "\n            "))
    click.echo(f"  LaTeX   : {sp.latex(b.expr)}")
    click.echo(f"  regime  : {b.regime}")
    if b.condition is not sp.true:
        click.echo(f"  (as a condition: {b.condition})")
    click.echo(f"  constant: {_constant_label(b)}")
    click.echo(f"  source  : {b.source}")
    if b.note:
        import textwrap

        click.echo("  note    : " + textwrap.fill(b.note, 90, subsequent_indent="            "))


@command.command("verify")
@click.option("--seq-len", "seq_len", default="1K:16K:x2", show_default=True,
              help="Sequence lengths N (list or range: 1K,4K or 1K:16K:x2).")
@click.option("--head-dim", "head_dim", default="64,128", show_default=True,
              help="Head dimensions d (list or range).")
@click.option("--reference", is_flag=True,
              help="Check the reference closed forms of iosim.verify instead of the model "
                   "(traffic, trace, search).")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@click.option("-v", "--verbose", is_flag=True, help="Print each check's details after the table.")
def verify_cmd(seq_len, head_dim, reference, as_json, verbose):
    """Run the numeric checks of the IO theory; exit status 1 if any check FAILs.

    \b
    1  exact identities: closed forms = the model = the tile simulator, partial blocks included
    2  log-log slopes of IO vs M (-1 for M >> d^2, -1/2 for M << d^2), vs N (+2), vs d
    3  IO / (N^2 d^2 / M) flat in N and M for FlashAttention's tiling
    4  min over tilings >= every lower bound, bounded ratio, no trend in N or M
    5  the envelope's slope switches near M = d^2
    6  min traffic never increases with M
    """
    from iosim.sweep import parse_counts
    from iosim.verify import VerifyParams, default_counts, reference_counts, run_checks

    Ns = parse_counts(seq_len, "--seq-len")
    ds = parse_counts(head_dim, "--head-dim")
    if len(Ns) > 16 or len(ds) > 4:
        from iosim.errors import IosimError

        raise IosimError(f"at most 16 sequence lengths and 4 head dimensions "
                         f"(got {len(Ns)} and {len(ds)})")
    params = VerifyParams(tuple(Ns), tuple(ds))
    t0 = time.perf_counter()
    counts = (reference_counts if reference else default_counts)(params.seq_lens, params.head_dims)
    report = run_checks(counts, params)
    elapsed = time.perf_counter() - t0
    if as_json:
        d = report.to_dict()
        d["elapsed_s"] = round(elapsed, 3)
        if not verbose:
            for c in d["checks"]:
                c["details"] = {k: v for k, v in c["details"].items() if k != "points"}
        echo_json(d)
    else:
        click.echo(f"IO theory checks: N in {', '.join(map(str, params.seq_lens))}; "
                   f"d in {', '.join(map(str, params.head_dims))}; M = SRAM elements")
        click.echo(report.table())
        click.echo(f"({elapsed:.1f} s; counts from: {counts.sources.get('best', '')})")
        if verbose:
            for c in report.checks:
                det = {k: v for k, v in c.details.items() if k != "points"}
                click.echo(f"\n[{c.id}] {c.description}: {c.status}\n  {det}")
    if not report.passed:
        sys.exit(1)
