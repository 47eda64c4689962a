"""The consumer's health as it really is (issue 10 item 2): records/s, rejects, last message per
node and the connection state, in `umeter monitor` (a line on stderr, `{"health": …}` objects
with --json, a --health-file, `--status` from the database) and from the library."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from umeter.backlog import record_payload
from umeter.broker import Mosquitto, mosquitto_path
from umeter.cli import main
from umeter.consumer import Consumer

pytestmark = pytest.mark.skipif(mosquitto_path() is None, reason="needs Mosquitto (apt-get install mosquitto)")


def _publisher(broker, node: str, seqs, poison: bool = True, delay: float = 0.8) -> threading.Thread:
    def run():
        time.sleep(delay)
        p = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        p.connect(broker.host, broker.port)
        p.loop_start()
        for s in seqs:
            p.publish(*record_payload(node, s), qos=1).wait_for_publish(5)
            if poison and s == 2:
                p.publish(f"umeter/{node}/event", b'{"seq": 99, "ts": "abc"}', qos=1).wait_for_publish(5)
            time.sleep(0.05)
        p.loop_stop()
        p.disconnect()

    t = threading.Thread(target=run)
    t.start()
    return t


def test_monitor_json_prints_records_and_health_and_keeps_a_health_file(mosquitto, db_url, tmp_path, capfd):
    hfile = tmp_path / "health.json"
    t = _publisher(mosquitto, "h1", range(1, 21))
    argv = ["monitor", "--broker", f"{mosquitto.host}:{mosquitto.port}", "--db", db_url, "--json"]
    rc = main([*argv, "--health-every", "0.5", "--health-file", str(hfile), "--seconds", "3.5", "--client-id", "mon-1"])
    t.join()
    assert rc == 0
    lines = [json.loads(ln) for ln in capfd.readouterr().out.splitlines()]
    recs = [ln for ln in lines if "health" not in ln]
    health = [ln["health"] for ln in lines if "health" in ln]
    assert [r["seq"] for r in recs] == list(range(1, 21)), "every record, as JSON"
    assert len(health) >= 4 and all(h["connection"] == "connected" and h["db_state"] == "ok" for h in health)
    assert max(h["records_per_s"] for h in health) > 0
    last = health[-1]
    assert last["stored"] == 20 and last["rejects"] == 1 and last["member"] == "mon-1"
    assert last["last_reject"]["reason"] == "ts = 'abc' is not an integer" and last["last_reject"]["node"] == "h1"
    assert last["nodes"] == 1 and last["quietest"][0]["node"] == "h1" and last["quietest"][0]["age_s"] < 10
    final = json.loads(hfile.read_text())
    assert final["connection"] == "stopped" and final["stored"] == 20, "the file's last word: stopped, counts"

    # --status reads what the database holds: the member's beat, nodes, counters, rejects
    assert main(["monitor", "--db", db_url, "--status", "--json"]) == 0
    st = json.loads(capfd.readouterr().out)
    assert st["counters"]["records"] == 20 and st["counters"]["rejects"] == 1
    assert [m["id"] for m in st["members"]] == ["mon-1"] and st["members"][0]["health"]["stored"] >= 1
    [node] = st["nodes"]
    assert node["node"] == "h1" and node["next_seq"] == 21 and not node["gap"] and node["age_s"] < 30
    assert st["rejects"][0]["reason"] == "ts = 'abc' is not an integer"
    assert bytes.fromhex(st["rejects"][0]["head"]) == b'{"seq": 99, "ts": "abc"}'
    assert main(["monitor", "--db", db_url, "--status"]) == 0
    text = capfd.readouterr().out
    assert "20 records, 0 duplicates dropped, 0 lost at the nodes, 1 rejected" in text
    assert "node h1: last " in text and "next seq 21" in text
    assert "reject h1 umeter/h1/event: ts = 'abc' is not an integer" in text


def test_health_line_on_stderr_names_connection_rate_rejects_and_nodes(mosquitto, tmp_path):
    argv = [sys.executable, "-m", "umeter", "monitor", "--broker", f"{mosquitto.host}:{mosquitto.port}"]
    argv += ["--db", str(tmp_path / "m.sqlite"), "--no-records", "--health-every", "1", "--seconds", "4"]
    p = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, NO_COLOR="1")
    )
    first = p.stderr.readline()
    assert first.startswith("Listening on "), first  # subscribed: now the node may publish
    _publisher(mosquitto, "h2", range(1, 11), delay=0).join()
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert out == "", "--no-records prints no records"
    lines = [ln for ln in err.splitlines() if ln.startswith("health: ")]
    assert lines, err
    assert (
        lines[-1].startswith("health: connected · ") and " rec/s · stored 10 · dup 0 · rejects 1 · db ok" in lines[-1]
    )
    assert "1 nodes (last message" in lines[-1] and "quietest h2" in lines[-1]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread it kills
def test_connection_state_follows_the_broker_and_paho_thread(tmp_path):
    from umeter.broker import free_port

    port = free_port()
    broker = Mosquitto(port=port).start()
    c = Consumer(tmp_path / "c.sqlite", "127.0.0.1", port).start()
    try:
        assert c.connection() == "connected" and c.health()["connection"] == "connected"
        broker.stop()
        c.wait_for(lambda: c.connection().startswith("disconnected"), 10, "the broker gone")
        broker = Mosquitto(port=port).start()
        c.wait_for(lambda: c.connection() == "connected", 15, "reconnected")
        # paho's thread is the connection: if anything ended it, the state must say so
        c._client.on_subscribe = lambda *a: 1 / 0
        c._client.subscribe("x/y", 1)
        c.wait_for(lambda: c.connection() == "network thread stopped", 5, "the dead network thread reported")
        assert c.health()["connection"] == "network thread stopped"
    finally:
        c.close()
        broker.stop()
