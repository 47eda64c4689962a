# Pulse meters (water, gas, S0 electricity): debounce, registers, flow rate, leak and tamper.
#
# A pulse backend (hal: IRQ ring on RP2040/ESP32, machine.Counter on ESP32, sim) hands over
# raw edges as (ticks_ms, level) pairs through edge(), or hardware-counted pulses through
# add_count().  Debounce is by level stability: a new level counts only once it has held
# for debounce_ms with no further edge, so contact bounce on press AND on release is
# rejected (a minimum-period rule alone lets release bounce through).  The counted edge is
# "falling" (contact closes to ground with a pull-up, the usual S0/reed wiring) or
# "rising".
#
# Registers: `count` (pulses, exact) and `value` = count * 1000 // per_unit in milli-units:
# litres for per_unit pulses per m3 (water, gas), Wh for per_unit impulses per kWh (S0).
# Flow: milli-units per hour from the time between the last two pulses; it falls to zero
# when no pulse came for max(flow_timeout_s, twice the last interval).  Leak: flow has not
# been zero for leak_s.  Tamper: a second input whose active level raises a flag and
# counts events.
#
# Times are ticks_ms (30-bit, wrapping) and only compared through ticks.diff(): a pulse
# or a leak across the wrap counts like any other.  A difference is valid for 6.2 days
# (2**29 ms); longer silences read as negative and are taken as "longer than any limit"
# (flow_timeout_s and leak_s are bounded below that), and a leak once established stays
# reported while the flow lasts.
from meternode.config import ConfigError, need
from meternode.ticks import diff

EDGES = ("falling", "rising")


class PulseMeter:
    def __init__(self, spec, where="pulses"):
        self.name = need(spec, "name", str, where)
        self.per_unit = need(spec, "per_unit", int, where, lo=1, hi=1000000)
        self.unit = spec.get("unit", "l")
        edge = need(spec, "edge", str, where, default="falling")
        if edge not in EDGES:
            raise ConfigError("%s.edge must be falling or rising, not %r" % (where, edge))
        self.active = 0 if edge == "falling" else 1
        self.debounce = need(spec, "debounce_ms", int, where, default=20, lo=0, hi=10000)
        self.flow_timeout = int(need(spec, "flow_timeout_s", float, where, default=300.0, lo=1.0, hi=86400.0) * 1000)
        self.leak_ms = int(need(spec, "leak_s", float, where, default=86400.0, lo=60.0, hi=432000.0) * 1000)
        self.count = 0
        self.rejected = 0  # edges rejected as bounce
        self.stable = 1 - self.active  # idle level
        self._cand = -1  # candidate level waiting to prove itself
        self._cand_t = 0
        self.last_t = None  # ticks_ms of the last counted pulse
        self.interval = 0  # ms between the last two pulses
        self._flow_since = None  # ticks_ms since when flow has been non-zero
        self._leaking = False  # flow has lasted leak_ms (kept while it lasts)
        self.tampered = False
        self.tamper_events = 0

    @property
    def value(self):
        return self.count * 1000 // self.per_unit

    def restore(self, count):
        self.count = int(count)

    def state(self):
        return {"count": self.count, "tamper_events": self.tamper_events}

    # -- input ------------------------------------------------------------------------------
    def edge(self, t, level):
        # One raw edge at ticks_ms t; the pin's level after it.
        if self._cand >= 0:
            if diff(t, self._cand_t) >= self.debounce:
                self._commit()
            else:
                self.rejected += 1
        if level != self.stable:
            self._cand = level
            self._cand_t = t
        else:
            self._cand = -1  # bounced back before it held

    def poll(self, now):
        # Call regularly (and before reading): settles a level that has held long enough.
        if self._cand >= 0 and diff(now, self._cand_t) >= self.debounce:
            self._commit()
        if self._flow_since is not None and not self._leaking:
            self.leak(now)  # latched while the difference is still valid

    def _commit(self):
        lvl = self._cand
        t = self._cand_t
        self._cand = -1
        self.stable = lvl
        if lvl == self.active:
            self._pulse(t)

    def add_count(self, n, t):
        # Hardware-counted pulses (ESP32 PCNT via machine.Counter): n more at ticks_ms t.
        if n > 0:
            last = self.last_t
            self.count += n
            if last is not None:
                d = diff(t, last)
                self.interval = d // n if d > 0 else 0
            if self._flow_since is None:
                self._flow_since = t
            self.last_t = t

    def _pulse(self, t):
        if self.last_t is not None:
            gap = diff(t, self.last_t)
            if gap < 0 or gap > max(self.flow_timeout, 2 * self.interval):
                self._flow_since = None  # flow had fallen to zero in between
                self._leaking = False
            self.interval = gap if gap > 0 else 0
        if self._flow_since is None:
            self._flow_since = t
        self.last_t = t
        self.count += 1

    def tamper(self, active, t):
        if active and not self.tampered:
            self.tamper_events += 1
        self.tampered = bool(active)

    # -- derived ----------------------------------------------------------------------------
    def flow(self, now):
        # milli-units per hour (litres per hour for pulses per m3); 0 after the timeout.
        if self.last_t is None or self.interval <= 0:
            return 0
        quiet = diff(now, self.last_t)
        if quiet < 0 or quiet > max(self.flow_timeout, 2 * self.interval):
            self._flow_since = None
            self._leaking = False
            return 0
        # the running interval bounds the rate from above while no pulse comes
        iv = max(self.interval, quiet)
        return 3600000 * 1000 // (self.per_unit * iv)

    def leak(self, now):
        if self.flow(now) <= 0 or self._flow_since is None:
            return False
        d = diff(now, self._flow_since)
        if d >= self.leak_ms:
            self._leaking = True  # remembered for when the difference no longer fits
            return True
        return self._leaking and d < 0  # flowing for over 6.2 days

    def reading(self, now):
        self.poll(now)
        return {
            "name": self.name,
            "count": self.count,
            "value": self.value,
            "unit": self.unit,
            "flow_per_h": self.flow(now),
            "leak": self.leak(now),
            "tamper": self.tampered,
            "rejected": self.rejected,
        }


def from_board(board):
    # One PulseMeter per board "pulses" entry.
    out = []
    for k, spec in enumerate(board.get("pulses", [])):
        out.append(PulseMeter(spec, "board.pulses[%d]" % k))
    return out


class PulseService:
    # The node's pulse meters: one PulseMeter per board "pulses" entry, fed from its HAL
    # input (hal.make_pulse_inputs) every `poll_ms`; readings() for telemetry, state() /
    # restore() for the register checkpoints.
    def __init__(self, board, config, clock):
        from meternode import hal

        self.meters = from_board(board)
        self.inputs = hal.make_pulse_inputs(board, config, clock)
        self.clock = clock
        self.poll_ms = 100

    def poll(self):
        now = self.clock.ticks_ms()
        for k, pm in enumerate(self.meters):
            self.inputs[k].drain(pm, now)
            pm.poll(now)
        return now

    async def run(self):
        import asyncio

        while True:
            await asyncio.sleep_ms(self.poll_ms)
            self.poll()

    def readings(self):
        now = self.clock.ticks_ms()
        return [pm.reading(now) for pm in self.meters]

    def state(self):
        return {pm.name: pm.count for pm in self.meters}

    def restore(self, st):
        for pm in self.meters:
            if isinstance(st, dict) and isinstance(st.get(pm.name), int):
                pm.restore(st[pm.name])
