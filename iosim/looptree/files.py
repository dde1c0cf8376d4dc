"""A user's loop tree, from a TOML file or a Python dict, as a :class:`~iosim.mapping.Mapping`.

The file (see ``docs/mapping.md``)::

    name = "my-fa2"
    block_q = 128                 # tile values (and any other Mapping field: num_warps, ...)
    block_kv = 64

    [tensors]                     # tensors the mapping adds (not in the cascade)
    LSE = { ranks = ["P"], dtype = "stat" }

    [[kernel]]
    name = "forward"

    [[kernel.node]]               # a node of the kernel's body
    loop = "P"                    # for each tile of the query rank ...
    tile = "block_q"              # ... by block_q (a name, or a number that sets it)
    parallel = true               # one program per tile

    [[kernel.node.node]]          # a node inside that loop
    level = "SMEM"
    load = ["Q"]

    [[kernel.node.node]]
    loop = "M"
    mask = true                   # only the key tiles the mask region meets

    [[kernel.node.node.node]]
    level = "SMEM"
    load = ["K", "V"]
    stream = true

    [[kernel.node.node.node]]
    compute = ["SQK"]             # a score tile (query x key) kept on chip

    [[kernel.node.node]]          # back in the query loop, after the key loop
    level = "SMEM"
    store = ["O", "LSE"]

Ranks are the cascade's own names (``T``, ``S`` work where the cascade says so) or the roles
``P``, ``M``, ``E``, ``F``. A node is a loop (``loop``), a split of the key tiles (``split``),
a storage node (``level`` with ``load`` / ``keep`` / ``store`` lists, ``stream``, ``stages``:
the streamed tiles' own pipeline depth), a compute node (``compute``) or a pass branch
(``passes = "keep" | "spill" | "recompute"``, optional ``crossing``: its child nodes are
sweeps one after the other, the tensors crossing them kept on chip, spilled or recomputed;
``crossing`` defaults to the cascade's pass analysis). Top-level ``passes`` (and
``crossing``) make the kernels passes of one another. Bad trees are refused with one line
naming what and where.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from iosim.errors import IosimError
from iosim.looptree.lower import LOOP_RANKS
from iosim.looptree.tree import (TILE_NAMES, Compute, Kernel, Loop, LoopTree, Passes, Split,
                                 Storage, Use)

__all__ = ["load_mapping_file", "mapping_from_dict", "tree_from_dict", "check_tiles",
           "with_fields", "write_best"]

#: the tile name a loop over a rank takes by default (a number sets that Mapping field)
DEFAULT_TILE = {"P": "block_q", "R": "block_q", "M": "block_kv", "E": "block_e",
                "F": "block_f", "G": "one"}
_NODE_KEYS = {"loop": {"loop", "tile", "parallel", "mask", "var", "label", "node", "within"},
              "split": {"split", "parallel", "label", "node"},
              "level": {"level", "load", "keep", "store", "stream", "stages"},
              "compute": {"compute"},
              "passes": {"passes", "crossing", "label", "node"}}
_TOP_KEYS = {"name", "tensors", "kernel", "notes", "skips_masked", "passes", "crossing"}
#: how the tensors crossing a pass branch's sweeps get from one to the next
POLICIES = ("keep", "spill", "recompute")
_MAPPING_KEYS = {"block_q", "block_kv", "block_e", "block_f", "num_warps", "num_stages",
                 "split_kv", "softmax_rows", "grid_order", "acc_dtype", "stat_dtype",
                 "acc_level", "stages_in_footprint"}


def _rank_map(cascade) -> dict:
    """The cascade's own rank names -> the role names the models use (P, M, E, F, G, Mt)."""
    from cascades.roles import CANONICAL, rank_roles
    from iosim.mapping import _load_cascade, cascade_facts
    out = {r: r for r in LOOP_RANKS}
    roles = rank_roles(cascade)
    if (not {"P", "M", "E", "F"} <= set(cascade.info.ranks) and len(roles) == 4
            and len(set(roles.values())) == 4):     # as cascades.roles.canonical renames
        for role, rank in roles.items():
            out[rank] = CANONICAL[role]
    f = cascade_facts(_load_cascade(cascade))
    out.update(f.rank_alias)
    return out


def _cascade_tensor_ranks(c, f) -> dict:
    """Every tensor of the (canonical) cascade with its ranks in the models' names: inputs
    and outputs as :class:`~iosim.mapping.CascadeFacts` has them, intermediates without their
    iterative ranks (a running state is overwritten in place), a partition's inner rank as
    its parent (a tile of it), the outer as a per-tile coordinate."""
    info = c.info
    out = dict(f.ranks)
    for t, rk in info.tensor_ranks.items():
        if t in out:
            continue
        new = []
        for r in rk:
            if r in info.iterative:
                continue
            part = info.part_parent.get(r)
            if part is not None:
                r = part.rank if r == part.inner else part.rank + "t"
            r = f.rank_alias.get(r, r)
            if r not in new:
                new.append(r)
        out[t] = tuple(new)
    return out


def _names(v, where: str) -> list:
    if isinstance(v, str):
        return [v]
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise IosimError(f"{where}: expected a tensor name or a list of them, got {v!r}")
    return list(v)


def tree_from_dict(d: dict, cascade, hardware=None, *, source: str = "mapping") -> tuple:
    """``(LoopTree, tiles)`` from a parsed file: ``tiles`` are the Mapping fields the file
    sets (numbers given as loop tiles included). ``cascade``: a name, a path or a Cascade
    (its own rank names are accepted); ``hardware``: storage levels are checked against it."""
    from cascades.library import load
    from iosim.mapping import _load_cascade, cascade_facts
    c0 = load(cascade) if isinstance(cascade, str) else cascade
    c = _load_cascade(c0)
    f = cascade_facts(c)
    rmap = _rank_map(c0)
    tranks = _cascade_tensor_ranks(c, f)
    if not isinstance(d, dict):
        raise IosimError(f"{source}: expected a table")
    bad = set(d) - _TOP_KEYS - _MAPPING_KEYS
    if bad:
        raise IosimError(f"{source}: unknown key '{sorted(bad)[0]}' (keys: "
                         f"{', '.join(sorted(_TOP_KEYS | _MAPPING_KEYS))})")
    tiles = {k: d[k] for k in _MAPPING_KEYS if k in d}

    def rank(r, where) -> str:
        if not isinstance(r, str) or r not in rmap:
            known = sorted({k for k in rmap if k in c0.info.ranks} | set(LOOP_RANKS))
            raise IosimError(f"{where}: unknown rank {r!r} (cascade '{c0.name}' has ranks "
                             f"{', '.join(known)})")
        return rmap[r]

    extra = []
    for t, spec in (d.get("tensors") or {}).items():
        where = f"{source}: tensors.{t}"
        if not isinstance(spec, dict) or "ranks" not in spec:
            raise IosimError(f"{where}: give {{ ranks = [...], dtype = \"data\" | \"stat\" }}")
        role = spec.get("dtype", "data")
        if role not in ("data", "stat", "mask"):
            raise IosimError(f"{where}: dtype must be data, stat or mask, got {role!r}")
        rk = tuple(rank(r, where) for r in _names(spec["ranks"], where))
        extra.append((t, (rk, role)))
        tranks[t] = rk
    levels = None
    acc_levels = ("acc",)
    if hardware is not None:
        from iosim.hardware import load_hardware
        from iosim.mapping import Mapping
        from iosim.traffic import _level_roles
        hw = load_hardware(hardware) if isinstance(hardware, str) else hardware
        base, mid, sram, inner, acc = _level_roles(hw, Mapping(name="x", cascade=c.name))
        levels = {sram.name: "sram", **{lv.name: "acc" if lv is acc else "sram" for lv in inner}}
        off_chip = [base.name] + [lv.name for lv in mid]
        acc_levels = ("acc", acc.name)

    def tensor(t, where) -> str:
        if t not in tranks:
            raise IosimError(f"{where}: tensor '{t}' is not in cascade '{c0.name}' (tensors: "
                             f"{', '.join(sorted(tranks))}); declare a tensor the mapping adds "
                             f"under [tensors]")
        return t

    def node(nd, where, encl):
        if not isinstance(nd, dict):
            raise IosimError(f"{where}: expected a table")
        kinds = [k for k in _NODE_KEYS if k in nd]
        if len(kinds) != 1:
            raise IosimError(f"{where}: a node has exactly one of loop, split, level, "
                             f"compute, passes (got {', '.join(kinds) or 'none'})")
        kind = kinds[0]
        bad = set(nd) - _NODE_KEYS[kind]
        if bad:
            raise IosimError(f"{where}: unknown key '{sorted(bad)[0]}' in a {kind} node (keys: "
                             f"{', '.join(sorted(_NODE_KEYS[kind]))})")
        if kind == "loop":
            r = rank(nd["loop"], where)
            where = f"{where} (loop over {nd['loop']})"
            tile = nd.get("tile", DEFAULT_TILE.get(r))
            if isinstance(tile, bool) or not isinstance(tile, (str, int)):
                raise IosimError(f"{where}: tile must be a name ({', '.join(TILE_NAMES)}) or a "
                                 f"positive whole number, got {tile!r}")
            if isinstance(tile, int):
                if tile < 1:
                    raise IosimError(f"{where}: tile must be positive, got {tile}")
                field = DEFAULT_TILE.get(r)
                if field in (None, "one"):
                    raise IosimError(f"{where}: a loop over {r} takes no numeric tile")
                if tiles.get(field, tile) != tile:
                    raise IosimError(f"{where}: tile {tile} disagrees with {field} = "
                                     f"{tiles[field]} set elsewhere")
                tiles[field] = tile
                fixed.add(field)
                tile = field
            if tile not in TILE_NAMES:
                raise IosimError(f"{where}: tile '{tile}' is not one of {', '.join(TILE_NAMES)}")
            var = nd.get("var") or _var(r, encl)
            mask = None
            if nd.get("mask"):
                other = ("M",) if r in ("P", "R") else ("P", "R") if r == "M" else ()
                mask = next((lp.var for lp in reversed(encl)
                             if isinstance(lp, Loop) and lp.rank in other), None)
                if mask is None:
                    raise IosimError(f"{where}: mask = true needs an enclosing loop over "
                                     f"{' or '.join(other) or 'the query or key rank'}")
            within = None
            if r == "M":
                within = next((s.var for s in reversed(encl) if isinstance(s, Split)), None)
            lp = Loop(r, tile, (), var=var, parallel=bool(nd.get("parallel", False)),
                      mask=mask, within=nd.get("within", within), label=nd.get("label", ""))
            body = tuple(node(x, f"{where} node {i + 1}", encl + (lp,))
                         for i, x in enumerate(nd.get("node", [])))
            return Loop(lp.rank, lp.tile, body, var=lp.var, parallel=lp.parallel,
                        mask=lp.mask, within=lp.within, label=lp.label)
        if kind == "split":
            sp = Split(str(nd["split"]), (), parallel=bool(nd.get("parallel", True)),
                       label=nd.get("label", ""))
            body = tuple(node(x, f"{where} node {i + 1}", encl + (sp,))
                         for i, x in enumerate(nd.get("node", [])))
            return Split(sp.var, body, parallel=sp.parallel, label=sp.label)
        if kind == "level":
            lv = nd["level"]
            if levels is not None:
                if lv in off_chip:
                    raise IosimError(f"{where}: storage level '{lv}' is off chip; a storage "
                                     f"node keeps tensors on chip ({', '.join(levels)})")
                if lv not in levels:
                    raise IosimError(f"{where}: storage level '{lv}' is not in the hardware "
                                     f"(levels on chip: {', '.join(levels)})")
            elif lv not in ("sram", "acc"):
                raise IosimError(f"{where}: storage level '{lv}' needs a hardware to check it "
                                 f"against (or use 'sram' or 'acc')")
            uses = []
            stream = bool(nd.get("stream", False))
            stages = nd.get("stages")
            if stages is not None:
                if isinstance(stages, bool) or not isinstance(stages, int) or stages < 1:
                    raise IosimError(f"{where}: stages must be a positive whole number, got "
                                     f"{stages!r}")
                if not stream or not nd.get("load"):
                    raise IosimError(f"{where}: stages = {stages} pipelines streamed loads; "
                                     f"this node streams nothing (give load = [...] and "
                                     f"stream = true)")
            for move in ("load", "keep", "store"):
                for t in _names(nd.get(move, []), f"{where} {move}"):
                    t = tensor(t, where)
                    name = f"{t}_acc" if (move == "keep" and t in f.outputs) else None
                    ranks = None if t in f.ranks or t in dict(extra) else tranks[t]
                    if move != "keep" and ranks is not None:    # through the backing store
                        moved.setdefault(t, (ranks, "data"))
                    uses.append(Use(t, move, stream=stream and move == "load", name=name,
                                    ranks=ranks))
                    if move == "keep":
                        kept_now.add(t)     # seen before the pass branches that follow
            return Storage(lv, tuple(uses), stages=stages)
        if kind == "passes":
            where = f"{where} (passes)"
            body = tuple(node(x, f"{where} node {i + 1}", encl)
                         for i, x in enumerate(nd.get("node", [])))
            sweeps = tuple(x for x in body if isinstance(x, (Loop, Split)))
            pol, cross = _pass_branch(nd["passes"], nd.get("crossing"), sweeps, body, where)
            return Passes(body, crossing=cross, policy=pol, label=str(nd.get("label", "")))
        ts = [tensor(t, where) for t in _names(nd["compute"], f"{where} compute")]
        score = next((tranks[t] for t in ts if {"P", "M"} <= set(tranks[t])), None)
        rows = "P"
        return Compute(tuple(ts), score=(rows, "M") if score is not None else None)

    def _pass_branch(policy, crossing, sweeps, body, where) -> tuple:
        """``(policy, crossing)`` of a pass branch, checked against its sweeps (the
        children that loop) and the cascade's pass analysis; the recomputed tensors'
        counts go to ``recompute``."""
        if policy not in POLICIES:
            raise IosimError(f"{where}: passes = {policy!r} is not one of "
                             f"{', '.join(POLICIES)}")
        if len(sweeps) < 2:
            raise IosimError(f"{where}: a pass branch holds two or more sweeps (loops or "
                             f"kernels); it has {len(sweeps)}")
        given = None if crossing is None else [tensor(t, where)
                                               for t in _names(crossing, f"{where} crossing")]
        moves = [_moves((sw,)) for sw in sweeps]
        if policy == "spill":
            crossed = [t for i, (st, _, _) in enumerate(moves) for t in sorted(st)
                       if any(t in ld for _, ld, _ in moves[i + 1:])]
            for t in given or ():
                if t not in crossed:
                    raise IosimError(f"{where}: '{t}' crosses by spill, but no sweep stores "
                                     f"it for a later sweep to load")
            if not (given or crossed):
                raise IosimError(f"{where}: passes = \"spill\" but no sweep stores a tensor "
                                 f"that a later one loads")
            return policy, tuple(given or dict.fromkeys(crossed))
        if policy == "keep":
            if all(isinstance(sw, Kernel) for sw in sweeps):
                raise IosimError(f"{where}: kernels keep nothing on chip for one another: "
                                 f"use passes = \"spill\" or \"recompute\"")
            buffered = [t for t in pass_info.buffered if t in kept_now]
            for t in given or ():
                if t not in kept_now:
                    raise IosimError(f"{where}: '{t}' crosses on chip (keep), but no storage "
                                     f"node keeps it")
            return policy, tuple(given or buffered)
        # recompute: a tensor computed in sweep k of the cascade's passes is computed again
        # in every later sweep
        names = given if given is not None else [t for t, _ in f.recompute]
        if not names:
            raise IosimError(f"{where}: cascade '{c0.name}' recomputes nothing across passes "
                             f"(no score computed before its last pass over the keys)")
        if len(sweeps) != pass_info.passes:
            raise IosimError(f"{where}: recomputing needs one sweep per pass of the cascade "
                             f"over the keys ({pass_info.passes}); this branch has "
                             f"{len(sweeps)}")
        for t in names:
            k = pass_info.einsum_pass.get(t)
            if k is None:
                raise IosimError(f"{where}: '{t}' is not computed in a pass over the keys of "
                                 f"cascade '{c0.name}' (computed there: "
                                 f"{', '.join(sorted(pass_info.einsum_pass))})")
            recompute[t] = len(sweeps) - k + 1
        return policy, tuple(names)

    pass_info = _key_passes(c)
    kept_now: set = set()
    recompute: dict = {}
    fixed: set = set()
    moved: dict = {}      # cascade intermediates the tree stores and loads (spills)
    kernels = d.get("kernel")
    if not isinstance(kernels, list) or not kernels:
        raise IosimError(f"{source}: no [[kernel]] tables")
    out = []
    for i, k in enumerate(kernels):
        where = f"{source}: kernel {i + 1}"
        if not isinstance(k, dict) or set(k) - {"name", "node"}:
            raise IosimError(f"{where}: a kernel has a name and nodes ([[kernel.node]])")
        body = tuple(node(x, f"{where} node {j + 1}", ()) for j, x in enumerate(k.get("node", [])))
        out.append(Kernel(str(k.get("name", f"kernel {i + 1}")), body))
    kernels = tuple(out)
    if "passes" in d:
        pol, cross = _pass_branch(d["passes"], d.get("crossing"), kernels, kernels,
                                  f"{source}: passes")
        kernels = (Passes(kernels, crossing=cross, policy=pol),)
    elif "crossing" in d:
        raise IosimError(f"{source}: crossing needs passes = \"spill\" or \"recompute\" "
                         f"(the kernels as passes)")
    tree = LoopTree(kernels, tensors=tuple(extra) + tuple(moved.items()),
                    name=str(d.get("name", "")),
                    skips_masked=bool(d.get("skips_masked", True)),
                    recompute=tuple(recompute.items()),
                    notes=str(d.get("notes", "")), acc_levels=acc_levels,
                    fixed_tiles=tuple(sorted(fixed)))
    # lower once here so a bad tree is refused when it is read
    from iosim.looptree.lower import lower
    from iosim.mapping import Mapping
    lower(tree, Mapping(name="check", cascade=c.name), f)
    return tree, tiles, acc_levels


def _walk(nodes):
    """Every node under ``nodes`` (tree nodes), depth first."""
    for nd in nodes:
        yield nd, ()
        if isinstance(nd, (Loop, Split, Passes, Kernel)):
            yield from _walk(nd.body)


def _moves(nodes) -> tuple:
    """``(stored, loaded, kept)``: the tensors the storage nodes under ``nodes`` move."""
    out = (set(), set(), set())
    for nd, _ in _walk(nodes):
        if isinstance(nd, Storage):
            for u in nd.uses:
                out[("store", "load", "keep").index(u.move)].add(u.tensor)
    return out


@dataclass(frozen=True)
class _KeyPasses:
    passes: int
    einsum_pass: dict
    buffered: tuple


def _key_passes(c) -> _KeyPasses:
    """The cascade's passes over its key rank (:func:`cascades.passes.analyze_rank`)."""
    if "M" not in c.info.ranks:
        return _KeyPasses(1, {}, ())
    from cascades.passes import analyze_rank
    try:
        rp = analyze_rank(c, "M")
    except Exception:  # noqa: BLE001 - an unusual cascade: no pass structure known
        return _KeyPasses(1, {}, ())
    return _KeyPasses(rp.passes, dict(rp.einsum_pass),
                      tuple(dict.fromkeys(b.tensor for b in rp.buffered)))


def _var(rank: str, encl: tuple) -> str:
    taken = {getattr(x, "var", None) for x in encl}
    v = rank.lower()
    k = 2
    while v in taken:
        v, k = f"{rank.lower()}{k}", k + 1
    return v


def mapping_from_dict(d: dict, cascade, hardware=None, *, source: str = "mapping",
                      **overrides):
    """The :class:`~iosim.mapping.Mapping` of a user's tree (kind ``tree``): tiles and other
    fields from the file, then ``overrides`` (``None`` values ignored)."""
    from iosim.mapping import Mapping, _load_cascade
    tree, fields, acc_levels = tree_from_dict(d, cascade, hardware, source=source)
    if acc_levels[1:] and "acc_level" not in fields:
        fields["acc_level"] = acc_levels[1]
    fields.update({k: v for k, v in overrides.items() if v is not None})
    c = _load_cascade(cascade)
    name = tree.name or Path(source).stem
    try:
        return Mapping(name=name, cascade=c.name, kind="tree", tree=tree, **fields)
    except TypeError as exc:  # pragma: no cover - keys are checked above
        raise IosimError(f"{source}: {exc}") from None


def load_mapping_file(path, cascade, hardware=None, **overrides):
    """The Mapping of the loop tree in TOML file ``path`` for ``cascade``."""
    p = Path(path)
    if not p.is_file():
        raise IosimError(f"mapping file '{path}' not found")
    try:
        d = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise IosimError(f"mapping file '{path}': {exc}") from None
    return mapping_from_dict(d, cascade, hardware, source=str(path), **overrides)


def with_fields(text: str, fields: dict) -> str:
    """The TOML ``text`` of a tree with its top-level ``fields`` (tiles, warps, stages) set:
    an existing ``key = value`` line before the first table keeps its comment, a missing
    key goes after the last top-level key. The rest of the file is left as written."""
    import re
    lines = text.splitlines()
    first = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("[")), len(lines))
    last_key = -1
    for k, v in fields.items():
        pat = re.compile(rf"^\s*{re.escape(k)}\s*=\s*[^#]*?(\s*#.*)?$")
        hit = next((i for i in range(first) if pat.match(lines[i])), None)
        if hit is not None:
            lines[hit] = f"{k} = {v}" + (pat.match(lines[hit]).group(1) or "")
            continue
        for i in range(first):
            if re.match(r"^\s*[A-Za-z_][\w-]*\s*=", lines[i]):
                last_key = i
        at = last_key + 1 if last_key >= 0 else 0
        lines.insert(at, f"{k} = {v}")
        first += 1
    return "\n".join(lines) + "\n"


def write_best(source, out, fields: dict, cascade, hardware=None):
    """Write the tree file ``source`` to ``out`` with the search's best ``fields`` set
    (:func:`with_fields`), and read it back: the Mapping it gives carries those fields."""
    text = with_fields(Path(source).read_text(), fields)
    Path(out).write_text(text)
    m = load_mapping_file(out, cascade, hardware)
    wrong = {k: getattr(m, k) for k, v in fields.items() if getattr(m, k) != v}
    if wrong:  # pragma: no cover - a file the editor could not place the fields in
        raise IosimError(f"{out}: the written tree sets {wrong}, not {fields}")
    return m


def check_tiles(mapping, shapes) -> None:
    """Refuse a tile larger than its rank's extent (one line)."""
    ext = {"block_q": shapes.n * (shapes.group if mapping.packs_rows else 1),
           "block_kv": shapes.kv_len, "block_e": shapes.e, "block_f": shapes.f}
    for k, n in ext.items():
        v = getattr(mapping, k)
        if v is not None and v > n:
            raise IosimError(f"mapping '{mapping.name}': tile {k} = {v} exceeds the extent "
                             f"{n} of its rank")


def mapping_option(cascade, name, hardware=None, **overrides):
    """The mapping a command's ``--mapping`` names: a preset (see
    :func:`iosim.mapping.mapping_for`; ``None``: the cascade's default) or a loop tree file
    (``.toml``)."""
    from iosim.mapping import mapping_for
    if name is not None and str(name).endswith(".toml"):
        return load_mapping_file(name, cascade, hardware, **overrides)
    return mapping_for(cascade, name, **overrides)


def show_mapping(mapping, cascade, shapes, hardware, *, sram_bytes=None) -> str:
    """The mapping's loop tree (tiles with their values) and the loop nest it lowers to, as
    text (``iosim evaluate --show-mapping``)."""
    from iosim.looptree.tree import format_tree
    from iosim.mapping import format_loop_nest, mapping_tree
    from iosim.traffic import evaluate_arrays, scalar_sizes
    r = evaluate_arrays(cascade, mapping, hardware, n=shapes.n, e=shapes.e, f=shapes.f,
                        kv_len=shapes.kv_len, batch=shapes.batch, heads=shapes.heads,
                        kv_heads=shapes.kv_heads, dtype=shapes.dtype, causal=shapes.causal,
                        causal_offset=shapes.causal_offset, block_density=shapes.block_density,
                        sram_bytes=sram_bytes, l2="off")
    sizes = scalar_sizes(r)
    m = r["mapping"]
    tree = mapping_tree(m, r["cascade"], grouped=shapes.group > 1)
    head = (f"mapping {m.name} ({m.preset.summary}) on cascade {r['cascade'].name}"
            if m.tree is None else f"mapping {m.name} (a user's loop tree) on cascade "
                                   f"{r['cascade'].name}")
    return "\n".join([head, "", "Loop tree", *("  " + ln for ln in
                                                format_tree(tree, sizes).splitlines()),
                      "", "Loop nest (lowered; trip counts at these sizes)",
                      *("  " + ln for ln in format_loop_nest(r["nest"], sizes).splitlines())])
