"""`umeter decode 645|188|mbus|modbus` and `umeter bus scan --board virtual`: fields and
readings of published frames (sources cited in tests/host/test_gateway_codecs.py), JSON with
the issue's keys, stdin, and one-line errors with exit 1 for a bad checksum or a cut frame."""

from __future__ import annotations

import json
import subprocess
import sys

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


def test_bus_scan_finds_the_virtual_meters():
    r = run("bus", "scan", "--board", "virtual", "--protocol", "645,mbus", "--json")
    assert r.returncode == 0, r.stderr
    found = {f["meter"] for f in json.loads(r.stdout)}
    assert {"dlt645-000000123456", "dlt645v97-000000654321", "mbus-12345678", "mbus-87654321"} <= found
    r = run("bus", "scan", "--port", "/dev/ttyUSB9")
    assert r.returncode == 1 and "not built yet" in r.stderr
