"""`umeter sim` as a user runs it: plain lines on a pipe, clean errors, nothing left behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

UMETER = [sys.executable, "-m", "umeter"]


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*UMETER, *args], capture_output=True, text=True, timeout=timeout)


def test_sim_with_duration_prints_readings_from_every_node_and_exits_0():
    r = _run("sim", "--nodes", "3", "--duration", "6", "--interval", "0.5")
    assert r.returncode == 0, r.stderr
    for node, sc in (("node-01", "house"), ("node-02", "solar"), ("node-03", "shop")):
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith(node) and "V=" in ln]
        assert lines, f"no readings from {node}:\n{r.stdout}"
        assert sc in lines[-1]
    solar = [ln for ln in r.stdout.splitlines() if ln.startswith("node-02") and "P=" in ln][-1]
    assert re.search(r"P=-\d+ W", solar), solar
    assert "telemetry from 3 of 3" in r.stderr


def test_unreachable_broker_is_a_one_line_error_naming_it():
    r = _run("sim", "--broker", "mqtt://127.0.0.1:9", "--duration", "1")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "umeter: error: cannot reach MQTT broker mqtt://127.0.0.1:9 (Connection refused) — start the broker, "
        "or leave out --broker to use the embedded one"
    ]


def test_bad_options_are_usage_errors():
    assert _run("sim", "--nodes", "0").returncode == 2
    r = _run("sim", "--broker", "tcp://x:1", "--duration", "1")
    assert r.returncode == 1 and "bad broker URL 'tcp://x:1'" in r.stderr


def _node_pids(workdir: Path) -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if str(p.joinpath("cwd").resolve()).startswith(str(workdir)):
                    pids.append(int(p.name))
            except OSError:
                continue
    return pids


def test_ctrl_c_stops_every_virtual_node(tmp_path):
    proc = subprocess.Popen(
        [*UMETER, "sim", "--nodes", "2", "--keep"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    workdir = None
    deadline = time.monotonic() + 20
    while workdir is None and time.monotonic() < deadline:
        line = proc.stderr.readline()
        m = re.search(r"Node flash directories: (\S+)", line)
        if m:
            workdir = Path(m.group(1))
    assert workdir is not None
    while len(_node_pids(workdir)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    pids = _node_pids(workdir)
    assert len(pids) == 2
    proc.send_signal(signal.SIGINT)
    proc.wait(20)
    time.sleep(0.2)
    alive = [
        p for p in pids if os.path.exists(f"/proc/{p}") and "Z" not in Path(f"/proc/{p}/stat").read_text().split()[2]
    ]
    assert alive == [], f"virtual nodes left running: {alive}"
    assert (workdir / "node-01" / "console.log").exists()
