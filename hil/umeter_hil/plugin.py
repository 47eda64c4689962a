"""HIL pytest plugin: one test suite for virtual and real boards.

    pytest tests/hil                          # --board virtual (default): a fresh virtual board per test
    pytest tests/hil --board /dev/ttyUSB0     # a real board on that port
    pytest tests/hil --board A50285BI         # a real board by USB serial number
    pytest tests/hil --board /dev/ttyACM0 --board-type pico_w --rig blinka --rig-pins water=D5,gas=D6,relay=D13

Options may also come from the environment (UMETER_HIL_BOARD, UMETER_HIL_BOARD_TYPE,
UMETER_HIL_RIG, UMETER_HIL_RIG_PINS), so the fixtures work before the plugin is registered.

Fixtures: `hil_target` (what is under test), `board` (a connected HilBoard: exec/eval,
file hashes, the VirtualBoard if any), `rig` (BlinkaRig, VirtualRig, or skip).

Markers (tests that cannot run on the current target are skipped with the reason):
    @pytest.mark.hardware       needs a real board
    @pytest.mark.real_analog    needs a real analog front end (CT/VT inputs), not the sim HAL
    @pytest.mark.rig            needs a rig (pulse injection / relay sense)
    @pytest.mark.virtual_only   needs the virtual board's fault injection (power cut, drops)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

MARKERS = {
    "hardware": "needs a real board (run with --board PORT)",
    "real_analog": "needs a real analog front end (CT/VT inputs); the virtual board has the sim HAL",
    "rig": "needs a rig: pulse injection / relay sense (--rig blinka, or the virtual board's)",
    "virtual_only": "needs the virtual board's fault injection",
}


@dataclass
class HilTarget:
    kind: str  # "virtual" | "real"
    board_type: str
    port: str | None = None  # real boards
    rig: str = "none"  # none | blinka
    rig_pins: dict[str, str] | None = None

    @property
    def virtual(self) -> bool:
        return self.kind == "virtual"


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("umeter-hil", "umeter HIL (virtual or real boards)")
    g.addoption(
        "--board", dest="hil_board", default=None, help="virtual (default), a serial port, or a USB serial number"
    )
    g.addoption("--board-type", dest="hil_board_type", default=None, help="board definition name [sim for virtual]")
    g.addoption("--rig", dest="hil_rig", default=None, help="none (default) or blinka")
    g.addoption("--rig-pins", dest="hil_rig_pins", default=None, help="Blinka pins: water=D5,gas=D6,relay=D13")


def pytest_configure(config: pytest.Config) -> None:
    for name, doc in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {doc}")


def _opt(config: pytest.Config, name: str, env: str, default: str | None) -> str | None:
    try:
        v = config.getoption(name)
    except ValueError:
        v = None
    return v or os.environ.get(env) or default


def target_from(config: pytest.Config) -> HilTarget:
    board = _opt(config, "hil_board", "UMETER_HIL_BOARD", "virtual")
    rig = _opt(config, "hil_rig", "UMETER_HIL_RIG", "none")
    pins_s = _opt(config, "hil_rig_pins", "UMETER_HIL_RIG_PINS", "")
    pins = dict(kv.split("=", 1) for kv in pins_s.split(",") if "=" in kv) if pins_s else None
    if board == "virtual":
        return HilTarget(
            "virtual", _opt(config, "hil_board_type", "UMETER_HIL_BOARD_TYPE", "sim"), rig=rig, rig_pins=pins
        )
    from umeter.transport import resolve_port

    port = board if (board.startswith("/") or "://" in board) else resolve_port(None, board)
    return HilTarget("real", _opt(config, "hil_board_type", "UMETER_HIL_BOARD_TYPE", "esp32_devkitc"), port, rig, pins)


@pytest.fixture(scope="session")
def hil_target(pytestconfig: pytest.Config) -> HilTarget:
    return target_from(pytestconfig)


@pytest.fixture(autouse=True)
def _hil_skips(request: pytest.FixtureRequest) -> None:
    if not any(request.node.get_closest_marker(m) for m in MARKERS):
        return
    t = target_from(request.config)
    if request.node.get_closest_marker("hardware") and t.virtual:
        pytest.skip(MARKERS["hardware"])
    if request.node.get_closest_marker("real_analog") and t.virtual:
        pytest.skip(MARKERS["real_analog"])
    if request.node.get_closest_marker("virtual_only") and not t.virtual:
        pytest.skip(MARKERS["virtual_only"])
    if request.node.get_closest_marker("rig") and not t.virtual and t.rig == "none":
        pytest.skip(MARKERS["rig"])


class HilBoard:
    """The board under test: a raw-REPL connection opened per call (so the firmware and
    other tools can use the port in between), plus the VirtualBoard when virtual."""

    def __init__(self, target: HilTarget, port: str, vb: Any = None) -> None:
        self.target = target
        self.port = port
        self.vb = vb

    def exec(self, code: str) -> str:
        from umeter.transport import Board

        with Board(self.port) as b:
            return b.exec(code).decode(errors="replace")

    def eval(self, expr: str) -> Any:
        from umeter.transport import Board

        with Board(self.port) as b:
            return b.eval(expr)

    def unique_id(self) -> str:
        return self.eval("__import__('binascii').hexlify(__import__('machine').unique_id()).decode()")


@pytest.fixture
def board(hil_target: HilTarget, tmp_path: Path):
    """A connected board: a fresh virtual board per test, or the real board given by --board."""
    if hil_target.virtual:
        from umeter_hil.vboard import VirtualBoard

        with VirtualBoard(tmp_path / "vboard", hil_target.board_type) as vb:
            vb.wait_booted()
            yield HilBoard(hil_target, vb.port, vb)
    else:
        from umeter.errors import UmeterError
        from umeter.transport import resolve_port

        try:
            resolve_port(hil_target.port)
        except UmeterError as e:
            pytest.fail(f"--board {hil_target.port}: {e}", pytrace=False)
        yield HilBoard(hil_target, hil_target.port)


@pytest.fixture
def rig(hil_target: HilTarget, board: HilBoard):
    """The rig around the board: VirtualRig on a virtual board, BlinkaRig with --rig blinka."""
    from umeter_hil.rig import BlinkaRig, VirtualRig

    if board.vb is not None:
        yield VirtualRig(board.vb)
        return
    if hil_target.rig != "blinka":
        pytest.skip(MARKERS["rig"])
    import board as blinka_board

    pins = hil_target.rig_pins or {}
    relay = pins.pop("relay", None)
    r = BlinkaRig(
        {k: getattr(blinka_board, v) for k, v in pins.items()}, getattr(blinka_board, relay) if relay else None
    )
    from umeter.build import load_board
    from umeter_hil.rig import board_pins

    r.board_pins, r.relay_pin = board_pins(load_board(hil_target.board_type))
    try:
        yield r
    finally:
        r.close()
