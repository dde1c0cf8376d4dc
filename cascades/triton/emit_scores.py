"""The score hook's extra tensors and the kernel without normalisation of a general pointwise
map, emitted into the single-pass kernels of :mod:`cascades.triton.emit`.

A score map may read input tiles besides the score (``SB = scale * S + RAB[p, m]``): each such
*extra* input is indexed by the query and/or the key coordinate. The launcher takes it as a
tensor whose trailing axes are the cascade's declared ones (``[P, M]``, ``[M]``, ...), with
optional leading batch and head axes (broadcast when absent or of size 1), and views it as
``[B, Hq, P or 1, M or 1]`` with zero strides on the axes it does not have; the kernel keeps
one row pointer per query row (its batch, query head and query position) and loads the
``BLOCK_M x BLOCK_N`` tile of every key block it visits, in fp32, masked like the key block.
Nothing here is emitted for a cascade without extra inputs: its kernel's source is unchanged.
"""
from __future__ import annotations

from cascades.triton.analyze import KernelPlan


def loop_args(plan: KernelPlan) -> str:
    """The key loop's extra arguments: each extra's row pointers and key stride."""
    return "".join(f", xr_{n}, sxk_{n}" for n, _ in plan.extras)


def kernel_args(plan: KernelPlan) -> str:
    """The kernel's extra arguments: each extra's base pointer and four strides."""
    return "".join(f" X_{n}, sxb_{n}, sxh_{n}, sxq_{n}, sxk_{n}," for n, _ in plan.extras)


def prologue(plan: KernelPlan) -> str:
    """Per extra, a pointer per query row: batch, query head (grouped rows included), query."""
    return "".join(f"""\
    xr_{n} = (X_{n} + off_b * sxb_{n} + (off_hk * GROUP + offs_g) * sxh_{n}
              + tl.minimum(offs_p, P_LEN - 1) * sxq_{n})
""" for n, _ in plan.extras)


def loads(plan: KernelPlan) -> str:
    """The key block's tile of every extra (fp32), masked past the last key."""
    out = ""
    for n, _ in plan.extras:
        ptr = f"xr_{n}[:, None] + (start_n + offs_n)[None, :] * sxk_{n}"
        out += f"""\
        if MASKED:
            _x_{n} = tl.load({ptr}, mask=kmask[None, :], other=0.0).to(tl.float32)
        else:
            _x_{n} = tl.load({ptr}).to(tl.float32)
"""
    return out


def inner_pointwise(plan: KernelPlan, prec: str, score: str, keep: str, loadv: str) -> str:
    """The key-block update of the family without normalisation: the weights are the score
    map itself (natural units), masked weights 0, accumulated against V."""
    return score + loads(plan) + keep + f"""\
        p = {plan.score_fn}
        if MASKED:
            p = tl.where(keep, p, 0.0)
""" + loadv + f"""\
        acc = tl.dot(p.to(v.dtype), v, acc{prec})
"""


def launcher_lines(plan: KernelPlan) -> str:
    """The launcher's checks and views of the extras (``xargs``: their kernel arguments)."""
    if not plan.extras:
        return ""
    lines = "    xargs = []\n"
    for n, roles in plan.extras:
        lines += f"""\
    if {n} is None:
        raise ValueError("this kernel needs its input {n}: a tensor [..., {', '.join('P' if r == 'q' else 'M' for r in roles)}] (batch and head axes optional)")
    xargs += _extra_view({n}, {n!r}, {roles!r}, B, HQ, P, M, q.device)
"""
    return lines


EXTRA_VIEW = '''

def _extra_view(x, name, roles, B, HQ, P, M, device):
    """An extra input viewed as [B, HQ, P or 1, M or 1] (zero strides where broadcast):
    the tensor and its four strides."""
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor")
    x = x.to(device)
    want = tuple({"q": P, "k": M}[r] for r in roles)
    n = len(roles)
    if not n <= x.dim() <= n + 2 or tuple(x.shape[x.dim() - n:]) != want:
        raise ValueError(f"{name} must be [batch, heads, {', '.join(map(str, want))}] (leading axes optional): got {tuple(x.shape)}")
    while x.dim() < n + 2:
        x = x.unsqueeze(0)
    if x.shape[0] not in (1, B) or x.shape[1] not in (1, HQ):
        raise ValueError(f"{name}'s batch and head axes {tuple(x.shape[:2])} do not fit {B} x {HQ}")
    x = x.expand(B, HQ, *want)
    st = x.stride()
    sq = st[2 + roles.index("q")] if "q" in roles else 0
    sk = st[2 + roles.index("k")] if "k" in roles else 0
    return [x, st[0], st[1], sq, sk]
'''
