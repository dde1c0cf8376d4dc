"""iosim.spatial's DRAM traffic comes from the memory-hierarchy model: every configuration's
mapping is a chunked loop nest (iosim.mapping.chunked_nest) counted by iosim.traffic."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from iosim.errors import IosimError
from iosim.mapping import (ChunkPass, LoopNest, Mapping, PartialLoad, PartialStore, chunked_nest,
                           format_loop_nest, loop_nest)
from iosim.spatial import load_spatial_hardware, run
from iosim.traffic import evaluate_grid, nest_traffic

DATA = Path(__file__).resolve().parents[1] / "experiments" / "data"


def _per_tensor(r, plan):
    """The plan's loop nest counted again by iosim.traffic, in bytes for the layer."""
    rd, wr = nest_traffic(plan.nest, plan.nest_sizes)
    k = r.shape.bh * 2
    return {t: v * k for t, v in rd.items()}, {t: v * k for t, v in wr.items()}


@pytest.mark.parametrize("config,n,cascade", [
    ("fusemax", "1M", None), ("architecture", "64K", None), ("cascade", "256K", None),
    ("flat", "64K", None), ("flat", "1M", None), ("unfused", "4K", None),
    ("fusemax", "64K", "attention-2pass"), ("fusemax", "16K", "attention-3pass")])
def test_dram_bytes_are_the_loop_nests(config, n, cascade):
    r = run(config, "bert", n, cascade=cascade)
    for p in r.plans:
        assert isinstance(p.nest, LoopNest) and p.nest.mapping.kind == "chunked"
        rd, wr = _per_tensor(r, p)
        assert rd == pytest.approx(p.dram_read) and wr == pytest.approx(p.dram_write)
    assert r.dram_bytes == pytest.approx(sum(p.dram_bytes for p in r.plans))


def test_fusemax_nest_is_flashattention_with_chunk_sized_query_blocks():
    """FuseMax's nest (Q once, K/V once per chunk of P1 x 256 queries, O once) counted by the
    grid engine as FlashAttention-2's nest with block_q = the chunk and no LSE: the same
    bytes, by another path through iosim.traffic."""
    for n, p1 in ((65536, 128), (262144, 128), (1048576, 128)):
        r = run("fusemax", "bert", n)
        assert r.plans[0].P1 == p1
        g = evaluate_grid("attention-1pass", Mapping(name="fa2", cascade="attention-1pass",
                                                     kind="fa2", block_q=p1 * 256, block_kv=256,
                                                     write_lse=False),
                          "h100", n=n, e=64, batch=64, heads=12, dtype="fp16", l2="off")
        assert r.dram_bytes == pytest.approx(float(g.hbm_bytes.iloc[0]), rel=1e-12)
        # the registry form of the 'chunked' kind is that nest too
        m = Mapping(name="c", cascade="attention-1pass", kind="chunked", block_q=p1 * 256,
                    block_kv=256)
        rd, wr = nest_traffic(loop_nest(m), {"P": n, "M": n, "E": 64, "F": 64,
                                             "block_q": p1 * 256, "block_kv": 256})
        assert (sum(rd.values()) + sum(wr.values())) * 64 * 12 * 2 == r.dram_bytes


def test_flat_traffic_at_long_sequences_is_the_artifacts():
    """FLAT with its logits off chip (256K, 1M): Q and O once, K and V per 1024-row block,
    the logits written, read by the softmax, written again and read by AV."""
    t = pd.read_csv(DATA / "fusemax_paper_traffic.csv")
    t = t[t.config == "flat"].set_index(["model", "N"])["dram_traffic_bytes"]
    for model, label in (("bert", "BERT"), ("xlm", "XLM")):
        for n in (262144, 1048576):
            r = run("flat", model, n)
            assert r.plans[0].nest_sizes["spill"] == 1
            assert r.dram_bytes == pytest.approx(t[(label, n)], rel=1e-12)


def test_spilled_fraction_is_counted_by_partial_loads_and_stores():
    """FLAT at 64K keeps 99.6% of the score row on chip: the partial stores and loads move
    exactly the rest; the spill grows as the buffer shrinks."""
    r = run("flat", "bert", "64K")
    p = r.plans[0]
    spill = p.nest_sizes["spill"]
    assert 0 < spill < 0.01 and spill == pytest.approx(1 - p.onchip_fraction)
    parts = [nd for _, nd, _ in p.nest.walk() if isinstance(nd, (PartialLoad, PartialStore))]
    assert sorted((type(nd).__name__, nd.tensor) for nd in parts) == [
        ("PartialLoad", "QK"), ("PartialLoad", "SN"), ("PartialStore", "QK"), ("PartialStore", "SN")]
    qk = r.shape.bh * r.shape.M * r.shape.P * 2
    assert p.dram_write["QK"] == pytest.approx(spill * qk)
    assert p.dram_read["SN"] == pytest.approx(spill * qk)
    hw = load_spatial_hardware("flat").scaled(buffer_bytes=24 * 2**20)
    small = run("flat", "bert", "64K", hardware=hw).plans[0]
    assert small.nest_sizes["spill"] > 0.2
    assert small.dram_write["QK"] == pytest.approx(small.nest_sizes["spill"] * qk)


def test_chunked_nest_counts():
    ranks = {"Q": ("P", "E"), "K": ("M", "E"), "S": ("M", "P"), "L": ("Mt", "P"),
             "W": ("E", "F"), "O": ("P", "F")}
    nest = chunked_nest("t", "attention-3pass", ranks, chunk_loads=("Q",), once_loads=("W",),
                        passes=(ChunkPass(loads=("K",), spill_stores=("S",), stores=("L",)),
                                ChunkPass(spill_loads=("S", "L"))),
                        chunk_stores=("O",))
    sz = {"P": 1000, "M": 512, "E": 8, "F": 4, "block_q": 300, "block_kv": 128, "spill": 0.25}
    rd, wr = nest_traffic(nest, sz)
    chunks = 4                                           # ceil(1000 / 300)
    assert rd == {"Q": 8000, "W": 32, "K": chunks * 512 * 8, "S": 0.25 * 512 * 1000,
                  "L": 0.25 * 4 * 1000}
    assert wr == {"S": 0.25 * 512 * 1000, "L": 4 * 1000, "O": 4000}
    text = format_loop_nest(nest, sz)
    assert "store S[j1,c] x spill=0.25" in text and "for c in [0:4)" in text
    with pytest.raises(IosimError, match="no size for 'spill'"):
        nest_traffic(nest, {k: v for k, v in sz.items() if k != "spill"})
