# What Meter() does once: check the board's front end and the metrology options, resolve
# the calibration, lay out the accumulators and make every buffer (meter.py says what they
# hold), and the per-channel values derived from the calibration (cal_cache: again after
# Meter.set_calibration).  Loaded for the call and forgotten after (meternode.forget,
# docs/memory.md): a running meter does not hold this code.
import array

from meternode import run
from meternode.config import ConfigError
from meternode.metrology import floats, kernels
from meternode.metrology.registers import FIELDS, Energy, Registers
from meternode.metrology.timebase import Seconds, Timebase

NETTINGS = ("vector", "phase")  # registers.py's (here, where the config is checked: RAM)

_H = kernels.HIST


def _opt(d, key, default, lo, hi):
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < lo or v > hi:
        raise ConfigError("metrology.%s must be a number in %r .. %r, not %r" % (key, lo, hi, v))
    return v


def registers(self, elements, tariffs, netting, main):
    # Registers.__init__ (registers.py)
    if netting not in NETTINGS:
        raise ValueError("netting must be one of %s, not %r" % ("/".join(NETTINGS), netting))
    if not 1 <= tariffs <= 16:
        raise ValueError("tariffs must be 1..16, not %r" % tariffs)
    self.n = elements
    self.main = list(main) if main is not None else [True] * elements  # counts in the total
    self.tariffs = tariffs
    self.netting = netting
    self.tariff = 0
    size = (elements + 1) * FIELDS + 2 * tariffs  # the tariffs' registers follow the total
    self.size = size
    self.lo = [0] * size  # mWh, low 30 bits
    self.hi = [0] * size  # units of 2**30 mWh
    self.rem = [0] * size  # uJ below one mWh
    # maximum demand: this billing month's (mW, end, month) and the last month's
    self.md = [0, 0, 0, 0, 0, 0]


def energy(self, registers, thr, rate, wn, ds):
    # An Energy's state (registers.py; the class keeps no __init__)
    # thr: the starting threshold per element (W, var); wn: sets in a creep window; ds:
    # demand_s, whole seconds
    self.registers = registers
    e = registers.n
    self.n = e
    self._thr = thr  # W (and var) per element
    self.rate = rate  # sets per second, measured (the meter updates it)
    self._c = [0, wn, 0, int(ds * rate), 0, 0, ds]  # registers.py _WN .. _DS
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


def setup(m, board, cal, options):
    adc = board["adc"]
    chans = board["channels"]
    opts = dict(board.get("metrology", {}))
    opts.update(options or {})
    m.nch = nch = len(chans)
    m.rate_nominal = rate = adc["rate"]  # board.adc.rate, sets/s (int)
    tb = opts.get("timebase", "measured")
    if tb not in ("measured", "fixed"):
        raise ConfigError("metrology.timebase must be measured or fixed, not %r" % (tb,))
    m.timebase = Timebase(rate, tb == "measured")
    m.rate = m.timebase.rate  # sets/s, measured (float)
    bits = adc["bits"]
    if bits > kernels.MAX_BITS:
        raise ConfigError("board.adc.bits = %d: the kernels take at most %d bits" % (bits, kernels.MAX_BITS))
    # the nominal mains frequency, Hz (not an attribute: with the reporting window's two the
    # instance dict holds 60 entries in a table of 73; at 59 its 59 slots would be full, every
    # attribute lookup would probe further and the whole meter ran 1-2 % slower,
    # benchmarks/metrology.py)
    f_nom = float(_opt(opts, "mains_hz", 50.0, 40.0, 70.0))
    if rate / (4 * 45.0) + 4 > _H:
        raise ConfigError("board.adc.rate = %d is above %d sets/s (quarter-cycle history)" % (rate, 11000))
    m._mid0 = 1 << (bits - 1)
    m._hyst = max(2, 1 << (bits - 6))  # ~3 % of full scale
    m.cal = run("meternode.metrology.calcheck", "resolve", board, cal)  # a ChannelCal per channel
    m.names = [ch["name"] for ch in chans]
    skew = adc.get("skew_us", 0.0) * 1e-6
    # per-channel and per-element floats live in arrays (metrology.floats), not lists of boxed
    # floats: a heap object each (docs/memory.md)
    m._t_slot = floats(nch)  # conversion instant within a set
    for k in range(nch):
        m._t_slot[k] = skew * k
    volts = [k for k in range(nch) if chans[k]["kind"] == "voltage"]
    m.v_channel = volts[0]  # the channel whose crossings define the cycles
    m.pairs = []  # (voltage channel, current channel) per element
    for k in range(nch):
        ch = chans[k]
        if ch["kind"] != "current":
            continue
        vname = ch.get("voltage", m.names[volts[0]])
        if vname not in m.names or chans[m.names.index(vname)]["kind"] != "voltage":
            raise ConfigError("board.channels.%s.voltage = %r is not a voltage channel" % (ch["name"], vname))
        m.pairs.append((m.names.index(vname), k))
    m.elements = len(m.pairs)
    netting = opts.get("netting", "vector")
    if netting not in NETTINGS:
        raise ConfigError("metrology.netting must be one of %s, not %r" % ("/".join(NETTINGS), netting))
    # board role "main" (default): the element is on the grid connection and counts in the
    # total; "circuit": a sub-circuit CT, measured and registered on its own only
    main = [chans[b].get("role", "main") == "main" for _, b in m.pairs]
    m.registers = Registers(m.elements, int(_opt(opts, "tariffs", 4, 1, 16)), netting, main)
    # starting threshold per element, in W (and var): start_fraction of In at Un
    frac = _opt(opts, "start_fraction", 0.001, 0.0, 0.1)
    thr = []
    for a, b in m.pairs:
        ch = chans[b]
        i_start = ch.get("start_current", frac * ch.get("nominal", 5.0))
        thr.append(0.5 * i_start * chans[a].get("nominal", 230.0))
    # sign band for batching (kernels.signs): 0.5 % of the element's nominal power, or
    # its starting threshold if larger -- well above one cycle's noise in Q at PF 1
    m._band = floats(len(thr))
    for e, (a, b) in enumerate(m.pairs):
        m._band[e] = max(thr[e], 0.005 * chans[a].get("nominal", 230.0) * chans[b].get("nominal", 5.0))
    ds = _opt(opts, "demand_s", 900, 1, 86400)
    if ds != int(ds) or 86400 % ds:  # periods end on the clock's multiples of it (registers.py)
        raise ConfigError("metrology.demand_s must be whole seconds that divide a day, not %r" % (ds,))
    m.energy = e = Energy()
    energy(e, m.registers, thr, m.rate, int(_opt(opts, "creep_s", 1.0, 0.0, 60.0) * rate), int(ds))
    # a gap up to this many sets is registered at the last measured power
    m._fill_max = int(_opt(opts, "gap_fill_s", 1.0, 0.0, 60.0) * rate)
    # buffers, made once
    m._cap = adc["block"]
    if m._cap < _H:
        raise ConfigError("board.adc.block = %d is below %d sets" % (m._cap, _H))
    m._work = array.array("H", bytes(2 * nch * (_H + m._cap)))
    for k in range(_H * nch):
        m._work[k] = m._mid0
    _layout(m)
    m._acc = array.array("i", bytes(4 * (m._n_at + 1)))  # the open cycle
    m._bat = array.array("i", bytes(4 * (m._n_at + 1)))  # the batch of whole cycles
    m._bn = 0  # sets in the batch
    m._bc = 0  # cycles in the batch
    m._bf0 = 0.0  # fraction of a set at the crossing that opened the batch
    m._bf1 = 0.0  # ... and at the one that closed its last cycle
    # cycles converted together (see _cross); 1 = per cycle
    m._batch = int(_opt(opts, "batch_cycles", 5, 1, 64))
    # frequency smoothing: 1/8 per cycle, (7/8)**c for a batch of c cycles
    m._keep = floats(m._batch + 1)
    for c in range(m._batch + 1):
        m._keep[c] = 0.875**c
    m._state = array.array("i", [0])
    m._mid = array.array("i", [m._mid0] * nch)
    m._d = m._delay(f_nom)
    m._means = floats(nch)
    # per element: 4 P taps, 4 Q taps, f, Q sum, P sum, then the net phase and the
    # quarter-cycle delay they were solved for (convert.weights)
    m._wt = floats(13 * m.elements)
    m._m = floats(20)  # convert.solve's 4x5 matrix, row by row
    m._fs = 0.0  # smoothed frequency for the weights
    m._pf = None  # fraction of a set at the previous crossing (None: no cycle open)
    # counters (all wrap below 2**30; compare them by difference & 0x3FFFFFFF)
    m.sets = 0  # sample sets fed
    m.measured_sets = 0  # sets inside closed, measured cycles
    m.cycles = 0
    m.unmeasured = 0  # runs closed without a mains cycle
    m.gaps = 0  # times the sampler reported lost sets
    m.lost_sets = 0  # sets it lost
    m.filled_sets = 0  # sets of gaps registered at the last measured power
    m._lost_seen = None  # the sampler's `lost` at the last block
    m.freq = 0.0
    e = m.elements
    m.vrms = floats(nch)  # per channel (voltage channels meaningful)
    m.irms = floats(e)
    m.p = floats(e)
    m.q = floats(e)
    m.s = floats(e)
    # the reporting window (convert() adds each batch, snapshot() reads and zeroes it): per
    # element I^2, P, Q (weighted by cycles), P min, P max (5 words), then V^2 per channel,
    # then the frequency (weighted by cycles); and the cycles in it
    m._ww = floats(5 * m.elements + nch + 1)
    m._wn = 0
    m.seconds = Seconds(rate)  # one summary per measured second (policy engine)
    m._e_import = m.registers.low_import  # bound once: called per closed second
    m._lim = array.array("i", bytes(4 * m.elements))
    m._bm = 0  # the batch's signs (kernels.signs)
    cal_cache(m)
    # power quality (quality.py), opt-in: metrology.quality = true
    m.quality = None
    m._cap_on = False
    if opts.get("quality", False):
        from meternode.metrology.quality import Quality

        m._vidx = volts
        m._vq = [0.0] * len(volts)
        m.quality = Quality(
            [m.names[v] for v in volts],
            [chans[v].get("nominal", 230.0) for v in volts],
            f_nom,
            opts.get("pq", {}),
            rate,
        )
        m._cap_sets = rate // 40  # one cycle down to 40 Hz
        m._capbuf = array.array("H", bytes(2 * nch * m._cap_sets))
        m._cap_n = 0


def _layout(m):
    # accumulator: 12 words per pair (kernels.block_sums), then 2 per voltage channel
    # that no pair covers; _sx[c] is where channel c's sum x (then sum x*x) is (an array:
    # track_mids reads it, and it is the meter's only copy).
    sx = [-1] * m.nch
    for e, (a, b) in enumerate(m.pairs):
        if sx[a] < 0:
            sx[a] = 12 * e
        sx[b] = 12 * e + 2
    lone = []
    k = 12 * m.elements
    for c in range(m.nch):
        if sx[c] < 0:
            sx[c] = k
            lone.append(c)
            k += 2
    m._n_at = k
    lay = [len(m.pairs), len(lone)]
    for a, b in m.pairs:
        lay += [a, b]
    for c in lone:
        lay += [c, sx[c]]
    m._lay = array.array("i", lay)
    m._sx = array.array("i", sx)


def cal_cache(m):
    # Flat per-channel values for the per-cycle maths (properties cost a call each), at
    # setup and after Meter.set_calibration.
    # (loops, not comprehensions: each of those is a function held with the module)
    # m._cc = (scale, offset, is-voltage per channel, net phase per element or None: from
    # the phase table at the current), one attribute for the four (convert.py)
    cal = m.cal
    sc = []
    off = []
    isv = []
    phc = []
    m._cc = (sc, off, isv, phc)
    for c in cal:
        sc.append(c.base_scale * c.gain)  # units per count
        off.append(c.offset)
        isv.append(c.kind == "voltage")
    # and the sign band per element in raw product units per set (kernels.signs)
    lim = m._lim
    e = 0
    for a, b in m.pairs:
        phc.append(None if cal[b].table else cal[b].phase - cal[a].phase)
        g = abs(sc[a] * sc[b])
        x = m._band[e] / g if g > 0 else 0
        lim[e] = int(min(x, 4000000))
        e += 1
