"""One computation, one answer: a library cascade, the same text under another name and the
same text as a user's file give the same reports (apart from the name); the commands share
options, defaults and one-line errors; mappings that do not fit a cascade refuse it."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from cascades.library import names, text
from iosim.cli import main

SMALL = {"decode-splitk": ["--seq-len", "4", "--kv-len", "2048"]}

HSTU = """\
# HSTU-style attention: pointwise SiLU of the scores plus a relative attention bias, no
# softmax (no maximum, no normalisation across keys).
cascade hstu "pointwise SiLU attention with a relative attention bias"

param scale  = 1 / sqrt(E)
param causal = false

input  Q[P, E]
input  K[M, E]
input  V[M, F]
input  RAB[P, M]
output O[P, F]

QK[m, p] = sum[e] Q[p, e] * K[m, e]
SB[m, p] = scale * QK[m, p] + RAB[p, m]
SA[m, p] = where(causal and m > p, 0, SB[m, p] * sigmoid(SB[m, p]))
O[p, f]  = sum[m] SA[m, p] * V[m, f] / M
"""


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def ok_json(*args) -> dict:
    r = run(*args)
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def one_line_error(*args) -> str:
    r = run(*args)
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    return lines[0]


def copy(tmp_path, name, new_name=None, **replace) -> str:
    t = text(name)
    if new_name is not None:
        t = t.replace(f"cascade {name} ", f"cascade {new_name} ")
    for old, new in replace.items():
        assert old in t, old
        t = t.replace(old, new)
    p = tmp_path / f"{new_name or name}.casc"
    p.write_text(t)
    return str(p)


def without_name(doc: dict) -> dict:
    doc = dict(doc)
    doc.pop("cascade")
    doc["mapping"] = {k: v for k, v in doc["mapping"].items() if k != "cascade"}
    return doc


# ------------------------------------------------------------------ same text, same answer


@pytest.mark.parametrize("name", names())
def test_copies_give_the_same_report(tmp_path, name):
    args = ["--seq-len", "512", "--head-dim", "64", "--json", *SMALL.get(name, [])]
    lib = run("evaluate", name, *args)
    if lib.exit_code == 2 and "whole batch" in lib.output:
        # a cascade over a whole batch of pairs (stream-K) is refused in one line; so is its copy
        renamed = run("evaluate", copy(tmp_path, name, "renamed"), *args)
        assert renamed.exit_code == 2
        assert renamed.output == lib.output.replace(f"'{name}'", "'renamed'")
        return
    assert lib.exit_code == 0, lib.output
    # the same text as a file: byte-identical, name included
    same = run("evaluate", copy(tmp_path, name), *args)
    assert same.output == lib.output
    # under another name: identical apart from the name
    other = ok_json("evaluate", copy(tmp_path, name, "renamed"), *args)
    assert other["cascade"] == "renamed"
    assert without_name(other) == without_name(json.loads(lib.output))


@pytest.mark.parametrize("name", ["attention-1pass", "attention-2pass", "attention-3pass",
                                  "decode-splitk", "sigmoid"])
def test_copies_agree_under_every_mapping_and_as_text(tmp_path, name):
    from iosim.mapping import mappings_for
    path = copy(tmp_path, name, "renamed")
    for mp in mappings_for(name):
        args = ["--mapping", mp, "--hw", "two-level", "--sram", "1MiB", "--seq-len", "256",
                "--head-dim", "32", "--causal", *SMALL.get(name, [])]
        a = run("evaluate", name, *args)
        b = run("evaluate", path, *args)
        assert a.exit_code == 0, (mp, a.output)
        assert b.output == a.output.replace(f": {name} with", ": renamed with"), mp


def test_gqa_copies_agree(tmp_path):
    args = ["--heads", "32", "--kv-heads", "8", "--seq-len", "1K", "--json"]
    a = ok_json("evaluate", "attention-1pass", *args)
    b = ok_json("evaluate", copy(tmp_path, "attention-1pass", "mine"), *args)
    assert without_name(a) == without_name(b)


def test_search_and_sweep_of_a_copy(tmp_path):
    path = copy(tmp_path, "attention-1pass", "mine")
    args = ["--hw", "two-level", "--sram", "4KiB,64KiB", "--seq-len", "512", "--head-dim",
            "64", "--json"]
    a = ok_json("search", "attention-1pass", *args)
    b = ok_json("search", path, *args)
    for d in (a, b):
        d.pop("seconds")
        d.pop("cascade")
        for row in d["best"]:
            row.pop("cascade")
    assert a == b
    frames = []
    for alg in ("attention-1pass:fa2", f"{path}:fa2"):
        out = tmp_path / f"sw{len(frames)}"
        r = run("sweep", alg, "--sram", "64KiB", "--seq-len", "512,1K", "--head-dim", "64",
                "--out", out, "--no-plots", "--quiet")
        assert r.exit_code == 0, r.output
        df = pd.read_csv(out / "sweep.csv")
        # the names, and the hash of the configuration (the cascade's text holds its name)
        frames.append(df.drop(columns=[c for c in ("algorithm", "cascade", "config_hash")
                                       if c in df.columns]))
    pd.testing.assert_frame_equal(frames[0], frames[1])


# ------------------------------------------------------------------ the cascade's defaults


def test_param_causal_true_is_honoured_everywhere(tmp_path):
    path = copy(tmp_path, "attention-1pass", "mine",
                **{"param causal  = false": "param causal  = true"})
    args = ["--seq-len", "1K", "--head-dim", "64", "--json"]
    mine = ok_json("evaluate", path, *args)
    lib = ok_json("evaluate", "attention-1pass", "--causal", *args)
    assert mine["shapes"]["causal"] and without_name(mine) == without_name(lib)
    off = ok_json("evaluate", path, "--no-causal", *args)          # the flag overrides it
    assert without_name(off) == without_name(ok_json("evaluate", "attention-1pass", *args))
    s = ok_json("search", path, "--hw", "two-level", "--sram", "64KiB", *args)
    assert s["shapes"]["causal"] is True
    out = tmp_path / "sw"
    r = run("sweep", f"{path}:fa2", "--seq-len", "1K", "--out", out, "--no-plots", "--quiet")
    assert r.exit_code == 0, r.output
    assert pd.read_csv(out / "sweep.csv")["causal"].tolist() == [True]
    # algorithms that disagree need the flag
    msg = one_line_error("sweep", f"{path}:fa2", "fa2", "--seq-len", "1K", "--out",
                         tmp_path / "x")
    assert "disagree on causal masking" in msg


def test_param_block_kv_is_honoured(tmp_path):
    path = copy(tmp_path, "attention-1pass", "mine",
                **{"param block_kv = 64": "param block_kv = 32"})
    args = ["--seq-len", "1K", "--head-dim", "64", "--l2", "off", "--json"]
    mine = ok_json("evaluate", path, *args)
    assert mine["mapping"]["block_kv"] == 32
    assert without_name(mine) == without_name(
        ok_json("evaluate", "attention-1pass", "--block-n", "32", *args))
    assert ok_json("evaluate", path, "--block-n", "128", *args)["mapping"]["block_kv"] == 128


def test_causal_needs_a_mask_switch():
    msg = one_line_error("evaluate", "linear", "--causal")
    assert "cascade 'linear' has no causal mask" in msg


# ------------------------------------------------------------------ options and defaults


def test_size_suffixes_on_every_size_option(tmp_path):
    a = ok_json("evaluate", "--kv-len", "128K", "--seq-len", "1K", "--l2", "off", "--json")
    b = ok_json("evaluate", "--kv-len", "131072", "--seq-len", "1024", "--l2", "off", "--json")
    assert a == b and a["shapes"]["kv_len"] == 131072
    c = ok_json("evaluate", "--heads", "1K", "--kv-heads", "256", "--batch", "2", "--seq-len",
                "256", "--head-dim", "64", "--l2", "off", "--json")
    assert (c["shapes"]["heads"], c["shapes"]["kv_heads"], c["shapes"]["group"]) == (1024, 256, 4)
    s = ok_json("search", "--seq-len", "1K", "--head-dim", "64", "--hw", "two-level", "--sram",
                "64KiB", "--json")
    assert s["shapes"]["n"] == 1024
    out = tmp_path / "sw"
    r = run("sweep", "fa2", "--seq-len", "1K", "--heads", "2K", "--kv-heads", "1K", "--out", out,
            "--no-plots", "--quiet")
    assert r.exit_code == 0, r.output
    row = pd.read_csv(out / "sweep.csv").iloc[0]
    assert (row.heads, row.kv_heads) == (2048, 1024)


def test_one_set_of_defaults():
    from iosim.cli.evaluate_cmd import command as ev
    from iosim.cli.search_cmd import command as se
    from iosim.cli.sweep_cmd import command as sw

    def defaults(cmd):
        return {p.name: p.default for p in cmd.params}

    e, s, w = defaults(ev), defaults(se), defaults(sw)
    for k in ("seq_len", "head_dim", "hw", "dtype", "batch", "heads", "kv_heads", "causal"):
        assert e[k] == s[k], k
    assert int(w["seq_len"]) == e["seq_len"] and int(w["head_dim"]) == e["head_dim"]
    assert w["dtype"] == e["dtype"] and w["causal"] is None
    # the one difference, the hardware, is explained in sweep's help
    assert w["hardware"] == "two-level"
    assert "differs from evaluate and search" in run("sweep", "--help").output


@pytest.mark.parametrize("cmd", [["evaluate"], ["search"], ["sweep", "fa2"]])
@pytest.mark.parametrize("bad", [["--seq-len", "abc"], ["--bogus"], ["--heads", "0"],
                                 ["--kv-heads", "x"]])
def test_usage_errors_are_one_line(cmd, bad, tmp_path):
    msg = one_line_error(*cmd, *bad, *(["--out", tmp_path / "o"] if cmd[0] == "sweep" else []))
    assert "Traceback" not in msg


def test_evaluate_kernel_options():
    doc = ok_json("evaluate", "--grid-order", "head-major", "--num-warps", "4", "--num-stages",
                  "2", "--block-m", "64", "--block-n", "32", "--l2", "off", "--json")
    m = doc["mapping"]
    assert (m["grid_order"], m["num_warps"], m["num_stages"], m["block_q"], m["block_kv"]) == \
        ("head-major", 4, 2, 64, 32)
    for mode in ("auto", "simulate", "off"):
        assert run("evaluate", "--seq-len", "1K", "--l2", mode, "--json").exit_code == 0, mode
    assert "'--l2'" in one_line_error("evaluate", "--l2", "maybe")


def test_heads_must_be_a_multiple_of_kv_heads(tmp_path):
    for cmd in (["evaluate"], ["search"], ["sweep", "fa2", "--out", tmp_path / "o"]):
        msg = one_line_error(*cmd, "--heads", "32", "--kv-heads", "5")
        assert "heads (32) must be a multiple of kv-heads (5)" in msg


def test_gqa_evaluate_counts():
    """32 query heads over 8 K/V heads, N = 8192, d = 128, BLOCK_M = 128: K is read beyond
    SMEM 8 x ceil(8192 * 4 / 128) x 8192 x 128 elements (bf16)."""
    doc = ok_json("evaluate", "attention-1pass", "--kv-heads", "8", "--heads", "32",
                  "--seq-len", "8192", "--l2", "off", "--json")
    k = doc["levels"]["SMEM"]["per_tensor"]["K"]["read_bytes"]
    assert k == 2 * 8 * 256 * 8192 * 128
    assert doc["per_head_elements"]["K"]["read"] == 256 * 8192 * 128
    assert doc["flops"]["matmul"] == 32 * 4 * 8192**2 * 128


def test_progress_bars_exist(monkeypatch):
    import tqdm
    seen = []
    real = tqdm.tqdm

    def spy(*a, **kw):
        seen.append(kw)
        return real(*a, **kw)

    monkeypatch.setattr(tqdm, "tqdm", spy)
    from iosim.search import search
    search("attention-1pass", "two-level", n=256, d=32, sram_bytes=[65536], progress=True)
    assert seen and seen[0]["delay"] == 2.0 and seen[0]["disable"] is None
    assert "--quiet" in run("search", "--help").output
    assert "--quiet" in run("sweep", "--help").output


# ------------------------------------------------------------------ mappings that do not fit


@pytest.fixture
def hstu(tmp_path):
    p = tmp_path / "hstu.casc"
    p.write_text(HSTU)
    return str(p)


@pytest.mark.parametrize("mp", ["fused-2pass", "fused-3pass", "saha-ye"])
def test_non_softmax_cascade_is_refused_by_softmax_mappings(hstu, mp):
    msg = one_line_error("evaluate", hstu, "--mapping", mp)
    assert f"mapping {mp} needs a softmax cascade (a max reduction over the key rank); " \
           f"cascade 'hstu' has none" in msg
    assert f"needs a softmax cascade" in one_line_error("search", hstu, "--mapping", mp)


def test_non_softmax_split_k_has_no_log_sum_exp(hstu):
    """Split-K of a plain sum over the keys: per split a partial output PO (summed by the
    combine kernel), no LSE. P = 4 queries, 2048 keys, 8 splits of 256 keys, d = 64: K, V
    and the bias RAB (bf16, not a 1-byte mask) once; PO written and read 8 x 4 x 64."""
    doc = ok_json("evaluate", hstu, "--mapping", "decode-splitk", "--seq-len", "4", "--kv-len",
                  "2K", "--head-dim", "64", "--hw", "two-level", "--sram", "1MiB", "--json")
    ph = doc["per_head_elements"]
    assert "LSE" not in ph
    assert ph["PO"] == {"read": 8 * 4 * 64, "write": 8 * 4 * 64}
    assert ph["K"]["read"] == ph["V"]["read"] == 2048 * 64
    assert ph["RAB"]["read"] == 4 * 2048
    hbm = doc["levels"]["HBM"]["per_tensor"]
    assert hbm["RAB"]["read_bytes"] == 2 * 4 * 2048


def test_fa2_reads_the_bias_of_a_user_cascade(hstu):
    """FA2 on the HSTU cascade: one bias tile per (query tile, key tile) pair, i.e. the
    whole P x M bias once, at 2 bytes (bf16); no LSE (no softmax)."""
    doc = ok_json("evaluate", hstu, "--seq-len", "512", "--head-dim", "64", "--l2", "off",
                  "--json")
    ph = doc["per_head_elements"]
    assert ph["RAB"]["read"] == 512 * 512 and "LSE" not in ph
    assert doc["levels"]["HBM"]["per_tensor"]["RAB"]["read_bytes"] == 2 * 512 * 512
    assert ph["K"]["read"] == 4 * 512 * 64                     # 4 query tiles of 128


def test_saha_ye_refuses_extra_inputs():
    msg = one_line_error("evaluate", "attention-masked", "--mapping", "saha-ye")
    assert "mapping saha-ye reads exactly Q[P, E], K[M, E], V[M, F]" in msg and "Mask" in msg


def test_masked_split_k_reads_the_mask():
    doc = ok_json("evaluate", "attention-masked", "--mapping", "decode-splitk", "--seq-len",
                  "4", "--kv-len", "2048", "--head-dim", "64", "--hw", "two-level", "--sram",
                  "1MiB", "--json")
    ph = doc["per_head_elements"]
    assert ph["Mask"]["read"] == 4 * 2048
    assert doc["levels"]["HBM"]["per_tensor"]["Mask"]["read_bytes"] == 4 * 2048   # 1 byte


def test_decode_cascade_under_fa2_sees_its_end_aligned_mask():
    """The decode cascade masks m > p + M - P: its last query sees every key, so with one
    query FA2 reads all 2048 keys, not the first key tile."""
    doc = ok_json("evaluate", "decode-splitk", "--mapping", "fa2", "--seq-len", "1",
                  "--kv-len", "2048", "--head-dim", "64", "--causal", "--l2", "off", "--json")
    assert doc["per_head_elements"]["K"]["read"] == 2048 * 64


def _renamed(name: str) -> str:
    """A library cascade with its ranks renamed by hand: P -> T, M -> S, E -> D, F -> V2 (and
    their index variables and partition ranks), the structure unchanged."""
    import re
    src = text(name)
    head, body = src.split("\n", 1) if src.startswith("cascade") else ("", src)
    subs = {"P": "T", "M": "S", "E": "D", "F": "V2", "M1": "S1", "M0": "S0",
            "p": "t", "m": "s", "e": "d", "f": "v2", "m1": "s1", "m0": "s0"}
    pat = re.compile(r"\b(" + "|".join(sorted(subs, key=len, reverse=True)) + r")\b")
    out = []
    for ln in src.splitlines():
        if ln.lstrip().startswith(("#", "cascade ")):
            out.append(ln)
            continue
        out.append(pat.sub(lambda mt: subs[mt.group(1)], ln))
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("name", ["attention-3pass", "attention-1pass", "attention-window"])
def test_renamed_ranks_evaluate_identically(name, tmp_path):
    """The roles of the ranks are found from the structure (cascades.roles), not from their
    names: the same cascade written with T, S, D, V2 gives the same report."""
    renamed = _renamed(name)
    assert "[T, D]" in renamed and "[P, E]" not in renamed
    p = tmp_path / f"{name}.casc"
    p.write_text(renamed)
    args = ["--seq-len", "1000", "--head-dim", "64", "--causal", "--json"]
    a = json.loads(run("evaluate", name, *args).output)
    b = json.loads(run("evaluate", str(p), *args).output)
    for k in ("levels", "flops", "time_s", "bound", "per_head_elements", "loop_nest"):
        assert a[k] == b[k], k
