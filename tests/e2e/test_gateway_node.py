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
