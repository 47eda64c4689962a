"""`umeter logs NODE|PORT`: follow a node's console, like `esphome logs`.

NODE is a node of a running `umeter sim` (its console.log) or of the fleet inventory (the port
it was provisioned on); PORT is a serial port, a virtual board's pty or a socket:// URL, read
through mpremote's serial transport without sending anything, so the node keeps running."""

from __future__ import annotations

import os
import time

import click

from .. import console, ui
from ..errors import ConfigError


def resolve(target: str) -> tuple[str, str]:
    """('file', path) for a `umeter sim` node, ('port', device) for a board."""
    if "://" in target or target.startswith("/dev/") or os.path.exists(target):
        if os.path.isfile(target):
            return "file", target  # a console.log kept with --keep
        return "port", target
    consoles = console.registered()
    if target in consoles:
        return "file", str(consoles[target])
    from ..inventory import Fleet

    n = Fleet().get(target)
    if n is not None:
        if not n.get("port"):
            raise ConfigError(f"node {target!r} has no port in the fleet", hint="give its port: umeter logs PORT")
        if n["port"].startswith("/dev/pts/"):
            # a virtual board's pty: once its `umeter vboard start` stopped, the number may
            # belong to another program
            raise ConfigError(
                f"node {target!r} was provisioned on a virtual board ({n['port']}) that is not running",
                hint="start it again: umeter vboard start --provision",
            )
        return "port", n["port"]
    running = ", ".join(sorted(consoles)) or "none running"
    raise ConfigError(
        f"no node or port {target!r}",
        hint=f"give a node of a running `umeter sim` ({running}), a node from `umeter fleet ls`, or a serial port",
    )


@click.command("logs")
@click.argument("target", metavar="NODE|PORT")
@click.option("-n", "--lines", default=20, show_default=True, type=click.IntRange(0), help="Earlier lines first.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), metavar="S", help="Stop after S seconds.")
@click.option("--errors", "only_errors", is_flag=True, help="Only lines that report a failure.")
def command(target: str, lines: int, duration: float | None, only_errors: bool) -> None:
    """Follow a node's console (Ctrl-C stops): a `umeter sim` node by name, a provisioned node
    by name, or a board's serial port / virtual board pty. Nothing is sent to the board."""
    kind, where = resolve(target)
    deadline = None if duration is None else time.monotonic() + duration

    def stop() -> bool:
        return deadline is not None and time.monotonic() >= deadline

    ui.info(f"Console of {target} ({where}); Ctrl-C stops.")
    if kind == "file":
        stream = console.follow_file(where, lines=lines, stop=stop)
    else:
        stream = console.follow_port(where, stop=stop)
    try:
        for line in stream:
            if only_errors and not console.is_error(line):
                continue
            style = "red" if console.is_error(line) else None
            ui.out.print(line, markup=False, highlight=False, soft_wrap=True, style=style)
    except KeyboardInterrupt:
        pass
