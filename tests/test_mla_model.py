"""The MLA decode model (``iosim evaluate`` on a latent-attention cascade): the latent cache
read once per request for all heads, the FLOPs, the intensity against the ridge point, the
schedules, ragged batches and bad input. Expectations are hand derivations from the shapes."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import cascades
from iosim.cli import main
from iosim.mla import evaluate_mla, latent_attention

H100_TENSOR, H100_HBM = 989e12, 3.08e12          # the h100 preset: bf16 dense, sustained read


def ok(*args) -> dict:
    r = CliRunner().invoke(main, ["evaluate", "decode-mla", *map(str, args), "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def one_line_error(*args) -> str:
    r = CliRunner().invoke(main, ["evaluate", *map(str, args)])
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    return lines[0]


def test_deepseek_decode_reads_the_latent_cache_once_and_is_memory_bound_at_128_heads():
    """64 requests x 128 heads x 32K keys, one new token, bf16: the cache is 576 x 2 bytes
    per token for all heads (multi-head attention: 2 x 128 x 128 x 2, 56.9x more); FLOPs
    2 x H x (576 + 512) per key and query; 240 FLOP per byte, below the ridge 989 / 3.08."""
    d = ok("--heads", 128, "--seq-len", 1, "--kv-len", "32K", "--batch", 64)
    b, f, r = d["bytes"], d["flops"], d["roofline"]
    keys = 64 * 32768
    assert b["cache"] == keys * 576 * 2
    assert b["cache_per_token"] == 1152
    assert b["mha_per_token"] / b["cache_per_token"] == pytest.approx(32768 / 576)
    assert f["scores"] == 2 * 128 * 576 * keys
    assert f["values"] == 2 * 128 * 512 * keys
    assert f["up_proj"] == 2 * 64 * 128 * 512 * 128
    # the attention kernel's HBM bytes: cache, absorbed queries, latent output
    attn_b = keys * 1152 + 64 * 128 * 576 * 2 + 64 * 128 * 512 * 2
    assert r["intensity"] == pytest.approx(2 * 128 * 1088 * keys / attn_b)
    assert 239 < r["intensity"] < 242
    assert r["ridge"] == pytest.approx(H100_TENSOR / H100_HBM)
    assert r["bound"] == "memory"
    # no split (128 (request, row tile) units on 132 SMs): the HBM bound sets the time
    assert d["shape"]["row_tiles"] == 2 and d["shape"]["segments"] == 128
    assert d["kernels"][0]["time_s"] == pytest.approx(attn_b / H100_HBM)
    assert d["hardware"] == "h100"


def test_two_new_tokens_double_the_intensity_past_the_ridge():
    """Multi-token prediction (P = 2): twice the FLOPs per cached byte -- compute-bound."""
    one = ok("--heads", 128, "--seq-len", 1, "--kv-len", "32K", "--batch", 64)["roofline"]
    two = ok("--heads", 128, "--seq-len", 2, "--kv-len", "32K", "--batch", 64)["roofline"]
    assert two["intensity"] == pytest.approx(2 * one["intensity"], rel=0.02)
    assert two["bound"] == "compute"
    assert two["tensor_s"] > two["hbm_s"]


def test_ragged_batch_sums_and_equal_lengths_are_the_uniform_batch():
    lens = [1000, 32768, 131072]
    d = ok("--heads", 16, "--seq-len", 1, "--kv-lens", ",".join(map(str, lens)))
    assert d["bytes"]["cache"] == sum(lens) * 1152
    assert d["flops"]["attention"] == 2 * 16 * 1088 * sum(lens)
    same = ok("--heads", 16, "--seq-len", 1, "--kv-lens", "4096,4096,4096")
    uni = ok("--heads", 16, "--seq-len", 1, "--kv-len", 4096, "--batch", 3)
    assert same["bytes"] == uni["bytes"] and same["time_s"] == uni["time_s"]


def test_causal_tokens_see_their_prefix():
    """P = 3 causal tokens against M = 100 keys see 98, 99 and 100 keys."""
    d = ok("--heads", 4, "--seq-len", 3, "--kv-len", 100, "--causal")
    assert d["flops"]["scores"] == 2 * 4 * 576 * (98 + 99 + 100)


def test_stream_k_balances_one_long_request_among_short_ones():
    """256K + three 2K requests at 16 heads (one row tile each): no split waits on the long
    request's single program; stream-K's equal shares spread it over the SMs."""
    args = ("--heads", 16, "--seq-len", 1, "--kv-lens", "256K,2K,2K,2K")
    nos = ok(*args, "--schedule", "nosplit")
    stk = ok(*args, "--schedule", "streamk")
    assert nos["shape"]["programs"] == 4 and stk["shape"]["programs"] == 132
    assert nos["time_s"] > 10 * stk["time_s"]
    assert "partials (written, read)" in stk["bytes"]["hbm"]
    assert stk["bytes"]["cache"] == nos["bytes"]["cache"]


def test_paged_cache_reads_its_block_table():
    d = ok("--heads", 128, "--seq-len", 1, "--kv-lens", "100,64", "--page-size", 64)
    assert d["bytes"]["hbm"]["block table"] == 4 * (2 + 1)


def test_the_structure_decides_not_the_name(tmp_path):
    """Renamed ranks and tensors are latent attention; the plain decode cascades are not; a
    copy ending in latent space (FlashMLA's output) has no up-projection."""
    assert latent_attention(cascades.load("decode")) is None
    assert latent_attention(cascades.load("decode-splitk")) is None
    f = latent_attention(cascades.load("decode-mla"))
    assert (f.key, f.latent, f.rope, f.cache, f.up_proj) == ("M", "E", ("R",), ("CKV", "KR"),
                                                            "F")
    text = cascades.library.text("decode-mla")
    lat = (text.replace("cascade decode-mla ", "cascade latent-out ")
           .replace("input  WUV[H, E, F]\n", "").replace("output O[H, P, F]", "output OL[H, P, E]")
           .replace("param scale    = 1 / sqrt(F + R)", "param scale    = 1 / sqrt(192)"))
    lat = lat[: lat.index("O[h, p, f]")]
    p = tmp_path / "latent.casc"
    p.write_text(lat)
    g = latent_attention(cascades.load(str(p)))
    assert g is not None and g.up_proj is None
    r = CliRunner().invoke(main, ["evaluate", str(p), "--heads", 128, "--seq-len", 1, "--kv-len", "4K", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["flops"]["up_proj"] == 0 and "W_UV" not in d["bytes"]["hbm"]
    assert "up-projection" not in [k["name"] for k in d["kernels"]]


def test_python_api_matches_the_cli():
    rep = evaluate_mla("decode-mla", "h100", n=1, kv_len=8192, batch=8, heads=128)
    d = ok("--heads", 128, "--seq-len", 1, "--kv-len", "8K", "--batch", 8)
    assert rep.to_dict() == d
    # no batch given: one request (the cache of 8K tokens of 576 bf16 values)
    one = evaluate_mla("decode-mla", "h100", kv_len=8192)
    assert one.shape["requests"] == 1 and one.bytes["cache"] == 8192 * 576 * 2


@pytest.mark.parametrize("args, what", [
    (("--kv-len", "4K", "--kv-heads", 8), "one latent cache"),
    (("--kv-len", "4K", "--mapping", "fa2"), "--mapping"),
    (("--kv-len", "4K", "--page-size", 0), "--page-size"),
    (("--kv-lens", "1K,2K", "--batch", 3), "--batch 3"),
    (("--kv-len", "4K", "--block-n", 32), "--block-n"),
    (("--seq-len", 4, "--kv-len", 2, "--causal"), "causal"),
    (("--kv-len", "4K", "--hw", "two-level"), "timing"),
])
def test_bad_input_is_one_line(args, what):
    line = one_line_error("decode-mla", "--heads", 128, *args)
    assert what in line
