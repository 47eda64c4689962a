# The node: one asyncio supervisor wiring HAL -> meter -> telemetry -> MQTT from the board
# definition and the node's configuration.  Every task retries with bounded backoff; the
# supervisor is the only place that catches everything.
import asyncio
import sys
import time

from meternode import VERSION, hal
from meternode.config import check_board, check_config, load_json
from meternode.link import telemetry
from meternode.metrology.meter import Meter

_BACKOFF_MIN_MS = 500
_BACKOFF_MAX_MS = 30000
_UPLINK_MIN_FREE = 64 * 1024  # free heap the uplink service needs, loaded from source (measured)
_COMMANDS_FREE = 24 * 1024  # and this much more with authenticated commands (cmd_key)
# Free heap the gateway needs at its gate (the record log is up by then), measured by
# benchmarks/gateway.py (docs/gateway.md, "Memory"): the lowest free heap there with which the
# whole node runs with the gateway -- every meter read, MQTT up, no MemoryError -- bisected
# (2 KB steps) for 1 DL/T 645 meter, 8 of them, and 8 meters of 4 protocols.  By word size and
# loading (.mpy or frozen, source): (1 meter, each more meter, each more protocol) in bytes:
# 1 meter as measured plus one bisection step (runs pass and fail within a step of each
# other), a meter = (8 DL/T 645 - 1) / 7 (on the 32-bit .mpy run that came out below what a
# meter holds, 516 B, which is used), a protocol = the rest of the 8-meter need / 3.
_GATEWAY_NEED = {
    (64, False): (117984 + 2048, 1316, 15351),
    (64, True): (119488 + 2048, 1097, 11243),
    (32, False): (82080 + 2048, 875, 9212),
    (32, True): (83632 + 2048, 516, 9020),
}
_UPLINK_MODULES = (
    "meternode.store.records",
    "meternode.store.log",
    "meternode.store.cursor",
    "meternode.store.profile",
    "meternode.link.service",
)
_MQTT_MODULES = (  # only with config.mqtt: ~16 KB a metering-only or LoRa-only node saves
    "meternode.link.mqttpkt",
    "meternode.link.mqtt",
    "meternode.link.backoff",
    "meternode.link.uplink",
    "meternode.link.outbox",
)


class Node:
    def __init__(self, board, config):
        self.board = check_board(board)
        self.config = check_config(config)
        self.id = config["node_id"]
        self.hal = hal.make(board, config)
        if board.get("relay"):  # the load relay: entry checked, a GPIO relay on boards, and
            from meternode.hal.relay import attach, relay_control

            attach(self.hal, board)
            relay_control(self)  # an operator's remote disconnect held across the reboot
        self.meter = Meter(board, config.get("calibration"), config.get("metrology"))
        self.meter.energy.clock = self.hal.clock
        _timebase(self.meter, self.hal.sampler)
        self._gaps_seen = 0  # meter gaps already recorded as events
        self.pulses = None  # water/gas/S0 pulse meters (pulses.py), when the board has inputs
        if board.get("pulses"):
            from meternode.pulses import PulseService

            self.pulses = PulseService(board, config, self.hal.clock)
        self.checkpoint = _checkpointer(self.meter, config.get("checkpoint", {}), self.pulses)
        self.brownout = hal.make_brownout(board)  # board brown-out pin: checkpoint at once
        self.seq = 0
        self.mqtt = None
        self.last = None  # last telemetry dict published
        self.link_up = False
        # elements on the grid connection: telemetry totals add these only
        self.mains = [c["name"] for c in board["channels"][1:] if c.get("role", "main") == "main"]

    async def sampling(self):
        s = self.hal.sampler
        stamped = hasattr(s, "stamp_us")  # the sampler timebase (hal/__init__.py)
        s.start()
        try:
            while True:
                buf = await s.next_block()
                if stamped:
                    self.meter.feed(buf, s.block_sets, s.lost, s.stamp_us)
                else:
                    self.meter.feed(buf, s.block_sets)
                if self.checkpoint is not None:
                    bo = self.brownout is not None and self.brownout.tripped
                    self.checkpoint.save(self.hal.clock.ticks_ms(), bo)  # when due, or on brown-out
                    if bo:
                        self.brownout.tripped = False
        finally:
            s.stop()

    def _topic(self, leaf):
        return telemetry.topic(self.config["mqtt"].get("prefix", "umeter"), self.id, leaf)

    def _wifi(self):
        # Wi-Fi supervision on boards (config "wifi": {"ssid", "password"}): up/down/fail/reset
        # become log lines and WIFI events in the record log; bounded, jittered retries.
        wlan = hal.make_wlan(self.board, self.config)
        if wlan is None:
            return None
        from meternode.link.wifi import WifiSupervisor

        c = self.config["wifi"]
        codes = {"up": 1, "down": 2, "fail": 3, "reset": 4}

        def on_event(kind, detail):
            log("wifi %s %s" % (kind, detail))
            u = self.uplink_service
            if u is not None:
                from meternode.store import records

                u.event(records.EV_WIFI, codes.get(kind, 0), ("%s %s" % (kind, detail))[: records.EVENT_TEXT])

        self.wifi = WifiSupervisor(wlan, c.get("ssid", ""), c.get("password", ""), on_event)
        return self.wifi

    @property
    def uplink_service(self):
        # The uplink service if it has started (None before, or when it could not start);
        # unlike uplink(), never starts it.
        return getattr(self, "_uplink", None) or None

    def uplink(self):
        # The uplink service (record log, profile, outbox, MQTT link, commands), made on
        # first use; None when it cannot start (the node keeps measuring, the reason is logged).
        u = getattr(self, "_uplink", False)
        if u is False:
            import gc

            gc.collect()
            free = gc.mem_free() if hasattr(gc, "mem_free") else 1 << 30
            u = None
            need = _UPLINK_MIN_FREE + (_COMMANDS_FREE if self.config.get("cmd_key") else 0)
            if free < need:
                # A failed import would still leave its interned names behind: decide first.
                log("store-and-forward off: %d bytes free, it needs %d (raise the heap)" % (free, need))
            else:
                try:
                    # one module at a time with a collection between: on a source-loaded heap
                    # each compile then finds room (importing service.py alone pulls them all)
                    extra = ("meternode.link.commands", "meternode.link.actions") if self.config.get("cmd_key") else ()
                    if self.config.get("mqtt"):
                        extra += _MQTT_MODULES
                    for name in extra + _UPLINK_MODULES:
                        __import__(name)
                        gc.collect()
                    from meternode.link.service import UplinkService

                    u = UplinkService(self)
                    gc.collect()
                    log("store-and-forward on: %d bytes free before, %d after" % (free, gc.mem_free()))
                except Exception as e:
                    log("uplink not started: %s" % e)
            self._uplink = u
        return u

    async def link(self):
        u = self.uplink()
        if u is None or u.link is None:
            await self._plain_link()  # no record log (e.g. no RAM for it): live telemetry only
        t = asyncio.create_task(u.run())
        while True:
            await asyncio.sleep_ms(200)
            self.mqtt = u.link.client
            self.link_up = u.link.up
            if t.done():
                raise RuntimeError("uplink task ended")

    async def _plain_link(self):
        # Fallback link without store-and-forward: the retained state and QoS 0 telemetry.
        from meternode.link.backoff import Backoff
        from meternode.link.mqtt import MQTTClient

        m = self.config["mqtt"]
        backoff = Backoff(_BACKOFF_MIN_MS, _BACKOFF_MAX_MS)
        while True:
            c = MQTTClient(
                self.id,
                m["host"],
                m.get("port", 1883),
                keepalive=m.get("keepalive", 30),
                user=m.get("user"),
                password=m.get("password"),
                will=(self._topic("state"), b"offline", 1, True),
            )
            try:
                await c.connect()
                await c.publish(self._topic("state"), b"online", qos=1, retain=True)
                self.mqtt = c
                self.link_up = True
                backoff.reset()
                log("link up (no store): %s:%d" % (m["host"], m.get("port", 1883)))
                while c.connected:
                    await asyncio.sleep_ms(200)
                log("link down: %s" % c.error)
            except Exception as e:
                log("link error: %s" % e)
            self.mqtt = None
            self.link_up = False
            await c.disconnect()
            await asyncio.sleep_ms(backoff.next_ms())

    async def reporting(self):
        while True:
            # re-read every period: a `set telemetry_s` command applies at once
            await asyncio.sleep_ms(int(self.config.get("telemetry_s", 10.0) * 1000))
            try:
                await self._report()
            except Exception as e:  # e.g. MemoryError: skip this report, keep measuring
                log("report skipped: %r" % (e,))
                import gc

                gc.collect()

    async def _report(self):
        snap = self.meter.snapshot()
        if snap is None:
            return
        self.seq += 1
        now = self.hal.clock.time()
        pulses = self.pulses.readings() if self.pulses is not None else None
        r = getattr(self.hal, "relay", None)  # the board's relay, when it has one
        payload = telemetry.encode(
            self.id, self.seq, now, snap, self.hal.sampler.overruns, self.mains, pulses, r.on if r is not None else None
        )
        self.last = payload
        u = self.uplink()
        g = self.meter.gaps
        if u is not None and g != self._gaps_seen:  # the sampler lost sets: one event a period
            from meternode.store import records

            n = (g - self._gaps_seen) & 0x3FFFFFFF
            self._gaps_seen = g
            try:
                u.event(records.EV_SAMPLING_GAP, n, "%d sets lost in all" % self.meter.lost_sets)
            except Exception as e:
                log("gap event not recorded: %s" % e)
        if u is not None:
            try:
                await u.report(now, snap, payload)
            except Exception as e:  # e.g. MemoryError or a full flash: keep measuring
                log("report failed: %s" % e)
        elif self.mqtt is not None and self.mqtt.connected:
            try:
                await self.mqtt.publish(self._topic("telemetry"), payload, qos=0)
            except Exception as e:
                log("telemetry not sent: %s" % e)

    async def run(self):
        log("umeter node %s v%s on board %s" % (self.id, VERSION, self.board["name"]))
        tasks = [asyncio.create_task(self.sampling()), asyncio.create_task(self.reporting())]
        if self.pulses is not None:
            tasks.append(asyncio.create_task(self.pulses.run()))
        w = self._wifi()
        if w is not None:
            tasks.append(asyncio.create_task(w.run()))
        if self.config.get("mqtt"):
            tasks.append(asyncio.create_task(self.link()))
        if self.config.get("lora"):
            u = self.uplink()
            if u is not None and u.lora is not None:
                tasks.append(asyncio.create_task(u.run_lora()))
        if self.config.get("fleet") or self.config.get("policy"):
            try:  # only nodes with policies load the policy package; a bad one never stops metering
                from meternode.policy.service import PolicyService

                self.policy = PolicyService(self)
                tasks.append(asyncio.create_task(self.policy.run()))
            except Exception as e:
                log("policy service not started: %s" % e)
        if self.config.get("gateway"):
            tasks.extend(self._gateway())
        while True:
            await asyncio.sleep_ms(1000)
            for t in tasks:
                if t.done():
                    # A task ending is a bug; report it and stop so the watchdog/host restarts us.
                    raise RuntimeError("node task ended unexpectedly")


    def _gateway(self):
        # Downstream meter buses (gateway/, docs/gateway.md): loaded only when config has
        # "gateway" (RAM); a bad gateway configuration is logged and never stops metering.
        self.uplink()  # the record log first: readings are stored records
        import gc

        gc.collect()
        free = gc.mem_free() if hasattr(gc, "mem_free") else 1 << 30
        need = _gateway_need(self.config)
        if free < need:
            # decided before any import: a failed one would leave its interned names behind
            log("gateway off: %d bytes free, it needs %d (raise the heap, or ship .mpy / frozen)" % (free, need))
            return []
        try:
            from meternode.gateway.service import GatewayService

            self.gateway = GatewayService(self, log)
            gc.collect()
            log("gateway on: %d bytes free before, %d after" % (free, gc.mem_free()))
            return [asyncio.create_task(t) for t in self.gateway.tasks()]
        except Exception as e:
            log("gateway not started: %r" % (e,))
            return []


def _timebase(meter, s):
    # The rate the sampler really produces: the meter starts from it, and a board whose
    # timer cannot make board.adc.rate exactly is corrected here, with the reason logged.
    ra = getattr(s, "rate_actual", s.rate)
    if ra != s.rate:
        log(
            "sampler: board.adc.rate %d S/s runs at %.3f S/s (the timer cannot divide it exactly, "
            "%+.0f ppm): metering uses %.3f and measures it from then on" % (s.rate, ra, (ra / s.rate - 1) * 1e6, ra)
        )
    meter.use_rate(ra)


def _gateway_need(config):
    # Free heap the gateway of `config` needs at the gate (_GATEWAY_NEED): a node that loads
    # its modules compiled (.mpy files, or frozen: __file__ "meternode/...") needs less than
    # one compiling source; the slave counts as one more protocol.
    g = config.get("gateway") or {}
    meters = [m for m in g.get("meters") or () if isinstance(m, dict)]
    protos = []
    for m in meters:
        if m.get("protocol") not in protos:
            protos.append(m.get("protocol"))
    if g.get("slave"):
        protos.append("slave")
    f = globals().get("__file__", "")
    compiled = f.endswith(".mpy") or f.startswith("meternode/")
    one, meter, proto = _GATEWAY_NEED[(64 if sys.maxsize > 0x7FFFFFFF else 32, compiled)]
    return one + proto * (len(protos) - 1 if protos else 0) + meter * (len(meters) - 1 if meters else 0)


def _checkpointer(meter, c, pulses=None):
    # Power-fail-safe registers (store/checkpoint.py): restore the newest good checkpoint,
    # then save on energy delta / period.  config.checkpoint: dir, delta_mwh, period_s,
    # min_interval_s; {"dir": ""} turns it off.
    d = c.get("dir", "ckpt")
    if not d:
        return None
    from meternode.store.checkpoint import Checkpointer, CheckpointStore

    ck = Checkpointer(
        CheckpointStore(d),
        meter,
        c.get("delta_mwh", 50000),
        c.get("period_s", 3600),
        c.get("min_interval_s", 60),
        pulses.state if pulses is not None else None,
    )
    p = ck.restore()
    if p is not None:
        if pulses is not None:
            pulses.restore(p.get("extra"))
        log("registers restored from checkpoint %d" % ck.store.seq)
    elif ck.rejected:
        log(ck.rejected)
    return ck


def log(msg):
    print("[%d] %s" % (time.ticks_ms() if hasattr(time, "ticks_ms") else 0, msg))


def main(root="."):
    board = load_json(root + "/board.json")
    config = load_json(root + "/config.json")
    node = Node(board, config)
    try:
        asyncio.run(node.run())
    except KeyboardInterrupt:
        # Stopped by the host (Ctrl-C from a tool taking the REPL, `umeter sim` ending): keep
        # the registers, so the next start continues them instead of losing what moved since
        # the last periodic checkpoint.
        import gc

        # The unix port raises KeyboardInterrupt straight from its SIGINT handler
        # (MICROPY_ASYNC_KBD_INTR), possibly inside the garbage collector, which then stays
        # marked as collecting: every allocation fails with "heap is locked" (measured: 3 of
        # 45 sim-node stops under load, 0 of 90 with this collection). A collection ends that
        # state; on a board Ctrl-C arrives between bytecodes and this is only a collection.
        gc.collect()
        if node.checkpoint is not None:
            try:
                node.checkpoint.save(node.hal.clock.ticks_ms(), True)
                log("registers saved")
            except Exception as e:
                log("registers not saved: %s" % e)
        log("stopped")
        sys.exit(0)
