# A meter's batch of whole cycles -> quantities (meter.py gathers the batches).
#
# convert(m, at_cross): the batch's integer sums (m._bat: 12 words per pair, 2 per lone
# voltage) over its N sets give, with means mean = sum x / N:
#   - Vrms and Irms with DC removed exactly (EmonLibCM's end-of-period method) and the
#     calibration offset removed in quadrature (rms());
#   - P and Q from the four-tap interpolation weights (weights(), below), cached per
#     element and re-solved when the smoothed frequency, the net phase or the delay d moves;
#   - S = Vrms * Irms; then the energy gate (registers.Energy), the reporting window (its
#     sums, weighted by cycles, for Meter.snapshot) and the measured seconds.
# Kept apart from meter.py so that each compiles on a small heap (the 128k test heap loads
# both from source).
#
# The interpolation weights (solve(), weights()): the kernels give, per voltage/current
# pair, sum v[n-2+m] * i[n-2] for m = -1..2 (P) and the same a quarter cycle (d sets)
# earlier (Q).  The voltage "at" the current sample's true instant -- dt seconds after the
# voltage sample of its set: conversion skew plus CT-minus-VT phase lead -- is
# sum w[m] * v[n+m].  The weights are the solution of
#     sum_m w[m] * exp(i h theta (m - 1 + shift)) = exp(i h omega t*)     for h = 1 and 5
# (real and imaginary parts: four equations, four unknowns), theta = 2 pi f / rate, with
# t* = dt (P, shift 0) or dt - T/4 (Q, shift -d).  They are exact for the fundamental and
# the 5th harmonic; at 2 kS/s the 7th is within 0.8 % (two taps: 8 %), at 4 kS/s 0.1 %
# (two taps: 3.3 %), and the noise gain stays below 1.
import math

from meternode.metrology import kernels


def rms(sc, o, s, q, inv):
    # RMS of one channel from its sums s = sum x, q = sum x*x over 1 / inv sets: the mean
    # removed exactly, times the scale sc, the offset o removed in quadrature.
    m = s * inv
    r = q * inv - m * m
    r = sc * math.sqrt(r) if r > 0.0 else 0.0
    if o:
        r = r * r - o * o
        r = math.sqrt(r) if r > 0.0 else 0.0
    return r


def solve(A, ths, shift, target, out, j):
    # out[j..j+3] = the four weights (see the header); A is a 4x5 scratch matrix, row by row
    # in one float array (row r, column m at A[5 * r + m]: one array, not a list of four).
    r = 0
    for h in (1, 5):
        for part in (0, 1):
            for m in range(4):
                x = h * ths * (m - 1 + shift)
                A[r + m] = math.cos(x) if part == 0 else math.sin(x)
            A[r + 4] = math.cos(h * target) if part == 0 else math.sin(h * target)
            r += 5
    for c in range(4):  # Gaussian elimination with partial pivoting
        rc = 5 * c
        piv = rc
        for r in range(rc + 5, 20, 5):
            if abs(A[r + c]) > abs(A[piv + c]):
                piv = r
        if piv != rc:  # the rows swap
            for m in range(5):
                A[rc + m], A[piv + m] = A[piv + m], A[rc + m]
        for r in range(rc + 5, 20, 5):
            fct = A[r + c] / A[rc + c]
            for m in range(c, 5):
                A[r + m] -= fct * A[rc + m]
    for c in range(3, -1, -1):
        rc = 5 * c
        x = A[rc + 4]
        for m in range(c + 1, 4):
            x -= A[rc + m] * out[j + m]
        out[j + c] = x / A[rc + c]


def weights(m, e, f, ph, a, b):
    # Meter m's interpolation weights for element e (voltage channel a, current b) at
    # frequency f and net phase ph (degrees), into its cache m._wt[j..j+12], j = 13 e:
    # j..j+3 P taps, j+4..j+7 Q taps, then f, the sum of the Q taps, the sum of the P taps,
    # ph and the quarter-cycle delay d they were solved for (convert() re-solves them
    # when f, ph or d moves).
    w = 2 * math.pi * f
    dt = m._t_slot[b] - m._t_slot[a] + math.radians(ph) / w  # conversion skew + phase lead
    ths = w / m.rate
    wt = m._wt
    j = 13 * e
    d = m._d
    solve(m._m, ths, 0, w * dt, wt, j)
    solve(m._m, ths, -d, w * dt - math.pi / 2, wt, j + 4)  # a quarter cycle earlier
    wt[j + 8] = f
    wt[j + 9] = wt[j + 4] + wt[j + 5] + wt[j + 6] + wt[j + 7]
    wt[j + 10] = wt[j] + wt[j + 1] + wt[j + 2] + wt[j + 3]
    wt[j + 11] = ph
    wt[j + 12] = d


def convert(self, at_cross):
    # The batch's sums -> Vrms, Irms, P, Q, S (means over its cycles), energy, window.
    # Between crossings (flush, snapshot, tariff or calibration change) the mids and
    # the delay stay: the open cycle keeps being summed with the ones it started with.
    acc = self._bat
    n = self._bn
    nc = self._bc
    # the batch's mean: its whole sets plus the fractions at its two ends (relative: see
    # Meter._cross), at the measured rate
    f = self.rate * nc / (n + self._bf1 - self._bf0)
    # the weights follow a smoothed frequency (1/8 per cycle): crossing noise alone
    # (~0.01 Hz per cycle with an 8.7-bit ADC) then does not re-solve them every cycle
    fs = self._fs
    fs = f if fs == 0.0 or abs(f - fs) > 1 else f + (fs - f) * self._keep[nc]
    self._fs = fs
    sx = self._sx
    means = self._means
    sc, off, isv, phc = self._cc  # (meterinit.cal_cache)
    vrms = self.vrms
    inv = 1 / n
    # the reporting window (meterinit says what it holds): p_min / p_max are over batches
    # (one cycle each with metrology.batch_cycles = 1); a channel that is not a voltage
    # keeps its V^2 sum at 0
    ww = self._ww
    first = self._wn == 0
    kw = 5 * self.elements
    for c in range(self.nch):
        k = sx[c]
        means[c] = acc[k] * inv
        if isv[c]:
            x = rms(sc[c], off[c], acc[k], acc[k + 1], inv)
            vrms[c] = x
            ww[kw + c] += x * x * nc
    wt = self._wt
    d = self._d
    pp = self.p
    qq = self.q
    e = 0
    k = 0
    imax = 0.0
    ptot = 0.0
    main = self.registers.main
    for a, b in self.pairs:
        irms = rms(sc[b], off[b], acc[k + 2], acc[k + 3], inv)
        ph = phc[e]
        if ph is None:  # phase versus current table
            ph = self.cal[b].phase_at(irms) - self.cal[a].phase
        j = 13 * e
        df = fs - wt[j + 8]
        dp = ph - wt[j + 11]
        # re-solved when f moves by 0.01 Hz, the phase by 0.002 degrees or d changes
        if df > 0.01 or df < -0.01 or dp > 0.002 or dp < -0.002 or d != wt[j + 12]:
            weights(self, e, fs, ph, a, b)
        mvi = means[a] * means[b] * n
        g = sc[a] * sc[b] * inv
        p = g * (
            wt[j] * acc[k + 4]
            + wt[j + 1] * acc[k + 5]
            + wt[j + 2] * acc[k + 6]
            + wt[j + 3] * acc[k + 7]
            - wt[j + 10] * mvi
        )
        q = g * (
            wt[j + 4] * acc[k + 8]
            + wt[j + 5] * acc[k + 9]
            + wt[j + 6] * acc[k + 10]
            + wt[j + 7] * acc[k + 11]
            - wt[j + 9] * mvi
        )
        pp[e] = p
        qq[e] = q
        self.irms[e] = irms
        self.s[e] = vrms[a] * irms
        if main[e]:  # the grid connection's net power: a sub-circuit CT is inside it already
            ptot += p
        kw = 5 * e
        ww[kw] += irms * irms * nc
        ww[kw + 1] += p * nc
        ww[kw + 2] += q * nc
        if first or p < ww[kw + 3]:
            ww[kw + 3] = p
        if first or p > ww[kw + 4]:
            ww[kw + 4] = p
        if irms > imax:
            imax = irms
        e += 1
        k += 12
    if at_cross:
        self._track_mid(acc, n)
        self._d = self._delay(fs)
    kernels.move_add(acc, acc, len(acc))  # clears
    self._bn = 0
    self._bc = 0
    self._bm = 0
    ww[-1] += f * nc
    self._wn += nc
    self.energy.cycle(pp, qq, self.s, n)
    self.seconds.batch(nc, f, vrms[self.v_channel], imax, ptot)
