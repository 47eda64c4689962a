# An asyncio MQTT 3.1.1 client for MicroPython.
#
# One connection; one reader task dispatches packets and keeps the session alive (a PINGREQ
# every keepalive/2; after 1.5 * keepalive without a packet from the broker the connection is
# dropped, without DISCONNECT, and the link reconnects: MQTT 3.1.1 section 3.1.2.10;
# keepalive 0 turns both off).  QoS 0 and 1: `publish()` waits for the PUBACK with a timeout;
# `send_publish()` only sends and reports the PUBACK through `on_ack(pid)`, so the outbox can
# keep several records in flight.  Unacknowledged QoS 1 messages are retransmitted with DUP
# and the same packet id after a reconnect with a kept session (MQTT 3.1.1 §4.4); the outbox
# owns them.  Every wait has a timeout; errors surface as MQTTError / OSError so the link
# supervisor reconnects with `Backoff` (exponential, jittered, bounded).
#
# Only asyncio's core is used: no Lock, Event, wait_for or stream (each an asyncio module a
# node would hold, and wait_for a task and two coroutines made per call, docs/memory.md).
# Packets are written straight to the non-blocking socket: what it takes at once goes without
# yielding, so no other writer can come between; when it is full the writer looks again every
# _POLL_MS and holds the one write slot meanwhile (_send).  Acknowledgements (CONNACK, PUBACK,
# SUBACK) are filled in by the reader task and their waiters look every _POLL_MS (_ack), until
# a deadline or the connection's end.  The reader looks at the socket again soon after it found
# nothing there, every 2 ms while packets keep coming, at most _IDLE_MS apart when the link is
# idle (_into): an idle link wakes 50 times a second.
#
# Incoming bytes are read into one buffer of _READ bytes made with the client (readinto: no
# allocation per read) and split into packets there: one pass through the event loop per
# buffer, not three per packet (a flood of small messages then costs the node its parsing,
# not a scheduler round trip per byte).  A packet that straddles the buffer's end is moved to
# its front and finished there; one longer than the buffer is read into one block of its
# size.  When the heap has no block that large (a node that has run a while, docs/memory.md)
# the packet is read through the buffer and dropped: a PUBLISH is acknowledged, else the
# broker would send it again at every reconnect and the link would never stay up, and handed
# on with payload None so that its receiver can say why.
#
# TLS: pass `ssl=tls.context(ca)` with the provisioned CA (PEM or DER); the server
# certificate must chain to it, else connect() raises MQTTError naming the TLS failure.
# Packet encoding (fixed headers, strings, remaining lengths, PUBLISH, topic checks, size
# limits) is here too (CONNECT and SUBSCRIBE: mqttconn.py), and the reconnect pacing
# (`Backoff`) of the link supervisors of the MQTT uplink (uplink.py, plainlink.py) and of the
# Wi-Fi it runs over (wifi.py): a module of its own would cost every node with MQTT ~0.2 KB
# more (docs/memory.md).
import asyncio
import struct

from micropython import const

from meternode import run
from meternode.ticks import diff as _diff
from meternode.ticks import ms as _now
from meternode.ticks import sleep_ms as _sleep_ms

try:
    from random import getrandbits as _rand
except ImportError:  # pragma: no cover

    def _rand(n):
        return 0


# Packet types (MQTT 3.1.1 section 2.2.1) as compile-time constants: no global, no qstr.
_CONNACK = const(0x20)
_PUBLISH = const(0x30)
_PUBACK = const(0x40)
_SUBACK = const(0x90)
_PINGREQ = const(0xC0)
_DISCONNECT = const(0xE0)

_READ = const(1024)  # the receive buffer (bytes), made once per client
MAX_PACKET = const(16384)  # largest packet we send or accept (bytes); more is a protocol error
_MAX_TOPIC = const(256)  # longest topic we publish or subscribe to (bytes)
_POLL_MS = const(10)  # how often a waiter looks again: room in the socket, an acknowledgement
_IDLE_MS = const(20)  # the reader's longest wait between two looks at a socket with no data


class MQTTError(Exception):
    pass


def _str(s):
    b = s.encode() if isinstance(s, str) else bytes(s)
    if len(b) > 65535:
        raise MQTTError("string of %d bytes does not fit an MQTT field" % len(b))
    return struct.pack("!H", len(b)) + b


def _remaining(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def check_topic(topic, wild=False):
    # Publish topics carry no wildcards; both are 1.._MAX_TOPIC bytes of UTF-8 without NUL.
    n = len(topic)
    if not 0 < n <= _MAX_TOPIC:
        raise MQTTError("topic %r is %d bytes; allowed 1..%d" % (topic, n, _MAX_TOPIC))
    if "\x00" in topic or (not wild and ("+" in topic or "#" in topic)):
        raise MQTTError("topic %r holds a character not allowed here" % topic)


def publish_head(topic, size, qos=0, retain=False, pid=0, dup=False):
    # A PUBLISH packet up to its payload of `size` bytes: the client sends the payload after
    # it as it is (a telemetry payload is the node's own buffer), not copied into one packet.
    if qos not in (0, 1):
        raise MQTTError("QoS %r is not supported (0 or 1)" % (qos,))
    head = _PUBLISH | (qos << 1) | (1 if retain else 0) | (0x08 if dup and qos else 0)
    var = _str(topic) + (struct.pack("!H", pid) if qos else b"")
    n = len(var) + size
    if n + 5 > MAX_PACKET:
        raise MQTTError("publish to %s is %d bytes, over the %d-byte limit" % (topic, n, MAX_PACKET))
    return bytes((head,)) + _remaining(n) + var


class Backoff:
    # Exponential backoff with +-25 % jitter, bounded: min_ms, 2*min_ms, ... max_ms, so a
    # fleet that lost its broker does not come back in lockstep.
    def __init__(self, min_ms=500, max_ms=30000):
        self.min_ms = min_ms
        self.max_ms = max_ms
        self.cur = min_ms

    def reset(self):
        self.cur = self.min_ms

    def next_ms(self):
        d = self.cur
        self.cur = min(self.max_ms, self.cur * 2)
        j = d // 4
        return d - j + (_rand(16) % (2 * j + 1) if j else 0)


class MQTTClient:
    def __init__(
        self,
        client_id,
        host,
        port=1883,
        keepalive=30,
        clean=True,
        user=None,
        password=None,
        will=None,
        ssl=None,
        timeout_ms=10000,
        server_hostname=None,
    ):
        # What only the connect path reads (link/mqttconn.py), in one tuple: an instance's
        # attributes live in a hash table that grows in steps (17 fit the 160-byte one on a
        # 32-bit port, 18..23 the 208-byte one, 24..29 the 256-byte one)
        self._opts = (client_id, host, port, clean, user, password, will, ssl, server_hostname)
        self.keepalive = keepalive
        self.timeout_ms = timeout_ms
        self.on_message = None  # callback(topic: str, payload: bytes or None (dropped), retained: bool)
        self.on_ack = None  # callback(pid) for PUBACKs of send_publish()
        self._w = None  # the socket (non-blocking): written by _send, read by _into
        # received bytes (a memoryview of one buffer made here); _mv[_lo:_hi] are not parsed yet
        self._mv = memoryview(bytearray(_READ))
        self._lo = 0
        self._hi = 0
        self._busy = False  # a writer waits for room in the socket: the others wait after it
        self._pid = 0
        self._acks = {}  # pid (-1: the CONNACK) -> None while awaited, then the packet's body
        self._reader_task = None
        self._ping = 0  # ticks of the last PINGREQ (or of the CONNACK)
        self._last_rx = 0
        self.connected = False
        self.session_present = False
        self.error = None  # why the connection ended, for the link supervisor
        # (19 attributes: keep them under 24, see above)

    def next_pid(self):
        # Client packet ids live in 0x8000..0xFFFF; 1..0x7FFF belong to the outbox, which
        # keeps its ids across reconnects for DUP retransmission.
        self._pid = self._pid + 1 if 0x8000 <= self._pid < 0xFFFF else 0x8000
        return self._pid

    def connect(self):
        # -> an awaitable: the connection, CONNECT and CONNACK (link/mqttconn.py, code run once
        # per connection: loaded for it and forgotten after); raises MQTTError or OSError
        return run("meternode.link.mqttconn", "connect", self)

    async def _send(self, pkt, payload=None):
        # pkt, then payload (a PUBLISH's, written as it is: publish_head), one writer at a time
        # (see the top).  Past timeout_ms the connection is dropped, and so is one whose
        # packet was cut short (cancelled half-way: the broker would misread what follows) or
        # whose socket failed the write.
        t = _now()
        while self._busy:
            await self._poll(t)
        self._busy = True
        n = 0  # bytes of this packet written
        try:
            for b in (pkt, payload):
                i = 0
                while b and i < len(b):
                    s = self._w
                    if s is None:
                        raise self._gone()
                    try:
                        k = s.write(memoryview(b)[i:] if i else b)
                    except OSError as e:  # a reset: the connection ends here, naming why
                        self.drop(e)
                        raise
                    if k:
                        i += k
                        n += k
                    else:  # None: the socket's buffer is full
                        await self._poll(t)
        except BaseException:
            if n:
                self.drop("packet cut short")
            raise
        finally:
            self._busy = False
        await _sleep_ms(0)  # once, as asyncio's drain: a writer in a loop lets the others run

    async def _poll(self, t):
        # A writer's wait, from ticks t: another look after _POLL_MS, or the connection dropped
        if _diff(_now(), t) > self.timeout_ms:
            self.drop("send to broker timed out")
            raise OSError("send to broker timed out")
        await _sleep_ms(_POLL_MS)

    async def _ack(self, key, what, arg):
        # -> the body of the acknowledgement awaited as _acks[key] (set to None by the caller
        # before its packet went; the reader task fills it in).  OSError naming `what % arg`
        # when the connection ends first or timeout_ms passes.
        a = self._acks
        t = _now()
        d = 1  # looked at after 1, 2, 4, 8 ms, then every _POLL_MS
        while a.get(key) is None:
            if self._w is None:  # the reader's error says why (the broker closed, a bad packet)
                raise OSError("connection lost before %s: %s" % (what % arg, self.error))
            if _diff(_now(), t) > self.timeout_ms:
                raise OSError("no " + what % arg)
            await _sleep_ms(d)
            d = min(2 * d, _POLL_MS)
        return a[key]

    async def _read_packet(self):
        # -> (first byte, body) of the next packet; EOFError when the broker closed.
        while True:
            buf = self._mv
            lo = self._lo
            hi = self._hi
            if hi - lo >= 2:
                n = 0
                shift = 0
                i = lo + 1
                whole = False
                while i < hi:
                    b = buf[i]
                    i += 1
                    n |= (b & 0x7F) << shift
                    if not b & 0x80:
                        whole = True
                        break
                    shift += 7
                    if shift > 21:
                        raise MQTTError("malformed remaining length")
                if whole:
                    if n > MAX_PACKET:
                        raise MQTTError("incoming packet of %d bytes is over the %d-byte limit" % (n, MAX_PACKET))
                    head = buf[lo]
                    k = hi - i  # body bytes in hand
                    if k >= n:
                        self._lo = i + n
                        return head, bytes(buf[i : i + n])
                    if i - lo + n > _READ:
                        # longer than the buffer: once a PUBLISH's topic and id are in hand
                        t = 4 + (buf[i] << 8 | buf[i + 1]) if k >= 2 else 4
                        if k >= t or hi - lo == _READ:
                            return await self._long(head, i, n, t)
            if lo:  # keep the unparsed start of a packet at the front
                k = hi - lo
                buf[0:k] = bytes(buf[lo:hi])
                self._lo = 0
                self._hi = hi = k
            self._hi = hi + await self._into(buf[hi:])

    async def _into(self, mv):
        # -> the count read into mv (at most len(mv) bytes); EOFError when the broker closed.  The
        # socket is non-blocking (None: nothing there yet), so it is looked at again after 0,
        # 1, 3 … ms: every 2 ms within a second of the last packet received, else at most
        # _IDLE_MS apart (an idle link costs 50 looks a second).  asyncio's stream would wait
        # in its poller instead, but holds asyncio.stream: 2.0 KB on 64-bit, 0.9 on 32-bit.
        # Each look is also the keepalive's (see the top), before the read, so that a flood
        # from the broker, which leaves the socket never empty, does not hold the pings back;
        # a task of its own for them would cost ~0.5 KB on 64-bit, ~0.3 on 32-bit.
        d = 0
        while True:
            w = self._w
            if w is None:
                raise self._gone()
            now = _now()
            q = _diff(now, self._last_rx)
            ka = self.keepalive * 1000 if self.connected else 0
            if ka:
                if q > ka + ka // 2:
                    raise OSError("broker silent for %d s" % (ka * 3 // 2000))
                if _diff(now, self._ping) >= ka // 2:
                    self._ping = now
                    await self._send(bytes((_PINGREQ, 0)))
                    continue  # the connection may have gone meanwhile
            n = w.readinto(mv)
            if n == 0:
                raise EOFError("connection closed by the broker")
            if n is not None:
                # once through the event loop per buffer read: a socket that never runs dry
                # (a flood) would else keep the other tasks, and the watchdog's feed, waiting
                await _sleep_ms(0)
                return n
            await _sleep_ms(d)
            # every 2 ms while packets keep coming (a backlog's PUBACKs), else up to _IDLE_MS
            d = min(2 * d + 1, 2 if q < 1000 else _IDLE_MS)

    def _gone(self):
        # The error for a write or read after the connection ended: why it ended, when known
        return OSError("not connected" if self.error is None else "connection lost: %s" % self.error)

    async def _long(self, head, i, n, t):
        # A packet longer than the buffer, its first bytes at _mv[i:_hi] (see the top).
        got = self._hi - i
        mv = self._mv
        try:
            body = bytearray(n)
            body[:got] = mv[i : self._hi]
        except MemoryError:
            body = None
            head |= 0x100  # dropped: _dispatch acknowledges it and hands on None
            keep = bytes(mv[i : i + min(t, got)])  # the topic and packet id
        self._lo = self._hi = 0
        while got < n:
            got += await self._into(memoryview(body)[got:] if body else mv[: min(n - got, _READ)])
        return head, body or keep

    async def _reader(self):
        try:
            while True:
                head, body = await self._read_packet()
                self._last_rx = _now()
                await self._dispatch(head, body)
        except Exception as e:  # connection lost or protocol error: the link supervisor reconnects
            self._reader_task = None
            self.drop(e if str(e) else "connection closed by the broker")

    async def _dispatch(self, head, body):
        # One packet from the broker.  A malformed one raises MQTTError naming the flaw (the
        # reader then drops the connection and the link supervisor reconnects).
        kind = head & 0xF0
        if kind == _PUBLISH:
            qos = (head >> 1) & 3
            if len(body) < 2:
                raise MQTTError("malformed PUBLISH: %d bytes" % len(body))
            pos = 2 + (body[0] << 8 | body[1])  # after the topic
            if pos + (2 if qos else 0) > len(body):
                raise MQTTError("malformed PUBLISH topic length")
            try:
                topic = body[2:pos].decode()
            except UnicodeError:
                raise MQTTError("malformed PUBLISH: topic is not UTF-8")
            if qos == 3:
                raise MQTTError("malformed PUBLISH: QoS 3")
            if qos:
                pid = body[pos] << 8 | body[pos + 1]
                pos += 2
                await self._send(bytes((_PUBACK, 2, pid >> 8, pid & 0xFF)))
            if self.on_message:
                self.on_message(topic, None if head & 0x100 else body[pos:], bool(head & 1))
        elif kind in (_PUBACK, _SUBACK, _CONNACK):
            if len(body) < 2:
                raise MQTTError("short acknowledgement packet")
            pid = -1 if kind == _CONNACK else body[0] << 8 | body[1]
            if pid in self._acks:  # awaited (_ack): its body for the waiter
                self._acks[pid] = body
            elif kind == _PUBACK and self.on_ack is not None:
                self.on_ack(pid)

    async def send_publish(self, topic, payload, qos=1, retain=False, pid=None, dup=False):
        # Sends without waiting for the PUBACK (reported through on_ack); returns the pid.
        check_topic(topic)
        if qos and pid is None:
            pid = self.next_pid()
        if isinstance(payload, str):
            payload = payload.encode()
        await self._send(publish_head(topic, len(payload), qos, retain, pid or 0, dup), payload)
        return pid or 0

    async def publish(self, topic, payload, qos=0, retain=False, dup=False, pid=None):
        # QoS 1 returns when the PUBACK arrived; raises OSError when it did not in time.
        if qos == 0:
            return await self.send_publish(topic, payload, 0, retain)
        check_topic(topic)  # before a packet id is taken
        if pid is None:
            pid = self.next_pid()
        self._acks[pid] = None
        try:
            await self.send_publish(topic, payload, 1, retain, pid, dup)
            await self._ack(pid, "PUBACK %d", pid)
        finally:
            self._acks.pop(pid, None)
        return pid

    def subscribe(self, topic, qos=1):
        # -> an awaitable: SUBSCRIBE and its SUBACK (link/mqttconn.py, the connect path, which
        # subscribes the link's topics at each connect; a later subscription loads it for
        # itself and forgets it after); raises OSError, or MQTTError when the broker refuses.
        return run("meternode.link.mqttconn", "subscribe", self, topic, qos)

    async def disconnect(self):
        if self.connected:
            try:
                await self._send(bytes((_DISCONNECT, 0)))
            except Exception:
                pass
        self.drop()

    def drop(self, why=None):
        # Ends the connection at once, without DISCONNECT (the broker publishes the will) and
        # without awaiting (also for a link task being cancelled: a supervisor restart); `why`
        # (an exception or a text) becomes self.error unless one is set.  Its reader task
        # never outlives it; writers and acknowledgement waiters see it gone.
        if why is not None and self.error is None:
            self.error = why if isinstance(why, Exception) else OSError(why)
        self.connected = False
        t = self._reader_task
        self._reader_task = None
        if t is not None and t is not asyncio.current_task():
            t.cancel()
        w = self._w
        self._w = None
        if w is not None:
            try:
                w.close()
            except Exception:
                pass
