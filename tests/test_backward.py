"""Tests of iosim.backward: hand-counted HBM traffic of Algorithms 0, 1, 3 and 4 of
FlashAttention (arXiv 2205.14135), the loop-nest walkers, and the Figure 2 configuration."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from iosim.backward import (
    fwd_bwd,
    flash_backward,
    flash_forward,
    paper_block_sizes,
    simulate_flash_backward,
    simulate_flash_forward,
    standard_backward,
    standard_forward,
)
from iosim.bounds import get_bound
from iosim.errors import IosimError


def test_paper_block_sizes():
    # Bc = ceil(M / 4d), Br = min(Bc, d)
    assert paper_block_sizes(65536, 64) == (256, 64)
    assert paper_block_sizes(1000, 64) == (4, 4)
    assert paper_block_sizes(257, 64) == (2, 2)
    # 192 KB of fp16 = 98304 elements, d = 64: Bc = 384
    assert paper_block_sizes(98304, 64) == (384, 64)


def test_standard_forward_algorithm0():
    # N = 8, d = 2: read Q, K (32) write S (64); read S (64) write P (64); read P (64), V (16) write O (16)
    c = standard_forward(8, 2)
    assert c.read_elements == 16 + 16 + 64 + 64 + 16 == 176
    assert c.write_elements == 64 + 64 + 16 == 144
    assert c.elements == 4 * 8 * 2 + 4 * 64
    assert c.flops["matmul"] == 2 * 2 * 64 * 2


def test_standard_backward_algorithm3():
    # 7 N^2 + 8 N d: reads P twice, dP once, dS twice (5 N^2), writes dP, dS (2 N^2);
    # N d: reads dO twice, V, K, Q (5), writes dV, dQ, dK (3)
    N, d = 16, 4
    c = standard_backward(N, d)
    assert c.elements == 7 * N * N + 8 * N * d
    assert c.read_elements == 5 * N * N + 5 * N * d
    assert c.flops["matmul"] == 8 * N * N * d


def test_standard_switches_add_nxn_passes():
    N, d = 16, 4
    base = standard_forward(N, d).elements + standard_backward(N, d).elements
    mask = standard_forward(N, d, mask_pass=True).elements + standard_backward(N, d, mask_pass=True).elements
    assert mask - base == 4 * N * N          # read+write S in fwd, read+write dS in bwd
    both = fwd_bwd("standard", N, d, mask_pass=True, scale_pass=True)
    assert both.elements - base == 8 * N * N
    # dropout: fwd writes Pd and Z, reads Pd; bwd reads Pd (instead of P), writes and reads dPd, reads Z
    dr = fwd_bwd("standard", N, d, dropout=True)
    assert dr.elements - base == 6 * N * N
    # the mask Z is one byte per element, the rest fp16: (2 + 2) N^2 * 2 B + 2 N^2 * 1 B
    assert dr.bytes - fwd_bwd("standard", N, d).bytes == 4 * N * N * 2 + 2 * N * N


def test_flash_forward_matches_bounds_exact_formula():
    # the bound module's Algorithm 1 count, independently written
    b = get_bound("flash_attention_alg1_exact")
    for N, d, M in [(1024, 64, 65536), (1000, 64, 65536), (1024, 64, 1000), (777, 32, 5000)]:
        assert flash_forward(N, d, M).elements == b.evaluate(N=N, d=d, M=M)
    # init writes add N d + 2 N
    assert flash_forward(100, 8, 512, init_writes=True).elements - flash_forward(100, 8, 512).elements == 800 + 200


def test_flash_backward_closed_form():
    # 4 N d + Tc (5 N d + 2 N), Tc = ceil(N / Bc)
    N, d, bc = 1000, 64, 96
    tc = -(-N // bc)  # 11
    assert tc == 11
    assert flash_backward(N, d, block_kv=bc).elements == 4 * N * d + tc * (5 * N * d + 2 * N)
    assert flash_backward(N, d, block_kv=bc, init_writes=True).elements == 7 * N * d + tc * (5 * N * d + 2 * N)
    c = flash_backward(N, d, block_kv=bc)
    assert c.flops["matmul"] == 10 * N * N * d


@settings(max_examples=60, deadline=None)
@given(N=st.integers(1, 300), d=st.integers(1, 40), bc=st.integers(1, 320), br=st.integers(1, 320),
       init=st.booleans())
def test_walkers_equal_closed_forms(N, d, bc, br, init):
    for closed, walk in ((flash_forward, simulate_flash_forward), (flash_backward, simulate_flash_backward)):
        c = closed(N, d, block_kv=bc, block_q=br, init_writes=init)
        w = walk(N, d, bc, br, init_writes=init)
        assert {k: v for k, v in c.reads.items() if v} == w["reads"]
        assert {k: v for k, v in c.writes.items() if v} == w["writes"]


def test_walker_peak_sram_within_paper_budget():
    # with the paper's blocks, Algorithm 1's working set is about M: 2 Bc d + 2 Br d + 2 Br + Br Bc
    M, d = 65536, 64
    bc, br = paper_block_sizes(M, d)
    peak = simulate_flash_forward(1024, d, bc, br)["peak_sram"]
    assert peak == 2 * bc * d + 2 * br * d + 2 * br + br * bc
    assert peak <= 1.5 * M   # the paper's rule only bounds each block by M/4-ish, not the sum


def test_vectorised():
    N = np.array([512, 1024, 2048])
    c = flash_forward(N, 64, 65536)
    assert list(c.elements) == [flash_forward(int(n), 64, 65536).elements for n in N]
    s = standard_forward(N, 64)
    assert list(s.elements) == [4 * n * 64 + 4 * n * n for n in N]


def test_figure2_configuration():
    # GPT-2 medium: N = 1024, d = 64, batch 64 x 16 heads, fp16. Algorithms 0 + 3 as printed:
    # (11 N^2 + 12 N d) elements * 2 bytes * 1024 heads
    N, d, bh = 1024, 64, 64 * 16
    std = fwd_bwd("standard", N, d).scaled(bh)
    assert std.bytes == (11 * N * N + 12 * N * d) * 2 * bh
    assert abs(std.bytes / 1e9 - 25.23) < 0.01
    # matmul FLOPs: 4 N^2 d forward + 8 N^2 d backward (standard); +2 N^2 d recompute (flash)
    assert std.flops["matmul"] == 12 * N * N * d * bh
    fa = fwd_bwd("flash", N, d, block_kv=384).scaled(bh)
    assert fa.flops["matmul"] == 14 * N * N * d * bh
    # Bc = 384 -> Tc = 3: fwd 2Nd + 3(3Nd + 4N), bwd 4Nd + 3(5Nd + 2N); l, m in fp32
    el16 = (2 + 9 + 4 + 15) * N * d
    el32 = (12 + 6) * N
    assert fa.bytes == (el16 * 2 + el32 * 4) * bh


def test_errors():
    with pytest.raises(IosimError):
        flash_forward(0, 64, 1000)
    with pytest.raises(IosimError):
        flash_forward(10, 64)
    with pytest.raises(IosimError):
        fwd_bwd("magic", 10, 4)
    with pytest.raises(IosimError):
        standard_forward(10.5, 4)
