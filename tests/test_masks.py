"""Masks as regions of the (query, key) domain: read from a cascade's structure
(cascades.masks), and a sliding-window band costed as a band (traffic and FLOPs) against
counts derived by hand and by brute force over the tiles."""
from __future__ import annotations

import numpy as np
import pytest

import cascades
from cascades.masks import mask_region
from iosim.mapping import get_mapping
from iosim.traffic import evaluate


def test_regions_of_the_library():
    r = mask_region(cascades.load("attention-1pass"))
    assert (r.kind, r.switch, r.upper.value({}, {}), r.lower) == ("causal", "causal", 0, None)
    d = mask_region(cascades.load("decode-splitk"))        # end-aligned: m <= p + M - P
    assert d.kind == "causal" and d.upper.value({"M": 100, "P": 3}, {}) == 97
    w = mask_region(cascades.load("attention-window"))
    assert w.kind == "window" and w.lower.value({}, {"window": 256}) == -255
    assert mask_region(cascades.load("attention-blocksparse")).kind == "block"
    assert mask_region(cascades.load("attention-masked")).kind == "tensor"
    assert mask_region(cascades.load("linear")).kind == "none"


def test_a_band_written_other_ways_reads_the_same():
    base = """
cascade b
param causal = false
param window = 10
input  Q[P, E]
input  K[M, E]
output S[M, P]
QK[m, p] = sum[e] Q[p, e] * K[m, e]
S[m, p] = where(causal and ({cond}), -inf, QK[m, p])
"""
    for cond in ("m > p or p - m >= window", "p - m >= window or m > p",
                 "m - p > 0 or m <= p - window", "-m + p >= window or p < m"):
        r = mask_region(cascades.parse(base.format(cond=cond)))
        assert r.kind == "window", cond
        assert r.upper.value({}, {"window": 10}) == 0
        assert r.lower.value({}, {"window": 10}) == -9


def _band_tiles(n, kv, br, bc, window, off=0):
    """Brute force over the tile pairs of one head: (K elements loaded / d, (row, key) pairs
    of whole visited tiles). A tile pair is visited when some (p, m) in it has
    p - window < m <= p + off: m - p runs over keys[0] - rows[-1] .. keys[-1] - rows[0]."""
    keys_loaded = pairs = 0
    for i in range(-(-n // br)):
        r0, r1 = i * br, min((i + 1) * br, n) - 1
        for j in range(-(-kv // bc)):
            k0, k1 = j * bc, min((j + 1) * bc, kv) - 1
            if k1 - r0 >= 1 - window and k0 - r1 <= off:
                keys_loaded += k1 - k0 + 1
                pairs += (r1 - r0 + 1) * (k1 - k0 + 1)
    return keys_loaded, pairs


def test_sliding_window_traffic_and_flops_by_hand():
    """N = 4096, window 256, 128 x 64 tiles, d = 128: query tile i sees keys 128i - 255 ..
    128i + 127, i.e. key tiles 2i - 4 .. 2i + 1 (2 tiles for i = 0, 4 for i = 1, 6 after):
    186 key tiles, 186 * 64 * 128 = 1,523,712 elements of K (and of V) per head, and
    186 * 128 * 64 (row, key) pairs of whole tiles for the FLOPs."""
    rep = evaluate("attention-window", "fa2", "h100", n=4096, d=128, causal=True, l2="off")
    per = rep.per_head_elements
    assert per["K"]["read"] == per["V"]["read"] == 186 * 64 * 128
    assert per["Q"]["read"] == 4096 * 128
    assert rep.flops["matmul"] == 4 * 128 * 186 * 128 * 64
    total = sum(v["read"] + v["write"] for v in per.values())
    assert total == 4_100_096        # Q, K, V, O and the LSE: 4.10 M against 34.6 M dense
    dense = evaluate("attention-window", "fa2", "h100", n=4096, d=128, causal=False, l2="off")
    assert dense.per_head_elements["K"]["read"] == 4096 * 128 * 32


@pytest.mark.parametrize("n,kv,br,bc,window", [(1000, 1000, 64, 32, 100), (777, 777, 32, 64, 50),
                                               (300, 300, 128, 16, 1), (2048, 2048, 16, 128, 1000)])
def test_sliding_window_counts_match_brute_force(n, kv, br, bc, window):
    text = cascades.library.text("attention-window").replace("param window = 256",
                                                             f"param window = {window}")
    c = cascades.parse(text)
    rep = evaluate(c, get_mapping("fa2", block_q=br, block_kv=bc), "two-level", n=n, d=16,
                   causal=True, sram_bytes=1 << 24, l2="off")
    keys, pairs = _band_tiles(n, kv, br, bc, window)
    assert rep.per_head_elements["K"]["read"] == keys * 16
    assert rep.flops["matmul"] == 4 * 16 * pairs


def test_window_executes_exactly():
    rng = np.random.default_rng(5)
    Q, K, V = (rng.standard_normal((203, 16)) for _ in range(3))
    o = cascades.execute(cascades.load("attention-window"), dict(Q=Q, K=K, V=V), causal=True,
                         window=37, block_kv=16)["O"]
    s = Q @ K.T / 4.0
    i = np.arange(203)
    s[(i[None, :] > i[:, None]) | (i[:, None] - i[None, :] >= 37)] = -np.inf
    p = np.exp(s - s.max(axis=1, keepdims=True))
    assert np.allclose(o, (p / p.sum(axis=1, keepdims=True)) @ V, rtol=1e-12, atol=1e-14)


def test_window_time_follows_the_band():
    full = evaluate("attention-window", "fa2", "h100", n=65536, d=128, heads=8, causal=False)
    band = evaluate("attention-window", "fa2", "h100", n=65536, d=128, heads=8, causal=True)
    # 6 of 1024 key tiles per query tile: the band's launch is two orders of magnitude shorter
    assert band.time_s < full.time_s / 50
    (k,) = band.time["kernels"]
    # the longest program: a query tile's rows plus the window, ceil(383 / 64) + 1 = 7 tiles
    step = (k["program_s"] - k["start_s"]) / k["steps_per_program"]
    assert k["longest_program_s"] == pytest.approx(k["start_s"] + 7 * step)


def test_block_density_scales_the_key_tiles_affinely():
    """attention-blocksparse, N = 4096, d = 128, 64 x 64 blocks: at density rho each query
    tile visits rho of the 64 key tiles (with a block list: its mask entries too). Q and O
    move once; K, V, the mask reads and the score FLOPs are rho times the dense ones."""
    reps = {rho: evaluate("attention-blocksparse", None, "h100", n=4096, d=128,
                          block_density=rho, l2="off") for rho in (1.0, 0.5, 0.1)}
    for rho, r in reps.items():
        per = r.per_head_elements
        assert per["Q"]["read"] == 4096 * 128 and per["O"]["write"] == 4096 * 128
        assert per["K"]["read"] == pytest.approx(rho * 64 * 4096 * 128)
        assert per["BlockMask"]["read"] == pytest.approx(rho * 64 * 64)
        assert r.flops["matmul"] == pytest.approx(rho * 4 * 4096 * 4096 * 128)
    # affine in rho: the three points lie on one line
    t = {rho: sum(v["read"] + v["write"] for v in r.per_head_elements.values())
         for rho, r in reps.items()}
    slope = (t[1.0] - t[0.1]) / 0.9
    assert t[0.5] == pytest.approx(t[0.1] + 0.4 * slope)
    # the time falls with the density (the launch stays compute-bound)
    assert reps[0.1].time_s < reps[0.5].time_s < reps[1.0].time_s


def test_block_density_needs_a_block_mask():
    from iosim.errors import IosimError
    with pytest.raises(IosimError, match="no block mask"):
        evaluate("attention-1pass", None, "h100", n=1024, d=64, block_density=0.5)
    with pytest.raises(IosimError, match="block-density"):
        evaluate("attention-blocksparse", None, "h100", n=1024, d=64, block_density=1.5)
