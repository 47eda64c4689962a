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


def _generated_conf(files: dict) -> str:
    # The conf `umeter broker-config` writes, as a deployment includes it.
    user = "user root\n" if os.geteuid() == 0 else ""
    return user + files["conf"].read_text()


def test_a_node_cannot_take_over_another_nodes_client_id(tmp_path):
    # Issue 10 row 8: node A with its own password but client id `node-b` disconnected B and
    # fired B's last will `offline`, again and again.
    ks = Keystore(tmp_path / "keystore.json")
    users = [BrokerUser("node-a"), BrokerUser("node-b"), BrokerUser("watch", host=True)]
    files = write_broker_config(users, tmp_path / "broker", keystore=ks, use_mosquitto_passwd=False)
    pw = {u: ks.get(u)["mqtt_password"] for u in ("node-a", "node-b")}
    with Mosquitto(extra_conf=_generated_conf(files), allow_anonymous=False) as broker:
        watch = Client(broker, "watch", ks.get("host:watch")["mqtt_password"])
        watch.sub("umeter/node-b/state")
        b = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="node-b")
        b.username_pw_set("node-b", pw["node-b"])
        b.will_set("umeter/node-b/state", b"offline", qos=1, retain=True)
        downs: list = []
        b.on_disconnect = lambda c, u, f, reason, p: downs.append(reason)
        b.connect(broker.host, broker.port)
        b.loop_start()
        try:
            b.publish("umeter/node-b/state", b"online", qos=1, retain=True).wait_for_publish(3)
            assert ("umeter/node-b/state", b"online") in watch.drain(0.5)
            for _ in range(3):
                a = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="node-b")  # B's client id
                a.username_pw_set("node-a", pw["node-a"])
                a.connect(broker.host, broker.port)
                a.loop_start()
                time.sleep(0.5)
                a.loop_stop()
                a.disconnect()
            got = watch.drain(1.0)
            assert downs == [], f"node-b was disconnected: {downs}"
            assert ("umeter/node-b/state", b"offline") not in got, got
        finally:
            b.loop_stop()
            b.disconnect()
            watch.close()


def test_a_node_cannot_write_nor_read_another_nodes_discovery_topics(tmp_path):
    ks = Keystore(tmp_path / "keystore.json")
    users = [BrokerUser("node-a"), BrokerUser("node-b"), BrokerUser("ha", host=True)]
    files = write_broker_config(users, tmp_path / "broker", keystore=ks, use_mosquitto_passwd=False)
    with Mosquitto(extra_conf=_generated_conf(files), allow_anonymous=False) as broker:
        ha = Client(broker, "ha", ks.get("host:ha")["mqtt_password"])
        a = Client(broker, "node-a", ks.get("node-a")["mqtt_password"])
        b = Client(broker, "node-b", ks.get("node-b")["mqtt_password"])
        try:
            ha.sub("homeassistant/#")
            a.sub("homeassistant/#")  # reading others' discovery: nothing may arrive
            a.pub("homeassistant/sensor/node-b/power/config", b'{"state_topic": "forged"}')
            a.pub("homeassistant/sensor/node-a/power/config", b'{"state_topic": "mine"}')  # positive control
            b.pub("homeassistant/sensor/node-b/power/config", b'{"state_topic": "real"}')
            got = ha.drain()
            assert ("homeassistant/sensor/node-a/power/config", b'{"state_topic": "mine"}') in got
            assert ("homeassistant/sensor/node-b/power/config", b'{"state_topic": "real"}') in got
            assert all(p != b'{"state_topic": "forged"}' for _, p in got), got
            assert a.drain(0.3) == []
        finally:
            for c in (ha, a, b):
                c.close()


@pytest.mark.parametrize("name", ["+", "node/x", "a#", "", "two words"])
def test_user_names_that_would_widen_the_acl_are_refused(tmp_path, name):
    ks = Keystore(tmp_path / "keystore.json")
    with pytest.raises(ConfigError, match="user name"):
        write_broker_config([BrokerUser(name)], tmp_path / "b", keystore=ks, use_mosquitto_passwd=False)
