"""``iosim evaluate``: bytes per memory level, FLOPs, time and the IO bound of one mapping."""
from __future__ import annotations

import click

from iosim.cli.common import OneLineErrors, echo_json
from iosim.cli.parallel_opts import parallel_options
from iosim.cli.params import SIZE
from iosim.errors import IosimError

POS = click.IntRange(min=1)

#: defaults every command shares (sweep explains its one difference, the hardware)
DEFAULT_HW = "h100"
DEFAULT_SEQ_LEN = 4096
DEFAULT_HEAD_DIM = 128
DEFAULT_DTYPE = "bf16"


def head_options(f):
    """--batch, --heads, --kv-heads (sizes take K/M suffixes)."""
    opts = [
        click.option("--batch", type=SIZE, default=1, show_default=True),
        click.option("--heads", type=SIZE, default=1, show_default=True,
                     help="Query heads per batch."),
        click.option("--kv-heads", "kv_heads", type=SIZE, default=None,
                     help="Key/value heads per batch (default: --heads). Grouped-query "
                          "attention: --heads / --kv-heads query heads share each K/V head; "
                          "--heads must be a multiple of --kv-heads."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def causal_option(f):
    return click.option(
        "--causal/--no-causal", "causal", default=None,
        help="Apply the cascade's causal mask (skip tiles above the diagonal) or not "
             "(default: the cascade's own, e.g. a file's 'param causal = true').")(f)


def shape_options(f):
    """Options shared by evaluate and search."""
    opts = [
        click.option("--hw", "hw", default=DEFAULT_HW, show_default=True, metavar="PRESET|FILE",
                     help="Hardware preset (h100, a100, two-level) or a TOML file."),
        click.option("--seq-len", "seq_len", type=SIZE, default=DEFAULT_SEQ_LEN,
                     show_default=True,
                     help="N: query rows (and keys, unless --kv-len); 4096, 4K, 128K, 1M."),
        click.option("--head-dim", "head_dim", type=SIZE, default=DEFAULT_HEAD_DIM,
                     show_default=True, help="d: head dimension (E = F)."),
        click.option("--kv-len", "kv_len", type=SIZE, default=None,
                     help="Keys/values (default: --seq-len)."),
        head_options,
        causal_option,
        click.option("--dtype", default=DEFAULT_DTYPE, show_default=True,
                     help="Element type: fp32, bf16, fp16, fp8, int8, int4."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def load_problem(name, hw, dtype, sram):
    """(cascade, hardware, sram bytes or None) with one-line errors."""
    from cascades.library import load
    from iosim.hardware import dtype_bytes, load_hardware, parse_sram
    dtype_bytes(dtype)
    c = load(name)
    h = load_hardware(hw)
    sram_b = parse_sram(sram, dtype) if sram is not None else None
    return c, h, sram_b


@click.command("evaluate", cls=OneLineErrors)
@click.argument("name", required=False, default="attention-1pass")
@shape_options
@click.option("--mapping", "mapping_name", default=None, metavar="NAME|FILE",
              help="fa2, fa1, unfused, fused-3pass, fused-2pass, decode-splitk, linear, "
                   "lightning2, saha-ye (default: the one the cascade's structure calls for; a "
                   "mapping that does not fit the cascade is refused, saying why), or a loop "
                   "tree of one's own in a .toml file (docs/mapping.md).")
@click.option("--show-mapping", is_flag=True,
              help="Print the mapping's loop tree and the loop nest it lowers to, then stop.")
@click.option("--block-m", "--block-q", "block_q", type=SIZE, default=None,
              help="Query tile (FlashAttention's B_r, Triton's BLOCK_M; default: the "
                   "mapping's, or the cascade's own query block; fa1 and saha-ye derive it "
                   "from the SRAM size).")
@click.option("--block-n", "--block-kv", "block_kv", type=SIZE, default=None,
              help="Key/value tile (B_c, Triton's BLOCK_N; default: the mapping's, or the "
                   "cascade's own key block, e.g. a file's 'param block_kv = 32').")
@click.option("--split-kv", type=SIZE, default=None, help="decode-splitk: number of splits.")
@click.option("--grid-order", type=click.Choice(["query-major", "head-major"]), default=None,
              help="Thread-block order (default query-major): query-major: consecutive "
                   "thread blocks share a head; head-major: they belong to different heads.")
@click.option("--num-warps", type=POS, default=None, help="Warps per program (default 8).")
@click.option("--num-stages", type=POS, default=None,
              help="Pipeline stages of the K/V loads (default 3).")
@click.option("--row-policy", type=click.Choice(["buffer", "spill", "recompute"]), default=None,
              help="fused-3pass/2pass: keep the score row/partials on chip, spill or recompute.")
@click.option("--sram", default=None, metavar="SIZE",
              help="Override the SRAM level's capacity: bytes with a unit (192KiB, 100KB) or "
                   "elements (4096el).")
@click.option("--l2", "l2_mode", type=click.Choice(["auto", "simulate", "off"]), default="auto",
              show_default=True,
              help="HBM behind a GPU's L2: 'auto' the fast analytical L2 model, 'simulate' the "
                   "slower dynamic simulation, 'off' counts every L2 read as an HBM read.")
@click.option("--kv-lens", default=None, metavar="LIST|@FILE",
              help="A ragged batch: the key length of each request, 1K,32K,128K or @file (one "
                   "per line, as a serving trace gives them); traffic and FLOPs are summed, "
                   "the time is one launch of all the requests' programs.")
@click.option("--block-density", type=click.FloatRange(min=0, max=1, min_open=True),
              default=None, metavar="FRACTION",
              help="A block-sparse cascade (a boolean mask over query and key tiles): the "
                   "fraction of tile pairs its mask keeps, e.g. 0.1 (default 1: dense).")
@click.option("--schedule", type=click.Choice(["nosplit", "split", "streamk"]), default=None,
              help="Decode: the generated serving kernel's schedule of the key work -- a "
                   "program per (request, K/V head) pair, FlashDecoding's split (--split-kv, "
                   "default its heuristic) or stream-K (LeanAttention: --programs equal "
                   "shares, default one per SM).")
@click.option("--programs", type=SIZE, default=None, help="--schedule streamk: programs.")
@click.option("--page-size", type=int, default=None, metavar="KEYS",
              help="Decode: a paged K/V cache of pages of KEYS keys (block-table reads "
                   "counted; implies --schedule split unless given).")
@parallel_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--symbolic", is_flag=True,
              help="Also print the count as closed forms in N, d, Br, Bc (and M).")
def command(name, hw, seq_len, head_dim, kv_len, batch, heads, kv_heads, causal, dtype,
            mapping_name, block_q, block_kv, split_kv, grid_order, num_warps, num_stages,
            row_policy, sram, l2_mode, kv_lens, block_density, schedule, programs, page_size,
            system, parallel, devices, ulysses_degree, layers, params, as_json, symbolic,
            show_mapping):
    """Evaluate cascade NAME (or a .casc file) with a mapping on a hardware model.

    Prints the bytes each memory level reads and writes (per tensor), the FLOPs, the predicted
    time (on a GPU preset the parallel execution-time model, with its breakdown; the roofline
    as a lower bound), the energy where the preset has per-access energies, the on-chip buffers, and the
    ratio of the backing-store traffic to the IO lower bound. The cascade's structure, never
    its name, decides the default mapping, which mappings fit and its masking: a copy of a
    library cascade under another name, or in a file, gives the same report.

    \b
      iosim evaluate                                    # attention-1pass, fa2, h100, N=4096, d=128
      iosim evaluate attention-1pass --hw h100 --seq-len 4096 --head-dim 128 --causal
      iosim evaluate attention-1pass --heads 32 --kv-heads 8 --seq-len 8K
      iosim evaluate flash1 --hw two-level --sram 100KiB --mapping fa1 --seq-len 1024 --head-dim 64
      iosim evaluate attention-3pass --mapping saha-ye --hw two-level --sram 1024el --json
      iosim evaluate attention-blocksparse --seq-len 16K --block-density 0.1
      iosim evaluate attention-window --seq-len 32K --causal      # a band of 256 keys
      iosim evaluate --system dgx-h100 --parallel striped --devices 8 --seq-len 256K --causal
    """
    from iosim.mapping import Shapes, resolve_causal
    from iosim.traffic import evaluate, symbolic_traffic
    c, h, sram_b = load_problem(name, hw, dtype, sram)
    causal = resolve_causal(c, causal)
    from iosim.serving import evaluate_serving, refuse_batched_cascade, refuse_with_schedule
    refuse_batched_cascade(c)
    from iosim.mla import latent_attention
    if latent_attention(c) is not None:     # MLA: one latent cache for all heads
        from iosim.cli.mla_opts import run_mla
        return run_mla(c, h, seq_len=seq_len, head_dim=head_dim, kv_len=kv_len,
                       kv_lens=kv_lens, batch=batch, heads=heads, kv_heads=kv_heads,
                       dtype=dtype, causal=causal, schedule=schedule, split_kv=split_kv,
                       programs=programs, page_size=page_size, as_json=as_json,
                       mapping=mapping_name, block_m=block_q, block_n=block_kv, sram=sram,
                       symbolic=symbolic, block_density=block_density, row_policy=row_policy,
                       grid_order=grid_order, num_warps=num_warps, num_stages=num_stages,
                       system=system, parallel=parallel, devices=devices,
                       show_mapping=show_mapping, l2=l2_mode)
    if schedule is not None or page_size is not None or programs is not None:
        from iosim.ragged import parse_lengths
        refuse_with_schedule(mapping=mapping_name, block_m=block_q, block_n=block_kv, sram=sram,
                             symbolic=symbolic, block_density=block_density,
                             row_policy=row_policy, grid_order=grid_order,
                             num_warps=num_warps, num_stages=num_stages)
        rep = evaluate_serving(c, h, n=seq_len, kv_lens=kv_lens and parse_lengths(kv_lens),
                               kv_len=kv_len or seq_len, batch=batch, e=head_dim, heads=heads,
                               kv_heads=kv_heads, dtype=dtype, causal=causal,
                               schedule=schedule or "split", split_kv=split_kv,
                               programs=programs, page_size=page_size, l2=l2_mode)
        return echo_json(rep.to_dict()) if as_json else click.echo(rep.render())
    over = {k: v for k, v in dict(block_q=block_q, block_kv=block_kv, split_kv=split_kv,
                                  row_policy=row_policy, grid_order=grid_order,
                                  num_warps=num_warps, num_stages=num_stages).items()
            if v is not None}
    from iosim.looptree.files import mapping_option
    m = mapping_option(c, mapping_name, h, **over)
    if m.preset.tiles == "square" and (block_q or block_kv):
        b = block_q or block_kv
        m = m.with_(block_q=b, block_kv=b)
    if system is not None or parallel is not None:
        from iosim.cli.parallel_opts import run_parallel
        return run_parallel(c, m, system=system, parallel=parallel, devices=devices,
                            ulysses_degree=ulysses_degree, layers=layers, params=params,
                            seq_len=seq_len, kv_len=kv_len, head_dim=head_dim, heads=heads,
                            kv_heads=kv_heads, batch=batch, dtype=dtype, causal=causal,
                            as_json=as_json, l2_mode=l2_mode, sram_bytes=sram_b)
    if kv_lens is not None:
        return _ragged(c, m, h, kv_lens, seq_len, head_dim, kv_len, batch, heads, kv_heads,
                       dtype, causal, sram_b, l2_mode, block_density, as_json, symbolic)
    shapes = Shapes(n=seq_len, e=head_dim, kv_len=kv_len, batch=batch, heads=heads,
                    kv_heads=kv_heads, dtype=dtype, causal=causal,
                    block_density=1.0 if block_density is None else block_density)
    if show_mapping:
        from iosim.looptree.files import show_mapping as show
        return click.echo(show(m, c, shapes, h, sram_bytes=sram_b))
    if m.tree is not None:
        from iosim.looptree.files import check_tiles
        check_tiles(m, shapes)
    rows = seq_len * (shapes.group if m.packs_rows else 1)
    if block_q is not None and block_q > rows:
        what = (f"--seq-len {seq_len}" if rows == seq_len
                else f"the {rows} rows of --seq-len x query heads per K/V head")
        raise IosimError(f"--block-m {block_q} is larger than {what}")
    if block_kv is not None and block_kv > shapes.kv_len:
        raise IosimError(f"--block-n {block_kv} is larger than the {shapes.kv_len} keys")
    if split_kv is not None and m.block_kv:
        blocks = -(-shapes.kv_len // m.block_kv)
        if split_kv > blocks:
            raise IosimError(f"--split-kv {split_kv} exceeds the {blocks} key blocks "
                             f"({shapes.kv_len} keys / block_kv {m.block_kv})")
    from iosim.l2.backing import backing_for
    rep = evaluate(c, m, h, shapes, sram_bytes=sram_b,
                   backing_model=backing_for(c, m, h, shapes, l2_mode), l2="off")
    sym = None
    if symbolic:
        sym = symbolic_traffic(rep.mapping_resolved if not m.derived_blocks else m, c,
                               causal=causal, self_attention=kv_len in (None, seq_len),
                               grouped=shapes.group > 1)
    if as_json:
        d = rep.to_dict()
        if sym is not None:
            d["symbolic"] = {k: ({kk: str(vv) for kk, vv in v.items()} if isinstance(v, dict)
                                 else str(v)) for k, v in sym.items()}
        echo_json(d)
        return
    click.echo(rep.render())
    if sym is not None:
        click.echo("")
        click.echo("Closed forms (elements per batch and head; N queries, Nk keys, d head dim, "
                   "Br/Bc = block_q/block_kv, M = SRAM elements"
                   + (", G query heads per K/V head, counts per K/V head" if shapes.group > 1
                      else "") + "; ceiling kept exact):")
        for t, v in sym.items():
            if t == "total":
                continue
            for k in ("read", "write"):
                if v[k] != 0:
                    click.echo(f"  {t} {k:5s} = {v[k]}")
        click.echo(f"  total      = {sym['total']}")


def _ragged(c, m, h, kv_lens, seq_len, head_dim, kv_len, batch, heads, kv_heads, dtype, causal,
            sram_b, l2_mode, block_density, as_json, symbolic):
    """``--kv-lens``: one launch over requests of different key lengths."""
    from iosim.cli.common import echo_json
    from iosim.ragged import evaluate_ragged, parse_lengths
    lens = parse_lengths(kv_lens)
    for bad, why in ((kv_len is not None, "--kv-len (each request has its own)"),
                     (batch not in (1, len(lens)), f"--batch {batch} (the batch is the "
                                                   f"{len(lens)} requests of --kv-lens)"),
                     (sram_b is not None, "--sram"), (l2_mode == "simulate", "--l2 simulate"),
                     (block_density is not None, "--block-density"), (symbolic, "--symbolic")):
        if bad:
            raise IosimError(f"--kv-lens does not go with {why}")
    rep = evaluate_ragged(c, m, h, n=seq_len, kv_lens=lens, e=head_dim, heads=heads,
                          kv_heads=kv_heads, dtype=dtype, causal=causal, l2=l2_mode)
    if as_json:
        echo_json(rep.to_dict())
    else:
        click.echo(rep.render())
