# Pulse input backends for boards.  Only this package touches machine; everything is
# imported inside the constructors so the module imports on any port (and on CPython).
#
# IrqPulseInput (RP2040 and ESP32): a pin IRQ on both edges stores (ticks_ms, level) into
#   a preallocated ring and sets a ThreadSafeFlag -- nothing else (STYLE rule 5).  drain()
#   hands the edges to a PulseMeter, which debounces by level stability.  The ring holds
#   `ring` edges (default 64: a 50 Hz train with 4 bounces per edge fills it in 0.13 s, so
#   drain at least every 100 ms); an overflow is counted, never silently lost.  On RP2040
#   the IRQ is a hard IRQ (machine.Pin.irq(hard=True)) so its latency is a few us.
# CounterPulseInput (ESP32, MicroPython >= 1.26): machine.Counter on a PCNT unit counts the
#   chosen edge in hardware with its glitch filter (filter_ns, at most ~13 us on ESP32), so
#   it suits electronic S0 outputs; mechanical reed contacts need IrqPulseInput's ms
#   debounce.  drain() reads the count and adds the difference.
import array

_MASK = 0x3FFFFFFF  # counters wrap below 2**30 (small ints, atomic for the ISR)


class IrqPulseInput:
    def __init__(self, pin, pull="up", ring=64):
        import asyncio

        import machine

        if ring & (ring - 1):
            raise ValueError("pulse ring size %d is not a power of two" % ring)
        self._n = ring
        self._t = array.array("i", bytes(4 * ring))
        self._lv = bytearray(ring)
        self._idx = array.array("i", [0, 0])  # [written, read]
        self.lost = 0
        self.flag = asyncio.ThreadSafeFlag()
        pulls = {"up": machine.Pin.PULL_UP, "down": machine.Pin.PULL_DOWN, "none": None}
        self.pin = machine.Pin(pin, machine.Pin.IN, pulls[pull])
        self._ticks = __import__("time").ticks_ms
        self._isr = self._irq  # bind once: a bound method allocates
        trig = machine.Pin.IRQ_FALLING | machine.Pin.IRQ_RISING
        try:
            self.pin.irq(self._isr, trig, hard=True)
        except TypeError:
            self.pin.irq(self._isr, trig)

    def _irq(self, pin):
        w = self._idx[0]
        k = w & (self._n - 1)
        self._t[k] = self._ticks() & _MASK
        self._lv[k] = pin.value()
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


class CounterPulseInput:
    def __init__(self, unit, pin, edge="falling", filter_ns=12000, pull="up"):
        import machine

        pulls = {"up": machine.Pin.PULL_UP, "down": machine.Pin.PULL_DOWN, "none": None}
        src = machine.Pin(pin, machine.Pin.IN, pulls[pull])
        e = machine.Counter.FALLING if edge == "falling" else machine.Counter.RISING
        self.counter = machine.Counter(unit, src, edge=e, filter_ns=filter_ns)
        self._last = self.counter.value()
        self.lost = 0

    def drain(self, pm, now):
        v = self.counter.value()
        n = v - self._last
        self._last = v
        pm.add_count(n, now)


def make(spec, backend="irq", unit=0):
    if backend == "counter":
        return CounterPulseInput(unit, spec["pin"], spec.get("edge", "falling"), pull=spec.get("pull", "up"))
    return IrqPulseInput(spec["pin"], spec.get("pull", "up"))
