"""``iosim cascades``: list, show, check, analyse passes of and run Einsum cascades."""
from __future__ import annotations

import math
import time

import click

from iosim.cli.params import SIZE
import numpy as np

import cascades
from cascades.errors import CascadeError
from iosim.cli.common import FiniteFloat, OneLineGroup, atomic_write, echo_json


@click.group("cascades", cls=OneLineGroup)
def command():
    """The Einsum-cascade library: list, show, passes, check, run.

    NAME is a library name (see `iosim cascades list`) or the path of a .casc file.
    """


@command.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_cmd(as_json):
    """List the library cascades with their descriptions."""
    rows = []
    for n in cascades.library.names():
        c = cascades.load(n)
        rows.append({"name": n, "description": c.description,
                     "inputs": [f"{t.name}[{','.join(t.ranks)}]" for t in c.inputs],
                     "einsums": len(c.einsums)})
    if as_json:
        echo_json({"cascades": rows})
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        click.echo(f"{r['name'].ljust(width)}  {r['description']}")


@command.command("show")
@click.argument("name")
@click.option("--graph", "graph", type=click.Path(dir_okay=False),
              help="Write the dependency graph: .png/.svg/.pdf (matplotlib) or .dot.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show_cmd(name, graph, as_json):
    """Pretty-print a cascade (canonical notation) and optionally draw its graph."""
    c = cascades.load(name)
    if graph:
        _write_graph(c, graph)
    if as_json:
        echo_json(c.to_dict())
        return
    click.echo(c.to_text(), nl=False)
    if graph:
        click.echo(f"# dependency graph written to {graph}")


def _write_graph(c, path: str) -> None:
    g = c.info.graph
    suffix = path.rsplit(".", 1)[-1].lower() if "." in path else ""
    if suffix == "dot":
        lines = [f'digraph "{c.name}" {{', "  rankdir=LR;"]
        for t in g.nodes:
            shape = "box" if t in {x.name for x in c.inputs + c.outputs} else "ellipse"
            lines.append(f'  "{t}" [shape={shape}];')
        for a, b in g.edges:
            lines.append(f'  "{a}" -> "{b}";')
        lines.append("}")
        atomic_write(path, "\n".join(lines) + "\n")
        return
    if suffix not in ("png", "svg", "pdf"):
        raise CascadeError(f"--graph {path}: unknown format '.{suffix}' (use .png, .svg, .pdf "
                           f"or .dot)")
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx

    from cascades.passes import analyze
    cond = nx.condensation(g)  # recurrences (cycles) share a layer
    layers = {}
    for depth, gen in enumerate(nx.topological_generations(cond)):
        for comp in gen:
            for t in cond.nodes[comp]["members"]:
                layers[t] = depth
    nx.set_node_attributes(g, layers, "layer")
    pos = nx.multipartite_layout(g, subset_key="layer")
    report = analyze(c)
    main_rank = max(report.ranks.values(), key=lambda rp: rp.passes) if report.ranks else None
    colours = []
    for t in g.nodes:
        p = main_rank.einsum_pass.get(t, 0) if main_rank else 0
        colours.append(f"C{p}")
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * (max(layers.values()) + 1)), 5))
    nx.draw_networkx(g, pos, ax=ax, node_color=colours, node_size=900, font_size=8,
                     font_color="white", arrowsize=12)
    from matplotlib.lines import Line2D
    used = sorted({int(col[1:]) for col in colours})
    ax.legend(handles=[Line2D([], [], marker="o", ls="", color=f"C{k}",
                              label=(f"pass {k}" if k else "input / no traversal"))
                       for k in used], loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8,
              frameon=False)
    title = c.name
    if main_rank:
        title += f" — colour = pass over {main_rank.rank} ({main_rank.passes} in all)"
    ax.set_title(title)
    ax.axis("off")
    buf = io.BytesIO()
    fig.savefig(buf, format=suffix, bbox_inches="tight", dpi=120)
    plt.close(fig)
    atomic_write(path, buf.getvalue())


@command.command("passes")
@click.argument("name")
@click.option("--rank", "ranks", multiple=True, help="Only these ranks (repeatable).")
@click.option("--seq-len", type=SIZE, default=None,
              help="Queries P, to size the fibers that must be buffered.")
@click.option("--kv-len", type=SIZE, default=None, help="Keys M (default: P).")
@click.option("--head-dim", type=SIZE, default=64, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def passes_cmd(name, ranks, seq_len, kv_len, head_dim, as_json):
    """How many passes the cascade makes over each rank, and what a >=2-pass rank costs."""
    from cascades.passes import analyze
    c = cascades.load(name)
    shapes = None
    if seq_len is not None:
        shapes = {"P": seq_len, "M": kv_len or seq_len, "E": head_dim, "F": head_dim}
    rep = analyze(c, ranks=list(ranks) or None, shapes=shapes)
    if as_json:
        echo_json(rep)
    else:
        click.echo(rep.to_text())


@command.command("check")
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def check_cmd(path, as_json):
    """Parse and validate a cascade file; exit 2 with a one-line error if it is invalid."""
    c = cascades.load(path)
    if as_json:
        echo_json({"ok": True, "cascade": c.name, "einsums": len(c.einsums)})
    else:
        click.echo(f"ok: {path}: cascade {c.name}, {len(c.einsums)} Einsums, inputs "
                   f"{', '.join(t.name for t in c.inputs)}, outputs "
                   f"{', '.join(t.name for t in c.outputs)}")


def _parse_params(items) -> dict:
    out = {}
    for it in items:
        if "=" not in it:
            raise CascadeError(f"--param '{it}': expected NAME=VALUE")
        k, v = it.split("=", 1)
        low = v.strip().lower()
        if low in ("true", "false"):
            out[k.strip()] = low == "true"
        else:
            try:
                x = int(v) if v.strip().lstrip("-").isdigit() else float(v)
            except ValueError:
                out[k.strip()] = v.strip()
                continue
            if isinstance(x, float) and not math.isfinite(x):
                raise CascadeError(f"--param '{it}': {v.strip()} is not a finite number")
            out[k.strip()] = x
    return out


@command.command("run")
@click.argument("name", default="attention-1pass")
@click.option("--seq-len", type=SIZE, default=512, show_default=True,
              help="Queries P.")
@click.option("--kv-len", type=SIZE, default=None, help="Keys M (default: P).")
@click.option("--head-dim", type=SIZE, default=64, show_default=True,
              help="E = F.")
@click.option("--groups", type=SIZE, default=4, show_default=True,
              help="Query heads per K/V head (for cascades with a G rank).")
@click.option("--causal", is_flag=True, help="Causal mask.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--dtype", type=click.Choice(["float64", "float32"]), default="float64",
              show_default=True)
@click.option("--logit-scale", type=FiniteFloat(min=0, min_open=True), default=1.0,
              show_default=True, help="Multiply Q by this (1e3 stresses the softmax).")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="Override a cascade parameter, e.g. block_kv=32 (repeatable).")
@click.option("--reference", type=click.Choice(cascades.reference.KINDS),
              default=None, help="Reference to compare with (default: by library name, "
                                 "else softmax).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def run_cmd(name, seq_len, kv_len, head_dim, groups, causal, seed, dtype, logit_scale, params,
            reference, as_json):
    """Execute a cascade on random inputs and compare with a plain-NumPy reference."""
    from cascades import reference as ref
    c = cascades.load(name)
    kv_len = kv_len or seq_len
    rng = np.random.default_rng(seed)
    p = _parse_params(params)
    if causal:
        if "causal" not in {x.name for x in c.params}:
            raise CascadeError(f"cascade '{c.name}' has no 'causal' parameter")
        p["causal"] = True
    base = {"P": seq_len, "M": kv_len, "E": head_dim, "F": head_dim, "G": groups}
    from cascades.executor import resolve
    ext, resolved = resolve(c, {r: n for r, n in base.items() if r in c.info.ranks}, **p)
    from cascades.executor import check_memory
    # refuse up front what would not fit in memory (rather than fail half-way)
    check_memory(c, ext, dtype, hint="lower --seq-len, --kv-len, --head-dim or --groups")
    inputs = {}
    for t in c.inputs:
        shape = []
        for r in t.ranks:
            if r not in ext:
                raise CascadeError(f"input '{t.name}' has rank {r}, which `run` cannot size "
                                   f"(it knows P, M, E, F, G and partitions of them)")
            shape.append(ext[r])
        if t.dtype == "bool":
            arr = rng.random(shape) < 0.5
            if t.ranks[-1] in ("M", "M1"):
                arr[..., 0] = True  # every query sees at least one key
            inputs[t.name] = arr
        else:
            inputs[t.name] = rng.standard_normal(shape)
    if "Q" in inputs:
        inputs["Q"] = inputs["Q"] * logit_scale
    t0 = time.perf_counter()
    out = cascades.execute(c, inputs, dtype=dtype, **p)
    elapsed = time.perf_counter() - t0
    kind, align = ref.LIBRARY_KIND.get(c.name, ("softmax", "start"))
    kind = reference or kind
    result = {"cascade": c.name, "shapes": {k: v for k, v in ext.items()
                                            if k in c.info.ranks},
              "params": p, "dtype": dtype, "seconds": elapsed, "reference": kind}
    o = out.get("O")
    if kind != "none" and o is not None:
        r = ref.reference(kind, inputs, resolved, align)
        err = float(np.abs(o - r).max() / max(np.abs(r).max(), 1e-300))
        result["max_rel_error"] = err
        tol = 1e-10 if dtype == "float64" else 1e-4
        result["exact"] = bool(err < tol)
        result["tolerance"] = tol
    if as_json:
        echo_json(result)
        return
    shp = ", ".join(f"{k}={v}" for k, v in result["shapes"].items())
    click.echo(f"cascade  {c.name}: {c.description}")
    click.echo(f"inputs   random normal, {shp}, {dtype}"
               + (", causal" if causal else "") + (f", Q x {logit_scale:g}"
                                                    if logit_scale != 1 else ""))
    click.echo(f"executed {len(c.einsums)} Einsums in {elapsed * 1e3:.1f} ms")
    if "max_rel_error" in result:
        verdict = "exact" if result["exact"] else "NOT exact"
        click.echo(f"error    max |O - reference| / max |reference| = "
                   f"{result['max_rel_error']:.2e} vs plain-NumPy {kind} attention "
                   f"-> {verdict} (tolerance {result['tolerance']:.0e})")
    if result.get("exact") is False:
        raise SystemExit(1)
