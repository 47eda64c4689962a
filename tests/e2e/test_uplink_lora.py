"""The whole node with a LoRaWAN modem (simulated RAK3172 over a pty) and no MQTT: it joins,
sends its stored records as confirmed frames in order, then merged live telemetry."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

from meternode.link import loracodec
from umeter import unixport
from umeter_hil.lorasim import SimModem


def _flash(tmp_path):
    # A node's flash directory with the sim board and the firmware's main.py.
    root = tmp_path / "node"
    root.mkdir()
    shutil.copy(unixport.boards_dir() / "sim.json", root / "board.json")
    shutil.copy(unixport.firmware_root() / "main.py", root / "main.py")
    return root


def _lora(modem, deveui):
    return {
        "port": modem.port,
        "deveui": deveui,
        "appeui": "0000000000000000",
        "appkey": "00112233445566778899AABBCCDDEEFF",
        "region": "CN470",
        "dr": 5,
        "daily_budget_ms": 600000,
    }


def _start(root, cfg, heap, log):
    (root / "config.json").write_text(json.dumps(cfg))
    env = dict(os.environ, MICROPYPATH=unixport.micropypath())
    return subprocess.Popen(unixport.command(root / "main.py", heap=heap), cwd=root, env=env, stdout=log, stderr=log)


def test_node_sends_records_then_telemetry_over_lorawan(tmp_path):
    root = _flash(tmp_path)
    with SimModem() as modem:
        modem.fail_joins = 1
        cfg = {
            "node_id": "lora1",
            "telemetry_s": 0.5,
            "lora": _lora(modem, "70B3D57ED0000001"),
            "sim": {"realtime": True, "currents": [{"rms": 5.0}]},
        }
        with open(root / "console.log", "w") as log:
            p = _start(root, cfg, json.loads((root / "board.json").read_text())["heap"], log)
            try:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and len(modem.uplinks) < 3:
                    assert p.poll() is None, (root / "console.log").read_text()
                    time.sleep(0.1)
            finally:
                p.kill()
                p.wait()
        frames = [(port, loracodec.decode(data), confirmed) for port, data, confirmed in modem.uplinks]
        assert len(frames) >= 3, (root / "console.log").read_text()
        port, first, confirmed = frames[0]
        assert (port, first["kind"], first["seq"], first["event"], first["text"], confirmed) == (
            2,
            "event",
            1,
            "reboot",
            "start",
            True,
        )
        live = [f for _, f, c in frames if f["kind"] == "telemetry"]
        assert live and not any(c for _, f, c in frames if f["kind"] == "telemetry"), "telemetry unconfirmed"
        assert 2250 < live[0]["v_dv"] < 2350
        assert modem.joins == 2 and "AT+BAND=1" in modem.commands


def test_policy_frames_arrive_as_lorawan_downlinks_on_their_fport(tmp_path):
    # A price frame (HMAC + counter) queued at the network server reaches the node after its
    # next uplink, on the policy port (config lora.policy_fport, default 10): the policy
    # service applies it.  A replay of it is refused; a downlink on another port is ignored.
    from meternode.policy import small
    from umeter.policy import compile_source

    key = bytes(range(32))
    root = _flash(tmp_path)
    day = [["00:00", "flat"]]
    pol = compile_source({"name": "lora-dr", "tariffs": ["flat"], "seasons": [{"start": "01-01", "weekday": day}]})
    with SimModem() as modem:
        frame = small.encode_price(key, "lora2", 7, 0.42, 10)
        modem.queue_downlink(10, frame)
        modem.queue_downlink(10, frame)
        modem.queue_downlink(3, b"\x01\x02")
        cfg = {
            "node_id": "lora2",
            "telemetry_s": 0.5,
            "cmd_key": key.hex(),
            "policy": pol,
            "lora": _lora(modem, "70B3D57ED0000002"),
            "sim": {"realtime": True, "currents": [{"rms": 5.0}]},
        }
        with open(root / "console.log", "w") as log:
            p = _start(root, cfg, "512k", log)
            try:
                deadline = time.monotonic() + 40
                while time.monotonic() < deadline:
                    assert p.poll() is None, (root / "console.log").read_text()
                    text = (root / "console.log").read_text()
                    if "downlink on port 3 ignored" in text and "policy event price" in text:
                        break
                    time.sleep(0.2)
            finally:
                p.kill()
                p.wait()
        text = (root / "console.log").read_text()
        assert "lora policy frame: ok" in text, text
        assert "lora policy frame: replayed" in text, text
        assert "lora downlink on port 3 ignored (2 bytes)" in text, text
        assert "policy event price" in text, text
        assert "Traceback" not in text, text
