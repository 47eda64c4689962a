"""Fleet database and CLI: binding by unique id, ls/show/forget, errors for unknown nodes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from umeter import unixport
from umeter.errors import ConfigError
from umeter.inventory import Fleet

UMETER = str(Path(sys.executable).parent / "umeter")


def test_bind_refuses_a_second_name_for_a_board_and_a_second_board_for_a_name(tmp_path):
    f = Fleet(tmp_path / "f.sqlite")
    f.bind("aa01", "n1", "sim", "lab", "/dev/x", None)
    f.bind("aa01", "n1", "sim", "lab2", "/dev/y", None)  # same pair again: updated
    assert f.get("n1")["site"] == "lab2" and f.get("AA01")["node_id"] == "n1"
    with pytest.raises(ConfigError, match="already node 'n1', not 'n2'"):
        f.bind("aa01", "n2", "sim", "lab", "/dev/x", None)
    with pytest.raises(ConfigError, match="node 'n1' is bound to board aa01"):
        f.bind("bb02", "n1", "sim", "lab", "/dev/z", None)
    f.record("aa01", status="ok", version="1.0", files=3)
    assert f.get("n1")["status"] == "ok" and f.get("n1")["provisioned_at"]
    assert f.forget("n1") and f.get("n1") is None


def test_a_fleet_database_from_before_the_billing_offset_gets_its_column(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:  # the schema before the column (December 2026)
        db.execute(
            "CREATE TABLE nodes (uid TEXT PRIMARY KEY, node_id TEXT UNIQUE NOT NULL, board TEXT NOT NULL, "
            "site TEXT NOT NULL, port TEXT, serial TEXT, version TEXT, manifest_sha256 TEXT, files INTEGER, "
            "status TEXT NOT NULL, first_seen REAL NOT NULL, provisioned_at REAL)"
        )
        db.execute("INSERT INTO nodes VALUES ('aa01', 'n1', 'sim', 'lab', NULL, NULL, '1.0', NULL, 3, 'ok', 0, 0)")
    f = Fleet(path)
    assert f.get("n1")["utc_offset_min"] is None and f.offsets() == {}
    f.record("aa01", status="ok", utc_offset_min=330)
    f.record("aa01", status="failed")  # a later failure keeps what the node was given
    assert f.offsets() == {"n1": 330}
    f.set_offset("n1", -600)  # what the node itself said (umeter fleet health)
    assert Fleet(path).offsets() == {"n1": -600}


def test_cli_fleet_ls_show_and_unknown_node(tmp_path):
    env = dict(os.environ, UMETER_HOME=str(tmp_path), NO_COLOR="1")
    Fleet(tmp_path / "fleet.sqlite").bind("cc03", "meter-7", "sim", "roof", "/dev/x", "SER1")
    ls = subprocess.run([UMETER, "fleet", "ls", "--json"], capture_output=True, text=True, env=env)
    assert [n["node_id"] for n in json.loads(ls.stdout)] == ["meter-7"]
    show = subprocess.run([UMETER, "fleet", "show", "cc03"], capture_output=True, text=True, env=env)
    assert "meter-7" in show.stdout and "roof" in show.stdout and "keys" in show.stdout
    bad = subprocess.run([UMETER, "fleet", "show", "nope"], capture_output=True, text=True, env=env)
    assert bad.returncode == 1
    assert bad.stderr.strip() == "umeter: error: no node 'nope' in the fleet — see `umeter fleet ls`"


def test_cli_build_reports_one_line_and_a_bad_board(tmp_path):
    r = subprocess.run([UMETER, "build", "--board", "sim", "-o", str(tmp_path / "b")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Built ") and f"for sim ({unixport.native_arch()})" in r.stdout
    bad = subprocess.run([UMETER, "build", "--board", "nope"], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.startswith("umeter: error: unknown board 'nope' — known boards:")


def test_serial_number_resolves_to_its_port_and_an_unknown_one_is_a_clear_error(monkeypatch):
    from types import SimpleNamespace

    from serial.tools import list_ports

    from umeter.errors import TransportError
    from umeter.fleet import ports
    from umeter.transport import resolve_port

    fake = [SimpleNamespace(device="/dev/ttyACM3", serial_number="E6614C311B7C", vid=0x2E8A, pid=0x0005,
                            description="Board in FS mode")]  # fmt: skip
    monkeypatch.setattr(list_ports, "comports", lambda: fake)
    assert resolve_port(None, "e6614c311b7c") == "/dev/ttyACM3"
    assert ports() == [{"port": "/dev/ttyACM3", "serial": "E6614C311B7C", "vid_pid": "2e8a:0005",
                        "description": "Board in FS mode"}]  # fmt: skip
    with pytest.raises(TransportError, match="no port with USB serial number NOPE"):
        resolve_port(None, "NOPE")


def test_a_provisioned_node_bills_in_its_policys_local_time_and_a_mismatch_is_refused():
    from umeter.inventory import Device
    from umeter.policy import compile_source
    from umeter.provision import node_config

    board = json.loads((unixport.boards_dir() / "sim.json").read_text())
    pol = compile_source(
        {"name": "p", "utc_offset_min": 600, "tariffs": ["std"],
         "seasons": [{"start": "01-01", "weekday": [["00:00", "std"]]}]}
    )  # fmt: skip
    secrets = {"cmd_key": "00" * 32, "mqtt_password": "x"}
    dev = Device("n1", "sim", "lab", config={"policy": pol})
    assert node_config(dev, board, secrets)["utc_offset_min"] == 600
    dev = Device("n1", "sim", "lab", config={"policy": pol, "utc_offset_min": 60})
    why = r"inventory device 'n1': config\.utc_offset_min = 60, but config\.policy's utc_offset_min is 600"
    with pytest.raises(ConfigError, match=why):
        node_config(dev, board, secrets)
    dev = Device("n1", "sim", "lab", config={"utc_offset_min": 7})
    with pytest.raises(ConfigError, match=r"config\.utc_offset_min = 7 is not a whole quarter of an hour"):
        node_config(dev, board, secrets)


def test_fleet_health_judges_the_heap_and_the_clock_and_says_why_ntp_failed():
    from umeter.cli.fleet import judge

    heap = {"free": 40000, "alloc": 90000, "low": 30000}
    ok = judge({"heap": heap, "clock": {"epoch": 1000, "utc_offset_min": 0}}, 8, 60, 999.5, 1001.0)
    assert ok == {"status": ok["status"], "clock_skew_s": 0}
    old = judge({"heap": heap}, 8, 60, 999.5, 1001.0)  # firmware before the clock in status
    assert "clock_skew_s" not in old and "problem" not in old
    ntp = {"at": None, "error": "no answer from 10.0.0.1:123 in 3000 ms"}
    bad = judge({"heap": dict(heap, low=4096), "clock": {"epoch": 100, "ntp": ntp}}, 8, 60, 999.5, 1001.0)
    assert bad["clock_skew_s"] == -900
    assert bad["problem"] == (
        "heap low-water mark 4.0 KB, under 8 KB; "
        "clock off by -900 s, more than 60 s (ntp: no answer from 10.0.0.1:123 in 3000 ms)"
    )
    assert judge({"heap": heap, "clock": {"epoch": 1100}}, 8, 60, 999.5, 1001.0)["clock_skew_s"] == 99
    # a LoRaWAN node's clock comes from its network's DeviceTimeAns: why that failed is named too
    lw = {"at": None, "error": "the network did not answer DeviceTimeReq"}
    bad = judge({"heap": heap, "clock": {"epoch": 100, "lorawan": lw}}, 8, 60, 999.5, 1001.0)
    assert bad["problem"] == "clock off by -900 s, more than 60 s (lorawan: the network did not answer DeviceTimeReq)"


def test_the_status_line_of_the_clock_says_its_billing_time_and_its_last_ntp_sync():
    from umeter.cli.command import _clock_line

    line = _clock_line({"epoch": 1700000000, "utc_offset_min": 330, "ntp": {"at": 1699999400, "error": None}})
    assert line.startswith("clock: 2023-11-14 22:13:20 UTC (") and line.endswith(
        "billing time UTC+05:30, ntp: last sync 600 s ago"
    ), line
    line = _clock_line({"epoch": 946684900, "utc_offset_min": -210, "ntp": {"at": None, "error": "no answer"}})
    assert line.endswith("billing time UTC-03:30, ntp: never synced (last try: no answer)"), line
    line = _clock_line({"epoch": 1700000000, "lorawan": {"at": 1699913600, "error": "no time: 0 is not in 2020..2099"}})
    assert line.endswith("billing time UTC, lorawan: last sync 86400 s ago (last try: no time: 0 is not in 2020..2099)")


def test_the_status_line_of_lorawan_says_its_session_its_acked_seq_its_airtime_and_what_failed():
    from umeter.cli.command import _lora_line

    lo = {"joined": True, "acked": 41, "sent": 44, "nacks": 3, "failures": 0, "merged": 5, "unreadable": 0}
    lo.update(airtime_ms=1234, budget_ms=30000, busy=2, noise=0, errors=0, reboots=1, error="")
    assert _lora_line(lo) == (
        "lora: joined, acked to seq 41, 44 sent, 3 unacknowledged, airtime 1234 of 30000 ms today (busy 2, reboots 1)"
    )
    why = "join failed 3 times (no JOINED/JOIN_FAILED event within 20000 ms)"
    lo.update(joined=False, error=why)
    assert _lora_line(lo).startswith("lora: not joined,") and _lora_line(lo).endswith("last error: " + why)
