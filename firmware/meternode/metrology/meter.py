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
#   - P and Q come from four-tap interpolation weights (convert.py) computed from the
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
import gc
import math

from micropython import const

from meternode import ConfigError, forget
from meternode.metrology import kernels
from meternode.metrology.convert import convert

_H = kernels.HIST
_MASK = const(0x3FFFFFFF)  # counters wrap below 2**30: small ints on a 32-bit board


def _init():
    # meterinit.py (the checks and buffers, made once; the calibration's changes), loaded for
    # one call and forgotten at once: the caller's reference keeps it until the call returns
    # (collected first: compiled from source, it needs its parse tree in one piece)
    gc.collect()
    from meternode.metrology import meterinit

    forget("meternode.metrology.meterinit")
    return meterinit


class Meter:
    def __init__(self, board, cal=None, options=None):
        _init().setup(self, board, cal, options)

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
        _init().cal_cache(self)

    def calibration(self):
        d = {}
        for c in self.cal:
            d[c.name] = c.as_dict()
        return d

    def use_rate(self, rate_actual):
        # The rate the sampler's timer really produces (hal: sampler.rate_actual), before
        # the first block: the measurement starts from it.
        self.timebase.use(rate_actual)
        self.rate = self.energy.rate = self.timebase.rate

    def _delay(self, f):
        d = int(self.rate / (4 * f) + 0.5)  # nearest: steady at 20 for 50 Hz at 4 kS/s
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
                if dl:  # a gap: the signal is discontinuous
                    self.gaps = (self.gaps + 1) & _MASK
                    self.lost_sets = (self.lost_sets + dl) & _MASK
                    self._break(dl, dl <= self._fill_max)
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
                self.rate = self.energy.rate = tb.rate

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
        kernels.move_add(acc, acc, len(acc))  # clears
        if self.quality is not None:
            self.quality.skip(n + lost)
        if fill and self.cycles and self.freq > 0.0:
            self.energy.cycle(self.p, self.q, self.s, n + lost)
            self.filled_sets = (self.filled_sets + n + lost) & _MASK

    def _run(self, stop):
        work = self._work
        acc = self._acc
        nch = self.nch
        a0 = self.v_channel
        i = _H
        while i < stop:
            lim = i + kernels.MAX_SETS - acc[self._n_at]
            if lim > stop:
                lim = stop
            k = kernels.find_rise(work, i, lim, nch, a0, self._mid[a0], self._hyst, self._state)
            end = lim if k < 0 else k
            if end > i:  # the run's sets into the open cycle (and the capture, with quality)
                kernels.block_sums(0, 0, 0, work, i, end, nch, self._d, self._lay, self._mid, acc)
                acc[self._n_at] += end - i
                if self._cap_on:
                    m = min(end - i, self._cap_sets - self._cap_n)
                    kernels.copy16(work, i * nch, self._capbuf, self._cap_n * nch, m * nch)
                    self._cap_n += m
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

    # -- per cycle --------------------------------------------------------------------------
    def _cross(self, f):
        # A run ends: at a crossing, a fraction `f` of a set after the run's last set, or
        # after MAX_SETS sets without one (f = None).  The cycle's length in sets is its whole
        # sets n (the run) plus f minus the previous crossing's fraction: a small float
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
        self._pf = f
        if f is None or pf is None or n == 0:
            if self._bc:
                convert(self, True)  # the batch holds whole cycles: measure them first
                mid_n = 0  # its sums moved the mids already; this run's would move them again
            else:
                mid_n = n
            if self.quality is not None:
                if f is None:
                    self.quality.no_mains(n)
                else:
                    self.quality.skip(n)
            if f is None:
                self.freq = 0.0
                self.unmeasured = (self.unmeasured + 1) & _MASK
                self._fs = 0.0
            self._cap_on = False
            self._track_mid(acc, mid_n)
            kernels.move_add(acc, acc, len(acc))  # clears
            return
        length = n + f - pf  # sets in this cycle
        self.freq = self.rate / length  # this cycle's
        if self.quality is not None:
            self.quality.meter_cycle(self, n, length)
        # A batch does not mix signs: an element whose P or Q changes sign (beyond a band of
        # 0.5 % of its nominal power) starts a new batch, so import / export and the
        # quadrants are netted cycle by cycle as if the cycles were converted one by one;
        # only cycles inside the band may be netted with the others of their batch.
        sg = kernels.signs(acc, self._lim, self.elements, n)
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
        self._bf1 = f
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
            kernels.track_mids(acc, self._sx, self._mid, self.nch, n, self._mid0 - sw, self._mid0 + sw)

    def flush(self):
        # End the creep window now (before a checkpoint, a test reading or shutdown); the
        # cycles of an open batch are measured first.
        self._convert_open()
        self.energy.flush()

    # -- reporting --------------------------------------------------------------------------

    def snapshot(self):
        # Averages over the cycles since the last snapshot (RMS values as RMS of RMS), from
        # the reporting window's sums (convert() adds each batch); None before the first
        # measured cycle.  An open batch is measured first.  The dict node.py and the
        # telemetry encoder read: keys cycles, v, f, elements with name, i, p, p_min, p_max,
        # e_imp_wh, e_exp_wh; plus q, s, pf, quadrant, reactive and apparent energy,
        # voltages, tariff, totals, demand and power quality when enabled.  Energies are
        # there twice: as float Wh (e_imp_wh ...: convenient, but a single-precision float
        # steps by 1 Wh at 10 MWh) and as the registers' exact integers (e_imp_mwh ...),
        # which the freeze records and the telemetry encoder use.  The timebase:
        # sample_rate (measured sets/s), gaps and lost_sets (the sampler's lost sets).
        self._convert_open()
        n = self._wn
        if n == 0:
            return None
        r = self.registers
        w = self._ww
        k = 5 * self.elements
        vrms = []  # (loops, not comprehensions: each of those is a function held with the module)
        volts = {}
        for a in range(self.nch):
            vrms.append(math.sqrt(w[k + a] / n))
            if self.cal[a].kind == "voltage":
                volts[self.names[a]] = vrms[a]
        els = []
        for e in range(self.elements):
            a = self.pairs[e][0]
            k = 5 * e
            irms = math.sqrt(w[k] / n)
            p = w[k + 1] / n
            q = w[k + 2] / n
            s = vrms[a] * irms
            pf = p / s if s > 0.0 else 0.0
            qm = r.quadrants(e)  # mvarh
            qv = []
            for x in qm:
                qv.append(x / 1000)
            els.append(
                {
                    "name": self.names[self.pairs[e][1]],  # the element's current channel
                    "v": vrms[a],
                    "i": irms,
                    "p": p,
                    "q": q,
                    "s": s,
                    "pf": max(-1.0, min(1.0, pf)),
                    # by the signs of P and Q: 1 = +P +Q (import, inductive), 2 = -P +Q,
                    # 3 = -P -Q, 4 = +P -Q (import, capacitive)
                    "quadrant": (1 if q >= 0.0 else 4) if p >= 0.0 else (2 if q >= 0.0 else 3),
                    "p_min": w[k + 3],
                    "p_max": w[k + 4],
                    "e_imp_wh": r.get(e, 0) / 1000,
                    "e_exp_wh": r.get(e, 1) / 1000,
                    "e_q_varh": qv,
                    "e_s_vah": (r.get(e, 6) + r.get(e, 7)) / 1000,
                    "e_imp_mwh": r.get(e, 0),
                    "e_exp_mwh": r.get(e, 1),
                    "e_q_mvarh": qm,
                    "e_s_mvah": r.get(e, 6) + r.get(e, 7),
                }
            )
        snap = {
            "cycles": n,
            "v": vrms[self.v_channel],
            "voltages": volts,
            "f": w[-1] / n,
            "elements": els,
            "tariff": r.tariff,
            "e_imp_wh": r.total_import() / 1000,
            "e_exp_wh": r.total_export() / 1000,
            "e_imp_mwh": r.total_import(),
            "e_exp_mwh": r.total_export(),
            "demand_w": self.energy.demand_w,
            "md_w": r.md[0] / 1000,
            "sample_rate": self.rate,
            "gaps": self.gaps,
            "lost_sets": self.lost_sets,
        }
        if self.quality is not None:
            snap["pq"] = self.quality.report()
        for k in range(len(w)):  # the next window
            w[k] = 0
        self._wn = 0
        return snap
