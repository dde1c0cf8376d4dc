"""The generated MLA decode kernel (cascades.triton.emit_mla) in Triton's interpreter against
the NumPy executor's decode-mla cascade, request by request: small latent and rope dims (32 +
16 in chunks of 16, so the chunk loop and the value split run), a few heads packed into the
rows of one program, ragged lengths, a few new tokens under the end-aligned causal mask,
dense / ragged / paged caches (pages scattered over the pool, shorter and longer than a key
block), the three schedules, one or two programs per row tile's value columns; the roles
read from the structure; and the GPU script's registered plan."""
from __future__ import annotations

import csv
import importlib.util

import numpy as np
import pytest

import cascades
from cascades.triton import CodegenError
from cascades.triton.emit_mla import generate_mla, mla_plan

HAVE_TRITON = (importlib.util.find_spec("torch") is not None
               and importlib.util.find_spec("triton") is not None)
needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="torch and triton are not installed")
E, R, F, CH = 32, 16, 8, 16          # latent, rope, up-projected value dims; latent chunk

_LATENT_ONLY = """
cascade mla-latent "absorbed MLA decode ending at the latent output"
param s = 0.25
param c = false
param block_kv = 16
input  A[H, P, E]
input  B[H, P, R]
input  L[M, E]
input  K[M, R]
output Y[H, P, E]
partition M -> M1, M0 by block_kv
iterate M1 until m1 >= M1
LB[m1, m0, e] = L[m1*M0+m0, e]
KB[m1, m0, r] = K[m1*M0+m0, r]
RM[m1=0, h, p] = -inf
RD[m1=0, h, p] = 0
RN[m1=0, h, p, e] = 0
S1[m1, m0, h, p] = sum[e] A[h, p, e] * LB[m1, m0, e]
S2[m1, m0, h, p] = sum[r] B[h, p, r] * KB[m1, m0, r]
S[m1, m0, h, p] = where(c and m1*M0 + m0 > p + M - P, -inf, s * (S1[m1, m0, h, p] + S2[m1, m0, h, p]))
LM[m1, h, p] = max[m0] S[m1, m0, h, p]
RM[m1+1, h, p] = max(RM[m1, h, p], LM[m1, h, p])
X[m1, m0, h, p] = where(RM[m1+1, h, p] == -inf, 0, exp(S[m1, m0, h, p] - RM[m1+1, h, p]))
XD[m1, h, p] = sum[m0] X[m1, m0, h, p]
XV[m1, h, p, e] = sum[m0] X[m1, m0, h, p] * LB[m1, m0, e]
PR[m1, h, p] = where(RM[m1+1, h, p] == -inf, 1, exp(RM[m1, h, p] - RM[m1+1, h, p]))
RD[m1+1, h, p] = XD[m1, h, p] + RD[m1, h, p] * PR[m1, h, p]
RN[m1+1, h, p, e] = XV[m1, h, p, e] + RN[m1, h, p, e] * PR[m1, h, p]
Y[h, p, e] = RN[M1, h, p, e] / RD[M1, h, p]
"""


# ------------------------------------------------------------------ roles from the structure
def test_roles_are_read_from_the_structure():
    p = mla_plan(cascades.load("decode-mla"))
    assert (p.latent_query, p.rope_query, p.latent_cache, p.rope_cache) == ("QL", "QR", "CKV", "KR")
    assert (p.up_proj, p.latent_output, p.output) == ("WUV", "OL", "O")
    assert p.ranks == dict(key="M", latent="E", rope="R", head="H", token="P", value="F")
    assert p.causal_param == "causal"
    # renamed tensors and ranks, no up-projection: the same roles, the output stays latent
    q = mla_plan(cascades.parse(_LATENT_ONLY))
    assert (q.latent_query, q.rope_query, q.latent_cache, q.rope_cache) == ("A", "B", "L", "K")
    assert q.up_proj is None and q.latent_output == q.output == "Y"
    assert q.scale == "s" and q.causal_param == "c"
    # not latent attention: no MLA plan (the other generators take them)
    for name in ("decode", "attention-1pass", "decode-streamk"):
        assert mla_plan(cascades.load(name)) is None


def test_a_causal_mask_from_the_start_is_refused():
    bad = _LATENT_ONLY.replace("p + M - P", "p")
    with pytest.raises(CodegenError, match="aligned to the end"):
        mla_plan(cascades.parse(bad))


# ------------------------------------------------------------------------ the kernels
@pytest.fixture
def interpret(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("IOSIM_TRITON_CACHE", str(tmp_path_factory.getbasetemp() / "triton"))


def _inputs(torch, layout, lens, heads, p, dtype, seed, page=None):
    """Absorbed queries, the cache in ``layout``, W_UV and the per-request cache rows."""
    g = torch.Generator().manual_seed(seed)
    B = len(lens)
    ql = torch.randn(B, heads, p, E, generator=g, dtype=torch.float64)
    qr = torch.randn(B, heads, p, R, generator=g, dtype=torch.float64)
    wuv = torch.randn(heads, E, F, generator=g, dtype=torch.float64) / E ** 0.5
    rows = [(torch.randn(n, E, generator=g, dtype=torch.float64),
             torch.randn(n, R, generator=g, dtype=torch.float64)) for n in lens]
    kw = {}
    if layout == "dense":               # padded to the longest; kv_lens mark the used keys
        m = max(lens)
        ckv = torch.full((B, m, E), float("nan"), dtype=torch.float64)
        kr = torch.full((B, m, R), float("nan"), dtype=torch.float64)
        for b, (c, k) in enumerate(rows):
            ckv[b, :len(c)], kr[b, :len(k)] = c, k
        kw["kv_lens"] = lens
    elif layout == "ragged":
        ckv = torch.cat([c for c, _ in rows])
        kr = torch.cat([k for _, k in rows])
        kw["cu_seqlens"] = [0] + list(np.cumsum(lens))
    else:                               # the requests' pages scattered over the pool
        need = [-(-n // page) for n in lens]
        perm = torch.randperm(sum(need) + 3, generator=g)
        ckv = torch.full((sum(need) + 3, page, E), float("nan"), dtype=torch.float64)
        kr = torch.full((sum(need) + 3, page, R), float("nan"), dtype=torch.float64)
        table = torch.zeros(B, max(need), dtype=torch.int32)
        at = 0
        for b, ((c, k), n) in enumerate(zip(rows, need)):
            for j in range(n):
                pg = int(perm[at + j])
                table[b, j] = pg
                part = slice(j * page, min((j + 1) * page, len(c)))
                w = part.stop - part.start
                ckv[pg, :w], kr[pg, :w] = c[part], k[part]
            at += n
        kw.update(block_table=table, kv_lens=lens)
    cast = lambda t: t.to(dtype)  # noqa: E731
    return (cast(ql), cast(qr), cast(ckv), cast(kr), cast(wuv), kw,
            [(cast(c).double(), cast(k).double()) for c, k in rows])


def _expected(c, ql, qr, wuv, rows, causal, out):
    """The executor's cascade per request (float64 of the same rounded inputs)."""
    res = []
    for b, (ckv, kr) in enumerate(rows):
        x = {"QL": ql[b].double().numpy(), "QR": qr[b].double().numpy(),
             "CKV": ckv.numpy(), "KR": kr.numpy()}
        if wuv is not None:
            x["WUV"] = wuv.double().numpy()
        res.append(cascades.execute(c, x, causal=causal, block_kv=7)[out])
    return np.stack(res)


def _check(got, ref, dtype):
    got = got.double().numpy()
    assert np.isfinite(got).all()
    err = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert err < (1e-5 if dtype == "fp32" else 1e-2), err


CASES = [  # layout, schedule, causal, dtype, heads, new tokens, lengths, page, value split
    ("dense", "nosplit", False, "fp32", 4, 1, (37, 5, 64), None, 1),
    ("dense", "split", True, "fp16", 8, 3, (40, 3, 17), None, 2),
    ("dense", "streamk", True, "fp32", 6, 2, (50, 9), None, 2),
    ("ragged", "split", False, "fp16", 4, 2, (33, 1, 70), None, 1),
    ("ragged", "streamk", False, "fp32", 8, 1, (20, 45, 2), None, 1),
    ("paged", "split", True, "fp32", 4, 2, (45, 30, 7), 8, 2),       # pages < a key block
    ("paged", "streamk", False, "fp16", 5, 1, (70, 18, 33), 32, 1),  # whole blocks per page
    ("paged", "nosplit", True, "fp16", 4, 3, (64, 16), 16, 2),
]


@needs_triton
@pytest.mark.parametrize("layout,schedule,causal,dtype,heads,p,lens,page,vs", CASES)
def test_interpreter_matches_executor(interpret, layout, schedule, causal, dtype, heads, p, lens,
                                      page, vs):
    import torch
    gen = generate_mla("decode-mla", latent=E, rope=R, chunk=CH, value_split=vs, block_m=16,
                       block_n=16, num_warps=4, num_stages=1, dtype=dtype)
    mod = gen.load()
    tdt = {"fp32": torch.float32, "fp16": torch.float16}[dtype]
    ql, qr, ckv, kr, wuv, kw, rows = _inputs(torch, layout, list(lens), heads, p, tdt,
                                             seed=len(lens) * 31 + heads, page=page)
    o = mod.forward(ql, qr, ckv, kr, wuv, causal=causal, schedule=schedule, split_kv=3,
                    programs=5, **kw)
    assert o.shape == (len(lens), heads, p, F)
    _check(o, _expected(cascades.load("decode-mla"), ql, qr, wuv, rows, causal, "O"), dtype)


@needs_triton
def test_latent_output_and_explicit_scale(interpret):
    """A cascade that ends at the latent output (renamed tensors): forward returns OL; its
    scale and causal flag passed by their names; 20 (token, head) rows in two row tiles."""
    import torch
    c = cascades.parse(_LATENT_ONLY)
    mod = generate_mla(c, latent=E, rope=R, chunk=CH, value_split=2, block_m=16, block_n=16,
                       num_warps=4, num_stages=1, dtype="fp32").load()
    ql, qr, ckv, kr, _, kw, rows = _inputs(torch, "ragged", [29, 40], 10, 2, torch.float32, 3)
    ol = mod.forward(ql, qr, ckv, kr, s=0.1, c=True, schedule="split", split_kv=2, **kw)
    assert ol.shape == (2, 10, 2, E)
    ref = []
    for b, (lat, kk) in enumerate(rows):
        x = {"A": ql[b].double().numpy(), "B": qr[b].double().numpy(), "L": lat.numpy(),
             "K": kk.numpy()}
        ref.append(cascades.execute(c, x, s=0.1, c=True)["Y"])
    _check(ol, np.stack(ref), "fp32")


@needs_triton
def test_bad_launches_are_one_line_errors(interpret):
    import torch
    mod = generate_mla("decode-mla", latent=E, rope=R, chunk=CH, block_m=16, block_n=16,
                       num_warps=4, num_stages=1, dtype="fp32").load()
    ql, qr, ckv, kr, wuv, kw, _ = _inputs(torch, "dense", [9, 4], 4, 1, torch.float32, 0)
    with pytest.raises(CodegenError, match="up-projection"):
        mod.forward(ql, qr, ckv, kr, None, **kw)
    with pytest.raises(CodegenError, match="32 latent \\+ 16 rope"):
        mod.forward(ql[..., :16], qr, ckv, kr, wuv, **kw)
    with pytest.raises(CodegenError, match="float32"):
        mod.forward(ql.half(), qr.half(), ckv.half(), kr.half(), wuv.half(), **kw)
    with pytest.raises(CodegenError, match="needs at least as many keys"):
        mod.forward(ql.expand(2, 4, 5, E), qr.expand(2, 4, 5, R), ckv, kr, wuv, causal=True, **kw)
    with pytest.raises(CodegenError, match="value_split"):
        generate_mla("decode-mla", latent=E, rope=R, chunk=CH, value_split=4)


def test_codegen_cli_generates_the_mla_module(tmp_path):
    from click.testing import CliRunner

    from iosim.cli import main
    out = tmp_path / "mla.py"
    r = CliRunner().invoke(main, ["codegen", "decode-mla", "--block-n", "64", "--out", str(out)])
    assert r.exit_code == 0, r.output
    src = out.read_text()
    assert "def decode_mla_mla_partial" in src and "BLOCK_N = 64" in src
    assert "LATENT = 512" in src and "ROPE = 64" in src
    r = CliRunner().invoke(main, ["codegen", "decode-mla", "--tma"])
    assert r.exit_code == 2 and "--tma does not apply" in r.output


# ------------------------------------------------------------------ the registered GPU plan
def test_plan_is_the_scripts_launches_with_the_models_predictions():
    """experiments/data/serving_mla_plan.csv: the device script's launch list, each with the
    prediction of the current MLA model (registered before the GPU ran them)."""
    from device_plans import device_script, registered_plan
    mod = device_script("serving_mla")
    rows, want = registered_plan(mod, mod.FIELDS)
    assert len(rows) >= 40
    for r, w in zip(rows, want):
        pred = mod.predict(w)
        assert float(r["predicted_ms"]) == pytest.approx(pred["predicted_ms"], rel=1e-3)
        assert r["model_commit"]
    assert {r["layout"] for r in rows} == {"dense", "paged"}
    assert {r["schedule"] for r in rows} == {"split", "streamk"}
    assert {r["q_len"] for r in rows} == {"1", "2"}


def test_the_recorded_gpu_run():
    """The H100 run of the registered launches: every output within the bf16 bound, no kernel
    spilled, and the one-program form (the default) faster than two programs per row tile on
    every shape measured both ways (the measured times are the expectations)."""
    import csv
    from pathlib import Path

    from cascades.triton.emit_mla import MLA_VALUE_SPLIT
    path = Path(__file__).parent.parent / "experiments" / "data" / "gpu_serving_mla.csv"
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 40 and {r["device"] for r in rows} == {"NVIDIA H100 80GB HBM3"}
    assert all(float(r["rel_err_vs_fp64"]) < 1e-2 and int(r["n_spills"]) == 0 for r in rows)
    key = lambda r: (r["layout"], r["batch"], r["q_len"], r["kv_lens"])  # noqa: E731
    one = {key(r): float(r["ms"]) for r in rows if r["value_split"] == "1"}
    two = {}
    for r in rows:
        if r["value_split"] == "2" and key(r) in one:
            two[key(r)] = min(two.get(key(r), float("inf")), float(r["ms"]))
    assert len(two) == 4 and all(one[k] < two[k] for k in two)
    assert MLA_VALUE_SPLIT == 1
