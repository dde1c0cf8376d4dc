"""A ragged batch (requests with their own key lengths): traffic summed per request, one launch
of all the requests' programs, the same answer as a uniform batch when the lengths are equal,
and one-line errors for bad lengths."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from iosim.cli import main
from iosim.mapping import get_mapping
from iosim.ragged import evaluate_ragged, parse_lengths
from iosim.traffic import evaluate


def test_gqa_decode_reads_each_requests_cache_once_per_kv_head():
    lens = [1024, 32768, 131072]
    rep = evaluate_ragged("decode-splitk", get_mapping("decode-splitk", split_kv=16), "h100",
                          n=1, kv_lens=lens, e=128, heads=32, kv_heads=8)
    hbm = rep.level("HBM").per_tensor
    assert hbm["K"]["read_bytes"] == hbm["V"]["read_bytes"] == 8 * sum(lens) * 128 * 2
    assert hbm["O"]["write_bytes"] == 3 * 32 * 128 * 2
    # one launch: the programs of all requests (per K/V head, 16 splits capped at the keys)
    progs = rep.time["kernels"][0]["programs"]
    assert progs == 8 * 16 * 3
    # the long request dominates: at least the time of the long request alone
    alone = evaluate("decode-splitk", get_mapping("decode-splitk", split_kv=16), "h100", n=1,
                     kv_len=131072, d=128, heads=32, kv_heads=8)
    assert rep.time_s >= alone.time_s


def test_equal_lengths_are_a_uniform_batch():
    m = get_mapping("fa2")
    rag = evaluate_ragged("attention-1pass", m, "h100", n=2048, kv_lens=[2048] * 4, e=64,
                          heads=8)
    uni = evaluate("attention-1pass", m, "h100", n=2048, d=64, batch=4, heads=8)
    for lv in ("L2", "SMEM"):
        assert rag.level(lv).read_bytes == uni.level(lv).read_bytes
    # the L2 model sees each request's heads alone (not the other requests' in flight): HBM
    # reads agree to the L2 model's small miss fraction
    assert rag.level("HBM").read_bytes == pytest.approx(uni.level("HBM").read_bytes, rel=1e-4)
    assert rag.flops == pytest.approx(uni.flops)
    assert rag.time_s == pytest.approx(uni.time_s)


def test_lengths_and_errors(tmp_path):
    assert parse_lengths("1K,32K, 7") == (1024, 32768, 7)
    f = tmp_path / "lens.txt"
    f.write_text("# a trace\n4096\n128K  # long\n")
    assert parse_lengths(f"@{f}") == (4096, 131072)
    r = CliRunner()
    for args, msg in ((["--kv-lens", "1K,0"], "positive"), (["--kv-lens", "@nope.txt"], "not found"),
                      (["--kv-lens", "1K,2K", "--batch", "3"], "--batch 3"),
                      (["--kv-lens", "1K", "--kv-len", "2K"], "--kv-len"),
                      (["--kv-lens", ","], "at least one")):
        res = r.invoke(main, ["evaluate", "decode-splitk", "--seq-len", "1", *args])
        assert res.exit_code == 2 and msg in res.output and "Traceback" not in res.output, args
