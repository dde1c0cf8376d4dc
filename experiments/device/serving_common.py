"""What the serving device scripts (serving_decode.py, serving_paged.py, serving_mla.py) share:
the registered plan (written and read), a paged cache's scattered block table, the timer
(CUDA-event medians, L2 flushed before every repeat), the loop that measures the launches and
records each one's result or error, and the command line."""
from __future__ import annotations

import csv
import math
import os
import time
from typing import NamedTuple

#: the plan's columns of optional numbers (empty where the schedule has none)
OPTIONAL = ("split_kv", "programs", "page_size")


def write_plan(path: str, launches: list[dict], predict) -> None:
    """The plan: each launch with ``predict(launch)`` (the model's prediction, registered
    before the launches are measured) and the commit of the model that made it."""
    import subprocess

    from iosim.gpu.validate import write_csv
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    write_csv([dict(l, **predict(l), model_commit=commit) for l in launches], path)


def read_plan(path: str, ints: tuple) -> list[dict]:
    """The plan's rows, typed: ``ints`` and the optional numbers as ints, the flags as bools,
    the key lengths as a list."""
    with open(path) as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ints:
            r[k] = int(r[k])
        for k in OPTIONAL:
            r[k] = int(r[k]) if r[k] else None
        for k in ("causal", "references"):
            if k in r:
                r[k] = r[k] == "True"
        r["kv_lens"] = [int(x) for x in r["kv_lens"].split(";")]
    return rows


def scattered_pages(lens, page: int, dev):
    """A block table over a pool of pages handed out in a random order (no request's pages
    contiguous): (the table, [requests, most pages] int32 on ``dev``; each request's pages).
    The pool holds ``sum`` of the pages."""
    import torch
    need = [-(-n // page) for n in lens]
    perm = torch.randperm(sum(need), generator=torch.Generator().manual_seed(1))
    table = torch.zeros(len(lens), max(need), dtype=torch.int32)
    at = 0
    for b, c in enumerate(need):
        table[b, :c] = perm[at:at + c].to(torch.int32)
        at += c
    return table.to(dev), need


def request_rows(pool, table, need, lens) -> list:
    """Each request's rows, in key order, of a paged ``pool`` [pages, page, ...]."""
    return [pool[table[b, :need[b]].long()].flatten(0, 1)[:n] for b, n in enumerate(lens)]


def time_ms(fn, cuda: bool, reps: int = 20, warmup: int = 5) -> float:
    """The median milliseconds of ``fn``: CUDA events with the L2 flushed before every repeat
    (on the CPU two wall-clock runs)."""
    import statistics

    import torch
    for _ in range(warmup):
        fn()
    if not cuda:
        ts = []
        for _ in range(2):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(ts)
    torch.cuda.synchronize()
    flush = torch.empty(256 << 20, dtype=torch.int8, device="cuda")
    ts = []
    for _ in range(reps):
        flush.zero_()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


class Device(NamedTuple):
    """Where the launches run: the GPU in bf16, or the CPU interpreter in fp16."""
    cuda: bool
    dev: str
    dtype: object


def measure_rows(rows: list[dict], dry: bool, fields: tuple, shrink, kernel, measure) -> list:
    """Each launch of ``rows`` (on the CPU: ``shrink(launch)``) measured: ``kernel(launch,
    device)`` its loaded module, ``measure(launch, module, device)`` its results (``error``
    empty among them). A record:
    the launch's ``fields`` and predictions, the results (or the error, and the next launch
    goes on), the device and the seconds it took."""
    import torch
    cuda = torch.cuda.is_available() and not dry
    env = Device(cuda, "cuda" if cuda else "cpu", torch.bfloat16 if cuda else torch.float16)
    device = torch.cuda.get_device_name(0) if cuda else "cpu (interpreter)"
    out = []
    for l in rows:
        if not cuda:
            l = shrink(l)
        t0 = time.time()
        mod = kernel(l, env)
        rec = {k: l[k] for k in fields if k in l}
        rec["kv_lens"] = ";".join(str(n) for n in l["kv_lens"])
        rec.update({k: v for k, v in l.items() if k.startswith("predicted_")
                    or k == "model_commit"})
        try:
            rec.update(measure(l, mod, env))
        except Exception as exc:  # noqa: BLE001 - recorded; the next launch goes on
            rec.update(ms=math.nan, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
        if cuda:
            torch.cuda.empty_cache()
        rec.update(device=device, seconds=round(time.time() - t0, 2))
        out.append(rec)
        print(rec, flush=True)
    return out


def main(argv, *, doc: str, stem: str, write_plan, read_plan, run) -> None:
    """The scripts' command line: ``--plan CSV`` writes the plan (``write_plan(path)``) and
    stops; otherwise the plan's launches (``--only``: some of them) run and
    ``$OUT/gpu_<stem>.csv`` (``--dry-run``: tiny ones on the CPU, ``<stem>_dry_run.csv``) is
    written."""
    import argparse

    from iosim.gpu.validate import write_csv
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--plan", metavar="CSV", help="write the launch plan with the model's "
                                                  "predictions to CSV and stop")
    ap.add_argument("--dry-run", action="store_true",
                    help="tiny versions of every launch on the CPU (TRITON_INTERPRET=1)")
    ap.add_argument("--only", type=int, nargs="*", help="run only these launch numbers")
    a = ap.parse_args(argv)
    if a.plan:
        write_plan(a.plan)
        return
    rows = read_plan()
    if a.only:
        rows = [r for r in rows if r["launch"] in set(a.only)]
    name = f"{stem}_dry_run.csv" if a.dry_run else f"gpu_{stem}.csv"
    write_csv(run(rows, dry=a.dry_run), os.path.join(os.environ.get("OUT", "."), name))
