"""The generated kernel of a cascade, from a Mapping: the same object the traffic and time
models evaluate. ``kernel_mapping`` gives the Mapping whose loop nest the code generator emits
for a cascade (read from the generator's plan of the cascade, never its name); ``kernel_for``
generates the kernel of a Mapping, refusing one whose loop nest the generator does not emit.
"""
from __future__ import annotations

from iosim.errors import IosimError

__all__ = ["kernel_mapping", "kernel_for"]


def _plan(cascade):
    import cascades
    from cascades.triton import analyze
    c = cascades.load(cascade) if isinstance(cascade, str) else cascade
    return c, analyze(c)


def kernel_mapping(cascade, *, block_m: int = 128, block_n: int = 64, num_warps: int = 8,
                   num_stages: int = 3, split_kv: int = 1, grid_order: str = "query-major",
                   kv_len: int | None = None):
    """The Mapping of the kernel the code generator emits for ``cascade``: one program per query
    tile with the key tiles streamed (``fa2``) for single-pass cascades (FlashAttention-1's
    cascade included: the generated kernel normalises per step inside an FA2-style program);
    the fused multi-pass mapping with the scores recomputed in every pass for multi-pass
    cascades; per-chunk partials and a combining kernel (``decode-splitk``) for partials
    cascades, one key tile per chunk when the partials are per key block (``kv_len`` gives
    their number); the linear family (the state built over the keys, then read per query tile)
    for linear attention; Lightning-2's nest (blocks of the sequence in order, the state on
    chip) for chunked linear attention, with ``block_m`` the block of both."""
    from iosim.mapping import mapping_for
    c, plan = _plan(cascade)
    kw = dict(block_q=block_m, block_kv=block_n, num_warps=num_warps, num_stages=num_stages,
              grid_order=grid_order)
    if plan.family == "three-pass":
        return mapping_for(c, "fused-3pass", row_policy="recompute", **kw)
    if plan.family == "linear":
        return mapping_for(c, "linear", split_kv=split_kv, **kw)
    if plan.family == "chunked":        # one block for the queries and keys of the sequence
        return mapping_for(c, "lightning2", **{**kw, "block_kv": block_m})
    if plan.family == "partials":
        if plan.normalisation == "local-max":
            if kv_len is None:
                raise IosimError(f"cascade '{c.name}': per-key-block partials need the key "
                                 f"length to count the chunks")
            split_kv = -(-kv_len // block_n)
        return mapping_for(c, "decode-splitk", split_kv=split_kv, **kw)
    return mapping_for(c, "fa2", **kw)


def kernel_for(cascade, mapping, *, head_dim: int, dtype: str = "bf16", **knobs):
    """The generated kernel (:class:`cascades.triton.GeneratedSource`) of ``mapping`` on
    ``cascade``: its tiles, warps, stages, grid order and splits come from the Mapping,
    ``knobs`` are code-generation switches the models do not see (tma, fast_exp, ...)."""
    from cascades.triton import Tiling, generate
    c, plan = _plan(cascade)
    want = kernel_mapping(c, block_m=mapping.block_q or 128, block_n=mapping.block_kv or 64,
                          kv_len=(mapping.block_kv or 64) * max(1, mapping.split_kv))
    pol = want.preset.kernel_policy     # the generated kernel's row policy, if it takes one
    same = want.kind == mapping.kind and (pol is None or mapping.row_policy in (pol, "auto"))
    if not same and mapping.tree is not None:   # a user's tree: the generator's nest?
        from iosim.looptree.lower import nest_signature
        from iosim.mapping import loop_nest
        same = nest_signature(loop_nest(mapping, c)) == nest_signature(loop_nest(want, c))
    if not same:
        raise IosimError(f"the kernel generated for cascade '{c.name}' runs the "
                         f"'{want.kind}' loop nest"
                         + (f" (row policy {pol})" if pol else "")
                         + f"; mapping '{mapping.name}' ({mapping.kind}"
                         + (f", {mapping.row_policy}" if mapping.preset.row_policies else "")
                         + ") is not one the code generator emits")
    t = Tiling.from_mapping(mapping, head_dim=head_dim, dtype=dtype)
    if knobs:
        from dataclasses import replace
        t = replace(t, **knobs)
    return generate(c, t)
