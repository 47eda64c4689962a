"""Runs a LoRaWAN driver script on the MicroPython unix port against the simulated RAK3172
(its pty and a scratch directory are the script's first two arguments; umeter_hil's
`lorarig` is importable); the script prints its result as one `RESULT <json>` line."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from umeter import unixport
from umeter_hil import fwtest


def run_driver(tmp_path: Path, modem, script: str, *args: object) -> tuple[dict, str]:
    """(the script's RESULT, its stdout); fails the test when it printed none."""
    (tmp_path / "drv.py").write_text(script)
    env = dict(os.environ, MICROPYPATH=unixport.micropypath(fwtest.MP_DIR))
    p = subprocess.run(
        unixport.command(tmp_path / "drv.py", modem.port, str(tmp_path), *map(str, args), heap="256k"),
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, p.stdout + p.stderr
    return json.loads(lines[-1][7:]), p.stdout
