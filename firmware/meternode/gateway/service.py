# The gateway service: buses and meters from the board's "buses" and config["gateway"],
# one poller task per bus, the slave task when the node answers as a meter, and the sink
# that turns each poll into a READING record (store-and-forward, exactly once, like every
# record), a retained state on <prefix>/<node>/meter/<meter-id> with Home Assistant
# discovery per meter, METER events (silent / back / attention) and daily/monthly freezes
# of every meter's last reading.  node.py loads this module only when config has "gateway".
#
# config["gateway"] = {
#   "buses":  {"<name>": {overrides of the board's bus, e.g. "port" on the sim board}},
#   "meters": [{"bus", "protocol": dlt645|cjt188|mbus|modbus, "interval_s": 60, ...}],
#   "timeout_ms": 500, "retries": 2, "backoff_max_s": 3600, "silent_after": 2,
#   "slave": {"bus", "address": "12 digits", "modbus_unit": 1..247 (optional)}}
# Meter keys per protocol: docs/gateway.md.
import asyncio
import gc

from meternode import _nop, ticks
from meternode.config import ConfigError, need
from meternode.gateway import drivers, poller
from meternode.gateway import reading as R
from meternode.hal import bus as hbus
from meternode.store import records
from meternode.ticks import CLOCK_SET, floor
from meternode.ticks import month as _month
from meternode.ticks import sleep_ms as _sleep_ms

_MAX_OPS = 4  # valve commands waiting per bus

def check(c):
    w = "config.gateway"
    g = need(c, "gateway", dict, "config")
    need(g, "buses", dict, w, default={})
    meters = need(g, "meters", list, w, default=[])
    need(g, "timeout_ms", int, w, default=500, lo=20, hi=10000)
    need(g, "retries", int, w, default=2, lo=0, hi=10)
    need(g, "backoff_max_s", int, w, default=3600, lo=1, hi=86400)
    need(g, "silent_after", int, w, default=2, lo=1, hi=100)
    for k, m in enumerate(meters):
        mw = "%s.meters[%d]" % (w, k)
        if not isinstance(m, dict):
            raise ConfigError("%s must be an object" % mw)
        need(m, "bus", str, mw)
        need(m, "interval_s", float, mw, default=60.0, lo=0.1, hi=86400.0)
    s = need(g, "slave", dict, w, default={})
    if s:
        need(s, "bus", str, w + ".slave")
        a = need(s, "address", str, w + ".slave")
        if len(a) != 12 or any(ch not in "0123456789" for ch in a):
            raise ConfigError("config.gateway.slave.address must be 12 decimal digits, not %r" % a)
        if "modbus_unit" in s:
            need(s, "modbus_unit", int, w + ".slave", lo=1, hi=247)
    return g


class GatewayService:
    def __init__(self, node, log=None):
        self.node = node
        self.beat = _nop  # the supervisor's progress report (supervisor.py), once per loop
        self.log = log or print
        g = check(node.config)
        self.g = g
        self.clock = node.hal.clock
        board_buses = node.board.get("buses") or {}
        buses = {}
        self.problems = []  # misconfigured meters, reported once, skipped

        def bus(name):
            b = buses.get(name)
            if b is None:
                if name not in board_buses:
                    have = ", ".join(board_buses) or "none"
                    raise ConfigError("bus %r is not in board.buses (have: %s)" % (name, have))
                spec = dict(board_buses[name])
                spec.update((g.get("buses") or {}).get(name) or {})
                b = buses[name] = hbus.make(name, hbus.check(name, spec))
            return b

        per_bus = {}
        for k, m in enumerate(g.get("meters", [])):
            w = "config.gateway.meters[%d]" % k
            gc.collect()  # a codec compiled from source peaks well above what it keeps
            try:
                d = drivers.make(m, w)
                bus(m["bus"])
            except (ConfigError, ValueError, OSError) as e:
                self.problems.append(str(e))
                self.log("gateway: %s (meter skipped)" % e)
                continue
            per_bus.setdefault(m["bus"], []).append(poller.Meter(d, int(m.get("interval_s", 60.0) * 1000), k))
        self.pollers = [
            poller.Poller(buses[name], ms, self, g.get("timeout_ms", 500), g.get("retries", 2),
                          g.get("backoff_max_s", 3600), g.get("silent_after", 2))
            for name, ms in per_bus.items()
        ]
        self.slave = None
        if g.get("slave"):
            from meternode.gateway.slave import Slave

            self.slave = Slave(node, bus(g["slave"]["bus"]), g["slave"], self._event)
        self._states = {}  # meter id -> state JSON waiting to be published
        self._announced = []
        self._ups = -1
        self._day = None
        self._month = None
        self.readings = 0
        self._first_problem_event = bool(self.problems)
        self._done = {}  # valve command tag -> callback(result)

    def meters(self):
        for p in self.pollers:
            for m in p.meters:
                yield m

    def tasks(self):
        t = [p.run() for p in self.pollers]
        t.append(self.publisher())
        if self.slave is not None:
            t.append(self.slave.run())
        return t

    def starts(self):
        # (name, start(watch) -> coroutine, stall ms) for the node's supervisor (supervisor.py):
        # the same tasks as tasks(), started again whenever one ends, fails or stalls; each
        # loop reports progress through its `beat`.
        out = [("bus%d" % k, _starter(p, p.run), 120000) for k, p in enumerate(self.pollers) if p.meters]
        out.append(("gateway", _starter(self, self.publisher), 300000))
        if self.slave is not None:
            out.append(("bus slave", _starter(self.slave, self.slave.run), 60000))
        return out

    # -- the sink the pollers call ---------------------------------------------------------------
    def _uplink(self):
        return self.node.uplink() if hasattr(self.node, "uplink") else None

    def _append(self, kind, ts, payload):
        u = self._uplink()
        if u is None:
            return 0
        seq = u.log.append(kind, ts, payload)
        if u.outbox is not None:
            u.outbox.notify()
        return seq

    def _event(self, code, arg, text):
        u = self._uplink()
        if u is not None:
            u.event(code, arg, text[: records.EVENT_TEXT])

    def reading(self, m, r):
        # A good poll of meter m (m.last is still its reading before this one).
        ts = int(self.clock.time())
        self._freeze(ts)
        self._append(records.READING, ts, R.pack(m.id, r))
        self.readings += 1
        self._state(m, r, ts, False)
        self._profile_totals(ts, m, r)

    def silent(self, m, why):
        self.log("gateway: meter %s silent: %s" % (m.id, why))
        self._event(records.EV_METER, 1, "silent " + m.id)
        if m.have:  # its last good reading, marked stale; nothing new is invented
            self._state(m, m.last, int(self.clock.time()), True)

    def back(self, m):
        self.log("gateway: meter %s answers again" % m.id)
        self._event(records.EV_METER, 2, "back " + m.id)

    def note(self, meter_id, text):
        self.log("gateway: meter %s: %s" % (meter_id, text))
        self._event(records.EV_METER, 3, ("%s %s" % (meter_id, text)))

    def _state(self, m, r, ts, stale):
        self._states[m.id] = R.state_json(m.id, r, ts, stale)

    def _quantities(self, meter_id):
        # [(name, unit, device class, state class)] of a meter's kept reading, for its Home
        # Assistant discovery (made when announced: nothing kept per meter for it).
        try:
            r = self.find(meter_id)[1].last
        except KeyError:
            return ()
        out = []
        for i in range(r.n):
            code, name, dclass, sclass = R.qinfo(r.q[i])
            out.append((name, R.UNITS[r.u[i]], dclass, sclass))
        return out

    def _profile_totals(self, ts, new_m, new_r):
        # The node's DAILY/MONTHLY freezes carry water and gas in litres: the sum over the
        # water and gas meters read here (new_r is new_m's newest reading).  After a midnight
        # the sums wait until the profile recorder has made that day's freeze (at the node's
        # first report of the day), so it carries the last readings before midnight, like
        # the gateway's own freezes.
        u = self._uplink()
        prof = getattr(u, "profile", None) if u is not None else None
        if prof is None:
            return
        pday = getattr(prof, "_day", None)
        if pday is not None and (ts + ticks.LOCAL_S) // 86400 > pday:
            return
        water = gas = 0
        for m in self.meters():
            last = new_r if m is new_m else m.last if m.have else None
            if last is None:
                continue
            for q in (R.Q_WATER, R.Q_GAS):
                x = last.get(q)
                if x is None:
                    continue
                v, e, unit = x
                e += 3 if unit == R.U_M3 else 0  # m³ -> L
                litres = v * 10**e if e >= 0 else v // 10 ** (-e)
                if q == R.Q_WATER:
                    water += litres
                else:
                    gas += litres
        prof.water_l = water
        prof.gas_l = gas

    def _freeze(self, ts):
        # At each midnight (billing time, ticks.floor: the node's local standard time) every
        # meter's last reading before it is frozen (FROZEN_DAY,
        # and FROZEN_MONTH on the first of a month), STALE too when the meter is silent.
        # Never from a clock that was not set, and never a day twice (a clock set back
        # waits for the newest day it has seen to pass).
        if ts < CLOCK_SET:
            self._day = None
            return
        day = (ts + ticks.LOCAL_S) // 86400  # the local date: moved billing time freezes no day twice
        month = _month(ts)
        if self._day is None:
            self._day, self._month = day, month
            return
        if day <= self._day:
            return
        flags = R.FROZEN_DAY | (R.FROZEN_MONTH if month != self._month else 0)
        self._day, self._month = day, month
        day = floor(ts, 86400)  # the freeze's time: that local midnight, UTC
        for m in self.meters():
            if m.have:
                self._append(records.READING, day, R.pack(m.id, m.last, flags | (R.STALE if m.silent else 0)))

    # -- MQTT ---------------------------------------------------------------------------------
    async def publisher(self):
        # Publishes each meter's newest state (retained) and, once per connection, its Home
        # Assistant discovery; also freezes at midnight when every meter is silent.
        while True:
            self.beat()
            await _sleep_ms(500)
            try:
                self._freeze(int(self.clock.time()))
                if self._first_problem_event:
                    self._first_problem_event = False
                    for p in self.problems:
                        self._event(records.EV_METER, 3, p)
                await self._publish()
            except Exception as e:  # never let MQTT trouble stop the pollers
                self.log("gateway: publish failed: %r" % (e,))

    async def _publish(self):
        u = self.node.uplink_service if hasattr(self.node, "uplink_service") else None
        link = getattr(u, "link", None) if u is not None else None
        c = getattr(link, "client", None) if link is not None else None
        if c is None or not link.up or not self._states:
            return
        if link.ups != self._ups:
            self._ups = link.ups
            self._announced = []
        m = self.node.config.get("mqtt") or {}
        prefix = m.get("prefix", "umeter")
        discovery = m.get("discovery", True)
        for mid in list(self._states):
            payload = self._states.pop(mid)
            if discovery and mid not in self._announced:
                from meternode.gateway import discovery as ha

                for t, p in ha.meter_configs(prefix, self.node.id, mid, self._quantities(mid)):
                    await c.publish(t, p, qos=1, retain=True)
                self._announced.append(mid)
            await c.publish("%s/%s/meter/%s" % (prefix, self.node.id, mid), payload, qos=0, retain=True)

    # -- operations --------------------------------------------------------------------------------
    def find(self, meter_id):
        for p in self.pollers:
            for m in p.meters:
                if m.id == meter_id:
                    return p, m
        raise KeyError("no meter %s" % meter_id)

    def valve_refusal(self, meter_id, close):
        # Why a valve command for `meter_id` cannot be carried out, or None (commands.py asks
        # before it accepts one).
        try:
            p, m = self.find(meter_id)
        except KeyError:
            have = [m.id for m in self.meters() if hasattr(m.driver, "valve")]
            return "no meter %s on this node (meters with a valve: %s)" % (meter_id, ", ".join(have) or "none")
        if not hasattr(m.driver, "valve"):
            return "meter %s has no valve (CJ/T 188 water, gas and heat meters have one)" % meter_id
        if not m.driver.valve_control:
            return "meter %s: valve_control is not enabled in its config" % meter_id
        if len(p.ops) >= _MAX_OPS:
            return "bus %s already has %d valve commands waiting" % (p.bus.name, len(p.ops))
        return None

    def valve(self, meter_id, close, tag, done=None):
        # Queues a valve command on the meter's bus (its poller sends it between polls);
        # done(result dict) is called when the meter confirmed or not.  valve_refusal() first.
        p, m = self.find(meter_id)
        self._done[tag] = done
        p.ops.append((m, close, tag))

    def valve_done(self, m, close, tag, why):
        # From the poller: an EV_VALVE event, and the command's result to whoever asked.
        want = "closed" if close else "open"
        if why:
            self.log("gateway: valve of %s not %s: %s" % (m.id, want, why))
            self._event(records.EV_VALVE, 2, "%s %s: %s" % (want, m.id, why))
            res = {"id": tag, "ok": False, "status": "failed", "why": "meter %s: %s" % (m.id, why)}
        else:
            self.log("gateway: valve of %s %s" % (m.id, want))
            self._event(records.EV_VALVE, 1 if close else 0, "%s %s" % (want, m.id))
            res = {"id": tag, "ok": True, "status": "done", "result": {"meter": m.id, "valve": want}}
        done = self._done.pop(tag, None)
        if done is not None:
            done(res)

    def stats(self):
        return {"readings": self.readings, "buses": [p.stats() for p in self.pollers], "problems": self.problems,
                "slave": self.slave.stats() if self.slave is not None else None}


async def run(svc):
    # All of the gateway's tasks, for callers that want one coroutine.
    await asyncio.gather(*svc.tasks())


def _starter(obj, run):
    def start(w):
        obj.beat = w.beat
        return run()

    return start
