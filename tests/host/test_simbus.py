"""`umeter sim --bus` on the host side, without nodes: the protocol list, the meters each node
gets (their frames decode, with `umeter decode`'s codecs, to the registers the simulated meter
says it holds), what the host makes of a node's readings, events and console lines, and how
the table and lines show it in 80 columns."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from decimal import Decimal

import pytest
from rich.console import Console

from umeter import simbus
from umeter.bus import decode_frame
from umeter.cli.sim import _unread_error, json_line, meter_line, render_line, render_table
from umeter.errors import ConfigError
from umeter.sim import NodeView, scenario

UMETER = [sys.executable, "-m", "umeter"]


def test_protocol_lists():
    assert simbus.parse_protocols("dlt645,188, MBus") == ["dlt645", "cjt188", "mbus"]
    assert simbus.parse_protocols("all") == simbus.parse_protocols("") == list(simbus.PROTOCOLS)
    with pytest.raises(ConfigError, match=r"unknown bus protocol 'iec62056' in --bus '645,iec62056'") as e:
        simbus.parse_protocols("645,iec62056")
    assert "dlt645 (or 645), cjt188 (or 188), mbus, modbus" in e.value.hint
    with pytest.raises(ConfigError, match="'dlt645' is given twice"):
        simbus.parse_protocols("645,dlt645")


def test_bad_bus_options_are_one_line_errors_before_anything_starts():
    r = subprocess.run([*UMETER, "sim", "--bus", "modbus,profibus", "--duration", "5"], capture_output=True, text=True,
                       timeout=30)  # fmt: skip
    assert r.returncode == 1 and r.stderr.startswith("umeter: error: unknown bus protocol 'profibus'"), r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run([*UMETER, "sim", "--board", "pico_w_mcp3208", "--bus", "--duration", "5"], capture_output=True,
                       text=True, timeout=30)  # fmt: skip
    assert r.returncode == 1, r.stderr
    assert "--bus mbus: board pico_w_mcp3208 has no 'mbus' bus (its buses: rs485) — leave mbus out" in r.stderr


def _request(bm) -> bytes:
    from meternode.gateway import cjt188, dlt645, mbus, modbus

    buf = bytearray(64)
    c = bm.config
    if bm.protocol == "dlt645":
        n = dlt645.read_request(buf, c["address"], 0x00010000)
    elif bm.protocol == "cjt188":
        n = cjt188.read_request(buf, c["type"], c["address"], 1)
    elif bm.protocol == "mbus":
        n = mbus.req_ud2(buf, c["primary"])
    else:
        n = modbus.read_request(buf, c["unit"], 4, 0, 9)
    return bytes(buf[:n])


@pytest.mark.parametrize("index", [0, 2])
def test_each_node_s_meters_answer_with_the_registers_they_say_they_hold(index):
    """What `sim.answered` reports is what a decoder reads from the frame the meter sent: the
    e2e test holds the node's readings against it, so it must not be taken on trust."""
    meters = simbus.node_meters(index, list(simbus.PROTOCOLS))
    assert [(bm.protocol, bm.kind, bm.bus) for bm in meters] == [
        ("dlt645", "electricity", "rs485"), ("cjt188", "water", "rs485"), ("cjt188", "gas", "rs485"),
        ("mbus", "heat", "mbus"), ("modbus", "electricity", "rs485"),
    ]  # fmt: skip
    assert meters[0].meter_id == f"dlt645-0000001234{index + 1:02d}"
    short = {"dlt645": "645", "cjt188": "188", "mbus": "mbus", "modbus": "modbus"}
    for bm in meters:
        m = bm.meter
        m.at = m.t0 + 3600.0  # an hour after it started
        frame = m.rsp_ud(bm.config["primary"]) if bm.protocol == "mbus" else m.answer(_request(bm))
        held = m.totals()
        m.at = None
        assert held, bm.meter_id
        if bm.protocol == "modbus":  # the registers named by the meter's map, as the node's driver does
            from meternode.gateway import decode, modbus

            readings = decode.modbus(frame, (modbus.named(bm.config["map"]), 0))["readings"]
        else:
            readings = decode_frame(short[bm.protocol], frame)["readings"]
        got = {r["quantity"]: (Decimal(r["value"]), r["unit"]) for r in readings}
        main = {"electricity": "energy_import", "water": "water_volume", "gas": "gas_volume", "heat": "heat_energy"}
        assert main[bm.kind] in got.keys() & held.keys(), (bm.meter_id, got, held)
        for q in got.keys() & held.keys():  # (one DL/T 645 read carries one register)
            assert got[q][0] == Decimal(held[q]), (bm.meter_id, q, got[q], held[q])
            assert got[q][1] in ("kWh", "m³"), got[q]
    # an hour of the demo's rates: 7.2 kWh of the EV charger, 600 L of water
    base = {bm.kind + bm.protocol: bm for bm in meters}
    m = base["electricitydlt645"].meter
    assert m.totals()["energy_import"] == f"{1234.56 + 100 * index:.2f}"
    m.at = m.t0 + 3600
    assert Decimal(m.totals()["energy_import"]) - Decimal(f"{1234.56 + 100 * index:.2f}") == Decimal("7.20")
    w = base["watercjt188"].meter
    w.at = w.t0 + 3600
    assert Decimal(w.totals()["water_volume"]) == Decimal("321.090") + index + Decimal("0.600")


def _mv(mid="cjt188-10-00000000000101", proto="cjt188", kind="water") -> simbus.MeterView:
    return simbus.MeterView(mid, proto, "rs485", kind)


def _reading(mid, seq, value, quantity="water_volume", unit="m³", status=()):
    return {"meter": mid, "seq": seq, "ts": 1_800_000_000 + seq, "meter_ts": None, "status": list(status),
            "readings": [{"code": "8-0:1.0.0", "quantity": quantity, "v": 0, "e": 0, "value": value, "unit": unit}]}


def test_a_meter_s_state_follows_its_node_s_records_in_sequence_order():
    m = _mv()
    assert m.state() == "waiting" and m.state(False) == "off"
    m.on_reading(_reading(m.meter_id, 5, "321.09000"))
    assert m.state() == "ok" and m.headline() == ("321.09000 m³", "—")
    m.on_event({"event": "meter", "arg": 1, "text": "silent " + m.meter_id, "seq": 7})
    assert m.state() == "failing"
    m.on_reading(_reading(m.meter_id, 3, "321.08000"))  # an older record, resent: changes nothing
    assert m.state() == "failing" and m.values[0]["value"] == "321.09000" and m.received == 1
    m.on_event({"event": "meter", "arg": 2, "text": "back " + m.meter_id, "seq": 9})
    m.on_reading(_reading(m.meter_id, 10, "321.10000"))
    assert m.state() == "ok" and m.received == 2 and m.seq == 10
    assert simbus.event_meter({"event": "meter", "arg": 1, "text": "silent mbus-12345601"}) == "mbus-12345601"
    assert simbus.event_meter({"event": "meter", "arg": 3, "text": "modbus-7 exception 2"}) is None


def test_console_lines_about_the_gateway():
    assert simbus.console_gateway("[12] gateway: meter mbus-12345601 silent: no answer in 500 ms (2 tries)") == (
        "silent", "mbus-12345601", "no answer in 500 ms (2 tries)")
    assert simbus.console_gateway("[12] gateway: meter modbus-7 answers again") == ("back", "modbus-7", None)
    off = "gateway off: 70944 bytes free, it needs 171349 (raise the heap, or ship .mpy / frozen)"
    assert simbus.console_gateway("[3] " + off) == ("off", None, off)
    assert simbus.console_gateway("[3] gateway on: 184224 bytes free before, 91968 after") == ("on", None, None)
    assert simbus.console_gateway("[3] gateway: bus 'x' is not in board.buses (have: rs485) (meter skipped)") == (
        "skipped", None, "bus 'x' is not in board.buses (have: rs485)")
    assert simbus.console_gateway("[3] link up: 127.0.0.1:1883") == ("", None, None)


def _views() -> list[NodeView]:
    now = time.monotonic()
    t = {"v": 231.05, "f": 50.0, "p": 2965.81, "e_imp_wh": 1234.5, "e_exp_wh": 0.0, "seq": 7,
         "elements": [{"i": 13.5, "pf": 0.9509, "q": 963.6}]}  # fmt: skip
    views = []
    for k in range(2):
        v = NodeView(f"node-0{k + 1}", scenario("house"), "online", t, now, 12)
        v.gateway_on = True
        for bm in simbus.node_meters(k, list(simbus.PROTOCOLS)):
            mv = simbus.MeterView(bm.meter_id, bm.protocol, bm.bus, bm.kind)
            mv.on_reading(_reading(bm.meter_id, 3, "4321.012", "heat_energy", "kWh") if bm.kind == "heat" else
                          _reading(bm.meter_id, 3, "1234.57", "energy_import", "kWh"))
            v.meters[bm.meter_id] = mv
        views.append(v)
    bad = views[1].meters["mbus-12345602"]
    bad.on_event({"event": "meter", "arg": 1, "text": "silent mbus-12345602", "seq": 9})
    bad.why, bad.silent_at = "no answer in 500 ms (2 tries)", now - 6
    off = NodeView("node-03", scenario("shop"), "online", t, now, 12)
    off.gateway_on, off.gateway_error = False, "gateway off: 70944 bytes free, it needs 171349 (raise the heap)"
    off.meters = {"modbus-7": _mv("modbus-7", "modbus", "electricity")}
    return [*views, off]


@pytest.mark.parametrize("width", [80, 120])
def test_the_table_shows_each_node_s_meters_and_why_one_fails_within_the_width(width):
    con = Console(file=io.StringIO(), width=width, record=True, color_system=None)
    con.print(render_table(_views(), "mqtt://127.0.0.1:1883", time.monotonic() - 5, width=width))
    text = con.export_text()
    lines = text.splitlines()
    assert max(len(ln) for ln in lines) <= width, text
    head = lines[1].split()
    assert head[:3] == ["node", "state", "meters"], head
    rows = {ln.split()[0]: ln.split() for ln in lines[3:6]}
    assert (rows["node-01"][2], rows["node-02"][2], rows["node-03"][2]) == ("5/5", "4/5", "off")
    meter_rows = [ln for ln in lines if ln.startswith("node-0") and ("-" in ln.split()[1] or ln.split()[1] == "meter")]
    failing = next(ln for ln in meter_rows if "mbus-12345602" in ln)
    assert failing.split()[2] == "failing" and "4321.012 kWh" in failing, failing
    assert "…" not in "\n".join(meter_rows)
    flat = text.replace("\n", "")
    assert "node-02 mbus-12345602: no answer in 500 ms (2 tries) for 6 s; its last reading (4321.012 kWh" in flat
    assert "node-03: gateway off: 70944 bytes free, it needs 171349" in flat
    meter_head = next(ln for ln in lines if ln.split()[:3] == ["node", "meter", "state"]).split()
    assert meter_head[3:6] == ["reading", "now", "age"], meter_head


def test_many_meters_show_the_failing_ones_first_and_say_how_many_more():
    con = Console(file=io.StringIO(), width=80, record=True, color_system=None)
    con.print(render_table(_views(), "mqtt://127.0.0.1:1883", time.monotonic(), width=80, meter_rows=4))
    text = con.export_text()
    assert "mbus-12345602" in text and "modbus-7" in text  # failing and off rows are kept
    assert "… and 7 more meters answering (--json lists every one)" in text


def test_plain_and_json_lines_carry_the_gateway():
    v = _views()[1]
    assert render_line(v).endswith(" meters=4/5 seq=7")
    bad = v.meters["mbus-12345602"]
    assert meter_line(v, bad).startswith("node-02 meter mbus-12345602: no answer in 500 ms (2 tries) for ")
    ok = v.meters["modbus-7"]
    assert meter_line(v, ok) == "node-02 meter modbus-7 ok energy_import=1234.57 kWh seq=3"
    g = json.loads(json_line(v, {"modbus-7": {"requests": 3, "answers": 3}}))["gateway"]
    assert (g["on"], g["answering"], g["failing"]) == (True, 4, ["mbus-12345602"])
    m = {x["meter"]: x for x in g["meters"]}
    assert m["mbus-12345602"]["error"] == "no answer in 500 ms (2 tries)" and m["mbus-12345602"]["state"] == "failing"
    assert m["modbus-7"]["sim"] == {"requests": 3, "answers": 3} and m["modbus-7"]["values"][0]["value"] == "1234.57"
    assert "gateway" not in json.loads(json_line(NodeView("node-09", scenario("shop"))))


def test_meters_that_sent_nothing_make_an_error_naming_each_node_s_reason_once():
    views = _views()
    unread = [(v, m) for v in views for m in v.meters.values() if not m.received]
    e = _unread_error(views, unread, 11, 12.0)
    assert str(e).startswith("no reading from 1 of 11 meters in 12 s (node-03: gateway off: 70944 bytes free")
    assert "more heap" in e.hint
