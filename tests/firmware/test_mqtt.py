# MQTT packet encoding, limits, backoff and the client against a real Mosquitto.
import asyncio

from heapcut import fragment, plug

from meternode.link.mqtt import MAX_PACKET, Backoff, MQTTClient, MQTTError, check_topic
from meternode.link.mqttconn import connect_packet, publish_packet
from meternode.link.tls import ca_der
from mptest import eq, heap, host_value, needs, raises, timeout


def test_connect_packet_carries_will_credentials_and_clean_flag():
    p = connect_packet("n1", 30, False, "u", "pw", ("umeter/n1/state", b"offline", 1, True))
    eq(p[0], 0x10, "CONNECT")
    flags = p[2 + 2 + 4 + 1]
    eq(flags, 0x80 | 0x40 | 0x20 | 0x08 | 0x04, "user, password, will retain, will QoS 1, will; clean off")
    eq(p[-4:], b"\x00\x02pw", "password last")


def test_publish_packet_qos1_dup_and_limits():
    p = publish_packet("a/b", b"xy", 1, False, 0x1234, True)
    eq(bytes(p), b"\x3a\x09\x00\x03a/b\x12\x34xy", "QoS 1 + DUP + pid")
    eq(publish_packet("a", b"", 0, True, 0, True)[0], 0x31, "DUP never set on QoS 0")
    e = raises(MQTTError, publish_packet, "a", bytes(MAX_PACKET), 0)
    eq("over the %d-byte limit" % MAX_PACKET in str(e), True, str(e))
    raises(MQTTError, publish_packet, "a", b"", 2)


def test_topic_checks_name_the_problem():
    check_topic("umeter/n1/cmd")
    check_topic("umeter/+/cmd", wild=True)
    e = raises(MQTTError, check_topic, "umeter/+/cmd")
    eq("not allowed" in str(e), True, str(e))
    raises(MQTTError, check_topic, "")
    raises(MQTTError, check_topic, "x" * 300)


def test_backoff_grows_with_jitter_and_stays_bounded():
    b = Backoff(100, 1000)
    seen = [b.next_ms() for _ in range(8)]
    bases = [100, 200, 400, 800, 1000, 1000, 1000, 1000]
    for got, base in zip(seen, bases):
        eq(base - base // 4 <= got <= base + base // 4, True, "%d within 25 %% of %d" % (got, base))
    b.reset()
    eq(b.next_ms() <= 125, True, "reset starts over")
    many = set(Backoff(1000, 1000).next_ms() for _ in range(20))
    eq(len(many) > 1, True, "jitter varies: %r" % many)


def test_pem_ca_becomes_der():
    der = b"\x30\x82\x01\x0a" + bytes(range(40))
    import binascii

    pem = b"-----BEGIN CERTIFICATE-----\n" + binascii.b2a_base64(der) + b"-----END CERTIFICATE-----\n"
    eq(ca_der(pem), der, "PEM -> DER")
    eq(ca_der(der), der, "DER unchanged")


@needs("host:mosquitto")
@timeout(30)
async def test_qos1_roundtrip_subscribe_and_refused_port():
    h, p = host_value("mosquitto_host"), int(host_value("mosquitto_port"))
    got = []
    c = MQTTClient("t-mqtt-1", h, p, keepalive=10)
    c.on_message = lambda t, m, r: got.append((t, bytes(m)))
    await c.connect()
    await c.subscribe("t/mqtt/#", 1)
    pid = await c.publish("t/mqtt/a", b"hello", qos=1)
    eq(pid >= 0x8000, True, "client packet ids in the upper half")
    acks = []
    c.on_ack = acks.append
    p2 = await c.send_publish("t/mqtt/b", b"x" * 3000, 1)
    for _ in range(100):
        if acks and len(got) >= 2:
            break
        await asyncio.sleep_ms(20)
    eq(acks, [p2], "PUBACK reported through on_ack")
    eq([t for t, m in got], ["t/mqtt/a", "t/mqtt/b"], "both delivered")
    await c.disconnect()
    eq(c.connected, False, "disconnected")
    bad = MQTTClient("t-mqtt-2", h, 1, timeout_ms=2000)
    e = None
    try:
        await bad.connect()
        raise AssertionError("connect to port 1 succeeded")
    except OSError as ex:
        e = ex
    eq(e is not None, True, "connection refused is an OSError")


def test_home_assistant_discovery_announces_energy_as_total_increasing_kwh():
    import json

    from meternode.link import discovery

    cfgs = dict(discovery.configs("umeter", "n1", {"version": "0.1.0"}))
    e = json.loads(cfgs["homeassistant/sensor/n1/energy_import/config"])
    eq((e["unit_of_measurement"], e["device_class"], e["state_class"]), ("kWh", "energy", "total_increasing"), "energy")
    eq(e["state_topic"], "umeter/n1/telemetry", "reads the telemetry topic")
    eq(e["availability_topic"], "umeter/n1/state", "availability from the retained state")
    eq(sorted(k.split("/")[3] for k in cfgs), sorted(discovery.DEFAULT), "default sensors")
    more = dict(discovery.configs("umeter", "n1", {"sensors": ["water", "gas"]}))
    eq(json.loads(more["homeassistant/sensor/n1/gas/config"])["device_class"], "gas", "gas when the node has it")
    # the config is JSON written as text: a value with a quote stays one JSON string, a sensor
    # without a unit has no unit key
    odd = dict(discovery.configs("umeter", "n1", {"version": '1"2', "sensors": ["power_factor"]}))
    pf = json.loads(odd["homeassistant/sensor/n1/power_factor/config"])
    eq((pf["device"]["sw_version"], "unit_of_measurement" in pf), ('1"2', False), "escaped, no unit")


class _Chunks:
    # A non-blocking socket that hands out `data` in pieces of `k` bytes at most, with nothing
    # there (None) before each piece, and keeps whatever is written to it.
    def __init__(self, data, k):
        self.d = data
        self.i = 0
        self.k = k
        self.out = b""
        self.waits = 0

    def readinto(self, mv):
        self.waits += 1
        if self.waits & 1:
            return None
        b = self.d[self.i : self.i + min(self.k, len(mv))]
        self.i += len(b)
        mv[: len(b)] = b
        return len(b)

    def write(self, b):
        self.out += bytes(b)
        return len(b)


async def _serve(broker):
    # -> (server, port): a free port, since MicroPython's Server does not say which port 0 bound
    import time

    port = 20000 + time.ticks_us() % 30000
    for _ in range(50):
        try:
            return await asyncio.start_server(broker, "127.0.0.1", port), port
        except OSError:
            port += 1
    raise OSError("no free port from %d" % (port - 50))


async def test_a_connection_lost_while_waiting_for_an_ack_says_why():
    # A broker that accepts the connection, reads a little and closes: the publish (and a
    # subscribe) waiting for its acknowledgement fails naming what the reader saw, not only
    # that the connection went.
    async def broker(r, w):
        await r.read(2)  # CONNECT's first bytes: the client waits for the CONNACK
        w.write(b"\x20\x02\x00\x00")
        await w.drain()
        await asyncio.sleep_ms(50)  # the rest of CONNECT, then the PUBLISH or SUBSCRIBE
        w.close()
        await w.wait_closed()

    srv, port = await _serve(broker)
    try:
        for what in ("publish", "subscribe"):
            c = MQTTClient("t-lost", "127.0.0.1", port, timeout_ms=3000)
            await c.connect()
            try:
                if what == "publish":
                    await c.publish("t/lost", b"x", qos=1)
                else:
                    await c.subscribe("t/lost", 1)
                raise AssertionError("%s succeeded on a closed connection" % what)
            except OSError as e:
                msg = str(e)
            eq(msg.startswith("connection lost before"), True, msg)
            why = msg.split(": ", 1)[1] if ": " in msg else ""
            eq(why not in ("", "None"), True, "the reason is named: " + msg)  # a reset, or closed by the broker
            eq(c.connected, False, "not connected after")
    finally:
        srv.close()


async def test_a_broker_that_closes_right_after_its_connack_is_named_as_the_reason():
    # Seen with the sim's embedded broker at a node's first connect: the CONNACK, then the
    # connection closed at once.  The reader saw the close before connect() returned, and
    # connect() then cleared the reason: the node logged "link error: not connected".
    async def broker(r, w):
        w.write(b"\x20\x02\x00\x00")  # CONNACK and the close, both there when the reader starts
        await w.drain()
        w.close()
        await w.wait_closed()

    srv, port = await _serve(broker)
    try:
        for _ in range(5):
            c = MQTTClient("t-closed", "127.0.0.1", port, timeout_ms=3000)
            try:
                await c.connect()
                await c.publish("t/closed", b"x", qos=1)
                raise AssertionError("publish succeeded on a closed connection")
            except OSError as e:
                msg = str(e)
            eq("not connected" in msg, False, msg)
            low = msg.lower()  # why: closed by the broker, or a reset (ECONNRESET under load)
            eq("closed by the broker" in low or "reset" in low or "lost" in low, True, msg)
            eq(c.connected, False, "not connected after: " + msg)
    finally:
        srv.close()


async def test_a_broker_that_falls_silent_is_pinged_and_then_dropped_naming_the_silence():
    # A half-open connection (a NAT that forgot it, a broker frozen): the CONNACK, then
    # nothing, whatever the client sends.  The client pings every keepalive/2 and drops the
    # connection after 1.5 * keepalive without a packet, so that the link reconnects and the
    # broker's copy of the session publishes the will (MQTT 3.1.1 section 3.1.2.10).
    import time

    seen = bytearray()

    async def broker(r, w):
        w.write(b"\x20\x02\x00\x00")
        await w.drain()
        while True:
            b = await r.read(64)
            if not b:
                break
            seen.extend(b)

    srv, port = await _serve(broker)
    try:
        c = MQTTClient("t-silent", "127.0.0.1", port, keepalive=1, timeout_ms=3000)
        await c.connect()
        t0 = time.ticks_ms()
        while c.connected and time.ticks_diff(time.ticks_ms(), t0) < 4000:
            await asyncio.sleep_ms(20)
        took = time.ticks_diff(time.ticks_ms(), t0)
        eq(c.connected, False, "dropped after 1.5 * keepalive of silence")
        eq(1400 <= took <= 2600, True, "dropped after %d ms (keepalive 1 s)" % took)
        eq("silent" in str(c.error), True, "why: %r" % c.error)
        eq(seen.count(b"\xc0\x00") >= 2, True, "PINGREQs sent meanwhile: %r" % bytes(seen[-8:]))
    finally:
        srv.close()


@needs("host:mosquitto")
@timeout(30)
async def test_an_idle_connection_outlives_mosquittos_keepalive_on_pings_alone():
    # Mosquitto closes a client that sends nothing for 1.5 * keepalive (3 s here); an idle
    # client stays connected on its PINGREQs, and the PINGRESPs keep it from dropping the
    # broker in turn.
    h, p = host_value("mosquitto_host"), int(host_value("mosquitto_port"))
    c = MQTTClient("t-idle", h, p, keepalive=2, timeout_ms=3000)
    await c.connect()
    await asyncio.sleep_ms(4500)
    eq((c.connected, c.error), (True, None), "still connected after 4.5 s idle")
    pid = await c.publish("t/idle", b"x", qos=1)
    eq(pid >= 0x8000, True, "a QoS 1 publish is acknowledged on the same connection")
    await c.disconnect()


class _Full:
    # A non-blocking socket whose send buffer fills after `room` bytes and never drains (a
    # broker that stopped reading: a black hole on the path, a frozen process).
    def __init__(self, room):
        self.room = room
        self.out = b""

    def write(self, b):
        k = min(self.room, len(b))
        if not k:
            return None
        self.room -= k
        self.out += bytes(b[:k])
        return k

    def readinto(self, mv):
        return None

    def close(self):
        pass


@timeout(20)
async def test_a_broker_that_stops_reading_times_the_send_out_and_drops_the_connection():
    # Nothing comes back and the socket takes no more: the writer gives up after the
    # client's timeout, the connection is dropped naming it, and a second writer queued
    # behind the first fails too instead of waiting for ever.
    import time

    from meternode.link import mqtt as M

    for room in (0, 7):  # nothing of the packet went, or part of it
        c = M.MQTTClient("t", "x", timeout_ms=300)
        c._w = _Full(room)
        c.connected = True
        t0 = time.ticks_ms()
        other = asyncio.create_task(c.publish("t/b", b"y", qos=0))
        try:
            await c.publish("t/a", b"x" * 100, qos=0)
            raise AssertionError("publish went into a full socket")
        except OSError as e:
            msg = str(e)
        took = time.ticks_diff(time.ticks_ms(), t0)
        eq("timed out" in msg, True, msg)
        eq(250 <= took <= 1500, True, "after the timeout: %d ms" % took)
        eq((c.connected, "timed out" in str(c.error)), (False, True), "dropped, naming it: %r" % c.error)
        await asyncio.sleep_ms(20)
        eq(other.done(), True, "the writer behind it is not left waiting")


class _Flood:
    # A non-blocking socket that is never empty: every read fills the buffer with small QoS 0
    # PUBLISHes (a broker, or someone on it, sending faster than the node parses).
    def __init__(self):
        self.out = b""
        self.reads = 0

    def readinto(self, mv):
        self.reads += 1
        n = len(mv) // 5 * 5
        mv[:n] = b"\x30\x03\x00\x01f" * (n // 5)
        return n

    def write(self, b):
        self.out += bytes(b)
        return len(b)

    def close(self):
        pass


@timeout(20)
async def test_a_socket_that_never_runs_dry_neither_starves_the_node_nor_holds_back_the_pings():
    # The reader yields once per buffer it reads, so the node's other tasks (metering, the
    # supervisor that feeds the watchdog) go on under a flood; and the keepalive is looked at
    # before each read, so the client still pings and the broker does not drop it.
    from meternode.link import mqtt as M
    from meternode.ticks import ms

    c = M.MQTTClient("t", "x", keepalive=1)
    c._w = s = _Flood()
    c.connected = True
    c._last_rx = c._ping = ms()  # as connect() does
    got = [0]  # (a count: a list of them would outgrow the test's heap)

    def on_message(t, m, r):
        got[0] += 1

    c.on_message = on_message
    others = [0]

    async def other():
        while True:
            others[0] += 1
            await asyncio.sleep_ms(0)

    o = asyncio.create_task(other())
    r = asyncio.create_task(c._reader())
    await asyncio.sleep_ms(700)
    c.drop()
    o.cancel()
    await asyncio.sleep_ms(0)
    eq(got[0] > 1000, True, "the flood was read: %d messages" % got[0])
    eq(others[0] >= s.reads // 2, True, "another task ran %d times in %d reads" % (others[0], s.reads))
    eq(s.out.count(b"\xc0\x00") >= 1, True, "a PINGREQ went out in 0.7 s (keepalive 1 s): %r" % s.out)
    eq((r.done(), c.connected), (True, False), "the reader ended with the connection")


@heap("256k")  # parsing, not the heap: its 5-KB packets, read and joined seven times over
async def test_packets_split_anywhere_and_longer_than_the_buffer_are_read_whole():
    from meternode.link import mqtt as M
    from meternode.link.mqtt import _remaining
    from meternode.link.mqttconn import publish_packet

    pkts = [
        publish_packet("a/b", b"x" * 10),
        publish_packet("a/c", bytes(range(256)) * 20, 1, False, 7),  # 5 KB: over the 1 KB buffer
        b"\xd0\x00",
        b"\x40\x02\x00\x07",
        publish_packet("a/d", b"y" * 200),
    ]
    for k in (1, 2, 3, 7, 100, 1024, 9999):
        c = M.MQTTClient("t", "x")
        c._w = _Chunks(b"".join(pkts), k)
        got = []
        for _ in pkts:
            got.append(await c._read_packet())
        eq([bytes((h,)) + _remaining(len(b)) + b for h, b in got], pkts, "chunks of %d" % k)
        try:
            await c._read_packet()
            raise AssertionError("no EOFError at the end of the stream")
        except EOFError:
            pass


@heap("256k")
async def test_a_message_longer_than_any_free_block_is_acknowledged_dropped_and_handed_on_as_none():
    # A 12-KB PUBLISH to a node whose heap has no block that long (runs of ~2 KB): before, the
    # reader failed with MemoryError, the link went down, and the broker sent the message
    # again at every reconnect: the link never stayed up.  Now it is read through the buffer,
    # acknowledged, and handed on as None (its receiver answers why); the next one arrives.
    from meternode.link import mqtt as M
    from meternode.link.mqttconn import publish_packet

    data = bytes(publish_packet("t/big", b"z" * 12000, 1, False, 9)) + bytes(
        publish_packet("t/next", b"y" * 300, 1, False, 10)
    )
    for cut in (False, True):
        c = M.MQTTClient("t", "x")
        c._w = _Chunks(data, 700)
        got = []
        c.on_message = lambda tp, msg, r: got.append((tp, None if msg is None else len(msg)))
        hold = (fragment(128), plug(4, 8192)) if cut else None  # free runs of 2-4 KB
        try:
            for _ in range(2):
                h, b = await c._read_packet()
                await c._dispatch(h, b)
        finally:
            del hold
        eq(got, [("t/big", None if cut else 12000), ("t/next", 300)], "cut heap: %r" % cut)
        eq(c._w.out, b"\x40\x02\x00\x09\x40\x02\x00\x0a", "both acknowledged (cut heap: %r)" % cut)


@heap("256k")  # the link's modules compiled from source: at 122-127k a layout may leave no piece
def test_the_link_names_a_dropped_message_and_hands_it_to_its_service_only():
    # payload None: the client had no block for the message (above).  A service's leaf gets
    # it (the fleet agent answers "failed: no memory"); a command or resend request is not run.
    from meternode.link.uplink import MqttLink

    said, cmds, leaf = [], [], []
    link = MqttLink("n9", {"host": "127.0.0.1", "port": 1, "prefix": "p"}, log=said.append)
    link.on_command = cmds.append
    link.extra_topics["ota"] = lambda payload, retained: leaf.append(payload)
    for t in ("p/n9/ota", "p/n9/cmd", "p/n9/resend"):
        link._on_message(t, None, False)
    eq((leaf, cmds), ([None], []), "only the service's leaf is handed the drop")
    eq(
        said,
        ["%s: message dropped: no memory for it" % t for t in ("p/n9/ota", "p/n9/cmd", "p/n9/resend")],
        "each named",
    )
    link._on_message("p/n9/cmd", b"{}", False)
    eq(cmds, [b"{}"], "a command that arrives whole is run")
