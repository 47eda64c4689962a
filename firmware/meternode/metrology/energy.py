# From per-cycle power to registers: the starting/creep gate and maximum demand.
#
# Per cycle, elements whose gate is open register (each cycle netted on its own: import
# never runs backwards; the cycle's energy is split by sign and quadrant into float sums
# that go to the integer registers once per window, which keeps the per-cycle cost low);
# the others collect the cycle, split by sign and quadrant,
# in a pending store.  At the end of each creep window (creep_s, default 1 s) the gate of
# each element follows the window's mean |P| and |Q| against its starting threshold:
#   - an element that starts gets its pending energy registered: nothing is lost at start;
#   - one that stays below discards it: no registration with voltage and no current.
# The window mean, not a single cycle, is what the threshold sees: noise averages down
# with the square root of the window's sample count, so the threshold can sit at half the
# starting power (0.1 % In for class 0.2S) with many standard deviations of margin for a
# 12-bit ADC of 8.7 effective bits (see docs/metrology.md).
#
# Maximum demand: the net import power (registered energy, import minus export, floored at
# zero) over fixed periods of the sample clock (demand_s, default 900 s); the largest goes
# to the registers with the period's end time.
#
# `rate` is the meter's measured sample rate (metrology/timebase.py): a cycle of n sets
# lasts n / rate seconds.  The windows themselves are counted in sets (integers).
from micropython import const

from meternode.metrology import floats
from meternode.metrology.registers import split

# the windows' counters, one list (an attribute and a name each would cost more:
# docs/memory.md): sets in the creep window and its length, sets in the demand period and
# its length, demand periods completed
_WN = const(0)
_WSETS = const(1)
_DN = const(2)
_DSETS = const(3)
_DPER = const(4)


class Energy:
    def __init__(self, registers, thresholds, rate, window_sets, demand_sets):
        self.registers = registers
        e = registers.n
        self.n = e
        self._thr = thresholds  # W (and var) per element
        self.rate = rate  # sets per second, measured (the meter updates it)
        self._c = [0, window_sets, 0, demand_sets, 0]
        self.on = [False] * e  # registration gate per element
        # (float arrays, not lists: metrology.floats)
        self._pend = floats(8 * e)  # per element, register fields (J) while the gate is shut
        self._wsum = floats(3 * e)  # per element, creep window: P J, Q J, seconds
        self._fine = floats(8 * (e + 1))  # this window's registered energy, split (J)
        # this window's total import and export for the tariff registers, and the demand
        # period's net import energy (J)
        # (a list: its floats are read without a new box, per batch)
        self._t = [0.0, 0.0, 0.0]
        self.demand_w = 0.0  # last completed demand period, W
        self.clock = None  # optional: object with time() for demand timestamps

    def cycle(self, p, q, s, n):
        # A batch of n sets: mean P, Q, S per element (the meter's arrays p, q, s).  It is
        # split by sign and quadrant here (netted on its own); the integer registers take
        # the window's float sums at flush(), once per creep window.
        dt = n / self.rate
        on = self.on
        main = self.registers.main
        fine = self._fine
        w = self._wsum
        tp = 0.0
        tq = 0.0
        pend = self._pend
        for e in range(self.n):
            pj = p[e] * dt  # this element's energies in the batch, J (var-s)
            qj = q[e] * dt
            k = 3 * e
            w[k] += pj
            w[k + 1] += qj
            w[k + 2] += dt
            if on[e]:
                f = fine
                if main[e]:  # only the grid connection counts in the total
                    tp += pj
                    tq += qj
            else:
                f = pend
            k = 8 * e  # split by sign and quadrant, as registers.split() (inlined: per cycle)
            if pj >= 0.0:
                f[k] += pj
                f[k + 6] += s[e] * dt
                if qj >= 0.0:
                    f[k + 2] += qj
                else:
                    f[k + 5] -= qj
            else:
                f[k + 1] -= pj
                f[k + 7] += s[e] * dt
                if qj >= 0.0:
                    f[k + 3] += qj
                else:
                    f[k + 4] -= qj
        t = self._t
        if tp or tq:
            split(fine, 8 * self.n, tp, tq, (tp * tp + tq * tq) ** 0.5)
            if tp >= 0.0:
                t[0] += tp
            else:
                t[1] -= tp
        t[2] += tp
        c = self._c
        c[_WN] += n
        c[_DN] += n
        if c[_WN] >= c[_WSETS]:
            self.flush()
        if c[_DN] >= c[_DSETS]:
            self.flush()
            self.demand_w = max(0.0, t[2] * self.rate / c[_DN])
            c[_DPER] += 1
            # the period's end: the node's clock, else seconds of sample clock (the periods
            # so far; allocates past 2**30 s only, once a period)
            at = self.clock.time() if self.clock else c[_DPER] * c[_DSETS] // int(self.rate + 0.5)
            self.registers.demand(self.demand_w, int(at))
            t[2] = 0.0
            c[_DN] = 0

    def commit(self):
        # Float window sums -> integer registers (also before a tariff change).
        fine = self._fine
        t = self._t
        self.registers.commit(fine, t[0], t[1])
        for k in range(len(fine)):
            fine[k] = 0.0
        t[0] = 0.0
        t[1] = 0.0

    def flush(self):
        # End the creep window now: open or shut each gate, register or discard.
        self.commit()
        if not self._c[_WN]:
            return
        w = self._wsum
        pend = self._pend
        net_p = 0.0
        net_q = 0.0
        late = False
        for e in range(self.n):
            t = w[3 * e + 2]
            if t > 0.0:
                thr = self._thr[e] * t
                start = abs(w[3 * e]) >= thr or abs(w[3 * e + 1]) >= thr
                if start and not self.on[e]:
                    k = 8 * e
                    self.registers.add_fields(e, pend, k)
                    if self.registers.main[e]:
                        net_p += pend[k] - pend[k + 1]
                        net_q += pend[k + 2] + pend[k + 3] - pend[k + 4] - pend[k + 5]
                        late = True
                self.on[e] = start
            for k in range(8 * e, 8 * e + 8):
                pend[k] = 0.0
            w[3 * e] = 0.0
            w[3 * e + 1] = 0.0
            w[3 * e + 2] = 0.0
        if late:
            self.registers.add_net(net_p, net_q)
            self._t[2] += net_p
        self._c[_WN] = 0
