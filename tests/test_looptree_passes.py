"""Pass branches and per-storage pipeline stages in a user's loop tree (TOML): trees equal to
the fused-3pass, fused-2pass and unfused presets evaluate identically; a two-kernel tree and
a storage node's own stages are checked against hand counts; bad pass trees are one line."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_looptree import _same

from iosim.cli import main
from iosim.errors import IosimError
from iosim.looptree.files import load_mapping_file, mapping_from_dict
from iosim.mapping import mapping_for
from iosim.traffic import evaluate_arrays

DATA = Path(__file__).parent / "data" / "looptree"
SHAPES = [dict(n=1024, d=64), dict(n=1000, d=128, causal=True),
          dict(n=300, d=64, heads=4, kv_heads=1, causal=True)]

#: (file, cascade, the preset it equals and its fields)
EQUAL = [("fused3-buffer", "attention-3pass", "fused-3pass", dict(row_policy="buffer")),
         ("fused3-recompute", "attention-3pass", "fused-3pass", dict(row_policy="recompute")),
         ("fused2-buffer", "attention-2pass", "fused-2pass", dict(row_policy="buffer")),
         ("fused2-spill", "attention-2pass", "fused-2pass", dict(row_policy="spill")),
         ("unfused", "attention-1pass", "unfused", dict(softmax_rows=1))]


@pytest.mark.parametrize("shape", SHAPES, ids=["dense", "causal", "grouped"])
@pytest.mark.parametrize("name, casc, kind, kw", EQUAL, ids=[e[0] for e in EQUAL])
def test_toml_pass_trees_evaluate_like_their_presets(name, casc, kind, kw, shape):
    m = load_mapping_file(DATA / f"{name}.toml", casc, "h100")
    ref = mapping_for(casc, kind, block_q=64, block_kv=64, **kw)
    _same(evaluate_arrays(casc, m, "h100", **shape), evaluate_arrays(casc, ref, "h100", **shape))


def test_recompute_counts_come_from_the_pass_analysis():
    """attention-3pass computes QK and SQK in pass 1 and SN in pass 2: recomputed in every
    later sweep, 3, 3 and 2 times; the FLOPs of the exp (SN) are twice the buffered tree's."""
    m = load_mapping_file(DATA / "fused3-recompute.toml", "attention-3pass", "h100")
    assert dict(m.tree.recompute) == {"QK": 3, "SQK": 3, "SN": 2}
    b = load_mapping_file(DATA / "fused3-buffer.toml", "attention-3pass", "h100")
    shape = dict(n=512, d=64)
    fr = evaluate_arrays("attention-3pass", m, "h100", **shape)["flops"]
    fb = evaluate_arrays("attention-3pass", b, "h100", **shape)["flops"]
    n, d = 512, 64
    # Q K^T: 2 N^2 d per computation; computed three times instead of once
    assert float(fr["matmul"][0] - fb["matmul"][0]) == 2 * (2 * n * n * d)
    # exp: N^2 per computation of SN, computed twice instead of once
    assert float(fr["exp"][0] - fb["exp"][0]) == n * n


def test_two_kernel_tree_counts_by_hand():
    """Kernel 1 writes S = Q K^T (N x N) once; kernel 2 reads it back once with V. At
    N = 1024, d = 64, 64 x 64 tiles (16 query tiles): Q read once, K and V once per query
    tile, S written and read N^2 times, O written once."""
    m = load_mapping_file(DATA / "unfused-2kernel.toml", "attention-1pass", "h100")
    assert m.tree.spills == ("S",) and len(m.tree.kernel_list()) == 2
    r = evaluate_arrays("attention-1pass", m, "h100", n=1024, d=64, l2="off")
    n, d, tiles = 1024, 64, 1024 // 64
    reads = {t: float(v[0]) for t, v in r["model_reads"].items()}
    writes = {t: float(v[0]) for t, v in r["model_writes"].items()}
    assert reads == {"Q": n * d, "K": tiles * n * d, "V": tiles * n * d, "S": n * n}
    assert writes == {"S": n * n, "O": n * d}


def test_storage_stages_count_their_tiles_that_deep():
    """``stages = 2`` on the node streaming S and V: two copies of each 64 x 64 tile in
    shared memory (bf16), whatever the mapping's num_stages; the tile simulator agrees."""
    from iosim.trace import simulate
    d = tomllib.loads((DATA / "unfused-2kernel.toml").read_text())
    two = mapping_from_dict(d, "attention-1pass", "h100")
    del d["kernel"][1]["node"][0]["node"][1]["node"][0]["stages"]
    one = mapping_from_dict(d, "attention-1pass", "h100")
    shape = dict(n=1024, d=64)
    fp2 = evaluate_arrays("attention-1pass", two, "h100", **shape)["footprint"]["SMEM"][0]
    fp1 = evaluate_arrays("attention-1pass", one, "h100", **shape)["footprint"]["SMEM"][0]
    # kernel 2 holds two S tiles and two V tiles of 64 x 64 (2 bytes each): one more of
    # each than without stages (kernel 1 holds a Q and a K tile: less)
    assert float(fp2[0]) == 2 * (64 * 64 + 64 * 64) * 2
    assert float(fp2[0] - fp1[0]) == (64 * 64 + 64 * 64) * 2
    # the node's own stages, not the mapping's num_stages (1 here)
    flat = two.with_(num_stages=1, stages_in_footprint=True)
    fpf = evaluate_arrays("attention-1pass", flat, "h100", **shape)["footprint"]["SMEM"][0]
    assert float(fpf[0]) == float(fp2[0])
    sim = simulate("attention-1pass", two, "h100", n=1024, e=64)
    assert sim.peak_bytes["SMEM"] == float(fp2[0])


def test_stages_equal_num_stages_in_the_footprint_like_the_preset():
    d = tomllib.loads((DATA / "fa2.toml").read_text())
    d["kernel"][0]["node"][0]["node"][2]["node"][0]["stages"] = 3
    m = mapping_from_dict(d, "attention-1pass", "h100")
    ref = mapping_for("attention-1pass", "fa2", num_stages=3, stages_in_footprint=True)
    a = evaluate_arrays("attention-1pass", m, "h100", n=1024, d=64)
    b = evaluate_arrays("attention-1pass", ref, "h100", n=1024, d=64)
    assert float(a["footprint"]["SMEM"][0][0]) == float(b["footprint"]["SMEM"][0][0])


def _d(name: str) -> dict:
    return tomllib.loads((DATA / f"{name}.toml").read_text())


def _passes_node(d: dict) -> dict:
    return next(x for x in d["kernel"][0]["node"][0]["node"] if "passes" in x)


@pytest.mark.parametrize("name, casc, edit, match", [
    ("fused3-buffer", "attention-3pass", lambda d: _passes_node(d).update(passes="later"),
     "passes = 'later' is not one of keep, spill, recompute"),
    ("fused3-buffer", "attention-3pass", lambda d: _passes_node(d).update(crossing=["SN"]),
     "'SN' crosses on chip \\(keep\\), but no storage node keeps it"),
    ("fused3-buffer", "attention-3pass", lambda d: _passes_node(d).update(crossing=["ZZ"]),
     "tensor 'ZZ' is not in cascade"),
    ("fused3-buffer", "attention-3pass", lambda d: _passes_node(d)["node"].pop(),
     "a pass branch holds two or more sweeps"),
    ("fused3-recompute", "attention-3pass", lambda d: _passes_node(d)["node"].pop(),
     "recomputing needs one sweep per pass of the cascade over the keys \\(3\\)"),
    ("fused3-recompute", "attention-3pass", lambda d: _passes_node(d).update(crossing=["Q"]),
     "'Q' is not computed in a pass over the keys"),
    ("fused2-spill", "attention-2pass", lambda d: _passes_node(d).update(crossing=["SQK"]),
     "'SQK' crosses by spill, but no sweep stores it"),
    ("unfused", "attention-1pass", lambda d: d.update(passes="keep"),
     "kernels keep nothing on chip for one another"),
    ("unfused", "attention-1pass", lambda d: d.pop("passes"),
     "crossing needs passes"),
    ("unfused-2kernel", "attention-1pass",
     lambda d: d["kernel"][1]["node"][0]["node"][1]["node"][0].update(stages=0),
     "stages must be a positive whole number"),
    ("unfused-2kernel", "attention-1pass",
     lambda d: d["kernel"][1]["node"][0]["node"][1]["node"][0].update(stream=False),
     "stages = 2 pipelines streamed loads; this node streams nothing"),
    ("fused3-buffer", "attention-3pass", lambda d: _passes_node(d).update(loop="M"),
     "a node has exactly one of loop, split, level, compute, passes"),
])
def test_bad_pass_trees_are_one_line(name, casc, edit, match):
    d = _d(name)
    edit(d)
    with pytest.raises(IosimError, match=match):
        mapping_from_dict(d, casc, "h100")


def test_cli_bad_pass_tree_exits_2_with_one_line(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text((DATA / "fused3-buffer.toml").read_text().replace('passes = "keep"',
                                                                   'passes = "stash"'))
    r = CliRunner().invoke(main, ["evaluate", "attention-3pass", "--mapping", str(p),
                                  "--seq-len", "1024"])
    assert r.exit_code == 2 and "passes = 'stash' is not one of" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_the_time_model_pipelines_a_node_by_its_own_stages():
    """A storage node streaming K and V 2 deep, in a tree whose mapping says num_stages = 3,
    times as the same nest with num_stages = 2 (the step's load pipelining, the matmul loop's
    measured depth and the programs per SM all follow the node), and not as 3."""
    from iosim.traffic import evaluate
    d = tomllib.loads((DATA / "fa2.toml").read_text())
    d["kernel"][0]["node"][0]["node"][2]["node"][0]["stages"] = 2
    own = mapping_from_dict(d, "attention-1pass", "h100").with_(num_stages=3)
    kw = dict(n=8192, d=128, batch=2, heads=16)
    t_own = evaluate("attention-1pass", own, "h100", **kw).time_s
    two = evaluate("attention-1pass", mapping_for("attention-1pass", "fa2", num_stages=2),
                   "h100", **kw).time_s
    three = evaluate("attention-1pass", mapping_for("attention-1pass", "fa2", num_stages=3),
                     "h100", **kw).time_s
    assert two != pytest.approx(three, rel=1e-3)
    assert t_own == pytest.approx(two, rel=1e-9)
