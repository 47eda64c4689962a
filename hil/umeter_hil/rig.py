"""Bench rig: the fixtures around a node under test, driven from the host. A rig injects
water/gas pulse trains into the node's pulse inputs and senses its relay output.

- BlinkaRig: real wiring through Adafruit Blinka (a USB GPIO adapter such as an FT232H or
  MCP2221, or a Raspberry Pi header). CI runs it on Blinka's OS-agnostic board
  (BLINKA_OS_AGNOSTIC=1), whose `Dx_OUTPUT` pin records writes and `Dx_INPUT_*` pins read
  fixed or toggling levels.
- VirtualRig: the same interface for a virtual board: pulse trains are scheduled into the
  board's pin stand-in (machine.Pin reads them by wall-clock time), the relay is read from the
  levels the firmware drove.

Pulses are open-collector style: the line idles high (pull-up) and a pulse pulls it low,
as reed switches on water and gas meters do.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from umeter.errors import ConfigError


@dataclass
class Edge:
    t: float
    channel: str
    level: int


DEFAULT_PULSE_PINS = {"water": 25, "gas": 26}  # board-side pins when the board definition has none
DEFAULT_RELAY_PIN = 2


def board_pins(board: dict) -> tuple[dict[str, int], int]:
    """Board-side pulse input pins by channel, and the relay output pin, from a board definition
    (`pulses: [{name, pin}]`, `relay: {pin}`), with the defaults above where it has none."""
    pulses = {p["name"]: int(p["pin"]) for p in board.get("pulses", []) if "pin" in p} or dict(DEFAULT_PULSE_PINS)
    relay = board.get("relay")
    return pulses, int(relay["pin"]) if isinstance(relay, dict) and "pin" in relay else DEFAULT_RELAY_PIN


class Rig:
    """The rig interface the HIL tests use. `board_pins` / `relay_pin` are the pins on the node
    that the rig's lines are wired to (from the board definition)."""

    channels: tuple[str, ...] = ()
    board_pins: dict[str, int] = {}  # noqa: RUF012
    relay_pin: int = DEFAULT_RELAY_PIN

    def pulse_train(self, channel: str, count: int, hz: float, duty: float = 0.5) -> None:
        raise NotImplementedError

    def relay(self) -> bool:
        """True when the node's relay output is energised."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def _check(self, channel: str, count: int, hz: float, duty: float) -> None:
        if channel not in self.channels:
            raise ConfigError(f"rig has no pulse channel {channel!r}", hint=f"channels: {', '.join(self.channels)}")
        if count < 0 or hz <= 0 or not 0 < duty < 1:
            raise ConfigError(
                f"bad pulse train: count={count}, hz={hz}, duty={duty}", hint="count >= 0, hz > 0, 0 < duty < 1"
            )

    def __enter__(self) -> Rig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class BlinkaRig(Rig):
    """GPIO through Blinka. `pulse_pins`: channel -> Blinka pin (e.g. board.D5); `relay_pin`:
    the input wired to the node's relay output (optional)."""

    pulse_pins: dict[str, Any]
    relay_pin: Any = None
    active_low: bool = True
    edges: list[Edge] = field(default_factory=list)

    def __post_init__(self) -> None:
        import digitalio

        self.board_pins = dict(DEFAULT_PULSE_PINS)

        self._out = {}
        for name, pin in self.pulse_pins.items():
            io = digitalio.DigitalInOut(pin)
            io.switch_to_output(value=self.active_low)  # idle level
            self._out[name] = io
        self._in = None
        if self.relay_pin is not None:
            self._in = digitalio.DigitalInOut(self.relay_pin)
            self._in.switch_to_input()
        self.channels = tuple(self.pulse_pins)

    def _set(self, ch: str, level: int) -> None:
        self._out[ch].value = bool(level)
        self.edges.append(Edge(time.monotonic(), ch, level))

    def pulse_train(self, channel: str, count: int, hz: float, duty: float = 0.5) -> None:
        """Emit `count` pulses at `hz` (blocking; host timing, good to ~1 kHz on a USB adapter)."""
        self._check(channel, count, hz, duty)
        idle = 1 if self.active_low else 0
        period = 1.0 / hz
        t = time.monotonic()
        for _ in range(count):
            self._set(channel, 1 - idle)
            t += period * duty
            time.sleep(max(0.0, t - time.monotonic()))
            self._set(channel, idle)
            t += period * (1 - duty)
            time.sleep(max(0.0, t - time.monotonic()))

    def pulses_sent(self, channel: str) -> int:
        active = 0 if self.active_low else 1
        return sum(1 for e in self.edges if e.channel == channel and e.level == active)

    def relay(self) -> bool:
        if self._in is None:
            raise ConfigError("rig has no relay sense input", hint="pass relay_pin=")
        return bool(self._in.value)

    def close(self) -> None:
        for io in self._out.values():
            io.deinit()
        if self._in is not None:
            self._in.deinit()


class VirtualRig(Rig):
    """The rig for a virtual board: channels and pins come from the board definition's
    `pulses` list ({"name", "pin"}) and optional `relay` ({"pin"})."""

    def __init__(self, vb: Any) -> None:
        self.vb = vb
        self.board_pins, self.relay_pin = board_pins(vb.board)
        self._pins = self.board_pins
        self.channels = tuple(self._pins)
        self._spec: dict = {}

    def pulse_train(self, channel: str, count: int, hz: float, duty: float = 0.5, *, wait: bool = True) -> None:
        """Schedule `count` pulses at `hz` starting now; with wait=True return when they are done."""
        self._check(channel, count, hz, duty)
        period_ms = 1000.0 / hz
        t0 = int(time.time() * 1000) + 5
        self._spec[str(self._pins[channel])] = {
            "t0": t0,
            "period": max(1, round(period_ms)),
            "width": max(1, round(period_ms * duty)),
            "count": count,
            "idle": 1,
        }
        self.vb.set_inputs(self._spec)
        if wait:
            time.sleep(max(0.0, (t0 + count * period_ms) / 1000 - time.time()) + 0.01)

    def relay(self) -> bool:
        return self.vb.pins_out().get(self.relay_pin, 0) == 1

    def pin_level(self, pin: int) -> int | None:
        return self.vb.pins_out().get(pin)
