"""The device scripts' registered plans: a script of experiments/device loaded as a module,
and its committed plan checked against its launch list."""
from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def device_script(name: str):
    """experiments/device/<name>.py, loaded (its launch list, plan path, fields)."""
    spec = importlib.util.spec_from_file_location(
        name, ROOT / "experiments" / "device" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def registered_plan(mod, fields) -> tuple:
    """(the committed plan's rows, the script's launches), the plan holding the launches in
    order with the same ``fields``."""
    with open(ROOT / mod.PLAN) as f:
        rows = list(csv.DictReader(f))
    want = mod.launches()
    assert len(rows) == len(want)
    for r, w in zip(rows, want):
        assert {k: r[k] for k in fields} == {k: str(w[k]) for k in fields}
    return rows, want
