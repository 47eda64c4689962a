# The MQTT connect path, run once per connection: the CONNECT packet, the TCP or TLS
# connection (a non-blocking socket, its connect looked at every _POLL_MS until the client's
# timeout) and CONNACK
# (MQTTClient.connect), SUBSCRIBE and its SUBACK (MQTTClient.subscribe:
# the link's topics at each connect, a service's later one), and the link's session set-up
# (MqttLink: the client made from config.mqtt, the retained `online` state, the
# subscriptions; discovery follows once this module is forgotten, link/uplink.py).  Loaded
# for a connect and forgotten after (meternode.forget): a running connection needs none of it.
# MqttLink loads it once at start too, so its names are interned while the heap is emptiest,
# not at a reconnect in a heap cut up by a long run (docs/memory.md).
import asyncio
import select
import socket
import struct
from errno import EINPROGRESS

from micropython import const

from meternode.link.mqtt import MQTTClient, MQTTError, _remaining, _str, check_topic, publish_head
from meternode.ticks import diff as _diff
from meternode.ticks import ms as _now
from meternode.ticks import sleep_ms as _sleep_ms

_CONNECT = const(0x10)
_SUBSCRIBE = const(0x82)
_POLL_MS = const(20)  # how often the connect looks whether the socket is connected

# CONNACK return codes 0..5 (a tuple of constants: its strings are not interned)
_CONNACK_TEXT = const(
    (
        "accepted",
        "unacceptable protocol version",
        "client identifier rejected",
        "server unavailable",
        "bad user name or password",
        "not authorised",
    )
)


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
    # A whole PUBLISH packet, for tests and host tools: the client sends a head and then the
    # payload as it is (mqtt.publish_head), so a running node needs none of this.
    if isinstance(payload, str):
        payload = payload.encode()
    return publish_head(topic, len(payload), qos, retain, pid, dup) + payload


async def connect(c):
    # MQTTClient.connect(): the connection, CONNECT and CONNACK, and the reader task.
    # Whatever fails drops what was opened (c.drop).
    client_id, host, port, clean, user, password, will, ssl, server_hostname = c._opts
    where = "%s:%d" % (host, port)
    try:
        ai = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]  # blocks, as asyncio's does
        s = c._w = socket.socket(ai[0], ai[1], ai[2])
        s.setblocking(False)
        try:
            s.connect(ai[-1])
        except OSError as e:
            if e.errno != EINPROGRESS:
                raise
        p = select.poll()
        p.register(s, select.POLLOUT)  # writable once connected (or refused: the write says so)
        t = _now()
        while not p.poll(0):
            if _diff(_now(), t) > c.timeout_ms:
                raise OSError("connect to %s timed out" % where)
            await _sleep_ms(_POLL_MS)
        # TCP_NODELAY (6, 1 on Linux and lwIP): without it Nagle holds each small PUBLISH
        # until the previous one is acknowledged, and a window of QoS 1 messages in flight is
        # wasted.
        try:
            s.setsockopt(6, 1, 1)
        except Exception:
            pass
        if ssl is not None:  # the handshake runs in the first writes (CONNECT)
            s = c._w = ssl.wrap_socket(s, server_hostname=server_hostname or host, do_handshake_on_connect=False)
            s.setblocking(False)
        c._acks[-1] = None  # awaited: the reader hands over the CONNACK (MQTTClient._dispatch)
        try:
            await c._send(connect_packet(client_id, c.keepalive, clean, user, password, will))
        except (ValueError, OSError) as e:  # MicroPython reports TLS failures as ValueError
            why = None
            if ssl is not None:
                from meternode.link.tls import explain

                why = explain(e)
            if why:
                raise MQTTError("TLS handshake with %s failed: %s" % (where, why))
            raise OSError("connection to %s closed before CONNACK (%s)" % (where, e))
        c._reader_task = asyncio.create_task(c._reader())
        body = await c._ack(-1, "CONNACK from %s", where)
        if len(body) != 2:
            raise MQTTError("malformed CONNACK: %d bytes" % len(body))
        rc = body[1]
        if rc:
            why = _CONNACK_TEXT[rc] if rc < len(_CONNACK_TEXT) else "code %d" % rc
            raise MQTTError("broker refused the connection: " + why)
    except BaseException:
        c.drop()
        raise
    finally:
        c._acks.pop(-1, None)
    if c._w is None:  # closed right after the CONNACK: the reader saw it and says why
        raise OSError("connection to %s lost after CONNACK: %s" % (where, c.error))
    c.session_present = bool(body[0] & 1)
    c.connected = True
    c.error = None
    c._last_rx = c._ping = _now()  # the keepalive counts from here (MQTTClient._into)


async def subscribe(c, topic, qos=1):
    # MQTTClient.subscribe(): SUBSCRIBE, then its SUBACK within the client's timeout.
    check_topic(topic, wild=True)
    pid = c.next_pid()
    body = struct.pack("!H", pid) + _str(topic) + bytes((qos,))
    c._acks[pid] = None
    try:
        await c._send(bytes((_SUBSCRIBE,)) + _remaining(len(body)) + body)
        body = await c._ack(pid, "SUBACK for %s", topic)
    finally:
        c._acks.pop(pid, None)
    if len(body) > 2 and body[2] == 0x80:
        raise MQTTError("broker refused the subscription to %s" % topic)


async def open(link):
    # MqttLink's connection attempt: the client (link._c from here on, connected or not, so
    # the link can close it whatever fails), connected, then the node announced: the retained
    # `online` state (the will says `offline`) and its subscriptions.
    m = link.m
    c = link._c = MQTTClient(
        link.node_id,
        m["host"],
        m.get("port", 1883),
        keepalive=m.get("keepalive", 30),
        clean=m.get("clean", False),
        user=m.get("user"),
        password=m.get("password"),
        will=(link.topic("state"), b"offline", 1, True),
        ssl=link._ssl,
        server_hostname=(m.get("tls") or {}).get("server_hostname"),
    )
    c.on_message = link._on_message
    await connect(c)
    await c.publish(link.topic("state"), b"online", qos=1, retain=True)
    if link.on_command is not None:
        await subscribe(c, link.topic("cmd"), 1)
    if link.outbox is not None:
        await subscribe(c, link.topic("resend"), 1)
    for leaf in list(link.extra_topics):
        await subscribe(c, link.topic(leaf), 1)
