# The clock of a real board (rp2, esp32, mcp3208 HALs): the time module's ticks, which
# wrap at 2**30 on these ports, and the RTC's epoch seconds as an int.
import time

from meternode import ticks


class BoardClock:
    ticks_diff = staticmethod(ticks.diff)
    ticks_add = staticmethod(ticks.add)

    def ticks_ms(self):
        return time.ticks_ms()

    def ticks_us(self):
        return time.ticks_us()

    def time(self):
        return int(time.time())

    def set_time(self, epoch):
        # The RTC from UTC epoch seconds (a `time` command, NTP done elsewhere).
        import machine

        t = time.gmtime(int(epoch))
        machine.RTC().datetime((t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0))

    def sleep_ms(self, ms):
        # asyncio's own awaitable (the hal/__init__.py clock contract): no coroutine of ours
        # held by every task asleep in it
        import asyncio

        return asyncio.sleep_ms(ms)
