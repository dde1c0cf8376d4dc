"""The named mappings as presets of the loop tree.

A :class:`Preset` builds the :class:`~iosim.looptree.tree.LoopTree` of an algorithm for any
cascade that fits it (the tensors come from the cascade's structure,
:class:`~iosim.mapping.CascadeFacts`: its query-side inputs, key/value inputs, outputs,
running state, per-block partials, ...) and carries the properties the models, the search and
the command line read instead of the mapping's name: the paper rule that derives its tiles
from the SRAM size, tiles tied or square, head-dim tiles, the row policies it takes, the
variants a search tries, whether the code generator emits it.

This module is the only place that knows an algorithm by name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from iosim.looptree.tree import (Compute, Kernel, Loop, LoopTree, Passes, Split, Storage, Use)

__all__ = ["Preset", "TileRule", "PRESETS", "preset_of", "TREE"]


# ======================================================================================
# small constructors
# ======================================================================================


def _load(t, **kw) -> Use:
    return Use(t, "load", **kw)


def _store(t, **kw) -> Use:
    return Use(t, "store", **kw)


def _keep(t, **kw) -> Use:
    return Use(t, "keep", **kw)


def sram(*uses) -> Storage:
    return Storage("sram", tuple(uses))


def acc(*uses) -> Storage:
    return Storage("acc", tuple(uses))


def _group_wrap(body: tuple, grouped: bool) -> tuple:
    """One program per query head of a group (a parallel loop over G)."""
    if grouped:
        return (Loop("G", "one", body, var="g", parallel=True, label="query heads of the group"),)
    return body


def _stats(f, rank: str = "P", names=("m", "l")) -> tuple:
    """The per-row running scalars (max, sum) kept at the accumulator level."""
    return tuple(_keep(names[k] if k < len(names) else f"state{k}", ranks=(rank,))
                 for k in range(f.n_state))


def _accs(f, outputs=None) -> tuple:
    return tuple(_keep(o, name=f"{o}_acc") for o in (outputs or f.outputs))


def _role(f, t) -> str:
    return "mask" if t in f.bool_inputs else "data"


def _row_ranks(ranks) -> tuple:
    """A tensor's ranks with the query rank P and the group rank G folded into rows R."""
    return tuple("R" if r == "P" else r for r in ranks if r != "G")


def _packs(m, f, grouped: bool) -> bool:
    """Whether the query heads of a group are packed into the rows of one program (as the
    generated kernel does): with grouped heads, no mask input and no per-tile input."""
    return (grouped and m.pack_group and not f.pm_inputs
            and not any(r == "Pt" for rk in f.ranks.values() for r in rk))


# ======================================================================================
# the trees
# ======================================================================================


def fa2_tree(m, f, grouped: bool = False) -> LoopTree:
    """FlashAttention-2: a program per query tile, key/value tiles streamed, O (and the
    log-sum-exp) written once; a group's query heads packed into the rows of a program."""
    if _packs(m, f, grouped):
        tensors = [(t, (_row_ranks(f.ranks[t]), _role(f, t))) for t in f.q_inputs + f.outputs]
        inner = (sram(*(_load(t, stream=True) for t in f.kv_inputs)), Compute(score=("R", "M")))
        body = (sram(*(_load(t) for t in f.q_inputs)), acc(*_accs(f), *_stats(f, "R")),
                Loop("M", "block_kv", inner, var="j", mask="i", label="key/value tiles"),
                sram(*(_store(o) for o in f.outputs)))
        if m.write_lse and f.softmax:
            body += (sram(_store("LSE")),)
            tensors.append(("LSE", (("R",), "stat")))
        nest = (Loop("R", "block_q", body, var="i", parallel=True,
                     label="row tiles: (query, query head) pairs of the group, one program "
                           "each"),)
        return LoopTree((Kernel("forward", nest),), tensors=tuple(tensors), rows="R")
    tensors = []
    inner = (sram(*(_load(t, stream=True) for t in f.kv_inputs + f.pm_inputs)),
             Compute(score=("P", "M")))
    body = (sram(*(_load(t) for t in f.q_inputs)), acc(*_accs(f), *_stats(f)),
            Loop("M", "block_kv", inner, var="j", mask="i", label="key/value tiles"),
            sram(*(_store(o) for o in f.outputs)))
    if m.write_lse and f.softmax:
        body += (sram(_store("LSE")),)
        tensors.append(("LSE", (("P",), "stat")))
    nest = (Loop("P", "block_q", body, var="i", parallel=True,
                 label="query tiles (one program each)"),)
    return LoopTree((Kernel("forward", _group_wrap(nest, grouped)),), tensors=tuple(tensors))


def fa1_tree(m, f, grouped: bool = False) -> LoopTree:
    """FlashAttention-1 Algorithm 1: key/value tiles outer, query tiles inner, O and the
    running statistics read and written in HBM at every inner step."""
    stats = ("m", "l")[: f.n_state] if f.softmax else ()
    tensors = tuple((s, (("P",), "stat")) for s in stats)
    kernels = []
    if m.init_writes:
        init = (sram(*(_store(o) for o in f.outputs), *(_store(s) for s in stats)),)
        kernels.append(Kernel("init O, l, m in HBM", _group_wrap(
            (Loop("P", "block_q", init, var="i", parallel=True, label="query tiles"),),
            grouped)))
    inner = (sram(*(_load(t) for t in f.q_inputs), *(_load(o) for o in f.outputs),
                  *(_load(s) for s in stats), *(_load(t) for t in f.pm_inputs)),
             Compute(score=("P", "M")),
             acc(*(_keep(s, name=f"{s}~") for s in stats)),
             sram(*(_store(o) for o in f.outputs), *(_store(s) for s in stats)))
    outer = (sram(*(_load(t) for t in f.kv_inputs)),
             Loop("P", "block_q", inner, var="i", mask="j", label="query tiles"))
    nest = (Loop("M", "block_kv", outer, var="j", label="key/value tiles"),)
    kernels.append(Kernel("forward", _group_wrap(nest, grouped)))
    return LoopTree(tuple(kernels), tensors=tensors)


def unfused_tree(m, f, grouped: bool = False) -> LoopTree:
    """Standard attention: S = QKᵀ and P = softmax(S) materialised in HBM, three kernels."""
    tensors = (("S", (("P", "M"), "data")), ("P~", (("P", "M"), "data")))
    k1 = (sram(*(_load(t) for t in f.q_inputs)),
          Loop("M", "block_kv", (sram(*(_load(t, stream=True) for t in f.key_inputs)),
                                 acc(_keep("S")), sram(_store("S"))),
               var="j", label="key tiles"))
    ph1 = Kernel("S = Q K^T", _group_wrap((Loop("P", "block_q", k1, var="i", parallel=True,
                                                label="query tiles"),), grouped))
    k2 = (sram(_load("S"), *(_load(t) for t in f.pm_inputs)), acc(*_stats(f)),
          sram(_store("P~")))
    ph2 = Kernel("P = softmax(S)" if f.softmax else "P = map(S)", _group_wrap(
        (Loop("P", "block_rows", k2, var="r", parallel=True, label="query rows"),), grouped))
    k3 = (acc(*_accs(f)),
          Loop("M", "block_kv", (sram(_load("P~", stream=True),
                                      *(_load(t, stream=True) for t in f.value_inputs)),),
               var="j", label="key/value tiles"),
          sram(*(_store(o) for o in f.outputs)))
    ph3 = Kernel("O = P V", _group_wrap((Loop("P", "block_q", k3, var="i", parallel=True,
                                              label="query tiles"),), grouped))
    return LoopTree((Passes((ph1, ph2, ph3), crossing=("S", "P~"), policy="spill"),),
                    tensors=tensors, skips_masked=False)


def fused3_tree(m, f, grouped: bool = False) -> LoopTree:
    """The 3-pass cascade fused per query tile: three sweeps over the key tiles; the score
    row buffered on chip, spilled to HBM or recomputed in every pass (``row_policy``)."""
    k_in, v_in, pm = f.key_inputs, f.value_inputs, f.pm_inputs
    pol = m.row_policy
    spill = f.spilled[0] if f.spilled else "S"
    tensors = ()
    recompute = ()

    def kv(ts):
        return sram(*(_load(t, stream=True) for t in ts))

    def sweep(var, body, label):
        return Loop("M", "block_kv", body, var=var, mask="i", label=label)

    body = (sram(*(_load(t) for t in f.q_inputs)),
            acc(*_accs(f), _keep("GM", ranks=("P",)), _keep("SD", ranks=("P",))))
    if pol in ("buffer", "auto"):
        body += (sram(_keep("S_row", ranks=("P", "M"))),)
        body += (Passes((sweep("j", (kv(k_in + pm),),
                               "pass 1: scores and max (row kept on chip)"),
                         sweep("k", (kv(v_in),),
                               "pass 3: normalise, times V (pass 2 runs on chip)")),
                        crossing=("S",), policy="keep"),)
    elif pol == "spill":
        tensors = ((spill, (("P", "M"), "data")),)
        body += (Passes((
            sweep("j", (kv(k_in + pm), Compute(score=("P", "M")), sram(_store(spill))),
                  "pass 1: scores spilled, max"),
            sweep("j2", (sram(_load(spill, stream=True)),), "pass 2: exp and sum"),
            sweep("k", (sram(_load(spill, stream=True)), kv(v_in)),
                  "pass 3: normalise, times V")), crossing=(spill,), policy="spill"),)
    else:  # recompute
        body += (Passes((
            sweep("j", (kv(k_in + pm), Compute(score=("P", "M"))), "pass 1: scores, max"),
            sweep("j2", (kv(k_in + pm), Compute(score=("P", "M"))),
                  "pass 2: recompute scores, exp, sum"),
            sweep("k", (kv(k_in + pm), kv(v_in), Compute(score=("P", "M"))),
                  "pass 3: recompute, normalise, times V")),
            crossing=tuple(t for t, _ in f.recompute), policy="recompute"),)
        recompute = tuple(f.recompute)
    body += (sram(*(_store(o) for o in f.outputs)),)
    nest = (Loop("P", "block_q", body, var="i", parallel=True,
                 label="query tiles (one program each)"),)
    return LoopTree((Kernel("fused 3-pass", _group_wrap(nest, grouped)),), tensors=tensors,
                    recompute=recompute)


def fused2_tree(m, f, grouped: bool = False) -> LoopTree:
    """The 2-pass cascade fused per query tile: per-key-tile partials buffered on chip or
    spilled and combined in a second sweep (``row_policy``)."""
    def pr(F):
        return ("P", "Mt") + (("F",) if F else ())
    kvl = sram(*(_load(t, stream=True) for t in f.kv_inputs + f.pm_inputs))
    body = (sram(*(_load(t) for t in f.q_inputs)),)
    parts = f.partials
    tensors = ()
    if m.row_policy in ("buffer", "auto"):
        body += (sram(*(_keep(t, ranks=pr(F)) for t, F in parts)),)
        body += (Loop("M", "block_kv", (kvl, Compute(score=("P", "M"))), var="j", mask="i",
                      label="pass 1: per-block partials (kept on chip)"),)
        body += (acc(*_accs(f)),)
    else:
        tensors = tuple((t, (pr(F), "stat" if not F else "data")) for t, F in parts)
        body += (Passes((
            Loop("M", "block_kv", (kvl, Compute(score=("P", "M")),
                                   sram(*(_store(t) for t, _ in parts))),
                 var="j", mask="i", label="pass 1: per-block partials spilled"),
            acc(*_accs(f), _keep("GM", ranks=("P",)), _keep("SD", ranks=("P",))),
            Loop("M", "block_kv", (sram(*(_load(t, stream=True) for t, _ in parts)),),
                 var="j2", mask="i", label="pass 2: combine partials")),
            crossing=tuple(t for t, _ in parts), policy="spill"),)
    body += (sram(*(_store(o) for o in f.outputs)),)
    nest = (Loop("P", "block_q", body, var="i", parallel=True,
                 label="query tiles (one program each)"),)
    return LoopTree((Kernel("fused 2-pass", _group_wrap(nest, grouped)),), tensors=tensors)


def splitk_tree(m, f, grouped: bool = False) -> LoopTree:
    """Split-K (FlashDecoding): a program per (split, row tile) writes a partial output and
    its log-sum-exp (for a softmax; the partial sums for a plain sum over the keys) in the
    stat dtype; a combining kernel reads them per row tile. Grouped query heads are packed
    into the rows of a program when the mapping packs them, else one program per query head."""
    packed = _packs(m, f, grouped)
    r = "R" if packed else "P"
    tensors = []
    if packed:
        tensors = [(t, (_row_ranks(f.ranks[t]), _role(f, t))) for t in f.q_inputs + f.outputs]
    tensors.append(("PO", (("S", r, "F"), "stat")))
    parts = ["PO"]
    if f.softmax:
        tensors.append(("LSE", (("S", r), "stat")))
        parts.append("LSE")
    inner = (sram(*(_load(t, stream=True) for t in f.kv_inputs + f.pm_inputs)),
             Compute(score=(r, "M")))
    body = (sram(*(_load(t) for t in f.q_inputs)), acc(*_accs(f), *_stats(f, r)),
            Loop("M", "block_kv", inner, var="j", mask="i", within="s",
                 label="key/value tiles of this split"),
            sram(*(_store(t) for t in parts)))
    tiles = ("row tiles: (query, query head) pairs of the group" if packed else "query tiles")
    wrap = (lambda nodes: nodes) if packed else (lambda nodes: _group_wrap(nodes, grouped))
    ph1 = Kernel("partials per split", wrap((
        Split("s", (Loop(r, "block_q", body, var="i", parallel=True, label=tiles),),
              label="splits of the keys (one program each)"),)))
    comb = (acc(*_accs(f), *_stats(f, r)),
            Split("s", (sram(*(_load(t, stream=True) for t in parts)),), parallel=False,
                  label="splits"),
            sram(*(_store(o) for o in f.outputs)))
    ph2 = Kernel("combine", wrap((Loop(r, "block_q", comb, var="i", parallel=True,
                                       label="row tiles" if packed else "query tiles"),)))
    return LoopTree((Passes((ph1, ph2), crossing=tuple(parts), policy="spill"),),
                    tensors=tuple(tensors), rows=r)


def linear_tree(m, f, grouped: bool = False) -> LoopTree:
    """Linear attention: the E x F state built from the keys and values (split over programs
    when ``split_kv`` > 1, partial states added), then read per query tile."""
    tensors = tuple((t, (rk, "data")) for t, rk in f.states)
    whole = {t: tuple(rk) for t, rk in f.states}
    split = m.split_kv > 1
    st = (acc(*(_keep(t, ranks=whole[t]) for t in whole)),
          Loop("M", "block_kv", (sram(*(_load(t, stream=True) for t in f.kv_inputs)),),
               var="j", within="s" if split else None,
               label="key/value tiles" + (" of this split" if split else "")),
          sram(*(_store(t) for t in whole)))
    names = ", ".join(whole)
    if split:
        st = (Split("s", st, label="splits of the keys (one program each; partial states "
                                   "added)"),)
    ph1 = Kernel(f"state {names} from the keys and values", st)
    body = (sram(*(_load(t) for t in whole), *(_load(t) for t in f.q_inputs)),
            sram(*(_store(o) for o in f.outputs)))
    ph2 = Kernel(f"O from the queries and {names}", _group_wrap(
        (Loop("P", "block_q", body, var="i", parallel=True, label="query tiles"),), grouped))
    return LoopTree((Passes((ph1, ph2), crossing=tuple(whole), policy="spill"),),
                    tensors=tensors, skips_masked=False)


def lightning_tree(m, f, grouped: bool = False) -> LoopTree:
    """Lightning Attention-2: one pass over blocks of the sequence in order, the intra-block
    product on chip and the E x F state kept on chip across blocks."""
    body = (sram(*(_load(t) for t in f.q_inputs + f.kv_inputs)), Compute(score=("P", "M")),
            acc(*_accs(f)), sram(*(_store(o) for o in f.outputs)))
    nest = (acc(*(_keep(t, ranks=tuple(rk)) for t, rk in f.states)),
            Loop("P", "block_q", body, var="t", also=("M",),
                 label="blocks of the sequence (in order)"))
    return LoopTree((Kernel("forward", _group_wrap(nest, grouped)),), skips_masked=False)


def saha_ye_tree(m, f, grouped: bool = False) -> LoopTree:
    """Saha & Ye's square tiling for small caches: A = exp(QKᵀ) and its row sums D to HBM,
    then O = D⁻¹ A V by tiles of the output columns."""
    q, k, v = f.q_inputs[0], f.key_inputs[0], f.value_inputs[0]
    o = f.outputs[0]
    tensors = (("A", (("P", "M"), "data")), ("D", (("P",), "stat")))
    p1_j = (acc(_keep("A", name="A_tile")),
            Loop("E", "block_e", (sram(_load(q), _load(k)),), var="l", label="head-dim tiles"),
            sram(_store("A")))
    p1 = (acc(_keep("D", name="D_acc")),
          Loop("M", "block_kv", p1_j, var="j", mask="i", label="key tiles"),
          sram(_store("D")))
    ph1 = Kernel("phase 1: A = exp(QK^T) and D = rowsum(A) to HBM", _group_wrap(
        (Loop("P", "block_q", p1, var="i", parallel=True, label="query tiles"),), grouped))
    p2_c = (acc(_keep(o, name=f"{o}_acc")),
            Loop("M", "block_kv", (sram(_load("A", stream=True), _load(v, stream=True)),),
                 var="k", mask="i", label="key tiles"),
            sram(_store(o)))
    p2 = (sram(_load("D")), Loop("F", "block_f", p2_c, var="c", label="output-column tiles"))
    ph2 = Kernel("phase 2: O = D^-1 A V", _group_wrap(
        (Loop("P", "block_q", p2, var="i", parallel=True, label="query tiles"),), grouped))
    return LoopTree((Passes((ph1, ph2), crossing=("A", "D"), policy="spill"),),
                    tensors=tensors)


def chunked_tree(ranks: dict, *, chunk_loads=(), once_loads=(), passes=(), chunk_stores=(),
                 once_stores=(), keep=(), label: str = "") -> LoopTree:
    """A spatial accelerator's chunked mapping (see :func:`iosim.mapping.chunked_nest`):
    chunks of query rows, the key tiles streamed once per chunk and pass."""
    use = lambda t, **kw: Use(t, ranks=tuple(ranks[t]), **kw)  # noqa: E731
    body = (sram(*(use(t) for t in chunk_loads)),
            sram(*(use(t, move="keep") for t in keep)))
    sweeps = []
    for k, ps in enumerate(passes, start=1):
        inner = (sram(*(use(t, stream=True) for t in ps.loads),
                      *(use(t, move="store") for t in ps.stores),
                      *(use(t, move="store", part="spill") for t in ps.spill_stores),
                      *(use(t, stream=True, part="spill") for t in ps.spill_loads)),)
        sweeps.append(Loop("M", "block_kv", inner, var=f"j{k}",
                           label=ps.label or f"pass {k}: key tiles"))
    body += (Passes(tuple(sweeps), policy="spill"),) if len(sweeps) > 1 else tuple(sweeps)
    body += (sram(*(use(t, move="store") for t in chunk_stores)),)
    nest = (sram(*(use(t) for t in once_loads)),
            Loop("P", "block_q", body, var="c", label="chunks of query rows"),
            sram(*(use(t, move="store") for t in once_stores)))
    tensors = tuple((t, (tuple(r), "data")) for t, r in ranks.items())
    return LoopTree((Kernel(label or "chunked", nest),), tensors=tensors, skips_masked=False)


def _chunked_registry(m, f, grouped: bool = False) -> LoopTree:
    """The registry form of ``chunked``: every intermediate on chip, one pass streaming the
    key/value inputs per chunk (what FuseMax does with the 1-pass cascade)."""
    from iosim.mapping import ChunkPass
    ranks = {t: tuple(rk) for t, rk in f.ranks.items()}
    return chunked_tree(ranks, chunk_loads=f.q_inputs,
                        passes=(ChunkPass(loads=f.kv_inputs + f.pm_inputs,
                                          label="key/value tiles"),),
                        chunk_stores=f.outputs)


# ======================================================================================
# which cascades a preset fits (one line why not)
# ======================================================================================


def _needs_softmax(kind, f, name):
    if not f.softmax:
        return (f"mapping {kind} needs a softmax cascade (a max reduction over the key rank); "
                f"{name} has none")
    return None


def _no_pm(kind, f, name):
    if f.pm_inputs:
        return (f"mapping {kind} reads no input over (query, key) pairs; {name} has "
                f"{', '.join(f.pm_inputs)}")
    return None


def _needs_score(kind, f, name, text):
    if not f.has_score:
        return (f"mapping {kind} needs a query-key score (a tensor over queries and keys); "
                f"{name} makes {text}")
    return None


def _fits_fa2(kind):
    def fits(f, name, text):
        why = _needs_score(kind, f, name, text)
        if why is None and f.family == "multi-pass":
            why = (f"mapping {kind} makes one pass over the keys; {name} needs {f.key_passes} "
                   f"(its global maximum is complete only after a whole pass): use "
                   f"fused-3pass, unfused or saha-ye")
        return why
    return fits


def _fits_fa1(f, name, text):
    why = _needs_score("fa1", f, name, text)
    if why is None and f.family not in ("online", "single"):
        why = (f"mapping fa1 updates O (and l, m) in HBM over one pass of key blocks; "
               f"{name} makes {text}")
    return why


def _fits_unfused(f, name, text):
    return _needs_score("unfused", f, name, text)


def _softmax_of(kind, ok, need):
    """The check of a mapping for a softmax cascade with a score whose facts pass ``ok``
    (``need`` says what that asks for)."""
    def fits(f, name, text):
        why = _needs_softmax(kind, f, name) or _needs_score(kind, f, name, text)
        if why is None and not ok(f):
            why = f"mapping {kind} needs {need}; {name} makes {text}"
        return why
    return fits


_fits_fused3 = _softmax_of(
    "fused-3pass", lambda f: f.family == "multi-pass",
    "a multi-pass softmax cascade (a global maximum over the whole key row, read again in "
    "later passes)")
_fits_fused2 = _softmax_of(
    "fused-2pass", lambda f: f.family == "partials" and bool(f.partials),
    "a 2-pass cascade with per-key-block partials (a partitioned key rank combined over its "
    "blocks)")
_softmax_rows = _softmax_of(
    "saha-ye", lambda f: f.family in ("online", "multi-pass"),
    "a softmax over whole key rows (a running or global maximum)")


def _fits_splitk(f, name, text):
    why = _needs_score("decode-splitk", f, name, text)
    if why is not None:
        return why
    if f.family == "multi-pass":
        return (f"mapping decode-splitk makes one pass over each split of the keys; {name} "
                f"needs {f.key_passes}")
    if not f.softmax and set(f.key_sums) - set(f.outputs):
        return (f"mapping decode-splitk combines split partials of a softmax or of a plain "
                f"sum over the keys into the output; {name} also sums "
                f"{', '.join(sorted(set(f.key_sums) - set(f.outputs)))} over the keys")
    return None


def _fits_linear(f, name, text):
    why = _no_pm("linear", f, name)
    if why is None and f.family != "linear":
        why = (f"mapping linear needs linear attention (the keys reduced into a state "
               f"without a query-key score); {name} makes {text}")
    return why


def _fits_lightning(f, name, text):
    why = _no_pm("lightning2", f, name)
    if why is None and f.family != "recurrent":
        why = (f"mapping lightning2 needs a recurrence over blocks of the queries (a "
               f"running state over a partition of P); {name} makes {text}")
    return why


def _fits_saha_ye(f, name, text):
    why = _softmax_rows(f, name, text)
    if why is not None:
        return why
    extra = [t for t in f.ranks if t not in f.q_inputs + f.kv_inputs + f.outputs]
    extra += list(f.pm_inputs)
    if (len(f.q_inputs) != 1 or len(f.key_inputs) != 1 or len(f.value_inputs) != 1
            or extra):
        return (f"mapping saha-ye reads exactly Q[P, E], K[M, E], V[M, F] and writes "
                f"O[P, F]; {name} has inputs {', '.join(f.q_inputs + f.kv_inputs + f.pm_inputs)}")
    if f.has_group or set(f.ranks[f.q_inputs[0]]) != {"P", "E"} or len(f.outputs) != 1:
        return (f"mapping saha-ye reads exactly Q[P, E], K[M, E], V[M, F] and writes "
                f"O[P, F]; {name} has Q[{', '.join(f.ranks[f.q_inputs[0]])}]")
    return None


def _fits_tree(f, name, text):
    return None


# ======================================================================================
# tile rules: tiles derived from the SRAM size by a paper's rule
# ======================================================================================


@dataclass(frozen=True)
class TileRule:
    """A paper's rule for the tiles from the SRAM size M (elements) and the head dim d:
    ``scalar(M, d)``, ``arrays(M, d)`` (numpy, broadcast) and ``symbolic(M, d)`` (sympy)
    each give ``(block_q, block_kv)``; ``both``: a missing tile sets both (a square rule)."""
    name: str
    scalar: Callable
    arrays: Callable
    symbolic: Callable
    both: bool = False


def _fa1_scalar(sram_el, d):
    from iosim.mapping import fa1_paper_blocks
    bc, br = fa1_paper_blocks(sram_el, d)
    return br, bc


def _fa1_arrays(sram_el, e):
    from iosim.errors import IosimError
    if np.any(sram_el < 1):
        raise IosimError("SRAM too small for FlashAttention's block rule")
    bc = np.ceil(sram_el / (4 * e)).astype(np.int64)
    return np.minimum(bc, e), bc


def _fa1_symbolic(M, d):
    import sympy as sp
    bk = sp.ceiling(M / (4 * d))
    return sp.Min(bk, d), bk


def _sy_scalar(sram_el, d):
    from iosim.mapping import saha_ye_block
    b = saha_ye_block(sram_el)
    return b, b


def _sy_arrays(sram_el, e):
    from iosim.errors import IosimError
    b = np.floor(np.sqrt(np.floor(sram_el / 4))).astype(np.int64)
    # guard float rounding of the square root
    b = np.where((b + 1) ** 2 <= np.floor(sram_el / 4), b + 1, b)
    b = np.where(b * b > np.floor(sram_el / 4), b - 1, b)
    if np.any(b < 1):
        raise IosimError("Saha & Ye's tiling needs at least 4 elements of SRAM")
    return b, b


def _sy_symbolic(M, d):
    import sympy as sp
    b = sp.floor(sp.sqrt(M / 4))
    return b, b


FA1_RULE = TileRule("FlashAttention-1: Bc = ceil(M/4d), Br = min(Bc, d)", _fa1_scalar,
                    _fa1_arrays, _fa1_symbolic)
SAHA_YE_RULE = TileRule("Saha & Ye: B = floor(sqrt(M/4))", _sy_scalar, _sy_arrays,
                        _sy_symbolic, both=True)


# ======================================================================================
# presets
# ======================================================================================


def _plain(base) -> list:
    return [(base.name, base)]


@dataclass(frozen=True)
class Preset:
    """A named mapping: its tree builder and the properties read instead of its name.

    ``tiles``: ``free`` (block_q and block_kv independent), ``tied`` (block_kv follows
    block_q: one loop over the diagonal blocks), ``square`` (they must be equal).
    ``head_tiles``: the head dims are tiled too, by block_e/block_f, which default to
    ``"block_q"`` or to the whole head dim (``"whole"``); ``None``: never tiled.
    ``row_policies``: the row policies it takes besides ``auto`` (``auto`` tries them in
    order: the first whose tiles fit). ``self_only``: self-attention only (keys = queries).
    ``attention_bound``: the softmax-attention IO lower bound applies to it (``None``: when
    the cascade is a softmax).
    ``kernel``: the code generator emits its loop nest. ``few_rows``: searched with every
    small query tile (decode). ``packs_group``: the query heads of a group share a program's
    rows (``pack_group``). ``cascade_blocks``: facts -> the tiles the cascade's own block
    parameters set. ``search``: base mapping -> [(label, mapping), ...] a search tries."""
    name: str
    build: Callable
    fits: Callable
    summary: str
    tile_rule: TileRule | None = None
    tiles: str = "free"
    head_tiles: str | None = None
    row_policies: tuple = ()
    self_only: bool = False
    attention_bound: bool | None = True
    kernel: bool = False
    few_rows: bool = False
    packs_group: bool = False
    cascade_blocks: Callable = field(default=lambda f: ())
    search: Callable = field(default=_plain)
    reduce_hint: str = "reduce block_q or block_kv"
    user_tree: bool = False
    #: the row policy of the generated kernel, where it takes one (scores recomputed)
    kernel_policy: str | None = None


def _policies(*pols):
    def variants(base):
        return [(f"{base.name}/{p}", base.with_(row_policy=p)) for p in pols]
    return variants


def _splits(base):
    return [(f"{base.name}/split{s}", base.with_(split_kv=s)) for s in (1, 2, 4, 8, 16, 32, 64)]


def _fixed(bq, bk):
    def variants(base):
        return [(base.name, base.with_(block_q=bq, block_kv=bk))]
    return variants


def _online_blocks(keys):
    def blocks(f):
        return keys if f.family == "online" else ()
    return blocks


PRESETS: dict = {p.name: p for p in (
    Preset("fa2", fa2_tree, _fits_fa2("fa2"),
           "a program per query tile (a group's query heads packed into its rows), key tiles "
           "streamed", kernel=True, packs_group=True,
           cascade_blocks=_online_blocks(("block_kv", "block_q"))),
    Preset("fa1", fa1_tree, _fits_fa1,
           "FlashAttention-1 Algorithm 1: key tiles outer, query tiles inner, O, l, m through "
           "HBM", tile_rule=FA1_RULE, search=_fixed(64, 64)),
    Preset("unfused", unfused_tree, _fits_unfused, "S and P materialised in HBM",
           reduce_hint="reduce block_q, block_kv or softmax_rows"),
    Preset("fused-3pass", fused3_tree, _fits_fused3,
           "the 3-pass cascade fused per query tile; the score row buffered, spilled or "
           "recomputed", row_policies=("buffer", "spill", "recompute"), kernel=True,
           kernel_policy="recompute",
           search=_policies("buffer", "spill", "recompute"),
           reduce_hint="reduce block_q or block_kv, or use row_policy 'spill'"),
    Preset("fused-2pass", fused2_tree, _fits_fused2,
           "the 2-pass cascade fused per query tile; per-key-tile partials buffered or "
           "spilled", row_policies=("buffer", "spill"), kernel=True,
           cascade_blocks=lambda f: ("block_kv", "block_q") if f.family == "partials" else (),
           search=_policies("buffer", "spill"),
           reduce_hint="reduce block_q or block_kv, or use row_policy 'spill'"),
    Preset("decode-splitk", splitk_tree, _fits_splitk,
           "FlashDecoding: a program per (split, row tile), partials and a combine kernel",
           attention_bound=False, kernel=True, few_rows=True, search=_splits),
    Preset("linear", linear_tree, _fits_linear,
           "linear attention: the E x F state from the keys, then read per query tile",
           attention_bound=False,
           reduce_hint="reduce block_q or block_kv (the E x F state must fit)"),
    Preset("lightning2", lightning_tree, _fits_lightning,
           "Lightning Attention-2: blocks of the sequence in order, the state on chip",
           tiles="tied", self_only=True, attention_bound=False,
           cascade_blocks=lambda f: ("block_q",) if f.family == "recurrent" else ()),
    Preset("saha-ye", saha_ye_tree, _fits_saha_ye,
           "Saha & Ye's square tiling: exp(QK^T) and row sums to HBM, then D^-1 A V",
           tile_rule=SAHA_YE_RULE, tiles="square", head_tiles="block_q", search=_fixed(8, 8),
           reduce_hint="reduce the square block (block_q = block_kv)"),
    Preset("chunked", _chunked_registry, _fits_fa2("chunked"),
           "a spatial accelerator's chunks of query rows, key tiles streamed per chunk",
           cascade_blocks=_online_blocks(("block_kv", "block_q"))),
)}


def _user_tree(m, f, grouped: bool = False) -> LoopTree:
    """A user's tree; with grouped query heads and no loop over them (G, or packed rows R),
    every kernel runs one program per query head of the group, as the presets do."""
    from dataclasses import replace
    tree = m.tree
    if not grouped or any(isinstance(nd, Loop) and nd.rank in ("G", "R")
                          for nd, _ in tree.walk()):
        return tree
    return replace(tree, kernels=tuple(_wrap_kernels(k) for k in tree.kernels))


def _wrap_kernels(k):
    if isinstance(k, Passes):
        return Passes(tuple(_wrap_kernels(x) for x in k.body), crossing=k.crossing,
                      policy=k.policy, label=k.label)
    return Kernel(k.name, _group_wrap(k.body, True))


#: the preset of a mapping given as a user's tree
TREE = Preset("tree", _user_tree, _fits_tree, "a loop tree written by the user",
              head_tiles="whole", user_tree=True, attention_bound=None)


def preset_of(kind: str) -> Preset:
    return TREE if kind == TREE.name else PRESETS[kind]

