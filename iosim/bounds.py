"""IO bounds for attention and matrix multiplication, as formulas with their regimes.

Every count is in **elements** moved between a two-level machine's slow memory (HBM) and fast
memory (SRAM) of ``M`` elements, per (batch, head); multiply by the dtype size for bytes
(see ``docs/bounds.md``). Symbols:

====== ================================================================================
``N``  sequence length (query rows; also key rows for self-attention)
``Nk`` key/value length when it differs from ``N`` (cross-attention)
``d``  head dimension
``M``  fast-memory (SRAM) size in elements
``L``  KV-cache length (decode)
``g``  query rows sharing one KV head in a decode step (1 for MHA; the group size for GQA)
``s``  fraction of nonzero blocks (block-sparse attention), 0 < s <= 1
``m``, ``n``, ``k``  matrix-multiplication sizes: C (m x n) = A (m x k) . B (k x n)
====== ================================================================================

A :class:`Bound` records what kind of statement the formula is:

* ``kind="lower"`` -- no algorithm in the stated model does fewer IOs;
* ``kind="upper"`` -- the IO cost of one named algorithm (a Θ statement about that algorithm,
  hence an upper bound on the optimum);
* ``kind="tight"`` -- the optimum itself, matching lower and upper bounds.

and how its constant is known: ``"stated"`` (the paper gives the constant), ``"derived"`` (we
count it ourselves, exactly, from the problem or the algorithm's loop nest) or
``"asymptotic (no constant)"`` (a Θ/Ω statement; the formula is evaluated with constant 1,
so only slopes and bounded ratios mean anything).

Each formula and regime is written once, as text in sympy syntax. Numeric evaluation
(:meth:`Bound.evaluate`, :meth:`Bound.in_regime`, :func:`attention_lower_envelope`) compiles
that text against NumPy and does not import sympy; the sympy objects (``Bound.expr``,
``Bound.condition``, the module's symbols ``N``, ``d``, ``M``, ... and ``SYMBOLS``) are built
from the same text on first use.
"""
from __future__ import annotations

import ast
import difflib
from dataclasses import dataclass, field
from functools import cached_property, reduce
from typing import Any

import numpy as np

from iosim.errors import IosimError

__all__ = [
    "SYMBOLS",
    "N", "Nk", "d", "M", "L", "g", "s", "m", "n", "k",
    "Bound",
    "LowerEnvelope",
    "all_bounds",
    "get_bound",
    "bound_names",
    "attention_lower_envelope",
    "ENVELOPE_MODELS",
]

# --------------------------------------------------------------------------------------
# symbols
# --------------------------------------------------------------------------------------

#: The symbols' names; the sympy symbols (all positive) are made on first access of
#: ``SYMBOLS`` or of ``N``, ``d``, ``M``, ... (module ``__getattr__``), importing sympy then.
SYMBOL_NAMES: tuple = ("N", "Nk", "d", "M", "L", "g", "s", "m", "n", "k")

_SYMPY_CACHE: dict = {}


def _sympy_symbols() -> dict:
    """``{name: sympy.Symbol}`` for :data:`SYMBOL_NAMES` (positive), made once."""
    if "symbols" not in _SYMPY_CACHE:
        import sympy as sp

        syms = sp.symbols(" ".join(SYMBOL_NAMES), positive=True)
        _SYMPY_CACHE["symbols"] = {str(x): x for x in syms}
    return _SYMPY_CACHE["symbols"]


def __getattr__(name: str):  # PEP 562: the sympy symbols, imported only when asked for
    if name == "SYMBOLS":
        return _sympy_symbols()
    if name in SYMBOL_NAMES:
        return _sympy_symbols()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(SYMBOL_NAMES) | {"SYMBOLS"})


STATED = "stated"
DERIVED = "derived"
ASYMPTOTIC = "asymptotic (no constant)"
_CONSTANTS = (STATED, DERIVED, ASYMPTOTIC)
_KINDS = ("lower", "upper", "tight")

FLASH = "Dao et al. 2022, FlashAttention, arXiv 2205.14135"
SAHA_YE = "Saha & Ye 2024, The I/O Complexity of Attention, or How Optimal is Flash Attention?, ICML 2024, arXiv 2402.07443"


def _suggest(word: str, choices) -> str:
    hit = difflib.get_close_matches(word.lower(), [c.lower() for c in choices], n=1, cutoff=0.5)
    return f" (did you mean '{hit[0]}'?)" if hit else ""


# --------------------------------------------------------------------------------------
# formulas: sympy-syntax text, compiled for NumPy
# --------------------------------------------------------------------------------------


def _variadic(op):
    def fn(*args):
        return reduce(op, args)
    return fn


#: The functions a formula may call, as NumPy callables (sympy's names; sympy gives the
#: same names their exact meaning when the text is parsed by sympy).
_NUMPY_FUNCTIONS = {
    "sqrt": np.sqrt,
    "ceiling": np.ceil,
    "floor": np.floor,
    "Min": _variadic(np.minimum),
    "Max": _variadic(np.maximum),
    "And": _variadic(np.logical_and),
    "Or": _variadic(np.logical_or),
}
_OPERATORS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.USub, ast.UAdd,
              ast.Lt, ast.LtE, ast.Gt, ast.GtE)


def _compile_formula(text: str, what: str):
    """``(code, variables)`` for a formula in sympy syntax: arithmetic (``+ - * / **``),
    numbers, the symbols, comparisons (one per term; ``And``/``Or`` to combine) and the
    functions of ``_NUMPY_FUNCTIONS``. Anything else is refused (no attributes, no
    subscripts, no other names), so the text can be evaluated with empty builtins."""
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise ValueError(f"{what}: cannot parse {text!r}: {e.msg}") from None
    variables = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id in _NUMPY_FUNCTIONS) or node.keywords:
                raise ValueError(f"{what}: only calls of {', '.join(_NUMPY_FUNCTIONS)} are allowed in {text!r}")
        elif isinstance(node, ast.Name):
            if node.id in SYMBOL_NAMES:
                variables.add(node.id)
            elif node.id not in _NUMPY_FUNCTIONS:
                raise ValueError(f"{what}: unknown name '{node.id}' in {text!r}")
        elif isinstance(node, ast.Constant):
            if type(node.value) not in (int, float, bool):
                raise ValueError(f"{what}: constant {node.value!r} in {text!r}")
        elif isinstance(node, ast.Compare):
            if len(node.ops) != 1:
                raise ValueError(f"{what}: chained comparison in {text!r} (write And(a <= b, b <= c))")
        elif not isinstance(node, (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Load) + _OPERATORS):
            raise ValueError(f"{what}: {type(node).__name__} is not allowed in {text!r}")
    return compile(tree, f"<bound {what}>", "eval"), tuple(sorted(variables))


def _eval_formula(code, names, args):
    env = dict(_NUMPY_FUNCTIONS)
    env.update(zip(names, args))
    return eval(code, {"__builtins__": {}}, env)  # noqa: S307 -- checked by _compile_formula


def _sympify(text: str):
    import sympy as sp

    return sp.sympify(sp.sympify(text, locals=_sympy_symbols()))  # "True" -> sympy.true


# --------------------------------------------------------------------------------------
# the Bound type
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bound:
    """One IO bound: a formula plus the regime, source and status of its constant.

    ``formula`` is the bound (elements) and ``where`` its regime as a condition, both as
    text in sympy syntax (``where`` is ``"True"`` when the formula holds everywhere);
    ``regime`` is the regime in words. :meth:`evaluate` and :meth:`in_regime` accept
    scalars or NumPy arrays (broadcast together) and need no sympy; ``expr`` and
    ``condition`` are the same text as sympy objects (``sympy.true`` for no condition).
    """

    name: str
    formula: str
    kind: str
    regime: str
    source: str
    constant: str
    note: str = ""
    where: str = "True"
    _code: Any = field(init=False, repr=False, compare=False)
    _variables: tuple = field(init=False, repr=False, compare=False)
    _cond: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"bound {self.name}: kind must be one of {_KINDS}")
        if self.constant not in _CONSTANTS:
            raise ValueError(f"bound {self.name}: constant must be one of {_CONSTANTS}")
        code, variables = _compile_formula(self.formula, self.name)
        object.__setattr__(self, "_code", code)
        object.__setattr__(self, "_variables", variables)
        object.__setattr__(self, "_cond", _compile_formula(self.where, f"{self.name} (regime)"))

    @cached_property
    def expr(self):
        """The formula as a sympy expression (imports sympy)."""
        return _sympify(self.formula)

    @cached_property
    def condition(self):
        """The regime as a sympy boolean, ``sympy.true`` when it holds everywhere (imports sympy)."""
        return _sympify(self.where)

    @property
    def variables(self) -> tuple:
        """Names of the symbols the expression uses, sorted."""
        return self._variables

    @property
    def asymptotic(self) -> bool:
        """True when the formula has no stated or derived constant (evaluated with constant 1)."""
        return self.constant == ASYMPTOTIC

    def _args(self, names, values: dict) -> list:
        for key in values:
            if key not in SYMBOL_NAMES:
                raise IosimError(
                    f"bound '{self.name}': unknown variable '{key}'{_suggest(key, SYMBOL_NAMES)}; "
                    f"it uses {', '.join(self.variables)}"
                )
        missing = [v for v in names if v not in values]
        if missing:
            raise IosimError(
                f"bound '{self.name}': missing value for {', '.join(missing)} "
                f"(it uses {', '.join(self.variables)})"
            )
        arrays = []
        for v in names:
            try:
                a = np.asarray(values[v], dtype=float)
            except (TypeError, ValueError):
                raise IosimError(f"bound '{self.name}': {v} must be numeric, got {values[v]!r}") from None
            if not np.all(a > 0):  # also catches NaN
                raise IosimError(f"bound '{self.name}': {v} must be positive, got {values[v]!r}")
            arrays.append(a)
        return list(np.broadcast_arrays(*arrays)) if arrays else []

    def evaluate(self, **values):
        """The bound's value (elements) at the given symbol values; floats or arrays.

        Values for symbols the expression does not use are ignored (so one dict of
        parameters can be passed to every bound); names that are no symbol at all are errors.
        """
        args = self._args(self.variables, values)
        out = np.asarray(_eval_formula(self._code, self.variables, args), dtype=float)
        if args:
            out = np.broadcast_to(out, args[0].shape)
        return float(out) if out.ndim == 0 else out.copy()

    def in_regime(self, **values):
        """Whether the values lie in the bound's regime (bool or bool array)."""
        code, names = self._cond
        if not names:
            self._args((), values)  # validates names
            shapes = [np.shape(v) for v in values.values()]
            shape = np.broadcast_shapes(*shapes) if shapes else ()
            out = np.ones(shape, dtype=bool)
            return bool(out) if out.ndim == 0 else out
        args = self._args(names, values)
        out = np.asarray(_eval_formula(code, names, args), dtype=bool)
        out = np.broadcast_to(out, args[0].shape)
        return bool(out) if out.ndim == 0 else out.copy()

    def to_dict(self) -> dict:
        import sympy as sp

        return {
            "name": self.name,
            "expr": str(self.expr),
            "latex": sp.latex(self.expr),
            "variables": list(self.variables),
            "kind": self.kind,
            "regime": self.regime,
            "condition": str(self.condition),
            "source": self.source,
            "constant": self.constant,
            "note": self.note,
        }


# --------------------------------------------------------------------------------------
# the catalogue
# --------------------------------------------------------------------------------------

_PROP3 = (
    "FlashAttention Proposition 3 is a statement about the whole range, not a pointwise bound: "
    "no exact attention algorithm does o(N^2 d^2 / M) HBM accesses for all M in [d, N d]. "
    "It leaves room for an algorithm that beats N^2 d^2 / M at some M, and Saha & Ye show one "
    "does for M < d^2."
)


def _catalogue() -> tuple:
    # Formulas in sympy syntax (see Bound), products written in sympy's printed order so that
    # the NumPy evaluation multiplies in the same order as sympy's own printing would.
    Bc = "ceiling(M/(4*d))"  # FlashAttention Algorithm 1 column-block size
    Tc = f"ceiling(N/{Bc})"  # number of K/V blocks = passes over Q, O, l, m
    return (
        Bound(
            name="compulsory",
            formula="4*N*d",
            kind="lower",
            regime="any M (self-attention: Q, K, V are N x d, O is N x d)",
            source="counting argument; the Omega(N d) floor noted in " + FLASH + " and " + SAHA_YE,
            constant=DERIVED,
            note="Every exact algorithm reads each of Q, K, V at least once and writes O at least once: "
                 "3 N d reads + N d writes. The papers state it as Omega(N d); the constant 4 is ours "
                 "(exact count, holds for every algorithm and every M).",
        ),
        Bound(
            name="compulsory_cross",
            formula="2*N*d + 2*Nk*d",
            kind="lower",
            regime="any M (N query rows, Nk key/value rows)",
            source="counting argument (as for 'compulsory')",
            constant=DERIVED,
            note="Read Q (N d), K and V (Nk d each), write O (N d). Equals 'compulsory' when Nk = N.",
        ),
        Bound(
            name="flash_standard_attention",
            formula="N**2 + N*d",
            kind="upper",
            regime="any M (S = Q K^T and P = softmax(S) materialised in HBM)",
            source=FLASH + ", Theorem 2 (standard attention)",
            constant=ASYMPTOTIC,
            note="Theta(N d + N^2) HBM accesses of standard attention (Algorithm 0); an algorithm's "
                 "cost, so an upper bound on the optimum.",
        ),
        Bound(
            name="flash_attention_alg1",
            formula="N**2*d**2/M",
            kind="upper",
            regime="d <= M <= N*d",
            where="And(d <= M, M <= N*d)",
            source=FLASH + ", Theorem 2 (Algorithm 1, forward)",
            constant=ASYMPTOTIC,
            note="Theta(N^2 d^2 / M) HBM accesses of FlashAttention's forward pass. " + _PROP3,
        ),
        Bound(
            name="flash_attention_alg1_exact",
            formula=f"2*N*d + (3*N*d + 4*N)*{Tc}",
            kind="upper",
            regime="d <= M <= N*d (the formula is defined for any M > 0); initialisation writes excluded",
            where="And(d <= M, M <= N*d)",
            source=FLASH + ", Algorithm 1 (count derived from its loop nest)",
            constant=DERIVED,
            note="Exact count of Algorithm 1 with Bc = ceil(M/(4d)), Tc = ceil(N/Bc): K and V read once "
                 "(2 N d); for each of the Tc K/V blocks the inner loop reads Q, O (2 N d) and l, m (2 N) "
                 "and writes O (N d) and l, m (2 N). Partial last blocks are included (they change no "
                 "element count). Add N d + 2 N if the initialisation of O, l, m in HBM is counted. "
                 "Leading term 12 N^2 d^2 / M. Does not depend on Br. The paper's blocks "
                 "(K_j, V_j, Q_i, O_i) can exceed M for small M; this formula does not check that.",
        ),
        Bound(
            name="flash_attention_backward",
            formula="N**2*d**2/M",
            kind="upper",
            regime="d <= M <= N*d",
            where="And(d <= M, M <= N*d)",
            source=FLASH + ", Theorem 5 (backward pass, Algorithm 4)",
            constant=ASYMPTOTIC,
            note="Theta(N^2 d^2 / M) HBM accesses, same loop order as the forward pass.",
        ),
        Bound(
            name="block_sparse_flash",
            formula="N*d + N**2*d**2*s/M",
            kind="upper",
            regime="d <= M <= N*d, 0 < s <= 1 (s = fraction of nonzero blocks)",
            where="And(d <= M, M <= N*d, s <= 1)",
            source=FLASH + ", Proposition 4 (block-sparse FlashAttention)",
            constant=ASYMPTOTIC,
            note="Theta(N d + N^2 d^2 s / M) HBM accesses of block-sparse FlashAttention.",
        ),
        Bound(
            name="saha_ye_standard_matmul",
            formula="Min(N**2*d/sqrt(M), N**2*d**2/M)",
            kind="tight",
            regime="all M; small-cache branch N^2 d / sqrt(M) for M < d^2, large-cache branch "
                   "N^2 d^2 / M for M >= d^2 (they meet at M = d^2)",
            source=SAHA_YE + ", main theorems for standard (combinatorial) matrix multiplication",
            constant=ASYMPTOTIC,
            note="Red-blue pebble game on the attention DAG with standard matmul, recomputation "
                 "allowed. Large cache: FlashAttention is optimal. Small cache: square tiling with "
                 "B ~ sqrt(M/4) that writes exp(Q K^T) to HBM attains N^2 d / sqrt(M), and no "
                 "standard-matmul algorithm does better. No constants are stated.",
        ),
        Bound(
            name="saha_ye_small_cache",
            formula="N**2*d/sqrt(M)",
            kind="tight",
            regime="M < d^2",
            where="M < d**2",
            source=SAHA_YE + ", small-cache regime",
            constant=ASYMPTOTIC,
            note="The M < d^2 branch of 'saha_ye_standard_matmul'.",
        ),
        Bound(
            name="saha_ye_large_cache",
            formula="N**2*d**2/M",
            kind="tight",
            regime="M >= d^2",
            where="M >= d**2",
            source=SAHA_YE + ", large-cache regime (FlashAttention optimal)",
            constant=ASYMPTOTIC,
            note="The M >= d^2 branch of 'saha_ye_standard_matmul'; below the compulsory 4 N d once "
                 "M exceeds about N d / 4.",
        ),
        Bound(
            name="saha_ye_any_algorithm",
            formula="Min(N**2*d**2/M, N**2)",
            kind="lower",
            regime="all M; any exact algorithm, fast matrix multiplication included",
            source=SAHA_YE + ", lower bound for arbitrary algorithms (communication-complexity argument)",
            constant=ASYMPTOTIC,
            note="Omega(min(N^2 d^2 / M, N^2)); equals the standard-matmul bound for M >= d^2 and "
                 "is weaker (N^2) below it.",
        ),
        Bound(
            name="hong_kung_matmul",
            formula="n**3/sqrt(M)",
            kind="lower",
            regime="n x n times n x n product, standard algorithm, M << n^2",
            where="M < n**2",
            source="Hong & Kung 1981, I/O complexity: the red-blue pebble game (STOC '81)",
            constant=ASYMPTOTIC,
            note="Omega(n^3 / sqrt(M)); rectangular form Omega(m n k / sqrt(M)).",
        ),
        Bound(
            name="smith_matmul",
            formula="2*k*m*n/sqrt(M) - 2*M",
            kind="lower",
            regime="C (m x n) = A (m x k) B (k x n), standard algorithm, sequential two-level machine",
            source="Smith, Lowery, Langou & van de Geijn, A Tight I/O Lower Bound for Matrix "
                   "Multiplication, arXiv 1702.02017",
            constant=STATED,
            note="Leading term 2 m n k / sqrt(M), attained by a theoretical algorithm in the paper; "
                 "vacuous (negative) when M is large compared with (m n k)^(2/3).",
        ),
        Bound(
            name="cosma_matmul",
            formula="2*k*m*n/sqrt(M) + m*n",
            kind="lower",
            regime="C (m x n) = A (m x k) B (k x n), standard algorithm, sequential two-level "
                   "machine, M small against the matrices",
            where="M < Min(k*m, k*n, m*n)",
            source="Kwasniewski et al., Red-Blue Pebbling Revisited: Near Optimal Parallel "
                   "Matrix-Matrix Multiplication (COSMA), SC'19, arXiv 1908.09606",
            constant=STATED,
            note="The + m n term is writing C once; attained within lower-order terms by an "
                 "outer-product schedule with an a x a block of C on chip (a ~ sqrt(M)).",
        ),
        Bound(
            name="decode_kv_floor",
            formula="2*L*d + 2*d*g",
            kind="lower",
            regime="one decode step, any M (KV cache of L rows, g query rows sharing the KV head)",
            source="counting argument (reference/io_theory.md, 'Beyond prefill')",
            constant=DERIVED,
            note="K and V (L d each) are read at least once, the g query rows (g d) read and the g "
                 "output rows (g d) written. Split-KV schemes (FlashDecoding, LeanAttention) add "
                 "their partial (O, log-sum-exp) traffic on top.",
        ),
    )


_BOUNDS: tuple = _catalogue()
_BY_NAME = {b.name: b for b in _BOUNDS}


def all_bounds() -> tuple:
    """Every bound in the catalogue, in a fixed order."""
    return _BOUNDS


def bound_names() -> tuple:
    return tuple(_BY_NAME)


def get_bound(name: str) -> Bound:
    """The bound called ``name`` (case-insensitive; ``-`` and ``_`` are interchangeable)."""
    key = str(name).strip().lower().replace("-", "_")
    if key in _BY_NAME:
        return _BY_NAME[key]
    raise IosimError(
        f"unknown bound '{name}'{_suggest(key, _BY_NAME)}; bounds: {', '.join(_BY_NAME)}"
    )


# --------------------------------------------------------------------------------------
# the lower envelope
# --------------------------------------------------------------------------------------

#: Which pointwise lower bounds enter the envelope, per computational model. Only statements
#: that hold for *every* algorithm of the model at *every* point qualify: the algorithms'
#: costs (FlashAttention, standard attention, block-sparse) are upper bounds; Proposition 3 is
#: a statement about a range of M; the matmul bounds concern a product whose result is an
#: output, whereas attention never has to write S = Q K^T; decode is a different problem.
ENVELOPE_MODELS: dict[str, tuple] = {
    # any exact algorithm, fast matrix multiplication included
    "any": ("compulsory", "saha_ye_any_algorithm"),
    # red-blue pebbling of the attention DAG built from standard matrix multiplication --
    # the model of every tiling this package enumerates
    "standard-matmul": ("compulsory", "saha_ye_standard_matmul", "saha_ye_any_algorithm"),
}


@dataclass(frozen=True)
class LowerEnvelope:
    """The pointwise maximum of the lower bounds that hold in one model.

    ``value`` is the max over all components, the asymptotic ones evaluated with constant 1;
    ``rigorous`` is the max over components with a stated or derived constant only (a true
    inequality); ``binding`` names the component attaining ``value`` at each point and
    ``asymptotic`` says whether that component is an asymptotic bound (constant 1).
    """

    model: str
    value: Any
    rigorous: Any
    binding: Any
    asymptotic: Any
    components: dict
    constants: dict

    def to_dict(self) -> dict:
        def conv(x):
            return x.tolist() if isinstance(x, np.ndarray) else x

        return {
            "model": self.model,
            "unit": "elements",
            "value": conv(self.value),
            "rigorous": conv(self.rigorous),
            "binding": conv(self.binding),
            "asymptotic": conv(self.asymptotic),
            "components": {k: conv(v) for k, v in self.components.items()},
            "constants": {
                name: (c + "; evaluated with constant 1" if c == ASYMPTOTIC else c)
                for name, c in self.constants.items()
            },
        }


def attention_lower_envelope(N, d, M, model: str = "standard-matmul") -> LowerEnvelope:
    """Max over the pointwise attention IO lower bounds valid in ``model`` (elements).

    ``M`` is the SRAM size in elements. ``model`` is ``"standard-matmul"`` (default: red-blue
    pebbling of the attention DAG with standard matrix multiplication, the model of every
    tiling) or ``"any"`` (any exact algorithm). Components: the compulsory 4 N d (derived,
    exact) and Saha & Ye's bounds (asymptotic, evaluated with constant 1 and labelled so).
    Scalars give scalars; arrays broadcast.
    """
    key = str(model).strip().lower().replace("_", "-")
    if key not in ENVELOPE_MODELS:
        raise IosimError(
            f"unknown envelope model '{model}'{_suggest(key, ENVELOPE_MODELS)}; "
            f"models: {', '.join(ENVELOPE_MODELS)}"
        )
    names = ENVELOPE_MODELS[key]
    bounds = [get_bound(nm) for nm in names]
    vals = [np.asarray(b.evaluate(N=N, d=d, M=M), dtype=float) for b in bounds]
    vals = np.broadcast_arrays(*vals)
    stack = np.stack(vals)
    idx = np.argmax(stack, axis=0)  # first maximum: rigorous bounds are listed first
    value = np.max(stack, axis=0)
    rig_rows = [v for b, v in zip(bounds, vals) if not b.asymptotic]
    rigorous = np.max(np.stack(rig_rows), axis=0)
    binding = np.asarray(names, dtype=object)[idx]
    asym = np.asarray([b.asymptotic for b in bounds])[idx]
    scalar = value.ndim == 0

    def out(x, cast=float):
        return cast(x) if scalar else x

    return LowerEnvelope(
        model=key,
        value=out(value),
        rigorous=out(rigorous),
        binding=str(binding) if scalar else binding.astype(str),
        asymptotic=bool(asym) if scalar else asym,
        components={b.name: out(v) for b, v in zip(bounds, vals)},
        constants={b.name: b.constant for b in bounds},
    )
