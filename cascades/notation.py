"""The cascade text notation: parser (lark, LALR) and printer.

The grammar is documented in ``docs/notation.md``; :data:`GRAMMAR` is its single source.
``parse(format_cascade(c)) == c`` for every cascade ``c``.
"""
from __future__ import annotations

import math

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from cascades.errors import CascadeError, CascadeSyntaxError
from cascades.ir import (MAX_DEPTH, Access, Binary, Bool, Call, Cascade, Einsum, Expr, IConst,
                         IFixed, IInit, Index, Iteration, IShift, ISplit, IVar, Name, Num, Param,
                         Partition, Reduction, Str, TensorDecl, Unary)

GRAMMAR = r"""
start: _NL* (statement _NL+)* statement?

?statement: header | param | decl | partition | iterate | einsum

header: "cascade" CASCADE_NAME STRING?
param: "param" NAME "=" expr
decl: ROLE NAME "[" rank_list? "]" (":" NAME)?
partition: "partition" NAME "->" NAME "," NAME "by" expr
iterate: "iterate" NAME "until" NAME ">=" expr
einsum: access "=" reduction? expr

rank_list: NAME ("," NAME)*
reduction: REDUCE_OP "[" NAME ("," NAME)* "]"
access: NAME "[" [index ("," index)*] "]"
?index: NAME                    -> ix_name
      | NAME "+" INT            -> ix_shift
      | NAME "=" INT            -> ix_init
      | NAME "*" NAME "+" NAME  -> ix_split
      | INT                     -> ix_const

?expr: or_expr
?or_expr: and_expr ("or" and_expr)*      -> or_chain
?and_expr: not_expr ("and" not_expr)*    -> and_chain
?not_expr: "not" not_expr                -> not_
         | comparison
?comparison: sum (COMPARE sum)?          -> compare
?sum: product (ADD_OP product)*          -> arith
?product: unary (MUL_OP unary)*          -> arith
?unary: "-" unary                        -> neg
      | power
?power: atom ("**" unary)?               -> pow_
?atom: NUMBER                            -> number
     | "inf"                             -> inf
     | "true"                            -> true
     | "false"                           -> false
     | STRING                            -> string
     | access
     | NAME "(" [expr ("," expr)*] ")"   -> call
     | NAME                              -> name
     | "(" expr ")"

ROLE.2: "input" | "output" | "tensor"
REDUCE_OP.2: /(sum|max|min)(?=[ \t]*\[)/
COMPARE: "<=" | ">=" | "==" | "!=" | "<" | ">"
ADD_OP: "+" | "-"
MUL_OP: "*" | "/"
CASCADE_NAME: /[A-Za-z][A-Za-z0-9_.\-]*/
NAME: /[A-Za-z_][A-Za-z0-9_]*/
INT: /[0-9]+/
NUMBER: /[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?/ | /\.[0-9]+([eE][-+]?[0-9]+)?/
STRING: /"[^"\n]*"/
COMMENT: /#[^\n]*/
_NL: /\r?\n/
%ignore /[ \t]+/
%ignore /\\\r?\n/
%ignore COMMENT
"""

_KEYWORDS = {"cascade", "param", "input", "output", "tensor", "partition", "iterate", "until",
             "by", "sum", "max", "min", "inf", "true", "false", "and", "or", "not"}

_PARSER = Lark(GRAMMAR, parser="lalr", propagate_positions=True, maybe_placeholders=False)

_TOKEN_WORDS = {
    "NAME": "a name", "INT": "an integer", "NUMBER": "a number", "STRING": "a quoted string",
    "_NL": "end of line", "LSQB": "'['", "RSQB": "']'", "LPAR": "'('", "RPAR": "')'",
    "COMMA": "','", "EQUAL": "'='", "PLUS": "'+'", "MINUS": "'-'", "STAR": "'*'",
    "COLON": "':'", "ROLE": "input/output/tensor", "REDUCE_OP": "sum/max/min",
    "COMPARE": "a comparison", "ADD_OP": "'+' or '-'", "MUL_OP": "'*' or '/'",
    "CASCADE_NAME": "a cascade name", "MORETHAN": "'>'", "__ANON_0": "'->'",
}


def _describe_expected(expected) -> str:
    words = []
    for tok in sorted(expected):
        w = _TOKEN_WORDS.get(tok)
        if w is None:
            term = _PARSER.get_terminal(tok) if tok in {t.name for t in _PARSER.terminals} else None
            if term is not None and term.pattern.type == "str":
                w = f"'{term.pattern.value}'"
            else:
                w = tok.lower()
        if w not in words:
            words.append(w)
    if len(words) > 8:
        words = words[:8] + ["..."]
    return ", ".join(words)


def _leaf(value):
    return value, 1


def _chain(op_of, items, depths):
    """Left-deep chain: ``items`` are operands (and, with ``op_of`` None, operators)."""
    out, d = items[0], depths[0]
    if op_of is None:   # operands and operator tokens alternate
        for op, rhs, drhs in zip(items[1::2], items[2::2], depths[2::2]):
            out, d = Binary(str(op), out, rhs), max(d, drhs) + 1
    else:
        for rhs, drhs in zip(items[1:], depths[1:]):
            out, d = Binary(op_of, out, rhs), max(d, drhs) + 1
    return out, d


def _b_header(meta, items, depths):
    desc = items[1][1:-1] if len(items) > 1 else ""
    return ("header", str(items[0]), desc, meta.line), 0


def _b_decl(meta, items, depths):
    role, name = str(items[0]), str(items[1])
    ranks: tuple = ()
    dtype = None
    for it in items[2:]:
        if isinstance(it, tuple):
            ranks = it
        else:
            dtype = str(it)
    return ("decl", TensorDecl(name, ranks, role, dtype, line=meta.line)), 0


def _b_iterate(meta, items, depths):
    rank, var, stop = str(items[0]), str(items[1]), items[2]
    if var != rank.lower():
        raise CascadeSyntaxError(f"'iterate {rank} until {var} >= ...': the stopping "
                                 f"condition must test the rank's index '{rank.lower()}'",
                                 line=meta.line, column=meta.column)
    return ("iterate", Iteration(rank, stop, line=meta.line)), 0


def _b_einsum(meta, items, depths):
    red = items[1] if len(items) == 3 else None
    return ("einsum", Einsum(items[0], items[-1], red, line=meta.line)), 0


def _b_number(meta, items, depths):
    v = float(items[0])
    if math.isinf(v):
        raise CascadeSyntaxError(f"number {items[0]} is too large for a float (write inf "
                                 f"for infinity)", line=meta.line, column=meta.column)
    return Num(v), 1


def _b_neg(meta, items, depths):
    x = items[0]
    if isinstance(x, Num):
        return Num(-x.value), 1
    return Unary("-", x), depths[0] + 1


def _b_binary_opt(meta, items, depths):
    """``a ** b`` / ``a < b``, or the single operand passed through."""
    if len(items) == 1:
        return items[0], depths[0]
    op = "**" if len(items) == 2 else str(items[1])
    left, right = items[0], items[-1]
    return Binary(op, left, right), max(depths[0], depths[-1]) + 1


def _b_call(meta, items, depths):
    args = tuple(i for i in items[1:] if i is not None)
    return Call(str(items[0]), args), max(depths[1:], default=0) + 1


_HANDLERS = {
    "start": lambda m, items, ds: ([i for i in items if not isinstance(i, Token)], 0),
    "header": _b_header,
    "param": lambda m, items, ds: (("param", Param(str(items[0]), items[1], line=m.line)), 0),
    "decl": _b_decl,
    "rank_list": lambda m, items, ds: (tuple(str(i) for i in items), 0),
    "partition": lambda m, items, ds: (("partition", Partition(
        str(items[0]), str(items[1]), str(items[2]), items[3], line=m.line)), 0),
    "iterate": _b_iterate,
    "einsum": _b_einsum,
    "reduction": lambda m, items, ds: (Reduction(str(items[0]),
                                                 tuple(str(i) for i in items[1:])), 0),
    "access": lambda m, items, ds: (Access(str(items[0]), tuple(i for i in items[1:]
                                                                if i is not None)), 1),
    "ix_name": lambda m, items, ds: ((IFixed(str(items[0])) if str(items[0])[:1].isupper()
                                      else IVar(str(items[0]))), 0),
    "ix_shift": lambda m, items, ds: (IShift(str(items[0]), int(items[1])), 0),
    "ix_init": lambda m, items, ds: (IInit(str(items[0]), int(items[1])), 0),
    "ix_split": lambda m, items, ds: (ISplit(str(items[0]), str(items[1]), str(items[2])), 0),
    "ix_const": lambda m, items, ds: (IConst(int(items[0])), 0),
    "number": _b_number,
    "inf": lambda m, items, ds: _leaf(Num(math.inf)),
    "true": lambda m, items, ds: _leaf(Bool(True)),
    "false": lambda m, items, ds: _leaf(Bool(False)),
    "string": lambda m, items, ds: _leaf(Str(str(items[0])[1:-1])),
    "name": lambda m, items, ds: _leaf(Name(str(items[0]))),
    "call": _b_call,
    "neg": _b_neg,
    "not_": lambda m, items, ds: (Unary("not", items[0]), ds[0] + 1),
    "pow_": _b_binary_opt,
    "compare": _b_binary_opt,
    "arith": lambda m, items, ds: _chain(None, items, ds),
    "or_chain": lambda m, items, ds: _chain("or", items, ds),
    "and_chain": lambda m, items, ds: _chain("and", items, ds),
}

#: statements whose expression is checked against :data:`MAX_DEPTH`
_EXPR_STATEMENTS = {"param": "parameter default", "partition": "block size",
                    "iterate": "stopping condition", "einsum": "expression"}


def _build(tree: Tree) -> list:
    """Parse tree -> statements (tagged tuples of IR objects), without recursion.

    Lark's own transformers recurse once per tree level (several levels per parenthesis), so
    deep input would overflow Python's stack; this walks the tree with an explicit stack and
    tracks every expression's depth, refusing one deeper than :data:`MAX_DEPTH`.
    """
    values: list = []   # (value, depth) of finished nodes, in order
    stack: list = [(tree, False)]
    while stack:
        node, ready = stack.pop()
        if not isinstance(node, Tree):
            values.append((node, 0))
            continue
        if not ready:
            stack.append((node, True))
            stack.extend((ch, False) for ch in reversed(node.children))
            continue
        n = len(node.children)
        done = values[len(values) - n:] if n else []
        if n:
            del values[len(values) - n:]
        items = [v for v, _ in done]
        depths = [d for _, d in done]
        rule = str(node.data)
        value, depth = _HANDLERS[rule](node.meta, items, depths)
        if rule in _EXPR_STATEMENTS:
            deepest = max(depths, default=0)
            if deepest > MAX_DEPTH:
                raise CascadeSyntaxError(
                    f"{_EXPR_STATEMENTS[rule]} nested {deepest} levels deep; at most "
                    f"{MAX_DEPTH} (operators and calls inside each other; a chain a + b + ... "
                    f"counts one level per term): split it into several Einsums",
                    line=node.meta.line, column=node.meta.column)
        values.append((value, depth))
    return values[0][0]


def parse(text: str, source: str | None = None) -> Cascade:
    """Parse cascade notation into a validated :class:`Cascade`.

    Raises :class:`CascadeSyntaxError` (with line and column) for text that is not in the
    notation and :class:`CascadeValidationError` for a cascade that is not valid.
    """
    if not isinstance(text, str):
        raise CascadeSyntaxError(f"expected cascade text, got {type(text).__name__}",
                                 source=source)
    if text.startswith("\ufeff"):  # a UTF-8 byte-order mark some editors write
        text = text[1:]
    try:
        tree = _PARSER.parse(text if text.endswith("\n") else text + "\n")
    except UnexpectedInput as exc:
        raise _syntax_error(exc, text, source) from None
    try:
        stmts = _build(tree)
    except CascadeError as exc:
        raise (exc.with_source(source) if source else exc) from None
    if not stmts:
        raise CascadeSyntaxError("no statements (the text is empty or only comments); a "
                                 "cascade declares its tensors and computes an output",
                                 source=source)
    name, desc = "cascade", ""
    params, decls, parts, iters, einsums = [], [], [], [], []
    for st in stmts:
        kind = st[0]
        if kind == "header":
            name, desc = st[1], st[2]
        elif kind == "param":
            params.append(st[1])
        elif kind == "decl":
            decls.append(st[1])
        elif kind == "partition":
            parts.append(st[1])
        elif kind == "iterate":
            iters.append(st[1])
        else:
            einsums.append(st[1])
    try:
        return Cascade(name=name, params=tuple(params), tensors=tuple(decls),
                       partitions=tuple(parts), iterations=tuple(iters), einsums=tuple(einsums),
                       description=desc)
    except CascadeError as exc:
        raise (exc.with_source(source) if source else exc) from None


def _syntax_error(exc: UnexpectedInput, text: str, source: str | None) -> CascadeSyntaxError:
    line, col = exc.line, exc.column
    if isinstance(exc, UnexpectedToken):
        tok = exc.token
        if tok.type == "$END":
            got = "end of input"
        elif tok.type == "_NL":
            got = "end of line"
        else:
            got = repr(str(tok))
        if tok.type == "_NL" or tok.type == "$END":
            # report the end of the offending line, not the start of the next one
            lines = [ln[:-1] if ln.endswith("\r") else ln for ln in text.split("\n")]
            if tok.type == "_NL" and 0 < tok.line <= len(lines):
                line, col = tok.line, len(lines[tok.line - 1]) + 1
        msg = f"unexpected {got}; expected {_describe_expected(exc.expected)}"
        if str(tok) in _KEYWORDS and "NAME" in exc.expected:
            msg += f" ('{tok}' is a reserved word)"
    elif isinstance(exc, UnexpectedCharacters):
        ch = getattr(exc, "char", None)
        if not ch:  # pragma: no cover - lark always sets it
            lines = text.split("\n")
            ok = 0 < (exc.line or 0) <= len(lines)
            ch = lines[exc.line - 1][exc.column - 1:exc.column] if ok else "?"
        allowed = _describe_expected(exc.allowed) if exc.allowed else "a statement"
        msg = f"unexpected character {ch!r}; expected {allowed}"
    elif isinstance(exc, UnexpectedEOF):
        msg = f"unexpected end of input; expected {_describe_expected(exc.expected)}"
    else:  # pragma: no cover - lark has no other subclasses today
        msg = str(exc).splitlines()[0]
    return CascadeSyntaxError(msg, source=source, line=line, column=col)


# ------------------------------------------------------------------------ printer
_PREC = {"or": 1, "and": 2, "not": 3, "<": 4, "<=": 4, ">": 4, ">=": 4, "==": 4, "!=": 4,
         "+": 5, "-": 5, "*": 6, "/": 6, "neg": 7, "**": 8}


def format_index(ix: Index) -> str:
    if isinstance(ix, IVar):
        return ix.var
    if isinstance(ix, IShift):
        return f"{ix.var}+{ix.offset}"
    if isinstance(ix, IInit):
        return f"{ix.var}={ix.value}"
    if isinstance(ix, IFixed):
        return ix.rank
    if isinstance(ix, IConst):
        return str(ix.value)
    if isinstance(ix, ISplit):
        return f"{ix.outer}*{ix.inner_rank}+{ix.inner}"
    raise TypeError(ix)


def format_access(a: Access) -> str:
    return f"{a.tensor}[{', '.join(format_index(i) for i in a.indices)}]"


def _num(v: float) -> str:
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if float(v).is_integer() and abs(v) < 1e16:
        return str(int(v))
    return repr(float(v))


def format_expr(e: Expr, parent: int = 0) -> str:
    if isinstance(e, Num):
        s = _num(e.value)
        return f"({s})" if s.startswith("-") and parent >= _PREC["neg"] else s
    if isinstance(e, Bool):
        return "true" if e.value else "false"
    if isinstance(e, Str):
        return f'"{e.value}"'
    if isinstance(e, Name):
        return e.name
    if isinstance(e, Access):
        return format_access(e)
    if isinstance(e, Call):
        return f"{e.func}({', '.join(format_expr(a) for a in e.args)})"
    if isinstance(e, Unary):
        if e.op == "not":
            s = f"not {format_expr(e.operand, _PREC['not'])}"
            p = _PREC["not"]
        else:
            s = f"-{format_expr(e.operand, _PREC['neg'])}"
            p = _PREC["neg"]
        return f"({s})" if p < parent else s
    if isinstance(e, Binary):
        p = _PREC[e.op]
        if e.op == "**":  # right-associative, operand of ** binds as unary
            s = f"{format_expr(e.left, p + 1)} ** {format_expr(e.right, _PREC['neg'])}"
        elif p == 4:  # comparisons do not chain
            s = f"{format_expr(e.left, p + 1)} {e.op} {format_expr(e.right, p + 1)}"
        else:  # left-associative
            s = f"{format_expr(e.left, p)} {e.op} {format_expr(e.right, p + 1)}"
        return f"({s})" if p < parent else s
    raise TypeError(e)


def format_einsum(e: Einsum) -> str:
    red = f"{e.reduction.op}[{', '.join(e.reduction.vars)}] " if e.reduction else ""
    return f"{format_access(e.lhs)} = {red}{format_expr(e.expr)}"


def format_cascade(c: Cascade) -> str:
    """Print a cascade in canonical notation (parsing it back gives an equal cascade)."""
    out = [f'cascade {c.name}' + (f' "{c.description}"' if c.description else ""), ""]
    for p in c.params:
        out.append(f"param {p.name} = {format_expr(p.default)}")
    if c.params:
        out.append("")
    for t in c.tensors:
        dt = f" : {t.dtype}" if t.dtype else ""
        out.append(f"{t.role} {t.name}[{', '.join(t.ranks)}]{dt}")
    for p in c.partitions:
        out.append(f"partition {p.rank} -> {p.outer}, {p.inner} by {format_expr(p.block)}")
    for it in c.iterations:
        out.append(f"iterate {it.rank} until {it.rank.lower()} >= {format_expr(it.stop)}")
    out.append("")
    width = max((len(format_access(e.lhs)) for e in c.einsums), default=0)
    for e in c.einsums:
        lhs = format_access(e.lhs)
        red = f"{e.reduction.op}[{', '.join(e.reduction.vars)}] " if e.reduction else ""
        out.append(f"{lhs.ljust(width)} = {red}{format_expr(e.expr)}")
    return "\n".join(out) + "\n"
