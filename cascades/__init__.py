"""cascades: attention algorithms as Einsum cascades — the IR, its notation, a library,
pass analysis and a NumPy executor. Knows nothing of hardware (``iosim`` builds on it)."""
from cascades.errors import CascadeError, CascadeSyntaxError, CascadeValidationError, ExecutionError
from cascades.ir import Cascade, Einsum
from cascades.notation import format_cascade, parse
from cascades import library, reference
from cascades.library import load
from cascades.executor import execute

__all__ = ["Cascade", "Einsum", "reference", "CascadeError", "CascadeSyntaxError", "CascadeValidationError",
           "ExecutionError", "parse", "format_cascade", "load", "library", "execute"]

