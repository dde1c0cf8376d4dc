"""`iosim cascades ...` from the command line."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from iosim.cli import main


def run(*args):
    return CliRunner().invoke(main, list(args))


def test_list_names_every_required_algorithm():
    r = run("cascades", "list", "--json")
    assert r.exit_code == 0
    names = {c["name"] for c in json.loads(r.output)["cascades"]}
    assert {"attention-3pass", "attention-2pass", "attention-1pass", "flash1", "decode-splitk",
            "linear", "lightning2", "sigmoid"} <= names


@pytest.mark.parametrize("name,extra", [
    ("attention-1pass", []), ("attention-1pass", ["--causal", "--seq-len", "100",
                                                  "--kv-len", "130"]),
    ("flash1", ["--logit-scale", "1000"]), ("decode-splitk", ["--seq-len", "2", "--kv-len", "999"]),
    ("lightning2", ["--seq-len", "130"]), ("sigmoid", []), ("linear", []), ("attention-gqa", []),
    ("attention-masked", []), ("attention-3pass", ["--dtype", "float32"]),
    ("attention-blocksparse", ["--seq-len", "300", "--kv-len", "200", "--param", "block_q=32"]),
])
def test_run_reports_exact_agreement(name, extra):
    r = run("cascades", "run", name, "--json", *extra)
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["exact"] is True and out["max_rel_error"] < out["tolerance"]


def test_run_user_file_and_param_override(tmp_path):
    import cascades
    p = tmp_path / "mine.casc"
    p.write_text(cascades.library.text("attention-2pass"))
    r = run("cascades", "run", str(p), "--param", "block_kv=7", "--seq-len", "50", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["params"] == {"block_kv": 7}


def test_passes_and_show(tmp_path):
    r = run("cascades", "passes", "attention-3pass", "--json", "--seq-len", "1024")
    assert r.exit_code == 0
    assert json.loads(r.output)["ranks"]["M"]["passes"] == 3
    png = tmp_path / "g.png"
    r = run("cascades", "show", "attention-1pass", "--graph", str(png))
    assert r.exit_code == 0 and png.stat().st_size > 1000
    assert "RM[m1+1, p]" in r.output
    dot = tmp_path / "g.dot"
    assert run("cascades", "show", "attention-3pass", "--graph", str(dot)).exit_code == 0
    assert '"SQK" -> "GM"' in dot.read_text()


@pytest.mark.parametrize("args,fragment", [
    (["cascades", "run", "attention-1pas"], "did you mean 'attention-1pass'"),
    (["cascades", "run", "linear", "--causal"], "has no 'causal' parameter"),
    (["cascades", "run", "attention-1pass", "--param", "nonsense"], "expected NAME=VALUE"),
    (["cascades", "run", "attention-1pass", "--param", "block_kv=0"], "positive integer"),
    (["cascades", "show", "flash1", "--graph", "x.gif"], "unknown format"),
])
def test_bad_cli_input_is_one_line(args, fragment):
    r = run(*args)
    assert r.exit_code == 2
    assert fragment in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_nonsense_option_values_are_rejected():
    r = run("cascades", "run", "attention-1pass", "--seq-len", "0")
    assert r.exit_code == 2 and "Traceback" not in r.output
