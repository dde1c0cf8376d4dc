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
    with pytest.raises(IosimError, match="does not fit cascade 'linear'"):
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
