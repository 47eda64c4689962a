"""`umeter flash` error paths (no board, busy port, not an ESP bootloader, wrong chip, wrong
image) and the RP2040 BOOTSEL + UF2 path against a virtual board and a stand-in drive.
Writing real flash is HIL: tests marked `hardware` need --board PORT with a real ESP32."""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from umeter.errors import ConfigError, DeviceError, TransportError
from umeter.flash import (
    UF2_FAMILY_RP2040,
    UF2_MAGIC0,
    UF2_MAGIC1,
    UF2_MAGIC_END,
    check_chip,
    flash_esp32,
    flash_rp2040,
)
from umeter_hil.vboard import VirtualBoard

UMETER = str(Path(sys.executable).parent / "umeter")


def uf2(blocks: int = 2, family: int = UF2_FAMILY_RP2040) -> bytes:
    out = b""
    for n in range(blocks):
        head = struct.pack("<IIIIIIII", UF2_MAGIC0, UF2_MAGIC1, 0x2000, 0x10000000 + 256 * n, 256, n, blocks, family)
        out += head + bytes(range(256)) + bytes(476 - 256) + struct.pack("<I", UF2_MAGIC_END)
    return out


@pytest.fixture
def esp_image(tmp_path) -> Path:
    p = tmp_path / "ESP32_GENERIC.bin"
    p.write_bytes(bytes([0xE9]) + bytes(4095))
    return p


@pytest.fixture
def vb(tmp_path):
    with VirtualBoard(tmp_path / "vb", "sim") as b:
        b.wait_booted()
        yield b


def test_missing_port_is_a_one_line_error_with_a_hint(esp_image):
    with pytest.raises(TransportError) as e:
        flash_esp32("/dev/ttyUSB-none", esp_image)
    assert (
        str(e.value) == "no such port /dev/ttyUSB-none — is the board plugged in? list ports with `umeter fleet ports`"
    )


def test_busy_port_is_reported_as_busy(vb, esp_image):
    fd = os.open(vb.port, os.O_RDWR | os.O_NOCTTY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what pyserial's exclusive open (mpremote, esptool) does
    try:
        with pytest.raises(TransportError, match=f"port {vb.port} is busy"):
            flash_esp32(vb.port, esp_image)
    finally:
        os.close(fd)


def test_a_board_without_an_esp_bootloader_is_a_device_error(vb, esp_image):
    # a MicroPython REPL (the virtual board) does not speak the ESP ROM protocol
    with pytest.raises(DeviceError, match="no ESP bootloader answered on") as e:
        flash_esp32(vb.port, esp_image, connect_attempts=1)
    assert "hold BOOT" in e.value.hint


def test_wrong_chip_is_refused_before_writing():
    with pytest.raises(DeviceError, match="the board is an ESP32-S3, not an ESP32") as e:
        check_chip("ESP32-S3", "esp32")
    assert "--chip" in e.value.hint
    check_chip("ESP32-S3", "esp32s3")
    check_chip("ESP32-C3", "auto")


def test_an_image_that_is_not_an_esp_image_is_refused(tmp_path, vb):
    bad = tmp_path / "fw.bin"
    bad.write_bytes(b"\x00" * 1000)
    with pytest.raises(ConfigError, match="not an ESP32 firmware image"):
        flash_esp32(vb.port, bad)


def test_uf2_for_another_family_is_refused(tmp_path):
    p = tmp_path / "other.uf2"
    p.write_bytes(uf2(family=0x68ED2B88))  # SAMD21
    with pytest.raises(ConfigError, match="family 0x68ed2b88, not the RP2040"):
        flash_rp2040(None, p, drive=tmp_path, timeout=0.1)


def test_rp2040_path_enters_bootsel_and_copies_the_uf2_to_the_drive(tmp_path, vb):
    drive = tmp_path / "RPI-RP2"
    drive.mkdir()
    (drive / "INFO_UF2.TXT").write_text("UF2 Bootloader v3.0\nModel: Raspberry Pi RP2\nBoard-ID: RPI-RP2\n")
    img = tmp_path / "RPI_PICO_W.uf2"
    img.write_bytes(uf2(4))
    res = flash_rp2040(vb.port, img, drive=drive, timeout=5)
    assert (drive / "RPI_PICO_W.uf2").read_bytes() == img.read_bytes()
    assert res.chip == "RP2040" and res.bytes == 2048
    # the board was told machine.bootloader() (the virtual board logs it and restarts)
    deadline = __import__("time").monotonic() + 5
    while "bootloader" not in vb.faults.log:
        assert __import__("time").monotonic() < deadline, vb.faults.log
        __import__("time").sleep(0.02)


def test_no_rp2_drive_is_a_one_line_error(tmp_path):
    img = tmp_path / "fw.uf2"
    img.write_bytes(uf2())
    with pytest.raises(DeviceError, match="no RPI-RP2 drive appeared"):
        flash_rp2040(None, img, drive=tmp_path / "nothing", timeout=0.3)


def test_cli_flash_prints_the_error_without_a_traceback(esp_image):
    r = subprocess.run(
        [UMETER, "flash", "--port", "/dev/ttyUSB-none", "--image", str(esp_image)], capture_output=True, text=True
    )
    assert r.returncode == 1
    assert r.stderr.strip() == (
        "umeter: error: no such port /dev/ttyUSB-none — is the board plugged in? list ports with `umeter fleet ports`"
    )
