# The node: one asyncio supervisor wiring HAL -> meter -> telemetry -> MQTT from the board
# definition and the node's configuration.  Every task retries with bounded backoff; the
# supervisor is the only place that catches everything.
import asyncio
import sys
import time

from meternode import VERSION, hal
from meternode.config import check_board, check_config, load_json
from meternode.link import telemetry
from meternode.link.mqtt import MQTTClient
from meternode.metrology.meter import Meter

_BACKOFF_MIN_MS = 500
_BACKOFF_MAX_MS = 30000


class Node:
    def __init__(self, board, config):
        self.board = check_board(board)
        self.config = check_config(config)
        self.id = config["node_id"]
        self.hal = hal.make(board, config)
        self.meter = Meter(board, config.get("calibration"))
        self.seq = 0
        self.mqtt = None
        self.last = None  # last telemetry dict published
        self.link_up = False
        # elements on the grid connection: telemetry totals add these only
        self.mains = [c["name"] for c in board["channels"][1:] if c.get("role", "main") == "main"]

    async def sampling(self):
        s = self.hal.sampler
        s.start()
        try:
            while True:
                buf = await s.next_block()
                self.meter.feed(buf, s.block_sets)
        finally:
            s.stop()

    def _topic(self, leaf):
        return telemetry.topic(self.config["mqtt"].get("prefix", "umeter"), self.id, leaf)

    async def link(self):
        m = self.config["mqtt"]
        backoff = _BACKOFF_MIN_MS
        while True:
            c = MQTTClient(
                self.id,
                m["host"],
                m.get("port", 1883),
                keepalive=m.get("keepalive", 30),
                will=(self._topic("state"), b"offline", 1, True),
            )
            try:
                await c.connect()
                await c.publish(self._topic("state"), b"online", qos=1, retain=True)
                self.mqtt = c
                self.link_up = True
                backoff = _BACKOFF_MIN_MS
                log("link up: %s:%d" % (m["host"], m.get("port", 1883)))
                while c.connected:
                    await asyncio.sleep_ms(200)
                log("link down: %s" % c.error)
            except Exception as e:
                log("link error: %s (retry in %d ms)" % (e, backoff))
            self.mqtt = None
            self.link_up = False
            await c.disconnect()
            await asyncio.sleep_ms(backoff)
            backoff = min(_BACKOFF_MAX_MS, backoff * 2)

    async def reporting(self):
        period = int(self.config.get("telemetry_s", 10.0) * 1000)
        clock = self.hal.clock
        while True:
            await asyncio.sleep_ms(period)
            snap = self.meter.snapshot()
            if snap is None:
                continue
            self.seq += 1
            payload = telemetry.encode(
                self.id, self.seq, clock.time(), snap, self.hal.sampler.overruns, self.mains
            )
            self.last = payload
            c = self.mqtt
            if c is not None and c.connected:
                try:
                    await c.publish(self._topic("telemetry"), payload, qos=0)
                except Exception as e:
                    log("telemetry not sent: %s" % e)

    async def run(self):
        log("umeter node %s v%s on board %s" % (self.id, VERSION, self.board["name"]))
        tasks = [asyncio.create_task(self.sampling()), asyncio.create_task(self.reporting())]
        if self.config.get("mqtt"):
            tasks.append(asyncio.create_task(self.link()))
        while True:
            await asyncio.sleep_ms(1000)
            for t in tasks:
                if t.done():
                    # A task ending is a bug; report it and stop so the watchdog/host restarts us.
                    raise RuntimeError("node task ended unexpectedly")


def log(msg):
    print("[%d] %s" % (time.ticks_ms() if hasattr(time, "ticks_ms") else 0, msg))


def main(root="."):
    board = load_json(root + "/board.json")
    config = load_json(root + "/config.json")
    node = Node(board, config)
    try:
        asyncio.run(node.run())
    except KeyboardInterrupt:
        log("stopped")
        sys.exit(0)
