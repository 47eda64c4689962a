# `machine` stand-in for a virtual board: the unix port's own machine module plus what a board
# has and the unix port lacks (unique_id, reset, bootloader, Pin, ADC, RTC, WDT, UART, freq,
# reset_cause).
#
# Pins talk to the host through two files in the board's state directory (outside its flash):
#   pins.out  one byte per pin number (b"0"/b"1", b"-" = never driven): written by Pin.value(v)
#   pins.in   JSON written by the host (umeter_hil.rig.VirtualRig):
#             {"<pin>": {"t0": epoch_ms, "period": ms, "width": ms, "count": n, "idle": 0|1},
#              "adc": {"<pin>": u16}}
#             an input pin reads the pulse train's level at the current wall-clock time.
import json
import time

import machine as _real
import vbstate

for _n in dir(_real):
    if not _n.startswith("__"):
        globals()[_n] = getattr(_real, _n)

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5
_CAUSE = {
    "power": PWRON_RESET,
    "hard": HARD_RESET,
    "soft": SOFT_RESET,
    "bootloader": HARD_RESET,
    "watchdog": WDT_RESET,
}
_NPINS = 64

_out = vbstate.open_state("pins.out", "r+b", 0)
_out.seek(0, 2)
if _out.tell() < _NPINS:
    _out.write(b"-" * (_NPINS - _out.tell()))
    _out.flush()
_in = vbstate.open_state("pins.in", "rb", 0)


_raw = bytearray(4096)  # the last pins.in content (read without allocating)
_rawn = 0
_spec = {}


def _inputs():
    # Re-parses pins.in only when its bytes changed, so polling allocates nothing.
    global _rawn, _spec
    _in.seek(0)
    n = _in.readinto(_raw) or 0
    if n != _rawn or n and _changed(n):
        _rawn = n
        _copy[:n] = _raw[:n]
        try:
            _spec = json.loads(bytes(_raw[:n])) if n else {}
        except ValueError:
            pass  # the host is mid-write; read again next time
    return _spec


_copy = bytearray(4096)


def _changed(n):
    for i in range(n):
        if _raw[i] != _copy[i]:
            return True
    return False


def unique_id():
    return vbstate.UID


def reset():
    vbstate.hard_reset()


def soft_reset():
    vbstate.soft_reset()


def bootloader(*args):
    vbstate.bootloader()


def reset_cause():
    return _CAUSE.get(vbstate.RESET, PWRON_RESET)


_freq = 240000000


def freq(hz=None):
    global _freq
    if hz is None:
        return _freq
    _freq = hz


def lightsleep(ms=0):
    time.sleep_ms(ms)


def deepsleep(ms=0):
    vbstate.hard_reset()


_rtc_offset = 0  # seconds added to the host clock by RTC().datetime(new)


class RTC:
    # datetime tuple: (year, month, day, weekday, hours, minutes, seconds, subseconds)
    def __init__(self, id=0):
        pass

    def datetime(self, dt=None):
        global _rtc_offset
        if dt is None:
            t = time.localtime(time.time() + _rtc_offset)
            return (t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0)
        want = time.mktime((dt[0], dt[1], dt[2], dt[4], dt[5], dt[6], dt[3], 0))
        _rtc_offset = want - time.time()

    def init(self, dt):
        self.datetime(dt)


class WDT:
    # A watchdog that bites: a thread resets the board (reset cause WDT_RESET) when nobody
    # fed it for `timeout` ms, whatever the main thread is doing.  Like a board's, it cannot
    # be stopped once started -- except by a Ctrl-C that lands in its thread (see _watch).
    def __init__(self, id=0, timeout=5000):
        import _thread

        self.timeout = timeout
        self._fed = time.ticks_ms()
        self._intr = False  # a host Ctrl-C this thread caught, for the code that feeds
        _thread.start_new_thread(self._watch, ())

    def feed(self):
        if self._intr or _ctrl_c[0]:
            self._intr = _ctrl_c[0] = False
            raise KeyboardInterrupt  # the host's Ctrl-C that landed in a stand-in's thread
        self._fed = time.ticks_ms()

    def _watch(self):
        try:
            while time.ticks_diff(time.ticks_ms(), self._fed) <= self.timeout:
                time.sleep_ms(50)
        except KeyboardInterrupt:
            # A Ctrl-C from the host landed in this thread (the unix port raises it in any
            # thread): it is meant for the code running, which gets it at its next feed();
            # stop watching (a board's WDT would bite later unless fed; the stand-in lets a
            # host take the REPL).  Not a new SIGINT to ourselves: os.system() ignores SIGINT
            # while it waits, so that one was lost, and the code ran on.
            self._intr = True
            return
        vbstate.watchdog()


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_UP = 1
    PULL_DOWN = 2
    IRQ_RISING = 1
    IRQ_FALLING = 2

    def __init__(self, id, mode=-1, pull=-1, value=None):
        if not isinstance(id, int) or not 0 <= id < _NPINS:
            raise ValueError("invalid pin")
        self.id = id
        self._key = str(id)
        self._mode = self.IN
        self._pull = pull
        self._v = 0
        self.init(mode, pull, value)

    def init(self, mode=-1, pull=-1, value=None):
        if mode != -1:
            self._mode = mode
        if pull != -1:
            self._pull = pull
        if value is not None:
            self.value(value)

    def _level(self):
        s = _spec.get(self._key) if _irq_thread[0] else _inputs().get(self._key)
        if not s:
            return 1 if self._pull == self.PULL_UP else 0
        idle = s.get("idle", 0)
        dt = time.time_ns() // 1000000 - s["t0"]
        if dt < 0:
            return idle
        k = dt // s["period"]
        if k >= s["count"]:
            return idle
        return (1 - idle) if dt % s["period"] < s["width"] else idle

    def value(self, v=None):
        if v is None:
            return self._v if self._mode == self.OUT else self._level()
        self._v = 1 if v else 0
        _out.seek(self.id)
        _out.write(b"1" if self._v else b"0")
        _out.flush()

    __call__ = value

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def irq(self, handler=None, trigger=3, hard=False):
        # Edge interrupts are emulated by a thread that samples the scheduled input level
        # every millisecond and calls the handler on a matching edge (like a hard IRQ, it
        # runs concurrently with the main code: handlers must only touch preallocated data).
        for k in range(len(_irqs)):
            if _irqs[k][0] is self:
                _irqs.pop(k)
                break
        if handler is not None:
            _irqs.append([self, handler, trigger, self._level()])
            _start_irq_thread()
        return None


class ADC:
    ATTN_0DB = 0
    ATTN_11DB = 3

    def __init__(self, pin, atten=None):
        self.id = pin.id if isinstance(pin, Pin) else int(pin)

    def read_u16(self):
        return int(_inputs().get("adc", {}).get(str(self.id), 0))

    def read(self):
        return self.read_u16() >> 4

    def read_uv(self):
        return self.read_u16() * 3300000 // 65535

    def atten(self, a):
        pass


def UART(id, *args, **kw):
    # machine.UART: the stand-in is in vbuart.py, loaded at boot by vbstate.init() when the
    # board has state/uart.json (a VirtualBoard always writes it).
    import vbuart

    return vbuart.UART(id, *args, **kw)


_irqs = []  # [pin, handler, trigger, last level]
_irq_thread = [False]
_ctrl_c = [False]  # a host Ctrl-C the IRQ thread caught: handed on at the next WDT.feed()


def _start_irq_thread():
    if _irq_thread[0]:
        return
    import _thread

    _irq_thread[0] = True
    _thread.start_new_thread(_irq_loop, ())


def _irq_loop():
    k = 0
    while True:
        try:
            time.sleep_ms(1)
            if not k:
                _inputs()  # refresh the schedule every 20 ms
            k = (k + 1) % 20
            for e in _irqs:
                v = e[0]._level()
                if v != e[3]:
                    e[3] = v
                    if e[2] & (Pin.IRQ_RISING if v else Pin.IRQ_FALLING):
                        e[1](e[0])
        except KeyboardInterrupt:
            # a host Ctrl-C landed in this thread (see WDT._watch): the edges go on, and the
            # node gets the Ctrl-C at its next watchdog feed
            _ctrl_c[0] = True
