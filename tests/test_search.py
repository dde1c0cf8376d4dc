"""Mapping search: exhaustive optimality on small problems, buffer accounting, the ski-slope
shape, speed."""
from __future__ import annotations

import time

import numpy as np
import pytest

from iosim.errors import IosimError
from iosim.search import candidate_tiles, search, search_frame


def cdiv(a, b):
    return -(-a // b)


def fa2_elements(N, d, Br):
    """FA2 (self-attention): Q once, K and V once per query tile, O and LSE once."""
    return N * d + 2 * N * d * cdiv(N, Br) + N * d + N


def fa2_footprint_elements(d, Br, Bc):
    """Q, K, V tiles + O accumulator + running max and sum + the score tile."""
    return Br * d + 2 * Bc * d + Br * d + 2 * Br + Br * Bc


def test_candidates_need_not_divide():
    t = candidate_tiles(1000)
    assert 1 in t and 64 in t and 1000 in t and any(1000 % x for x in t)
    assert t.max() <= 1000


@pytest.mark.parametrize("sram_el", [100, 300, 700, 1500, 5000])
def test_fa2_search_is_exhaustive_on_small_problems(sram_el):
    N, d = 64, 8
    best = min((fa2_elements(N, d, br), br) for br in range(1, N + 1) for bc in range(1, N + 1)
               if fa2_footprint_elements(d, br, bc) <= sram_el)
    res = search("attention-1pass", "two-level", n=N, d=d, sram_bytes=[2 * sram_el],
                 mappings=["fa2"], dtype="bf16")
    row = res.frame.iloc[0]
    assert row["traffic_elements"] == best[0]
    assert fa2_footprint_elements(d, int(row.block_q), int(row.block_kv)) <= sram_el


def test_state_is_counted_in_the_buffer():
    """Without the O accumulator, max, sum and score tile, Br = 64, Bc = 1 would fit
    (Q, K, V tiles: 64*8 + 2*8 = 528 elements); with them it needs 1232 > 1100."""
    N, d = 64, 8
    res = search("attention-1pass", "two-level", n=N, d=d, sram_bytes=[2 * 1100],
                 mappings=["fa2"])
    row = res.frame.iloc[0]
    assert int(row.block_q) < 64
    assert fa2_footprint_elements(d, int(row.block_q), int(row.block_kv)) <= 1100


def test_ski_slope_shape():
    N, d = 2048, 128
    srams = 2 * np.geomspace(256, 4 * N * d, 16)            # bytes of bf16
    res = search("attention-1pass", "two-level", n=N, d=d, sram_bytes=srams)
    f = res.frame
    assert f["fits"].all()
    t = f["traffic_elements"].to_numpy()
    assert np.all(np.diff(t) <= 0)                            # never increases with SRAM
    assert f.iloc[0]["variant"] == "saha-ye"                  # M << d^2: Saha & Ye's tiling
    assert f.iloc[-1]["variant"] == "fa2"                     # M >> d^2: FlashAttention
    assert t[-1] == 4 * N * d + N                             # Q, K, V once, O and LSE once
    assert np.all(f["ratio_to_bound"] >= 1.0 - 1e-12)


def test_every_cascade_searches():
    srams = [4 * 1024, 64 * 1024, 1024 * 1024]
    for casc, kw in [("attention-3pass", dict(n=1024, d=64)), ("attention-2pass", dict(n=1024, d=64)),
                     ("decode-splitk", dict(n=1, kv_len=8192, d=128)),
                     ("linear", dict(n=1024, d=64)), ("lightning2", dict(n=1024, d=64)),
                     ("flash1", dict(n=1024, d=64))]:
        res = search(casc, "two-level", sram_bytes=srams, **kw)
        assert len(res.frame) == 3
        assert res.frame["fits"].iloc[-1], casc


def test_decode_reads_the_kv_cache_once_with_enough_sram():
    res = search("decode-splitk", "two-level", n=1, kv_len=8192, d=128, sram_bytes=[1 << 20])
    row = res.frame.iloc[0]
    kv = 2 * 8192 * 128
    assert kv <= row["traffic_elements"] <= kv + 2 * 128 + 64 * (128 + 1) * 2


def test_time_objective_is_never_slower():
    # on a preset without sustained rates both objectives search the same tiles
    kw = dict(n=4096, d=128, sram_bytes=[64 * 1024, 227 * 1024])
    h = search("attention-1pass", "two-level", objective="traffic", **kw).frame
    t = search("attention-1pass", "two-level", objective="time", **kw).frame
    assert np.all(t["time_s"].to_numpy() <= h["time_s"].to_numpy() + 1e-15)


def test_gpu_time_search_is_the_fastest_kernel_tiling_by_brute_force():
    """On the h100 preset the time objective returns the fastest of every tiling a kernel
    takes (power-of-two tiles, 4/8 warps, 2-4 stages, fits shared memory at its depth, no
    register spills), found here by evaluating each one separately."""
    from iosim.mapping import get_mapping
    from iosim.timing.model import registers_per_thread
    from iosim.traffic import evaluate
    res = search("attention-1pass", "h100", n=2048, d=64, batch=2, heads=8, objective="time")
    best = res.frame.iloc[0]
    times = {}
    for bq in (16, 32, 64, 128, 256):
        for bk in (16, 32, 64, 128, 256):
            for w in (4, 8):
                if registers_per_thread(block_m=bq, block_n=bk, head_dim=64, num_warps=w) > 255:
                    continue
                for st in (2, 3, 4):
                    if 2 * (bq * 64 + st * 2 * bk * 64) > 227 * 1024:
                        continue
                    m = get_mapping("fa2", block_q=bq, block_kv=bk, num_warps=w, num_stages=st)
                    try:
                        rep = evaluate("attention-1pass", m, "h100", n=2048, d=64, batch=2,
                                       heads=8)
                    except Exception:   # noqa: BLE001 - a tiling whose buffers do not fit
                        continue
                    times[(bq, bk, w, st)] = rep.time_s
    fastest = min(times.values())
    assert best["time_s"] == pytest.approx(fastest, rel=1e-12)
    # the runners-up follow in order, each behind the best by what it says
    ru = res.runners_up
    assert list(ru["time_s"]) == sorted(ru["time_s"])
    for _, r in ru.iterrows():
        assert r["behind"] == pytest.approx(r["time_s"] / best["time_s"] - 1)


def test_nothing_fits_and_errors():
    res = search("attention-1pass", "two-level", n=512, d=64, sram_bytes=[4])
    assert not res.frame["fits"].iloc[0]
    with pytest.raises(IosimError):
        search("attention-1pass", "two-level", n=0, d=64)
    with pytest.raises(IosimError):
        search("attention-1pass", "two-level", n=64, d=64, objective="speed")


def test_search_frame_keeps_point_order():
    df = search_frame("attention-1pass", "two-level", n=[1024, 512, 1024], d=64,
                      sram_bytes=[65536, 65536, 8192])
    assert list(df["n"]) == [1024, 512, 1024]
    assert list(df["sram_bytes"]) == [65536, 65536, 8192]


def test_search_speed_one_head_20_sizes():
    srams = np.geomspace(1024, 4 * 2**20, 20)
    search("attention-1pass", "two-level", n=4096, d=128, sram_bytes=srams)   # warm imports
    t0 = time.perf_counter()
    search("attention-1pass", "two-level", n=4096, d=128, sram_bytes=srams)
    assert time.perf_counter() - t0 < 0.5


def test_search_gqa_packs_query_heads():
    """8 query heads over 2 K/V heads (G = 4), N = 256, d = 32, 1 MiB of SRAM: FA2 packs the
    4 query heads into the 1024 rows of one program, so K and V are read once per K/V head:
    Q and O (G N d each), K and V (N d each), the LSE (G N)."""
    N, d, G = 256, 32, 4
    res = search("attention-1pass", "two-level", n=N, d=d, heads=8, kv_heads=2,
                 sram_bytes=[1 << 20], mappings=["fa2"])
    row = res.frame.iloc[0]
    assert row["traffic_elements"] == 2 * G * N * d + 2 * N * d + G * N
    assert int(row["block_q"]) == G * N
    assert res.shapes["group"] == G


def test_search_refuses_a_mapping_that_does_not_fit():
    with pytest.raises(IosimError, match="mapping fused-3pass needs a multi-pass softmax"):
        search("attention-1pass", "two-level", n=64, d=16, mappings=["fused-3pass"])


def test_search_of_a_renamed_decode_cascade_keeps_split_k(tmp_path):
    """Split-K variants are searched beyond 256 queries where the cascade is a split-K decode,
    read from its structure: a renamed copy searches like the library cascade."""
    from cascades.library import text
    p = tmp_path / "dec.casc"
    p.write_text(text("decode-splitk").replace("cascade decode-splitk ", "cascade dec "))
    kw = dict(n=512, kv_len=4096, d=64, sram_bytes=[1 << 16, 1 << 20])
    a = search("decode-splitk", "two-level", **kw).frame
    b = search(str(p), "two-level", **kw).frame
    assert list(a["variant"]) == list(b["variant"])
    assert list(a["traffic_elements"]) == list(b["traffic_elements"])
