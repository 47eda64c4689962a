"""The whole node (sim board, unix port) with its uplink service: events and load profile
reach the SQLite consumer through Mosquitto, and authenticated commands act and answer on
…/cmd/result while bad ones are refused with an event."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from meternode.link.actions import make_command
from umeter import unixport
from umeter.broker import mosquitto_path
from umeter.consumer import Consumer

pytestmark = pytest.mark.skipif(mosquitto_path() is None, reason="needs Mosquitto (apt-get install mosquitto)")

KEY = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
KEY_BYTES = bytes.fromhex(KEY)


def _start_node(root: Path, port: int) -> subprocess.Popen:
    root.mkdir()
    shutil.copy(unixport.boards_dir() / "sim.json", root / "board.json")
    shutil.copy(unixport.firmware_root() / "main.py", root / "main.py")
    cfg = {
        "node_id": "cmd1",
        "telemetry_s": 0.5,
        "profile_s": 60,
        "cmd_key": KEY,
        "mqtt": {"host": "127.0.0.1", "port": port, "keepalive": 10},
        "sim": {"realtime": True, "currents": [{"rms": 5.0}]},
    }
    (root / "config.json").write_text(json.dumps(cfg))
    env = dict(os.environ, MICROPYPATH=unixport.micropypath())
    log = open(root / "console.log", "w")  # noqa: SIM115 - the process owns it
    return subprocess.Popen(
        unixport.command(root / "main.py", heap=_board_heap()), cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT
    )


def _board_heap():
    # the node runs with its board's heap, as `umeter sim` runs it
    return json.loads((unixport.boards_dir() / "sim.json").read_text())["heap"]


def test_node_records_events_profile_and_obeys_only_authenticated_commands(tmp_path, mosquitto):
    with Consumer(tmp_path / "c.sqlite", mosquitto.host, mosquitto.port) as c:
        node = _start_node(tmp_path / "node", mosquitto.port)
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        pub.connect(mosquitto.host, mosquitto.port)
        pub.loop_start()
        try:
            c.wait_for(lambda: c.state("cmd1") == "online" and c.count("cmd1") >= 1, 20, "node online")
            first = c.records("cmd1")[0]
            assert (first["kind"], first["event"], first["text"]) == ("event", "reboot", "start")
            c.wait_for(lambda: len(c.telemetry("cmd1")) >= 2, 10, "live telemetry")
            now = int(time.time())

            # time sync to 3 s before a minute boundary: a 60-s profile record closes soon after
            boundary = (now // 60 + 2) * 60

            def send(op, args=None, ctr=1, key=KEY_BYTES, mid="m"):
                p = make_command(key, "cmd1", op, args, ctr, boundary + 60, mid)
                pub.publish("umeter/cmd1/cmd", p, qos=1).wait_for_publish(5)

            send("time", {"epoch": boundary - 3}, ctr=1, mid="t1")
            send("set", {"key": "telemetry_s", "value": 0.25}, ctr=2, mid="s1")
            send("read_now", ctr=3, mid="r1")
            send("relay", {"on": True}, ctr=4, mid="x1")
            send("read_now", ctr=3, mid="replay")
            send("read_now", ctr=5, key=b"k" * 32, mid="forged")
            c.wait_for(lambda: len(c.results("cmd1")) >= 6, 15, "six command results")
            res = {r["id"]: r for r in c.results("cmd1")}
            assert set(res) == {"t1", "s1", "r1", "x1", "replay", "forged"}, res
            assert res["t1"]["ok"] and res["s1"]["result"] == {"key": "telemetry_s", "old": 0.5, "new": 0.25}
            assert res["r1"]["ok"] and 225 < res["r1"]["result"]["v"] < 235, res["r1"]
            # the sim board has a relay (closed at boot): the command drives it, telemetry shows it
            assert res["x1"] == {"id": "x1", "ok": True, "status": "done", "result": {"on": True}}, res["x1"]
            assert c.telemetry("cmd1")[-1]["relay"] is True
            assert res["replay"]["why"] == "replayed: counter 3 is not above 4"
            assert res["forged"]["why"] == "unauthenticated: HMAC does not match the node key"
            # the interval cut short by the time jump closes at its nominal end, then the next
            # one closes at the boundary
            c.wait_for(
                lambda: any(r["ts"] == boundary for r in c.records("cmd1", "profile")), 15, "the boundary's profile"
            )
            prof = next(r for r in c.records("cmd1", "profile") if r["ts"] == boundary)
            assert prof["period_s"] == 60
            assert 2250 < prof["v_avg_dv"] < 2350 and prof["i_avg_ma"] > 4000
            events = [r["event"] for r in c.records("cmd1", "event")]
            assert events.count("cmd_rejected") == 2 and "time_set" in events and "config" in events
            seqs = c.seqs("cmd1")
            assert seqs == list(range(1, len(seqs) + 1)), "node records in order, once each"
        finally:
            pub.loop_stop()
            node.kill()
            node.wait()
        assert node.returncode is not None
