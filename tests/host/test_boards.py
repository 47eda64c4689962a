"""Board definitions: every shipped board passes the firmware's start-up checks (including
its pins, hal/pins.py); pins an MCU cannot use so are refused with the key and the reason."""

from __future__ import annotations

import copy
import json

import pytest

from meternode.checks import check_board
from meternode.config import ConfigError
from meternode.hal.pins import board_pins, check_pin
from umeter import unixport

BOARDS = sorted(p.stem for p in unixport.boards_dir().glob("*.json"))


def _board(name):
    return json.loads((unixport.boards_dir() / f"{name}.json").read_text())


@pytest.mark.parametrize("name", BOARDS)
def test_every_shipped_board_passes_the_start_up_checks(name):
    check_board(_board(name))


@pytest.mark.parametrize("name", ["pico_w", "pico_w_mcp3208", "esp32_devkitc"])
def test_boards_with_a_modem_option_carry_its_uart_and_reset_pins(name):
    b = _board(name)
    keys = {w for w, *_ in board_pins(b)}
    assert {"board.lora.tx", "board.lora.rx", "board.lora.reset", "board.relay.pin"} <= keys
    assert "lorawan" in b["capabilities"]


@pytest.mark.parametrize(
    ("name", "edit", "message"),
    [
        ("esp32_devkitc", {"relay": {"pin": 34}}, "board.relay.pin = 34: GPIO34-39 are input only on the ESP32"),
        ("esp32_devkitc", {"relay": {"pin": 9}}, "board.relay.pin = 9: GPIO6-11 are wired to the ESP32's SPI flash"),
        ("esp32_devkitc", {"relay": {"pin": 20}}, "board.relay.pin = 20: ESP32 has no GPIO20"),
        ("esp32_devkitc", {"lora": {"uart": 2, "tx": 17, "rx": 16, "reset": 36}}, "board.lora.reset = 36: GPIO34-39"),
        (
            "esp32_devkitc",
            {"pulses": [{"name": "w", "pin": 36, "pull": "up", "per_unit": 1}]},
            "board.pulses[0].pin = 36: GPIO34-39 have no internal pull-up",
        ),
        ("esp32_devkitc", {"adc": {"pins": [36, 39, 34, 25]}}, "board.adc.pins[3] = 25: not an ADC1 pin"),
        ("pico_w", {"relay": {"pin": 23}}, "board.relay.pin = 23: GPIO23 is taken on this board (CYW43 WL_ON)"),
        ("pico_w", {"lora": {"uart": 1, "tx": 4, "rx": 25}}, "board.lora.rx = 25: GPIO25 is taken on this board"),
        ("pico_w", {"adc": {"pins": [26, 27, 22]}}, "board.adc.pins[2] = 22: the RP2040 ADC is on GPIO26-29"),
        ("pico_w", {"relay": {"pin": 14}}, "board.relay.pin = 14: GPIO14 is already board.pulses[0].pin"),
        ("pico_w_mcp3208", {"relay": {"pin": 30}}, "board.relay.pin = 30: RP2040 has no GPIO30"),
        ("pico_w", {"lora": {"uart": 1, "tx": 8, "rx": 9, "reset": 6}}, "board.buses.rs485.de = 6: GPIO6 is already"),
        ("esp32_devkitc", {"buses": {"mbus": {"uart": 1, "tx": 34, "rx": 32}}}, "board.buses.mbus.tx = 34: GPIO34-39"),
    ],
)
def test_pins_the_mcu_cannot_use_are_refused_naming_the_key(name, edit, message):
    b = copy.deepcopy(_board(name))
    for k, v in edit.items():
        if isinstance(v, dict) and isinstance(b.get(k), dict):
            b[k].update(v)
        else:
            b[k] = v
    with pytest.raises(ConfigError) as e:
        check_board(b)
    assert str(e.value).startswith(message), str(e.value)


def test_check_pin_is_there_for_other_pins_a_board_gains():
    b = _board("esp32_devkitc")
    assert check_pin(b, 4, "out", "board.buses[0].de") == 4
    with pytest.raises(ConfigError, match=r"board\.buses\[0\]\.tx = 35: GPIO34-39 are input only"):
        check_pin(b, 35, "out", "board.buses[0].tx")
    assert check_pin({"mcu": "unix"}, 99, "out", "board.relay.pin") == 99, "no table for the unix port"
