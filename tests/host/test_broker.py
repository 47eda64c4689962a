"""The embedded broker (amqtt, umeter.broker.EmbeddedBroker) keeps every client that connects
while others subscribe, and still hands a new subscriber the retained messages.

amqtt 0.12 dropped a client right after its CONNACK when another client's SUBSCRIBE arrived
while the broker was sending the newcomer retained messages ("dictionary changed size during
iteration"): 18 of 177 connections, six clients connecting and subscribing at once, before the
broker's subclass (host/umeter/broker.py). `umeter sim` nodes connect together and saw it as a
"link error" now and then. The same test runs against Mosquitto, the reference."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt

RETAINED = 20  # retained messages under umeter/ before the clients come
CLIENTS = 6
ROUNDS = 8


class _Client:
    def __init__(self, port: int, cid: str, topics: list[str]) -> None:
        self.retained = 0
        self.connects = 0
        self.drops: list[str] = []
        self.subscribed = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, clean_session=False)
        self.c.on_connect = lambda c, u, f, rc, p: (self._on_connect(), c.subscribe([(t, 0) for t in topics]))
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.c.on_message = self._on_message
        self.c.on_disconnect = lambda c, u, f, rc, p: self.drops.append(str(rc))
        self.c.connect_async("127.0.0.1", port, keepalive=30)

    def _on_connect(self) -> None:
        self.connects += 1

    def _on_message(self, c, u, m) -> None:
        if m.retain:
            self.retained += 1


def _publish_retained(port: int) -> None:
    p = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="retainer")
    p.connect("127.0.0.1", port)
    p.loop_start()
    infos = [p.publish(f"umeter/n{k}/discovery", b"retained", qos=1, retain=True) for k in range(RETAINED)]
    for i in infos:
        i.wait_for_publish(5)
    p.disconnect()
    p.loop_stop()


def test_clients_connecting_while_others_subscribe_are_kept_and_get_the_retained_messages(any_broker):
    port = any_broker.port
    _publish_retained(port)
    for rnd in range(ROUNDS):
        clients = [
            _Client(port, f"c{rnd}-{i}", ["umeter/#", f"t/{rnd}/{i}/a", f"t/{rnd}/{i}/b"]) for i in range(CLIENTS)
        ]
        for c in clients:  # all at once: each connects and subscribes as the others connect
            c.c.loop_start()
        deadline = time.monotonic() + 10
        for c in clients:
            assert c.subscribed.wait(max(0.1, deadline - time.monotonic())), f"round {rnd}: a client never subscribed"
        while time.monotonic() < deadline and any(c.retained < RETAINED for c in clients):
            time.sleep(0.05)
        time.sleep(0.2)  # a drop right after the CONNACK would have come by now
        # (amqtt also sends a new session the retained messages of other clients' filters, so
        # a client may get them twice; at least once each is what a subscriber needs)
        got = [(c.connects, c.retained >= RETAINED, list(c.drops)) for c in clients]
        for c in clients:
            c.c.disconnect()
            c.c.loop_stop()
        assert got == [(1, True, [])] * CLIENTS, f"round {rnd}: (connects, all retained, drops) {got}"
    assert getattr(any_broker, "errors", []) == []
