# Energy registers (Registers), and what feeds them per batch of cycles (Energy, below:
# the starting/creep gate and maximum demand).
#
# Energy registers: integers in fixed sub-units (milliwatt-hours, millivar-hours,
# millivolt-ampere-hours), each with a remainder in microjoules so that nothing is lost to
# rounding over months.  Registers only ever count up: import and export are separate
# registers fed per mains cycle from signed power, so the import register never runs
# backwards while solar exports.
#
# Layout (one flat list `r`, same index in `rem` for the remainder), E elements:
#   block b = 0 .. E-1 per element, block E = total; each block has FIELDS words:
#     IMP  EXP  Q1 Q2 Q3 Q4  S_IMP S_EXP
#   (reactive quadrants: Q1 = +P +Q (import, inductive), Q2 = -P +Q, Q3 = -P -Q, Q4 = +P -Q;
#    apparent energy is split by the sign of P)
#   then per tariff t: total import, total export (active).
#
# Total netting ("netting" option):
#   "vector" (default): each cycle the elements' signed P (and Q) are summed first and the
#                       sum goes to import or export; a house importing on phase 1 while
#                       exporting the same on phase 2 registers nothing in the total (the
#                       "saldierend" rule of most supply meters).
#   "phase":            the total is the sum of the elements' own import and export
#                       registers; the same house registers both import and export.
# Only elements whose board role is "main" (the grid connection; the default) count in the
# total: a sub-circuit CT ("role": "circuit") keeps its own registers but is not counted twice.
# Maximum demand: the total net import energy over each whole demand period, divided by its
# length; the largest of the billing month (billing time, ticks.month: UTC +
# config.utc_offset_min; a period ending at 00:00 on the 1st belongs to the month before) is
# kept with its end time, and when a month ends the maximum moves to `md`'s last-month half,
# where the MONTHLY freeze takes it (bill(), store/profile.py).
# md = [mW, end, month, last month's mW, its end, that month] (month: year * 12 + month - 1).
#
# Small ints only: a register is kept as two words, lo (0 .. 2**30 - 1 mWh) and hi (units
# of 2**30 mWh = 1.07 MWh), so registering a window allocates nothing on a 32-bit board
# however large the register grows (a whole value >= 2**30 would be a heap int, made anew
# on every addition).  get() / total_import() / state() give whole values (they allocate,
# for reports and checkpoints); low_import() / low() give the 30-bit low word for the
# per-second and per-block paths, which compare differences modulo 2**30.
from micropython import const

from meternode import run
from meternode.ticks import CLOCK_SET, floor, month

IMP = const(0)
EXP = const(1)
Q1 = const(2)
S_IMP = const(6)
S_EXP = const(7)
FIELDS = const(8)
_UJ_PER_MILLI_H = const(3600000)  # 1 mWh = 3.6 J = 3.6e6 uJ
_LO_BITS = const(30)
_LO_MASK = const(0x3FFFFFFF)  # (1 << _LO_BITS) - 1


def split(f, k, p, q, s):
    # Adds one cycle's signed energies (J) to the register fields f[k:k+8] by sign and
    # quadrant, as Registers counts them.
    if p >= 0.0:
        f[k + IMP] += p
        f[k + S_IMP] += s
        f[k + (Q1 if q >= 0.0 else Q1 + 3)] += abs(q)
    else:
        f[k + EXP] -= p
        f[k + S_EXP] += s
        f[k + (Q1 + 1 if q >= 0.0 else Q1 + 2)] += abs(q)


class Registers:
    def __init__(self, elements, tariffs=4, netting="vector", main=None):
        # the checks and the registers' lists: meterinit.registers(), loaded for the call
        run("meternode.metrology.meterinit", "registers", self, elements, tariffs, netting, main)

    # -- reading ---------------------------------------------------------------------------
    def _whole(self, idx):
        h = self.hi[idx]
        return (h << _LO_BITS) + self.lo[idx] if h else self.lo[idx]

    def _wholes(self, idx, step, n):
        # n registers' whole values from idx on, `step` apart (a new list; a loop, not a
        # comprehension: that is a function held with the module)
        out = []
        for k in range(n):
            out.append(self._whole(idx + k * step))
        return out

    @property
    def r(self):
        # every register's whole value, mWh (a new list)
        return self._wholes(0, 1, self.size)

    def get(self, block, field):
        # block: element index 0..n-1, or n for the total
        return self._whole(block * FIELDS + field)

    def low(self, block, field):
        # the register's low 30 bits: differences modulo 2**30 without allocating
        return self.lo[block * FIELDS + field]

    def total_import(self):
        return self._whole(self.n * FIELDS + IMP)

    def total_export(self):
        return self._whole(self.n * FIELDS + EXP)

    def low_import(self):
        return self.lo[self.n * FIELDS + IMP]

    def low_export(self):
        return self.lo[self.n * FIELDS + EXP]

    def quadrants(self, block):
        return self._wholes(block * FIELDS + Q1, 1, 4)

    def tariff_registers(self, t):
        return self._whole((self.n + 1) * FIELDS + 2 * t), self._whole((self.n + 1) * FIELDS + 2 * t + 1)

    def set_tariff(self, t):
        if not isinstance(t, int) or not 0 <= t < self.tariffs:
            raise ValueError("tariff index %r is outside 0..%d" % (t, self.tariffs - 1))
        self.tariff = t

    # -- counting --------------------------------------------------------------------------
    def _add(self, idx, x):
        # x joules >= 0: whole mWh first, then the rest in uJ, so every int stays small (a
        # window's energy in uJ would not: 10 kW for 1 s is 1e10 uJ)
        if x <= 0.0:
            return
        w = int(x / 3.6)
        uj = int((x - w * 3.6) * 1000000 + 0.5)
        self.add_int(idx, w, uj)

    def add_int(self, idx, mwh, uj):
        # Integer part of a registration: mwh whole milliwatt-hours and uj microjoules
        # (uj may be slightly negative from float rounding, |uj| < 3.6e6).  Allocates nothing.
        x = self.rem[idx] + uj
        if x < 0:
            x += _UJ_PER_MILLI_H
            mwh -= 1
        elif x >= _UJ_PER_MILLI_H:
            x -= _UJ_PER_MILLI_H
            mwh += 1
        self.rem[idx] = x
        lo = self.lo[idx] + mwh
        if lo > _LO_MASK:
            self.hi[idx] += lo >> _LO_BITS
            lo &= _LO_MASK
        self.lo[idx] = lo

    def commit(self, fine, tar_imp, tar_exp):
        # Moves a window of per-cycle energies, already split by sign and quadrant in
        # floats (fine[8e + field] per element; fine[8n + field] the vector-netted total),
        # into the integer registers.  With "phase" netting the total is the sum of the
        # elements' fields; tar_imp/tar_exp is the vector total's import/export for the
        # current tariff.
        n = self.n
        tb = n * FIELDS
        phase = self.netting == "phase"
        for j in range(FIELDS):
            t = 0.0
            for e in range(n):
                x = fine[e * FIELDS + j]
                if x > 0.0:
                    self._add(e * FIELDS + j, x)
                    if self.main[e]:
                        t += x
            if not phase:
                t = fine[tb + j]
            if t > 0.0:
                self._add(tb + j, t)
        tar = (self.n + 1) * FIELDS + 2 * self.tariff
        if phase:
            tar_imp = 0.0
            tar_exp = 0.0
            for e in range(n):
                if self.main[e]:
                    tar_imp += fine[e * FIELDS + IMP]
                    tar_exp += fine[e * FIELDS + EXP]
        self._add(tar, tar_imp)
        self._add(tar + 1, tar_exp)

    def demand(self, w, at, whole):
        # a demand period's mean net import w (W), ended at `at` (epoch s); only a whole
        # period (demand_s from one boundary to the next) can be a maximum
        if not whole:
            return
        md = self.md
        mw = int(w * 1000 + 0.5)
        x = month(at - 1)
        if x < md[2]:  # a month that has ended (its period's end reached us after its freeze)
            if x == md[5] and mw > md[3]:
                md[3] = mw
                md[4] = at
            return
        self.bill(x)
        if mw > md[0]:
            md[0] = mw
            md[1] = at

    def bill(self, mo):
        # Billing month mo begins (if it has not): the month in progress's maximum becomes
        # last month's. Returns that (mW, end), or (0, 0) if it is not month mo - 1's.
        md = self.md
        if md[2] != mo:
            md[3] = md[0]
            md[4] = md[1]
            md[5] = md[2]
            md[0] = md[1] = 0
            md[2] = mo
        return (md[3], md[4]) if md[5] == mo - 1 else (0, 0)

    # -- persistence -----------------------------------------------------------------------
    def state(self):
        # Everything needed to restore the registers exactly (checkpoints use this).
        return {
            "n": self.n,
            "tariffs": self.tariffs,
            "r": self.r,
            "rem": list(self.rem),
            "md": list(self.md),
            "tariff": self.tariff,
        }

    def restore(self, st):
        # The registers exactly as state() saved them, checked first (run at start only:
        # store/storeinit.py, loaded for the call and forgotten after).
        run("meternode.store.storeinit", "registers", self, st)


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
# zero) over demand periods of demand_s (default 900 s), the block demand a utility bills:
# with the wall clock set (after 2020) a period ends on a multiple of demand_s of billing time
# (00:00, 00:15, ... local: ticks.floor; the sample clock counts it, and each end sets the next one's length from the
# clock, so the sample clock's drift never accumulates); without one, periods are demand_s of
# the sample clock, ended at sample-clock seconds. A batch that runs past the end gives its
# sets past it, and their share of its energy, to the next period. Only a whole period, from
# one boundary to the next, can be the maximum: the two after a start (demand_s from it, then
# one to the grid) and one across a clock step are reported (demand_w) but not kept; nor is a
# maximum from before the clock was set (its month is 1970's).
#
# `rate` is the meter's measured sample rate (metrology/timebase.py): a cycle of n sets
# lasts n / rate seconds.  The windows themselves are counted in sets (integers).
# the windows' counters, one list (an attribute and a name each would cost more:
# docs/memory.md): sets in the creep window and its length, sets in the demand period and
# its length, demand periods completed
_WN = const(0)
_WSETS = const(1)
_DN = const(2)
_DSETS = const(3)
_DPER = const(4)
_DEND = const(5)  # the wall-clock boundary the period in progress ends on: > 0 whole, < 0 part, 0 none
_DS = const(6)  # demand_s


class Energy:
    # Made by Meter() (meterinit.energy: its state; no __init__ held with the class)
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
        if c[_DN] >= c[_DSETS]:  # the demand period ended in this batch (once a period)
            self.flush()
            rate = self.rate
            x = c[_DN] - c[_DSETS]  # sets past its end: they and their share of tp are the next one's
            tp = tp * x / n
            w = self.demand_w = max(0.0, (t[2] - tp) * rate / c[_DSETS])
            t[2] = tp
            c[_DN] = x
            c[_DPER] += 1
            ds = c[_DS]
            now = (self.clock.time() if self.clock else 0) - int(x / rate)  # when it ended
            b = c[_DEND]  # where it was to end: > 0 a whole period's, < 0 a part period's
            e = abs(b)
            whole = b > 0  # where it ended, whether it was whole, and x: the next one's seconds
            if now < CLOCK_SET:  # no wall clock: periods of the sample clock, ended at its seconds
                e = c[_DPER] * ds
                whole = True
                x = ds
            elif e and -1 <= now - e <= 1:  # it ended there (within the clock's second)
                x = e + ds - now
                c[_DEND] = e + ds  # the next, whole
            else:  # it did not (the first after a start, a clock step): a part period to the grid
                e = now
                whole = False
                x = floor(now, ds) + ds
                c[_DEND] = -x
                x -= now
            self.registers.demand(w, e, whole)
            c[_DSETS] = int(max(x, 1) * rate)  # the next period's sets

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
        r = self.registers
        n = self.n
        # an element that starts registers its pending energy (pend[8e:8e+8], joules, split
        # by sign and quadrant) late; the total takes it as its netting says: "phase" field
        # by field, "vector" netted over the elements that start together (below)
        phase = r.netting == "phase"
        tar = (n + 1) * FIELDS + 2 * r.tariff
        net_p = 0.0
        net_q = 0.0
        late = False
        for e in range(n):
            t = w[3 * e + 2]
            if t > 0.0:
                thr = self._thr[e] * t
                start = abs(w[3 * e]) >= thr or abs(w[3 * e + 1]) >= thr
                if start and not self.on[e]:
                    k = 8 * e
                    tot = phase and r.main[e]
                    for j in range(FIELDS):
                        x = pend[k + j]
                        if x > 0.0:
                            r._add(k + j, x)
                            if tot:
                                r._add(n * FIELDS + j, x)
                    if tot:
                        r._add(tar, pend[k + IMP])
                        r._add(tar + 1, pend[k + EXP])
                    if r.main[e]:
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
            if not phase:
                # vector netting: the net P and Q into the total's fields by sign and
                # quadrant, as split() counts them
                b = n * FIELDS
                s = (net_p * net_p + net_q * net_q) ** 0.5
                q = abs(net_q)
                if net_p >= 0.0:
                    r._add(b + IMP, net_p)
                    r._add(b + S_IMP, s)
                    r._add(b + (Q1 if net_q >= 0.0 else Q1 + 3), q)
                    r._add(tar, net_p)
                else:
                    r._add(b + EXP, -net_p)
                    r._add(b + S_EXP, s)
                    r._add(b + (Q1 + 1 if net_q >= 0.0 else Q1 + 2), q)
                    r._add(tar + 1, -net_p)
            self._t[2] += net_p
        self._c[_WN] = 0
