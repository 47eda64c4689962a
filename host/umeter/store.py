"""Where the consumer keeps what nodes send: SQLite (a file, the default) or PostgreSQL (a URL,
the scale-out store; see pgstore.py). Both hold the same tables, run the same ingest
algorithm below and answer the same queries, so the CLI prints the same either way.

    store = open_store("meter.sqlite")                  # or "postgresql://user@host/db"
    out = store.ingest([validate.classify(...), ...])   # one transaction per batch
    store.records("node-7")

Tables (schema version 2, created and migrated on open):

- `record_keys` (node, stream, seq) primary key: the dedup key and the gap state's source.
  A duplicate delivery inserts nothing. `status` 1 = stored, 2 = received but rejected.
- `records`: node, stream, seq, kind, ts, body (JSON), received. PostgreSQL partitions it by
  `ts` per month.
- `streams` (node, stream): the gap state, shared by every consumer of a group: `next_seq` (the
  lowest seq not yet received: everything below is stored, rejected or counted lost), `top_seq`,
  `gap_since`, the outstanding resend request (`asked_seq`, `asked_at`, `asks`) and `lost`.
- `telemetry`, `states`, `results`, `rejects`, `nodes` (last message per node), `counters`
  (per consumer, summed when read), `members` (each consumer's health, for a group).

Ingest, per batch, in one transaction: insert the keys (sorted, so two consumers never
deadlock), the bodies of the new ones, then lock the touched `streams` rows (sorted) and move
each watermark: records the node no longer holds (`held`) are counted lost, then `next_seq`
advances over every seq received. A record stored above the watermark leaves a gap; a gap still
open after `gap_wait` seconds makes one consumer publish the retained `…/resend` = next_seq
(again after 1, 2, 4 … s, at most every `RESEND_MAX` s); the consumer whose batch closes it
clears the request. Records are stored as they arrive (not held back): in a consumer group the
records of one node arrive at several consumers at once, slightly out of order.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, UmeterError
from .validate import Record, Reject, Result, State, Telemetry

SCHEMA_VERSION = 2
COUNTERS = ("records", "duplicates", "early", "lost", "resend_requests", "rejects")
RESEND_MAX = 60.0  # s: longest wait between two requests for the same gap
WALK_LIMIT = 5000  # keys read per query while moving a watermark
REJECTS_KEEP = 10000  # newest rejects kept; older ones are trimmed (the counter keeps counting)


class StoreError(UmeterError):
    """Base of the store's own errors."""


class StoreUnavailable(StoreError):
    """The database cannot be reached or is busy: retry later, acknowledge nothing.
    `transient`: the server aborted the transaction (deadlock, serialization): retry at once."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message, hint="is the database running and reachable?")
        self.transient = transient


class StoreRefused(StoreError):
    """The database refused this data: isolate the message that causes it."""


@dataclass
class Stream:
    node: str
    stream: str
    next_seq: int | None = None
    top_seq: int | None = None
    gap_since: float | None = None
    asked_seq: int | None = None
    asked_at: float | None = None
    asks: int = 0
    lost: int = 0
    last_seen: float | None = None

    def row(self) -> tuple:
        return (
            self.node,
            self.stream,
            self.next_seq,
            self.top_seq,
            self.gap_since,
            self.asked_seq,
            self.asked_at,
            self.asks,
            self.lost,
            self.last_seen,
        )


STREAM_COLS = (
    "node",
    "stream",
    "next_seq",
    "top_seq",
    "gap_since",
    "asked_seq",
    "asked_at",
    "asks",
    "lost",
    "last_seen",
)


@dataclass
class Outcome:
    """What one batch did: per item True (new record), False (duplicate) or None; the new
    records in arrival order; resend requests to publish once committed (node, stream, payload)."""

    results: list[bool | None] = field(default_factory=list)
    stored: list[Record] = field(default_factory=list)
    publish: list[tuple[str, str, bytes]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def is_url(db: str | Path) -> bool:
    return isinstance(db, str) and db.split("://", 1)[0] in ("postgresql", "postgres")


def describe(db: str | Path) -> str:
    """The database for messages: a path, or the URL without its password."""
    if not is_url(db):
        return str(db)
    from urllib.parse import urlsplit, urlunsplit

    u = urlsplit(str(db))
    if u.password is not None:
        netloc = f"{u.username}:***@{u.hostname}" + (f":{u.port}" if u.port else "")
        u = u._replace(netloc=netloc)
    return urlunsplit(u)


def open_store(db: str | Path = ":memory:", *, consumer: str = "local") -> Store:
    """SQLite for a path (or ':memory:'), PostgreSQL for a postgresql:// URL."""
    if is_url(db):
        from .pgstore import PostgresStore

        return PostgresStore(str(db), consumer=consumer)
    return SQLiteStore(db, consumer=consumer)


def resend_topic(prefix: str, node: str, stream: str) -> str:
    return f"{prefix}/{node}/resend" if stream == "log" else f"{prefix}/{node}/resend/{stream}"


def _resend_delay(interval: float, asks: int) -> float:
    return min(interval * 2 ** max(asks - 1, 0), RESEND_MAX)


class Store:
    """The ingest algorithm and the queries, over a dialect's primitives (SQLite, PostgreSQL)."""

    gap_wait = 2.0  # s a gap may stay open before the node is asked to resend
    resend_interval = 1.0  # s before the first repeat of the same request

    def __init__(self, consumer: str) -> None:
        self.consumer = consumer
        self.lock = threading.RLock()  # one connection, shared by the worker and readers

    # -- dialect primitives (subclasses) ---------------------------------------------------
    def _tx(self) -> contextlib.AbstractContextManager[Any]:
        raise NotImplementedError

    def _prepare(self, recs: list[Record], tele: list[Telemetry]) -> None:
        """Before the transaction (PostgreSQL: the month partitions these rows need)."""

    def _insert_keys(self, keys: list[tuple[str, str, int, int]]) -> set[tuple[str, str, int]]:
        raise NotImplementedError

    def _insert_records(self, rows: list[tuple]) -> None:
        raise NotImplementedError

    def _lock_streams(self, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], Stream]:
        raise NotImplementedError

    def _keys_from(self, starts: dict[tuple[str, str], int]) -> dict[tuple[str, str], list[int]]:
        raise NotImplementedError

    def _count_keys(self, pair: tuple[str, str], lo: int, hi: int) -> int:
        raise NotImplementedError

    def _save_streams(self, rows: list[Stream]) -> None:
        raise NotImplementedError

    def _gap_streams(self, cutoff: float) -> list[Stream]:
        raise NotImplementedError

    def _all_streams(self) -> list[Stream]:
        raise NotImplementedError

    def _write_side(self, tele, states, results, rejects, nodes, counts) -> None:
        raise NotImplementedError

    def q(self, sql: str, args: tuple | list = ()) -> list[tuple]:
        """A read query ('?' placeholders), outside any batch."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # -- ingest ------------------------------------------------------------------------------
    def ingest(self, items: list, now: float | None = None) -> Outcome:
        """Stores a batch of classified messages (validate.classify) in one transaction."""
        now = time.time() if now is None else now
        recs = [m for m in items if isinstance(m, Record)]
        tele = [m for m in items if isinstance(m, Telemetry)]
        with self.lock:
            self._prepare(recs, tele)
            with self._tx():
                return self._ingest(items, now)

    def _ingest(self, items: list, now: float) -> Outcome:
        out = Outcome()
        counts = dict.fromkeys(COUNTERS, 0)
        first: dict[tuple[str, str, int], int] = {}  # key -> index of its first copy in the batch
        for i, m in enumerate(items):
            if isinstance(m, Record) or (isinstance(m, Reject) and m.seq is not None):
                first.setdefault((m.node, m.stream, m.seq), i)
        keyed = sorted(first.items())
        new = self._insert_keys([(*k, 1 if isinstance(items[i], Record) else 2) for k, i in keyed]) if keyed else set()
        rows = []
        rejects = []
        for i, m in enumerate(items):
            r = None
            if isinstance(m, Record):
                key = (m.node, m.stream, m.seq)
                r = key in new and first[key] == i
                if r:
                    rows.append((m.node, m.stream, m.seq, m.kind, m.ts, m.body, now))
                    out.stored.append(m)
                    counts["records"] += 1
                else:
                    counts["duplicates"] += 1
            elif isinstance(m, Reject):
                key = (m.node, m.stream, m.seq)
                if m.seq is None or (key in new and first[key] == i):
                    rejects.append((m.node, m.topic, m.reason, m.head, now))
                    counts["rejects"] += 1
                else:
                    counts["duplicates"] += 1  # a rejected record delivered again
            out.results.append(r)
        if rows:
            self._insert_records(rows)
        if first:
            out.publish = self._advance(items, first, new, now, counts)
        tele = [(m.node, m.seq, m.ts, m.body, now) for m in items if isinstance(m, Telemetry)]
        states = {m.node: (m.node, m.state, now) for m in items if isinstance(m, State)}
        results = [(m.node, m.id, m.body, now) for m in items if isinstance(m, Result)]
        nodes: dict[str, str] = {}
        for m in items:
            if not isinstance(m, Reject):
                nodes[m.node] = _leaf(m)
        nodes_rows = [(n, now, leaf) for n, leaf in sorted(nodes.items())]
        self._write_side(tele, sorted(states.values()), results, rejects, nodes_rows, counts)
        out.counts = counts
        return out

    def _advance(self, items, first, new, now, counts) -> list[tuple[str, str, bytes]]:
        per: dict[tuple[str, str], dict[str, int]] = {}
        for (node, stream, seq), i in first.items():
            m = items[i]
            p = per.setdefault((node, stream), {"lo": seq, "hi": 0, "held": -1, "held_lo": -1})
            p["lo"] = min(p["lo"], seq)
            if isinstance(m, Record):  # a rejected message's seq fills its place but opens no gap
                p["hi"] = max(p["hi"], seq)
            held = getattr(m, "held", None)
            if held is not None:
                p["held"] = max(p["held"], held)
                p["held_lo"] = held if p["held_lo"] < 0 else min(p["held_lo"], held)
        pairs = sorted(per)
        states = self._lock_streams(pairs)
        for pair in pairs:
            st, p = states[pair], per[pair]
            if st.next_seq is None:  # a stream seen for the first time: from what the node holds
                st.next_seq = p["held_lo"] if 0 < p["held_lo"] <= p["lo"] else p["lo"]
            if p["held"] > st.next_seq:  # the node no longer holds next..held-1
                missing = p["held"] - st.next_seq - self._count_keys(pair, st.next_seq, p["held"])
                st.lost += missing
                counts["lost"] += missing
                st.next_seq = p["held"]
            if p["hi"]:
                st.top_seq = max(st.top_seq or 0, p["hi"])
        todo = {pair: states[pair].next_seq for pair in pairs}
        while todo:
            found = self._keys_from(todo)
            again = {}
            for pair, start in todo.items():
                seqs = found.get(pair, [])
                n = start
                for s in seqs:
                    if s != n:
                        break
                    n += 1
                states[pair].next_seq = n
                if len(seqs) >= WALK_LIMIT and n == start + len(seqs):
                    again[pair] = n
            todo = again
        for (node, stream, seq), i in first.items():
            if isinstance(items[i], Record) and (node, stream, seq) in new and seq > states[(node, stream)].next_seq:
                counts["early"] += 1  # stored above a gap
        publish = []
        for pair in pairs:
            st = states[pair]
            st.last_seen = now
            publish += self._requests(st, now, counts)
        self._save_streams([states[p] for p in pairs])
        return publish

    def _requests(self, st: Stream, now: float, counts: dict[str, int]) -> list[tuple[str, str, bytes]]:
        """Resend requests this stream's state calls for now (and the state updated for them)."""
        out = []
        if st.asked_seq is not None and st.next_seq > st.asked_seq:
            out.append((st.node, st.stream, b""))  # filled: clear the retained request
            st.asked_seq, st.asked_at, st.asks = None, None, 0
        gap = st.top_seq is not None and st.top_seq >= st.next_seq
        if not gap:
            st.gap_since = None
            return out
        if st.gap_since is None:
            st.gap_since = now
        if now - st.gap_since < self.gap_wait:
            return out
        if (
            st.asked_seq == st.next_seq
            and st.asked_at is not None
            and now - st.asked_at < _resend_delay(self.resend_interval, st.asks)
        ):
            return out
        st.asks = st.asks + 1 if st.asked_seq == st.next_seq else 1
        st.asked_seq, st.asked_at = st.next_seq, now
        counts["resend_requests"] += 1
        out.append((st.node, st.stream, str(st.next_seq).encode()))
        return out

    def sweep(self, now: float | None = None) -> list[tuple[str, str, bytes]]:
        """Gaps that stayed open (no batch touched their node): the requests now due."""
        now = time.time() if now is None else now
        with self.lock, self._tx():
            states = self._gap_streams(now - self.gap_wait)
            counts = dict.fromkeys(COUNTERS, 0)
            out = []
            for st in states:
                out += self._requests(st, now, counts)
            if out:
                self._save_streams(states)
                self._write_side([], [], [], [], [], counts)
        return out

    def ask_all(self, now: float | None = None) -> list[tuple[str, str, bytes]]:
        """Asks every known node for its next seq (after a connect without a kept session:
        what nodes published meanwhile reached nobody). Skips streams asked within
        `resend_interval`, so a group starting at once asks each node once."""
        now = time.time() if now is None else now
        with self.lock, self._tx():
            states = [
                st for st in self._all_streams() if st.asked_at is None or now - st.asked_at >= self.resend_interval
            ]
            for st in states:
                st.asks = st.asks + 1 if st.asked_seq == st.next_seq else 1
                st.asked_seq, st.asked_at = st.next_seq, now
            if states:
                self._save_streams(states)
                self._write_side([], [], [], [], [], {"resend_requests": len(states)})
        return [(st.node, st.stream, str(st.next_seq).encode()) for st in states]

    # -- housekeeping ------------------------------------------------------------------------
    def beat(self, member: str, group: str | None, health: dict) -> None:
        """This consumer's health row (members), and the rejects table trimmed."""
        raise NotImplementedError

    # -- queries (same SQL on both) --------------------------------------------------------------
    def records(
        self, node: str | None = None, kind: str | None = None, since: int | None = None, until: int | None = None
    ) -> list[dict[str, Any]]:
        """Stored records (decoded JSON), by node and seq; `since` <= ts < `until` when given."""
        cond, args = [], []
        for sql, v in (("node = ?", node), ("kind = ?", kind), ("ts >= ?", since), ("ts < ?", until)):
            if v is not None:
                cond.append(sql)
                args.append(v)
        where = " WHERE " + " AND ".join(cond) if cond else ""
        return [_doc(r[0]) for r in self.q(f"SELECT body FROM records{where} ORDER BY node, stream, seq", args)]

    def record_before(self, node: str, kind: str, ts: int) -> dict[str, Any] | None:
        """The node's last record of `kind` before `ts` (by seq), or None."""
        sql = "SELECT body FROM records WHERE node = ? AND kind = ? AND ts < ? ORDER BY seq DESC LIMIT 1"
        r = self.q(sql, (node, kind, ts))
        return _doc(r[0][0]) if r else None

    def record_nodes(self, kind: str | None = None) -> list[str]:
        """The nodes with stored records (of `kind`)."""
        where, args = (" WHERE kind = ?", (kind,)) if kind is not None else ("", ())
        return [r[0] for r in self.q(f"SELECT DISTINCT node FROM records{where} ORDER BY node", args)]

    def seqs(self, node: str, stream: str = "log") -> list[int]:
        """Sequence numbers of a node's stored records, ascending."""
        return [
            r[0] for r in self.q("SELECT seq FROM records WHERE node = ? AND stream = ? ORDER BY seq", (node, stream))
        ]

    def count(self, node: str | None = None) -> int:
        if node is None:
            return self.q("SELECT COUNT(*) FROM records")[0][0]
        return self.q("SELECT COUNT(*) FROM records WHERE node = ?", (node,))[0][0]

    def gaps(self, node: str, stream: str = "log") -> list[tuple[int, int]]:
        """Missing seq ranges (first, last) between the lowest and highest key received."""
        s = [
            r[0]
            for r in self.q("SELECT seq FROM record_keys WHERE node = ? AND stream = ? ORDER BY seq", (node, stream))
        ]
        return [(a + 1, b - 1) for a, b in itertools.pairwise(s) if b > a + 1]

    def counters(self) -> dict[str, int]:
        d = {name: int(n) for name, n in self.q("SELECT name, SUM(n) FROM counters GROUP BY name")}
        return {k: d.get(k, 0) for k in COUNTERS}

    def state(self, node: str) -> str | None:
        r = self.q("SELECT state FROM states WHERE node = ?", (node,))
        return r[0][0] if r else None

    def telemetry(self, node: str) -> list[dict]:
        return [_doc(r[0]) for r in self.q("SELECT body FROM telemetry WHERE node = ? ORDER BY received, seq", (node,))]

    def results(self, node: str) -> list[dict]:
        return [_doc(r[0]) for r in self.q("SELECT body FROM results WHERE node = ? ORDER BY received", (node,))]

    def rejects(self, node: str | None = None, limit: int = 100) -> list[dict]:
        """The newest rejected messages: node, topic, reason, head (first bytes), received."""
        where, args = (" WHERE node = ?", [node]) if node is not None else ("", [])
        rows = self.q(
            f"SELECT node, topic, reason, head, received FROM rejects{where} ORDER BY id DESC LIMIT ?", [*args, limit]
        )
        return [
            {"node": n, "topic": t, "reason": r, "head": bytes(h), "received": float(rc)} for n, t, r, h, rc in rows
        ]

    def nodes(self) -> list[dict]:
        """Every node heard from: last message (time, leaf) and its record stream's state."""
        rows = self.q(
            "SELECT n.node, n.last_seen, n.last_leaf, s.next_seq, s.top_seq, s.lost, s.gap_since "
            "FROM nodes n LEFT JOIN streams s ON s.node = n.node AND s.stream = 'log' ORDER BY n.node"
        )
        return [
            {
                "node": n,
                "last_seen": float(ls),
                "last_leaf": leaf,
                "next_seq": nx,
                "top_seq": top,
                "lost": int(lost or 0),
                "gap": gs is not None,
            }
            for n, ls, leaf, nx, top, lost, gs in rows
        ]

    def members(self) -> list[dict]:
        """Health of every consumer that wrote here (a group's members), newest beat first."""
        rows = self.q("SELECT id, grp, beat, health FROM members ORDER BY beat DESC")
        return [{"id": i, "group": g, "beat": float(b), "health": _doc(h)} for i, g, b, h in rows]


def _leaf(m) -> str:
    if isinstance(m, Record):
        return m.kind
    if isinstance(m, Telemetry):
        return "telemetry"
    if isinstance(m, State):
        return "state"
    return "cmd/result"


def _doc(v: Any) -> Any:
    return json.loads(v) if isinstance(v, str | bytes) else v


# --------------------------------------------------------------------------------------------
# SQLite

_SQLITE_V2 = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied REAL NOT NULL);
CREATE TABLE IF NOT EXISTS record_keys (
    node TEXT NOT NULL, stream TEXT NOT NULL, seq INTEGER NOT NULL, status INTEGER NOT NULL,
    PRIMARY KEY (node, stream, seq));
CREATE TABLE IF NOT EXISTS records (
    node TEXT NOT NULL, stream TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL, ts INTEGER NOT NULL,
    body TEXT NOT NULL, received REAL NOT NULL, PRIMARY KEY (node, stream, seq));
CREATE INDEX IF NOT EXISTS records_ts ON records (ts);
CREATE TABLE IF NOT EXISTS streams (
    node TEXT NOT NULL, stream TEXT NOT NULL, next_seq INTEGER, top_seq INTEGER, gap_since REAL,
    asked_seq INTEGER, asked_at REAL, asks INTEGER NOT NULL DEFAULT 0, lost INTEGER NOT NULL DEFAULT 0,
    last_seen REAL, PRIMARY KEY (node, stream));
CREATE INDEX IF NOT EXISTS streams_gap ON streams (gap_since) WHERE gap_since IS NOT NULL;
CREATE TABLE IF NOT EXISTS telemetry (
    node TEXT NOT NULL, seq INTEGER, ts INTEGER NOT NULL, body TEXT NOT NULL, received REAL NOT NULL);
CREATE INDEX IF NOT EXISTS telemetry_node ON telemetry (node, received);
CREATE TABLE IF NOT EXISTS states (node TEXT PRIMARY KEY, state TEXT NOT NULL, received REAL NOT NULL);
CREATE TABLE IF NOT EXISTS results (node TEXT NOT NULL, id TEXT, body TEXT NOT NULL, received REAL NOT NULL);
CREATE INDEX IF NOT EXISTS results_node ON results (node, received);
CREATE TABLE IF NOT EXISTS rejects (
    id INTEGER PRIMARY KEY AUTOINCREMENT, node TEXT NOT NULL, topic TEXT NOT NULL, reason TEXT NOT NULL,
    head BLOB NOT NULL, received REAL NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (node TEXT PRIMARY KEY, last_seen REAL NOT NULL, last_leaf TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (
    consumer TEXT NOT NULL, name TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (consumer, name));
CREATE TABLE IF NOT EXISTS members (
    id TEXT PRIMARY KEY, grp TEXT, beat REAL NOT NULL, health TEXT NOT NULL);
"""

# Version 1 (before this schema was versioned): records keyed (node, seq), stored strictly in
# order, so each node's next expected seq is its highest + 1; counters(name, n).
_SQLITE_V1_TO_V2 = """
ALTER TABLE records RENAME TO records_v1;
ALTER TABLE counters RENAME TO counters_v1;
{v2}
INSERT INTO record_keys (node, stream, seq, status) SELECT node, 'log', seq, 1 FROM records_v1;
INSERT INTO records (node, stream, seq, kind, ts, body, received)
    SELECT node, 'log', seq, kind, ts, body, received FROM records_v1 ORDER BY rowid;
INSERT INTO streams (node, stream, next_seq, top_seq, last_seen)
    SELECT node, 'log', MAX(seq) + 1, MAX(seq), MAX(received) FROM records_v1 GROUP BY node;
INSERT INTO nodes (node, last_seen, last_leaf)
    SELECT node, MAX(received), 'record' FROM records_v1 GROUP BY node;
INSERT INTO counters (consumer, name, n) SELECT '', CASE name WHEN 'bad' THEN 'rejects' ELSE name END, n
    FROM counters_v1;
DROP TABLE records_v1;
DROP TABLE counters_v1;
"""


class SQLiteStore(Store):
    """The embedded default: one file (WAL), batches in one transaction each."""

    def __init__(self, path: str | Path = ":memory:", *, consumer: str = "local") -> None:
        super().__init__(consumer)
        self.path = str(path)
        if self.path != ":memory:":
            parent = Path(self.path).parent
            if not parent.is_dir():
                raise ConfigError(
                    f"--db {path}: directory {parent} does not exist", hint="create it or choose another path"
                )
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
            if self.path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
            self._migrate()
        except sqlite3.DatabaseError as e:  # not a database, locked, read-only, ...
            raise ConfigError(f"--db {path}: cannot be used as an SQLite store ({e})", hint="give a new file") from None

    def _migrate(self) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "schema_version" in tables:
                v = db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
            else:
                v = 1 if "records" in tables else 0
            if v > SCHEMA_VERSION:
                raise ConfigError(
                    f"--db {self.path} has schema version {v}, newer than this umeter's {SCHEMA_VERSION}",
                    hint="upgrade umeter",
                )
            if v < SCHEMA_VERSION:
                script = _SQLITE_V1_TO_V2.format(v2=_SQLITE_V2) if v == 1 else _SQLITE_V2
                for stmt in _statements(script):
                    db.execute(stmt)
                db.execute("INSERT INTO schema_version (version, applied) VALUES (?, ?)", (SCHEMA_VERSION, time.time()))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def schema_version(self) -> int:
        return self.q("SELECT MAX(version) FROM schema_version")[0][0]

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            raise StoreUnavailable(f"SQLite: {e}") from None
        try:
            yield
            db.execute("COMMIT")
        except BaseException as e:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            if isinstance(e, sqlite3.OperationalError):
                raise StoreUnavailable(f"SQLite: {e}") from None
            if isinstance(e, sqlite3.Error | OverflowError):
                raise StoreRefused(f"SQLite: {e}") from None
            raise

    def _insert_keys(self, keys):
        new = set()
        for node, stream, seq, status in keys:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO record_keys (node, stream, seq, status) VALUES (?, ?, ?, ?)",
                (node, stream, seq, status),
            )
            if cur.rowcount == 1:
                new.add((node, stream, seq))
        return new

    def _insert_records(self, rows):
        self._db.executemany(
            "INSERT INTO records (node, stream, seq, kind, ts, body, received) VALUES (?, ?, ?, ?, ?, ?, ?)", rows
        )

    def _lock_streams(self, pairs):
        # BEGIN IMMEDIATE already holds the database's write lock: nobody else moves these.
        out = {}
        for node, stream in pairs:
            r = self._db.execute(
                f"SELECT {', '.join(STREAM_COLS)} FROM streams WHERE node = ? AND stream = ?", (node, stream)
            ).fetchone()
            out[(node, stream)] = Stream(*r) if r else Stream(node, stream)
        return out

    def _keys_from(self, starts):
        return {
            (node, stream): [
                r[0]
                for r in self._db.execute(
                    "SELECT seq FROM record_keys WHERE node = ? AND stream = ? AND seq >= ? ORDER BY seq LIMIT ?",
                    (node, stream, start, WALK_LIMIT),
                )
            ]
            for (node, stream), start in starts.items()
        }

    def _count_keys(self, pair, lo, hi):
        return self._db.execute(
            "SELECT COUNT(*) FROM record_keys WHERE node = ? AND stream = ? AND seq >= ? AND seq < ?", (*pair, lo, hi)
        ).fetchone()[0]

    def _save_streams(self, rows):
        self._db.executemany(
            f"INSERT OR REPLACE INTO streams ({', '.join(STREAM_COLS)}) VALUES ({', '.join('?' * len(STREAM_COLS))})",
            [s.row() for s in rows],
        )

    def _gap_streams(self, cutoff):
        rows = self._db.execute(
            f"SELECT {', '.join(STREAM_COLS)} FROM streams WHERE gap_since IS NOT NULL AND gap_since <= ?", (cutoff,)
        )
        return [Stream(*r) for r in rows]

    def _all_streams(self):
        return [Stream(*r) for r in self._db.execute(f"SELECT {', '.join(STREAM_COLS)} FROM streams")]

    def _write_side(self, tele, states, results, rejects, nodes, counts):
        db = self._db
        if tele:
            db.executemany("INSERT INTO telemetry (node, seq, ts, body, received) VALUES (?, ?, ?, ?, ?)", tele)
        if states:
            db.executemany("INSERT OR REPLACE INTO states (node, state, received) VALUES (?, ?, ?)", states)
        if results:
            db.executemany("INSERT INTO results (node, id, body, received) VALUES (?, ?, ?, ?)", results)
        if rejects:
            db.executemany("INSERT INTO rejects (node, topic, reason, head, received) VALUES (?, ?, ?, ?, ?)", rejects)
        if nodes:
            db.executemany(
                "INSERT INTO nodes (node, last_seen, last_leaf) VALUES (?, ?, ?) "
                "ON CONFLICT (node) DO UPDATE SET last_seen = excluded.last_seen, last_leaf = excluded.last_leaf",
                nodes,
            )
        inc = [(self.consumer, k, n) for k, n in counts.items() if n]
        if inc:
            db.executemany(
                "INSERT INTO counters (consumer, name, n) VALUES (?, ?, ?) "
                "ON CONFLICT (consumer, name) DO UPDATE SET n = n + excluded.n",
                inc,
            )

    def beat(self, member, group, health):
        with self.lock, self._tx():
            self._db.execute(
                "INSERT OR REPLACE INTO members (id, grp, beat, health) VALUES (?, ?, ?, ?)",
                (member, group, time.time(), json.dumps(health)),
            )
            self._db.execute(
                "DELETE FROM rejects WHERE id <= (SELECT id FROM rejects ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (REJECTS_KEEP,),
            )

    def q(self, sql, args=()):
        with self.lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.OperationalError as e:
                raise StoreUnavailable(f"SQLite: {e}") from None

    def close(self) -> None:
        with self.lock:
            self._db.close()


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
