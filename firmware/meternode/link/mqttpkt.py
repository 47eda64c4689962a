# MQTT 3.1.1 packet encoding shared by the client (mqtt.py): fixed headers, strings,
# remaining lengths, PUBLISH, topic checks and size limits (CONNECT: mqttconn.py, loaded per
# connection).
import struct

from micropython import const

# Packet types (MQTT 3.1.1 section 2.2.1): `_NAME = const(...)` costs no global and no qstr,
# so mqtt.py and mqttconn.py have their own for the ones they need.
_PUBLISH = const(0x30)

MAX_PACKET = const(16384)  # largest packet we send or accept (bytes); more is a protocol error
_MAX_TOPIC = const(256)  # longest topic we publish or subscribe to (bytes)


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


def publish_packet(topic, payload, qos=0, retain=False, pid=0, dup=False):
    if isinstance(payload, str):
        payload = payload.encode()
    return publish_head(topic, len(payload), qos, retain, pid, dup) + payload


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
