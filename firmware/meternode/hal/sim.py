# Simulated front end: synthesises the ADC samples a board would produce from a scenario,
# deterministically from a seed.
#
# A scenario (config["sim"]) describes the mains and the loads, in physical units:
#   {"freq": 50.0, "seed": 1, "enob": 8.7, "dc": 0,
#    "voltage": {"rms": 230.0, "harmonics": [[5, 0.03, 0.0]]},
#    "voltages": [{"rms": 230.0, "angle": 0}, {"rms": 230.0, "angle": 120}, ...],  (3-phase)
#    "currents": [{"rms": 10.0, "angle": 30.0, "harmonics": [[3, 0.1, 0.0]],
#                  "lead": 0.3, "dc": 12}, ...],
#    "drift": {"hz": 1.0, "period_s": 60.0},
#    "events": [{"at": 2.0, "freq": 49.0}, {"at": 3.0, "current": 0, "rms": 5.0, "angle": 180.0},
#               {"at": 4.0, "voltage": 0.5, "for": 0.1}, {"at": 5.0, "lose": 400}],
#    "rate_error_ppm": 0, "timer_us": false, "epoch": 1800000000, "ticks_ms": ..., "ticks_us": ...,
#    "realtime": false}
# Voltage channels take "voltages" in order (or "voltage" for all, phase-shifted by
# `angle` degrees of lag); current channels take "currents" in order.  `angle` is the
# degrees a current lags its own phase voltage (30 = inductive, 180 = pure export).
# Harmonics are [order, amplitude relative to the fundamental, phase in degrees].
# `lead` models the sensor's phase error (degrees its output leads the primary), `dc` a DC
# offset in counts on top of the scenario-wide one.  The board's adc.skew_us delays each
# channel's conversion by its slot in the set, as a round-robin ADC does.
# `drift` swings the frequency sinusoidally by +-hz around `freq` (49..51 Hz for 1.0);
# `events` change the scenario at simulated times (block resolution): a frequency step, a
# load step (current index, rms, angle), a voltage factor for `for` seconds (sag < 1,
# swell > 1, interruption 0), or `lose` sets (a gap: the signal and the clock run on, the
# sets are never delivered and the sampler's `lost` counts them, as a board's timer that
# missed ticks or a DMA overrun).
# Timebase (hal/__init__.py, "Sampler contract"): the sampler's true rate is rate_actual
# times (1 + rate_error_ppm / 1e6) -- a crystal's error the firmware does not know about --
# and the clock and the waveform follow the true rate, so the meter has to measure it.
# `timer_us` paces the sampler with an integer-microsecond period (rp2's machine.Timer):
# rate_actual = 1e6 / (1e6 // rate), 2403.846 for 2400.  The clock (SimClock) starts
# its ticks a few seconds before they wrap (`ticks_ms` / `ticks_us` choose other starts)
# and keeps integer epoch seconds (`epoch`, default the host's time).
# The waveform's phase is an integer: `_ph` in units of 1/`_den` turn, advanced by an integer
# step per set (round(f x `_sub`), `_den` = rate_true x `_sub` below 2**29, `_sub` a power of
# two: a frequency resolution of 1/_sub Hz, 2e-6 Hz at 1 kS/s, 8e-6 Hz at 4 kS/s), and
# each sample's angle is computed afresh from it, so gaps and coasts of any length move it
# exactly.  Accumulating the angle in a float instead drifted by a rounding per set: in
# single precision (a board, the 32-bit port) 7e-5 rad per second at 50 Hz and 1 kS/s, so a
# steady signal's sampling pattern precessed and its quantised samples -- and every P the
# meter measured from them -- wandered by hundreds of ppm; a coast of an hour (1e6 rad)
# lost the phase altogether.  Now a steady signal with a whole number of sets per cycle
# (50 or 60 Hz at 1 or 4 kS/s: f and rate_true whole multiples of 1/_sub) repeats exactly,
# cycle after cycle, on every port, whatever the uptime.
# Counts = mid + value / scale (the board's scale, units per count), quantised to the
# board's ADC bits and clipped at the rails; `enob` adds the white noise that brings the
# converter down to that many effective bits.  `realtime` paces blocks to the wall clock
# (a virtual node); without it blocks come as fast as they can be computed (tests), and
# run(meter, s) / coast(meter, s) feed a meter directly: coast() fast-forwards a steady
# scenario without making samples (days of simulated time in seconds, see Meter.coast);
# `fast` also runs the node's periodic waits in simulated time (simfast.py).
# The board's "relay" entry gives the sim HAL a relay (SimHal.set): open, the load currents
# are zero.
import math
import random
import time

from micropython import const

from meternode import forget, ticks

_TWO_PI = 2 * math.pi
_RAD = math.pi / 180


_MASK = const(0x3FFFFFFF)  # counters wrap below 2**30


# -- the sim board's clock (hal/__init__.py, "the one clock of the node") ---------------------
_PERIOD = const(1 << 30)
_DAY = const(86400)
# Where the ticks start by default: a few seconds before they wrap, so every test and
# virtual node crosses a wrap of both (a test can ask for another start).
_MS0 = const(_PERIOD - 4000)  # ticks_ms wraps 4 s after start
_US0 = const(_PERIOD - 2000000)  # ticks_us wraps 2 s after start


class SimClock:
    # The sim board's clock.  Time advances with the samples produced (sample-accurate, at
    # the sampler's true rate); with `realtime` the sampler paces itself to the wall clock
    # so a virtual node runs like a real one.  Like a board's: ticks_ms / ticks_us are
    # 30-bit and wrap (starting at _MS0 / _US0 unless told otherwise), time() is integer
    # epoch seconds (kept as day + second of day, so advancing allocates nothing).
    ticks_diff = staticmethod(ticks.diff)
    ticks_add = staticmethod(ticks.add)

    def __init__(self, epoch=None, ms=None, us=None):
        self.ms = _MS0 if ms is None else ms & _MASK  # ticks_ms now
        self.us = _US0 if us is None else us & _MASK  # ticks_us now
        self._usm = 0  # us into the current ms
        self._sub = 0  # us into the current second
        self.set_time(time.time() if epoch is None else epoch)

    def ticks_ms(self):
        return self.ms

    def ticks_us(self):
        return self.us

    def time(self):
        return self._day * _DAY + self._sod

    def set_time(self, epoch):
        e = int(epoch)
        self._day = e // _DAY
        self._sod = e - self._day * _DAY

    def advance(self, us):
        # us >= 0 more microseconds (a block: tens of ms; a coast: up to an hour)
        self.us = (self.us + us) & _MASK
        x = self._usm + us
        self._usm = x % 1000
        self.ms = (self.ms + x // 1000) & _MASK
        x = self._sub + us
        if x >= 1000000:
            s = self._sod + x // 1000000
            x %= 1000000
            if s >= _DAY:
                self._day += s // _DAY
                s %= _DAY
            self._sod = s
        self._sub = x

    def sleep_ms(self, ms):
        # asyncio's own awaitable, for the caller to await: a coroutine of ours would be one
        # more generator made per call and held, frame and all, by every sleeping task
        import asyncio  # here: the fast-mode tests never load it

        return asyncio.sleep_ms(ms)


def _wave(w, rms, angle):
    # One channel's waveform, a float array made by siminit.setup (which checks the
    # scenario's values; an array, not an object with a list of tuples: docs/memory.md):
    #   w[0] rms, w[1] angle (degrees its current lags), w[2] scale, w[3] lead (degrees),
    #   then per term (the fundamental first: 1, 1, 0; then each harmonic) five values:
    #   order, relative amplitude, phase (degrees), and the two set here: peak counts and
    #   phase (rad).  The sample is sum peak * sin(order * theta + phase) (fill()).
    w[0] = rms
    w[1] = angle  # degrees
    peak = rms * math.sqrt(2) / w[2]  # counts
    ph = (w[3] - angle) * _RAD
    for k in range(4, len(w), 5):
        w[k + 3] = peak * w[k + 1]
        w[k + 4] = ph * w[k] + w[k + 2] * _RAD


class SimSampler:
    # (the instance holds 36 attributes: its dict's next size starts at 38)
    overruns = 0  # blocks the consumer was too late for: none, each block is made when asked

    def __init__(self, board, scen, clock):
        # The scenario's checks and the buffers are made once (siminit.py): loaded for it,
        # forgotten after (docs/memory.md); the waves are float arrays (_wave).
        from meternode.hal import siminit

        try:
            siminit.setup(self, board, scen, clock)
        finally:
            forget("meternode.hal.siminit")

    # -- scenario control (also used by tests) -------------------------------------------------
    def set_freq(self, f):
        self.freq = f

    def set_current(self, k, rms, angle=None):
        # Load step on current channel k (1-based channel index, as in the board's map);
        # harmonics keep their relative size.
        w = self._waves[k]
        _wave(w, rms, w[1] if angle is None else angle)

    def _advance(self, nsets):
        # nsets more sets of true time: the clock, the elapsed time, the stamp
        x = self._us_frac + nsets * self._us_per_set
        us = int(x)
        self._us_frac = x - us
        self._clock.advance(us)
        self.stamp_us = self._clock.us
        x = self._el_us + us
        if x >= 1000000:
            k = x // 1000000
            self._el_s += k
            x -= k * 1000000
        self._el_us = x
        self.sets = (self.sets + nsets) & _MASK
        if self._drift_hz:
            self._dus = (self._dus + us) % self._dper
        return us

    def _skip(self, nsets):
        # The signal runs on for nsets sets that are not sampled (a gap, a coast).
        f = self.freq
        if self._drift_hz:
            f += self._drift_hz * math.sin(_TWO_PI * self._dus / self._dper)
        den = self._den  # (a gap or a coast: may allocate)
        self._ph = (self._ph + (nsets % den) * int(f * self._sub + 0.5)) % den
        self._advance(nsets)

    def _apply_events(self):
        # the scenario's events due by now: simulated seconds since start (a float: events
        # and sags have block resolution)
        t = self._el_s + self._el_us * 1e-6
        if self._v_until >= 0 and t >= self._v_until:
            self.vfactor = 1
            self._v_until = -1
        while self._ev < len(self._events) and _at(self._events[self._ev]) <= t:
            ev = self._events[self._ev]
            self._ev += 1
            if "freq" in ev:
                self.set_freq(float(ev["freq"]))
            if "current" in ev:
                cur = []  # the current channels (a loop: a comprehension is a function held)
                for i in range(self.nch):
                    if not self._is_v[i]:
                        cur.append(i)
                k = cur[int(ev["current"])]
                self.set_current(k, float(ev.get("rms", self._waves[k][0])), ev.get("angle"))
            if "voltage" in ev:  # a sag (< 1), swell (> 1) or interruption (0) for `for` s
                self.vfactor = float(ev["voltage"])
                s = float(ev.get("for", -1))  # (-1: until the next voltage event)
                self._v_until = self._el_s + self._el_us * 1e-6 + s if s >= 0 else -1
            if "lose" in ev:  # a gap: the sets are never delivered, and counted in `lost`
                n = int(ev["lose"])
                self._skip(n)
                self.lost = (self.lost + n) & _MASK

    def start(self):
        self._wall_next = time.ticks_ms()
        self._pace_us = 0

    def stop(self):
        pass  # nothing runs between blocks: each is made when next_block() asks

    def fill(self, buf):
        self._apply_events()
        nch = self.nch
        top = (1 << self.bits) - 1
        waves = self._waves
        noise = self._noise
        g = random.getrandbits  # not random(): a board's draws one word, a 64-bit build two
        skew = self._skew
        is_v = self._is_v
        vref = self._vref
        mids = self._mids
        vf = self.vfactor
        load = self.load_on
        ph = self._ph
        den = self._den
        rad = _TWO_PI / den
        f = self.freq
        if self._drift_hz:
            f += self._drift_hz * math.sin(_TWO_PI * self._dus / self._dper)
        step = int(f * self._sub + 0.5)  # 1/den turn per set (< den: f below rate_true)
        w = _TWO_PI * f
        offs = []  # per channel: its skew, and a current's voltage angle (this block's)
        for c in range(nch):
            offs.append(skew * c * w - (0 if is_v[c] else waves[vref[c]][1] * _RAD))
        i = 0
        for _ in range(self.block_sets):
            th = ph * rad
            for c in range(nch):
                t = th + offs[c]
                wv = waves[c]
                x = 0  # a float once a term is added
                k = 4  # the wave's terms (_wave)
                while k < len(wv):
                    x += wv[k + 3] * math.sin(wv[k] * t + wv[k + 4])
                    k += 5
                if is_v[c]:
                    x *= vf
                elif not load:
                    x = 0  # the relay is open
                x += mids[c]
                if noise:  # Gaussian-ish: 4 uniforms have variance 4/12, times sqrt(3) is 1;
                    # 22-bit integers, so every port draws the same noise (their sum is exact
                    # in single precision)
                    x += noise * (((g(22) + g(22) + g(22) + g(22)) / 4194304 - 2) * 1.7320508)
                v = int(x + 0.5) if x >= 0 else 0
                buf[i] = top if v > top else v
                i += 1
            ph += step
            if ph >= den:
                ph -= den
        self._ph = ph
        return self._advance(self.block_sets)

    async def next_block(self):
        import asyncio  # here: the fast-mode tests (run(), coast()) never load it

        if self.realtime:
            if self._wall_next is None:
                self.start()
            late = True
            while True:
                d = time.ticks_diff(self._wall_next, time.ticks_ms())
                if d <= 0:
                    break
                late = False
                await asyncio.sleep_ms(d)
            if late:  # behind the wall clock (a loaded host): catch up, but let the others run
                await asyncio.sleep_ms(0)
        else:
            await asyncio.sleep_ms(0)
        buf = self._bufs[0]  # (one: a block is valid until the following call, hal/__init__.py)
        us = self.fill(buf)
        if self.realtime:  # the next block is due one block of true time later
            x = self._pace_us + us
            self._pace_us = x % 1000
            self._wall_next = time.ticks_add(self._wall_next, x // 1000)
        return buf

    def run(self, meter, seconds):
        # Fast mode for tests and the accuracy run: feed `seconds` of signal to `meter`,
        # with the timebase (lost, stamp_us) as the node's sampling task hands it over.
        n = int(seconds * self.rate_true / self.block_sets + 0.5)
        buf = self._bufs[0]
        for _ in range(n):
            self.fill(buf)
            meter.feed(buf, self.block_sets, self.lost, self.stamp_us)

    def coast(self, meter, seconds):
        # Fast-forward a steady scenario by `seconds` (whole blocks) without making samples:
        # the clock, phase and counters run on and the meter registers the interval at its
        # last measured power (Meter.coast).  For long simulated runs (endurance soaks):
        # call run() around it so the meter measures before and after.
        n = int(seconds * self.rate_true / self.block_sets + 0.5) * self.block_sets
        self._skip(n)
        meter.coast(n)


def _at(e):  # an event's time
    return float(e.get("at", 0)) if isinstance(e, dict) else 0


class SimHal:
    def __init__(self, board, scen):
        clock = SimClock
        if scen.get("fast"):
            from meternode.hal.simfast import FastClock as clock
        self.clock = clock(scen.get("epoch"), scen.get("ticks_ms"), scen.get("ticks_us"))
        # the link layer's wall ticks (meternode.ticks) start as close to a wrap
        ticks.rebase(self.clock.ms, self.clock.us)
        self.sampler = SimSampler(board, scen, self.clock)
        self.relay = None
        if board.get("relay"):  # the board's relay: the sim HAL is its own relay object
            self.set(board["relay"].get("default", True))
            self.relay = self

    def set(self, on):
        # The relay (board "relay": {"pin", "default"}, checked by hal.halinit.make): open (False), it
        # disconnects the load, so the current channels carry only the converter's offset and
        # noise and the measured power drops to zero.  Kept this small: every sim test
        # compiles this module on a 128k heap.
        self.on = self.sampler.load_on = bool(on)


# -- the sim board's watchdog (halinit.make_watchdog) -----------------------------------------
# The sim board's stand-in for machine.WDT: a thread that resets the node when nobody fed it
# for `timeout` ms of wall time, whatever the main thread is doing (spinning, blocked in a
# call), as a hardware watchdog does.  "Reset" on the unix port: the mark file is written
# (the next boot reads its reset cause from it: halinit.reset_cause), a line is printed and the
# process is killed at once (SIGKILL: no cleanup, like a real reset); whoever runs the node
# starts it again.  Unlike a board's, this one can be stopped (tests, a node.run() that ends),
# and stops when a Ctrl-C stops the node (a Ctrl-C it catches goes to the main thread).
_STEP_MS = const(100)


class SimWatchdog:
    def __init__(self, timeout, mark=None, stop=None):
        import _thread

        self.timeout = timeout
        self.mark = mark
        self.stop_path = stop  # a file the host writes to stop the node (`umeter sim`)
        self.fed = time.ticks_ms()
        self.feeds = 0
        self.on = True
        self.fired = False
        self.interrupted = False  # a Ctrl-C this thread caught, for the main thread
        self.kill = True  # tests set False: only `fired` and the mark, no reset
        _thread.start_new_thread(self._watch, ())

    def feed(self):
        if self.interrupted:
            self.interrupted = False
            raise KeyboardInterrupt  # the Ctrl-C the watchdog's thread caught (interrupt())
        self.fed = time.ticks_ms()
        self.feeds += 1

    def stop(self):
        self.on = False

    def _watch(self):
        import os

        try:
            while self.on:
                time.sleep_ms(_STEP_MS)
                if self.stop_path is not None:
                    # The host's stop request: a file, not a SIGINT. The unix port raises a
                    # SIGINT as a KeyboardInterrupt wherever the thread it lands in is, inside
                    # the collector too, whose lock it then leaves held: the node hung until
                    # the host killed it, its registers unsaved (test_sim_db under load). This
                    # one arrives between bytecodes, at a feed.
                    try:
                        os.remove(self.stop_path)
                        self.interrupt()  # as a Ctrl-C: the node saves its registers and exits
                        return
                    except OSError:
                        pass
                if self.on and time.ticks_diff(time.ticks_ms(), self.fed) > self.timeout:
                    self._reset()
                    return
        except KeyboardInterrupt:
            self.interrupt()

    def interrupt(self):
        # The unix port raises a Ctrl-C (SIGINT) in whichever thread the kernel hands it to:
        # it is the node's, not ours.  Stop watching and hand it to the main thread at its next
        # feed(), so the node stops and saves its registers.  (Sending the process a second
        # SIGINT could land in this thread again, uncaught: the node then ran on until the host
        # killed it, its registers unsaved -- seen under load, test_sim_db.)
        self.on = False
        self.interrupted = True

    def _reset(self):
        self.fired = True
        if self.mark:
            try:
                with open(self.mark, "w") as f:
                    f.write("watchdog")
            except OSError:
                pass
        print("[%d] watchdog: not fed for %d ms, resetting" % (time.ticks_ms(), self.timeout))
        if self.kill:
            import os

            os.system("kill -KILL $PPID")  # the shell's parent is this process
