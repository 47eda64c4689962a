"""PostgreSQL behind `--db postgresql://…`: the store a consumer group shares (psycopg 3).

The same tables and algorithm as SQLite (store.py), with what PostgreSQL adds:

- `records` and `telemetry` are partitioned by `ts` (the node's clock) per calendar month
  (native range partitioning). A partition is created before the first batch that needs it,
  under an advisory lock, in its own short transaction; the current and next month exist
  from the start.
- Every batch is a handful of set-based statements over arrays (`unnest`), whatever its size.
- Rows a batch updates are taken in sorted order (keys, then `streams`, then `nodes`), so two
  consumers never deadlock; should the server still abort one (serialization, deadlock), the
  batch is retried.
- Migrations run under an advisory lock: a group started at once migrates once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
from collections.abc import Iterator

from .errors import ConfigError, TransportError
from .store import (
    REJECTS_KEEP,
    SCHEMA_VERSION,
    STREAM_COLS,
    WALK_LIMIT,
    Store,
    StoreRefused,
    StoreUnavailable,
    Stream,
    describe,
)

_MIGRATE_LOCK = 0x756D6574  # "umet": advisory lock ids, any constant shared by all consumers
_PART_LOCK = 0x756D6575

_PG_V2 = """
CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL, applied double precision NOT NULL);
CREATE TABLE record_keys (
    node text NOT NULL, stream text NOT NULL, seq bigint NOT NULL, status smallint NOT NULL,
    PRIMARY KEY (node, stream, seq));
CREATE TABLE records (
    node text NOT NULL, stream text NOT NULL, seq bigint NOT NULL, kind text NOT NULL, ts bigint NOT NULL,
    body jsonb NOT NULL, received double precision NOT NULL, PRIMARY KEY (node, stream, seq, ts)
) PARTITION BY RANGE (ts);
CREATE INDEX records_ts ON records (ts);
CREATE TABLE streams (
    node text NOT NULL, stream text NOT NULL, next_seq bigint, top_seq bigint, gap_since double precision,
    asked_seq bigint, asked_at double precision, asks integer NOT NULL DEFAULT 0, lost bigint NOT NULL DEFAULT 0,
    last_seen double precision, PRIMARY KEY (node, stream));
CREATE INDEX streams_gap ON streams (gap_since) WHERE gap_since IS NOT NULL;
CREATE TABLE telemetry (
    node text NOT NULL, seq bigint, ts bigint NOT NULL, body jsonb NOT NULL, received double precision NOT NULL
) PARTITION BY RANGE (ts);
CREATE INDEX telemetry_node ON telemetry (node, received);
CREATE TABLE states (node text PRIMARY KEY, state text NOT NULL, received double precision NOT NULL);
CREATE TABLE results (node text NOT NULL, id text, body jsonb NOT NULL, received double precision NOT NULL);
CREATE INDEX results_node ON results (node, received);
CREATE TABLE rejects (
    id bigserial PRIMARY KEY, node text NOT NULL, topic text NOT NULL, reason text NOT NULL, head bytea NOT NULL,
    received double precision NOT NULL);
CREATE TABLE nodes (node text PRIMARY KEY, last_seen double precision NOT NULL, last_leaf text NOT NULL);
CREATE TABLE counters (consumer text NOT NULL, name text NOT NULL, n bigint NOT NULL, PRIMARY KEY (consumer, name));
CREATE TABLE members (id text PRIMARY KEY, grp text, beat double precision NOT NULL, health jsonb NOT NULL);
"""

MIGRATIONS = {2: _PG_V2}  # version -> script that brings version-1 to it (the first PG schema is 2)
PARTITIONED = ("records", "telemetry")


def month(ts: int) -> tuple[str, int, int]:
    """(suffix, first second, first second of the next month) of the UTC month holding ts."""
    d = dt.datetime.fromtimestamp(ts, dt.UTC)
    a = dt.datetime(d.year, d.month, 1, tzinfo=dt.UTC)
    b = dt.datetime(d.year + (d.month == 12), d.month % 12 + 1, 1, tzinfo=dt.UTC)
    return f"{d.year:04d}{d.month:02d}", int(a.timestamp()), int(b.timestamp())


def _cols(prefix: str = "") -> str:
    return ", ".join(prefix + c for c in STREAM_COLS)


class PostgresStore(Store):
    def __init__(self, url: str, *, consumer: str = "local", connect_timeout: float = 5.0) -> None:
        super().__init__(consumer)
        try:
            import psycopg
        except ImportError:
            raise ConfigError(
                f"--db {describe(url)} needs the PostgreSQL driver psycopg", hint="pip install 'umeter[postgres]'"
            ) from None
        self._pg = psycopg
        self.url = url
        self.connect_timeout = connect_timeout
        self._conn = None
        self._parts: set[str] = set()
        try:
            self._connect()
        except StoreUnavailable as e:
            raise TransportError(
                f"cannot open {describe(url)}: {e.message}", hint="is PostgreSQL running? check the URL"
            ) from None
        self._migrate()
        now = int(time.time())
        self._ensure_partitions({month(now)[0]: now, month(now + 32 * 86400)[0]: now + 32 * 86400})

    # -- connection --------------------------------------------------------------------------
    def _connect(self):
        if self._conn is None or self._conn.closed:
            try:
                self._conn = self._pg.connect(
                    self.url,
                    autocommit=True,
                    connect_timeout=max(1, int(self.connect_timeout)),
                    application_name=f"umeter {self.consumer}"[:63],
                )
            except self._pg.Error as e:
                self._conn = None
                raise StoreUnavailable(_msg(e)) from None
            self._load_partitions()
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        self._conn = None

    def _classify(self, e: BaseException) -> BaseException:
        pg = self._pg
        if isinstance(e, pg.errors.TransactionRollback):  # deadlock / serialization: retry at once
            return StoreUnavailable(_msg(e), transient=True)
        if isinstance(e, pg.OperationalError | pg.InterfaceError):
            self._drop()
            return StoreUnavailable(_msg(e))
        if isinstance(e, pg.Error):
            return StoreRefused(_msg(e))
        return e

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        conn = self._connect()
        try:
            with conn.transaction():
                yield
        except (StoreUnavailable, StoreRefused):
            raise
        except self._pg.Error as e:
            raise self._classify(e) from None

    def _migrate(self) -> None:
        conn = self._connect()
        try:
            conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATE_LOCK,))
            try:
                with conn.transaction():
                    have = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()[0]
                    v = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] if have else 0
                    v = v or 0
                    if v > SCHEMA_VERSION:
                        raise ConfigError(
                            f"{describe(self.url)} has schema version {v}, newer than this umeter's {SCHEMA_VERSION}",
                            hint="upgrade umeter",
                        )
                    for target in sorted(MIGRATIONS):
                        if target > v:
                            conn.execute(MIGRATIONS[target])
                            conn.execute(
                                "INSERT INTO schema_version (version, applied) VALUES (%s, %s)", (target, time.time())
                            )
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATE_LOCK,))
        except self._pg.Error as e:
            raise TransportError(
                f"cannot set up the schema in {describe(self.url)}: {_msg(e)}", hint="check the role's rights"
            ) from None
        self._load_partitions()

    def schema_version(self) -> int:
        return self.q("SELECT MAX(version) FROM schema_version")[0][0]

    # -- partitions --------------------------------------------------------------------------
    def _load_partitions(self) -> None:
        rows = self._conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = ANY(%s)",
            (list(PARTITIONED),),
        ).fetchall()
        self._parts = {r[0] for r in rows}

    def _ensure_partitions(self, months: dict[str, int]) -> None:
        need = [(t, m, ts) for m, ts in sorted(months.items()) for t in PARTITIONED if f"{t}_{m}" not in self._parts]
        if not need:
            return
        conn = self._connect()
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PART_LOCK,))
                for table, suffix, ts in need:
                    _, a, b = month(ts)
                    conn.execute(
                        f"CREATE TABLE IF NOT EXISTS {table}_{suffix} PARTITION OF {table} "
                        f"FOR VALUES FROM ({a}) TO ({b})"
                    )
        except self._pg.Error as e:
            raise self._classify(e) from None
        self._parts.update(f"{t}_{m}" for t, m, _ in need)

    def partitions(self, table: str = "records") -> list[str]:
        return sorted(p for p in self._parts if p.startswith(table + "_"))

    def _prepare(self, recs, tele):
        months: dict[str, int] = {}
        for m in (*recs, *tele):
            months.setdefault(month(m.ts)[0], m.ts)
        self._ensure_partitions(months)

    # -- primitives --------------------------------------------------------------------------
    def _x(self, sql: str, args=()):
        return self._conn.execute(sql.replace("%s", "%b"), args)  # binary parameters: no text escaping

    def _insert_keys(self, keys):
        n, s, q, st = zip(*keys, strict=True)
        rows = self._x(
            "INSERT INTO record_keys (node, stream, seq, status) "
            "SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::smallint[]) "
            "ON CONFLICT DO NOTHING RETURNING node, stream, seq",
            (list(n), list(s), list(q), list(st)),
        ).fetchall()
        return {tuple(r) for r in rows}

    def _insert_records(self, rows):
        cols = [list(c) for c in zip(*rows, strict=True)]
        self._x(
            "INSERT INTO records (node, stream, seq, kind, ts, body, received) "
            "SELECT n, s, q, k, t, b::jsonb, r FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::text[], "
            "%s::bigint[], %s::text[], %s::float8[]) AS u(n, s, q, k, t, b, r)",
            cols,
        )

    def _lock_streams(self, pairs):
        n = [p[0] for p in pairs]
        s = [p[1] for p in pairs]
        self._x(
            "INSERT INTO streams (node, stream) SELECT * FROM unnest(%s::text[], %s::text[]) ON CONFLICT DO NOTHING",
            (n, s),
        )
        rows = self._x(
            f"SELECT {_cols('t.')} FROM streams t JOIN unnest(%s::text[], %s::text[]) AS u(n, s) "
            "ON t.node = u.n AND t.stream = u.s ORDER BY t.node, t.stream FOR UPDATE OF t",
            (n, s),
        ).fetchall()
        return {(r[0], r[1]): Stream(*r) for r in rows}

    def _keys_from(self, starts):
        items = list(starts.items())
        rows = self._x(
            "SELECT u.n, u.s, k.seq FROM unnest(%s::text[], %s::text[], %s::bigint[]) AS u(n, s, lo) "
            "CROSS JOIN LATERAL (SELECT seq FROM record_keys WHERE node = u.n AND stream = u.s AND seq >= u.lo "
            "ORDER BY seq LIMIT %s) k ORDER BY u.n, u.s, k.seq",
            ([p[0] for p, _ in items], [p[1] for p, _ in items], [lo for _, lo in items], WALK_LIMIT),
        ).fetchall()
        out: dict[tuple[str, str], list[int]] = {}
        for n, s, q in rows:
            out.setdefault((n, s), []).append(q)
        return out

    def _count_keys(self, pair, lo, hi):
        return self._x(
            "SELECT COUNT(*) FROM record_keys WHERE node = %s AND stream = %s AND seq >= %s AND seq < %s",
            (*pair, lo, hi),
        ).fetchone()[0]

    def _save_streams(self, rows):
        cols = [list(c) for c in zip(*(s.row() for s in rows), strict=True)]
        self._x(
            "UPDATE streams t SET next_seq = u.next_seq, top_seq = u.top_seq, gap_since = u.gap_since, "
            "asked_seq = u.asked_seq, asked_at = u.asked_at, asks = u.asks, lost = u.lost, last_seen = u.last_seen "
            "FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[], %s::float8[], %s::bigint[], %s::float8[], "
            f"%s::int[], %s::bigint[], %s::float8[]) AS u({', '.join(STREAM_COLS)}) "
            "WHERE t.node = u.node AND t.stream = u.stream",
            cols,
        )

    def _gap_streams(self, cutoff):
        rows = self._x(
            f"SELECT {_cols()} FROM streams WHERE gap_since IS NOT NULL AND gap_since <= %s "
            "ORDER BY node, stream LIMIT 1000 FOR UPDATE SKIP LOCKED",
            (cutoff,),
        ).fetchall()
        return [Stream(*r) for r in rows]

    def _all_streams(self):
        rows = self._x(f"SELECT {_cols()} FROM streams ORDER BY node, stream FOR UPDATE SKIP LOCKED").fetchall()
        return [Stream(*r) for r in rows]

    def _write_side(self, tele, states, results, rejects, nodes, counts):
        if tele:
            self._x(
                "INSERT INTO telemetry (node, seq, ts, body, received) SELECT n, q, t, b::jsonb, r "
                "FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::text[], %s::float8[]) AS u(n, q, t, b, r)",
                [list(c) for c in zip(*tele, strict=True)],
            )
        if states:
            self._x(
                "INSERT INTO states (node, state, received) SELECT * FROM unnest(%s::text[], %s::text[], %s::float8[]) "
                "ON CONFLICT (node) DO UPDATE SET state = excluded.state, received = excluded.received",
                [list(c) for c in zip(*states, strict=True)],
            )
        if results:
            self._x(
                "INSERT INTO results (node, id, body, received) SELECT n, i, b::jsonb, r "
                "FROM unnest(%s::text[], %s::text[], %s::text[], %s::float8[]) AS u(n, i, b, r)",
                [list(c) for c in zip(*results, strict=True)],
            )
        if rejects:
            self._x(
                "INSERT INTO rejects (node, topic, reason, head, received) "
                "SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::bytea[], %s::float8[])",
                [list(c) for c in zip(*rejects, strict=True)],
            )
        if nodes:
            self._x(
                "INSERT INTO nodes (node, last_seen, last_leaf) "
                "SELECT * FROM unnest(%s::text[], %s::float8[], %s::text[]) "
                "ON CONFLICT (node) DO UPDATE SET last_seen = GREATEST(nodes.last_seen, excluded.last_seen), "
                "last_leaf = excluded.last_leaf",
                [list(c) for c in zip(*nodes, strict=True)],
            )
        inc = [(k, n) for k, n in sorted(counts.items()) if n]
        if inc:
            self._x(
                "INSERT INTO counters (consumer, name, n) SELECT %s, * FROM unnest(%s::text[], %s::bigint[]) "
                "ON CONFLICT (consumer, name) DO UPDATE SET n = counters.n + excluded.n",
                (self.consumer, [k for k, _ in inc], [n for _, n in inc]),
            )

    def beat(self, member, group, health):
        with self.lock, self._tx():
            self._x(
                "INSERT INTO members (id, grp, beat, health) VALUES (%s, %s, %s, %s::jsonb) "
                "ON CONFLICT (id) DO UPDATE SET grp = excluded.grp, beat = excluded.beat, health = excluded.health",
                (member, group, time.time(), json.dumps(health)),
            )
            self._x(
                "DELETE FROM rejects WHERE id <= (SELECT id FROM rejects ORDER BY id DESC OFFSET %s LIMIT 1)",
                (REJECTS_KEEP,),
            )

    def q(self, sql, args=()):
        with self.lock:
            conn = self._connect()
            try:
                return conn.execute(sql.replace("?", "%s"), list(args)).fetchall()
            except self._pg.Error as e:
                raise self._classify(e) from None

    def close(self) -> None:
        with self.lock:
            self._drop()


def _msg(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return f"PostgreSQL: {s[0] if s else type(e).__name__}"
