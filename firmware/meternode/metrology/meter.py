# The meter: turns sample blocks into per-cycle quantities and energy, with no gaps.
#
# Each block is copied behind HIST sets of history (kernels.copy16) and cut at the
# positive-going zero crossings of the first voltage channel (kernels.find_rise, with
# hysteresis).  Between crossings the kernels add per-channel sums and per-pair products;
# at each crossing one mains cycle closes (_close):
#   - DC offset is removed from the sums exactly (EmonLibCM's end-of-period method), and
#     each channel's mid follows its DC level so the integer sums stay small;
#   - P and Q come from the two-sample interpolation (x/y) weights computed from this
#     cycle's frequency, the channels' conversion skew and their calibrated phase;
#   - Vrms, Irms, S = Vrms*Irms, PF = P/S with quadrant, frequency from the interpolated
#     crossing instants;
#   - energy goes to a pending store per element that is registered only when the
#     element's mean |P| or |Q| over the registration window (creep_s) reaches the
#     starting threshold: no registration with voltage and no current (creep), and
#     registration from the starting current on (class 0.2S default: 0.1 % of In).
import array
import math

from meternode.config import ConfigError
from meternode.metrology import calibration, interp, kernels
from meternode.metrology.energy import Energy
from meternode.metrology.registers import NETTINGS, Registers
from meternode.metrology.report import Window

_HALF_PI = math.pi / 2.0
_TWO_PI = 2.0 * math.pi
_H = kernels.HIST
_F_TOL = 0.01  # Hz: interpolation weights are recomputed beyond this change
_PH_TOL = 0.002  # degrees


def _opt(d, key, default, lo, hi):
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < lo or v > hi:
        raise ConfigError("metrology.%s must be a number in %r .. %r, not %r" % (key, lo, hi, v))
    return v


class Meter:
    def __init__(self, board, cal=None, options=None):
        adc = board["adc"]
        chans = board["channels"]
        opts = dict(board.get("metrology", {}))
        opts.update(options or {})
        self.nch = nch = len(chans)
        self.rate = adc["rate"]
        bits = adc["bits"]
        if bits > kernels.MAX_BITS:
            raise ConfigError("board.adc.bits = %d: the kernels take at most %d bits" % (bits, kernels.MAX_BITS))
        self.f_nom = float(_opt(opts, "mains_hz", 50.0, 40.0, 70.0))
        if self.rate / (4 * 45.0) + 4 > _H:
            raise ConfigError("board.adc.rate = %d is above %d sets/s (quarter-cycle history)" % (self.rate, 11000))
        self._mid0 = 1 << (bits - 1)
        self._hyst = max(2, 1 << (bits - 6))  # ~3 % of full scale
        self.cal = calibration.resolve(board, cal)
        self.names = [ch["name"] for ch in chans]
        skew = adc.get("skew_us", 0.0) * 1e-6
        self._t_slot = [skew * k for k in range(nch)]  # conversion instant within a set
        volts = [k for k in range(nch) if chans[k]["kind"] == "voltage"]
        self._a0 = volts[0]
        self.v_channel = volts[0]  # the channel whose crossings define the cycles
        self.pairs = []  # (voltage channel, current channel) per element
        for k in range(nch):
            ch = chans[k]
            if ch["kind"] != "current":
                continue
            vname = ch.get("voltage", self.names[volts[0]])
            if vname not in self.names or chans[self.names.index(vname)]["kind"] != "voltage":
                raise ConfigError("board.channels.%s.voltage = %r is not a voltage channel" % (ch["name"], vname))
            self.pairs.append((self.names.index(vname), k))
        self.elements = len(self.pairs)
        self.element_names = [self.names[b] for _, b in self.pairs]
        netting = opts.get("netting", "vector")
        if netting not in NETTINGS:
            raise ConfigError("metrology.netting must be one of %s, not %r" % ("/".join(NETTINGS), netting))
        # board role "main" (default): the element is on the grid connection and counts in the
        # total; "circuit": a sub-circuit CT, measured and registered on its own only
        main = [chans[b].get("role", "main") == "main" for _, b in self.pairs]
        self.registers = Registers(self.elements, int(_opt(opts, "tariffs", 4, 1, 16)), netting, main)
        # starting threshold per element, in W (and var): start_fraction of In at Un
        frac = _opt(opts, "start_fraction", 0.001, 0.0, 0.1)
        thr = []
        for a, b in self.pairs:
            ch = chans[b]
            i_start = ch.get("start_current", frac * ch.get("nominal", 5.0))
            thr.append(0.5 * i_start * chans[a].get("nominal", 230.0))
        self.energy = Energy(
            self.registers,
            thr,
            self.rate,
            int(_opt(opts, "creep_s", 1.0, 0.0, 60.0) * self.rate),
            int(_opt(opts, "demand_s", 900.0, 1.0, 86400.0) * self.rate),
        )
        # buffers, made once
        self._cap = adc["block"]
        if self._cap < _H:
            raise ConfigError("board.adc.block = %d is below %d sets" % (self._cap, _H))
        self._work = array.array("H", bytes(2 * nch * (_H + self._cap)))
        for k in range(_H * nch):
            self._work[k] = self._mid0
        # accumulator: 8 words per pair (kernels.pair_sums), then 2 per voltage channel
        # that no pair covers; _sx[c] is where channel c's sum x (then sum x*x) is.
        self._sx = [-1] * nch
        for e, (a, b) in enumerate(self.pairs):
            if self._sx[a] < 0:
                self._sx[a] = 12 * e
            self._sx[b] = 12 * e + 2
        self._lone = []
        k = 12 * self.elements
        for c in range(nch):
            if self._sx[c] < 0:
                self._sx[c] = k
                self._lone.append(c)
                k += 2
        self._n_at = k
        lay = [len(self.pairs), len(self._lone)]
        for a, b in self.pairs:
            lay += [a, b]
        for c in self._lone:
            lay += [c, self._sx[c]]
        self._lay = array.array("i", lay)
        self._sxa = array.array("i", self._sx)
        self._acc = array.array("i", bytes(4 * (self._n_at + 1)))
        self._state = array.array("i", [0])
        self._mid = array.array("i", [self._mid0] * nch)
        self._d = self._delay(self.f_nom)
        self._means = [0.0] * nch
        self._wt = [0.0] * (10 * self.elements)  # per element: 4 P taps, 4 Q taps, f, sum
        self._m = interp.scratch()
        self._fs = 0.0  # smoothed frequency for the weights
        self._wph = [0.0] * self.elements
        self._wd = [0] * self.elements
        self._base = -_H  # global set index of work[0]
        self._last_cross = None
        self.sets = 0  # sample sets seen
        self.measured_sets = 0  # sets inside closed, measured cycles
        self.cycles = 0
        self.unmeasured = 0  # runs closed without a mains cycle
        self.freq = 0.0
        e = self.elements
        self.vrms = [0.0] * nch  # per channel (voltage channels meaningful)
        self.irms = [0.0] * e
        self.p = [0.0] * e
        self.q = [0.0] * e
        self.s = [0.0] * e
        self.window = Window(nch, self.elements)
        self._cal_cache()
        # power quality (quality.py), opt-in: metrology.quality = true
        self.quality = None
        self._cap_on = False
        if opts.get("quality", False):
            from meternode.metrology.quality import Quality

            self._vidx = volts
            self._vq = [0.0] * len(volts)
            self.quality = Quality(
                [self.names[v] for v in volts],
                [chans[v].get("nominal", 230.0) for v in volts],
                self.f_nom,
                opts.get("pq", {}),
            )
            self._cap_sets = self.rate // 40  # one cycle down to 40 Hz
            self._capbuf = array.array("H", bytes(2 * nch * self._cap_sets))
            self._cap_n = 0

    # -- configuration at run time ----------------------------------------------------------
    def set_tariff(self, i):
        # The tariff-index hook (the policy engine drives it): energy from now on goes to
        # tariff i's registers.
        r = self.registers
        if not isinstance(i, int) or not 0 <= i < r.tariffs:
            raise ValueError("tariff index %r is outside 0..%d" % (i, r.tariffs - 1))
        self.energy.commit()  # what was counted so far belongs to the old tariff
        r.set_tariff(i)

    def set_calibration(self, name, values):
        if name not in self.names:
            raise ConfigError("calibration.%s names no channel" % name)
        self.cal[self.names.index(name)].update(values, "calibration.%s" % name)
        self._cal_cache()

    def _cal_cache(self):
        # Flat per-channel values for the per-cycle maths (properties cost a call each).
        cal = self.cal
        self._sc = [c.scale for c in cal]
        self._off = [c.offset for c in cal]
        self._isv = [c.kind == "voltage" for c in cal]
        self._phc = [None if cal[b].table else cal[b].phase - cal[a].phase for a, b in self.pairs]

    def calibration(self):
        return {c.name: c.as_dict() for c in self.cal}

    def _delay(self, f):
        d = int(self.rate / (4.0 * f) + 0.5)  # nearest: steady at 20 for 50 Hz at 4 kS/s
        return 1 if d < 1 else (_H - 4 if d > _H - 4 else d)

    # -- sampling path ----------------------------------------------------------------------
    def feed(self, buf, nsets):
        nch = self.nch
        work = self._work
        off = 0
        while off < nsets:
            n = nsets - off
            if n > self._cap:
                n = self._cap
            kernels.copy16(buf, off * nch, work, _H * nch, n * nch)
            self._run(_H + n)
            kernels.copy16(work, n * nch, work, 0, _H * nch)
            self._base += n
            self.sets += n
            off += n

    def _run(self, stop):
        work = self._work
        acc = self._acc
        nch = self.nch
        a0 = self._a0
        i = _H
        while i < stop:
            lim = i + kernels.MAX_SETS - acc[self._n_at]
            if lim > stop:
                lim = stop
            k = kernels.find_rise(work, i, lim, nch, a0, self._mid[a0], self._hyst, self._state)
            end = lim if k < 0 else k
            self._accumulate(i, end)
            if k >= 0:
                vp = work[(k - 1) * nch + a0]
                vk = work[k * nch + a0]
                frac = (self._mid[a0] - vp) / (vk - vp) if vk != vp else 0.0
                self._close(self._base + k - 1 + frac)
                i = k
            else:
                if acc[self._n_at] >= kernels.MAX_SETS:
                    self._close(None)  # no crossing for MAX_SETS sets: no mains
                i = lim

    def _accumulate(self, i, end):
        if end > i:
            kernels.block_sums(self._work, i, end, self.nch, self._d, self._lay, self._mid, self._acc)
            self._acc[self._n_at] += end - i
            if self._cap_on:
                m = min(end - i, self._cap_sets - self._cap_n)
                nch = self.nch
                kernels.copy16(self._work, i * nch, self._capbuf, self._cap_n * nch, m * nch)
                self._cap_n += m

    # -- per cycle --------------------------------------------------------------------------
    def _close(self, cross):
        acc = self._acc
        n = acc[self._n_at]
        prev = self._last_cross
        self._last_cross = cross
        if cross is None or prev is None or n == 0:
            if cross is None:
                self.freq = 0.0
                self.unmeasured += 1
                self._fs = 0.0
                if self.quality is not None:
                    self.quality.no_mains(self.sets / self.rate)
            self._cap_on = False
            self._track_mid(n)
            kernels.clear(acc, len(acc))
            return
        f = self.rate / (cross - prev)
        self.freq = f
        # the weights follow a smoothed frequency (1/8 per cycle): crossing noise alone
        # (~0.01 Hz per cycle with an 8.7-bit ADC) then does not re-solve them every cycle
        fs = self._fs
        fs = f if fs == 0.0 or abs(f - fs) > 1.0 else fs + (f - fs) * 0.125
        self._fs = fs
        sx = self._sx
        means = self._means
        sc = self._sc
        off = self._off
        vrms = self.vrms
        inv = 1.0 / n
        for c in range(self.nch):
            k = sx[c]
            m = acc[k] * inv
            means[c] = m
            if self._isv[c]:
                ms = acc[k + 1] * inv - m * m
                r = sc[c] * math.sqrt(ms) if ms > 0.0 else 0.0
                o = off[c]
                if o:
                    r = r * r - o * o
                    r = math.sqrt(r) if r > 0.0 else 0.0
                vrms[c] = r
        wt = self._wt
        wph = self._wph
        d = self._d
        e = 0
        k = 0
        for a, b in self.pairs:
            ms = acc[sx[b] + 1] * inv - means[b] * means[b]
            irms = sc[b] * math.sqrt(ms) if ms > 0.0 else 0.0
            o = off[b]
            if o:
                irms = irms * irms - o * o
                irms = math.sqrt(irms) if irms > 0.0 else 0.0
            ph = self._phc[e]
            if ph is None:  # phase versus current table
                ph = self.cal[b].phase_at(irms) - self.cal[a].phase
            j = 10 * e
            df = fs - wt[j + 8]
            dp = ph - wph[e]
            if df > _F_TOL or df < -_F_TOL or dp > _PH_TOL or dp < -_PH_TOL or d != self._wd[e]:
                self._weights(e, fs, ph, a, b)
            mvi = means[a] * means[b] * n
            g = sc[a] * sc[b] * inv
            self.p[e] = g * (
                wt[j] * acc[k + 4]
                + wt[j + 1] * acc[k + 5]
                + wt[j + 2] * acc[k + 6]
                + wt[j + 3] * acc[k + 7]
                - (wt[j] + wt[j + 1] + wt[j + 2] + wt[j + 3]) * mvi
            )
            self.q[e] = g * (
                wt[j + 4] * acc[k + 8]
                + wt[j + 5] * acc[k + 9]
                + wt[j + 6] * acc[k + 10]
                + wt[j + 7] * acc[k + 11]
                - wt[j + 9] * mvi
            )
            self.irms[e] = irms
            self.s[e] = vrms[a] * irms
            e += 1
            k += 12
        self._track_mid(n)
        self._d = self._delay(fs)
        kernels.clear(acc, len(acc))
        self.cycles += 1
        self.measured_sets += n
        self.energy.cycle(self.p, self.q, self.s, n, self.sets)
        if self.quality is not None:
            self._pq(n, cross)
        self.window.cycle(self)

    def _pq(self, n, cross):
        # Harmonics: from a crossing on, capture round(rate / f) sets -- one period as near
        # as whole sets allow, so noise on the crossing does not change the window -- and
        # analyse them once complete (possibly at the next crossing).
        q = self.quality
        if self._cap_on and self._cap_n >= self._cap_want:
            for c in range(self.nch):
                q.analyse(self.names[c], self._capbuf, c, self._cap_want, self.nch, self._mid[c])
            self._cap_on = False
        vq = self._vq
        for k in range(len(vq)):
            vq[k] = self.vrms[self._vidx[k]]
        if q.cycle(vq, n, cross / self.rate):
            self._cap_on = True
            self._cap_n = 0
            self._cap_want = min(self._cap_sets, int(self.rate / self.freq + 0.5))

    def _weights(self, e, f, ph, a, b):
        # Interpolation weights for element e (interp.py), cached: recomputed when f moves
        # by _F_TOL, the net phase by _PH_TOL or the quarter-cycle delay d changes.
        w = _TWO_PI * f
        dt = self._t_slot[b] - self._t_slot[a] + math.radians(ph) / w
        interp.weights(self._wt, 10 * e, f, self.rate, dt, self._d, self._m)
        self._wph[e] = ph
        self._wd[e] = self._d

    def _track_mid(self, n):
        if n:
            sw = kernels.MID_SWING
            kernels.track_mids(self._acc, self._sxa, self._mid, self.nch, n, self._mid0 - sw, self._mid0 + sw)

    def flush(self):
        # End the creep window now (before a checkpoint, a test reading or shutdown).
        self.energy.flush()

    # -- reporting --------------------------------------------------------------------------

    def snapshot(self):
        # Averages over the cycles since the last snapshot (see report.py); None before the
        # first measured cycle.
        return self.window.snapshot(self)
