"""ROMFS end to end on virtual boards: the board's partition as stock mpremote sees it, `umeter
provision` deploying the build's image there (and files where a board has none or too small
a one), the node then running its code in place from flash, and a power cut mid-image leaving
no mountable half image."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from umeter import budget, romfs
from umeter.build import build
from umeter.provision import provision
from umeter_hil.vboard import VirtualBoard

MPREMOTE = str(Path(sys.executable).parent / "mpremote")
# The virtual board's partition: the sim board's image for the 64-bit unix port (256.9 KiB on
# 2026-12-07) is larger than a board's (tests/host/test_build.py holds those to 256 KiB)
PART = "320k"


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    return build("sim", tmp_path_factory.mktemp("build") / "sim", romfs=True).out


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("UMETER_HOME", str(h))
    return h


def inventory(path: Path, vb: VirtualBoard) -> Path:
    path.write_text(
        '[defaults]\nboard = "sim"\nsite = "lab"\nmqtt = { host = "127.0.0.1", port = 1 }\n'
        f'[[device]]\nname = "n0"\nport = "{vb.port}"\n'
    )
    return path


def mpremote(vb: VirtualBoard, *args: str) -> str:
    try:
        r = subprocess.run([MPREMOTE, "connect", vb.port, *args], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:  # say what the board was doing (CI saw this once, under load)
        tail = "\n".join(vb.console().splitlines()[-15:])
        why = f"mpremote {args} timed out; board faults {vb.faults.log}; console ends:\n{tail}"
        raise AssertionError(why) from None
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


@pytest.mark.parametrize("style", ["memory", "block"])
def test_stock_mpremote_deploys_an_umeter_image_to_the_virtual_partition_and_the_board_imports_from_it(
    tmp_path, image, style
):
    with VirtualBoard(tmp_path / "vb", "sim", romfs=PART, romfs_style=style) as vb:
        vb.wait_booted()
        q = mpremote(vb, "romfs", "query")
        assert "ROMFS0 partition has size 327680 bytes (80 blocks of 4096 bytes each)" in q
        assert "Not a valid ROMFS" in q  # erased flash
        mpremote(vb, "romfs", "deploy", str(image / "romfs.img"))
        q = mpremote(vb, "romfs", "query")
        img = (image / "romfs.img").read_bytes()
        assert f"ROMFS image size: {romfs.read_varuint(img, 3, len(img))[0]}" in q  # mpremote prints the payload
        out = mpremote(
            vb, "soft-reset", "exec", "import sys; from meternode import node; print(node.__file__, sys.path)"
        )
        assert out.strip() == "/rom/lib/meternode/node.mpy ['', '.frozen', '/lib', '/rom', '/rom/lib']"
        # the partition is flash: it survives a power cycle
        vb.power_cut()
        vb.power_on()
        vb.wait_booted()
        assert mpremote(vb, "exec", "import os; print(os.listdir('/rom/lib'))").strip() == "['meternode']"


def test_a_board_without_rom_ioctl_says_so_to_mpremote(tmp_path):
    with VirtualBoard(tmp_path / "vb", "sim") as vb:
        vb.wait_booted()
        assert "ROMFS is not enabled on this device" in mpremote(vb, "romfs", "query")


def test_provision_puts_the_package_in_the_romfs_partition_and_the_node_runs_from_it(tmp_path, home, image):
    with VirtualBoard(tmp_path / "vb", "sim", romfs=PART) as vb:
        vb.wait_booted()
        # an earlier install from files: its lib/ must go (it comes before /rom/lib on sys.path)
        (vb.flash / "lib" / "meternode").mkdir(parents=True)
        (vb.flash / "lib" / "meternode" / "node.mpy").write_bytes(b"stale")
        inv = inventory(tmp_path / "fleet.toml", vb)
        rep = provision(inv, build_dirs={"sim": image}, reset=False)[0]
        assert rep.status == "ok", rep.error
        assert rep.frozen == ""  # the board's firmware has no package of its own (the probe ran)
        assert rep.romfs == f"image written ({(image / 'romfs.img').stat().st_size / 1024:.1f} KiB), verified"
        on_flash = sorted(p.relative_to(vb.flash).as_posix() for p in vb.flash.rglob("*") if p.is_file())
        assert on_flash == ["board.json", "boot.py", "config.json", "main.py", "manifest.json"]
        assert not (vb.flash / "lib" / "meternode").exists()  # not even an empty directory
        man = json.loads((vb.flash / "manifest.json").read_text())
        assert man["romfs"]["sha256"] == romfs.digest((image / "romfs.img").read_bytes())
        assert budget.installed_load(man) == "romfs"  # what the on-board budget check reads
        part = (vb.state / "romfs.bin").read_bytes()
        assert romfs.read_image(part) == romfs.read_image((image / "romfs.img").read_bytes())
        again = provision(inv, build_dirs={"sim": image}, reset=False)[0]
        assert (again.status, again.written, again.romfs) == ("ok", 0, "image unchanged")
        # the command line says where the package went (the table counts files only)
        cli = subprocess.run([str(Path(sys.executable).parent / "umeter"), "provision", str(inv), "--build", str(image),
                              "--no-reset"], capture_output=True, text=True, timeout=60)  # fmt: skip
        assert cli.returncode == 0 and "n0: ROMFS: image unchanged" in cli.stderr, cli.stdout + cli.stderr
        # reset: main.py runs the node, its modules come from /rom
        rep = provision(inv, build_dirs={"sim": image}, reset=True)[0]
        assert rep.status == "ok", rep.error
        vb.wait_console("umeter node n0")
        # running: its uplink has tried the broker (port 1: refused), so the host's Ctrl-C
        # comes to a node in its loop, not in its start-up
        vb.wait_console("link error")
        out = mpremote(vb, "exec", "import meternode.node as n; print(n.__file__)")
        assert out.strip() == "/rom/lib/meternode/node.mpy"


def test_provision_falls_back_to_files_when_the_partition_is_too_small(tmp_path, home, image):
    with VirtualBoard(tmp_path / "vb", "sim", romfs="64k") as vb:
        vb.wait_booted()
        rep = provision(inventory(tmp_path / "fleet.toml", vb), build_dirs={"sim": image}, reset=False)[0]
        assert rep.status == "ok", rep.error
        assert rep.romfs.startswith("partition too small (64 KiB for a ")
        assert (vb.flash / "lib" / "meternode" / "node.mpy").exists()
        man = json.loads((vb.flash / "manifest.json").read_text())
        assert "romfs" not in man and budget.installed_load(man) == "mpy"


def test_a_power_cut_mid_image_leaves_no_mountable_half_image_and_the_next_run_completes(tmp_path, home, image):
    with VirtualBoard(tmp_path / "vb", "sim", romfs=PART) as vb:
        vb.wait_booted()
        inv = inventory(tmp_path / "fleet.toml", vb)
        (vb.flash / "main.py").write_bytes((image / "main.py").read_bytes())  # an earlier install
        vb.cut_power_after(60_000)  # inside the image's chunks (base64 on the wire)
        rep = provision(inv, build_dirs={"sim": image}, reset=False, timeout=2)[0]
        assert rep.status == "failed"
        part = (vb.state / "romfs.bin").read_bytes()
        assert part[:2048] == b"\xff" * 2048  # the first chunk (the header) is written last: still erased
        assert part[2048:] != b"\xff" * (len(part) - 2048)  # and later chunks had arrived
        vb.power_on()
        vb.wait_booted()
        vb.wait_console("provisioning incomplete; node not started", timeout=5)
        rom = "import os\ntry:\n os.stat('/rom/lib')\n print(True)\nexcept OSError:\n print(False)"
        assert mpremote(vb, "exec", rom).strip() == "False"  # nothing mounted
        rep = provision(inv, build_dirs={"sim": image}, reset=False)[0]
        assert rep.status == "ok", rep.error
        assert rep.romfs.startswith("image written")
