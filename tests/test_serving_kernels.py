"""Serving decode kernels (cascades.triton.emit_decode) in Triton's interpreter against the
NumPy executor: grouped query heads packed per K/V head, a few new tokens with the causal mask
aligned to each request's end, ragged (cumulative lengths) and paged caches (pages scattered
over the pool), and the three schedules -- no split, FlashDecoding's split, stream-K."""
from __future__ import annotations

import importlib.util
import zlib

import numpy as np
import pytest

import cascades
from cascades.triton import CodegenError, Tiling
from cascades.triton.emit_decode import decode_schedule, generate_serving, serving_plan

HAVE_TRITON = (importlib.util.find_spec("torch") is not None
               and importlib.util.find_spec("triton") is not None)
needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="torch and triton are not installed")


# ------------------------------------------------------------------ the host-side schedule
def test_streamk_schedule_cuts_equal_shares_across_pairs():
    # pairs of 3, 10 and 2 key blocks (15 in all) over 4 programs: shares 3, 4, 4, 4 blocks
    prog, pair, lo, hi, by_pair = decode_schedule([3, 10, 2], "streamk", programs=4)
    segs = list(zip(pair, lo, hi))
    assert segs == [(0, 0, 3), (1, 0, 4), (1, 4, 8), (1, 8, 10), (2, 0, 2)]
    assert prog == [0, 1, 2, 3, 5]          # the last program finishes pair 1, starts pair 2
    assert by_pair == [0, 1, 4, 5]
    shares = [sum(hi[s] - lo[s] for s in range(prog[j], prog[j + 1])) for j in range(4)]
    assert shares == [3, 4, 4, 4]


def test_split_and_nosplit_schedules():
    prog, pair, lo, hi, by_pair = decode_schedule([5, 1], "split", split_kv=2)
    assert list(zip(pair, lo, hi)) == [(0, 0, 3), (0, 3, 5), (1, 0, 1)]   # 1 block: 1 chunk
    assert prog == [0, 1, 2, 3] and by_pair == [0, 2, 3]
    prog, pair, lo, hi, _ = decode_schedule([5, 1], "nosplit")
    assert list(zip(pair, lo, hi)) == [(0, 0, 5), (1, 0, 1)]


def test_plans_read_from_the_cascades():
    assert serving_plan(cascades.load("decode")).schedule == "nosplit"
    assert serving_plan(cascades.load("decode-splitk")).schedule == "split"
    sk = serving_plan(cascades.load("decode-streamk"))
    assert sk.schedule == "streamk" and sk.causal_param == "causal"
    with pytest.raises(CodegenError, match="aligned to the end"):
        serving_plan(cascades.load("attention-gqa"))   # causal from the start, not the end
    with pytest.raises(CodegenError, match="softmax"):
        serving_plan(cascades.load("sigmoid"))


# ------------------------------------------------------------------------ the kernels
@pytest.fixture
def interpret(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("IOSIM_TRITON_CACHE", str(tmp_path_factory.getbasetemp() / "triton"))


def _expected(q, ks, vs, causal):
    """The executor's decode cascade per request: q [B, Hq, P, E], ks[b] [Hkv, L_b, E]."""
    c = cascades.load("decode")
    B, HQ, P, E = q.shape
    hkv = ks[0].shape[0]
    g = HQ // hkv
    out = np.zeros((B, HQ, P, vs[0].shape[-1]))
    for b in range(B):
        for j in range(hkv):
            o = cascades.execute(c, dict(Q=q[b, j * g:(j + 1) * g], K=ks[b][j], V=vs[b][j]),
                                 causal=causal)["O"]
            out[b, j * g:(j + 1) * g] = o
    return out


def _check(got, ref, dtype):
    got = got.double().numpy()
    assert np.isfinite(got).all()
    err = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert err < (1e-5 if dtype == "fp32" else 1e-2), err


LAYOUTS = [  # (cascade, schedule, layout, causal, dtype, query heads, K/V heads, new tokens,
    #          head dim); key blocks of 16: paged-8: two pages a block (an entry per page),
    #          paged-32: two blocks a page, paged-12 / paged-24: pages not aligned to blocks
    ("decode", "nosplit", "dense", True, "fp32", 4, 2, 2, 16),
    ("decode", "split", "ragged", True, "fp16", 8, 2, 1, 16),
    ("decode-splitk", "split", "paged-8", False, "fp32", 2, 2, 1, 16),
    ("decode", "split", "paged-32", True, "fp16", 4, 1, 2, 64),
    ("decode-streamk", "streamk", "ragged", True, "fp32", 4, 1, 3, 16),
    ("decode-streamk", "streamk", "paged-8", True, "fp16", 4, 2, 2, 16),
    ("decode-streamk", "streamk", "paged-32", False, "fp32", 8, 2, 1, 16),
    ("decode-streamk", "streamk", "dense", False, "fp32", 2, 2, 1, 16),
    ("decode", "split", "paged-12", True, "fp32", 4, 2, 2, 16),
    ("decode-streamk", "streamk", "paged-24", False, "fp16", 2, 1, 1, 16),
]


@needs_triton
@pytest.mark.parametrize("name, schedule, layout, causal, dtype, hq, hkv, p, d", LAYOUTS)
def test_interpreter_matches_executor(interpret, name, schedule, layout, causal, dtype, hq,
                                      hkv, p, d):
    import torch
    t = Tiling(block_n=16, num_warps=4, num_stages=1, head_dim=d, dtype=dtype, split_kv=3)
    mod = generate_serving(name, t).load()
    tdt = {"fp32": torch.float32, "fp16": torch.float16}[dtype]
    g = torch.Generator().manual_seed(zlib.crc32(f"{name}{layout}{dtype}".encode()))
    lens = [37, 5, 70]                     # partial blocks, a request shorter than a block
    B = len(lens)
    q = (torch.randn(B, hq, p, d, generator=g) * 2).to(tdt)
    ks = [torch.randn(hkv, n, d, generator=g).to(tdt) for n in lens]
    vs = [torch.randn(hkv, n, d, generator=g).to(tdt) for n in lens]
    kw = dict(schedule=schedule)
    if schedule == "streamk":
        kw["programs"] = 5                 # shares cross request and head boundaries
    if layout == "dense":
        m = max(lens)
        k = torch.zeros(B, hkv, m, d, dtype=tdt)
        v = torch.zeros(B, hkv, m, d, dtype=tdt)
        for b, n in enumerate(lens):
            k[b, :, :n], v[b, :, :n] = ks[b], vs[b]
        kw["kv_lens"] = lens
    elif layout == "ragged":
        k = torch.cat([x.transpose(0, 1) for x in ks]).contiguous()     # [T, Hkv, d]
        v = torch.cat([x.transpose(0, 1) for x in vs]).contiguous()
        kw["cu_seqlens"] = np.concatenate([[0], np.cumsum(lens)]).tolist()
    else:                                  # pages scattered over a pool
        page = int(layout.split("-")[1])
        need = [-(-n // page) for n in lens]
        pool = sum(need) + 4
        perm = torch.randperm(pool, generator=g)
        k = torch.full((pool, page, hkv, d), float("nan"), dtype=tdt)
        v = torch.full((pool, page, hkv, d), float("nan"), dtype=tdt)
        table = torch.zeros(B, max(need) + 1, dtype=torch.int32)
        used = 0
        for b, n in enumerate(lens):
            for i in range(need[b]):
                pg = int(perm[used])
                used += 1
                table[b, i] = pg
                rows = slice(i * page, min(n, (i + 1) * page))
                cnt = rows.stop - rows.start
                k[pg, :cnt] = ks[b][:, rows].transpose(0, 1)
                v[pg, :cnt] = vs[b][:, rows].transpose(0, 1)
                k[pg, cnt:] = 0                 # the partial last page's tail is never read:
                v[pg, cnt:] = 0                 # zero keeps NaN out of masked-load fallbacks
        kw.update(block_table=table, kv_lens=lens)
        assert not torch.equal(table[:, :2].flatten().sort().values, table[:, :2].flatten())
    o = mod.forward(q, k, v, causal=causal, **kw)
    ref = _expected(q.double().numpy(), [x.double().numpy() for x in ks],
                    [x.double().numpy() for x in vs], causal)
    _check(o, ref, dtype)


@needs_triton
def test_streamk_kernel_equals_the_streamk_cascade(interpret):
    """The stream-K kernel against the decode-streamk cascade's own executor run (keys of all
    pairs laid end to end, per-pair bounds), GQA and three new tokens."""
    import torch
    d, hq, hkv, p, lens = 16, 4, 2, 3, [20, 45]
    mod = generate_serving("decode-streamk", Tiling(block_n=16, num_warps=4, num_stages=1,
                                                    head_dim=d, dtype="fp32")).load()
    g = torch.Generator().manual_seed(7)
    q = torch.randn(len(lens), hq, p, d, generator=g)
    k = torch.randn(sum(lens), hkv, d, generator=g)
    v = torch.randn(sum(lens), hkv, d, generator=g)
    cu = [0, lens[0], sum(lens)]
    o = mod.forward(q, k, v, cu_seqlens=cu, causal=True, programs=3)
    # the cascade's pairs: (request b, K/V head j) in order, keys back to back
    qq, kk, vv, start, end = [], [], [], [], []
    pos = 0
    for b, n in enumerate(lens):
        for j in range(hkv):
            qq.append(q[b, j * 2:(j + 1) * 2].numpy())
            kk.append(k[cu[b]:cu[b + 1], j].numpy())
            vv.append(v[cu[b]:cu[b + 1], j].numpy())
            start.append(pos)
            pos += n
            end.append(pos)
    ref = cascades.execute(cascades.load("decode-streamk"),
                           dict(Q=np.stack(qq), K=np.concatenate(kk), V=np.concatenate(vv),
                                Start=np.array(start, float), End=np.array(end, float)),
                           causal=True, share_size=7)["O"]
    got = o.numpy().reshape(len(lens), hkv, 2, p, d).reshape(len(lens) * hkv, 2, p, d)
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-5


@needs_triton
def test_bad_launches_are_one_line_errors(interpret):
    import torch
    mod = generate_serving("decode", Tiling(block_n=16, num_warps=4, num_stages=1,
                                            head_dim=16, dtype="fp32")).load()
    q = torch.randn(2, 4, 1, 16)
    k = v = torch.randn(2, 3, 32, 16)
    with pytest.raises(CodegenError, match="not a multiple"):
        mod.forward(q, k, v)
    k = v = torch.randn(2, 2, 32, 16)
    with pytest.raises(CodegenError, match="3 key lengths for a batch of 2"):
        mod.forward(q, k, v, kv_lens=[4, 5, 6])
    with pytest.raises(CodegenError, match="block_table has 1 pages"):
        mod.forward(q, torch.randn(4, 8, 2, 16), torch.randn(4, 8, 2, 16),
                    block_table=torch.zeros(2, 1, dtype=torch.int32), kv_lens=[8, 9])


def test_codegen_cli_generates_the_streamk_module(tmp_path):
    """`iosim codegen decode-streamk` (a whole batch's cascade) writes the serving module;
    options of the mapping-driven generator are refused in one line."""
    from click.testing import CliRunner

    from iosim.cli import main
    out = tmp_path / "sk.py"
    res = CliRunner().invoke(main, ["codegen", "decode-streamk", "--head-dim", "64",
                                    "--block-n", "32", "--out", str(out)])
    assert res.exit_code == 0, res.output
    src = out.read_text()
    assert "BLOCK_N = 32" in src and "HEAD_DIM = 64" in src and "_serve_combine" in src
    res = CliRunner().invoke(main, ["codegen", "decode-streamk", "--tma"])
    assert res.exit_code == 2 and "--tma does not apply" in res.output
    assert len(res.output.strip().splitlines()) == 1
