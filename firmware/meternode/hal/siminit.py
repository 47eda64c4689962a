# What SimSampler() does once: check the scenario (config["sim"], sim.py's header says what
# it holds), make the waves and the buffers.  Loaded by SimSampler.__init__ and forgotten
# after (meternode.forget, docs/memory.md): a running sim board does not hold this code.
import array
import math
import random

from meternode.config import ConfigError, need
from meternode.hal.sim import _at, _wave
from meternode.metrology import floats


def setup(s, board, scen, clock):
    adc = board["adc"]
    s.bits = adc["bits"]
    s.rate = adc["rate"]
    s.block_sets = adc["block"]
    chans = board["channels"]
    s.nch = len(chans)
    s._clock = clock
    # timebase: what the timer can produce, and what the crystal really gives
    s.rate_actual = float(s.rate)
    if need(scen, "timer_us", bool, "sim", default=False):
        s.rate_actual = 1000000.0 / (1000000 // s.rate)  # machine.Timer(freq=): period truncated
    ppm = need(scen, "rate_error_ppm", float, "sim", default=0.0, lo=-50000.0, hi=50000.0)
    s.rate_true = s.rate_actual * (1.0 + ppm * 1e-6)
    s._us_per_set = 1000000.0 / s.rate_true
    s._us_frac = 0.0
    s.stamp_us = clock.us  # ticks_us when the last block's last set was converted
    s.lost = 0  # sets lost since start (wraps below 2**30)
    s._el_s = 0  # simulated time since start: whole seconds ...
    s._el_us = 0  # ... and microseconds into the next one
    s.freq = need(scen, "freq", float, "sim", default=50.0, lo=10.0, hi=500.0)
    s.realtime = scen.get("realtime", False)
    volt = need(scen, "voltage", dict, "sim", default={"rms": 230.0})
    volts = need(scen, "voltages", list, "sim", default=[])
    curs = need(scen, "currents", list, "sim", default=[])
    s._waves = []
    s._is_v = []
    s._mids = []  # per channel: the ADC's mid-scale plus its DC offset, counts
    mid = 1 << (s.bits - 1)
    base_dc = need(scen, "dc", float, "sim", default=0.0, lo=-1000.0, hi=1000.0)
    nv = 0
    ni = 0
    for k, ch in enumerate(chans):
        if ch["kind"] == "voltage":
            w = "sim.voltages[%d]" % nv
            if nv < len(volts):
                c = volts[nv]
            else:
                c = dict(volt)
                c.setdefault("angle", 120.0 * nv)
            if not isinstance(c, dict):
                raise ConfigError("%s must be an object" % w)
            nv += 1
        else:
            w = "sim.currents[%d]" % ni
            c = curs[ni] if ni < len(curs) else {"rms": 0.0}
            if not isinstance(c, dict):
                raise ConfigError("%s must be an object" % w)
            ni += 1
        s._is_v.append(ch["kind"] == "voltage")
        s._mids.append(mid + (base_dc + need(c, "dc", float, w, default=0.0, lo=-1000.0, hi=1000.0)))
        rms = need(c, "rms", float, w, lo=0.0)
        angle = need(c, "angle", float, w, default=0.0)
        hs = need(c, "harmonics", list, w, default=[])
        lead = need(c, "lead", float, w, default=0.0, lo=-30.0, hi=30.0)
        if ch["scale"] <= 0:
            raise ConfigError("%s: scale must be positive" % w)
        wave = floats(9 + 5 * len(hs))  # (sim._wave says what it holds)
        wave[2] = ch["scale"]
        wave[3] = lead
        wave[4] = 1.0  # the fundamental: order 1, relative amplitude 1, phase 0
        wave[5] = 1.0
        j = 9
        for n, h in enumerate(hs):
            if not isinstance(h, list) or len(h) != 3:
                raise ConfigError("%s.harmonics[%d] must be [order, relative amplitude, phase deg]" % (w, n))
            if not isinstance(h[0], int) or not 1 < h[0] < 64:
                raise ConfigError("%s.harmonics[%d] order must be an integer 2..63, not %r" % (w, n, h[0]))
            wave[j] = h[0]
            wave[j + 1] = float(h[1])
            wave[j + 2] = float(h[2])
            j += 5
        _wave(wave, rms, angle)
        s._waves.append(wave)
    # current waves take the angle of the voltage they are paired with (3-phase)
    names = [ch["name"] for ch in chans]
    s._vref = []
    for k, ch in enumerate(chans):
        if ch["kind"] == "current" and ch.get("voltage") in names:
            s._vref.append(names.index(ch["voltage"]))
        else:
            s._vref.append(k if ch["kind"] == "voltage" else s._is_v.index(True))
    s._skew = adc.get("skew_us", 0.0) * 1e-6  # s: channel k is converted k x this into its set
    enob = need(scen, "enob", float, "sim", default=float(s.bits), lo=4.0, hi=float(s.bits))
    # Total noise of an ideal converter with `enob` bits, minus the quantisation it adds itself.
    q_rms = 2.0 ** (s.bits - enob) / math.sqrt(12.0) if enob < s.bits else 0.0
    extra = q_rms * q_rms - 1.0 / 12.0
    s._noise = math.sqrt(extra) if extra > 0 else 0.0
    random.seed(need(scen, "seed", int, "sim", default=1))
    drift = need(scen, "drift", dict, "sim", default={})
    s._drift_hz = need(drift, "hz", float, "sim.drift", default=0.0, lo=0.0, hi=10.0)
    s._dper = int(need(drift, "period_s", float, "sim.drift", default=60.0, lo=0.1) * 1000000)  # us
    s._events = sorted(need(scen, "events", list, "sim", default=[]), key=_at)
    for n, ev in enumerate(s._events):
        if not isinstance(ev, dict) or not ("freq" in ev or "current" in ev or "voltage" in ev or "lose" in ev):
            raise ConfigError("sim.events[%d] must set freq, current, voltage or lose: %r" % (n, ev))
    s._ev = 0
    s.load_on = True  # False while the board's relay is open: no load current
    s.vfactor = 1.0
    s._v_until = -1.0
    # the waveform's phase (see the header): _ph / _den turns; _sub = 2**k with
    # rate_true * _sub < 2**29, so _ph + a step (< _den) stays a small int on a board
    sub = 1
    while s.rate_true * sub * 2 < 1 << 29:
        sub *= 2
    s._sub = sub
    s._den = int(s.rate_true * sub + 0.5)
    s._ph = 0
    n = s.nch * s.block_sets
    # the block's buffer: one, refilled by each next_block() (a block is valid until the
    # following call: hal/__init__.py), in a tuple as tests and benchmarks read it
    s._bufs = (array.array("H", bytes(2 * n)),)
    s.sets = 0  # sample sets produced since start (wraps below 2**30)
    s._dus = 0  # drift phase, us into the drift period
    s._wall_next = None  # realtime: wall ticks_ms when the next block is due
    s._pace_us = 0
