"""The roles of a cascade's ranks, found from its structure, and the cascade with its ranks
named by role.

An attention cascade has a query rank, a key rank, the head dimension its score contracts and
the head dimension of its values. Their names are the author's: ``T``/``S``/``D`` work as well
as ``P``/``M``/``E``/``F``. :func:`rank_roles` reads the roles from the structure:

* the **score** head dimension is the index the score sums over (the first sum over one
  index of a product of two tensors: ``sum[e] Q[p, e] * K[m, e]``);
* the **key** rank indexes two inputs (keys and values) and no output, and is not that one;
* the **query** rank indexes the output and the input with the score dimension and no key;
* the **value** head dimension indexes the output and the input with the key and no score
  dimension.

:func:`canonical` returns the same cascade with those ranks named ``P``, ``M``, ``E``, ``F``
(index variables, partitions and values renamed with them), so models that speak of P and M
evaluate it exactly like a library cascade written with those names.
"""
from __future__ import annotations

import re
from functools import lru_cache

from cascades.errors import CascadeError

__all__ = ["rank_roles", "canonical"]

CANONICAL = {"query": "P", "key": "M", "score_dim": "E", "value_dim": "F"}


def rank_roles(cascade) -> dict:
    """``{role: rank}`` for the roles found (a subset of query, key, score_dim, value_dim)."""
    from cascades.ir import Access, Binary
    info = cascade.info

    def base(r):
        part = info.part_parent.get(r)
        return part.rank if part is not None else r
    inputs = [t for t in cascade.inputs if t.dtype != "bool"]
    out_ranks = {r for t in cascade.outputs for r in t.ranks}
    roles = {}
    # the score: the first sum over one index of a product of two tensors
    for e in cascade.einsums:
        if (e.reduction is not None and e.reduction.op == "sum" and len(e.reduction.vars) == 1
                and isinstance(e.expr, Binary) and e.expr.op == "*"
                and isinstance(e.expr.left, Access) and isinstance(e.expr.right, Access)):
            roles["score_dim"] = base(info.var_rank[e.reduction.vars[0]])
            break
    if "score_dim" not in roles:
        return {}
    e_rank = roles["score_dim"]
    count = {}
    for t in inputs:
        for r in set(t.ranks):
            count[r] = count.get(r, 0) + 1
    keys = [r for r, n in count.items() if n >= 2 and r not in out_ranks and r != e_rank]
    if len(keys) != 1:
        return {}
    key = roles["key"] = keys[0]
    q_in = [t for t in inputs if e_rank in t.ranks and key not in t.ranks]
    v_in = [t for t in inputs if key in t.ranks and e_rank not in t.ranks]
    queries = [r for t in q_in for r in t.ranks if r in out_ranks]
    values = [r for t in v_in for r in t.ranks if r in out_ranks]
    if queries:
        roles["query"] = queries[-1]
    if values:
        roles["value_dim"] = values[-1]
    return roles


@lru_cache(maxsize=256)
def canonical(cascade):
    """``cascade`` with its query, key and head-dimension ranks named P, M, E, F (itself if they
    already are, or if the roles cannot all be found)."""
    if {"P", "M", "E", "F"} <= set(cascade.info.ranks):
        return cascade                      # already named by role (or a non-score cascade)
    roles = rank_roles(cascade)
    if len(roles) != 4 or len(set(roles.values())) != 4:
        return cascade
    rename = {rank: CANONICAL[role] for role, rank in roles.items() if rank != CANONICAL[role]}
    if not rename:
        return cascade
    taken = ({t.name for t in cascade.tensors} | {p.name for p in cascade.params}
             | set(cascade.info.ranks))
    for old, new in rename.items():
        if new in taken and new not in rename:
            raise CascadeError(f"cascade '{cascade.name}': rank {old} plays the role of {new}, "
                               f"but the name {new} is taken")
    from cascades.notation import format_cascade, parse
    text = format_cascade(cascade)
    lines = text.splitlines()
    # rank names are upper-case tokens, index variables their lower-case forms
    subs = {}
    for old, new in rename.items():
        subs[old] = new
        for v, r in cascade.info.var_rank.items():
            if r == old:
                subs[v] = new.lower() + v[len(old):] if v.startswith(old.lower()) else v
    pattern = re.compile(r"\b(" + "|".join(sorted(map(re.escape, subs), key=len, reverse=True))
                         + r")\b")
    out = []
    for ln in lines:
        if ln.startswith("cascade "):
            out.append(ln)          # the name and its description stay as written
            continue
        code, sep, comment = ln.partition("#")
        out.append(pattern.sub(lambda mt: subs[mt.group(1)], code) + sep + comment)
    return parse("\n".join(out) + "\n", source=getattr(cascade, "source", None))
