"""Analytical traffic: closed forms written by hand from the papers' algorithms, brute force
counting of causal blocks, and consistency of the vectorised grid with single evaluations.
Expected values are derived here, never copied from the code under test."""
from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp
from hypothesis import given, settings, strategies as st

from iosim.errors import IosimError
from iosim.mapping import get_mapping
from iosim.traffic import (causal_sums, evaluate, evaluate_arrays, evaluate_grid, floor_sum,
                           symbolic_traffic)


def cdiv(a, b):
    return -(-a // b)


def per_head(casc, mp, hw="two-level", **kw):
    r = evaluate_arrays(casc, mp, hw, **kw)
    reads = {t: int(v[0]) for t, v in r["model_reads"].items()}
    writes = {t: int(v[0]) for t, v in r["model_writes"].items()}
    return reads, writes, r


def brute_blocks(N, K, Br, Bc, off=0):
    """Per query tile: the key tiles holding at least one visible (query, key) pair."""
    vis = np.arange(K)[None, :] <= np.arange(N)[:, None] + off
    out = []
    for i in range(cdiv(N, Br)):
        rows = vis[i * Br:(i + 1) * Br]
        out.append([j for j in range(cdiv(K, Bc)) if rows[:, j * Bc:(j + 1) * Bc].any()])
    return out


# --------------------------------------------------------------------------- helpers


@given(n=st.integers(0, 60), m=st.integers(1, 40), a=st.integers(0, 50), b=st.integers(0, 90))
def test_floor_sum_matches_brute_force(n, m, a, b):
    assert int(floor_sum(n, m, a, b)) == sum((a * t + b) // m for t in range(n))


@settings(max_examples=300, deadline=None)
@given(N=st.integers(1, 200), K=st.integers(1, 200), Br=st.integers(1, 70),
       Bc=st.integers(1, 70), off=st.integers(-210, 210))
def test_causal_sums_match_brute_force(N, K, Br, Bc, off):
    blocks = brute_blocks(N, K, Br, Bc, off)
    rows = [min(Br, N - i * Br) for i in range(len(blocks))]
    cols = [sum(min(Bc, K - j * Bc) for j in js) for js in blocks]
    S00, S10, S01, S11 = (int(x) for x in causal_sums(N, K, Br, Bc, off))
    assert S00 == sum(len(js) for js in blocks)
    assert S10 == sum(r * len(js) for r, js in zip(rows, blocks))
    assert S01 == sum(cols)
    assert S11 == sum(r * c for r, c in zip(rows, cols))


def test_causal_sums_vectorised():
    N = np.array([100, 257, 1024])
    got = causal_sums(N, N, 32, np.array([16, 64, 128]))
    for k in range(3):
        one = causal_sums(int(N[k]), int(N[k]), 32, [16, 64, 128][k])
        assert [int(g[k]) for g in got] == [int(o) for o in one]


# --------------------------------------------------------------------------- FA2


@pytest.mark.parametrize("N,K,d,Br,Bc", [(4096, 4096, 128, 128, 64), (1000, 1000, 64, 128, 96),
                                         (777, 1500, 80, 64, 128), (50, 50, 16, 128, 128)])
def test_fa2_non_causal_hand_count(N, K, d, Br, Bc):
    m = get_mapping("fa2", block_q=Br, block_kv=Bc)
    reads, writes, _ = per_head("attention-1pass", m, n=N, kv_len=K, e=d)
    Tr = cdiv(N, Br)
    assert reads == {"Q": N * d, "K": K * d * Tr, "V": K * d * Tr}
    assert writes == {"O": N * d, "LSE": N}


def test_fa2_lse_switch_and_e_ne_f():
    m = get_mapping("fa2", block_q=64, block_kv=64, write_lse=False)
    reads, writes, _ = per_head("attention-1pass", m, n=300, e=32, f=48)
    assert writes == {"O": 300 * 48}
    assert reads == {"Q": 300 * 32, "K": 300 * 32 * 5, "V": 300 * 48 * 5}


@pytest.mark.parametrize("N,K,Br,Bc,off", [(1024, 1024, 128, 64, 0), (1000, 1000, 96, 80, 0),
                                           (300, 700, 64, 32, 400), (500, 200, 64, 64, -300)])
def test_fa2_causal_block_counts_brute_force(N, K, Br, Bc, off):
    d = 32
    m = get_mapping("fa2", block_q=Br, block_kv=Bc)
    reads, writes, _ = per_head("attention-1pass", m, n=N, kv_len=K, e=d, causal=True,
                                causal_offset=off)
    blocks = brute_blocks(N, K, Br, Bc, off)
    keys_loaded = sum(sum(min(Bc, K - j * Bc) for j in js) for js in blocks)
    assert reads["K"] == keys_loaded * d == reads["V"]
    assert reads["Q"] == N * d and writes["O"] == N * d


def test_causal_self_attention_square_tiles_closed_form():
    # N = T*B, square tiles: query tile i sees i+1 key tiles -> K read T(T+1)/2 tiles
    B, T, d = 64, 16, 64
    m = get_mapping("fa2", block_q=B, block_kv=B)
    reads, _, _ = per_head("attention-1pass", m, n=T * B, e=d, causal=True)
    assert reads["K"] == T * (T + 1) // 2 * B * d


# --------------------------------------------------------------------------- FA1


@pytest.mark.parametrize("N,d,M", [(1024, 64, 51200), (1000, 64, 12000), (4096, 128, 100000)])
def test_fa1_paper_blocks_exact(N, d, M):
    """Algorithm 1: K, V once; Q, O read and O written per (j, i) pair; l, m likewise."""
    Bc = math.ceil(M / (4 * d))
    Br = min(Bc, d)
    Tc = cdiv(N, Bc)
    m = get_mapping("fa1", init_writes=True)
    reads, writes, r = per_head("flash1", m, n=N, e=d, sram_bytes=M * 2)   # bf16
    assert int(r["sizes"]["block_kv"][0]) == Bc and int(r["sizes"]["block_q"][0]) == Br
    assert reads == {"K": N * d, "V": N * d, "Q": Tc * N * d, "O": Tc * N * d,
                     "m": Tc * N, "l": Tc * N}
    assert writes == {"O": (Tc + 1) * N * d, "m": (Tc + 1) * N, "l": (Tc + 1) * N}
    # the bounds module's independent formula (initialisation excluded)
    from iosim.bounds import get_bound
    exact = get_bound("flash_attention_alg1_exact").evaluate(N=N, d=d, M=M)
    no_init = sum(reads.values()) + sum(writes.values()) - (N * d + 2 * N)
    assert no_init == exact


def test_fa1_init_switch_and_causal_pairs():
    N, d, Br, Bc = 600, 32, 48, 80
    m = get_mapping("fa1", block_q=Br, block_kv=Bc, init_writes=False)
    reads, writes, _ = per_head("flash1", m, n=N, e=d, causal=True)
    pairs = brute_blocks(N, N, Br, Bc)
    q_rows = sum(min(Br, N - i * Br) for i, js in enumerate(pairs) for _ in js)
    assert reads["Q"] == q_rows * d == reads["O"] == writes["O"]
    assert reads["l"] == q_rows == writes["m"]
    assert reads["K"] == N * d   # outer loop loads every K/V tile once


def test_fa1_paper_blocks_flagged_when_they_overflow():
    rep = evaluate("flash1", "fa1", "two-level", n=1024, d=64, sram_bytes=2 * 1024)
    assert not rep.fits and any("paper" in w for w in rep.warnings)


# --------------------------------------------------------------------------- unfused


@pytest.mark.parametrize("N,d,Br,Bc", [(1024, 64, 128, 128), (1000, 80, 64, 96)])
def test_unfused_standard_attention(N, d, Br, Bc):
    m = get_mapping("unfused", block_q=Br, block_kv=Bc)
    reads, writes, _ = per_head("attention-3pass", m, n=N, e=d, sram_bytes=10**9)
    Tr = cdiv(N, Br)
    assert writes["S"] == N * N and reads["S"] == N * N       # S written once, read once
    assert writes["P~"] == N * N and reads["P~"] == N * N     # P written once, read once
    assert reads["Q"] == N * d and reads["K"] == Tr * N * d and reads["V"] == Tr * N * d
    assert writes["O"] == N * d
    total = sum(reads.values()) + sum(writes.values())
    assert total == 4 * N * N + 2 * N * d + 2 * Tr * N * d   # Theta(N d + N^2) for fixed tiles


# --------------------------------------------------------------------------- other mappings


def test_saha_ye_algorithm_counts():
    """Saha & Ye, Algorithm 1 (SquareTilingAttention), with B = floor(sqrt(M/4))."""
    N, d, M = 500, 64, 1000
    B = math.isqrt(M // 4)           # 15
    T, Td = cdiv(N, B), cdiv(d, B)
    reads, writes, _ = per_head("attention-3pass", "saha-ye", n=N, e=d, sram_bytes=2 * M)
    # phase 1: for each (i, j), Q[i, :] and K[j, :] are read block by block over l
    assert reads["Q"] == T * N * d and reads["K"] == T * N * d
    assert writes["A"] == N * N and writes["D"] == N
    # phase 2: for each (i, c): A[i, :] and V[:, c]
    assert reads["A"] == Td * N * N and reads["V"] == T * N * d and reads["D"] == N
    assert writes["O"] == N * d
    rep = evaluate("attention-3pass", get_mapping("saha-ye", stat_dtype="bf16"), "two-level",
                   n=N, d=d, sram_bytes=2 * M)       # the paper's cache holds 3 B^2 + B elements
    assert rep.fits and rep.footprint["SRAM"]["need_bytes"] == 2 * (3 * B * B + B)


def test_fused_3pass_policies():
    N, d, B = 640, 64, 64
    T = N // B
    kw = dict(n=N, e=d, sram_bytes=10**9)
    r, w, _ = per_head("attention-3pass", get_mapping("fused-3pass", block_q=B, block_kv=B), **kw)
    assert r == {"Q": N * d, "K": T * N * d, "V": T * N * d} and w == {"O": N * d}
    r, w, _ = per_head("attention-3pass", get_mapping("fused-3pass", block_q=B, block_kv=B,
                                                      row_policy="spill"), **kw)
    assert w["SQK"] == N * N and r["SQK"] == 2 * N * N and r["K"] == T * N * d
    r, w, _ = per_head("attention-3pass", get_mapping("fused-3pass", block_q=B, block_kv=B,
                                                      row_policy="recompute"), **kw)
    assert r["K"] == 3 * T * N * d and r["V"] == T * N * d and "SQK" not in w


def test_fused_3pass_buffer_must_hold_the_score_row():
    buf = get_mapping("fused-3pass", block_q=64, block_kv=64, row_policy="buffer")
    rep = evaluate("attention-3pass", buf, "two-level", n=4096, d=64, check=False)
    # Q tile + O acc + max and sum + the 64 x 4096 score row + one K (pass 1) or V (pass 3)
    # tile (K's buffer is freed before pass 3 loads V), in bf16
    assert rep.footprint["SRAM"]["need_bytes"] == 2 * (64 * 64 * 3 + 2 * 64 + 64 * 4096)
    with pytest.raises(IosimError, match="of SRAM but .* fit: .*row_policy 'spill'"):
        evaluate("attention-3pass", buf, "two-level", n=4096, d=64)


def test_fused_auto_policy_buffers_when_the_row_fits():
    auto = get_mapping("fused-3pass", block_q=64, block_kv=64)          # row_policy "auto"
    row_fits = 2 * (64 * 64 * 3 + 2 * 64 + 64 * 1024)                   # N = 1024, bf16
    small = evaluate("attention-3pass", auto, "two-level", n=1024, d=64, sram_bytes=row_fits)
    assert small.mapping.row_policy == "buffer" and "SQK" not in small.per_head_elements
    big = evaluate("attention-3pass", auto, "two-level", n=1024, d=64, sram_bytes=row_fits - 2)
    assert big.mapping.row_policy == "spill" and big.per_head_elements["SQK"]["write"] == 1024**2
    df = evaluate_grid("attention-3pass", auto, "two-level", n=[1024, 8192], d=64,
                       sram_bytes=row_fits)
    assert list(df.fits) == [True, True]
    assert df.hbm_write_SQK.tolist() == [0, 8192**2]


def test_fused_2pass_partials():
    N, d, Br, Bc = 512, 32, 64, 128
    Tc = N // Bc
    m = get_mapping("fused-2pass", block_q=Br, block_kv=Bc, row_policy="spill")
    r, w, _ = per_head("attention-2pass", m, n=N, e=d)
    assert w["LM"] == w["SLD"] == N * Tc and w["SLNV"] == N * Tc * d
    assert r["LM"] == w["LM"] and r["SLNV"] == w["SLNV"]
    assert r["K"] == (N // Br) * N * d


def test_decode_splitk():
    P, L, d, Br, Bc, s = 4, 8192, 128, 16, 64, 8
    m = get_mapping("decode-splitk", block_q=Br, block_kv=Bc, split_kv=s)
    r, w, _ = per_head("decode-splitk", m, n=P, kv_len=L, e=d)
    assert r["K"] == L * d and r["V"] == L * d and r["Q"] == s * P * d
    assert w["PO"] == s * P * d == r["PO"] and w["LSE"] == s * P == r["LSE"]
    assert w["O"] == P * d


def test_linear_and_lightning():
    N, d, B = 1024, 64, 128
    r, w, _ = per_head("linear", get_mapping("linear", block_q=B, block_kv=B), n=N, e=d)
    assert r == {"K": N * d, "V": N * d, "KV": (N // B) * d * d, "KS": (N // B) * d, "Q": N * d}
    assert w == {"KV": d * d, "KS": d, "O": N * d}
    r, w, _ = per_head("lightning2", get_mapping("lightning2", block_q=64), n=N, e=d)
    assert r == {"Q": N * d, "K": N * d, "V": N * d} and w == {"O": N * d}
    with pytest.raises(IosimError, match="kv-len must equal"):
        evaluate_arrays("lightning2", "lightning2", "two-level", n=64, kv_len=128, e=16)


# --------------------------------------------------------------------------- GQA


def packed_kv_keys(N, K, G, BM, Bc, causal=False, off=0):
    """Keys one K/V head's programs load when FA2 packs G query heads into the rows of a
    program, as the generated kernel does: row r is query r // G; program i covers rows
    [i BM, (i+1) BM) and loads key tiles j with j Bc <= (its last query) + off."""
    total = 0
    for i in range(cdiv(N * G, BM)):
        q_hi = min(((i + 1) * BM - 1) // G, N - 1)
        for j in range(cdiv(K, Bc)):
            if not causal or j * Bc <= q_hi + off:
                total += min(Bc, K - j * Bc)
    return total


def test_gqa_packed_hand_count_8k():
    """N = 8192, d = 128, 32 query heads over 8 K/V heads (G = 4), BLOCK_M = 128: a
    program covers 32 queries of the 4 heads, so each K/V head's K and V are read
    ceil(8192 * 4 / 128) = 256 times, not once per query head (4 x 64)."""
    N, d, H, Hkv, BM, Bc = 8192, 128, 32, 8, 128, 64
    m = get_mapping("fa2", block_q=BM, block_kv=Bc)
    r, w, res = per_head("attention-1pass", m, hw="h100", n=N, e=d, heads=H, kv_heads=Hkv)
    G = H // Hkv
    assert r["K"] == r["V"] == 256 * N * d                   # per K/V head
    assert r["Q"] == G * N * d and w["O"] == G * N * d and w["LSE"] == G * N
    smem = res["levels"]["SMEM"][0][0]
    bf16 = 2
    assert smem == bf16 * (Hkv * 2 * 256 * N * d + H * N * d)   # K, V per K/V head; Q per head
    # FLOPs per query head are those of one head of plain attention: 4 N^2 d matmul FLOPs
    flops = res["flops"]["matmul"][0]
    assert flops == H * 4 * N * N * d


@pytest.mark.parametrize("N,K,G,BM,Bc", [(100, 100, 3, 64, 32), (8, 8, 2, 4, 2),
                                         (257, 300, 5, 48, 40), (64, 64, 4, 16, 16)])
@pytest.mark.parametrize("causal", [False, True])
def test_gqa_packed_counts_brute_force(N, K, G, BM, Bc, causal):
    d = 16
    m = get_mapping("fa2", block_q=BM, block_kv=Bc)
    r, w, _ = per_head("attention-1pass", m, n=N, kv_len=K, e=d, heads=G, kv_heads=1,
                       causal=causal)
    keys = packed_kv_keys(N, K, G, BM, Bc, causal, off=0)
    assert r["K"] == keys * d == r["V"]
    assert r["Q"] == G * N * d and w["O"] == G * N * d


def test_gqa_packed_causal_small_by_hand():
    """N = 8, G = 2, BLOCK_M = 4, BLOCK_N = 2, causal: the 4 programs cover queries {0,1},
    {2,3}, {4,5}, {6,7}, so they load 1, 2, 3 and 4 key tiles of 2 keys: 20 keys."""
    m = get_mapping("fa2", block_q=4, block_kv=2)
    r, _, _ = per_head("attention-1pass", m, n=8, e=1, heads=2, kv_heads=1, causal=True)
    assert r["K"] == 20


def test_gqa_same_with_or_without_a_group_rank():
    """attention-gqa (G in Q and O) and attention-1pass with grouped heads are the same
    computation: same counts and FLOPs."""
    kw = dict(n=300, e=32, heads=12, kv_heads=3, causal=True)
    m = get_mapping("fa2", block_q=64, block_kv=32)
    a = evaluate_arrays("attention-gqa", m, "two-level", **kw)
    b = evaluate_arrays("attention-1pass", m, "two-level", **kw)
    for key in ("model_reads", "model_writes"):
        assert {t: int(v[0]) for t, v in a[key].items()} == {t: int(v[0]) for t, v in b[key].items()}
    for cls in ("matmul", "exp"):
        assert a["flops"][cls][0] == pytest.approx(b["flops"][cls][0])


def test_gqa_one_program_per_query_head_when_not_packed():
    N, d, G, Br = 512, 64, 4, 128
    m = get_mapping("fa2", block_q=Br, block_kv=64, pack_group=False)
    r, w, _ = per_head("attention-1pass", m, n=N, e=d, heads=G, kv_heads=1)
    assert r["K"] == G * (N // Br) * N * d and r["Q"] == G * N * d and w["O"] == G * N * d
    # FA1 keeps one program per query head: K and V once per query head
    r, _, _ = per_head("attention-1pass", get_mapping("fa1", block_q=64, block_kv=64),
                       n=N, e=d, heads=G, kv_heads=1)
    assert r["K"] == G * N * d


def test_gqa_flops_per_query_head_unchanged():
    one = evaluate_arrays("attention-1pass", "fa2", "two-level", n=512, e=64, heads=32)
    grp = evaluate_arrays("attention-1pass", "fa2", "two-level", n=512, e=64, heads=32,
                          kv_heads=8)
    for cls in ("matmul", "exp", "other"):
        assert grp["flops"][cls][0] == one["flops"][cls][0]


def test_gqa_heads_must_divide():
    with pytest.raises(IosimError, match=r"heads \(32\) must be a multiple of kv-heads \(5\)"):
        evaluate_arrays("attention-1pass", "fa2", "two-level", n=64, e=16, heads=32,
                        kv_heads=5)


# --------------------------------------------------------------------------- structure


def test_causal_offset_comes_from_the_cascades_mask():
    """attention-1pass's mask is m > p: under split-K decode with 4 queries and 8192 keys
    the 4 queries see keys 0..3 only, one tile of 64 keys. The decode cascade's mask is
    m > p + M - P: under FA2 its one query sees all 8192 keys (128 tiles), as under its
    own mapping."""
    d = 128
    m = get_mapping("decode-splitk", block_q=16, block_kv=64, split_kv=8)
    r, _, _ = per_head("attention-1pass", m, n=4, kv_len=8192, e=d, causal=True)
    assert r["K"] == 64 * d
    r, _, _ = per_head("decode-splitk", get_mapping("fa2"), n=1, kv_len=8192, e=d,
                       causal=True)
    assert r["K"] == 8192 * d
    r, _, _ = per_head("decode-splitk", m, n=1, kv_len=8192, e=d, causal=True)
    assert r["K"] == 8192 * d


def test_masked_cascade_reads_the_mask_tiles():
    N = 256
    r, _, res = per_head("attention-masked", get_mapping("fa2", block_q=64, block_kv=64,
                                                         cascade="attention-masked"),
                         n=N, e=32)
    assert r["Mask"] == N * N
    assert res["dtype_roles"]["mask"] == 1.0


# --------------------------------------------------------------------------- FLOPs


def test_flops_from_the_cascade():
    N, d, Bc = 1024, 64, 64
    rep = evaluate("attention-1pass", get_mapping("fa2", block_q=128, block_kv=Bc),
                   "two-level", n=N, d=d)
    assert rep.flops["matmul"] == 2 * (2 * N * N * d)       # QK^T and PV, multiply + add
    assert rep.flops["exp"] == N * N + N * (N // Bc)         # exp of scores + rescale factors
    rep3 = evaluate("attention-3pass", "unfused", "two-level", n=N, d=d, check=False)
    assert rep3.flops["matmul"] == 4 * N * N * d and rep3.flops["exp"] == N * N


def test_causal_flops_scale_with_visited_blocks():
    N, d, B = 1024, 64, 128
    full = evaluate("attention-1pass", get_mapping("fa2", block_q=B, block_kv=B),
                    "two-level", n=N, d=d)
    cz = evaluate("attention-1pass", get_mapping("fa2", block_q=B, block_kv=B),
                  "two-level", n=N, d=d, causal=True)
    T = N // B
    assert cz.flops["matmul"] == pytest.approx(full.flops["matmul"] * (T * (T + 1) / 2) / T**2)


def test_batch_heads_multiply_through_and_roofline_terms():
    # the tile model alone (l2="off"): every head's reads reach HBM, so they multiply through
    rep = evaluate("attention-1pass", "fa2", "h100", n=2048, d=64, batch=2, heads=8, l2="off")
    one = evaluate("attention-1pass", "fa2", "h100", n=2048, d=64, l2="off")
    assert rep.backing.read_bytes == 16 * one.backing.read_bytes
    assert rep.flops["matmul"] == 16 * one.flops["matmul"]
    hbm = rep.backing.read_bytes + rep.backing.write_bytes
    assert rep.times["HBM"] == pytest.approx(hbm / 3.35e12)
    assert rep.times["matmul"] == pytest.approx(rep.flops["matmul"] / 989e12)
    assert rep.roofline_s == max(rep.times.values())
    # the parallel time model is never faster than the roofline's bound
    assert rep.time_s >= rep.roofline_s
    # energy: HBM only, 3.9 pJ/bit
    assert rep.energy_j == pytest.approx(hbm * 8 * 3.9e-12)


# --------------------------------------------------------------------------- the grid


def test_grid_matches_single_evaluations():
    ns = [256, 1000, 4096]
    bqs = [32, 64, 128]
    df = evaluate_grid("attention-1pass", "fa2", "h100", n=ns, d=64, block_q=bqs,
                       block_kv=[32, 128], causal=[False, True])
    assert len(df) == 3 * 3 * 2 * 2
    for _, row in df.sample(8, random_state=0).iterrows():
        rep = evaluate("attention-1pass", get_mapping("fa2", block_q=int(row.block_q),
                                                      block_kv=int(row.block_kv)),
                       "h100", n=int(row.n), d=64, causal=bool(row.causal))
        assert row.hbm_read_bytes == rep.backing.read_bytes
        assert row.flops_matmul == rep.flops["matmul"]
        assert row.time_s == pytest.approx(rep.time_s)


def test_grid_broadcast_mode_and_errors():
    df = evaluate_grid("attention-1pass", "fa2", "two-level", n=[128, 256], d=[32, 64],
                       product=False)
    assert list(df.n) == [128, 256] and list(df.e) == [32, 64]
    with pytest.raises(IosimError, match="positive integer"):
        evaluate_grid("attention-1pass", "fa2", "two-level", n=[128, 0], d=64)
    with pytest.raises(IosimError, match="broadcast"):
        evaluate_grid("attention-1pass", "fa2", "two-level", n=[1, 2, 3], d=[32, 64],
                      product=False)


# --------------------------------------------------------------------------- symbolic


def test_symbolic_fa1_equals_the_paper_count():
    from iosim.bounds import N, d, M, get_bound
    m = get_mapping("fa1", init_writes=False)
    sym = symbolic_traffic(m)
    assert sp.simplify(sym["total"] - get_bound("flash_attention_alg1_exact").expr) == 0


def test_symbolic_fa2_closed_form():
    from iosim.bounds import N, d
    Br, Bc = sp.symbols("Br Bc", positive=True, integer=True)
    sym = symbolic_traffic("fa2")
    assert sp.simplify(sym["K"]["read"] - N * d * sp.ceiling(N / Br)) == 0
    assert sp.simplify(sym["total"] - (2 * N * d + 2 * N * d * sp.ceiling(N / Br) + N)) == 0


@pytest.mark.parametrize("name", ["fa2", "fa1", "unfused", "fused-3pass", "fused-2pass",
                                  "decode-splitk", "linear", "lightning2", "saha-ye"])
def test_symbolic_equals_numeric(name):
    from iosim.bounds import N, d, M
    m = get_mapping(name)
    if name in ("fa1",):
        m = m.with_(block_q=40, block_kv=72)
    if name == "saha-ye":
        m = m.with_(block_q=20, block_kv=20)
    if name == "fused-2pass":
        m = m.with_(row_policy="spill")
    sym = symbolic_traffic(m)
    Br, Bc, B, splits = sp.symbols("Br Bc B splits", positive=True, integer=True)
    n, dd = 700, 48
    subs = {N: n, d: dd, Br: m.block_q, Bc: m.block_kv, B: m.block_q, splits: m.split_kv}
    reads, writes, _ = per_head(m.cascade, m, n=n, e=dd, sram_bytes=10**9)
    assert int(sym["total"].subs(subs)) == sum(reads.values()) + sum(writes.values())


def test_symbolic_causal_sum_evaluates_to_numeric():
    from iosim.bounds import N, d
    sym = symbolic_traffic(get_mapping("fa2", block_q=48, block_kv=32), causal=True)
    Br, Bc = sp.symbols("Br Bc", positive=True, integer=True)
    val = sym["K"]["read"].subs({N: 300, d: 16, Br: 48, Bc: 32}).doit()
    reads, _, _ = per_head("attention-1pass", get_mapping("fa2", block_q=48, block_kv=32),
                           n=300, e=16, causal=True)
    assert int(val) == reads["K"]


def test_gqa_decode_reads_kv_once_per_kv_head():
    """32 query heads on 8 K/V heads, one query token, 128K keys, d = 128: the split-K decode
    packs a group's 4 query heads into the rows of each split's program, so K and V are read
    once per K/V head: 2 * 8 * 131072 * 128 * 2 bytes together."""
    rep = evaluate("decode-splitk", "decode-splitk", "h100", n=1, kv_len=131072, d=128,
                   heads=32, kv_heads=8)
    hbm = rep.level("HBM").per_tensor
    assert hbm["K"]["read_bytes"] + hbm["V"]["read_bytes"] == 2 * 8 * 131072 * 128 * 2
    assert hbm["O"]["write_bytes"] == 32 * 128 * 2
    mha = evaluate("decode-splitk", "decode-splitk", "h100", n=1, kv_len=131072, d=128,
                   heads=32)
    assert mha.level("HBM").per_tensor["K"]["read_bytes"] == 4 * hbm["K"]["read_bytes"]
    assert rep.time_s < mha.time_s
