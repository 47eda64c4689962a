# The measured timebase: the real sample rate, from the sampler's (sets, stamp_us) pairs.
#
# A board's sampler never runs at exactly board.adc.rate: a timer with an integer-us
# period gives 2403.846 S/s for 2400, a crystal is tens of ppm off, a soft-IRQ timer
# drops ticks.  The sampler says what its divider gives (rate_actual, the starting
# point), how many sets it lost, and when each block's last set was converted (stamp_us,
# ticks_us); hal/__init__.py states the contract.  Each block adds its sets (delivered +
# lost) and the ticks_diff since the previous stamp to a window, as integers (sums stay
# below 2**30: a window is at most 2**28 us); nothing here allocates per block.
#
# Within a window the predicted time of each stamp (sets x the current period, integer us
# with the fraction carried) is subtracted from its measured time: the offset grows
# linearly with the rate error, plus each stamp's latency.  Latency is never negative (an
# IRQ serviced late, interrupts masked by a flash erase), so the earliest stamps lie on the
# true line: the lowest offset of the window's first half and of its second half give the
# slope, and from it the rate.  A stamp delayed by tens of ms moves nothing.
#
# Windows double from 2**20 us (1 s) to 2**28 us (4.5 min); each one's rate replaces the
# last.  A window whose rate is more than 5 % from rate_actual (stamps from another clock),
# or a stamp more than 2**27 us (134 s) from the previous one (ticks_diff cannot be
# trusted), restarts the window and is counted in `resets`.  measured=False keeps
# rate_actual (metrology.timebase = "fixed": for comparison, never on a board).
from micropython import const

_W0 = const(1 << 20)  # us, first window
_WMAX = const(1 << 28)  # us, longest window
_STALL = const(1 << 27)  # us between two stamps beyond which the window restarts
_NONE = const(1 << 29)  # no offset seen yet (offsets stay far below)


class Timebase:
    def __init__(self, rate_actual, measured=True):
        self.rate0 = float(rate_actual)
        self.rate = self.rate0  # the current estimate, sets/s
        self.measured = measured
        self.windows = 0  # windows completed (rate measured)
        self.resets = 0  # windows restarted (implausible stamps)
        self._st = None  # previous stamp
        self._wlen = _W0
        self._start()

    def use(self, rate_actual):
        # The sampler's rate_actual, at start (before any block).
        self.rate0 = float(rate_actual)
        self.rate = self.rate0
        self._start()

    def restart(self):
        # Forget the previous stamp (the sampler restarted, the sim coasted): the rate
        # measured so far stays, a new window starts with the next block.
        self._st = None
        self._start()

    def _start(self):
        self._n = 0  # sets since the window started
        self._us = 0  # us since the window started (sum of stamp differences)
        self._pred = 0  # us predicted for _n sets at the current rate
        self._pf = 0.0  # its fraction
        self._per = 1000000.0 / self.rate
        self._half = self._wlen >> 1
        self._o1 = _NONE  # lowest offset (us) in the first half, and the sets there
        self._n1 = 0
        self._o2 = _NONE  # ... in the second half
        self._n2 = 0

    def block(self, n, stamp):
        # n sets (delivered + lost) whose last one was converted at ticks_us `stamp`.
        st = self._st
        self._st = stamp
        if st is None or not self.measured:
            return
        d = (stamp - st) & 0x3FFFFFFF  # ticks_diff for 30-bit ticks, inline (per block)
        if d >= 0x20000000:
            d -= 0x40000000
        if d > _STALL or d < -_STALL:  # (a stamp after a late one may come "earlier")
            self.resets += 1
            self._start()
            return
        us = self._us + d
        self._us = us
        x = self._pf + n * self._per
        k = int(x)
        self._pf = x - k
        k += self._pred
        self._pred = k
        o = us - k  # the stamp's offset from the prediction
        n += self._n
        self._n = n
        if us < self._half:
            if o < self._o1:
                self._o1 = o
                self._n1 = n
        elif o < self._o2:
            self._o2 = o
            self._n2 = n
        if us < self._wlen:
            return
        # the window closes: its rate from the early envelope, and the next window
        dn = self._n2 - self._n1
        if self._o1 != _NONE and self._o2 != _NONE and dn > 0:
            # 1/R = 1/R_ref + (o2 - o1) / (dn * 1e6): the slope of the early envelope
            c = self.rate * (self._o2 - self._o1) / (dn * 1000000.0)
            r = self.rate / (1.0 + c)
            if abs(r - self.rate0) > 0.05 * self.rate0:
                self.resets += 1
            else:
                self.rate = r
                self.windows += 1
                if self._wlen < _WMAX:
                    self._wlen <<= 1
        self._start()
