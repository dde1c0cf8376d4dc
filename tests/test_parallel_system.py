"""System presets (iosim/presets/systems) and their loader: numbers, one-line errors."""
from __future__ import annotations

import re

import pytest

from iosim.errors import IosimError
from iosim.parallel.system import list_systems, load_system, parse_latency, parse_price


def test_presets_load_with_their_datasheet_links():
    assert {"dgx-h100", "dgx-h100-2node", "pcie5-host", "lamina"} <= set(list_systems())
    s = load_system("dgx-h100")
    assert (s.devices, s.topology, s.device.name) == (8, "switch", "h100")
    assert s.links[0].bandwidth == 450e9                       # 900 GB/s bidirectional / 2
    two = load_system("dgx-h100-2node")
    assert [lk.bandwidth for lk in two.links] == [450e9, 50e9]   # 400 Gb/s = 50 GB/s
    assert two.link_between(0, 7).name == "NVLink4" and two.link_between(7, 8).name == "IB-NDR"
    assert two.ring_link(16).name == "IB-NDR" and two.ring_link(8).name == "NVLink4"
    # usp's rings join every u-th device: devices 0, 4 share a node, devices 0, 8 do not
    assert two.ring_link(2, stride=4).name == "NVLink4"
    assert two.ring_link(2, stride=8).name == "IB-NDR"
    assert load_system("pcie5-host").links[0].bandwidth == pytest.approx(32e9 * 16 / 8 * 128 / 130,
                                                                         rel=1e-3)
    lam = load_system("lamina")
    assert lam.offload.device.name == "h20" and lam.offload.link.bandwidth == 50e9
    assert lam.price_per_hour > lam.offload.price_per_hour > 0
    assert load_system("tpuv4-16").device.matrix_rate("bf16") == 275e12


def test_units():
    assert parse_latency("3 us") == pytest.approx(3e-6)
    assert parse_latency("0 s") == 0
    assert parse_price("8.22 USD/h") == 8.22
    with pytest.raises(IosimError, match="unknown unit 'parsecs'"):
        parse_latency("3 parsecs")
    with pytest.raises(IosimError, match="dollars per device-hour"):
        parse_price("8 EUR")


GOOD = """
name = "mine"
device = "h100"
devices = 4
topology = "ring"
[[link]]
name = "wire"
bandwidth = "100 GB/s"
latency = "1 us"
span = 4
"""


@pytest.mark.parametrize("edit, msg", [
    (("bandwidth = \"100 GB/s\"", "bandwidth = \"100\""), "key 'link[0].bandwidth'"),
    (("topology = \"ring\"", "topology = \"rign\""), "did you mean 'ring'"),
    (("span = 4", "span = 2"), "fewer than devices = 4"),
    (("devices = 4", "devices = 0"), "key 'devices': must be a positive integer"),
    (("device = \"h100\"", "device = \"h1000\""), "key 'device': unknown hardware preset"),
    (("latency = \"1 us\"", "latncy = \"1 us\""), "unknown key 'link[0].latncy'"),
    (("name = \"mine\"", "name = \"mine\"\nprice = \"cheap\""), "key 'price'"),
])
def test_user_file_errors_name_the_key(tmp_path, edit, msg):
    p = tmp_path / "sys.toml"
    p.write_text(GOOD)
    assert load_system(str(p)).links[0].bandwidth == 100e9
    p.write_text(GOOD.replace(*edit))
    with pytest.raises(IosimError, match=re.escape(msg)) as e:
        load_system(str(p))
    assert "\n" not in str(e.value) and str(p) in str(e.value)


def test_unknown_preset_and_missing_file():
    with pytest.raises(IosimError, match="did you mean 'dgx-h100'"):
        load_system("dgx-h10")
    with pytest.raises(IosimError, match="system file not found"):
        load_system("nowhere/sys.toml")


def test_device_file_relative_to_the_system_file(tmp_path):
    (tmp_path / "dev").mkdir()
    import importlib.resources as r
    (tmp_path / "dev" / "acc.toml").write_text(
        (r.files("iosim") / "presets" / "two-level.toml").read_text())
    (tmp_path / "s.toml").write_text(GOOD.replace('device = "h100"', 'device = "dev/acc.toml"'))
    assert load_system(str(tmp_path / "s.toml")).device.name == "two-level"
