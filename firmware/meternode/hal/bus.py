# Serial meter buses: RS-485 (a DE/RE direction pin, or a transceiver with automatic
# direction) and M-Bus through a level converter, one per board "buses" entry:
#   "buses": {"rs485": {"uart": 1, "tx": 4, "rx": 5, "de": 6, "baud": 2400, "parity": "even"},
#             "mbus":  {"uart": 0, "tx": 0, "rx": 1, "profile": "mbus"}}
# keys: uart, tx, rx (pins), de (pin, omitted = auto direction), de_active (1), baud,
# bits (8), parity none|even|odd, stop (1|2), gap_chars (silence that ends a frame, 3.5),
# turnaround_ms (quiet time before the next request, 20), role master|slave,
# profile "mbus" (the M-Bus master defaults: 2400 8E1, 50 ms turnaround).
# On the sim board a bus is a pty (config gateway.buses.<name>.port; hal/buspty.py) with
# virtual meters behind it (umeter_hil.bussim); the line time of each frame is simulated,
# so cycle times are what the baud rate gives.
#
# Reads never block: bytes are taken when the port has them, and the wait between looks
# is an asyncio sleep, so metering runs while a slow meter thinks.
from meternode.config import ConfigError, need
from meternode.ticks import diff as _diff
from meternode.ticks import ms as _ms
from meternode.ticks import sleep_ms as _sleep_ms
from meternode.ticks import us as _us

_PARITY = ("none", "even", "odd")
PROFILES = {"mbus": {"baud": 2400, "parity": "even", "bits": 8, "stop": 1, "turnaround_ms": 50}}


def check(name, spec, where=None):
    # A bus entry (board "buses" merged with config gateway.buses) checked; returns it with
    # the profile's defaults filled in.  ConfigError names the key.
    w = where or "board.buses.%s" % name
    if not isinstance(spec, dict):
        raise ConfigError("%s must be an object" % w)
    s = dict(PROFILES.get(spec.get("profile"), {}))
    if "profile" in spec and spec["profile"] not in PROFILES:
        raise ConfigError("%s.profile %r is not one of %s" % (w, spec["profile"], ", ".join(PROFILES)))
    s.update(spec)
    need(s, "baud", int, w, default=2400, lo=300, hi=1000000)
    need(s, "bits", int, w, default=8, lo=7, hi=8)
    if need(s, "parity", str, w, default="even") not in _PARITY:
        raise ConfigError("%s.parity must be none, even or odd, not %r" % (w, s["parity"]))
    need(s, "stop", int, w, default=1, lo=1, hi=2)
    need(s, "gap_chars", float, w, default=3.5, lo=1.5, hi=100.0)
    need(s, "turnaround_ms", int, w, default=20, lo=0, hi=5000)
    if need(s, "role", str, w, default="master") not in ("master", "slave"):
        raise ConfigError("%s.role must be master or slave, not %r" % (w, s["role"]))
    if not s.get("sim"):
        need(s, "uart", int, w, lo=0, hi=7)
        need(s, "tx", int, w, lo=0, hi=63)
        need(s, "rx", int, w, lo=0, hi=63)
        if "de" in s:
            need(s, "de", int, w, lo=0, hi=63)
            need(s, "de_active", int, w, default=1, lo=0, hi=1)
    return s


class UartPort:
    # A board UART (machine.UART) with an optional DE/RE direction pin.
    def __init__(self, s):
        import machine

        par = {"none": None, "even": 0, "odd": 1}[s.get("parity", "even")]
        self.uart = machine.UART(
            s["uart"],
            baudrate=s["baud"],
            bits=s.get("bits", 8),
            parity=par,
            stop=s.get("stop", 1),
            tx=machine.Pin(s["tx"]),
            rx=machine.Pin(s["rx"]),
            timeout=0,
            rxbuf=512,
        )
        self.de = None
        if "de" in s:
            self.de = machine.Pin(s["de"], machine.Pin.OUT)
            self._on = s.get("de_active", 1)
            self.de.value(1 - self._on)
        self._tx = memoryview(bytearray(0))

    def any(self):
        return self.uart.any()

    def readinto(self, buf):
        return self.uart.readinto(buf) or 0

    async def write(self, buf, n, char_us):
        if self.de is not None:
            self.de.value(self._on)
        self.uart.write(memoryview(buf)[:n])
        # wait for the last stop bit before releasing the line (never a blocking flush)
        await _sleep_ms((n * char_us) // 1000)
        t = _ms()
        while hasattr(self.uart, "txdone") and not self.uart.txdone() and _diff(_ms(), t) < 100:
            await _sleep_ms(1)
        if self.de is not None:
            self.de.value(1 - self._on)

    def close(self):
        if hasattr(self.uart, "deinit"):
            self.uart.deinit()


class Bus:
    # One serial line.  request() sends a frame and collects the answer into a scanner
    # (feed/next) until the scanner has a whole frame, the line falls silent after bytes,
    # or the timeout passes.  Counters show what the line did.
    def __init__(self, name, spec, port):
        self.name = name
        self.spec = spec
        self.port = port
        bits = 1 + spec.get("bits", 8) + (0 if spec.get("parity", "even") == "none" else 1) + spec.get("stop", 1)
        self.baud = spec.get("baud", 2400)
        self.char_us = (bits * 1000000 + self.baud - 1) // self.baud
        self.gap_us = int(spec.get("gap_chars", 3.5) * self.char_us)
        if self.baud > 19200 and self.gap_us < 1750:
            self.gap_us = 1750  # Modbus: a fixed 1.75 ms above 19200 baud
        self.turnaround_ms = spec.get("turnaround_ms", 20)
        self.role = spec.get("role", "master")
        self._chunk = bytearray(64)
        self._last_ms = _ms()
        self.sent = 0
        self.received = 0
        self.timeouts = 0
        self.busy_ms = 0  # time spent in transactions (sending + waiting)

    def frame_ms(self, n):
        return (n * self.char_us + 999) // 1000

    async def drain(self):
        # Drop whatever is pending (a late answer to an earlier request).
        p = self.port
        c = self._chunk
        while p.any():
            if not p.readinto(c):
                break

    async def send(self, buf, n):
        # Quiet time since the last traffic, then the frame.
        wait = self.turnaround_ms - _diff(_ms(), self._last_ms)
        if wait > 0:
            await _sleep_ms(wait)
        await self.drain()
        await self.port.write(buf, n, self.char_us)
        self.sent += 1
        self._last_ms = _ms()

    async def receive(self, sc, timeout_ms, poll_ms=0):
        # Feeds the answer into scanner `sc` until sc.next() finds a frame (returns its
        # length), silence after bytes ends it (returns 0: sc.pending() bytes that are no
        # frame) or timeout_ms passes without a byte (returns -1).
        p = self.port
        c = self._chunk
        t0 = _ms()
        last = _us()
        got = False
        step = poll_ms or max(1, self.char_us * 4 // 1000)
        while True:
            k = 0
            while p.any():
                k = p.readinto(c)
                if not k:
                    break
                sc.feed(c, k)
                self.received += k
                got = True
                last = _us()
            if k or got:
                n = sc.next()
                if n:
                    self._last_ms = _ms()
                    self.busy_ms += _diff(self._last_ms, t0)
                    return n
            if got and _diff(_us(), last) > self.gap_us + step * 1000:
                self._last_ms = _ms()
                self.busy_ms += _diff(self._last_ms, t0)
                return 0
            if not got and _diff(_ms(), t0) >= timeout_ms:
                self.timeouts += 1
                self.busy_ms += timeout_ms
                return -1
            await _sleep_ms(step)

    async def request(self, buf, n, sc, timeout_ms):
        sc.reset()
        await self.send(buf, n)
        return await self.receive(sc, timeout_ms)

    def stats(self):
        return {"sent": self.sent, "received_bytes": self.received, "timeouts": self.timeouts}


def make(name, spec):
    # A Bus from a checked spec: the sim board's pty (spec["port"]), a port object given in
    # its place (any(), readinto(buf), async write(buf, n, char_us): tests put a line with
    # meters on it there), or a board UART.
    port = spec.get("port")
    if port is not None and not isinstance(port, str):
        return Bus(name, spec, port)
    if spec.get("sim") or port:
        if not port:
            raise ConfigError("bus %s on the sim board needs config gateway.buses.%s.port (a pty)" % (name, name))
        from meternode.hal.buspty import PtyPort  # the sim board's only: a board never loads it

        return Bus(name, spec, PtyPort(port))
    return Bus(name, spec, UartPort(spec))
