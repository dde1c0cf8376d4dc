"""The tile-level simulator: exact agreement with the analytical model (property tests),
bounded buffers, and the LRU cache level."""
from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from iosim.errors import IosimError
from iosim.mapping import Shapes, get_mapping
from iosim.trace import LRUCache, simulate
from iosim.traffic import evaluate_arrays

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def analytic(casc, m, shapes, hw="two-level", sram_bytes=None):
    r = evaluate_arrays(casc, m, hw, n=shapes.n, e=shapes.e, f=shapes.f, kv_len=shapes.kv_len,
                        causal=shapes.causal, causal_offset=shapes.causal_offset,
                        group=shapes.group, sram_bytes=sram_bytes)
    return ({t: int(v[0]) for t, v in r["model_reads"].items()},
            {t: int(v[0]) for t, v in r["model_writes"].items()}, r)


shape_st = st.builds(
    lambda n, kv, e, f, causal, off: Shapes(n=n, kv_len=kv, e=e, f=f, causal=causal,
                                            causal_offset=off),
    n=st.integers(1, 300), kv=st.integers(1, 300), e=st.integers(1, 48), f=st.integers(1, 48),
    causal=st.booleans(), off=st.one_of(st.none(), st.integers(-100, 100)))


@SETTINGS
@given(shapes=shape_st, bq=st.integers(1, 96), bk=st.integers(1, 96))
def test_fa2_trace_equals_analytic(shapes, bq, bk):
    m = get_mapping("fa2", block_q=bq, block_kv=bk)
    t = simulate("attention-1pass", m, None, shapes)
    reads, writes, _ = analytic("attention-1pass", m, shapes)
    assert t.reads == reads and t.writes == writes


@SETTINGS
@given(shapes=shape_st, bq=st.integers(1, 96), bk=st.integers(1, 96), init=st.booleans())
def test_fa1_trace_equals_analytic(shapes, bq, bk, init):
    m = get_mapping("fa1", block_q=bq, block_kv=bk, init_writes=init)
    t = simulate("flash1", m, None, shapes)
    reads, writes, _ = analytic("flash1", m, shapes)
    assert t.reads == reads and t.writes == writes


@SETTINGS
@given(n=st.integers(1, 200), e=st.integers(1, 40), sram=st.integers(4, 3000),
       causal=st.booleans())
def test_fa1_paper_blocks_trace_equals_analytic(n, e, sram, causal):
    """Paper block sizes from the SRAM size (in elements of bf16)."""
    shapes = Shapes(n=n, e=e, causal=causal)
    t = simulate("flash1", "fa1", None, shapes, sram_bytes=2 * sram, check_capacity=False)
    reads, writes, _ = analytic("flash1", get_mapping("fa1"), shapes, sram_bytes=2 * sram)
    assert t.reads == reads and t.writes == writes


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shapes=shape_st, b=st.integers(1, 64),
       name=st.sampled_from(["unfused", "fused-3pass", "fused-2pass", "decode-splitk",
                             "saha-ye", "linear"]),
       policy=st.sampled_from(["buffer", "spill", "recompute"]), split=st.integers(1, 6))
def test_every_mapping_trace_equals_analytic(shapes, b, name, policy, split):
    casc = {"unfused": "attention-3pass", "fused-3pass": "attention-3pass",
            "fused-2pass": "attention-2pass", "decode-splitk": "decode-splitk",
            "saha-ye": "attention-3pass", "linear": "linear"}[name]
    if name == "fused-2pass" and policy == "recompute":
        policy = "spill"
    m = get_mapping(name, block_q=b, block_kv=b if name == "saha-ye" else b + 3,
                    row_policy=policy, split_kv=split)
    t = simulate(casc, m, None, shapes)
    reads, writes, _ = analytic(casc, m, shapes)
    assert t.reads == reads and t.writes == writes


def test_lightning2_and_gqa_trace():
    s = Shapes(n=200, e=24)
    m = get_mapping("lightning2", block_q=48)
    assert simulate("lightning2", m, None, s).reads == analytic("lightning2", m, s)[0]
    g = Shapes(n=150, e=16, group=3, causal=True)
    m = get_mapping("fa2", block_q=32, block_kv=40, cascade="attention-gqa")
    t = simulate("attention-gqa", m, None, g)
    assert (t.reads, t.writes) == analytic("attention-gqa", m, g)[:2]


def test_peak_buffers_equal_the_analytic_footprint():
    s = Shapes(n=1000, e=64)
    for name, casc in [("fa2", "attention-1pass"), ("saha-ye", "attention-3pass"),
                       ("fused-2pass", "attention-2pass")]:
        m = get_mapping(name, block_q=40, block_kv=40)
        t = simulate(casc, m, "h100", s if name != "fused-2pass" else Shapes(n=300, e=64))
        _, _, r = analytic(casc, m, s if name != "fused-2pass" else Shapes(n=300, e=64),
                           hw="h100")
        for lv, (need, _cap) in r["footprint"].items():
            assert t.peak_bytes[lv] == float(need[0]), (name, lv)


def test_capacity_overflow_is_an_error():
    m = get_mapping("fa2", block_q=256, block_kv=256)
    # Q, K, V tiles of 256 x 192 bf16 = 288 KiB of SMEM (227 KiB usable)
    with pytest.raises(IosimError, match=r"overflows SMEM: 288\.0 KiB needed .* 227\.0 KiB fit"):
        simulate("attention-1pass", m, "h100", Shapes(n=1024, e=192))
    # the accumulators live in registers: O (256 x 192 fp32) and the 256 x 256 score tile
    with pytest.raises(IosimError, match="overflows RF"):
        simulate("attention-1pass", m, "h100", Shapes(n=1024, e=192), sram_bytes=2**20)
    simulate("attention-1pass", m, "h100", Shapes(n=1024, e=192), sram_bytes=2**20,
             acc_bytes=2**20)


def test_trace_speed_one_head_16k():
    m = get_mapping("fa2", block_q=128, block_kv=128)
    t0 = time.perf_counter()
    t = simulate("attention-1pass", m, "h100", Shapes(n=16384, e=128))
    assert time.perf_counter() - t0 < 5.0
    assert t.reads["K"] == 128 * 16384 * 128


# --------------------------------------------------------------------------- the LRU cache


def test_lru_basics():
    c = LRUCache(capacity_bytes=256, line_bytes=128)
    c.access([1, 2], [128, 128], "A", write=False)       # two misses
    c.access([1], [128], "A", write=False)               # hit, 1 becomes most recent
    c.access([3], [128], "B", write=True)                # evicts 2 (clean)
    c.access([2], [128], "A", write=False)               # miss again, evicts 1
    assert c.stats["read_miss_bytes"] == 3 * 128 and c.stats["read_hit_bytes"] == 128
    c.access([4], [128], "A", write=False)               # evicts dirty 3 -> written back
    assert c.backing_writes == {"B": 128}
    c.flush()
    assert c.stats["backing_write_bytes"] == 128


def test_l2_large_cache_reads_each_input_once():
    """With a cache larger than the whole working set, HBM reads are Q, K, V once."""
    N, d = 1024, 64
    l2 = LRUCache(capacity_bytes=64 * 2**20, line_bytes=128)
    t = simulate("attention-1pass", get_mapping("fa2", block_q=128, block_kv=64), "h100",
                 Shapes(n=N, e=d), l2=l2, heads=2, concurrent=4)
    assert t.l2["backing_read_bytes"] == 2 * 3 * N * d * 2          # Q, K, V, two heads, bf16
    assert t.l2["backing_write_bytes"] == 2 * (N * d * 2 + N * 4)   # O (bf16) + LSE (fp32)


def test_l2_tiny_cache_sees_the_tile_traffic():
    """A cache too small to hold anything reuses nothing: HBM = the SMEM-level model."""
    N, d = 512, 64                                  # rows of 64 bf16 = 128 B = one line
    l2 = LRUCache(capacity_bytes=64, line_bytes=128)
    m = get_mapping("fa2", block_q=64, block_kv=64, write_lse=False)
    t = simulate("attention-1pass", m, "h100", Shapes(n=N, e=d), l2=l2)
    model_bytes = 2 * sum(t.reads.values())
    assert t.l2["backing_read_bytes"] == model_bytes


def test_l2_grid_order_changes_reuse():
    """Query-major (a head's tiles together) reuses K/V in a small L2; head-major with many
    concurrent heads does not."""
    N, d, H = 2048, 64, 8
    kv_bytes = 2 * N * d * 2                          # K and V of one head
    m = get_mapping("fa2", block_q=128, block_kv=64)

    def hbm(order):
        l2 = LRUCache(capacity_bytes=1.5 * kv_bytes, line_bytes=128, granularity="tile")
        t = simulate("attention-1pass", m, "h100", Shapes(n=N, e=d), l2=l2, heads=H,
                     concurrent=8, grid_order=order)
        return t.l2["backing_read_bytes"]

    assert hbm("query-major") < hbm("head-major")


def test_block_mask_and_auto_policy_trace():
    s = Shapes(n=300, e=32, causal=True)
    m = get_mapping("fa2", block_q=48, block_kv=40, cascade="attention-blocksparse")
    t = simulate("attention-blocksparse", m, None, s)
    reads, writes, _ = analytic("attention-blocksparse", m, s)
    assert (t.reads, t.writes) == (reads, writes)
    assert reads["BlockMask"] == sum(1 for i in range(7) for j in range(8)
                                     if j * 40 <= min((i + 1) * 48, 300) - 1)
    auto = get_mapping("fused-3pass", block_q=32, block_kv=32)
    for sram, pol in ((10**7, "buffer"), (20000, "spill")):
        t = simulate("attention-3pass", auto, "two-level", Shapes(n=512, e=32), sram_bytes=sram)
        assert ("SQK" in t.writes) == (pol == "spill")
