"""Host-side consumer of node uplinks: subscribes to a broker and stores what nodes send in a
store (store.py: SQLite for a path, PostgreSQL for a postgresql:// URL), each record once.

Nodes publish every stored record (load profile, freezes, events) with QoS 1 and its
sequence number; a reconnect, a reboot or a resend may send a record again. The store keys
records by (node, stream, seq), so a second copy is a counted no-op. Live telemetry, the
retained online/offline state and command results are kept too.

Every message first passes `validate.classify` (the one validation path of both stores): a
malformed one becomes a row in `rejects` (node, topic, reason, first bytes) and the consumer
goes on. Nothing runs in paho's network thread but a queue put: a worker thread validates,
stores a batch in one transaction, and only then acknowledges the batch (manual PUBACK,
QoS 1). Commit before acknowledge: a consumer killed between the two gets the batch again
(the store drops the copies); the other order would lose what was acknowledged but not yet
committed. While the database is down nothing is acknowledged, so the broker stops sending
(its in-flight window) and keeps the rest queued in the session; the worker retries with
backoff and resumes when the database returns.

Gaps: see store.py. A node asked for `…/resend` goes back to the requested seq (go-back-N
from its log). A record also says which seq the node still holds (`held`): anything below
that was dropped by the node's retention and is counted `lost` instead of being waited for.

A consumer group (`group=`): N consumers subscribe to `$share/<group>/<prefix>/+/<leaf>` and
the broker hands each message to one of them; the gap state is in the database, so it does not
matter which member stores which record. Members need stable client ids (`client_id=`, or
`<group>-<hostname>`) and keep persistent sessions: a member that dies gets what it had not
acknowledged again when it comes back with the same id.

    with Consumer("meter.sqlite", "127.0.0.1", 1883) as c:
        c.wait_for(lambda: c.count("node-1") >= 96, timeout=30)
        rows = c.records("node-1")
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import validate
from .errors import TransportError
from .mqttc import connect, make_client, refusal
from .store import (
    Outcome,
    StoreRefused,
    StoreUnavailable,
    describe,
    open_store,
    resend_topic,
)
from .validate import LEAVES, Reject

RECORD_LEAVES = validate.RECORD_LEAVES
GAP_WAIT = 2.0  # s a gap may stay open before the node is asked to resend (one consumer)
GROUP_GAP_WAIT = 30.0  # the same in a consumer group (covers a member's restart and catch-up)
MAX_QOS0_PENDING = 10000  # QoS 0 messages (telemetry) held while the database is down; more are dropped
# Messages received but not yet stored. The broker's in-flight window should bound it (we
# acknowledge only after the commit), but Mosquitto 2.0 was seen sending several thousand beyond
# its max_inflight_messages while acknowledgements flow; past this bound paho's network thread
# waits (TCP back-pressure holds the broker) until the worker has caught up.
MAX_PENDING = 20000


@dataclass
class _Inbound:
    gen: int  # connection generation it arrived on (a PUBACK is only valid on that connection)
    mid: int
    qos: int
    topic: str
    payload: bytes
    item: Any = None  # its validate.classify result, computed once
    classified: bool = False


class Consumer:
    """Stores node uplinks from `host:port` (topics under `prefix`) in `db` (path or URL)."""

    def __init__(
        self,
        db: str | Path = ":memory:",
        host: str | None = None,
        port: int = 1883,
        prefix: str = "umeter",
        *,
        on_record: Callable[[str, dict], None] | None = None,
        tls_ca: str | Path | None = None,
        group: str | None = None,
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        gap_wait: float | None = None,
        batch: int = 2000,
    ) -> None:
        if group is not None and (not group or any(ch in group for ch in "/+#")):
            from .errors import ConfigError

            raise ConfigError(f"group name {group!r} is not a topic level", hint="use letters, digits, - and _")
        self.db_path = str(db)
        self.host = host
        self.port = port
        self.prefix = prefix
        self.on_record = on_record
        self.tls_ca = tls_ca
        self.group = group
        self.username = username
        self.password = password
        self.persistent = client_id is not None or group is not None or username is not None
        self.client_id = (
            client_id
            or username
            or (f"{group}-{socket.gethostname()}" if group else f"umeter-consumer-{uuid.uuid4().hex[:8]}")
        )
        self.batch = batch
        self.max_pending = MAX_PENDING
        self._in_hand = 0  # messages the worker has taken and not yet committed
        self.store = open_store(db, consumer=self.client_id)
        # A gap alone is a loss at the broker: ask soon. In a group it is first of all a record
        # another member is storing, or holds while it restarts: ask only if that takes long.
        self.store.gap_wait = gap_wait if gap_wait is not None else (GROUP_GAP_WAIT if group else GAP_WAIT)
        self._client = None
        self._q: queue.Queue[_Inbound] = queue.Queue()
        self._gen = 0
        self._qos0 = 0
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self._connack = threading.Event()
        self._refused: str | None = None
        self._last_disconnect: str | None = None
        self._session_present = False
        self._ask_all = False
        self._db_error: str | None = None
        self._db_down_since: float | None = None
        self._started = time.time()
        self._rate: collections.deque[tuple[float, int]] = collections.deque(maxlen=80)  # (t, stored) every 0.5 s
        self.stats = dict.fromkeys(
            (
                "received",
                "stored",
                "duplicates",
                "rejects",
                "acked",
                "dropped_qos0",
                "paused_10ms",
                "callback_errors",
                "errors",
            ),
            0,
        )
        self.last_reject: dict | None = None
        self._next_sweep = 0.0
        self._next_beat = 0.0

    @property
    def resend_interval(self) -> float:
        return self.store.resend_interval

    @resend_interval.setter
    def resend_interval(self, v: float) -> None:
        self.store.resend_interval = v

    # -- storing -----------------------------------------------------------------------------
    def ingest(self, topic: str, payload: bytes) -> bool | None:
        """Stores one message now. Returns True (new record), False (duplicate), None (other)."""
        item = validate.classify(self.prefix, topic, payload)
        if item is None:
            return None
        out = self._store([item])
        self._after(out, [item])
        return out.results[0]

    def _store(self, items: list) -> Outcome:
        """One transaction; a batch the database refuses is stored item by item, and an item it
        refuses alone becomes a reject (so one bad message never blocks the others)."""
        try:
            return self.store.ingest(items)
        except StoreUnavailable:
            raise
        except Exception as e:  # StoreRefused, or a bug: isolate the item that causes it
            if len(items) == 1:
                return self._refused_item(items[0], e)
        out = Outcome()
        for it in items:
            try:
                one = self.store.ingest([it])
            except StoreUnavailable:
                raise
            except Exception as e:
                one = self._refused_item(it, e)
            out.results += one.results
            out.stored += one.stored
            out.publish += one.publish
            for k, n in one.counts.items():
                out.counts[k] = out.counts.get(k, 0) + n
        return out

    def _refused_item(self, item: Any, e: Exception) -> Outcome:
        self.stats["errors"] += 1
        why = e.message if isinstance(e, StoreRefused) else f"internal error {type(e).__name__}: {e}"
        node = getattr(item, "node", "?")
        topic = getattr(item, "topic", None) or f"{self.prefix}/{node}/?"
        rej = Reject(node, topic, f"refused by the store: {why}"[:500], getattr(item, "body", "").encode()[:256])
        try:
            out = self.store.ingest([rej])
        except StoreUnavailable:
            raise
        except Exception as e2:  # the reject itself cannot be stored: say so, go on
            print(f"umeter consumer: cannot store a reject for {node}: {e2}", file=sys.stderr)
            out = Outcome(results=[None])
        out.results = [None]
        return out

    def _after(self, out: Outcome, items: list) -> None:
        """Once committed: counters, callbacks, resend requests."""
        c = out.counts
        self.stats["stored"] += c.get("records", 0)
        self.stats["duplicates"] += c.get("duplicates", 0)
        self.stats["rejects"] += c.get("rejects", 0)
        self._sample()
        for it in items:
            if isinstance(it, Reject):
                self.last_reject = {"node": it.node, "topic": it.topic, "reason": it.reason, "at": time.time()}
        for node, stream, payload in out.publish:
            self._publish(resend_topic(self.prefix, node, stream), payload)
        if self.on_record is not None:
            for r in out.stored:
                try:
                    self.on_record(r.node, r.doc)
                except Exception as e:  # a printing callback must not stop the consumer
                    self.stats["callback_errors"] += 1
                    if self.stats["callback_errors"] == 1:
                        print(f"umeter consumer: record callback failed: {type(e).__name__}: {e}", file=sys.stderr)

    def _publish(self, topic: str, payload: bytes) -> None:
        c = self._client
        if c is not None:
            c.publish(topic, payload, qos=1, retain=True)

    # -- reading (the store's queries) -------------------------------------------------------
    def records(self, node: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        """Stored records (decoded JSON), by node and seq."""
        return self.store.records(node, kind)

    def seqs(self, node: str) -> list[int]:
        return self.store.seqs(node)

    def count(self, node: str | None = None) -> int:
        return self.store.count(node)

    def gaps(self, node: str) -> list[tuple[int, int]]:
        return self.store.gaps(node)

    def counters(self) -> dict[str, int]:
        return self.store.counters()

    def state(self, node: str) -> str | None:
        return self.store.state(node)

    def telemetry(self, node: str) -> list[dict]:
        return self.store.telemetry(node)

    def results(self, node: str) -> list[dict]:
        return self.store.results(node)

    def rejects(self, node: str | None = None, limit: int = 100) -> list[dict]:
        return self.store.rejects(node, limit)

    def wait_for(self, cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
        """Polls `cond` until true; raises TransportError naming `what` after `timeout` s."""
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise TransportError(f"timed out after {timeout:g} s waiting for {what}", hint="is the node connected?")
            time.sleep(0.05)

    # -- health ------------------------------------------------------------------------------
    def connection(self) -> str:
        """The broker connection as it is: connected, connecting, refused: …, disconnected (…),
        network thread stopped, stopped."""
        c = self._client
        if c is None:
            return "stopped"
        th = getattr(c, "_thread", None)  # paho sets it to None when its loop ends
        if th is None or not th.is_alive():
            return "network thread stopped"
        if self._refused:
            return f"refused: {self._refused}"
        if c.is_connected() and self.connected.is_set():
            return "connected"
        return f"disconnected ({self._last_disconnect})" if self._last_disconnect else "connecting"

    def _sample(self) -> None:
        now = time.monotonic()
        if not self._rate or now - self._rate[-1][0] >= 0.5:
            self._rate.append((now, self.stats["stored"]))

    def records_per_s(self, window: float = 10.0) -> float:
        """Records this consumer stored per second over the last `window` s."""
        now = time.monotonic()
        base = None
        for t, n in list(self._rate):
            if now - t < window:
                break
            base = (t, n)
        if base is None:
            base = self._rate[0] if self._rate else (now, self.stats["stored"])
        span = now - base[0]
        return (self.stats["stored"] - base[1]) / span if span > 0.2 else 0.0

    def health(self) -> dict:
        """This consumer's health, JSON-ready: connection, database, rates and counts, nodes."""
        h: dict[str, Any] = {
            "member": self.client_id,
            "group": self.group,
            "pid": os.getpid(),
            "broker": f"{self.host}:{self.port}",
            "connection": self.connection(),
            "session_present": self._session_present,
            "db": describe(self.db_path),
            "db_state": "ok" if self._db_error is None else f"down: {self._db_error}",
            "records_per_s": round(self.records_per_s(), 1),
            **self.stats,
            "pending": self._q.qsize() + self._in_hand,  # received, not yet stored and acknowledged
            "last_reject": self.last_reject,
            "uptime_s": round(time.time() - self._started, 1),
        }
        if self._db_down_since is not None:
            h["db_down_s"] = round(time.time() - self._db_down_since, 1)
        return h

    def node_health(self) -> list[dict]:
        """Last message per node (from the store: every member's messages), oldest first."""
        now = time.time()
        rows = self.store.nodes()
        for r in rows:
            r["age_s"] = round(now - r.pop("last_seen"), 1)
        return sorted(rows, key=lambda r: -r["age_s"])

    # -- the worker --------------------------------------------------------------------------
    def _take(self, timeout: float) -> list[_Inbound]:
        try:
            first = self._q.get(timeout=timeout)
        except queue.Empty:
            return []
        out = [first]
        while len(out) < self.batch:
            try:
                out.append(self._q.get_nowait())
            except queue.Empty:
                break
        self._qos0 -= sum(1 for m in out if m.qos == 0)
        return out

    def _work(self) -> None:
        pending: list[_Inbound] = []
        backoff = 0.05
        while True:
            if not pending:
                pending = self._take(0.1)
                self._in_hand = len(pending)
            if not pending and self._stop.is_set() and self._q.empty():
                return
            try:
                self._housekeep()
                if pending:
                    self._commit(pending)
                    pending = []
                    self._in_hand = 0
                self._db_ok()
                backoff = 0.05
            except StoreUnavailable as e:
                if e.transient:
                    continue
                self._db_down(e.message)
                if self._stop.is_set() and self._stop_deadline < time.monotonic():
                    return  # stopping with the database down: the broker keeps what we did not acknowledge
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            except Exception as e:  # a bug: report it, keep consuming
                self.stats["errors"] += 1
                print(f"umeter consumer: worker error: {type(e).__name__}: {e}", file=sys.stderr)
                time.sleep(0.1)

    _stop_deadline = 0.0

    def _db_down(self, why: str) -> None:
        if self._db_error is None:
            self._db_down_since = time.time()
        self._db_error = why

    def _db_ok(self) -> None:
        self._db_error = None
        self._db_down_since = None

    def _commit(self, batch: list[_Inbound]) -> None:
        for m in batch:
            if not m.classified:
                m.item = validate.classify(self.prefix, m.topic, m.payload)
                m.classified = True
        items = [m.item for m in batch if m.item is not None]
        out = self._store(items) if items else Outcome()
        self._ack(batch)
        self._after(out, items)

    def _ack(self, batch: list[_Inbound]) -> None:
        c = self._client
        n = 0
        for m in batch:
            if m.qos > 0 and c is not None and m.gen == self._gen:
                c.ack(m.mid, m.qos)
                n += 1
        self.stats["acked"] += n

    def _housekeep(self) -> None:
        self._sample()
        now = time.monotonic()
        if self._ask_all:
            self._ask_all = False
            try:
                for node, stream, payload in self.store.ask_all():
                    self._publish(resend_topic(self.prefix, node, stream), payload)
            except StoreUnavailable:
                self._ask_all = True
                raise
        if now >= self._next_sweep:
            self._next_sweep = now + 0.5
            for node, stream, payload in self.store.sweep():
                self._publish(resend_topic(self.prefix, node, stream), payload)
        if now >= self._next_beat:
            self._next_beat = now + 2.0
            self.store.beat(self.client_id, self.group, self.health())

    # -- the MQTT side -----------------------------------------------------------------------
    def topics(self) -> list[str]:
        share = f"$share/{self.group}/" if self.group else ""
        return [f"{share}{self.prefix}/+/{leaf}" for leaf in LEAVES]

    def _on_connect(self, client, userdata, flags, rc, props=None) -> None:
        try:
            if rc.is_failure:
                self._refused = refusal(rc)
                self.connected.clear()
                self._connack.set()
                return
            self._refused = None
            with self._lock:
                self._gen += 1
            self._session_present = bool(getattr(flags, "session_present", False))
            client.subscribe([(t, 1) for t in self.topics()])
            self.connected.set()
            self._connack.set()
            if not self._session_present:
                # Nothing was kept for us: ask every known node for what we may have missed.
                self._ask_all = True
        except Exception as e:  # never into paho's thread
            self.stats["errors"] += 1
            print(f"umeter consumer: on_connect: {e}", file=sys.stderr)

    def _on_disconnect(self, client, userdata, flags, rc, props=None) -> None:
        self.connected.clear()
        with contextlib.suppress(Exception):
            self._last_disconnect = str(rc).lower()

    def _on_message(self, client, userdata, m) -> None:
        if self._stop.is_set():
            return  # stopping: not acknowledged, so a kept session gets it again
        try:
            try:
                topic = m.topic
            except UnicodeDecodeError:
                topic = bytes(m._topic).decode("utf-8", "replace")
            if m.qos == 0:
                if self._qos0 >= MAX_QOS0_PENDING:
                    self.stats["dropped_qos0"] += 1
                    return
                self._qos0 += 1
            else:
                while self._q.qsize() + self._in_hand >= self.max_pending and not self._stop.is_set():
                    self.stats["paused_10ms"] += 1
                    time.sleep(0.01)
            self.stats["received"] += 1
            self._q.put(_Inbound(self._gen, m.mid, m.qos, topic, bytes(m.payload)))
        except Exception as e:  # never into paho's thread: that thread is the connection
            self.stats["errors"] += 1
            print(f"umeter consumer: on_message: {e}", file=sys.stderr)

    def start(self, timeout: float = 10.0) -> Consumer:
        """Connects, subscribes (QoS 1) and starts storing. Raises TransportError when the
        broker cannot be reached, refuses us (e.g. not authorised) or does not answer."""
        if self.host is None:
            raise TransportError("no broker given", hint="pass host and port")
        c = make_client(
            "umeter-consumer",
            client_id=self.client_id,
            tls_ca=self.tls_ca,
            clean_session=not self.persistent,
            manual_ack=True,
        )
        if self.username is not None:
            c.username_pw_set(self.username, self.password)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.reconnect_delay_set(0.1, 2)
        self._connack.clear()
        self._refused = None
        connect(c, self.host, self.port)
        self._client = c  # before the loop runs: on_connect's resend requests use it
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name="umeter-consumer", daemon=True)
        self._worker.start()
        c.loop_start()
        where = f"mqtt://{self.host}:{self.port}"
        if not self._connack.wait(timeout):
            self.stop()
            raise TransportError(f"no CONNACK from {where} in {timeout:g} s", hint="check the broker")
        if self._refused:
            why = self._refused
            self.stop()
            hint = (
                "give --user NAME of a host user made by `umeter broker-config --host-user NAME` "
                "(its password comes from the keystore or $UMETER_MQTT_PASSWORD)"
                if why in ("not authorised", "bad user name or password")
                else "see the broker's log"
            )
            raise TransportError(f"the broker at {where} refused the connection: {why}", hint=hint)
        time.sleep(0.1)  # let the SUBACK arrive before the caller starts the nodes
        return self

    def leave(self, timeout: float = 30.0) -> None:
        """Leaves the group for good: unsubscribes, then stores what the broker still delivers
        (this member's queued share) until 1 s passes without a message. Without it, a
        persistent member that stops keeps its place: Mosquitto (and EMQX, VerneMQ) go on
        queueing it a share of the messages until it comes back."""
        c = self._client
        if c is None or not self.connected.is_set():
            return
        c.unsubscribe(self.topics())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            n = self.stats["received"]
            time.sleep(1.0)
            if self.stats["received"] == n and self._q.empty() and not self._in_hand:
                break

    def stop(self, timeout: float = 10.0) -> None:
        """Stores and acknowledges what has arrived (up to `timeout` s), then disconnects."""
        w = self._worker
        if w is not None:
            self._stop_deadline = time.monotonic() + timeout
            self._stop.set()
            w.join(timeout + 1)
            self._worker = None
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None
        self.connected.clear()

    def close(self) -> None:
        self.stop()
        self.store.close()

    def __enter__(self) -> Consumer:
        return self.start() if self.host else self

    def __exit__(self, *exc: object) -> None:
        self.close()
