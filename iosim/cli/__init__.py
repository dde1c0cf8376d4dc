"""The ``iosim`` command line: a thin click layer over the packages.

Each sub-command lives in its own module of this package and exposes a click command (or
group) named ``command``; :data:`SUBCOMMANDS` lists them. User errors (``IosimError``,
``CascadeError``) are printed as one line, ``error: ...``, with exit status 2.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from cascades.errors import CascadeError
from iosim.errors import IosimError

#: module (in this package) -> sub-command name
SUBCOMMANDS = {
    "cascades_cmd": "cascades",
    "evaluate_cmd": "evaluate",
    "bounds_cmd": "bounds",
    "sweep_cmd": "sweep",
    "search_cmd": "search",
    "spatial_cmd": "spatial",
    "codegen_cmd": "codegen",
    "validate_cmd": "validate",
    "experiment_cmd": "experiment",
}


class _Group(click.Group):
    """Loads sub-commands lazily so ``iosim --help`` stays fast; every user error, click's
    usage errors of any sub-command included, is one line (``error: ...``, exit 2)."""

    def list_commands(self, ctx):
        return sorted(name for mod, name in SUBCOMMANDS.items() if _exists(mod))

    def get_command(self, ctx, name):
        for mod, cmd in SUBCOMMANDS.items():
            if cmd == name and _exists(mod):
                return importlib.import_module(f"{__name__}.{mod}").command
        return None

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except (IosimError, click.UsageError) as exc:
            _fail(ctx, exc)

    def resolve_command(self, ctx, args):
        from iosim.cli.common import unknown_command
        name = click.utils.make_str(args[0]) if args else ""
        if args and not name.startswith("-") and self.get_command(ctx, name) is None:
            raise unknown_command(name, self.list_commands(ctx), ctx.command_path)
        return super().resolve_command(ctx, args)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (IosimError, CascadeError, click.UsageError) as exc:
            _fail(ctx, exc)


def _fail(ctx, exc):
    """Print ``exc`` as one line and exit 2 (click's help-instead-of-error signal excepted)."""
    from iosim.cli.common import _HELP_SIGNALS, one_line_usage
    if isinstance(exc, _HELP_SIGNALS):
        raise exc
    if isinstance(exc, click.UsageError):
        exc = one_line_usage(exc, ctx)
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    click.echo(f"error: {msg}", err=True)
    ctx.exit(2)


def _exists(mod: str) -> bool:
    return importlib.util.find_spec(f"{__name__}.{mod}") is not None


@click.group("iosim", cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="iosim")
def main():
    """iosim: IO complexity of attention — cascades, memory hierarchies, spatial arrays, GPUs.

    \b
    Start with:
      iosim evaluate                      # attention-1pass on the h100 preset
      iosim cascades list                 # the algorithm library
      iosim cascades run attention-1pass  # execute and compare with a reference
    """


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
