# A meter's batch of whole cycles -> quantities (meter.py gathers the batches).
#
# convert(m, at_cross): the batch's integer sums (m._bat: 12 words per pair, 2 per lone
# voltage) over its N sets give, with means mean = sum x / N:
#   - Vrms and Irms with DC removed exactly (EmonLibCM's end-of-period method) and the
#     calibration offset removed in quadrature (rms());
#   - P and Q from the four-tap interpolation weights (interp.py), cached per element and
#     re-solved when the smoothed frequency, the net phase or the delay d moves;
#   - S = Vrms * Irms; then the energy gate (energy.py) and the reporting window.
# Kept apart from meter.py so that each compiles on a small heap (the 128k test heap loads
# both from source).
import math

from meternode.metrology import interp, kernels


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
    fs = f if fs == 0.0 or abs(f - fs) > 1.0 else f + (fs - f) * self._keep[nc]
    self._fs = fs
    sx = self._sx
    means = self._means
    sc, off, isv, phc = self._cc  # (meterinit.cal_cache)
    vrms = self.vrms
    inv = 1.0 / n
    for c in range(self.nch):
        k = sx[c]
        means[c] = acc[k] * inv
        if isv[c]:
            vrms[c] = rms(sc[c], off[c], acc[k], acc[k + 1], inv)
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
            interp.weights(self, e, fs, ph, a, b)
        mvi = means[a] * means[b] * n
        g = sc[a] * sc[b] * inv
        pp[e] = g * (
            wt[j] * acc[k + 4]
            + wt[j + 1] * acc[k + 5]
            + wt[j + 2] * acc[k + 6]
            + wt[j + 3] * acc[k + 7]
            - wt[j + 10] * mvi
        )
        qq[e] = g * (
            wt[j + 4] * acc[k + 8]
            + wt[j + 5] * acc[k + 9]
            + wt[j + 6] * acc[k + 10]
            + wt[j + 7] * acc[k + 11]
            - wt[j + 9] * mvi
        )
        self.irms[e] = irms
        self.s[e] = vrms[a] * irms
        if main[e]:  # the grid connection's net power: a sub-circuit CT is inside it already
            ptot += pp[e]
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
    self.energy.cycle(pp, qq, self.s, n)
    self.window.cycle(self, nc, f)
    self.seconds.batch(nc, f, vrms[self.v_channel], imax, ptot)
