"""Errors raised for malformed or invalid cascades.

Every error is one line: it names the source, line and column for syntax errors, and the
Einsum and tensor for semantic errors, so the CLI can print it without a traceback.
"""
from __future__ import annotations


class CascadeError(ValueError):
    """Base class of all user-facing cascade errors."""

    def __init__(self, message: str, *, source: str | None = None, line: int | None = None,
                 column: int | None = None):
        self.message = message
        self.source = source
        self.line = line
        self.column = column
        super().__init__(self._format())

    def _format(self) -> str:
        where = ""
        if self.source is not None:
            where += self.source
        if self.line is not None:
            where += f"{':' if where else 'line '}{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return f"{where}: {self.message}" if where else self.message

    def with_source(self, source: str) -> "CascadeError":
        """Return a copy of this error that names ``source`` (a file name or library name)."""
        return type(self)(self.message, source=source, line=self.line, column=self.column)


class CascadeSyntaxError(CascadeError):
    """The text is not in the cascade notation."""


class CascadeValidationError(CascadeError):
    """The text parses but does not describe a valid cascade."""


class ExecutionError(CascadeError):
    """Inputs or parameters given to the executor do not fit the cascade."""
