"""Mapping search: the tiling that minimises backing-store traffic (or time) per SRAM size.

For a cascade, every mapping kind that fits it (:func:`iosim.mapping.mappings_for`) and its
variants (row policies, split counts) is evaluated over a grid of candidate tile sizes — tile
sizes need not divide the sequence length — in one vectorised call per variant
(:func:`iosim.traffic.evaluate_arrays`). Traffic and footprint do not depend on the SRAM size,
so each SRAM size is then a masked minimum: the candidates whose on-chip buffers (tiles *and*
the softmax state: running max and sum, the O accumulator, the score tile, buffered rows or
partials) fit. Over a list of SRAM sizes this is the "ski-slope" curve of Orojenesis and
AccelForge: minimum traffic versus buffer size.

Objectives: ``"time"`` (the predicted time: on a preset with sustained rates the parallel
execution-time model of :mod:`iosim.timing`, else the roofline; ties broken by traffic),
``"traffic"`` (backing-store bytes, alias ``"hbm"``; ties broken by time) or ``"energy"``
(presets with per-access energies). On a preset with sustained rates (a GPU) the time
objective searches what a kernel engineer would launch: power-of-two tiles from 16 to 256,
4 or 8 warps, 2 to 4 pipeline stages, the streamed tiles counted ``num_stages`` deep against
the shared memory; :attr:`SearchResult.runners_up` lists the next best tilings.

A user's loop tree (a :class:`~iosim.mapping.Mapping` of kind ``tree``, e.g. read from a TOML
file) is searched the same way over its symbolic tiles: every tile name its loops use
(``block_q``, ``block_kv`` on the presets' grids; ``block_e``, ``block_f`` over the powers of
two that fit; ``block_rows`` as variants), the tiles its file fixes by a number left alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from iosim.errors import IosimError
from iosim.mapping import Mapping, fit_error, get_mapping, mappings_for

__all__ = ["candidate_tiles", "variants_for", "search", "ski_slope", "search_frame",
           "SearchResult", "OBJECTIVES", "searched_tiles"]

OBJECTIVES = ("time", "traffic", "hbm", "energy")
#: warps and pipeline stages of the kernel tilings searched for the time objective on a GPU
KERNEL_WARPS = (4, 8)
KERNEL_STAGES = (2, 3, 4)


def candidate_tiles(n: int, *, dense_to: int = 64, count: int = 48) -> np.ndarray:
    """Candidate tile sizes for a rank of extent ``n``: every size up to ``dense_to``,
    multiples of 16 up to 256, then a geometric grid up to ``n`` (not only divisors)."""
    n = int(n)
    parts = [np.arange(1, dense_to + 1), np.arange(16, 257, 16)]
    if n > 256:
        parts.append(np.unique(np.round(np.geomspace(256, n, count)).astype(np.int64)))
    t = np.unique(np.concatenate(parts))
    t = t[t <= max(n, 1)]
    if n not in t:
        t = np.append(t, n)
    return t.astype(np.int64)


def variants_for(cascade, mappings=None) -> list:
    """The mapping variants searched for a cascade (a name, a path or a Cascade):
    ``[(label, Mapping), ...]``. Without ``mappings``: every mapping that fits the cascade's
    structure (:func:`iosim.mapping.mappings_for`); a given mapping that does not fit is a
    one-line error saying why. ``mappings`` holds names or Mappings (a user's loop tree: its
    ``block_rows``, where its loops use it, tried as variants)."""
    from iosim.traffic import _load_cascade
    c = _load_cascade(cascade)
    names = list(mappings) if mappings else list(mappings_for(c))
    out = []
    for name in names:
        if isinstance(name, Mapping) and name.tree is not None:
            out.extend(_row_variants(name))
            continue
        base = name if isinstance(name, Mapping) else get_mapping(name, cascade=c.name)
        why = fit_error(base.kind, c)
        if why is not None:
            raise IosimError(why)
        out.extend(base.preset.search(base))   # row policies, split counts, ...
    return out


def kernel_tiles(n: int) -> np.ndarray:
    """Tile sizes a Triton kernel takes for a rank of extent ``n``: powers of two from 16
    (the smallest matrix-unit tile) to 256, no larger than needed to cover ``n``."""
    t = 16 * 2 ** np.arange(5)
    cover = max(16, 1 << int(np.ceil(np.log2(max(int(n), 1)))))
    return t[t <= cover].astype(np.int64)


#: the rows a softmax program of a user's tree takes (``block_rows``), tried as variants
ROW_TILES = (1, 2, 4, 8, 16, 32, 64, 128)


def _row_variants(m: Mapping) -> list:
    """A user's tree as variants: one per ``softmax_rows`` where its loops use
    ``block_rows`` (a scalar of the grid), else the tree itself."""
    if "block_rows" not in searched_tiles(m):
        return [(m.name, m)]
    return [(f"{m.name}/rows{r}", m.with_(softmax_rows=r)) for r in ROW_TILES]


def searched_tiles(m: Mapping) -> tuple:
    """The tile names a search varies for mapping ``m``: ``block_q`` and ``block_kv`` for a
    preset; for a user's tree the tile names its loops use, less those its file fixes."""
    if m.tree is None:
        return ("block_q", "block_kv")
    return tuple(t for t in m.tree.tile_names if t not in m.tree.fixed_tiles)


def _candidates(m: Mapping, n: int, kv: int, group: int = 1, kernel: bool = False,
                e: int | None = None, f: int | None = None) -> dict:
    """Tile name -> array of the candidates of one variant (flattened, equal lengths).
    FA2 packs the ``group`` query heads of a K/V head into its rows: its query tile runs
    over ``n * group`` rows. ``kernel``: only the tiles a Triton kernel takes. A user's
    tree: the grid over its searched tiles (:func:`searched_tiles`): ``block_q`` and
    ``block_kv`` as a preset's, ``block_e``/``block_f`` over :func:`kernel_tiles` of the
    head dims; without any, its own tiles."""
    pre = m.preset
    rows = n * group if m.packs_rows else n
    if m.tree is not None:
        names = [t for t in searched_tiles(m) if t != "block_rows"]
        axes = {"block_q": kernel_tiles(rows) if kernel else candidate_tiles(rows),
                "block_kv": kernel_tiles(kv) if kernel else candidate_tiles(kv),
                "block_e": kernel_tiles(e or 1), "block_f": kernel_tiles(f or e or 1)}
        if not names:
            return {"block_q": np.array([m.block_q]), "block_kv": np.array([m.block_kv])}
        grids = np.meshgrid(*(axes[t] for t in names), indexing="ij")
        return {t: g.ravel() for t, g in zip(names, grids)}
    if kernel:
        tq, tk = kernel_tiles(rows), kernel_tiles(kv)
        q, k = np.meshgrid(tq, tk, indexing="ij")
        return {"block_q": q.ravel(), "block_kv": k.ravel()}
    tq, tk = candidate_tiles(rows), candidate_tiles(kv)
    if pre.tiles == "square":
        b = np.arange(1, max(1, min(max(n, kv), 4096)) + 1)
        return {"block_q": b, "block_kv": b}
    if pre.tiles == "tied":
        return {"block_q": tq, "block_kv": tq}
    if pre.few_rows:
        tq = candidate_tiles(n, dense_to=16)
    q, k = np.meshgrid(tq, tk, indexing="ij")
    return {"block_q": q.ravel(), "block_kv": k.ravel()}


def _tile_value(r: dict, idx, m: Mapping, t: str) -> int:
    """Tile ``t`` of candidate ``idx`` (``softmax_rows``: the mapping's)."""
    return int(m.softmax_rows) if t == "softmax_rows" else int(r["sizes"][t][idx])


def _tiles_at(r: dict, idx, m: Mapping) -> dict:
    """The tiles of candidate ``idx`` (block_q, block_kv, and a tree's other searched
    tiles; ``softmax_rows`` of a tree that uses ``block_rows``)."""
    out = {t: _tile_value(r, idx, m, t) for t in ("block_q", "block_kv")}
    for t in searched_tiles(m):
        t = "softmax_rows" if t == "block_rows" else t
        out.setdefault(t, _tile_value(r, idx, m, t))
    return out


@dataclass(frozen=True)
class SearchResult:
    """The best tiling per SRAM size; ``frame`` has one row per SRAM size."""
    cascade: str
    hardware: str
    objective: str
    frame: object                    # pandas DataFrame
    candidates: int                  # configurations evaluated
    seconds: float
    shapes: dict = field(default_factory=dict)
    #: the next best candidates of the first SRAM size (objective order), with how far
    #: behind the best each is (``behind``: objective / best objective - 1)
    runners_up: object = None        # pandas DataFrame or None
    #: tiles searched besides block_q and block_kv (a user's tree: block_e, block_f,
    #: softmax_rows), columns of ``frame`` and ``runners_up``
    extra_tiles: tuple = ()

    def best(self, row: int = 0) -> dict:
        """The best tiling at SRAM size ``row``: the tiles (and, for the time objective on a
        GPU, warps and stages), as Mapping fields; a one-line error where nothing fits."""
        r = self.frame.iloc[row]
        if not bool(r["fits"]):
            raise IosimError(f"search: no tiling fits at SRAM size {r['sram_bytes']:.0f} B")
        keys = ("block_q", "block_kv") + self.extra_tiles + (
            ("num_warps", "num_stages") if "num_warps" in self.frame.columns else ())
        return {k: int(r[k]) for k in keys}

    def to_dict(self) -> dict:
        rows = []
        for _, r in self.frame.iterrows():
            rows.append({k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()})
        out = {"cascade": self.cascade, "hardware": self.hardware,
               "objective": self.objective, "shapes": self.shapes,
               "candidates": self.candidates, "seconds": self.seconds, "best": rows}
        if self.runners_up is not None:
            out["runners_up"] = [{k: (v.item() if hasattr(v, "item") else v)
                                  for k, v in r.items()}
                                 for _, r in self.runners_up.iterrows()]
        return out

    def render(self) -> str:
        from iosim.report import fmt_bytes, fmt_time
        s = self.shapes
        g = s.get("group", 1)
        unit = f"K/V head with its {g} query heads" if g > 1 else "head"
        lines = [f"iosim search: cascade {self.cascade} on {self.hardware}, N={s.get('n')}, "
                 f"kv={s.get('kv_len')}, d={s.get('e')}{', causal' if s.get('causal') else ''}, "
                 f"{s.get('dtype')}; objective: {_OBJ_TEXT[self.objective]}",
                 f"For each SRAM size: the tiling with the least {_OBJ_WORD[self.objective]} "
                 f"whose buffers (tiles, O accumulator, running max/sum, score tile) fit.",
                 f"{self.candidates:,} configurations evaluated in {self.seconds * 1e3:.0f} ms; "
                 f"traffic per (batch, {unit}) in elements; ratio = traffic / IO lower "
                 f"bound.",
                 ""]
        kern = "num_warps" in self.frame.columns
        ext = self.extra_tiles
        hdr = ("SRAM", "SRAM el.", "mapping", "block_q", "block_kv") + ext + (
            ("warps", "stages") if kern else ()) + ("traffic (el.)", "bytes", "time", "ratio")
        rows = [hdr]
        for _, r in self.frame.iterrows():
            if not bool(r["fits"]):
                rows.append((fmt_bytes(r["sram_bytes"]), f"{r['sram_elements']:,.0f}",
                             "nothing fits") + ("-",) * (len(hdr) - 3))
                continue
            rows.append((fmt_bytes(r["sram_bytes"]), f"{r['sram_elements']:,.0f}",
                         str(r["variant"]), str(int(r["block_q"])), str(int(r["block_kv"])))
                        + tuple(str(int(r[t])) for t in ext)
                        + ((str(int(r["num_warps"])), str(int(r["num_stages"]))) if kern
                           else ())
                        + (f"{r['traffic_elements']:,.0f}", fmt_bytes(r["backing_bytes"]),
                           fmt_time(r["time_s"]), f"{r['ratio_to_bound']:.3g}"))
        w = [max(len(x[k]) for x in rows) for k in range(len(hdr))]
        for i, r in enumerate(rows):
            lines.append("  ".join(c.rjust(w[k]) if k not in (2,) else c.ljust(w[k])
                                   for k, c in enumerate(r)))
            if i == 0:
                lines.append("  ".join("-" * x for x in w))
        ru = self.runners_up
        if ru is not None and len(ru):
            lines.append("")
            lines.append(f"Runners-up (the next best tilings; behind = {_OBJ_WORD[self.objective]}"
                         f" over the best's):")
            for _, r in ru.iterrows():
                kn = (f", {int(r['num_warps'])} warps, {int(r['num_stages'])} stages"
                      if "num_warps" in ru.columns else "")
                xt = "".join(f" {t}={int(r[t])}" for t in ext)
                lines.append(f"  {r['variant']} block_q={int(r['block_q'])} "
                             f"block_kv={int(r['block_kv'])}{xt}{kn}: {fmt_time(r['time_s'])}, "
                             f"{fmt_bytes(r['backing_bytes'])}; {r['behind']:+.1%}")
        return "\n".join(lines)


_OBJ_TEXT = {"time": "predicted time", "traffic": "backing-store bytes",
             "hbm": "backing-store bytes", "energy": "energy"}
_OBJ_WORD = {"time": "time", "traffic": "traffic", "hbm": "traffic", "energy": "energy"}


def search(cascade, hardware="two-level", *, n: int, d: int | None = None, e: int | None = None,
           f: int | None = None, kv_len: int | None = None, sram_bytes=None, dtype: str = "bf16",
           causal: bool | None = None, batch: int = 1, heads: int = 1,
           kv_heads: int | None = None, objective: str = "traffic", mappings=None,
           progress: bool = False, runners_up: int = 5) -> SearchResult:
    """Minimum-traffic (or minimum-time, minimum-energy) tiling per SRAM size (bytes; a
    list or a scalar). ``objective``: ``"traffic"`` (the default here, as the ski-slope curve
    is a traffic curve; ``iosim search`` defaults to ``"time"``), ``"time"`` or ``"energy"``.

    ``causal=None`` applies the cascade's own default (its mask switch's default);
    ``heads``/``kv_heads`` as in :class:`iosim.mapping.Shapes` (traffic per K/V head).
    ``progress``: a progress bar on stderr (terminals only) when the search runs for more
    than two seconds.

    ``sram_bytes=None`` uses the hardware's SRAM level. Returns a :class:`SearchResult`
    whose ``frame`` has one row per SRAM size (in the given order) with the best variant,
    its block sizes, the traffic (``traffic_elements`` per head, ``backing_bytes`` all
    heads), time, footprint, and the ratio to the IO lower bound; ``fits`` is False where
    no candidate fits.
    """
    import time as _time
    import pandas as pd
    from iosim.hardware import load_hardware
    from iosim.traffic import _level_roles, _load_cascade, arrays_to_frame, evaluate_arrays
    t0 = _time.perf_counter()
    if objective not in OBJECTIVES:
        raise IosimError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    from iosim.looptree.presets import preset_of
    from iosim.mapping import Shapes, default_kind, resolve_causal
    from iosim.timing import timing_rates
    c = _load_cascade(cascade)
    causal = resolve_causal(c, causal)
    hw = load_hardware(hardware) if isinstance(hardware, str) else hardware
    if objective == "energy" and not any(lv.read_energy_pj_per_byte is not None
                                         or lv.write_energy_pj_per_byte is not None
                                         for lv in hw.levels):
        raise IosimError(f"hardware '{hw.name}' gives no per-access energies: the energy "
                         f"objective needs them (use --objective time or traffic)")
    kernel = objective == "time" and timing_rates(hw) is not None
    e = e if e is not None else d
    if e is None:
        raise IosimError("give the head dimension (d or e)")
    kv = n if kv_len is None else kv_len
    for v, label in ((n, "seq-len"), (e, "head-dim"), (kv, "kv-len")):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise IosimError(f"{label} must be a positive integer, got {v!r}")
    group = Shapes(n=n, e=e, heads=heads, kv_heads=kv_heads).group
    _, _, sram_lv, _, _ = _level_roles(hw, get_mapping("fa2"))
    srams = np.atleast_1d(np.asarray(sram_lv.usable_bytes if sram_bytes is None else sram_bytes,
                                     dtype=float))
    if np.any(~(srams > 0)):
        raise IosimError("SRAM sizes must be positive")
    S = len(srams)
    best_obj = np.full(S, np.inf)
    best_tb = np.full(S, np.inf)
    choice = [None] * S
    total = 0
    variants = variants_for(c, mappings)
    # split-K decode is for few queries: searched beyond 256 queries only where the cascade
    # itself is a split-K decode (or it is asked for)
    if not preset_of(default_kind(c)).few_rows and n > 256 and not mappings:
        variants = [(lb, m) for lb, m in variants if not m.preset.few_rows]
    if kernel:   # the tilings a kernel engineer would launch: warps x stages per variant
        variants = [(f"{lb} {w}w/{st}s", m.with_(num_warps=w, num_stages=st,
                                                  stages_in_footprint=True))
                    for lb, m in variants if m.preset.kernel or m.tree is not None
                    for w in KERNEL_WARPS for st in KERNEL_STAGES]
    from tqdm import tqdm
    bar = tqdm(variants, desc="search", unit="mapping", leave=False, delay=2.0,
               disable=None if progress else True)
    pool = []    # (objective, tie-break, label, mapping, tiles, time, traffic)
    extra = []   # tiles searched besides block_q and block_kv (a user's tree)
    for label, m in bar:
        bar.set_postfix_str(label, refresh=False)
        cand = _candidates(m, n, kv, group, kernel=kernel, e=e, f=f)
        for t in searched_tiles(m):
            t = "softmax_rows" if t == "block_rows" else t
            if t not in ("block_q", "block_kv") and t not in extra:
                extra.append(t)
        try:
            r = evaluate_arrays(c, m, hw, n=n, e=e, f=f, kv_len=kv, batch=batch, heads=heads,
                                kv_heads=kv_heads, dtype=dtype, causal=causal, product=False,
                                **cand)
        except IosimError:
            if mappings:
                raise
            continue
        bq = r["sizes"]["block_q"]
        total += len(next(iter(cand.values())))
        backing = r["level_roles"]["backing"]
        hb = r["levels"][backing][0] + r["levels"][backing][1]
        if objective in ("hbm", "traffic"):
            obj, tb = hb, r["time_s"]
        elif objective == "energy":
            obj, tb = r["energy_j"], r["time_s"]
        else:
            obj, tb = r["time_s"], hb
        fp = r["footprint"]
        need_sram = fp[sram_lv.name][0]
        ok_other = np.ones(len(bq), dtype=bool)
        if kernel:   # a tiling that spills registers is not one to recommend
            from iosim.timing.model import MAX_REGISTERS, registers_per_thread
            ok_other &= registers_per_thread(block_m=r["sizes"]["block_q"],
                                             block_n=r["sizes"]["block_kv"], head_dim=e,
                                             num_warps=m.num_warps) <= MAX_REGISTERS
        for lv, (need, cap) in fp.items():
            if lv != sram_lv.name:
                ok_other &= need <= cap
        # (S, C) feasibility; candidates sorted by objective once
        order = np.lexsort((tb, obj))
        need_sorted = need_sram[order]
        ok_sorted = ok_other[order]
        # first feasible candidate in objective order, per SRAM size
        feas = (need_sorted[None, :] <= srams[:, None]) & ok_sorted[None, :]
        has = feas.any(axis=1)
        first = np.argmax(feas, axis=1)
        for s in np.nonzero(has)[0]:
            idx = order[first[s]]
            if (obj[idx], tb[idx]) < (best_obj[s], best_tb[s]):
                best_obj[s], best_tb[s] = obj[idx], tb[idx]
                choice[s] = (label, m, _tiles_at(r, idx, m))
        if runners_up:
            ok0 = feas[0]
            for j in np.nonzero(ok0)[0][: runners_up + 1]:
                idx = order[j]
                pool.append((float(obj[idx]), float(tb[idx]), label, m, _tiles_at(r, idx, m),
                             float(r["time_s"][idx]), float(hb[idx])))
    # re-evaluate the winners (one call per variant) for full columns
    frames = []
    by_variant: dict = {}
    for s, ch in enumerate(choice):
        if ch is not None:
            by_variant.setdefault(ch[0], []).append(s)
    for label, idxs in by_variant.items():
        m = choice[idxs[0]][1]
        tiles = {t: np.array([choice[s][2][t] for s in idxs])
                 for t in choice[idxs[0]][2] if t != "softmax_rows"}
        r = evaluate_arrays(c, m, hw, n=n, e=e, f=f, kv_len=kv, batch=batch, heads=heads,
                            kv_heads=kv_heads, dtype=dtype, causal=causal,
                            sram_bytes=srams[idxs], product=False, **tiles)
        df = arrays_to_frame(r, per_tensor=False, pd=pd)
        df["variant"] = label
        for t in extra:
            df[t] = [_tile_value(r, k, m, t) for k in range(len(idxs))]
        if kernel:
            df["num_warps"] = m.num_warps
            df["num_stages"] = m.num_stages
        df["row_policy"] = m.row_policy if m.preset.row_policies else ""
        df["_pos"] = idxs
        frames.append(df)
    missing = [s for s in range(S) if choice[s] is None]
    if missing:
        frames.append(pd.DataFrame({"_pos": missing, "sram_bytes": srams[missing],
                                    "fits": False, "variant": None}))
    out = pd.concat(frames, ignore_index=True).sort_values("_pos").drop(columns="_pos")
    out = out.reset_index(drop=True)
    from iosim.hardware import dtype_bytes
    out["sram_elements"] = out["sram_bytes"] / dtype_bytes(dtype)
    bname = hw.backing.name.lower()
    out["backing_bytes"] = out.get(f"{bname}_bytes", np.nan)
    out["traffic_elements"] = out.get(f"{bname}_elements_per_head", np.nan)
    out["fits"] = out["fits"].fillna(False).astype(bool)
    ru = None
    if runners_up and pool:
        pool.sort(key=lambda x: (x[0], x[1]))
        best = pool[0][0]
        rows = []
        for o, _tb, label, m, tl, t, b in pool[1: runners_up + 1]:
            row = {"variant": label, **{k: tl.get(k, m.softmax_rows if k == "softmax_rows"
                                               else getattr(m, k)) for k in
                                        ("block_q", "block_kv", *extra)},
                   "time_s": t, "backing_bytes": b, "objective": o,
                   "behind": o / best - 1 if best > 0 else 0.0}
            if kernel:
                row.update(num_warps=m.num_warps, num_stages=m.num_stages)
            rows.append(row)
        ru = pd.DataFrame(rows)
    return SearchResult(cascade=c.name, hardware=hw.name, objective=objective, frame=out,
                        runners_up=ru, candidates=total, extra_tiles=tuple(extra),
                        seconds=_time.perf_counter() - t0,
                        shapes={"n": n, "kv_len": kv, "e": e, "f": f or e, "dtype": dtype,
                                "causal": causal, "batch": batch, "heads": heads,
                                "kv_heads": heads // group, "group": group})


def ski_slope(cascade, hardware="two-level", *, sram_bytes, **kw):
    """The ski-slope curve: the :func:`search` frame over a list of SRAM sizes."""
    return search(cascade, hardware, sram_bytes=sram_bytes, **kw).frame


def search_frame(cascade, hardware, *, n, d, sram_bytes, dtype: str = "bf16", batch: int = 1,
                 heads: int = 1, kv_heads: int | None = None, causal: bool | None = False,
                 objective: str = "hbm"):
    """Best tiling per point of parallel arrays ``n``, ``d``, ``sram_bytes`` (one row each,
    in the points' order): the frame-level API used by :mod:`iosim.sweep`."""
    import pandas as pd
    n_a, d_a, s_a = np.broadcast_arrays(np.asarray(n), np.asarray(d),
                                        np.asarray(sram_bytes, dtype=float))
    n_a, d_a, s_a = n_a.ravel(), d_a.ravel(), s_a.ravel()
    parts = []
    pos = np.arange(len(n_a))
    for nn, dd in sorted(set(zip(n_a.tolist(), d_a.tolist()))):
        sel = (n_a == nn) & (d_a == dd)
        res = search(cascade, hardware, n=int(nn), d=int(dd), sram_bytes=s_a[sel], dtype=dtype,
                     batch=batch, heads=heads, kv_heads=kv_heads, causal=causal,
                     objective=objective)
        df = res.frame.copy()
        df["n"] = int(nn)
        df["e"] = int(dd)
        df["_pos"] = pos[sel]
        parts.append(df)
    out = pd.concat(parts, ignore_index=True).sort_values("_pos").drop(columns="_pos")
    return out.reset_index(drop=True)
