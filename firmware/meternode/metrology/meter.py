# The meter: turns sample blocks into per-cycle quantities and energy.
#
# Each block goes through two viper kernels: find_rise() finds the positive-going voltage
# zero crossing (with hysteresis), accumulate() sums x, x*x and v*i between crossings.  At
# each crossing the run of one mains cycle closes: its sums become Vrms, Irms and active
# power per element (the DC offset is removed from the sums exactly, as EmonLibCM does,
# not by a filter), the cycle's energy goes into the registers, and the cycle joins the
# reporting window.  Frequency comes from the interpolated crossing instants.
import array
import math

from meternode.metrology import kernels
from meternode.metrology.registers import Registers


class Meter:
    def __init__(self, board, cal=None):
        adc = board["adc"]
        chans = board["channels"]
        self.nch = len(chans)
        self.rate = adc["rate"]
        self._mid = 1 << (adc["bits"] - 1)
        self._hyst = max(2, 1 << (adc["bits"] - 7))  # ~1.5 % of full scale
        cal = cal or {}
        self.names = [ch["name"] for ch in chans]
        self._scale = []
        for ch in chans:
            c = cal.get(ch["name"], {})
            self._scale.append(ch["scale"] * c.get("gain", 1.0))
        # starting current per element (A): registration below it is creep, not energy
        self._start = [ch.get("start_current", 0.001 * ch.get("nominal", 5.0)) for ch in chans]
        self.elements = self.nch - 1
        self.registers = Registers(self.elements)
        self._acc = array.array("i", bytes(4 * kernels.acc_len(self.nch)))
        self._state = array.array("i", [0])
        self._base = 0  # global index of the current block's first set
        self._last_v = self._mid
        self._last_cross = None  # global position (sets, fractional) of the previous crossing
        self.cycles = 0
        self.overruns = 0
        self.freq = 0.0
        self.vrms = 0.0
        self.irms = [0.0] * self.elements
        self.p = [0.0] * self.elements
        self._reset_window()

    def _reset_window(self):
        e = self.elements
        self._w_n = 0
        self._w_v2 = 0.0
        self._w_f = 0.0
        self._w_i2 = [0.0] * e
        self._w_p = [0.0] * e
        self._w_pmin = [None] * e
        self._w_pmax = [None] * e

    def feed(self, buf, nsets):
        nch = self.nch
        acc = self._acc
        count = 3 * nch - 1
        i = 0
        while i < nsets:
            k = kernels.find_rise(buf, i, nsets, nch, self._mid, self._hyst, self._state)
            end = nsets if k < 0 else k
            room = kernels.MAX_SETS - acc[count]
            if end - i > room:
                # no crossing for MAX_SETS sets: no mains (or DC); close the run unmeasured
                kernels.accumulate(buf, i, i + room, nch, self._mid, acc)
                self._close(None)
                i += room
                continue
            kernels.accumulate(buf, i, end, nch, self._mid, acc)
            if k < 0:
                break
            vp = buf[(k - 1) * nch] if k > 0 else self._last_v
            vk = buf[k * nch]
            frac = (self._mid - vp) / (vk - vp) if vk != vp else 0.0
            self._close(self._base + k - 1 + frac)
            i = k
        self._last_v = buf[(nsets - 1) * nch]
        self._base += nsets

    def _close(self, cross):
        acc = self._acc
        nch = self.nch
        n = acc[3 * nch - 1]
        prev = self._last_cross
        self._last_cross = cross
        if cross is None or prev is None or n == 0:
            kernels.clear(acc, len(acc))
            if cross is None:
                self.freq = 0.0
            return
        self.freq = self.rate / (cross - prev)
        sv = acc[0] / n
        vs = self._scale[0]
        self.vrms = vs * math.sqrt(max(0.0, acc[1] / n - sv * sv))
        dt = n / self.rate
        w = self._w_n
        for k in range(1, nch):
            e = k - 1
            si = acc[2 * k] / n
            s = self._scale[k]
            irms = s * math.sqrt(max(0.0, acc[2 * k + 1] / n - si * si))
            p = vs * s * (acc[2 * nch + e] / n - sv * si)
            if irms < self._start[k]:
                p = 0.0
            self.irms[e] = irms
            self.p[e] = p
            self.registers.add(e, p * dt)
            self._w_i2[e] += irms * irms
            self._w_p[e] += p
            if w == 0 or p < self._w_pmin[e]:
                self._w_pmin[e] = p
            if w == 0 or p > self._w_pmax[e]:
                self._w_pmax[e] = p
        self._w_v2 += self.vrms * self.vrms
        self._w_f += self.freq
        self._w_n = w + 1
        self.cycles += 1
        kernels.clear(acc, len(acc))

    def snapshot(self):
        # Averages over the cycles since the last snapshot (RMS values as RMS of RMS).
        n = self._w_n
        if n == 0:
            return None
        els = []
        for e in range(self.elements):
            irms = math.sqrt(self._w_i2[e] / n)
            p = self._w_p[e] / n
            els.append(
                {
                    "name": self.names[e + 1],
                    "i": irms,
                    "p": p,
                    "p_min": self._w_pmin[e],
                    "p_max": self._w_pmax[e],
                    "e_imp_wh": self.registers.imp[e] / 1000.0,
                    "e_exp_wh": self.registers.exp[e] / 1000.0,
                }
            )
        snap = {
            "cycles": n,
            "v": math.sqrt(self._w_v2 / n),
            "f": self._w_f / n,
            "elements": els,
        }
        self._reset_window()
        return snap
