"""`umeter hil run --board virtual|PORT|SERIAL`: build, provision the board under test, run the
HIL suite (tests/hil) against it, print a report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import click

from .. import ui
from ..errors import ConfigError, DeviceError


def suite_dir() -> Path:
    from ..unixport import firmware_root

    d = firmware_root().parent / "tests" / "hil"
    if not d.is_dir():
        raise ConfigError(f"HIL suite not found at {d}", hint="run from a source checkout of umeter")
    return d


@click.group("hil")
def command() -> None:
    """Hardware-in-the-loop tests on real or virtual boards."""


@command.command("run")
@click.option("--board", default="virtual", show_default=True, help="virtual, a serial port, or a USB serial number.")
@click.option("--board-type", default=None, help="Board definition [sim for virtual, esp32_devkitc otherwise].")
@click.option("--rig", default="none", show_default=True, type=click.Choice(["none", "blinka"]))
@click.option("--rig-pins", default="", help="Blinka pins, e.g. water=D5,gas=D6,relay=D13.")
@click.option("-k", "keyword", default=None, help="Only tests matching this pytest -k expression.")
@click.option("--no-provision", is_flag=True, help="Real board: do not build + provision before the suite.")
@click.option("--json", "as_json", is_flag=True)
def run(
    board: str, board_type: str | None, rig: str, rig_pins: str, keyword: str | None, no_provision: bool, as_json: bool
) -> None:
    """Run the HIL suite and print a report (exit 1 if a test failed)."""
    try:
        import pytest  # noqa: F401  (the suite runs under pytest in a subprocess)
    except ImportError:
        raise ConfigError(
            "pytest is not installed, and the HIL suite runs under it", hint="pip install pytest (it is a dependency)"
        ) from None
    suite = suite_dir()
    btype = board_type or ("sim" if board == "virtual" else "esp32_devkitc")
    if board != "virtual" and not no_provision:
        from ..inventory import Device
        from ..provision import provision
        from ..transport import resolve_port

        port = board if (board.startswith("/") or "://" in board) else resolve_port(None, board)
        ui.info(f"Building and provisioning {btype} on {port} ...")
        rep = provision([Device(name="hil-dut", board=btype, site="hil", port=port)], reset=False)[0]
        if rep.status != "ok":
            raise ConfigError(f"provisioning the board under test failed: {rep.error}", hint="fix that first")
        ui.info(rep.line())
    env = dict(os.environ, UMETER_HIL_BOARD=board, UMETER_HIL_BOARD_TYPE=btype, UMETER_HIL_RIG=rig,
               UMETER_HIL_RIG_PINS=rig_pins)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="umeter-hil-") as tmp:
        xml = Path(tmp) / "junit.xml"
        argv = [sys.executable, "-m", "pytest", str(suite), "-q", "-rs", "-p", "no:cacheprovider",
                f"--junitxml={xml}", "--rootdir", str(suite.parent.parent)]  # fmt: skip
        if keyword:
            argv += ["-k", keyword]
        r = subprocess.run(argv, env=env, capture_output=as_json, text=True)
        cases = []
        if xml.exists():
            for tc in ET.parse(xml).getroot().iter("testcase"):
                state = "passed"
                for tag in ("failure", "error", "skipped"):
                    el = tc.find(tag)
                    if el is not None:
                        state = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                        reason = el.get("message", "")
                        break
                else:
                    reason = ""
                cases.append(
                    {"test": tc.get("name"), "state": state, "seconds": float(tc.get("time", 0)), "reason": reason}
                )
    if not cases and r.returncode not in (0, 5):
        # pytest stopped before any test (a missing plugin, a bad option): say so, not "0 tests"
        why = ((r.stderr or "") + (r.stdout or "")).strip().splitlines() if as_json else []
        raise DeviceError(
            f"the HIL suite did not run on {board} (pytest exit code {r.returncode}){': ' + why[-1] if why else ''}",
            hint="see pytest's output above",
        )
    summary = {s: sum(c["state"] == s for c in cases) for s in ("passed", "failed", "error", "skipped")}
    if as_json:
        click.echo(json.dumps({"board": board, "board_type": btype, "summary": summary, "tests": cases}, indent=1))
    else:
        ui.out.print(
            f"HIL on {board} ({btype}): {summary['passed']} passed, {summary['failed'] + summary['error']} failed, "
            f"{summary['skipped']} skipped.",
            markup=False,
        )
    if r.returncode not in (0, 5):
        raise DeviceError(
            f"HIL suite failed on {board}: {summary['failed'] + summary['error']} test(s)",
            hint="see the pytest output above (or --json)",
        )
