"""``iosim evaluate`` on a latent-attention (MLA) cascade: the options that apply, one-line
refusals of those that do not, the report (:mod:`iosim.mla`)."""
from __future__ import annotations

import click

from iosim.errors import IosimError


def run_mla(c, h, *, seq_len, head_dim, kv_len, kv_lens, batch, heads, kv_heads, dtype, causal,
            schedule, split_kv, programs, page_size, as_json, **unused):
    """Evaluate ``c`` with :func:`iosim.mla.evaluate_mla`; ``unused``: options the MLA model
    fixes itself, refused by name when given."""
    from iosim.cli.common import echo_json
    from iosim.mla import evaluate_mla
    for k, v in unused.items():
        if v not in (None, False, "auto"):
            raise IosimError(f"--{k.replace('_', '-')} does not go with an MLA cascade "
                             f"('{c.name}'): its decode kernel's tiling and schedule are "
                             f"modelled (--schedule, --split-kv, --programs, --page-size)")
    if kv_heads not in (None, 1):
        raise IosimError(f"--kv-heads {kv_heads}: an MLA cascade has one latent cache shared "
                         f"by all query heads")
    lens = None
    if kv_lens is not None:
        from iosim.ragged import parse_lengths
        if kv_len is not None:
            raise IosimError("--kv-lens does not go with --kv-len (each request has its own)")
        lens = parse_lengths(kv_lens)
    rep = evaluate_mla(c, h, n=seq_len, kv_lens=lens, kv_len=kv_len or seq_len, batch=batch,
                       heads=heads, value_dim=head_dim, dtype=dtype, causal=causal,
                       schedule=schedule or "split", split_kv=split_kv, programs=programs,
                       page_size=page_size)
    return echo_json(rep.to_dict()) if as_json else click.echo(rep.render())
