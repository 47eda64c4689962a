"""`umeter provision INVENTORY`: identity, keys, calibration, config and firmware for every board
of an inventory, in parallel, with safe writes; a progress bar per device and a summary table."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn
from rich.table import Table

from .. import ui
from ..errors import DeviceError
from ..inventory import load_inventory
from ..provision import provision


@click.command("provision")
@click.argument("inventory", type=click.Path(dir_okay=False))
@click.option("-j", "--jobs", default=8, show_default=True, type=int, help="Boards provisioned at once.")
@click.option("--build", "build_dir", type=click.Path(file_okay=False, exists=True),
              help="Use this build (from `umeter build`) for every device instead of building.")  # fmt: skip
@click.option(
    "--reset/--no-reset", default=True, show_default=True, help="Reset each board afterwards so the node starts."
)
@click.option("--only", multiple=True, help="Only these node names (repeatable).")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for a board per operation.")
@click.option("--json", "as_json", is_flag=True, help="Print the reports as JSON.")
def command(
    inventory: str, jobs: int, build_dir: str | None, reset: bool, only: tuple[str, ...], timeout: float, as_json: bool
) -> None:
    """Provision the boards listed in INVENTORY (TOML; see docs/fleet.md)."""
    devs = load_inventory(inventory)
    if only:
        unknown = set(only) - {d.name for d in devs}
        if unknown:
            raise click.BadParameter(f"not in the inventory: {', '.join(sorted(unknown))}", param_hint="--only")
        devs = [d for d in devs if d.name in only]
    dirs = {d.board: Path(build_dir) for d in devs} if build_dir else None
    lock = threading.Lock()
    live = ui.is_tty() and not as_json
    bars = Progress(
        TextColumn("{task.fields[node]:<16}"), BarColumn(), DownloadColumn(), TextColumn("{task.fields[stage]}"),
        console=ui.err, disable=not live,
    )  # fmt: skip
    tasks = {d.name: bars.add_task("", total=None, node=d.name, stage="waiting") for d in devs}
    last_stage: dict[str, str] = {}

    def progress(node: str, stage: str, done: int, total: int) -> None:
        with lock:
            if live:
                bars.update(tasks[node], completed=done, total=total or None, stage=stage.rsplit("/", 1)[-1])
            elif stage in ("connect", "verify", "done") and last_stage.get(node) != stage:
                ui.info(f"{node}: {stage}")
            last_stage[node] = stage

    with bars:
        reports = provision(devs, build_dirs=dirs, jobs=jobs, progress=progress, reset=reset, timeout=timeout)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in reports], indent=1))
    else:
        t = Table(title=None, show_edge=False)
        for col in ("node", "port", "unique id", "written", "skipped", "KiB", "s", "result"):
            t.add_column(col, justify="right" if col in ("written", "skipped", "KiB", "s") else "left", no_wrap=True)
        for r in reports:
            t.add_row(
                r.node, r.port, r.uid or "-", str(r.written), str(r.skipped), f"{r.bytes / 1024:.1f}",
                f"{r.seconds:.1f}", "verified" if r.status == "ok" else "FAILED",
            )  # fmt: skip
        _table_console().print(t)
        for r in reports:
            if r.status != "ok":
                click.echo(f"{r.node}: {r.error}", err=True)
            elif r.heap_short:  # provisioned, but its configuration will not fit the board's heap
                click.echo(f"{r.node}: WARNING: heap: {r.heap}", err=True)
            if r.status == "ok" and r.frozen:  # where the package is: not in the files counted above
                ui.info(f"{r.node}: package frozen into the firmware (umeter {r.frozen}); configuration written")
            elif r.status == "ok" and r.romfs:
                ui.info(f"{r.node}: ROMFS: {r.romfs}")
        ok = sum(r.status == "ok" for r in reports)
        written = sum(r.written for r in reports if r.status == "ok")
        verified = "all written files verified" if ok else "nothing verified"
        ui.info(f"Provisioned {ok} of {ui.plural(len(reports), 'board')}; {ui.plural(written, 'file')} written, "
                f"{sum(r.bytes for r in reports if r.status == 'ok') / 1024:.1f} KiB; {verified}.")  # fmt: skip
    failed = [r.node for r in reports if r.status != "ok"]
    if failed:
        raise DeviceError(
            f"{len(failed)} of {len(reports)} boards not provisioned ({', '.join(failed)})",
            hint="fix the errors above and run again: finished files are skipped",
        )


def _table_console():
    """Tables at their natural width when stdout is not a terminal (rich would assume 80)."""
    import sys

    from rich.console import Console

    return ui.out if ui.is_tty() else Console(file=sys.stdout, width=240, no_color=True, highlight=False)
