# Reconnect pacing: exponential backoff with +-25 % jitter, bounded, so a fleet that lost
# its broker does not come back in lockstep.
try:
    import random

    _rand = random.getrandbits
except (ImportError, AttributeError):  # pragma: no cover

    def _rand(n):
        return 0


class Backoff:
    # Exponential backoff with +-25 % jitter, bounded: min_ms, 2*min_ms, ... max_ms.
    def __init__(self, min_ms=500, max_ms=30000):
        self.min_ms = min_ms
        self.max_ms = max_ms
        self.cur = min_ms
        self.attempts = 0

    def reset(self):
        self.cur = self.min_ms
        self.attempts = 0

    def next_ms(self):
        d = self.cur
        self.cur = min(self.max_ms, self.cur * 2)
        self.attempts += 1
        j = d // 4
        return d - j + (_rand(16) % (2 * j + 1) if j else 0)
