"""`umeter flash --port PORT --image FILE`: MicroPython onto an ESP32 (esptool API) or an
RP2040 (BOOTSEL + UF2 copy)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .. import ui
from ..flash import flash_esp32, flash_rp2040, which_chip


class Address(click.ParamType):
    """A flash address: decimal or 0x hex."""

    name = "address"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            n = int(value, 0)
        except ValueError:
            self.fail(f"{value!r} is not an address (e.g. 0x1000 or 4096)", param, ctx)
        if n < 0:
            self.fail(f"{value!r} is negative", param, ctx)
        return n


@click.command("flash")
@click.option("--port", help="Serial port of the board (RP2040: omit if it already is in BOOTSEL).")
@click.option(
    "--image", required=True, type=click.Path(dir_okay=False), help="MicroPython image: .bin (ESP32) or .uf2 (RP2040)."
)
@click.option("--chip", default=None, help="esp32, esp32s3, esp32c3, ... or rp2040 [from the image's extension].")
@click.option(
    "--offset",
    type=Address(),
    default=None,
    metavar="ADDR",
    help="ESP32 flash offset, e.g. 0x1000 [the chip's bootloader offset].",
)
@click.option("--baud", default=460800, show_default=True, help="ESP32 flashing baud rate.")
@click.option("--drive", type=click.Path(file_okay=False), help="RP2040: the mounted RPI-RP2 drive [auto].")
@click.option("--json", "as_json", is_flag=True)
def command(
    port: str | None, image: str, chip: str | None, offset: int | None, baud: int, drive: str | None, as_json: bool
) -> None:
    """Flash a MicroPython image onto a board, then verify it."""
    chip = chip or which_chip(Path(image))
    if chip.lower() == "rp2040":
        res = flash_rp2040(port, image, drive=drive)
    else:
        if not port:
            raise click.UsageError("--port is required for an ESP32")
        res = flash_esp32(port, image, chip=chip, offset=offset, baud=baud, log=ui.debug)
    if as_json:
        click.echo(json.dumps(res.__dict__))
    else:
        ui.out.print(res.line(), markup=False)
