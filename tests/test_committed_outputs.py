"""The committed outputs (figures/, experiments/data/) against experiments/MANIFEST.toml.

Every committed file is listed there as measured (with the device), generated (with the
command that regenerates it) or reference (a paper's numbers). A generated CSV is regenerated
into a temporary directory and compared with the committed copy, so a committed table that
the present code no longer reproduces fails: the fast commands on every run, the slow ones
(minutes) under ``pytest -m slow tests/test_committed_outputs.py``. On every run, too, the
long research tables' rows of their smallest launches are recomputed (spot checks).
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "experiments" / "MANIFEST.toml"
COMMITTED = ("figures", "experiments/data")


def _entries() -> list[dict]:
    return tomllib.loads(MANIFEST.read_text(encoding="utf-8"))["entry"]


def _on_disk() -> set[str]:
    out = set()
    for top in COMMITTED:
        for dirpath, dirs, files in os.walk(ROOT / top):
            dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
            out |= {(Path(dirpath) / f).relative_to(ROOT).as_posix() for f in files
                    if not f.startswith(".")}
    return out


def test_every_committed_file_is_in_the_manifest():
    listed = [f for e in _entries() for f in e["files"]]
    assert len(listed) == len(set(listed)), "a file is listed twice"
    disk = _on_disk()
    missing = sorted(disk - set(listed))
    assert not missing, f"not in experiments/MANIFEST.toml: {missing}"
    gone = sorted(set(listed) - disk)
    assert not gone, f"listed in experiments/MANIFEST.toml but not committed: {gone}"


def test_manifest_entries_say_where_each_file_comes_from():
    for e in _entries():
        assert e["kind"] in ("measured", "generated", "reference"), e
        if e["kind"] == "measured":
            assert e.get("device") and e.get("command"), e
        elif e["kind"] == "generated":
            assert e.get("command") and e.get("check") in ("fast", "slow", "none"), e
            if e["check"] == "none":
                assert e.get("why"), e
            else:
                assert "{out}" in e["command"], e
        else:
            assert e.get("source"), e


def test_measured_csvs_name_their_device():
    """A measured CSV with a ``device`` column names the manifest's device on every row."""
    for e in _entries():
        if e["kind"] != "measured":
            continue
        for f in e["files"]:
            if not f.endswith(".csv"):
                continue
            df = pd.read_csv(ROOT / f)
            if "device" in df.columns:
                assert set(df["device"].dropna()) == {e["device"]}, f


def same_table(fresh: Path, committed: Path, rtol: float = 1e-6, ignore=()) -> list[str]:
    """Differences between two CSVs: columns, rows, and cells (numbers within ``rtol``,
    NaN equal to NaN; other cells as text). An empty list when they agree."""
    a = pd.read_csv(fresh).drop(columns=list(ignore), errors="ignore")
    b = pd.read_csv(committed).drop(columns=list(ignore), errors="ignore")
    if list(a.columns) != list(b.columns):
        return [f"columns differ: {sorted(set(a.columns) ^ set(b.columns))} "
                f"(or their order)"]
    if len(a) != len(b):
        return [f"{len(a)} rows against {len(b)} committed"]
    return same_cells(a, b, rtol)


def same_cells(a: pd.DataFrame, b: pd.DataFrame, rtol: float = 1e-6) -> list[str]:
    """Differences between the cells of two frames of the same columns and rows."""
    a, b = a.reset_index(drop=True), b.reset_index(drop=True)
    out = []
    for c in b.columns:
        x, y = a[c], b[c]
        if pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y):
            xv, yv = x.to_numpy(float), y.to_numpy(float)
            ok = np.isclose(xv, yv, rtol=rtol, atol=1e-12, equal_nan=True)
        else:
            ok = np.array([str(u) == str(v) or (pd.isna(u) and pd.isna(v))
                           for u, v in zip(x.astype(object), y.astype(object))], dtype=bool)
        if not ok.all():
            i = int(np.flatnonzero(~ok)[0])
            out.append(f"{c}: {int((~ok).sum())} rows differ, first row {i}: "
                       f"{x.iloc[i]!r} (fresh) against {y.iloc[i]!r} (committed)")
    return out


def test_same_table_notices_a_moved_number(tmp_path):
    df = pd.DataFrame({"launch": ["a", "b"], "err": [0.10, -0.05], "note": ["x", None]})
    df.to_csv(tmp_path / "a.csv", index=False)
    df.to_csv(tmp_path / "b.csv", index=False)
    assert same_table(tmp_path / "a.csv", tmp_path / "b.csv") == []
    df.loc[1, "err"] = -0.05 * (1 + 1e-4)
    df.to_csv(tmp_path / "b.csv", index=False)
    assert same_table(tmp_path / "a.csv", tmp_path / "b.csv")[0].startswith("err: 1 rows")
    assert same_table(tmp_path / "a.csv", tmp_path / "b.csv", ignore=["err"]) == []


def _regenerated(check: str):
    out = []
    for e in _entries():
        if e["kind"] == "generated" and e["check"] == check:
            marks = [pytest.mark.slow] if check == "slow" else []
            out.append(pytest.param(e, id=e["command"].split("{out}")[0]
                                    .replace("python experiments/", "").replace("--out", "")
                                    .strip(), marks=marks))
    return out


def _regenerate_and_compare(e: dict, out: Path) -> None:
    cmd = [sys.executable if w == "python" else w
           for w in shlex.split(e["command"].replace("{out}", str(out)))]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, f"{e['command']} failed:\n{r.stderr[-3000:]}"
    problems = []
    for f in e["files"]:
        fresh = out / Path(f).name
        if not fresh.exists():
            problems.append(f"{f}: not written by the command")
        elif f.endswith(".csv"):
            problems += [f"{f}: {p}" for p in same_table(fresh, ROOT / f, e.get("rtol", 1e-6),
                                                         e.get("ignore", ()))]
    assert not problems, ("the committed copy is stale (regenerate it: "
                          f"{e['command'].replace('{out}', str(Path(e['files'][0]).parent))}):\n"
                          + "\n".join(problems))


@pytest.mark.parametrize("entry", _regenerated("fast"))
def test_fast_generated_outputs_are_current(entry, tmp_path):
    _regenerate_and_compare(entry, tmp_path)


@pytest.mark.parametrize("entry", _regenerated("slow"))
def test_slow_generated_outputs_are_current(entry, tmp_path, request):
    """Minutes each (``minutes`` in the manifest): run with ``pytest -m slow``."""
    expr = request.config.getoption("-m") or ""
    if "slow" not in expr or "not slow" in expr:
        pytest.skip("slow (minutes): pytest -m slow tests/test_committed_outputs.py")
    _regenerate_and_compare(entry, tmp_path)


# ------------------------------------------------------------------------------------------
# spot checks of the long research tables: the smallest launches of each, on every run
# ------------------------------------------------------------------------------------------
RESEARCH = ROOT / "experiments" / "l2_research"
DATA = ROOT / "experiments" / "data"


def _research(name: str):
    import importlib
    if str(RESEARCH) not in sys.path:
        sys.path.insert(0, str(RESEARCH))
    return importlib.import_module(name)


def _rows_agree(fresh: pd.DataFrame, committed: str, keys: list[str], rtol: float = 1e-6):
    """The committed rows with ``fresh``'s keys hold ``fresh``'s values (in ``fresh``'s
    columns)."""
    old = pd.read_csv(DATA / committed)
    assert set(fresh.columns) <= set(old.columns), set(fresh.columns) - set(old.columns)
    idx = old.set_index(keys)
    at = [tuple(r) if len(keys) > 1 else r[0] for r in fresh[keys].itertuples(index=False)]
    want = idx.loc[at].reset_index()
    problems = same_cells(fresh[list(fresh.columns)], want[list(fresh.columns)], rtol)
    assert not problems, (f"experiments/data/{committed} is stale for {len(fresh)} small "
                          "launches (regenerate it: experiments/MANIFEST.toml):\n"
                          + "\n".join(problems))


def _launch(rows, batch, heads, seq, d, causal, order):
    return [r for r in rows if (int(r["batch"]), int(r["heads"]), int(r["seq"]),
                                int(r["head_dim"]), str(r["causal"]) == "True",
                                r["grid_order"]) == (batch, heads, seq, d, causal, order)]


SMALL = (8, 16, 1024, 64, False, "head-major")        # a validated launch whose K/V miss


def test_replay_traced_rows_of_small_launches_are_current():
    """gpu_replay.csv (replay_traced.py, minutes): the cache response on the measured
    schedule, on the model's schedule and the dynamic model, for two 1K-key launches."""
    rt = _research("replay_traced")
    rows = pd.read_csv(DATA / "gpu_traced.csv").to_dict("records")
    pick = _launch(rows, *SMALL) + _launch(rows, 8, 16, 1024, 64, True, "head-major")
    assert len(pick) == 2
    _rows_agree(pd.DataFrame([rt.one(r) for r in pick]), "gpu_replay.csv", ["launch"])


def test_nru_model_draws_startup_rows_of_a_small_launch_are_current(tmp_path, monkeypatch):
    """gpu_nru_model.csv (an hour), gpu_draws.csv and gpu_startup_model.csv (minutes): their
    rows of one validated 1K-key launch, recomputed by the scripts themselves (nru_model with
    two of its columns)."""
    nru = _research("nru_model")
    one = _launch(nru.launches(), *SMALL)
    assert len(one) == 1
    monkeypatch.setattr(nru, "POLICIES", {k: nru.POLICIES[k]
                                          for k in ("response", "nru_prefetch", "clock_startup")})
    for name, argv, out in ((nru, ["--all"], "gpu_nru_model.csv"),
                            (_research("draws"), [], "gpu_draws.csv"),
                            (_research("startup_model"), [], "gpu_startup_model.csv")):
        monkeypatch.setattr(name, "launches", lambda upto=None: one)
        assert name.main(["--out", str(tmp_path), "--workers", "1", *argv]) == 0
        _rows_agree(pd.read_csv(tmp_path / out), out, ["set", "shape", "grid_order"])


def test_partner_pace_row_of_a_small_launch_is_current(tmp_path, monkeypatch):
    """gpu_partner_pace.csv (minutes): the row of the traced 8x16x1Kx64 causal head-major
    launch."""
    pp = _research("partner_pace")
    pick = [j for j in pp.jobs() if j[0] == "gpu_traced"
            and j[1]["trace_key"] == "8x16x1024x64-causal_head-major"]
    assert len(pick) == 1
    monkeypatch.setattr(pp, "jobs", lambda: pick)
    assert pp.main(["--out", str(tmp_path), "--workers", "1"]) == 0
    _rows_agree(pd.read_csv(tmp_path / "gpu_partner_pace.csv"), "gpu_partner_pace.csv",
                ["traced", "launch"])
