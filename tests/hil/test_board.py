"""HIL suite: the same tests on a virtual board (default) and on a real one (--board PORT).
Firmware metrology/pulse behaviour is tested on the unix port in tests/firmware; here the
board itself: identity, provisioning and boot of the node, pulse inputs and relay output
through the rig, and (virtual only) power cuts."""

from __future__ import annotations

import json
import threading
import time

import pytest
import serial

from umeter.build import build
from umeter.inventory import Device, Fleet
from umeter.keystore import Keystore
from umeter.provision import provision


def test_board_reports_a_stable_six_byte_unique_id(board):
    uid = board.unique_id()
    assert len(uid) == 12 and int(uid, 16) != 0
    assert board.unique_id() == uid


def test_board_has_a_filesystem_and_sha256(board):
    out = board.exec(
        "import os, hashlib, binascii\nopen('/hil.txt', 'w').write('x')\n"
        "print(binascii.hexlify(hashlib.sha256(open('/hil.txt','rb').read()).digest()).decode())\nos.remove('/hil.txt')"
    )
    assert out.strip() == "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"


def test_provisioned_board_boots_the_node(board, hil_target, tmp_path):
    image = build(hil_target.board_type, tmp_path / "build").out
    dev = Device(name="hil-node", board=hil_target.board_type, site="hil", port=board.port, telemetry_s=1.0)
    rep = provision(
        [dev], build_dirs={hil_target.board_type: image}, keystore=Keystore(tmp_path / "ks.json"),
        fleet=Fleet(tmp_path / "fleet.sqlite"), reset=False,
    )[0]  # fmt: skip
    assert rep.status == "ok", rep.error
    man = json.loads(board.exec("print(open('/manifest.json').read())"))
    assert man["node_id"] == "hil-node" and "config.json" in man["files"]
    # machine.reset(): the node starts from main.py and logs its banner on the console
    with serial.serial_for_url(board.port, timeout=0.2) as s:
        s.write(b"\r\x03\r\x01import machine; machine.reset()\x04")
        seen = b""
        deadline = time.monotonic() + 15
        while b"umeter node hil-node" not in seen and time.monotonic() < deadline:
            seen += s.read(256)
    assert b"umeter node hil-node" in seen, seen[-400:]


@pytest.mark.rig
def test_rig_pulse_train_reaches_the_board_pulse_input(board, rig):
    pin = rig.board_pins["water"]
    code = (
        f"import machine, time\np = machine.Pin({pin}, machine.Pin.IN, machine.Pin.PULL_UP)\n"
        "n = 0\nlast = p.value()\nt = time.ticks_ms()\n"
        "while time.ticks_diff(time.ticks_ms(), t) < 2500:\n"
        "    v = p.value()\n    if last and not v:\n        n += 1\n    last = v\nprint(n)"
    )
    result = {}
    th = threading.Thread(target=lambda: result.setdefault("n", board.exec(code)))
    th.start()
    time.sleep(0.6)  # the board is polling (opening the REPL takes a moment)
    rig.pulse_train("water", 10, 10.0)  # 50 ms pulses: robust against a busy host
    th.join(10)
    assert int(result["n"].strip()) == 10


@pytest.fixture(scope="module")
def image(tmp_path_factory, hil_target):
    return build(hil_target.board_type, tmp_path_factory.mktemp("hil-build") / "img").out


@pytest.mark.rig
def test_rig_pulses_are_counted_by_the_firmware_irq_input_and_pulse_meter(board, rig, hil_target, image, tmp_path):
    dev = Device(name="hil-pulses", board=hil_target.board_type, site="hil", port=board.port)
    rep = provision([dev], build_dirs={hil_target.board_type: image}, keystore=Keystore(tmp_path / "ks.json"),
                    fleet=Fleet(tmp_path / "fleet.sqlite"), reset=False)[0]  # fmt: skip
    assert rep.status == "ok", rep.error
    pin = rig.board_pins["water"]
    code = (
        "import time\nfrom meternode.hal.pulsein import IrqPulseInput\nfrom meternode.pulses import PulseMeter\n"
        f"src = IrqPulseInput({pin}, 'up')\n"
        "pm = PulseMeter({'name': 'water', 'per_unit': 1000, 'debounce_ms': 5})\n"
        "t = time.ticks_ms()\n"
        "while time.ticks_diff(time.ticks_ms(), t) < 3000:\n"
        "    time.sleep_ms(20)\n    src.drain(pm, time.ticks_ms())\n    pm.poll(time.ticks_ms())\n"
        "print(pm.count, pm.value, src.lost)"
    )
    result = {}
    th = threading.Thread(target=lambda: result.setdefault("out", board.exec(code)))
    th.start()
    time.sleep(0.8)
    rig.pulse_train("water", 12, 10.0)
    th.join(15)
    count, value, lost = (int(x) for x in result["out"].split())
    assert (count, value, lost) == (12, 12, 0)  # 12 pulses of 1 l each (1000 per m3)


@pytest.mark.rig
def test_rig_senses_the_relay_output(board, rig):
    board.exec(f"import machine\nmachine.Pin({rig.relay_pin}, machine.Pin.OUT).value(1)")
    assert rig.relay() is True
    board.exec(f"import machine\nmachine.Pin({rig.relay_pin}, machine.Pin.OUT).value(0)")
    assert rig.relay() is False


@pytest.mark.real_analog
def test_real_front_end_reads_mains_voltage(board, hil_target):  # pragma: no cover - needs a real front end
    from umeter.build import load_board

    pins = load_board(hil_target.board_type)["adc"].get("pins")
    if not pins:
        pytest.skip(f"board {hil_target.board_type} has no ADC pins of its own (external ADC)")
    out = board.exec(f"import machine\nprint(machine.ADC(machine.Pin({pins[0]})).read_u16())")
    assert 0 < int(out) < 65535


@pytest.mark.virtual_only
def test_power_cut_during_provisioning_leaves_no_truncated_file(board, hil_target, tmp_path):
    image = build(hil_target.board_type, tmp_path / "build").out
    dev = Device(name="hil-cut", board=hil_target.board_type, site="hil", port=board.port)
    kw = dict(build_dirs={hil_target.board_type: image}, keystore=Keystore(tmp_path / "ks.json"),
              fleet=Fleet(tmp_path / "fleet.sqlite"), reset=False)  # fmt: skip
    board.vb.cut_power_after(30_000)
    assert provision([dev], timeout=2, **kw)[0].status == "failed"
    board.vb.power_on()
    board.vb.wait_booted()
    assert provision([dev], **kw)[0].status == "ok"
    man = json.loads((board.vb.flash / "manifest.json").read_text())
    import hashlib

    for rel, meta in man["files"].items():
        assert hashlib.sha256((board.vb.flash / rel).read_bytes()).hexdigest() == meta["sha256"], rel


@pytest.mark.hardware
def test_real_board_survives_a_hard_reset(board):  # pragma: no cover - HIL only
    uid = board.unique_id()
    with serial.serial_for_url(board.port, timeout=0.5) as s:
        s.write(b"\r\x03\r\x01import machine; machine.reset()\x04")
    time.sleep(3)
    assert board.unique_id() == uid
