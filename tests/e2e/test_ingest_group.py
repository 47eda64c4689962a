"""A consumer group on MQTT shared subscriptions writing to PostgreSQL (issue 13), with a real
Mosquitto and a real PostgreSQL started on free loopback ports: one node's records spread over
the members are each stored once with no gap (the gap state is in the database); a member
SIGKILLed while it holds records it could not commit loses none of them (commit before
acknowledge, persistent session); PostgreSQL stopped for 10 s under load makes the members stop
acknowledging and resume without loss."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from umeter.backlog import Backlog
from umeter.broker import Mosquitto, mosquitto_path
from umeter.consumer import Consumer

pytestmark = pytest.mark.skipif(mosquitto_path() is None, reason="needs Mosquitto (apt-get install mosquitto)")

# The broker keeps every message a member has not acknowledged (0: no limit on the queue; the
# default of 1000 per client drops the rest while the database is down; see docs/scale.md).
BROKER_CONF = "max_queued_messages 0\nmax_inflight_messages 200\n"


def _exactly_once(c: Consumer, nodes: list[str], records: int) -> None:
    assert c.count() == len(nodes) * records
    n = c.store.q("SELECT COUNT(*), COUNT(DISTINCT (node, stream, seq)) FROM records")[0]
    assert n[0] == n[1], "no record stored twice"
    for node in nodes[:: max(1, len(nodes) // 25)]:
        assert c.seqs(node) == list(range(1, records + 1)), node
    assert c.counters()["lost"] == 0
    gaps = c.store.q("SELECT COUNT(*) FROM streams WHERE next_seq <> ?", (records + 1,))[0][0]
    assert gaps == 0, "every node's watermark reached its last record"


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def test_a_group_stores_each_record_once_however_the_broker_spreads_a_node(pg_url):
    nodes = [f"g{i:04d}" for i in range(200)]
    with Mosquitto(extra_conf=BROKER_CONF) as broker:
        members = [Consumer(pg_url, broker.host, broker.port, group="g", client_id=f"m{i}").start() for i in range(3)]
        try:
            with Backlog(broker.host, broker.port, nodes, 15) as b:
                _wait(lambda: members[0].count() == 3000, 60, "3000 records from 200 nodes")
                _exactly_once(members[0], nodes, 15)
                per = dict(members[0].store.q("SELECT consumer, n FROM counters WHERE name = 'records'"))
                assert set(per) == {"m0", "m1", "m2"} and sum(per.values()) == 3000, per
                assert all(n > 300 for n in per.values()), f"the broker spread the load: {per}"
                # Round-robin per message: a node's consecutive records went to different members,
                # some committed ahead of a lower seq another member still held.
                assert members[0].counters()["early"] > 0
                assert b.counts()["published"] >= 3000
        finally:
            for m in members:
                m.close()


def _member(pg_url: str, broker: Mosquitto, cid: str, health) -> subprocess.Popen:
    argv = [sys.executable, "-m", "umeter", "monitor", "--broker", f"{broker.host}:{broker.port}", "--db", pg_url]
    argv += ["--group", "g", "--client-id", cid, "--no-records", "--health-file", str(health), "--health-every", "0"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ, NO_COLOR="1"))


def _health(path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def test_a_member_killed_while_holding_uncommitted_records_loses_none(tmp_path):
    # Deterministic "mid-batch": with the database down a member receives records but cannot
    # commit, so it acknowledges none; SIGKILL it there. Back with the same client id, the
    # broker hands it the session's unacknowledged and queued records again.
    from umeter.pgserver import PostgresServer

    pytest.importorskip("psycopg")
    from umeter.pgserver import pg_bindir

    if pg_bindir() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql); CI installs it")
    nodes = [f"k{i:03d}" for i in range(100)]
    health = tmp_path / "m1.json"
    with PostgresServer() as pg, Mosquitto(extra_conf=BROKER_CONF) as broker:
        url = pg.create_database("kill")
        other = Consumer(url, broker.host, broker.port, group="g", client_id="m2").start()
        m1 = _member(url, broker, "m1", health)
        try:
            _wait(lambda: _health(health).get("connection") == "connected", 20, "member m1 connected")
            pg.stop()
            with Backlog(broker.host, broker.port, nodes, 10, rate=800):
                _wait(lambda: _health(health).get("received", 0) >= 100, 30, "m1 receiving while the database is down")
                h = _health(health)
                assert h["stored"] == 0 and h["acked"] == 0 and h["db_state"].startswith("down"), h
                m1.send_signal(signal.SIGKILL)
                m1.wait(10)
                pg.start()
                _wait(lambda: other.health()["db_state"] == "ok", 30, "m2 sees the database again")
                m1 = _member(url, broker, "m1", health)
                _wait(lambda: other.count() == 1000, 60, "all 1000 records after m1 came back")
                _wait(lambda: _health(health).get("session_present") is True, 10, "m1 resumed its kept session")
            _exactly_once(other, nodes, 10)
            per = dict(other.store.q("SELECT consumer, n FROM counters WHERE name = 'records'"))
            assert per.get("m1", 0) > 0, f"the killed member's records were stored by it after its restart: {per}"
        finally:
            if m1.poll() is None:
                m1.terminate()
                m1.wait(10)
            other.close()


def test_postgres_stopped_for_10_s_under_load_members_stop_acknowledging_and_resume(tmp_path):
    from umeter.pgserver import PostgresServer, pg_bindir

    pytest.importorskip("psycopg")
    if pg_bindir() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql); CI installs it")
    nodes = [f"o{i:03d}" for i in range(300)]
    with PostgresServer() as pg, Mosquitto(extra_conf=BROKER_CONF) as broker:
        url = pg.create_database("outage")
        members = [Consumer(url, broker.host, broker.port, group="g", client_id=f"m{i}").start() for i in range(2)]
        try:
            with Backlog(broker.host, broker.port, nodes, 20, rate=300):  # 6000 records over ~20 s
                _wait(lambda: members[0].count() >= 600, 30, "records flowing")
                pg.stop()
                t_down = time.monotonic()
                _wait(lambda: all(m.health()["db_state"].startswith("down") for m in members), 10, "members see it")
                acked = [m.stats["acked"] for m in members]
                time.sleep(max(0.0, 10 - (time.monotonic() - t_down)))
                assert [m.stats["acked"] for m in members] == acked, "nothing acknowledged while the database is down"
                assert all(m.connection() == "connected" for m in members), "the broker link stays up meanwhile"
                assert sum(m.health()["pending"] for m in members) + sum(m.stats["received"] for m in members) > 0
                pg.start()
                _wait(lambda: members[0].count() == 6000, 90, "all 6000 records after the outage")
            _exactly_once(members[0], nodes, 20)
            assert all(m.health()["db_state"] == "ok" for m in members)
        finally:
            for m in members:
                m.close()


def test_what_a_member_holds_unstored_is_bounded_even_when_the_broker_sends_without_limit(tmp_path):
    # max_inflight_messages 0: the broker sends everything at once. With the database down the
    # member stores nothing; its queue stops at max_pending (paho's thread waits: TCP
    # back-pressure) and nothing is lost when the database returns.
    from umeter.pgserver import PostgresServer, pg_bindir

    pytest.importorskip("psycopg")
    if pg_bindir() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql); CI installs it")
    with PostgresServer() as pg, Mosquitto(extra_conf="max_queued_messages 0\nmax_inflight_messages 0\n") as broker:
        url = pg.create_database("bound")
        c = Consumer(url, broker.host, broker.port, client_id="b1")
        c.max_pending = 50
        c.start()
        try:
            pg.stop()
            with Backlog(broker.host, broker.port, [f"b{i:02d}" for i in range(40)], 10):
                _wait(lambda: c.stats["paused_10ms"] > 20, 20, "the network thread waiting on a full queue")
                assert c.health()["pending"] <= 50 and c.stats["received"] <= 50 and c.stats["acked"] == 0
                pg.start()
                _wait(lambda: c.count() == 400, 60, "all 400 records once the database is back")
            _exactly_once(c, [f"b{i:02d}" for i in range(40)], 10)
        finally:
            c.close()


def test_a_stopped_member_keeps_its_share_until_it_leaves(pg_url):
    # Mosquitto goes on queueing a persistent member's share while it is away (so a restarted
    # member loses nothing); a member taken out for good leaves (unsubscribes, drains) first.
    nodes = [f"l{i:02d}" for i in range(20)]
    with Mosquitto(extra_conf=BROKER_CONF) as broker:
        a = Consumer(pg_url, broker.host, broker.port, group="g", client_id="a", gap_wait=60).start()
        b = Consumer(pg_url, broker.host, broker.port, group="g", client_id="b", gap_wait=60).start()
        try:
            a.stop()  # away, still a member
            with Backlog(broker.host, broker.port, nodes, 10, connections=1) as bl:
                bl.wait_sent(20)
                _wait(lambda: b.count() >= 80, 20, "b's share")
                time.sleep(1.0)
                assert b.count() < 200, "the absent member's share waits for it in its session"
                a.start()  # back: its session's share arrives; then it leaves for good
                _wait(lambda: b.count() == 200, 20, "a's share after its return")
                a.leave()
                a.stop()
            with Backlog(broker.host, broker.port, [f"m{i:02d}" for i in range(20)], 10, connections=1):
                _wait(lambda: b.count() == 400, 20, "every later record at b alone")
            assert b.stats["stored"] >= 200 + 100
        finally:
            a.close()
            b.close()
