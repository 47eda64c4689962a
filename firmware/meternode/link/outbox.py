# The outbox: one publisher task that drains the record log from the upload cursor to MQTT
# with QoS 1, several records in flight, and advances the cursor only over records whose
# PUBACK arrived (contiguously from the cursor).  Every record carries its sequence number,
# so the consumer drops the duplicates a reconnect or reboot can cause: exactly-once at the
# application level.
#
# A backlog drains at `rate` records per second (token bucket, burst `window`), so live
# telemetry (QoS 0, sent by the node's reporting task) keeps flowing beside it.  The bucket
# refills on ticks_ms (a difference is valid for 6.2 days; anything longer, or negative,
# is a full bucket), never on ticks_us, whose half period is under 9 minutes: an outage
# longer than that must not read as time running backwards and block publishing.  A record
# whose PUBACK does not come within `ack_timeout_ms` drops the connection; after a
# reconnect with a kept session the records that were in flight go out again with DUP and
# their packet ids, otherwise everything from the cursor goes out again with new ids.
#
# Before a record leaves, the log's high-water mark is raised (RecordLog.mark_sent), so its
# seq is never issued again.  A seq the log does not hold although later ones exist (a record
# lost to corruption, or seqs skipped after the newest records were lost) goes out as an
# `unknown` document with that seq and the error "missing: …": the consumer sees every seq
# once and keeps no hole open asking for a resend the node cannot serve.
import asyncio
import json

from micropython import const

from meternode import run
from meternode.store import records
from meternode.ticks import diff as _diff
from meternode.ticks import ms as _now
from meternode.ticks import sleep_ms as _sleep_ms

_PID_MAX = const(0x7FFF)  # outbox packet ids are 1..0x7FFF (the client uses the upper half)
_IDLE_MS = const(200)  # the longest wait for the kick (_tick)


class Outbox:
    def __init__(self, log, cursor, node_id, prefix="umeter", rate=20, window=8, ack_timeout_ms=10000):
        # Made once (link/linkinit.py, loaded for it and forgotten after): the checks and
        # the state, attributes listed there.
        run("meternode.link.linkinit", "outbox", self, log, cursor, node_id, prefix, rate, window, ack_timeout_ms)

    def notify(self):
        # A record was appended: wake the publisher.
        self._kick.set()

    def resend_from(self, seq):
        # The consumer says it lacks `seq` (a broker lost what it had acknowledged, e.g. on a
        # restart without persistence): go back to it if we sent it and still hold it.
        if 0 < seq <= self._sent_hi:
            first = self.log.first_seq()
            self._rewind = seq if seq > first else first
            self.rewinds += 1
            self._kick.set()

    def backlog(self):
        return self.log.last_seq - self.cursor.acked

    def stats(self):
        # -> the counters as a dict (link/stats.py: loaded for the call, forgotten after)
        return run("meternode.link.stats", "outbox", self)

    def on_ack(self, pid):
        # PUBACK from the client's reader task: mark, then advance the cursor contiguously.
        p = self._pending
        for e in p:
            if e[1] == pid:
                e[2] = True
                break
        while p and p[0][2]:
            try:
                self.cursor.advance(p.pop(0)[0])
            except OSError:  # persisting failed (flash full): the cursor in RAM moved on
                self.persist_errors += 1
        self._kick.set()

    def _take_token(self):
        now = _now()
        d = _diff(now, self._t)
        self._t = now
        if d < 0:  # over 6.2 days since the last refill: the bucket is full
            self.tokens = float(self.window)
        else:
            self.tokens += d / 1000 * self.rate  # a float first: d * rate may pass 2**30
        if self.tokens > self.window:
            self.tokens = float(self.window)
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def _payload(self):
        r = self._reader
        try:
            d = records.to_json_dict(self.node_id, r.kind, r.seq, r.ts, r.payload[: r.n])
        except ValueError as e:
            # A record that checks (CRC) but does not decode: sent as hex with the reason (the
            # consumer keeps its seq, nothing is silently missing), counted, and an event.
            self.skipped += 1
            d = {"node": self.node_id, "kind": "unknown", "seq": r.seq, "ts": r.ts, "error": str(e)}
            d["hex"] = "".join("%02x" % b for b in r.payload[: r.n])
            if r.seq > self._unreadable_hi:
                self._unreadable_hi = r.seq
                if self.on_unreadable is not None:
                    self.on_unreadable(r.seq, str(e))
        d["held"] = self.log.first_seq()  # oldest seq still held: lower ones cannot be resent
        return json.dumps(d)

    def _seek(self, seq):
        self._reader.seek(seq)
        self._want = seq
        self._gap = 0

    def _next(self):
        # The next seq to send: -> its record kind, or -1 for a `missing` one (seq in
        # self._gap), or 0 when there is nothing more yet.
        if self._gap:
            return -1
        r = self._reader
        kind = r.next()
        if kind:
            first = self.log.first_seq()
            lo = self._want if self._want > first else first
            if r.seq > lo:  # lo..seq-1 are not in the log: send them as missing first
                self._gap = lo
                self._gap_end = r.seq - 1
                r.seek(r.seq)
                return -1
            self._want = r.seq + 1
        return kind

    def _missing(self):
        # The document of the gap seq being sent; moves on to the next.
        s = self._gap
        self.missing += 1
        d = {"node": self.node_id, "kind": "unknown", "seq": s, "ts": 0, "held": self.log.first_seq()}
        d["error"] = "missing: not in the node's log (lost to flash corruption or a reset)"
        self._gap = s + 1 if s < self._gap_end else 0
        self._want = s + 1
        return s, json.dumps(d)

    async def _tick(self, c):
        # Kicks the publisher every _IDLE_MS while it waits for the kick (run_connection),
        # and once more after the connection is gone: its wait's timeout, one task per
        # connection instead of asyncio's wait_for (a task and two coroutines per wait, and a
        # module a node would hold for it).
        while True:
            await _sleep_ms(_IDLE_MS)
            self._kick.set()
            if not c.connected:
                return

    async def run_connection(self, c):
        # Publishes over one connected client until it drops.  Returns (never raises for
        # connection errors: the link supervisor handles those).
        c.on_ack = self.on_ack
        asyncio.create_task(self._tick(c))  # ends after the connection (the link drops it)
        # After a (re)connect: what was in flight goes out again first (seq -> pid).
        old = {}
        if c.session_present:
            for e in self._pending:
                old[e[0]] = e[1]
        self._pending = []
        self._seek(self.cursor.acked + 1)
        r = self._reader
        p = self._pending
        while c.connected:
            self.beat()
            # Cleared before the work, not before the wait: an ACK that lands while we
            # send must still wake the wait below (else it sleeps out its timeout).
            self._kick.clear()
            if self._rewind:
                self._pending = p = []
                old = {}
                self._seek(self._rewind)
                self._rewind = 0
            # Fill the window.
            while len(p) < self.window and c.connected:
                if not old and not self._take_token():
                    break
                kind = self._next()
                if not kind:
                    if not old:
                        self.tokens += 1  # nothing to send: give the token back
                    if not p:  # caught up: the cursor to flash now (no-op when unchanged)
                        try:
                            self.cursor.flush()
                        except OSError:  # flash full: best effort, see the end
                            self.persist_errors += 1
                    break
                if kind < 0:
                    seq, doc = self._missing()
                    topic = self._topics[records.EVENT]
                else:
                    seq = r.seq
                    doc = None
                    topic = self._topics.get(kind, self._topics[records.EVENT])
                pid = old.pop(seq, None)
                dup = pid is not None
                if not dup:
                    pid = self._pid = self._pid % _PID_MAX + 1
                else:
                    self.dups += 1
                p.append([seq, pid, False, _now()])
                if seq > self._sent_hi:
                    self._sent_hi = seq
                self.log.mark_sent(seq)
                try:
                    await c.send_publish(topic, doc or self._payload(), 1, False, pid, dup)
                except Exception as e:
                    c.drop(e)
                    break
                self.published += 1
            if not c.connected:
                break
            if p and _diff(_now(), p[0][3]) > self.ack_timeout_ms:
                self.timeouts += 1
                c.drop(OSError("no PUBACK for record %d in %d ms" % (p[0][0], self.ack_timeout_ms)))
                break
            # Wait for the next token when nothing goes before it (what a kept session had in
            # flight goes without one), else for the kick: an ACK, a new record, a resend
            # request, at most _IDLE_MS (_tick).
            if self.tokens < 1 and not old:
                wait = int((1 - self.tokens) * 1000 / self.rate) + 1
                await _sleep_ms(wait if wait < _IDLE_MS else _IDLE_MS)
            else:
                await self._kick.wait()
        # The cursor to flash, best effort: a full flash must not drop the connection (the
        # next flush tries again; after a reboot the consumer drops what is sent twice).
        try:
            self.cursor.flush()
        except OSError:
            self.persist_errors += 1
