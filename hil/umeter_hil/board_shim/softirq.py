# Timer-IRQ stand-in for firmware tests on the unix port: machine.Timer, ADC, SPI (an
# MCP3208 at transfer level), Pin and `time` on a simulated microsecond clock, with
# MicroPython's scheduler queue (py/scheduler.c): mp_sched_schedule() refuses when the
# queue holds MICROPY_SCHEDULER_DEPTH (8 on esp32 and rp2) callbacks, and a scheduled
# callback runs only when the VM gets to it -- not while it is stalled (GC, a flash erase,
# a TLS handshake), after which the queued ones run back to back.
#
#   w = World(port="esp32")            # esp32: soft timers only, "hard Timers are not
#                                      # implemented"; Pin IRQs soft too.  port="rp2":
#                                      # Timer(hard=True) runs in the alarm IRQ, and
#                                      # freq= becomes an integer microsecond period.
#   undo = w.install(); s = ESP32Sampler(board); undo()
#   s.start(); w.run_us(1_000_000); w.stall_us(20_000); w.run_us(...)
#
# Timers fire on their own grid (a hardware period, no drift).  Each ADC read or SPI
# conversion takes `read_us` of simulated time, so the sample instants inside a set are
# spread as on a board and the sampler's measured skew can be checked.  w.source(ch, t_us)
# gives the 12-bit value of channel (ADC pin or MCP3208 input) ch at t_us.
import sys

_MASK30 = 0x3FFFFFFF
DEPTH = 8


class _Time:
    def __init__(self, w):
        self._w = w

    def ticks_us(self):
        return self._w.us

    def ticks_ms(self):
        return (self._w.t0 // 1000 + self._w.t // 1000) & _MASK30

    def ticks_add(self, a, b):
        # as time.ticks_add, with no intermediate >= 2**30 (a boxed int would allocate)
        if b >= 0:
            return a - _MASK30 + b - 1 if a > _MASK30 - b else a + b
        s = a + b
        return s + _MASK30 + 1 if s < 0 else s

    def ticks_diff(self, a, b):
        d = (a - b) & _MASK30
        return d - _MASK30 - 1 if d > _MASK30 >> 1 else d  # no intermediate >= 2**30

    def time(self):
        return 1700000000 + self._w.t // 1000000


class World:
    def __init__(self, port="esp32", t0_us=(1 << 30) - 300000, read_us=20, latency_us=15):
        self.port = port
        self.t0 = t0_us
        self.t = 0  # simulated microseconds since start
        self.us = t0_us & _MASK30
        self.read_us = read_us  # cost of one ADC read / SPI conversion
        self.latency_us = latency_us  # from the timer's alarm to a soft callback running
        self.queue = []  # scheduled (callback, arg)
        self.refused = 0  # mp_sched_schedule() returned False
        self.stalled = False
        self.timers = []
        self.pins = {}  # gpio -> level function(t_us) or int
        self.pin_irqs = []  # [pin, handler, trigger, last level]
        self.source = lambda ch, t_us: 0
        self.reads = []  # (channel, t_us) of every conversion, when log_reads
        self.log_reads = False
        self.time = _Time(self)
        self.machine = _Machine(self)
        self.uv_error = None  # read_uv() raises this (no eFuse calibration)

    def install(self):
        saved = {k: sys.modules.get(k) for k in ("machine", "time")}
        sys.modules["machine"] = self.machine
        sys.modules["time"] = self.time

        def undo():
            for k, v in saved.items():
                if v is None:
                    sys.modules.pop(k, None)
                else:
                    sys.modules[k] = v

        return undo

    def _set(self, t):
        # ticks_us moves with t, wrapping at 2**30 without an intermediate >= 2**30 (a boxed
        # int would allocate on a 32-bit port, where tests run ticks under heap_lock())
        d = t - self.t
        self.t = t
        us = self.us
        if us > _MASK30 - d:
            self.us = us - _MASK30 + d - 1
        else:
            self.us = us + d

    def cost(self, us):
        # The running code spends `us` (an ADC read): time moves on.
        self._set(self.t + us)

    def schedule(self, fn, arg):
        if len(self.queue) >= DEPTH:
            self.refused += 1
            return False
        self.queue.append((fn, arg))
        return True

    def _drain(self):
        while self.queue and not self.stalled:
            fn, arg = self.queue.pop(0)
            fn(arg)

    def _pin_level(self, n):
        v = self.pins.get(n, 1)
        return v(self.t) if callable(v) else v

    def run_us(self, us):
        end = self.t + us
        while True:
            nxt = None
            tm = None
            for x in self.timers:
                if x.next is not None and (nxt is None or x.next < nxt):
                    nxt = x.next
                    tm = x
            pin_t = self._next_pin_edge(end if nxt is None else min(nxt, end))
            if pin_t is not None and (nxt is None or pin_t < nxt):
                self._set(pin_t)
                self._pin_edges()
                continue
            if nxt is None or nxt > end:
                self._set(max(self.t, end))
                self._drain()
                return
            if nxt > self.t:
                self._set(nxt)
            tm.next += tm.period
            if tm.hard:
                tm.cb(tm)
            else:
                if self.schedule(tm.cb, tm) and not self.stalled:
                    self.cost(self.latency_us)
                    self._drain()
            self._pin_edges()

    def stall_us(self, us):
        # The VM is busy for `us` (GC, flash erase, TLS): soft callbacks queue up (8 at most),
        # then run back to back.
        self.stalled = True
        try:
            self.run_us(us)
        finally:
            self.stalled = False
        self._drain()

    # -- pin edges for soft pin IRQs --------------------------------------------------------------
    def _next_pin_edge(self, until):
        # The earliest time <= until at which a pin with an IRQ changes level (1 us steps
        # over the pin functions is too slow: pin functions may say when they change).
        best = None
        for e in self.pin_irqs:
            f = self.pins.get(e[0].n)
            nxt = getattr(f, "next_edge", None)
            if nxt is not None:
                tt = nxt(self.t)
                if tt is not None and tt <= until and (best is None or tt < best):
                    best = tt
        return best

    def _pin_edges(self):
        for e in self.pin_irqs:
            v = self._pin_level(e[0].n)
            if v != e[3]:
                e[3] = v
                if e[2] & (Pin.IRQ_RISING if v else Pin.IRQ_FALLING):
                    if self.schedule(e[1], e[0]) and not self.stalled:
                        self._drain()


class Pin:
    IN = 0
    OUT = 1
    PULL_UP = 1
    PULL_DOWN = 2
    IRQ_RISING = 8
    IRQ_FALLING = 4
    world = None

    def __init__(self, n, mode=-1, pull=-1, value=None):
        self.n = n
        self.mode = mode
        self.v = value

    def value(self, v=None):
        if v is None:
            if self.mode == Pin.OUT:
                return self.v
            return self.world._pin_level(self.n)
        self.v = v

    def __call__(self, v=None):
        return self.value(v)

    def irq(self, handler=None, trigger=12, hard=False):
        w = self.world
        if hard and w.port == "esp32":
            raise TypeError("unexpected keyword argument 'hard'")  # esp32 Pin.irq has no hard=
        w.pin_irqs.append([self, handler, trigger, w._pin_level(self.n)])


class Train:
    # A pulse train on a pin, as a level function with next_edge(): `count` pulses of
    # `width_us` every `period_us` from `t0`, idle high (reed to ground), each edge followed
    # by `bounce` extra toggles 200 us apart.
    def __init__(self, t0, period_us, width_us, count, bounce=0):
        self.edges = []
        for k in range(count):
            a = t0 + k * period_us
            for e in (a, a + width_us):
                self.edges.append(e)
                for b in range(bounce):
                    self.edges.append(e + 200 * (2 * b + 1))
                    self.edges.append(e + 200 * (2 * b + 2))
        self.edges.sort()

    def __call__(self, t):
        n = 0
        for e in self.edges:
            if e > t:
                break
            n += 1
        return 1 - (n & 1)

    def next_edge(self, t):
        for e in self.edges:
            if e > t:
                return e
        return None


class Timer:
    PERIODIC = 1
    ONE_SHOT = 0

    def __init__(self, id=-1):
        self.id = id
        self.next = None
        self.period = 0
        self.cb = None
        self.hard = False

    def init(self, mode=1, callback=None, period=None, tick_hz=1000, freq=None, hard=False):
        w = self.world
        if hard and w.port == "esp32":
            raise ValueError("hard Timers are not implemented")
        if freq is not None:
            if w.port == "rp2":
                p = int(1000000.0 / freq)  # ports/rp2/machine_timer.c: (uint64_t)(1e6f / freq)
            else:
                p = 1000000 // freq if isinstance(freq, int) else int(1000000 / freq)
        else:
            p = period * 1000000 // tick_hz
        self.period = p
        self.cb = callback
        self.hard = hard
        self.next = w.t + p  # the first alarm one period after init
        self.first = self.next
        if self not in w.timers:
            w.timers.append(self)

    def deinit(self):
        self.next = None
        if self in self.world.timers:
            self.world.timers.remove(self)


class ADC:
    ATTN_0DB = 0
    ATTN_6DB = 2
    ATTN_11DB = 3

    def __init__(self, pin, atten=None):
        self.n = pin.n if isinstance(pin, Pin) else pin

    def _counts(self):
        w = self.world
        c = w.source(self.n, w.t) & 0xFFF
        if w.log_reads:
            w.reads.append((self.n, w.t))
        w.cost(w.read_us)
        return c

    def read_u16(self):
        c = self._counts()
        return (c << 4) | (c >> 8)

    def read_uv(self):
        w = self.world
        if w.uv_error is not None:
            raise w.uv_error
        c = self._counts()
        return (c * 206250 + 255) // 256  # the microvolts that map back to c counts at 3.3 V


class SPI:
    # An MCP3208 on the bus, at transfer level: decodes the three command bytes.
    def __init__(self, id=0, **kw):
        self.sent = 0

    def write_readinto(self, tx, rx):
        w = self.world
        if tx[0] & 0xF8 or not tx[0] & 0x04:
            raise ValueError("not an MCP3208 start byte: %r" % tx[0])
        ch = ((tx[0] & 1) << 2) | (tx[1] >> 6)
        v = w.source(ch, w.t) & 0xFFF
        if w.log_reads:
            w.reads.append((ch, w.t))
        w.cost(w.read_us)
        rx[0] = 0xFF
        rx[1] = 0xE0 | (v >> 8)  # high bits undefined in the reply
        rx[2] = v & 0xFF
        self.sent += 1


class _Machine:
    def __init__(self, w):
        self._w = w
        for cls in (Pin, Timer, ADC, SPI):
            cls.world = w
        self.Pin = Pin
        self.Timer = Timer
        self.ADC = ADC
        self.SPI = SPI
