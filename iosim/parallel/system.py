"""Systems of devices joined by links, loaded from validated TOML presets.

A :class:`System` is ``devices`` copies of one device (a hardware preset of
:mod:`iosim.hardware`) joined by one or more :class:`Link` levels, innermost first: a ring, an
all-to-all switch, or a hierarchy (NVLink inside a node, InfiniBand between nodes). An
attention-offloading system adds an :class:`OffloadTier`: memory devices that hold the KV
caches, reached over their own link. Presets ship in ``iosim/presets/systems/``; a user's own
file is loaded the same way by its path. Every quantity carries a unit (``"450 GB/s"``,
``"3 us"``, ``"8.22 USD/h"``); bad input raises :class:`~iosim.errors.IosimError` with one line
naming the file and the key. Bandwidths are **per direction, per device**.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from iosim.errors import IosimError
from iosim.hardware import (Hardware, _Ctx, _check_keys, _looks_like_path, _read_toml, _require,
                            _suggest, _typed, load_hardware, parse_bandwidth)

__all__ = ["Link", "OffloadTier", "System", "TOPOLOGIES", "list_systems", "load_system",
           "parse_latency", "parse_price"]

TOPOLOGIES = ("ring", "switch", "hierarchical")

_TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_QTY = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?\d+)?)\s*(\S+)\s*$")


def parse_latency(text: Any) -> float:
    """Seconds in a latency such as ``"3 us"`` (3e-6); zero is allowed."""
    if isinstance(text, bool) or not isinstance(text, str):
        raise IosimError(f"expected a latency string such as '3 us', got {text!r}")
    m = _QTY.match(text)
    if not m:
        raise IosimError(f"cannot read latency '{text}': expected a number and a unit, e.g. '3 us'")
    value, unit = float(m.group(1)), m.group(2)
    if unit not in _TIME_UNITS:
        raise IosimError(f"unknown unit '{unit}' in latency '{text}'"
                         f"{_suggest(unit, _TIME_UNITS, cutoff=0.5)}; expected one of: "
                         f"{', '.join(_TIME_UNITS)}")
    if not math.isfinite(value):
        raise IosimError(f"latency '{text}' is not a finite number")
    return value * _TIME_UNITS[unit]


def parse_price(text: Any) -> float:
    """US dollars per device-hour in a price such as ``"8.22 USD/h"``."""
    if isinstance(text, bool) or not isinstance(text, str):
        raise IosimError(f"expected a price string such as '8.22 USD/h', got {text!r}")
    m = _QTY.match(text.replace("$", ""))
    if not m or m.group(2) not in ("USD/h", "USD/hour", "/h"):
        raise IosimError(f"cannot read price '{text}': expected dollars per device-hour, "
                         f"e.g. '8.22 USD/h'")
    value = float(m.group(1))
    if not value > 0 or not math.isfinite(value):
        raise IosimError(f"price '{text}' must be a positive number")
    return value


@dataclass(frozen=True)
class Link:
    """One level of interconnect: ``bandwidth`` bytes/s per direction per device, ``latency_s``
    per message, joining groups of ``span`` devices."""
    name: str
    bandwidth: float
    latency_s: float
    span: int
    note: str = ""

    def transfer_s(self, nbytes: float) -> float:
        """Time to send ``nbytes`` over this link (latency + bytes / bandwidth); 0 for none."""
        return 0.0 if nbytes <= 0 else self.latency_s + nbytes / self.bandwidth

    def to_dict(self) -> dict:
        return {"name": self.name, "bandwidth": self.bandwidth, "latency_s": self.latency_s,
                "span": self.span, "note": self.note}


@dataclass(frozen=True)
class OffloadTier:
    """Memory devices of an attention-offloading system, reached from the compute devices over
    ``link``."""
    device: Hardware
    devices: int
    link: Link
    price_per_hour: float | None = None

    def to_dict(self) -> dict:
        return {"device": self.device.name, "devices": self.devices, "link": self.link.to_dict(),
                "price_per_hour": self.price_per_hour}


@dataclass(frozen=True)
class System:
    """``devices`` copies of ``device`` joined by ``links`` (innermost first)."""
    name: str
    device: Hardware
    devices: int
    topology: str
    links: tuple
    price_per_hour: float | None = None
    offload: OffloadTier | None = None
    description: str = ""
    notes: str = ""
    source: str = ""

    def link_between(self, a: int, b: int) -> Link:
        """The innermost link whose groups hold both devices ``a`` and ``b``."""
        for lk in self.links:
            if a // lk.span == b // lk.span:
                return lk
        return self.links[-1]

    def ring_link(self, devices: int, stride: int = 1) -> Link:
        """The slowest link a ring over ``devices`` devices (every ``stride``-th device from
        the first) crosses (a ring step ends when its slowest hop has delivered)."""
        hops = [self.link_between(i * stride, (i + 1) % devices * stride) for i in range(devices)]
        return min(hops, key=lambda lk: (lk.bandwidth, -lk.latency_s))

    def check_devices(self, devices: int, what: str = "--devices") -> None:
        if devices > self.devices:
            raise IosimError(f"{what} {devices} exceeds the {self.devices} devices of system "
                             f"'{self.name}'")

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "device": self.device.name,
                "devices": self.devices, "topology": self.topology,
                "links": [lk.to_dict() for lk in self.links],
                "price_per_hour": self.price_per_hour,
                "offload": self.offload.to_dict() if self.offload else None,
                "source": self.source}


# ------------------------------------------------------------------------------- loading
_TOP = {"name", "description", "device", "devices", "topology", "price", "notes", "link",
        "offload"}
_LINK = {"name", "bandwidth", "latency", "span", "note"}
_OFFLOAD = {"device", "devices", "price", "link"}
_ROOT = "presets/systems"


def list_systems() -> list[str]:
    """Names of the system presets shipped in ``iosim/presets/systems/``."""
    root = resources.files("iosim") / _ROOT
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def _posint(ctx: _Ctx, value, key: str) -> int:
    _typed(ctx, value, int, key, "a positive integer")
    if value < 1:
        raise ctx.err(key, f"must be a positive integer, got {value}")
    return value


def _device(ctx: _Ctx, value, key: str, base: Path | None) -> Hardware:
    _typed(ctx, value, str, key, "a device preset name or a path to a hardware file")
    try:
        if base is not None and (value.endswith(".toml") or "/" in value):
            p = Path(value)
            return load_hardware(p if p.is_absolute() else base / p)
        return load_hardware(value)
    except IosimError as e:
        raise ctx.err(key, str(e)) from None


def _link(ctx: _Ctx, tbl, key: str, span_default: int | None) -> Link:
    if not isinstance(tbl, Mapping):
        raise ctx.err(key, "must be a table")
    _check_keys(ctx, tbl, _LINK, key + ".")
    name = _typed(ctx, tbl.get("name", key), str, key + ".name", "a string")
    bw = ctx.wrap(key + ".bandwidth", parse_bandwidth, _require(ctx, tbl, "bandwidth", key + "."))
    lat = ctx.wrap(key + ".latency", parse_latency, _require(ctx, tbl, "latency", key + "."))
    if "span" in tbl or span_default is None:
        span = _posint(ctx, _require(ctx, tbl, "span", key + "."), key + ".span")
    else:
        span = span_default
    note = _typed(ctx, tbl.get("note", ""), str, key + ".note", "a string")
    return Link(name=name, bandwidth=bw, latency_s=lat, span=span, note=note)


def _build(data: Mapping, ctx: _Ctx, source: str, base: Path | None) -> System:
    _check_keys(ctx, data, _TOP, "")
    for k in ("name", "device", "devices", "topology", "link"):
        _require(ctx, data, k, "")
    name = _typed(ctx, data["name"], str, "name", "a string")
    device = _device(ctx, data["device"], "device", base)
    n = _posint(ctx, data["devices"], "devices")
    topo = _typed(ctx, data["topology"], str, "topology", "a string")
    if topo not in TOPOLOGIES:
        raise ctx.err("topology", f"unknown topology '{topo}'{_suggest(topo, TOPOLOGIES)}; "
                                  f"expected one of: {', '.join(TOPOLOGIES)}")
    tbls = data["link"]
    if not isinstance(tbls, list) or not tbls:
        raise ctx.err("link", "expected at least one [[link]] table")
    links = tuple(_link(ctx, t, f"link[{i}]", None) for i, t in enumerate(tbls))
    spans = [lk.span for lk in links]
    if spans != sorted(set(spans)):
        raise ctx.err("link", f"links must be listed innermost first with growing spans, got "
                              f"spans {spans}")
    if spans[-1] < n:
        raise ctx.err(f"link[{len(links) - 1}].span", f"the outermost link spans {spans[-1]} "
                                                      f"devices, fewer than devices = {n}")
    for inner, outer in zip(spans, spans[1:]):
        if outer % inner:
            raise ctx.err("link", f"span {outer} is not a multiple of the inner span {inner}")
    if topo == "hierarchical" and len(links) < 2:
        raise ctx.err("topology", "a hierarchical system needs two or more [[link]] levels")
    if topo != "hierarchical" and len(links) > 1:
        raise ctx.err("topology", f"a {topo} system has one [[link]] level, got {len(links)} "
                                  f"(use topology = \"hierarchical\")")
    price = ctx.wrap("price", parse_price, data["price"]) if "price" in data else None
    off = None
    if "offload" in data:
        t = data["offload"]
        if not isinstance(t, Mapping):
            raise ctx.err("offload", "must be a table")
        _check_keys(ctx, t, _OFFLOAD, "offload.")
        od = _device(ctx, _require(ctx, t, "device", "offload."), "offload.device", base)
        on = _posint(ctx, _require(ctx, t, "devices", "offload."), "offload.devices")
        olink = _link(ctx, _require(ctx, t, "link", "offload."), "offload.link", on)
        oprice = ctx.wrap("offload.price", parse_price, t["price"]) if "price" in t else None
        off = OffloadTier(device=od, devices=on, link=olink, price_per_hour=oprice)
    desc = _typed(ctx, data.get("description", ""), str, "description", "a string")
    notes = data.get("notes", "")
    if isinstance(notes, list) and all(isinstance(x, str) for x in notes):
        notes = "\n".join(notes)
    _typed(ctx, notes, str, "notes", "a string or a list of strings")
    return System(name=name, device=device, devices=n, topology=topo, links=links,
                  price_per_hour=price, offload=off, description=desc, notes=notes, source=source)


def load_system(name_or_path) -> System:
    """A system preset by name (``"dgx-h100"``) or a user's TOML file by path."""
    if isinstance(name_or_path, System):
        return name_or_path
    if isinstance(name_or_path, Path) or (isinstance(name_or_path, str)
                                          and _looks_like_path(name_or_path)):
        path = Path(name_or_path)
        label = str(name_or_path)
        if path.is_dir():
            raise IosimError(f"{label}: is a directory, not a system file")
        if not path.is_file():
            raise IosimError(f"{label}: system file not found")
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            raise IosimError(f"{label}: cannot read system file ({e.__class__.__name__})") from None
        ctx = _Ctx(label)
        return _build(_read_toml(text, ctx), ctx, str(path), path.parent)
    if not isinstance(name_or_path, str):
        raise IosimError(f"system: expected a preset name or a path, got {name_or_path!r}")
    names = list_systems()
    key = name_or_path.strip().lower().replace("_", "-")
    if key not in names:
        raise IosimError(f"unknown system preset '{name_or_path}'{_suggest(name_or_path, names)}; "
                         f"systems: {', '.join(names)} (or give the path to a .toml file)")
    res = resources.files("iosim") / _ROOT / f"{key}.toml"
    ctx = _Ctx(f"systems/{key}.toml")
    base = Path(str(res)).parent
    return _build(_read_toml(res.read_text(encoding="utf-8"), ctx), ctx,
                  f"iosim/{_ROOT}/{key}.toml", base)
