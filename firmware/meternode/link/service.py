# The node's uplink service: wires the record log, the profile recorder, the outbox, the MQTT
# link and the command handler from the node's configuration.  node.py calls `run()` (the
# link task) and `report()` (every telemetry period).
#
# config keys (all optional beside mqtt.host):
#   store: {path: "store", segment_bytes: 16384, max_bytes: 262144}
#   profile_s: 900            load-profile period
#   cmd_key: "<hex>"          node key for command HMACs (commands are off without it)
#   mqtt: see uplink.check_mqtt
#   lora: {port, deveui, appeui, appkey, region: EU868, dr: 0, fport: 2, confirmed: true,
#          daily_budget_ms: 30000, mode: "fallback" | "always"}  (see check_lora)
import json
import sys

try:
    from asyncio import sleep_ms as asyncio_sleep_ms
except ImportError:  # CPython
    import asyncio as _aio

    def asyncio_sleep_ms(ms):
        return _aio.sleep(ms / 1000)


from meternode import VERSION
from meternode.config import ConfigError, need
from meternode.link import telemetry
from meternode.link.outbox import Outbox
from meternode.link.uplink import MqttLink
from meternode.store import records
from meternode.store.cursor import Cursor
from meternode.store.log import RecordLog
from meternode.store.profile import ProfileRecorder


def check_store(c):
    s = need(c, "store", dict, "config", default={})
    need(s, "path", str, "config.store", default="store")
    need(s, "segment_bytes", int, "config.store", default=16384, lo=1024, hi=1 << 20)
    need(s, "max_bytes", int, "config.store", default=262144, lo=2048, hi=1 << 30)
    need(c, "profile_s", int, "config", default=900, lo=60, hi=86400)
    if "cmd_key" in c:
        k = need(c, "cmd_key", str, "config")
        if len(k) < 32 or len(k) % 2:
            raise ConfigError("config.cmd_key must be at least 32 hex digits, an even number")
    return s


def check_lora(c):
    lo = need(c, "lora", dict, "config", default={})
    if lo:
        w = "config.lora"
        need(lo, "port", str, w, default="")
        for k, n in (("deveui", 16), ("appeui", 16), ("appkey", 32)):
            v = need(lo, k, str, w)
            if len(v) != n:
                raise ConfigError("%s.%s must be %d hex digits" % (w, k, n))
        need(lo, "region", str, w, default="EU868")
        need(lo, "dr", int, w, default=0, lo=0, hi=5)
        need(lo, "fport", int, w, default=2, lo=1, hi=223)
        need(lo, "confirmed", bool, w, default=True)
        need(lo, "daily_budget_ms", int, w, default=30000, lo=1000, hi=86400000)
        if need(lo, "mode", str, w, default="fallback") not in ("fallback", "always"):
            raise ConfigError("config.lora.mode must be fallback or always, not %r" % lo["mode"])
    return lo


class UplinkService:
    def __init__(self, node, reason="start"):
        self.node = node
        cfg = node.config
        s = check_store(cfg)
        path = s.get("path", "store")
        self.cursor = Cursor(path + ".cursor")
        try:
            self.log = RecordLog(path, s.get("segment_bytes", 16384), s.get("max_bytes", 262144), self.cursor.acked)
        except ValueError as e:
            raise ConfigError(str(e))
        self.log.on_drop = self._dropped
        self.clock = node.hal.clock
        m = cfg.get("mqtt") or {}
        self.outbox = None
        self.link = None
        if m:
            self.outbox = Outbox(
                self.log,
                self.cursor,
                node.id,
                m.get("prefix", "umeter"),
                m.get("backlog_rate", 20.0),
                m.get("window", 8),
                m.get("ack_timeout_ms", 10000),
            )
        self.profile = ProfileRecorder(self.log, cfg.get("profile_s", 900), getattr(node, "mains", None), self._wake)
        self.commands = None
        if cfg.get("cmd_key"):
            from meternode.link.commands import Commands  # only nodes with a key pay for it

            self.commands = Commands(node.id, cfg["cmd_key"], path + ".ctr", self.clock, self, self.event)
        if m:
            self.link = MqttLink(
                node.id,
                m,
                self.outbox,
                self._on_command if self.commands else None,
                self._describe,
            )
        self.lora = None
        if check_lora(cfg):
            self.lora = self._make_lora(cfg["lora"], path)
        st = self.log.stats()
        if st["corrupt"] or st["torn"]:
            self.event(records.EV_LOG_CORRUPT, st["corrupt"], "torn %d" % st["torn"])
        self.event(records.EV_REBOOT, 0, reason)
        self._results = []

    def _make_lora(self, lo, path):
        import asyncio

        from meternode.link.airtime import Governor
        from meternode.link.loralink import LoRaLink
        from meternode.link.lorawan import LoRaModem

        uart = getattr(self.node.hal, "lora_uart", None)
        if uart is not None:  # boards: the HAL's UART as a stream
            f = uart(lo)
        elif lo.get("port"):  # unix port: a pty or tty device
            f = open(lo["port"], "r+b")
        else:
            raise ConfigError("config.lora.port is missing and this HAL has no LoRa UART")
        modem = LoRaModem(asyncio.StreamReader(f), asyncio.StreamWriter(f, {}))
        try:
            gov = Governor(lo.get("region", "EU868"), lo.get("dr", 0), lo.get("daily_budget_ms", 30000))
        except ValueError as e:
            raise ConfigError(str(e))
        ll = LoRaLink(
            modem, self.log, Cursor(path + ".lora"), gov, self.clock, lo.get("fport", 2), lo.get("confirmed", True)
        )
        if lo.get("mode", "fallback") == "fallback" and self.link is not None:
            ll.floor = lambda: self.cursor.acked  # skip what MQTT delivered
            ll.active = lambda: not self.link.up  # and only speak while MQTT is down
        return ll

    async def run_lora(self):
        # The LoRaWAN task: configure the modem, then drain records (LoRaLink retries forever).
        lo = self.node.config["lora"]
        m = self.lora.modem
        m.start()
        while True:
            try:
                await m.configure(lo["deveui"], lo["appeui"], lo["appkey"], lo.get("region", "EU868"), lo.get("dr", 0))
                break
            except Exception as e:
                self.link_log("lora modem not configured: %s" % e)
                await asyncio_sleep_ms(5000)
        await self.lora.run()

    def link_log(self, msg):
        print(msg)

    # -- records ---------------------------------------------------------------------------
    def _wake(self, seq=0):
        if self.outbox is not None:
            self.outbox.notify()

    def event(self, code, arg=0, text=""):
        seq = self.log.append(records.EVENT, int(self.clock.time()), records.event(code, arg, text))
        self._wake()
        return seq

    def _dropped(self, n, first, last):
        # Called inside an append: the drop event is appended right after it.
        self._drop_note = (n, first, last)

    async def report(self, ts, snap, payload):
        # Every telemetry period: profile accounting, then live telemetry (QoS 0).
        self.profile.add(ts, snap)
        note = getattr(self, "_drop_note", None)
        if note:
            self._drop_note = None
            self.event(records.EV_LOG_DROPPED, note[0], "seq %d-%d" % (note[1], note[2]))
        if self.link is not None:
            await self.link.publish_live("telemetry", payload)
        if self.lora is not None:
            from meternode.link import loracodec

            try:
                self.lora.telemetry(loracodec.encode_telemetry(self.node.seq, ts, json.loads(payload)))
            except ValueError:
                pass
        await self._flush_results()

    # -- MQTT ------------------------------------------------------------------------------
    def _describe(self):
        return {"version": VERSION, "model": self.node.board.get("name", "meter node"), "sensors": None}

    def _on_command(self, payload):
        self._results.append(json.dumps(self.commands.handle(payload)))

    async def _flush_results(self):
        while self._results and self.link is not None and self.link.up:
            if not await self.link.publish_result(self._results[0]):
                return
            self._results.pop(0)
        if self.commands is not None and self.commands.reboot_pending and not self._results:
            self.reboot()

    async def run(self):
        if self.link is None:
            raise ConfigError("config.mqtt is missing: no uplink configured")
        await self.link.run()

    def stats(self):
        d = {"log": self.log.stats(), "cursor": self.cursor.acked}
        if self.outbox is not None:
            d["outbox"] = self.outbox.stats()
        if self.link is not None:
            d["link"] = self.link.stats()
        return d

    # -- command actions (Commands calls these) --------------------------------------------
    def read_now(self):
        snap = self.node.meter.snapshot()
        if snap is None:
            return json.loads(self.node.last) if self.node.last else {}
        return json.loads(
            telemetry.encode(self.node.id, 0, self.clock.time(), snap, 0, getattr(self.node, "mains", None))
        )

    def _where(self, key):
        d = self.node.config
        parts = key.split(".")
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        return d, parts[-1]

    def get_config(self, key):
        d, k = self._where(key)
        return d.get(k)

    def set_config(self, key, value):
        if key == "profile_s" and 86400 % value:
            raise ValueError("profile_s = %d does not divide a day" % value)
        d, k = self._where(key)
        d[k] = value
        if key == "mqtt.backlog_rate" and self.outbox is not None:
            self.outbox.rate = value
        if key == "profile_s":
            self.profile.period_s = value

    def relay(self, on):
        r = getattr(self.node.hal, "relay", None)
        if r is None:
            return False
        r.set(on)
        return True

    def set_time(self, epoch):
        self.clock.set_time(epoch)

    def reboot(self):
        self.cursor.flush()
        self.log.close()
        try:
            import machine

            machine.reset()
        except ImportError:
            sys.exit(3)  # unix port: the host (umeter sim) restarts the process
