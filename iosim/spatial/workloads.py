"""Transformer workloads (BERT-Base, TrXL-wt103, T5-small, XLM) and their linear layers.

Models are data (``iosim/presets/spatial/workloads.toml``). :func:`attention_shape` gives the
:class:`~iosim.spatial.model.Shape` of one layer's attention at a sequence length (M = P = N);
:func:`linear_layers` evaluates that layer's linear layers — the Q, K, V and output
projections and the two FFN matrices, written as the cascade :data:`ENCODER_LINEAR` — on the
2D array, one kernel per Einsum (latency = max(compute, DRAM) per kernel, summed), which is
what end-to-end numbers add to attention.
"""
from __future__ import annotations

import difflib
import math
import re
import sys
from dataclasses import dataclass
from functools import lru_cache

import cascades
from iosim.errors import IosimError
from iosim.spatial.arch import SpatialHardware, load_spatial_hardware, _preset_dir
from iosim.spatial.model import Shape
from iosim.spatial.work import einsum_ops, native_ops, element_cycles

if sys.version_info >= (3, 11):  # pragma: no cover
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["Model", "load_models", "get_model", "parse_seq_len", "format_seq_len",
           "attention_shape", "linear_layers", "LinearResult", "ENCODER_LINEAR", "SEQ_LENS",
           "BATCH"]

#: one encoder layer's linear layers as a cascade (T = batch x sequence tokens; activation,
#: layer norm and residual adds are not modelled, as in the FuseMax artifact)
ENCODER_LINEAR = """\
cascade encoder-linear "one encoder layer's linear layers: Q, K, V and output projections, FFN1, FFN2"

input  X[T, D]
input  AO[T, N]
input  WQ[D, N]
input  WK[D, N]
input  WV[D, N]
input  WZ[N, D]
input  W1[D, S]
input  W2[S, D]
output Q[T, N]
output K[T, N]
output V[T, N]
output Z[T, D]
output F2[T, D]

Q[t, n]  = sum[d] X[t, d] * WQ[d, n]
K[t, n]  = sum[d] X[t, d] * WK[d, n]
V[t, n]  = sum[d] X[t, d] * WV[d, n]
Z[t, d]  = sum[n] AO[t, n] * WZ[n, d]
F1[t, s] = sum[d] X[t, d] * W1[d, s]
F2[t, d] = sum[s] F1[t, s] * W2[s, d]
"""


@dataclass(frozen=True)
class Model:
    key: str
    label: str
    full_name: str
    hidden: int
    heads: int
    E: int
    F: int
    ffn: int
    aliases: tuple = ()

    def to_dict(self) -> dict:
        return {"key": self.key, "label": self.label, "full_name": self.full_name,
                "hidden": self.hidden, "heads": self.heads, "E": self.E, "F": self.F,
                "ffn": self.ffn}


@lru_cache(maxsize=1)
def _data() -> dict:
    return tomllib.loads((_preset_dir() / "workloads.toml").read_text())


BATCH: int = 64
SEQ_LENS: tuple = (1024, 4096, 16384, 65536, 262144, 1048576)


def load_models() -> dict:
    out = {}
    for k, t in _data()["model"].items():
        out[k] = Model(k, t["label"], t["full_name"], int(t["hidden"]), int(t["heads"]),
                       int(t["E"]), int(t["F"]), int(t["ffn"]), tuple(t.get("aliases", ())))
    return out


def get_model(name: str) -> Model:
    models = load_models()
    key = str(name).strip().lower()
    for k, m in models.items():
        if key in (k, m.label.lower(), m.full_name.lower(), *m.aliases):
            return m
    hint = difflib.get_close_matches(key, list(models), n=1)
    hint = f" (did you mean '{hint[0]}'?)" if hint else ""
    raise IosimError(f"unknown model '{name}'{hint}; models: {', '.join(models)}")


_SEQ = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*$")


def parse_seq_len(text) -> int:
    """``"64K"`` -> 65536, ``"1M"`` -> 1048576 (powers of two), ``"4096"`` -> 4096."""
    if isinstance(text, int) and not isinstance(text, bool):
        n = text
    else:
        m = _SEQ.match(str(text))
        if not m:
            raise IosimError(f"cannot read sequence length '{text}' (expected e.g. 4096, 64K, 1M)")
        mult = {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2).lower()]
        v = float(m.group(1)) * mult
        if v != int(v):
            raise IosimError(f"sequence length '{text}' is not a whole number of tokens")
        n = int(v)
    if n < 1:
        raise IosimError(f"sequence length must be positive, got {text!r}")
    return n


def format_seq_len(n: int) -> str:
    if n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)}M"
    if n % 1024 == 0:
        return f"{n // 1024}K"
    return str(n)


def attention_shape(model: Model | str, seq_len, batch: int | None = None) -> Shape:
    m = get_model(model) if isinstance(model, str) else model
    n = parse_seq_len(seq_len)
    return Shape(batch or BATCH, m.heads, m.E, m.F, n, n)


# --------------------------------------------------------------------------------------
# linear layers
# --------------------------------------------------------------------------------------

@dataclass
class LinearResult:
    latency_s: float
    dram_bytes: float
    energy_pj: dict
    layers: list

    def to_dict(self) -> dict:
        return {"latency_s": self.latency_s, "dram_bytes": self.dram_bytes,
                "energy_pj": dict(self.energy_pj), "layers": list(self.layers)}


def linear_layers(model: Model | str, seq_len, hw: SpatialHardware | str,
                  batch: int | None = None) -> LinearResult:
    """One encoder layer's linear layers on the 2D array of ``hw``."""
    m = get_model(model) if isinstance(model, str) else model
    hw = load_spatial_hardware(hw) if not isinstance(hw, SpatialHardware) else hw
    n = parse_seq_len(seq_len)
    c = _linear_cascade()
    ext = {"T": (batch or BATCH) * n, "D": m.hidden, "N": m.heads * m.E, "S": m.ffn}
    arr = hw.matrix_array()
    rows, cols = arr.dims[0], arr.dims[-1]
    wb = hw.word_bytes
    cap = hw.buffer.capacity_bytes
    lat = dram = 0.0
    energy = {f"{arr.name}_compute": 0.0, f"{arr.name}_regfile": 0.0, "buffer": 0.0, "dram": 0.0}
    layers = []
    for e in c.einsums:
        ops = einsum_ops(e)
        for op in ops:
            if not arr.supports(op):
                raise IosimError(f"array '{arr.name}' cannot run linear layer {e.tensor} ({op})")
        (red,) = e.reduction.vars
        lhs = [ix.var for ix in e.lhs.indices]
        T, O = ext[lhs[0].upper()], ext[lhs[1].upper()]
        K = ext[red.upper()]
        cpe = element_cycles(ops, arr)
        cycles = math.ceil(T / rows) * math.ceil(O / cols) * K * cpe
        a_bytes, w_bytes, y_bytes = T * K * wb, K * O * wb, T * O * wb
        # output-stationary tiles; keep the weights whole on chip if they fit, else stream
        # weight panels once per block of R token rows (R as large as the buffer allows)
        if w_bytes + 2 * rows * K * wb <= cap:
            w_reads = 1
        else:
            R = max(rows, int((cap - 2 * K * cols * wb) // (K * wb)) // rows * rows)
            w_reads = math.ceil(T / R)
        traffic = a_bytes + w_bytes * w_reads + y_bytes
        comp_s = cycles / hw.clock_hz
        mem_s = traffic / hw.dram.bandwidth_Bps
        lat += max(comp_s, mem_s)
        dram += traffic
        macs = T * O * K
        nat = native_ops(ops, arr)
        energy[f"{arr.name}_compute"] += macs * sum(k * arr.op_energy(o) for o, k in nat.items())
        nops = macs * sum(nat.values())
        energy[f"{arr.name}_regfile"] += nops * (arr.rf_reads_per_op * arr.rf_read_pj
                                                 + arr.rf_writes_per_op * arr.rf_write_pj)
        tiles = math.ceil(T / rows) * math.ceil(O / cols)
        buf_reads = tiles * K * (rows + cols) + y_bytes / wb
        buf_writes = (a_bytes + w_bytes * w_reads) / wb + T * O
        energy["buffer"] += (buf_reads * hw.buffer.word_read_pj(wb)
                             + buf_writes * hw.buffer.word_write_pj(wb))
        energy["dram"] += ((a_bytes + w_bytes * w_reads) * hw.dram.pj_per_byte_read
                           + y_bytes * hw.dram.pj_per_byte_write)
        layers.append({"einsum": e.tensor, "rows": T, "cols": O, "depth": K, "macs": macs,
                       "compute_s": comp_s, "dram_s": mem_s, "dram_bytes": traffic})
    energy["total"] = sum(energy.values())
    return LinearResult(lat, dram, energy, layers)


@lru_cache(maxsize=1)
def _linear_cascade():
    return cascades.parse(ENCODER_LINEAR, source="encoder-linear")
