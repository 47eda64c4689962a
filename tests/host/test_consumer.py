"""The SQLite consumer: duplicates removed, strict order per node, resend requests on gaps."""

from __future__ import annotations

import json

import paho.mqtt.client as mqtt
import pytest

from umeter.consumer import Consumer
from umeter.errors import TransportError


def _rec(seq, node="n1", held=1, kind="profile"):
    return f"umeter/{node}/{kind if kind == 'event' else 'profile'}", json.dumps(
        {"node": node, "seq": seq, "ts": 1000 + seq, "kind": kind, "held": held}
    ).encode()


class Recording(Consumer):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.sent = []

    def _publish(self, topic, payload):
        self.sent.append((topic, payload))


def test_duplicates_are_stored_once_and_counted(tmp_path):
    c = Recording(tmp_path / "db.sqlite")
    for s in (1, 2, 2, 3, 1, 3):
        c.ingest(*_rec(s))
    assert c.seqs("n1") == [1, 2, 3]
    assert c.counters()["duplicates"] == 3
    c.close()
    again = Consumer(tmp_path / "db.sqlite")
    assert again.ingest(*_rec(3)) is False, "dedup survives a consumer restart"
    assert again.ingest(*_rec(4)) is True


def test_record_ahead_of_a_gap_is_held_back_and_resend_requested():
    c = Recording()
    c.ingest(*_rec(1))
    assert c.ingest(*_rec(3)) is False
    assert c.sent == [("umeter/n1/resend", b"2")]
    assert c.seqs("n1") == [1]
    c.ingest(*_rec(2))
    c.ingest(*_rec(3))
    assert c.seqs("n1") == [1, 2, 3], "stored strictly in order"
    assert c.sent[-1] == ("umeter/n1/resend", b""), "request cleared once filled"
    assert c.counters()["early"] == 1


def test_records_the_node_no_longer_holds_are_counted_lost_not_awaited():
    c = Recording()
    c.ingest(*_rec(1))
    assert c.ingest(*_rec(10, held=10)) is True
    assert c.counters()["lost"] == 8
    assert c.sent == []


def test_state_telemetry_results_and_bad_payloads():
    c = Consumer()
    c.ingest("umeter/n1/state", b"online")
    c.ingest("umeter/n1/telemetry", b'{"seq": 4, "ts": 5, "v": 230.1}')
    c.ingest("umeter/n1/cmd/result", b'{"id": "m1", "ok": true}')
    c.ingest("umeter/n1/profile", b"not json")
    c.ingest("umeter/n1/profile", b'{"kind": "profile"}')
    c.ingest("other/n1/profile", b"{}")
    assert c.state("n1") == "online"
    assert c.telemetry("n1")[0]["v"] == 230.1
    assert c.results("n1")[0]["id"] == "m1"
    assert c.counters()["bad"] == 2
    assert c.count() == 0


def test_gaps_lists_missing_ranges():
    c = Consumer()
    for s in (1, 2, 5, 9):
        c.ingest(*_rec(s, held=s))
    assert c.gaps("n1") == [(3, 4), (6, 8)]


def test_unreachable_broker_is_a_transport_error():
    from umeter.broker import free_port

    with pytest.raises(TransportError, match="cannot reach the broker"):
        Consumer(host="127.0.0.1", port=free_port()).start(timeout=1)


def test_live_consumer_dedups_through_a_real_broker(mosquitto):
    with Consumer(host=mosquitto.host, port=mosquitto.port) as c:
        p = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        p.connect(mosquitto.host, mosquitto.port)
        p.loop_start()
        for s in (1, 2, 2, 3):
            p.publish(*_rec(s, node="live"), qos=1).wait_for_publish(5)
        c.wait_for(lambda: c.count("live") == 3 and c.counters()["duplicates"] == 1, 5, "3 records, 1 duplicate")
        assert c.seqs("live") == [1, 2, 3]
        p.loop_stop()
        p.disconnect()
