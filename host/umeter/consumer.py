"""Host-side consumer of node uplinks: subscribes to a broker and stores what nodes send in
SQLite, with duplicates removed by (node, sequence number).

Nodes publish every stored record (load profile, freezes, events) with QoS 1 and its
sequence number; a reconnect or reboot may send a record again. `Consumer.ingest` keeps
the first copy and counts the rest, so the table holds each record exactly once, in arrival
order (rowid). Live telemetry, the retained online/offline state and command results are
kept too.

Records are stored strictly in sequence per node. A broker restarted without persistence
can lose what it already acknowledged to the node; when a record arrives ahead of the next
expected one, the consumer leaves it (the node will send it again) and publishes the
retained request `<prefix>/<node>/resend` = next expected seq; the node goes back to it
(go-back-N from its record log) and the request is cleared once filled. A record also says
which seq the node still holds (`held`): anything below that was dropped by the node's
retention and is counted as `lost` instead of being waited for.

    with Consumer("meter.sqlite", "127.0.0.1", 1883) as c:
        c.wait_for(lambda: c.count("node-1") >= 96, timeout=30)
        rows = c.records("node-1")
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import TransportError
from .mqttc import connect, make_client

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    node TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL, ts INTEGER NOT NULL,
    body TEXT NOT NULL, received REAL NOT NULL, PRIMARY KEY (node, seq));
CREATE TABLE IF NOT EXISTS telemetry (
    node TEXT NOT NULL, seq INTEGER, ts INTEGER, body TEXT NOT NULL, received REAL NOT NULL);
CREATE TABLE IF NOT EXISTS states (node TEXT PRIMARY KEY, state TEXT NOT NULL, received REAL NOT NULL);
CREATE TABLE IF NOT EXISTS results (node TEXT NOT NULL, id TEXT, body TEXT NOT NULL, received REAL NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, n INTEGER NOT NULL);
"""

RECORD_LEAVES = ("profile", "event", "reading")


class Consumer:
    """Stores node uplinks from `host:port` (topics under `prefix`) in the SQLite file `db`."""

    def __init__(
        self,
        db: str | Path = ":memory:",
        host: str | None = None,
        port: int = 1883,
        prefix: str = "umeter",
        *,
        on_record: Callable[[str, dict], None] | None = None,
        tls_ca: str | Path | None = None,
    ) -> None:
        self.db_path = str(db)
        self.host = host
        self.port = port
        self.prefix = prefix
        self.on_record = on_record
        self.tls_ca = tls_ca
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
        self._db.executescript(_SCHEMA)
        self._client = None
        self.connected = threading.Event()
        self._next: dict[str, int] = {}  # node -> next expected seq
        self._asked: dict[str, tuple[int, float]] = {}  # node -> (seq requested, when)
        self.resend_interval = 1.0  # s between repeated requests for the same seq

    # -- storing -----------------------------------------------------------------------------
    def _bump(self, name: str, n: int = 1) -> None:
        self._db.execute(
            "INSERT INTO counters(name, n) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET n = n + ?", (name, n, n)
        )

    def ingest(self, topic: str, payload: bytes) -> bool | None:
        """Stores one message. Returns True (new record), False (duplicate), None (not a record)."""
        parts = topic.split("/")
        if len(parts) < 3 or parts[0] != self.prefix:
            return None
        node, leaf = parts[1], "/".join(parts[2:])
        now = time.time()
        with self._lock:
            if leaf == "state":
                self._db.execute(
                    "INSERT OR REPLACE INTO states(node, state, received) VALUES (?, ?, ?)",
                    (node, payload.decode("utf-8", "replace"), now),
                )
                return None
            try:
                doc = json.loads(payload)
                if not isinstance(doc, dict):
                    raise ValueError("not an object")
            except ValueError:
                self._bump("bad")
                return None
            if leaf == "telemetry":
                self._db.execute(
                    "INSERT INTO telemetry(node, seq, ts, body, received) VALUES (?, ?, ?, ?, ?)",
                    (node, doc.get("seq"), doc.get("ts"), payload.decode(), now),
                )
                return None
            if leaf == "cmd/result":
                self._db.execute(
                    "INSERT INTO results(node, id, body, received) VALUES (?, ?, ?, ?)",
                    (node, doc.get("id"), payload.decode(), now),
                )
                return None
            if leaf not in RECORD_LEAVES:
                return None
            seq = doc.get("seq")
            if not isinstance(seq, int):
                self._bump("bad")
                return None
            exp = self._expected(node)
            held = doc.get("held") if isinstance(doc.get("held"), int) else 0
            if exp is not None and seq > exp:
                if held > exp:  # the node no longer has exp..held-1: count them lost, go on
                    self._bump("lost", held - exp)
                    exp = self._next[node] = held
                if seq > exp:  # a gap the node can fill: ask for it, store this later
                    self._bump("early")
                    self._ask(node, exp, now)
                    return False
            cur = self._db.execute(
                "INSERT OR IGNORE INTO records(node, seq, kind, ts, body, received) VALUES (?, ?, ?, ?, ?, ?)",
                (node, seq, str(doc.get("kind", leaf)), int(doc.get("ts", 0)), payload.decode(), now),
            )
            new = cur.rowcount == 1
            self._bump("records" if new else "duplicates")
            if new and (exp is None or seq >= exp):
                self._next[node] = seq + 1
                asked = self._asked.get(node)
                if asked and seq >= asked[0]:
                    del self._asked[node]
                    self._publish(f"{self.prefix}/{node}/resend", b"")
        if new and self.on_record is not None:
            self.on_record(node, doc)
        return new

    def _expected(self, node: str) -> int | None:
        if node not in self._next:
            r = self._db.execute("SELECT MAX(seq) FROM records WHERE node = ?", (node,)).fetchone()
            if r[0] is None:
                return None
            self._next[node] = r[0] + 1
        return self._next[node]

    def _ask(self, node: str, seq: int, now: float) -> None:
        asked = self._asked.get(node)
        if asked and asked[0] == seq and now - asked[1] < self.resend_interval:
            return
        self._asked[node] = (seq, now)
        self._bump("resend_requests")
        self._publish(f"{self.prefix}/{node}/resend", str(seq).encode())

    def _publish(self, topic: str, payload: bytes) -> None:
        c = self._client
        if c is not None:
            c.publish(topic, payload, qos=1, retain=True)

    # -- reading -----------------------------------------------------------------------------
    def records(self, node: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        """Stored records (decoded JSON), in arrival order."""
        q = "SELECT body FROM records"
        cond, args = [], []
        if node is not None:
            cond.append("node = ?")
            args.append(node)
        if kind is not None:
            cond.append("kind = ?")
            args.append(kind)
        if cond:
            q += " WHERE " + " AND ".join(cond)
        with self._lock:
            rows = self._db.execute(q + " ORDER BY rowid", args).fetchall()
        return [json.loads(r[0]) for r in rows]

    def seqs(self, node: str) -> list[int]:
        """Sequence numbers of a node's records, in arrival order."""
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT seq FROM records WHERE node = ? ORDER BY rowid", (node,))]

    def count(self, node: str | None = None) -> int:
        with self._lock:
            if node is None:
                return self._db.execute("SELECT COUNT(*) FROM records").fetchone()[0]
            return self._db.execute("SELECT COUNT(*) FROM records WHERE node = ?", (node,)).fetchone()[0]

    def gaps(self, node: str) -> list[tuple[int, int]]:
        """Missing sequence ranges (first, last) between the lowest and highest record held."""
        s = sorted(self.seqs(node))
        return [(a + 1, b - 1) for a, b in itertools.pairwise(s) if b > a + 1]

    def counters(self) -> dict[str, int]:
        with self._lock:
            d = dict(self._db.execute("SELECT name, n FROM counters").fetchall())
        keys = ("records", "duplicates", "early", "lost", "resend_requests", "bad")
        return {k: d.get(k, 0) for k in keys}

    def state(self, node: str) -> str | None:
        with self._lock:
            r = self._db.execute("SELECT state FROM states WHERE node = ?", (node,)).fetchone()
        return r[0] if r else None

    def telemetry(self, node: str) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT body FROM telemetry WHERE node = ? ORDER BY rowid", (node,)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def results(self, node: str) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT body FROM results WHERE node = ? ORDER BY rowid", (node,)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def wait_for(self, cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
        """Polls `cond` until true; raises TransportError naming `what` after `timeout` s."""
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise TransportError(f"timed out after {timeout:g} s waiting for {what}", hint="is the node connected?")
            time.sleep(0.05)

    # -- the MQTT side -----------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> Consumer:
        """Connects to the broker and subscribes (QoS 1, persistent session)."""

        if self.host is None:
            raise TransportError("no broker given", hint="pass host and port")
        c = make_client("umeter-consumer", tls_ca=self.tls_ca)

        def on_connect(client, userdata, flags, rc, props=None):
            if rc == 0:
                client.subscribe([(f"{self.prefix}/+/{leaf}", 1) for leaf in (*RECORD_LEAVES, "telemetry", "state")])
                client.subscribe(f"{self.prefix}/+/cmd/result", 1)
                self.connected.set()
                # After our own outage: ask every known node for what we may have missed.
                with self._lock:
                    nodes = [r[0] for r in self._db.execute("SELECT DISTINCT node FROM records")]
                    for n in nodes:
                        self._ask(n, self._expected(n), time.time())

        def on_disconnect(client, userdata, flags, rc, props=None):
            self.connected.clear()

        c.on_connect = on_connect
        c.on_disconnect = on_disconnect
        c.on_message = lambda client, userdata, m: self.ingest(m.topic, m.payload)
        c.reconnect_delay_set(0.1, 2)
        connect(c, self.host, self.port)
        self._client = c  # before the loop runs: on_connect publishes resend requests with it
        c.loop_start()
        if not self.connected.wait(timeout):
            self.stop()
            raise TransportError(f"no CONNACK from {self.host}:{self.port} in {timeout:g} s", hint="check the broker")
        time.sleep(0.1)  # let the SUBACK arrive before the caller starts the nodes
        return self

    def stop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

    def close(self) -> None:
        self.stop()
        with self._lock:
            self._db.close()

    def __enter__(self) -> Consumer:
        return self.start() if self.host else self

    def __exit__(self, *exc: object) -> None:
        self.close()
