"""`umeter bus`: discovery on a meter bus."""

from __future__ import annotations

import json

import click

from .. import ui
from ..errors import ConfigError


@click.group("bus")
def command() -> None:
    """Meter buses (DL/T 645, CJ/T 188, M-Bus, Modbus RTU): find the meters on them."""


def _range(text: str, what: str, lo: int, hi: int) -> tuple[int, int]:
    a, _, b = text.partition("-")
    try:
        r = (int(a), int(b or a))
    except ValueError:
        raise ConfigError(f"{what} {text!r} is not LO-HI", hint=f"e.g. {lo}-{hi}") from None
    if not lo <= r[0] <= r[1] <= hi:
        raise ConfigError(f"{what} {text!r} is outside {lo}-{hi}", hint=f"e.g. {lo}-{hi}")
    return r


@command.command("scan")
@click.option("--port", default=None, metavar="PORT", help="A board's serial port (raw REPL): scan its own buses.")
@click.option("--board", "board", default=None, metavar="virtual", help="'virtual': the sim board's simulated meters.")
@click.option("--protocol", "protocols", default="645,188,mbus,modbus", show_default=True, help="Protocols to scan.")
@click.option("--bus", "buses", multiple=True, metavar="NAME", help="Only this bus of the board (repeatable).")
@click.option("--probe", multiple=True, metavar="ADDR", help="DL/T 645 address to probe (12 digits, repeatable).")
@click.option("--modbus-ids", default="1-10", show_default=True, metavar="LO-HI", help="Modbus ids to try.")
@click.option("--mbus-primary", default=None, metavar="LO-HI",
              help="M-Bus primary addresses to try [default: 0-250; 0-10 on the virtual board].")
@click.option("--timeout-ms", default=200, show_default=True, type=click.IntRange(20, 5000),
              help="Wait for each answer.")
@click.option("--json", "as_json", is_flag=True, help="One JSON list of what answered.")
def scan(port: str | None, board: str | None, protocols: str, buses: tuple[str, ...], probe: tuple[str, ...],
         modbus_ids: str, mbus_primary: str | None, timeout_ms: int, as_json: bool) -> None:
    """Find the meters that answer: DL/T 645 address read and probes (the configured meters'
    addresses and --probe), CJ/T 188 wildcard address read, M-Bus primary scan and secondary
    search (on buses with the M-Bus profile), Modbus ids (--modbus-ids and the configured ones).

    With --port the board soft-resets into its raw REPL (the node stops) and scans the buses
    of its board.json with config.json's settings; reset it afterwards to run the node again."""
    from .. import bus as buslib

    want = tuple(p.strip() for p in protocols.split(",") if p.strip())
    bad = [p for p in want if p not in buslib.ALL]
    if bad:
        raise ConfigError(f"unknown protocol {bad[0]!r}", hint="choose from 645, 188, mbus, modbus")
    lo, hi = _range(modbus_ids, "--modbus-ids", 1, 247)
    ids = tuple(range(lo, hi + 1))
    if port is not None:
        if board is not None:
            raise ConfigError("give --port or --board, not both", hint="--port for a board, --board virtual: the sim")
        res = buslib.scan_port(port, want, probe=probe, ids=ids, primary=_range(mbus_primary or "0-250",
                               "--mbus-primary", 0, 250), timeout_ms=timeout_ms, buses=buses)
        where = f"the buses of the board on {port}"
    elif board == "virtual":
        res = buslib.scan_virtual(want, timeout_ms, _range(mbus_primary or "0-10", "--mbus-primary", 0, 250), ids)
        where = "the virtual buses"
    else:
        raise ConfigError("give --board virtual or --port PORT", hint="e.g. umeter bus scan --board virtual")
    for e in res["errors"]:
        ui.info(f"warning: bus {e}")
    found = res["found"]
    if as_json:
        click.echo(json.dumps(found))
    else:
        for f in found:
            click.echo(f"{f['bus']:<8} {f['protocol']:<7} {f['address']!s:<16} {f['meter']}")
        ui.info(f"{len(found)} meters answered on {where} ({res['requests']} requests).")
    if not res["scanned"]:
        raise ConfigError(
            f"no bus could be scanned ({res['errors'][0]})", hint="check board.json buses and config.gateway"
        )
