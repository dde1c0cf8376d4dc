"""The sustained rates the execution-time model reads: a preset's ``[timing]`` table and the
microbenchmark table it names.

Every rate comes from a kernel that is not attention, measured on the machine the preset
describes (``experiments/device/time_microbench.py``), except ``program_start``: the one
constant specific to the generated attention kernels (a program's fixed cost: its first loads,
the epilogue's normalisation and stores), measured on a calibration set of launches that is
disjoint from the validation set (``calibration`` names the file).

``[timing]`` keys::

    source = "..."                      # where the numbers come from
    microbenchmarks = "h100_microbench.csv"   # beside the preset file
    launch = "3.58 us"                  # an empty kernel, back to back (kernel-time overhead)
    hbm_read = "3.08 TB/s"              # a reduction reading 2 GiB
    hbm_copy = "3.04 TB/s"              # a device-to-device copy (bytes read + written)
    exp_per_clock = 14.4                # exp2 results per clock per SM (exp loop)
    stream_latency = 908                # cycles before a requested pair of tiles arrives
    stream_bytes_per_clock = 34.1       # then this many bytes per clock
    sm_bytes_per_clock = 39.8           # one program's most (one SM)
    program_start = "4 us"              # calibrated (see above)
    calibration = "experiments/data/gpu_time_calibration.csv"
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from iosim.errors import IosimError

__all__ = ["TimingRates", "timing_rates"]


def _time(text, what: str) -> float:
    from iosim.hardware import _split
    num, unit = _split(text, what, "3.5 us")
    scale = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}.get(unit.lower())
    if scale is None:
        raise IosimError(f"{what}: unknown time unit '{unit}' in '{text}' (s, ms, us, ns)")
    v = float(num) * scale
    if not (v >= 0 and np.isfinite(v)):
        raise IosimError(f"{what}: must be a finite non-negative time, got '{text}'")
    return v


def _number(value, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise IosimError(f"{what}: expected a number, got {value!r}") from None
    if not (v > 0 and np.isfinite(v)):
        raise IosimError(f"{what}: must be a finite positive number, got {value!r}")
    return v


@dataclass(frozen=True)
class TimingRates:
    """Sustained rates of one GPU (per SM unless said otherwise)."""
    clock_hz: float
    sms: int
    launch_s: float
    hbm_read_bps: float
    hbm_copy_bps: float
    exp_per_clock: float
    stream_bytes_per_clock: float
    stream_latency_cycles: float
    sm_bytes_per_clock: float
    program_start_s: float
    load_efficiency: float
    #: the matmul-loop table: rows of (block_m, block_n, head_dim, num_warps, num_stages,
    #: cycles per iteration of one program alone on an SM)
    mma: tuple
    source: str = ""
    calibration: str = ""
    #: host time of a call of a generated module with 1, 2, 3, ... kernels (its launches and
    #: allocations): a launch takes at least this long end to end
    host_call_s: tuple = ()

    def mma_cycles(self, block_m, block_n, head_dim, num_warps, num_stages) -> np.ndarray:
        """Cycles of one iteration of the back-to-back matmul loop (``block_m x d`` by
        ``d x block_n``, then ``block_m x block_n`` by ``block_n x d``, tiles from L2) for one
        program alone on an SM. A tiling the table lacks takes the nearest measured tiling
        (log distance in the tile sizes, then warps and stages), scaled up by the ratio of
        tile FLOPs when it is larger; a smaller one costs what the measured one does (the
        matrix unit works on whole tiles: a smaller tile is padded, not cheaper). Pipeline
        depths beyond the measured ones take the deepest; one stage exposes the loads."""
        arrs = np.broadcast_arrays(*(np.asarray(x, dtype=np.int64) for x in
                                     (block_m, block_n, head_dim, num_warps, num_stages)))
        # one integer per tiling (np.unique over rows is ~25x slower on a grid)
        code = np.zeros(arrs[0].shape, dtype=np.int64)
        for a, width in zip(arrs, (1 << 20, 1 << 20, 1 << 16, 1 << 8, 1 << 8)):
            code = code * width + np.clip(a, 0, width - 1)
        _, first, inv = np.unique(code.ravel(), return_index=True, return_inverse=True)
        uniq = np.stack([a.ravel()[first] for a in arrs], axis=1)
        tab = np.asarray(self.mma, dtype=float)
        out = np.empty(len(uniq))
        st_max = tab[:, 4].max()
        st_min = tab[:, 4].min()
        for i, (bm, bn, d, w, s) in enumerate(uniq):
            s_eff = min(max(s, st_min), st_max)
            cost = (np.abs(np.log2(tab[:, 0] / bm)) + np.abs(np.log2(tab[:, 1] / bn))
                    + np.abs(np.log2(tab[:, 2] / d)) + 0.5 * np.abs(np.log2(tab[:, 3] / w))
                    + 0.25 * np.abs(tab[:, 4] - s_eff))
            j = int(np.argmin(cost))
            scale = max(1.0, (bm * bn * d) / (tab[j, 0] * tab[j, 1] * tab[j, 2]))
            cyc = tab[j, 5] * scale
            if s < st_min:   # no pipelining: each load's latency is exposed
                cyc *= 1.5
            out[i] = cyc
        return out[inv.ravel()].reshape(arrs[0].shape)

    def host_seconds(self, kernels: int) -> float:
        """The host time of a call with ``kernels`` kernels (the last measured count beyond)."""
        if not self.host_call_s:
            return 0.0
        return self.host_call_s[min(kernels, len(self.host_call_s)) - 1]

    def stream_seconds(self, step_bytes, num_stages) -> np.ndarray:
        """Seconds one program takes per step to stream ``step_bytes`` from HBM with
        ``num_stages`` pipeline stages: ``num_stages - 1`` steps' loads in flight, each
        arriving ``stream_latency + bytes / stream_bytes_per_clock`` cycles after it is asked
        for, at most ``sm_bytes_per_clock``; one stage exposes every load's latency."""
        b = np.asarray(step_bytes, dtype=float)
        st = np.asarray(num_stages, dtype=float)
        lat = self.stream_latency_cycles + b / self.stream_bytes_per_clock
        inflight = np.maximum(st - 1, 1)
        rate = np.minimum(self.sm_bytes_per_clock, inflight * b / np.maximum(lat, 1e-30))
        cyc = np.where(st <= 1, lat, b / rate)
        return np.where(b > 0, cyc, 0.0) / self.clock_hz


def _read_table(hw_name: str, source: str, name: str) -> str:
    """The microbenchmark table ``name`` beside the preset (or the user's TOML file)."""
    src = source or ""
    if src.startswith("iosim/presets/"):
        res = resources.files("iosim") / "presets" / name
        try:
            return res.read_text(encoding="utf-8")
        except OSError:
            raise IosimError(f"hardware '{hw_name}': [timing] microbenchmarks file '{name}' "
                             f"is missing from the package") from None
    path = Path(src).parent / name
    try:
        return path.read_text(encoding="utf-8-sig")
    except OSError:
        raise IosimError(f"{src}: [timing] microbenchmarks file '{path}' cannot be read") \
            from None


def timing_rates(hw) -> TimingRates | None:
    """The preset's sustained rates, or ``None`` when it has no ``[timing]`` table."""
    if not hw.timing:
        return None
    smem = next((lv for lv in hw.levels if lv.name.upper() == "SMEM"), None)
    sms = int(smem.instances) if smem is not None and smem.instances else 1
    return _parse_cached(hw.name, hw.source, hw.timing, hw.clock_hz, sms)


@lru_cache(maxsize=32)
def _parse_cached(name, source, timing, clock_hz, sms) -> TimingRates:
    t = dict(timing)
    where = f"hardware '{name}' [timing]"
    need = ("microbenchmarks", "launch", "hbm_read", "exp_per_clock",
            "stream_bytes_per_clock", "stream_latency", "sm_bytes_per_clock")
    miss = [k for k in need if k not in t]
    if miss:
        raise IosimError(f"{where}: missing {', '.join(miss)}")
    from iosim.hardware import parse_bandwidth
    text = _read_table(name, source, str(t["microbenchmarks"]))
    rows = list(csv.DictReader(io.StringIO(text)))
    mma = []
    for r in rows:
        if r.get("kind") == "mma" and float(r.get("programs_per_sm") or 1) == 1:
            mma.append((float(r["block_m"]), float(r["block_n"]), float(r["head_dim"]),
                        float(r["num_warps"]), float(r["num_stages"]),
                        float(r["cycles_per_iter"])))
    if not mma:
        raise IosimError(f"{where}: the microbenchmarks file has no 'mma' rows")
    return TimingRates(
        clock_hz=clock_hz, sms=sms, launch_s=_time(t["launch"], f"{where} launch"),
        hbm_read_bps=parse_bandwidth(str(t["hbm_read"])),
        hbm_copy_bps=parse_bandwidth(str(t.get("hbm_copy", t["hbm_read"]))),
        exp_per_clock=_number(t["exp_per_clock"], f"{where} exp_per_clock"),
        stream_bytes_per_clock=_number(t["stream_bytes_per_clock"],
                                       f"{where} stream_bytes_per_clock"),
        stream_latency_cycles=_number(t["stream_latency"], f"{where} stream_latency"),
        sm_bytes_per_clock=_number(t["sm_bytes_per_clock"], f"{where} sm_bytes_per_clock"),
        program_start_s=_time(t.get("program_start", "0 us"), f"{where} program_start"),
        load_efficiency=_number(t.get("load_efficiency", 1.0), f"{where} load_efficiency"),
        host_call_s=tuple(_time(x, f"{where} host_call") for x in
                          (t["host_call"].split(",") if "host_call" in t else ())),
        mma=tuple(mma), source=str(t.get("source", "")),
        calibration=str(t.get("calibration", "")))
