"""What `umeter sim` shows: a table that fits the terminal (80 columns and up) without cutting a
value short, and a node that fails says why — in the table, the plain lines, the JSON and the
exit code — instead of sitting at "no telemetry yet"."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import threading
import time

import pytest
from rich.console import Console

from umeter import unixport
from umeter.cli.sim import compact, json_line, render_line, render_table
from umeter.console import ConsoleTail, is_error
from umeter.sim import NodeView, SimRun, scenario

UMETER = [sys.executable, "-m", "umeter"]
TARIFFS = ["offpeak", "day", "peak"]


def _views() -> list[NodeView]:
    now = time.monotonic()
    t = {
        "v": 231.05, "f": 50.0, "p": 2965.81, "e_imp_wh": 1234.5, "e_exp_wh": 0.0, "seq": 7, "tariff": 2,
        "relay": True, "elements": [{"i": 13.5, "pf": 0.9509, "q": 963.6}],
    }  # fmt: skip
    solar = dict(t, p=-2127.3, e_imp_wh=0.0, e_exp_wh=98765.4, relay=False)
    views = [
        NodeView("node-01", scenario("house"), "online", t, now, 12),
        NodeView("node-02", scenario("solar"), "online", solar, now, 12),
        NodeView("node-03", scenario("shop"), "online", None, 0.0, 0),
    ]
    views[1].policy_event = {"event": "shed", "t": time.time() - 12}
    views[2].error, views[2].error_at = "link error: memory allocation failed, allocating 1280 bytes", now - 4
    return views


def _render(width: int, tariffs=None, db=False, logs=None) -> list[str]:
    con = Console(file=io.StringIO(), width=width, record=True, color_system=None)
    con.print(render_table(_views(), "mqtt://127.0.0.1:45678", time.monotonic() - 12, tariffs, db, width, logs))
    return con.export_text().splitlines()


def _header(lines: list[str]) -> list[str]:
    return lines[1].split()


@pytest.mark.parametrize("options", [{}, {"tariffs": TARIFFS, "db": True}], ids=["plain", "policy+db"])
def test_table_fits_80_columns_with_every_value_whole(options):
    lines = _render(80, **options)
    assert max(len(ln) for ln in lines) <= 80, "\n".join(lines)
    table = "\n".join(lines[:6])
    assert "…" not in table, table  # no cell cut short
    head = _header(lines)
    assert head[:7] == ["node", "state", "P", "W", "imp", "Wh", "exp"], head
    rows = lines[3:6]
    assert [r.split()[0] for r in rows] == ["node-01", "node-02", "node-03"]
    assert "+2.97k" in rows[0] and "1.23k" in rows[0] and "231.1" in rows[0]
    assert "-2.13k" in rows[1] and "98.8k" in rows[1]
    assert rows[2].split()[1] == "ERROR"
    if options:
        assert "relay" in head and "OFF" in rows[1], "the policy's relay state survives at 80 columns"


def test_wider_terminals_show_more_columns_and_names_are_never_cut():
    narrow, wide = _header(_render(80, TARIFFS, True)), _header(_render(120, TARIFFS, True))
    assert set(narrow) < set(wide) and {"PF", "event"} <= set(wide) - set(narrow), (narrow, wide)
    for w in (80, 120, 200):
        lines = _render(w, TARIFFS, True)
        assert max(len(ln) for ln in lines) <= w
        assert "…" not in "\n".join(lines[:6])
    assert _header(_render(200, TARIFFS, True))[-2:] == ["scenario", "msgs"], "everything fits at 200"


def test_a_failing_node_s_error_is_under_the_table_in_full_and_the_log_pane_is_cut_to_width():
    long = "node-01│ " + "x" * 200
    lines = _render(80, logs=["node-02│ [5] link up", long])
    text = "\n".join(lines)
    assert "node-03: link error: memory allocation failed, allocating 1280 bytes (4 s ago)" in text.replace("\n", "")
    assert lines[-1].startswith("node-01│ xxx") and len(lines[-1]) <= 80
    assert "node-02│ [5] link up" in lines


def test_compact_units_keep_three_significant_digits():
    assert [compact(x) for x in (0.0, 7.126, 12.5, 231.05, 999.4, 999.96, 2965.81, 98765.4, 1.5e6)] == [
        "0.00", "7.13", "12.5", "231", "999", "1.00k", "2.97k", "98.8k", "1.50M",
    ]  # fmt: skip
    assert (compact(-2127.3, sign=True), compact(963.6, sign=True), compact(None)) == ("-2.13k", "+964", "—")


def test_plain_and_json_lines_carry_the_last_error_while_nothing_came_after_it():
    v = _views()[2]
    assert render_line(v).endswith(
        "no telemetry yet; last error: link error: memory allocation failed, allocating 1280 bytes"
    )
    doc = json.loads(json_line(v))
    assert doc["error"].startswith("link error: memory") and doc["failing"] is True
    ok = _views()[0]
    ok.error, ok.error_at = "report skipped: MemoryError()", ok.received - 5  # before the last telemetry
    assert not ok.failing() and "error" not in render_line(ok)
    assert json.loads(json_line(ok))["failing"] is False


def test_console_lines_that_report_a_failure():
    bad = [
        "[1200] link error: memory allocation failed, allocating 1280 bytes",
        "[5] telemetry not sent: [Errno 104] ECONNRESET",
        "[5] report failed: flash full",
        "[5] uplink not started: memory allocation failed",
        "[5] store-and-forward off: 40000 bytes free, it needs 65536 (raise the heap)",
        "MemoryError: memory allocation failed, allocating 2672 bytes",
        "[5] health check failed (link not connected): resetting to roll back",
        "[5] link down: keepalive timeout",
    ]
    good = [
        "[5] link up: 127.0.0.1:1883",
        "[5] store-and-forward on: 122880 bytes free before, 63616 after",
        "[5] health check passed: v2",
        "Traceback (most recent call last):",
        '  File "main.py", line 27, in <module>',
        "[5] stopped",
        "[5] registers restored from checkpoint 3",
    ]
    assert [ln for ln in bad if not is_error(ln)] == []
    assert [ln for ln in good if is_error(ln)] == []


def test_console_tail_reads_complete_lines_as_the_file_grows(tmp_path):
    p = tmp_path / "console.log"
    t = ConsoleTail(p)
    assert t.poll() == []  # not there yet
    p.write_bytes(b"[1] umeter node n v1\n[2] link err")
    assert t.poll() == ["[1] umeter node n v1"] and t.last_error is None
    with open(p, "ab") as f:
        f.write(b"or: refused\r\n")
    assert t.poll() == ["[2] link error: refused"]
    assert t.last_error.text == "link error: refused"


class _Refuser:
    """A TCP server that accepts MQTT connections and closes them at once (a broker that is
    there but never answers): a node pointed at it runs, measures and sends nothing."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sock.settimeout(0.2)
        self._stop = False
        self._t = threading.Thread(target=self._serve, daemon=True)
        self._t.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            c.close()

    def close(self) -> None:
        self._stop = True
        self._t.join(2)
        self.sock.close()


def test_a_node_that_cannot_publish_shows_its_link_error_while_the_others_report(tmp_path):
    refuser = _Refuser()

    class OneBroken(SimRun):
        def node_config(self, node_id, sc, n):
            c = super().node_config(node_id, sc, n)
            if node_id == "node-02":
                c["mqtt"]["port"] = refuser.port
            return c

    lines: list[tuple[str, str]] = []
    try:
        with OneBroken(nodes=2, workdir=tmp_path, on_console=lambda n, ln: lines.append((n, ln))) as run:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                v = {x.node_id: x for x in run.snapshot()}
                if v["node-01"].messages >= 2 and v["node-02"].error:
                    break
                time.sleep(0.2)
    finally:
        refuser.close()
    v = {x.node_id: x for x in run.snapshot()}
    assert v["node-01"].messages >= 2 and not v["node-01"].failing()
    assert v["node-02"].telemetry is None and v["node-02"].failing()
    assert v["node-02"].error.startswith("link error:"), v["node-02"].error
    assert any(n == "node-02" and "link error:" in ln for n, ln in lines), "--logs sees the console"
    assert "last error: link error:" in render_line(v["node-02"])


def test_cli_exits_1_when_a_node_sent_nothing_and_names_its_error():
    # a heap too small to import the firmware (96 KB on the 64-bit port, 48 on a 32-bit
    # build): the node crashes at boot, is started again, and crashes again; the run says so
    # and fails
    r = subprocess.run(
        [*UMETER, "sim", "-n", "1", "--heap", f"{12 * unixport.word_bytes()}k", "--duration", "4", "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 1, r.stderr
    *lines, summary = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert summary["telemetry_from"] == 0 and summary["no_telemetry"] == ["node-01"], summary
    assert summary["errors"]["node-01"].startswith("MemoryError: memory allocation failed"), summary
    assert summary["restarts"]["node-01"] >= 1, "a crashed node is started again, as a watchdog would"
    assert lines and lines[-1]["failing"] and lines[-1]["error"].startswith("MemoryError")
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("umeter: error: no telemetry from 1 of 1 node in ") and "node-01: MemoryError" in last
    assert last.endswith("— see their consoles with --logs (or --keep: console.log in each node's directory)")


@pytest.mark.parametrize("board", ["esp32_devkitc", "pico_w"])
def test_sim_runs_a_real_board_s_definition_with_the_sim_front_end(board):
    # it used to die with a MicroPython MemoryError (esp32_devkitc) or "no module named 'rp2'"
    r = subprocess.run(
        [*UMETER, "sim", "-n", "1", "--board", board, "--duration", "4", "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    *lines, summary = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert summary["telemetry_from"] == 1 and not summary["errors"], summary
    # the newest line that carries telemetry (on a loaded machine the last may be an event's)
    tele = [ln["telemetry"] for ln in lines if ln.get("telemetry")]
    assert tele and tele[-1]["v"] == pytest.approx(231.0, abs=0.5), lines
    assert f"The {board} board's channels and calibration run with the sim front end" in r.stderr
