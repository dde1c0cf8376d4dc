"""``iosim evaluate``: bytes per memory level, FLOPs, time and the IO bound of one mapping."""
from __future__ import annotations

import click

from iosim.cli.common import echo_json
from iosim.errors import IosimError


class OneLineErrors(click.Command):
    """Turn click's parameter errors into one-line :class:`IosimError` (exit 2, no usage)."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.exceptions.NoSuchOption as e:
            raise IosimError(e.format_message()) from None
        except click.UsageError as e:
            msg = " ".join(e.format_message().split())
            raise IosimError(f"{msg} (see 'iosim {self.name} --help')") from None


POS = click.IntRange(min=1)


def shape_options(f):
    """Options shared by evaluate and search."""
    opts = [
        click.option("--hw", "hw", default="h100", show_default=True, metavar="PRESET|FILE",
                     help="Hardware preset (h100, a100, two-level) or a TOML file."),
        click.option("--seq-len", "seq_len", type=POS, default=4096, show_default=True,
                     help="N: query rows (and keys, unless --kv-len)."),
        click.option("--head-dim", "head_dim", type=POS, default=128, show_default=True,
                     help="d: head dimension (E = F)."),
        click.option("--kv-len", "kv_len", type=POS, default=None,
                     help="Keys/values (default: --seq-len)."),
        click.option("--batch", type=POS, default=1, show_default=True),
        click.option("--heads", type=POS, default=1, show_default=True),
        click.option("--causal", is_flag=True, help="Causal mask: skip tiles above the diagonal."),
        click.option("--dtype", default="bf16", show_default=True,
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
@click.option("--mapping", "mapping_name", default=None, metavar="NAME",
              help="fa2, fa1, unfused, fused-3pass, fused-2pass, decode-splitk, linear, "
                   "lightning2, saha-ye (default: the cascade's).")
@click.option("--block-m", "--block-q", "block_q", type=POS, default=None,
              help="Query tile (FlashAttention's B_r, Triton's BLOCK_M).")
@click.option("--block-n", "--block-kv", "block_kv", type=POS, default=None,
              help="Key/value tile (B_c, Triton's BLOCK_N).")
@click.option("--split-kv", type=POS, default=None, help="decode-splitk: number of splits.")
@click.option("--row-policy", type=click.Choice(["buffer", "spill", "recompute"]), default=None,
              help="fused-3pass/2pass: keep the score row/partials on chip, spill or recompute.")
@click.option("--sram", default=None, metavar="SIZE",
              help="Override the SRAM level's capacity: bytes with a unit (192KiB, 100KB) or "
                   "elements (4096el).")
@click.option("--l2", "l2_mode", type=click.Choice(["auto", "off"]), default="auto",
              show_default=True,
              help="HBM behind a GPU's L2: 'auto' simulates L2 hits for the FlashAttention-2 "
                   "kernel (iosim.l2.simulate); 'off' counts every L2 read as an HBM read.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--symbolic", is_flag=True,
              help="Also print the count as closed forms in N, d, Br, Bc (and M).")
def command(name, hw, seq_len, head_dim, kv_len, batch, heads, causal, dtype, mapping_name,
            block_q, block_kv, split_kv, row_policy, sram, l2_mode, as_json, symbolic):
    """Evaluate cascade NAME (or a .casc file) with a mapping on a hardware model.

    Prints the bytes each memory level reads and writes (per tensor), the FLOPs, a roofline
    time, the energy where the preset has per-access energies, the on-chip buffers, and the
    ratio of the backing-store traffic to the IO lower bound.

    \b
      iosim evaluate                                    # attention-1pass, fa2, h100, N=4096, d=128
      iosim evaluate attention-1pass --hw h100 --seq-len 4096 --head-dim 128 --causal
      iosim evaluate flash1 --hw two-level --sram 100KiB --mapping fa1 --seq-len 1024 --head-dim 64
      iosim evaluate attention-3pass --mapping saha-ye --hw two-level --sram 1024el --json
    """
    from iosim.mapping import Shapes, default_mapping, get_mapping
    from iosim.traffic import evaluate, symbolic_traffic
    c, h, sram_b = load_problem(name, hw, dtype, sram)
    over = {}
    if block_q is not None:
        over["block_q"] = block_q
    if block_kv is not None:
        over["block_kv"] = block_kv
    if split_kv is not None:
        over["split_kv"] = split_kv
    if row_policy is not None:
        over["row_policy"] = row_policy
    m = (get_mapping(mapping_name, cascade=c.name, **over) if mapping_name
         else default_mapping(c.name, **over))
    if m.kind == "saha-ye" and (block_q or block_kv):
        b = block_q or block_kv
        m = m.with_(block_q=b, block_kv=b)
    kv = kv_len or seq_len
    if block_q is not None and block_q > seq_len:
        raise IosimError(f"--block-m {block_q} is larger than --seq-len {seq_len}")
    if block_kv is not None and block_kv > kv:
        raise IosimError(f"--block-n {block_kv} is larger than the {kv} keys")
    shapes = Shapes(n=seq_len, e=head_dim, kv_len=kv_len, batch=batch, heads=heads,
                    dtype=dtype, causal=causal)
    from iosim.l2.backing import backing_for
    rep = evaluate(c, m, h, shapes, sram_bytes=sram_b,
                   backing_model=backing_for(c.name, m, h, shapes, l2_mode))
    sym = None
    if symbolic:
        sym = symbolic_traffic(rep.mapping_resolved if not m.derived_blocks else m, c,
                               causal=causal, self_attention=kv_len in (None, seq_len))
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
                   "Br/Bc = block_q/block_kv, M = SRAM elements; ceiling kept exact):")
        for t, v in sym.items():
            if t == "total":
                continue
            for k in ("read", "write"):
                if v[k] != 0:
                    click.echo(f"  {t} {k:5s} = {v[k]}")
        click.echo(f"  total      = {sym['total']}")
