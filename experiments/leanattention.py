"""Decode schedules on the H100 model: no split (FlashAttention-2), FlashDecoding's fixed split, and stream-K (LeanAttention), against context length.

LeanAttention (arXiv 2405.10480) lays the key blocks of every (request, K/V head) pair end to
end and gives each program an equal share, partials fixed up with their log-sum-exp; it reports
1.73x on average over FlashDecoding (up to 2.18x at 256K) and 2.6x to 8.33x over
FlashAttention-2 at 512K, on A100s. This script asks the execution-time model the same question
for one request (batch 1) of 8 K/V heads (multi-head, and grouped-query with 32 query heads),
d = 128, bf16, contexts 8K to 512K:

* **no split**: the split-K mapping with one split (one program per K/V head, as FA-2 runs
  decode);
* **FlashDecoding**: the fixed split FlashAttention's heuristic picks (the fewest splits whose
  wave efficiency is within 85 % of the best, at most 128);
* **best fixed split**: the fastest of 1-128 splits under the model;
* **stream-K** (this script's own estimate; ``iosim evaluate decode --schedule streamk`` models
  the generated stream-K kernel): the programs of one
  full wave (SMs x programs per SM) each take an equal share of all key blocks; a program costs
  its start, its share of the steps and one more start for each head boundary it crosses (a
  partial stored, a Q tile reloaded); the partials' combine is the split-K combine; the HBM
  bytes over the sustained bandwidth bound it.

The measured split-K times of the validation launches (8 heads x 128K, splits 1-32, H100) are
drawn beside the model, and on the grouped-query panel the generated serving kernel's three
schedules measured on the H100 at 8K-256K (experiments/data/gpu_serving_decode.csv; written
with the serving model's prediction of each to ``leanattention_measured.csv``). Writes ``leanattention.csv`` and ``leanattention.png`` into ``--out``:

    python experiments/leanattention.py --out DIR      # or: iosim experiment leanattention
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from iosim.plots import experiment_cli, progress, save_csv

CONTEXTS = tuple(2 ** k for k in range(13, 20))        # 8K .. 512K
HEADS = ((8, 8), (32, 8))                               # (query heads, K/V heads)
D = 128


def _evaluate(n_ctx, hq, hkv, split):
    from iosim.mapping import get_mapping
    from iosim.traffic import evaluate
    # the tiling of the generated decode kernel measured on the GPU (16-row tiles, 4 warps)
    m = get_mapping("decode-splitk", split_kv=split, block_q=16, block_kv=64, num_warps=4,
                    num_stages=3)
    return evaluate("decode-splitk", m, "h100",
                    n=1, kv_len=n_ctx, d=D, heads=hq, kv_heads=hkv if hkv != hq else None)


def stream_k(n_ctx, hq, hkv) -> float:
    """The stream-K schedule's time under the model (see the module docstring)."""
    from iosim.hardware import load_hardware
    from iosim.timing import timing_rates
    rates = timing_rates(load_hardware("h100"))
    one = _evaluate(n_ctx, hq, hkv, 1)             # one program per K/V head: the step costs
    part = one.time["kernels"][0]
    steps_total = part["programs"] * part["steps_per_program"]
    step_s = (part["program_s"] - part["start_s"]) / part["steps_per_program"]
    slots = rates.sms * part["programs_per_sm"]
    share = steps_total / slots
    crossings = min(slots, part["programs"]) - 1   # head boundaries inside shares
    per_prog = part["start_s"] * (1 + crossings / slots) + share * step_s
    # the combine: as the split-K combine with as many partials per head as programs per head
    split = max(1, int(round(slots / part["programs"])))
    comb = _evaluate(n_ctx, hq, hkv, split).time["kernels"][1]["time_s"]
    hbm = one.time["kernels"][0]["hbm_bytes"] / rates.hbm_read_bps
    total = max(per_prog, hbm) + comb + 2 * rates.launch_s
    return max(total, rates.host_seconds(2))


def compute(contexts=CONTEXTS, bar=None):
    import pandas as pd
    from iosim.hardware import load_hardware
    from iosim.serving import flashdecoding_splits
    from iosim.timing import timing_rates
    sms = timing_rates(load_hardware("h100")).sms
    rows = []
    for hq, hkv in HEADS:
        for n in contexts:
            n_blocks = -(-n // 64)
            t1 = _evaluate(n, hq, hkv, 1).time_s
            s_fd = flashdecoding_splits(hkv, n_blocks, sms)
            t_fd = _evaluate(n, hq, hkv, s_fd).time_s
            best_s, best_t = 1, t1
            for s in (2, 4, 8, 16, 32, 64, 128):
                t = _evaluate(n, hq, hkv, s).time_s
                if t < best_t:
                    best_s, best_t = s, t
            t_sk = stream_k(n, hq, hkv)
            rows.append(dict(query_heads=hq, kv_heads=hkv, context=n, head_dim=D,
                             no_split_s=t1, flashdecoding_splits=s_fd, flashdecoding_s=t_fd,
                             best_split=best_s, best_split_s=best_t, stream_k_s=t_sk,
                             stream_k_over_flashdecoding=t_fd / t_sk,
                             stream_k_over_no_split=t1 / t_sk, source="model (h100 preset)"))
            if bar is not None:
                bar.update(1)
    return pd.DataFrame(rows)


def measured():
    """The measured split-K decode of 8 heads x 128K (validation launches, H100)."""
    import pandas as pd
    p = Path(__file__).resolve().parent / "data" / "gpu_time_validation.csv"
    d = pd.read_csv(p)
    d = d[(d.cascade == "decode-splitk") & (d.kv_len == 131072) & (d.heads == 8)]
    return d[["split_kv", "ms", "device"]].sort_values("split_kv")


def measured_serving():
    """The serving kernel's three schedules measured on the H100 (bf16, one request of 32 query
    / 8 K/V heads, d = 128; experiments/data/gpu_serving_decode.csv) beside the serving model
    (iosim.serving, the generated kernel's own model) of the same launches."""
    import pandas as pd

    from iosim.serving_measured import RECORDED, predict_launches, read_launches
    rows = [r for r in predict_launches(read_launches(RECORDED[0]))
            if r["batch"] == 1 and r["heads"] == 32 and r["kv_heads"] == 8
            and r["head_dim"] == D and r["layout"] == "dense"]
    return pd.DataFrame([dict(context=r["kv_lens"][0], schedule=r["schedule"],
                              split_kv=r["split_kv"] or "", measured_ms=r["ms"],
                              serving_model_ms=r["pred_ms"], device=r["device"])
                         for r in rows]).sort_values(["schedule", "context"])


def plot(df, meas, path, serv=None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for (hq, hkv), ax in zip(HEADS, axes):
        s = df[(df.query_heads == hq) & (df.kv_heads == hkv)]
        x = s.context / 1024
        ax.plot(x, s.no_split_s * 1e3, "o-", label="no split (FA-2)")
        ax.plot(x, s.flashdecoding_s * 1e3, "s-", label="FlashDecoding split")
        ax.plot(x, s.best_split_s * 1e3, "^--", label="best fixed split")
        ax.plot(x, s.stream_k_s * 1e3, "d-", label="stream-K (model)")
        if hq == hkv:
            for _, r in meas.iterrows():
                ax.plot(128, r.ms, "kx", ms=7)
            ax.plot([], [], "kx", label="measured split-K, splits 1-32 (H100)")
        elif serv is not None:
            for sched, mk, lab in (("nosplit", "o", "no split"), ("split", "s", "split"),
                                   ("streamk", "d", "stream-K")):
                m = serv[serv.schedule == sched]
                ax.plot(m.context / 1024, m.measured_ms, mk, mfc="none", mec="k", ms=9,
                        label=f"measured {lab} (H100, generated kernel)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context (K tokens)")
        ax.set_ylabel("time (ms): model lines, H100 markers")
        ax.set_title(f"decode, 1 request, {hq} query / {hkv} K/V heads, d={D}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Decode schedules, H100: stream-K vs fixed split vs no split (model and measured)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(out_dir=None, quick: bool = False) -> dict:
    out = Path(out_dir or "out")
    out.mkdir(parents=True, exist_ok=True)
    contexts = CONTEXTS[::2] if quick else CONTEXTS
    with progress(total=len(contexts) * len(HEADS), desc="leanattention") as bar:
        df = compute(contexts, bar)
    save_csv(df, out / "leanattention.csv")
    meas = measured()
    serv = measured_serving()
    save_csv(serv, out / "leanattention_measured.csv")
    plot(df, meas, out / "leanattention.png", serv)
    mha = df[df.query_heads == df.kv_heads]
    over_fd = float(df.stream_k_over_flashdecoding.max())
    over_fa2 = float(mha.stream_k_over_no_split.iloc[-1])
    m1 = meas[meas.split_kv == 1].ms.iloc[0] / meas.ms.min()
    lines = [f"stream-K over FlashDecoding's split (model): at most {over_fd:.2f}x "
             f"(paper, A100: 1.73x on average, up to 2.18x at 256K)",
             f"stream-K over no split at {contexts[-1] // 1024}K (model): {over_fa2:.1f}x "
             f"(paper: 2.6x-8.33x over FlashAttention-2 at 512K)",
             f"measured on the H100 at 128K: no split / best split = {m1:.1f}x"]
    for n in sorted(set(serv.context)):
        t = {r.schedule: r.measured_ms for r in serv[serv.context == n].itertuples()}
        lines.append(f"measured, 1 x 32/8 heads x {n // 1024}K (serving kernel): stream-K "
                     f"over split {t['split'] / t['streamk']:.2f}x, over no split "
                     f"{t['nosplit'] / t['streamk']:.1f}x")
    return {"written": [str(out / "leanattention.csv"), str(out / "leanattention_measured.csv"),
                        str(out / "leanattention.png")],
            "lines": lines, "summary": {"stream_k_over_flashdecoding_max": over_fd,
                                        "stream_k_over_no_split_at_max_context": over_fa2}}


if __name__ == "__main__":
    experiment_cli(main, __doc__)
