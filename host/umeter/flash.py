"""`umeter flash`: put a MicroPython image on a board.

- ESP32 family: esptool's Python API (v5): detect the chip, refuse a different chip than asked
  for, read the base MAC (the same value MicroPython returns from machine.unique_id()), write
  the user's image at the chip's bootloader offset with compression (esptool re-reads an MD5
  of the written region: verified), hard-reset.
- RP2040: the running MicroPython enters BOOTSEL (machine.bootloader()), the RPI-RP2 USB drive
  appears, the UF2 is copied to it and synced; the board reboots into the new image.

Errors are one line with a hint: no such port, port busy, no ESP bootloader answering, wrong
chip, not an image for this chip, no RPI-RP2 drive.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, DeviceError
from .transport import Board, check_not_busy, resolve_port

ESP_IMAGE_MAGIC = 0xE9
UF2_MAGIC0, UF2_MAGIC1, UF2_MAGIC_END = 0x0A324655, 0x9E5D5157, 0x0AB16F30
UF2_FAMILY_RP2040 = 0xE48BFF56
UF2_FLAG_FAMILY = 0x2000


@dataclass
class FlashResult:
    port: str
    chip: str
    mac: str = ""
    bytes: int = 0
    seconds: float = 0.0
    verified: bool = False

    def line(self) -> str:
        ident = f" (MAC {self.mac})" if self.mac else ""
        return (
            f"Flashed {self.bytes / 1024:.1f} KiB to {self.chip}{ident} on {self.port} in {self.seconds:.1f} s; "
            f"{'verified' if self.verified else 'not verified'}."
        )


def check_esp_image(path: Path) -> bytes:
    if not path.exists():
        raise ConfigError(f"image {path} does not exist", hint="download one from micropython.org/download")
    data = path.read_bytes()
    if len(data) < 64 or data[0] != ESP_IMAGE_MAGIC:
        raise ConfigError(f"{path} is not an ESP32 firmware image (no 0xE9 header)", hint="use the .bin for your chip")
    return data


def _norm(chip: str) -> str:
    return chip.lower().replace("-", "").replace("_", "")


def check_chip(found: str, expected: str | None) -> None:
    """DeviceError if the detected chip (esptool CHIP_NAME, e.g. 'ESP32-S3') is not the expected one."""
    if expected and _norm(expected) != "auto" and _norm(found) != _norm(expected):
        raise DeviceError(
            f"the board is an {found}, not an {expected.upper()}",
            hint="pick the image and --chip for this chip, or plug in the right board",
        )


def flash_esp32(
    port: str,
    image: str | os.PathLike[str],
    *,
    chip: str = "esp32",
    offset: int | None = None,
    baud: int = 460800,
    connect_attempts: int = 3,
    log: Callable[[str], None] | None = None,
) -> FlashResult:
    """Flash an ESP32-family board through esptool's API. HIL: needs a real board."""
    from esptool.cmds import attach_flash, detect_chip, reset_chip, run_stub, write_flash
    from esptool.util import FatalError

    data = check_esp_image(Path(image))
    dev = resolve_port(port)
    check_not_busy(dev)
    t0 = time.monotonic()
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter), detect_chip(port=dev, connect_attempts=connect_attempts) as esp:
            check_chip(esp.CHIP_NAME, chip)
            mac = ":".join(f"{b:02x}" for b in esp.read_mac("BASE_MAC"))
            esp = run_stub(esp)
            if baud and baud != esp.ESP_ROM_BAUD:
                esp.change_baud(baud)
            attach_flash(esp)
            at = offset if offset is not None else getattr(esp, "BOOTLOADER_FLASH_OFFSET", 0x1000)
            write_flash(esp, [(at, str(image))], flash_mode="keep", flash_size="keep", compress=True)
            reset_chip(esp, "hard-reset")
    except FatalError as e:
        first = str(e).strip().splitlines()[0]
        if "Failed to connect" in first:
            raise DeviceError(
                f"no ESP bootloader answered on {dev} ({first.split(':', 1)[-1].strip()})",
                hint="is it an ESP32? hold BOOT while pressing EN, or check the port",
            ) from None
        raise DeviceError(f"esptool on {dev}: {first}", hint="run again; try a lower --baud") from None
    finally:
        if log:
            for line in chatter.getvalue().splitlines():
                log(line)
    return FlashResult(
        port=dev, chip=esp.CHIP_NAME, mac=mac, bytes=len(data), seconds=time.monotonic() - t0, verified=True
    )


def check_uf2(path: Path, family: int = UF2_FAMILY_RP2040) -> bytes:
    """The UF2 file's bytes; ConfigError unless every block is a valid UF2 block for `family`."""
    if not path.exists():
        raise ConfigError(f"image {path} does not exist", hint="download the .uf2 from micropython.org/download")
    data = path.read_bytes()
    if not data or len(data) % 512:
        raise ConfigError(f"{path} is not a UF2 file (size {len(data)} is not a multiple of 512)", hint="use the .uf2")
    for off in range(0, len(data), 512):
        m0, m1, flags = struct.unpack_from("<III", data, off)
        fam = struct.unpack_from("<I", data, off + 28)[0]
        end = struct.unpack_from("<I", data, off + 508)[0]
        if (m0, m1, end) != (UF2_MAGIC0, UF2_MAGIC1, UF2_MAGIC_END):
            raise ConfigError(f"{path} is not a UF2 file (bad magic in block {off // 512})", hint="use the .uf2")
        if flags & UF2_FLAG_FAMILY and fam != family:
            raise ConfigError(
                f"{path} is for UF2 family 0x{fam:08x}, not the RP2040 (0x{family:08x})", hint="use the RP2040 .uf2"
            )
    return data


def find_rp2_drive(roots: list[Path] | None = None) -> Path | None:
    """A mounted RPI-RP2 BOOTSEL drive (its INFO_UF2.TXT names the RP2 bootloader)."""
    cands: list[Path] = []
    if roots is None:
        with contextlib.suppress(OSError), open("/proc/mounts") as f:
            cands = [Path(line.split()[1].replace("\\040", " ")) for line in f]
    else:
        cands = roots
    for c in cands:
        info = c / "INFO_UF2.TXT"
        with contextlib.suppress(OSError):
            if info.exists() and "RPI-RP2" in info.read_text(errors="replace"):
                return c
    return None


def flash_rp2040(
    port: str | None,
    image: str | os.PathLike[str],
    *,
    drive: str | os.PathLike[str] | None = None,
    timeout: float = 15.0,
) -> FlashResult:
    """Enter BOOTSEL through MicroPython on `port` (skip with port=None if the board already is in
    BOOTSEL), wait for the RPI-RP2 drive, copy the UF2 and sync. HIL for real boards."""
    data = check_uf2(Path(image))
    t0 = time.monotonic()
    shown = port or "BOOTSEL"
    if port:
        dev = resolve_port(port)
        with Board(dev, timeout=5) as b:
            shown = dev
            with contextlib.suppress(Exception):
                b._t.exec_raw_no_follow("import machine, time\ntime.sleep_ms(100)\nmachine.bootloader()")
    roots = [Path(drive)] if drive else None
    deadline = time.monotonic() + timeout
    target = None
    while target is None:
        target = find_rp2_drive(roots)
        if target is None:
            if time.monotonic() > deadline:
                raise DeviceError(
                    f"no RPI-RP2 drive appeared within {timeout:g} s",
                    hint="mount it (udisksctl mount -b /dev/sdX1) and pass --drive, or hold BOOTSEL while plugging in",
                )
            time.sleep(0.2)
    dst = target / Path(image).name
    with open(dst, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return FlashResult(port=shown, chip="RP2040", bytes=len(data), seconds=time.monotonic() - t0, verified=False)


def which_chip(image: Path) -> str:
    """'rp2040' for a .uf2, 'esp32' for a .bin (the family esptool then detects)."""
    if image.suffix.lower() == ".uf2":
        return "rp2040"
    if image.suffix.lower() == ".bin":
        return "esp32"
    raise ConfigError(f"cannot tell the chip from {image.name}", hint="pass --chip esp32|esp32s3|rp2040|...")
