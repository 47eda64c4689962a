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
# the window's integers, in one list (an attribute and a name each would cost more:
# docs/memory.md); _start() zeroes all but the length
_N = const(0)  # sets since the window started
_US = const(1)  # us since the window started (sum of stamp differences)
_PRED = const(2)  # us predicted for _N sets at the current rate (its fraction: _pf)
_O1 = const(3)  # lowest offset (us) in the first half, and the sets there
_N1 = const(4)
_O2 = const(5)  # ... in the second half
_N2 = const(6)
_WLEN = const(7)  # the window's length, us


class Timebase:
    def __init__(self, rate_actual, measured=True):
        self.rate0 = float(rate_actual)
        self.rate = self.rate0  # the current estimate, sets/s
        self.measured = measured
        self.windows = 0  # windows completed (rate measured)
        self.resets = 0  # windows restarted (implausible stamps)
        self._st = None  # previous stamp
        self._w = [0] * 8
        self._w[_WLEN] = _W0
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
        w = self._w
        for k in range(_WLEN):
            w[k] = 0
        w[_O1] = _NONE
        w[_O2] = _NONE
        self._pf = 0.0  # the fraction of w[_PRED]
        self._per = 1000000.0 / self.rate

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
        w = self._w
        us = w[_US] + d
        w[_US] = us
        x = self._pf + n * self._per
        k = int(x)
        self._pf = x - k
        k += w[_PRED]
        w[_PRED] = k
        o = us - k  # the stamp's offset from the prediction
        n += w[_N]
        w[_N] = n
        if us < w[_WLEN] >> 1:
            if o < w[_O1]:
                w[_O1] = o
                w[_N1] = n
        elif o < w[_O2]:
            w[_O2] = o
            w[_N2] = n
        if us < w[_WLEN]:
            return
        # the window closes: its rate from the early envelope, and the next window
        dn = w[_N2] - w[_N1]
        if w[_O1] != _NONE and w[_O2] != _NONE and dn > 0:
            # 1/R = 1/R_ref + (o2 - o1) / (dn * 1e6): the slope of the early envelope
            c = self.rate * (w[_O2] - w[_O1]) / (dn * 1000000.0)
            r = self.rate / (1.0 + c)
            if abs(r - self.rate0) > 0.05 * self.rate0:
                self.resets += 1
            else:
                self.rate = r
                self.windows += 1
                if w[_WLEN] < _WMAX:
                    w[_WLEN] <<= 1
        self._start()
