"""The whole node with a LoRaWAN modem (simulated RAK3172 over a pty) and no MQTT: it joins,
sends its stored records as confirmed frames in order, then merged live telemetry."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

from meternode.link import loradecode
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
        frames = [(port, loradecode.decode(data), confirmed) for port, data, confirmed in modem.uplinks]
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
    # A price frame (HMAC + counter) as `umeter policy price --lora` prints it for the network
    # server, queued there, reaches the node after its next uplink on the policy port (config
    # lora.policy_fport, default 10): the policy service applies it.  A replay of it is
    # refused; a downlink on another port is ignored.
    import json
    import os
    import subprocess
    import sys

    from umeter.policy import compile_source

    key = bytes(range(32))
    root = _flash(tmp_path)
    day = [["00:00", "flat"]]
    pol = compile_source({"name": "lora-dr", "tariffs": ["flat"], "seasons": [{"start": "01-01", "weekday": day}]})
    cli = [sys.executable, "-m", "umeter", "policy", "price", "0.42", "--valid", "10m", "--node", "lora2", "--lora"]
    r = subprocess.run([*cli, "--key", key.hex(), "--json"], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, UMETER_HOME=str(tmp_path / "home")))  # fmt: skip
    assert r.returncode == 0, r.stderr
    (down,) = json.loads(r.stdout)
    with SimModem() as modem:
        frame = bytes.fromhex(down["hex"])
        modem.queue_downlink(down["fport"], frame)
        modem.queue_downlink(down["fport"], frame)
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


def test_lora_fallback_is_quiet_while_mqtt_is_up_and_carries_only_what_mqtt_has_not_delivered(tmp_path):
    # lora.mode "fallback" (the default) beside MQTT: while the broker is up LoRaWAN stays
    # silent (no join, no frame; at boot MQTT connects within lora.fallback_s); when it has
    # been gone for fallback_s, LoRa joins and sends the records MQTT has not delivered, from
    # the first one on; when it is back MQTT carries the records again and LoRa falls silent.
    # Every record reaches the head end over one link or the other.
    import paho.mqtt.client as mqtt

    from umeter.broker import Mosquitto, mosquitto_path

    if mosquitto_path() is None:
        import pytest

        pytest.skip("Mosquitto is not installed (apt-get install mosquitto); CI installs it")
    root = _flash(tmp_path)
    state = tmp_path / "mosq"
    state.mkdir()
    # persistence: the subscriber's session and its queued records outlive the broker's restart
    broker = Mosquitto(extra_conf=f"persistence true\npersistence_location {state}/\n")
    seqs: dict[int, str] = {}  # seq -> kind, records received over MQTT
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="t-lora3-sub", clean_session=False)
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe("umeter/lora3/+", qos=1)

    def on_message(c, u, m):
        if m.topic.rsplit("/", 1)[1] in ("event", "profile", "reading"):
            d = json.loads(m.payload)
            seqs[d["seq"]] = d["kind"]

    sub.on_message = on_message
    sub.reconnect_delay_set(0.1, 0.5)
    with broker, SimModem() as modem:
        sub.connect(broker.host, broker.port)
        sub.loop_start()
        cfg = {
            "node_id": "lora3",
            "telemetry_s": 0.5,
            "mqtt": {"host": broker.host, "port": broker.port, "keepalive": 5, "discovery": False,
                     "backoff_min_ms": 300, "backoff_max_ms": 1000},
            "lora": dict(_lora(modem, "70B3D57ED0000003"), fallback_s=3),
            "cmd_key": "33" * 32,
            # a record every 2 s: a sampling-gap event per lost stretch
            "sim": {"realtime": True, "currents": [{"rms": 5.0}],
                    "events": [{"at": float(t), "lose": 400} for t in range(3, 120, 2)]},
        }  # fmt: skip

        def lora_records():
            fr = [loradecode.decode(data) for _, data, confirmed in modem.uplinks]
            return [f["seq"] for f in fr if f["kind"] != "telemetry"]

        def wait(cond, s, what):
            deadline = time.monotonic() + s
            while not cond():
                assert p.poll() is None, (root / "console.log").read_text()
                assert time.monotonic() < deadline, f"{what}; console:\n{(root / 'console.log').read_text()}"
                time.sleep(0.05)

        with open(root / "console.log", "w") as log:
            p = _start(root, cfg, "512k", log)
            try:
                wait(lambda: len(seqs) >= 3, 30, "3 records over MQTT")
                n = len(seqs)
                wait(lambda: len(seqs) > n, 10, "one more record over MQTT")
                time.sleep(0.5)  # its PUBACK is in; the next record is ~1.5 s away
                before = set(seqs)
                assert (modem.joins, modem.uplinks) == (0, []), "LoRa spoke while MQTT was up"
                broker.stop()
                t_down = time.monotonic()
                wait(lambda: modem.joins > 0, 20, "a join once MQTT was down for fallback_s")
                assert time.monotonic() - t_down >= 2.5, "joined %.1f s after MQTT went" % (time.monotonic() - t_down)
                wait(lambda: len(lora_records()) >= 2, 40, "2 records over LoRa while the broker is down")
                over_lora = lora_records()
                assert min(over_lora) > max(before), (sorted(before), over_lora)
                broker.start()
                wait(lambda: max(seqs) > max(lora_records()), 40, "a newer record over MQTT once it is back")
                k = len(lora_records())
                time.sleep(5)
                assert len(lora_records()) <= k + 1, f"LoRa went on after MQTT came back: {lora_records()}"
                # the operator's view over MQTT: LoRaWAN's session, what the network took
                from umeter.cli.command import _lora_line
                from umeter.command import send

                st = send(f"mqtt://{broker.host}:{broker.port}", "lora3", "status", key=bytes([0x33]) * 32)
                lo = st["uplink"]["lora"]
                assert lo["joined"] is True and lo["acked"] >= max(over_lora) and lo["sent"] >= len(over_lora), lo
                assert lo["budget_ms"] == 600000 and 0 < lo["airtime_ms"] < 600000 and lo["error"] == "", lo
                assert _lora_line(lo).startswith(f"lora: joined, acked to seq {lo['acked']}, "), _lora_line(lo)
                # the network's time rode on LoRa's first uplink (the sim's is the host's: no step)
                lt = st["clock"]["lorawan"]
                assert lt["error"] is None and abs(lt["at"] - time.time()) < 120, lt
            finally:
                p.kill()
                p.wait()
                sub.loop_stop()
        got = set(seqs) | set(lora_records())
        assert got == set(range(1, max(got) + 1)), f"lost: {sorted(set(range(1, max(got) + 1)) - got)}"
        assert modem.joins >= 1 and not set(lora_records()) & before, (sorted(before), lora_records())


def test_a_lora_node_whose_clock_was_never_set_takes_the_networks_time(tmp_path):
    # A node with LoRa as its only network and its RTC back at 2000 (a board after a power
    # cut): its first uplink carries a DeviceTimeReq, the simulated network answers with the
    # host's time, the node's clock is stepped, and the step goes out as a time_set event
    # ("lorawan"); the records after it carry the time of day.
    root = _flash(tmp_path)
    with SimModem() as modem:
        cfg = {
            "node_id": "lora4",
            "telemetry_s": 0.5,
            "lora": _lora(modem, "70B3D57ED0000004"),
            "sim": {"realtime": True, "epoch": 946684800, "currents": [{"rms": 5.0}]},
        }
        with open(root / "console.log", "w") as log:
            p = _start(root, cfg, json.loads((root / "board.json").read_text())["heap"], log)
            try:
                deadline = time.monotonic() + 40
                while time.monotonic() < deadline:
                    assert p.poll() is None, (root / "console.log").read_text()
                    frames = [loradecode.decode(data) for _, data, _ in modem.uplinks]
                    if any(f["kind"] == "event" and f["event"] == "time_set" for f in frames):
                        break
                    time.sleep(0.1)
            finally:
                p.kill()
                p.wait()
        text = (root / "console.log").read_text()
        frames = [loradecode.decode(data) for _, data, _ in modem.uplinks]
        ts = [f for f in frames if f["kind"] == "event" and f["event"] == "time_set"]
        assert ts, text
        now = time.time()
        assert ts[0]["text"] == "lorawan" and abs(ts[0]["arg"] - (now - 946684800)) < 60, ts[0]
        assert abs(ts[0]["ts"] - now) < 60, "stamped with the time it was set to"
        assert frames[0]["ts"] < 946684800 + 3600, "the records before it carry the unset clock's time"
        assert modem.time_requests == 1 and "AT+LTIME=?" in modem.commands
        assert "lorawan: clock stepped +" in text, text
