"""Grids of configurations -> DataFrame -> CSV (and figures, through :mod:`iosim.plots`).

``iosim sweep NAME... --hw PRESET --sram LIST_OR_RANGE --seq-len LIST_OR_RANGE`` evaluates
every algorithm NAME at every (SRAM size, sequence length, head dimension) point. The
evaluation is vectorised: all points of one algorithm go through one call of the analytical
model (:func:`iosim.traffic.evaluate_arrays`) per chunk. Results are written atomically (a
temporary file and a rename) after every chunk, so an interrupted sweep loses at most the
chunk in flight, and a rerun with the same output directory skips the points already in the
CSV.

Value syntax (:func:`parse_counts`, :func:`parse_srams`):

* a list ``1K,4K,16K``; counts take the suffixes ``K`` (×1024) and ``M`` (×1024²);
* a geometric range ``1K:64K:x2`` (from, to inclusive, factor) or an arithmetic one
  ``256:2048:+256``;
* SRAM sizes always carry a unit: bytes (``64KiB``, ``100KB``, ``65536B``) or elements of the
  dtype (``4096el``); ranges too: ``64KiB:1MiB:x2``, ``1024el:65536el:x4``.

Algorithm names (:func:`resolve_algorithm`): a mapping name (``fa1``, ``fa2``, ``saha-ye``,
``unfused``, ... with its registry cascade), a cascade name (``attention-1pass``; mapping from
``--mapping``), or ``cascade:mapping``. The mapping ``best`` means the minimum-traffic tiling
that fits each SRAM size (:mod:`iosim.search`, or a grid over the mapping kinds of the
cascade when the search is not available).
"""
from __future__ import annotations

import io
import math
import re
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Callable

import numpy as np

from iosim.errors import IosimError

__all__ = [
    "parse_counts",
    "parse_srams",
    "Algorithm",
    "resolve_algorithm",
    "SweepSpec",
    "run_sweep",
    "KEY_COLUMNS",
    "MAX_POINTS",
]

MAX_POINTS = 1_000_000  # per axis; protects against '1:1e12:+1'
_COUNT_SUFFIX = {"": 1, "K": 1024, "k": 1024, "M": 1024**2, "Ki": 1024, "Mi": 1024**2}
_COUNT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(Ki|Mi|K|k|M)?\s*$")


# --------------------------------------------------------------------------------------
# LIST_OR_RANGE parsing
# --------------------------------------------------------------------------------------


def _count(text: str, option: str) -> int:
    m = _COUNT_RE.match(text)
    if not m:
        raise IosimError(f"{option}: '{text}' is not a positive integer (suffixes: K = 1024, M = 1024²)")
    value = Decimal(m.group(1)) * _COUNT_SUFFIX[m.group(2) or ""]
    if value != value.to_integral_value():
        raise IosimError(f"{option}: '{text}' is not a whole number")
    v = int(value)
    if v < 1:
        raise IosimError(f"{option}: '{text}' must be positive")
    return v


def _step(text: str, option: str, item: str):
    """('x', factor) or ('+', increment text)."""
    t = text.strip()
    if not t:
        raise IosimError(f"{option}: range '{item}' has an empty step; use e.g. x2 or +256")
    if t[0] in "x*×":
        try:
            f = Decimal(t[1:].strip())
        except InvalidOperation:
            raise IosimError(f"{option}: range '{item}': step '{t}' is not a factor such as x2") from None
        if not f > 1:
            raise IosimError(f"{option}: range '{item}': a geometric factor must be greater than 1, got {t}")
        return "x", f
    return "+", t.lstrip("+").strip()


def _expand(lo, hi, kind, step, option: str, item: str) -> list:
    if hi < lo:
        raise IosimError(f"{option}: range '{item}' runs backwards ({lo} > {hi})")
    out = []
    x = lo
    if kind == "x":
        while x <= hi * (1 + 1e-12):
            out.append(x)
            if len(out) > MAX_POINTS:
                raise IosimError(f"{option}: range '{item}' has more than {MAX_POINTS} values")
            x = x * float(step)
    else:
        if not step > 0:
            raise IosimError(f"{option}: range '{item}': the increment must be positive")
        n = (hi - lo) / step
        if n > MAX_POINTS:
            raise IosimError(f"{option}: range '{item}' has more than {MAX_POINTS} values")
        out = [lo + i * step for i in range(int(math.floor(n + 1e-9)) + 1)]
    return out


def _split_items(text, option: str) -> list:
    if isinstance(text, (list, tuple)):
        items = []
        for t in text:
            items.extend(_split_items(t, option))
        return items
    if isinstance(text, (int, np.integer)) and not isinstance(text, bool):
        return [str(int(text))]
    if not isinstance(text, str):
        raise IosimError(f"{option}: expected a list such as 1K,4K or a range such as 1K:64K:x2, got {text!r}")
    items = [t.strip() for t in text.split(",")]
    if not text.strip() or any(not t for t in items):
        raise IosimError(f"{option}: empty value in '{text}'; expected e.g. 1K,4K,16K or 1K:64K:x2")
    return items


def parse_counts(text, option: str = "--seq-len") -> list:
    """Positive integers from a LIST_OR_RANGE (``1K,4K``, ``1K:64K:x2``, ``64:512:+64``).

    Returns the sorted distinct values. Errors are one-line :class:`IosimError` naming
    ``option``.
    """
    values = []
    for item in _split_items(text, option):
        parts = item.split(":")
        if len(parts) == 1:
            values.append(_count(item, option))
        elif len(parts) == 3:
            lo, hi = _count(parts[0], option), _count(parts[1], option)
            kind, st = _step(parts[2], option, item)
            if kind == "+":
                st = _count(st, option)
            for v in _expand(lo, hi, kind, st, option, item):
                values.append(int(round(v)))
        else:
            raise IosimError(f"{option}: '{item}' is neither a value nor a range FROM:TO:STEP "
                             f"(e.g. 1K:64K:x2 or 256:2048:+256)")
    return sorted(set(values))


def parse_srams(text, dtype: str, option: str = "--sram") -> list:
    """SRAM sizes in **bytes** from a LIST_OR_RANGE whose values carry units.

    ``64KiB,192KiB``; ``64KiB:1MiB:x2``; ``4096el:65536el:x2`` (elements of ``dtype``);
    ``16KiB:64KiB:+16KiB``. Returns sorted distinct byte counts (floats).
    """
    from iosim.hardware import parse_sram

    def one(t: str) -> float:
        try:
            return float(parse_sram(t, dtype))
        except IosimError as e:
            msg = str(e)
            if msg.startswith("--sram"):
                msg = msg[len("--sram"):].lstrip(": ")
            raise IosimError(f"{option}: {msg}") from None

    values = []
    for item in _split_items(text, option):
        parts = item.split(":")
        if len(parts) == 1:
            values.append(one(item))
        elif len(parts) == 3:
            lo, hi = one(parts[0]), one(parts[1])
            kind, st = _step(parts[2], option, item)
            if kind == "+":
                st = one(st)
            values.extend(_expand(lo, hi, kind, st, option, item))
        else:
            raise IosimError(f"{option}: '{item}' is neither a size nor a range FROM:TO:STEP "
                             f"(e.g. 64KiB:1MiB:x2 or 4096el:65536el:x2)")
    # round to whole bytes (geometric steps accumulate float error)
    return sorted({float(round(v, 6)) for v in values})


# --------------------------------------------------------------------------------------
# algorithms
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Algorithm:
    """One line of a sweep: a cascade and a mapping name (``best``: the search's minimum)."""

    label: str
    cascade: str
    mapping: str

    @property
    def searched(self) -> bool:
        return self.mapping == "best"


def _is_file(text: str) -> bool:
    return text.endswith(".casc") or "/" in text


def _check_fit(casc: str, mp: str, what: str) -> str:
    """The registry name of mapping ``mp`` if it fits cascade ``casc`` (read from its
    structure), else a one-line error saying why."""
    from iosim.mapping import fit_error, get_mapping, mappings_for

    m = get_mapping(mp, cascade=casc)
    why = fit_error(m.kind, casc)
    if why is not None:
        raise IosimError(f"{what}: {why}; mappings that fit: {', '.join(mappings_for(casc))} "
                         f"or best")
    return m.name


def resolve_algorithm(name: str, default_mapping: str | None = None) -> Algorithm:
    """``fa1`` | ``attention-1pass`` | ``attention-1pass:fa1`` | ``attention-1pass:best``;
    a cascade file works as a cascade name (``mine.casc``, ``mine.casc:fa2``)."""
    from cascades.library import load
    from cascades.library import names as cascade_names
    from iosim.mapping import MAPPINGS, get_mapping

    text = str(name).strip()
    if not text:
        raise IosimError("empty algorithm name")
    if ":" in text:
        casc, mp = (t.strip() for t in text.rsplit(":", 1))
        if not _is_file(casc) and casc not in cascade_names():
            raise IosimError(f"unknown cascade '{casc}' in '{text}'; cascades: {', '.join(cascade_names())}")
        load(casc)  # a file that does not parse is a one-line error
        if mp != "best":
            mp = _check_fit(casc, mp, f"'{text}'")
        return Algorithm(text, casc, mp)
    key = text.lower().replace("_", "-")
    if key in MAPPINGS or key in ("fa", "flash2", "standard", "naive"):
        m = get_mapping(key)
        return Algorithm(m.name, m.cascade, m.name)
    if text in cascade_names() or _is_file(text):
        load(text)
        mp = default_mapping
        if mp is None:
            mp = "best"
        if mp != "best":
            mp = _check_fit(text, mp, f"--mapping {mp}")
        return Algorithm(f"{text}:{mp}", text, mp)
    import difflib

    pool = list(MAPPINGS) + list(cascade_names())
    hit = difflib.get_close_matches(text, pool, n=1, cutoff=0.5)
    hint = f" (did you mean '{hit[0]}'?)" if hit else ""
    raise IosimError(f"unknown algorithm '{text}'{hint}; give a mapping ({', '.join(MAPPINGS)}), "
                     f"a cascade, or cascade:mapping")


# --------------------------------------------------------------------------------------
# the sweep
# --------------------------------------------------------------------------------------

KEY_COLUMNS = ("algorithm", "hardware", "dtype", "batch", "heads", "causal", "sram_bytes", "n", "d")

#: the columns the CSV keeps (per-tensor columns vary by algorithm and are left out)
OUT_COLUMNS = KEY_COLUMNS + (
    "kv_heads", "cascade", "mapping", "sram_elements", "block_q", "block_kv", "fits",
    "hbm_read_bytes", "hbm_write_bytes", "hbm_bytes", "hbm_elements_per_head",
    "flops_matmul", "flops_exp", "flops_other", "time_s", "limiter",
    "bound_compulsory_elements", "bound_envelope_elements", "bound_elements", "ratio_to_bound",
)


@dataclass
class SweepSpec:
    algorithms: tuple
    hardware: str
    srams: tuple          # bytes
    seq_lens: tuple
    head_dims: tuple
    dtype: str = "bf16"
    batch: int = 1
    heads: int = 1
    causal: bool = False
    kv_heads: int | None = None   # K/V heads (default: heads); heads / kv_heads share one

    def points(self) -> int:
        return len(self.algorithms) * len(self.srams) * len(self.seq_lens) * len(self.head_dims)


#: the CSV column holding :func:`_config_hash` of the row's configuration
HASH_COLUMN = "config_hash"


def _config_hash(alg: Algorithm, hw, spec: SweepSpec) -> str:
    """A hash of what a row's numbers depend on besides its grid point (SRAM size, N, d): the
    resolved hardware (every level and rate, not its name or file), the cascade's text, the
    mapping's settings (``best``: the search) and the sweep's scalar settings (dtype, batch,
    heads, causal, ...). Resuming reuses a row only when this is unchanged."""
    import dataclasses
    import hashlib
    import json

    from iosim.traffic import _load_cascade

    c = _load_cascade(alg.cascade)
    mapping: object = "best"
    if not alg.searched:
        from iosim import mapping as mp
        fn = getattr(mp, "mapping_for", None)
        m = fn(c, alg.mapping) if fn is not None else mp.get_mapping(alg.mapping, cascade=c)
        mapping = m.to_dict()
    hard = hw.to_dict()
    hard.pop("source", None)
    hard.pop("name", None)
    grid = {"algorithms", "hardware", "srams", "seq_lens", "head_dims"}
    scalars = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)
               if f.name not in grid}
    blob = json.dumps({"hardware": hard, "cascade": c.to_text(), "mapping": mapping,
                       "settings": scalars}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _key(row) -> tuple:
    """The identity of a row: algorithm, hardware name, configuration hash and grid point."""
    h = row.get(HASH_COLUMN) if hasattr(row, "get") else row[HASH_COLUMN]
    h = h if isinstance(h, str) else ""
    return (str(row["algorithm"]), str(row["hardware"]), h, round(float(row["sram_bytes"]), 3),
            int(row["n"]), int(row["d"]))


def _note(msg: str) -> None:
    import sys
    sys.stderr.write(f"note: {msg}\n")


def _read_existing(path: Path):
    """The rows of an earlier run's ``sweep.csv`` (None if there is none).

    A last row cut short (the file does not end with a newline) is dropped, with a note; a
    row with the wrong number of fields or a key value that is not a number, and a file that
    is not a sweep CSV, are one-line errors naming the file and the line.
    """
    import csv

    import pandas as pd

    if not path.exists():
        return None
    if not path.is_file():
        raise IosimError(f"{path} is not a file; choose another --out directory")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise IosimError(f"{path} is not a sweep CSV (not UTF-8 text at byte {exc.start}); "
                         f"choose another --out directory") from None
    except OSError as exc:
        raise IosimError(f"cannot read the existing results {path}: "
                         f"{exc.strerror or type(exc).__name__}") from None
    if not text.strip():
        return None
    lines = text.split("\n")
    if not text.endswith("\n") and len(lines) > 1:
        _note(f"{path}: dropped its last row (line {len(lines)}), which was cut short; "
              f"its point is evaluated again")
        text = "\n".join(lines[:-1]) + "\n"
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise IosimError(f"{path} is not a valid CSV: {exc}") from None
    header = rows[0] if rows else []
    missing = [c for c in KEY_COLUMNS if c not in header]
    if missing:
        raise IosimError(f"{path} is not a sweep CSV (no column {missing[0]}); "
                         f"choose another --out directory")
    for i, r in enumerate(rows[1:], start=2):
        if r and len(r) != len(header):
            raise IosimError(f"{path}, line {i}: {len(r)} fields where the header has "
                             f"{len(header)}; the file is damaged (delete it, or that line, "
                             f"to resume)")
    try:
        df = pd.read_csv(io.StringIO(text))
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error here
        raise IosimError(f"cannot read the existing results {path}: {exc}".splitlines()[0]) from None
    for col in ("sram_bytes", "n", "d"):
        bad = pd.to_numeric(df[col], errors="coerce").isna()
        if bad.any():
            i = int(bad.to_numpy().argmax())
            raise IosimError(f"{path}, line {i + 2}: column {col} is {df[col].iloc[i]!r}, not a "
                             f"number; the file is damaged (delete it, or that line, to resume)")
    return df


def _hbm_name(hw) -> str:
    return hw.backing.name.lower()


def _fixed_frame(alg: Algorithm, hw, pts: dict, spec: SweepSpec):
    """Evaluate a fixed (named) mapping at the points (arrays n, d, sram) in one call."""
    import pandas as pd
    from iosim.mapping import mapping_for
    from iosim.traffic import _load_cascade, arrays_to_frame, evaluate_arrays

    c = _load_cascade(alg.cascade)
    m = mapping_for(c, alg.mapping)   # the cascade file's block parameters as defaults
    r = evaluate_arrays(c, m, hw, n=pts["n"], d=pts["d"], dtype=spec.dtype,
                        batch=spec.batch, heads=spec.heads, kv_heads=spec.kv_heads,
                        causal=spec.causal, sram_bytes=pts["sram"], product=False)
    df = arrays_to_frame(r, per_tensor=False, pd=pd)
    df["sram_bytes"] = pts["sram"]
    return df


def _best_frame(alg: Algorithm, hw, pts: dict, spec: SweepSpec):
    """Minimum-traffic tiling per point, from iosim.search when it offers a frame-level API,
    else from a grid over the cascade's mapping kinds (see :func:`_grid_best_rows`)."""
    import pandas as pd

    try:
        from iosim import search  # noqa: F401
        fn = getattr(search, "search_frame", None)
    except ImportError:
        fn = None
    if fn is not None:
        return fn(alg.cascade, hw, n=pts["n"], d=pts["d"], sram_bytes=pts["sram"],
                  dtype=spec.dtype, batch=spec.batch, heads=spec.heads,
                  kv_heads=spec.kv_heads, causal=spec.causal)
    rows = [_grid_best_rows(alg.cascade, hw, int(n), int(d), float(s), spec)
            for n, d, s in zip(pts["n"], pts["d"], pts["sram"])]
    return pd.concat(rows, ignore_index=True)


def _grid_best_rows(cascade: str, hw, n: int, d: int, sram: float, spec: SweepSpec):
    """The best fitting configuration over the mapping kinds of ``cascade`` and a tile grid."""
    import pandas as pd
    from iosim.mapping import get_mapping, mappings_for
    from iosim.traffic import arrays_to_frame, evaluate_arrays

    frames = []
    tiles = np.unique(np.concatenate([np.arange(1, 65), np.round(np.geomspace(64, max(n, 64), 80))]))
    tiles = tiles[tiles <= max(n, 1)].astype(np.int64)
    for kind in mappings_for(cascade):
        m = get_mapping(kind, cascade=cascade)
        kw = dict(n=n, d=d, dtype=spec.dtype, batch=spec.batch, heads=spec.heads,
                  kv_heads=spec.kv_heads, causal=spec.causal, sram_bytes=sram)
        try:
            if m.preset.tiles == "square":
                bmax = int(math.isqrt(int(sram // 1)))
                b = np.arange(1, max(2, min(bmax, n) + 1))
                r = evaluate_arrays(cascade, m, hw, block_q=b, block_kv=b, product=False,
                                    **{k: (np.full(len(b), v) if k in ("n", "d", "sram_bytes") else v)
                                       for k, v in kw.items()})
            elif m.preset.tiles == "tied":
                r = evaluate_arrays(cascade, m, hw, block_q=tiles, **kw)
            else:
                r = evaluate_arrays(cascade, m, hw, block_q=tiles,
                                    block_kv=np.array([t for t in (1, 2, 4, 8, 16, 32, 64, 128, 256) if t <= n]),
                                    **kw)
        except IosimError:
            continue
        df = arrays_to_frame(r, per_tensor=False, pd=pd)
        df = df[df["fits"]]
        if len(df):
            frames.append(df.nsmallest(1, "hbm_bytes"))
    if not frames:
        m = get_mapping(mappings_for(cascade)[0], cascade=cascade)
        r = evaluate_arrays(cascade, m, hw, n=n, d=d, dtype=spec.dtype, batch=spec.batch,
                            heads=spec.heads, kv_heads=spec.kv_heads, causal=spec.causal,
                            sram_bytes=sram)
        df = arrays_to_frame(r, per_tensor=False, pd=pd)
        return df
    out = pd.concat(frames, ignore_index=True).nsmallest(1, "hbm_bytes")
    out["sram_bytes"] = sram
    return out


def run_sweep(spec: SweepSpec, out_dir: str | Path | None = None, *, chunk_points: int = 4096,
              progress: bool = True, flush_seconds: float = 2.0,
              on_chunk: Callable | None = None):
    """Evaluate the grid; return the DataFrame of all rows (old and new).

    With ``out_dir``: rows already in ``out_dir/sweep.csv`` for the same algorithm, hardware,
    SRAM size, N and d, computed from the same configuration (the ``config_hash`` column: the
    hardware's numbers, the cascade, the mapping and the scalar settings) are skipped; rows
    of a requested point computed from another configuration are replaced; new rows are merged into the CSV
    atomically after every chunk (at most every ``flush_seconds``) and at the end.
    ``on_chunk(done, total)`` is called after each chunk (tests use it to interrupt).
    """
    import pandas as pd
    from iosim.cli.common import atomic_write
    from iosim.hardware import load_hardware

    hw = load_hardware(spec.hardware)
    path = None
    if out_dir is not None:
        from iosim.cli.common import ensure_dir
        path = ensure_dir(out_dir) / "sweep.csv"   # unwritable: one line, before any work
    existing = _read_existing(path) if path is not None else None
    hashes = {alg.label: _config_hash(alg, hw, spec) for alg in spec.algorithms}
    done = set()
    if existing is not None and len(existing):
        keys = [_key(r) for _, r in existing.iterrows()]
        done = set(keys)
        # rows of a requested point whose configuration changed since (other hardware
        # numbers under the same name, an edited cascade, other settings): evaluate again
        wanted = {(alg.label, hw.name, round(float(s), 3), int(n), int(d))
                  for alg in spec.algorithms for n in spec.seq_lens for d in spec.head_dims
                  for s in spec.srams}
        stale = [k[:2] + k[3:] in wanted and k[2] != hashes.get(k[0]) for k in keys]
        if any(stale):
            _note(f"{path}: {sum(stale)} rows were computed with other (or unrecorded) "
                  f"hardware, cascade, mapping or settings than now; they are evaluated again")
            existing = existing[~np.asarray(stale)].reset_index(drop=True)
    frames = [existing] if existing is not None and len(existing) else []
    # the work list, per algorithm
    todo = []
    for alg in spec.algorithms:
        pts = []  # (n, d) outer, SRAM inner: a search handles all SRAM sizes of one shape at once
        for n in spec.seq_lens:
            for d in spec.head_dims:
                for s in spec.srams:
                    key = (alg.label, hw.name, hashes[alg.label], round(float(s), 3), int(n),
                           int(d))
                    if key not in done:
                        pts.append((n, d, s))
        if pts:
            todo.append((alg, pts))
    total = sum(len(p) for _, p in todo)
    bar = None
    if progress and total:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="pt", desc="sweep", leave=False, delay=2.0, disable=None)
    pending = []
    last_flush = time.monotonic()
    interval = flush_seconds

    def flush():
        # rewrite the whole CSV atomically; the interval adapts to 4x the last write's
        # duration, so rewriting costs at most ~20 % of a long sweep
        nonlocal pending, last_flush, interval
        if path is None or not pending:
            return
        t0 = time.monotonic()
        frames.extend(pending)
        pending = []
        full = pd.concat(frames, ignore_index=True)
        frames[:] = [full]
        buf = io.StringIO()
        full.to_csv(buf, index=False)
        atomic_write(path, buf.getvalue())
        last_flush = time.monotonic()
        interval = max(flush_seconds, 4.0 * (last_flush - t0))

    finished = 0
    try:
        for alg, pts in todo:
            step = chunk_points if not alg.searched else max(1, min(chunk_points, 4 * len(spec.srams)))
            for i in range(0, len(pts), step):
                chunk = pts[i:i + step]
                arr = {"n": np.array([p[0] for p in chunk], dtype=np.int64),
                       "d": np.array([p[1] for p in chunk], dtype=np.int64),
                       "sram": np.array([p[2] for p in chunk], dtype=float)}
                df = (_best_frame if alg.searched else _fixed_frame)(alg, hw, arr, spec)
                df = _normalise(df, alg, hw, spec)
                df[HASH_COLUMN] = hashes[alg.label]
                pending.append(df)
                finished += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
                if path is None:
                    frames.extend(pending)
                    pending = []
                elif time.monotonic() - last_flush >= interval:
                    flush()
                if on_chunk is not None:
                    on_chunk(finished, total)
    finally:
        flush()
        if bar is not None:
            bar.close()
    if path is None:
        frames.extend(pending)
    if not frames:
        return pd.DataFrame(columns=list(OUT_COLUMNS))
    full = pd.concat(frames, ignore_index=True)
    return full


def _normalise(df, alg: Algorithm, hw, spec: SweepSpec):
    """The CSV's columns, in order, whatever the model or the search returned."""
    b = _hbm_name(hw)
    out = df.copy()
    out["algorithm"] = alg.label
    out["hardware"] = hw.name
    out["dtype"] = spec.dtype
    out["batch"] = spec.batch
    out["heads"] = spec.heads
    out["kv_heads"] = spec.kv_heads if spec.kv_heads is not None else spec.heads
    out["causal"] = bool(spec.causal)
    if "d" not in out.columns:
        out["d"] = out["e"]
    ren = {f"{b}_read_bytes": "hbm_read_bytes", f"{b}_write_bytes": "hbm_write_bytes",
           f"{b}_bytes": "hbm_bytes", f"{b}_elements_per_head": "hbm_elements_per_head"}
    out = out.rename(columns=ren)
    if "cascade" not in out.columns:
        out["cascade"] = alg.cascade
    if "mapping" not in out.columns:
        out["mapping"] = alg.mapping
    for c in OUT_COLUMNS:
        if c not in out.columns:
            out[c] = np.nan
    return out[list(OUT_COLUMNS)].reset_index(drop=True)
