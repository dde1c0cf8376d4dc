"""Pre-register the L2 model's predictions for launches that are not validated shapes (no GPU).

    python experiments/l2_research/preregister_unseen.py --round N --out DIR
                                        # batch N of ROUNDS (a new one) -> DIR/gpu_unseenN.csv
    python experiments/l2_research/preregister_unseen.py --figure --out DIR
                                        # DIR/gpu_unseen.png from the measured batches

The predictions (DRAM read bytes from iosim.l2.simulate, L2->SM bytes from iosim.traffic) and the
model's commit are written, and committed (copied to experiments/data/gpu_unseenN.csv), before
the device measures the launches (experiments/device/measure_unseen.py). Round 1 (gpu_unseen.csv) was registered with the model
of commit c5901b4; round 2 with the model that adds block pace noise and L2-partition copies;
round 3 with the model whose K/V line cost depends on how many blocks read it (commit a1395ca);
round 4 with the model that adds the two-block pace noise and the causal share (d=64 only:
mostly d=64 launches, one d=128 control); round 5 with the same model (unchanged since round 4:
more out-of-sample launches for it, across the regimes). Round 6 registers two predictions per
launch: the default model's (``pred_dram_read_bytes``) and the same model with the two L2
partitions modelled instead of the readers rule (``GpuL2(kv_weight="partitions")``,
``pred_dram_read_bytes_partitions``), on launches where the two differ most (d=64 head-major)
and two controls where they agree (d=128 causal head-major, causal query-major at the cliff).
Round 7 registers the same two models again (unchanged since round 6; the partitions model was
within 15% on 33 of the 48 earlier launches post hoc, the default on 30) on launches across the
regimes the earlier rounds missed: non-causal d=128 head-major with many heads, causal
head-major at d=128 and d=64, non-causal d=64 head-major at small N, query-major at the cliff.
From round 8 the default is the partitions model (after round 7); rounds from 8 register it
(``pred_dram_read_bytes``) and the readers rule next to it (``pred_dram_read_bytes_readers``).
Round 9 registers, next to them, the same model with each L2 partition an NRU cache state
instead of the reuse-distance response (``GpuL2(l2_policy="nru")``,
``pred_dram_read_bytes_nru``, the NRU state of commit 57efadf, corrected after the measurement:
post hoc within 15% on 31 of the 34 validated launches and 48 of the 64 of rounds 1-8, the
default on 30 and 46), on launches where the two differ: causal d=128
at the cliff (query-major and head-major), d=64 head-major at small N (where NRU predicts
fewer misses), and controls. Round 10 registers the same three after the NRU state's sets were
hashed (balanced, like an XOR set index: ``nru_set_map="hashed"``, commit 8cb8305; post hoc
within 15% on 30 of the 34 validated launches and 46 of the 64 of rounds 1-8, as the default,
with a mean error of 8.5% against 9.8% over all 106): causal query-major at and beyond the
cliff, where the two differ most, causal head-major d=128 and d=64, d=64 head-major at small
N, and a non-causal d=128 control. Round 11 registers, next to those three, the NRU state with
the fetches running on across the model's chunk ends as the kernel's pipeline does
(``GpuL2(l2_policy="nru", prefetch_across_chunks=True)``, ``pred_dram_read_bytes_nru_prefetch``;
post hoc within 15% on 32 of the 34 validated launches, 50 of the 64 of rounds 1-8, 7 of 8 in
rounds 9 and 10 each, against the default's 30, 46, 5 and 4), on launches where it differs
from the default: causal d=128 head-major at 16K-32K (fewer misses) and 24K (more), causal
query-major at and past the cliff, causal d=64 head-major at 4K, d=64 head-major at 1K, and
a 64K causal d=128 head-major control where the two agree. From round 12 the default is that
NRU state with fetches across chunk ends (after round 11); rounds from 12 register it
(``pred_dram_read_bytes``) and the model of rounds 7-10 next to it
(``GpuL2(l2_policy="response", prefetch_across_chunks=False)``,
``pred_dram_read_bytes_response``). Round 12's launches were chosen across the regimes before
either model was run on them: causal head-major at d=64 (24K) and d=128 (2K x 48 heads, 8K x
20, 40K x 10), non-causal head-major at d=128 (8K x 20) and d=64 (4K x 60), query-major at
d=64 (48K non-causal, 32K causal). Round 13 registers, next to the default (unchanged since
round 12), the two options of the sixteenth session and the two together: CLOCK's victim rule
(``GpuL2(nru_victim="clock")``, ``pred_dram_read_bytes_clock``; post hoc within 15% on 32 of
the 34 validated launches, 109 of the 110 measured schedules replayed), each block's measured
startup (``GpuL2(**BLOCK_STARTUP)``, ``pred_dram_read_bytes_startup``; 31 of 34) and both
(``pred_dram_read_bytes_clock_startup``; 33 of 34), each with its makespan; the launches were
chosen before any of the four was run on them: d=64 head-major at 1K (CLOCK's gain) and
causal at 48K (both options over-count the validated 64K one), causal query-major d=128 at
and past the cliff, causal head-major d=64 at 8K and d=128 at 28K, non-causal head-major
d=128 at 4K, non-causal query-major d=64 at 56K. From round 14 the default is CLOCK with each block's startup (both
together, after round 13: 6 of its 8, the default 5); rounds from 14 register it, round 14
the default of rounds 11-13 next to it (``GpuL2(**FIRST_CLEAR_NO_STARTUP)``,
``pred_dram_read_bytes_rounds_11_13``). Round 14 also registers the default with
work-conserving SM sharing (``GpuL2(sm_sharing="work-conserving")``,
``pred_dram_read_bytes_conserving``, with its makespan: the time a block of a two-block SM
cannot use goes to the other, as the traced d=64 schedules show, experiments/partner_pace.py;
it changes d=64 launches only); the launches were chosen before any model was run on them:
causal head-major d=64 at 40K (the thrash regime of the one validated miss), 14K x 18 heads and
6K x 24, non-causal head-major d=64 at 4K x 42, causal head-major d=128 at 20K x 12, causal
query-major d=128 at 60K x 4 (the cliff), non-causal query-major d=64 at 4K x 48 (K/V read
once) and 48K x 10. Round 15 registers, next to the default, the fastest of three draws of
the blocks' pace noise (``GpuL2(pace_draws=3)``, ``pred_dram_read_bytes_draws3``, with its
makespan): where the model's draws split between the convoy state and the state in which
nearly every block misses, the GPU's kernel time matches the fast draws; the launches were
chosen before either ran on them, mostly in that regime: causal head-major d=64 at 56K x 8,
64K x 7 and 36K x 12, d=128 at 60K x 6 and 48K x 9, non-causal head-major d=128 at 32K x 12,
causal query-major d=128 at 40K x 6, non-causal query-major d=64 at 8K x 16 (K/V read once).
Round 16 registers the default since round 15, the fastest of three draws, next to seed 0
alone (the default of rounds 13-15, ``GpuL2(**ONE_PACE_DRAW)``,
``pred_dram_read_bytes_seed0``, with its makespan); the launches were chosen before either
ran on them, across the regimes: causal head-major d=64 at 56K x 6 and 32K x 10, d=128 at
52K x 7, non-causal head-major d=64 at 12K x 2 x 10 and d=128 at 10K x 20, causal head-major
d=64 at 7K x 2 x 12, causal query-major d=128 at 48K x 5, non-causal query-major d=128 at
8K x 4 x 8.
"""
from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from iosim.gpu.compare import compare_row, read_csv  # noqa: E402
from iosim.gpu.validate import VALIDATION_TILING  # noqa: E402
from iosim.l2.simulate import (BLOCK_STARTUP, FIRST_CLEAR_NO_STARTUP, ONE_PACE_DRAW,  # noqa: E402
                           GpuL2)

#: the models registered next to each round's default, as they were then: the rates without
#: each block's startup and NRU's first-clear victim (the default of rounds 11-13)
_R = FIRST_CLEAR_NO_STARTUP

DATA = Path(__file__).resolve().parents[1] / "data"

#: (B, H, N, d, causal, grid order); no (B*H, N, d, mask, order) of a validated launch or of an
#: earlier round (the kernel's grid flattens B and H)
ROUNDS = {
    16: [
        (1, 6, 57344, 64, True, "head-major"),
        (1, 10, 32768, 64, True, "head-major"),
        (1, 7, 53248, 128, True, "head-major"),
        (2, 10, 12288, 64, False, "head-major"),
        (1, 20, 10240, 128, False, "head-major"),
        (2, 12, 7168, 64, True, "head-major"),
        (1, 5, 49152, 128, True, "query-major"),
        (4, 8, 8192, 128, False, "query-major"),
    ],
    2: [
        (1, 32, 8192, 64, False, "head-major"),
        (2, 8, 32768, 128, True, "head-major"),
        (6, 8, 4096, 128, False, "head-major"),
        (1, 24, 8192, 128, True, "head-major"),
        (2, 16, 16384, 64, True, "head-major"),
        (3, 16, 2048, 128, False, "head-major"),
        (1, 6, 65536, 64, False, "query-major"),
        (1, 16, 32768, 64, True, "query-major"),
    ],
    3: [
        (1, 16, 12288, 64, True, "head-major"),
        (1, 16, 24576, 128, True, "head-major"),
        (2, 12, 8192, 64, False, "head-major"),
        (1, 8, 49152, 128, True, "query-major"),
        (4, 16, 2048, 64, True, "head-major"),
        (1, 20, 16384, 128, False, "head-major"),
        (1, 4, 98304, 128, False, "query-major"),
        (1, 48, 4096, 128, True, "head-major"),
    ],
    4: [
        (1, 16, 20480, 64, True, "head-major"),
        (1, 24, 12288, 64, True, "head-major"),
        (1, 12, 32768, 64, True, "head-major"),
        (1, 20, 8192, 64, True, "head-major"),
        (3, 16, 4096, 64, False, "head-major"),
        (1, 12, 49152, 64, False, "query-major"),
        (2, 16, 6144, 64, False, "head-major"),
        (1, 8, 40960, 128, True, "head-major"),
    ],
    5: [
        (1, 16, 20480, 128, True, "head-major"),
        (1, 12, 20480, 64, True, "head-major"),
        (2, 16, 3072, 64, False, "head-major"),
        (1, 24, 8192, 128, False, "head-major"),
        (1, 6, 57344, 128, True, "query-major"),
        (1, 4, 81920, 64, False, "query-major"),
        (1, 6, 49152, 128, True, "head-major"),
        (12, 16, 1024, 64, False, "head-major"),
    ],
    6: [
        (1, 16, 10240, 64, True, "head-major"),
        (6, 16, 1024, 64, False, "head-major"),
        (4, 16, 2048, 64, False, "head-major"),
        (2, 16, 4096, 64, False, "head-major"),
        (1, 16, 14336, 64, True, "head-major"),
        (1, 28, 8192, 64, True, "head-major"),
        (1, 20, 12288, 128, True, "head-major"),
        (1, 4, 65536, 128, True, "query-major"),
    ],
    7: [
        (2, 20, 8192, 128, False, "head-major"),
        (1, 16, 12288, 128, True, "head-major"),
        (1, 24, 10240, 64, True, "head-major"),
        (3, 16, 3072, 64, False, "head-major"),
        (1, 5, 98304, 64, False, "query-major"),
        (1, 12, 61440, 128, True, "query-major"),
        (4, 12, 2048, 64, True, "head-major"),
        (1, 40, 4096, 64, False, "head-major"),
    ],
    8: [
        (2, 24, 8192, 128, False, "head-major"),
        (1, 14, 16384, 64, True, "head-major"),
        (1, 12, 24576, 128, True, "head-major"),
        (5, 16, 2048, 64, False, "head-major"),
        (1, 3, 98304, 128, False, "query-major"),
        (1, 10, 49152, 128, True, "query-major"),
        (2, 16, 8192, 64, True, "head-major"),
        (1, 32, 4096, 128, False, "head-major"),
    ],
    9: [
        (1, 6, 65536, 128, True, "query-major"),
        (1, 10, 32768, 128, True, "head-major"),
        (1, 14, 20480, 128, True, "head-major"),
        (6, 16, 2048, 64, False, "head-major"),
        (6, 16, 1024, 64, True, "head-major"),
        (1, 10, 65536, 64, False, "query-major"),
        (1, 6, 98304, 64, True, "query-major"),
        (1, 18, 12288, 64, True, "head-major"),
    ],
    10: [
        (1, 7, 61440, 128, True, "query-major"),
        (1, 3, 69632, 128, True, "query-major"),
        (1, 10, 24576, 128, True, "head-major"),
        (7, 16, 1024, 64, False, "head-major"),
        (5, 16, 2048, 64, True, "head-major"),
        (1, 9, 65536, 64, False, "query-major"),
        (2, 12, 12288, 128, False, "head-major"),
        (1, 20, 10240, 64, True, "head-major"),
    ],
    12: [
        (1, 12, 24576, 64, True, "head-major"),
        (3, 16, 2048, 128, True, "head-major"),
        (1, 6, 49152, 64, False, "query-major"),
        (1, 10, 40960, 128, True, "head-major"),
        (2, 10, 8192, 128, True, "head-major"),
        (1, 20, 8192, 128, False, "head-major"),
        (5, 12, 4096, 64, False, "head-major"),
        (1, 12, 32768, 64, True, "query-major"),
    ],
    15: [
        (1, 8, 57344, 64, True, "head-major"),
        (1, 7, 65536, 64, True, "head-major"),
        (1, 6, 61440, 128, True, "head-major"),
        (1, 9, 49152, 128, True, "head-major"),
        (1, 12, 36864, 64, True, "head-major"),
        (2, 6, 32768, 128, False, "head-major"),
        (2, 8, 8192, 64, False, "query-major"),
        (1, 6, 40960, 128, True, "query-major"),
    ],
    14: [
        (1, 10, 40960, 64, True, "head-major"),
        (1, 18, 14336, 64, True, "head-major"),
        (3, 8, 6144, 64, True, "head-major"),
        (3, 14, 4096, 64, False, "head-major"),
        (1, 12, 20480, 128, True, "head-major"),
        (1, 4, 61440, 128, True, "query-major"),
        (3, 16, 4096, 64, False, "query-major"),
        (1, 10, 49152, 64, False, "query-major"),
    ],
    13: [
        (9, 16, 1024, 64, False, "head-major"),
        (1, 6, 49152, 64, True, "head-major"),
        (1, 2, 73728, 128, True, "query-major"),
        (1, 3, 61440, 128, True, "query-major"),
        (1, 18, 8192, 64, True, "head-major"),
        (1, 12, 28672, 128, True, "head-major"),
        (3, 12, 4096, 128, False, "head-major"),
        (1, 7, 57344, 64, False, "query-major"),
    ],
    11: [
        (1, 4, 73728, 128, True, "query-major"),
        (1, 5, 57344, 128, True, "query-major"),
        (1, 20, 16384, 128, True, "head-major"),
        (1, 12, 32768, 128, True, "head-major"),
        (1, 8, 24576, 128, True, "head-major"),
        (1, 6, 65536, 128, True, "head-major"),
        (2, 16, 4096, 64, True, "head-major"),
        (10, 16, 1024, 64, False, "head-major"),
    ],
}


def _key(b, h, n, d, causal, order):
    return (int(b) * int(h), int(n), int(d), str(causal) == "True", order)


def seen_launches() -> set:
    out = {_key(r["batch"], r["heads"], r["seq"], r["head_dim"], r["causal"], r["grid_order"])
           for r in read_csv(DATA / "gpu_validation.csv") if r["impl"] == "generated"}
    for p in sorted(DATA.glob("gpu_unseen*.csv")):
        out |= {_key(r["batch"], r["heads"], r["seq"], r["head_dim"], r["causal"],
                     r["grid_order"]) for r in read_csv(p)}
    return out


def _options(rnd: int) -> dict:
    """The GpuL2 options a round registers next to its default: column suffix -> model
    (round 13: CLOCK, the startup and both, the last the default since; 14: work-conserving
    SM sharing; 15 on: the fastest of three pace-noise draws)."""
    if rnd == 13:
        return {"clock": GpuL2(**{**_R, "nru_victim": "clock"}),
                "startup": GpuL2(nru_victim="first", pace_draws=1, **BLOCK_STARTUP),
                "clock_startup": GpuL2(nru_victim="clock", pace_draws=1, **BLOCK_STARTUP)}
    if rnd == 14:
        return {"conserving": GpuL2(sm_sharing="work-conserving", pace_draws=1)}
    if rnd == 15:
        return {"draws3": GpuL2(pace_draws=3)}
    # round 16 on: the default is the fastest of three draws; seed 0 alone (the default of
    # rounds 13-15) next to it
    return {"seed0": GpuL2(**ONE_PACE_DRAW)} if rnd >= 16 else {}


def predict(shapes, commit: str, partitions: bool = False, readers: bool = False,
            nru: bool = False, nru_prefetch: bool = False,
            response: bool = False, options: dict | None = None,
            rounds_11_13: bool = False) -> list[dict]:
    """Each launch of ``shapes``: the present default's prediction and, by the flags, the
    models registered next to it; ``options``: column suffix -> model, each registered with
    its makespan (round 13: CLOCK, the startup, both; 14: work-conserving SM sharing; 15 on:
    the fastest of three pace-noise draws)."""
    rows = []
    for b, h, n, d, c, o in shapes:
        row = dict(impl="generated", cascade="attention-1pass", grid_order=o, dtype="bf16",
                   batch=b, heads=h, seq=n, head_dim=d, causal=c, **VALIDATION_TILING)
        t = time.time()
        p = compare_row(row)     # the present default (each round registered its own)
        rows.append({"shape": f"{b}x{h}x{n}x{d}{'-causal' if c else ''}", "batch": b,
                     "heads": h, "seq": n, "head_dim": d, "causal": c, "grid_order": o,
                     "dtype": "bf16", **VALIDATION_TILING,
                     "blocks_per_sm": p["model_blocks_per_sm"], "qkv_bytes": p["qkv_bytes"],
                     "pred_dram_read_bytes": round(p["pred_dram_read_bytes"]),
                     "pred_dram_read_bytes_lockstep": round(p["pred_dram_read_bytes_lockstep"]),
                     "pred_l2_read_bytes": round(p["pred_l2_read_bytes"]),
                     "model_makespan_us": round(p["model_makespan_us"], 1),
                     "model_commit": commit})
        if partitions:   # rounds 6-7: the default was the readers rule
            q = compare_row(row, GpuL2(kv_weight="partitions", l2_policy="response",
                                       prefetch_across_chunks=False, **_R), baseline=False)
            rows[-1]["pred_dram_read_bytes_partitions"] = round(q["pred_dram_read_bytes"])
        if readers:      # round 8 on: the default is the partitions model
            q = compare_row(row, GpuL2(kv_weight="readers", prefetch_across_chunks=False, **_R),
                            baseline=False)
            rows[-1]["pred_dram_read_bytes_readers"] = round(q["pred_dram_read_bytes"])
        if nru:          # round 9 on: the NRU cache state next to the response
            q = compare_row(row, GpuL2(l2_policy="nru", prefetch_across_chunks=False, **_R),
                            baseline=False)
            rows[-1]["pred_dram_read_bytes_nru"] = round(q["pred_dram_read_bytes"])
        if nru_prefetch:  # round 11 on: the NRU state with fetches across chunk ends
            q = compare_row(row, GpuL2(l2_policy="nru", prefetch_across_chunks=True, **_R),
                            baseline=False)
            rows[-1]["pred_dram_read_bytes_nru_prefetch"] = round(q["pred_dram_read_bytes"])
        if response:     # round 12 on: the model of rounds 7-10 next to the default
            q = compare_row(row, GpuL2(l2_policy="response", prefetch_across_chunks=False, **_R),
                            baseline=False)
            rows[-1]["pred_dram_read_bytes_response"] = round(q["pred_dram_read_bytes"])
        if rounds_11_13:  # round 14: the default of rounds 11-13 next to the present one
            q = compare_row(row, GpuL2(**_R), baseline=False)
            rows[-1]["pred_dram_read_bytes_rounds_11_13"] = round(q["pred_dram_read_bytes"])
        for col, gpu in (options or {}).items():     # GpuL2 options, not the default
            q = compare_row(row, gpu, baseline=False)
            rows[-1][f"pred_dram_read_bytes_{col}"] = round(q["pred_dram_read_bytes"])
            rows[-1][f"model_makespan_us_{col}"] = round(q["model_makespan_us"], 1)
        r = rows[-1]
        print(f"{r['shape']:24s} {o:12s} pred DRAM {r['pred_dram_read_bytes'] / 1e9:7.3f} G "
              f"= {r['pred_dram_read_bytes'] / r['qkv_bytes']:5.1f} x Q+K+V "
              f"({time.time() - t:.1f} s)", flush=True)
    return rows


def figure(path: Path) -> Path:
    """Error of the registered DRAM prediction against the measured bytes, for every launch of
    every measured round, by how far DRAM reads rise above Q+K+V."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9.4, 5.6))
    markers = "os^Dv*PXhp<>dH8"
    n = ok = 0
    files = sorted(DATA.glob("gpu_unseen*.csv"), key=lambda p: int(p.stem[10:] or 1))
    ax.axhspan(-15, 15, color="0.88", zorder=0, label="within 15%")
    ax.axhline(0, color="k", lw=0.8, zorder=1)
    for i, p in enumerate(files):
        rows = [r for r in read_csv(p) if r.get("meas_dram_read_bytes")]
        for order, col in (("query-major", "tab:blue"), ("head-major", "tab:red")):
            sel = [r for r in rows if r["grid_order"] == order]
            x = [float(r["meas_dram_read_bytes"]) / float(r["qkv_bytes"]) for r in sel]
            y = [100 * (float(r["pred_dram_read_bytes"]) / float(r["meas_dram_read_bytes"]) - 1)
                 for r in sel]
            newest = i == len(files) - 1           # the newest round edged in black
            ax.scatter(x, y, c=col, marker=markers[i % len(markers)], s=40, alpha=0.85, zorder=3,
                       edgecolors="k" if newest else "none", linewidths=1.0,
                       label=f"batch {p.stem[10:] or 1} ({order})" if sel else None)
            n += len(sel)
            ok += sum(abs(v) <= 15 for v in y)
    ax.set(xscale="log", xlabel="measured DRAM read / (Q + K + V)",
           ylabel="registered prediction - measured (%)",
           title=f"DRAM reads of pre-registered launches (H100): {ok} of {n} within 15%")
    ax.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--round", type=int, default=max(ROUNDS), choices=sorted(ROUNDS),
                    help="which batch of launches to register (default: the newest)")
    ap.add_argument("--out", default="out",
                    help="output directory, created if missing (default: ./out)")
    ap.add_argument("--figure", action="store_true",
                    help="only draw DIR/gpu_unseen.png from the measured batches")
    a = ap.parse_args(argv)
    if a.figure:
        print("wrote", figure(Path(a.out) / "gpu_unseen.png"))
        return 0
    out = Path(a.out) / f"gpu_unseen{a.round}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    for there in (out, DATA / out.name):
        if there.exists():
            raise SystemExit(f"error: {there} exists: round {a.round} is registered (and may "
                             "hold measurements); register a new round instead")
    shapes = ROUNDS[a.round]
    seen = seen_launches()
    clash = [s for s in shapes if _key(*s) in seen]
    if clash:
        raise SystemExit(f"error: already seen launches in round {a.round}: {clash}")
    commit = subprocess.check_output(["git", "rev-parse", "HEAD"], text=True).strip()
    kw = dict(partitions=a.round in (6, 7), readers=8 <= a.round <= 11,
              nru=9 <= a.round <= 11, nru_prefetch=a.round == 11, response=a.round == 12,
              options=_options(a.round), rounds_11_13=a.round == 14)
    # one launch per process, two at a time (rounds up to 14 ran one process)
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial
    from tqdm import tqdm
    with ProcessPoolExecutor(2) as ex:
        parts = list(tqdm(ex.map(partial(predict, commit=commit, **kw), [[s] for s in shapes]),
                          total=len(shapes), desc="launches", file=sys.stderr))
    rows = [r for part in parts for r in part]
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
