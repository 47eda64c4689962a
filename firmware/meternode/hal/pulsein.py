# Pulse input backends for boards.  Only this package touches machine; everything is
# imported inside the constructors so the module imports on any port (and on CPython).
#
# IrqPulseInput (RP2040): a hard pin IRQ on both edges stores (ticks_ms, level) into a
#   preallocated ring and sets a ThreadSafeFlag -- nothing else (STYLE rule 5).  drain()
#   hands the edges to a PulseMeter, which debounces by level stability.  The ring holds
#   `ring` edges (default 64: a 50 Hz train with 4 bounces per edge fills it in 0.13 s, so
#   drain at least every 100 ms); an overflow is counted, never silently lost.
# PolledPulseInput (ESP32, the default there): ESP32 pin IRQs are soft IRQs
#   (ports/esp32/machine_pin.c: machine_pin_isr_handler -> mp_sched_schedule), queued in
#   the same 8-deep scheduler queue as the ADC timer tick -- a bouncing reed contact fills
#   it and ticks are dropped.  Instead the ADC sampler's tick reads each polled pin's
#   level (sample(), one read per tick: 0.5 ms resolution at 2 kS/s, far below any
#   debounce) and stores the changes in the same ring.  It samples only while the
#   sampler runs (the node always runs it).
# CounterPulseInput (ESP32, MicroPython >= 1.26, "backend": "counter"): machine.Counter on
#   a PCNT unit counts the chosen edge in hardware with its glitch filter (filter_ns, at
#   most ~13 us on ESP32), so it suits electronic S0 outputs; mechanical reed contacts
#   need the ms debounce of the other backends.  drain() reads the count and adds the
#   difference.  Ports without machine.Counter (rp2) refuse it at start, naming the key.
import array

from meternode.config import ConfigError

_MASK = 0x3FFFFFFF  # counters wrap below 2**30 (small ints, atomic for the ISR)

POLLED = []  # PolledPulseInputs the ESP32 sampler tick samples


class _EdgeRing:
    def _init_ring(self, ring):
        import asyncio

        if ring & (ring - 1):
            raise ValueError("pulse ring size %d is not a power of two" % ring)
        self._n = ring
        self._t = array.array("i", bytes(4 * ring))
        self._lv = bytearray(ring)
        self._idx = array.array("i", [0, 0])  # [written, read]
        self.lost = 0
        self.flag = asyncio.ThreadSafeFlag()

    def _store(self, t, level):
        w = self._idx[0]
        k = w & (self._n - 1)
        self._t[k] = t & _MASK
        self._lv[k] = level
        self._idx[0] = (w + 1) & _MASK
        self.flag.set()

    def drain(self, pm, now=0):
        w = self._idx[0]
        r = self._idx[1]
        pending = (w - r) & _MASK
        if pending > self._n:
            self.lost += pending - self._n
            r = (w - self._n) & _MASK
        while r != w:
            k = r & (self._n - 1)
            pm.edge(self._t[k], self._lv[k])
            r = (r + 1) & _MASK
        self._idx[1] = r


def _pin(machine, pin, pull):
    pulls = {"up": machine.Pin.PULL_UP, "down": machine.Pin.PULL_DOWN, "none": None}
    if pull not in pulls:
        raise ValueError("pulse input pull must be up, down or none, not %r" % pull)
    return machine.Pin(pin, machine.Pin.IN, pulls[pull])


class IrqPulseInput(_EdgeRing):
    def __init__(self, pin, pull="up", ring=64):
        import time

        import machine

        self._init_ring(ring)
        self.pin = _pin(machine, pin, pull)
        self._ticks = time.ticks_ms
        self._isr = self._irq  # bind once: a bound method allocates
        trig = machine.Pin.IRQ_FALLING | machine.Pin.IRQ_RISING
        try:
            self.pin.irq(self._isr, trig, hard=True)
        except TypeError:
            self.pin.irq(self._isr, trig)

    def _irq(self, pin):
        self._store(self._ticks(), pin.value())


class PolledPulseInput(_EdgeRing):
    def __init__(self, pin, pull="up", ring=64):
        import machine

        self._init_ring(ring)
        self.pin = _pin(machine, pin, pull)
        self._value = self.pin.value  # bound once: sample() runs in the timer tick
        self._last = self._value()
        POLLED.append(self)

    def sample(self, t):
        v = self._value()
        if v != self._last:
            self._last = v
            self._store(t, v)


class CounterPulseInput:
    def __init__(self, unit, pin, edge="falling", filter_ns=12000, pull="up"):
        import machine

        src = _pin(machine, pin, pull)
        e = machine.Counter.FALLING if edge == "falling" else machine.Counter.RISING
        self.counter = machine.Counter(unit, src, edge=e, filter_ns=filter_ns)
        self._last = self.counter.value()
        self.lost = 0

    def drain(self, pm, now):
        v = self.counter.value()
        n = v - self._last
        self._last = v
        pm.add_count(n, now)


BACKENDS = ("irq", "poll", "counter")


def make(spec, backend="irq", unit=0, platform=None):
    # One board "pulses" entry (index `unit`); ConfigError-style ValueError naming the key.
    # `irq` means a polled input on ESP32 (see PolledPulseInput).
    import sys

    import machine

    if platform is None:
        platform = sys.platform

    where = "board.pulses[%d]" % unit
    if backend not in BACKENDS:
        raise ConfigError("%s.backend must be one of %s, not %r" % (where, "/".join(BACKENDS), backend))
    if backend == "counter":
        if not hasattr(machine, "Counter"):
            raise ConfigError(
                "%s.backend = counter: this port (%s) has no machine.Counter; use irq" % (where, platform)
            )
        return CounterPulseInput(unit, spec["pin"], spec.get("edge", "falling"), pull=spec.get("pull", "up"))
    if backend == "poll" or platform == "esp32":
        return PolledPulseInput(spec["pin"], spec.get("pull", "up"))
    return IrqPulseInput(spec["pin"], spec.get("pull", "up"))
