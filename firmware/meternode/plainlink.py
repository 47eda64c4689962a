# The fallback link (Node.link) when store-and-forward cannot start (e.g. no RAM for the record
# log): the retained state and QoS 0 telemetry over a plain MQTT connection.  Loaded only then:
# a node whose uplink service runs never interns these names or holds this code.
import asyncio

from micropython import const

from meternode.link import telemetry
from meternode.link.mqtt import Backoff, MQTTClient
from meternode.node import log

_BACKOFF_MIN_MS = const(500)
_BACKOFF_MAX_MS = const(30000)


async def run(node, beat):
    # Connects, publishes "online" (retained; the will says "offline"), keeps node._plain the
    # connected client (node.mqtt, the reports' QoS 0 telemetry), reconnects with backoff.
    m = node.config["mqtt"]
    topic = telemetry.topic(m.get("prefix", "umeter"), node.id, "state")
    backoff = Backoff(_BACKOFF_MIN_MS, _BACKOFF_MAX_MS)
    c = None
    try:
        while True:
            beat()
            c = None
            try:
                c = MQTTClient(
                    node.id,
                    m["host"],
                    m.get("port", 1883),
                    keepalive=m.get("keepalive", 30),
                    user=m.get("user"),
                    password=m.get("password"),
                    will=(topic, b"offline", 1, True),
                )
                await c.connect()
                await c.publish(topic, b"online", qos=1, retain=True)
                node._plain = c
                backoff.reset()
                log("link up (no store): %s:%d" % (m["host"], m.get("port", 1883)))
                while c.connected:
                    beat()
                    await asyncio.sleep_ms(200)
                log("link down: %s" % c.error)
            except Exception as e:  # MemoryError too: this connection fails, the link goes on
                log("link error: %s" % e)
            node._plain = None
            if c is not None:
                await c.disconnect()
            await asyncio.sleep_ms(backoff.next_ms())
    finally:  # cancelled (a supervisor restart, the node stopping): the connection goes too
        node._plain = None
        if c is not None:
            c.drop()
