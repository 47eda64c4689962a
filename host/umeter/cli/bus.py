"""`umeter bus`: discovery on a meter bus."""

from __future__ import annotations

import json

import click

from .. import ui
from ..errors import ConfigError


@click.group("bus")
def command() -> None:
    """Meter buses (DL/T 645, CJ/T 188, M-Bus, Modbus RTU): find the meters on them."""


@command.command("scan")
@click.option("--port", default=None, metavar="PORT", help="A board's serial port (raw REPL).")
@click.option("--board", "board", default=None, metavar="virtual", help="'virtual': the sim board's simulated meters.")
@click.option("--protocol", "protocols", default="645,188,mbus,modbus", show_default=True, help="Protocols to scan.")
@click.option("--json", "as_json", is_flag=True, help="One JSON list of what answered.")
def scan(port: str | None, board: str | None, protocols: str, as_json: bool) -> None:
    """Find the meters that answer: DL/T 645 address read and probes, CJ/T 188 wildcard
    address read, M-Bus primary scan and secondary search, Modbus ids 1-10."""
    from ..bus import scan_virtual

    want = tuple(p.strip() for p in protocols.split(",") if p.strip())
    bad = [p for p in want if p not in ("645", "188", "mbus", "modbus")]
    if bad:
        raise ConfigError(f"unknown protocol {bad[0]!r}", hint="choose from 645, 188, mbus, modbus")
    if port is not None:
        raise ConfigError(
            f"scanning the bus of the board on {port} is not built yet",
            hint="use --board virtual, or configure the meters in the node's config.gateway",
        )
    if board != "virtual":
        raise ConfigError("give --board virtual or --port PORT", hint="e.g. umeter bus scan --board virtual")
    found = scan_virtual(want)
    if as_json:
        click.echo(json.dumps(found))
        return
    for f in found:
        click.echo(f"{f['protocol']:<7} {f['address']!s:<16} {f['meter']}")
    ui.info(f"{len(found)} meters answered on the virtual buses.")
