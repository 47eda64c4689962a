"""Provisioning end to end against virtual boards: parallel, idempotent, resumable after a power
cut mid-write without a truncated file, keys kept out of every output, clear errors."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from umeter import budget, unixport
from umeter.build import build
from umeter.errors import ConfigError
from umeter.inventory import Device, Fleet, load_inventory
from umeter.keystore import Keystore
from umeter.provision import MARKER, provision
from umeter_hil.vboard import VirtualBoard, start_many

UMETER = str(Path(sys.executable).parent / "umeter")


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    return build("sim", tmp_path_factory.mktemp("build") / "sim").out


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("UMETER_HOME", str(h))
    return h


def write_inventory(path: Path, boards: list[VirtualBoard], **extra: str) -> Path:
    lines = ['[defaults]\nboard = "sim"\nsite = "lab"\nmqtt = { host = "127.0.0.1", port = 1883 }\n']
    for k, vb in enumerate(boards):
        lines.append(f'[[device]]\nname = "node-{k}"\nport = "{vb.port}"\n')
        if k == 0:
            lines.append("calibration = { I1 = { gain = 1.02 } }\n")
        for key, val in extra.items():
            lines.append(f"{key} = {val}\n")
    path.write_text("".join(lines))
    return path


def flash_matches_manifest(vb: VirtualBoard) -> dict:
    man = json.loads((vb.flash / "manifest.json").read_text())
    for rel, meta in man["files"].items():
        data = (vb.flash / rel).read_bytes()
        assert hashlib.sha256(data).hexdigest() == meta["sha256"], rel
    assert not list(vb.flash.rglob("*.tmp"))
    assert not (vb.flash / MARKER.lstrip("/")).exists()
    return man


def test_four_boards_in_parallel_get_identity_keys_calibration_and_a_verified_image(tmp_path, home, image):
    vbs = start_many(tmp_path / "vb", "sim", 4)
    try:
        inv = write_inventory(tmp_path / "fleet.toml", vbs)
        reps = provision(inv, build_dirs={"sim": image}, jobs=4, reset=False)
        assert [r.status for r in reps] == ["ok"] * 4, [r.error for r in reps]
        ks = Keystore()
        fleet = Fleet()
        for k, (vb, rep) in enumerate(zip(vbs, reps, strict=True)):
            assert rep.verified and rep.uid == vb.uid.hex()
            flash_matches_manifest(vb)
            cfg = json.loads((vb.flash / "config.json").read_text())
            sec = ks.get(f"node-{k}")
            assert cfg["node_id"] == f"node-{k}" and cfg["site"] == "lab"
            assert cfg["cmd_key"] == sec["cmd_key"] and len(sec["cmd_key"]) == 64
            assert cfg["mqtt"]["user"] == f"node-{k}" and cfg["mqtt"]["password"] == sec["mqtt_password"]
            row = fleet.get(f"node-{k}")
            assert row["uid"] == vb.uid.hex() and row["status"] == "ok"
        # the billing time each was given, for `umeter export` to date its freezes by
        assert fleet.offsets() == {f"node-{k}": 0 for k in range(4)}
        gains = [json.loads((vb.flash / "config.json").read_text())["calibration"]["I1"]["gain"] for vb in vbs]
        assert gains[0] == 1.02 and gains[1:] == [1.0, 1.0, 1.0]
        assert len({ks.get(f"node-{k}")["cmd_key"] for k in range(4)}) == 4
        assert stat.S_IMODE(ks.path.stat().st_mode) == 0o600
        # the node image really runs: the board imports the compiled firmware
        out = subprocess.run(
            [str(Path(sys.executable).parent / "mpremote"), "connect", vbs[0].port, "exec",
             "import meternode.metrology.kernels as k; print(k.__file__)"],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        assert out.stdout.strip() == "/lib/meternode/metrology/kernels.mpy"
    finally:
        for vb in vbs:
            vb.stop()


def test_reprovisioning_an_unchanged_board_writes_nothing(tmp_path, home, image):
    with VirtualBoard(tmp_path / "vb", "sim") as vb:
        vb.wait_booted()
        inv = write_inventory(tmp_path / "fleet.toml", [vb])
        first = provision(inv, build_dirs={"sim": image}, reset=False)[0]
        assert first.status == "ok" and first.written > 10
        mtimes = {p: p.stat().st_mtime_ns for p in vb.flash.rglob("*") if p.is_file()}
        again = provision(inv, build_dirs={"sim": image}, reset=False)[0]
        assert again.status == "ok" and again.written == 0 and again.skipped == first.written + first.skipped
        assert {p: p.stat().st_mtime_ns for p in vb.flash.rglob("*") if p.is_file()} == mtimes


def test_power_cut_mid_write_leaves_no_truncated_file_and_the_next_run_resumes(tmp_path, home, image):
    with VirtualBoard(tmp_path / "vb", "sim") as vb:
        vb.wait_booted()
        inv = write_inventory(tmp_path / "fleet.toml", [vb])
        (vb.flash / "main.py").write_bytes((image / "main.py").read_bytes())  # an earlier install
        vb.cut_power_after(60_000)  # somewhere in the middle of the image
        rep = provision(inv, build_dirs={"sim": image}, reset=False, timeout=2)[0]
        assert rep.status == "failed"
        assert not vb.powered
        # every file that has its final name is complete: identical to the build
        expected = {
            rel: (image / rel).read_bytes() for rel in json.loads((image / "manifest.json").read_text())["files"]
        }
        finals = [p for p in vb.flash.rglob("*") if p.is_file() and not p.name.endswith(".tmp")]
        assert finals, "the cut came too early to test anything"
        for p in finals:
            rel = p.relative_to(vb.flash).as_posix()
            if rel in expected:
                assert p.read_bytes() == expected[rel], f"{rel} is truncated"
        assert (vb.flash / ".provisioning").exists()
        assert not (vb.flash / "manifest.json").exists()
        vb.power_on()
        vb.wait_booted()
        # the main.py of an earlier install refuses to start the node on a half-provisioned board
        vb.wait_console("provisioning incomplete; node not started", timeout=5)
        rep = provision(inv, build_dirs={"sim": image}, reset=False)[0]
        assert rep.status == "ok", rep.error
        assert rep.skipped > 0  # resumed: what had arrived was not sent again
        flash_matches_manifest(vb)


def test_wrong_board_type_is_a_one_line_error_with_a_hint(tmp_path, home, image):
    with VirtualBoard(tmp_path / "vb", "sim") as vb:
        vb.wait_booted()
        devs = [Device(name="n1", board="esp32_devkitc", site="lab", port=vb.port)]
        esp_image = tmp_path / "fake-esp"
        # an image that claims xtensawin: the board's mpy ABI (the unix port's, x64 for the pip one) must be refused
        import shutil

        shutil.copytree(image, esp_image)
        man = json.loads((esp_image / "manifest.json").read_text())
        man["arch"] = "xtensawin"
        (esp_image / "manifest.json").write_text(json.dumps(man))
        rep = provision(devs, build_dirs={"esp32_devkitc": esp_image}, reset=False)[0]
        assert rep.status == "failed"
        assert f"is an {unixport.native_arch()} board" in rep.error
        assert "n1 is an esp32_devkitc" in rep.error and " — " in rep.error
        assert "\n" not in rep.error
        assert not (vb.flash / "config.json").exists()


def test_a_board_with_less_heap_than_its_configurations_budget_is_warned_in_the_report(tmp_path, home, image):
    # every provisioned node has a command key; with MQTT it is a +cmd_key node (umeter.budget)
    words = unixport.word_bytes()
    need = budget.heap_for("+cmd_key", words=words)
    held = budget.held_kb("+cmd_key", words=words)
    small = VirtualBoard(tmp_path / "small", "sim", heap=need - 16 * 1024).start()
    roomy = VirtualBoard(tmp_path / "roomy", "sim").start()
    try:
        inv = write_inventory(tmp_path / "fleet.toml", [small, roomy])
        short, ok = provision(inv, build_dirs={"sim": image}, reset=False, jobs=2)
        assert short.status == ok.status == "ok", (short.error, ok.error)
        want = f"a cmd_key node from .mpy files needs {need // 1024} KiB ({held} held + 32 margin)"
        assert short.heap_short and want in short.heap and "run short of memory" in short.heap
        free = int(short.heap.split(" KiB free")[0])
        assert free < need // 1024 - 16  # the board's own heap, less what its REPL holds
        assert "WARNING: heap: " in short.line()
        assert not ok.heap_short and want in ok.heap and "WARNING" not in ok.line()
        assert int(ok.heap.split(" KiB free")[0]) > need // 1024
    finally:
        small.stop()
        roomy.stop()


def test_missing_port_fails_that_device_only_with_a_hint(tmp_path, home, image):
    with VirtualBoard(tmp_path / "vb", "sim") as vb:
        vb.wait_booted()
        devs = [
            Device(name="here", board="sim", site="lab", port=vb.port),
            Device(name="gone", board="sim", site="lab", port="/dev/ttyUSB-nope"),
        ]
        reps = provision(devs, build_dirs={"sim": image}, reset=False)
        assert reps[0].status == "ok"
        assert reps[1].status == "failed"
        assert (
            reps[1].error
            == "no such port /dev/ttyUSB-nope — is the board plugged in? list ports with `umeter fleet ports`"
        )


def test_swapped_board_is_refused_by_the_fleet_binding(tmp_path, home, image):
    a = VirtualBoard(tmp_path / "a", "sim").start()
    b = VirtualBoard(tmp_path / "b", "sim").start()
    try:
        a.wait_booted()
        b.wait_booted()
        assert (
            provision(
                [Device(name="n1", board="sim", site="lab", port=a.port)], build_dirs={"sim": image}, reset=False
            )[0].status
            == "ok"
        )
        rep = provision(
            [Device(name="n1", board="sim", site="lab", port=b.port)], build_dirs={"sim": image}, reset=False
        )[0]
        assert rep.status == "failed" and "node 'n1' is bound to board" in rep.error
    finally:
        a.stop()
        b.stop()


def test_cli_provision_and_fleet_show_never_print_keys(tmp_path, home, image):
    with VirtualBoard(tmp_path / "vb", "sim") as vb:
        vb.wait_booted()
        inv = write_inventory(tmp_path / "fleet.toml", [vb])
        env = dict(os.environ, UMETER_HOME=str(home), NO_COLOR="1")
        r = subprocess.run([UMETER, "provision", str(inv), "--build", str(image), "--no-reset"],
                           capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        assert "node-0" in r.stdout and "verified" in (r.stdout + r.stderr)
        show = subprocess.run([UMETER, "fleet", "show", "node-0", "--json"], capture_output=True, text=True, env=env)
        ls = subprocess.run([UMETER, "fleet", "ls"], capture_output=True, text=True, env=env)
        assert json.loads(show.stdout)["uid"] == vb.uid.hex()
        assert "node-0" in ls.stdout
        sec = Keystore().get("node-0")
        for text in (r.stdout, r.stderr, show.stdout, show.stderr, ls.stdout):
            assert sec["cmd_key"] not in text and sec["mqtt_password"] not in text


def test_bad_inventory_names_the_device_and_key(tmp_path):
    p = tmp_path / "inv.toml"
    p.write_text('[[device]]\nname = "a b"\nport = "/dev/x"\nboard = "sim"\nsite = "s"\n')
    with pytest.raises(ConfigError, match=r"device\[0\].name = 'a b' is not a node id"):
        load_inventory(p)
    p.write_text('[[device]]\nname = "a"\nboard = "sim"\nsite = "s"\n')
    with pytest.raises(ConfigError, match="device 'a' has neither port nor serial"):
        load_inventory(p)
    p.write_text('[[device]]\nname = "a"\nport = "/dev/x"\nsite = "s"\n')
    with pytest.raises(ConfigError, match=r"device 'a'\.board is missing"):
        load_inventory(p)


def test_bad_calibration_override_names_the_channel(tmp_path, home, image):
    with VirtualBoard(tmp_path / "vb", "sim") as vb:
        vb.wait_booted()
        d = Device(name="n1", board="sim", site="lab", port=vb.port, calibration={"I9": {"gain": 1.0}})
        rep = provision([d], build_dirs={"sim": image}, reset=False)[0]
        assert rep.status == "failed" and "calibration.I9 names no channel" in rep.error


def test_provisioned_node_publishes_with_its_credentials_under_its_own_topic(tmp_path, home, image):
    import queue

    import paho.mqtt.client as mqtt

    from umeter.broker import Mosquitto, mosquitto_path
    from umeter.fleet import BrokerUser, write_broker_config

    if mosquitto_path() is None:
        pytest.skip("needs a Mosquitto broker binary")
    files = write_broker_config([BrokerUser("node-0"), BrokerUser("observer", host=True)], tmp_path / "broker")
    conf = ("user root\n" if os.geteuid() == 0 else "") + f"password_file {files['passwd']}\nacl_file {files['acl']}\n"
    with Mosquitto(extra_conf=conf, allow_anonymous=False) as broker, VirtualBoard(tmp_path / "vb", "sim") as vb:
        vb.wait_booted()
        inv = tmp_path / "fleet.toml"
        inv.write_text(
            '[[device]]\nname = "node-0"\nboard = "sim"\nsite = "lab"\ntelemetry_s = 1.0\n'
            f'port = "{vb.port}"\nmqtt = {{ host = "127.0.0.1", port = {broker.port} }}\n'
        )
        got: queue.Queue = queue.Queue()
        obs = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="observer")
        obs.username_pw_set("observer", Keystore().get("host:observer")["mqtt_password"])
        obs.on_message = lambda c, u, m: got.put(m.topic)
        obs.connect(broker.host, broker.port)
        obs.subscribe("umeter/#", qos=1)
        obs.loop_start()
        try:
            rep = provision(inv, build_dirs={"sim": image}, reset=True)[0]  # reset: the node starts
            assert rep.status == "ok", rep.error
            topics = set()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not any(t.startswith("umeter/node-0/") for t in topics):
                try:
                    topics.add(got.get(timeout=0.2))
                except queue.Empty:
                    pass
            assert any(t.startswith("umeter/node-0/") for t in topics), (topics, vb.console()[-3000:])
        finally:
            obs.loop_stop()
            obs.disconnect()


def test_cli_provision_exits_1_and_names_the_failed_board(tmp_path, home, image):
    with VirtualBoard(tmp_path / "vb", "sim") as vb:
        vb.wait_booted()
        inv = tmp_path / "fleet.toml"
        inv.write_text(
            '[defaults]\nboard = "sim"\nsite = "lab"\n'
            f'[[device]]\nname = "ok-1"\nport = "{vb.port}"\n[[device]]\nname = "gone-1"\nport = "/dev/ttyUSB-gone"\n'
        )
        env = dict(os.environ, UMETER_HOME=str(home), NO_COLOR="1")
        r = subprocess.run([UMETER, "provision", str(inv), "--build", str(image), "--no-reset"],
                           capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
        assert r.returncode == 1
        assert "gone-1: no such port /dev/ttyUSB-gone" in r.stderr
        assert r.stderr.strip().endswith(
            "umeter: error: 1 of 2 boards not provisioned (gone-1) — fix the errors above and run again: "
            "finished files are skipped"
        )
        assert "ok-1" in r.stdout and "verified" in r.stdout and vb.uid.hex() in r.stdout


def test_cli_provision_where_every_board_failed_does_not_claim_verified_files(tmp_path, home):
    inv = tmp_path / "fleet.toml"
    inv.write_text('[[device]]\nname = "gone-1"\nboard = "sim"\nsite = "lab"\nport = "/dev/ttyUSB-gone"\n')
    env = dict(os.environ, UMETER_HOME=str(home), NO_COLOR="1")
    r = subprocess.run([UMETER, "provision", str(inv), "--no-reset"], capture_output=True, text=True, env=env,
                       timeout=120)  # fmt: skip
    assert r.returncode == 1
    assert "Provisioned 0 of 1 board; 0 files written, 0.0 KiB; nothing verified." in r.stderr, r.stderr
    assert "all written files verified" not in r.stderr


def test_a_board_whose_flash_cannot_take_a_second_build_is_told_so(tmp_path, home, image):
    # On a Pico W's file system (848 KiB, here a real LittleFS on an emulation of its flash)
    # the build and the record log fit, a second build staged beside them does not: every
    # firmware update to that node would be refused ("no space", counted as the firmware
    # counts it). Provisioning says so when it installs a node that takes updates; on an
    # ESP32's 2 MiB it reports the room there is.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from umeter.signing import fleet_identity

    ident = fleet_identity(Ed25519PrivateKey.generate(), "acme")
    reps = {}
    for geo in ("pico_w", "esp32"):
        with VirtualBoard(tmp_path / geo, "sim", flash=geo) as vb:
            dev = Device(name=f"n-{geo}", board="sim", site="lab", port=vb.port, config={"fleet": ident})
            rep = provision([dev], build_dirs={"sim": image}, keystore=Keystore(), fleet=Fleet(), reset=False)[0]
            assert rep.status == "ok" and rep.verified, rep.error
            from umeter.transport import Board

            with Board(vb.port, timeout=10) as b:  # the files are on the board's LittleFS
                bs, blocks, free = b.fs()
                assert 0 < free < blocks
                assert (bs, blocks) == ((4096, 212) if geo == "pico_w" else (4096, 512))
                assert json.loads(b.exec("print(open('/config.json').read())").decode())["fleet"] == ident
        assert not (vb.flash / "config.json").exists(), "nothing written to the host's directory"
        reps[geo] = rep
    p, e = reps["pico_w"], reps["esp32"]
    assert p.flash_short and "firmware updates will be refused on this board (no space)" in p.flash, p.flash
    assert "the record log will stop at the flash's bound" in p.flash, p.flash
    assert "the record log grows to 272 KiB" in p.flash, p.flash  # config.store's defaults, the node's own
    assert "WARNING: flash" in p.line()
    assert not e.flash_short and "a firmware update needs" in e.flash and "Flash: " in e.line(), e.flash
    assert json.loads(json.dumps(p.as_dict()))["flash_short"] is True
