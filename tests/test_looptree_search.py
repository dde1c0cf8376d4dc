"""Searching a user's loop tree: its symbolic tiles over the presets' candidate grids, with
the same objectives and runners-up; the best tree written back as TOML."""
from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from iosim.cli import main
from iosim.looptree.files import load_mapping_file, mapping_from_dict, with_fields
from iosim.search import kernel_tiles, search
from iosim.traffic import evaluate_arrays

DATA = Path(__file__).parent / "data" / "looptree"
FA2 = DATA / "fa2.toml"


def _tree(path=FA2, casc="attention-1pass"):
    return load_mapping_file(path, casc, "h100")


@pytest.mark.parametrize("objective, kw", [
    ("time", dict(n=4096, d=128)),
    ("traffic", dict(n=1000, d=64, causal=True, sram_bytes=[32 * 1024, 96 * 1024])),
])
def test_a_tree_equal_to_fa2_searches_like_the_preset(objective, kw):
    """The preset path is the independent check: the same candidates, the same best
    tilings, objectives and runners-up."""
    a = search("attention-1pass", "h100", objective=objective, mappings=[_tree()], **kw)
    b = search("attention-1pass", "h100", objective=objective, mappings=["fa2"], **kw)
    assert a.candidates == b.candidates
    for col in ("block_q", "block_kv", "time_s", "backing_bytes", "fits"):
        np.testing.assert_array_equal(a.frame[col].to_numpy(), b.frame[col].to_numpy())
    assert a.frame["variant"].str.startswith("my-fa2").all()
    for col in ("block_q", "block_kv", "time_s", "backing_bytes", "behind"):
        np.testing.assert_array_equal(a.runners_up[col].to_numpy(), b.runners_up[col].to_numpy())


def test_a_tile_fixed_by_a_number_is_not_searched():
    d = tomllib.loads(FA2.read_text())
    del d["block_q"]
    d["kernel"][0]["node"][0]["tile"] = 64            # the query tile fixed
    m = mapping_from_dict(d, "attention-1pass", "h100")
    assert m.tree.fixed_tiles == ("block_q",)
    res = search("attention-1pass", "h100", n=4096, d=128, objective="time", mappings=[m])
    # block_kv over 16..256 (5 powers of two) x 2 warp counts x 3 stage counts
    assert res.candidates == len(kernel_tiles(4096)) * 2 * 3 == 30
    assert res.best()["block_q"] == 64
    assert set(res.runners_up["block_q"]) == {64}


def test_block_rows_is_searched_as_variants_and_the_best_re_evaluates():
    m = _tree(DATA / "unfused.toml")
    res = search("attention-1pass", "h100", n=512, d=64, objective="traffic", mappings=[m],
                 runners_up=3)
    assert res.extra_tiles == ("softmax_rows",)
    best = res.best()
    assert best["softmax_rows"] in (1, 2, 4, 8, 16, 32, 64, 128)
    r = evaluate_arrays("attention-1pass", m.with_(**best), "h100", n=512, d=64)
    hbm = r["levels"]["HBM"][0] + r["levels"]["HBM"][1]
    assert float(hbm[0]) == float(res.frame["backing_bytes"][0])
    assert "softmax_rows=" in res.render()


def test_grids_never_recompile_the_tree(monkeypatch):
    """Lowering runs a fixed number of times per variant (warps x stages), whatever the
    number of candidate tilings: 150 candidates lower as often as 54."""
    import iosim.looptree.lower as low
    calls = []
    real = low.lower
    monkeypatch.setattr(low, "lower", lambda *a, **k: calls.append(1) or real(*a, **k))
    counts = []
    for n, tag in ((4096, "a"), (64, "b")):
        calls.clear()
        m = _tree().with_(loop_order=("B", "H", "P", "M", tag))   # no cache has seen it
        res = search("attention-1pass", "h100", n=n, d=128, objective="time", mappings=[m])
        counts.append((res.candidates, len(calls)))
    assert counts[0][0] == 150 and counts[1][0] == 3 * 3 * 6
    assert counts[0][1] == counts[1][1] <= 3 * 6


def test_with_fields_keeps_comments_and_the_tree():
    text = 'name = "t"\nblock_q = 128   # the query tile\n\n[[kernel]]\nname = "k"\n'
    out = with_fields(text, {"block_q": 32, "num_warps": 4})
    assert "block_q = 32   # the query tile" in out
    d = tomllib.loads(out)
    assert d["block_q"] == 32 and d["num_warps"] == 4 and d["kernel"] == [{"name": "k"}]


def _cli(*args):
    return CliRunner().invoke(main, list(args))


def test_cli_searches_a_tree_file_and_writes_the_best(tmp_path):
    out = tmp_path / "best.toml"
    r = _cli("search", "attention-1pass", "--hw", "h100", "--seq-len", "4096", "--head-dim",
             "128", "--mapping", str(FA2), "--write-best", str(out), "--json")
    assert r.exit_code == 0, r.output
    import json
    best = json.loads(r.output)["best"][0]
    m = load_mapping_file(out, "attention-1pass", "h100")
    assert (m.block_q, m.block_kv, m.num_warps, m.num_stages) == (
        best["block_q"], best["block_kv"], best["num_warps"], best["num_stages"])
    # the written tree evaluates to the time the search reported for it
    t = evaluate_arrays("attention-1pass", m.with_(stages_in_footprint=True), "h100", n=4096,
                        d=128)["time_s"]
    assert float(t[0]) == pytest.approx(best["time_s"], rel=1e-12)
    # the rest of the file is as written
    assert out.read_text().split("[tensors]")[1] == FA2.read_text().split("[tensors]")[1]


@pytest.mark.parametrize("args, match", [
    (["--mapping", "fa2", "--write-best", "x.toml"], "give exactly one --mapping FILE.toml"),
    (["--mapping", str(FA2), "--hw", "two-level"], "storage level 'SMEM' is not in the hardware"),
])
def test_cli_bad_tree_search_is_one_line(args, match, tmp_path):
    r = _cli("search", "attention-1pass", "--seq-len", "1024", *args)
    assert r.exit_code == 2 and match in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1
