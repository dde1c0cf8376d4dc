"""Binding: which PE array runs each Einsum of a cascade.

A binding is derived by a *policy* and then adjusted by explicit assignments:

``tile`` (FuseMax)
    Every Einsum that iterates the key tile (the inner key rank ``m0``, or ``m`` when the key
    rank is not partitioned) runs on the 2D array, where one tile of M0 keys x P0 queries maps
    onto the PEs; Einsums over query vectors only (running max, correction factors, the
    final division) run on the 1D array.
``matmul`` (FLAT, TPU-like)
    Only contractions (a ``sum`` of a product, i.e. MAC work) run on the 2D array; every
    other Einsum runs on the 1D array.

In both policies an Einsum whose operations the chosen array cannot execute moves to an array
that can; explicit assignments are never moved, they are checked, and a bad one is a one-line
:class:`~iosim.errors.IosimError`.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

from iosim.errors import IosimError
from iosim.spatial.arch import SpatialHardware

__all__ = ["Binding", "BINDING_POLICIES", "bind"]

BINDING_POLICIES = ("tile", "matmul")


@dataclass(frozen=True)
class Binding:
    assign: tuple[tuple[str, str], ...]     # (einsum tensor, array name), cascade order
    policy: str
    explicit: tuple[str, ...] = ()
    moved: tuple[tuple[str, str, str], ...] = ()   # (einsum, from, to) moved for op support

    def of(self, tensor: str) -> str:
        return dict(self.assign)[tensor]

    def on(self, array: str) -> list[str]:
        return [t for t, a in self.assign if a == array]

    def to_dict(self) -> dict:
        return {"policy": self.policy, "assign": dict(self.assign),
                "explicit": list(self.explicit),
                "moved": [{"einsum": e, "from": a, "to": b} for e, a, b in self.moved]}


def bind(einsums, hw: SpatialHardware, policy: str = "tile",
         overrides: dict | None = None) -> Binding:
    """Bind the model's Einsums (objects with ``tensor``, ``ops``, ``ivars``, ``key_inner``,
    ``is_contraction``) to the arrays of ``hw``."""
    if policy not in BINDING_POLICIES:
        hint = difflib.get_close_matches(str(policy), BINDING_POLICIES, n=1)
        hint = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise IosimError(f"unknown binding policy '{policy}'{hint}; expected "
                         f"{', '.join(BINDING_POLICIES)}")
    overrides = dict(overrides or {})
    names = [e.tensor for e in einsums]
    for t, a in overrides.items():
        if t not in names:
            hint = difflib.get_close_matches(t, names, n=1)
            hint = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise IosimError(f"binding names Einsum '{t}', which the cascade does not compute"
                             f"{hint}; Einsums: {', '.join(names)}")
        hw.array(a)   # raises for an unknown array
    big, small = hw.matrix_array(), hw.vector_array()
    out, moved = [], []
    for e in einsums:
        if e.tensor in overrides:
            arr = hw.array(overrides[e.tensor])
            missing = [op for op in e.ops if not arr.supports(op)]
            if missing:
                raise IosimError(f"cannot bind Einsum {e.tensor} to array '{arr.name}': it needs "
                                 f"{', '.join(missing)}, which array '{arr.name}' lacks "
                                 f"(it executes {', '.join(sorted(arr.ops))}"
                                 + (f", emulates {', '.join(sorted(arr.emulate))}" if arr.emulate
                                    else "") + ")")
            out.append((e.tensor, arr.name))
            continue
        if policy == "tile":
            want = big if e.key_inner else small
        else:
            want = big if e.is_contraction else small
        choice = want
        if not all(want.supports(op) for op in e.ops):
            cands = [a for a in (small, big, *hw.arrays) if all(a.supports(op) for op in e.ops)]
            if not cands:
                raise IosimError(f"no array of hardware '{hw.name}' can execute Einsum {e.tensor} "
                                 f"(needs {', '.join(sorted(e.ops))})")
            choice = cands[0]
            moved.append((e.tensor, want.name, choice.name))
        out.append((e.tensor, choice.name))
    return Binding(tuple(out), policy, tuple(overrides), tuple(moved))
