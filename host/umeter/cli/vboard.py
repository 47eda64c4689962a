"""`umeter vboard start --board NAME [--count N]`: virtual boards (the firmware on the unix port
behind a pty) that mpremote, pyboard.py and `umeter` talk to as to USB boards."""

from __future__ import annotations

import json
import signal
import tempfile
from pathlib import Path

import click

from umeter_hil.board_shim.norflash import GEOMETRY

from .. import ui
from ..errors import ConfigError


@click.group("vboard")
def command() -> None:
    """Virtual boards for development and CI."""


@command.command("start")
@click.option("--board", default="sim", show_default=True, help="Board definition (boards/NAME.json).")
@click.option("-n", "--count", default=1, show_default=True, type=click.IntRange(1, 64), help="How many boards.")
@click.option(
    "--dir", "base", type=click.Path(file_okay=False), help="Keep their flash and state here [a temp dir; "
    "with --provision $UMETER_HOME/vboards]."
)  # fmt: skip
@click.option(
    "--tcp", is_flag=True, help="Also listen on socket://127.0.0.1:PORT per board (wants the token printed)."
)
@click.option("--insecure", is_flag=True, help="No token on the TCP listener (any local user gets the REPL).")
@click.option("--romfs", metavar="SIZE", help="Give each board a ROMFS partition of SIZE (e.g. 256k).")
@click.option(
    "--flash",
    type=click.Choice(list(GEOMETRY)),
    help="Give each board that board's flash: a real LittleFS of its size and settings at / (in its "
    "state/flash.img) instead of a host directory.",
)
@click.option("--provision", "do_provision", is_flag=True, help="Provision each board so its node runs (see below).")
@click.option(
    "--inventory",
    type=click.Path(dir_okay=False),
    help="With --provision: the nodes of this inventory, one board each (ports are the boards').",
)
@click.option(
    "--broker", default=None, metavar="mqtt://HOST:PORT", help="With --provision: the nodes' broker [an embedded one]."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON line per board instead of the bare pty path.")
def start(
    board: str,
    count: int,
    base: str | None,
    tcp: bool,
    insecure: bool,
    romfs: str | None,
    flash: str | None,
    do_provision: bool,
    inventory: str | None,
    broker: str | None,
    as_json: bool,
) -> None:
    """Start COUNT virtual boards; prints each pty path first (one per line), runs until Ctrl-C.

    With --provision each board is provisioned as `umeter provision` does a real one and its
    node runs: vnode-01, vnode-02, … (or the devices of --inventory), publishing to --broker or
    an embedded broker. `umeter logs vnode-01` follows a node's console; mpremote still works.
    """
    if (inventory or broker) and not do_provision:
        raise ConfigError("--inventory and --broker go with --provision", hint="add --provision")
    if insecure and (not tcp or do_provision):
        raise ConfigError("--insecure goes with --tcp, without --provision", hint="drop --insecure")
    for opt, val in (("--romfs", romfs), ("--flash", flash)):
        if val and do_provision:
            raise ConfigError(f"{opt} goes without --provision", hint="start the boards, then umeter provision them")
    if do_provision:
        _start_nodes(board, count, base, tcp, inventory, broker, as_json)
        return
    from umeter_hil.vboard import start_many

    tmp = None
    if base is None:
        tmp = tempfile.TemporaryDirectory(prefix="umeter-vboard-")
        base = tmp.name
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        vbs = start_many(Path(base), board, count, tcp=tcp, insecure=insecure, romfs=romfs, flash=flash)
    except BaseException:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
        if tmp:
            tmp.cleanup()
        raise
    try:
        for vb in vbs:
            if as_json:
                where = str(vb.state / "flash.img") if flash else str(vb.flash)
                info = {"port": vb.port, "url": vb.url, "uid": vb.uid.hex(), "flash": where, "board": board}
                click.echo(json.dumps(info))
            else:
                click.echo(vb.port + (f" {vb.url}" if vb.tcp_port else ""))
        ui.info(f"{ui.plural(count, 'virtual ' + board + ' board')} running; flash under {base}. Ctrl-C to stop.")
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        for vb in vbs:
            vb.stop()
        if tmp:
            tmp.cleanup()
        ui.info("stopped")


def _start_nodes(
    board: str, count: int, base: str | None, tcp: bool, inventory: str | None, broker: str | None, as_json: bool
) -> None:
    from ..vnodes import PROVISIONED_HEAP, VNodes

    vn = VNodes(board=board, count=count, inventory=inventory, broker_url=broker, base=base, tcp=tcp)
    vn.plan()  # a bad inventory or board fails here, before boards, broker or build start
    ui.info(f"Building the firmware and provisioning the virtual boards ({PROVISIONED_HEAP} heap each)…")
    with vn:  # Ctrl-C while it builds or provisions stops the boards again
        for d, vb, r in zip(vn.devices, vn.boards, vn.reports, strict=True):
            if as_json:
                info = {
                    "port": vb.port, "url": vb.url, "uid": vb.uid.hex(), "flash": str(vb.flash), "board": d.board,
                    "node": d.name, "broker": f"mqtt://{d.mqtt['host']}:{d.mqtt.get('port', 1883)}",
                }  # fmt: skip
                click.echo(json.dumps(info))
            else:
                click.echo(f"{vb.port} {d.name}" + (f" {vb.url}" if vb.tcp_port else ""))
            ui.info(r.line())
        where = vn.broker or "the inventory's broker"
        ui.info(
            f"{ui.plural(len(vn.boards), 'node')} running on virtual boards, publishing to {where}. "
            f"Follow one: umeter logs {vn.devices[0].name}; Ctrl-C stops them."
        )
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    ui.info("stopped")
