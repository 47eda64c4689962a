"""The gateway end to end: a virtual node (the real firmware on the unix port) polls eight
simulated meters on two pty buses, with scripted faults, and its readings reach the SQLite
consumer once each over a real Mosquitto, with Home Assistant discovery per meter; a meter
that falls silent is an event and its last reading stays, marked stale.  Then the node
answers as a meter: the independent dlt645 package reads its energy registers as a DL/T 645
master, and pymodbus reads its Modbus slave map, through a null-modem pty pair."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time

import pytest

from umeter import unixport
from umeter.consumer import Consumer
from umeter_hil.bussim import NullModem, SimBus, demo_config, demo_meters

HEAP = "512k"  # the gateway loaded from source on the 64-bit unix port (docs/gateway.md)


def _flash(tmp_path):
    root = tmp_path / "node"
    root.mkdir()
    shutil.copy(unixport.boards_dir() / "sim.json", root / "board.json")
    shutil.copy(unixport.firmware_root() / "main.py", root / "main.py")
    return root


def _start(root, cfg):
    (root / "config.json").write_text(json.dumps(cfg))
    env = dict(os.environ, MICROPYPATH=unixport.micropypath())
    log = open(root / "console.log", "w")  # noqa: SIM115 - closed when the process ends
    return subprocess.Popen(unixport.command(root / "main.py", heap=HEAP), cwd=root, env=env, stdout=log, stderr=log)


def _wait(cond, p, root, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        assert p.poll() is None, (root / "console.log").read_text()
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n" + (root / "console.log").read_text()
        time.sleep(0.2)


@pytest.mark.mosquitto
def test_node_polls_faulty_meters_and_every_reading_reaches_the_consumer_once(tmp_path, mosquitto):
    import paho.mqtt.client as mqtt

    rs485, mb = demo_meters()
    m645 = rs485[0]
    m645.faults += ["preamble", "split", "noise", "bad_checksum", "slow", "silent"]  # one per request
    rs485[2].faults += ["split", "bad_checksum"]
    rs485[4].faults += ["noise", "silent"]
    mb[1].faults += ["preamble", "split"]
    root = _flash(tmp_path)
    discovery: dict[str, dict] = {}
    states: dict[str, dict] = {}
    lock = threading.Lock()

    def on_message(c, u, m):
        with lock:
            if m.topic.startswith("homeassistant/") and m.payload:
                discovery[m.topic] = json.loads(m.payload)
            elif "/meter/" in m.topic:
                states[m.topic.rsplit("/", 1)[1]] = json.loads(m.payload)

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, "gw-test")
    sub.on_message = on_message
    sub.connect("127.0.0.1", mosquitto.port)
    sub.subscribe([("homeassistant/#", 0), ("umeter/gw1/meter/+", 0)])
    sub.loop_start()
    with (
        SimBus(rs485) as b1,
        SimBus(mb, baud=2400) as b2,
        Consumer(tmp_path / "db.sqlite", "127.0.0.1", mosquitto.port) as c,
    ):
        cfg = {
            "node_id": "gw1",
            "telemetry_s": 1.0,
            "mqtt": {"host": "127.0.0.1", "port": mosquitto.port},
            "gateway": dict(demo_config(b1.port, b2.port, 2.0), timeout_ms=300, retries=2, silent_after=2),
            "sim": {"realtime": True, "currents": [{"rms": 5.0}]},
        }
        p = _start(root, cfg)
        try:
            ids = {m.meter_id for m in rs485 + mb}

            def every_meter_read():
                return {r["meter"] for r in c.records("gw1", "reading")} >= ids

            _wait(every_meter_read, p, root, 40, "a reading of each of the 8 meters")
            mb[0].dead = True  # the heat meter stops answering
            _wait(
                lambda: any(r.get("event") == "meter" and r["arg"] == 1 for r in c.records("gw1", "event")),
                p,
                root,
                30,
                "the heat meter's silent event",
            )
            _wait(lambda: states.get("mbus-12345678", {}).get("stale") is True, p, root, 10, "its stale state")
        finally:
            p.kill()
            p.wait()
        sub.loop_stop()
        text = (root / "console.log").read_text()
        assert "Traceback" not in text, text
        recs = c.records("gw1")
        seqs = c.seqs("gw1")
        assert seqs == list(range(1, len(seqs) + 1)), "every record once, in order, no gap"
        assert c.counters()["duplicates"] == 0
        readings = [r for r in recs if r["kind"] == "reading"]
        by_meter = {}
        for r in readings:
            by_meter.setdefault(r["meter"], []).append(r)
        # values as the simulated meters hold them, exact decimals
        first = {x["quantity"]: x for x in by_meter["dlt645-000000123456"][0]["readings"]}
        assert first["voltage_l1"]["value"] == "231.4" and first["power"]["value"] == "2.2000"
        assert float(first["energy_import"]["value"]) >= 1234.56
        water = {x["quantity"]: x for x in by_meter["cjt188-10-00000000001234"][0]["readings"]}
        assert water["water_volume"]["unit"] == "m³" and float(water["water_volume"]["value"]) >= 321.09
        gas = {x["quantity"] for x in by_meter["cjt188-30-00000000005678"][0]["readings"]}
        assert "gas_volume" in gas
        heat = {x["quantity"]: x for x in by_meter["mbus-12345678"][0]["readings"]}
        assert heat["supply_temperature"]["value"] == "65.2" and heat["heat_energy"]["unit"] == "kWh"
        assert by_meter["modbus-8"][0]["readings"][0]["value"] == "230.1"  # the SDM120's float, 7 digits
        # the silent heat meter: an event, no invented reading after it
        ev = next(r for r in recs if r["kind"] == "event" and r["event"] == "meter" and r["arg"] == 1)
        assert ev["text"] == "silent mbus-12345678"
        assert not [r for r in readings if r["meter"] == "mbus-12345678" and r["seq"] > ev["seq"]]
        assert states["mbus-12345678"]["supply_temperature"] == 65.2  # its last reading, marked stale
        # the faults were survived: the 645 meter answered every poll in the end
        assert m645.answers >= 7 and not m645.faults
        # Home Assistant: one device per meter, water/gas/energy classes, total_increasing
        w = discovery["homeassistant/sensor/gw1_cjt188-10-00000000001234/water_volume/config"]
        assert (w["device_class"], w["state_class"], w["unit_of_measurement"]) == ("water", "total_increasing", "m³")
        assert w["state_topic"] == "umeter/gw1/meter/cjt188-10-00000000001234"
        g = discovery["homeassistant/sensor/gw1_cjt188-30-00000000005678/gas_volume/config"]
        assert g["device_class"] == "gas"
        h = discovery["homeassistant/sensor/gw1_mbus-12345678/heat_energy/config"]
        assert (h["device_class"], h["state_class"]) == ("energy", "total_increasing")
        assert h["device"]["via_device"] == "umeter_gw1"


def test_a_dlt645_master_and_a_modbus_client_read_the_node_as_a_meter(tmp_path):
    from datetime import datetime, timedelta

    from dlt645 import MeterClientService
    from pymodbus.client import ModbusSerialClient

    root = _flash(tmp_path)
    with NullModem() as line:
        cfg = {
            "node_id": "slave1",
            "telemetry_s": 0.5,
            "gateway": {
                "buses": {"rs485b": {"port": line.a}},
                "slave": {"bus": "rs485b", "address": "000000004321", "modbus_unit": 9},
            },
            "sim": {"realtime": True, "voltage": {"rms": 231.0}, "currents": [{"rms": 100.0, "angle": 0.0}]},
        }
        p = _start(root, cfg)
        try:
            _wait(lambda: "gateway on" in (root / "console.log").read_text(), p, root, 20, "the gateway")
            time.sleep(2.5)  # some energy and a telemetry snapshot
            # a pty carries no parity bits, and pyserial cannot re-set even parity on one (EINVAL
            # when the client changes its timeout): N on this side of the null modem
            svc = MeterClientService.new_rtu_client(
                port=line.b, baudrate=2400, databits=8, stopbits=1, parity="N", timeout=2.0
            )
            svc.set_address("214300000000")  # the package takes the address in wire order (A0 first)
            e1 = svc.read_00(0x00010000)
            v = svc.read_02(0x02010100)
            f = svc.read_02(0x02800002)
            time.sleep(1.5)
            e2 = svc.read_00(0x00010000)
            addr = svc.read_address()
            shifted = datetime.utcnow() + timedelta(hours=3)
            assert svc.broadcast_time_sync(shifted)
            time.sleep(1.0)
            svc.client.disconnect()
            mb = ModbusSerialClient(line.b, baudrate=2400, parity="N", timeout=2)
            assert mb.connect()
            rr = mb.read_holding_registers(0, count=14, device_id=9)
            bad = mb.read_holding_registers(100, count=2, device_id=9)
            mb.close()
        finally:
            p.kill()
            p.wait()
        text = (root / "console.log").read_text()
    assert e1 is not None and e2 is not None, text
    assert 0 <= e1.value <= e2.value, (e1.value, e2.value)  # 0.01 kWh steps; about 23 kW flows
    assert abs(v.value - 231.0) < 2.0 and abs(f.value - 50.0) < 0.1, (v.value, f.value)
    assert addr is not None
    assert "slave: time set by DL/T 645 broadcast" in text, text
    hours = int(text.split("slave: time set by DL/T 645 broadcast (")[1].split(" s)")[0])
    assert abs(hours - 3 * 3600) < 120, hours  # the dlt645 package's YY..ss order, chosen as the nearer date
    assert not rr.isError(), rr
    imp = (rr.registers[0] << 16 | rr.registers[1]) / 100
    wh = rr.registers[11] << 16 | rr.registers[12]  # tariff 1 import in Wh: the same register, finer
    assert e2.value <= imp <= e2.value + 0.05 and wh > 0 and abs(wh / 1000 - imp) < 0.011, (imp, wh, e2.value)
    assert 2250 < rr.registers[4] < 2370
    assert bad.isError() and bad.exception_code == 2


KEY = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"


@pytest.mark.mosquitto
def _runs(ops: list[str]) -> list[str]:
    # A valve op the meter answered late is sent again (the poller's retry; opening an open valve
    # is harmless): the meter may see it twice on a loaded machine, never a different op.
    return [op for i, op in enumerate(ops) if i == 0 or ops[i - 1] != op]


def test_an_authenticated_valve_command_opens_and_closes_the_meters_valve(tmp_path, mosquitto):
    # A water and a gas meter with valve control enabled, a heat meter without it, an
    # electricity meter (no valve) on one RS-485 line; commands come over MQTT with the node's
    # HMAC key.  The simulated meters' valves move, each command has its result and event,
    # the next reading carries the valve's state, and refused commands move nothing.
    import paho.mqtt.client as mqtt

    from meternode.link.actions import make_command
    from umeter_hil.bussim import CJT188Meter, DLT645Meter

    water = CJT188Meter(0x10, "00000000001234")
    gas = CJT188Meter(0x30, "00000000005678", volume_m3=1024.5)
    heat = CJT188Meter(0x20, "00000000009012")
    elec = DLT645Meter("000000123456")
    root = _flash(tmp_path)
    with SimBus([water, gas, heat, elec]) as b1, Consumer(tmp_path / "db.sqlite", "127.0.0.1", mosquitto.port) as c:
        meters = [
            {"bus": "rs485", "protocol": "cjt188", "type": 16, "address": "00000000001234", "valve_control": True},
            {"bus": "rs485", "protocol": "cjt188", "type": 48, "address": "00000000005678", "valve_control": True},
            {"bus": "rs485", "protocol": "cjt188", "type": 32, "address": "00000000009012"},
            {"bus": "rs485", "protocol": "dlt645", "address": "000000123456", "dis": ["00010000"]},
        ]
        for m in meters:
            m["interval_s"] = 2.0
        cfg = {
            "node_id": "valve1",
            "telemetry_s": 0.5,
            "cmd_key": KEY,
            "mqtt": {"host": "127.0.0.1", "port": mosquitto.port},
            "gateway": {"buses": {"rs485": {"port": b1.port}}, "meters": meters, "timeout_ms": 300, "retries": 1},
            "sim": {"realtime": True},
        }
        p = _start(root, cfg)
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        pub.connect("127.0.0.1", mosquitto.port)
        pub.loop_start()
        ctr = [0]

        def send(mid, args, op="valve"):
            ctr[0] += 1
            cmd = make_command(bytes.fromhex(KEY), "valve1", op, args, ctr[0], int(time.time()) + 600, mid)
            pub.publish("umeter/valve1/cmd", cmd, qos=1).wait_for_publish(5)

        def result(mid, timeout=20):
            _wait(lambda: any(r["id"] == mid for r in c.results("valve1")), p, root, timeout, f"result {mid}")
            return next(r for r in c.results("valve1") if r["id"] == mid)

        def status(meter):
            rs = [r for r in c.records("valve1", "reading") if r["meter"] == meter]
            return rs[-1]["status"] if rs else None

        try:
            _wait(lambda: {r["meter"] for r in c.records("valve1", "reading")} >= {water.meter_id, gas.meter_id},
                  p, root, 30, "readings of the water and gas meters")
            assert status(water.meter_id) == [] and not water.valve_closed
            send("close-w", {"meter": water.meter_id, "valve": "close"})
            assert result("close-w") == {"id": "close-w", "ok": True, "status": "done",
                                         "result": {"meter": water.meter_id, "valve": "closed"}}
            assert water.valve_closed and _runs(water.valve_commands) == ["close"]
            _wait(lambda: status(water.meter_id) == ["valve_closed"], p, root, 10, "a reading with the valve closed")
            send("close-g", {"meter": gas.meter_id, "valve": "close"})
            assert result("close-g")["ok"] and gas.valve_closed
            send("open-w", {"meter": water.meter_id, "valve": "open"})
            assert result("open-w")["result"] == {"meter": water.meter_id, "valve": "open"}
            assert not water.valve_closed and _runs(water.valve_commands) == ["close", "open"]
            _wait(lambda: status(water.meter_id) == [], p, root, 10, "a reading with the valve open again")
            # refused: no effect on any meter, a cmd_rejected event each
            send("unknown", {"meter": "cjt188-10-99999999999999", "valve": "close"})
            send("no-valve", {"meter": elec.meter_id, "valve": "close"})
            send("not-enabled", {"meter": heat.meter_id, "valve": "close"})
            send("bad-args", {"meter": water.meter_id, "valve": "shut"})
            why = {mid: result(mid)["why"] for mid in ("unknown", "no-valve", "not-enabled", "bad-args")}
            assert why == {
                "unknown": "invalid: no meter cjt188-10-99999999999999 on this node (meters with a valve: "
                           "cjt188-10-00000000001234, cjt188-30-00000000005678, cjt188-20-00000000009012)",
                "no-valve": "invalid: meter dlt645-000000123456 has no valve (CJ/T 188 water, gas and heat meters "
                            "have one)",
                "not-enabled": "invalid: meter cjt188-20-00000000009012: valve_control is not enabled in its config",
                "bad-args": 'invalid: valve needs meter (its id) and valve: "open" or "close"',
            }, why
            assert _runs(water.valve_commands) == ["close", "open"]
            assert not heat.valve_commands and not heat.valve_closed
            # a meter that does not answer: the command fails, saying so
            gas.dead = True
            send("open-g", {"meter": gas.meter_id, "valve": "open"})
            r = result("open-g")
            assert (r["ok"], r["status"]) == (False, "failed") and "no answer" in r["why"], r
            assert gas.valve_closed
            _wait(lambda: len([e for e in c.records("valve1", "event") if e["event"] == "valve"]) >= 4, p, root, 10,
                  "the valve events")
        finally:
            pub.loop_stop()
            p.kill()
            p.wait()
        text = (root / "console.log").read_text()
        assert "Traceback" not in text, text
        ev = [(e["arg"], e["text"]) for e in c.records("valve1", "event") if e["event"] == "valve"]
        assert ev[:3] == [(1, "closed " + water.meter_id), (1, "closed " + gas.meter_id), (0, "open " + water.meter_id)]
        assert ev[3][0] == 2 and ev[3][1].startswith("open " + gas.meter_id + ": no answer"), ev
        rejected = [e["text"] for e in c.records("valve1", "event") if e["event"] == "cmd_rejected"]
        assert [t.split(" ")[0] for t in rejected] == ["unknown", "no-valve", "not-enabled", "bad-args"], rejected
