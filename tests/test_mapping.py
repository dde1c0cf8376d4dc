"""Mappings: the registry, validation, paper block rules, capacity checks, loop nests."""
from __future__ import annotations

import pytest

from iosim.errors import IosimError
from iosim.hardware import load_hardware
from iosim.mapping import (MAPPINGS, Mapping, Shapes, check_fits, default_mapping,
                           fa1_paper_blocks, format_loop_nest, get_mapping, loop_nest,
                           mappings_for, saha_ye_block)


def test_registry_and_defaults():
    assert set(MAPPINGS) >= {"fa2", "fa1", "unfused", "fused-3pass", "fused-2pass",
                             "decode-splitk", "linear", "lightning2", "saha-ye"}
    assert default_mapping("attention-1pass").kind == "fa2"
    assert default_mapping("flash1").kind == "fa1"
    assert default_mapping("attention-3pass").kind == "fused-3pass"
    assert default_mapping("decode-splitk").kind == "decode-splitk"
    assert mappings_for("attention-1pass")[0] == "fa2"
    for name in MAPPINGS:
        m = get_mapping(name)
        assert loop_nest(m).phases             # every named mapping builds


def test_kernel_generator_attributes_kept():
    m = get_mapping("fa2", block_q=64, block_kv=32, num_warps=4, num_stages=2,
                    grid_order="head-major")
    assert (m.block_q, m.block_kv, m.num_warps, m.num_stages, m.grid_order) == \
        (64, 32, 4, 2, "head-major")
    assert m.to_dict()["block_q"] == 64


def test_unknown_names_suggest():
    with pytest.raises(IosimError, match=r"unknown mapping 'fa3'.*did you mean 'fa2'"):
        get_mapping("fa3")
    with pytest.raises(IosimError, match="unknown field 'blok_q'.*did you mean 'block_q'"):
        get_mapping("fa2", blok_q=64)
    with pytest.raises(IosimError, match="row_policy 'spil'.*did you mean 'spill'"):
        get_mapping("fused-3pass", row_policy="spil")


@pytest.mark.parametrize("field,value", [("block_q", 0), ("block_kv", -3), ("num_warps", 0),
                                         ("split_kv", 1.5), ("block_q", True)])
def test_bad_values(field, value):
    with pytest.raises(IosimError, match=f"{field} must be a positive integer"):
        get_mapping("fa2", **{field: value})


def test_mapping_cascade_compatibility():
    with pytest.raises(IosimError, match="mapping fa2 needs a query-key score.*cascade 'linear'"):
        loop_nest(get_mapping("fa2"), "linear")
    with pytest.raises(IosimError, match="square"):
        Mapping(name="x", cascade="attention-3pass", kind="saha-ye", block_q=8, block_kv=16)


def test_paper_block_rules():
    # FlashAttention Algorithm 1: Bc = ceil(M / 4d), Br = min(Bc, d)
    assert fa1_paper_blocks(100 * 1024 / 2, 64) == (200, 64)
    assert fa1_paper_blocks(1000, 64) == (4, 4)
    # Saha & Ye: B = floor(sqrt(M / 4))
    assert saha_ye_block(1000) == 15 and saha_ye_block(4) == 1
    with pytest.raises(IosimError):
        saha_ye_block(3)
    m = get_mapping("fa1").resolve(51200, 64)
    assert (m.block_q, m.block_kv) == (64, 200)


def test_check_fits_message():
    hw = load_hardware("h100")
    m = get_mapping("fa2", block_q=256, block_kv=256)
    # Q 256x256 + K + V, bf16 = 384 KiB of SMEM
    with pytest.raises(IosimError, match=r"tiles need 384\.0 KiB of SMEM but 227\.0 KiB fit: "
                                         r"reduce block_q or block_kv"):
        check_fits(m, hw, Shapes(n=4096, e=256))
    need = check_fits(get_mapping("fa2"), hw, Shapes(n=4096, e=128))
    assert need["SMEM"] == 2 * (128 * 128 + 2 * 64 * 128)


def test_footprint_counts_softmax_state():
    """The two-level machine keeps everything in its SRAM: tiles, the O accumulator, the
    running max and sum, and the score tile (AccelForge's model drops the last three)."""
    hw = load_hardware("two-level")
    Br, Bc, d = 64, 32, 64
    need = check_fits(get_mapping("fa2", block_q=Br, block_kv=Bc), hw, Shapes(n=512, e=d))
    assert need["SRAM"] == 2 * (Br * d + 2 * Bc * d + Br * d + 2 * Br + Br * Bc)
    staged = get_mapping("fa2", block_q=Br, block_kv=Bc, stages_in_footprint=True,
                         num_stages=3)
    need3 = check_fits(staged, hw, Shapes(n=512, e=d))
    assert need3["SRAM"] - need["SRAM"] == 2 * 2 * (2 * Bc * d)


def test_shapes_validation():
    with pytest.raises(IosimError, match="seq-len must be a positive integer"):
        Shapes(n=0, e=64)
    with pytest.raises(IosimError, match="kv-len must be a positive integer"):
        Shapes(n=10, e=64, kv_len=0)
    with pytest.raises(IosimError, match="unknown dtype"):
        Shapes(n=10, e=64, dtype="fp12")
    s = Shapes(n=10, e=64)
    assert (s.kv_len, s.f) == (10, 64)


def test_loop_nest_printing():
    nest = loop_nest(get_mapping("fa1", block_q=64, block_kv=128))
    txt = format_loop_nest(nest, {"P": 1024, "M": 1024, "E": 64, "F": 64, "G": 1, "S": 1,
                                  "block_q": 64, "block_kv": 128, "block_e": 64,
                                  "block_f": 64, "block_rows": 1, "one": 1, "causal": True})
    assert "for j in [0:8) (tile M:128)" in txt
    assert "for i in [0:16) (tile P:64, causal: tiles meeting the diagonal of j)" in txt
    assert "load Q[i,:]; load O[i,:]; load m[i]; load l[i]" in txt
    fwd = txt.split("# kernel: forward")[1]
    assert fwd.index("for j") < fwd.index("for i in [0:16)")   # K/V outer, Q inner


def test_defaults_and_fits_come_from_the_structure():
    """The library's defaults and fitting mappings, read from each cascade's structure."""
    expect = {
        "attention-1pass": ("fa2", {"fa2", "fa1", "unfused", "saha-ye", "decode-splitk"}),
        "flash1": ("fa1", {"fa1", "fa2", "unfused", "saha-ye", "decode-splitk"}),
        "attention-2pass": ("fused-2pass", {"fused-2pass", "fa2", "unfused", "decode-splitk"}),
        "attention-3pass": ("fused-3pass", {"fused-3pass", "unfused", "saha-ye"}),
        "attention-gqa": ("fa2", {"fa2", "fa1", "unfused", "decode-splitk"}),
        "attention-masked": ("fa2", {"fa2", "fa1", "unfused", "decode-splitk"}),
        "attention-blocksparse": ("fa2", {"fa2", "fa1", "unfused", "decode-splitk"}),
        "decode-splitk": ("decode-splitk", {"decode-splitk", "fa2", "fused-2pass", "unfused"}),
        "sigmoid": ("fa2", {"fa2", "fa1", "unfused", "decode-splitk"}),
        "linear": ("linear", {"linear"}),
        "lightning2": ("lightning2", {"lightning2"}),
    }
    for name, (dflt, fits) in expect.items():
        assert default_mapping(name).kind == dflt, name
        got = mappings_for(name)
        assert got[0] == dflt and set(got) == fits, (name, got)


def test_a_renamed_copy_gets_the_same_mappings(tmp_path):
    from cascades.library import names, text
    for name in names():
        p = tmp_path / f"copy-{name}.casc"
        p.write_text(text(name).replace(f"cascade {name} ", "cascade someone-elses "))
        assert default_mapping(str(p)) == default_mapping(name).with_(cascade="someone-elses")
        assert mappings_for(str(p)) == mappings_for(name)


def test_cascade_block_parameters_set_the_tiles(tmp_path):
    from cascades.library import text
    from iosim.mapping import cascade_defaults, mapping_for
    p = tmp_path / "mine.casc"
    p.write_text(text("attention-1pass").replace("cascade attention-1pass", "cascade mine")
                 .replace("param block_kv = 64", "param block_kv = 32")
                 .replace("param causal  = false", "param causal  = true"))
    assert cascade_defaults(str(p)) == {"causal": True, "block_kv": 32}
    assert mapping_for(str(p)).block_kv == 32
    assert mapping_for(str(p), block_kv=16).block_kv == 16          # a flag overrides it
    assert mapping_for(str(p), "unfused").block_kv == 128            # not the cascade's tile
    assert mapping_for("attention-blocksparse").block_q == 64        # its BlockMask's blocks


def test_shapes_heads():
    s = Shapes(n=10, heads=32, kv_heads=8)
    assert (s.heads, s.kv_heads, s.group) == (32, 8, 4)
    assert Shapes(n=10, heads=32).group == 1
    old = Shapes(n=10, heads=2, group=3)            # group given: heads are K/V heads
    assert (old.heads, old.kv_heads, old.group) == (6, 2, 3)
    with pytest.raises(IosimError, match=r"heads \(6\) must be a multiple of kv-heads \(4\)"):
        Shapes(n=10, heads=6, kv_heads=4)


def test_packed_gqa_loop_nest():
    nest = loop_nest(get_mapping("fa2"), "attention-1pass", grouped=True)
    txt = format_loop_nest(nest)
    assert "for i in [0:?) (tile R:block_q, parallel)" in txt
    assert "load Q[i,:]" in txt and "store LSE[i]" in txt
    grid = loop_nest(get_mapping("fa2", pack_group=False), "attention-1pass", grouped=True)
    assert format_loop_nest(grid).startswith("# kernel: forward\nfor g in")
