"""`umeter fleet ls|show|ports|forget`: the fleet database (never shows secrets)."""

from __future__ import annotations

import json
import time

import click
from rich.table import Table

from .. import ui
from ..errors import ConfigError
from ..fleet import ports
from ..inventory import Fleet
from ..keystore import Keystore


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


@click.group("fleet")
def command() -> None:
    """The fleet inventory: provisioned nodes keyed by their board's unique id."""


@command.command("ls")
@click.option("--json", "as_json", is_flag=True)
def ls(as_json: bool) -> None:
    """List provisioned nodes."""
    nodes = Fleet().nodes()
    if as_json:
        click.echo(json.dumps(nodes, indent=1))
        return
    t = Table(show_edge=False)
    for col in ("node", "site", "board", "unique id", "version", "status", "provisioned"):
        t.add_column(col, no_wrap=True)
    for n in nodes:
        t.add_row(
            n["node_id"], n["site"], n["board"], n["uid"], n["version"] or "-", n["status"], _when(n["provisioned_at"])
        )
    _table_console().print(t)
    ui.info(f"{len(nodes)} node(s) in {Fleet().path}")


@command.command("show")
@click.argument("node")
@click.option("--json", "as_json", is_flag=True)
def show(node: str, as_json: bool) -> None:
    """One node by name or unique id (its keys stay in the keystore)."""
    n = Fleet().get(node)
    if n is None:
        raise ConfigError(f"no node {node!r} in the fleet", hint="see `umeter fleet ls`")
    n["keys"] = "in keystore" if Keystore().get(n["node_id"]) else "none"
    if as_json:
        click.echo(json.dumps(n, indent=1))
        return
    for k in (
        "node_id",
        "uid",
        "site",
        "board",
        "port",
        "serial",
        "version",
        "manifest_sha256",
        "files",
        "status",
        "keys",
    ):
        ui.out.print(f"{k:>16}  {n[k] if n[k] is not None else '-'}", markup=False)
    ui.out.print(f"{'first_seen':>16}  {_when(n['first_seen'])}", markup=False)
    ui.out.print(f"{'provisioned_at':>16}  {_when(n['provisioned_at'])}", markup=False)


@command.command("ports")
@click.option("--json", "as_json", is_flag=True)
def ports_cmd(as_json: bool) -> None:
    """Serial ports and their USB serial numbers (for `serial = ...` in an inventory)."""
    ps = ports()
    if as_json:
        click.echo(json.dumps(ps, indent=1))
        return
    for p in ps:
        ui.out.print(f"{p['port']:<20} {p['serial']:<20} {p['vid_pid']:<10} {p['description']}", markup=False)
    ui.info(f"{len(ps)} serial port(s)")


@command.command("forget")
@click.argument("node")
def forget(node: str) -> None:
    """Remove a node from the fleet database (its board may then be bound to another name)."""
    if not Fleet().forget(node):
        raise ConfigError(f"no node {node!r} in the fleet", hint="see `umeter fleet ls`")
    ui.info(f"Forgot {node}.")


def _table_console():
    """Tables at their natural width when stdout is not a terminal (rich would assume 80)."""
    import sys

    from rich.console import Console

    return ui.out if ui.is_tty() else Console(file=sys.stdout, width=240, no_color=True, highlight=False)
