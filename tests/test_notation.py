"""The notation: round trips, and one-line errors for malformed or invalid cascades."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

import cascades
from cascades.errors import CascadeSyntaxError, CascadeValidationError
from iosim.cli import main

HEADER = """cascade t
input  Q[P, E]
input  K[M, E]
input  V[M, F]
output O[P, F]
"""


@pytest.mark.parametrize("name", cascades.library.names())
def test_print_then_parse_gives_the_same_cascade(name):
    c = cascades.load(name)
    text = c.to_text()
    again = cascades.parse(text)
    assert again == c
    assert again.to_text() == text


def test_comments_blank_lines_and_continuations_are_ignored():
    text = ("# a comment\n\n" + HEADER + "\n# scores\nS[m, p] = sum[e] Q[p, e] * \\\n"
            "    K[m, e]   # trailing comment\nO[p, f] = sum[m] S[m, p] * V[m, f]\n")
    c = cascades.parse(text)
    assert [e.tensor for e in c.einsums] == ["S", "O"]


def test_long_rank_names_and_parameters_with_defaults():
    c = cascades.parse("""cascade long-names
param temperature = 2 * sqrt(Embed)
input  Query[Seq, Embed]
input  Key[Ctx, Embed]
output Score[Seq, Ctx]
Score[seq, ctx] = sum[embed] Query[seq, embed] * Key[ctx, embed] / temperature
""")
    assert c.info.tensor_ranks["Score"] == ("Seq", "Ctx")
    assert c.param("temperature").default is not None


# (text, kind, fragments the one-line message must contain)
BAD = [
    # --- syntax: line and column, and what was expected
    (HEADER + "O[p, f] = sum[m] S[m, p] * V[m, f\n", "syntax", ["6:", "expected"]),
    (HEADER + "O[p f] = V[p, f]\n", "syntax", ["6:5", "unexpected"]),
    (HEADER + "O[p, f] = = V[p, f]\n", "syntax", ["6:11", "unexpected '='"]),
    (HEADER + "O[p, f] = V[p, f] $\n", "syntax", ["6:19", "unexpected character '$'"]),
    ("cascade t\ninput Q[P, E\n", "syntax", ["2:", "expected"]),
    (HEADER + "param = 3\n", "syntax", ["6:7", "unexpected '='"]),
    (HEADER + "O[p, f] = exp(V[p, f]\n", "syntax", ["6:", "expected"]),
    # --- semantics: the Einsum and the tensor
    (HEADER + "O[p, f] = sum[m] S[m, p] * V[m, f]\n", "semantic",
     ["Einsum O[p, f]", "tensor 'S' is not defined"]),
    (HEADER + "S[m, p] = sum[e] Q[p, e] * K[p, e]\nO[p, f] = sum[m] S[m, p] * V[m, f]\n",
     "semantic", ["Einsum S[m, p]", "index 'p' (rank P) is used for rank M of tensor 'K'"]),
    (HEADER + "S[m, p] = sum[e] Q[p, e] * K[m]\nO[p, f] = sum[m] S[m, p] * V[m, f]\n",
     "semantic", ["Einsum S[m, p]", "tensor 'K' has 2 ranks"]),
    (HEADER + "S[m, p, f] = sum[e] Q[p, e] * K[m, e]\nO[p, f] = sum[m] S[m, p, f]\n",
     "semantic", ["Einsum S[m, p, f]", "output rank F", "does not follow from its inputs"]),
    (HEADER + "A[p, e] = B[p, e] + Q[p, e]\nB[p, e] = A[p, e]\nS[m, p] = sum[e] A[p, e] * "
     "K[m, e]\nO[p, f] = sum[m] S[m, p] * V[m, f]\n",
     "semantic", ["cycle that is not an iterative recurrence"]),
    (HEADER + "partition M -> M1, M0 by 16\niterate M1 until m1 >= M1\n"
     "R[m1+1, p] = R[m1, p] + 1\nO[p, f] = sum[m1] R[m1, p] * V[m1*M0+m0, f]\n",
     "semantic", ["iterative tensor 'R'", "no initialisation"]),
    (HEADER + "S[m, p] = sum[e] Q[p, e] * K[m, e]\nO[p, f] = sum[m] S[m, p] * V[m, f]\n"
     "O[p, f] = sum[m] V[m, f]\n", "semantic", ["tensor 'O' is defined by 2 Einsums"]),
    (HEADER + "S[m, p] = Q[p, e] * K[m, e]\nO[p, f] = sum[m] S[m, p] * V[m, f]\n",
     "semantic", ["Einsum S[m, p]", "index 'e'", "neither on the left nor reduced"]),
    (HEADER + "S[m, p] = sum[e] foo(Q[p, e] * K[m, e])\nO[p, f] = sum[m] S[m, p] * V[m, f]\n",
     "semantic", ["Einsum S[m, p]", "unknown function 'foo'"]),
    (HEADER + "S[m, p] = sum[e] Q[p, e] * K[m, e] * temperature\n"
     "O[p, f] = sum[m] S[m, p] * V[m, f]\n", "semantic",
     ["Einsum S[m, p]", "unknown name 'temperature'"]),
    (HEADER + "Q[p, e] = K[p, e]\nO[p, f] = V[p, f]\n", "semantic",
     ["writes to input tensor 'Q'"]),
    (HEADER.replace("output O[P, F]\n", "") + "S[m, p] = sum[e] Q[p, e] * K[m, e]\n", "semantic",
     ["declares no output"]),
    (HEADER + "R[m=0, p] = 0\nO[p, f] = V[p, f]\n", "semantic",
     ["initialised at 'm=0'", "not iterative"]),
    (HEADER.replace("input  V[M, F]", "input  V[M, F] : fp12") + "O[p, f] = sum[m] V[m, f]\n",
     "semantic", ["unknown dtype 'fp12'"]),
]


@pytest.mark.parametrize("text,kind,fragments", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_cascades_give_one_line_errors(tmp_path, text, kind, fragments):
    expected = CascadeSyntaxError if kind == "syntax" else CascadeValidationError
    with pytest.raises(expected) as info:
        cascades.parse(text)
    msg = str(info.value)
    assert "\n" not in msg
    for frag in fragments:
        assert frag in msg, (frag, msg)
    # the same through the CLI: exit code 2, the file name, one line, no traceback
    path = tmp_path / "bad.casc"
    path.write_text(text)
    res = CliRunner().invoke(main, ["cascades", "check", str(path)])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0]
    assert "Traceback" not in res.output


def test_at_least_ten_distinct_bad_inputs():
    assert len({b[0] for b in BAD}) >= 10


def test_check_accepts_every_library_file_and_a_missing_file_is_an_error(tmp_path):
    r = CliRunner().invoke(main, ["cascades", "check", str(tmp_path / "nope.casc")])
    assert r.exit_code == 2 and "does not exist" in r.output
    for name in cascades.library.names():
        text = cascades.library.text(name)
        p = tmp_path / f"{name}.casc"
        p.write_text(text)
        r = CliRunner().invoke(main, ["cascades", "check", str(p)])
        assert r.exit_code == 0, r.output


def test_unknown_library_name_suggests_the_closest():
    with pytest.raises(cascades.CascadeError, match="did you mean 'attention-1pass'"):
        cascades.load("attention-1pas")


# ---------------------------------------------------------------- property: printer/parser
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from cascades.ir import Access, Binary, Bool, Call, IVar, Name, Num, Unary  # noqa: E402
from cascades.notation import format_expr  # noqa: E402

_leaf = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False).map(Num),
    st.sampled_from([Num(float("inf")), Num(float("-inf")), Bool(True), Bool(False)]),
    st.sampled_from([Name("scale"), Name("M"), Name("p"), Name("m")]),
    st.just(Access("X", (IVar("m"), IVar("p")))),
)


def _extend(children):
    binop = st.sampled_from(["+", "-", "*", "/", "**", "<", "<=", ">", ">=", "==", "!=",
                             "and", "or"])
    return st.one_of(
        st.builds(Binary, binop, children, children),
        st.builds(lambda x: Unary("-", x), children.filter(lambda x: not isinstance(x, Num))),
        st.builds(lambda x: Unary("not", x), children),
        st.builds(lambda f, x: Call(f, (x,)), st.sampled_from(["exp", "log", "sigmoid"]),
                  children),
        st.builds(lambda a, b: Call("max", (a, b)), children, children),
        st.builds(lambda a, b, c: Call("where", (a, b, c)), children, children, children),
    )


@settings(max_examples=300, deadline=None)
@given(st.recursive(_leaf, _extend, max_leaves=12))
def test_any_expression_prints_and_parses_back_unchanged(expr):
    text = ("cascade t\nparam scale = 1\ninput X[M, P]\noutput Y[M, P]\n"
            f"Y[m, p] = X[m, p] * ({format_expr(expr)})\n")
    c = cascades.parse(text)
    assert c.einsums[0].expr == Binary("*", Access("X", (IVar("m"), IVar("p"))), expr)
