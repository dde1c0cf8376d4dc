"""The serving decode model (iosim.serving): K/V read once per K/V head per request, a paged
cache's block table and page rounding, the three schedules of the generated kernel, and
one-line errors for bad serving input."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from iosim.cli import main
from iosim.serving import evaluate_serving, flashdecoding_splits


def _json(args):
    res = CliRunner().invoke(main, ["evaluate", *args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def _kv(d):
    t = d["levels"]["HBM"]["per_tensor"]
    return t["K"]["read_bytes"] + t["V"]["read_bytes"]


def test_gqa_decode_reads_kv_once_per_kv_head():
    # 2 (K and V) x 8 K/V heads x 128K keys x d 128 x 2 bytes, not x 32 query heads
    base = ["decode", "--heads", "32", "--kv-heads", "8", "--seq-len", "1"]
    assert _kv(_json(base + ["--kv-len", "128K", "--batch", "1"])) == 2 * 8 * 131072 * 128 * 2
    lens = [1024, 32768, 131072]
    d = _json(base + ["--kv-lens", "1K,32K,128K"])
    assert _kv(d) == sum(2 * 8 * n * 128 * 2 for n in lens)
    for sched in ("nosplit", "split", "streamk"):
        d = _json(base + ["--kv-lens", "1K,32K,128K", "--schedule", sched])
        assert _kv(d) == sum(2 * 8 * n * 128 * 2 for n in lens)
        assert d["serving"]["kv_bytes"] == _kv(d)


def test_paged_cache_counts_its_table_and_partial_pages():
    lens = (1000, 33)
    plain = evaluate_serving("decode", n=1, kv_lens=lens, heads=32, kv_heads=8,
                             schedule="split", split_kv=4)
    small = evaluate_serving("decode", n=1, kv_lens=lens, heads=32, kv_heads=8,
                             schedule="split", split_kv=4, page_size=16)
    s = small.serving
    assert s["pages"] == 63 + 3                       # ceil(1000/16) + ceil(33/16)
    assert s["table_hbm_bytes"] == 4 * 66             # int32 entries, each request's once
    # pages of 16 keys, four to a 64-key block: an entry per page of each of the 16 + 1
    # blocks of the 8 pairs, plus the next block's entries read ahead once more per
    # segment (4 split chunks of the 1000-key request, 1 of the 33-key one, per K/V head)
    assert s["table_l2_bytes"] == 4 * 4 * ((16 + 1) * 8 + (4 + 1) * 8)
    # partial last pages hold cache but are not read: K/V bytes as without pages
    assert s["kv_bytes"] == plain.serving["kv_bytes"] == 2 * 8 * 1033 * 128 * 2
    assert s["cache_bytes"] == 2 * 8 * 66 * 16 * 128 * 2
    hbm, hbm0 = small.level("HBM"), plain.level("HBM")
    assert hbm.read_bytes == pytest.approx(hbm0.read_bytes + 4 * 66)
    big = evaluate_serving("decode", n=1, kv_lens=lens, heads=32, kv_heads=8,
                           schedule="split", split_kv=4, page_size=128)
    # one entry per key block (and per segment's read-ahead)
    assert big.serving["table_l2_bytes"] == 4 * ((16 + 1) * 8 + (4 + 1) * 8)
    odd = evaluate_serving("decode", n=1, kv_lens=lens, heads=32, kv_heads=8,
                           schedule="split", split_kv=4, page_size=48)
    assert odd.serving["table_l2_bytes"] == 4 * 64 * ((16 + 1) * 8 + (4 + 1) * 8)  # per key


def test_streamk_shares_and_partials():
    r = evaluate_serving("decode", n=1, kv_lens=(1000, 33), heads=32, kv_heads=8,
                         schedule="streamk", programs=4)
    s = r.serving
    # 136 key blocks in shares of 34: segments 3 + 3 + 3 + 10 (the last share crosses the
    # eight one-block pairs of the short request)
    assert (s["programs"], s["segments"], s["key_blocks"]) == (4, 19, 136)
    kern = r.report.time["kernels"]
    assert [k["name"] for k in kern] == ["stream-K partials", "combine"]
    # partials: a 16-row tile (4 query heads of one token, padded to 16) x (d + LSE) fp32
    part = r.level("HBM").per_tensor["PO+LSE"]
    assert part["write_bytes"] == 19 * 4 * (128 + 1) * 4
    assert r.time_s >= kern[0]["hbm_bound_s"]


def test_schedules_fill_the_machine_at_long_context():
    kw = dict(n=1, kv_len=262144, batch=1, heads=32, kv_heads=8)
    no = evaluate_serving("decode", schedule="nosplit", **kw)
    fd = evaluate_serving("decode", schedule="split", **kw)
    sk = evaluate_serving("decode", schedule="streamk", **kw)
    # 8 programs on 132 SMs against 120 / 132: both split schedules many times faster
    assert no.serving["programs"] == 8 and sk.serving["programs"] == 132
    assert no.time_s > 5 * fd.time_s and no.time_s > 5 * sk.time_s
    # both within 10 % of the HBM time of their bytes at the sustained bandwidth
    for r in (fd, sk):
        assert r.serving["achieved_bytes_per_s"] > 0.85 * r.serving["sustained_bytes_per_s"]


def test_kv_len_without_batch_is_one_request():
    # the Python API's default batch (None): one request of kv_len keys, as --batch 1
    one = evaluate_serving("decode", n=1, kv_len=4096, heads=32, kv_heads=8)
    assert one.serving["requests"] == 1
    assert one.serving["kv_bytes"] == 2 * 8 * 4096 * 128 * 2


def test_flashdecoding_heuristic():
    # FlashAttention's num_splits_heuristic by hand: 8 pairs on 132 SMs -> efficiency
    # 8s/132/ceil(8s/132) is best (1.0) at s = 33 (264 programs, two full waves); the fewest
    # splits within 85 % of it is 15 (120/132 = 0.909; 14 gives 112/132 = 0.848)
    assert flashdecoding_splits(8, 4096, 132) == 15
    assert flashdecoding_splits(512, 4096, 132) == 1     # many pairs: no split
    assert flashdecoding_splits(8, 3, 132) <= 3          # never more splits than blocks


@pytest.mark.parametrize("args, msg", [
    (["--kv-lens", "1K,2K", "--batch", "3", "--schedule", "split"], "--batch 3"),
    (["--kv-len", "4K", "--page-size", "0"], "--page-size must be a positive"),
    (["--kv-len", "4K", "--heads", "8", "--kv-heads", "32", "--schedule", "split"],
     "--kv-heads 32 exceeds --heads 8"),
    (["--kv-len", "4K", "--heads", "12", "--kv-heads", "8", "--schedule", "streamk"],
     "not a multiple"),
    (["--kv-len", "4K", "--heads", "12", "--kv-heads", "8"], "multiple of kv-heads"),
    (["--kv-len", "4K", "--schedule", "split", "--mapping", "fa2"], "--mapping does not go"),
    (["--kv-len", "4K", "--schedule", "streamk", "--programs", "0"], "--programs"),
])
def test_bad_serving_input_is_one_line(args, msg):
    res = CliRunner().invoke(main, ["evaluate", "decode", "--seq-len", "1", *args])
    assert res.exit_code == 2 and msg in res.output, res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1


def test_the_batched_streamk_cascade_is_refused_in_one_line():
    res = CliRunner().invoke(main, ["evaluate", "decode-streamk", "--seq-len", "1"])
    assert res.exit_code == 2 and "--schedule streamk" in res.output


def test_registered_plan_lists_the_scripts_launches():
    """The committed plan (predictions registered before the GPU ran the launches) holds the
    device script's launch list, with at least 20 launches of the generated kernels."""
    from device_plans import device_script, registered_plan
    mod = device_script("serving_decode")
    rows, _ = registered_plan(mod, mod.FIELDS)
    assert len(rows) >= 20
    assert all(float(r["predicted_ms"]) > 0 for r in rows)
    assert {r["schedule"] for r in rows} == {"nosplit", "split", "streamk"}
    assert {r["layout"] for r in rows} == {"dense", "ragged", "paged"}


def test_streamk_breakdown_is_its_blocks_at_the_no_split_step():
    """A stream-K program's tensor-core, exponential and load times are its key blocks at the
    no-split program's per-step times (the same step, only the blocks per program differ)."""
    kw = dict(n=1, kv_len=65536, batch=1, heads=32, kv_heads=8)
    no = evaluate_serving("decode", schedule="nosplit", **kw).report.time["kernels"][0]
    sk = evaluate_serving("decode", schedule="streamk", **kw).report.time["kernels"][0]
    # 8 pairs x 1024 key blocks of 64 over 132 programs; the no-split program runs 1024
    assert sk["steps_per_program"] == pytest.approx(8 * 1024 / 132)
    for part in ("compute_s", "exp_s", "load_s"):
        assert no[part] > 0
        assert sk[part] == pytest.approx(no[part] * (8 * 1024 / 132) / 1024, rel=1e-9)
