"""`umeter vboard start --board NAME [--count N]`: virtual boards (the firmware on the unix port
behind a pty) that mpremote, pyboard.py and `umeter` talk to as to USB boards."""

from __future__ import annotations

import json
import signal
import tempfile
from pathlib import Path

import click

from .. import ui


@click.group("vboard")
def command() -> None:
    """Virtual boards for development and CI."""


@command.command("start")
@click.option("--board", default="sim", show_default=True, help="Board definition (boards/NAME.json).")
@click.option("-n", "--count", default=1, show_default=True, type=int, help="How many boards.")
@click.option("--dir", "base", type=click.Path(file_okay=False), help="Keep their flash and state here [a temp dir].")
@click.option("--tcp", is_flag=True, help="Also listen on socket://127.0.0.1:PORT per board.")
@click.option("--json", "as_json", is_flag=True, help="One JSON line per board instead of the bare pty path.")
def start(board: str, count: int, base: str | None, tcp: bool, as_json: bool) -> None:
    """Start COUNT virtual boards; prints each pty path first (one per line), runs until Ctrl-C."""
    from umeter_hil.vboard import start_many

    tmp = None
    if base is None:
        tmp = tempfile.TemporaryDirectory(prefix="umeter-vboard-")
        base = tmp.name
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    vbs = start_many(Path(base), board, count, tcp=tcp)
    try:
        for vb in vbs:
            if as_json:
                info = {"port": vb.port, "url": vb.url, "uid": vb.uid.hex(), "flash": str(vb.flash), "board": board}
                click.echo(json.dumps(info))
            else:
                click.echo(vb.port + (f" {vb.url}" if vb.tcp_port else ""))
        ui.info(f"{count} virtual {board} board(s) running; flash under {base}. Ctrl-C to stop.")
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        for vb in vbs:
            vb.stop()
        if tmp:
            tmp.cleanup()
        ui.info("stopped")
