"""Tests of iosim.bounds: values at hand-computed points, regimes, monotonicity, vectorisation."""
from __future__ import annotations

import json

import numpy as np
import pytest

from iosim.bounds import (
    ENVELOPE_MODELS,
    Bound,
    all_bounds,
    attention_lower_envelope,
    get_bound,
)
from iosim.errors import IosimError

# The reference point of the theory page: N = 1024, d = 64, M = 65536 elements (M >= d^2 = 4096).
P = dict(N=1024, d=64, M=65536)
# Every symbol, so one dict serves every bound (unused values are ignored).
ALL = dict(N=1024, Nk=4096, d=64, M=65536, L=4096, g=8, s=0.25, m=1024, n=1024, k=1024)


def ev(name, **kw):
    return get_bound(name).evaluate(**kw)


# ------------------------------------------------------------------ hand-computed values


def test_compulsory():
    # read Q, K, V (3 * 1024 * 64) + write O (1024 * 64) = 4 * 65536
    assert ev("compulsory", **P) == 262_144
    # cross-attention: Q and O are 1024 x 64, K and V are 4096 x 64
    assert ev("compulsory_cross", N=1024, Nk=4096, d=64) == 2 * 65_536 + 2 * 262_144 == 655_360
    assert ev("compulsory_cross", N=1024, Nk=1024, d=64) == ev("compulsory", **P)


def test_flash_attention_values():
    # standard attention: N d + N^2 = 65536 + 1048576
    assert ev("flash_standard_attention", **P) == 1_114_112
    # Algorithm 1: N^2 d^2 / M = 2^20 * 2^12 / 2^16 = 2^16
    assert ev("flash_attention_alg1", **P) == 65_536
    assert ev("flash_attention_backward", **P) == 65_536
    # block-sparse, s = 1/4: N d + s N^2 d^2 / M = 65536 + 16384
    assert ev("block_sparse_flash", s=0.25, **P) == 81_920


def test_flash_attention_alg1_exact_count():
    # Bc = ceil(65536 / 256) = 256, Tc = 1024 / 256 = 4;
    # K, V once: 2 * 65536; per K/V block: read Q, O, write O (3 * 65536) + l, m read+write (4 * 1024)
    assert ev("flash_attention_alg1_exact", **P) == 131_072 + 4 * (196_608 + 4_096) == 933_888
    # partial last block: N = 1000 -> Tc = ceil(1000 / 256) = 4
    assert ev("flash_attention_alg1_exact", N=1000, d=64, M=65536) == 2 * 64_000 + 4 * (3 * 64_000 + 4_000)
    # M not a multiple of 4d: Bc = ceil(1000 / 256) = 4, Tc = 256
    assert ev("flash_attention_alg1_exact", N=1024, d=64, M=1000) == 131_072 + 256 * 200_704
    # with 4d | M and Bc | N the count is 2Nd + (4Nd/M)(3Nd + 4N), i.e. N^2 d^2 / M times
    # 12 + 16/d + 2M/(N d): leading constant 12
    big = dict(N=2**20, d=64, M=65536)
    ratio = ev("flash_attention_alg1_exact", **big) / ev("flash_attention_alg1", **big)
    assert ratio == pytest.approx(12 + 16 / 64 + 2 * 65536 / (2**20 * 64), rel=1e-12)


def test_saha_ye_values():
    # large cache (M = 65536 >= d^2 = 4096): N^2 d^2 / M = 65536; small-cache term N^2 d / sqrt(M) = 2^26 / 2^8
    assert ev("saha_ye_large_cache", **P) == 65_536
    assert ev("saha_ye_small_cache", **P) == 262_144
    assert ev("saha_ye_standard_matmul", **P) == 65_536
    # small cache (M = 1024 < 4096): N^2 d / sqrt(M) = 2^26 / 32 = 2^21 < N^2 d^2 / M = 2^22
    assert ev("saha_ye_standard_matmul", N=1024, d=64, M=1024) == 2_097_152
    # any algorithm: min(N^2 d^2 / M, N^2)
    assert ev("saha_ye_any_algorithm", **P) == 65_536
    assert ev("saha_ye_any_algorithm", N=1024, d=64, M=1024) == 1_048_576


def test_matmul_values():
    # n^3 / sqrt(M) = 2^30 / 2^8
    assert ev("hong_kung_matmul", n=1024, M=65536) == 4_194_304
    # 2 m n k / sqrt(M) = 2^31 / 2^8 = 8388608
    assert ev("smith_matmul", m=1024, n=1024, k=1024, M=65536) == 8_388_608 - 2 * 65_536
    assert ev("cosma_matmul", m=1024, n=1024, k=1024, M=65536) == 8_388_608 + 1_048_576
    # rectangular: 2 * 512 * 256 * 128 / sqrt(4096) = 2^25 / 2^6 = 524288
    assert ev("cosma_matmul", m=512, n=256, k=128, M=4096) == 524_288 + 512 * 256


def test_decode_floor():
    # K and V: 2 * 4096 * 128; g = 8 query rows read and written: 2 * 8 * 128
    assert ev("decode_kv_floor", L=4096, d=128, g=8) == 1_048_576 + 2_048


# ------------------------------------------------------------------ regimes


@pytest.mark.parametrize("N,d", [(1024, 64), (4096, 128), (777, 48), (65536, 256)])
def test_saha_ye_crossover_at_d_squared(N, d):
    M = d * d
    small = ev("saha_ye_small_cache", N=N, d=d, M=M)
    large = ev("saha_ye_large_cache", N=N, d=d, M=M)
    assert small == pytest.approx(large, rel=1e-12)
    assert small == pytest.approx(N * N, rel=1e-12)  # both are N^2 there
    assert ev("saha_ye_standard_matmul", N=N, d=d, M=M) == pytest.approx(N * N, rel=1e-12)
    # the min picks the small-cache branch below d^2 and the large-cache branch above
    lo, hi = M / 4, M * 4
    assert ev("saha_ye_standard_matmul", N=N, d=d, M=lo) == pytest.approx(ev("saha_ye_small_cache", N=N, d=d, M=lo))
    assert ev("saha_ye_standard_matmul", N=N, d=d, M=hi) == pytest.approx(ev("saha_ye_large_cache", N=N, d=d, M=hi))
    assert get_bound("saha_ye_small_cache").in_regime(N=N, d=d, M=lo)
    assert not get_bound("saha_ye_small_cache").in_regime(N=N, d=d, M=M)
    assert get_bound("saha_ye_large_cache").in_regime(N=N, d=d, M=M)


def test_flash_regime_condition():
    b = get_bound("flash_attention_alg1")
    got = b.in_regime(N=1024, d=64, M=np.array([32, 64, 65536, 65537]))
    assert got.tolist() == [False, True, True, False]  # d <= M <= N d, with N d = 65536
    assert get_bound("compulsory").in_regime(**P) is True


# ------------------------------------------------------------------ monotonicity, vectorisation

M_GRID = np.unique(np.round(np.logspace(1, 7, 200)))


@pytest.mark.parametrize("bound", [b for b in all_bounds() if "M" in b.variables], ids=lambda b: b.name)
def test_nonincreasing_in_M(bound):
    vals = bound.evaluate(**{**ALL, "M": M_GRID})
    assert vals.shape == M_GRID.shape
    assert np.all(np.diff(vals) <= 1e-9 * np.abs(vals[:-1]))


def test_envelope_nonincreasing_in_M():
    for model in ENVELOPE_MODELS:
        env = attention_lower_envelope(1024, 64, M_GRID, model=model)
        assert np.all(np.diff(env.value) <= 0)
        assert np.all(np.diff(env.rigorous) <= 0)


@pytest.mark.parametrize("bound", all_bounds(), ids=lambda b: b.name)
def test_vectorised_equals_scalar(bound):
    rng = np.random.default_rng(0)
    grids = {
        "N": np.array([256, 1000, 4096, 16384]), "Nk": np.array([128, 512, 2048, 9999]),
        "d": np.array([32, 64, 128, 256]), "M": np.array([100, 4096, 65536, 200000]),
        "L": np.array([1, 100, 4096, 131072]), "g": np.array([1, 2, 8, 16]),
        "s": np.array([0.1, 0.25, 0.5, 1.0]), "m": np.array([64, 128, 1000, 4096]),
        "n": np.array([64, 256, 999, 2048]), "k": np.array([32, 64, 128, 8192]),
    }
    values = {v: rng.permutation(grids[v]).astype(float) for v in bound.variables}
    vec = bound.evaluate(**values)
    assert isinstance(vec, np.ndarray) and vec.shape == (4,)
    for i in range(4):
        scalar = bound.evaluate(**{v: float(a[i]) for v, a in values.items()})
        assert isinstance(scalar, float)
        assert vec[i] == pytest.approx(scalar, rel=1e-12)
    # broadcasting: a column of M against a row of N gives a grid
    if "M" in bound.variables and "N" in bound.variables:
        grid = bound.evaluate(**{**ALL, "N": np.array([512, 1024, 2048]), "M": np.array([[1e3], [1e4]])})
        assert grid.shape == (2, 3)
        assert grid[1, 2] == pytest.approx(bound.evaluate(**{**ALL, "N": 2048, "M": 1e4}))


# ------------------------------------------------------------------ envelope


def test_envelope_at_reference_point():
    env = attention_lower_envelope(**P)
    # compulsory 262144 beats Saha & Ye's 65536 here
    assert env.value == 262_144 and env.rigorous == 262_144
    assert env.binding == "compulsory" and env.asymptotic is False
    # small M: the asymptotic Saha & Ye bound binds, labelled as such
    env = attention_lower_envelope(N=1024, d=64, M=256)
    assert env.binding == "saha_ye_standard_matmul" and env.asymptotic is True
    assert env.value == 1024**2 * 64 / 16  # N^2 d / sqrt(M)
    assert env.rigorous == 262_144
    # 'any' model: min(N^2 d^2 / M, N^2) = N^2 at M = 256
    env = attention_lower_envelope(N=1024, d=64, M=256, model="any")
    assert env.value == 1024**2 and env.binding == "saha_ye_any_algorithm"


def test_envelope_is_max_of_components_and_serialises():
    env = attention_lower_envelope(np.array([1024, 4096]), 64, np.array([[256.0], [65536.0]]))
    assert env.value.shape == (2, 2)
    for comp in env.components.values():
        assert np.all(env.value >= comp)
    d = env.to_dict()
    json.dumps(d)
    assert "constant 1" in d["constants"]["saha_ye_standard_matmul"]
    assert d["constants"]["compulsory"] == "derived"
    assert d["unit"] == "elements"


def test_envelope_unknown_model():
    with pytest.raises(IosimError, match="did you mean"):
        attention_lower_envelope(1024, 64, 65536, model="standard")


# ------------------------------------------------------------------ catalogue and errors


def test_catalogue_fields():
    names = [b.name for b in all_bounds()]
    assert len(names) == len(set(names))
    for b in all_bounds():
        assert isinstance(b, Bound)
        assert b.kind in ("lower", "upper", "tight")
        assert b.constant in ("stated", "derived", "asymptotic (no constant)")
        assert b.source and b.regime
        d = b.to_dict()
        json.dumps(d)
        assert d["name"] == b.name and d["variables"] == list(b.variables)
    assert "2402.07443" in get_bound("saha_ye_standard_matmul").source
    assert "2205.14135" in get_bound("flash_attention_alg1").source
    assert "1702.02017" in get_bound("smith_matmul").source
    assert "1908.09606" in get_bound("cosma_matmul").source
    assert "Proposition 3" in get_bound("flash_attention_alg1").note


def test_get_bound_errors_and_aliases():
    assert get_bound("Saha-Ye-Standard-Matmul").name == "saha_ye_standard_matmul"
    with pytest.raises(IosimError, match="did you mean 'compulsory'") as ei:
        get_bound("compulsary")
    assert "\n" not in str(ei.value)


def test_evaluate_errors():
    b = get_bound("saha_ye_standard_matmul")
    with pytest.raises(IosimError, match="missing value for M"):
        b.evaluate(N=1024, d=64)
    with pytest.raises(IosimError, match="positive"):
        b.evaluate(N=1024, d=64, M=-1)
    with pytest.raises(IosimError, match="positive"):
        b.evaluate(N=1024, d=64, M=np.array([1.0, 0.0]))
    with pytest.raises(IosimError, match="unknown variable 'Q'"):
        b.evaluate(N=1024, d=64, M=65536, Q=3)
    # a known symbol the formula does not use is ignored
    assert b.evaluate(N=1024, d=64, M=65536, L=5) == 65_536


# ------------------------------------------------------------------ one text, two evaluations


@pytest.mark.parametrize("bound", all_bounds(), ids=lambda b: b.name)
def test_numeric_formula_matches_sympy(bound):
    # the NumPy evaluation of the text and sympy's own reading of the same text agree
    import sympy as sp

    from iosim.bounds import SYMBOLS

    assert bound.variables == tuple(sorted(str(x) for x in bound.expr.free_symbols))
    rng = np.random.default_rng(1)
    values = {v: rng.uniform(1.0, 5e5, 64) for v in SYMBOLS}
    values["s"] = rng.uniform(0.01, 1.5, 64)
    values["M"] = np.concatenate([rng.uniform(1.0, 5e5, 60), [64.0, 4096.0, 65536.0, 3.0]])
    fn = sp.lambdify([SYMBOLS[v] for v in bound.variables], bound.expr, modules="numpy")
    want = np.broadcast_to(fn(*(values[v] for v in bound.variables)), (64,))
    assert np.array_equal(bound.evaluate(**values), want)
    names = sorted(str(x) for x in sp.sympify(bound.condition).free_symbols)
    if names:
        cond = sp.lambdify([SYMBOLS[v] for v in names], bound.condition, modules="numpy")
        assert np.array_equal(bound.in_regime(**values), cond(*(values[v] for v in names)))
    else:
        assert bound.condition is sp.true and bound.in_regime(**values).all()


def test_module_symbols_are_the_formulas_symbols():
    from iosim.bounds import M, N, SYMBOLS, d

    assert SYMBOLS["N"] is N and N.is_positive
    assert get_bound("saha_ye_large_cache").expr == N**2 * d**2 / M
    assert get_bound("flash_attention_alg1").condition.free_symbols == {N, d, M}


@pytest.mark.parametrize("text", ["__import__('os')", "N.real", "N[0]", "exp(N)", "d <= M <= N*d",
                                  "lambda: 1", "'N'", "N +"])
def test_formula_text_is_checked(text):
    with pytest.raises(ValueError):
        Bound(name="bad", formula=text, kind="lower", regime="-", source="-", constant="derived")
