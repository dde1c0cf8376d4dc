"""Lightning Attention-2 generated from the cascade's structure (family "chunked": an
intra-block masked, decayed product plus a state carried across the blocks of the sequence),
in Triton's interpreter against the executor and against the explicit decayed sum."""
from __future__ import annotations

import zlib

import numpy as np
import pytest

import cascades
from cascades.triton import CodegenError, Tiling, analyze, generate
from reference import decayed_causal_linear
from test_hstu import interpret, needs_triton  # noqa: F401 - fixture


def _cascade(decay=None):
    text = cascades.library.text("lightning2")
    if decay is not None:
        text = text.replace("param decay = 0.99", f"param decay = {decay}")
    return cascades.parse(text)


def _tiling(dtype="fp32", block=16, head_dim=32):
    return Tiling(block_m=block, block_n=block, num_warps=4, num_stages=1, head_dim=head_dim,
                  dtype=dtype)


def test_plan_is_read_from_the_structure():
    plan = analyze(cascades.load("lightning2"))
    assert (plan.family, plan.passes) == ("chunked", 1)
    intra, kw, a, w_intra, w_inter, blocks, inner, roles = plan.chunked
    assert "tl.where((ki > qi)" in intra and "qk" in intra     # in-block causal mask
    assert a == "{{(1 * (decay ** M0))}}"                        # a whole block's decay
    assert "kr" in kw and "qi" in w_inter and w_intra == "1.0"
    assert blocks == ("block",) and inner == ("P0", "M0") and roles == ("Q", "K", "V")
    src = generate(cascades.load("lightning2"), _tiling(block=64)).source
    assert f"{0.99 ** 64!r}" in src                              # a = decay^block, baked


def test_errors_are_one_line():
    with pytest.raises(CodegenError, match="set block_n = block_m"):
        generate(cascades.load("lightning2"), Tiling(block_m=64, block_n=32))
    with pytest.raises(CodegenError, match="math.log2") as ei:
        generate(_cascade(-0.5), _tiling())
    assert "\n" not in str(ei.value)
    with pytest.raises(CodegenError, match="turn off tma"):
        generate(cascades.load("lightning2"), Tiling(block_m=64, block_n=64, tma=True))


def _run(decay, dtype, n, hq, hkv, f_blocks, seed):
    import torch
    tdt = {"fp32": torch.float32, "fp16": torch.float16}[dtype]
    c = _cascade(decay)
    gen = generate(c, _tiling(dtype))
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(2, hq, n, 32, generator=g) * 0.3).to(tdt)
    k = (torch.randn(2, hkv, n, 32, generator=g) * 0.3).to(tdt)
    v = torch.randn(2, hkv, n, 32, generator=g).to(tdt)
    out = torch.full((2, hq, n, 32), float("nan"), dtype=tdt)
    o = gen.load().forward(q, k, v, out=out, f_blocks=f_blocks).double().numpy()
    assert np.isfinite(o).all()
    errs = []
    for b in range(2):
        for h in range(hq):
            ins = {"Q": q[b, h].double().numpy(), "K": k[b, h * hkv // hq].double().numpy(),
                   "V": v[b, h * hkv // hq].double().numpy()}
            ref = cascades.execute(c, ins, block=16)["O"]
            # the executor is itself the paper's sum (an independent loop over positions)
            explicit = decayed_causal_linear(ins["Q"], ins["K"], ins["V"], decay)
            assert np.abs(ref - explicit).max() < 1e-10 * np.abs(explicit).max()
            errs.append(np.linalg.norm(o[b, h] - ref) / np.linalg.norm(ref))
    return max(errs)


@needs_triton
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
@pytest.mark.parametrize("decay", [0.9, 1.0])
def test_lightning2_matches_the_executor(interpret, dtype, decay):
    """45 positions: two full blocks of 16 and a partial one; two programs per head over the
    value columns."""
    err = _run(decay, dtype, 45, 2, 2, 2, zlib.crc32(f"l2{dtype}{decay}".encode()))
    assert err < (1e-5 if dtype == "fp32" else 1e-2), err


@needs_triton
def test_lightning2_grouped_query_heads(interpret):
    err = _run(0.95, "fp32", 37, 4, 2, 1, 3)
    assert err < 1e-5, err


@needs_triton
def test_lightning2_launch_errors(interpret):
    import torch
    mod = generate(cascades.load("lightning2"), _tiling()).load()
    q = torch.randn(1, 1, 20, 32)
    with pytest.raises(CodegenError, match="one sequence"):
        mod.forward(q, torch.randn(1, 1, 24, 32), torch.randn(1, 1, 24, 32))
    with pytest.raises(CodegenError, match="f_blocks"):
        mod.forward(q, q, q, f_blocks=3)
