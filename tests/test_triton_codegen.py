"""Code generation from cascades (cascades.triton): plans, errors, and the generated kernels run
in Triton's interpreter (TRITON_INTERPRET=1, torch CPU) against the NumPy executor."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import zlib

import numpy as np
import pytest

import cascades
from cascades.errors import CascadeError
from cascades.triton import CodegenError, Tiling, analyze, generate

HAVE_TRITON = (importlib.util.find_spec("torch") is not None
               and importlib.util.find_spec("triton") is not None)
needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="torch and triton are not installed")


# ----------------------------------------------------------------------------- plans
@pytest.mark.parametrize("name, family, norm, nonlin", [
    ("attention-1pass", "online", "deferred", "exp"),
    ("flash1", "online", "per-step", "exp"),
    ("attention-gqa", "online", "deferred", "exp"),
    ("sigmoid", "none", "none", "sigmoid"),
    ("attention-3pass", "three-pass", "three-pass", "exp"),
    ("attention-2pass", "partials", "local-max", "exp"),
    ("decode-splitk", "partials", "lse", "exp"),
])
def test_plan_read_from_ir(name, family, norm, nonlin):
    plan = analyze(cascades.load(name))
    assert (plan.family, plan.normalisation, plan.nonlinearity) == (family, norm, nonlin)
    assert plan.causal_param == "causal"
    assert plan.group_rank == ("G" if name == "attention-gqa" else None)
    assert plan.causal_offset == ("((0 + M) - P)" if name == "decode-splitk" else "0")
    assert plan.bias == ("((scale * 0) + bias)" if name == "sigmoid" else "0")


def test_plan_follows_the_cascade_text():
    """A changed score map in the text changes the kernel: scale*2 and a different mask fill."""
    text = cascades.library.text("attention-1pass").replace(
        "scale * BQK[m1, m0, p]", "2 * scale * BQK[m1, m0, p] + 1")
    plan = analyze(cascades.parse(text))
    assert eval(plan.scale, {"scale": 0.5}) == 1.0
    assert eval(plan.bias, {"scale": 0.5}) == 1
    src = generate(cascades.parse(text), Tiling()).source
    assert "qk_bias" in src.split("def forward")[0].split("_loop(")[1]


@pytest.mark.parametrize("name, why", [
    ("attention-masked", "boolean mask input"),
])
def test_unsupported_cascades_one_line(name, why):
    with pytest.raises(CodegenError) as ei:
        generate(name)
    msg = str(ei.value)
    assert why in msg and "\n" not in msg and isinstance(ei.value, CascadeError)


@pytest.mark.parametrize("kw, why", [
    (dict(head_dim=96), "head dim 96"),
    (dict(dtype="int8"), "dtype 'int8'"),
    (dict(block_m=256, block_n=256, num_stages=4), "shared memory"),
    (dict(block_m=48), "block_m"),
    (dict(num_warps=3), "num_warps"),
    (dict(grid_order="diagonal"), "grid order"),
])
def test_bad_tilings(kw, why):
    with pytest.raises(CodegenError, match=why):
        Tiling(**kw)


def test_sources_differ_and_name_kernels():
    t = Tiling(head_dim=64, dtype="fp16")
    srcs = {n: generate(n, t) for n in ("attention-1pass", "flash1", "sigmoid", "attention-3pass",
                                        "decode-splitk")}
    assert srcs["attention-1pass"].kernels == ("attention_1pass_fwd",)
    assert srcs["attention-3pass"].kernels == ("attention_3pass_pass1_max",
                                               "attention_3pass_pass2_sum",
                                               "attention_3pass_pass3_out")
    assert srcs["decode-splitk"].kernels == ("decode_splitk_partial", "decode_splitk_combine")
    assert len({g.source.split('"""', 2)[2] for g in srcs.values()}) == len(srcs)
    assert "acc / l_i[:, None]" in srcs["attention-1pass"].source       # deferred division
    assert "l_div[:, None]" in srcs["flash1"].source                     # per-step division
    assert "exp2(-x" in srcs["sigmoid"].source
    for g in srcs.values():
        compile(g.source, g.cascade, "exec")


def test_cli_codegen(tmp_path):
    out = tmp_path / "k.py"
    run = [sys.executable, "-c", "import sys; from iosim.cli import main; sys.exit(main())"]
    r = subprocess.run(run + ["codegen", "flash1", "--head-dim", "64", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "def flash1_fwd" in out.read_text()
    r = subprocess.run(run + ["codegen", "attention-masked"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error:")
    r = subprocess.run(run + ["codegen", "attention-1pass", "--head-dim", "96"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "head dim" in r.stderr


# ------------------------------------------------------------------------ interpreter
def _reference(c, q, k, v, **params):
    """Executor output for [B, H, P, E] tensors (per batch and key/value head)."""
    B, HQ, P, _ = q.shape
    HK = k.shape[1]
    G = HQ // HK
    out = np.zeros((B, HQ, P, v.shape[-1]))
    grouped = len(c.inputs[0].ranks) == 3
    for b in range(B):
        for h in range(HK):
            kv = {"K": k[b, h].double().numpy(), "V": v[b, h].double().numpy()}
            if grouped:
                Q = q[b, h * G:(h + 1) * G].double().numpy()
                out[b, h * G:(h + 1) * G] = cascades.execute(c, {"Q": Q, **kv}, **params)["O"]
            else:   # a cascade without a group rank, grouped: each query head of the group
                for g in range(G):
                    out[b, h * G + g] = cascades.execute(
                        c, {"Q": q[b, h * G + g].double().numpy(), **kv}, **params)["O"]
    return out

def _check(mod, gen, c, t, q, k, v, causal, dtype, out, M):
    """Run the generated launcher into a NaN-poisoned output and compare with the executor."""
    o = mod.forward(q, k, v, causal=causal, out=out)
    params = {"causal": causal}
    if gen.plan.block_param:
        params[gen.plan.block_param] = (mod.chunk_size(M) if hasattr(mod, "chunk_size")
                                        else t.block_n)
    ref = _reference(c, q, k, v, **params)
    got = o.double().numpy()
    assert np.isfinite(got).all()
    err = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert err < (1e-5 if dtype == "fp32" else 1e-2), err



@pytest.fixture
def interpret(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("IOSIM_TRITON_CACHE", str(tmp_path_factory.getbasetemp() / "triton"))


CASES = [  # (cascade, causal, dtype): every generated family, partial tiles everywhere
    ("attention-1pass", False, "fp32"), ("attention-1pass", True, "fp32"),
    ("attention-1pass", True, "fp16"),
    ("flash1", True, "fp32"), ("sigmoid", False, "fp32"), ("sigmoid", True, "fp16"),
    ("attention-gqa", True, "fp32"), ("decode-splitk", True, "fp32"),
    ("decode-splitk", False, "fp16"), ("attention-3pass", True, "fp32"),
    ("attention-2pass", False, "fp32"),
]


@needs_triton
@pytest.mark.parametrize("name, causal, dtype", CASES)
def test_interpreter_matches_executor(interpret, name, causal, dtype):
    import torch
    c = cascades.load(name)
    t = Tiling(block_m=32, block_n=16, num_warps=4, num_stages=1, head_dim=16, dtype=dtype,
               split_kv=3, grid_order="head-major" if causal else "query-major")
    gen = generate(c, t)
    mod = gen.load()
    tdt = {"fp32": torch.float32, "fp16": torch.float16}[dtype]
    g = torch.Generator().manual_seed(zlib.crc32(f"{name}{causal}{dtype}".encode()))
    P, M = (7, 75) if name == "decode-splitk" else (75, 75)   # not multiples of the tiles
    HQ = 4 if name == "attention-gqa" else 2
    q = torch.randn(1, HQ, P, 16, generator=g).to(tdt)
    k = torch.randn(1, 2, M, 16, generator=g).to(tdt)
    v = torch.randn(1, 2, M, 16, generator=g).to(tdt)
    out = torch.full((1, HQ, P, 16), float("nan"), dtype=tdt)     # poisoned
    _check(mod, gen, c, t, q, k, v, causal, dtype, out, M)


@needs_triton
@pytest.mark.parametrize("name", ["attention-1pass", "attention-gqa", "sigmoid"])
def test_partial_query_tile_writes_only_its_rows(interpret, name):
    """Rows past the end of a partial query tile read the last query row again (an unmasked
    load) but are never stored: the output is a view into a buffer whose rows past P hold a
    sentinel, and every sentinel survives; the valid rows match the reference."""
    import torch
    c = cascades.load(name)
    t = Tiling(block_m=32, block_n=16, num_warps=4, num_stages=1, head_dim=16, dtype="fp32")
    mod = generate(c, t).load()
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    P, HQ = 45, (4 if name == "attention-gqa" else 2)
    q = torch.randn(1, HQ, P, 16, generator=g)
    k = torch.randn(1, 2, P, 16, generator=g)
    v = torch.randn(1, 2, P, 16, generator=g)
    big = torch.full((1, HQ, P + 19, 16), 12345.0)
    out = big[:, :, :P]
    mod.forward(q, k, v, causal=True, out=out)
    assert (big[:, :, P:] == 12345.0).all()
    ref = _reference(c, q, k, v, causal=True)
    assert np.abs(out.double().numpy() - ref).max() < 1e-5


KNOB_CASES = [  # (cascade, causal, dtype, knobs): the optional code paths of the generator
    ("attention-1pass", True, "fp32", dict(tma=True)),
    ("attention-gqa", True, "fp16", dict(tma=True, lazy_rescale=True, fast_exp=True)),
    ("sigmoid", True, "fp16", dict(tma=True)),
    ("attention-1pass", False, "fp16", dict(pipeline=True, lazy_rescale=True)),
    ("flash1", True, "fp16", dict(fast_exp=True)),
    ("decode-splitk", False, "fp32", dict(lazy_rescale=True)),
    ("attention-1pass", True, "fp32", dict(kv_eviction="evict_last", q_eviction="evict_first",
                                           o_eviction="evict_first")),
    ("attention-gqa", False, "fp16", dict(kv_eviction="evict_first", pipeline=True)),
]


@needs_triton
@pytest.mark.parametrize("name, causal, dtype, knobs", KNOB_CASES)
def test_interpreter_knobs_match_executor(interpret, name, causal, dtype, knobs):
    """TMA descriptors (partial tiles read past the head, masked), lazy rescaling with scores
    large enough to move the row maxima by more than 2**8, packed exp2 (emulated), pipelining."""
    import torch
    c = cascades.load(name)
    t = Tiling(block_m=32, block_n=16, num_warps=4, num_stages=1, head_dim=16, dtype=dtype,
               split_kv=3, **knobs)
    gen = generate(c, t)
    mod = gen.load()
    tdt = {"fp32": torch.float32, "fp16": torch.float16}[dtype]
    g = torch.Generator().manual_seed(zlib.crc32(f"{name}{causal}{dtype}{knobs}".encode()))
    P, M = (7, 75) if name == "decode-splitk" else (75, 75)
    HQ = 4 if name == "attention-gqa" else 2
    q = (torch.randn(1, HQ, P, 16, generator=g) * 3).to(tdt)
    k = (torch.randn(1, 2, M, 16, generator=g) * 3).to(tdt)
    v = torch.randn(1, 2, M, 16, generator=g).to(tdt)
    out = torch.full((1, HQ, P, 16), float("nan"), dtype=tdt)
    _check(mod, gen, c, t, q, k, v, causal, dtype, out, M)


def test_eviction_hints():
    """L2 eviction hints land on the loads and stores they name, and nowhere else."""
    plain = generate("attention-1pass", Tiling()).source
    assert "eviction_policy" not in plain
    src = generate("attention-1pass", Tiling(kv_eviction="evict_last")).source
    hinted = [ln.strip() for ln in src.splitlines() if "eviction_policy" in ln]
    assert hinted and all(ln.split("=", 1)[1].lstrip().startswith(("tl.load(k_ptrs",
                                                                     "tl.load(v_ptrs"))
                          for ln in hinted)
    assert {ln.split("tl.load(")[1][0] for ln in hinted} == {"k", "v"}
    src = generate("attention-1pass", Tiling(q_eviction="evict_first")).source
    assert 'q = tl.load(q_ptrs, eviction_policy="evict_first")' in src
    assert src.count("eviction_policy") == 1
    src = generate("sigmoid", Tiling(o_eviction="evict_first")).source
    assert src.count('eviction_policy="evict_first"') == 2      # the even and the masked store
    with pytest.raises(CodegenError, match="kv_eviction must be one of"):
        Tiling(kv_eviction="evict_never")
    with pytest.raises(CodegenError, match="cannot be\n?.*combined with tma"):
        Tiling(q_eviction="evict_first", tma=True)


def test_knob_validation():
    with pytest.raises(CodegenError, match="warp_specialize needs num_warps"):
        Tiling(warp_specialize=True, num_warps=4)
    with pytest.raises(CodegenError, match="tma must be"):
        Tiling(tma=1)
    # the pipelined score product holds one more K tile
    assert (Tiling(block_n=128, head_dim=64, pipeline=True).smem_bytes()
            > Tiling(block_n=128, head_dim=64).smem_bytes())
    with pytest.raises(CodegenError, match="shared memory"):
        Tiling(block_m=128, block_n=128, num_stages=3, pipeline=True)
    src = generate("attention-1pass", Tiling(warp_specialize=True)).source
    assert "make_tensor_descriptor" in src and "warp_specialize=WS" in src
    from cascades.triton import fast_tiling
    assert fast_tiling(128, seq_len=4096).tma is False
    assert fast_tiling(128, seq_len=65536).tma is True and fast_tiling(64).block_n == 64


@needs_triton
def test_launcher_rejects_wrong_inputs(interpret):
    import torch
    mod = generate("attention-1pass", Tiling(block_m=16, block_n=16, num_warps=4,
                                             num_stages=1, head_dim=16, dtype="fp32")).load()
    q = torch.randn(1, 2, 20, 16)
    with pytest.raises(CodegenError, match="head dim"):
        mod.forward(torch.randn(1, 2, 20, 32), torch.randn(1, 2, 20, 32), torch.randn(1, 2, 20, 32))
    with pytest.raises(CodegenError, match="float32"):
        mod.forward(q.half(), q.half(), q.half())
    with pytest.raises(CodegenError, match="not a multiple"):
        mod.forward(torch.randn(1, 3, 20, 16), q, q)
    three = generate("attention-3pass", Tiling(block_m=16, block_n=16, num_warps=4,
                                               num_stages=1, head_dim=16, dtype="fp32")).load()
    with pytest.raises(CodegenError, match="three passes"):
        three.forward(torch.randn(1, 4, 20, 16), q, q)


@needs_triton
@pytest.mark.parametrize("grid_order", ["query-major", "head-major"])
def test_trace_marks_in_the_interpreter(interpret, grid_order):
    """``trace_every``: each block's row holds its key extent and, at every TRACE_EVERY-th key
    block it reads, a mark (the interpreter has no clock: the mark is the key reached + 1); the
    output is still exact attention. Expected rows derived by hand from the causal bounds."""
    import torch
    t = Tiling(block_m=32, block_n=16, num_warps=4, num_stages=1, head_dim=16, dtype="fp32",
               grid_order=grid_order, trace=True, trace_every=2)
    gen = generate("attention-1pass", t)
    mod = gen.load()
    B, H, N = 1, 2, 75                       # 3 query blocks (the last partial), 5 key blocks
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(B, H, N, 16, generator=g) for _ in range(3))
    assert mod.trace_width(N) == 4 + 3       # key blocks 0, 2, 4 carry marks
    with pytest.raises(CodegenError, match="7 x thread blocks"):
        mod.forward(q, k, v, causal=True, trace=torch.zeros(5, dtype=torch.int64))
    tr = torch.full((3 * H * 7,), -1, dtype=torch.int64)
    out = mod.forward(q, k, v, causal=True, trace=tr)
    ref = _reference(cascades.load("attention-1pass"), q, k, v, causal=True)
    assert np.abs(out.double().numpy() - ref).max() < 1e-5
    rows = tr.view(-1, 7).numpy()
    for lin, row in enumerate(rows):
        # block id -> (head, query block) as the grid order lays them out
        qb = lin // H if grid_order == "head-major" else lin % 3
        extent = min((qb + 1) * 32, N)       # causal: keys up to the last query of the block
        assert row[3] == extent
        read = -(-extent // 16)              # key blocks the block reads
        want = [j * 2 * 16 + 1 if j * 2 < read else -1 for j in range(3)]
        assert list(row[4:]) == want, (lin, row)
        assert list(row[:3]) == [0, 0, 0]    # no clock, no SM id in the interpreter


def test_trace_every_validation():
    with pytest.raises(CodegenError, match="needs trace=True"):
        Tiling(trace_every=4)
    with pytest.raises(CodegenError, match="cannot be combined"):
        Tiling(trace=True, trace_every=4, pipeline=True)
    with pytest.raises(CodegenError, match="non-negative integer"):
        Tiling(trace=True, trace_every=-1)
    plain = generate("attention-1pass", Tiling(trace=True)).source
    marked = generate("attention-1pass", Tiling(trace=True, trace_every=16)).source
    assert "TRACE_EVERY = 0" in plain and "TRM" not in plain
    assert "TRACE_EVERY = 16" in marked and "TRM + (start_n // BLOCK_N) // TRACE_EVERY" in marked


# ----------------------------------------------------------- one Mapping: model and kernel
def test_one_mapping_drives_the_model_and_the_kernel():
    """The kernel is generated from the Mapping the models evaluate: changing a tile, the
    warps or the splits in that object moves the generated source and the model together."""
    from iosim.gpu.kernels import kernel_for, kernel_mapping
    from iosim.traffic import evaluate
    c = cascades.load("attention-1pass")
    m = kernel_mapping(c)
    for bq, warps in ((128, 8), (64, 4)):
        mm = m.with_(block_q=bq, num_warps=warps)
        src = kernel_for(c, mm, head_dim=64, dtype="fp16").source
        assert f"\nBLOCK_M = {bq}\n" in src and f"\nNUM_WARPS = {warps}\n" in src
        rep = evaluate(c, mm, "h100", n=4096, d=64)
        assert rep.time["kernels"][0]["programs"] == 4096 // bq
        assert rep.per_head_elements["K"]["read"] >= 4096 * 64   # re-read per query tile
    d = cascades.load("decode-splitk")
    md = kernel_mapping(d, block_m=16, split_kv=4)
    for split in (4, 16):
        src = kernel_for(d, md.with_(split_kv=split), head_dim=128).source
        assert f"\nSPLIT_KV = {split}\n" in src
        rep = evaluate(d, md.with_(split_kv=split), "h100", n=1, kv_len=65536, d=128, heads=8)
        assert rep.time["kernels"][0]["programs"] == 8 * split


def test_a_mapping_the_generator_does_not_emit_is_refused():
    from iosim.errors import IosimError
    from iosim.gpu.kernels import kernel_for
    from iosim.mapping import get_mapping
    with pytest.raises(IosimError, match="'fa2' loop nest"):
        kernel_for("flash1", get_mapping("fa1", block_q=64, block_kv=64), head_dim=64)
    with pytest.raises(IosimError, match="fused-3pass"):
        kernel_for("attention-3pass", get_mapping("unfused"), head_dim=64)


@needs_triton
def test_kernel_from_a_mapping_runs_in_the_interpreter(interpret):
    import torch
    from iosim.gpu.kernels import kernel_for, kernel_mapping
    c = cascades.load("attention-1pass")
    m = kernel_mapping(c, block_m=32, block_n=16, num_warps=4, num_stages=1)
    gen = kernel_for(c, m, head_dim=16, dtype="fp32")
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, 2, 50, 16, generator=g) for _ in range(3))
    out = torch.full((1, 2, 50, 16), float("nan"))
    _check(gen.load(), gen, c, gen.tiling, q, k, v, True, "fp32", out, 50)


@needs_triton
@pytest.mark.parametrize("name, causal", [("decode-splitk", True), ("decode-splitk", False),
                                          ("attention-1pass", True), ("sigmoid", False),
                                          ("attention-2pass", False)])
def test_grouped_query_heads_pack_into_programs(interpret, name, causal):
    """A cascade without a group rank runs grouped-query attention (4 query heads per K/V
    head): the G query heads of a K/V head are packed into the rows of a program (K/V read
    once per K/V head), partials and their combine included, against the executor per head."""
    import torch
    c = cascades.load(name)
    t = Tiling(block_m=16, block_n=16, num_warps=4, num_stages=1, head_dim=16, dtype="fp32",
               split_kv=3)
    gen = generate(c, t)
    g = torch.Generator().manual_seed(zlib.crc32(f"gqa{name}{causal}".encode()))
    P, M = (3, 70) if name == "decode-splitk" else (37, 37)
    q = torch.randn(2, 8, P, 16, generator=g)
    k = torch.randn(2, 2, M, 16, generator=g)
    v = torch.randn(2, 2, M, 16, generator=g)
    out = torch.full((2, 8, P, 16), float("nan"))
    _check(gen.load(), gen, c, t, q, k, v, causal, "fp32", out, M)


# ------------------------------------------------------------- score maps beyond a * S + b
_BASE = cascades.library.text("attention-1pass")
_SQK = "SQK[m1, m0, p]  = where(causal and m1*M0 + m0 > p, -inf, scale * BQK[m1, m0, p])"
SCORE_MAPS = {
    # Gemma-2 style logit soft-capping
    "softcap": ("param cap = 2.0",
                "SQK[m1, m0, p]  = where(causal and m1*M0 + m0 > p, -inf, "
                "cap * tanh(scale * BQK[m1, m0, p] / cap))"),
    # ALiBi: a linear bias in the distance between query and key
    "alibi": ("param slope = 0.25",
              "SQK[m1, m0, p]  = where(causal and m1*M0 + m0 > p, -inf, "
              "scale * BQK[m1, m0, p] - slope * (p - (m1*M0 + m0)))"),
}


def _score_map_cascade(name):
    param, sqk = SCORE_MAPS[name]
    assert _SQK in _BASE
    text = _BASE.replace("param block_kv = 64", f"param block_kv = 64\n{param}")
    return cascades.parse(text.replace(_SQK, sqk).replace("cascade attention-1pass",
                                                          f"cascade attention-{name}"))


@needs_triton
@pytest.mark.parametrize("name", sorted(SCORE_MAPS))
@pytest.mark.parametrize("causal", [False, True])
def test_score_maps_match_the_executor(interpret, name, causal):
    """Pointwise score maps read from the cascade (tanh soft-capping, an ALiBi position bias)
    are generated into the online-softmax kernel and match the executor."""
    import torch
    c = _score_map_cascade(name)
    t = Tiling(block_m=16, block_n=16, num_warps=4, num_stages=1, head_dim=16, dtype="fp32")
    gen = generate(c, t)
    assert gen.plan.score_fn is not None
    g = torch.Generator().manual_seed(zlib.crc32(f"{name}{causal}".encode()))
    q, k, v = (torch.randn(1, 2, 45, 16, generator=g) * 2 for _ in range(3))
    out = torch.full((1, 2, 45, 16), float("nan"))
    _check(gen.load(), gen, c, t, q, k, v, causal, "fp32", out, 45)


def test_score_map_params_are_baked_and_knobs_refused():
    c = _score_map_cascade("softcap")
    src = generate(c, Tiling(head_dim=64)).source
    fwd = next(ln for ln in src.splitlines() if ln.startswith("def forward"))
    assert "cap=" not in fwd and "scale=" not in fwd        # baked into the kernel
    assert "_tanh(" in src and "2.0" in src
    with pytest.raises(CodegenError, match="turn off tma"):
        generate(c, Tiling(head_dim=64, tma=True))


@needs_triton
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window,block_m", [(37, 16), (5, 32), (200, 16)])
def test_sliding_window_kernel_matches_the_executor(interpret, causal, window, block_m):
    """attention-window: the key loop starts at the first key block of the band, masks the
    blocks on its two edges and skips the rest; windows narrower than a block, wider than the
    sequence, partial tiles."""
    import torch
    text = cascades.library.text("attention-window").replace("param window = 256",
                                                             f"param window = {window}")
    c = cascades.parse(text)
    t = Tiling(block_m=block_m, block_n=16, num_warps=4, num_stages=1, head_dim=16,
               dtype="fp32")
    gen = generate(c, t)
    assert "window=" not in next(ln for ln in gen.source.splitlines()
                                 if ln.startswith("def forward"))
    g = torch.Generator().manual_seed(window * 2 + causal)
    q, k, v = (torch.randn(1, 2, 101, 16, generator=g) for _ in range(3))
    out = torch.full((1, 2, 101, 16), float("nan"))
    _check(gen.load(), gen, c, t, q, k, v, causal, "fp32", out, 101)


@needs_triton
@pytest.mark.parametrize("density", [0.1, 0.5, 1.0])
def test_block_sparse_kernel_matches_the_executor(interpret, density):
    """attention-blocksparse: the launcher lists each query block's kept key blocks and the
    kernel visits only those (partial tiles on both ranks; every query block keeps its diagonal
    block)."""
    import torch
    c = cascades.load("attention-blocksparse")
    t = Tiling(block_m=64, block_n=64, num_warps=4, num_stages=1, head_dim=16, dtype="fp32")
    gen = generate(c, t)
    assert gen.plan.block_mask == "BlockMask"
    P = 300
    g = torch.Generator().manual_seed(int(density * 100))
    q, k, v = (torch.randn(1, 2, P, 16, generator=g) for _ in range(3))
    nb = -(-P // 64)
    mask = np.random.default_rng(int(density * 10)).random((nb, nb)) < density
    np.fill_diagonal(mask, True)
    o = gen.load().forward(q, k, v, BlockMask=torch.from_numpy(mask))
    for h in range(2):
        ref = cascades.execute(c, {"Q": q[0, h].double().numpy(), "K": k[0, h].double().numpy(),
                                   "V": v[0, h].double().numpy(), "BlockMask": mask},
                               block_q=64, block_kv=64)["O"]
        assert np.abs(o[0, h].double().numpy() - ref).max() < 1e-5


@needs_triton
def test_block_mask_shape_is_checked(interpret):
    import torch
    mod = generate("attention-blocksparse", Tiling(block_m=64, block_n=64, num_warps=4,
                                                   num_stages=1, head_dim=16,
                                                   dtype="fp32")).load()
    q = torch.randn(1, 1, 200, 16)
    with pytest.raises(ValueError, match="expected"):
        mod.forward(q, q, q, BlockMask=torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="needs its block mask"):
        mod.forward(q, q, q)


@needs_triton
@pytest.mark.parametrize("phi,split", [("elu1", 1), ("relu", 3), ("exp", 2)])
@pytest.mark.parametrize("normalize", [True, False])
def test_linear_attention_kernel_matches_the_executor(interpret, phi, split, normalize):
    """Linear attention read from the structure (feature maps, a state summed over the keys,
    read by the query features, optionally normalised): a state kernel per K/V head and an
    output kernel per query block."""
    import torch
    text = cascades.library.text("linear").replace('param phi       = "elu1"',
                                                   f'param phi = "{phi}"')
    c = cascades.parse(text)
    gen = generate(c, Tiling(block_m=32, block_n=16, num_warps=4, num_stages=1, head_dim=16,
                             dtype="fp32", split_kv=split))
    assert gen.plan.family == "linear" and len(gen.kernels) == 2
    g = torch.Generator().manual_seed(zlib.crc32(f"{phi}{normalize}".encode()))
    q, k, v = (torch.randn(1, 2, 75, 16, generator=g) * 0.5 for _ in range(3))
    if phi == "relu":
        q, k = q.abs() + 0.1, k.abs() + 0.1     # keep the denominator away from zero
    o = gen.load().forward(q, k, v, normalize=normalize)
    for h in range(2):
        ref = cascades.execute(c, {"Q": q[0, h].double().numpy(), "K": k[0, h].double().numpy(),
                                   "V": v[0, h].double().numpy()}, normalize=normalize)["O"]
        err = np.abs(o[0, h].double().numpy() - ref).max() / np.abs(ref).max()
        assert err < 1e-5
