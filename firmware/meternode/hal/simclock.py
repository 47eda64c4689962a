# The sim board's clock (hal/__init__.py, "the one clock of the node"), kept apart from
# sim.py so that each compiles on a small heap.
import time

from micropython import const

from meternode import ticks

_PERIOD = const(1 << 30)
_MASK = const(_PERIOD - 1)
_DAY = const(86400)
# Where the ticks start by default: a few seconds before they wrap, so every test and
# virtual node crosses a wrap of both (a test can ask for another start).
_MS0 = const(_PERIOD - 4000)  # ticks_ms wraps 4 s after start
_US0 = const(_PERIOD - 2000000)  # ticks_us wraps 2 s after start


class SimClock:
    # The sim board's clock.  Time advances with the samples produced (sample-accurate, at
    # the sampler's true rate); with `realtime` the sampler paces itself to the wall clock
    # so a virtual node runs like a real one.  Like a board's: ticks_ms / ticks_us are
    # 30-bit and wrap (starting at _MS0 / _US0 unless told otherwise), time() is integer
    # epoch seconds (kept as day + second of day, so advancing allocates nothing).
    ticks_diff = staticmethod(ticks.diff)
    ticks_add = staticmethod(ticks.add)

    def __init__(self, epoch=None, ms=None, us=None):
        self.ms = _MS0 if ms is None else ms & _MASK  # ticks_ms now
        self.us = _US0 if us is None else us & _MASK  # ticks_us now
        self._usm = 0  # us into the current ms
        self._sub = 0  # us into the current second
        self.set_time(time.time() if epoch is None else epoch)

    def ticks_ms(self):
        return self.ms

    def ticks_us(self):
        return self.us

    def time(self):
        return self._day * _DAY + self._sod

    def set_time(self, epoch):
        e = int(epoch)
        self._day = e // _DAY
        self._sod = e - self._day * _DAY

    def advance(self, us):
        # us >= 0 more microseconds (a block: tens of ms; a coast: up to an hour)
        self.us = (self.us + us) & _MASK
        x = self._usm + us
        self._usm = x % 1000
        self.ms = (self.ms + x // 1000) & _MASK
        x = self._sub + us
        if x >= 1000000:
            s = self._sod + x // 1000000
            x %= 1000000
            if s >= _DAY:
                self._day += s // _DAY
                s %= _DAY
            self._sod = s
        self._sub = x

    async def sleep_ms(self, ms):
        import asyncio  # here: the fast-mode tests never load it

        await asyncio.sleep_ms(ms)
