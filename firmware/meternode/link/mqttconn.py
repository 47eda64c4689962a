# The MQTT connect path, run once per connection: the CONNECT packet, the TCP or TLS
# connection and CONNACK (MQTTClient.connect), SUBSCRIBE and its SUBACK (MQTTClient.subscribe:
# the link's topics at each connect, a service's later one), and the link's session set-up
# (MqttLink: the client made from config.mqtt, the retained `online` state, the
# subscriptions; discovery follows once this module is forgotten, link/uplink.py).  Loaded
# for a connect and forgotten after (meternode.forget): a running connection needs none of it.
# MqttLink loads it once at start too, so its names are interned while the heap is emptiest,
# not at a reconnect in a heap cut up by a long run (docs/memory.md).
import asyncio
import struct

from micropython import const

from meternode.link.mqtt import MQTTClient, MQTTError, _remaining, _str, check_topic, publish_head
from meternode.ticks import ms as _now
from meternode.ticks import wait_for_ms

_CONNECT = const(0x10)
_CONNACK = const(0x20)
_SUBSCRIBE = const(0x82)

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
    # MQTTClient.connect(): the connection, CONNECT and CONNACK; then the reader and pinger.
    client_id, host, port, clean, user, password, will, ssl, server_hostname = c._opts
    where = "%s:%d" % (host, port)
    try:
        if ssl is None:
            c._r, c._w = await wait_for_ms(asyncio.open_connection(host, port), c.timeout_ms)
        else:
            try:
                aw = asyncio.open_connection(host, port, ssl=ssl, server_hostname=server_hostname or host)
            except TypeError:  # older MicroPython asyncio without server_hostname
                aw = asyncio.open_connection(host, port, ssl=ssl)
            c._r, c._w = await wait_for_ms(aw, c.timeout_ms)
    except asyncio.TimeoutError:
        raise OSError("connect to %s timed out" % where)
    except ValueError as e:  # MicroPython reports TLS failures as ValueError
        await c._close()
        raise MQTTError("TLS handshake with %s failed: %s" % (where, str(e).strip()))
    try:
        await c._send(connect_packet(client_id, c.keepalive, clean, user, password, will))
        head, body = await wait_for_ms(c._read_packet(), c.timeout_ms)
    except asyncio.TimeoutError:
        await c._close()
        raise OSError("no CONNACK from %s" % where)
    except (ValueError, OSError, EOFError) as e:
        await c._close()
        if ssl is not None:
            from meternode.link.tls import explain

            why = explain(e)
            if why:
                raise MQTTError("TLS handshake with %s failed: %s" % (where, why))
        raise OSError("connection to %s closed before CONNACK (%s)" % (where, e))
    if head != _CONNACK or len(body) != 2:
        await c._close()
        raise MQTTError("expected CONNACK, got packet type 0x%02x" % head)
    rc = body[1]
    if rc:
        await c._close()
        why = _CONNACK_TEXT[rc] if rc < len(_CONNACK_TEXT) else "code %d" % rc
        raise MQTTError("broker refused the connection: " + why)
    # TCP_NODELAY (6, 1 on Linux and lwIP): without it Nagle holds each small PUBLISH until
    # the previous one is acknowledged, and a window of QoS 1 messages in flight is wasted.
    w = c._w
    s = getattr(w, "s", None) or getattr(w, "get_extra_info", lambda k: None)("socket")
    try:
        s.setsockopt(6, 1, 1)
    except Exception:
        pass
    c.session_present = bool(body[0] & 1)
    c.connected = True
    c.error = None
    c._last_rx = _now()
    c._reader_task = asyncio.create_task(c._reader())
    c._ping_task = asyncio.create_task(c._pinger())


async def subscribe(c, topic, qos=1):
    # MQTTClient.subscribe(): SUBSCRIBE, then its SUBACK within the client's timeout.
    check_topic(topic, wild=True)
    pid = c.next_pid()
    ev = asyncio.Event()
    ev.failed = False
    c._acks[pid] = ev
    body = struct.pack("!H", pid) + _str(topic) + bytes((qos,))
    try:
        await c._send(bytes((_SUBSCRIBE,)) + _remaining(len(body)) + body)
        await wait_for_ms(ev.wait(), c.timeout_ms)
    except asyncio.TimeoutError:
        raise OSError("no SUBACK for %s" % topic)
    finally:
        c._acks.pop(pid, None)
    if not c.connected:
        raise OSError("connection lost before SUBACK for %s: %s" % (topic, c.error))
    if ev.failed:
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
