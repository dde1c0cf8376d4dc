"""``iosim codegen NAME``: print or write the Triton source generated from a cascade."""
from __future__ import annotations

import click

from iosim.cli.params import SIZE

from iosim.cli.common import OneLineErrors, atomic_write, echo_json


@click.command("codegen", cls=OneLineErrors)
@click.argument("name")
@click.option("--mapping", "mapping_name", default=None, metavar="NAME|FILE",
              help="the Mapping the kernel is generated from (default: the one whose loop "
                   "nest the generator emits for the cascade: fa2 for single-pass cascades, "
                   "fused-3pass for multi-pass, decode-splitk for partials), or a loop tree "
                   "file (.toml) that lowers to that nest; the options below change its "
                   "fields, exactly as on 'iosim evaluate'")
@click.option("--block-m", "--block-q", "block_m", type=SIZE, default=None,
              help="query tile (Triton BLOCK_M, the Mapping's block_q; default: the mapping's)")
@click.option("--block-n", "--block-kv", "block_n", type=SIZE, default=None,
              help="key tile (Triton BLOCK_N, the Mapping's block_kv; default: the mapping's)")
@click.option("--num-warps", type=int, default=None, help="default: the mapping's (8)")
@click.option("--num-stages", type=int, default=None, help="default: the mapping's (3)")
@click.option("--grid-order", type=click.Choice(["query-major", "head-major"]),
              default=None,
              help="query-major: consecutive thread blocks share a head; head-major: they "
                   "belong to different heads (default: the mapping's, query-major)")
@click.option("--head-dim", type=SIZE, default=128, show_default=True)
@click.option("--dtype", default="bf16", show_default=True, help="fp16, bf16 or fp32")
@click.option("--split-kv", type=SIZE, default=None,
              help="key chunks of a split-K cascade (decode-splitk; default: the mapping's)")
@click.option("--tma", is_flag=True, help="read K and V through tensor descriptors (TMA)")
@click.option("--warp-specialize", is_flag=True,
              help="warp-specialise the unmasked key loop (implies --tma; num_warps >= 8)")
@click.option("--lazy-rescale", is_flag=True,
              help="rescale the accumulator only when a row maximum grows by more than 2**8")
@click.option("--fast-exp", is_flag=True, help="exp2 in the 16-bit input type (bf16/fp16)")
@click.option("--pipeline", is_flag=True,
              help="start the next key block's score product before the softmax")
@click.option("--kv-eviction", type=click.Choice(["none", "evict_first", "evict_last"]),
              default="none", show_default=True, help="L2 eviction hint on the K and V loads")
@click.option("--q-eviction", type=click.Choice(["none", "evict_first", "evict_last"]),
              default="none", show_default=True, help="L2 eviction hint on the Q load")
@click.option("--o-eviction", type=click.Choice(["none", "evict_first", "evict_last"]),
              default="none", show_default=True, help="L2 eviction hint on the O store")
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="write the source to this file instead of printing it")
@click.option("--json", "as_json", is_flag=True, help="print the plan read from the cascade")
def command(mapping_name, name, block_m, block_n, num_warps, num_stages, grid_order, head_dim,
            dtype, split_kv, tma, warp_specialize, lazy_rescale, fast_exp, pipeline, kv_eviction,
            q_eviction, o_eviction, out, as_json):
    """Generate Triton kernels and a launcher for cascade NAME (library name or .casc path).

    The kernel is generated from a Mapping -- the same object 'iosim evaluate' and 'iosim
    search' evaluate: its tiles, warps, stages, grid order and splits; the switches below
    (--tma, --fast-exp, ...) are code-generation knobs the models do not see.

    \b
    Examples:
      iosim codegen attention-1pass --head-dim 64 --dtype fp16
      iosim codegen decode-splitk --split-kv 8 --out decode.py
      iosim codegen decode-streamk --out serving.py   # the serving decode module
      iosim codegen attention-1pass --mapping fa2 --block-m 64 --num-warps 4
      iosim codegen attention-1pass --q-eviction evict_first --o-eviction evict_first
    """
    import cascades
    from iosim.gpu.kernels import kernel_for, kernel_mapping

    c = cascades.load(name)
    from cascades.triton.emit_decode import streamk_plan
    if streamk_plan(c) is not None:     # a whole batch's stream-K cascade: the serving module
        return _serving(c, locals())
    from cascades.triton.emit_mla import mla_plan
    if mla_plan(c) is not None:         # latent attention (MLA): the MLA decode module
        return _serving(c, locals(), mla=True)
    over = {k: v for k, v in dict(block_q=block_m, block_kv=block_n, num_warps=num_warps,
                                  num_stages=num_stages, grid_order=grid_order,
                                  split_kv=split_kv).items() if v is not None}
    from iosim.looptree.files import mapping_option
    kind = kernel_mapping(c, kv_len=1 << 20).kind
    m = mapping_option(c, mapping_name or kind, "h100", **over)   # a GPU's levels
    if mapping_name is None and m.preset.kernel_policy:
        m = m.with_(row_policy=m.preset.kernel_policy)
    knobs = dict(tma=tma, warp_specialize=warp_specialize, lazy_rescale=lazy_rescale,
                 fast_exp=fast_exp, pipeline=pipeline,
                 **{k: ("" if v == "none" else v) for k, v in
                    (("kv_eviction", kv_eviction), ("q_eviction", q_eviction),
                     ("o_eviction", o_eviction))})
    gen = kernel_for(c, m, head_dim=head_dim, dtype=dtype, **knobs)
    if as_json:
        echo_json(dict(gen.to_dict(), mapping=m.to_dict()))
        if out is None:
            return
    if out:
        atomic_write(out, gen.source)
        click.echo(f"wrote {out} ({len(gen.source.splitlines())} lines; kernels: "
                   f"{', '.join(gen.kernels)})", err=True)
    elif not as_json:
        click.echo(gen.source, nl=False)


def _serving(c, opts, mla=False):
    """The serving decode module (no split, split, stream-K; dense, ragged, paged caches) of a
    cascade that holds a whole batch of (request, K/V head) pairs, or with ``mla`` the MLA
    decode module of a latent-attention cascade: its tiling from the key block, warps, stages,
    head dim and dtype; the mapping's options do not apply."""
    from cascades.triton import Tiling
    from cascades.triton.emit_decode import generate_serving
    from iosim.errors import IosimError
    from iosim.serving import BLOCK_N, NUM_STAGES, NUM_WARPS
    fixed = [f"--{k.replace('_', '-')}" for k in ("mapping_name", "block_m", "grid_order", "tma",
                                                   "warp_specialize", "lazy_rescale", "fast_exp",
                                                   "pipeline")
             if opts[k] not in (None, False)]
    fixed += [f"--{k.replace('_', '-')}" for k in ("kv_eviction", "q_eviction", "o_eviction")
              if opts[k] != "none"]
    what = "MLA" if mla else "serving"
    if mla and click.get_current_context().get_parameter_source("head_dim").name != "DEFAULT":
        fixed.insert(0, "--head-dim")
    if fixed:
        raise IosimError(f"cascade '{c.name}' generates the {what} decode module (a program "
                         f"per share of all pairs' key blocks): {fixed[0].replace('-name', '')} "
                         f"does not apply; its options are --block-n, --num-warps, "
                         f"--num-stages, {'' if mla else '--head-dim, '}--dtype, --split-kv")
    if mla:     # the latent and rope dims are the kernel's (512 + 64), its tiling MLA_TILING
        from cascades.triton.emit_mla import MLA_TILING, generate_mla
        kw = {k: opts[k] for k in ("block_n", "num_warps", "num_stages", "split_kv")
              if opts[k] is not None}
        gen = generate_mla(c, Tiling(**{**MLA_TILING, **kw, "dtype": opts["dtype"]}))
    else:
        gen = None
    t = Tiling(block_n=opts["block_n"] or BLOCK_N, num_warps=opts["num_warps"] or NUM_WARPS,
               num_stages=opts["num_stages"] or NUM_STAGES, head_dim=opts["head_dim"],
               dtype=opts["dtype"], split_kv=opts["split_kv"] or 4)
    gen = gen or generate_serving(c, t)
    if opts["as_json"]:
        echo_json(gen.to_dict())
        if opts["out"] is None:
            return
    if opts["out"]:
        atomic_write(opts["out"], gen.source)
        click.echo(f"wrote {opts['out']} ({len(gen.source.splitlines())} lines; kernels: "
                   f"{', '.join(gen.kernels)})", err=True)
    elif not opts["as_json"]:
        click.echo(gen.source, nl=False)
