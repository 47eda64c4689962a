# A token bucket for the events an outsider can trigger (refused commands, bundles, frames):
# each refusal is counted, but only `burst` events at once and then one per `period_s` reach
# the record log, so a flood cannot fill the log and push real readings out by retention.
# Each event that passes carries how many were held back before it, so totals stay exact.


class Limiter:
    def __init__(self, burst=16, period_s=600):
        self.burst = burst
        self.period_s = period_s
        self.tokens = burst
        self._t = None  # wall-clock second of the last refill
        self.pending = 0  # held back since the last event let through
        self.held = 0  # held back, all time

    def take(self, now):
        # -> -1 when this event is held back, else the number held back before it.
        now = int(now)
        if self._t is None or now < self._t:  # first use, or the clock was set back
            self._t = now
        k = (now - self._t) // self.period_s
        if k:
            self.tokens = self.tokens + k if self.tokens + k < self.burst else self.burst
            self._t += k * self.period_s
        if self.tokens >= self.burst:
            self._t = now
        if self.tokens > 0:
            self.tokens -= 1
            n = self.pending
            self.pending = 0
            return n
        self.pending += 1
        self.held += 1
        return -1
