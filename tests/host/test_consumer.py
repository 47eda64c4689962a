"""The consumer and its stores: duplicates removed by (node, stream, seq), gaps asked for and
cleared, records the node no longer holds counted lost, rejects kept — the same on SQLite and
PostgreSQL (`db_url` runs each test on both)."""

from __future__ import annotations

import json
import sqlite3

import paho.mqtt.client as mqtt
import pytest

from umeter.backlog import record_payload
from umeter.consumer import Consumer
from umeter.errors import ConfigError, TransportError
from umeter.store import SCHEMA_VERSION, open_store


def _rec(seq, node="n1", held=1):
    return record_payload(node, seq, held=held)


class Recording(Consumer):
    def __init__(self, *a, **kw):
        kw.setdefault("gap_wait", 0.0)
        super().__init__(*a, **kw)
        self.sent = []

    def _publish(self, topic, payload):
        self.sent.append((topic, payload))


def test_duplicates_are_stored_once_and_counted(db_url):
    c = Recording(db_url)
    for s in (1, 2, 2, 3, 1, 3):
        c.ingest(*_rec(s))
    assert c.seqs("n1") == [1, 2, 3]
    assert c.counters()["duplicates"] == 3
    c.close()
    again = Consumer(db_url)
    assert again.ingest(*_rec(3)) is False, "dedup survives a consumer restart"
    assert again.ingest(*_rec(4)) is True
    assert again.counters()["records"] == 4
    again.close()


def test_record_ahead_of_a_gap_is_stored_and_the_gap_asked_for_then_cleared(db_url):
    c = Recording(db_url)
    c.ingest(*_rec(1))
    assert c.ingest(*_rec(3)) is True, "stored on arrival: in a group, records of one node arrive out of order"
    assert c.sent == [("umeter/n1/resend", b"2")]
    assert c.gaps("n1") == [(2, 2)]
    c.ingest(*_rec(3))
    assert c.sent == [("umeter/n1/resend", b"2")], "the same request is not repeated within the resend interval"
    c.ingest(*_rec(2))
    assert c.seqs("n1") == [1, 2, 3]
    assert c.sent[-1] == ("umeter/n1/resend", b""), "request cleared once filled"
    assert c.counters()["early"] == 1 and c.counters()["resend_requests"] == 1
    c.close()


def test_a_gap_is_asked_for_only_after_gap_wait_by_the_sweep(db_url):
    c = Recording(db_url, gap_wait=2.0)
    store = c.store
    c.ingest(*_rec(1))
    c.ingest(*_rec(3))
    assert c.sent == [], "a gap younger than gap_wait may be a record another group member is storing"
    t = store.q("SELECT gap_since FROM streams WHERE node = 'n1'")[0][0]
    assert store.sweep(now=t + 1.0) == []
    assert store.sweep(now=t + 2.5) == [("n1", "log", b"2")]
    assert store.sweep(now=t + 3.0) == [], "asked again only after the resend interval"
    assert store.sweep(now=t + 3.6) == [("n1", "log", b"2")]
    assert store.sweep(now=t + 4.8) == [], "then after 2 s, 4 s, … (backoff)"
    assert store.sweep(now=t + 5.7) == [("n1", "log", b"2")]
    c.close()


def test_records_the_node_no_longer_holds_are_counted_lost_not_awaited(db_url):
    c = Recording(db_url)
    c.ingest(*_rec(1))
    assert c.ingest(*_rec(10, held=10)) is True
    assert c.counters()["lost"] == 8
    assert c.sent == []
    c.close()


def test_first_record_of_a_node_starts_from_what_the_node_holds(db_url):
    c = Recording(db_url)
    c.ingest(*_rec(5, held=3))  # the node still holds 3 and 4: they were never stored
    assert c.sent == [("umeter/n1/resend", b"3")]
    c.close()


def test_state_telemetry_results_and_rejects(db_url):
    c = Consumer(db_url)
    c.ingest("umeter/n1/state", b"online")
    tele = {"node": "n1", "seq": 4, "ts": 5, "v": 230.1, "p": 1.0, "e_imp_wh": 1.0, "e_exp_wh": 0.0, "elements": []}
    c.ingest("umeter/n1/telemetry", json.dumps(tele).encode())
    c.ingest("umeter/n1/cmd/result", b'{"id": "m1", "ok": true}')
    c.ingest("umeter/n1/profile", b"not json")
    c.ingest("umeter/n1/profile", b'{"kind": "profile"}')
    assert c.ingest("other/n1/profile", b"{}") is None
    assert c.ingest("umeter/n1/policy/state", b"{}") is None, "not a topic the consumer keeps"
    assert c.state("n1") == "online"
    assert c.telemetry("n1")[0]["v"] == 230.1
    assert c.results("n1")[0]["id"] == "m1"
    assert c.counters()["rejects"] == 2
    rej = c.rejects("n1")
    assert [r["reason"] for r in rej] == [
        "seq is missing",
        "payload is not JSON (Expecting value: line 1 column 1 (char 0))",
    ]
    assert rej[1]["head"] == b"not json" and rej[1]["topic"] == "umeter/n1/profile"
    assert c.count() == 0
    c.close()


def test_gaps_lists_missing_ranges(db_url):
    c = Consumer(db_url)
    for s in (1, 2, 5, 9):
        c.ingest(*_rec(s, held=s))
    assert c.gaps("n1") == [(3, 4), (6, 8)]
    c.close()


def test_a_rejected_record_fills_its_seq_so_it_is_not_asked_for_forever(db_url):
    c = Recording(db_url)
    c.ingest(*_rec(1))
    topic, payload = _rec(2)
    doc = json.loads(payload)
    doc["ts"] = "abc"
    assert c.ingest(topic, json.dumps(doc).encode()) is None
    c.ingest(*_rec(3))
    assert c.sent == [], "seq 2 arrived (rejected): no gap"
    assert c.seqs("n1") == [1, 3] and c.counters()["rejects"] == 1
    assert c.ingest(topic, json.dumps(doc).encode()) is None
    assert c.counters()["rejects"] == 1 and c.counters()["duplicates"] == 1, "its second copy is a duplicate"
    doc["seq"] = 500  # a rejected message's seq cannot be trusted: it opens no gap
    c.ingest(topic, json.dumps(doc).encode())
    c.ingest(*_rec(4))
    assert c.sent == [] and c.store.nodes()[0]["gap"] is False
    c.close()


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
        assert c.connection() == "connected"
        p.loop_stop()
        p.disconnect()


# -- schema ----------------------------------------------------------------------------------

_V1 = """
CREATE TABLE records (node TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL, ts INTEGER NOT NULL,
    body TEXT NOT NULL, received REAL NOT NULL, PRIMARY KEY (node, seq));
CREATE TABLE telemetry (node TEXT NOT NULL, seq INTEGER, ts INTEGER, body TEXT NOT NULL, received REAL NOT NULL);
CREATE TABLE states (node TEXT PRIMARY KEY, state TEXT NOT NULL, received REAL NOT NULL);
CREATE TABLE results (node TEXT NOT NULL, id TEXT, body TEXT NOT NULL, received REAL NOT NULL);
CREATE TABLE counters (name TEXT PRIMARY KEY, n INTEGER NOT NULL);
"""


def test_an_sqlite_file_of_the_unversioned_schema_is_migrated_and_goes_on(tmp_path):
    db = tmp_path / "old.sqlite"
    old = sqlite3.connect(db)
    old.executescript(_V1)
    for s in (1, 2, 3):
        _, body = _rec(s, node="o1")
        old.execute("INSERT INTO records VALUES ('o1', ?, 'profile', ?, ?, ?)", (s, 1000 + s, body.decode(), 1.0 + s))
    old.execute("INSERT INTO counters VALUES ('records', 3), ('duplicates', 5), ('bad', 2)")
    old.commit()
    old.close()
    c = Recording(db)
    assert c.store.schema_version() == SCHEMA_VERSION
    assert c.seqs("o1") == [1, 2, 3] and c.records("o1")[2]["seq"] == 3
    assert c.counters()["duplicates"] == 5 and c.counters()["rejects"] == 2
    assert c.ingest(*_rec(3, node="o1")) is False, "old rows still dedup"
    assert c.ingest(*_rec(4, node="o1")) is True and c.sent == [], "the node's sequence goes on, no gap"
    c.close()
    assert Consumer(db).store.schema_version() == SCHEMA_VERSION, "opening again migrates nothing"


def test_a_newer_schema_is_refused_with_a_clear_error(tmp_path):
    db = tmp_path / "new.sqlite"
    open_store(db).close()
    con = sqlite3.connect(db)
    con.execute("INSERT INTO schema_version VALUES (99, 0)")
    con.commit()
    con.close()
    with pytest.raises(ConfigError, match="schema version 99, newer than"):
        open_store(db)


def test_a_file_that_is_not_a_database_is_a_config_error(tmp_path):
    bad = tmp_path / "x.sqlite"
    bad.write_bytes(b"not a database at all" * 100)
    with pytest.raises(ConfigError, match="cannot be used as an SQLite store"):
        open_store(bad)
