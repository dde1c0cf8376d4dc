"""Spatial accelerators: PE arrays, a global buffer and DRAM, loaded from TOML presets.

A :class:`SpatialHardware` is a clock, a DRAM channel, one global buffer and a set of PE
arrays (:class:`ArraySpec`), typically a 2D array (rows x cols) and a 1D array. Each array
says which primitive operations its PEs execute natively and at what cost, how operations
without a unit are emulated (FuseMax computes ``exp`` as 6 MACs), whether a PE issues one
operation per cycle (``serial``) or runs its functional units concurrently
(``pipelined``), and the energy of every action. Presets live in
``iosim/presets/spatial/*.toml``; the format is documented in ``docs/spatial.md``.

Primitive operations (what :mod:`iosim.spatial.work` derives from a cascade's expressions):

==========  ==========================================================================
``mac``     multiply-accumulate: a ``sum`` reduction of a product (``Q*K`` summed over e)
``mul``     a product that is not accumulated; runs on the MAC unit at MAC cost
``add``     ``+``, ``-`` and ``sum`` reductions
``max``     ``max``/``min`` calls and reductions, comparisons
``div``     ``/``
``exp``     ``exp`` (native unit, or emulated, e.g. ``exp = {mac = 6}``)
==========  ==========================================================================

Units: sizes carry units (``"16 MiB"``), bandwidths too (``"400 GiB/s"``), clocks
(``"940 MHz"``), energies are per action (``"17.1645 pJ"``), areas in ``um2``.
"""
from __future__ import annotations

import difflib
import math
import re
import sys
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from iosim.errors import IosimError
from iosim.hardware import dtype_bytes, parse_bandwidth, parse_frequency, parse_size

if sys.version_info >= (3, 11):  # pragma: no cover
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["PRIMITIVE_OPS", "ArraySpec", "BufferSpec", "DramSpec", "SpatialHardware",
           "load_spatial_hardware", "list_spatial_presets", "parse_energy_pj", "parse_area"]

#: primitive operations an Einsum's expression decomposes into
PRIMITIVE_OPS = ("mac", "mul", "add", "max", "div", "exp", "sqrt", "log", "sigmoid")
#: where PE-to-PE hops cost latency (ArraySpec.operand_latency)
OPERAND_LATENCY = ("broadcast", "reduction", "none")
#: ops that execute on another op's unit when the array has no unit of their own
_FALLBACK_UNIT = {"mul": "mac"}

_ENERGY_UNITS = {"fJ": 1e-3, "pJ": 1.0, "nJ": 1e3, "uJ": 1e6}
_AREA_UNITS = {"um2": 1.0, "um^2": 1.0, "mm2": 1e6, "mm^2": 1e6, "cm2": 1e8, "cm^2": 1e8}
_QTY = re.compile(r"^\s*([+-]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(\S*)\s*$")


def _quantity(text: Any, units: dict, what: str, example: str, where: str) -> float:
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise IosimError(f"{where}: expected {what} such as '{example}', got {text!r}")
    if not isinstance(text, str):
        raise IosimError(f"{where}: {what} {text!r} has no unit; write e.g. '{example}'")
    m = _QTY.match(text)
    if not m or not m.group(2):
        raise IosimError(f"{where}: cannot read {what} '{text}'; expected a number and a unit, "
                         f"e.g. '{example}'")
    unit = m.group(2)
    if unit not in units:
        hint = difflib.get_close_matches(unit, list(units), n=1)
        hint = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise IosimError(f"{where}: unknown unit '{unit}' in '{text}'{hint}; expected one of "
                         f"{', '.join(units)}")
    value = float(m.group(1).replace("_", ""))
    if value < 0 or not math.isfinite(value):
        raise IosimError(f"{where}: {what} '{text}' must be a finite non-negative number")
    return value * units[unit]


def parse_energy_pj(text: Any, where: str = "energy") -> float:
    """pJ per action in ``"17.1645 pJ"`` (also fJ, nJ, uJ)."""
    return _quantity(text, _ENERGY_UNITS, "an energy per action", "17.1645 pJ", where)


def parse_area(text: Any, where: str = "area") -> float:
    """um^2 in ``"1545 um2"`` (also mm2, cm2)."""
    return _quantity(text, _AREA_UNITS, "an area", "1545 um2", where)


# --------------------------------------------------------------------------------------
# data classes
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ArraySpec:
    """One array of identical PEs.

    ``dims`` is ``(rows, cols)`` for a 2D array or ``(n,)`` for a 1D array. ``ops`` maps each
    native primitive op to its cost in cycles; ``emulate`` maps an op without a unit to a
    recipe of native ops (``{"exp": {"mac": 6}}``). ``issue`` is ``"serial"`` (one operation
    per PE per cycle: an element's cycles are the sum of its ops' cycles) or ``"pipelined"``
    (each functional unit accepts one op per cycle and units run concurrently: an element's
    cycles are the maximum over units). ``energy_pj`` is per native op; register-file
    energies are per word access.
    """
    name: str
    dims: tuple[int, ...]
    ops: dict
    emulate: dict = field(default_factory=dict)
    issue: str = "serial"
    energy_pj: dict = field(default_factory=dict)
    rf_words: int = 0
    rf_read_pj: float = 0.0
    rf_write_pj: float = 0.0
    pe_area_um2: float = 0.0
    reduction_latency: bool = True   # (legacy key; see operand_latency)
    rf_reads_per_op: float = 1.0     # register-file reads charged per native operation
    rf_writes_per_op: float = 0.0
    #: where the array's PE-to-PE hops cost latency: "broadcast" (a value computed by another
    #: task that does not vary along a spatial dimension of its consumer is forwarded PE to
    #: PE along it, one cycle per PE), "reduction" (a reduction across PEs delivers its
    #: result one cycle per PE later), or "none"
    operand_latency: str = "broadcast"

    @property
    def n_pes(self) -> int:
        return math.prod(self.dims)

    @property
    def kind(self) -> str:
        return f"{len(self.dims)}d"

    def supports(self, op: str) -> bool:
        return op in self.ops or op in self.emulate or (
            op in _FALLBACK_UNIT and _FALLBACK_UNIT[op] in self.ops)

    def native(self, op: str) -> dict[str, float]:
        """The native ops (with counts) that one ``op`` costs on this array."""
        if op in self.ops:
            return {op: 1.0}
        if op in self.emulate:
            return dict(self.emulate[op])
        if op in _FALLBACK_UNIT and _FALLBACK_UNIT[op] in self.ops:
            return {_FALLBACK_UNIT[op]: 1.0}
        raise IosimError(f"array '{self.name}' cannot execute '{op}' (it has "
                         f"{', '.join(sorted(self.ops))}"
                         + (f"; emulates {', '.join(sorted(self.emulate))}" if self.emulate else "")
                         + ")")

    def op_energy(self, op: str) -> float:
        """pJ of one native op (``mul`` is charged as the MAC it runs on)."""
        key = op if op in self.energy_pj else _FALLBACK_UNIT.get(op, op)
        return float(self.energy_pj.get(key, 0.0))

    def with_dims(self, dims: tuple[int, ...]) -> "ArraySpec":
        return replace(self, dims=tuple(int(d) for d in dims))

    def to_dict(self) -> dict:
        return {"name": self.name, "dims": list(self.dims), "ops": dict(self.ops),
                "emulate": {k: dict(v) for k, v in self.emulate.items()}, "issue": self.issue,
                "energy_pj": dict(self.energy_pj), "rf_words": self.rf_words,
                "rf_read_pj": self.rf_read_pj, "rf_write_pj": self.rf_write_pj,
                "pe_area_um2": self.pe_area_um2, "operand_latency": self.operand_latency,
                "rf_reads_per_op": self.rf_reads_per_op, "rf_writes_per_op": self.rf_writes_per_op}


@dataclass(frozen=True)
class BufferSpec:
    """The on-chip global buffer: capacity, access width and energy per access."""
    capacity_bytes: float
    access_bits: int
    read_pj: float            # per access of access_bits
    write_pj: float
    banks: int = 1
    area_um2_per_byte: float = 0.0

    def word_read_pj(self, word_bytes: float) -> float:
        return self.read_pj * word_bytes * 8 / self.access_bits

    def word_write_pj(self, word_bytes: float) -> float:
        return self.write_pj * word_bytes * 8 / self.access_bits

    def to_dict(self) -> dict:
        return {"capacity_bytes": self.capacity_bytes, "access_bits": self.access_bits,
                "read_pj": self.read_pj, "write_pj": self.write_pj, "banks": self.banks,
                "area_um2_per_byte": self.area_um2_per_byte}


@dataclass(frozen=True)
class DramSpec:
    bandwidth_Bps: float
    access_bits: int
    read_pj: float            # per access of access_bits
    write_pj: float

    @property
    def pj_per_byte_read(self) -> float:
        return self.read_pj * 8 / self.access_bits

    @property
    def pj_per_byte_write(self) -> float:
        return self.write_pj * 8 / self.access_bits

    def to_dict(self) -> dict:
        return {"bandwidth_Bps": self.bandwidth_Bps, "access_bits": self.access_bits,
                "read_pj": self.read_pj, "write_pj": self.write_pj}


@dataclass(frozen=True)
class SpatialHardware:
    name: str
    description: str
    clock_hz: float
    dtype: str
    dram: DramSpec
    buffer: BufferSpec
    arrays: tuple[ArraySpec, ...]
    notes: str = ""
    source: str = ""

    @property
    def word_bytes(self) -> float:
        return dtype_bytes(self.dtype)

    def array(self, name: str) -> ArraySpec:
        for a in self.arrays:
            if a.name == name:
                return a
        names = [a.name for a in self.arrays]
        hint = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise IosimError(f"hardware '{self.name}' has no array '{name}'{hint}; arrays: "
                         f"{', '.join(names)}")

    @property
    def array_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.arrays)

    def matrix_array(self) -> ArraySpec:
        """The array with the most PEs (the 2D array)."""
        return max(self.arrays, key=lambda a: (len(a.dims), a.n_pes))

    def vector_array(self) -> ArraySpec:
        cands = [a for a in self.arrays if a is not self.matrix_array()]
        return cands[0] if cands else self.matrix_array()

    def scaled(self, pe_dim: int | None = None, buffer_bytes: float | None = None) -> "SpatialHardware":
        """A copy with a ``pe_dim`` x ``pe_dim`` 2D array and ``pe_dim``-PE 1D array, and/or
        another buffer capacity (the array-size sweep)."""
        arrays = self.arrays
        if pe_dim is not None:
            if pe_dim < 1:
                raise IosimError(f"array size must be positive, got {pe_dim}")
            arrays = tuple(a.with_dims(tuple(pe_dim for _ in a.dims)) for a in arrays)
        buf = self.buffer
        if buffer_bytes is not None:
            if not buffer_bytes > 0:
                raise IosimError(f"buffer capacity must be positive, got {buffer_bytes}")
            buf = replace(buf, capacity_bytes=float(buffer_bytes))
        return replace(self, arrays=arrays, buffer=buf)

    def area_um2(self) -> dict:
        out = {a.name: a.n_pes * a.pe_area_um2 for a in self.arrays}
        out["buffer"] = self.buffer.capacity_bytes * self.buffer.area_um2_per_byte
        out["total"] = sum(out.values())
        return out

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "clock_hz": self.clock_hz,
                "dtype": self.dtype, "dram": self.dram.to_dict(), "buffer": self.buffer.to_dict(),
                "arrays": [a.to_dict() for a in self.arrays], "notes": self.notes,
                "source": self.source}


# --------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------

def _preset_dir():
    return resources.files("iosim") / "presets" / "spatial"


_NOT_HARDWARE = ("configs.toml", "workloads.toml")


def list_spatial_presets() -> list[str]:
    d = _preset_dir()
    return sorted(p.name[:-5] for p in d.iterdir()
                  if p.name.endswith(".toml") and p.name not in _NOT_HARDWARE)


def _check_keys(tbl: Mapping, allowed: set, where: str) -> None:
    for k in tbl:
        if k not in allowed:
            hint = difflib.get_close_matches(k, sorted(allowed), n=1)
            hint = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise IosimError(f"{where}: unknown key '{k}'{hint}; allowed: {', '.join(sorted(allowed))}")


def _req(tbl: Mapping, key: str, where: str):
    if key not in tbl:
        raise IosimError(f"{where}: missing required key '{key}'")
    return tbl[key]


def _posint(v, where: str, allow_zero: bool = False) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise IosimError(f"{where}: expected an integer, got {v!r}")
    if v < 0 or (v == 0 and not allow_zero):
        raise IosimError(f"{where}: must be {'non-negative' if allow_zero else 'positive'}, got {v}")
    return v


def _parse_array(tbl: Any, idx: int, src: str) -> ArraySpec:
    where = f"{src}: [[array]] #{idx + 1}"
    if not isinstance(tbl, Mapping):
        raise IosimError(f"{where}: expected a table")
    _check_keys(tbl, {"name", "shape", "ops", "emulate", "issue", "energy", "register_file",
                      "rf_read_energy", "rf_write_energy", "pe_area", "reduction_latency",
                      "rf_reads_per_op", "rf_writes_per_op", "notes", "operand_latency"}, where)
    name = _req(tbl, "name", where)
    if not isinstance(name, str) or not name:
        raise IosimError(f"{where}: name must be a non-empty string")
    where = f"{src}: array '{name}'"
    shape = _req(tbl, "shape", where)
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = [shape]
    if not isinstance(shape, list) or not shape or len(shape) > 2:
        raise IosimError(f"{where}: shape must be [rows, cols] or [n], got {shape!r}")
    dims = tuple(_posint(d, f"{where}: shape") for d in shape)
    ops_t = _req(tbl, "ops", where)
    if not isinstance(ops_t, Mapping) or not ops_t:
        raise IosimError(f"{where}: ops must be a table op = cycles, e.g. {{mac = 1, add = 1}}")
    ops = {}
    for op, cyc in ops_t.items():
        if op not in PRIMITIVE_OPS:
            raise IosimError(f"{where}: unknown op '{op}' in ops; known: {', '.join(PRIMITIVE_OPS)}")
        if isinstance(cyc, bool) or not isinstance(cyc, (int, float)) or not cyc > 0:
            raise IosimError(f"{where}: ops.{op} must be a positive number of cycles, got {cyc!r}")
        ops[op] = float(cyc)
    emulate = {}
    for op, recipe in dict(tbl.get("emulate", {})).items():
        if op not in PRIMITIVE_OPS:
            raise IosimError(f"{where}: unknown op '{op}' in emulate")
        if op in ops:
            raise IosimError(f"{where}: op '{op}' is both native and emulated")
        if not isinstance(recipe, Mapping) or not recipe:
            raise IosimError(f"{where}: emulate.{op} must be a table such as {{mac = 6}}")
        r = {}
        for base, n in recipe.items():
            if base not in ops:
                raise IosimError(f"{where}: emulate.{op} uses '{base}', which the array does not "
                                 f"execute natively ({', '.join(ops)})")
            if isinstance(n, bool) or not isinstance(n, (int, float)) or not n > 0:
                raise IosimError(f"{where}: emulate.{op}.{base} must be a positive count")
            r[base] = float(n)
        emulate[op] = r
    issue = tbl.get("issue", "serial")
    if issue not in ("serial", "pipelined"):
        raise IosimError(f"{where}: issue must be 'serial' or 'pipelined', got {issue!r}")
    energy = {}
    for op, e in dict(tbl.get("energy", {})).items():
        if op not in ops:
            raise IosimError(f"{where}: energy.{op}: the array has no native '{op}'")
        energy[op] = parse_energy_pj(e, f"{where}: energy.{op}")
    rf = _posint(tbl.get("register_file", 0), f"{where}: register_file", allow_zero=True)
    rfr = parse_energy_pj(tbl.get("rf_read_energy", "0 pJ"), f"{where}: rf_read_energy")
    rfw = parse_energy_pj(tbl.get("rf_write_energy", "0 pJ"), f"{where}: rf_write_energy")
    area = parse_area(tbl.get("pe_area", "0 um2"), f"{where}: pe_area")
    rl = tbl.get("reduction_latency", True)
    if not isinstance(rl, bool):
        raise IosimError(f"{where}: reduction_latency must be true or false")
    ol = tbl.get("operand_latency", ("reduction" if rl else "none")
                 if "reduction_latency" in tbl else "broadcast")
    if ol not in OPERAND_LATENCY:
        raise IosimError(f"{where}: operand_latency must be one of "
                         f"{', '.join(OPERAND_LATENCY)}, got {ol!r}")
    per = []
    for k, dflt in (("rf_reads_per_op", 1.0), ("rf_writes_per_op", 0.0)):
        v = tbl.get(k, dflt)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise IosimError(f"{where}: {k} must be a non-negative number, got {v!r}")
        per.append(float(v))
    return ArraySpec(name, dims, ops, emulate, issue, energy, rf, rfr, rfw, area, rl, *per,
                     operand_latency=ol)


def _build(data: Mapping, src: str) -> SpatialHardware:
    _check_keys(data, {"name", "description", "clock", "dtype", "dram", "buffer", "array",
                       "notes"}, src)
    name = data.get("name", Path(src).stem)
    clock = parse_frequency(_req(data, "clock", src))
    dtype = data.get("dtype", "fp16")
    try:
        dtype_bytes(dtype)
    except IosimError as e:
        raise IosimError(f"{src}: {e}") from None
    d = _req(data, "dram", src)
    if not isinstance(d, Mapping):
        raise IosimError(f"{src}: [dram] must be a table")
    _check_keys(d, {"bandwidth", "access_bits", "read_energy", "write_energy"}, f"{src}: [dram]")
    try:
        bw = parse_bandwidth(_req(d, "bandwidth", f"{src}: [dram]"))
    except IosimError as e:
        raise IosimError(f"{src}: [dram] {e}") from None
    dram = DramSpec(bw, _posint(d.get("access_bits", 64), f"{src}: [dram] access_bits"),
                    parse_energy_pj(d.get("read_energy", "0 pJ"), f"{src}: [dram] read_energy"),
                    parse_energy_pj(d.get("write_energy", d.get("read_energy", "0 pJ")),
                                    f"{src}: [dram] write_energy"))
    b = _req(data, "buffer", src)
    if not isinstance(b, Mapping):
        raise IosimError(f"{src}: [buffer] must be a table")
    _check_keys(b, {"capacity", "access_bits", "read_energy", "write_energy", "banks",
                    "area_per_byte", "notes"}, f"{src}: [buffer]")
    cap_t = _req(b, "capacity", f"{src}: [buffer]")
    if isinstance(cap_t, str) and re.match(r"^\s*0+(\.0*)?\s*\S*$", cap_t):
        raise IosimError(f"{src}: [buffer] capacity must be positive, got '{cap_t}'")
    try:
        cap = parse_size(cap_t)
    except IosimError as e:
        raise IosimError(f"{src}: [buffer] {e}") from None
    buf = BufferSpec(cap, _posint(b.get("access_bits", 64), f"{src}: [buffer] access_bits"),
                     parse_energy_pj(b.get("read_energy", "0 pJ"), f"{src}: [buffer] read_energy"),
                     parse_energy_pj(b.get("write_energy", b.get("read_energy", "0 pJ")),
                                     f"{src}: [buffer] write_energy"),
                     _posint(b.get("banks", 1), f"{src}: [buffer] banks"),
                     parse_area(b.get("area_per_byte", "0 um2"), f"{src}: [buffer] area_per_byte"))
    arrs = data.get("array")
    if not isinstance(arrs, list) or not arrs:
        raise IosimError(f"{src}: needs at least one [[array]] table")
    arrays = tuple(_parse_array(t, i, src) for i, t in enumerate(arrs))
    names = [a.name for a in arrays]
    if len(set(names)) != len(names):
        raise IosimError(f"{src}: array names repeat: {names}")
    return SpatialHardware(name, data.get("description", ""), clock, dtype, dram, buf, arrays,
                           data.get("notes", ""), src)


def load_spatial_hardware(name_or_path: str | Path) -> SpatialHardware:
    """Load a spatial-hardware preset by name (``fusemax``, ``flat``) or a TOML file by path."""
    if isinstance(name_or_path, SpatialHardware):
        return name_or_path
    s = str(name_or_path)
    p = Path(s)
    if s.endswith(".toml") or "/" in s or p.is_file():
        if not p.is_file():
            raise IosimError(f"spatial hardware file '{s}' does not exist")
        text, src = p.read_text(), s
    else:
        names = list_spatial_presets()
        if s not in names:
            hint = difflib.get_close_matches(s, names, n=1)
            hint = f"; did you mean '{hint[0]}'?" if hint else ""
            raise IosimError(f"unknown spatial hardware '{s}'{hint} (presets: {', '.join(names)})")
        text, src = (_preset_dir() / f"{s}.toml").read_text(), f"{s}.toml"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise IosimError(f"{src}: invalid TOML: {str(e).splitlines()[0]}") from None
    return _build(data, src)
