"""The loop tree: presets lower to the nests the models evaluate; user trees in Python and
TOML; the tree's properties replace the mapping's name."""
from __future__ import annotations

import pytest

from iosim.errors import IosimError
from iosim.mapping import Mapping, loop_nest, mapping_for, mapping_tree
from iosim.traffic import evaluate_arrays


def test_chunked_block_mask_read_once_per_chunk_and_key_tile():
    # a chunk of block_q = 128 query rows meets one row of the block mask (its query tile);
    # each key tile of 64 keys one entry of it: N = 1024 -> 8 x 16 entries, each read once
    # (at density 0.25 a quarter of the key tiles are visited)
    m = Mapping(name="chunked", cascade="attention-blocksparse", kind="chunked",
                block_q=128, block_kv=64)
    r = evaluate_arrays("attention-blocksparse", m, "h100", n=1024, d=64)
    assert float(r["model_reads"]["BlockMask"][0]) == 8 * 16
    r = evaluate_arrays("attention-blocksparse", m, "h100", n=1024, d=64, block_density=0.25)
    assert float(r["model_reads"]["BlockMask"][0]) == 8 * 16 * 0.25


# ----------------------------------------------------------------------------- helpers
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from iosim.cli import main  # noqa: E402
from iosim.looptree import Compute, Kernel, Loop, LoopTree, Storage, Use, format_tree  # noqa: E402
from iosim.looptree.files import load_mapping_file, mapping_from_dict  # noqa: E402

DATA = Path(__file__).parent / "data" / "looptree"
SHAPES = [dict(n=1024, d=64), dict(n=1000, d=128, causal=True),
          dict(n=300, d=64, heads=4, kv_heads=1, causal=True)]


def _same(a: dict, b: dict) -> None:
    """Two evaluate_arrays results agree on every count, the footprint and the time."""
    for key in ("model_reads", "model_writes", "backing_reads", "backing_writes", "flops"):
        assert set(a[key]) == set(b[key]), key
        for t in a[key]:
            np.testing.assert_array_equal(a[key][t], b[key][t], err_msg=f"{key}/{t}")
    for lv in a["levels"]:
        np.testing.assert_array_equal(a["levels"][lv][0], b["levels"][lv][0])
        np.testing.assert_array_equal(a["levels"][lv][1], b["levels"][lv][1])
    for lv in a["footprint"]:
        np.testing.assert_array_equal(a["footprint"][lv][0], b["footprint"][lv][0])
    np.testing.assert_array_equal(a["time_s"], b["time_s"])


def _renamed(text: str) -> str:
    """The cascade text with its ranks renamed by hand: P -> T, M -> S, E -> D, F -> V2."""
    import re
    subs = {"P": "T", "M": "S", "E": "D", "F": "V2", "M1": "S1", "M0": "S0",
            "p": "t", "m": "s", "e": "d", "f": "v2", "m1": "s1", "m0": "s0"}
    pat = re.compile(r"\b(" + "|".join(sorted(subs, key=len, reverse=True)) + r")\b")
    return "\n".join(ln if ln.lstrip().startswith(("#", "cascade ")) else
                     pat.sub(lambda mt: subs[mt.group(1)], ln)
                     for ln in text.splitlines()) + "\n"


# ------------------------------------------------------------------------ user trees
@pytest.mark.parametrize("shape", SHAPES)
def test_user_toml_tree_equal_to_the_fa2_preset_evaluates_identically(shape):
    m = load_mapping_file(DATA / "fa2.toml", "attention-1pass", "h100")
    assert m.kind == "tree" and m.block_q == 128 and m.block_kv == 64
    ref = mapping_for("attention-1pass", "fa2", pack_group=False)
    _same(evaluate_arrays("attention-1pass", m, "h100", **shape),
          evaluate_arrays("attention-1pass", ref, "h100", **shape))


@pytest.mark.parametrize("shape", SHAPES[:2])
def test_user_toml_tree_with_three_spilled_sweeps_equals_the_fused_3pass_preset(shape):
    m = load_mapping_file(DATA / "fused3-spill.toml", "attention-3pass", "h100")
    ref = mapping_for("attention-3pass", "fused-3pass", row_policy="spill")
    a = evaluate_arrays("attention-3pass", m, "h100", **shape)
    _same(a, evaluate_arrays("attention-3pass", ref, "h100", **shape))
    # the spilled scores: written once and read twice, N x N elements without a mask
    if not shape.get("causal"):
        n = shape["n"]
        assert float(a["model_writes"]["SQK"][0]) == n * n
        assert float(a["model_reads"]["SQK"][0]) == 2 * n * n


def test_user_tree_in_python_equals_the_preset():
    """The FlashAttention-2 tree written in Python with the cascade's own tensor names."""
    tree = LoopTree((Kernel("forward", (
        Loop("P", "block_q", (
            Storage("sram", (Use("Q"),)),
            Storage("acc", (Use("O", "keep", name="O_acc"), Use("RM", "keep", ranks=("P",)),
                            Use("RD", "keep", ranks=("P",)))),
            Loop("M", "block_kv", (Storage("sram", (Use("K", stream=True), Use("V", stream=True))),
                                   Compute(("SQK",), score=("P", "M"))), var="j", mask="i"),
            Storage("sram", (Use("O", "store"), Use("LSE", "store")))),
             var="i", parallel=True),)),), tensors=(("LSE", (("P",), "stat")),))
    m = Mapping(name="mine", cascade="attention-1pass", kind="tree", tree=tree, block_q=64,
                block_kv=32)
    ref = mapping_for("attention-1pass", "fa2", block_q=64, block_kv=32)
    for shape in SHAPES[:2]:
        _same(evaluate_arrays("attention-1pass", m, "h100", **shape),
              evaluate_arrays("attention-1pass", ref, "h100", **shape))
    txt = format_tree(tree)
    assert "for i in P by block_q (parallel)" in txt
    assert "for j in M by block_kv (mask with i)" in txt


def test_a_numeric_tile_in_the_file_sets_the_mapping_and_moves_the_counts():
    d = _fa2_dict()
    del d["block_q"]
    d["kernel"][0]["node"][0]["tile"] = 64
    m = mapping_from_dict(d, "attention-1pass", "h100")
    assert m.block_q == 64
    r = evaluate_arrays("attention-1pass", m, "h100", n=1024, d=64)
    # K is read once per query tile: 1024 / 64 = 16 tiles of 1024 x 64 keys
    assert float(r["model_reads"]["K"][0]) == 16 * 1024 * 64


def _fa2_dict() -> dict:
    import tomllib
    return tomllib.loads((DATA / "fa2.toml").read_text())


def test_renamed_ranks_evaluate_identically_with_presets_and_user_trees(tmp_path):
    """A cascade written with T, S, D, V2 evaluates as the one with P, M, E, F: under its
    preset and under a user tree that names its loops by the cascade's own ranks."""
    from cascades.library import text
    p = tmp_path / "renamed.casc"
    p.write_text(_renamed(text("attention-1pass")))
    assert "Q[T, D]" in p.read_text()
    shape = dict(n=1000, d=64, causal=True)
    _same(evaluate_arrays(str(p), mapping_for(str(p), "fa2"), "h100", **shape),
          evaluate_arrays("attention-1pass", mapping_for("attention-1pass", "fa2"), "h100",
                          **shape))
    d = _fa2_dict()
    d["tensors"]["LSE"]["ranks"] = ["T"]
    d["kernel"][0]["node"][0]["loop"] = "T"
    d["kernel"][0]["node"][0]["node"][2]["loop"] = "S"
    m = mapping_from_dict(d, str(p), "h100")
    _same(evaluate_arrays(str(p), m, "h100", **shape),
          evaluate_arrays("attention-1pass", load_mapping_file(DATA / "fa2.toml",
                                                               "attention-1pass", "h100"),
                          "h100", **shape))


def test_every_preset_tree_prints_and_lowers_with_its_kernels():
    from iosim.mapping import mappings_for
    for casc in ("attention-1pass", "attention-3pass", "attention-2pass", "decode-splitk",
                 "linear", "lightning2"):
        for kind in mappings_for(casc):
            m = mapping_for(casc, kind)
            if m.derived_blocks:
                m = m.resolve(4096, 64)
            tree = mapping_tree(m, casc)
            nest = loop_nest(m, casc)
            assert len(tree.kernel_list()) == len(nest.phases)
            txt = format_tree(tree)
            assert txt.count("kernel ") == len(nest.phases), (casc, kind)


def test_tree_properties_replace_the_names():
    assert mapping_tree(mapping_for("decode-splitk", "decode-splitk"), "decode-splitk").splits_keys
    assert not mapping_tree(mapping_for("attention-1pass", "fa2"), "attention-1pass").splits_keys
    t = mapping_tree(mapping_for("attention-3pass", "fused-3pass", row_policy="spill"),
                     "attention-3pass")
    assert t.spills == ("SQK",)
    assert mapping_tree(mapping_for("attention-gqa", "fa2"), "attention-gqa",
                        grouped=True).packs_rows
    assert mapping_for("lightning2").preset.tiles == "tied"
    assert mapping_for("attention-3pass", "saha-ye").preset.tile_rule is not None


# ------------------------------------------------------------------------- bad trees
@pytest.mark.parametrize("edit, match", [
    (lambda d: d["kernel"][0]["node"][0].update(loop="X"), "unknown rank 'X'"),
    (lambda d: d["kernel"][0]["node"][0]["node"][0].update(level="L3"),
     "storage level 'L3' is not in the hardware"),
    (lambda d: d["kernel"][0]["node"][0]["node"][0].update(level="HBM"),
     "storage level 'HBM' is off chip"),
    (lambda d: d["kernel"][0]["node"][0]["node"][0].update(load=["Z"]),
     "tensor 'Z' is not in cascade 'attention-1pass'"),
    (lambda d: d["kernel"][0]["node"][0].update(tile="block_z"), "tile 'block_z' is not one of"),
    (lambda d: d["kernel"][0]["node"][0].update(tile=0), "tile must be positive"),
    (lambda d: d["kernel"][0]["node"][0]["node"][2].update(loop="P", mask=False),
     "rank P is tiled twice"),
    (lambda d: d["kernel"][0]["node"][0].update(mask=True), "mask = true needs an enclosing"),
    (lambda d: d["kernel"][0]["node"][0].update(colour="red"), "unknown key 'colour'"),
])
def test_bad_trees_are_refused_with_one_line(edit, match):
    d = _fa2_dict()
    edit(d)
    with pytest.raises(IosimError, match=match):
        mapping_from_dict(d, "attention-1pass", "h100")


def _cli(*args):
    return CliRunner().invoke(main, list(args))


def test_cli_evaluates_a_tree_file_like_the_preset():
    import json
    args = ["--seq-len", "1000", "--head-dim", "64", "--causal", "--json"]
    a = json.loads(_cli("evaluate", "attention-1pass", "--mapping",
                        str(DATA / "fa2.toml"), *args).output)
    b = json.loads(_cli("evaluate", "attention-1pass", "--mapping", "fa2", *args).output)
    for k in ("levels", "flops", "time_s", "per_head_elements"):
        assert a[k] == b[k], k
    assert "tree" in a["mapping"]


def test_cli_show_mapping_prints_the_tree_and_its_nest():
    r = _cli("evaluate", "attention-3pass", "--mapping", "fused-3pass", "--row-policy",
             "recompute", "--seq-len", "1000", "--head-dim", "64", "--show-mapping")
    assert r.exit_code == 0, r.output
    assert "passes (recompute" in r.output
    assert "for i in P by block_q=64 (parallel)" in r.output
    assert "for j2 in [0:16) (tile M:64)" in r.output


def test_cli_bad_tree_file_is_one_line(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text((DATA / "fa2.toml").read_text().replace('loop = "M"', 'loop = "Q"'))
    r = _cli("evaluate", "attention-1pass", "--mapping", str(p), "--seq-len", "1000")
    assert r.exit_code == 2 and "unknown rank 'Q'" in r.output
    assert len(r.output.strip().splitlines()) == 1
    q = tmp_path / "big.toml"
    q.write_text((DATA / "fa2.toml").read_text().replace('tile = "block_q"', "tile = 4096")
                 .replace("block_q = 128\n", ""))
    r = _cli("evaluate", "attention-1pass", "--mapping", str(q), "--seq-len", "1000")
    assert r.exit_code == 2 and "exceeds the extent 1000" in r.output


# ------------------------------------------------------------ one Mapping: model and kernel
def test_a_user_tree_drives_the_model_and_the_generated_kernel():
    """A tree that lowers to the generator's nest is generated from the very Mapping the
    models evaluate: a tile changed in the tree moves the kernel's constant and the counts."""
    from iosim.gpu.kernels import kernel_for
    from iosim.traffic import evaluate
    for bq in (128, 64):
        d = _fa2_dict()
        del d["block_q"]
        d["kernel"][0]["node"][0]["tile"] = bq
        m = mapping_from_dict(d, "attention-1pass", "h100")
        src = kernel_for("attention-1pass", m, head_dim=64, dtype="fp16").source
        assert f"\nBLOCK_M = {bq}\n" in src and "\nBLOCK_N = 64\n" in src
        rep = evaluate("attention-1pass", m, "h100", n=4096, d=64)
        assert rep.time["kernels"][0]["programs"] == 4096 // bq
        r = evaluate_arrays("attention-1pass", m, "h100", n=4096, d=64)
        # K crosses into SMEM once per query tile (HBM sees fewer: the L2 keeps it)
        assert float(r["model_reads"]["K"][0]) == (4096 // bq) * 4096 * 64


def test_a_user_tree_the_generator_does_not_emit_is_refused():
    from iosim.gpu.kernels import kernel_for
    d = _fa2_dict()
    d["kernel"][0]["node"][0]["node"][3]["store"] = ["O"]       # no log-sum-exp
    del d["tensors"]
    m = mapping_from_dict(d, "attention-1pass", "h100")
    with pytest.raises(IosimError, match="runs the 'fa2' loop nest"):
        kernel_for("attention-1pass", m, head_dim=64)


def test_codegen_cli_takes_a_tree_file():
    r = _cli("codegen", "attention-1pass", "--mapping", str(DATA / "fa2.toml"), "--block-m", "32")
    assert r.exit_code == 0, r.output
    assert "\nBLOCK_M = 32\n" in r.output


def test_user_linear_tree_equals_the_preset_and_gets_the_compulsory_bound():
    """Two kernels through a state: the same counts as the linear preset, and (no softmax)
    the compulsory traffic as its bound, not the softmax-attention envelope."""
    m = load_mapping_file(DATA / "linear.toml", "linear", "h100")
    ref = mapping_for("linear", "linear")
    shape = dict(n=2048, d=64)
    a = evaluate_arrays("linear", m, "h100", **shape)
    _same(a, evaluate_arrays("linear", ref, "h100", **shape))
    from iosim.traffic import bound_arrays
    b = bound_arrays(a)
    # Q, K, V read and O written once: 4 x N x d elements
    assert float(b["bound_elements"][0]) == 4 * 2048 * 64
    assert b["bound_binding"][0] == "compulsory"
