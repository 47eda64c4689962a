"""Store-and-forward under faults, against a real Mosquitto: the node (record log + outbox +
MQTT link on the MicroPython unix port) publishes while the broker is killed, the network
stalls/drops/cuts, or stays away for a simulated day; the SQLite consumer must end up with
every record exactly once, with no gap."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from umeter import unixport
from umeter.broker import Mosquitto, free_port, mosquitto_path
from umeter.consumer import Consumer
from umeter_hil.netfault import FaultProxy

pytestmark = pytest.mark.skipif(mosquitto_path() is None, reason="needs Mosquitto (apt-get install mosquitto)")

# The node side: record log + outbox + link, records appended on a simulated clock
# (timestamps t0 + step_s * seq), so a day of 15-minute profiles takes a second.
DRIVER = r"""
import asyncio, json, os, sys
from meternode.link.outbox import Outbox
from meternode.link.uplink import MqttLink
from meternode.store import records
from meternode.store.log import Cursor
from meternode.store.log import RecordLog

cfg = json.loads(open(sys.argv[1]).read())
d = cfg["dir"]
cur = Cursor(d + "/cursor", every=cfg.get("cursor_every", 8))
log = RecordLog(d + "/log", cfg.get("segment_bytes", 4096), cfg.get("max_bytes", 1 << 20), cur.acked)
ob = Outbox(log, cur, cfg["node"], rate=cfg.get("rate", 500.0), window=cfg.get("window", 8),
            ack_timeout_ms=cfg.get("ack_timeout_ms", 2000))
link = MqttLink(cfg["node"], cfg["mqtt"], outbox=ob, log=lambda s: print(s))

def status(produced):
    st = {"acked": cur.acked, "last": log.last_seq, "produced": produced, "ups": link.ups,
          "downs": link.downs, "up": link.up, "dropped": log.dropped, "first": log.first_seq(),
          "error": str(link.last_error or "")}
    st.update(ob.stats())
    with open(d + "/status.tmp", "w") as f:
        f.write(json.dumps(st))
    os.rename(d + "/status.tmp", d + "/status.json")

async def main():
    asyncio.create_task(link.run())
    n = cfg.get("n", 0)
    step = cfg.get("step_s", 900)
    t0 = cfg.get("t0", 1700000000)
    produced = 0
    k = 0
    hold = cfg.get("hold_at", 0)
    while True:
        if hold and produced == hold and not exists(d + "/go"):
            await asyncio.sleep_ms(20)  # the test lets the rest go when it is ready for it
        elif produced < n:
            s = log.last_seq + 1
            log.append(records.PROFILE, t0 + step * s,
                       records.profile(step, 1000 * s, 0, (2300, 2290, 2310), (1000, 900, 1100), (2300, 2000, 2500)))
            ob.notify()
            produced += 1
            await asyncio.sleep_ms(cfg.get("every_ms", 10))
        else:
            await asyncio.sleep_ms(50)
        k += 1
        if k % 5 == 0 or produced == n:
            status(produced)

def exists(p):
    try:
        os.stat(p)
        return True
    except OSError:
        return False

asyncio.run(main())
"""


class NodeProc:
    """One driver process on the unix port."""

    def __init__(self, tmp: Path, node: str, host: str, port: int, **cfg) -> None:
        self.dir = tmp / node
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "driver.py").write_text(DRIVER)
        mqtt = {"host": host, "port": port, "keepalive": 5, "backoff_min_ms": 100, "backoff_max_ms": 1000}
        mqtt.update(cfg.pop("mqtt", {}))
        c = {"dir": str(self.dir), "node": node, "mqtt": mqtt, **cfg}
        (self.dir / "cfg.json").write_text(json.dumps(c))
        argv = unixport.command(self.dir / "driver.py", str(self.dir / "cfg.json"), heap="256k")
        env = dict(os.environ, MICROPYPATH=unixport.micropypath())
        self.out = open(self.dir / "console.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdout=self.out, stderr=subprocess.STDOUT, env=env, cwd=self.dir)

    def status(self) -> dict:
        try:
            return json.loads((self.dir / "status.json").read_text())
        except (OSError, ValueError):
            return {}

    def wait(self, cond, timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            if st and cond(st):
                return st
            if self.proc.poll() is not None:
                raise AssertionError(f"node died while waiting for {what}:\n{self.console()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; status {st}\n{self.console()[-2000:]}")
            time.sleep(0.05)

    def console(self) -> str:
        self.out.flush()
        return (self.dir / "console.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.out.close()


def _expect_exactly_once(c: Consumer, node: str, first: int, last: int) -> None:
    seqs = c.seqs(node)
    assert seqs == list(range(first, last + 1)), f"records {seqs[:5]}..{seqs[-5:]} not {first}..{last} once each"


def test_broker_killed_and_restarted_while_nodes_publish(tmp_path):
    port = free_port()
    broker = Mosquitto(port=port).start()
    nodes = []
    try:
        with Consumer(tmp_path / "c.sqlite", "127.0.0.1", port) as c:
            nodes = [NodeProc(tmp_path, f"kill{k}", "127.0.0.1", port, n=200, every_ms=10) for k in (1, 2)]
            for n in nodes:
                n.wait(lambda s: s["acked"] >= 50, 20, "50 records acknowledged")
            broker.proc.kill()  # SIGKILL: no goodbye, in-flight state gone
            broker.proc.wait()
            for n in nodes:
                n.wait(lambda s: not s["up"], 15, "node notices the broker is gone")
            time.sleep(0.5)
            broker = Mosquitto(port=port).start()
            for n in nodes:
                n.wait(lambda s: s["produced"] == 200 and s["acked"] == 200, 40, "backlog drained after restart")
            for name in ("kill1", "kill2"):
                c.wait_for(lambda name=name: c.count(name) == 200, 20, f"200 records of {name} at the consumer")
                _expect_exactly_once(c, name, 1, 200)
            assert all(n.status()["ups"] >= 2 for n in nodes)
    finally:
        for n in nodes:
            n.stop()
        broker.stop()


def test_proxy_stall_drop_and_cut_lose_nothing(tmp_path):
    with (
        Mosquitto() as broker,
        FaultProxy(broker.host, broker.port) as px,
        Consumer(tmp_path / "c.sqlite", broker.host, broker.port) as c,
    ):
        node = NodeProc(tmp_path, "fault1", px.host, px.port, n=300, every_ms=10, ack_timeout_ms=1000)
        try:
            node.wait(lambda s: s["acked"] >= 40, 20, "first records through the proxy")
            px.stall()
            node.wait(lambda s: s["ack_timeouts"] >= 1, 15, "a PUBACK timeout while stalled")
            px.resume()
            node.wait(lambda s: s["up"] and s["acked"] >= s["produced"] - 20, 20, "recovered from the stall")
            px.drop()
            node.wait(lambda s: not s["up"], 15, "link down while packets vanish")
            px.resume()
            node.wait(lambda s: s["up"], 15, "link back after the drop")
            assert px.cut() >= 1
            node.wait(lambda s: s["produced"] == 300 and s["acked"] == 300, 40, "everything acknowledged")
            c.wait_for(lambda: c.count("fault1") == 300, 20, "300 records at the consumer")
            _expect_exactly_once(c, "fault1", 1, 300)
            st = node.status()
            assert st["ups"] >= 3 and st["ack_timeouts"] >= 1, st
            assert px.cuts >= 1 and px.dropped > 0
        finally:
            node.stop()


def test_day_long_outage_backlog_drains_at_the_configured_rate(tmp_path):
    with Mosquitto() as broker, FaultProxy(broker.host, broker.port) as px:
        px.refuse()
        with Consumer(tmp_path / "c.sqlite", broker.host, broker.port) as c:
            # 96 quarter-hour profiles = 24 h of simulated time, all while the broker is away.
            node = NodeProc(tmp_path, "day1", px.host, px.port, n=96, every_ms=2, rate=50.0, window=4)
            try:
                st = node.wait(lambda s: s["produced"] == 96, 20, "a day of profiles stored offline")
                assert st["acked"] == 0 and st["backlog"] == 96 and not st["up"], st
                px.resume()
                node.wait(lambda s: s["acked"] == 96, 30, "backlog drained")
                c.wait_for(lambda: c.count("day1") == 96, 10, "96 records at the consumer")
                _expect_exactly_once(c, "day1", 1, 96)
                recs = c.records("day1")
                assert recs[-1]["ts"] - recs[0]["ts"] == 95 * 900, "a day of timestamps"
                assert [r["e_imp_mwh"] for r in recs] == [1000 * s for s in range(1, 97)]
            finally:
                node.stop()


def test_flash_full_drops_oldest_segment_counts_it_and_keeps_recording(tmp_path):
    with Mosquitto() as broker, FaultProxy(broker.host, broker.port) as px:
        px.refuse()
        with Consumer(tmp_path / "c.sqlite", broker.host, broker.port) as c:
            node = NodeProc(tmp_path, "full1", px.host, px.port, n=400, every_ms=1, segment_bytes=2048, max_bytes=8192)
            try:
                st = node.wait(lambda s: s["produced"] == 400, 30, "400 records appended")
                assert st["last"] == 400, "the node kept recording"
                assert st["dropped"] > 0, "oldest segments dropped"
                held = st["last"] - st["first"] + 1
                assert st["dropped"] + held == 400, st
                px.resume()
                node.wait(lambda s: s["acked"] == 400, 30, "what is held drained")
                c.wait_for(lambda: c.count("full1") == held, 10, "held records at the consumer")
                _expect_exactly_once(c, "full1", st["first"], 400)
            finally:
                node.stop()


def _subscribed(c: Consumer, host: str, port: int) -> None:
    """Returns once `c` is surely subscribed: a message published now reaches it (its start()
    only waits a fixed 0.1 s for the SUBACK)."""
    import paho.mqtt.client as mqtt

    p = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    p.connect(host, port)
    p.loop_start()
    try:
        deadline = time.monotonic() + 10
        while c.state("_probe") != "x":
            assert time.monotonic() < deadline, "the consumer never got a message on its subscriptions"
            p.publish("umeter/_probe/state", b"x", qos=1).wait_for_publish(5)
            time.sleep(0.05)
    finally:
        p.loop_stop()
        p.disconnect()


def test_consumer_restarted_later_gets_what_it_missed(tmp_path):
    # The consumer is away while the node publishes (the broker keeps nothing for it); when
    # it comes back on the same database it asks the node to go back to what it lacks.
    # Deterministic phases: the first consumer is subscribed before the node publishes and
    # sees exactly records 1-30; the node holds record 31 back until that consumer is gone.
    # (Starting the node first raced its first records against the consumer's subscription;
    # records published before any consumer are the next test's case.)
    with Mosquitto() as broker:
        db = tmp_path / "c.sqlite"
        node = None
        try:
            with Consumer(db, broker.host, broker.port) as c:
                _subscribed(c, broker.host, broker.port)
                node = NodeProc(tmp_path, "late1", broker.host, broker.port, n=120, every_ms=10, hold_at=30)
                c.wait_for(lambda: c.count("late1") == 30, 20, "the first 30 records")
                node.wait(lambda s: s["acked"] == 30, 10, "the first 30 acknowledged")
            (node.dir / "go").touch()
            node.wait(lambda s: s["produced"] == 120 and s["acked"] == 120, 30, "all acknowledged by the broker")
            with Consumer(db) as c:
                assert c.count("late1") < 120, "the consumer was away while the node published some"
            with Consumer(db, broker.host, broker.port) as c:
                c.wait_for(lambda: c.count("late1") == 120, 20, "the missed records after the restart")
                _expect_exactly_once(c, "late1", 1, 120)
                assert c.counters()["resend_requests"] >= 1
                node.wait(lambda s: s["rewinds"] >= 1, 5, "the node's rewind in its status file (written every 0.25 s)")
        finally:
            if node is not None:
                node.stop()


def test_consumer_started_after_the_node_published_gets_the_records_before_too(tmp_path):
    # The node publishes records 1-20 before any consumer exists; each record says the node
    # still holds everything from 1 (`held`).  A consumer started then gets 1-120: it starts a
    # node it has never seen from what the node holds, not from the first record it sees.
    with Mosquitto() as broker:
        node = NodeProc(tmp_path, "early1", broker.host, broker.port, n=120, every_ms=10, hold_at=20)
        try:
            node.wait(lambda s: s["acked"] == 20, 20, "20 records acknowledged with no consumer")
            with Consumer(tmp_path / "c.sqlite", broker.host, broker.port) as c:
                _subscribed(c, broker.host, broker.port)
                (node.dir / "go").touch()
                node.wait(lambda s: s["acked"] == 120, 30, "all acknowledged")
                c.wait_for(lambda: c.count("early1") == 120, 20, "records 1-120 at the consumer")
                _expect_exactly_once(c, "early1", 1, 120)
        finally:
            node.stop()
