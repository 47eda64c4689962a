"""The `umeter` command. Each module in this package defines one `command` (a click command
or group) and is registered here by discovery, so a new subcommand is a new module.

Expected failures (`UmeterError`, and file-system errors a command did not wrap) print
`umeter: error: <what> — <hint>` and exit 1; usage errors print one such line too and exit 2;
no traceback unless `-v` is given. tests/host/test_cli_walk.py holds every command to it.
"""

from __future__ import annotations

import errno
import importlib
import os
import pkgutil
import sqlite3
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


def usage_line(e: click.UsageError) -> str:
    """click's usage error (a usage block, a blank line, `Error: …`) as one line with a hint."""
    path = e.ctx.command_path if e.ctx is not None else "umeter"
    where = path.split(" ", 1)[1] + ": " if " " in path else ""
    msg = " ".join(e.format_message().split())  # click may wrap or suggest on a second line
    return f"umeter: error: {where}{msg.rstrip('.')} — see `{path} --help`"


_OS_HINTS = {
    errno.ENOENT: "check that the file, or the directory it goes in, exists",
    errno.ENOTDIR: "a part of the path is not a directory",
    errno.EISDIR: "give a file, not a directory",
    errno.EACCES: "check its permissions, or choose another path",
    errno.EPERM: "check its permissions, or choose another path",
    errno.EROFS: "that file system is read-only: choose another path",
    errno.ENOSPC: "the disk is full: free some space",
    errno.EEXIST: "it is in the way: remove it or choose another path",
}


def os_error_line(e: OSError) -> str:
    """A file-system failure the command did not turn into an UmeterError, as one line."""
    what = f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e)
    if getattr(e, "filename2", None):
        what += f" (and {e.filename2})"
    return f"umeter: error: {what} — {_OS_HINTS.get(e.errno, 'check the path and try again')}"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI. One rule for every command: an expected failure is one line on stderr,
    `umeter: error: <what> — <hint>`, exit 1; a usage error is one line too, exit 2."""
    try:
        rv = main_group.main(args=argv, prog_name="umeter", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("umeter: aborted", err=True)
        return 130
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.UsageError as e:
        click.echo(usage_line(e), err=True)
        return e.exit_code
    except click.ClickException as e:
        click.echo(f"umeter: error: {' '.join(e.format_message().split())}", err=True)
        return e.exit_code
    except UmeterError as e:
        if state.verbose > 0:
            raise
        click.echo(f"umeter: error: {e}", err=True)
        return 1
    except KeyboardInterrupt:
        click.echo("umeter: interrupted", err=True)
        return 130
    except BrokenPipeError:
        # stdout went away (`umeter … | head`): stop quietly, and keep Python from complaining
        # about the pipe again when it flushes at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as e:
        if state.verbose > 0:
            raise
        click.echo(os_error_line(e), err=True)
        return 1
    except sqlite3.Error as e:
        if state.verbose > 0:
            raise
        click.echo(f"umeter: error: database: {e} — check the database path (an SQLite file)", err=True)
        return 1
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
