"""Runs a script on the MicroPython unix port against a build's lib/ (asyncio from .frozen)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from umeter import unixport


def run_on_build(out: Path, script: Path, heap: str = "1m") -> str:
    """The script's stdout, the package imported from `out`/lib; fails the test on an error."""
    env = dict(os.environ, MICROPYPATH=str(out / "lib") + ":.frozen")  # .frozen: asyncio
    p = subprocess.run(unixport.command(script, heap=heap), capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def package(root: Path, modules: dict[str, str]) -> Path:
    """A `meternode` package of {module name: text} under `root` (returned), with the
    firmware's own package module (run(), forget(), msg())."""
    pkg = root / "meternode"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text((unixport.firmware_root() / "meternode" / "__init__.py").read_text())
    for name, text in modules.items():
        (pkg / f"{name}.py").write_text(text)
    return root


def run_main(path: Path, main: str, tmp: Path) -> str:
    """stdout + stderr of the script `main`, the package imported from `path`."""
    script = tmp / "main_script.py"
    script.write_text(main)
    env = dict(os.environ, MICROPYPATH=str(path))
    p = subprocess.run(unixport.command(script), capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout + p.stderr
