"""The loop tree: presets lower to the nests the models evaluate; user trees in Python and
TOML; the tree's properties replace the mapping's name."""
from __future__ import annotations

import pytest

from iosim.errors import IosimError
from iosim.mapping import Mapping, loop_nest, mapping_for, mapping_tree
from iosim.traffic import evaluate_arrays


def test_chunked_block_mask_read_once_per_chunk_and_key_tile():
    # a chunk of block_q = 128 query rows meets one row of the block mask (its query tile);
    # each key tile of 64 keys one entry of it: N = 1024 -> 8 x 16 entries, each read once
    # (at density 0.25 a quarter of the key tiles are visited)
    m = Mapping(name="chunked", cascade="attention-blocksparse", kind="chunked",
                block_q=128, block_kv=64)
    r = evaluate_arrays("attention-blocksparse", m, "h100", n=1024, d=64)
    assert float(r["model_reads"]["BlockMask"][0]) == 8 * 16
    r = evaluate_arrays("attention-blocksparse", m, "h100", n=1024, d=64, block_density=0.25)
    assert float(r["model_reads"]["BlockMask"][0]) == 8 * 16 * 0.25
