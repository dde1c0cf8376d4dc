"""Tests of iosim.hardware: presets, unit parsing, validation errors."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from iosim.errors import IosimError
from iosim.hardware import (
    DTYPE_BYTES,
    Hardware,
    dtype_bytes,
    list_presets,
    load_hardware,
    parse_bandwidth,
    parse_energy,
    parse_frequency,
    parse_rate,
    parse_size,
    parse_sram,
)

# A minimal valid file; tests break one thing at a time.
GOOD = """\
name = "toy"
clock = "1 GHz"
sram_level = "SRAM"

[[level]]
name = "DRAM"
capacity = "16 GiB"
bandwidth = "1 TB/s"

[[level]]
name = "SRAM"
capacity = "128 KiB"
bandwidth = "8 TB/s"
instances = 4

[[compute]]
name = "mma"
kind = "matrix"
[compute.rates]
bf16 = "100 TFLOP/s"
"""


def write(tmp_path: Path, text: str, name: str = "hw.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    return msg


# ---------------------------------------------------------------------------- presets


def test_presets_listed():
    assert {"h100", "a100", "two-level"} <= set(list_presets())


@pytest.mark.parametrize("name", ["h100", "a100", "two-level"])
def test_presets_load(name):
    hw = load_hardware(name)
    assert isinstance(hw, Hardware)
    assert hw.name == name
    assert len(hw.levels) >= 2
    assert hw.backing is hw.levels[0]
    assert hw.source.endswith(f"{name}.toml")
    assert hw.matrix_rate("bf16") > 0
    assert hw.vector_rate("fp32") > 0
    assert hw.exp_rate("fp32") > 0
    d = hw.to_dict()
    assert d["name"] == name and len(d["levels"]) == len(hw.levels)
    import json

    json.dumps(d, allow_nan=False)  # JSON-clean: infinity is written as null


def test_h100_values():
    hw = load_hardware("h100")
    assert [lv.name for lv in hw.levels] == ["HBM", "L2", "SMEM", "RF"]
    assert hw.level("hbm").read_bandwidth == 3.35e12
    l2 = hw.level("L2")
    assert l2.capacity_bytes == 52_428_800 and l2.shared and l2.policy == "lru"
    smem = hw.innermost_sram
    assert smem.name == "SMEM"
    assert smem.capacity_bytes == 228 * 1024 == 233_472
    assert smem.usable_bytes == 227 * 1024
    assert smem.instances == 132 and not smem.shared
    assert smem.total_capacity_bytes == 132 * 233_472
    assert hw.level("RF").capacity_bytes == 256 * 1024
    assert hw.matrix_rate("bf16") == 989e12
    assert hw.matrix_rate("fp8") == 1979e12
    assert hw.matrix_rate("tf32") == 494e12
    # 132 SMs x 16 exp/clk/SM x 1.98 GHz
    assert hw.exp_rate("fp32") == pytest.approx(132 * 16 * 1.98e9)
    assert hw.exp_rate("bf16") == hw.exp_rate("fp32")  # exp of bf16 inputs runs in fp32
    assert hw.clock_hz == 1.98e9
    assert hw.on_chip("SMEM") and not hw.on_chip("HBM")
    assert "798" in hw.notes and "3.0 TB/s" in hw.notes


def test_a100_values():
    hw = load_hardware("a100")
    assert hw.level("HBM").read_bandwidth == 2.039e12
    assert hw.level("L2").capacity_bytes == 40 * 2**20
    assert hw.sram.capacity_bytes == 164 * 1024 and hw.sram.instances == 108
    assert hw.matrix_rate("bf16") == 312e12
    assert hw.clock_hz == 1.41e9


def test_two_level_and_sram_override():
    hw = load_hardware("two-level")
    assert [lv.name for lv in hw.levels] == ["HBM", "SRAM"]
    assert math.isinf(hw.backing.capacity_bytes)
    assert hw.to_dict()["levels"][0]["capacity_bytes"] is None
    assert hw.innermost_sram.capacity_bytes == 100 * 1024
    hw2 = load_hardware("two-level", sram=65536)
    assert hw2.sram.capacity_bytes == 65536
    assert load_hardware("two-level", sram="64 KiB").sram.capacity_bytes == 65536
    assert hw.sram.capacity_bytes == 100 * 1024  # the original is untouched (frozen copy)
    # with_sram on a GPU replaces SMEM's per-SM capacity and drops the usable cap
    h = load_hardware("h100").with_sram(100_000)
    assert h.level("SMEM").capacity_bytes == 100_000 and h.level("SMEM").usable_bytes == 100_000
    assert h.level("L2").capacity_bytes == 52_428_800


def test_preset_name_case_and_underscore():
    assert load_hardware("H100").name == "h100"
    assert load_hardware("two_level").name == "two-level"


def test_user_file_loads_like_a_preset(tmp_path):
    hw = load_hardware(write(tmp_path, GOOD))
    assert hw.name == "toy" and hw.source.endswith("hw.toml")
    assert hw.level("sram").total_capacity_bytes == 4 * 131072
    assert hw.level("DRAM").capacity_bytes == 16 * 2**30
    assert hw.level("SRAM").read_bandwidth_per_instance == 2e12
    assert hw.matrix_rate("bf16") == 1e14
    # the same file, via a str path
    assert load_hardware(str(tmp_path / "hw.toml")).name == "toy"


# ---------------------------------------------------------------------------- units


@pytest.mark.parametrize(
    "text,expected",
    [
        ("228 KiB", 233_472),        # 228 * 1024
        ("227KiB", 232_448),
        ("100 KB", 100_000),
        ("100 kB", 100_000),
        ("50 MiB", 52_428_800),      # 50 * 1024 * 1024
        ("40 MB", 40_000_000),
        ("80 GB", 80_000_000_000),
        ("1 GiB", 1_073_741_824),
        ("2 TB", 2_000_000_000_000),
        ("65536 B", 65_536),
        ("1.5 KiB", 1536),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


def test_parse_size_inf_only_when_allowed():
    assert parse_size("inf", allow_inf=True) == math.inf
    with pytest.raises(IosimError):
        parse_size("inf")


@pytest.mark.parametrize("bad", ["228", "228 KIB", "228 kib", "228 Kb", "12 KiBs", "-5 KiB", "0 B", "KiB", 228, None])
def test_parse_size_errors(bad):
    with pytest.raises(IosimError) as ei:
        parse_size(bad)
    one_line_error(ei)


def test_parse_size_suggests_unit():
    with pytest.raises(IosimError, match="did you mean 'KiB'"):
        parse_size("228 KIB")


def test_parse_bandwidth_rate_freq_energy():
    assert parse_bandwidth("3.35 TB/s") == 3.35e12
    assert parse_bandwidth("900 GB/s") == 9e11
    assert parse_bandwidth("1 KiB/s") == 1024
    assert parse_rate("989 TFLOP/s") == 989e12
    assert parse_rate("1979 TOP/s") == 1979e12
    assert parse_rate("67 TFLOPS") == 67e12
    assert parse_rate("16.5 GFLOP/s") == 16.5e9
    assert parse_frequency("1.98 GHz") == 1.98e9
    assert parse_frequency("1410 MHz") == 1.41e9
    assert parse_energy("7 pJ/B") == 7.0
    assert parse_energy("3.9 pJ/bit") == pytest.approx(31.2)  # 8 bits per byte
    for fn, bad in [(parse_bandwidth, "3.35 TB"), (parse_bandwidth, "3.35 Tb/s"), (parse_rate, "989 TFLOP"),
                    (parse_rate, "989"), (parse_frequency, "2 Ghz"), (parse_energy, "7 J/B"),
                    (parse_bandwidth, "-1 TB/s"), (parse_rate, "0 TFLOP/s")]:
        with pytest.raises(IosimError) as ei:
            fn(bad)
        one_line_error(ei)


def test_dtype_bytes():
    assert DTYPE_BYTES["int4"] == 0.5
    assert dtype_bytes("bf16") == 2 and dtype_bytes("FP32") == 4 and dtype_bytes("fp8") == 1
    assert dtype_bytes("bfloat16") == 2
    with pytest.raises(IosimError, match="did you mean 'bf16'") as ei:
        dtype_bytes("bf61")
    one_line_error(ei)


# ---------------------------------------------------------------------------- --sram


@pytest.mark.parametrize(
    "text,dtype,expected",
    [
        ("192KiB", "bf16", 196_608),
        ("100 KB", "fp32", 100_000),
        ("65536B", "fp16", 65_536),
        ("4096el", "bf16", 8192),          # 4096 elements x 2 bytes
        ("4096 elements", "fp32", 16_384),  # 4096 x 4
        ("4096 el", "int4", 2048),          # 4096 x 0.5
    ],
)
def test_parse_sram(text, dtype, expected):
    assert parse_sram(text, dtype) == expected


def test_parse_sram_bare_number_is_an_error():
    for bare in ("65536", 65536, "4096.0"):
        with pytest.raises(IosimError) as ei:
            parse_sram(bare, "bf16")
        msg = one_line_error(ei)
        assert "--sram" in msg and "unit" in msg


@pytest.mark.parametrize("bad", ["12 KiBs", "-4096el", "0B", "lots"])
def test_parse_sram_other_errors(bad):
    with pytest.raises(IosimError) as ei:
        parse_sram(bad, "bf16")
    assert "--sram" in one_line_error(ei)


def test_parse_sram_unknown_dtype():
    with pytest.raises(IosimError, match="dtype"):
        parse_sram("4096el", "bf17")


# ---------------------------------------------------------------------------- lookups


def test_level_lookup_and_did_you_mean():
    hw = load_hardware("h100")
    assert hw.level("smem") is hw.level("SMEM")
    with pytest.raises(IosimError, match="did you mean 'SMEM'") as ei:
        hw.level("SMM")
    one_line_error(ei)


def test_missing_rate_is_an_error():
    hw = load_hardware("h100")
    with pytest.raises(IosimError, match="int4") as ei:
        hw.matrix_rate("int4")
    one_line_error(ei)


def test_unknown_preset_suggests():
    with pytest.raises(IosimError) as ei:
        load_hardware("h10")
    msg = one_line_error(ei)
    assert "did you mean 'h100'" in msg and "two-level" in msg


def test_missing_file(tmp_path):
    p = tmp_path / "nope.toml"
    with pytest.raises(IosimError, match="nope.toml") as ei:
        load_hardware(p)
    one_line_error(ei)


# ---------------------------------------------------------------------------- bad files


def _expect(tmp_path, text, *fragments):
    p = write(tmp_path, text)
    with pytest.raises(IosimError) as ei:
        load_hardware(p)
    msg = one_line_error(ei)
    assert "hw.toml" in msg, msg
    for f in fragments:
        assert f in msg, (f, msg)
    return msg


def test_bad_negative_capacity(tmp_path):
    _expect(tmp_path, GOOD.replace('"128 KiB"', '"-128 KiB"'), "level[SRAM].capacity", "positive")


def test_bad_zero_bandwidth(tmp_path):
    _expect(tmp_path, GOOD.replace('"8 TB/s"', '"0 TB/s"'), "level[SRAM].bandwidth", "positive")


def test_bad_missing_capacity(tmp_path):
    _expect(tmp_path, GOOD.replace('capacity = "128 KiB"\n', ""), "level[SRAM].capacity", "missing")


def test_bad_missing_top_key(tmp_path):
    _expect(tmp_path, GOOD.replace('clock = "1 GHz"\n', ""), "'clock'", "missing")


def test_bad_missing_bandwidth(tmp_path):
    _expect(tmp_path, GOOD.replace('bandwidth = "8 TB/s"\n', ""), "level[SRAM].bandwidth", "missing")


def test_bad_unit(tmp_path):
    _expect(tmp_path, GOOD.replace('"128 KiB"', '"128 KiBs"'), "level[SRAM].capacity", "unknown unit 'KiBs'",
            "did you mean 'KiB'")


def test_bad_bare_number(tmp_path):
    _expect(tmp_path, GOOD.replace('"128 KiB"', "131072"), "level[SRAM].capacity", "unit")


def test_bad_unknown_key_suggests(tmp_path):
    _expect(tmp_path, GOOD.replace('capacity = "128 KiB"', 'capcity = "128 KiB"'),
            "level[SRAM].capcity", "did you mean 'capacity'")


def test_bad_unknown_top_key(tmp_path):
    _expect(tmp_path, GOOD.replace('clock = "1 GHz"', 'clock = "1 GHz"\nclokc = "2 GHz"'), "clokc",
            "did you mean 'clock'")


def test_bad_wrong_type(tmp_path):
    _expect(tmp_path, GOOD.replace("instances = 4", 'instances = "4"'), "level[SRAM].instances", "integer")
    _expect(tmp_path, GOOD.replace("instances = 4", "instances = 0"), "level[SRAM].instances")
    _expect(tmp_path, GOOD.replace("instances = 4", "instances = 4\nshared = \"no\""), "level[SRAM].shared")


def test_bad_dtype_key(tmp_path):
    _expect(tmp_path, GOOD.replace("bf16 = ", "bfl16 = "), "compute[mma].rates.bfl16", "did you mean 'bf16'")


def test_bad_rate_unit(tmp_path):
    _expect(tmp_path, GOOD.replace('"100 TFLOP/s"', '"100 TB/s"'), "compute[mma].rates.bf16", "unknown unit")


def test_bad_compute_kind(tmp_path):
    _expect(tmp_path, GOOD.replace('kind = "matrix"', 'kind = "matrx"'), "compute[mma].kind", "did you mean 'matrix'")


def test_bad_policy(tmp_path):
    _expect(tmp_path, GOOD.replace("instances = 4", 'instances = 4\npolicy = "lur"'), "level[SRAM].policy",
            "did you mean 'lru'")


def test_bad_sram_level(tmp_path):
    _expect(tmp_path, GOOD.replace('sram_level = "SRAM"', 'sram_level = "SRM"'), "sram_level", "did you mean 'SRAM'")


def test_bad_inf_inner_level(tmp_path):
    _expect(tmp_path, GOOD.replace('"128 KiB"', '"inf"'), "level[SRAM].capacity")


def test_bad_single_level(tmp_path):
    text = GOOD.split("[[level]]\nname = \"SRAM\"")[0] + GOOD.split("instances = 4\n")[1]
    _expect(tmp_path, text, "'level'", "two")


def test_bad_toml_syntax(tmp_path):
    _expect(tmp_path, GOOD + "\nthis is = = not toml\n", "invalid TOML")


def test_bad_duplicate_level(tmp_path):
    _expect(tmp_path, GOOD.replace('name = "SRAM"', 'name = "dram"'), "duplicate")


def test_bad_usable_capacity(tmp_path):
    _expect(tmp_path, GOOD.replace("instances = 4", 'instances = 4\nusable_capacity = "256 KiB"'),
            "level[SRAM].usable_capacity", "exceeds")


def test_with_sram_rejects_nonsense():
    hw = load_hardware("two-level")
    for bad in (0, -1, float("inf"), "lots"):
        with pytest.raises(IosimError):
            hw.with_sram(bad)
