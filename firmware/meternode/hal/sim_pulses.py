# Simulated pulse input: a pulse train with contact bounce, deterministic with a seed.
#
# Spec (config["sim"]["pulses"][k]):
#   {"rate_hz": 50.0, "duty": 0.5, "count": 1000, "start_ms": 0, "bounce": 4,
#    "bounce_ms": 2.0, "seed": 1, "edge": "falling"}
# Each pulse is an active level (falling: 0) for duty / rate; every transition is followed
# by up to `bounce` extra toggles inside `bounce_ms` (ending at the new level), as a reed
# contact does on close and on open.  Edges come out as (ticks_ms, level) like the IRQ ring,
# on the clock the train was made with (base_ms: its ticks_ms at time 0), wrapping with it.
# Times are integers: microseconds relative to a base tick that moves with the train, so a
# train runs for years without a float losing its fraction, and edges keep their order
# (sorted by (time, sequence): MicroPython's sort is not stable).
import random

from meternode import ticks
from meternode.config import ConfigError, need


class SimPulseTrain:
    def __init__(self, spec, where="sim.pulses", base_ms=0):
        self.rate = need(spec, "rate_hz", float, where, default=1.0, lo=0.001, hi=200.0)
        self.duty = need(spec, "duty", float, where, default=0.5, lo=0.05, hi=0.95)
        self.count = need(spec, "count", int, where, default=0, lo=0)
        start = need(spec, "start_ms", float, where, default=0.0, lo=0.0, hi=86400000.0)
        self.bounce = need(spec, "bounce", int, where, default=0, lo=0, hi=50)
        self.bounce_us = int(1000 * need(spec, "bounce_ms", float, where, default=2.0, lo=0.0, hi=50.0))
        edge = spec.get("edge", "falling")
        if edge not in ("falling", "rising"):
            raise ConfigError("%s.edge must be falling or rising, not %r" % (where, edge))
        self.active = 0 if edge == "falling" else 1
        self._rng = random.Random(need(spec, "seed", int, where, default=1)) if hasattr(random, "Random") else None
        if self._rng is None:
            random.seed(spec.get("seed", 1))
        self._per = 1000000.0 / self.rate  # us per pulse
        self._base = base_ms & ticks.MASK  # ticks_ms the offsets count from
        self._next = int(start * 1000)  # us from _base to the next pulse
        self._frac = start * 1000 - self._next
        self._k = 0  # next pulse
        self._queue = []  # pending (ticks_ms, level) of the current pulse, in order
        self.emitted = 0  # clean pulses emitted

    def _rand(self):
        return self._rng.random() if self._rng is not None else random.random()

    def _transition(self, out, t, level):
        # the clean edge at t (us), then bounce toggles ending at `level`
        out.append((t, len(out), level))
        n = self.bounce
        if n and self.bounce_us > 0:
            ts = sorted(t + int(self.bounce_us * self._rand()) for _ in range(2 * n))
            lv = level
            for x in ts:
                lv = 1 - lv
                out.append((x, len(out), lv))
            # an even number of toggles ends back at `level`

    def edges_until(self, now_ms):
        # Edges with time <= now_ms (ticks_ms, wrap-safe), as integer ticks_ms, in order.
        out = []
        while True:
            if not self._queue:
                if self._k >= self.count:
                    break
                if ticks.diff(ticks.add(self._base, self._next // 1000), now_ms) > 0:
                    break
                t0 = self._next
                t1 = t0 + int(self.duty * self._per)
                q = []
                self._transition(q, t0, self.active)
                self._transition(q, t1, 1 - self.active)
                q.sort()  # by time, then by the order made: deterministic
                base = self._base
                self._queue = [(ticks.add(base, e[0] // 1000), e[2]) for e in q]
                self._k += 1
                self.emitted += 1
                # the next pulse, and the base moved up to this one (offsets stay small)
                x = self._frac + self._per
                k = int(x)
                self._frac = x - k
                ms = t0 // 1000
                self._base = ticks.add(base, ms)
                self._next = t0 - ms * 1000 + k
            while self._queue and ticks.diff(self._queue[0][0], now_ms) <= 0:
                out.append(self._queue.pop(0))
            if self._queue:
                break
        return out

    def drain(self, pm, now_ms):
        self.feed(pm, now_ms)

    def feed(self, pm, now_ms):
        # Hands the edges up to now_ms to a PulseMeter and lets it settle.
        for t, lv in self.edges_until(now_ms):
            pm.edge(t, lv)
        pm.poll(now_ms)
