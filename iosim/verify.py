"""Numeric checks of the IO-complexity theory: ``iosim bounds verify``.

Every check is a **pure function** of the count functions it is given, so that a test can hand
it a deliberately wrong count and watch it fail. A *count function* maps ``(N, d, M)`` --
sequence length, head dimension, SRAM size in elements -- to the number of elements moved
between HBM and SRAM for one (batch, head); scalars in, scalar out (arrays are accepted where
noted). The checks (``reference/io_theory.md``, "Numeric checks"):

1. ``check_exact`` -- closed forms equal the tile simulator's event counts exactly, partial
   blocks included;
2. ``check_slope`` -- log-log slope of IO against M, N or d within a tolerance of the theory's
   exponent;
3. ``check_normalised_constant`` -- IO / (N^2 d^2 / M) flat in N and M for a FlashAttention
   tiling;
4. ``check_envelope`` -- the minimum over valid tilings is never below a stated lower bound,
   and its ratio to the bound is bounded with no trend in N or M;
5. ``check_regime_switch`` -- the envelope's slope changes from about -1/2 to about -1 near
   M = d^2;
6. ``check_monotone`` -- minimum traffic never increases with M.

:func:`run_checks` runs them all on a :class:`CountSet`; :func:`default_counts` builds the
count set from the package's own models (``iosim.traffic``, ``iosim.trace``, ``iosim.search``
through :mod:`iosim._verify_adapters`), :func:`reference_counts` from the closed forms in this
module alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np

from iosim.bounds import attention_lower_envelope, get_bound
from iosim.errors import IosimError

CountFn = Callable[[int, int, float], float]

__all__ = [
    "CountFn",
    "Check",
    "CountSet",
    "VerifyReport",
    "loglog_slope",
    "check_exact",
    "check_slope",
    "check_normalised_constant",
    "check_envelope",
    "check_regime_switch",
    "check_monotone",
    "ref_fa1",
    "ref_fa2",
    "ref_fa1_blocks",
    "ref_saha_ye",
    "ref_fa_min",
    "ref_saha_ye_min",
    "ref_best",
    "reference_counts",
    "default_counts",
    "run_checks",
    "VerifyParams",
]


# --------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------


@dataclass
class Check:
    """The outcome of one numeric check."""

    id: str
    group: str
    description: str
    measured: str
    expected: str
    passed: bool | None  # None: skipped (the count it needs is not available)
    details: dict = field(default_factory=dict)

    @property
    def status(self) -> str:
        return "SKIP" if self.passed is None else ("PASS" if self.passed else "FAIL")

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "group": self.group,
            "description": self.description,
            "measured": self.measured,
            "expected": self.expected,
            "status": self.status,
            "details": _jsonable(self.details),
        }


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return _jsonable(o.tolist())
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return "inf" if o > 0 else ("-inf" if o < 0 else "nan")
    return o


@dataclass
class VerifyReport:
    checks: list
    params: dict
    sources: dict

    @property
    def passed(self) -> bool:
        return all(c.passed is not False for c in self.checks)

    @property
    def counts(self) -> dict:
        out = {"PASS": 0, "FAIL": 0, "SKIP": 0}
        for c in self.checks:
            out[c.status] += 1
        return out

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "summary": self.counts,
            "params": _jsonable(self.params),
            "sources": self.sources,
            "checks": [c.to_dict() for c in self.checks],
        }

    def table(self) -> str:
        """A fixed-width text table: id, check, measured, expected, result."""
        rows = [("#", "check", "measured", "expected", "result")]
        for c in self.checks:
            rows.append((c.id, c.description, c.measured, c.expected, c.status))
        w = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = []
        for i, r in enumerate(rows):
            lines.append("  ".join(f"{r[k]:<{w[k]}}" for k in range(4)) + "  " + r[4])
            if i == 0:
                lines.append("-" * len(lines[0]))
        c = self.counts
        lines.append("-" * len(lines[1]))
        lines.append(f"{c['PASS']} passed, {c['FAIL']} failed, {c['SKIP']} skipped")
        return "\n".join(lines)


def _clip(s: str, w: int) -> str:
    return s if len(s) <= w else s[: w - 1] + "…"


def _fmt(x: float, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return str(x)
    return f"{x:.{digits}g}" if abs(x) < 1e5 else f"{x:.{digits}e}"


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log(y) against log(x)."""
    x = np.log(np.asarray(xs, dtype=float))
    y = np.log(np.asarray(ys, dtype=float))
    if len(x) < 2:
        raise IosimError("a slope needs at least two points")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return float("nan")
    return float(np.polyfit(x, y, 1)[0])


def _call(fn: CountFn, N, d, M) -> float:
    v = fn(int(N), int(d), float(M))
    return float(np.asarray(v, dtype=float))


def _call_many(fn: CountFn, N, d, Ms) -> np.ndarray:
    """fn at (N, d, M) for every M; one call of ``fn.many`` when the count offers it."""
    many = getattr(fn, "many", None)
    if many is not None:
        return np.asarray(many(int(N), int(d), np.asarray(Ms, dtype=float)), dtype=float)
    return np.array([_call(fn, N, d, M) for M in Ms], dtype=float)


def geometric(lo: float, hi: float, factor: float = 2.0) -> list:
    """lo, lo*factor, ... up to hi (inclusive within rounding)."""
    out = []
    x = float(lo)
    while x <= hi * (1 + 1e-9):
        out.append(x)
        x *= factor
    return out


# --------------------------------------------------------------------------------------
# the checks (pure functions)
# --------------------------------------------------------------------------------------


def check_exact(id: str, description: str, reference: CountFn, candidates: dict,
                configs: Iterable[tuple], group: str = "exact") -> Check:
    """Every candidate count equals the reference count exactly at every configuration.

    ``configs`` are ``(N, d, M)`` tuples (or dicts passed as keyword arguments when the count
    functions take other parameters, e.g. tile sizes). Measured: the number of mismatching
    (candidate, configuration) pairs and the largest absolute difference in elements.
    """
    configs = list(configs)
    mismatches = []
    errors = []
    n = 0
    for cfg in configs:
        ref = _eval_cfg(reference, cfg)
        for name, fn in candidates.items():
            if fn is None:
                continue
            n += 1
            try:
                got = _eval_cfg(fn, cfg)
            except Exception as exc:  # a count that cannot be evaluated is a mismatch
                errors.append({"candidate": name, "config": cfg, "error": f"{type(exc).__name__}: {exc}"})
                continue
            if not (got == ref):
                mismatches.append({"candidate": name, "config": cfg, "reference": ref, "got": got,
                                   "diff": got - ref})
    if n == 0:
        return Check(id, group, description, "n/a", "identical", None, {"reason": "no candidate count available"})
    maxdiff = max((abs(m["diff"]) for m in mismatches), default=0)
    names = [k for k, v in candidates.items() if v is not None]
    missing = [k for k, v in candidates.items() if v is None]
    bad = len(mismatches) + len(errors)
    measured = f"{bad}/{n} differ, max |Δ| {_fmt(float(maxdiff))} el ({len(names)} counts)"
    if errors:
        measured += f", {len(errors)} errors"
    if missing:
        measured += f"; no {', '.join(missing)}"
    return Check(
        id, group, description, measured, "0 differ (exact)", bad == 0,
        {"candidates": names, "unavailable": missing, "configs": len(configs),
         "mismatches": mismatches[:10], "errors": errors[:5]},
    )


def _eval_cfg(fn, cfg):
    if isinstance(cfg, dict):
        v = fn(**cfg)
    else:
        v = fn(*cfg)
    v = np.asarray(v)
    return v.item() if v.ndim == 0 else v.tolist()


def check_slope(id: str, description: str, fn: CountFn, axis: str, values: Sequence[float],
                fixed: dict, expected: float, tol: float, group: str = "slope") -> Check:
    """The log-log slope of ``fn`` along ``axis`` ('N', 'd' or 'M') is ``expected ± tol``."""
    if axis not in ("N", "d", "M"):
        raise IosimError(f"axis must be N, d or M, got {axis!r}")
    if fn is None:
        return Check(id, group, description, "n/a", f"{expected:+.2f} ± {tol}", None, {"reason": "count not available"})
    if axis == "M":
        ys = list(_call_many(fn, fixed["N"], fixed["d"], values))
    else:
        ys = []
        for v in values:
            args = dict(fixed)
            args[axis] = v
            ys.append(_call(fn, args["N"], args["d"], args["M"]))
    ok = np.all(np.isfinite(ys)) and np.all(np.asarray(ys) > 0)
    slope = loglog_slope(values, ys) if ok else float("nan")
    passed = bool(ok and abs(slope - expected) <= tol)
    return Check(
        id, group, description, f"slope {slope:+.3f}", f"{expected:+.2f} ± {tol}", passed,
        {"axis": axis, "values": list(values), "counts": ys, "fixed": fixed},
    )


def check_normalised_constant(id: str, description: str, fn: CountFn, Ns: Sequence[int],
                              Ms: Sequence[float], d: int, *, max_spread: float = 1.15,
                              max_trend: float = 0.05, group: str = "constant") -> Check:
    """IO * M / (N^2 d^2) is flat over the (N, M) grid (points with M <= N d / 4 only).

    Passes when max/min of the normalised constant is at most ``max_spread`` and its log-log
    slope against N and against M is at most ``max_trend`` in absolute value.
    """
    if fn is None:
        return Check(id, group, description, "n/a", f"spread ≤ {max_spread}", None, {"reason": "count not available"})
    pts = [(N, M) for N in Ns for M in Ms if M <= N * d / 4]
    if len(pts) < 2:
        return Check(id, group, description, "n/a", f"spread ≤ {max_spread}", None,
                     {"reason": "fewer than two grid points with M <= N d / 4"})
    c = np.array([_call(fn, N, d, M) * M / (N * N * d * d) for N, M in pts])
    logN = np.log([p[0] for p in pts])
    logM = np.log([p[1] for p in pts])
    logc = np.log(c)
    # trends: regress log c on log N and log M jointly
    A = np.column_stack([logN, logM, np.ones_like(logN)])
    if np.linalg.matrix_rank(A) == 3:
        coef = np.linalg.lstsq(A, logc, rcond=None)[0]
        tN, tM = float(coef[0]), float(coef[1])
    else:
        tN = loglog_slope(np.exp(logN), c) if np.ptp(logN) > 0 else 0.0
        tM = loglog_slope(np.exp(logM), c) if np.ptp(logM) > 0 else 0.0
    spread = float(c.max() / c.min())
    passed = bool(spread <= max_spread and abs(tN) <= max_trend and abs(tM) <= max_trend)
    return Check(
        id, group, description,
        f"C={_fmt(float(np.median(c)))}, max/min {spread:.3f}, trend N {tN:+.3f} M {tM:+.3f}",
        f"max/min ≤ {max_spread}, |trend| ≤ {max_trend}",
        passed,
        {"d": d, "points": [{"N": N, "M": M, "constant": float(v)} for (N, M), v in zip(pts, c)]},
    )


def check_envelope(id: str, description: str, best: CountFn, Ns: Sequence[int], d: int,
                   Ms: Sequence[float], *, model: str = "standard-matmul", max_ratio: float = 64.0,
                   max_trend: float = 0.1, group: str = "envelope") -> Check:
    """The minimum over tilings is never below any stated lower bound; bounded ratio; no trend.

    * pointwise: ``best >= rigorous`` (the bounds with a stated or derived constant: an exact
      inequality) and ``best >= value`` (every bound, asymptotic ones with constant 1);
    * bounded: ``best / value <= max_ratio``;
    * no trend: the log-log slope of the ratio against N (at each M outside the crossover
      band d^2/4 <= M <= 4 d^2, using the points with M <= N d / 16) and against M (within the
      small-cache points M <= d^2/16 and within the large-cache points 16 d^2 <= M <= N d/16)
      is at most ``max_trend`` in absolute value. A count off by a factor that grows with N,
      or with the wrong power of M, shows up as a trend.
    """
    if best is None:
        return Check(id, group, description, "n/a", "ratio ≥ 1, bounded, no trend", None, {"reason": "count not available"})
    rows = []
    for N in Ns:
        bs = _call_many(best, N, d, Ms)
        for M, b in zip(Ms, bs):
            b = float(b)
            env = attention_lower_envelope(N, d, M, model=model)
            rows.append({"N": N, "M": M, "best": b, "bound": env.value, "rigorous": env.rigorous,
                         "binding": env.binding, "ratio": b / env.value})
    unfit = [r for r in rows if not math.isfinite(r["best"])]
    rows = [r for r in rows if math.isfinite(r["best"])]
    if not rows:
        return Check(id, group, description, "nothing fits", "ratio ≥ 1, bounded, no trend", False,
                     {"d": d, "unfit": unfit[:5]})
    ratios = np.array([r["ratio"] for r in rows])
    below_rigorous = [r for r in rows if r["best"] < r["rigorous"]]
    trends = []
    # against N at each M outside the crossover band d^2/4 <= M <= 4 d^2 (where the best
    # tiling changes family and the ratio may wobble, boundedly), at points deep enough
    # inside the tiled regime (M <= N d / 16)
    for M in Ms:
        if d * d / 4 <= M <= 4 * d * d:
            continue
        sel = [r for r in rows if r["M"] == M and M <= r["N"] * d / 16]
        if len(sel) >= 2:
            trends.append(("N", M, loglog_slope([r["N"] for r in sel], [r["ratio"] for r in sel])))
    for N in Ns:
        for lo, hi, name in ((0, d * d / 16, "M small"), (16 * d * d, N * d / 16, "M large")):
            sel = [r for r in rows if r["N"] == N and lo <= r["M"] <= hi]
            if len(sel) >= 2:
                trends.append((name, N, loglog_slope([r["M"] for r in sel], [r["ratio"] for r in sel])))
    worst = max((abs(t[2]) for t in trends), default=0.0)
    passed = bool(not below_rigorous and ratios.min() >= 1.0 and ratios.max() <= max_ratio
                  and worst <= max_trend and np.all(np.isfinite(ratios)))
    measured = f"ratio {ratios.min():.2f}–{ratios.max():.2f}, max |trend| {worst:.3f}"
    if unfit:
        measured += f"; {len(unfit)} pts nothing fits"
    return Check(
        id, group, description, measured,
        f"1 ≤ ratio ≤ {max_ratio:g}, |trend| ≤ {max_trend}",
        passed,
        {"d": d, "model": model, "below_rigorous": below_rigorous[:5], "unfit": unfit[:5],
         "trends": [{"axis": a, "at": at, "slope": s} for a, at, s in trends], "points": rows},
    )


def check_regime_switch(id: str, description: str, best: CountFn, N: int, d: int, *,
                        small: float = -0.5, large: float = -1.0, tol: float = 0.12,
                        window: float = 16.0, group: str = "regime") -> Check:
    """The envelope's slope against M is ``small`` well below d^2 and ``large`` well above.

    Local slopes are measured on M = d^2 / 256 ... 256 d^2 (factor 2 steps). Passes when the
    mean slope over M <= d^2 / window is ``small ± tol``, over M >= window d^2 is
    ``large ± tol``, and the slope crosses the midpoint ``(small + large) / 2`` at an M within
    a factor ``window`` of d^2.
    """
    if best is None:
        return Check(id, group, description, "n/a", f"switch within {window:g}× of d²", None, {"reason": "count not available"})
    d2 = d * d
    Ms = geometric(d2 / 256, d2 * 256, 2.0)
    ys = _call_many(best, N, d, Ms)
    lm = np.log(Ms)
    with np.errstate(invalid="ignore", divide="ignore"):
        ly = np.log(ys)
        mids = np.exp((lm[1:] + lm[:-1]) / 2)
        local = np.diff(ly) / np.diff(lm)
    local = np.where(np.isfinite(local), local, np.nan)
    sel_s, sel_l = local[mids <= d2 / window], local[mids >= d2 * window]
    s_small = float(np.nanmean(sel_s)) if np.isfinite(sel_s).any() else float("nan")
    s_large = float(np.nanmean(sel_l)) if np.isfinite(sel_l).any() else float("nan")
    mid = (small + large) / 2
    # first crossing of the midpoint slope (from above to below) after smoothing over 3 steps
    sm = np.convolve(np.nan_to_num(local, nan=0.0), np.ones(3) / 3, mode="same")
    cross = None
    for i in range(1, len(sm)):
        if sm[i - 1] > mid >= sm[i]:
            cross = float(mids[i])
            break
    ok_cross = cross is not None and d2 / window <= cross <= d2 * window
    passed = bool(abs(s_small - small) <= tol and abs(s_large - large) <= tol and ok_cross
                  and np.all(np.isfinite(ys)))
    where = f"{cross / d2:.2g} d²" if cross else "none"
    return Check(
        id, group, description,
        f"{s_small:+.2f} → {s_large:+.2f}, switch at {where}",
        f"{small:+.1f}→{large:+.1f} (±{tol}), switch {1/window:g}–{window:g} d²",
        passed,
        {"N": N, "d": d, "M": Ms, "counts": ys.tolist(), "local_slopes": local.tolist(),
         "crossing_M": cross, "all_finite": bool(np.all(np.isfinite(ys)))},
    )


def check_monotone(id: str, description: str, best: CountFn, N: int, d: int,
                   Ms: Sequence[float], group: str = "monotone") -> Check:
    """Minimum traffic never increases with M (relative tolerance 1e-12)."""
    if best is None:
        return Check(id, group, description, "n/a", "non-increasing", None, {"reason": "count not available"})
    ys = _call_many(best, N, d, Ms)
    with np.errstate(invalid="ignore"):
        inc = np.diff(ys) / ys[:-1]
    inc = np.where(np.isnan(inc), np.inf, inc)  # inf -> inf (nothing fits, then something): fine below
    inc = np.where(np.isinf(ys[:-1]) & np.isfinite(ys[1:]), -1.0, inc)
    worst = float(inc.max()) if len(inc) else 0.0
    bad = [{"M_from": Ms[i], "M_to": Ms[i + 1], "from": ys[i], "to": ys[i + 1]}
           for i in np.nonzero(inc > 1e-12)[0]]
    return Check(
        id, group, description,
        f"{len(bad)} increases, worst {worst:+.2e}",
        "0 increases",
        not bad,
        {"N": N, "d": d, "points": len(Ms), "increases": bad[:10]},
    )


# --------------------------------------------------------------------------------------
# reference closed forms (derived here from the papers' loop nests; independent of the model)
# --------------------------------------------------------------------------------------


def _cdiv(a, b):
    return -(-int(a) // int(b))


def ref_fa1(N: int, d: int, M: float, *, init_writes: bool = False) -> int:
    """FlashAttention Algorithm 1 with the paper's blocks (B_c = ceil(M/4d)): exact elements.

    K, V read once; for each of the T_c = ceil(N/B_c) K/V blocks, Q, O, l, m read and O, l, m
    written in full. ``init_writes`` adds the initialisation of O, l, m (N d + 2 N).
    """
    bc = _cdiv(math.ceil(M), 4 * d)
    tc = _cdiv(N, bc)
    return 2 * N * d + tc * (3 * N * d + 4 * N) + ((N * d + 2 * N) if init_writes else 0)


def ref_fa2(N: int, d: int, block_q: int, block_kv: int, *, causal: bool = False,
            lse: bool = True) -> int:
    """FlashAttention-2 loop order (Q blocks outer, K/V blocks inner): exact elements.

    Q read once (N d), O written once (N d), the log-sum-exp written once (N, when ``lse``);
    for every Q block, the K/V blocks it visits are read (B_c d each for K and V). Causal:
    a Q block of rows [i0, i1) visits the K/V blocks that start before i1.
    """
    total = 2 * N * d + (N if lse else 0)
    for i0 in range(0, N, block_q):
        i1 = min(N, i0 + block_q)
        kv_rows = min(N, _cdiv(i1, block_kv) * block_kv) if causal else N
        total += 2 * kv_rows * d
    return total


def ref_fa1_blocks(N: int, d: int, block_q: int, block_kv: int, *, causal: bool = False,
                   init_writes: bool = False) -> int:
    """FlashAttention Algorithm 1's loop order with given blocks, causal skipping optional.

    K_j, V_j read once per K/V block; for every Q block i the inner loop visits, Q_i, O_i
    (B_r d each) and l_i, m_i (B_r each) are read and O_i, l_i, m_i written. Causal: block i
    (rows [i0, i1)) is visited for K/V block j (keys [j0, j1)) iff some row sees some key,
    i.e. i1 - 1 >= j0.
    """
    total = 2 * N * d + ((N * d + 2 * N) if init_writes else 0)
    for j0 in range(0, N, block_kv):
        for i0 in range(0, N, block_q):
            i1 = min(N, i0 + block_q)
            if causal and i1 - 1 < j0:
                continue
            total += (i1 - i0) * (3 * d + 4)
    return total


def ref_saha_ye(N: int, d: int, B: int) -> int:
    """Saha & Ye's SquareTilingAttention (their Algorithm 1) with tile B: exact elements.

    Phase 1 reads Q and K^T blocks for every (i, j, l) -- ceil(N/B) N d each -- writes
    A = exp(Q K^T) (N^2) and the row sums (N). Phase 2 reads the row sums (N), for every
    (i, j, k) an A block and a V block -- ceil(d/B) N^2 and ceil(N/B) N d -- and writes O (N d).
    Total ``3 ceil(N/B) N d + (1 + ceil(d/B)) N^2 + 2 N + N d``.
    """
    nb = _cdiv(N, B)
    db = _cdiv(d, B)
    return 3 * nb * N * d + (1 + db) * N * N + 2 * N + N * d


def _fa2_fits(M: float, d: int, br: int, bc: int = 1) -> bool:
    # Q_i, O_i accumulators (2 Br d), m_i, l_i (2 Br), K_j, V_j (2 Bc d), S_ij (Br Bc)
    return 2 * br * d + 2 * br + 2 * bc * d + br * bc <= M


def ref_fa_min(N: int, d: int, M: float) -> float:
    """Minimum over FA-2-order tilings that fit in M (B_c = 1 is optimal: traffic depends on
    B_r only); inf when none fits."""
    br = int((M - 2 * d) // (2 * d + 3))
    if br < 1:
        return float("inf")
    br = min(br, N)
    return float(ref_fa2(N, d, br, 1, lse=True))


def _sy_fits(M: float, d: int, B: int) -> bool:
    # phase 1: Q block (B x min(B,d)), K block, A block (B x B), row sums (B); phase 2 alike
    return B * B + 2 * B * min(B, d) + B <= M


def ref_saha_ye_min(N: int, d: int, M: float) -> float:
    """Minimum over Saha & Ye square tilings with a tile B that fits in M; inf when none fits."""
    best = float("inf")
    B = 1
    while _sy_fits(M, d, B) and B <= N:
        best = min(best, float(ref_saha_ye(N, d, B)))
        B += 1 if B < 64 else max(1, B // 64)
    return best


def ref_best(N: int, d: int, M: float) -> float:
    """min(ref_fa_min, ref_saha_ye_min): the reference envelope."""
    return min(ref_fa_min(N, d, M), ref_saha_ye_min(N, d, M))


# --------------------------------------------------------------------------------------
# count sets
# --------------------------------------------------------------------------------------


@dataclass
class Identity:
    """One exact-identity check: a reference count and the counts that must equal it."""

    id: str
    description: str
    reference: Callable
    candidates: dict
    configs: list


@dataclass
class CountSet:
    """The count functions the checks run on.

    ``identities`` -- exact-identity checks; ``fa_tiling(N, d, M)`` -- a FlashAttention tiling
    (Algorithm 1, paper blocks) for the slope and constant checks; ``fa_min``, ``sy_min``,
    ``best`` -- minimum over FA-style tilings, over Saha & Ye square tilings, and over all
    valid tilings (the envelope). ``sources`` says where each came from.
    """

    identities: list
    fa_tiling: CountFn | None
    fa_min: CountFn | None
    sy_min: CountFn | None
    best: CountFn | None
    sources: dict = field(default_factory=dict)


def identity_configs(seq_lens: Sequence[int], head_dims: Sequence[int]) -> list:
    """(N, d, M) configurations for the exact checks: the user's shapes trimmed to at most
    2048 rows, each also with N - 1 and an odd N (partial last blocks), and SRAM sizes that are
    and are not multiples of 4 d."""
    out = []
    Ns = sorted({min(int(n), 2048) for n in seq_lens})
    for d in head_dims:
        d = int(d)
        for N in Ns:
            for n in (N, N - 1, (N * 3) // 4 + 5):
                if n < 1:
                    continue
                for M in (16 * d * d if d <= 64 else 4 * d * d, 4 * d * 37 + 5, 4 * d * 17 - 3):
                    if M < 4 * d:
                        continue
                    out.append((n, d, float(M)))
    # de-duplicate, keep order
    seen, res = set(), []
    for c in out:
        if c not in seen:
            seen.add(c)
            res.append(c)
    return res


def reference_counts(seq_lens: Sequence[int] = (1024,), head_dims: Sequence[int] = (64,)) -> CountSet:
    """A count set built from this module's closed forms and ``iosim.backward``'s walkers only.

    Useful on its own (the theory checked against itself) and in tests, where single count
    functions are swapped for perturbed ones.
    """
    from iosim.backward import simulate_flash_forward, paper_block_sizes

    bound = get_bound("flash_attention_alg1_exact")

    def walk_fa1(N, d, M):
        bc, br = paper_block_sizes(int(math.ceil(M)), d)
        w = simulate_flash_forward(N, d, bc, br)
        return sum(w["reads"].values()) + sum(w["writes"].values())

    configs = identity_configs(seq_lens, head_dims)
    ids = [
        Identity("1a", "FA1 (paper blocks): bounds closed form = loop walk",
                 lambda N, d, M: bound.evaluate(N=N, d=d, M=M),
                 {"ref_fa1": ref_fa1, "walk": walk_fa1}, configs[:12]),
    ]
    return CountSet(ids, ref_fa1, ref_fa_min, ref_saha_ye_min, ref_best,
                    sources={"all": "iosim.verify reference closed forms"})


def default_counts(seq_lens: Sequence[int] = (1024,), head_dims: Sequence[int] = (64,)) -> CountSet:
    """The count set of the package's models: ``iosim.traffic`` (analytical and symbolic),
    ``iosim.trace`` (the tile simulator) and ``iosim.search`` (the minimum over tilings),
    each wrapped by the adapters below as a function of ``(N, d, M)``."""
    return model_counts(seq_lens, head_dims)


# --------------------------------------------------------------------------------------
# adapters: the model's modules as count functions of (N, d, M)
# --------------------------------------------------------------------------------------

_DTYPE = "bf16"  # element counts do not depend on it; SRAM bytes = M * 2


def _hw():
    from iosim.hardware import load_hardware

    global _HW
    try:
        return _HW
    except NameError:
        _HW = load_hardware("two-level")
        return _HW


def _mapping(kind: str, **overrides):
    from iosim.mapping import get_mapping

    return get_mapping(kind, **overrides)


def _elements(r: dict) -> np.ndarray:
    return sum(r["backing_reads"].values()) + sum(r["backing_writes"].values())


def model_analytical(kind: str, **overrides) -> Callable:
    """``iosim.traffic``'s HBM elements per head for mapping ``kind`` as ``f(N, d, M, ...)``.

    Extra keyword arguments of the returned function (``block_q``, ``block_kv``, ``causal``)
    are passed to the grid evaluation; ``M`` (elements) becomes ``sram_bytes``.
    """
    from iosim.traffic import evaluate_arrays

    m = _mapping(kind, **overrides)

    def fn(N, d, M=None, **kw):
        sram = None if M is None else float(M) * 2.0
        r = evaluate_arrays(m.cascade, m, _hw(), n=int(N), d=int(d), dtype=_DTYPE,
                            sram_bytes=sram, **kw)
        return int(_elements(r)[0])

    fn.__name__ = f"traffic[{kind}]"
    return fn


def model_symbolic(kind: str, paper_blocks: bool | None = None, **overrides) -> Callable:
    """``iosim.traffic.symbolic_traffic``'s closed form, substituted exactly (sympy)."""
    import sympy as sp
    from iosim.bounds import M as Ms, N as Ns, d as ds
    from iosim.traffic import symbolic_traffic

    m = _mapping(kind, **overrides)
    expr = symbolic_traffic(m, m.cascade, paper_blocks=paper_blocks)["total"]
    Br, Bc, B = sp.symbols("Br Bc B", positive=True, integer=True)

    def fn(N, d, M=None, block_q=None, block_kv=None, causal=False):
        if causal:
            raise IosimError("symbolic causal counts are unevaluated sums; not compared")
        sub = {Ns: int(N), ds: int(d)}
        if M is not None:
            sub[Ms] = sp.Integer(int(M)) if float(M).is_integer() else sp.Float(M)
        if block_q is not None:
            sub[Br] = int(block_q)
            sub[B] = int(block_q)
        if block_kv is not None:
            sub[Bc] = int(block_kv)
        v = sp.sympify(expr).subs(sub)
        return int(v)

    fn.__name__ = f"symbolic[{kind}]"
    return fn


def model_trace(kind: str, **overrides) -> Callable | None:
    """``iosim.trace.simulate``'s event count (HBM elements per head), or None if there is no
    simulator. Capacity checking is off: the identity is about counts, and the paper's FA1
    blocks exceed M for small M (the bound module's note says so)."""
    try:
        from iosim.trace import simulate
    except ImportError:
        return None
    m = _mapping(kind, **overrides)

    def fn(N, d, M=None, **kw):
        from iosim.mapping import Shapes

        causal = bool(kw.pop("causal", False))
        mm = m.with_(**{k: v for k, v in kw.items() if v is not None}) if kw else m
        sram = None if M is None else float(M) * 2.0
        res = simulate(mm.cascade, mm, _hw(), Shapes(n=int(N), e=int(d), dtype=_DTYPE, causal=causal),
                       sram_bytes=sram, check_capacity=False)
        return int(res.total)

    fn.__name__ = f"trace[{kind}]"
    return fn


def _fa2_block_grid(N: int) -> np.ndarray:
    small = np.arange(1, min(N, 256) + 1)
    big = np.unique(np.round(np.geomspace(256, max(N, 256), 600)).astype(np.int64))
    return np.unique(np.concatenate([small, big[big <= N]]))


def model_grid_fa_min(N, d, M) -> float:
    """Minimum of ``iosim.traffic``'s count over FA-2 tilings (B_r on a dense grid, B_c in
    powers of two) whose footprint fits in M elements; inf when none fits."""
    from iosim.traffic import evaluate_arrays

    N, d = int(N), int(d)
    bq = _fa2_block_grid(N)
    bkv = np.array([b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256) if b <= N])
    m = _mapping("fa2")
    r = evaluate_arrays(m.cascade, m, _hw(), n=N, d=d, dtype=_DTYPE,
                        block_q=bq, block_kv=bkv, sram_bytes=float(M) * 2.0)
    el = _elements(r)
    ok = r["fits"]
    return float(el[ok].min()) if ok.any() else float("inf")


def model_grid_sy_min(N, d, M) -> float:
    """Minimum of ``iosim.traffic``'s count over Saha & Ye square tilings (every tile B up
    to sqrt(M)) whose footprint fits in M elements; inf when none fits."""
    from iosim.traffic import evaluate_arrays

    N, d = int(N), int(d)
    bmax = max(1, min(N, int(math.isqrt(int(M)))))
    b = np.arange(1, bmax + 1)
    m = _mapping("saha-ye")
    r = evaluate_arrays(m.cascade, m, _hw(), n=N, d=d, dtype=_DTYPE,
                        block_q=b, block_kv=b, sram_bytes=float(M) * 2.0, product=False)
    el = _elements(r)
    ok = r["fits"]
    return float(el[ok].min()) if ok.any() else float("inf")


def model_grid_best(N, d, M) -> float:
    return min(model_grid_fa_min(N, d, M), model_grid_sy_min(N, d, M))


def model_search_best(cascade: str = "attention-1pass") -> Callable | None:
    """``iosim.search``'s minimum traffic over valid tilings (elements per head) as
    ``f(N, d, M)``, with a vectorised ``f.many(N, d, Ms)`` (one search per (N, d)); None when
    the search module is absent."""
    try:
        from iosim.search import search
    except ImportError:
        return None

    def many(N, d, Ms):
        Ms = np.atleast_1d(np.asarray(Ms, dtype=float))
        fr = search(cascade, _hw(), n=int(N), d=int(d), sram_bytes=Ms * 2.0, dtype=_DTYPE).frame
        v = fr["traffic_elements"].to_numpy(dtype=float)
        return np.where(fr["fits"].to_numpy(dtype=bool), v, np.inf)

    def fn(N, d, M):
        return float(many(N, d, [M])[0])

    fn.many = many
    fn.__name__ = f"search[{cascade}]"
    return fn


def model_counts(seq_lens: Sequence[int], head_dims: Sequence[int]) -> CountSet:
    from iosim.backward import flash_forward, flash_backward, simulate_flash_backward, \
        simulate_flash_forward, paper_block_sizes

    bound = get_bound("flash_attention_alg1_exact")
    cfg = identity_configs(seq_lens, head_dims)
    cfg_small = [c for c in cfg if c[0] <= 1100][:18] or cfg[:18]

    def walk_fa1(N, d, M):
        bc, br = paper_block_sizes(int(math.ceil(M)), d)
        w = simulate_flash_forward(N, d, bc, br)
        return sum(w["reads"].values()) + sum(w["writes"].values())

    fa2_cfgs = []
    for (N, d, _M) in cfg_small[:8]:
        for bq, bkv in ((64, 64), (128, 32), (96, 80), (17, 5)):
            for causal in (False, True):
                fa2_cfgs.append({"N": N, "d": d, "block_q": bq, "block_kv": bkv, "causal": causal})

    def ref_fa2_kw(N, d, block_q, block_kv, causal=False, M=None):
        return ref_fa2(N, d, block_q, block_kv, causal=causal)

    def ref_fa1_kw(N, d, block_q, block_kv, causal=False, M=None):
        return ref_fa1_blocks(N, d, block_q, block_kv, causal=causal)

    def wrap_fa2(fn):
        if fn is None:
            return None

        def g(N, d, block_q, block_kv, causal=False):
            return fn(N, d, None, block_q=block_q, block_kv=block_kv, causal=causal)
        return g

    def sym_fa2(N, d, block_q, block_kv, causal=False):
        if causal:
            return ref_fa2(N, d, block_q, block_kv, causal=True)  # not compared: see below
        return model_symbolic("fa2")(N, d, None, block_q=block_q, block_kv=block_kv)

    def ref_sy_paper(N, d, M):
        return ref_saha_ye(N, d, math.isqrt(int(M) // 4))

    sy_cfg = [(N, d, M) for (N, d, M) in cfg_small if M >= 16]
    bwd_cfg = [{"N": N, "d": d, "block_kv": bkv, "block_q": bq}
               for (N, d, _M) in cfg_small[:6] for bq, bkv in ((64, 64), (37, 100))]

    def bwd_closed(N, d, block_kv, block_q):
        return flash_backward(N, d, block_kv=block_kv, block_q=block_q).elements

    def bwd_walk(N, d, block_kv, block_q):
        w = simulate_flash_backward(N, d, block_kv, block_q)
        return sum(w["reads"].values()) + sum(w["writes"].values())

    identities = [
        Identity("1a", "FA1 paper blocks, no init writes: bounds closed form = model, sympy, simulator",
                 lambda N, d, M: int(bound.evaluate(N=N, d=d, M=M)),
                 {"traffic": model_analytical("fa1", init_writes=False),
                  "symbolic": model_symbolic("fa1", paper_blocks=True, init_writes=False),
                  "trace": model_trace("fa1", init_writes=False),
                  "backward.flash_forward": lambda N, d, M: flash_forward(N, d, int(M)).elements,
                  "loop walk": walk_fa1},
                 cfg_small),
        Identity("1b", "FA1 paper blocks with init writes (+Nd+2N): closed form = model, simulator",
                 lambda N, d, M: ref_fa1(N, d, M, init_writes=True),
                 {"traffic": model_analytical("fa1", init_writes=True),
                  "trace": model_trace("fa1", init_writes=True)},
                 cfg_small),
        Identity("1c", "FA2 given Br, Bc, causal and not: closed form = model, simulator",
                 ref_fa2_kw,
                 {"traffic": wrap_fa2(model_analytical("fa2")),
                  "trace": wrap_fa2(model_trace("fa2"))},
                 fa2_cfgs),
        Identity("1d", "FA2 given Br, Bc (non-causal): closed form = sympy closed form",
                 ref_fa2_kw, {"symbolic": sym_fa2},
                 [c for c in fa2_cfgs if not c["causal"]]),
        Identity("1e", "Saha–Ye square tiling B=⌊√(M/4)⌋: closed form = model, sympy, simulator",
                 ref_sy_paper,
                 {"traffic": model_analytical("saha-ye"),
                  "symbolic": model_symbolic("saha-ye", paper_blocks=True),
                  "trace": model_trace("saha-ye")},
                 sy_cfg),
        Identity("1f", "FA backward (Algorithm 4): closed form = loop walk",
                 bwd_closed, {"loop walk": bwd_walk}, bwd_cfg),
        Identity("1g", "FA1 loop order, given Br, Bc, causal and not: closed form = model, simulator",
                 ref_fa1_kw,
                 {"traffic": wrap_fa2(model_analytical("fa1", init_writes=False)),
                  "trace": wrap_fa2(model_trace("fa1", init_writes=False))},
                 fa2_cfgs),
    ]
    search_best = model_search_best()
    best = search_best or model_grid_best
    sources = {
        "identities": "iosim.traffic (evaluate_arrays, symbolic_traffic), iosim.trace, "
                      "iosim.backward, iosim.bounds",
        "fa_tiling": "iosim.traffic, mapping fa1 (paper blocks, no init writes)",
        "fa_min": "iosim.traffic, min over FA-2 tilings that fit",
        "sy_min": "iosim.traffic, min over Saha–Ye tilings that fit",
        "best": "iosim.search" if search_best else
                "iosim.traffic, min over FA-2 and Saha–Ye tilings that fit (grid; iosim.search absent)",
    }
    return CountSet(identities, model_analytical("fa1", init_writes=False), model_grid_fa_min,
                    model_grid_sy_min, best, sources)


# --------------------------------------------------------------------------------------
# the runner
# --------------------------------------------------------------------------------------


@dataclass
class VerifyParams:
    """Shapes the checks use. ``seq_lens`` and ``head_dims`` come from the CLI; ``n_asym`` is
    the long sequence used where a slope must be measured far from the compulsory-traffic
    floor (slopes against M), default max(2**20, max(seq_lens))."""

    seq_lens: tuple = (1024, 2048, 4096, 8192, 16384)
    head_dims: tuple = (64, 128)
    n_asym: int | None = None

    def __post_init__(self):
        self.seq_lens = tuple(sorted({int(n) for n in self.seq_lens}))
        self.head_dims = tuple(sorted({int(x) for x in self.head_dims}))
        if not self.seq_lens or min(self.seq_lens) < 1:
            raise IosimError("--seq-len: sequence lengths must be positive integers")
        if not self.head_dims or min(self.head_dims) < 1:
            raise IosimError("--head-dim: head dimensions must be positive integers")
        if self.n_asym is None:
            self.n_asym = max(2**20, max(self.seq_lens))

    def to_dict(self) -> dict:
        return {"seq_lens": list(self.seq_lens), "head_dims": list(self.head_dims), "n_asym": self.n_asym}


def run_checks(counts: CountSet, params: VerifyParams | None = None) -> VerifyReport:
    """Run every check of the theory page on ``counts``."""
    p = params or VerifyParams()
    checks: list[Check] = []

    # 1. exact identities
    for ident in counts.identities:
        checks.append(check_exact(ident.id, ident.description, ident.reference, ident.candidates,
                                  ident.configs))

    Ns = list(p.seq_lens)
    d0 = p.head_dims[0]
    dmax = p.head_dims[-1]
    na = p.n_asym

    # 2. slopes
    sid = 2
    Ms = geometric(16 * d0 * d0, 256 * d0 * d0, 2.0)
    checks.append(check_slope(f"{sid}a", f"slope vs M, M ≫ d² (best tiling, d={d0}, N={na})",
                              counts.best, "M", Ms, {"N": na, "d": d0}, -1.0, 0.1))
    checks.append(check_slope(f"{sid}b", f"slope vs M, M ≫ d² (FA1 paper tiling, d={d0}, N={na})",
                              counts.fa_tiling, "M", Ms, {"N": na, "d": d0}, -1.0, 0.1))
    d_small = max(128, dmax)
    Ms_small = geometric(d_small * d_small / 256, d_small * d_small / 16, 2.0)
    checks.append(check_slope(f"{sid}c", f"slope vs M, M ≪ d² (best tiling, d={d_small}, N={Ns[0]})",
                              counts.best, "M", Ms_small, {"N": Ns[0], "d": d_small}, -0.5, 0.1))
    M_n = 16 * d0 * d0
    # N deep in the tiled regime (N d >= 16 M); if the user's N are shorter, a geometric
    # series from the shortest such N (the slope is an asymptotic statement)
    Ns_slope = [n for n in Ns if n * d0 >= 16 * M_n]
    if len(Ns_slope) < 2:
        n0 = 16 * M_n // d0
        Ns_slope = [n0, 2 * n0, 4 * n0, 8 * n0]
    checks.append(check_slope(f"{sid}d", f"slope vs N (FA1 paper tiling, d={d0}, M=16d²)",
                              counts.fa_tiling, "N", Ns_slope, {"d": d0, "M": M_n}, 2.0, 0.1))
    checks.append(check_slope(f"{sid}e", f"slope vs N (best tiling, d={d0}, M=16d²)",
                              counts.best, "N", Ns_slope, {"d": d0, "M": M_n}, 2.0, 0.1))
    ds = [16, 32, 64, 128]
    M_d = 256 * 128 * 128
    checks.append(check_slope(f"{sid}f", f"slope vs d, M ≫ d² (best tiling, N={na}, M={M_d})",
                              counts.best, "d", ds, {"N": na, "M": M_d}, 2.0, 0.1))
    ds_small = [256, 512, 1024, 2048]
    checks.append(check_slope(f"{sid}g", f"slope vs d, M ≪ d² (best tiling, N={Ns[0]}, M=1024)",
                              counts.best, "d", ds_small, {"N": Ns[0], "M": 1024}, 1.0, 0.1))

    # 3. normalised constants
    for i, d in enumerate(p.head_dims):
        Ms = [4 * d * d, 8 * d * d, 16 * d * d, 32 * d * d]
        Ns_c = [n for n in Ns if n >= 16 * d]          # at least one M = 4 d^2 <= N d / 4
        if len(Ns_c) < 2:
            Ns_c = [64 * d, 256 * d, 1024 * d]
        checks.append(check_normalised_constant(
            f"3{chr(97 + i)}", f"IO·M/(N²d²) flat in N, M (FA1 paper tiling, d={d}, N={Ns_c[0]}…{Ns_c[-1]})",
            counts.fa_tiling, Ns_c, Ms, d))

    # 4. envelope vs lower bounds
    Ns_env = sorted(set(Ns) | {4 * Ns[-1], 16 * Ns[-1]})
    for i, d in enumerate(p.head_dims):
        Ms = geometric(max(d * d / 256, 64.0), 64 * d * d, 4.0)
        checks.append(check_envelope(
            f"4{chr(97 + i)}", f"envelope ≥ lower bounds, bounded, no trend (d={d}, N={Ns_env[0]}…{Ns_env[-1]})",
            counts.best, Ns_env, d, Ms))

    # 5. regime switch
    for i, d in enumerate(p.head_dims):
        desc = f"regime switch near M = d² (best tiling, d={d}, N={na})"
        if d < 64:
            checks.append(Check(f"5{chr(97 + i)}", "regime", desc, "n/a", "d ≥ 64", None,
                                {"reason": "for d < 64 the small-cache regime M ≤ d²/16 holds "
                                           "fewer than 256 elements: tiles of a few rows"}))
            continue
        checks.append(check_regime_switch(f"5{chr(97 + i)}", desc, counts.best, na, d))

    # 6. monotonicity
    for i, d in enumerate(p.head_dims):
        Nm = Ns[len(Ns) // 2]
        Ms = [float(x) for x in np.unique(np.round(np.geomspace(2 * d, 4 * Nm * d, 48)))]
        checks.append(check_monotone(f"6{chr(97 + i)}", f"min traffic non-increasing in M (d={d}, N={Nm})",
                                     counts.best, Nm, d, Ms))

    return VerifyReport(checks, p.to_dict(), counts.sources)
