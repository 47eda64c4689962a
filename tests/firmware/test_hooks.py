# Public hooks between firmware modules, on MicroPython: MqttLink.extra_topics (other
# services' MQTT topics, subscribed on every connect, routed to their callbacks) and the
# uplink service's LoRa downlink ports.
import asyncio

from meternode.link.mqtt import MQTTClient
from meternode.link.uplink import MqttLink
from mptest import eq, heap, host_value, needs, timeout


def _link(**m):
    cfg = {"host": "127.0.0.1", "port": 1883, "discovery": False}
    cfg.update(m)
    logs = []
    link = MqttLink("h1", cfg, None, None, None, logs.append)
    return link, logs


def test_extra_topics_route_by_leaf_and_leave_other_topics_to_the_link():
    cmds = []
    link, logs = _link()
    link.on_command = cmds.append
    got = []
    link.extra_topics["policy/bundle"] = lambda p, r: got.append(("bundle", p, r))
    link.extra_topics["ota"] = lambda p, r: got.append(("ota", p, r))
    link._on_message("umeter/h1/policy/bundle", b"B", False)
    link._on_message("umeter/h1/ota", b"O", True)
    link._on_message("umeter/h1/cmd", b"C", False)
    link._on_message("umeter/h2/ota", b"other node", False)
    link._on_message("umeter/h1/policy/bundle/x", b"deeper", False)
    eq(got, [("bundle", b"B", False), ("ota", b"O", True)], "routed by leaf, retained flag passed")
    eq(cmds, [b"C"], "cmd still goes to on_command")


def test_a_failing_extra_topic_handler_is_logged_not_raised():
    link, logs = _link(prefix="site")

    def bad(p, r):
        raise ValueError("boom")

    link.extra_topics["policy/small"] = bad
    link._on_message("site/h1/policy/small", b"x", False)
    eq(logs, ["site/h1/policy/small: handler failed: ValueError('boom',)"], "logged with the topic")


async def test_subscribe_extra_is_false_while_the_link_is_down():
    link, _ = _link()
    link.extra_topics["ota"] = lambda p, r: None
    eq(await link.subscribe_extra(), False, "down: the next connect subscribes")


@heap("256k")
@needs("host:mosquitto")
@timeout(60)
async def test_extra_topics_are_subscribed_again_after_every_reconnect():
    h, port = host_value("mosquitto_host"), int(host_value("mosquitto_port"))
    link, logs = _link(host=h, port=port, backoff_min_ms=50, backoff_max_ms=200, clean=True)
    got = []
    link.extra_topics["policy/bundle"] = lambda p, r: got.append(bytes(p))
    task = asyncio.create_task(link.run())
    pub = MQTTClient("hooks-pub", h, port, keepalive=10)
    await pub.connect()

    async def until(pred, what):
        for _ in range(200):
            if pred():
                return
            await asyncio.sleep_ms(20)
        raise AssertionError("%s: not reached; %r" % (what, logs))

    try:
        for k in range(3):
            await until(lambda: link.up and link.ups == k + 1, "link up #%d" % (k + 1))
            await pub.publish("umeter/h1/policy/bundle", b"bundle %d" % k, qos=1)
            await until(lambda: len(got) == k + 1, "bundle %d routed" % k)
            link.client.drop("test: connection cut")  # clean session: subscriptions gone
        eq(got, [b"bundle 0", b"bundle 1", b"bundle 2"], "every connection routes the leaf")
        eq(link.downs >= 2, True, "reconnected (%d)" % link.downs)
    finally:
        task.cancel()
        await pub.disconnect()
