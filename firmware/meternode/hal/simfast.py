# The sim board's fast mode (scenario "fast": true), for accelerated soaks: the sampler runs
# as fast as it can compute blocks, never sleeping, and sleep_ms() waits for *simulated*
# time, so the node's periodic tasks (reporting, policy, pulse polling) run at their
# simulated periods: a simulated day takes what its samples take to compute.  Waits that
# face the outside world (MQTT timeouts and keepalive, link backoff, the supervisor and the
# watchdog) stay in wall time.  If the sampler stops, simulated time stops with it.
import asyncio

from meternode import ticks
from meternode.hal.sim import SimClock


class FastClock(SimClock):
    def __init__(self, epoch=None, ms=None, us=None):
        self._sleepers = []  # [due ticks_ms, Event]
        SimClock.__init__(self, epoch, ms, us)

    def advance(self, us):
        # The sampler moves time on after each block: the sleepers whose time has come run
        # next (deadlines in wrapping ticks: nothing here grows with uptime).
        SimClock.advance(self, us)
        sl = self._sleepers
        k = 0
        while k < len(sl):
            if ticks.diff(self.ms, sl[k][0]) >= 0:
                sl.pop(k)[1].set()
            else:
                k += 1

    async def sleep_ms(self, ms):
        ev = asyncio.Event()
        self._sleepers.append((ticks.add(self.ms, ms), ev))
        await ev.wait()
