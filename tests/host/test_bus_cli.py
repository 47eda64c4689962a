"""`umeter decode 645|188|mbus|modbus` and `umeter bus scan`: fields and readings of published
frames (sources cited in tests/host/test_gateway_codecs.py), JSON with the issue's keys, stdin,
and one-line errors with exit 1 for a bad checksum or a cut frame; discovery on the virtual
buses and, through the raw REPL, on a virtual board whose buses have the simulated meters
behind them (the --port path a real board takes)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest

from umeter import unixport
from umeter.cli import main
from umeter_hil.bussim import SimBus, demo_config, demo_meters
from umeter_hil.vboard import VirtualBoard

UMETER = [sys.executable, "-m", "umeter"]
RESPONSE_645 = "FE FE 68 01 00 00 00 00 00 68 91 08 33 33 34 33 AB 89 67 45 17 16"  # rulego TestParseResponse


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*UMETER, *args], capture_output=True, text=True, input=stdin, timeout=60)


def test_decode_645_prints_fields_and_readings():
    r = run("decode", "645", RESPONSE_645)
    assert r.returncode == 0, r.stderr
    assert "address=000000000001" in r.stdout and "checksum_ok=True" in r.stdout
    assert "1-0:1.8.0      energy_import              123456.78 kWh" in r.stdout


def test_decode_json_has_the_issue_keys_and_reads_stdin():
    frame = "6810670517240000008116901F01000300002C000300002C0000000000000000FFC316\n"  # LuatOS capture
    r = run("decode", "188", "-", "--json", stdin=frame)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert {"protocol", "address", "control", "checksum_ok", "readings"} <= set(d)
    assert d["readings"][0] == {"quantity": "water_volume", "code": "8-0:1.0.0", "value": "3.00", "unit": "m³"}


def test_bad_checksum_and_truncated_frames_exit_1_with_one_line_saying_which():
    bad = RESPONSE_645[:-5] + "18 16"
    r = run("decode", "645", bad)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("umeter: error: 645 frame: bad checksum"), r.stderr
    r = run("decode", "mbus", "68 51 51 68 08 0B 72 54 02")
    assert r.returncode == 1 and "truncated" in r.stderr and "Traceback" not in r.stderr
    r = run("decode", "modbus", "11 03 06 AE 41 56 52 43 40 49 AE")
    assert r.returncode == 1 and "bad CRC" in r.stderr
    r = run("decode", "645", "zz")
    assert r.returncode == 1 and "not hex" in r.stderr


DEMO_IDS = {
    "dlt645-000000123456", "dlt645v97-000000654321", "cjt188-10-00000000001234", "cjt188-30-00000000005678",
    "modbus-7", "modbus-8", "mbus-12345678", "mbus-87654321",
}  # fmt: skip


def test_bus_scan_finds_the_virtual_meters():
    r = run("bus", "scan", "--board", "virtual", "--protocol", "645,mbus", "--json")
    assert r.returncode == 0, r.stderr
    found = {f["meter"] for f in json.loads(r.stdout)}
    assert found == {"dlt645-000000123456", "dlt645v97-000000654321", "mbus-12345678", "mbus-87654321"}
    r = run("bus", "scan", "--port", "/dev/ttyUSB9")
    assert r.returncode == 1 and "no such port /dev/ttyUSB9" in r.stderr and "Traceback" not in r.stderr


BUSES = {"rs485": {"uart": 1, "tx": 4, "rx": 5, "de": 6, "baud": 2400, "parity": "even"},
         "mbus": {"uart": 2, "tx": 17, "rx": 16, "profile": "mbus"}}  # fmt: skip


def _flash_node(vb: VirtualBoard, config: dict, buses: dict | None = None) -> None:
    # The firmware from source, the sim board's front end and, as on a real board, buses on
    # UARTs (an RS-485 transceiver with its DE pin, an M-Bus level converter).
    shutil.copytree(unixport.firmware_root() / "meternode", vb.flash / "lib" / "meternode",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    shutil.copy(unixport.firmware_root() / "main.py", vb.flash / "main.py")
    board = json.loads((unixport.boards_dir() / "sim.json").read_text())
    board["buses"] = buses or BUSES
    (vb.flash / "board.json").write_text(json.dumps(board))
    (vb.flash / "config.json").write_text(json.dumps(config))


def test_bus_scan_repeats_an_unanswered_mbus_request_once():
    # A meter that acknowledged SND_NKE is there: when its answer to REQ_UD2 does not come in
    # time (lost on the bus, a slow meter, a loaded host), the scan repeats the request once
    # (same FCB) instead of listing it as "mbus-p5" without its ident.  Twice unanswered: it
    # is listed by its primary address.
    import asyncio

    from meternode.gateway import scan

    board = json.loads((unixport.boards_dir() / "sim.json").read_text())
    rs485, mb = demo_meters()
    mb[0].faults += ["ok", "silent"]  # its ACK, then the first REQ_UD2 unanswered
    mb[1].faults += ["ok", "silent", "silent"]  # both REQ_UD2 unanswered
    with SimBus(rs485) as b1, SimBus(mb) as b2:
        cfg = {"gateway": demo_config(b1.port, b2.port)}
        res = asyncio.run(scan.discover(board, cfg, ("mbus",), (), (), (5, 6), 100, ["mbus"]))
    got = {(f["meter"], f["address"]) for f in res["found"] if isinstance(f["address"], int)}
    assert got == {("mbus-12345678", 5), ("mbus-p6", 6)}, res
    assert [f.get("secondary") for f in res["found"] if f["address"] == 5] == ["12345678"], res


def test_bus_scan_on_a_board_runs_discovery_there_through_the_raw_repl(tmp_path, capfd):
    # The node runs on the virtual board and polls the meters on its two UARTs; the scan stops
    # it (soft reset into the raw REPL) and the board itself scans its buses: the host opens no
    # bus, it only talks to the board's REPL.
    rs485, mb = demo_meters()
    with SimBus(rs485) as b1, SimBus(mb) as b2:
        vb = VirtualBoard(tmp_path / "vb", "sim", heap="512k", uarts={1: b1.port, 2: b2.port})
        gw = demo_config("unused", "unused", 1.0)
        del gw["buses"]
        _flash_node(vb, {"node_id": "scan1", "gateway": gw, "sim": {"realtime": True}, "store": {"path": "store"}})
        with vb:
            vb.wait_booted()
            deadline = time.monotonic() + 30
            while not all(m.answers for m in rs485 + mb) and time.monotonic() < deadline:
                time.sleep(0.1)  # the node is up and has read every meter
            assert all(m.answers for m in rs485 + mb), vb.console()
            before = len(b1.requests), len(b2.requests)
            rc = main(["bus", "scan", "--port", vb.port, "--mbus-primary", "0-10", "--probe", "000000111111",
                       "--json"])
            out, err = capfd.readouterr()
            assert rc == 0, err + vb.console()[-3000:]
            found = json.loads(out)
            assert {f["meter"] for f in found} == DEMO_IDS, found
            assert {f["bus"] for f in found if f["protocol"] == "mbus"} == {"mbus"}
            assert {(f["meter"], f["address"]) for f in found if f["protocol"] == "mbus"} == {
                ("mbus-12345678", 5), ("mbus-87654321", 6)}, "each M-Bus meter once, at its primary address"
            reqs = b1.requests[before[0]:]
            assert any(bytes.fromhex("68 11 11 11 00 00 00 68") in r for r in reqs), "the probe went out"
            assert len(b2.requests) - before[1] >= 11 + 10, "primary scan 0-10 and the secondary search"
            assert vb.pins_out().get(6) == 0, "the RS-485 driver released after the last request"
            # the node does not poll after the scan: the board waits in its raw REPL
            n = len(b1.requests)
            time.sleep(1.5)
            assert len(b1.requests) == n
            r = run("bus", "scan", "--port", vb.port, "--protocol", "188", "--bus", "rs485")
            assert r.returncode == 0, r.stderr
            assert "rs485    cjt188  00000000001234   cjt188-10-00000000001234" in r.stdout
            assert "2 meters answered on the buses of the board on" in r.stderr


def test_bus_scan_on_a_board_says_what_is_missing(tmp_path, capfd):
    with VirtualBoard(tmp_path / "bare", "sim") as vb:  # no firmware on it
        vb.wait_booted()
        assert main(["bus", "scan", "--port", vb.port]) == 1
        err = capfd.readouterr().err
        assert "cannot import the gateway" in err and "umeter provision" in err and "Traceback" not in err
    vb = VirtualBoard(tmp_path / "nowire", "sim", heap="512k")  # UARTs with nothing on them
    _flash_node(vb, {"node_id": "n", "sim": {}}, {**BUSES, "bad": {"uart": 9, "tx": 1, "rx": 2}})
    with vb:
        vb.wait_booted()
        r = run("bus", "scan", "--port", vb.port, "--mbus-primary", "0-2", "--timeout-ms", "50")
        assert r.returncode == 0, r.stderr
        assert "warning: bus bad: board.buses.bad.uart = 9 is above 7" in r.stderr, r.stderr
        assert "0 meters answered" in r.stderr and r.stdout == ""
        r = run("bus", "scan", "--port", vb.port, "--bus", "bad")
        assert r.returncode == 1 and "umeter: error: no bus could be scanned (bad: board.buses.bad.uart" in r.stderr
        assert main(["bus", "scan", "--port", vb.port, "--bus", "nope"]) == 1
        err = capfd.readouterr().err
        assert "umeter: error:" in err and "bus 'nope' is not in board.buses (have: bad, mbus, rs485)" in err, err


@pytest.mark.parametrize(("args", "why"), [
    (["--modbus-ids", "0-300"], "--modbus-ids '0-300' is outside 1-247"),
    (["--mbus-primary", "x"], "--mbus-primary 'x' is not LO-HI"),
    (["--probe", "12"], "probe address '12' is not 12 digits"),
])  # fmt: skip
def test_bus_scan_bad_options_are_one_line_errors(args, why, capfd):
    assert main(["bus", "scan", "--port", "/dev/null", *args]) == 1
    assert why in capfd.readouterr().err
