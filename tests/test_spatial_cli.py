"""``iosim spatial`` from the command line: reports, JSON, the reproduction, one-line errors."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from iosim.cli import main


def run(*args):
    return CliRunner().invoke(main, list(args))


def test_readme_command():
    r = run("spatial", "attention-1pass", "--hw", "fusemax", "--config", "fusemax", "--model",
            "bert", "--seq-len", "64K")
    assert r.exit_code == 0, r.output
    for text in ("attention-1pass on fusemax", "binding (tile): 2d: BQK LM SLN SLD SLNV",
                 "1d: RM PRM SPD RD SPNV RNV O", "folded: SQK into BQK", "pipelined",
                 "utilization  2d 0.991   1d 1.000", "compute-bound", "energy"):
        assert text in r.output


def test_json_and_several_lengths():
    r = run("spatial", "--config", "flat", "--model", "xlm", "--seq-len", "1K", "--seq-len", "1M",
            "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)["results"]
    assert [d["shape"]["M"] for d in doc] == [1024, 1048576]
    assert doc[1]["bound"] == "memory" and doc[0]["bound"] == "compute"
    assert doc[0]["utilization"]["2d"] == pytest.approx(0.25, abs=1e-4)
    for key in ("latency_s", "energy_pj", "dram_bytes", "binding", "einsums", "plans"):
        assert key in doc[0]


def test_bind_and_other_cascades():
    r = run("spatial", "attention-1pass", "--config", "fusemax", "--bind", "SLN=1d", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["binding"]["assign"]["SLN"] == "1d"
    r = run("spatial", "attention-3pass", "--config", "fusemax", "--seq-len", "64K")
    assert r.exit_code == 0, r.output
    assert "multi-pass fibres" in r.output and "memory-bound" in r.output


def test_nest_issue_and_tile_sequential():
    r = run("spatial", "--config", "flat", "--seq-len", "1M", "--nest", "--no-einsums")
    assert r.exit_code == 0, r.output
    for text in ("loop nest", "for c in [0:1024) (tile P:1024)", "store QK[j1,c] x spill=1",
                 "load SN[j3,c] x spill=1", "memory-bound"):
        assert text in r.output, text
    r = run("spatial", "--config", "cascade", "--seq-len", "4K", "--json")
    doc = json.loads(r.output)
    assert doc["options"]["issue"] == {"1d": "serial"} and "loop_nest" in doc["plans"][0]
    r2 = run("spatial", "--config", "cascade", "--seq-len", "4K", "--issue", "1d=pipelined",
             "--json")
    assert json.loads(r2.output)["latency_s"] < 0.8 * doc["latency_s"]
    r = run("spatial", "--config", "fusemax", "--schedule", "tile-sequential", "--seq-len", "4K")
    assert r.exit_code == 0 and "schedule: tile-sequential" in r.output
    assert "utilization  2d 0.299" in r.output


def test_list():
    r = run("spatial", "list")
    assert r.exit_code == 0, r.output
    for text in ("fusemax", "flat", "+Architecture", "XLM"):
        assert text in r.output


@pytest.mark.parametrize("args,msg", [
    (["--bind", "O=2d"], "cannot bind Einsum O to array '2d'"),
    (["--bind", "SLN"], "expected EINSUM=ARRAY"),
    (["--bind", "SLN=3d"], "no array '3d'"),
    (["--pe-dim", "0"], "must be a positive"),
    (["--buffer", "2KiB"], "too small"),
    (["--model", "gpt"], "unknown model"),
    (["--config", "flatt"], "did you mean 'flat'"),
    (["--seq-len", "x"], "cannot read sequence length"),
    (["--hw", "tpu"], "unknown spatial hardware"),
    (["--schedule", "parallel"], "Invalid value"),
    (["--nope"], "No such option"),
    (["--issue", "1d=fast"], "expected ARRAY=serial or ARRAY=pipelined"),
    (["--issue", "3d=serial"], "no array '3d'"),
])
def test_bad_input_is_one_line_exit_2(args, msg):
    r = run("spatial", *args)
    assert r.exit_code == 2, r.output
    out = r.output.strip()
    assert out.startswith("error: ") and "\n" not in out and msg in out, out
    assert "Traceback" not in out


def test_zero_size_array_file(tmp_path):
    f = tmp_path / "z.toml"
    f.write_text((
        'name = "z"\nclock = "1 GHz"\n[dram]\nbandwidth = "1 GB/s"\n[buffer]\ncapacity = "1 MiB"\n'
        '[[array]]\nname = "2d"\nshape = [0, 4]\nops = {mac = 1}\n'))
    r = run("spatial", "--hw", str(f))
    assert r.exit_code == 2 and r.output.startswith("error: ") and "positive" in r.output


def test_reproduce_writes_csvs(tmp_path):
    r = run("spatial", "reproduce", "--out", str(tmp_path), "--no-figures")
    assert r.exit_code == 0, r.output
    assert "attention speedup over FLAT" in r.output
    for name in ("results", "pareto", "passes", "headline", "vs_paper"):
        assert (tmp_path / f"fusemax_{name}.csv").is_file()
    h = pd.read_csv(tmp_path / "fusemax_headline.csv").set_index("metric")
    assert h.loc["attention speedup over FLAT", "within_10pct"]
