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
import array

from micropython import const

from meternode.metrology import floats

_N = const(16)  # seconds held: a consumer starved longer loses the oldest (counted)
_WRAP = const(0x3FFFFFFF)


class Seconds:
    def __init__(self, rate):
        self.rate = rate
        self._left = rate  # sets until the current second closes
        # the open second: cycles, and (weighted by cycles) f and v sums, the largest i, the
        # p sum, in a float array (metrology.floats) made once
        self._nc = 0
        self._acc = floats(4)
        # the ring of closed seconds
        self._rf = array.array("f", bytes(4 * 4 * _N))  # f, v, i, p per second
        self._rc = array.array("i", bytes(4 * _N))  # cycles measured
        self._re = [0] * _N  # import mWh (full, may be a big int on 32-bit past 1.07 MWh)
        self.closed = 0  # seconds closed, wraps below 2**30
        self.lost = 0  # seconds dropped because the consumer fell more than _N behind

    def batch(self, nc, f, v, imax, p):
        # One converted batch of nc cycles: its mean frequency, voltage, largest current and
        # total power.  Floats on small quantities only.
        self._nc += nc
        a = self._acc
        a[0] += f * nc
        a[1] += v * nc
        a[3] += p * nc
        if imax > a[2]:
            a[2] = imax

    def sets(self, n, e_mwh_fn):
        # n more sample sets were fed; closes every second they complete.  e_mwh_fn() gives
        # the import register (called once per closed second, not per block).
        left = self._left - n
        while left <= 0:
            if not self._nc and left <= -(_N + 1) * self.rate:
                # a long stretch with nothing measured (the sim coasting): seconds that the
                # ring would overwrite before anyone could read them are only counted
                k = -left // self.rate - _N
                self.closed = (self.closed + k) & _WRAP
                left += k * self.rate
                continue
            # the second closes into the ring
            k = self.closed % _N
            j = 4 * k
            nc = self._nc
            rf = self._rf
            a = self._acc
            for x in range(4):
                # no mains cycle measured in this second: zeros
                rf[j + x] = (a[x] if x == 2 else a[x] / nc) if nc else 0
                a[x] = 0
            self._rc[k] = nc
            self._re[k] = e_mwh_fn()
            self.closed = (self.closed + 1) & _WRAP
            self._nc = 0
            left += self.rate
        self._left = left

    def get(self, idx, out):
        # Copies closed second number idx (mod 2**30) into out = [f, v, i, p, e_mwh, cycles].
        k = idx % _N
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
        n = (self.closed - mark) & _WRAP
        if n > _N:
            self.lost += n - _N
            mark = (self.closed - _N) & _WRAP
            n = _N
        return mark, n
