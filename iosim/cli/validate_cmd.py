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
_TIME_SETS = {name: Path(__file__).resolve().parents[2] / "experiments" / "data" /
              f"gpu_time_{name}.csv" for name in ("calibration", "validation")}


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


def _side_table(rows: list[dict]) -> str:
    lines = [f"{'launch':>26} {'grid':>11} {'set':>10} {'L2 err':>7} {'DRAM meas':>10} "
             f"{'analytic':>9} {'err':>7} {'simulated':>9} {'err':>7}"]
    for r in rows:
        if r.get("err_dram_read") is None:
            continue
        shape = (f"{r['batch']}x{r['heads']}x{r['seq']}x{r['head_dim']}"
                 f"{' causal' if str(r['causal']) == 'True' else ''}")
        if r["cascade"] != "attention-1pass":
            shape = f"{r['cascade']} {shape}"
        sim = r.get("pred_dram_read_bytes_simulated")
        es = r.get("err_dram_read_simulated")
        lines.append(
            f"{shape:>26} {r['grid_order']:>11} {r.get('set', ''):>10} "
            f"{(r.get('err_l2_read') or 0.0):+7.1%} {float(r['dram_read_bytes']) / 1e9:9.3f}G "
            f"{r['pred_dram_read_bytes'] / 1e9:8.3f}G {r['err_dram_read']:+7.1%} "
            + (f"{float(sim) / 1e9:8.3f}G {es:+7.1%}" if sim and es is not None
               else f"{'-':>9} {'-':>7}"))
    return "\n".join(lines)


@click.command("validate")
@click.option("--gpu", is_flag=True, help="measure on this machine's GPU (needs CUDA, torch, "
                                          "triton and Nsight Compute)")
@click.option("--shapes", default=None,
              help="BxHxNxD[-causal] list, e.g. '4x16x4096x128,1x8x65536x64-causal' "
                   "(default: the validation shapes, iosim.gpu.shapes)")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None,
              help="compare these recorded measurements instead of the committed ones")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="directory for gpu_ncu.csv and gpu_validation.csv (default: .iosim-gpu)")
@click.option("--l2", "l2_mode", type=click.Choice(["auto", "simulate"]), default="auto",
              show_default=True,
              help="auto: the analytical L2 model (iosim.l2.analytic, seconds), beside the "
                   "dynamic simulation's recorded predictions; simulate: re-run the dynamic "
                   "simulation (iosim.l2.simulate) on every launch (minutes)")
@click.option("--model", type=click.Choice(["dynamic", "lockstep", "lru"]), default="dynamic",
              show_default=True, help="--l2 simulate: which simulation (dynamic; lockstep: "
                                      "blocks in lock step with an LRU; lru: the dynamic "
                                      "schedule with an all-or-nothing LRU)")
@click.option("--kv-cost", type=click.Choice(["partitions", "readers", "shared", "sides"]),
              default="partitions", show_default=True,
              help="--l2 simulate: what a K/V line costs in L2 -- the two L2 partitions with "
                   "the measured side map, the readers rule, always a shared line, or the "
                   "sides rule")
@click.option("--l2-policy", type=click.Choice(["response", "nru"]), default=None,
              help="--l2 simulate: how each L2 partition answers a re-read -- a cache state of "
                   "NRU bits with CLOCK victims (the default where it applies) or the measured "
                   "reuse-distance response (faster)")
@click.option("--draws", type=click.IntRange(min=1), default=None,
              help="--l2 simulate: pace-noise draws; each launch is predicted by the draw with "
                   "the shortest makespan (default 3)")
@click.option("--time", "time_", is_flag=True,
              help="compare predicted with measured kernel times instead of bytes: the "
                   "recorded calibration and validation launches (or --csv FILE); with --gpu "
                   "re-measure those launches on this machine")
@click.option("--serving", is_flag=True,
              help="predicted (the serving model) against measured times of the recorded "
                   "serving decode launches (no split, split, stream-K; dense, ragged, paged), "
                   "or --csv FILE in their format; no GPU")
@click.option("--json", "as_json", is_flag=True, help="print rows and summary as JSON")
def command(gpu, shapes, csv_path, out_dir, l2_mode, model, kv_cost, l2_policy, draws,
            time_, serving, as_json):
    """Compare predicted L2 and DRAM bytes with Nsight Compute counters.

    Without --gpu: the recorded H100 measurements -- the validated launches, the launches
    registered with the dynamic simulation's predictions before they were measured, and those
    registered with the analytical model's -- against the default analytical L2 model, beside
    the dynamic simulation's recorded predictions.

    \b
    With --time: predicted (the parallel execution-time model) against measured kernel
    times of the generated kernels, per launch and summarised (median and 90th percentile of
    |error|, launches within 40%, the ranking of tilings per shape).

    \b
    Examples:
      iosim validate                      # recorded launches, both L2 models side by side
      iosim validate --time               # recorded kernel times vs the time model
      iosim validate --serving            # recorded serving decode launches vs the model
      iosim validate --time --gpu --out timings/   # re-measure them here
      iosim validate --l2 simulate        # re-run the dynamic simulation (minutes)
      iosim validate --l2 simulate --kv-cost readers
      iosim validate --gpu --shapes 4x16x4096x128,4x16x4096x128-causal
    """
    from iosim.gpu.validate import measure, require_gpu
    if serving:
        if gpu or time_ or shapes or out_dir or l2_mode != "auto" or model != "dynamic" \
                or kv_cost != "partitions" or l2_policy is not None or draws is not None:
            raise IosimError("--serving compares the recorded serving launches (--csv FILE "
                             "or the committed ones; --gpu, --time, --shapes, --out and the L2 "
                             "options do not apply): re-measure them with python "
                             "experiments/device/serving_decode.py")
        return _serving(csv_path, as_json)
    if time_:
        if shapes or l2_mode != "auto" or model != "dynamic" or kv_cost != "partitions" \
                or l2_policy is not None or draws is not None:
            raise IosimError("--time compares kernel times: --shapes, --l2 simulate, --model, "
                             "--kv-cost, --l2-policy and --draws are for the byte comparison")
        return _time(gpu, csv_path, out_dir, as_json)
    if l2_mode == "auto" and (model != "dynamic" or kv_cost != "partitions"
                              or l2_policy is not None or draws is not None):
        raise IosimError("--model, --kv-cost, --l2-policy and --draws choose the dynamic "
                         "simulation: use them with --l2 simulate")
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
        from iosim.gpu.compare import read_csv
        rows = read_csv(path)
        out = Path(out_dir) if out_dir else None
    if l2_mode == "simulate":
        return _simulate(rows, out, model, kv_cost, l2_policy, draws, as_json)
    from tqdm import tqdm

    from iosim.gpu.compare import (_key, analytic_row, recorded_simulation,
                                   registered_analytic_rows, registered_rows,
                                   side_by_side_summary)
    sim = recorded_simulation() if not gpu and csv_path is None else {}
    gen = []
    for r in rows:
        if r["impl"] == "generated":
            r = dict(r, set="validated")
            r["pred_dram_read_bytes_simulated"] = sim.get(_key(r))
            gen.append(r)
    if not gpu and csv_path is None:
        gen += registered_rows() + registered_analytic_rows()
    res = [analytic_row(r) for r in tqdm(gen, desc="launches", unit="launch",
                                         disable=None, leave=False)]
    s = side_by_side_summary(res)
    if _emit(res, s, out, as_json, _side_table(res)):
        return
    click.echo(f"device: {_device(res)}")
    for name, v in s.items():
        sim_txt = (f", the dynamic simulation {v['simulated_within_15pct']}/{v['simulated_launches']}"
                   if v["simulated_within_15pct"] is not None else "")
        click.echo(f"{name} launches: L2->SM reads exact on {v['l2_exact']}/{v['launches']}; "
                   f"DRAM reads within 15%: the analytical model {v['analytical_within_15pct']}"
                   f"/{v['launches']} (median |error| {v['analytical_median_abs_err']:.1%})"
                   f"{sim_txt}")


def _emit(rows, s, out, as_json, table: str) -> bool:
    """Write gpu_validation.csv under ``out``; print JSON (True: done) or the table."""
    from iosim.gpu.validate import write_csv
    if out is not None:
        write_csv(rows, os.path.join(out, "gpu_validation.csv"))
    if as_json:
        echo_json({"summary": s, "rows": rows})
        return True
    click.echo(table)
    return False


def _device(rows) -> str:
    return next((r.get("device") for r in rows if r.get("device")), "unknown device")


def _simulate(rows, out, model, kv_cost, l2_policy, draws, as_json):
    """The dynamic simulation on every recorded launch (slow)."""
    from iosim.gpu.compare import compare, summary
    from iosim.l2.simulate import FIRST_CLEAR_NO_STARTUP, GpuL2
    if kv_cost != "partitions" and model != "dynamic":
        raise IosimError(f"--kv-cost {kv_cost} needs the dynamic L2 model (--model dynamic)")
    if l2_policy == "nru" and (model != "dynamic" or kv_cost != "partitions"):
        raise IosimError("--l2-policy nru needs the dynamic L2 model and --kv-cost partitions")
    if draws is not None and model == "lockstep":
        raise IosimError("--draws needs a dynamic L2 model (--model dynamic or lru)")
    if l2_policy is None:
        l2_policy = "nru" if model == "dynamic" and kv_cost == "partitions" else "response"
    # the response goes with fetches that stop at chunk ends and rates without the startup
    older = {} if l2_policy == "nru" else FIRST_CLEAR_NO_STARTUP
    if draws is None:
        draws = older.get("pace_draws", GpuL2.pace_draws)
    older = {**older, "pace_draws": draws}
    if not as_json:
        click.echo("running the dynamic L2 simulation on every launch (minutes)...", err=True)
    rows = compare(rows, GpuL2(kv_weight=kv_cost, l2_policy=l2_policy,
                               prefetch_across_chunks=l2_policy == "nru", **older),
                   model=model, baseline=model != "lockstep", workers=os.cpu_count() or 1)
    s = summary(rows)
    if _emit(rows, s, out, as_json, _table(rows)):
        return
    click.echo(f"device: {_device(rows)}; {s['shapes']} launches; L2 reads within 5% on "
               f"{s['l2_read_within_5pct']}/{s['shapes']}; DRAM reads within 15% on "
               f"{s['dram_read_within_15pct']}/{s['shapes']} ({model} L2 simulation"
               f"{', K/V cost: ' + kv_cost if model == 'dynamic' else ''}"
               f"{', NRU cache state' if l2_policy == 'nru' else ''}"
               f"{f', fastest of {draws} draws' if draws > 1 else ''})")


def _time(gpu: bool, csv_path, out_dir, as_json: bool):
    """``iosim validate --time``: kernel times, predicted against measured."""
    from iosim.gpu.validate import require_gpu, write_csv
    from iosim.report import fmt_time
    from iosim.timing.launches import predict_rows, read_rows, set_summary, tiling_groups
    sets = {"file": Path(csv_path)} if csv_path else dict(_TIME_SETS)
    recorded = {name: read_rows(p) for name, p in sets.items()}
    if gpu:
        require_gpu()
        from iosim.gpu.timing import measure_launches
        out = Path(out_dir or ".iosim-gpu")
        for name in recorded:
            recorded[name] = measure_launches(recorded[name], progress=not as_json)
            write_csv(recorded[name], out / f"gpu_time_{name}.csv")
    result = {}
    for name, rows in recorded.items():
        pr = predict_rows(rows)
        result[name] = {"summary": set_summary(pr), "tilings": tiling_groups(pr), "rows": pr}
    if out_dir and not gpu:
        for name, v in result.items():
            write_csv(v["rows"], Path(out_dir) / f"gpu_time_{name}_predicted.csv")
    if as_json:
        echo_json({k: v for k, v in result.items()})
        return
    for name, v in result.items():
        rows = v["rows"]
        dev = next((r.get("device") for r in rows if r.get("device")), "unknown device")
        click.echo(f"{name} launches ({len(rows)}, measured on {dev}):")
        click.echo(f"  {'launch':58s} {'measured':>9} {'predicted':>9} {'error':>7} "
                   f"{'flash':>8} {'cuDNN':>8}  limited by")
        for r in rows:
            fl = float(r.get("sdpa_flash_ms") or "nan")
            cu = float(r.get("sdpa_cudnn_ms") or "nan")
            click.echo(f"  {r['label'][:58]:58s} {fmt_time(float(r['ms']) * 1e-3):>9} "
                       f"{fmt_time(r['pred_ms'] * 1e-3):>9} {r['err']:+7.1%} "
                       f"{fmt_time(fl * 1e-3) if fl == fl else '-':>8} "
                       f"{fmt_time(cu * 1e-3) if cu == cu else '-':>8}  {r.get('limiter', '')}")
        s = v["summary"]
        click.echo(f"  |error|: median {s['median']:.1%}, 90th percentile {s['p90']:.1%}, "
                   f"max {s['max']:.1%}; within 40%: {s['within_40']}/{s['n']}, within 25%: "
                   f"{s['within_25']}/{s['n']}")
        for g in v["tilings"]:
            click.echo(f"  tilings of {g['shape']}: Spearman {g['spearman']:.2f}; predicted best "
                       f"{g['predicted_best']} (measured {g['best_gap']:+.1%} behind the "
                       f"measured best {g['measured_best']})")
        click.echo("")


def _serving(csv_path, as_json: bool):
    """``iosim validate --serving``: the serving model against recorded decode launches."""
    from iosim.report import fmt_time
    from iosim.serving_measured import (RECORDED, label, predict_launches, read_launches,
                                        speedups, summary)
    paths = [Path(csv_path)] if csv_path else [p for p in RECORDED if p.is_file()]
    rows = [r for p in paths for r in predict_launches(read_launches(p))]
    s, sp = summary(rows), speedups(rows)
    if as_json:
        echo_json({"summary": s, "speedups": sp,
                   "rows": [dict(r, kv_lens=list(r["kv_lens"])) for r in rows]})
        return
    for p in paths:
        sub = [r for r in rows if r["source"] == p.name]
        click.echo(f"{p.name} ({len(sub)} launches, measured on {_device(sub)}):")
        click.echo(f"  {'launch':44s} {'measured':>9} {'predicted':>9} {'error':>7}  limited by")
        for r in sub:
            mark = "  (superseded paged kernel)" if r["superseded"] else ""
            click.echo(f"  {label(r)[:44]:44s} {fmt_time(r['ms'] * 1e-3):>9} "
                       f"{fmt_time(r['pred_ms'] * 1e-3):>9} {r['err']:+7.1%}  "
                       f"{r['limiter']}{mark}")
    click.echo("speedups (measured / predicted):")
    for x in sp:
        if x["measured"] > 1.2 or x["faster"] == "streamk" and x["slower"] == "split":
            click.echo(f"  {x['shape'][:40]:40s} {x['faster']:>7} over {x['slower']:7s} "
                       f"{x['measured']:6.2f}x {x['predicted']:6.2f}x {x['err']:+7.1%}")
    click.echo(f"|error| over {s['n']} current launches: median {s['median']:.1%}, "
               f"90th percentile {s['p90']:.1%}, max {s['max']:.1%}")
