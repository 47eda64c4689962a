"""`umeter export KIND --db DB`: load profiles, daily and monthly freezes or events out of the
store `umeter monitor` / `umeter sim --db` filled, as CSV (or JSON lines) for billing."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import click

from .. import ui
from ..errors import ConfigError
from ..export import KINDS, export


def _known_offsets() -> dict[str, int]:
    """The billing offsets the fleet database knows (provisioned, or said by `umeter fleet
    health`); none when this host has no fleet database."""
    from ..inventory import Fleet
    from ..keystore import home

    path = home() / "fleet.sqlite"
    return Fleet(path).offsets() if path.is_file() else {}


@click.command("export")
@click.argument("kind", type=click.Choice(KINDS))
@click.option("--db", required=True, help="The store: an SQLite file or postgresql://USER@HOST/DB.")
@click.option("--node", "nodes", multiple=True, help="Only this node (repeatable; default: every node).")
@click.option("--from", "since", help="Records at or after: a date, an ISO time (local unless it says), UNIX s.")
@click.option("--to", "until", help="Records before: as --from.")
@click.option(
    "--utc-offset-min",
    type=int,
    help="The nodes' billing offset (default: read from the freezes, told apart by the fleet database where a "
    "midnight fits two, e.g. UTC+14 and UTC-10).",
)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here (default stdout).")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of CSV.")
@click.option("--strict", is_flag=True, help="Exit 1 if a record is missing or a row has no interval energy.")
def command(kind, db, nodes, since, until, utc_offset_min, output, as_json, strict) -> None:
    """Write the nodes' KIND records (profile, daily, monthly, events) as CSV.

    \b
    profile  each interval: start, end, kWh imported and exported in it, the registers,
             V / A / W avg, min, max
    daily    each billing day that ended (local): its kWh, the registers, water and gas
    monthly  each billing month: its kWh, the registers, the maximum demand and when
    events   time, code, name, argument, text

    Energy is exact (the registers' mWh as kWh). A row whose interval does not follow the one
    before (a reboot, a missing record, the first exported) has no interval energy and says
    why; a missing record is also named on stderr.
    """
    from ..store import is_url, open_store
    from ..when import parse_when

    if not is_url(db) and not Path(db).is_file():
        raise ConfigError(f"no store at {db}", hint="the file `umeter monitor --db` or `umeter sim --db` wrote")
    t0 = parse_when(since) if since else None
    t1 = parse_when(until) if until else None
    store = open_store(db, consumer="export")
    try:
        table = export(store, kind, list(nodes) or None, t0, t1, utc_offset_min, _known_offsets())
    finally:
        store.close()
    f = output.open("w", newline="") if output else sys.stdout
    try:
        if as_json:
            for r in table.rows:
                f.write(json.dumps(dict(zip(table.header, r, strict=True))) + "\n")
        else:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(table.header)
            w.writerows(table.rows)
    finally:
        if output:
            f.close()
        else:
            f.flush()
    for note in table.notes:
        ui.info(f"note: {note}")
    for warning in table.warnings:
        ui.info(f"warning: {warning}")
    where = f" to {output}" if output else ""
    n = len({r[0] for r in table.rows})
    ui.info(
        f"{ui.plural(len(table.rows), {'events': 'event'}.get(kind, kind + ' row'))} of {ui.plural(n, 'node')}{where}"
        + (f"; {table.incomplete} without interval energy (see status)" if table.incomplete else "")
    )
    if strict and (table.warnings or table.incomplete):
        raise ConfigError(
            f"{len(table.warnings)} missing-record warning(s), {table.incomplete} row(s) without interval energy",
            hint="--strict: resend what is missing (the node does it when asked), or export without --strict",
        )
