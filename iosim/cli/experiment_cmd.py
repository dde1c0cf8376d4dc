"""``iosim experiment``: run one of the scripts under ``experiments/`` by name.

Each script ``experiments/<name>.py`` reproduces one claim and defines
``main(out_dir=None, quick=False) -> dict``; it writes ``<name>.png`` and a CSV beside it
into ``--out`` (default ``./out``; ``--out figures`` regenerates the committed copies). Scripts are discovered without being imported (their module
docstring is read with :mod:`ast`), so listing is fast and a script that needs a GPU does not
break the others. The scripts live in the source checkout (this command finds the directory
``experiments/`` next to the installed ``iosim`` package, or in the current directory).
"""
from __future__ import annotations

import ast
import difflib
import importlib.util
import time
from pathlib import Path

import click

from iosim.cli.common import OneLineErrors, ensure_dir
from iosim.errors import IosimError


def experiments_dir() -> Path | None:
    here = Path(__file__).resolve().parents[2] / "experiments"
    if here.is_dir():
        return here
    cwd = Path.cwd() / "experiments"
    return cwd if cwd.is_dir() else None


def discover() -> dict:
    """``{name: (path, first line of its docstring)}`` for scripts that define ``main``."""
    root = experiments_dir()
    out = {}
    if root is None:
        return out
    for p in sorted(root.glob("*.py")):
        if p.name.startswith("_"):
            continue
        try:
            tree = ast.parse(p.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        if not any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body):
            continue
        doc = (ast.get_docstring(tree) or "").strip().splitlines()
        out[p.stem] = (p, doc[0] if doc else "")
    return out


def load(name: str):
    found = discover()
    if not found:
        raise IosimError("no experiments found: run from a source checkout that has experiments/")
    key = name.strip().replace("-", "_")
    if key not in found:
        hit = difflib.get_close_matches(key, list(found), n=1, cutoff=0.5)
        hint = f" (did you mean '{hit[0]}'?)" if hit else ""
        raise IosimError(f"unknown experiment '{name}'{hint}; experiments: {', '.join(found)}")
    path = found[key][0]
    spec = importlib.util.spec_from_file_location(f"iosim_experiment_{key}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(name: str, main, *args, **kwargs):
    """Call an experiment's ``main``; a file it cannot write (or read) is a one-line error."""
    try:
        return main(*args, **kwargs)
    except OSError as exc:
        if exc.filename is None:
            raise
        raise IosimError(f"experiment '{name}': {exc.filename}: "
                         f"{exc.strerror or type(exc).__name__}") from None


@click.command("experiment", cls=OneLineErrors, context_settings={"ignore_unknown_options": True,
                                               "allow_extra_args": True})
@click.argument("name", required=False)
@click.argument("extra", nargs=-1, type=click.UNPROCESSED)
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Output directory (default: ./out; 'figures' regenerates the committed "
                   "copies).")
@click.option("--quick", is_flag=True, help="A smaller grid (for smoke tests).")
@click.option("--list", "list_only", is_flag=True, help="List the experiments.")
@click.option("--json", "as_json", is_flag=True, help="Print the experiment's summary as JSON.")
def command(name, extra, out_dir, quick, list_only, as_json):
    """Run a reproduced experiment (paper figures, theorems); list them.

    NAME is a script under experiments/; without NAME, the experiments are listed. Scripts
    with their own command-line options (main(argv)) receive --out and any further
    arguments unchanged.

    \b
      iosim experiment                   # list
      iosim experiment fa_figure2        # FlashAttention Figure 2 (GPT-2 medium, fwd+bwd)
      iosim experiment saha_ye_regimes   # Saha & Ye's two regimes, crossover near M = d^2
      iosim experiment ski_slope         # min HBM traffic vs SRAM for every cascade
    """
    from iosim.cli.common import echo_json

    if list_only or not name:
        found = discover()
        if as_json:
            echo_json({"experiments": [{"name": k, "path": str(v[0]), "description": v[1]}
                                       for k, v in found.items()]})
            return
        if not found:
            click.echo("no experiments found (run from a source checkout with experiments/)")
            return
        w = max(len(k) for k in found)
        for k, (_, doc) in found.items():
            click.echo(f"{k.ljust(w)}  {doc}")
        return
    mod = load(name)
    if out_dir:  # an unwritable --out fails now, in one line, not after the experiment ran
        ensure_dir(out_dir)
    import inspect

    params = inspect.signature(mod.main).parameters
    if "argv" in params:
        # an argparse-style script: main(argv) -> exit status; options pass through
        if quick or as_json:
            raise IosimError(f"experiment '{name}' takes its own options, not --quick/--json; "
                             f"see: python experiments/{name}.py --help")
        argv = (["--out", str(out_dir)] if out_dir else []) + list(extra)
        rc = _run(name, mod.main, argv)
        raise SystemExit(int(rc or 0))
    if extra:
        raise IosimError(f"experiment '{name}' takes no argument '{extra[0]}'")
    t0 = time.perf_counter()
    kwargs = {"quick": quick}
    if out_dir:
        kwargs["out_dir"] = Path(out_dir)
    summary = _run(name, mod.main, **kwargs) or {}
    elapsed = time.perf_counter() - t0
    if as_json:
        echo_json({"experiment": name, "seconds": round(elapsed, 3), **summary})
        return
    for line in summary.get("lines", []):
        click.echo(line)
    for p in summary.get("written", []):
        click.echo(f"wrote {p}")
    click.echo(f"({elapsed:.1f} s)")
