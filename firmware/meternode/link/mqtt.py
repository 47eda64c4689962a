# An asyncio MQTT 3.1.1 client for MicroPython (and CPython: it only uses asyncio streams).
#
# One connection; a reader task dispatches packets; QoS 1 publishes wait for their PUBACK
# with a timeout and are retransmitted with DUP set on reconnect by the caller (the outbox
# keeps them).  Every wait has a timeout; errors surface as MQTTError / OSError so the
# supervisor can reconnect with backoff.
import asyncio
import struct

from micropython import const

try:
    from asyncio import sleep_ms as _sleep_ms
    from asyncio import wait_for_ms as _wait_for_ms
except ImportError:  # CPython

    def _wait_for_ms(aw, ms):
        return asyncio.wait_for(aw, ms / 1000)

    def _sleep_ms(ms):
        return asyncio.sleep(ms / 1000)


_CONNECT = const(0x10)
_CONNACK = const(0x20)
_PUBLISH = const(0x30)
_PUBACK = const(0x40)
_SUBSCRIBE = const(0x82)
_SUBACK = const(0x90)
_PINGREQ = const(0xC0)
_PINGRESP = const(0xD0)
_DISCONNECT = const(0xE0)

MAX_PACKET = const(16384)  # largest packet we send or accept (bytes); more is a protocol error

_CONNACK_TEXT = (
    "accepted",
    "unacceptable protocol version",
    "client identifier rejected",
    "server unavailable",
    "bad user name or password",
    "not authorised",
)


class MQTTError(Exception):
    pass


def _str(s):
    b = s.encode() if isinstance(s, str) else bytes(s)
    return struct.pack("!H", len(b)) + b


def _remaining(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def connect_packet(client_id, keepalive, clean, user=None, password=None, will=None):
    # will = (topic, payload, qos, retain)
    flags = 0x02 if clean else 0
    payload = _str(client_id)
    if will:
        topic, msg, wq, wr = will
        flags |= 0x04 | (wq << 3) | (0x20 if wr else 0)
        payload += _str(topic) + _str(msg)
    if user is not None:
        flags |= 0x80
        payload += _str(user)
        if password is not None:
            flags |= 0x40
            payload += _str(password)
    var = _str("MQTT") + bytes((4, flags)) + struct.pack("!H", keepalive)
    body = var + payload
    return bytes((_CONNECT,)) + _remaining(len(body)) + body


def publish_packet(topic, payload, qos=0, retain=False, pid=0, dup=False):
    if isinstance(payload, str):
        payload = payload.encode()
    head = _PUBLISH | (qos << 1) | (1 if retain else 0) | (0x08 if dup else 0)
    var = _str(topic) + (struct.pack("!H", pid) if qos else b"")
    n = len(var) + len(payload)
    if n + 5 > MAX_PACKET:
        raise MQTTError("publish to %s is %d bytes, over the %d-byte limit" % (topic, n, MAX_PACKET))
    return bytes((head,)) + _remaining(n) + var + payload


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
    ):
        self.client_id = client_id
        self.host = host
        self.port = port
        self.keepalive = keepalive
        self.clean = clean
        self.user = user
        self.password = password
        self.will = will
        self.ssl = ssl
        self.timeout_ms = timeout_ms
        self.on_message = None  # callback(topic: str, payload: bytes, retained: bool)
        self._r = None
        self._w = None
        self._pid = 0
        self._acks = {}  # pid -> asyncio.Event for PUBACK / SUBACK
        self._reader_task = None
        self._ping_task = None
        self._last_rx = 0
        self.connected = False
        self.session_present = False
        self.error = None  # why the connection ended, for the link supervisor

    def _next_pid(self):
        self._pid = self._pid % 65535 + 1
        return self._pid

    async def _wait(self, aw):
        return await _wait_for_ms(aw, self.timeout_ms)

    async def connect(self):
        try:
            if self.ssl is None:
                self._r, self._w = await self._wait(asyncio.open_connection(self.host, self.port))
            else:
                self._r, self._w = await self._wait(asyncio.open_connection(self.host, self.port, ssl=self.ssl))
        except asyncio.TimeoutError:
            raise OSError("connect to %s:%d timed out" % (self.host, self.port))
        await self._send(
            connect_packet(self.client_id, self.keepalive, self.clean, self.user, self.password, self.will)
        )
        try:
            head, body = await self._wait(self._read_packet())
        except asyncio.TimeoutError:
            await self._close()
            raise OSError("no CONNACK from %s:%d" % (self.host, self.port))
        if head != _CONNACK or len(body) != 2:
            await self._close()
            raise MQTTError("expected CONNACK, got packet type 0x%02x" % head)
        rc = body[1]
        if rc:
            await self._close()
            why = _CONNACK_TEXT[rc] if rc < len(_CONNACK_TEXT) else "code %d" % rc
            raise MQTTError("broker refused the connection: " + why)
        self.session_present = bool(body[0] & 1)
        self.connected = True
        self._last_rx = _now()
        self._reader_task = asyncio.create_task(self._reader())
        self._ping_task = asyncio.create_task(self._pinger())

    async def _send(self, pkt):
        if self._w is None:
            raise OSError("not connected")
        self._w.write(pkt)
        try:
            await self._wait(self._w.drain())
        except asyncio.TimeoutError:
            raise OSError("send to broker timed out")

    async def _read_packet(self):
        r = self._r
        hdr = await r.readexactly(1)
        n = 0
        shift = 0
        while True:
            b = (await r.readexactly(1))[0]
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
            if shift > 21:
                raise MQTTError("malformed remaining length")
        if n > MAX_PACKET:
            raise MQTTError("incoming packet of %d bytes is over the %d-byte limit" % (n, MAX_PACKET))
        body = await r.readexactly(n) if n else b""
        return hdr[0], body

    async def _reader(self):
        try:
            while True:
                head, body = await self._read_packet()
                self._last_rx = _now()
                kind = head & 0xF0
                if kind == _PUBLISH:
                    await self._on_publish(head, body)
                elif kind in (_PUBACK, _SUBACK):
                    pid = struct.unpack("!H", body[:2])[0]
                    ev = self._acks.pop(pid, None)
                    if ev is not None:
                        if kind == _SUBACK and len(body) > 2 and body[2] == 0x80:
                            ev.failed = True
                        ev.set()
                elif kind == _PINGRESP:
                    pass
        except Exception as e:  # connection lost or protocol error: the link supervisor reconnects
            self.error = e
        self.connected = False
        for ev in self._acks.values():
            ev.set()

    async def _on_publish(self, head, body):
        tl = struct.unpack("!H", body[:2])[0]
        topic = body[2 : 2 + tl].decode()
        qos = (head >> 1) & 3
        pos = 2 + tl
        if qos:
            pid = struct.unpack("!H", body[pos : pos + 2])[0]
            pos += 2
            await self._send(struct.pack("!BBH", _PUBACK, 2, pid))
        if self.on_message:
            self.on_message(topic, body[pos:], bool(head & 1))

    async def _pinger(self):
        ka = self.keepalive * 1000
        while self.connected:
            await _sleep_ms(ka // 2)
            if not self.connected:
                return
            if _diff(_now(), self._last_rx) > ka + ka // 2:
                self.error = OSError("broker silent for %d s" % (ka * 3 // 2000))
                await self._close()
                return
            try:
                await self._send(bytes((_PINGREQ, 0)))
            except Exception as e:
                self.error = e
                await self._close()
                return

    async def publish(self, topic, payload, qos=0, retain=False, dup=False, pid=None):
        # QoS 1 returns when the PUBACK arrived; raises OSError when it did not in time.
        if qos == 0:
            await self._send(publish_packet(topic, payload, 0, retain))
            return 0
        if pid is None:
            pid = self._next_pid()
        ev = asyncio.Event()
        self._acks[pid] = ev
        await self._send(publish_packet(topic, payload, 1, retain, pid, dup))
        try:
            await self._wait(ev.wait())
        except asyncio.TimeoutError:
            self._acks.pop(pid, None)
            raise OSError("no PUBACK for packet %d" % pid)
        if not self.connected:
            raise OSError("connection lost before PUBACK %d" % pid)
        return pid

    async def subscribe(self, topic, qos=1):
        pid = self._next_pid()
        ev = asyncio.Event()
        ev.failed = False
        self._acks[pid] = ev
        body = struct.pack("!H", pid) + _str(topic) + bytes((qos,))
        await self._send(bytes((_SUBSCRIBE,)) + _remaining(len(body)) + body)
        try:
            await self._wait(ev.wait())
        except asyncio.TimeoutError:
            raise OSError("no SUBACK for %s" % topic)
        if ev.failed:
            raise MQTTError("broker refused the subscription to %s" % topic)

    async def disconnect(self):
        if self.connected:
            try:
                await self._send(bytes((_DISCONNECT, 0)))
            except Exception:
                pass
        await self._close()

    async def _close(self):
        self.connected = False
        for t in (self._reader_task, self._ping_task):
            if t is not None and t is not asyncio.current_task():
                t.cancel()
        self._reader_task = self._ping_task = None
        w = self._w
        self._w = self._r = None
        if w is not None:
            try:
                w.close()
                await w.wait_closed()
            except Exception:
                pass


try:
    import time

    _now = time.ticks_ms
    _diff = time.ticks_diff
except AttributeError:  # CPython
    import time

    def _now():
        return int(time.monotonic() * 1000)

    def _diff(a, b):
        return a - b
