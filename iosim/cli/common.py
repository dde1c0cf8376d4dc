"""Small helpers shared by the CLI commands: JSON output, atomic file writes, one-line usage
errors and parameter types that refuse non-finite numbers."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import click
import numpy as np

from iosim.errors import IosimError


# ----------------------------------------------------------------------- one-line errors
def one_line_usage(exc: click.UsageError, ctx: click.Context | None = None) -> IosimError:
    """A click usage error as a one-line :class:`IosimError` (printed ``error: ...``, exit 2)."""
    msg = " ".join(exc.format_message().split())
    if isinstance(exc, click.exceptions.NoSuchOption):
        return IosimError(msg)
    ctx = exc.ctx or ctx
    path = ctx.command_path if ctx is not None else "iosim"
    return IosimError(f"{msg} (see '{path} --help')")


#: click's "no arguments: show the help" signal (click >= 8.2); it is help, not an error
_HELP_SIGNALS = tuple(c for c in (getattr(click.exceptions, "NoArgsIsHelpError", None),) if c)


class _OneLineUsage:
    """Usage errors (bad options and values) as one-line :class:`IosimError`."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except _HELP_SIGNALS:
            raise
        except click.UsageError as e:
            raise one_line_usage(e, ctx) from None


class OneLineErrors(_OneLineUsage, click.Command):
    """A command whose parameter errors are one-line :class:`IosimError` (exit 2, no usage)."""


def unknown_command(name: str, choices, path: str) -> IosimError:
    """``unknown command 'evalute'; did you mean 'evaluate'?`` (one line)."""
    import difflib

    choices = sorted(choices)
    hit = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    hint = (f"; did you mean '{path} {hit[0]}'?" if hit
            else f" (commands: {', '.join(choices)})")
    return IosimError(f"unknown command '{path} {name}'{hint}")


class OneLineGroup(_OneLineUsage, click.Group):
    """A group whose usage errors (options, unknown sub-commands) are one line; its
    sub-commands are :class:`OneLineErrors` unless they say otherwise."""

    command_class = OneLineErrors

    def resolve_command(self, ctx, args):
        name = click.utils.make_str(args[0]) if args else ""
        if args and self.get_command(ctx, name) is None and not name.startswith("-"):
            raise unknown_command(name, self.list_commands(ctx), ctx.command_path)
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as e:
            raise one_line_usage(e, ctx) from None


OneLineGroup.group_class = OneLineGroup


# ------------------------------------------------------------------------ parameter types
class FiniteFloat(click.ParamType):
    """A finite float (``inf`` and ``nan`` are refused), optionally bounded below."""

    name = "float"

    def __init__(self, min: float | None = None, min_open: bool = False):
        self.min, self.min_open = min, min_open

    def convert(self, value, param, ctx):
        try:
            x = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(x):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if self.min is not None and (x < self.min or (self.min_open and x == self.min)):
            bound = "greater than" if self.min_open else "at least"
            self.fail(f"{value!r} must be {bound} {self.min:g}", param, ctx)
        return x


# ------------------------------------------------------------------------------- output


def _default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    if hasattr(o, "to_dict"):
        return o.to_dict()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _clean(o):
    """Replace non-finite floats (not valid JSON) by strings."""
    if isinstance(o, float) and not math.isfinite(o):
        return "inf" if o > 0 else ("-inf" if o < 0 else "nan")
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def echo_json(obj) -> None:
    """Print ``obj`` (a dict or anything with ``to_dict``) as JSON."""
    if hasattr(obj, "to_dict"):
        obj = obj.to_dict()
    click.echo(json.dumps(_clean(json.loads(json.dumps(obj, default=_default))), indent=2))


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _blocker(path: Path) -> str | None:
    """Why ``path`` cannot be created, when an ancestor is in the way (a file, not a dir)."""
    for anc in [path, *path.parents]:
        if anc.exists():
            return None if anc.is_dir() else f"'{anc}' is a file, not a directory"
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def ensure_dir(path: str | Path, what: str = "--out") -> Path:
    """Create directory ``path`` (with parents) and check that files can be written in it.

    Run before a long computation, so an unwritable ``--out`` fails in one line up front
    instead of after the work (or half-way through writing its outputs).
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise IosimError(f"{what} {p}: is a file, not a directory")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = _blocker(p) or _reason(exc)
        raise IosimError(f"{what} {p}: cannot create the directory ({why})") from None
    try:
        fd, probe = tempfile.mkstemp(dir=p, prefix=".iosim-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise IosimError(f"{what} {p}: cannot write in this directory ({_reason(exc)})") from None
    return p


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename: never half-written.

    The file gets the permissions of a normally created file (``0o666`` less the umask), not
    the temporary file's ``0o600``. Any OS error (a missing or read-only directory, a file
    where a directory should be) is a one-line :class:`IosimError` naming ``path``.
    """
    path = Path(path)
    if path.is_dir():
        raise IosimError(f"cannot write {path}: it is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = _blocker(path.parent) or _reason(exc)
        raise IosimError(f"cannot write {path}: cannot create its directory ({why})") from None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise IosimError(f"cannot write {path}: {_reason(exc)}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise IosimError(f"cannot write {path}: {_reason(exc)}") from None
        raise
