"""One result type for an evaluation: counts, FLOPs, time, energy, bound — as dict, row, text.

:class:`Report` is frozen. ``to_dict()`` follows the CLI's ``--json`` schema::

    {"levels": {LEVEL: {"read_bytes", "write_bytes",
                        "per_tensor": {T: {"read_bytes", "write_bytes"}}}},
     "flops": {...}, "time_s": ..., "bound": {...}, "mapping": {...},
     ... plus shapes, hardware, per-level times, energy, footprint, the loop nest}

``to_row()`` is a flat dict for a pandas row; ``render()`` the text a newcomer reads.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from iosim.mapping import Mapping, Shapes, format_loop_nest

__all__ = ["LevelTraffic", "Report", "report_from_arrays", "fmt_bytes", "fmt_count",
           "fmt_time"]


def fmt_bytes(b: float) -> str:
    if b is None or (isinstance(b, float) and math.isnan(b)):
        return "-"
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(b) >= size:
            return f"{b / size:.2f} {unit}"
    return f"{b:.0f} B"


def fmt_count(x: float) -> str:
    for unit, size in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= size:
            return f"{x / size:.3g} {unit}"
    return f"{x:.4g}"


def fmt_time(t: float) -> str:
    if not math.isfinite(t):
        return "inf"
    for unit, size in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
        if t >= size:
            return f"{t / size:.3g} {unit}"
    return f"{t:.3g} s"


@dataclass(frozen=True)
class LevelTraffic:
    """Bytes one memory level moves (all batches and heads)."""
    name: str
    read_bytes: float
    write_bytes: float
    per_tensor: dict             # tensor -> {"read_bytes", "write_bytes"}
    role: str                    # "backing" | "pass-through" | "sram"

    def to_dict(self) -> dict:
        return {"read_bytes": self.read_bytes, "write_bytes": self.write_bytes,
                "per_tensor": {t: dict(v) for t, v in self.per_tensor.items()},
                "role": self.role}


@dataclass(frozen=True)
class Report:
    """The result of evaluating a mapping of a cascade on a hardware model."""
    cascade: str
    mapping_resolved: Mapping
    hardware: str
    shapes: Shapes
    levels: tuple                       # LevelTraffic, outermost first
    per_head_elements: dict             # backing store: tensor -> {"read", "write"} elements
    flops: dict                         # class -> FLOPs (all heads)
    time_s: float
    times: dict                         # level / op class -> seconds
    limiter: str
    energy_j: float | None
    bound: dict
    footprint: dict                     # level -> {"need_bytes", "capacity_bytes"}
    fits: bool
    sram_elements: float
    loop_nest: str
    unmodelled_levels: tuple = ()
    warnings: tuple = ()
    notes: tuple = field(default=())
    backing_description: str | None = None  # what the backing store's row means, if modelled
    #: the parallel execution-time model's breakdown (iosim.timing), where the hardware has
    #: sustained rates; then ``time_s`` is its time and ``roofline_s`` the roofline's
    time: dict | None = None
    roofline_s: float | None = None
    roofline_limiter: str | None = None
    #: a ragged batch: the key length of each request (None: every request has kv_len keys)
    kv_lens: tuple | None = None

    # ---- views -----------------------------------------------------------------------
    @property
    def mapping(self) -> Mapping:
        return self.mapping_resolved

    def level(self, name: str) -> LevelTraffic:
        for lv in self.levels:
            if lv.name.lower() == name.lower():
                return lv
        raise KeyError(name)

    @property
    def backing(self) -> LevelTraffic:
        return self.levels[0]

    def to_dict(self) -> dict:
        return {
            "levels": {lv.name: lv.to_dict() for lv in self.levels},
            "flops": dict(self.flops, total=float(sum(self.flops.values()))),
            "time_s": self.time_s,
            "bound": dict(self.bound),
            "mapping": self.mapping_resolved.to_dict(),
            "cascade": self.cascade,
            "hardware": self.hardware,
            "shapes": self.shapes.to_dict(),
            "per_head_elements": {t: dict(v) for t, v in self.per_head_elements.items()},
            "times_s": dict(self.times),
            "limiter": self.limiter,
            "roofline_s": self.roofline_s,
            "kv_lens": list(self.kv_lens) if self.kv_lens is not None else None,
            "roofline_limiter": self.roofline_limiter,
            "time": self.time,
            "energy_j": self.energy_j,
            "footprint": {k: dict(v) for k, v in self.footprint.items()},
            "fits": self.fits,
            "sram_elements": self.sram_elements,
            "unmodelled_levels": list(self.unmodelled_levels),
            "warnings": list(self.warnings),
            "hbm_model": self.backing_description or "passthrough: HBM sees every read from "
                                                     "beyond the SRAM level",
            "loop_nest": self.loop_nest,
        }

    def to_row(self) -> dict:
        """A flat dict (one pandas row)."""
        row = {"cascade": self.cascade, "mapping": self.mapping_resolved.name,
               "hardware": self.hardware, **{k: v for k, v in self.shapes.to_dict().items()},
               "block_q": self.mapping_resolved.block_q,
               "block_kv": self.mapping_resolved.block_kv}
        for lv in self.levels:
            row[f"{lv.name.lower()}_read_bytes"] = lv.read_bytes
            row[f"{lv.name.lower()}_write_bytes"] = lv.write_bytes
        for t, v in self.per_head_elements.items():
            row[f"{self.backing.name.lower()}_read_{t}"] = v["read"]
            row[f"{self.backing.name.lower()}_write_{t}"] = v["write"]
        for k, v in self.flops.items():
            row[f"flops_{k}"] = v
        row["time_s"] = self.time_s
        row["limiter"] = self.limiter
        row["energy_j"] = self.energy_j
        row["fits"] = self.fits
        row["bound_elements"] = self.bound.get("elements")
        row["ratio_to_bound"] = self.bound.get("ratio")
        return row

    # ---- text ------------------------------------------------------------------------
    def render(self) -> str:
        import textwrap
        s, m = self.shapes, self.mapping_resolved
        L = []
        keys = f"{s.kv_len} keys"
        dims = f"d={s.e}" if s.e == s.f else f"e={s.e}, f={s.f}"
        L.append(f"iosim evaluate: {self.cascade} with mapping {m.name} on {self.hardware} "
                 f"({s.dtype})")
        heads = (f"heads {s.heads} (K/V heads {s.kv_heads}, {s.group} query heads each)"
                 if s.group > 1 else f"heads {s.heads}")
        if self.kv_lens is not None:
            kl = self.kv_lens
            keys = (f"{min(kl)}-{max(kl)} keys per request (a ragged batch, {sum(kl)} keys in "
                    f"all)")
        L.append(f"  batch {s.batch} x {heads}, N={s.n} queries x {keys}, {dims}"
                 f"{', causal' if s.causal else ''}; tiles block_q={m.block_q} (queries, "
                 f"BLOCK_M) x block_kv={m.block_kv} (keys, BLOCK_N)")
        L.append("")
        L.append("What the numbers mean")
        wrap = lambda t: textwrap.wrap(t, 96, initial_indent="  ",  # noqa: E731
                                       subsequent_indent="  ")
        unit = ("(batch, K/V head) with its query heads" if s.group > 1
                else "(batch, head)")
        L += wrap("read = bytes read out of a memory level toward the compute units; write = "
                  "bytes written into it; summed over all batches and heads. Per-head columns "
                  f"count elements of one {unit} at {self.backing.name}.")
        L += wrap(self._model_sentence())
        L.append("")
        L.append(f"Loop nest (one batch and {'K/V head' if s.group > 1 else 'head'}; "
                 "'parallel' loops are independent programs, 'keep' = on-chip only)")
        for ln in self.loop_nest.splitlines():
            L.append("  " + ln)
        L.append("")
        L.append(self._table())
        L.append("")
        fl = self.flops
        L.append(f"Compute: matmul {fmt_count(fl['matmul'])}FLOP, exp {fmt_count(fl['exp'])}, "
                 f"other vector ops {fmt_count(fl['other'])} (counted from the cascade's "
                 f"Einsums).")
        if self.time is not None:
            from iosim.timing.model import render_time
            for ln in render_time(self.time, self.roofline_s, self.roofline_limiter):
                L += textwrap.wrap(ln, 96, subsequent_indent="    ")
            L += wrap("Roofline terms: " + ", ".join(f"{k} {fmt_time(v)}"
                                                     for k, v in self.times.items()))
        else:
            L.append(f"Time (roofline: the slowest unit or level, all overlapping): "
                     f"{fmt_time(self.time_s)}, bound by {self.limiter}.")
            L += wrap(", ".join(f"{k} {fmt_time(v)}" for k, v in self.times.items()))
        if self.energy_j is not None:
            L.append(f"Energy (levels with per-access energies only): "
                     f"{self.energy_j * 1e3:.4g} mJ.")
        fp = "; ".join(f"{k} {fmt_bytes(v['need_bytes'])} of {fmt_bytes(v['capacity_bytes'])}"
                       for k, v in self.footprint.items())
        L.append(f"On-chip buffers of one program: {fp}"
                 f"{'' if self.fits else '  <-- DOES NOT FIT'}.")
        b = self.bound
        L += textwrap.wrap(
            f"IO lower bound: {fmt_count(b['elements'])} elements per "
            f"{'K/V head' if s.group > 1 else 'head'} (binding: "
            f"{b['binding']}{', asymptotic, constant 1' if b.get('asymptotic') else ''}; "
            f"{'fast memory (L2 + SMEM)' if 'bound_fast' in b else 'SRAM'} = "
            f"{b['sram_elements']:,.0f} elements). {self.backing.name} traffic is "
            f"{b['ratio']:.3g}x the bound and {b['ratio_compulsory']:.3g}x the compulsory "
            f"traffic ({fmt_count(b['compulsory_elements'])} elements: read Q, K, V once, "
            f"write O once).", 98, subsequent_indent="  ")
        for w in self.warnings:
            L.append(f"warning: {w}")
        return "\n".join(L)

    def _model_sentence(self) -> str:
        names = [lv.name for lv in self.levels]
        sram = next((lv.name for lv in self.levels if lv.role == "sram"), names[-1])
        mids = [lv.name for lv in self.levels if lv.role == "pass-through"]
        txt = (f"Tiles live in {sram} (one program's capacity); every level above it sees "
               f"the bytes each program loads from beyond {sram}")
        if mids:
            txt += f" ({', '.join(mids)} included)"
        if self.backing_description:
            txt += f". {self.backing_description}"
        else:
            txt += (f"; {names[0]} is assumed to see the same bytes (no reuse across programs: "
                    f"an upper estimate when K/V stay in a cache).")
        if self.unmodelled_levels:
            txt += f" Not modelled: {', '.join(self.unmodelled_levels)}."
        return txt

    def _table(self) -> str:
        rows = [("level", "tensor", "read", "write", "read/head (el.)", "write/head (el.)")]
        for lv in self.levels:
            first = True
            label = lv.name + (" (tile fills)" if lv.role == "sram" else "")
            for t, v in lv.per_tensor.items():
                er = ew = ""
                if lv.role == "backing" and t in self.per_head_elements:
                    ph = self.per_head_elements[t]
                    er = f"{ph['read']:,.0f}" if ph["read"] else "-"
                    ew = f"{ph['write']:,.0f}" if ph["write"] else "-"
                rows.append((label if first else "", t,
                             fmt_bytes(v["read_bytes"]) if v["read_bytes"] else "-",
                             fmt_bytes(v["write_bytes"]) if v["write_bytes"] else "-", er, ew))
                first = False
            tr = tw = ""
            if lv.role == "backing":
                tr = f"{sum(p['read'] for p in self.per_head_elements.values()):,.0f}"
                tw = f"{sum(p['write'] for p in self.per_head_elements.values()):,.0f}"
            rows.append(("", "total", fmt_bytes(lv.read_bytes), fmt_bytes(lv.write_bytes), tr, tw))
        widths = [max(len(r[k]) for r in rows) for k in range(6)]
        out = []
        for n, r in enumerate(rows):
            out.append("  ".join(c.ljust(widths[k]) if k < 2 else c.rjust(widths[k])
                                 for k, c in enumerate(r)).rstrip())
            if n == 0:
                out.append("  ".join("-" * w for w in widths))
        return "\n".join(out)


def report_from_arrays(r: dict, shapes: Shapes, row: int = 0) -> Report:
    """Build a :class:`Report` from one row of :func:`iosim.traffic.evaluate_arrays`."""
    from iosim.traffic import attention_bound_applies, bound_arrays, scalar_sizes
    from dataclasses import replace
    pick = lambda a: float(np.asarray(a).reshape(-1)[row])  # noqa: E731
    roles = r["level_roles"]
    nest = r["nest"]
    bytes_of = r["dtype_roles"]
    heads = pick(r["heads_total"])
    levels = []
    all_tensors = list(dict.fromkeys(list(r["model_reads"]) + list(r["model_writes"])))

    def per_tensor(reads, writes, sram=False):
        out = {}
        for t in all_tensors:
            b = bytes_of[nest.dtype_role(t)] * heads
            rd = pick(reads[t]) * b if t in reads else 0.0
            wr = pick(writes[t]) * b if t in writes else 0.0
            if sram:
                wr = rd
            if rd or wr:
                out[t] = {"read_bytes": rd, "write_bytes": wr}
        return out

    for name, (rd, wr) in r["levels"].items():
        if name == roles["backing"]:
            pt, role = per_tensor(r["backing_reads"], r["backing_writes"]), "backing"
        elif name == roles["sram"]:
            pt, role = per_tensor(r["model_reads"], {}, sram=True), "sram"
        else:
            pt, role = per_tensor(r["model_reads"], r["model_writes"]), "pass-through"
        levels.append(LevelTraffic(name, pick(rd), pick(wr), pt, role))
    per_head = {}
    for t in all_tensors:
        rd = pick(r["backing_reads"][t]) if t in r["backing_reads"] else 0.0
        wr = pick(r["backing_writes"][t]) if t in r["backing_writes"] else 0.0
        per_head[t] = {"read": rd, "write": wr}
    sizes = scalar_sizes(r, row)
    m = r["mapping"]
    resolved = m
    if "row_policy" in r:
        m = replace(m, row_policy=str(np.asarray(r["row_policy"]).reshape(-1)[row]))
        resolved = m
    if m.derived_blocks or m.block_q != sizes["block_q"] or m.block_kv != sizes["block_kv"]:
        try:
            resolved = replace(m, block_q=sizes["block_q"], block_kv=sizes["block_kv"])
        except Exception:  # pragma: no cover
            resolved = m
    bnd = bound_arrays(r)
    b = {"model": "standard-matmul lower envelope" if bnd["bound_binding"][row] != "compulsory"
         or attention_bound_applies(r["nest"].mapping, r["cascade"])
         else "compulsory",
         "elements": pick(bnd["bound_elements"]),
         "bytes": pick(bnd["bound_elements"]) * bytes_of["data"] * heads,
         "binding": str(bnd["bound_binding"][row]),
         "asymptotic": str(bnd["bound_binding"][row]) != "compulsory",
         "ratio": pick(bnd["ratio_to_bound"]),
         "compulsory_elements": pick(bnd["bound_compulsory_elements"]),
         "ratio_compulsory": pick(bnd["ratio_to_compulsory"]),
         "sram_elements": pick(r.get("bound_fast_elements", r["sram_elements"])),
         "note": "elements per (batch, head) at the backing store; the Saha & Ye terms are "
                 "asymptotic (constant 1), the compulsory term exact"}
    if "bound_fast_elements" in r:
        b["bound_fast"] = "the L2 and every SMEM, which the backing model lets reuse data"
    fp = {lv: {"need_bytes": pick(need), "capacity_bytes": pick(cap)}
          for lv, (need, cap) in r["footprint"].items()}
    fits = bool(np.asarray(r["fits"]).reshape(-1)[row])
    warnings = []
    if not fits:
        over = [f"{lv} needs {fmt_bytes(v['need_bytes'])} but has {fmt_bytes(v['capacity_bytes'])}"
                for lv, v in fp.items() if v["need_bytes"] > v["capacity_bytes"]]
        if any(r["derived_blocks"].values()):
            warnings.append("the paper's block sizes overflow the SRAM: " + "; ".join(over)
                            + " (FlashAttention's Bc = ceil(M/4d), Br = min(Bc, d) ignore the "
                            "score tile and statistics)")
        else:
            warnings.append("tiles do not fit: " + "; ".join(over))
    times = {k: pick(v) for k, v in r["times"].items()}
    energy = None if r["energy_j"] is None else pick(r["energy_j"])
    tb = None
    limiter = str(np.asarray(r["limiter"]).reshape(-1)[row])
    if r.get("time") is not None:
        from iosim.timing.model import time_breakdown
        tb = time_breakdown(r["time"], row)
        slow = max(tb["kernels"], key=lambda k: k["time_s"])
        limiter = slow["limiter"]
    return Report(
        cascade=r["cascade"].name, mapping_resolved=resolved, hardware=r["hardware"].name,
        shapes=shapes, levels=tuple(levels), per_head_elements=per_head,
        flops={k: pick(v) for k, v in r["flops"].items()}, time_s=pick(r["time_s"]),
        times=times, limiter=limiter, time=tb,
        roofline_s=pick(r["roofline_s"]),
        roofline_limiter=str(np.asarray(r["roofline_limiter"]).reshape(-1)[row]),
        energy_j=energy, bound=b, footprint=fp, fits=fits,
        sram_elements=pick(r["sram_elements"]),
        loop_nest=format_loop_nest(nest, sizes), unmodelled_levels=tuple(roles["unmodelled"]),
        warnings=tuple(warnings))
