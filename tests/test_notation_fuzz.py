"""Fuzzing the cascade parser: any text either parses into a Cascade or raises CascadeError.

Random token soups, deep nests of parentheses, unary operators, calls and long operator
chains must never escape as RecursionError (or any other exception), however deep. (The
sizes stay at a few hundred levels, several times the limit, to keep this file fast: the
parser is linear in the input, and 3000 levels are checked once below.)
"""
from __future__ import annotations

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import cascades  # noqa: E402
from cascades import CascadeError  # noqa: E402
from cascades.ir import MAX_DEPTH, Cascade, depth  # noqa: E402

HEADER = "cascade fuzz\nparam s = 2\ninput A[P]\ninput B[P]\noutput O[P]\n"

TOKENS = ["cascade", "param", "input", "output", "tensor", "partition", "iterate", "until",
          "by", "sum", "max", "min", "exp", "where", "inf", "true", "false", "and", "or",
          "not", "A", "B", "O", "P", "p", "s", "x", "M", "m1", "0", "1", "2.5", "1e400",
          '"s"', "(", ")", "[", "]", ",", "=", "+", "-", "*", "/", "**", "<", "<=", ">=",
          "==", "!=", "->", ":", "#", "\\\n", "\n", "\r\n", " ", "\t", "\ufeff", "\x00",
          "\u2028", "\x0c", "é"]

SETTINGS = dict(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _check(text: str) -> None:
    try:
        c = cascades.parse(text)
    except CascadeError as exc:
        msg = str(exc)
        assert msg and "\n" not in msg, repr(msg)
        return
    assert isinstance(c, Cascade)
    for e in c.einsums:
        assert depth(e.expr) <= MAX_DEPTH
    # whatever parses prints and parses back to the same cascade
    assert cascades.parse(c.to_text()) == c


@settings(**SETTINGS)
@given(st.lists(st.sampled_from(TOKENS), max_size=60))
def test_token_soup(tokens):
    _check(" ".join(tokens))


@settings(**SETTINGS)
@given(st.lists(st.sampled_from(TOKENS), max_size=40))
def test_token_soup_in_an_einsum(tokens):
    _check(HEADER + "O[p] = " + " ".join(tokens) + "\n")


@settings(**SETTINGS)
@given(st.text(max_size=200))
def test_arbitrary_text(text):
    _check(text)


_WRAPS = {
    "paren": ("(", ")"),
    "neg": ("-", ""),
    "not": ("not ", ""),
    "exp": ("exp(", ")"),
    "max": ("max(A[p], ", ")"),
    "where": ("where(s > 1, ", ", 0)"),
    "pow": ("s ** ", ""),
    "add": ("A[p] + (", ")"),
}


@settings(**{**SETTINGS, "max_examples": 25})
@given(st.lists(st.tuples(st.sampled_from(sorted(_WRAPS)), st.integers(1, 250)),
                min_size=1, max_size=3),
       st.sampled_from(["A[p]", "s", "1", "B[p] * 2"]))
def test_deep_nests(layers, core):
    expr = core
    for kind, n in layers:
        pre, post = _WRAPS[kind]
        expr = pre * n + expr + post * n
    _check(HEADER + "O[p] = " + expr + "\n")
    _check(HEADER.replace("param s = 2", "param s = " + expr.replace("A[p]", "1")
                          .replace("B[p]", "2")) + "O[p] = A[p]\n")


@settings(**SETTINGS)
@given(st.sampled_from(["+", "-", "*", "/", "and", "or", "<"]), st.integers(1, 400))
def test_long_chains(op, n):
    _check(HEADER + "O[p] = " + f" {op} ".join(["A[p]"] * n) + "\n")


@pytest.mark.parametrize("n", [MAX_DEPTH, MAX_DEPTH + 1, 3000])
def test_depth_limit_is_exact(n):
    """A sum of n terms is n levels deep: MAX_DEPTH parses, one more is refused."""
    text = HEADER + "O[p] = " + " + ".join(["A[p]"] * n) + "\n"
    if n <= MAX_DEPTH:
        assert depth(cascades.parse(text).einsums[0].expr) == n
    else:
        with pytest.raises(CascadeError, match=rf"line 6.*nested {n} levels deep; at most "
                                               rf"{MAX_DEPTH}"):
            cascades.parse(text)
