# Power quality in the IEC 61000-4-30 class S structure, from the meter's per-cycle RMS.
#
# Per voltage channel:
#   - basic window: 10 cycles at 50 Hz (12 at 60 Hz), RMS over the window's sets;
#   - short aggregation: 15 basic windows (150 / 180 cycles, 3 s);
#   - long aggregation: 10 minutes of the sample clock (RMS of the 3-s values);
#   - events from the per-cycle RMS (class S allows a one-cycle refresh): sag below
#     `sag` x Udin (default 0.90), swell above `swell` x Udin (1.10), interruption below
#     `interruption` x Udin (0.05) or no mains cycle at all; an event ends when the value
#     is back by the hysteresis (0.02 x Udin).  Each event: kind, channel, start (meter
#     seconds), duration (s), depth (the extreme RMS, V).  The last `max_events` are kept
#     and every event is counted.
#   - harmonics 1..7 and THD of each voltage and current channel from one cycle per basic
#     window (harmonics.py); amplitudes in % of the fundamental.
# Udin is the voltage channel's `nominal`.
#
# Time is counted here in sets (every set the meter sees, measured or not, advances it):
# whole seconds plus sets into the next second, small ints for years; an event's start is
# those meter seconds, its duration its own set count over the measured rate.
import math

from meternode.metrology import harmonics
from meternode.metrology.convert import rms

_KINDS = ("sag", "swell", "interruption")


class Quality:
    def __init__(self, names, nominals, f_nom, opts, rate=4000):
        self.names = names  # voltage channel names
        self.rate = rate  # nominal sets per second: the clock below
        self._sec = 0  # meter seconds ...
        self._sub = 0  # ... and sets into the next one
        self.udin = nominals
        n = len(names)
        self.win = 10 if f_nom < 55.0 else 12
        self.sag = float(opts.get("sag", 0.90))
        self.swell = float(opts.get("swell", 1.10))
        self.intr = float(opts.get("interruption", 0.05))
        self.hyst = float(opts.get("hysteresis", 0.02))
        self.max_events = int(opts.get("max_events", 16))
        self.long_s = float(opts.get("long_s", 600.0))
        self._w2 = [0.0] * n  # sum of rms^2 * sets in the basic window
        self._wn = 0  # sets in the basic window
        self._wc = 0  # cycles in the basic window
        self._s2 = [0.0] * n  # sum of window rms^2 (short)
        self._sc = 0
        self._l2 = [0.0] * n  # sum of 3-s rms^2 (long)
        self._lc = 0
        self._lt = 0.0  # seconds into the long interval
        self.v_window = [0.0] * n  # last basic-window RMS
        self.v_short = [0.0] * n  # last 150/180-cycle RMS
        self.v_long = [0.0] * n  # last 10-minute RMS
        self.windows = 0
        self.shorts = 0
        self.longs = 0
        self._ev = [None] * n  # open event per channel: [kind, start s, extreme, sets]
        self.events = []
        self.event_count = 0
        self.harm = {}  # channel name -> [% of fundamental for orders 1..7]
        self.thd = {}
        self._amp = [0.0] * harmonics.ORDERS

    def skip(self, n):
        # n sets went by that close no cycle (the first after start, a gap): time runs on.
        x = self._sub + n
        if x >= self.rate:
            k = x // self.rate
            self._sec = (self._sec + k) & 0x3FFFFFFF
            x -= k * self.rate
        self._sub = x
        for ev in self._ev:
            if ev is not None:
                ev[3] += n

    def now(self):
        # meter seconds (a float: for an event's start)
        return self._sec + self._sub / self.rate

    def cycle(self, vrms, n, rate=None):
        # One mains cycle of n sets: vrms per voltage channel; rate = measured sets/s.
        self.skip(n)
        for c in range(len(self.names)):
            self._w2[c] += vrms[c] * vrms[c] * n
            self._events(c, vrms[c], rate or self.rate)
        self._wn += n
        self._wc += 1
        if self._wc >= self.win:
            self._close_window()
            return True  # a new basic window starts: the meter captures its first cycle
        return False

    def no_mains(self, n, rate=None):
        # n sets without a mains cycle (an interruption)
        self.skip(n)
        for c in range(len(self.names)):
            self._events(c, 0.0, rate or self.rate)

    def meter_cycle(self, m, n, length):
        # Meter m closed a cycle of n sets, `length` sets between its interpolated
        # crossings: its per-cycle voltage RMS from the cycle's own sums (before they join
        # the meter's batch), the events and windows, and harmonics: from a crossing on,
        # capture round(length) sets -- one period as near as whole sets allow, so noise
        # on the crossing does not change the window -- and analyse them once complete
        # (possibly at the next crossing).
        if m._cap_on and m._cap_n >= m._cap_want:
            for c in range(m.nch):
                self.analyse(m.names[c], m._capbuf, c, m._cap_want, m.nch, m._mid[c])
            m._cap_on = False
        vq = m._vq
        acc = m._acc
        sx = m._sx
        inv = 1.0 / n
        for k in range(len(vq)):
            c = m._vidx[k]
            vq[k] = rms(m._cc[0][c], m._cc[1][c], acc[sx[c]], acc[sx[c] + 1], inv)  # scale, offset
        if self.cycle(vq, n, m.rate):
            m._cap_on = True
            m._cap_n = 0
            m._cap_want = min(m._cap_sets, int(length + 0.5))

    def _events(self, c, v, rate):
        u = self.udin[c]
        ev = self._ev[c]
        if ev is None:
            kind = None
            if v < self.intr * u:
                kind = "interruption"
            elif v < self.sag * u:
                kind = "sag"
            elif v > self.swell * u:
                kind = "swell"
            if kind is not None:
                self._ev[c] = [kind, self.now(), v, 0]  # sets counted from the next cycle on
            return
        kind = ev[0]
        if kind == "swell":
            ev[2] = max(ev[2], v)
            done = v < (self.swell - self.hyst) * u
        else:
            ev[2] = min(ev[2], v)
            if kind == "sag" and v < self.intr * u:
                ev[0] = "interruption"
            done = v > (self.sag + self.hyst) * u
        if done:
            self._ev[c] = None
            self.event_count += 1
            dur = ev[3] / rate
            rec = {"kind": ev[0], "channel": self.names[c], "start": ev[1], "duration": dur, "depth": ev[2]}
            self.events.append(rec)
            if len(self.events) > self.max_events:
                self.events.pop(0)

    def _close_window(self):
        nw = self._wn
        for c in range(len(self.names)):
            v = math.sqrt(self._w2[c] / nw) if nw else 0.0
            self.v_window[c] = v
            self._s2[c] += v * v
            self._w2[c] = 0.0
        self._wn = 0
        self._wc = 0
        self.windows += 1
        self._sc += 1
        if self._sc >= 15:
            for c in range(len(self.names)):
                v = math.sqrt(self._s2[c] / self._sc)
                self.v_short[c] = v
                self._l2[c] += v * v
                self._s2[c] = 0.0
            self._sc = 0
            self._lc += 1
            self.shorts += 1
            self._lt += 3.0
            if self._lt >= self.long_s:
                for c in range(len(self.names)):
                    self.v_long[c] = math.sqrt(self._l2[c] / self._lc)
                    self._l2[c] = 0.0
                self._lc = 0
                self._lt = 0.0
                self.longs += 1

    def analyse(self, name, buf, start, n, step, mid):
        # Harmonics of one captured cycle of channel `name`.
        amp = self._amp
        thd = harmonics.spectrum(buf, start, n, step, mid, amp)
        f = amp[0]
        self.harm[name] = [100.0 * a / f if f > 0.0 else 0.0 for a in amp]
        self.thd[name] = thd

    def report(self):
        return {
            "window": {self.names[c]: self.v_window[c] for c in range(len(self.names))},
            "short": {self.names[c]: self.v_short[c] for c in range(len(self.names))},
            "long": {self.names[c]: self.v_long[c] for c in range(len(self.names))},
            "events": list(self.events),
            "event_count": self.event_count,
            "thd": dict(self.thd),
            "harmonics": dict(self.harm),
        }
