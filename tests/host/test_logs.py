"""`umeter logs NODE|PORT`: a board's console followed through mpremote's serial transport,
without interrupting what runs; names resolved from running sims, the fleet, or a port."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from umeter import console
from umeter_hil.vboard import VirtualBoard

UMETER = [sys.executable, "-m", "umeter"]

TICKER = "import time\nn = 0\nwhile True:\n    n += 1\n    print('[%d] tick %d' % (n, n))\n    time.sleep_ms(200)\n"


def _env(tmp: Path) -> dict[str, str]:
    return dict(os.environ, UMETER_HOME=str(tmp / "home"), XDG_RUNTIME_DIR=str(tmp / "run"), NO_COLOR="1")


def test_logs_follows_a_board_port_and_leaves_its_code_running(tmp_path):
    vb = VirtualBoard(tmp_path / "vb", "sim")
    vb.flash.mkdir(parents=True, exist_ok=True)
    (vb.flash / "main.py").write_text(TICKER)
    with vb:
        vb.wait_booted()
        r = subprocess.run([*UMETER, "logs", vb.port, "--duration", "2"], capture_output=True, text=True,
                           env=_env(tmp_path), timeout=30)  # fmt: skip
        assert r.returncode == 0, r.stderr
        ticks = [ln for ln in r.stdout.splitlines() if " tick " in ln]
        assert len(ticks) >= 5, r.stdout
        n = int(ticks[-1].split()[-1])
        time.sleep(0.6)
        assert f"tick {n + 2}" in vb.console(), "the code still runs: nothing was sent to the board"
        assert "KeyboardInterrupt" not in vb.console()


def test_logs_of_a_sim_node_reads_its_console_from_the_registry(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    log = tmp_path / "console.log"
    log.write_text("[1] umeter node node-07 v0.1.0 on board sim\n[2] link error: refused\n")
    reg = console.register({"node-07": log})
    try:
        assert console.registered() == {"node-07": log}
        r = subprocess.run([*UMETER, "logs", "node-07", "--duration", "1", "--errors"], capture_output=True,
                           text=True, env=_env(tmp_path), timeout=30)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == ["[2] link error: refused"]
    finally:
        reg.unlink()
    assert console.registered() == {}, "a gone registry file names no console"


def test_logs_of_an_unknown_name_or_a_stopped_virtual_board_says_what_to_do(tmp_path):
    r = subprocess.run([*UMETER, "logs", "node-99"], capture_output=True, text=True, env=_env(tmp_path), timeout=30)
    assert r.returncode == 1 and r.stderr.strip() == (
        "umeter: error: no node or port 'node-99' — give a node of a running `umeter sim` (none running), a node "
        "from `umeter fleet ls`, or a serial port"
    )
    from umeter.inventory import Fleet

    Fleet(tmp_path / "home" / "fleet.sqlite").bind("a1b2c3d4e5f6", "vnode-01", "sim", "lab", "/dev/pts/77", None)
    r = subprocess.run([*UMETER, "logs", "vnode-01"], capture_output=True, text=True, env=_env(tmp_path), timeout=30)
    assert r.returncode == 1 and "was provisioned on a virtual board (/dev/pts/77) that is not running" in r.stderr
