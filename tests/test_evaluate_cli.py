"""``iosim evaluate`` and ``iosim search`` from the command line."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from iosim.cli import main


def run(*args):
    return CliRunner().invoke(main, list(args))


def test_bare_evaluate_runs_a_default():
    r = run("evaluate")
    assert r.exit_code == 0, r.output
    assert "attention-1pass with mapping fa2 on h100 (bf16)" in r.output
    assert "N=4096 queries x 4096 keys, d=128" in r.output


def test_readme_command_is_readable():
    r = run("evaluate", "attention-1pass", "--hw", "h100", "--seq-len", "4096", "--head-dim", "128")
    assert r.exit_code == 0, r.output
    for text in ("What the numbers mean", "Loop nest", "for i in [0:32)", "for j in [0:64)",
                 "HBM", "L2", "SMEM", "Compute:", "Time (parallel model)", "programs",
                 "Roofline lower bound", "IO lower bound"):
        assert text in r.output


def test_json_schema_and_values():
    N, d, Br = 2048, 64, 128
    r = run("evaluate", "attention-1pass", "--hw", "h100", "--seq-len", str(N), "--head-dim",
            str(d), "--block-m", str(Br), "--block-n", "64", "--l2", "off", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    for key in ("levels", "flops", "time_s", "bound", "mapping", "time", "roofline_s"):
        assert key in doc
    t = doc["time"]
    assert t["time_s"] == doc["time_s"] and doc["time_s"] >= doc["roofline_s"]
    (k,) = t["kernels"]
    assert k["programs"] == N // Br          # one program per query tile
    assert k["steps_per_program"] == N // 64  # one step per key tile
    assert k["programs_per_sm"] >= 1 and k["waves"] == pytest.approx(
        k["programs"] / (132 * k["programs_per_sm"]))
    hbm = doc["levels"]["HBM"]
    assert set(hbm) >= {"read_bytes", "write_bytes", "per_tensor"}
    q = hbm["per_tensor"]["Q"]
    assert set(q) == {"read_bytes", "write_bytes"}
    assert q["read_bytes"] == N * d * 2                        # bf16, read once
    assert hbm["per_tensor"]["K"]["read_bytes"] == N * d * 2 * (N // Br)
    assert hbm["per_tensor"]["O"]["write_bytes"] == N * d * 2
    assert doc["mapping"]["block_q"] == Br and doc["mapping"]["block_kv"] == 64
    assert doc["flops"]["matmul"] == 4 * N * N * d


def test_aliases_and_options():
    a = json.loads(run("evaluate", "--block-q", "64", "--block-kv", "32", "--json").output)
    b = json.loads(run("evaluate", "--block-m", "64", "--block-n", "32", "--json").output)
    assert a["levels"] == b["levels"]
    c = json.loads(run("evaluate", "--causal", "--batch", "2", "--heads", "4", "--kv-len",
                       "8192", "--dtype", "fp16", "--json").output)
    assert c["shapes"]["causal"] and c["shapes"]["kv_len"] == 8192 and c["shapes"]["heads"] == 4


def test_symbolic():
    r = run("evaluate", "--symbolic")
    assert r.exit_code == 0
    assert "K read  = N*d*ceiling(N/Br)" in r.output
    doc = json.loads(run("evaluate", "flash1", "--hw", "two-level", "--sram", "100KiB",
                         "--seq-len", "1024", "--head-dim", "64", "--symbolic", "--json").output)
    assert "ceiling(M/(4*d))" in doc["symbolic"]["total"]


def test_two_level_sram_in_elements_and_fa1_paper_blocks():
    doc = json.loads(run("evaluate", "flash1", "--hw", "two-level", "--sram", "51200el",
                         "--seq-len", "1024", "--head-dim", "64", "--json").output)
    assert doc["mapping"]["block_kv"] == 200 and doc["mapping"]["block_q"] == 64
    # K, V once; Q, O read and O written per (j, i) pair; l, m; init writes counted
    Tc = -(-1024 // 200)
    ph = doc["per_head_elements"]
    assert ph["Q"]["read"] == Tc * 1024 * 64 and ph["O"]["write"] == (Tc + 1) * 1024 * 64


def test_user_cascade_file(tmp_path):
    from cascades.library import text
    p = tmp_path / "mine.casc"
    p.write_text(text("attention-1pass").replace("cascade attention-1pass", "cascade mine"))
    r = run("evaluate", str(p), "--hw", "two-level", "--seq-len", "512", "--head-dim", "64")
    assert r.exit_code == 0, r.output
    assert "mine with mapping fa2" in r.output


@pytest.mark.parametrize("args,msg", [
    (["--hw", "h10"], "did you mean 'h100'"),
    (["--mapping", "fa3"], "did you mean 'fa2'"),
    (["nosuch"], "unknown cascade"),
    (["--seq-len", "0"], "--seq-len"),
    (["--head-dim", "-4"], "--head-dim"),
    (["--kv-len", "0"], "--kv-len"),
    (["--sram", "12"], "bare number"),
    (["--sram", "12XB"], "unknown unit"),
    (["--block-m", "8192"], "larger than --seq-len"),
    (["--block-m", "256", "--block-n", "256", "--head-dim", "192"], "of SMEM but 227.0 KiB fit"),
    (["--dtype", "fp12"], "unknown dtype"),
    (["--bogus"], "No such option"),
    (["linear", "--mapping", "fa2"], "mapping fa2 needs a query-key score"),
    (["--heads", "8", "--kv-heads", "3"], "must be a multiple of kv-heads"),
    (["--kv-len", "12Q"], "--kv-len"),
    (["--grid-order", "diagonal"], "--grid-order"),
    (["--hw", "/nonexistent/hw.toml"], "not found"),
])
def test_bad_input_is_one_line(args, msg):
    r = run("evaluate", *args)
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0]
    assert "Traceback" not in r.output


def test_search_cli():
    r = run("search", "attention-1pass", "--hw", "two-level", "--sram", "2KiB,64KiB,1MiB",
            "--seq-len", "1024", "--head-dim", "64")
    assert r.exit_code == 0, r.output
    assert "saha-ye" in r.output and "fa2" in r.output
    doc = json.loads(run("search", "attention-1pass", "--hw", "two-level", "--sram",
                         "2KiB,64KiB", "--seq-len", "1024", "--head-dim", "64", "--json").output)
    assert len(doc["best"]) == 2 and doc["best"][0]["sram_bytes"] == 2048
    r = run("search", "--sram", "64", "--hw", "two-level")
    assert r.exit_code == 2 and r.output.startswith("error: ")


def test_readme_worked_example_is_current():
    """The README's `iosim evaluate` output is what the command prints now."""
    import os

    from click.testing import CliRunner

    from iosim.cli import main
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    start = readme.index("```\niosim evaluate: attention-1pass") + 4
    block = readme[start:readme.index("```", start)].rstrip("\n")
    res = CliRunner().invoke(main, ["evaluate"])
    assert res.exit_code == 0
    assert res.output.rstrip("\n") == block
