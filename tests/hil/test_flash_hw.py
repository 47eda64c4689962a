"""Flashing real boards (HIL only: skipped on the virtual board). Give the image with
UMETER_HIL_IMAGE=/path/to/ESP32_GENERIC.bin (or a .uf2 for an RP2040)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from umeter.flash import flash_esp32, flash_rp2040, which_chip


@pytest.mark.hardware
def test_flash_the_real_board_and_read_its_identity(hil_target, board):  # pragma: no cover - HIL only
    image = os.environ.get("UMETER_HIL_IMAGE")
    if not image:
        pytest.skip("set UMETER_HIL_IMAGE to a MicroPython image for this board")
    uid_before = board.unique_id()
    if which_chip(Path(image)) == "rp2040":
        res = flash_rp2040(hil_target.port, image, timeout=30)
    else:
        res = flash_esp32(hil_target.port, image)
        assert res.verified and res.mac.replace(":", "") == uid_before  # machine.unique_id() is the base MAC
    assert board.unique_id() == uid_before
