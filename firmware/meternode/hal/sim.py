# Simulated front end: synthesises the ADC samples a board would produce from a scenario.
#
# A scenario (config["sim"]) describes the mains and the loads, in physical units:
#   {"freq": 50.0, "seed": 1, "enob": 11.0, "dc": 0,
#    "voltage": {"rms": 230.0, "harmonics": [[5, 0.03, 0.0]]},
#    "currents": [{"rms": 10.0, "angle": 30.0, "harmonics": [[3, 0.1, 0.0]]}, ...],
#    "realtime": true}
# `angle` is the degrees the current lags the voltage (30 = inductive load, 180 = pure export).
# Harmonics are [order, amplitude relative to the fundamental, phase in degrees].
# Counts = mid + value / scale (the board's scale, units per count), quantised to the
# board's ADC bits; `enob` adds the noise that brings the converter down to that many
# effective bits.  With the same seed the samples are the same on every run.
import array
import asyncio
import math
import random
import time

from meternode.config import ConfigError, need

_TWO_PI = 2.0 * math.pi


class SimClock:
    # Time advances with the samples produced (sample-accurate); with `realtime` the
    # sampler paces itself to the wall clock so a virtual node runs like a real one.
    def __init__(self, epoch=None):
        self._t0 = time.time() if epoch is None else epoch
        self.ms = 0  # simulated milliseconds since start

    def ticks_ms(self):
        return self.ms

    def time(self):
        return self._t0 + self.ms / 1000.0

    def set_time(self, epoch):
        self._t0 = epoch - self.ms / 1000.0

    async def sleep_ms(self, ms):
        await asyncio.sleep_ms(ms)


class _Wave:
    def __init__(self, rms, angle_deg, harmonics, scale, where):
        if scale <= 0:
            raise ConfigError("%s: scale must be positive" % where)
        peak = rms * math.sqrt(2.0) / scale  # counts
        ph = -angle_deg * math.pi / 180.0
        self.terms = [(1, peak, ph)]
        for n, h in enumerate(harmonics):
            if not isinstance(h, list) or len(h) != 3:
                raise ConfigError("%s.harmonics[%d] must be [order, relative amplitude, phase deg]" % (where, n))
            order, rel, hph = h
            self.terms.append((int(order), peak * rel, ph * order + hph * math.pi / 180.0))

    def at(self, theta):
        s = 0.0
        for order, amp, ph in self.terms:
            s += amp * math.sin(order * theta + ph)
        return s


class SimSampler:
    def __init__(self, board, scen, clock):
        adc = board["adc"]
        self.bits = adc["bits"]
        self.rate = adc["rate"]
        self.block_sets = adc["block"]
        chans = board["channels"]
        self.nch = len(chans)
        self.overruns = 0
        self._clock = clock
        self.freq = need(scen, "freq", float, "sim", default=50.0, lo=10.0, hi=500.0)
        self.realtime = scen.get("realtime", False)
        volt = need(scen, "voltage", dict, "sim", default={"rms": 230.0})
        curs = need(scen, "currents", list, "sim", default=[])
        self._waves = [
            _Wave(
                need(volt, "rms", float, "sim.voltage", lo=0.0),
                0.0,
                volt.get("harmonics", []),
                chans[0]["scale"],
                "sim.voltage",
            )
        ]
        for k in range(1, self.nch):
            c = curs[k - 1] if k - 1 < len(curs) else {"rms": 0.0}
            w = "sim.currents[%d]" % (k - 1)
            self._waves.append(
                _Wave(
                    need(c, "rms", float, w, lo=0.0),
                    need(c, "angle", float, w, default=0.0),
                    c.get("harmonics", []),
                    chans[k]["scale"],
                    w,
                )
            )
        self._scales = [ch["scale"] for ch in chans]
        self._mid = 1 << (self.bits - 1)
        self._top = (1 << self.bits) - 1
        self._dc = need(scen, "dc", float, "sim", default=0.0)
        enob = need(scen, "enob", float, "sim", default=float(self.bits), lo=4.0, hi=float(self.bits))
        # Total noise of an ideal converter with `enob` bits, minus the quantisation it adds itself.
        q_rms = (1 << (self.bits - enob)) / math.sqrt(12.0) if enob < self.bits else 0.0
        extra = q_rms * q_rms - 1.0 / 12.0
        self._noise = math.sqrt(extra) if extra > 0 else 0.0
        random.seed(need(scen, "seed", int, "sim", default=1))
        self._theta = 0.0
        self._dtheta = _TWO_PI * self.freq / self.rate
        n = self.nch * self.block_sets
        self._bufs = (array.array("H", bytes(2 * n)), array.array("H", bytes(2 * n)))
        self._which = 0
        self._sets = 0  # sample sets produced since start
        self._wall0 = None
        self.running = False

    def set_freq(self, f):
        self.freq = f
        self._dtheta = _TWO_PI * f / self.rate

    def set_current(self, k, rms, angle=None):
        # Load step on current channel k (1-based like the channel map); harmonics keep
        # their relative size.
        w = self._waves[k]
        old = w.terms[0][1]
        new = rms * math.sqrt(2.0) / self._scales[k]
        ph = w.terms[0][2] if angle is None else -angle * math.pi / 180.0
        w.terms = [(1, new, ph)] + [(o, a * new / old if old else 0.0, p) for o, a, p in w.terms[1:]]

    def start(self):
        self.running = True
        self._wall0 = time.ticks_ms()

    def stop(self):
        self.running = False

    def _gauss(self):
        # Sum of 4 uniforms: variance 4/12, so scale by sqrt(3) for unit variance.
        r = random.random
        return (r() + r() + r() + r() - 2.0) * 1.7320508

    def fill(self, buf):
        nch = self.nch
        mid = self._mid + self._dc
        top = self._top
        waves = self._waves
        noise = self._noise
        th = self._theta
        dth = self._dtheta
        i = 0
        for _ in range(self.block_sets):
            for c in range(nch):
                x = mid + waves[c].at(th)
                if noise:
                    x += noise * self._gauss()
                v = int(x + 0.5) if x >= 0 else 0
                buf[i] = top if v > top else v
                i += 1
            th += dth
            if th >= _TWO_PI:
                th -= _TWO_PI
        self._theta = th
        self._sets += self.block_sets
        self._clock.ms = (self._sets * 1000) // self.rate

    async def next_block(self):
        if self.realtime:
            due = (self._sets + self.block_sets) * 1000 // self.rate
            while time.ticks_diff(time.ticks_ms(), self._wall0) < due:
                await asyncio.sleep_ms(max(1, due - time.ticks_diff(time.ticks_ms(), self._wall0)))
        else:
            await asyncio.sleep_ms(0)
        self._which ^= 1
        buf = self._bufs[self._which]
        self.fill(buf)
        return buf


class SimHal:
    def __init__(self, board, scen):
        self.clock = SimClock(scen.get("epoch"))
        self.sampler = SimSampler(board, scen, self.clock)
