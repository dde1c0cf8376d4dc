"""Memory hierarchies and compute units, loaded from validated TOML presets.

A :class:`Hardware` is an ordered tuple of :class:`MemoryLevel` objects, outermost (the
backing store, e.g. HBM) first and innermost (registers) last, plus the
:class:`ComputeUnit` objects that consume data (matrix arrays, vector lanes, special-function
units). Presets ship as TOML files in ``iosim/presets/``; a user's own file is loaded the same
way by passing its path. The file format is documented in ``docs/hardware.md``.

Every quantity in a file carries an explicit unit (``"228 KiB"``, ``"3.35 TB/s"``,
``"989 TFLOP/s"``, ``"1.98 GHz"``, ``"3.9 pJ/bit"``); the parsers here convert them to bytes,
bytes/s, FLOP/s, Hz and pJ/byte. Bad input raises :class:`~iosim.errors.IosimError` with a
one-line message naming the file and the key.

Conventions:

* ``capacity_bytes`` is per instance (one SM's shared memory); ``total_capacity_bytes``
  multiplies by ``instances``.
* ``read_bandwidth`` / ``write_bandwidth`` are aggregate over all instances (the whole chip),
  like the datasheet's HBM figure; ``*_per_instance`` divides by ``instances``.
* Compute ``rates`` are whole-device peak rates per dtype.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import sys
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from iosim.errors import IosimError

if sys.version_info >= (3, 11):  # pragma: no cover - version switch
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "DTYPE_BYTES",
    "dtype_bytes",
    "MemoryLevel",
    "ComputeUnit",
    "Hardware",
    "parse_size",
    "parse_bandwidth",
    "parse_rate",
    "parse_frequency",
    "parse_energy",
    "parse_sram",
    "list_presets",
    "load_hardware",
]

# --------------------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------------------

DTYPE_BYTES: dict[str, float] = {
    "fp64": 8,
    "fp32": 4,
    "tf32": 4,  # stored in 32 bits; only the matrix unit reads 19 of them
    "bf16": 2,
    "fp16": 2,
    "fp8": 1,
    "int8": 1,
    "int4": 0.5,
}

_DTYPE_ALIASES = {
    "float64": "fp64",
    "double": "fp64",
    "float32": "fp32",
    "float": "fp32",
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
    "float8": "fp8",
    "fp8_e4m3": "fp8",
    "fp8_e5m2": "fp8",
    "e4m3": "fp8",
    "e5m2": "fp8",
}


def _suggest(word: str, choices, *, cutoff: float = 0.6) -> str:
    """`` (did you mean 'x'?)`` or an empty string."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    hit = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=cutoff)
    return f" (did you mean '{lowered[hit[0]]}'?)" if hit else ""


def _canonical_dtype(name: str, where: str = "dtype") -> str:
    if not isinstance(name, str):
        raise IosimError(f"{where}: expected a dtype name such as 'bf16', got {name!r}")
    key = name.strip().lower()
    key = _DTYPE_ALIASES.get(key, key)
    if key not in DTYPE_BYTES:
        raise IosimError(
            f"{where}: unknown dtype '{name}'{_suggest(name, DTYPE_BYTES)}; "
            f"known: {', '.join(DTYPE_BYTES)}"
        )
    return key


def dtype_bytes(name: str) -> float:
    """Bytes per element of ``name`` (``int4`` is 0.5). Unknown names raise IosimError."""
    return DTYPE_BYTES[_canonical_dtype(name)]


# --------------------------------------------------------------------------------------
# unit parsing
# --------------------------------------------------------------------------------------

SIZE_UNITS: dict[str, int] = {
    "B": 1,
    "KB": 10**3,
    "kB": 10**3,
    "KiB": 2**10,
    "MB": 10**6,
    "MiB": 2**20,
    "GB": 10**9,
    "GiB": 2**30,
    "TB": 10**12,
    "TiB": 2**40,
}

_RATE_PREFIX = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15}
_FREQ_UNITS = {"Hz": 1, "kHz": 10**3, "MHz": 10**6, "GHz": 10**9}
# energy units, expressed in pJ per byte
_ENERGY_UNITS = {
    "pJ/B": Decimal(1),
    "pJ/byte": Decimal(1),
    "pJ/bit": Decimal(8),
    "fJ/B": Decimal("0.001"),
    "fJ/bit": Decimal("0.008"),
    "nJ/B": Decimal(1000),
}

_QUANTITY = re.compile(r"^\s*([+-]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(\S.*?)?\s*$")


def _split(text: Any, what: str, example: str) -> tuple[Decimal, str]:
    """Split ``"228 KiB"`` into (Decimal('228'), 'KiB'); errors say what was expected."""
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise IosimError(f"expected a {what} string such as '{example}', got {text!r}")
    if not isinstance(text, str):
        raise IosimError(
            f"{what} {text!r} has no unit: write it as a string with a unit, e.g. '{example}'"
        )
    m = _QUANTITY.match(text)
    if not m:
        raise IosimError(f"cannot read {what} '{text}': expected a number and a unit, e.g. '{example}'")
    number, unit = m.group(1), (m.group(2) or "")
    try:
        value = Decimal(number.replace("_", ""))
    except InvalidOperation:  # pragma: no cover - the regex already checked it
        raise IosimError(f"cannot read {what} '{text}': bad number '{number}'") from None
    if not unit:
        raise IosimError(f"{what} '{text}' has no unit: add one, e.g. '{example}'")
    return value, unit


def _positive(value: Decimal, text: str, what: str, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = "non-negative" if allow_zero else "positive"
        raise IosimError(f"{what} '{text}' must be {bound}")


def _float(value: Decimal, text: str, what: str) -> float:
    """``float(value)``, refusing what a float cannot hold (``1e400`` -> inf, ``1e-400`` -> 0)."""
    x = float(value)
    if not math.isfinite(x):
        raise IosimError(f"{what} '{text}' is too large (not a finite number)")
    if x == 0 and value != 0:
        raise IosimError(f"{what} '{text}' is too small (it rounds to zero)")
    return x


def _unknown_unit(text: str, unit: str, what: str, known) -> IosimError:
    known = list(known)
    return IosimError(
        f"unknown unit '{unit}' in {what} '{text}'{_suggest(unit, known, cutoff=0.5)}; "
        f"expected one of: {', '.join(known)}"
    )


def parse_size(text: str, *, allow_inf: bool = False) -> float:
    """Bytes in a size such as ``"228 KiB"`` (233472.0) or ``"100 KB"`` (100000.0).

    Units: B, KB (= kB), KiB, MB, MiB, GB, GiB, TB, TiB; SI prefixes are powers of 1000,
    binary ones powers of 1024. With ``allow_inf``, ``"inf"`` / ``"unbounded"`` give
    ``math.inf`` (for the backing store).
    """
    if allow_inf and isinstance(text, str) and text.strip().lower() in ("inf", "infinite", "unbounded"):
        return math.inf
    value, unit = _split(text, "size", "228 KiB")
    if unit not in SIZE_UNITS:
        raise _unknown_unit(text, unit, "size", SIZE_UNITS)
    _positive(value, text, "size")
    return _float(value * SIZE_UNITS[unit], text, "size")


def parse_bandwidth(text: str) -> float:
    """Bytes/s in a bandwidth such as ``"3.35 TB/s"`` (3.35e12) or ``"900 GiB/s"``."""
    value, unit = _split(text, "bandwidth", "3.35 TB/s")
    known = [f"{u}/s" for u in SIZE_UNITS]
    if not unit.endswith("/s") or unit[:-2] not in SIZE_UNITS:
        raise _unknown_unit(text, unit, "bandwidth", known)
    _positive(value, text, "bandwidth")
    return _float(value * SIZE_UNITS[unit[:-2]], text, "bandwidth")


_RATE_UNIT = re.compile(r"^([kKMGTP]?)(FLOP|OP|flop|op|Op|Flop)(?:/s|S|s)$")


def parse_rate(text: str) -> float:
    """Operations/s in a rate such as ``"989 TFLOP/s"`` (9.89e14) or ``"1979 TOP/s"``.

    Units: ``<prefix>FLOP/s`` or ``<prefix>OP/s`` with prefix one of k, M, G, T, P (or none);
    ``TFLOPS`` / ``TOPS`` are accepted as spellings of ``TFLOP/s`` / ``TOP/s``.
    """
    value, unit = _split(text, "rate", "989 TFLOP/s")
    m = _RATE_UNIT.match(unit)
    if not m:
        known = [f"{p}FLOP/s" for p in ("", "k", "M", "G", "T", "P")] + ["TOP/s (any prefix)"]
        raise _unknown_unit(text, unit, "rate", known)
    _positive(value, text, "rate")
    return _float(value * _RATE_PREFIX[m.group(1)], text, "rate")


def parse_frequency(text: str) -> float:
    """Hz in a clock such as ``"1.98 GHz"`` (1.98e9)."""
    value, unit = _split(text, "frequency", "1.98 GHz")
    if unit not in _FREQ_UNITS:
        raise _unknown_unit(text, unit, "frequency", _FREQ_UNITS)
    _positive(value, text, "frequency")
    return _float(value * _FREQ_UNITS[unit], text, "frequency")


def parse_energy(text: str) -> float:
    """pJ per byte in an energy such as ``"7 pJ/B"`` (7.0) or ``"3.9 pJ/bit"`` (31.2)."""
    value, unit = _split(text, "energy", "7 pJ/B")
    if unit not in _ENERGY_UNITS:
        raise _unknown_unit(text, unit, "energy", _ENERGY_UNITS)
    _positive(value, text, "energy", allow_zero=True)
    return _float(value * _ENERGY_UNITS[unit], text, "energy")


_ELEMENT_UNITS = ("el", "els", "elem", "elems", "element", "elements")


def parse_sram(text: str, dtype: str) -> float:
    """Bytes of SRAM in a CLI ``--sram`` value, which must carry a unit.

    Either a byte size (``"192KiB"``, ``"100 KB"``, ``"65536B"``) or a count of elements
    (``"4096el"``, ``"4096 elements"``), which is multiplied by the size of ``dtype``.
    A bare number is refused, because the theory counts elements and datasheets count bytes.
    """
    where = "--sram"
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise IosimError(f"{where}: expected a size such as '192KiB' or '4096el', got {text!r}")
    text_s = str(text).strip()
    m = _QUANTITY.match(text_s)
    if not m:
        raise IosimError(
            f"{where} '{text_s}': expected a number and a unit, e.g. '192KiB', '100 KB', '65536B' "
            "or '4096el' (elements)"
        )
    number, unit = m.group(1), (m.group(2) or "")
    if not unit:
        raise IosimError(
            f"{where} '{text_s}': a bare number is ambiguous; add a unit: bytes "
            f"('{number}B', or KiB, MB, ...) or elements of {dtype} ('{number}el')"
        )
    if unit.lower() in _ELEMENT_UNITS:
        size = dtype_bytes(dtype)
        value = Decimal(number.replace("_", ""))
        if value <= 0:
            raise IosimError(f"{where} '{text_s}': must be positive")
        try:
            return _float(value * Decimal(str(size)), text_s, where)
        except IosimError as e:
            raise IosimError(str(e).replace(f"{where} '{text_s}'", f"{where} '{text_s}':", 1)) from None
    if unit not in SIZE_UNITS:
        raise IosimError(
            f"{where}: {_unknown_unit(text_s, unit, 'size', SIZE_UNITS)}, or el for elements"
        )
    try:
        return parse_size(text_s)
    except IosimError as e:
        raise IosimError(f"{where}: {e}") from None


# --------------------------------------------------------------------------------------
# data classes
# --------------------------------------------------------------------------------------

_POLICIES = ("lru", "fifo", "random")
_UNIT_KINDS = ("matrix", "vector", "sfu")


def _num(x: float) -> float | None:
    """JSON-friendly float: infinity becomes None."""
    return None if x is None or math.isinf(x) else x


@dataclass(frozen=True)
class MemoryLevel:
    """One level of the memory hierarchy.

    ``capacity_bytes`` is per instance (``math.inf`` allowed for the backing store);
    bandwidths are aggregate over all instances, in bytes/s; energies in pJ/byte (optional).
    ``policy`` is ``"lru"`` etc. for a hardware-managed cache and ``None`` for a scratchpad
    (or the backing store). ``shared`` says whether all compute shares one copy (HBM, L2) or
    each instance is private (one SMEM per SM). ``usable_capacity_bytes`` is what one program
    (thread block) may allocate when that is less than the capacity (H100: 227 of 228 KiB).
    """

    name: str
    capacity_bytes: float
    read_bandwidth: float
    write_bandwidth: float
    read_energy_pj_per_byte: float | None = None
    write_energy_pj_per_byte: float | None = None
    instances: int = 1
    policy: str | None = None
    shared: bool = True
    on_chip: bool = True
    usable_capacity_bytes: float | None = None
    note: str = ""

    @property
    def total_capacity_bytes(self) -> float:
        return self.capacity_bytes * self.instances

    @property
    def usable_bytes(self) -> float:
        """Capacity one program may use: ``usable_capacity_bytes`` if given, else capacity."""
        if self.usable_capacity_bytes is None:
            return self.capacity_bytes
        return min(self.usable_capacity_bytes, self.capacity_bytes)

    @property
    def read_bandwidth_per_instance(self) -> float:
        return self.read_bandwidth / self.instances

    @property
    def write_bandwidth_per_instance(self) -> float:
        return self.write_bandwidth / self.instances

    @property
    def is_cache(self) -> bool:
        return self.policy is not None

    def capacity_elements(self, dtype: str) -> float:
        """Per-instance capacity in elements of ``dtype``."""
        return self.capacity_bytes / dtype_bytes(dtype)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "capacity_bytes": _num(self.capacity_bytes),
            "total_capacity_bytes": _num(self.total_capacity_bytes),
            "usable_capacity_bytes": _num(self.usable_capacity_bytes),
            "instances": self.instances,
            "read_bandwidth": self.read_bandwidth,
            "write_bandwidth": self.write_bandwidth,
            "read_energy_pj_per_byte": self.read_energy_pj_per_byte,
            "write_energy_pj_per_byte": self.write_energy_pj_per_byte,
            "policy": self.policy,
            "shared": self.shared,
            "on_chip": self.on_chip,
            "note": self.note,
        }


@dataclass(frozen=True)
class ComputeUnit:
    """A class of compute unit and its whole-device peak rates (op/s) per dtype."""

    name: str
    kind: str  # "matrix" | "vector" | "sfu"
    rates: dict = field(default_factory=dict)
    note: str = ""

    def __post_init__(self):
        if self.kind not in _UNIT_KINDS:
            raise IosimError(
                f"compute unit '{self.name}': unknown kind '{self.kind}'"
                f"{_suggest(self.kind, _UNIT_KINDS)}; expected one of {', '.join(_UNIT_KINDS)}"
            )

    def rate(self, dtype: str) -> float | None:
        return self.rates.get(_canonical_dtype(dtype))

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "rates": dict(self.rates), "note": self.note}


@dataclass(frozen=True)
class Hardware:
    """A machine: memory levels outermost first, compute units, clock, provenance."""

    name: str
    levels: tuple
    compute: tuple
    clock_hz: float
    source: str = ""
    notes: str = ""
    description: str = ""
    sram_level: str | None = None  # name of the level playing the theory's "SRAM" role
    #: the [timing] table as written (strings): sustained rates for the execution-time
    #: model (:mod:`iosim.timing` parses and checks it); empty: no such rates
    timing: tuple = ()

    # ---- levels ------------------------------------------------------------------------
    @property
    def level_names(self) -> tuple:
        return tuple(lv.name for lv in self.levels)

    def level(self, name: str) -> MemoryLevel:
        """The level called ``name`` (case-insensitive)."""
        for lv in self.levels:
            if lv.name.lower() == str(name).lower():
                return lv
        raise IosimError(
            f"hardware '{self.name}': no memory level '{name}'"
            f"{_suggest(str(name), self.level_names)}; levels: {', '.join(self.level_names)}"
        )

    def level_index(self, name: str) -> int:
        return self.levels.index(self.level(name))

    @property
    def backing(self) -> MemoryLevel:
        """The outermost level (HBM / DRAM)."""
        return self.levels[0]

    @property
    def innermost_sram(self) -> MemoryLevel:
        """The level that plays the two-level theory's fast memory (H100: SMEM)."""
        if self.sram_level is not None:
            return self.level(self.sram_level)
        return self.levels[1] if len(self.levels) == 2 else self.levels[-1]

    @property
    def sram(self) -> MemoryLevel:
        """Alias of :attr:`innermost_sram`."""
        return self.innermost_sram

    def on_chip(self, name: str) -> bool:
        """Whether the level ``name`` is on chip."""
        return self.level(name).on_chip

    @property
    def on_chip_levels(self) -> tuple:
        return tuple(lv for lv in self.levels if lv.on_chip)

    # ---- compute -----------------------------------------------------------------------
    def units(self, kind: str) -> tuple:
        return tuple(u for u in self.compute if u.kind == kind)

    def _rate(self, kind: str, dtype: str, *, fallback: str | None = None) -> float:
        dt = _canonical_dtype(dtype)
        units = self.units(kind)
        total = sum(u.rates[dt] for u in units if dt in u.rates)
        if total:
            return float(total)
        if fallback is not None and fallback != dt:
            total = sum(u.rates[fallback] for u in units if fallback in u.rates)
            if total:
                return float(total)
        have = sorted({d for u in units for d in u.rates})
        where = f"hardware '{self.name}'"
        if self.source and not self.source.startswith("iosim/presets/"):
            where += f" ({self.source})"
        if have:
            hint = (f"; its {kind} rates are for {', '.join(have)}: use one of those dtypes or "
                    f"add a rate for {dt} to the {kind} unit's [compute.rates]")
        else:
            hint = f"; it has no {kind} unit (add a [[compute]] table of kind \"{kind}\")"
        raise IosimError(f"{where}: no {kind} unit rate for dtype '{dt}'{hint}")

    def matrix_rate(self, dtype: str) -> float:
        """Peak matrix-unit (tensor core) rate in FLOP/s for ``dtype``."""
        return self._rate("matrix", dtype)

    def vector_rate(self, dtype: str) -> float:
        """Peak vector-unit (CUDA core) rate in FLOP/s for ``dtype``."""
        return self._rate("vector", dtype)

    def exp_rate(self, dtype: str = "fp32") -> float:
        """Peak exponentials/s of the special-function unit.

        If no rate is given for ``dtype``, the fp32 rate is used: GPUs evaluate the exp of
        low-precision inputs in fp32.
        """
        return self._rate("sfu", dtype, fallback="fp32")

    # ---- derived copies ------------------------------------------------------------------
    def with_sram(self, capacity_bytes: float) -> "Hardware":
        """A copy whose SRAM level (:attr:`innermost_sram`) has ``capacity_bytes`` per instance.

        The per-program usable capacity of that level is dropped (the new capacity is all
        usable).
        """
        if isinstance(capacity_bytes, str):
            capacity_bytes = parse_size(capacity_bytes)
        try:
            cap = float(capacity_bytes)
        except (TypeError, ValueError):
            raise IosimError(f"SRAM capacity must be a number of bytes, got {capacity_bytes!r}") from None
        if not cap > 0 or math.isinf(cap):
            raise IosimError(f"SRAM capacity must be a positive, finite number of bytes, got {capacity_bytes!r}")
        target = self.innermost_sram
        levels = tuple(
            dataclasses.replace(
                lv, capacity_bytes=cap, usable_capacity_bytes=None,
                note=(lv.note + "; " if lv.note else "") + "capacity set by with_sram",
            )
            if lv is target
            else lv
            for lv in self.levels
        )
        return dataclasses.replace(self, levels=levels)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "source": self.source,
            "clock_hz": self.clock_hz,
            "sram_level": self.innermost_sram.name,
            "levels": [lv.to_dict() for lv in self.levels],
            "compute": [u.to_dict() for u in self.compute],
            "notes": self.notes,
        }


# --------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------

_TOP_KEYS = {"name", "description", "clock", "sram_level", "notes", "level", "compute", "timing"}
#: keys of the optional [timing] table (the execution-time model's sustained rates)
_TIMING_KEYS = {"source", "microbenchmarks", "launch", "hbm_read", "hbm_copy", "exp_per_clock",
                "program_start", "calibration", "stream_bytes_per_clock",
                "stream_latency", "sm_bytes_per_clock", "load_efficiency", "host_call"}
_TOP_REQUIRED = ("name", "clock", "level", "compute")
_LEVEL_KEYS = {
    "name", "capacity", "usable_capacity", "bandwidth", "read_bandwidth", "write_bandwidth",
    "energy", "read_energy", "write_energy", "instances", "policy", "shared", "on_chip", "note",
}
_COMPUTE_KEYS = {"name", "kind", "rates", "note"}


def list_presets() -> list[str]:
    """Names of the presets shipped in ``iosim/presets/``."""
    root = resources.files("iosim") / "presets"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


class _Ctx:
    """Error context: the file label, prefixed to every message."""

    def __init__(self, label: str):
        self.label = label

    def err(self, key: str | None, msg: str) -> IosimError:
        where = f"{self.label}: key '{key}'" if key else self.label
        return IosimError(f"{where}: {msg}")

    def wrap(self, key: str, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except IosimError as e:
            raise self.err(key, str(e)) from None


def _check_keys(ctx: _Ctx, table: Mapping, allowed: set, prefix: str) -> None:
    for k in table:
        if k not in allowed:
            full = f"{prefix}{k}"
            raise IosimError(f"{ctx.label}: unknown key '{full}'{_suggest(k, sorted(allowed))}; "
                             f"allowed here: {', '.join(sorted(allowed))}")


def _require(ctx: _Ctx, table: Mapping, key: str, prefix: str):
    if key not in table:
        raise ctx.err(f"{prefix}{key}", "missing required key")
    return table[key]


def _typed(ctx: _Ctx, value, typ, key: str, what: str):
    ok = isinstance(value, typ) and not (typ is not bool and isinstance(value, bool))
    if not ok:
        raise ctx.err(key, f"expected {what}, got {type(value).__name__} {value!r}")
    return value


def _label_name(tbl: Mapping, idx: int) -> str:
    name = tbl.get("name") if isinstance(tbl, Mapping) else None
    return str(name) if isinstance(name, str) and name else str(idx)


def _parse_level(ctx: _Ctx, tbl: Any, idx: int, first: bool) -> MemoryLevel:
    pre = f"level[{idx}]"
    if not isinstance(tbl, Mapping):
        raise ctx.err(pre, "each [[level]] must be a table")
    pre = f"level[{_label_name(tbl, idx)}]"
    _check_keys(ctx, tbl, _LEVEL_KEYS, pre + ".")
    name = _typed(ctx, _require(ctx, tbl, "name", pre + "."), str, pre + ".name", "a string")
    if not name.strip():
        raise ctx.err(pre + ".name", "must not be empty")
    cap_raw = _require(ctx, tbl, "capacity", pre + ".")
    cap = ctx.wrap(pre + ".capacity", parse_size, cap_raw, allow_inf=first)
    if not first and isinstance(cap_raw, str) and cap_raw.strip().lower() in ("inf", "infinite", "unbounded"):
        raise ctx.err(pre + ".capacity", "only the outermost level (the first [[level]]) may be unbounded")
    usable = None
    if "usable_capacity" in tbl:
        usable = ctx.wrap(pre + ".usable_capacity", parse_size, tbl["usable_capacity"])
        if usable > cap:
            raise ctx.err(pre + ".usable_capacity", f"'{tbl['usable_capacity']}' exceeds capacity '{cap_raw}'")

    # bandwidth: either `bandwidth` (both directions) or read_/write_bandwidth
    if "bandwidth" in tbl:
        for k in ("read_bandwidth", "write_bandwidth"):
            if k in tbl:
                raise ctx.err(f"{pre}.{k}", "give either 'bandwidth' or 'read_bandwidth'/'write_bandwidth', not both")
        rbw = wbw = ctx.wrap(pre + ".bandwidth", parse_bandwidth, tbl["bandwidth"])
    else:
        if "read_bandwidth" not in tbl and "write_bandwidth" not in tbl:
            raise ctx.err(pre + ".bandwidth", "missing required key (or give read_bandwidth and write_bandwidth)")
        rbw = ctx.wrap(pre + ".read_bandwidth", parse_bandwidth, _require(ctx, tbl, "read_bandwidth", pre + "."))
        wbw = ctx.wrap(pre + ".write_bandwidth", parse_bandwidth, _require(ctx, tbl, "write_bandwidth", pre + "."))

    re_, we_ = None, None
    if "energy" in tbl:
        for k in ("read_energy", "write_energy"):
            if k in tbl:
                raise ctx.err(f"{pre}.{k}", "give either 'energy' or 'read_energy'/'write_energy', not both")
        re_ = we_ = ctx.wrap(pre + ".energy", parse_energy, tbl["energy"])
    if "read_energy" in tbl:
        re_ = ctx.wrap(pre + ".read_energy", parse_energy, tbl["read_energy"])
    if "write_energy" in tbl:
        we_ = ctx.wrap(pre + ".write_energy", parse_energy, tbl["write_energy"])

    instances = _typed(ctx, tbl.get("instances", 1), int, pre + ".instances", "a positive integer")
    if instances < 1:
        raise ctx.err(pre + ".instances", f"must be a positive integer, got {instances}")
    policy = tbl.get("policy")
    if policy is not None:
        _typed(ctx, policy, str, pre + ".policy", "a string")
        p = policy.strip().lower()
        if p == "none":
            policy = None
        elif p not in _POLICIES:
            raise ctx.err(pre + ".policy", f"unknown policy '{policy}'{_suggest(policy, _POLICIES)}; "
                                           f"expected one of: {', '.join(_POLICIES)}, none")
        else:
            policy = p
    shared = _typed(ctx, tbl.get("shared", instances == 1), bool, pre + ".shared", "true or false")
    on_chip = _typed(ctx, tbl.get("on_chip", not first), bool, pre + ".on_chip", "true or false")
    note = _typed(ctx, tbl.get("note", ""), str, pre + ".note", "a string")
    return MemoryLevel(
        name=name, capacity_bytes=cap, read_bandwidth=rbw, write_bandwidth=wbw,
        read_energy_pj_per_byte=re_, write_energy_pj_per_byte=we_, instances=instances,
        policy=policy, shared=shared, on_chip=on_chip, usable_capacity_bytes=usable, note=note,
    )


def _parse_compute(ctx: _Ctx, tbl: Any, idx: int) -> ComputeUnit:
    pre = f"compute[{idx}]"
    if not isinstance(tbl, Mapping):
        raise ctx.err(pre, "each [[compute]] must be a table")
    pre = f"compute[{_label_name(tbl, idx)}]"
    _check_keys(ctx, tbl, _COMPUTE_KEYS, pre + ".")
    name = _typed(ctx, _require(ctx, tbl, "name", pre + "."), str, pre + ".name", "a string")
    kind = _typed(ctx, _require(ctx, tbl, "kind", pre + "."), str, pre + ".kind", "a string")
    if kind not in _UNIT_KINDS:
        raise ctx.err(pre + ".kind", f"unknown kind '{kind}'{_suggest(kind, _UNIT_KINDS)}; "
                                     f"expected one of: {', '.join(_UNIT_KINDS)}")
    rates_tbl = _require(ctx, tbl, "rates", pre + ".")
    if not isinstance(rates_tbl, Mapping) or not rates_tbl:
        raise ctx.err(pre + ".rates", "expected a non-empty table of dtype = \"<rate>\", e.g. bf16 = \"989 TFLOP/s\"")
    rates = {}
    for dt, text in rates_tbl.items():
        key = f"{pre}.rates.{dt}"
        if dt.lower() not in DTYPE_BYTES:
            raise IosimError(f"{ctx.label}: unknown key '{key}': not a dtype{_suggest(dt, DTYPE_BYTES)}; "
                             f"known dtypes: {', '.join(DTYPE_BYTES)}")
        rates[dt.lower()] = ctx.wrap(key, parse_rate, text)
    note = _typed(ctx, tbl.get("note", ""), str, pre + ".note", "a string")
    return ComputeUnit(name=name, kind=kind, rates=rates, note=note)


def _build(data: Mapping, ctx: _Ctx, source: str) -> Hardware:
    _check_keys(ctx, data, _TOP_KEYS, "")
    for k in _TOP_REQUIRED:
        _require(ctx, data, k, "")
    name = _typed(ctx, data["name"], str, "name", "a string")
    clock = ctx.wrap("clock", parse_frequency, data["clock"])
    description = _typed(ctx, data.get("description", ""), str, "description", "a string")
    notes = data.get("notes", "")
    if isinstance(notes, list) and all(isinstance(n, str) for n in notes):
        notes = "\n".join(notes)
    _typed(ctx, notes, str, "notes", "a string or a list of strings")

    level_tbls = data["level"]
    if not isinstance(level_tbls, list):
        raise ctx.err("level", "expected an array of tables: write each level as [[level]]")
    if len(level_tbls) < 2:
        raise ctx.err("level", f"need at least two [[level]] tables (backing store and a fast memory), got {len(level_tbls)}")
    levels = tuple(_parse_level(ctx, t, i, i == 0) for i, t in enumerate(level_tbls))
    seen = {}
    for lv in levels:
        if lv.name.lower() in seen:
            raise ctx.err(f"level[{lv.name}].name", f"duplicate level name '{lv.name}'")
        seen[lv.name.lower()] = lv

    comp_tbls = data["compute"]
    if not isinstance(comp_tbls, list) or not comp_tbls:
        raise ctx.err("compute", "expected at least one [[compute]] table")
    compute = tuple(_parse_compute(ctx, t, i) for i, t in enumerate(comp_tbls))

    sram_level = data.get("sram_level")
    if sram_level is not None:
        _typed(ctx, sram_level, str, "sram_level", "a level name")
        if sram_level.lower() not in seen:
            names = [lv.name for lv in levels]
            raise ctx.err("sram_level", f"no level named '{sram_level}'{_suggest(sram_level, names)}; "
                                        f"levels: {', '.join(names)}")
        sram_level = seen[sram_level.lower()].name
        if sram_level == levels[0].name:
            raise ctx.err("sram_level", "the SRAM level cannot be the backing store (the first level)")
    timing = data.get("timing", {})
    if not isinstance(timing, Mapping):
        raise ctx.err("timing", "must be a table")
    _check_keys(ctx, timing, _TIMING_KEYS, "timing.")
    for k, v in timing.items():
        if not isinstance(v, (str, int, float)) or isinstance(v, bool):
            raise ctx.err(f"timing.{k}", "must be a string or a number")
    return Hardware(name=name, levels=levels, compute=compute, clock_hz=clock, source=source,
                    notes=notes, description=description, sram_level=sram_level,
                    timing=tuple(sorted(timing.items())))


def _read_toml(text: str, ctx: _Ctx) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise IosimError(f"{ctx.label}: invalid TOML: {' '.join(str(e).split())}") from None


def _looks_like_path(s: str) -> bool:
    return s.endswith(".toml") or "/" in s or "\\" in s or s.startswith(".")


def load_hardware(name_or_path, sram=None) -> Hardware:
    """Load a preset by name (``"h100"``, ``"a100"``, ``"two-level"``) or a user's TOML file.

    ``sram`` replaces the capacity (per instance) of the SRAM level: a number of bytes or a
    size string with a unit (``"192 KiB"``); use :func:`parse_sram` first for element counts.
    """
    if isinstance(name_or_path, Path) or (isinstance(name_or_path, str) and _looks_like_path(name_or_path)):
        path = Path(name_or_path)
        label = str(name_or_path)
        ctx = _Ctx(label)
        if path.is_dir():
            raise IosimError(f"{label}: is a directory, not a hardware file")
        if not path.is_file():
            raise IosimError(f"{label}: hardware file not found")
        try:
            text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is accepted
        except (OSError, UnicodeDecodeError) as e:
            raise IosimError(f"{label}: cannot read hardware file ({e.__class__.__name__})") from None
        hw = _build(_read_toml(text, ctx), ctx, source=str(path))
    elif isinstance(name_or_path, str):
        presets = list_presets()
        key = name_or_path.strip().lower().replace("_", "-")
        if key not in presets:
            raise IosimError(
                f"unknown hardware preset '{name_or_path}'{_suggest(name_or_path, presets)}; "
                f"presets: {', '.join(presets)} (or give the path to a .toml file)"
            )
        res = resources.files("iosim") / "presets" / f"{key}.toml"
        ctx = _Ctx(f"{key}.toml")
        hw = _build(_read_toml(res.read_text(encoding="utf-8"), ctx), ctx, source=f"iosim/presets/{key}.toml")
    else:
        raise IosimError(f"hardware: expected a preset name or a path, got {name_or_path!r}")
    if sram is not None:
        if isinstance(sram, str):
            try:
                sram = parse_size(sram)
            except IosimError as e:
                raise IosimError(f"sram: {e} (for element counts use parse_sram(text, dtype))") from None
        hw = hw.with_sram(sram)
    return hw
