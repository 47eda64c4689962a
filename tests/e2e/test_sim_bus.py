"""`umeter sim --bus`: every virtual node (the real firmware on the unix port) polls its own
simulated meters — DL/T 645, CJ/T 188 water and gas, M-Bus heat, Modbus RTU — over pty buses;
the READING records reach a real Mosquitto, the consumer's database and the sim's own view, with
the values the simulated meters put on the line, advancing as the meters' registers do.  A
meter that stops answering shows as failing, with the node's reason and its last reading kept,
and as answering again when it does."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
from decimal import Decimal

import pytest
from rich.console import Console

from umeter import unixport
from umeter.cli.sim import json_line, render_table
from umeter.consumer import Consumer
from umeter.sim import SimRun

UMETER = [sys.executable, "-m", "umeter"]
NODES = ("node-01", "node-02")
# meter id -> (protocol, its total that advances, unit), for node number k (1-based)
EXPECTED = {
    "dlt645-0000001234{k:02d}": ("dlt645", "energy_import", "kWh"),
    "cjt188-10-0000000000{k:02d}01": ("cjt188", "water_volume", "m³"),
    "cjt188-30-0000000000{k:02d}02": ("cjt188", "gas_volume", "m³"),
    "mbus-123456{k:02d}": ("mbus", "heat_energy", "kWh"),
    "modbus-7": ("modbus", "energy_import", "kWh"),
}


def _value(reading: dict, quantity: str) -> tuple[Decimal, str]:
    for r in reading["readings"]:
        if r["quantity"] == quantity:
            return Decimal(r["value"]), r["unit"]
    raise AssertionError(f"no {quantity} in {reading}")


@pytest.mark.mosquitto
def test_sim_bus_readings_of_every_protocol_reach_the_broker_and_the_database(tmp_path, mosquitto):
    db = tmp_path / "meter.sqlite"
    argv = [*UMETER, "sim", "-n", "2", "--bus", "dlt645,188,mbus,modbus", "--duration", "14", "--json",
            "--db", str(db), "--broker", mosquitto.url]  # fmt: skip
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    docs = [json.loads(ln) for ln in r.stdout.splitlines()]
    summary, lines = docs[-1], docs[:-1]
    assert re.search(r"Nodes run with a \d+k heap instead of the sim board's 288k: the gateway service", r.stderr)
    assert "Meter buses on every node: a DL/T 645-2007 electricity meter; a CJ/T 188 water meter" in r.stderr
    gw = summary["gateway"]
    assert set(gw) == set(NODES)
    c = Consumer(db)
    try:
        for k, node in enumerate(NODES, 1):
            ids = {mid.format(k=k): spec for mid, spec in EXPECTED.items()}
            g = gw[node]
            assert g["on"] is True and g["error"] is None and g["failing"] == [], g
            assert {m["meter"] for m in g["meters"]} == set(ids) and g["answering"] == 5
            readings = [x for x in c.records(node, "reading")]
            assert {x["meter"] for x in readings} == set(ids), "a reading of every meter in the database"
            seqs = c.seqs(node)
            assert seqs == list(range(1, len(seqs) + 1)), "records once each, in order"
            for m in g["meters"]:
                proto, quantity, unit = ids[m["meter"]]
                assert m["protocol"] == proto and m["state"] == "ok" and m["received"] >= 1, m
                mine = [x for x in readings if x["meter"] == m["meter"]]
                totals = [_value(x, quantity) for x in mine]
                assert all(u == unit for _, u in totals), (m["meter"], totals)
                values = [v for v, _ in totals]
                # what the node read is what the simulated meter put on the line: exactly
                sent = {Decimal(a[quantity]) for a in m["sim"]["answered"] if quantity in a}
                assert values[-1] in sent, (m["meter"], values[-1], sorted(sent))
                shown = {v["quantity"]: Decimal(v["value"]) for v in m["values"]}
                assert shown[quantity] in sent and shown[quantity] <= Decimal(m["sim"]["holds"][quantity])
                # and the registers advance with time, never back
                assert values == sorted(values), (m["meter"], values)
                if len(values) >= 2:
                    assert values[-1] > values[0], (m["meter"], values)
            # read every 5 s: in 14 s (less the node's start) at least one meter twice, on a loaded machine too
            assert any(len([x for x in readings if x["meter"] == mid]) >= 2 for mid in ids), readings
            # the per-interval lines carry the same gateway state
            last = [d for d in lines if d["node"] == node][-1]
            assert last["gateway"]["answering"] == 5 and "sim" in last["gateway"]["meters"][0]
        assert summary["db"]["records"][NODES[0]] >= 10 and summary["db"]["duplicates"] == 0
    finally:
        c.close()


@pytest.mark.mosquitto
def test_a_meter_that_stops_answering_shows_as_failing_and_as_answering_again(tmp_path, mosquitto):
    run = SimRun(nodes=1, broker_url=mosquitto.url, bus=["cjt188", "modbus"], bus_interval_s=2.0, workdir=tmp_path)
    with run:
        water = run.buses["node-01"].meter("cjt188-10-00000000000101")

        def wait(cond, timeout, what):
            deadline = time.monotonic() + timeout
            while True:
                v = run.snapshot()[0]
                if cond(v):
                    return v
                assert time.monotonic() < deadline, f"timed out waiting for {what}: {json_line(v)}"
                time.sleep(0.2)

        v = wait(lambda v: all(m.state(v.gateway_on) == "ok" for m in v.meters.values()), 20, "every meter read")
        assert v.gateway_on is True and len(v.meters) == 3
        water.dead = True
        # the METER event comes over MQTT, the reason from the node's console (read every 0.2 s)
        v = wait(lambda v: v.meters[water.meter_id].state(v.gateway_on) == "failing" and v.meters[water.meter_id].why,
                 20, "the water meter failing")
        m = v.meters[water.meter_id]
        kept = m.values
        assert m.why == "no answer in 500 ms (2 tries)", m.why
        con = Console(file=io.StringIO(), width=80, record=True, color_system=None)
        con.print(render_table([v], "mqtt://x", time.monotonic() - 10, width=80))
        text = con.export_text()
        lines = text.splitlines()
        assert max(len(ln) for ln in lines) <= 80, text
        assert any(ln.startswith("node-01") and ln.split()[2] == "2/3" for ln in lines), text  # meters 2 of 3
        row = next(ln for ln in lines if water.meter_id in ln and "failing" in ln)
        assert kept[0]["value"] in row, (row, kept)  # its last reading stays in the table
        assert (
            "node-01 cjt188-10-00000000000101: no answer in 500 ms (2 tries) for " in text.replace("\n", "")
        ), text
        assert "stays, marked stale" in text.replace("\n", "")
        doc = json.loads(json_line(v))["gateway"]
        assert doc["failing"] == [water.meter_id] and doc["answering"] == 2
        wm = next(x for x in doc["meters"] if x["meter"] == water.meter_id)
        assert (wm["state"], wm["error"], wm["values"]) == ("failing", "no answer in 500 ms (2 tries)", kept)
        water.dead = False
        v = wait(lambda v: v.meters[water.meter_id].state(v.gateway_on) == "ok", 30, "the water meter back")
        assert Decimal(v.meters[water.meter_id].values[0]["value"]) > Decimal(kept[0]["value"])


# A board heap in which a --bus node boots but its gateway's gate finds too little free: the
# sim board's own 288k until the fifth RAM round, after which the gateway fitted there (on a
# 32-bit build of the unix port the node holds ~70 % as much).
_SHORT = "256k" if unixport.word_bytes() == 8 else "176k"


def test_a_node_whose_gateway_lacks_heap_is_started_again_with_what_it_needs(tmp_path, monkeypatch):
    # A board whose heap is too small for --bus: the node's gate turns the gateway off and says
    # how much it lacks; the sim adds it (16 KiB steps) and starts the node again, and its meters
    # are read.  With --heap given, the node stays as asked, its gateway off, and says why.
    from umeter import sim

    monkeypatch.setattr(sim, "BUS_HEAP", _SHORT)
    board = sim.board_definition
    monkeypatch.setattr(sim, "board_definition", lambda name: {**board(name), "heap": _SHORT})
    lines: list[str] = []
    run = SimRun(nodes=1, bus=["dlt645", "mbus"], bus_interval_s=2.0, workdir=tmp_path,
                 on_console=lambda node, ln: lines.append(ln))
    with run:
        deadline = time.monotonic() + 30
        while True:
            v = run.snapshot()[0]
            if v.gateway_on and all(m.received for m in v.meters.values()):
                break
            assert time.monotonic() < deadline, (run.notes, lines[-20:])
            time.sleep(0.2)
    assert v.restarts == 1, (v.restarts, lines)
    note = run.notes[-1]
    m = re.fullmatch(rf"node-01: the gateway needs (\d+) bytes free and had (\d+) with a {_SHORT} heap; "
                     r"nodes run with (\d+)k from now on \(restarted\)\.", note)
    assert m, run.notes
    need, free, heap_k = (int(x) for x in m.groups())
    assert need > free and heap_k * 1024 >= int(_SHORT[:-1]) * 1024 + need - free and heap_k % 16 == 0, note
    assert any(ln.startswith("umeter sim: starting the node again with a") for ln in lines), lines
    assert any("gateway off:" in ln for ln in lines) and any("gateway on:" in ln for ln in lines), lines
    asked = SimRun(nodes=1, bus=["dlt645", "mbus"], heap=_SHORT, workdir=tmp_path / "asked")
    with asked:
        deadline = time.monotonic() + 20
        while asked.snapshot()[0].gateway_on is not False:
            assert time.monotonic() < deadline, asked.vnodes[0].log_tail()
            time.sleep(0.2)
        time.sleep(1.0)
        v = asked.snapshot()[0]
    assert v.restarts == 0 and v.gateway_on is False and v.gateway_error.startswith("gateway off: "), v
    assert all(m.state(False) == "off" for m in v.meters.values())
