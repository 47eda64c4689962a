"""From `umeter vboard start` to a running node (issue 11 item 3): provisioned virtual boards
publish telemetry on a wall-clock timebase, stay reachable by stock mpremote while the node
runs, can be provisioned again with the node running, and `umeter logs NODE` shows their
console. Real firmware (the x64 build) on the unix port behind a pty, the embedded broker."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from umeter.provision import provision
from umeter.vnodes import VNodes

MPREMOTE = str(Path(sys.executable).parent / "mpremote")
UMETER = [sys.executable, "-m", "umeter"]


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("UMETER_HOME", str(h))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    return h


def _telemetry(host: str, port: int, node: str) -> queue.Queue:
    q: queue.Queue = queue.Queue()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{node}-{os.getpid()}")
    c.on_message = lambda cl, u, m: q.put((time.time(), json.loads(m.payload)))
    c.connect(host, port)
    c.subscribe(f"umeter/{node}/telemetry", 0)
    c.loop_start()
    q.client = c  # type: ignore[attr-defined]
    return q


def _take(q: queue.Queue, n: int, timeout: float, vn: VNodes) -> list[tuple[float, dict]]:
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"{len(got)} of {n} telemetry messages\n{vn.boards[0].console()[-2000:]}"
        try:
            got.append(q.get(timeout=min(left, 0.5)))
        except queue.Empty:
            pass
    return got


def _mpremote(port: str, *args: str) -> str:
    r = subprocess.run([MPREMOTE, "connect", port, *args], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, (r.stdout, r.stderr)
    return r.stdout


def test_provisioned_virtual_board_runs_a_node_on_wall_clock_time_and_stays_reachable(tmp_path, home):
    with VNodes(count=1, base=tmp_path / "boards") as vn:
        (d,), (vb,) = vn.devices, vn.boards
        assert d.name == "vnode-01" and vn.reports[0].status == "ok"
        q = _telemetry(vn.host, vn.port, d.name)
        try:
            msgs = _take(q, 4, 30, vn)
            for received, t in msgs:
                assert abs(t["ts"] - received) < 2.0, "the node's clock is the wall clock, not ~7x fast"
            span = msgs[-1][1]["ts"] - msgs[0][1]["ts"]
            assert 2.0 <= span <= 4.5, f"3 intervals of 1 s took {span} s of node time"
            assert msgs[-1][1]["p"] > 2500, "the house scenario"
            # stock mpremote with the node running: it stops the node and answers
            assert _mpremote(vb.port, "exec", "print(6 * 7)").strip() == "42"
            assert _mpremote(vb.port, "resume", "exec", "print(7 * 7)").strip() == "49"
            vb.power_cut()  # the node runs again from reset ...
            vb.power_on()
            _take(q, 1, 30, vn)
            t0 = time.monotonic()
            (rep,) = provision(vn.devices, reset=True)  # ... and is provisioned again while it runs
            assert rep.status == "ok", rep.error
            assert time.monotonic() - t0 < 15
            while not q.empty():
                q.get()
            _take(q, 2, 30, vn)  # and it runs again afterwards
        finally:
            q.client.disconnect()
            q.client.loop_stop()
        assert "registers saved" in vb.console(), "stopped by the host, the node kept its registers"


def test_cli_vboard_start_provision_with_an_inventory_and_umeter_logs(tmp_path, home):
    inv = tmp_path / "lab.toml"
    inv.write_text('[defaults]\nboard = "sim"\nsite = "bench"\ntelemetry_s = 1.0\n[[device]]\nname = "bench-7"\n')
    env = dict(os.environ, NO_COLOR="1")
    proc = subprocess.Popen(
        [*UMETER, "vboard", "start", "--provision", "--inventory", str(inv), "--dir", str(tmp_path / "b")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert re.fullmatch(r"/dev/pts/\d+ bench-7\n", line), (line, proc.stderr.read() if proc.poll() else "")
        deadline = time.monotonic() + 30
        err = ""
        while "running on virtual boards" not in err:
            assert time.monotonic() < deadline, err
            err += proc.stderr.readline()
        assert "Follow one: umeter logs bench-7" in err
        r = subprocess.run([*UMETER, "logs", "bench-7", "--duration", "4"], capture_output=True, text=True, env=env,
                           timeout=30)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert "umeter node bench-7 v" in r.stdout and "link up" in r.stdout, r.stdout
    finally:
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=30)
    assert proc.returncode == 0, rest
    assert rest.strip().endswith("stopped")


def test_vboard_provision_refuses_a_board_that_is_not_x64_before_starting_anything(tmp_path, home):
    inv = tmp_path / "lab.toml"
    inv.write_text('[[device]]\nname = "e1"\nboard = "esp32_devkitc"\nsite = "x"\n')
    r = subprocess.run([*UMETER, "vboard", "start", "--provision", "--inventory", str(inv)], capture_output=True,
                       text=True, timeout=30)  # fmt: skip
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "umeter: error: inventory device 'e1': esp32_devkitc is a xtensawin board; a virtual board runs the x64 "
        'build — use the "sim" board for virtual boards'
    ], r.stderr
