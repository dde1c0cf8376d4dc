"""Click parameter types shared by every command.

``SIZE``: a positive whole number, optionally with a binary suffix (``1K`` = 1024,
``128K``, ``1M`` = 1024²), the same spelling as the list/range options of ``sweep``.
"""
from __future__ import annotations

import click

from iosim.errors import IosimError


class SizeInt(click.ParamType):
    """A positive integer with an optional K/M suffix (K = 1024, M = 1024²)."""

    name = "size"

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 1:
                self.fail(f"{value} must be positive", param, ctx)
            return value
        from iosim.sweep import _count
        opt = param.opts[0] if param is not None and param.opts else "value"
        try:
            return _count(str(value).strip(), opt)
        except IosimError as e:
            self.fail(str(e).split(": ", 1)[-1], param, ctx)


SIZE = SizeInt()
