"""What each board type's own HAL holds beyond the sim board's, on this unix port: made by the
firmware's `halinit.make(board, config)` under the chip stand-ins the board-backend tests use
(hil/umeter_hil/board_shim), from a `.mpy` build of that board for the port's architecture.
umeter.budget.HAL_KB must cover it (provisioning adds it to a board's need) and not be stale.
And what the files a node keeps open hold on a board's LittleFS beyond the unix port's file
objects (umeter.budget.FS_KB), on a real LittleFS with each board's settings."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from umeter import budget, unixport
from umeter.build import build

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import sys, gc
which, lib, root = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path[:0] = [lib, root + "/hil/umeter_hil/board_shim", root + "/tests/firmware"]
from board_standins import board, build
import meternode
b = board(which)
hw = None
if b["hal"] in ("rp2", "mcp3208"):
    import rp2hw
    hw = rp2hw.RP2040()
elif b["hal"] == "esp32":
    import softirq
    hw = softirq.World(port="esp32")
gc.collect()
a = gc.mem_alloc()
def make():
    return meternode.run("meternode.hal.halinit", "make", b, {"node_id": "x"})
h = build(hw, make) if hw else make()
gc.collect()
print("HELD", gc.mem_alloc() - a, type(h.sampler).__name__)
"""


def _hal_held(tmp_path: Path, name: str) -> tuple[int, str]:
    out = build(name, tmp_path / name, arch=unixport.native_arch()).out
    script = tmp_path / "hal.py"
    script.write_text(SCRIPT)
    r = subprocess.run(unixport.command(script, name, str(out / "lib"), str(ROOT), heap="1m"),
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("HELD ")]
    assert line, r.stdout + r.stderr
    return int(line[0].split()[1]), line[0].split()[2]


def test_a_boards_hal_holds_what_the_budget_adds_for_it(tmp_path):
    words = unixport.word_bytes()
    sim, kind = _hal_held(tmp_path, "sim")
    assert kind == "SimSampler"
    for name, table in budget.HAL_KB[words].items():
        held, sampler = _hal_held(tmp_path, name)
        extra = (held - sim) / 1024
        assert sampler != "SimSampler", name
        assert table - 2 < extra <= table, (
            f"{name}'s HAL holds {extra:.1f} KB more than the sim board's, budget.HAL_KB says {table}: re-measure"
        )
    # provisioning adds it (and the rp2's machine code) to what a node of that board needs
    need = budget.board_need("+cmd_key", arch="armv6m", board="pico_w")
    extra = budget.NATIVE_KB["armv6m"] + budget.HAL_KB[4]["pico_w"] + budget.FS_KB[4]["pico_w"]
    assert need == budget.heap_for("+cmd_key", words=4) + extra * 1024
    # the sim board is what HELD_KB was measured on: nothing to add; the parts provisioning
    # shows add up to the need, a fleet node's bundle room included
    for kind in budget.CONFIGS:
        assert budget.board_need(kind, arch="x64", board="sim") == budget.heap_for(kind, words=8)
    fleet = dict(budget.need_parts("+fleet", arch="armv6m", load="romfs", board="pico_w"))
    assert fleet == {"held": budget.HELD_KB[4]["romfs"]["+fleet"], "margin": 32, "bundle": budget.BUNDLE_KB[4],
                     "machine code": 6, "pico_w HAL": budget.HAL_KB[4]["pico_w"],
                     "file system": budget.FS_KB[4]["pico_w"]}  # fmt: skip
    # frozen into the firmware, the machine code stays in flash with the rest of the package
    frozen = dict(budget.need_parts("+fleet", arch="armv6m", load="frozen", board="pico_w"))
    assert frozen == {"held": budget.HELD_KB[4]["frozen"]["+fleet"], "margin": 32, "bundle": budget.BUNDLE_KB[4],
                      "pico_w HAL": budget.HAL_KB[4]["pico_w"], "file system": budget.FS_KB[4]["pico_w"]}  # fmt: skip


FS_SCRIPT = r"""
import sys, gc, os, vfs
geometry, root, scratch = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.append(root + "/hil/umeter_hil/board_shim")
import norflash
from meternode.store import records
from meternode.store.log import RecordLog


def held(path):
    # the record log as a node keeps it: its segment open to append, the outbox's reader in one
    os.mkdir(path + "/s")
    gc.collect()
    a = gc.mem_alloc()
    log = RecordLog(path + "/s/store", 4096, 16384)
    for i in range(40):
        log.append(records.EVENT, 1000 + i, records.event(records.EV_RELAY, i, "relay %d" % i))
    r = log.reader()
    r.seek(1)
    assert r.next()
    gc.collect()
    return gc.mem_alloc() - a, log, r


os.mkdir(scratch + "/warm")
os.mkdir(scratch + "/host")
held(scratch + "/warm")  # what the first log made and kept: imports, names
h = held(scratch + "/host")[0]
size, prog = norflash.GEOMETRY[geometry]
dev = norflash.NorFlash(scratch + "/flash.img", size)
vfs.VfsLfs2.mkfs(dev, progsize=prog)
vfs.mount(vfs.VfsLfs2(dev, progsize=prog), "/fs")  # made at boot, before the node
print("FS", held("/fs")[0] - h)
"""


def test_a_boards_file_system_holds_what_the_budget_adds_for_it(tmp_path):
    words = unixport.word_bytes()
    script = tmp_path / "fs.py"
    script.write_text(FS_SCRIPT)
    for name, table in budget.FS_KB[words].items():
        geometry = {"rp2040": "pico_w", "esp32": "esp32"}[_board(name)["mcu"]]
        scratch = tmp_path / name
        scratch.mkdir()
        r = subprocess.run(unixport.command(script, geometry, str(ROOT), str(scratch), heap="1m"),
                           env={**os.environ, "MICROPYPATH": unixport.micropypath()},
                           capture_output=True, text=True, timeout=60)  # fmt: skip
        line = [ln for ln in r.stdout.splitlines() if ln.startswith("FS ")]
        assert line, r.stdout + r.stderr
        extra = int(line[0].split()[1]) / 1024
        assert table - 1 < extra <= table, (
            f"{name}'s open files hold {extra:.1f} KB more on LittleFS, budget.FS_KB says {table}: re-measure"
        )


def _board(name: str) -> dict:
    return json.loads((ROOT / "boards" / f"{name}.json").read_text())
