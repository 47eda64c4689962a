"""`umeter provision` on a board whose firmware has the package frozen in (`umeter build
--manifest`, then the user's own MicroPython build): '.frozen' comes before /rom/lib and /lib
on a board's sys.path, so the frozen package is what the node runs. Provisioning gives such a
board its configuration and entry points only, takes away package files an earlier install
left, and refuses a build of another version, whose files would never run.

A virtual board runs the interpreter the tests run (UMETER_MICROPYTHON): these tests need one
built with the package frozen in (docs/memory.md, "Frozen, measured"), which CI has not. On
any other interpreter the probe still runs in every provisioning test, and the ROMFS one
checks that it finds no package (`Report.frozen`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from umeter import budget
from umeter.build import build
from umeter.provision import provision
from umeter.transport import Board
from umeter_hil.vboard import VirtualBoard

MPREMOTE = str(Path(sys.executable).parent / "mpremote")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("UMETER_HOME", str(h))
    return h


@pytest.fixture
def board(tmp_path):
    with VirtualBoard(tmp_path / "vb", "sim") as vb:
        vb.wait_booted()
        with Board(vb.port) as b:
            version = b.frozen_package()
        if version is None:
            pytest.skip("this interpreter has no frozen meternode (a local build of the unix port: docs/memory.md)")
        yield vb, version


def inventory(path: Path, vb: VirtualBoard) -> Path:
    path.write_text(
        '[defaults]\nboard = "sim"\nsite = "lab"\nmqtt = { host = "127.0.0.1", port = 1 }\n'
        f'[[device]]\nname = "n0"\nport = "{vb.port}"\n'
    )
    return path


def test_a_board_with_the_package_frozen_in_gets_its_configuration_only(tmp_path, home, board):
    vb, version = board
    # an earlier install from files: it would never run under the frozen package
    (vb.flash / "lib" / "meternode").mkdir(parents=True)
    (vb.flash / "lib" / "meternode" / "node.mpy").write_bytes(b"stale")
    res = build("sim", tmp_path / "build", version=version)  # the frozen build's version
    inv = inventory(tmp_path / "fleet.toml", vb)
    rep = provision(inv, build_dirs={"sim": res.out}, reset=False)[0]
    assert rep.status == "ok", rep.error
    assert rep.frozen == version and f"umeter {version}, frozen into the firmware" in rep.line()
    assert "node from frozen firmware needs" in rep.heap, rep.heap
    on_flash = sorted(p.relative_to(vb.flash).as_posix() for p in vb.flash.rglob("*") if p.is_file())
    assert on_flash == ["board.json", "boot.py", "config.json", "main.py", "manifest.json"]
    assert not (vb.flash / "lib" / "meternode").exists()
    man = json.loads((vb.flash / "manifest.json").read_text())
    assert man["frozen"] is True and man["version"] == version and "romfs" not in man
    assert budget.installed_load(man) == "frozen"
    assert not any(f.startswith("lib/") for f in man["files"])
    again = provision(inv, build_dirs={"sim": res.out}, reset=False)[0]
    assert (again.status, again.written, again.frozen) == ("ok", 0, version)
    cli = subprocess.run([str(Path(sys.executable).parent / "umeter"), "provision", str(inv), "--build", str(res.out),
                          "--no-reset"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert f"n0: package frozen into the firmware (umeter {version}); configuration written" in cli.stderr, cli.stderr
    # reset: main.py runs the frozen node with the configuration it was given
    rep = provision(inv, build_dirs={"sim": res.out}, reset=True)[0]
    assert rep.status == "ok", rep.error
    vb.wait_console(f"umeter node n0 v{version} on board sim")
    vb.wait_console("link error")  # running: its uplink tried the broker (port 1: refused)
    r = subprocess.run([MPREMOTE, "connect", vb.port, "exec", "import meternode.node as n; print(n.__file__)"],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.stdout.strip() == "meternode/node.py", r.stdout + r.stderr  # relative to '.frozen'


def test_a_build_the_frozen_package_would_shadow_is_refused_and_nothing_is_written(tmp_path, home, board):
    vb, version = board
    res = build("sim", tmp_path / "build", version="9.9.9+other")
    rep = provision(inventory(tmp_path / "fleet.toml", vb), build_dirs={"sim": res.out}, reset=False)[0]
    assert rep.status == "failed"
    assert f"has umeter {version} frozen in" in rep.error, rep.error
    assert "build 9.9.9+other would be written and never run" in rep.error, rep.error
    on_flash = sorted(p.relative_to(vb.flash).as_posix() for p in vb.flash.rglob("*") if p.is_file())
    assert "config.json" not in on_flash and ".provisioning" not in on_flash, on_flash
