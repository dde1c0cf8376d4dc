"""User-facing errors of the iosim package.

Every error a user can cause (a bad preset, a tiling that does not fit, a nonsense CLI
value) is raised as :class:`IosimError` with a one-line message; the CLI prints it as
``error: <message>`` and exits with status 2, without a traceback.
"""
from __future__ import annotations


class IosimError(ValueError):
    """A one-line, user-facing error (bad input, not a bug)."""
