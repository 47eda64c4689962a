"""`umeter command` against a real node (sim board, MicroPython unix port) through Mosquitto:
the node's key and counter come from the keystore it was provisioned from, `status` reports
its heap and tasks, a set is rolled back, a forged key and a node that is not there each end
in one line naming what happened."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from umeter import unixport
from umeter.broker import mosquitto_path
from umeter.keystore import Keystore

pytestmark = pytest.mark.skipif(mosquitto_path() is None, reason="needs Mosquitto (apt-get install mosquitto)")

NODE = "cli1"


def _start_node(root: Path, port: int, key: str, mqtt: dict | None = None) -> subprocess.Popen:
    root.mkdir()
    shutil.copy(unixport.boards_dir() / "sim.json", root / "board.json")
    shutil.copy(unixport.firmware_root() / "main.py", root / "main.py")
    cfg = {
        "node_id": NODE,
        "telemetry_s": 0.5,
        "cmd_key": key,
        "mqtt": mqtt or {"host": "127.0.0.1", "port": port, "keepalive": 10},
        "sim": {"realtime": True, "currents": [{"rms": 5.0}]},
        "utc_offset_min": -600,  # Hawaii: its midnights at 10:00 UTC are UTC+14's too (umeter export)
    }
    (root / "config.json").write_text(json.dumps(cfg))
    heap = json.loads((unixport.boards_dir() / "sim.json").read_text())["heap"]
    env = dict(os.environ, MICROPYPATH=unixport.micropypath())
    log = open(root / "console.log", "w")  # noqa: SIM115 - the process owns it
    return subprocess.Popen(
        unixport.command(root / "main.py", heap=heap), cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT
    )


def _online(host: str, port: int, timeout: float = 30, auth: tuple[str, str] | None = None) -> bool:
    seen = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    if auth:
        c.username_pw_set(*auth)
    c.on_message = lambda cl, u, m: seen.set() if m.payload == b"online" else None
    c.connect(host, port)
    c.subscribe(f"umeter/{NODE}/state", 1)
    c.loop_start()
    try:
        return seen.wait(timeout)
    finally:
        c.loop_stop()
        c.disconnect()


def _umeter(home: Path, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, UMETER_HOME=str(home), NO_COLOR="1")
    return subprocess.run(
        [sys.executable, "-m", "umeter", *argv], capture_output=True, text=True, env=env, timeout=timeout
    )


def test_umeter_command_reaches_a_node_with_its_keystore_key_and_counter(tmp_path, mosquitto):
    home = tmp_path / "home"
    ks = Keystore(home / "keystore.json")
    key = ks.secrets_for(NODE)["cmd_key"]
    node = _start_node(tmp_path / "node", mosquitto.port, key)
    b = f"--broker={mosquitto.host}:{mosquitto.port}"
    try:
        assert _online(mosquitto.host, mosquitto.port), "node online"

        r = _umeter(home, "command", NODE, "status", b, "--json")
        assert r.returncode == 0, r.stderr
        st = json.loads(r.stdout)
        h = st["heap"]
        assert h["free"] > 0 and 0 < h["low"] <= h["free"] + h["alloc"], h
        assert {"sampling", "reporting", "link"} <= set(st["tasks"]), st["tasks"]
        assert st["restarts"] == 0 and st["safe"] is False, st
        assert st["uplink"]["link"]["up"] is True and st["uplink"]["log"]["records"] >= 1, st["uplink"]
        ctr1 = ks.get(NODE)["cmd_ctr"]

        r = _umeter(home, "command", NODE, "set", "telemetry_s", "2", b)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(f"node {NODE}: set done:") and '"new": 2.0' in r.stdout, r.stdout
        r = _umeter(home, "command", NODE, "rollback", "telemetry_s", b, "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == {"key": "telemetry_s", "old": 2.0, "new": 0.5}
        # three commands, three counters, each above the last (within one second or not)
        assert ks.get(NODE)["cmd_ctr"] >= ctr1 + 2

        r = _umeter(home, "command", NODE, "status", b)  # the human form
        assert r.returncode == 0, r.stderr
        assert f"node {NODE}: v" in r.stdout and "heap: free " in r.stdout and "link up" in r.stdout, r.stdout
        assert "clock: 20" in r.stdout and "from this host), billing time UTC-10:00" in r.stdout, r.stdout

        # a forged key: the node refuses it and says why, one line, exit 1
        r = _umeter(home, "command", NODE, "read_now", b, "--key", "ab" * 32)
        assert r.returncode == 1, r.stdout
        assert r.stderr.startswith(f"umeter: error: node {NODE} rejected the command: unauthenticated"), r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr

        # a counter the node has seen: restored from an old backup, the keystore's time floor
        # still gives one above it, so the command goes through
        # (once the clock has passed the last counter given: a burst of commands in one second
        # runs ahead of it by one per command)
        data = json.loads(ks.path.read_text())
        while time.time() < data[NODE]["cmd_ctr"] + 1:
            time.sleep(0.1)
        data[NODE]["cmd_ctr"] = 5
        ks._save(data)
        r = _umeter(home, "command", NODE, "read_now", b, "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["node"] == NODE

        # the fleet's health at once: the inventory's nodes asked for their status over one
        # connection; a node that is not there, and one without a key, are named
        from umeter.inventory import Fleet

        fl = Fleet(home / "fleet.sqlite")
        fl.bind("e66038b7134f5a2d", NODE, "sim", "lab", None, None)
        fl.bind("e66038b7134f5a2e", "ghost", "sim", "lab", None, None)
        fl.bind("e66038b7134f5a2f", "keyless", "sim", "roof", None, None)
        ks.secrets_for("ghost")
        r = _umeter(home, "fleet", "health", b, "--timeout", "5", "--json")
        assert r.returncode == 1, r.stdout
        doc = json.loads(r.stdout)
        assert doc["problems"] == ["ghost", "keyless"], doc
        assert doc["nodes"]["ghost"]["problem"] == "no answer in 5 s"
        assert doc["nodes"]["keyless"]["problem"] == "no command key in the keystore"
        assert doc["nodes"][NODE]["status"]["heap"]["low"] > 0 and "problem" not in doc["nodes"][NODE]
        # (a virtual node's clock follows its samples: on a loaded host it lags a few seconds)
        assert abs(doc["nodes"][NODE]["clock_skew_s"]) <= 10, doc["nodes"][NODE]
        assert "2 of 3 node(s) need a look: ghost, keyless" in r.stderr, r.stderr
        # what the node said of its billing time is kept, for `umeter export` to date its freezes
        assert fl.offsets() == {NODE: -600}
        r = _umeter(home, "fleet", "health", b, "--site", "lab", "--node", NODE)
        assert r.returncode == 0, r.stderr
        assert NODE in r.stdout and "lowest" in r.stdout and "1 node(s) answered" in r.stderr, r.stdout + r.stderr
        r = _umeter(home, "fleet", "health", b, "--node", NODE, "--low-kb", "100000", "--json")
        assert r.returncode == 1 and "under 100000 KB" in json.loads(r.stdout)["nodes"][NODE]["problem"], r.stdout
        # a node clock an hour slow: its midnights and demand periods are an hour off, named
        r = _umeter(home, "command", NODE, "time", str(int(time.time()) - 3600), b)
        assert r.returncode == 0, r.stderr
        r = _umeter(home, "fleet", "health", b, "--node", NODE, "--json")
        assert r.returncode == 1, r.stdout
        d = json.loads(r.stdout)["nodes"][NODE]
        assert -3615 <= d["clock_skew_s"] <= -3585 and "clock off by -3" in d["problem"], d
        assert d["status"]["clock"]["utc_offset_min"] == -600, d
        r = _umeter(home, "fleet", "health", b, "--node", NODE)
        assert r.returncode == 1 and "s UTC-10:00" in r.stdout, r.stdout
        r = _umeter(home, "fleet", "ls")
        assert r.returncode == 0 and "UTC-10:00" in r.stdout, r.stdout
    finally:
        node.terminate()
        node.wait(10)
    # nobody there: the wait ends with what to check
    r = _umeter(home, "command", NODE, "status", b, "--timeout", "1")
    assert r.returncode == 1
    assert r.stderr.startswith(f"umeter: error: no answer from node {NODE} in 1 s"), r.stderr
    # a node this keystore never provisioned, without --key
    r = _umeter(home, "command", "stranger", "status", b)
    assert r.returncode == 1 and "no command key for node 'stranger'" in r.stderr, r.stderr


def test_umeter_sim_commands_gives_its_nodes_keys_that_umeter_command_uses(tmp_path):
    # The demo, as a newcomer runs it: `umeter sim --commands` on its embedded broker says how
    # to reach a node; `umeter command node-01 status` in another terminal answers.
    home = tmp_path / "home"
    env = dict(os.environ, UMETER_HOME=str(home), NO_COLOR="1")
    sim = subprocess.Popen(
        [sys.executable, "-m", "umeter", "sim", "--nodes", "1", "--commands", "--duration", "40", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    url: list[str] = []
    telemetry = threading.Event()

    def read_err() -> None:
        for line in sim.stderr:
            if "umeter command node-01 status --broker " in line:
                url.append(line.split("--broker ")[1].split("`")[0])

    def read_out() -> None:
        for line in sim.stdout:
            if line.startswith('{"node":"node-01"') and '"telemetry":{' in line:
                telemetry.set()

    for f in (read_err, read_out):
        threading.Thread(target=f, daemon=True).start()
    try:
        assert telemetry.wait(60), "telemetry from node-01"
        assert url, "the sim says how to send a command"
        r = _umeter(home, "command", "node-01", "status", "--broker", url[0], "--json")
        assert r.returncode == 0, r.stderr
        st = json.loads(r.stdout)
        assert st["heap"]["low"] > 0 and st["uplink"]["link"]["up"] is True, st
        assert Keystore(home / "keystore.json").get("node-01")["cmd_ctr"] > 0
    finally:
        sim.terminate()
        sim.wait(60)


def test_umeter_command_through_broker_config_credentials_and_acl(tmp_path):
    # The production path: Mosquitto with `umeter broker-config`'s password file and ACL, the
    # node logging in as itself, the operator as a host user whose password is in the keystore.
    from umeter.broker import Mosquitto
    from umeter.fleet import BrokerUser, write_broker_config

    home = tmp_path / "home"
    ks = Keystore(home / "keystore.json")
    files = write_broker_config([BrokerUser(NODE), BrokerUser("ops", host=True)], tmp_path / "broker", keystore=ks)
    secrets = ks.get(NODE)
    user = "user root\n" if os.geteuid() == 0 else ""  # root Mosquitto drops privileges: 0600 files
    conf = f"{user}use_username_as_clientid true\npassword_file {files['passwd']}\nacl_file {files['acl']}\n"
    with Mosquitto(extra_conf=conf, allow_anonymous=False) as broker:
        m = {"host": "127.0.0.1", "port": broker.port, "keepalive": 10}
        m.update(user=NODE, password=secrets["mqtt_password"])
        node = _start_node(tmp_path / "node", broker.port, secrets["cmd_key"], mqtt=m)
        b = f"--broker={broker.host}:{broker.port}"
        try:
            ops = ("ops", ks.get("host:ops")["mqtt_password"])
            assert _online(broker.host, broker.port, auth=ops), "node online"
            r = _umeter(home, "command", NODE, "status", b, "--user", "ops", "--json")
            assert r.returncode == 0, r.stderr
            assert json.loads(r.stdout)["uplink"]["link"]["up"] is True
            r = _umeter(home, "command", NODE, "status", b)  # anonymous: refused, and says so
            assert r.returncode == 1
            assert "refused the connection: not authorised" in r.stderr and "--host-user" in r.stderr, r.stderr
        finally:
            node.terminate()
            node.wait(10)
