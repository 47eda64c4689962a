"""The `umeter` command. Each module in this package defines one `command` (a click command
or group) and is registered here by discovery, so a new subcommand is a new module.

Expected failures (`UmeterError`) print `umeter: error: <what> — <hint>` and exit 1; usage
errors exit 2; no traceback unless `-v` is given.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import click

from .. import __version__
from ..errors import UmeterError
from ..ui import state


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="umeter")
@click.option("-v", "--verbose", count=True, help="More diagnostics on stderr (repeat for more).")
@click.option("-q", "--quiet", is_flag=True, help="Only results and errors.")
def main_group(verbose: int, quiet: bool) -> None:
    """umeter — build, flash, provision, update and simulate intelligent meter nodes."""
    state.verbose = -1 if quiet else verbose


def _register() -> None:
    pkg = sys.modules[__name__]
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        mod = importlib.import_module(f"{__name__}.{info.name}")
        cmd = getattr(mod, "command", None)
        if isinstance(cmd, click.Command):
            main_group.add_command(cmd)


_register()


def main(argv: list[str] | None = None) -> int:
    try:
        rv = main_group.main(args=argv, prog_name="umeter", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("umeter: aborted", err=True)
        return 130
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except UmeterError as e:
        if state.verbose > 0:
            raise
        click.echo(f"umeter: error: {e}", err=True)
        return 1
    except KeyboardInterrupt:
        click.echo("umeter: interrupted", err=True)
        return 130
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
