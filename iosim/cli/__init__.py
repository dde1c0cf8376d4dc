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
    """Loads sub-commands lazily so ``iosim --help`` stays fast."""

    def list_commands(self, ctx):
        return sorted(name for mod, name in SUBCOMMANDS.items() if _exists(mod))

    def get_command(self, ctx, name):
        for mod, cmd in SUBCOMMANDS.items():
            if cmd == name and _exists(mod):
                return importlib.import_module(f"{__name__}.{mod}").command
        return None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (IosimError, CascadeError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            click.echo(f"error: {msg}", err=True)
            ctx.exit(2)


def _exists(mod: str) -> bool:
    return importlib.util.find_spec(f"{__name__}.{mod}") is not None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
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
