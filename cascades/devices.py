"""A device rank: a rank of an attention cascade partitioned across devices, with the combine
that the cascade's algebra implies, and a NumPy executor that runs the multi-device cascade on
simulated devices.

A :class:`DeviceRank` names the role of the partitioned rank (``key``, ``query`` or ``head``),
the number of devices and the layout of its coordinates over them (``contiguous`` blocks or
``striped``: coordinate ``x`` on device ``x mod P``). The combine follows from the cascade's
structure, never from its name:

* a rank the output carries (queries, heads) is **concatenated**: each device owns its slice
  of the output;
* the key rank, which the output does not carry, is reduced by a max and a sum (softmax): the
  partial outputs of disjoint key sets combine through their log-sum-exp,
  ``O = sum_j exp(LSE_j - L) O_j / sum_j exp(LSE_j - L)``, ``L = max_j LSE_j`` -- the same
  associative reduction as split-K decoding. A cascade with no max over its key rank has no
  such combine and is refused.

A :class:`Scheme` composes device ranks into the multi-device algorithms:

* ``ring`` -- queries in contiguous blocks (concatenated); key/value blocks rotate around the
  ring, device ``i`` holding key block ``(i - s) mod P`` at step ``s`` (Ring Attention, BPT);
* ``striped`` -- the same with queries and keys striped over the devices, so that a causal
  mask leaves every device the same work at every step (Striped Attention);
* ``ulysses`` -- heads split over the devices (an all-to-all turns the sequence sharding
  into a head sharding and back), every device attends over all keys (DeepSpeed-Ulysses);
* ``usp`` -- heads split over ``ulysses`` groups, a ring inside each group (USP);
* ``kv-shard`` -- the keys (a request's KV cache) split over the devices, every device
  attending the same queries; the partials meet in one LSE combine (DistAttention, decode).

:func:`execute_devices` runs a scheme on simulated devices: each device computes the partial
output and log-sum-exp of its blocks with :func:`partial_attention`, step by step in the
scheme's order, and the combines above assemble the output. It equals single-device
attention to rounding (tests/test_devices.py).
"""
from __future__ import annotations

from dataclasses import dataclass
import numpy as np

from cascades.errors import CascadeError

__all__ = ["DeviceRank", "Scheme", "Step", "SCHEMES", "DeviceError", "partition",
           "key_combine", "scheme", "ring_steps", "block_kind", "partial_attention",
           "lse_combine", "execute_devices", "ulysses_split"]

SCHEMES = ("ring", "striped", "ulysses", "usp", "kv-shard")
LAYOUTS = ("contiguous", "striped")


class DeviceError(CascadeError):
    """A multi-device split that the cascade or the sizes do not allow."""


@dataclass(frozen=True)
class DeviceRank:
    """The rank playing ``role`` partitioned over ``devices`` with ``layout``; ``combine`` is
    ``"concat"`` or ``"lse"``; ``rotates``: its blocks travel between devices step by step (a
    ring) instead of staying where they are."""
    role: str
    devices: int
    layout: str = "contiguous"
    combine: str = "concat"
    rotates: bool = False


@dataclass(frozen=True)
class Scheme:
    """A multi-device attention algorithm: its device ranks, outermost first."""
    name: str
    devices: int
    ranks: tuple
    ulysses: int = 1        # head groups (ulysses, usp)
    ring: int = 1           # devices in a ring (ring, striped, usp)

    def rank(self, role: str) -> DeviceRank | None:
        return next((r for r in self.ranks if r.role == role), None)


@dataclass(frozen=True)
class Step:
    """One step of a ring: device ``device`` computes its query block against key block
    ``key_block``; ``kind`` is ``full``, ``partial`` (a mask inside the block) or ``skip``."""
    step: int
    device: int
    key_block: int
    kind: str


def partition(n: int, devices: int, layout: str = "contiguous") -> list:
    """The coordinates ``0..n-1`` each device holds: contiguous blocks whose sizes differ by at
    most one (the first ``n mod P`` devices one longer), or striped (``x`` on ``x mod P``)."""
    if devices < 1:
        raise DeviceError(f"devices must be a positive integer, got {devices}")
    if layout == "striped":
        return [np.arange(i, n, devices) for i in range(devices)]
    if layout != "contiguous":
        raise DeviceError(f"unknown layout '{layout}'; expected one of: {', '.join(LAYOUTS)}")
    return list(np.array_split(np.arange(n), devices))


def key_combine(cascade) -> str:
    """How partial results over disjoint key sets combine, from the cascade's structure:
    ``"lse"`` where the cascade reduces its key rank by a max (a softmax); otherwise a
    :class:`DeviceError` (there is no associative combine to split the key rank by)."""
    from cascades.roles import rank_roles
    roles = rank_roles(cascade)
    key = roles.get("key")
    if key is None:
        raise DeviceError(f"cascade '{cascade.name}': no key rank found (two inputs indexed by "
                          f"one rank the output does not carry)")
    info = cascade.info
    key_ranks = {key} | {r for r, p in info.part_parent.items() if p.rank == key}
    maxed = any(e.reduction is not None and e.reduction.op == "max"
                and any(info.var_rank.get(v) in key_ranks for v in e.reduction.vars)
                for e in cascade.einsums)
    if not maxed:
        raise DeviceError(f"cascade '{cascade.name}': its key rank {key} is not reduced by a max "
                          f"(no softmax), so partial outputs over key shards have no log-sum-exp "
                          f"combine; split queries or heads instead")
    return "lse"


def scheme(name: str, devices: int, *, heads: int | None = None, ulysses: int | None = None,
           cascade=None) -> Scheme:
    """The device ranks of scheme ``name`` on ``devices`` devices (``heads`` for the head
    split of ulysses and usp; ``ulysses`` the head groups of usp, default the largest divisor
    of ``devices`` not above ``heads``)."""
    if name not in SCHEMES:
        import difflib
        hit = difflib.get_close_matches(name, SCHEMES, n=1)
        raise DeviceError(f"unknown scheme '{name}'" + (f" (did you mean '{hit[0]}'?)" if hit else "")
                          + f"; schemes: {', '.join(SCHEMES)}")
    if not isinstance(devices, (int, np.integer)) or devices < 1:
        raise DeviceError(f"devices must be a positive integer, got {devices!r}")
    lse = key_combine(cascade) if cascade is not None and name != "ulysses" else "lse"
    if name in ("ring", "striped"):
        lay = "striped" if name == "striped" else "contiguous"
        return Scheme(name, devices, (DeviceRank("query", devices, lay, "concat"),
                                      DeviceRank("key", devices, lay, lse, rotates=True)),
                      ring=devices)
    if name == "kv-shard":
        return Scheme(name, devices, (DeviceRank("key", devices, "contiguous", lse),))
    if heads is None:
        raise DeviceError(f"{name} splits heads: give the number of heads")
    if name == "ulysses":
        if heads < devices:
            raise DeviceError(f"ulysses splits heads over devices: {heads} heads < {devices} "
                              f"devices (use usp or ring)")
        return Scheme(name, devices, (DeviceRank("head", devices, "contiguous", "concat"),),
                      ulysses=devices)
    # usp
    if ulysses is None:
        ulysses = max(u for u in range(1, devices + 1) if devices % u == 0 and u <= heads)
    if ulysses < 1 or devices % ulysses:
        raise DeviceError(f"usp: the ulysses degree {ulysses} must divide the {devices} devices")
    if ulysses > heads:
        raise DeviceError(f"usp: the ulysses degree {ulysses} exceeds the {heads} heads")
    r = devices // ulysses
    return Scheme(name, devices, (DeviceRank("head", ulysses, "contiguous", "concat"),
                                  DeviceRank("query", r, "contiguous", "concat"),
                                  DeviceRank("key", r, "contiguous", lse, rotates=True)),
                  ulysses=ulysses, ring=r)


def ulysses_split(heads: int, devices: int) -> list:
    """The heads of each device (contiguous, sizes differing by at most one)."""
    return partition(heads, devices)


# ------------------------------------------------------------------------------ masks
def visible(qpos: np.ndarray, kpos: np.ndarray, causal: bool, upper: int = 0) -> np.ndarray | None:
    """Which (query, key) pairs a causal mask keeps: key position ``m <= p + upper``."""
    if not causal:
        return None
    return kpos[None, :] <= qpos[:, None] + upper


def block_kind(qpos: np.ndarray, kpos: np.ndarray, causal: bool, upper: int = 0) -> str:
    """``full`` (every pair visible), ``skip`` (none) or ``partial``."""
    if len(qpos) == 0 or len(kpos) == 0:
        return "skip"
    if not causal:
        return "full"
    if kpos.max() <= qpos.min() + upper:
        return "full"
    if kpos.min() > qpos.max() + upper:
        return "skip"
    return "partial"


def ring_steps(n_q: int, n_k: int, devices: int, layout: str = "contiguous", causal: bool = False,
               upper: int = 0) -> list:
    """The ring's work, step by step: ``steps[s][i]`` is the :class:`Step` of device ``i``
    (key block ``(i - s) mod P``: each device passes its block to device ``i + 1``)."""
    qparts = partition(n_q, devices, layout)
    kparts = partition(n_k, devices, layout)
    out = []
    for s in range(devices):
        row = []
        for i in range(devices):
            j = (i - s) % devices
            row.append(Step(s, i, j, block_kind(qparts[i], kparts[j], causal, upper)))
        out.append(row)
    return out


# ------------------------------------------------------------------------- the kernel
def partial_attention(q, k, v, scale: float, keep=None):
    """One device's partial result over its keys: ``(O, LSE)`` with ``O`` the softmax-weighted
    values normalised over these keys and ``LSE`` the log-sum-exp of its scores (``-inf`` and a
    zero row where a query sees none of them). ``q`` is ``(..., P, E)``, ``k`` ``(..., M, E)``."""
    s = scale * np.einsum("...pe,...me->...pm", q, k)
    if keep is not None:
        s = np.where(keep, s, -np.inf)
    shape = s.shape[:-1]
    if s.shape[-1] == 0:
        return np.zeros(shape + (v.shape[-1],)), np.full(shape, -np.inf)
    m = s.max(axis=-1)
    mf = np.where(np.isfinite(m), m, 0.0)
    w = np.exp(s - mf[..., None])
    z = w.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        o = np.einsum("...pm,...mf->...pf", w, v) / z[..., None]
        lse = np.where(z > 0, mf + np.log(z), -np.inf)
    o = np.where((z > 0)[..., None], o, 0.0)
    return o, lse


def lse_combine(parts):
    """Combine partial ``(O, LSE)`` pairs over disjoint key sets (associative)."""
    parts = list(parts)
    lses = np.stack([p[1] for p in parts])
    outs = np.stack([p[0] for p in parts])
    top = lses.max(axis=0)
    topf = np.where(np.isfinite(top), top, 0.0)
    w = np.where(np.isfinite(lses), np.exp(lses - topf), 0.0)
    z = w.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        o = (w[..., None] * outs).sum(axis=0) / z[..., None]
        lse = np.where(z > 0, topf + np.log(z), -np.inf)
    return np.where((z > 0)[..., None], o, 0.0), lse


# ------------------------------------------------------------------------- executor
def _heads(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 2:
        return a[None]
    if a.ndim != 3:
        raise DeviceError(f"{name}: expected a [rows, dim] or [heads, rows, dim] array, "
                          f"got shape {a.shape}")
    return a


def _ring(q, k, v, qpos, kpos, devices, layout, causal, upper, scale, trace):
    """Ring (or striped) attention over ``devices`` simulated devices; returns (O, LSE)."""
    qparts = partition(q.shape[-2], devices, layout)
    kparts = partition(k.shape[-2], devices, layout)
    held = [(k[..., kp, :], v[..., kp, :], kpos[kp]) for kp in kparts]   # device i holds block i
    acc = [None] * devices
    for s in range(devices):
        for i in range(devices):
            j = (i - s) % devices
            kb, vb, kp = held[i]
            qi = qparts[i]
            kind = block_kind(qpos[qi], kp, causal, upper)
            if trace is not None:
                trace.append(Step(s, i, j, kind))
            if kind == "skip":
                continue
            keep = visible(qpos[qi], kp, causal, upper) if kind == "partial" else None
            part = partial_attention(q[..., qi, :], kb, vb, scale, keep)
            acc[i] = part if acc[i] is None else lse_combine([acc[i], part])
        held = [held[(i - 1) % devices] for i in range(devices)]        # send to i + 1
    o = np.zeros(q.shape[:-1] + (v.shape[-1],))
    lse = np.full(q.shape[:-1], -np.inf)
    for i, qi in enumerate(qparts):
        if acc[i] is not None:
            o[..., qi, :], lse[..., qi] = acc[i]
    return o, lse


def execute_devices(cascade, inputs: dict, scheme_name: str, devices: int, *, causal=None,
                    scale: float | None = None, ulysses: int | None = None, trace=None) -> dict:
    """Run ``cascade`` split by ``scheme_name`` over ``devices`` simulated devices.

    ``inputs``: ``Q`` ``[P, E]`` or ``[heads, P, E]``, ``K``/``V`` ``[M, E]``/``[M, F]`` or with
    heads. Causal masking (default: the cascade's ``causal`` parameter) keeps key ``m`` for
    query ``p`` where ``m <= p + upper``, ``upper`` read from the cascade's mask (0, or
    ``M - P`` for a mask aligned to the end of the keys). Returns ``{"O": ..., "LSE": ...}``
    (heads first when the inputs have heads); ``trace`` (a list) receives the ring's
    :class:`Step` records.
    """
    from cascades.masks import mask_region
    from cascades.roles import canonical
    c = canonical(cascade)
    q, k, v = (_heads(inputs[t], t) for t in ("Q", "K", "V"))
    squeeze = np.asarray(inputs["Q"]).ndim == 2
    hq, n_q, e = q.shape
    hk, n_k, _ = k.shape
    if hq % hk:
        raise DeviceError(f"{hq} query heads are not a multiple of {hk} key/value heads")
    k = np.repeat(k, hq // hk, axis=0)
    v = np.repeat(v, hq // hk, axis=0)
    sch = scheme(scheme_name, devices, heads=hq, ulysses=ulysses, cascade=c)
    if causal is None:
        p = next((x for x in c.params if x.name == "causal"), None)
        causal = bool(getattr(p.default, "value", False)) if p is not None else False
    region = mask_region(c)
    upper = 0
    if causal:
        if not region.is_band or region.kind != "causal":
            raise DeviceError(f"cascade '{cascade.name}': its mask is not a causal band "
                              f"(kind {region.kind}); the executor splits causal or unmasked "
                              f"attention")
        upper = int(round(region.upper.value({"P": n_q, "M": n_k, "E": e, "F": v.shape[-1]}, {})))
    if scale is None:
        scale = 1.0 / np.sqrt(e)
    qpos, kpos = np.arange(n_q), np.arange(n_k)
    o = np.zeros((hq, n_q, v.shape[-1]))
    lse = np.full((hq, n_q), -np.inf)
    if sch.name in ("ring", "striped"):
        o, lse = _ring(q, k, v, qpos, kpos, devices, sch.rank("key").layout, causal, upper,
                       scale, trace)
    elif sch.name == "kv-shard":
        parts = []
        for kp in partition(n_k, devices):
            kind = block_kind(qpos, kp, causal, upper)
            if trace is not None:
                trace.append(Step(0, len(parts), len(parts), kind))
            keep = visible(qpos, kp, causal, upper) if kind == "partial" else None
            parts.append(partial_attention(q, k[:, kp], v[:, kp], scale, keep))
        o, lse = lse_combine(parts)                                  # the gather's combine
    else:                                                            # ulysses, usp
        for hs in ulysses_split(hq, sch.ulysses):
            if len(hs) == 0:
                continue
            o[hs], lse[hs] = _ring(q[hs], k[hs], v[hs], qpos, kpos, sch.ring, "contiguous",
                                   causal, upper, scale, trace)
    if squeeze:
        o, lse = o[0], lse[0]
    return {"O": o, "LSE": lse}

