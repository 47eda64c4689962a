# Simulated pulse input: a pulse train with contact bounce, deterministic with a seed.
#
# Spec (config["sim"]["pulses"][k]):
#   {"rate_hz": 50.0, "duty": 0.5, "count": 1000, "start_ms": 0, "bounce": 4,
#    "bounce_ms": 2.0, "seed": 1, "edge": "falling"}
# Each pulse is an active level (falling: 0) for duty / rate; every transition is followed
# by up to `bounce` extra toggles inside `bounce_ms` (ending at the new level), as a reed
# contact does on close and on open.  Edges come out as (ticks_ms, level) like the IRQ ring.
import random

from meternode.config import ConfigError, need


class SimPulseTrain:
    def __init__(self, spec, where="sim.pulses"):
        self.rate = need(spec, "rate_hz", float, where, default=1.0, lo=0.001, hi=200.0)
        self.duty = need(spec, "duty", float, where, default=0.5, lo=0.05, hi=0.95)
        self.count = need(spec, "count", int, where, default=0, lo=0)
        self.start = need(spec, "start_ms", float, where, default=0.0, lo=0.0)
        self.bounce = need(spec, "bounce", int, where, default=0, lo=0, hi=50)
        self.bounce_ms = need(spec, "bounce_ms", float, where, default=2.0, lo=0.0, hi=50.0)
        edge = spec.get("edge", "falling")
        if edge not in ("falling", "rising"):
            raise ConfigError("%s.edge must be falling or rising, not %r" % (where, edge))
        self.active = 0 if edge == "falling" else 1
        self._rng = random.Random(need(spec, "seed", int, where, default=1)) if hasattr(random, "Random") else None
        if self._rng is None:
            random.seed(spec.get("seed", 1))
        self._k = 0  # next pulse
        self._queue = []  # pending (t, level) of the current pulse, ascending
        self.emitted = 0  # clean pulses emitted

    def _rand(self):
        return self._rng.random() if self._rng is not None else random.random()

    def _transition(self, t, level):
        # the clean edge at t, then bounce toggles ending at `level`
        out = [(t, level)]
        n = self.bounce
        if n and self.bounce_ms > 0:
            ts = sorted(t + self.bounce_ms * self._rand() for _ in range(2 * n))
            lv = level
            for x in ts:
                lv = 1 - lv
                out.append((x, lv))
            # an even number of toggles ends back at `level`
        return out

    def edges_until(self, now_ms):
        # Edges with time <= now_ms, as integer ticks_ms, in order.
        out = []
        period = 1000.0 / self.rate
        while True:
            if not self._queue:
                if self._k >= self.count:
                    break
                t0 = self.start + self._k * period
                if t0 > now_ms:
                    break
                t1 = t0 + self.duty * period
                q = self._transition(t0, self.active) + self._transition(t1, 1 - self.active)
                q.sort(key=_first)
                self._queue = q
                self._k += 1
                self.emitted += 1
            while self._queue and self._queue[0][0] <= now_ms:
                t, lv = self._queue.pop(0)
                out.append((int(t), lv))
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


def _first(e):
    return e[0]
