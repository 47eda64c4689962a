# Outbox + MQTT link against a real Mosquitto, on the MicroPython unix port.
import asyncio
import json

from meternode.link.mqtt import MQTTClient
from meternode.link.outbox import Outbox
from meternode.link.uplink import MqttLink
from meternode.store import records
from meternode.store.cursor import Cursor
from meternode.store.log import RecordLog
from mptest import eq, heap, host_value, needs, scratch_dir, timeout


def _broker():
    return host_value("mosquitto_host"), int(host_value("mosquitto_port"))


class Sink:
    # A second client that collects what the node publishes.
    def __init__(self, name, topic):
        h, p = _broker()
        self.c = MQTTClient(name, h, p, keepalive=30)
        self.topic = topic
        self.got = []
        self.c.on_message = self._on

    def _on(self, t, payload, retained):
        # Keeps little per message: 128k-256k heaps hold thousands of these.
        if payload[:1] == b"{":
            d = json.loads(payload)
            x = {"seq": d.get("seq"), "kind": d.get("kind"), "e_imp_mwh": d.get("e_imp_mwh")}
        else:
            x = bytes(payload)
        self.got.append((t[t.rfind("/") + 1 :], x, retained))

    async def start(self):
        await self.c.connect()
        await self.c.subscribe(self.topic, 1)
        return self

    def seqs(self, leaf):
        return [d["seq"] for t, d, r in self.got if t == leaf]


def _fill(log, n, t0=1700000000):
    for i in range(n):
        log.append(
            records.PROFILE,
            t0 + 900 * i,
            records.profile(900, 1000 * i, 0, (2300, 2290, 2310), (1000, 900, 1100), (2300, 2000, 2500)),
        )


async def _until(cond, ms):
    while ms > 0 and not cond():
        await asyncio.sleep_ms(20)
        ms -= 20
    return cond()


@needs("host:mosquitto")
@heap("256k")
@timeout(60)
async def test_backlog_drains_in_order_exactly_once_and_cursor_follows_acks():
    d = scratch_dir()
    node = "ob1"
    log = RecordLog(d + "/log", 4096, 65536)
    cur = Cursor(d + "/cursor", every=8)
    _fill(log, 150)
    sink = await Sink("sink-ob1", "umeter/%s/#" % node).start()
    h, p = _broker()
    ob = Outbox(log, cur, node, rate=1000.0, window=8)
    link = MqttLink(node, {"host": h, "port": p, "backoff_min_ms": 50}, outbox=ob)
    t = asyncio.create_task(link.run())
    ok = await _until(lambda: cur.acked == 150, 20000)
    eq(ok, True, "cursor reached the last record (at %d)" % cur.acked)
    await _until(lambda: len(sink.seqs("profile")) >= 150, 3000)
    eq(sink.seqs("profile"), list(range(1, 151)), "profile records in order, once each")
    first = [d for tp, d, r in sink.got if tp == "profile"][3]
    eq(first["e_imp_mwh"], 3000, "record fields in the JSON")
    eq(first["kind"], "profile", "kind")
    states = [x for tp, x, r in sink.got if tp == "state"]
    eq(states[:1], [b"online"], "state online on connect")
    # Live appends go out as they come.
    _fill(log, 5)
    ob.notify()
    ok = await _until(lambda: cur.acked == 155, 5000)
    eq(ok, True, "new records follow")
    t.cancel()
    await sink.c.disconnect()
    eq(Cursor(d + "/cursor").acked >= 150, True, "cursor persisted")


@needs("host:mosquitto")
@heap("256k")
@timeout(60)
async def test_backlog_rate_limits_while_telemetry_keeps_flowing():
    d = scratch_dir()
    node = "ob2"
    log = RecordLog(d + "/log", 4096, 65536)
    cur = Cursor(d + "/cursor")
    _fill(log, 100)
    sink = await Sink("sink-ob2", "umeter/%s/#" % node).start()
    h, p = _broker()
    ob = Outbox(log, cur, node, rate=20.0, window=4)
    link = MqttLink(node, {"host": h, "port": p}, outbox=ob)
    t = asyncio.create_task(link.run())
    await _until(lambda: link.up, 5000)
    for k in range(10):
        await link.publish_live("telemetry", json.dumps({"node": node, "seq": k}))
        await asyncio.sleep_ms(100)
    # 1 s at 20 records/s plus a burst of 4: about 24 records, far from 100.
    n = cur.acked
    eq(10 <= n <= 40, True, "backlog drained at the configured rate (%d records in ~1 s)" % n)
    await _until(lambda: len(sink.seqs("telemetry")) >= 10, 2000)
    eq(sink.seqs("telemetry"), list(range(10)), "telemetry flowed during the drain")
    t.cancel()
    await sink.c.disconnect()


@needs("host:mosquitto")
@heap("256k")
@timeout(60)
async def test_last_will_marks_node_offline_when_link_dies():
    node = "ob3"
    sink = await Sink("sink-ob3", "umeter/%s/state" % node).start()
    h, p = _broker()
    link = MqttLink(node, {"host": h, "port": p, "keepalive": 5})
    t = asyncio.create_task(link.run())
    await _until(lambda: link.up, 5000)
    t.cancel()
    await link.client.abort("test")  # socket closed without DISCONNECT: the broker publishes the will
    await _until(lambda: len(sink.got) >= 2, 5000)
    eq([x for tp, x, r in sink.got], [b"online", b"offline"], "online then the will")
    await sink.c.disconnect()
