"""Many simulated nodes sending their record backlogs: real node payloads (the firmware's own
record encoding, `meternode.store.records.to_json_dict`, plus `held`), QoS 1, over a few MQTT
connections, each node answering `…/resend` like the firmware's outbox (go back to the
requested seq and send everything from there again).

A light stand-in for thousands of nodes in tests and `benchmarks/ingest.py`: it does what the
outbox does on the wire, not what a node does in RAM.

    with Backlog("127.0.0.1", 1883, [f"n{i:05d}" for i in range(10000)], records=20) as b:
        b.wait_sent(120)

    python -m umeter.backlog HOST PORT --nodes 10000 --records 20   # prints JSON counts on exit
"""

from __future__ import annotations

import argparse
import json
import queue
import signal
import sys
import threading
import time

from meternode.store import records as fw

from .mqttc import connect, make_client

T0 = 1_780_000_000  # ts of seq 1 (quarter-hour profiles from here on)


def record_payload(
    node: str, seq: int, *, held: int = 1, prefix: str = "umeter", ts: int | None = None
) -> tuple[str, bytes]:
    """(topic, payload) of a node's record `seq` as its outbox publishes it: a quarter-hour
    profile, every 8th record an event."""
    ts = T0 + 900 * seq if ts is None else ts
    if seq % 8 == 0:
        kind, body = fw.EVENT, fw.event(fw.EV_RELAY, seq % 2, f"cmd r-{seq}")
    else:
        kind, body = (
            fw.PROFILE,
            fw.profile(900, 1000 * seq, 17 * seq, (2301, 2280, 2330), (1200, 900, 1500), (2650, 1800, 3400)),
        )
    d = fw.to_json_dict(node, kind, seq, ts, body)
    d["held"] = held
    return f"{prefix}/{node}/{fw.topic_leaf(kind)}", json.dumps(d).encode()


class _Conn:
    def __init__(self, host: str, port: int, nodes: list[str], prefix: str, inflight: int, tag: str) -> None:
        self.nodes = nodes
        self.rewinds: queue.SimpleQueue[tuple[str, int]] = queue.SimpleQueue()
        self.c = make_client(f"umeter-backlog-{tag}")
        self.c.max_inflight_messages_set(inflight)
        self.c.max_queued_messages_set(inflight)
        mine = set(nodes)
        self.ready = threading.Event()

        def on_connect(client, userdata, flags, rc, props=None):
            if not rc.is_failure:
                client.subscribe(f"{prefix}/+/resend", 1)
                self.ready.set()

        def on_message(client, userdata, m):
            parts = m.topic.split("/")
            if len(parts) == 3 and parts[1] in mine and m.payload:
                try:
                    self.rewinds.put((parts[1], int(m.payload)))
                except ValueError:
                    pass

        self.c.on_connect = on_connect
        self.c.on_message = on_message
        self.c.reconnect_delay_set(0.1, 2)
        connect(self.c, host, port)
        self.c.loop_start()


class Backlog:
    """`nodes` each with `records` records (seq 1..records), published round-robin across the
    nodes so every node's backlog drains at once, as after a fleet-wide outage."""

    def __init__(
        self,
        host: str,
        port: int,
        nodes: list[str],
        records: int,
        *,
        prefix: str = "umeter",
        connections: int = 4,
        inflight: int = 500,
        rate: float | None = None,
    ) -> None:
        self.host, self.port, self.prefix = host, port, prefix
        self.rate = rate  # records/s over all nodes (None: as fast as the broker takes them)
        self.nodes = nodes
        self.records = records
        self.next = dict.fromkeys(nodes, 1)  # next seq to send per node
        self.sent_hi = dict.fromkeys(nodes, 0)
        self.published = 0
        self.resent = 0
        self.rewinds = 0
        self.first_sent = None
        self.last_sent = None
        self.sent_all = threading.Event()
        self._stop = threading.Event()
        self._conns = [
            _Conn(host, port, nodes[i::connections], prefix, inflight, str(i))
            for i in range(min(connections, len(nodes)))
        ]
        self._thread: threading.Thread | None = None

    def _send(self, conn: _Conn, node: str, seq: int) -> None:
        topic, payload = record_payload(node, seq, prefix=self.prefix)
        while not self._stop.is_set():
            info = conn.c.publish(topic, payload, qos=1)
            if info.rc == 0:
                break
            time.sleep(0.002)  # paho's queue is full: the broker has not acknowledged enough yet
        if self.rate:
            ahead = self.first_sent + self.published / self.rate - time.monotonic() if self.first_sent else 0
            if ahead > 0:
                time.sleep(ahead)
        if seq <= self.sent_hi[node]:
            self.resent += 1
        else:
            self.sent_hi[node] = seq
        self.published += 1
        self.last_sent = time.monotonic()
        if self.first_sent is None:
            self.first_sent = self.last_sent

    def _rewind(self, conn: _Conn) -> bool:
        moved = False
        while True:
            try:
                node, seq = conn.rewinds.get_nowait()
            except queue.Empty:
                return moved
            if 0 < seq <= self.sent_hi[node] and seq < self.next[node]:
                self.next[node] = seq  # go-back-N, as the firmware's Outbox.resend_from
                self.rewinds += 1
                moved = True

    def _run(self) -> None:
        for c in self._conns:
            c.ready.wait(10)
        rnd = 0
        while not self._stop.is_set():
            busy = False
            for conn in self._conns:
                self._rewind(conn)
            rnd += 1
            for conn in self._conns:
                k = rnd % len(conn.nodes)  # each pass starts one node later: with K consumers sharing
                for node in conn.nodes[k:] + conn.nodes[:k]:  # round-robin, a node's records spread over them
                    s = self.next[node]
                    if s <= self.records:
                        self._send(conn, node, s)
                        self.next[node] = s + 1
                        busy = True
            if not busy:
                self.sent_all.set()
                time.sleep(0.02)

    def start(self) -> Backlog:
        self._thread = threading.Thread(target=self._run, name="backlog", daemon=True)
        self._thread.start()
        return self

    def wait_sent(self, timeout: float) -> bool:
        return self.sent_all.wait(timeout)

    def counts(self) -> dict:
        span = (self.last_sent or 0) - (self.first_sent or 0)
        return {
            "published": self.published,
            "resent": self.resent,
            "rewinds": self.rewinds,
            "publish_s": round(span, 3),
            "publish_per_s": round(self.published / span, 1) if span > 0 else None,
        }

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        for c in self._conns:
            c.c.loop_stop()
            c.c.disconnect()

    def __enter__(self) -> Backlog:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--records", type=int, default=20)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--prefix", default="umeter")
    ap.add_argument("--rate", type=float, default=None, help="records/s over all nodes [as fast as possible]")
    a = ap.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    nodes = [f"n{i:05d}" for i in range(a.nodes)]
    with Backlog(a.host, a.port, nodes, a.records, prefix=a.prefix, connections=a.connections, rate=a.rate) as b:
        announced = False
        while not stop.is_set():
            if not announced and b.sent_all.is_set():
                print(json.dumps({"sent_all": True, **b.counts()}), flush=True)
                announced = True
            stop.wait(0.1)
        print(json.dumps(b.counts()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
