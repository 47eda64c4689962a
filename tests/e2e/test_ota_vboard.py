"""The rollback on the virtual board itself (hil's VirtualBoard: the firmware in the board's
flash under /lib, booted by vboot.py through its pty relay, resets through the `machine`
stand-in): a build whose link never comes up is rolled back without a person."""

from __future__ import annotations

import json
import queue
import shutil
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from policy_vnode import BOOT, Listener, board, firmware_files

from umeter import unixport
from umeter.build import build
from umeter.signing import fleet_identity, make_manifest, make_target, sign_bundle
from umeter_hil.vboard import VirtualBoard

KEY = Ed25519PrivateKey.generate()


class _Console:
    # what Listener.wait prints on failure: the board's console
    def __init__(self, vb: VirtualBoard) -> None:
        self.vb = vb

    def log(self) -> str:
        return self.vb.console()


def test_virtual_board_rolls_back_a_build_that_fails_its_health_check(mosquitto, tmp_path: Path) -> None:
    vb = VirtualBoard(tmp_path / "vb", "sim", heap="512k")
    flash = vb.flash
    # The board runs what `umeter build` made, as a provisioned board does. Booted from source,
    # the compiler's temporaries leave the heap in small pieces: 179 KB free, but no 11 KB block
    # for the manifest text of a 110-file bundle (MemoryError, answered as "failed").
    res = build("sim", tmp_path / "build", src=unixport.firmware_root())
    shutil.copytree(res.out / "lib" / "meternode", flash / "lib" / "meternode")
    shutil.copy(BOOT, flash / "main.py")
    (flash / "board.json").write_text(json.dumps(board()))
    config = {
        "node_id": "vb1",
        "telemetry_s": 1.0,
        "mqtt": {"host": mosquitto.host, "port": mosquitto.port, "keepalive": 30, "discovery": False},
        "sim": {"realtime": True, "voltage": {"rms": 230.0}, "currents": [{"rms": 5.0}]},
        "fleet": fleet_identity(KEY, "acme"),
        "ota": {"health_deadline_s": 5},
    }
    (flash / "config.json").write_text(json.dumps(config))
    lis = Listener(mosquitto.host, mosquitto.port, "vb1")
    try:
        with vb:
            lis.wait(lambda leaf, m: leaf == "policy/state", 60, "policy service up on the virtual board")
            resets0 = vb.resets
            files = firmware_files("2.0.0-broken", broken=True)
            man = make_manifest("firmware", "acme", 2, files, make_target(all_nodes=True), key=KEY, campaign="vbfw")
            lis.push_ota(sign_bundle(KEY, man, files))
            ota = lambda leaf, m: leaf == "ota/result" and m["status"] != "accepted"  # noqa: E731
            r, _ = lis.wait(ota, 60, "staged", _Console(vb))
            assert (r["status"], r["version"]) == ("staged", 2), r
            deadline = time.monotonic() + 120
            r = None
            while r is None and time.monotonic() < deadline:
                try:
                    leaf, m = lis.q.get(timeout=0.5)
                except queue.Empty:
                    # a reset from main.py must restart the board, not leave it at the REPL
                    assert not vb.console().rstrip().endswith(">>>"), (
                        "board stopped at the REPL:\n" + vb.console()[-800:]
                    )
                    continue
                if ota(leaf, m):
                    r = m
            assert r is not None, "no rollback report:\n" + vb.console()[-2000:]
            assert (r["ok"], r["status"], r["campaign"]) == (False, "rolled_back", "vbfw"), r
            assert vb.resets - resets0 == 2, "reset into the trial, reset after the failed health check"
            st = json.loads((flash / "fw" / "boot.json").read_text())
            assert (st["active"], st["pending"]) == (None, None)
    finally:
        lis.close()
