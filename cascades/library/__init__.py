"""The library of attention cascades: one ``.casc`` text file per algorithm."""
from __future__ import annotations

import difflib
from functools import lru_cache
from importlib import resources
from pathlib import Path

from cascades.errors import CascadeError

SUFFIX = ".casc"


def names() -> list[str]:
    """Names of the library cascades, sorted."""
    root = resources.files(__name__)
    return sorted(p.name[: -len(SUFFIX)] for p in root.iterdir() if p.name.endswith(SUFFIX))


def text(name: str) -> str:
    """The notation text of library cascade ``name``."""
    if name not in names():
        close = difflib.get_close_matches(name, names(), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f" (known: {', '.join(names())})"
        raise CascadeError(f"unknown cascade '{name}'{hint}")
    return resources.files(__name__).joinpath(name + SUFFIX).read_text()


@lru_cache(maxsize=None)
def _load_library(name: str):
    from cascades.notation import parse
    return parse(text(name), source=f"{name}{SUFFIX}")


def load(name_or_path: str | Path):
    """Load a library cascade by name, or a user's cascade file by path."""
    s = str(name_or_path)
    p = Path(s)
    if s.endswith(SUFFIX) or p.suffix or "/" in s or p.is_file() or (p.is_dir() and s not in names()):
        if p.is_dir():
            raise CascadeError(f"cascade file '{s}' is a directory; give a .casc file or a "
                               f"library name (see 'iosim cascades list')")
        if not p.is_file():
            if not p.exists():
                raise CascadeError(f"cascade file '{s}' does not exist")
            raise CascadeError(f"cascade file '{s}' is not a regular file")
        from cascades.notation import parse
        try:
            content = p.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise CascadeError(f"cannot read cascade file '{s}': not UTF-8 text (byte "
                               f"{exc.start}: {exc.object[exc.start:exc.start + 1]!r})") from None
        except OSError as exc:
            raise CascadeError(f"cannot read cascade file '{s}': "
                               f"{exc.strerror or type(exc).__name__}") from None
        return parse(content, source=s)
    return _load_library(s)
