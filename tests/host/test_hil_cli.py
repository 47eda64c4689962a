"""`umeter hil run` after README command 1 (`pip install -e .`, no test extra): the HIL suite
runs under pytest, so pytest is a dependency of the install; without it, one line says so."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

from packaging.requirements import Requirement


def test_pytest_is_a_dependency_of_the_plain_install():
    reqs = [Requirement(r) for r in importlib.metadata.requires("umeter") or []]
    plain = {r.name for r in reqs if r.marker is None}  # no `extra == "test"` marker
    assert "pytest" in plain, sorted(plain)


def test_hil_run_without_pytest_is_one_line_naming_it():
    code = "import sys; sys.modules['pytest'] = None; from umeter.cli import main; sys.exit(main(['hil', 'run']))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "umeter: error: pytest is not installed, and the HIL suite runs under it — pip install pytest (it is a "
        "dependency)"
    ]
