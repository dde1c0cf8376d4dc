"""The generated source of the library kernels is frozen: a cascade without extra tensors
(no bias tile, no gathered vector) goes through the same code path, byte for byte, as before
the score hook learnt to read extra tensors, so the measured speed of those kernels stands.

The sources in tests/data/codegen_golden/ were written by this file's ``__main__`` before the
change; rewrite them (``python tests/test_codegen_scores_golden.py``) only for a deliberate
change of a kernel, and re-measure it on the GPU."""
from __future__ import annotations

import difflib
from pathlib import Path

import pytest

import cascades
from cascades.triton import Tiling, fast_tiling, generate

GOLDEN = Path(__file__).parent / "data" / "codegen_golden"

_SQK = "SQK[m1, m0, p]  = where(causal and m1*M0 + m0 > p, -inf, scale * BQK[m1, m0, p])"
_MAPS = {
    "softcap": ("param cap = 30.0", "SQK[m1, m0, p]  = where(causal and m1*M0 + m0 > p, -inf, "
                                    "cap * tanh(scale * BQK[m1, m0, p] / cap))"),
    "alibi": ("param slope = 0.0625", "SQK[m1, m0, p]  = where(causal and m1*M0 + m0 > p, -inf, "
                                      "scale * BQK[m1, m0, p] - slope * (p - (m1*M0 + m0)))"),
}


def _mapped(name):
    param, sqk = _MAPS[name]
    base = cascades.library.text("attention-1pass")
    return cascades.parse(base.replace("param block_kv = 64", f"param block_kv = 64\n{param}")
                          .replace(_SQK, sqk).replace("cascade attention-1pass",
                                                      f"cascade attention-{name}"))


def _cases():
    return {
        "attention-1pass": ("attention-1pass", Tiling()),
        "attention-1pass-fast-tma": ("attention-1pass", fast_tiling(128, seq_len=16384)),
        "attention-1pass-d64": ("attention-1pass", fast_tiling(64)),
        "attention-1pass-knobs": ("attention-1pass", Tiling(head_dim=64, dtype="fp16",
                                                            pipeline=True, lazy_rescale=True,
                                                            fast_exp=True)),
        "attention-1pass-ws": ("attention-1pass", Tiling(warp_specialize=True)),
        "attention-1pass-trace": ("attention-1pass", Tiling(trace=True, trace_every=4)),
        "attention-1pass-evict": ("attention-1pass", Tiling(q_eviction="evict_first",
                                                            o_eviction="evict_first")),
        "attention-gqa": ("attention-gqa", Tiling()),
        "flash1": ("flash1", Tiling(head_dim=64)),
        "sigmoid": ("sigmoid", Tiling()),
        "sigmoid-tma": ("sigmoid", Tiling(tma=True)),
        "attention-3pass": ("attention-3pass", Tiling(head_dim=64)),
        "attention-2pass": ("attention-2pass", Tiling(head_dim=64)),
        "decode-splitk": ("decode-splitk", Tiling(split_kv=4, block_m=16)),
        "attention-window": ("attention-window", Tiling()),
        "attention-blocksparse": ("attention-blocksparse", Tiling(block_m=64, block_n=64)),
        "linear": ("linear", Tiling(head_dim=64, split_kv=16)),
        "softcap": ("softcap", Tiling()),
        "alibi": ("alibi", Tiling()),
    }


def _source(key):
    name, tiling = _cases()[key]
    c = _mapped(name) if name in _MAPS else cascades.load(name)
    return generate(c, tiling).source


@pytest.mark.parametrize("key", sorted(_cases()))
def test_library_kernel_source_is_unchanged(key):
    want = (GOLDEN / f"{key}.py").read_text()
    got = _source(key)
    if got != want:
        diff = "".join(list(difflib.unified_diff(want.splitlines(True), got.splitlines(True),
                                                 "golden", "now"))[:60])
        pytest.fail(f"the generated source of {key} changed:\n{diff}")


if __name__ == "__main__":
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for key in sorted(_cases()):
        (GOLDEN / f"{key}.py").write_text(_source(key))
        print("wrote", GOLDEN / f"{key}.py")
