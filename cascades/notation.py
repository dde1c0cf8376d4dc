"""The cascade text notation: parser (lark, LALR) and printer.

The grammar is documented in ``docs/notation.md``; :data:`GRAMMAR` is its single source.
``parse(format_cascade(c)) == c`` for every cascade ``c``.
"""
from __future__ import annotations

import math

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from cascades.errors import CascadeError, CascadeSyntaxError
from cascades.ir import (Access, Binary, Bool, Call, Cascade, Einsum, Expr, IConst, IFixed, IInit,
                         Index, Iteration, IShift, ISplit, IVar, Name, Num, Param, Partition,
                         Reduction, Str, TensorDecl, Unary)

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


class _Build(Transformer):
    """Parse tree -> IR objects (statements as tagged tuples)."""

    # ---------------------------------------------------------------- statements
    def start(self, items):
        return [i for i in items if not isinstance(i, Token)]

    @v_args(meta=True)
    def header(self, meta, items):
        desc = items[1][1:-1] if len(items) > 1 else ""
        return ("header", str(items[0]), desc, meta.line)

    @v_args(meta=True)
    def param(self, meta, items):
        return ("param", Param(str(items[0]), items[1], line=meta.line))

    @v_args(meta=True)
    def decl(self, meta, items):
        role, name = str(items[0]), str(items[1])
        ranks: tuple = ()
        dtype = None
        for it in items[2:]:
            if isinstance(it, tuple):
                ranks = it
            else:
                dtype = str(it)
        return ("decl", TensorDecl(name, ranks, role, dtype, line=meta.line))

    def rank_list(self, items):
        return tuple(str(i) for i in items)

    @v_args(meta=True)
    def partition(self, meta, items):
        return ("partition", Partition(str(items[0]), str(items[1]), str(items[2]), items[3],
                                       line=meta.line))

    @v_args(meta=True)
    def iterate(self, meta, items):
        rank, var, stop = str(items[0]), str(items[1]), items[2]
        if var != rank.lower():
            raise CascadeSyntaxError(f"'iterate {rank} until {var} >= ...': the stopping "
                                     f"condition must test the rank's index '{rank.lower()}'",
                                     line=meta.line, column=meta.column)
        return ("iterate", Iteration(rank, stop, line=meta.line))

    @v_args(meta=True)
    def einsum(self, meta, items):
        lhs = items[0]
        red = items[1] if len(items) == 3 else None
        expr = items[-1]
        return ("einsum", Einsum(lhs, expr, red, line=meta.line))

    def reduction(self, items):
        return Reduction(str(items[0]), tuple(str(i) for i in items[1:]))

    # ------------------------------------------------------------------ indices
    def access(self, items):
        return Access(str(items[0]), tuple(i for i in items[1:] if i is not None))

    def ix_name(self, items):
        n = str(items[0])
        return IFixed(n) if n[:1].isupper() else IVar(n)

    def ix_shift(self, items):
        return IShift(str(items[0]), int(items[1]))

    def ix_init(self, items):
        return IInit(str(items[0]), int(items[1]))

    def ix_split(self, items):
        return ISplit(str(items[0]), str(items[1]), str(items[2]))

    def ix_const(self, items):
        return IConst(int(items[0]))

    # -------------------------------------------------------------- expressions
    def number(self, items):
        return Num(float(items[0]))

    def inf(self, _):
        return Num(math.inf)

    def true(self, _):
        return Bool(True)

    def false(self, _):
        return Bool(False)

    def string(self, items):
        return Str(str(items[0])[1:-1])

    def name(self, items):
        return Name(str(items[0]))

    def call(self, items):
        return Call(str(items[0]), tuple(i for i in items[1:] if i is not None))

    def neg(self, items):
        x = items[0]
        if isinstance(x, Num):
            return Num(-x.value)
        return Unary("-", x)

    def not_(self, items):
        return Unary("not", items[0])

    def pow_(self, items):
        return items[0] if len(items) == 1 else Binary("**", items[0], items[1])

    def arith(self, items):
        out = items[0]
        for op, rhs in zip(items[1::2], items[2::2]):
            out = Binary(str(op), out, rhs)
        return out

    def compare(self, items):
        return items[0] if len(items) == 1 else Binary(str(items[1]), items[0], items[2])

    def or_chain(self, items):
        out = items[0]
        for rhs in items[1:]:
            out = Binary("or", out, rhs)
        return out

    def and_chain(self, items):
        out = items[0]
        for rhs in items[1:]:
            out = Binary("and", out, rhs)
        return out


def parse(text: str, source: str | None = None) -> Cascade:
    """Parse cascade notation into a validated :class:`Cascade`.

    Raises :class:`CascadeSyntaxError` (with line and column) for text that is not in the
    notation and :class:`CascadeValidationError` for a cascade that is not valid.
    """
    try:
        tree = _PARSER.parse(text if text.endswith("\n") else text + "\n")
    except UnexpectedInput as exc:
        raise _syntax_error(exc, text, source) from None
    try:
        stmts = _Build().transform(tree)
    except VisitError as exc:
        inner = exc.orig_exc
        if isinstance(inner, CascadeError):
            raise (inner.with_source(source) if source else inner) from None
        raise
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
            lines = text.splitlines()
            if tok.type == "_NL" and 0 < tok.line <= len(lines):
                line, col = tok.line, len(lines[tok.line - 1]) + 1
        msg = f"unexpected {got}; expected {_describe_expected(exc.expected)}"
        if str(tok) in _KEYWORDS and "NAME" in exc.expected:
            msg += f" ('{tok}' is a reserved word)"
    elif isinstance(exc, UnexpectedCharacters):
        ch = text.splitlines()[exc.line - 1][exc.column - 1:exc.column] if exc.line else "?"
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
