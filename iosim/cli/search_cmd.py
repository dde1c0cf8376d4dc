"""``iosim search``: the best tiling per SRAM size (the ski-slope curve)."""
from __future__ import annotations

import click

from iosim.cli.common import echo_json
from iosim.cli.evaluate_cmd import OneLineErrors, load_problem, shape_options
from iosim.errors import IosimError


def _parse_srams(text: str, dtype: str) -> list:
    from iosim.sweep import parse_srams
    return [float(x) for x in parse_srams(text, dtype, option="--sram")]


@click.command("search", cls=OneLineErrors)
@click.argument("name", required=False, default="attention-1pass")
@shape_options
@click.option("--sram", default=None, metavar="LIST",
              help="SRAM sizes with units: a list 16KiB,64KiB,256KiB, a range 1KiB:4MiB:x2, "
                   "or elements 1024el:65536el:x4 (default: the preset's SRAM).")
@click.option("--objective", type=click.Choice(["time", "traffic", "energy", "hbm"]),
              default="time", show_default=True,
              help="Minimise the predicted time (on a GPU preset: the parallel time model over "
                   "the tilings a kernel takes -- power-of-two tiles, 4 or 8 warps, 2-4 "
                   "stages, no register spills), the backing-store bytes ('traffic'; 'hbm' is "
                   "the same) or the energy (presets with per-access energies).")
@click.option("--mapping", "mappings", multiple=True, metavar="NAME",
              help="Restrict to these mappings (repeatable; default: all that fit the "
                   "cascade's structure; one that does not fit is refused, saying why), or a "
                   "loop tree file (.toml): its symbolic tiles are searched, those it fixes "
                   "by a number kept.")
@click.option("--write-best", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Write the loop tree file given with --mapping to FILE with the best "
                   "tiling (first SRAM size) set: tiles, and warps and stages where searched.")
@click.option("--quiet", "-q", is_flag=True,
              help="No progress bar (it shows on a terminal when the search takes over 2 s).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def command(name, hw, seq_len, head_dim, kv_len, batch, heads, kv_heads, causal, dtype, sram,
            objective, mappings, write_best, quiet, as_json):
    """Find the fastest tiling of cascade NAME (or a .casc file), or the one with the least
    traffic or energy, for each SRAM size, with the runners-up.

    Searches every mapping that fits the cascade (and its variants) over a grid of tile sizes,
    counting the tiles and the softmax state (running max and sum, O accumulator, score tile)
    against the SRAM. For the time objective on a GPU preset the candidates are the tilings a
    Triton kernel takes (power-of-two tiles 16-256, 4 or 8 warps, 2-4 pipeline stages counted
    against shared memory, no register spills); for traffic the tile sizes need not divide the
    sequence length. The cascade's own defaults (a file's 'param causal = true') apply unless
    --causal/--no-causal is given.

    \b
      iosim search attention-1pass --seq-len 8K --head-dim 64 --batch 2 --heads 16 --causal
      iosim search attention-1pass --hw two-level --sram 1KiB:4MiB:x2 --objective traffic
      iosim search attention-3pass --hw h100 --sram 64KiB,128KiB,227KiB --objective traffic --json
      iosim search attention-1pass --hw h100 --mapping mine.toml --write-best best.toml
    """
    from iosim.looptree.files import load_mapping_file
    from iosim.looptree.files import write_best as write_tree
    from iosim.mapping import get_mapping, resolve_causal
    from iosim.search import search
    c, h, _ = load_problem(name, hw, dtype, None)
    causal = resolve_causal(c, causal)
    srams = _parse_srams(sram, dtype) if sram is not None else None
    if srams is not None and not srams:
        raise IosimError("--sram: give at least one size")
    trees = [mp for mp in mappings if mp.endswith(".toml")]
    if write_best is not None and len(trees) != 1:
        raise IosimError("--write-best writes a loop tree: give exactly one --mapping FILE.toml")
    if mappings:
        mappings = [load_mapping_file(mp, c, h) if mp.endswith(".toml")
                    else get_mapping(mp).name for mp in mappings]
    res = search(c, h, n=seq_len, d=head_dim, kv_len=kv_len, sram_bytes=srams, dtype=dtype,
                 causal=causal, batch=batch, heads=heads, kv_heads=kv_heads,
                 objective=objective, mappings=list(mappings) or None,
                 progress=not (quiet or as_json))
    if write_best is not None:
        tree = next(mp for mp in mappings if not isinstance(mp, str))
        best = res.best()
        if res.frame.iloc[0]["mapping"] != tree.name:
            raise IosimError(f"--write-best: the best tiling is mapping "
                             f"'{res.frame.iloc[0]['variant']}', not the tree '{tree.name}'")
        write_tree(trees[0], write_best, best, c, h)
    if as_json:
        echo_json(res.to_dict())
        return
    click.echo(res.render())
    if write_best is not None:
        click.echo(f"\nwrote {write_best}: {trees[0]} with the best tiling")
