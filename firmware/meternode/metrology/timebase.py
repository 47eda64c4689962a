# The measured timebase: the real sample rate, from the sampler's (sets, stamp_us) pairs
# (Timebase), and the measured seconds the meter closes (Seconds, further below).  Kept
# apart from meter.py, which imports the viper kernels, so that the host's fuzzers can run
# Seconds on CPython.
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
import array

from micropython import const

from meternode.metrology import floats

_MASK = const(0x3FFFFFFF)  # counters wrap below 2**30
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
            r = self.rate / (1 + c)
            if abs(r - self.rate0) > 0.05 * self.rate0:
                self.resets += 1
            else:
                self.rate = r
                self.windows += 1
                if w[_WLEN] < _WMAX:
                    w[_WLEN] <<= 1
        self._start()


# Measured seconds: a summary of every second of *sampled* time, kept in a small ring for
# the per-second consumers (the policy engine).  The policy task runs on the wall clock
# and may be starved (CPU load, a flash erase, a TLS handshake) while the sampler catches
# up a backlog in a burst; if it read the meter's latest values once per wall second it
# would miss anything that came and went inside the burst -- a 3-s frequency dip, say.
# Instead the meter closes one summary per `rate` sample sets, and the consumer drains
# every second it has not seen, in order, each with its own values.
#
# A summary: cycles measured, mean frequency (0.0: no mains cycle in that second), mean
# RMS of the reference voltage, the largest element RMS current, the mean total active
# power at the grid connection (W, signed: below 0 the site exports; the elements whose
# channel role is "main", as the registers' totals), and the import register (mWh) at the
# second's end.  Values
# are means over the converted batches that ended in the second (a batch is up to
# metrology.batch_cycles cycles, 100 ms by default).
#
# Counters stay small: `closed` wraps below 2**30, the sets countdown is relative.
_S = const(16)  # seconds held: a consumer starved longer loses the oldest (counted)


class Seconds:
    def __init__(self, rate):
        self.rate = rate
        self._left = rate  # sets until the current second closes
        # the open second: cycles, and (weighted by cycles) f and v sums, the largest i, the
        # p sum, in a float array (metrology.floats) made once
        self._nc = 0
        self._acc = floats(4)
        # the ring of closed seconds
        self._rf = array.array("f", bytes(4 * 4 * _S))  # f, v, i, p per second
        self._rc = array.array("i", bytes(4 * _S))  # cycles measured
        self._re = [0] * _S  # import mWh (full, may be a big int on 32-bit past 1.07 MWh)
        self.closed = 0  # seconds closed, wraps below 2**30
        self.lost = 0  # seconds dropped because the consumer fell more than _S behind

    def batch(self, n, f, v, i, p):
        # One converted batch of n cycles: its mean frequency f, voltage v, largest current i
        # and total power p.  Floats on small quantities only.
        self._nc += n
        a = self._acc
        a[0] += f * n
        a[1] += v * n
        a[3] += p * n
        if i > a[2]:
            a[2] = i

    def sets(self, n, get):
        # n more sample sets were fed; closes every second they complete.  get() gives
        # the import register (called once per closed second, not per block).
        left = self._left - n
        while left <= 0:
            if not self._nc and left <= -(_S + 1) * self.rate:
                # a long stretch with nothing measured (the sim coasting): seconds that the
                # ring would overwrite before anyone could read them are only counted
                k = -left // self.rate - _S
                self.closed = (self.closed + k) & _MASK
                left += k * self.rate
                continue
            # the second closes into the ring
            k = self.closed % _S
            j = 4 * k
            nc = self._nc
            rf = self._rf
            a = self._acc
            for x in range(4):
                # no mains cycle measured in this second: zeros
                rf[j + x] = (a[x] if x == 2 else a[x] / nc) if nc else 0
                a[x] = 0
            self._rc[k] = nc
            self._re[k] = get()
            self.closed = (self.closed + 1) & _MASK
            self._nc = 0
            left += self.rate
        self._left = left

    def get(self, idx, out):
        # Copies closed second number idx (mod 2**30) into out = [f, v, i, p, e_mwh, cycles].
        k = idx % _S
        j = 4 * k
        rf = self._rf
        out[0] = rf[j]
        out[1] = rf[j + 1]
        out[2] = rf[j + 2]
        out[3] = rf[j + 3]
        out[4] = self._re[k]
        out[5] = self._rc[k]
        return out

    def drain_from(self, mark):
        # (first index to read, count) for a consumer whose last seen `closed` was mark;
        # counts what fell out of the ring.
        n = (self.closed - mark) & _MASK
        if n > _S:
            self.lost += n - _S
            mark = (self.closed - _S) & _MASK
            n = _S
        return mark, n
