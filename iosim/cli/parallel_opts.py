"""``iosim evaluate --system PRESET --parallel SCHEME --devices P``: the multi-device options and
their report (the model lives in :mod:`iosim.parallel`)."""
from __future__ import annotations

import click

from iosim.cli.params import SIZE
from iosim.errors import IosimError

PARALLEL_CHOICES = ("ring", "striped", "ulysses", "usp", "kv-shard", "offload")


def parallel_options(f):
    """--system, --parallel, --devices, --ulysses-degree, --layers, --params."""
    opts = [
        click.option("--system", default=None, metavar="PRESET|FILE",
                     help="A system of devices and links (dgx-h100, dgx-h100-2node, pcie5-host, "
                          "lamina, dgx-a100, tpuv4-16) or a TOML file: with --parallel, model "
                          "the attention split over several devices."),
        click.option("--parallel", "parallel", type=click.Choice(PARALLEL_CHOICES), default=None,
                     help="How attention is split: ring, striped (key/value blocks rotate "
                          "around a ring), ulysses (heads, all-to-all), usp (both), kv-shard "
                          "(decode over a sharded KV cache), offload (attention on memory "
                          "devices)."),
        click.option("--devices", type=SIZE, default=None,
                     help="Devices to split over (default: all of the system's)."),
        click.option("--ulysses-degree", "ulysses_degree", type=SIZE, default=None,
                     help="usp: devices per all-to-all group (default: the largest divisor of "
                          "--devices not above --heads)."),
        click.option("--layers", type=SIZE, default=1, show_default=True,
                     help="Attention layers (times and bytes multiply; offload: the model's)."),
        click.option("--params", "params", default=None, metavar="COUNT",
                     help="offload: the model's weight count, e.g. 70B."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def run_parallel(c, m, *, system, parallel, devices, ulysses_degree, layers, params, seq_len,
                 kv_len, head_dim, heads, kv_heads, batch, dtype, causal, as_json,
                 l2_mode="auto", sram_bytes=None):
    """Evaluate and print the multi-device model; with ``as_json`` the single-device report of
    the whole problem on one of the system's devices, with the ``parallel`` object added."""
    from iosim.cli.common import echo_json
    from iosim.parallel.model import Problem, evaluate_parallel
    from iosim.parallel.offload import parse_count
    from iosim.parallel.system import load_system
    if parallel is None or system is None:
        raise IosimError("--system and --parallel go together (e.g. --system dgx-h100 "
                         "--parallel ring)")
    s = load_system(system)
    p = devices if devices is not None else s.devices
    prob = Problem(n=seq_len, d=head_dim, kv_len=kv_len, heads=heads, kv_heads=kv_heads,
                   batch=batch, dtype=dtype, causal=bool(causal), layers=layers,
                   params=parse_count(params) if params is not None else 0.0)
    res = evaluate_parallel(c, m, s, prob, parallel, p, ulysses=ulysses_degree)
    if as_json:
        d = _single(c, m, s.device, prob, l2_mode, sram_bytes).to_dict()
        d["parallel"] = res.to_dict()
        echo_json(d)
        return
    click.echo(res.render())


def _single(c, m, hw, prob, l2_mode, sram_bytes):
    """The single-device report (``iosim evaluate`` without --parallel) on ``hw``."""
    from iosim.l2.backing import backing_for
    from iosim.mapping import Shapes
    from iosim.traffic import evaluate
    shapes = Shapes(n=prob.n, e=prob.d, kv_len=prob.kv_len, batch=prob.batch, heads=prob.heads,
                    kv_heads=prob.kv_heads, dtype=prob.dtype, causal=prob.causal)
    return evaluate(c, m, hw, shapes, sram_bytes=sram_bytes,
                    backing_model=backing_for(c, m, hw, shapes, l2_mode), l2="off")
