"""``iosim validate``: the simulator's predictions against GPU hardware counters.

``iosim validate --gpu`` measures on this machine's GPU (Nsight Compute, see iosim.gpu) and
compares; without ``--gpu`` it compares the recorded measurements
(``experiments/data/gpu_ncu.csv``, or ``--csv FILE``) with the current model.
"""
from __future__ import annotations

import os
from pathlib import Path

import click

from iosim.cli.common import echo_json
from iosim.errors import IosimError

_RECORDED = Path(__file__).resolve().parents[2] / "experiments" / "data" / "gpu_ncu.csv"


def _table(rows: list[dict]) -> str:
    lines = [f"{'shape':>24} {'grid':>11} {'L2 meas':>9} {'L2 pred':>9} {'err':>7} "
             f"{'DRAM meas':>10} {'DRAM pred':>10} {'err':>7} {'xQKV':>6}"]
    for r in rows:
        if r["impl"] != "generated" or r["cascade"] != "attention-1pass":
            continue
        shape = (f"{r['batch']}x{r['heads']}x{r['seq']}x{r['head_dim']}"
                 f"{' causal' if str(r['causal']) == 'True' else ''}")
        meas_l2 = float(r.get("l1_from_l2_read_bytes") or "nan")
        e1 = r.get("err_l2_read")
        e2 = r.get("err_dram_read")
        lines.append(
            f"{shape:>24} {r['grid_order']:>11} {meas_l2 / 1e9:8.3f}G "
            f"{(r.get('pred_l2_read_bytes') or float('nan')) / 1e9:8.3f}G "
            f"{(e1 if e1 is not None else float('nan')):+7.1%} "
            f"{float(r['dram_read_bytes']) / 1e9:9.3f}G "
            f"{(r.get('pred_dram_read_bytes') or float('nan')) / 1e9:9.3f}G "
            f"{(e2 if e2 is not None else float('nan')):+7.1%} "
            f"{(r.get('dram_over_qkv') or float('nan')):6.1f}")
    return "\n".join(lines)


@click.command("validate")
@click.option("--gpu", is_flag=True, help="measure on this machine's GPU (needs CUDA, torch, "
                                          "triton and Nsight Compute)")
@click.option("--shapes", default=None,
              help="BxHxNxD[-causal] list, e.g. '4x16x4096x128,1x8x65536x64-causal' "
                   "(default: the 16 shapes of the issue)")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None,
              help="compare these recorded measurements instead of the committed ones")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="directory for gpu_ncu.csv and gpu_validation.csv (default: .iosim-gpu)")
@click.option("--model", type=click.Choice(["dynamic", "lockstep", "lru"]), default="dynamic",
              show_default=True, help="L2 model for the DRAM prediction (iosim.l2.simulate)")
@click.option("--kv-cost", type=click.Choice(["partitions", "readers", "shared", "sides"]),
              default="partitions", show_default=True,
              help="what a K/V line costs in L2 (GpuL2.kv_weight): the two L2 partitions with "
                   "the measured side map (the default), the readers rule (the default before "
                   "round 7), always a shared line, or the earlier sides rule (dynamic model "
                   "only)")
@click.option("--l2-policy", type=click.Choice(["response", "nru"]), default=None,
              help="how each L2 partition answers a re-read (GpuL2.l2_policy): a cache state "
                   "of NRU bits with hashed sets (CLOCK victims and each block's measured "
                   "startup since round 13), fetches running on across the model's chunk ends "
                   "(the default since round 11; needs --kv-cost partitions and the dynamic "
                   "model) or the measured reuse-distance response with fetches stopping at "
                   "chunk ends (the default before; 1-7x faster). Default: nru where it "
                   "applies, else response")
@click.option("--draws", type=click.IntRange(min=1), default=None,
              help="pace-noise draws of the dynamic model; each launch is predicted by the draw "
                   "with the shortest makespan (GpuL2.pace_draws; default 3 since round 15: "
                   "all 34 recorded launches within 15%; 1: seed 0 alone, the default of rounds "
                   "13-15, 33 of 34, a third of the time)")
@click.option("--json", "as_json", is_flag=True, help="print rows and summary as JSON")
def command(gpu, shapes, csv_path, out_dir, model, kv_cost, l2_policy, draws, as_json):
    """Compare predicted L2 and DRAM bytes with Nsight Compute counters.

    \b
    Examples:
      iosim validate                      # recorded H100 measurements vs the model
      iosim validate --kv-cost readers    # the same with the readers rule for K/V lines
      iosim validate --l2-policy response # the model before round 11 (faster)
      iosim validate --draws 1            # seed 0 of the pace noise alone (rounds 13-15)
      iosim validate --gpu --shapes 4x16x4096x128,4x16x4096x128-causal
    """
    from iosim.gpu.compare import compare, read_csv, summary
    from iosim.l2.simulate import DEFAULT_ROUNDS_11_13, GpuL2
    if kv_cost != "partitions" and model != "dynamic":
        raise IosimError(f"--kv-cost {kv_cost} needs the dynamic L2 model (--model dynamic)")
    if l2_policy == "nru" and (model != "dynamic" or kv_cost != "partitions"):
        raise IosimError("--l2-policy nru needs the dynamic L2 model and --kv-cost partitions")
    if draws is not None and model == "lockstep":
        raise IosimError("--draws needs a dynamic L2 model (--model dynamic or lru)")
    if l2_policy is None:
        l2_policy = "nru" if model == "dynamic" and kv_cost == "partitions" else "response"
    from iosim.gpu.validate import measure, require_gpu, write_csv
    if gpu:
        require_gpu()
        from iosim.gpu.shapes import parse_shapes
        sh = parse_shapes(shapes) if shapes else None
        out = Path(out_dir or ".iosim-gpu")
        rows = measure(sh, out, extras=shapes is None)
    else:
        if shapes:
            raise IosimError("--shapes selects what to measure: use it with --gpu")
        path = Path(csv_path) if csv_path else _RECORDED
        if not path.exists():
            raise IosimError(f"no recorded measurements at {path}")
        rows = read_csv(path)
        out = Path(out_dir) if out_dir else None
    # the response goes with the fetches that stop at chunk ends and the rates without the
    # startup (the model before round 11)
    older = {} if l2_policy == "nru" else DEFAULT_ROUNDS_11_13
    if draws is None:        # the default's draws (one with the model before round 11)
        draws = older.get("pace_draws", GpuL2.pace_draws)
    older = {**older, "pace_draws": draws}
    rows = compare(rows, GpuL2(kv_weight=kv_cost, l2_policy=l2_policy,
                               prefetch_across_chunks=l2_policy == "nru",
                               **older),
                   model=model, baseline=model != "lockstep", workers=os.cpu_count() or 1)
    if out is not None:
        write_csv(rows, os.path.join(out, "gpu_validation.csv"))
    s = summary(rows)
    if as_json:
        echo_json({"summary": s, "rows": rows})
        return
    click.echo(_table(rows))
    dev = next((r.get("device") for r in rows if r.get("device")), "unknown device")
    click.echo(f"device: {dev}; {s['shapes']} launches; L2 reads within 5% on "
               f"{s['l2_read_within_5pct']}/{s['shapes']}; DRAM reads within 15% on "
               f"{s['dram_read_within_15pct']}/{s['shapes']} ({model} L2 model"
               f"{', K/V cost: ' + kv_cost if model == 'dynamic' else ''}"
               f"{', NRU cache state, fetches across chunks' if l2_policy == 'nru' else ''}"
               f"{f', fastest of {draws} draws' if draws > 1 else ''})")
