"""numba is optional (``pip install -e ".[sim]"``): only the dynamic L2 simulation uses it, to
compile its cache state's reads. Without it the simulation imports and runs on numpy and
predicts the same bytes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]

#: a validated launch with misses (8x16x1Kx64 head-major), one pace-noise draw; argv[1] "hide"
#: makes ``import numba`` fail
CODE = """
import json, sys
if sys.argv[1] == "hide":
    sys.modules["numba"] = None
from iosim.l2 import simulate, state
from iosim.l2.simulate import GpuL2, Workload, predict_dram
w = Workload(batch=8, heads=16, seq_q=1024, seq_k=1024, head_dim=64, causal=False,
             grid_order="head-major")
p = predict_dram(w, GpuL2(pace_draws=1))
print(json.dumps({"compiled": state._access_loop is not None, "jit": simulate.njit is not None,
                  "dram": p["dram_read_bytes"], "qkv": 3 * 8 * 16 * 1024 * 64 * 2}))
"""


def _run(mode: str) -> dict:
    r = subprocess.run([sys.executable, "-c", CODE, mode], capture_output=True, text=True,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_numba_is_an_optional_extra():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(d.split(">")[0].split("=")[0].strip() == "numba"
                   for d in meta["dependencies"])
    assert any(d.startswith("numba") for d in meta["optional-dependencies"]["sim"])


def test_dynamic_simulation_without_numba_predicts_the_same_bytes():
    hidden = _run("hide")
    assert not hidden["compiled"] and not hidden["jit"]
    assert hidden["dram"] > 1.5 * hidden["qkv"]          # a launch whose K/V miss in part
    try:
        import numba  # noqa: F401
    except ImportError:
        return
    shown = _run("show")
    assert shown["compiled"] and shown["jit"]
    assert shown["dram"] == hidden["dram"]
