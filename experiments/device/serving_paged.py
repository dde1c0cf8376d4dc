"""Device: the registered paged / multi-query / d = 64 launches of the serving decode kernel.

The launches of experiments/data/serving_paged_plan.csv (written by ``--plan`` with
the model's predictions before any of them ran), measured as serving_decode.py measures its
own (CUDA-event medians, L2 flushed, error against float64, SDPA flash and cuDNN beside the
uniform shapes). Run from the repository root::

    python experiments/device/serving_paged.py                # -> $OUT/gpu_serving_paged.csv
    python experiments/device/serving_paged.py --plan experiments/data/serving_paged_plan.csv
    TRITON_INTERPRET=1 python experiments/device/serving_paged.py --dry-run
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import serving_common as sc  # noqa: E402 - plan and command line of the serving scripts
import serving_decode as sd  # noqa: E402 - the launch runner shared with the dense plan

PLAN = os.path.join("experiments", "data", "serving_paged_plan.csv")
K = 1024


def launches() -> list[dict]:
    """Paged caches (pages of 8-256 keys, scattered), multi-query (1 K/V head) and d = 64
    launches: the kernel's weak spots in the first measurement, chosen before measuring."""
    from iosim.serving import flashdecoding_splits
    out = []

    def add(layout, sched, lens, hkv=8, d=128, page=None, hq=32):
        blocks = max(-(-n // 64) for n in lens)
        split = (flashdecoding_splits(len(lens) * hkv, blocks, sd.SMS) if sched == "split"
                 else "")
        out.append(dict(launch=len(out), layout=layout, schedule=sched, split_kv=split,
                        programs=sd.SMS if sched == "streamk" else "", page_size=page or "",
                        batch=len(lens), heads=hq, kv_heads=hkv, q_len=1, causal=False,
                        head_dim=d, kv_lens=";".join(str(n) for n in lens),
                        references=layout == "dense" and sched == "nosplit"))

    for page in (16, 64, 256):                     # the serving trace, three schedules
        for s in ("nosplit", "split", "streamk"):
            add("paged", s, sd.TRACE, page=page)
    for page in (8, 32, 128):
        add("paged", "streamk", sd.TRACE, page=page)
    add("paged", "split", (128 * K,), page=16)     # one long request: split fills the GPU
    add("paged", "nosplit", (128 * K,), page=16)   # one program per K/V head: its loop
    add("paged", "nosplit", (128 * K,), page=128)
    add("paged", "nosplit", (4 * K,) * 64, page=16)   # 512 programs: HBM-bound
    add("paged", "split", sd.SKEWED, page=16)
    add("paged", "streamk", (32 * K,) * 8, hkv=1, page=16)     # multi-query, paged
    for s in ("nosplit", "split", "streamk"):      # multi-query and d = 64, dense
        add("dense", s, (32 * K,) * 16, hkv=1)
        add("dense", s, (16 * K,) * 16, d=64)
    return out


def main(argv=None):
    sc.main(argv, doc=__doc__, stem="serving_paged",
               write_plan=lambda path: sc.write_plan(path, launches(), sd.predict),
               read_plan=lambda: sd.read_plan(PLAN), run=sd.run)


if __name__ == "__main__":
    main()
