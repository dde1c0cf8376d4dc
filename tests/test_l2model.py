"""The GPU L2 model (iosim.l2model): tile model, occupancy, regimes of DRAM traffic."""
import pytest

from iosim.errors import IosimError
from iosim.l2model import GpuL2, Workload, occupancy, predict_dram, smem_level_reads


def test_tile_model_fa2():
    w = Workload(4, 16, 4096, 4096, 128)
    s = smem_level_reads(w)
    qkv = 4 * 16 * 4096 * 128 * 2
    assert s["q_bytes"] == qkv
    assert s["kv_bytes"] == 32 * 2 * qkv            # K and V once per query block (32 blocks)
    assert s["read_bytes"] == 4362076160            # what Nsight measured on the H100


def test_tile_model_causal_and_partial():
    w = Workload(1, 1, 1000, 1000, 64, causal=True, block_m=128, block_n=64)
    s = smem_level_reads(w)
    keys = sum(min(1000, -(-min(1000, (i + 1) * 128) // 64) * 64) for i in range(8))
    assert s["kv_bytes"] == keys * 2 * 64 * 2


def test_occupancy_from_resources():
    assert occupancy(Workload(1, 1, 1024, 1024, 128), regs_per_thread=214,
                     smem_bytes=131072) == 1
    assert occupancy(Workload(1, 1, 1024, 1024, 64), regs_per_thread=121,
                     smem_bytes=65536) == 2


def test_regimes():
    gpu = GpuL2()
    qm = predict_dram(Workload(4, 16, 4096, 4096, 128, blocks_per_sm=1), gpu)
    hm = predict_dram(Workload(4, 16, 4096, 4096, 128, grid_order="head-major",
                               blocks_per_sm=1), gpu)
    assert qm["dram_over_compulsory"] == pytest.approx(1.0, abs=0.01)   # K/V of a head fit
    assert hm["dram_over_compulsory"] > 5                                # heads interleave
    big = predict_dram(Workload(4, 16, 4096, 4096, 128, grid_order="head-major",
                                blocks_per_sm=1), GpuL2(l2_bytes=1e12))
    assert big["dram_over_compulsory"] == pytest.approx(1.0, abs=0.01)  # infinite cache


def test_bad_workload():
    with pytest.raises(IosimError):
        Workload(1, 1, 64, 64, 64, grid_order="diagonal")
