"""Tests of iosim.verify: each check passes on correct counts and FAILS on perturbed ones.

The expectations are derived here by hand from the papers' loop nests (FlashAttention
Algorithm 1, FlashAttention-2's loop order, Saha & Ye's SquareTilingAttention), never copied
from the code under test.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from iosim.verify import (
    Check,
    VerifyParams,
    check_envelope,
    check_exact,
    check_monotone,
    check_normalised_constant,
    check_regime_switch,
    check_slope,
    loglog_slope,
    ref_best,
    ref_fa1,
    ref_fa1_blocks,
    ref_fa2,
    ref_fa_min,
    ref_saha_ye,
    ref_saha_ye_min,
    reference_counts,
    run_checks,
)


# ----------------------------------------------------------------- hand-derived closed forms


def test_reference_closed_forms_by_hand():
    # FA1: N = 1024, d = 64, M = 65536 -> Bc = 256, Tc = 4:
    # K, V once (2 * 65536) + 4 * (Q, O read + O write = 3 * 65536, l, m read+write = 4 * 1024)
    assert ref_fa1(1024, 64, 65536) == 131072 + 4 * (196608 + 4096)
    # partial block: N = 1000 -> Tc = ceil(1000/256) = 4; init adds N d + 2 N
    assert ref_fa1(1000, 64, 65536, init_writes=True) == 128000 + 4 * (192000 + 4000) + 64000 + 2000
    # FA2, non-causal: Q and O once (2 N d), LSE (N), K and V once per query block
    assert ref_fa2(1000, 64, 128, 64) == 2 * 64000 + 1000 + 8 * 2 * 64000
    # FA2, causal, N = 4, Br = 2, Bc = 1: block 0 (rows 0-1) sees keys 0-1, block 1 sees 0-3
    assert ref_fa2(4, 1, 2, 1, causal=True, lse=False) == 2 * 4 + 2 * (2 + 4)
    # FA1 loop order, N = 4, d = 1, Br = Bc = 2: K, V once (8); per visited (j, i) pair the
    # block's rows read Q, O and write O (3 d) and read+write l, m (4). Non-causal: 4 pairs of
    # 2 rows; causal: K/V block 1 (keys 2-3) skips Q block 0 (rows 0-1)
    assert ref_fa1_blocks(4, 1, 2, 2) == 8 + 8 * 7
    assert ref_fa1_blocks(4, 1, 2, 2, causal=True) == 8 + 6 * 7
    # Saha & Ye, N = 8, d = 4, B = 2: nb = 4, db = 2:
    # 3 * 4 * 32 (Q, K in phase 1; V in phase 2) + (1 + 2) * 64 (A written once, read db times)
    # + 2 * 8 (row sums written, read) + 32 (O written)
    assert ref_saha_ye(8, 4, 2) == 384 + 192 + 16 + 32


def test_reference_minima():
    # FA-2 tilings: Bc = 1, Br = floor((M - 2d) / (2d + 3)); M = 1000, d = 8 -> Br = 51
    assert ref_fa_min(1000, 8, 1000) == ref_fa2(1000, 8, 51, 1)
    assert math.isinf(ref_fa_min(1000, 64, 100))   # K_j, V_j rows alone need 2d = 128 > 100
    # Saha-Ye: B^2 + 2 B min(B, d) + B <= M; M = 64, d = 64 -> B = 4 (16 + 32 + 4 = 52)
    assert ref_saha_ye_min(256, 64, 64) == min(ref_saha_ye(256, 64, b) for b in (1, 2, 3, 4))
    assert ref_best(256, 64, 64) == ref_saha_ye_min(256, 64, 64)


def test_loglog_slope():
    x = [1, 2, 4, 8]
    assert loglog_slope(x, [3 * v**2 for v in x]) == pytest.approx(2.0)
    assert loglog_slope(x, [5 / v for v in x]) == pytest.approx(-1.0)


# ----------------------------------------------------------------- each check passes / fails


CFG = [(1024, 64, 65536.0), (1023, 64, 9477.0), (777, 32, 5000.0)]


def test_exact_identity_passes_and_fails_on_one_tile():
    ok = check_exact("t", "fa1", ref_fa1, {"same": lambda N, d, M: ref_fa1(N, d, M)}, CFG)
    assert ok.passed and ok.status == "PASS"

    def off_by_one_tile(N, d, M):
        # forgets the last (partial) K/V block's inner loop: one tile pass fewer
        bc = math.ceil(M / (4 * d))
        tc = N // bc
        return 2 * N * d + tc * (3 * N * d + 4 * N)

    bad = check_exact("t", "fa1", ref_fa1, {"floor": off_by_one_tile}, CFG)
    assert bad.passed is False and bad.status == "FAIL"
    assert bad.details["mismatches"]
    # a count that raises is a mismatch too
    err = check_exact("t", "fa1", ref_fa1, {"boom": lambda N, d, M: 1 / 0}, CFG)
    assert err.passed is False
    # nothing to compare: skipped
    assert check_exact("t", "x", ref_fa1, {"none": None}, CFG).status == "SKIP"


def _fa_large(N, d, M):  # ~ 12 N^2 d^2 / M + 2 N d: the FA1 count, continuous
    return ref_fa1(N, d, M)


def test_slope_vs_M_and_N():
    Ms = [2**k * 64 * 64 for k in range(4, 9)]
    good = check_slope("s", "M", _fa_large, "M", Ms, {"N": 2**20, "d": 64}, -1.0, 0.1)
    assert good.passed
    # a count with the small-cache exponent in the large-cache regime
    wrong = check_slope("s", "M", lambda N, d, M: N * N * d / math.sqrt(M), "M", Ms,
                        {"N": 2**20, "d": 64}, -1.0, 0.1)
    assert not wrong.passed
    Ns = [4096, 8192, 16384, 32768]
    assert check_slope("s", "N", ref_fa1, "N", Ns, {"d": 64, "M": 65536}, 2.0, 0.1).passed
    # off by a factor growing with N (log2 N): slope 2 + 1/ln N ~ 2.1+ -> FAIL
    grow = check_slope("s", "N", lambda N, d, M: ref_fa1(N, d, M) * N**0.25, "N", Ns,
                       {"d": 64, "M": 65536}, 2.0, 0.1)
    assert not grow.passed


def test_normalised_constant_flat_and_perturbed():
    Ns = [4096, 8192, 16384, 32768]
    Ms = [4 * 64 * 64, 8 * 64 * 64, 16 * 64 * 64]
    good = check_normalised_constant("c", "fa1", ref_fa1, Ns, Ms, 64)
    assert good.passed
    # the leading constant of FA1 with the paper's blocks is 12 (+16/d + ...): 12.25..12.6
    consts = [p["constant"] for p in good.details["points"]]
    assert 12.0 < min(consts) and max(consts) < 13.0
    bad = check_normalised_constant("c", "fa1", lambda N, d, M: ref_fa1(N, d, M) * math.log2(N),
                                    Ns, Ms, 64)
    assert not bad.passed


def test_envelope_passes_and_fails():
    Ns = [1024, 2048, 4096, 8192]
    d = 64
    Ms = [d * d / 64, d * d / 16, d * d / 4, d * d, 4 * d * d, 16 * d * d, 64 * d * d]
    good = check_envelope("e", "ref", ref_best, Ns, d, Ms)
    assert good.passed, good.details["trends"]
    # a count below the compulsory traffic (reads K and V only once, never writes O)
    below = check_envelope("e", "below", lambda N, d, M: 2 * N * d, Ns, d, Ms)
    assert not below.passed
    # a count that grows faster than N^2 (by N^0.3): a trend against N
    trend = check_envelope("e", "trend", lambda N, d, M: ref_best(N, d, M) * N**0.3, Ns, d, Ms)
    assert not trend.passed
    assert any(abs(t["slope"]) > 0.1 for t in trend.details["trends"] if t["axis"] == "N")


def test_regime_switch_passes_and_fails():
    good = check_regime_switch("r", "ref", ref_best, 2**20, 64)
    assert good.passed
    assert 64 * 64 / 16 <= good.details["crossing_M"] <= 64 * 64 * 16
    # FA-style tilings only: no small-cache regime (slope about -1 everywhere it fits)
    only_fa = check_regime_switch("r", "fa", ref_fa_min, 2**20, 64)
    assert not only_fa.passed
    # Saha-Ye only: slope -1/2 everywhere, no switch
    only_sy = check_regime_switch("r", "sy", ref_saha_ye_min, 2**20, 64)
    assert not only_sy.passed


def test_monotone_passes_and_fails():
    Ms = list(np.geomspace(128, 2**18, 30).round())
    assert check_monotone("m", "ref", ref_best, 4096, 64, Ms).passed
    # a count that jumps up at some SRAM sizes (as a search that mis-ranks candidates would)
    spiky = lambda N, d, M: ref_best(N, d, M) * (1.5 if int(M) % 3 == 0 else 1.0)  # noqa: E731
    assert not check_monotone("m", "spiky", spiky, 4096, 64, Ms).passed


def test_run_checks_reference_all_pass_and_perturbed_set_fails():
    params = VerifyParams((1024, 2048, 4096), (64,))
    rep = run_checks(reference_counts(params.seq_lens, params.head_dims), params)
    assert rep.passed, rep.table()
    assert rep.counts["FAIL"] == 0
    # perturb the FA tiling by a factor growing with N: slope, constant checks fail
    cs = reference_counts(params.seq_lens, params.head_dims)
    cs.fa_tiling = lambda N, d, M: ref_fa1(N, d, M) * (1 + N / 4096)
    rep2 = run_checks(cs, params)
    failed = {c.id for c in rep2.checks if c.status == "FAIL"}
    assert {"2d", "3a"} <= failed
    # perturb an identity candidate by one tile pass
    cs = reference_counts(params.seq_lens, params.head_dims)
    cs.identities[0].candidates["ref_fa1"] = lambda N, d, M: ref_fa1(N, d, M) + 3 * N * d + 4 * N
    rep3 = run_checks(cs, params)
    assert [c.status for c in rep3.checks if c.id == "1a"] == ["FAIL"]
    table = rep3.table()
    assert "FAIL" in table and "1a" in table


def test_report_json_roundtrip():
    params = VerifyParams((1024, 2048), (64,))
    rep = run_checks(reference_counts(params.seq_lens, params.head_dims), params)
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["passed"] is True
    assert {c["status"] for c in d["checks"]} == {"PASS"}
    assert isinstance(Check("x", "g", "d", "m", "e", None).to_dict()["status"], str)


# ----------------------------------------------------------------- the CLI


def test_cli_bounds_list_show():
    from iosim.cli import main

    r = CliRunner().invoke(main, ["bounds", "list"])
    assert r.exit_code == 0 and "saha_ye_standard_matmul" in r.output
    r = CliRunner().invoke(main, ["bounds", "show", "flash_attention_alg1_exact"])
    assert r.exit_code == 0 and "derived" in r.output and "ceiling" in r.output
    r = CliRunner().invoke(main, ["bounds", "show", "flash-atention"])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "unknown bound" in r.output


def test_cli_bounds_verify_reference_and_errors():
    from iosim.cli import main

    r = CliRunner().invoke(main, ["bounds", "verify", "--reference", "--seq-len", "1K,2K",
                                  "--head-dim", "64", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["passed"] is True
    r = CliRunner().invoke(main, ["bounds", "verify", "--seq-len", "1K:2K"])
    assert r.exit_code == 2 and "error:" in r.output and r.output.count("\n") == 1


def test_model_counts_pass_and_a_perturbed_model_count_fails():
    """The package's own models (traffic, trace) through the adapters: all checks pass on a
    small grid; replacing the simulator's count by one that drops the last partial tile
    makes the identity FAIL."""
    from iosim.verify import default_counts

    params = VerifyParams((1024, 2048), (64,))
    cs = default_counts(params.seq_lens, params.head_dims)
    rep = run_checks(cs, params)
    assert rep.passed, rep.table()
    ident = cs.identities[0]
    sim = ident.candidates["trace"]
    assert sim is not None   # the tile simulator exists and is compared

    def short(N, d, M):
        bc = math.ceil(M / (4 * d))
        return sim(N, d, M) - (3 * N * d + 4 * N if N % bc else 0)

    ident.candidates["trace"] = short
    bad = check_exact(ident.id, ident.description, ident.reference, ident.candidates, ident.configs)
    assert bad.status == "FAIL"
