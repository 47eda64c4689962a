"""`umeter broker-config` against a real Mosquitto: node A cannot publish to node B's topics nor
read B's commands, while each node works under its own topics (so the test can fail)."""

from __future__ import annotations

import base64
import hashlib
import os
import queue
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from umeter.broker import Mosquitto, mosquitto_path
from umeter.errors import ConfigError
from umeter.fleet import BrokerUser, mosquitto_hash, write_broker_config
from umeter.keystore import Keystore

pytestmark = pytest.mark.skipif(mosquitto_path() is None, reason="needs a Mosquitto broker binary")


def broker_conf(files: dict) -> str:
    # Mosquitto started as root drops to the `mosquitto` user unless told otherwise, and then
    # cannot read a 0600 password file in a private temp dir; a deployment chowns it instead.
    user = "user root\n" if os.geteuid() == 0 else ""
    return f"{user}password_file {files['passwd']}\nacl_file {files['acl']}\n"


class Client:
    def __init__(self, broker: Mosquitto, user: str, password: str) -> None:
        self.got: queue.Queue = queue.Queue()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{user}-{time.monotonic_ns()}")
        self.c.username_pw_set(user, password)
        self.c.on_message = lambda c, u, m: self.got.put((m.topic, m.payload))
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()

    def sub(self, topic: str) -> None:
        r, _mid = self.c.subscribe(topic, qos=1)
        assert r == 0
        time.sleep(0.15)

    def pub(self, topic: str, payload: bytes) -> None:
        self.c.publish(topic, payload, qos=1).wait_for_publish(3)

    def drain(self, wait: float = 0.5) -> list:
        out = []
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                out.append(self.got.get(timeout=0.05))
            except queue.Empty:
                pass
        return out

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.mark.parametrize("tool", [True, False], ids=["mosquitto_passwd", "own-pbkdf2"])
def test_node_a_cannot_publish_to_b_nor_read_b_commands(tmp_path, tool):
    if tool and not Path("/usr/bin/mosquitto_passwd").exists():
        pytest.skip("mosquitto_passwd is not installed")
    ks = Keystore(tmp_path / "keystore.json")
    files = write_broker_config(
        [BrokerUser("node-a"), BrokerUser("node-b")], tmp_path / "broker", keystore=ks, use_mosquitto_passwd=tool
    )
    conf = broker_conf(files)
    pa, pb = ks.get("node-a")["mqtt_password"], ks.get("node-b")["mqtt_password"]
    with Mosquitto(extra_conf=conf, allow_anonymous=False) as broker:
        a, b = Client(broker, "node-a", pa), Client(broker, "node-b", pb)
        try:
            b.sub("umeter/node-b/#")
            a.sub("umeter/node-b/cmd")  # reading B's commands: the broker must not deliver them
            a.sub("umeter/node-a/#")
            a.pub("umeter/node-b/telemetry", b"forged")  # publishing as B: dropped
            a.pub("umeter/node-a/telemetry", b"mine")  # positive control
            b.pub("umeter/node-b/cmd", b"for-b-only")
            got_b = b.drain()
            got_a = a.drain()
            assert ("umeter/node-b/cmd", b"for-b-only") in got_b
            assert ("umeter/node-b/telemetry", b"forged") not in got_b
            assert ("umeter/node-a/telemetry", b"mine") in got_a
            assert all(t.startswith("umeter/node-a/") for t, _ in got_a), got_a
        finally:
            a.close()
            b.close()


def test_wrong_password_is_refused(tmp_path):
    ks = Keystore(tmp_path / "keystore.json")
    files = write_broker_config([BrokerUser("node-a")], tmp_path / "broker", keystore=ks, use_mosquitto_passwd=False)
    with Mosquitto(extra_conf=broker_conf(files), allow_anonymous=False) as br:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        c.username_pw_set("node-a", "not-the-password")
        rc = []
        c.on_connect = lambda cl, u, f, reason, p: rc.append(reason)
        c.connect(br.host, br.port)
        c.loop_start()
        deadline = time.monotonic() + 3
        while not rc and time.monotonic() < deadline:
            time.sleep(0.02)
        c.loop_stop()
        assert rc and rc[0].is_failure


def test_own_hash_is_mosquittos_pbkdf2_sha512_format():
    salt = bytes(range(12))
    h = mosquitto_hash("secret", salt)
    _, seven, iters, s64, d64 = h.split("$")
    assert (seven, iters) == ("7", "101")
    assert base64.b64decode(s64) == salt
    assert base64.b64decode(d64) == hashlib.pbkdf2_hmac("sha512", b"secret", salt, 101, 64)


def test_password_file_is_private_and_no_nodes_is_an_error(tmp_path):
    ks = Keystore(tmp_path / "keystore.json")
    files = write_broker_config([BrokerUser("n1")], tmp_path / "b", keystore=ks, use_mosquitto_passwd=False)
    assert files["passwd"].stat().st_mode & 0o777 == 0o600
    assert ks.get("n1")["mqtt_password"] not in files["passwd"].read_text()
    with pytest.raises(ConfigError, match="no nodes"):
        write_broker_config([], tmp_path / "c", keystore=ks)
