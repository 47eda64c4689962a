"""`umeter monitor` with the credentials `umeter broker-config` makes (issue 11 item 4), against a
real Mosquitto that allows no anonymous client: a host user's password comes from the
keystore; without it the error says the broker refused: not authorised (CONNACK 5), not
"no CONNACK"; a group member subscribes through the ACL to the shared subscription."""

from __future__ import annotations

import os
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from umeter.backlog import record_payload
from umeter.broker import Mosquitto, mosquitto_path
from umeter.cli import main
from umeter.consumer import Consumer
from umeter.fleet import BrokerUser, write_broker_config
from umeter.keystore import Keystore

pytestmark = pytest.mark.skipif(mosquitto_path() is None, reason="needs Mosquitto (apt-get install mosquitto)")


@pytest.fixture
def secured(tmp_path, monkeypatch):
    """Mosquitto with broker-config's passwd + ACL: node `node-a` and host user `ingest`."""
    monkeypatch.setenv("UMETER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("UMETER_MQTT_PASSWORD", raising=False)
    files = write_broker_config([BrokerUser("node-a"), BrokerUser("ingest", host=True)], tmp_path / "broker")
    # Started as root, Mosquitto drops to the `mosquitto` user and then cannot read a 0600 file.
    user = "user root\n" if os.geteuid() == 0 else ""
    # use_username_as_clientid: what broker-config's conf sets so no client takes over another's
    # session (issue 10 row 8); the monitor's client id is its user name anyway.
    conf = f"{user}use_username_as_clientid true\npassword_file {files['passwd']}\nacl_file {files['acl']}\n"
    with Mosquitto(extra_conf=conf, allow_anonymous=False) as broker:
        yield broker


def _publish_as_node(broker, seqs, delay=0.8):
    def run():
        time.sleep(delay)
        p = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="node-a")
        p.username_pw_set("node-a", Keystore().get("node-a")["mqtt_password"])
        p.connect(broker.host, broker.port)
        p.loop_start()
        for s in seqs:
            p.publish(*record_payload("node-a", s), qos=1).wait_for_publish(5)
        p.loop_stop()
        p.disconnect()

    t = threading.Thread(target=run)
    t.start()
    return t


def test_monitor_without_credentials_says_not_authorised(secured, tmp_path, capsys):
    rc = main(["monitor", "--broker", f"{secured.host}:{secured.port}", "--db", str(tmp_path / "m.sqlite")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert err[-1].startswith(
        f"umeter: error: the broker at mqtt://{secured.host}:{secured.port} refused the connection: not authorised — "
    ), err
    assert "--host-user" in err[-1] and "no CONNACK" not in err[-1]


def test_monitor_with_a_wrong_password_is_refused(secured, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("UMETER_MQTT_PASSWORD", "not-the-password")
    rc = main(
        ["monitor", "--broker", f"{secured.host}:{secured.port}", "--user", "ingest", "--db", str(tmp_path / "m.db")]
    )
    assert rc == 1
    assert "refused the connection: not authorised" in capsys.readouterr().err


def test_monitor_with_an_unknown_host_user_names_the_fix(secured, tmp_path, capsys):
    rc = main(
        ["monitor", "--broker", f"{secured.host}:{secured.port}", "--user", "nobody", "--db", str(tmp_path / "m.db")]
    )
    err = capsys.readouterr().err
    assert (
        rc == 1 and "no password for broker user 'nobody'" in err and "broker-config -o DIR --host-user nobody" in err
    )


def test_monitor_as_the_broker_config_host_user_stores_records(secured, tmp_path, capfd):
    db = tmp_path / "m.sqlite"
    t = _publish_as_node(secured, (1, 2, 2))
    rc = main(
        ["monitor", "--broker", f"{secured.host}:{secured.port}", "--user", "ingest", "--db", str(db), "--seconds", "3"]
    )
    t.join()
    out, err = capfd.readouterr()
    assert rc == 0, err
    assert [ln.split(" ", 2)[:2] for ln in out.splitlines()] == [["node-a", "#1"], ["node-a", "#2"]]
    # the client id is the user name (so a broker that ties client ids to users accepts it)
    assert "as ingest (p2, c0" in secured.log(), "persistent session (c0) under the user's name"
    c = Consumer(db)
    assert c.seqs("node-a") == [1, 2] and c.counters()["duplicates"] == 1
    c.close()


def test_a_group_member_subscribes_to_the_shared_subscription_through_the_acl(secured, tmp_path):
    pw = Keystore().get("host:ingest")["mqtt_password"]
    with Consumer(tmp_path / "g.sqlite", secured.host, secured.port, group="g1", username="ingest", password=pw) as c:
        assert c.topics()[0] == "$share/g1/umeter/+/profile"
        _publish_as_node(secured, (1, 2, 3), delay=0).join()
        c.wait_for(lambda: c.count("node-a") == 3, 10, "3 records through $share/g1/…")
        assert c.connection() == "connected" and c.client_id == "ingest"
