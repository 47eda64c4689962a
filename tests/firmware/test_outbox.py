# Outbox + MQTT link against a real Mosquitto, on the MicroPython unix port.
import asyncio
import json

from meternode.link.mqtt import MQTTClient
from meternode.link.outbox import Outbox
from meternode.link.uplink import MqttLink
from meternode.store import records
from meternode.store.log import Cursor, RecordLog
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
    link.client.drop("test")  # socket closed without DISCONNECT: the broker publishes the will
    await _until(lambda: len(sink.got) >= 2, 5000)
    eq([x for tp, x, r in sink.got], [b"online", b"offline"], "online then the will")
    await sink.c.disconnect()


class FakeClient:
    # Stands in for MQTTClient: records what the outbox sends, acks on demand.
    def __init__(self, session_present):
        self.connected = True
        self.session_present = session_present
        self.sent = []  # (seq, pid, dup)
        self.kinds = []  # the documents' kind
        self.on_ack = None
        self.error = None

    async def send_publish(self, topic, payload, qos=1, retain=False, pid=None, dup=False):
        d = json.loads(payload)
        self.sent.append((d["seq"], pid, dup))
        self.kinds.append(d["kind"])
        return pid

    def drop(self, why=None):
        self.error = why
        self.connected = False


async def _run_until(ob, c, cond, ms=2000):
    t = asyncio.create_task(ob.run_connection(c))
    await _until(cond, ms)
    c.connected = False
    ob.notify()
    await _until(lambda: t.done(), 1000)


@heap("256k")
async def test_in_flight_records_go_again_with_dup_and_same_pid_when_the_session_was_kept():
    d = scratch_dir()
    log = RecordLog(d + "/log", 4096, 65536)
    cur = Cursor(d + "/cursor")
    _fill(log, 6)
    ob = Outbox(log, cur, "dup1", rate=1000.0, window=4)
    c1 = FakeClient(False)
    await _run_until(ob, c1, lambda: len(c1.sent) == 4)
    eq([(s, dup) for s, p, dup in c1.sent], [(1, False), (2, False), (3, False), (4, False)], "window of 4")
    c1.on_ack(c1.sent[0][1])  # only record 1 acknowledged before the link died
    eq(cur.acked, 1, "cursor after one PUBACK")
    c2 = FakeClient(True)  # broker kept the session: resend 2..4 with DUP and their pids
    await _run_until(ob, c2, lambda: len(c2.sent) >= 4)
    eq(c2.sent[:3], [(s, p, True) for s, p, dup in c1.sent[1:4]], "DUP with the same packet ids")
    eq((c2.sent[3][0], c2.sent[3][2]), (5, False), "then new records")
    c3 = FakeClient(False)  # new session: everything from the cursor again, new ids, no DUP
    await _run_until(ob, c3, lambda: len(c3.sent) >= 4)
    eq([(s, dup) for s, p, dup in c3.sent[:4]], [(2, False), (3, False), (4, False), (5, False)], "fresh resend")
    eq(ob.stats()["dup"], 3, "DUP count")


@heap("256k")
async def test_missing_puback_drops_the_connection():
    d = scratch_dir()
    log = RecordLog(d + "/log", 4096, 65536)
    _fill(log, 2)
    ob = Outbox(log, Cursor(d + "/cursor"), "to1", rate=1000.0, window=4, ack_timeout_ms=200)
    c = FakeClient(False)
    t = asyncio.create_task(ob.run_connection(c))
    await _until(lambda: t.done(), 3000)
    eq(c.connected, False, "aborted")
    eq(str(c.error), "no PUBACK for record 1 in 200 ms", "reason")
    eq(ob.stats()["ack_timeouts"], 1, "counted")


@heap("256k")
async def test_consumer_resend_request_goes_back_but_not_past_what_is_held():
    d = scratch_dir()
    log = RecordLog(d + "/log", 4096, 65536)
    _fill(log, 5)
    cur = Cursor(d + "/cursor")
    ob = Outbox(log, cur, "rs1", rate=1000.0, window=8)
    c = FakeClient(False)
    c_acks = []

    async def go():
        await _run_until(ob, c, lambda: len(c.sent) >= 5)

    await go()
    for s, p, dup in c.sent:
        ob.on_ack(p)
    eq(cur.acked, 5, "all acknowledged")
    ob.resend_from(9)  # never sent: ignored
    ob.resend_from(3)
    c2 = FakeClient(False)
    await _run_until(ob, c2, lambda: len(c2.sent) >= 3)
    eq([s for s, p, dup in c2.sent], [3, 4, 5], "went back to 3")
    eq(ob.stats()["rewinds"], 1, "one rewind")
    eq(c_acks, [], "no stray acks")


@heap("256k")
async def test_seqs_the_log_lost_go_out_as_unknown_missing_so_the_consumer_sees_each_seq_once():
    # A corrupt record in the middle, and the newest records lost after they were sent (the
    # log then skips their seqs): every seq still reaches the consumer, in order.
    from meternode.store.log import HEADER

    d = scratch_dir()
    log = RecordLog(d + "/log", 8192, 65536)
    _fill(log, 12)
    for s in range(1, 13):
        log.mark_sent(s)
    log.close()
    seg = d + "/log/00000001.seg"
    with open(seg, "rb") as f:
        data = bytearray(f.read())
    size = len(data) // 12
    data[4 * size + HEADER + 1] ^= 0xFF  # record 5
    data = data[: 10 * size]  # records 11 and 12 gone
    with open(seg, "wb") as f:
        f.write(data)
    log = RecordLog(d + "/log", 8192, 65536)
    _fill(log, 2)  # 13 and 14
    ob = Outbox(log, Cursor(d + "/cursor"), "gap1", rate=1000.0, window=16)
    c = FakeClient(False)
    await _run_until(ob, c, lambda: len(c.sent) >= 14)
    eq([s for s, p, dup in c.sent], list(range(1, 15)), "every seq, once, in order")
    kinds = dict(zip([s for s, p, dup in c.sent], c.kinds))
    eq((kinds[5], kinds[11], kinds[12], kinds[13]), ("unknown", "unknown", "unknown", "profile"), "gaps named")
    eq(ob.stats()["missing"], 3, "counted")


class _FullCursor(Cursor):
    # A cursor whose file cannot be written (the flash is full).
    def flush(self):
        if self.acked != self.saved:
            raise OSError(28)


@needs("host:mosquitto")
@heap("256k")
@timeout(60)
async def test_a_cursor_that_cannot_be_saved_does_not_drop_the_link():
    d = scratch_dir()
    node = "ob-full"
    log = RecordLog(d + "/log", 4096, 65536)
    cur = _FullCursor(d + "/cursor", every=8)
    _fill(log, 40)
    sink = await Sink("sink-ob-full", "umeter/%s/#" % node).start()
    h, p = _broker()
    ob = Outbox(log, cur, node, rate=1000.0, window=8)
    link = MqttLink(node, {"host": h, "port": p, "backoff_min_ms": 50}, outbox=ob, log=lambda m: None)
    t = asyncio.create_task(link.run())
    ok = await _until(lambda: cur.acked == 40, 20000)
    await asyncio.sleep_ms(300)
    counts = (link.ups, link.downs)  # before the cancel, which closes the link (a down)
    t.cancel()
    await sink.c.disconnect()
    eq(ok, True, "every record acknowledged (cursor at %d)" % cur.acked)
    eq(counts, (1, 0), "one connection, never dropped")
    eq(ob.persist_errors > 0, True, "the failed saves are counted")
    eq(sink.seqs("profile"), list(range(1, 41)), "in order, once each")
