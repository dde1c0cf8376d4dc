"""Reproduce the FuseMax evaluation (Nayak et al., MICRO 2024) with iosim.spatial.

    python experiments/fusemax.py --out DIR      # or: iosim spatial reproduce --out DIR

Runs Unfused, FLAT, +Cascade, +Architecture and +Binding (= FuseMax) on BERT-Base, TrXL-wt103,
T5-small and XLM at 1K..1M tokens (batch 64), adds the encoder's linear layers for end-to-end
numbers, sweeps FuseMax's PE-array size at 256K (area/latency Pareto), runs the 1-, 2- and
3-pass cascades on FuseMax's hardware, and compares with the paper's artifact numbers in
experiments/data. Writes fusemax_*.png and fusemax_*.csv into --out (default ./out; the
committed copies are in figures/) and prints the headline table (the table in docs/spatial.md
is this output).
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from iosim.spatial import reproduce as _rep  # noqa: E402


@contextlib.contextmanager
def _progress(figures: bool):
    """A progress bar on stderr (shown on a terminal only) over the reproduction's steps: the
    model sweep, the Pareto sweep, the passes study (and the figures)."""
    from tqdm import tqdm
    steps = ("sweep", "pareto", "passes_study") + (("figures",) if figures else ())
    bar = tqdm(total=len(steps), desc="fusemax", file=sys.stderr, disable=None, leave=False)
    saved = {s: getattr(_rep, s) for s in steps if hasattr(_rep, s)}

    def counted(fn):
        def run(*a, **k):
            out = fn(*a, **k)
            bar.update()
            return out
        return run
    try:
        for name, fn in saved.items():
            setattr(_rep, name, counted(fn))
        yield
    finally:
        for name, fn in saved.items():
            setattr(_rep, name, fn)
        bar.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out", help="output directory (default: ./out)")
    ap.add_argument("--data", default=str(ROOT / "experiments" / "data"),
                    help="the paper's artifact numbers (default: experiments/data)")
    ap.add_argument("--no-figures", action="store_true")
    a = ap.parse_args(argv)
    with _progress(not a.no_figures):
        res = _rep.reproduce(a.out, a.data, figures_=not a.no_figures)
    head = res["headline"]
    print("Headline means over 4 models x 6 lengths (ours vs the paper):")
    print(head.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    if "util_max_err" in res:
        print("max |utilization - paper| per point:",
              {k: round(v, 4) for k, v in res["util_max_err"].items()})
        c = res["compare"]
        print("per-point ratios ours/paper (min..max) by configuration:")
        g = c.groupby("config")[["latency_s_ratio", "energy_pj_ratio", "dram_bytes_ratio",
                                  "e2e_latency_s_ratio", "e2e_energy_pj_ratio"]].agg(["min", "max"])
        print(g.round(3).to_string())
    p = res["pareto"]
    if "paper_latency_s" in p:
        p = p.assign(latency_ratio=p.latency_s / p.paper_latency_s,
                     area_ratio=p.area_um2 / p.paper_area_um2)
        print("Pareto (256K): latency and area ratio ours/paper, min..max:",
              f"{p.latency_ratio.min():.3f}..{p.latency_ratio.max():.3f},",
              f"{p.area_ratio.min():.3f}..{p.area_ratio.max():.3f}")
    for f in res.get("figures", []):
        print("wrote", f)
    print(f"done in {res['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
