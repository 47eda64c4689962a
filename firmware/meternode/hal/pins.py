# Pin checks per MCU, run at start (checks.check_board on the node, umeter build on the host):
# a pin the chip cannot use for what the board says is refused with an error naming the
# board key, before anything drives it.  Pure data: no `machine`, imports on CPython.
#
#   check_pin(board, pin, use, where, pull=None)  one pin; use is "in", "out" or "adc"
#   board_pins(board)                            [(where, pin, use, pull)] of the board's keys
#                                                (adc, pulses, relay, brownout, lora, buses)
#   check_board_pins(board)                      all of them, and no pin used twice
# Other code that adds pins (serial meter buses, ...) calls check_pin for each.
#
# ESP32 (ESP32 datasheet, "Peripheral Pin Configurations"; MicroPython esp32 machine.Pin):
#   GPIO 0-19, 21-23, 25-27, 32-39 exist;
#   6-11 are wired to the module's SPI flash: never usable;
#   34-39 are input only, with no internal pull-up/pull-down;
#   ADC1 is GPIO 32-39 (ADC2 is shared with Wi-Fi).
# RP2040 (RP2040 datasheet 1.4.3): GPIO 0-29; ADC inputs 0-3 on GPIO 26-29.
# Modules ("module" in the board): the Pico W's CYW43 radio takes GPIO 23 (WL_ON), 24 (WL_D),
#   25 (WL_CS) and 29 (WL_CLK, shared with the VSYS/3 ADC input) -- Pico W datasheet,
#   "Pinout and design files"; a board may add its own "reserved_pins": {"<n>": "why"}.
from meternode.config import ConfigError

_ESP32_PINS = tuple(range(0, 20)) + (21, 22, 23, 25, 26, 27) + tuple(range(32, 40))
_MCUS = ("esp32", "rp2040")
_MODULES = {"pico_w": {23: "CYW43 WL_ON", 24: "CYW43 WL_D", 25: "CYW43 WL_CS", 29: "CYW43 WL_CLK"}}


def _ok_pins(mcu):
    return _ESP32_PINS if mcu == "esp32" else tuple(range(30))


def check_pin(board, pin, use, where, pull=None):
    mcu = board.get("mcu")
    if mcu not in _MCUS:
        return pin  # the unix port, or an MCU without a table here
    if not isinstance(pin, int) or isinstance(pin, bool):
        raise ConfigError("%s must be a GPIO number, not %r" % (where, pin))
    if pin not in _ok_pins(mcu):
        raise ConfigError("%s = %d: %s has no GPIO%d" % (where, pin, mcu.upper(), pin))
    why = _MODULES.get(board.get("module"), {}).get(pin)
    if why is None:
        why = (board.get("reserved_pins") or {}).get(str(pin))
    if why is not None:
        raise ConfigError("%s = %d: GPIO%d is taken on this board (%s)" % (where, pin, pin, why))
    if mcu == "esp32":
        if 6 <= pin <= 11:
            raise ConfigError("%s = %d: GPIO6-11 are wired to the ESP32's SPI flash" % (where, pin))
        if 34 <= pin <= 39:
            if use == "out":
                raise ConfigError("%s = %d: GPIO34-39 are input only on the ESP32" % (where, pin))
            if pull in ("up", "down"):
                raise ConfigError(
                    "%s = %d: GPIO34-39 have no internal pull-%s; fit a resistor and set pull: none"
                    % (where, pin, pull)
                )
        if use == "adc" and not 32 <= pin <= 39:
            raise ConfigError("%s = %d: not an ADC1 pin (GPIO32-39; ADC2 is shared with Wi-Fi)" % (where, pin))
    elif use == "adc" and not 26 <= pin <= 29:
        raise ConfigError("%s = %d: the RP2040 ADC is on GPIO26-29" % (where, pin))
    return pin


def board_pins(board):
    # Every pin the board definition itself names: [(key, pin, use, pull)].
    out = []
    adc = board.get("adc") or {}
    for k, p in enumerate(adc.get("pins") or []):
        out.append(("board.adc.pins[%d]" % k, p, "adc", None))
    spi = adc.get("spi")
    if isinstance(spi, dict):
        for key, use in (("sck", "out"), ("mosi", "out"), ("cs", "out"), ("miso", "in")):
            if key in spi:
                out.append(("board.adc.spi.%s" % key, spi[key], use, None))
    for k, p in enumerate(board.get("pulses") or []):
        if isinstance(p, dict) and "pin" in p:
            out.append(("board.pulses[%d].pin" % k, p["pin"], "in", p.get("pull", "up")))
    for key, use in (("relay", "out"), ("brownout", "in")):
        spec = board.get(key)
        if isinstance(spec, dict) and "pin" in spec:
            out.append(("board.%s.pin" % key, spec["pin"], use, None))
    lora = board.get("lora")
    if isinstance(lora, dict):
        for key, use in (("tx", "out"), ("rx", "in"), ("reset", "out")):
            if key in lora:
                out.append(("board.lora.%s" % key, lora[key], use, None))
    buses = board.get("buses")  # serial meter buses (hal/bus.py)
    if isinstance(buses, dict):
        for name, b in buses.items():
            if isinstance(b, dict) and not b.get("sim"):
                for key, use in (("tx", "out"), ("rx", "in"), ("de", "out")):
                    if key in b:
                        out.append(("board.buses.%s.%s" % (name, key), b[key], use, None))
    return out


def check_board_pins(board):
    seen = {}
    for where, pin, use, pull in board_pins(board):
        check_pin(board, pin, use, where, pull)
        if pin in seen:
            raise ConfigError("%s = %d: GPIO%d is already %s" % (where, pin, pin, seen[pin]))
        seen[pin] = where
    return board
