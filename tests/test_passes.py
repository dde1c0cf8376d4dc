"""Pass analysis: the counts the FuseMax paper states for its cascades."""
from __future__ import annotations

from pathlib import Path

import pytest

import cascades
from cascades.passes import analyze

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("name,rank,expected", [
    ("attention-3pass", "M", 3),
    ("attention-2pass", "M", 2),
    ("attention-1pass", "M", 1),
    ("attention-1pass", "M0", 2),
    ("flash1", "M", 1),
    ("flash1", "M0", 2),
    ("attention-gqa", "M", 1),
    ("attention-masked", "M", 1),
    ("sigmoid", "M", 1),
    ("linear", "M", 1),
])
def test_library_pass_counts(name, rank, expected):
    assert analyze(cascades.load(name)).passes(rank) == expected


@pytest.mark.parametrize("i,expected", [(1, 2), (2, 1), (3, 1)])
def test_paper_pedagogical_cascades(i, expected):
    c = cascades.load(DATA / f"paper_cascade{i}.casc")
    assert analyze(c).passes("K") == expected


def test_three_pass_cascade_must_buffer_two_full_key_fibers():
    n, m, d = 1000, 3000, 64
    rep = analyze(cascades.load("attention-3pass"), shapes={"P": n, "M": m, "E": d, "F": d})
    buf = {b.tensor: b for b in rep.ranks["M"].buffered}
    # pass 1 -> 2 carries the scores, pass 2 -> 3 the numerators: M elements per query each
    assert set(buf) == {"SQK", "SN"}
    assert buf["SQK"].produced_in == 1 and buf["SQK"].read_in == (2,)
    assert buf["SN"].produced_in == 2 and buf["SN"].read_in == (3,)
    for b in buf.values():
        assert b.fiber_elements == m and b.total_elements == m * n


def test_one_pass_cascade_buffers_nothing_over_keys_but_a_tile_over_m0():
    rep = analyze(cascades.load("attention-1pass"), shapes={"P": 512, "M": 4096, "E": 64, "F": 64},
                  block_kv=128)
    assert rep.ranks["M"].buffered == ()
    tile = {b.tensor: b for b in rep.ranks["M0"].buffered}
    assert set(tile) == {"SQK"} and tile["SQK"].fiber_elements == 128


def test_two_pass_cascade_carries_per_block_partials():
    n, m, blk, d = 256, 1000, 100, 32
    rep = analyze(cascades.load("attention-2pass"), shapes={"P": n, "M": m, "E": d, "F": d},
                  block_kv=blk)
    buf = {b.tensor: b for b in rep.ranks["M"].buffered}
    assert set(buf) == {"LM", "SLD", "SLNV"}
    assert buf["SLNV"].fiber_elements == m // blk  # one partial per key block


def test_recurrences_add_no_passes_but_a_real_reuse_does():
    text = """cascade t
input A[K]
output Z[K]
iterate K until k >= K
S[k=0] = 0
S[k+1] = S[k] + A[k]
Z[k] = S[K] * A[k]
"""
    # reading the *final* running sum while traversing K again is a second pass
    assert analyze(cascades.parse(text)).passes("K") == 2
