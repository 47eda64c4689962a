# The meter: turns sample blocks into per-cycle quantities and energy, with no gaps.
#
# Each block is copied behind HIST sets of history (kernels.copy16) and cut at the
# positive-going zero crossings of the first voltage channel (kernels.find_rise, with
# hysteresis).  Between crossings the kernels add per-channel sums and per-pair products;
# at each crossing one mains cycle closes (_cross) and its integer sums join a batch of
# whole cycles (metrology.batch_cycles, default 5, bounded by MAX_SETS sets); each batch is
# converted at once (_convert), which divides the per-cycle float maths in MicroPython --
# the meter's main cost -- by the batch length:
#   - DC offset is removed from the sums exactly (EmonLibCM's end-of-period method, over
#     the batch's whole cycles), and each channel's mid follows its DC level so the integer
#     sums stay small;
#   - P and Q come from four-tap interpolation weights (interp.py) computed from the
#     smoothed frequency, the channels' conversion skew and their calibrated phase;
#   - Vrms, Irms, S = Vrms*Irms, PF = P/S with quadrant (means over the batch), frequency
#     from the interpolated crossing instants (the batch's mean);
#   - power quality (opt-in) still sees every cycle: its per-cycle voltage RMS comes from
#     the cycle's own sums before they join the batch;
#   - energy goes to a pending store per element that is registered only when the
#     element's mean |P| or |Q| over the registration window (creep_s) reaches the
#     starting threshold: no registration with voltage and no current (creep), and
#     registration from the starting current on (class 0.2S default: 0.1 % of In).
#
# Arithmetic that is the same on a board (ARCHITECTURE.md): a zero crossing is a fraction of
# a set inside the current block, and a cycle's length is its whole sets plus the
# difference of two such fractions -- never an absolute sample index, which a single-
# precision float loses within hours; the set counters wrap below 2**30.  The sample rate
# is measured (timebase.py) from the sampler's (lost, stamp_us), given to feed(): energy
# and frequency use the measured rate.  Sets the sampler lost are a gap: counted, the open
# cycle discarded, the lost time registered at the last measured power up to gap_fill_s.
import array

from micropython import const

from meternode.config import ConfigError
from meternode.metrology import calibration, interp, kernels
from meternode.metrology.convert import convert
from meternode.metrology.energy import Energy
from meternode.metrology.registers import NETTINGS, Registers
from meternode.metrology.report import Window
from meternode.metrology.seconds import Seconds
from meternode.metrology.timebase import Timebase

_H = kernels.HIST
_MASK = const(0x3FFFFFFF)  # counters wrap below 2**30: small ints on a 32-bit board


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
        self.rate_nominal = rate = adc["rate"]  # board.adc.rate, sets/s (int)
        tb = opts.get("timebase", "measured")
        if tb not in ("measured", "fixed"):
            raise ConfigError("metrology.timebase must be measured or fixed, not %r" % (tb,))
        self.timebase = Timebase(rate, tb == "measured")
        self.rate = self.timebase.rate  # sets/s, measured (float)
        bits = adc["bits"]
        if bits > kernels.MAX_BITS:
            raise ConfigError("board.adc.bits = %d: the kernels take at most %d bits" % (bits, kernels.MAX_BITS))
        self.f_nom = float(_opt(opts, "mains_hz", 50.0, 40.0, 70.0))
        if rate / (4 * 45.0) + 4 > _H:
            raise ConfigError("board.adc.rate = %d is above %d sets/s (quarter-cycle history)" % (rate, 11000))
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
        # sign band for batching (kernels.signs): 0.5 % of the element's nominal power, or
        # its starting threshold if larger -- well above one cycle's noise in Q at PF 1
        self._band = [
            max(thr[e], 0.005 * chans[a].get("nominal", 230.0) * chans[b].get("nominal", 5.0))
            for e, (a, b) in enumerate(self.pairs)
        ]
        self.energy = Energy(
            self.registers,
            thr,
            self.rate,
            int(_opt(opts, "creep_s", 1.0, 0.0, 60.0) * rate),
            int(_opt(opts, "demand_s", 900.0, 1.0, 86400.0) * rate),
        )
        # a gap up to this many sets is registered at the last measured power
        self._fill_max = int(_opt(opts, "gap_fill_s", 1.0, 0.0, 60.0) * rate)
        # buffers, made once
        self._cap = adc["block"]
        if self._cap < _H:
            raise ConfigError("board.adc.block = %d is below %d sets" % (self._cap, _H))
        self._work = array.array("H", bytes(2 * nch * (_H + self._cap)))
        for k in range(_H * nch):
            self._work[k] = self._mid0
        self._layout()
        self._acc = array.array("i", bytes(4 * (self._n_at + 1)))  # the open cycle
        self._bat = array.array("i", bytes(4 * (self._n_at + 1)))  # the batch of whole cycles
        self._bn = 0  # sets in the batch
        self._bc = 0  # cycles in the batch
        self._bf0 = 0.0  # fraction of a set at the crossing that opened the batch
        self._bf1 = 0.0  # ... and at the one that closed its last cycle
        # cycles converted together (see _cross); 1 = per cycle
        self._batch = int(_opt(opts, "batch_cycles", 5, 1, 64))
        # frequency smoothing: 1/8 per cycle, (7/8)**c for a batch of c cycles
        self._keep = [0.875**c for c in range(self._batch + 1)]
        self._state = array.array("i", [0])
        self._mid = array.array("i", [self._mid0] * nch)
        self._d = self._delay(self.f_nom)
        self._means = [0.0] * nch
        self._wt = [0.0] * (11 * self.elements)  # per element: 4 P taps, 4 Q taps, f, Q sum, P sum
        self._m = interp.scratch()
        self._fs = 0.0  # smoothed frequency for the weights
        self._wph = [0.0] * self.elements
        self._wd = [0] * self.elements
        self._pf = None  # fraction of a set at the previous crossing (None: no cycle open)
        # counters (all wrap below 2**30; compare them by difference & 0x3FFFFFFF)
        self.sets = 0  # sample sets fed
        self.measured_sets = 0  # sets inside closed, measured cycles
        self.cycles = 0
        self.unmeasured = 0  # runs closed without a mains cycle
        self.gaps = 0  # times the sampler reported lost sets
        self.lost_sets = 0  # sets it lost
        self.filled_sets = 0  # sets of gaps registered at the last measured power
        self._lost_seen = None  # the sampler's `lost` at the last block
        self.freq = 0.0
        e = self.elements
        self.vrms = [0.0] * nch  # per channel (voltage channels meaningful)
        self.irms = [0.0] * e
        self.p = [0.0] * e
        self.q = [0.0] * e
        self.s = [0.0] * e
        self.window = Window(nch, self.elements)
        self.seconds = Seconds(rate)  # one summary per measured second (policy engine)
        self._e_import = self.registers.low_import  # bound once: called per closed second
        self._lim = array.array("i", bytes(4 * self.elements))
        self._bm = 0  # the batch's signs (kernels.signs)
        self._nsg = min(self.elements, 8)  # signs has 8 bits per kind: elements 9.. batch freely
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
                rate,
            )
            self._cap_sets = rate // 40  # one cycle down to 40 Hz
            self._capbuf = array.array("H", bytes(2 * nch * self._cap_sets))
            self._cap_n = 0

    def _layout(self):
        # accumulator: 12 words per pair (kernels.block_sums), then 2 per voltage channel
        # that no pair covers; _sx[c] is where channel c's sum x (then sum x*x) is.
        self._sx = [-1] * self.nch
        for e, (a, b) in enumerate(self.pairs):
            if self._sx[a] < 0:
                self._sx[a] = 12 * e
            self._sx[b] = 12 * e + 2
        self._lone = []
        k = 12 * self.elements
        for c in range(self.nch):
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

    # -- configuration at run time ----------------------------------------------------------
    def set_tariff(self, i):
        # The tariff-index hook (the policy engine drives it): energy from now on goes to
        # tariff i's registers.
        r = self.registers
        if not isinstance(i, int) or not 0 <= i < r.tariffs:
            raise ValueError("tariff index %r is outside 0..%d" % (i, r.tariffs - 1))
        self._convert_open()
        self.energy.commit()  # what was counted so far belongs to the old tariff
        r.set_tariff(i)

    def set_calibration(self, name, values):
        if name not in self.names:
            raise ConfigError("calibration.%s names no channel" % name)
        self._convert_open()  # the cycles so far with the calibration they were taken with
        self.cal[self.names.index(name)].update(values, "calibration.%s" % name)
        self._cal_cache()

    def _cal_cache(self):
        # Flat per-channel values for the per-cycle maths (properties cost a call each).
        cal = self.cal
        self._sc = [c.scale for c in cal]
        self._off = [c.offset for c in cal]
        self._isv = [c.kind == "voltage" for c in cal]
        self._phc = [None if cal[b].table else cal[b].phase - cal[a].phase for a, b in self.pairs]
        # the sign band per element in raw product units per set (kernels.signs)
        lim = self._lim
        for e in range(self.elements):
            a, b = self.pairs[e]
            g = abs(self._sc[a] * self._sc[b])
            x = self._band[e] / g if g > 0.0 else 0.0
            lim[e] = int(min(x, 4000000.0))

    def calibration(self):
        return {c.name: c.as_dict() for c in self.cal}

    def use_rate(self, rate_actual):
        # The rate the sampler's timer really produces (hal: sampler.rate_actual), before
        # the first block: the measurement starts from it.
        self.timebase.use(rate_actual)
        self._set_rate(self.timebase.rate)

    def _set_rate(self, r):
        self.rate = r
        self.energy.rate = r

    def _delay(self, f):
        d = int(self.rate / (4.0 * f) + 0.5)  # nearest: steady at 20 for 50 Hz at 4 kS/s
        return 1 if d < 1 else (_H - 4 if d > _H - 4 else d)

    # -- sampling path ----------------------------------------------------------------------
    def feed(self, buf, nsets, lost=None, stamp_us=None):
        # One block of nsets sets.  lost / stamp_us: the sampler's timebase after the
        # block (hal/__init__.py); without them the rate stays rate_actual.
        dl = 0
        if lost is not None:
            seen = self._lost_seen
            self._lost_seen = lost
            if seen is not None:
                dl = (lost - seen) & _MASK
                if dl:
                    self._gap(dl)
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
            self.sets = (self.sets + n) & _MASK
            off += n
        self.seconds.sets(nsets + dl, self._e_import)
        if stamp_us is not None:
            tb = self.timebase
            tb.block(nsets + dl, stamp_us)
            if tb.rate != self.rate:
                self._set_rate(tb.rate)

    def _gap(self, n):
        # The sampler lost n sets before this block: the signal is discontinuous.
        self.gaps = (self.gaps + 1) & _MASK
        self.lost_sets = (self.lost_sets + n) & _MASK
        self._break(n, n <= self._fill_max)

    def coast(self, n):
        # n sets of steady signal that were not sampled (the sim's fast-forward, see
        # SimSampler.coast): registered at the last measured power, counters and the
        # timebase run on; not a gap.
        self._break(n, True)
        self.sets = (self.sets + n) & _MASK
        self.seconds.sets(n, self._e_import)
        self.timebase.restart()  # no stamps in between: measure afresh from the next block

    def _break(self, lost, fill):
        # A discontinuity: the batch's whole cycles are measured, the open cycle is
        # discarded (its sets and the lost ones registered at the last measured power when
        # `fill`), and the next crossing starts afresh.
        acc = self._acc
        n = acc[self._n_at]
        if self._bc:
            convert(self, True)
            mid_n = 0
        else:
            mid_n = n
        self._pf = None
        self._cap_on = False
        self._track_mid(acc, mid_n)
        kernels.clear(acc, len(acc))
        if self.quality is not None:
            self.quality.skip(n + lost)
        if fill and self.cycles and self.freq > 0.0:
            self.energy.cycle(self.p, self.q, self.s, n + lost)
            self.filled_sets = (self.filled_sets + n + lost) & _MASK

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
                # the crossing lies this fraction of a set after set k - 1 (a small float:
                # no absolute index, see _cross)
                self._cross((self._mid[a0] - vp) / (vk - vp) if vk != vp else 0.0)
                i = k
            else:
                if acc[self._n_at] >= kernels.MAX_SETS:
                    self._cross(None)  # no crossing for MAX_SETS sets: no mains
                i = lim

    def _accumulate(self, i, end):
        if end > i:
            kernels.block_sums(0, 0, 0, self._work, i, end, self.nch, self._d, self._lay, self._mid, self._acc)
            self._acc[self._n_at] += end - i
            if self._cap_on:
                m = min(end - i, self._cap_sets - self._cap_n)
                nch = self.nch
                kernels.copy16(self._work, i * nch, self._capbuf, self._cap_n * nch, m * nch)
                self._cap_n += m

    # -- per cycle --------------------------------------------------------------------------
    def _cross(self, frac):
        # A run ends: at a crossing, `frac` of a set after the run's last set, or after
        # MAX_SETS sets without one (frac = None).  The cycle's length in sets is its whole
        # sets n (the run) plus frac minus the previous crossing's fraction: a small float
        # whatever the uptime.  A whole cycle's integer sums move into the
        # batch (kernels.move_add); the batch is converted to quantities (convert.py) when it
        # holds batch_cycles cycles or the next cycle could take it past MAX_SETS sets (the
        # int32 bound holds for the batch as for one run), and before a cycle whose signs
        # differ from the batch's joins it.  The channel mids and the
        # quarter-cycle delay change only at a conversion, so every cycle of a batch is
        # summed with the same ones and the batch's DC removal is as exact as a cycle's.
        acc = self._acc
        n = acc[self._n_at]
        pf = self._pf
        self._pf = frac
        if frac is None or pf is None or n == 0:
            if self._bc:
                convert(self, True)  # the batch holds whole cycles: measure them first
                mid_n = 0  # its sums moved the mids already; this run's would move them again
            else:
                mid_n = n
            if self.quality is not None:
                if frac is None:
                    self.quality.no_mains(n)
                else:
                    self.quality.skip(n)
            if frac is None:
                self.freq = 0.0
                self.unmeasured = (self.unmeasured + 1) & _MASK
                self._fs = 0.0
            self._cap_on = False
            self._track_mid(acc, mid_n)
            kernels.clear(acc, len(acc))
            return
        length = n + frac - pf  # sets in this cycle
        self.freq = self.rate / length  # this cycle's
        if self.quality is not None:
            self.quality.meter_cycle(self, n, length)
        # A batch does not mix signs: an element whose P or Q changes sign (beyond a band of
        # 0.5 % of its nominal power) starts a new batch, so import / export and the
        # quadrants are netted cycle by cycle as if the cycles were converted one by one;
        # only cycles inside the band may be netted with the others of their batch.
        sg = kernels.signs(acc, self._lim, self._nsg, n)
        bm = self._bm
        if self._bc and (self._bn + n > kernels.MAX_SETS or (sg & (bm >> 8) | (sg >> 8) & bm) & 0xFF00FF):
            convert(self, False)  # this cycle was summed with the batch's mids and delay: keep them
            bm = 0
        self._bm = bm | sg
        if self._bc == 0:
            self._bf0 = pf
        kernels.move_add(acc, self._bat, len(acc))
        self._bn += n
        self._bc += 1
        self._bf1 = frac
        self.cycles = (self.cycles + 1) & _MASK
        self.measured_sets = (self.measured_sets + n) & _MASK
        if self._bc >= self._batch or self._bn + n > kernels.MAX_SETS:
            convert(self, True)

    def _convert_open(self):
        # Convert an open batch now (its cycles are whole), between crossings or at one.
        if self._bc:
            convert(self, not self._acc[self._n_at])

    def _track_mid(self, acc, n):
        if n:
            sw = kernels.MID_SWING
            kernels.track_mids(acc, self._sxa, self._mid, self.nch, n, self._mid0 - sw, self._mid0 + sw)

    def flush(self):
        # End the creep window now (before a checkpoint, a test reading or shutdown); the
        # cycles of an open batch are measured first.
        self._convert_open()
        self.energy.flush()

    # -- reporting --------------------------------------------------------------------------

    def snapshot(self):
        # Averages over the cycles since the last snapshot (see report.py); None before the
        # first measured cycle.  An open batch is measured first.
        self._convert_open()
        return self.window.snapshot(self)
