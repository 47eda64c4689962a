"""`umeter build --board NAME`: compile the firmware for a board (mpy-cross, per architecture)."""

from __future__ import annotations

import json

import click

from .. import ui
from ..build import build


@click.command("build")
@click.option("--board", "board", required=True, help="Board definition name (boards/NAME.json).")
@click.option("-o", "--out", type=click.Path(file_okay=False), help="Output directory [build/BOARD].")
@click.option("--firmware", type=click.Path(file_okay=False, exists=True), help="Firmware dir [the repository's].")
@click.option("-O", "opt", type=click.IntRange(0, 3), default=None, help="mpy-cross optimisation level.")
@click.option("--arch", default=None, help="mpy-cross arch instead of the board's (sim: the local unix port's).")
@click.option("--romfs", is_flag=True, help="Also write romfs.img: the package as a ROMFS image (docs/memory.md).")
@click.option(
    "--manifest", "freeze", is_flag=True, help="Also write manifest.py + frozen/ to freeze the package into firmware."
)
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def command(
    board: str, out: str | None, firmware: str | None, opt: int | None, arch: str | None, romfs: bool, freeze: bool,
    as_json: bool,
) -> None:  # fmt: skip
    """Compile the firmware for BOARD into a filesystem image with a manifest."""

    def progress(done: int, total: int, name: str) -> None:
        ui.debug(f"[{done}/{total}] {name}")

    res = build(board, out, src=firmware, opt=opt, progress=progress, arch=arch, romfs=romfs, freeze=freeze)
    if as_json:
        click.echo(json.dumps(res.manifest(), indent=1, sort_keys=True))
        return
    ui.out.print(
        f"Built {len(res.files)} files ({res.total_bytes / 1024:.1f} KiB) for {board} ({res.arch}) "
        f"in {res.out} in {res.seconds:.1f} s; version {res.version}.",
        markup=False,
    )
    if res.romfs:
        ui.out.print(f"ROMFS image {res.out / res.romfs['file']} ({res.romfs['size'] / 1024:.1f} KiB).", markup=False)
    if res.freeze_manifest:
        ui.out.print(f"Freeze manifest {res.freeze_manifest} (see its first lines).", markup=False)
