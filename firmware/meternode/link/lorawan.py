# LoRaWAN through an AT-command modem on a UART: the RAK3172 / RUI3 dialect (the Wio-E5
# family speaks a close cousin).  One reader task splits the modem's bytes into command
# replies (OK / AT_*_ERROR) and asynchronous events (+EVT:...).  Every wait has a timeout;
# errors raise ModemError naming the modem's reply.  On a node the reader is a task of the
# supervisor of its own (tasks.py, "lora reader": read_loop(), progress through `beat`);
# standalone (tests, host tools) start() runs it and cmd() restarts it if it ended.
#
#   m = LoRaModem(reader, writer); m.start()     # or: supervisor.add("lora reader", ...)
#   await m.configure(deveui, appeui, appkey, band="EU868", dr=0)   # idempotent
#   await m.join()                          # OTAA; the host owns the retries
#   ok = await m.send(2, frame, confirmed=True)
#   m.downlinks -> the last _KEEP_DOWNLINKS [(port, bytes, rssi, snr)] (also on_downlink(port, data))
#
# What RUI3 does, from its source (RAKWireless/RAK-STM32-RUI, service/mode/cli and
# service/lora/service_lora.c), and how this driver copes:
#   - AT+NWM=<n> writes NVM, prints "OK" with no CR/LF and reboots the module -- on every
#     successful set, even to the mode it is in; every AT+CFM=/AT+BAND=/... set rewrites the
#     NVM config block.  configure() (link/loraconf.py, loaded only for it) reads each value
#     first and writes only what differs, AT+NWM only when the mode differs, then waits for
#     the module to come back; send() keeps AT+CFM in step with a cache.
#   - a send or join refused by the duty-cycle limiter prints "Restricted_Wait_<ms>_ms"
#     before AT_BUSY_ERROR: the driver waits that long (not its own short backoff) and
#     send() holds further uplinks until then.
#   - AT+JOIN=1:0:<period>:<count> makes the module retry the join itself; the driver asks
#     for one attempt (count 0) and retries with its own backoff, so the two never overlap;
#     "+EVT:JOINED" marks the modem joined whenever it comes (a late one is not lost), and
#     AT+NJS=? is asked before a new attempt.
#   - a module reset or power-cycle prints its banner, ending "Current Work Mode: LoRaWAN."
#     (variants/*/rui_inner_main.c): the driver marks the session lost (joined = False,
#     `reboots`), so the link joins again.
# The reader never ends on bad input: bytes outside printable ASCII (UART noise, a module
# powering up) are dropped and counted in `noise`, an over-long line is dropped, and any
# error handling one line is counted in `errors` -- one noise byte never stops uplinks.
import asyncio

from micropython import const

from meternode.ticks import diff as _diff
from meternode.ticks import ms as _now
from meternode.ticks import sleep_ms as _sleep_ms

_KEEP_DOWNLINKS = const(8)  # recent downlinks kept for diagnostics (each is also handed to on_downlink)
_KEEP_EVENTS = const(8)  # unclaimed events kept (a node runs for years: the oldest are dropped)
_LINE_MAX = const(600)  # longest line the module prints: +EVT:RX with 242 bytes of hex is ~520
_BOOT_MARK = const("Current Work Mode")  # the banner's last line, after every reset
_RESTRICTED = const("Restricted_Wait_")
_WAIT_MAX_MS = const(60000)  # a duty-cycle wait longer than this is left to the caller


class ModemError(Exception):
    def __init__(self, msg, code=None, wait_ms=0):
        super().__init__(msg)
        self.code = code
        self.wait_ms = wait_ms


def _nop():
    pass


class LoRaModem:
    def __init__(self, reader, w, timeout_ms=3000, busy_retries=5, boot_ms=10000):
        self.r = reader
        self.w = w  # the writer (a parameter's name is interned: `w` is one the node has)
        self.timeout_ms = timeout_ms
        self.busy_retries = busy_retries
        self.boot_ms = boot_ms  # how long a module may take to come back after a reboot
        self._lines = None  # reply lines of the command in progress
        self._done = False  # its reply has ended (OK or an error)
        self._events = []
        # (lock, task, n, line(), write(): names MicroPython has already -- an attribute's name
        # is interned for good, and a LoRa node runs near a qstr pool's end, docs/memory.md)
        self.lock = False  # a command in progress: one at a time
        self.task = None  # the reader, standalone (start())
        # read(n) waits for all n bytes on a blocking file (the unix port's pty): bytes one at
        # a time there; a UART (any()) or CPython's StreamReader hands over what is waiting.
        st = getattr(reader, "s", None)
        self._chunk = 64 if st is None or hasattr(st, "any") else 1
        self._buf = bytearray(_LINE_MAX)
        self.n = 0  # bytes of the line being read
        self.mode = None  # AT+CFM as the module has it (confirmed uplinks 1/0; None: unknown)
        self.last = (0, 0)  # the duty-cycle limiter's last word: (ticks_ms when told, ms to wait)
        self.downlinks = []
        self.on_downlink = None
        self.joined = False
        self.busy = 0  # busy replies seen
        self.errors = 0  # refusals and lines that could not be handled
        self.noise = 0  # bytes dropped as UART noise
        self.dropped = 0  # events dropped (nobody waited for them)
        self.reboots = 0  # module banners seen (reset, power-cycle, AT+NWM)
        self.restarts = 0  # reader tasks restarted by cmd() (standalone use)
        self.beat = _nop  # the supervisor's progress report (supervisor.py), per chunk read
        self.sets = 0  # configuration values written to the module (NVM writes)

    # -- reader ---------------------------------------------------------------------------------
    def start(self):
        # Standalone: the reader as a task of its own (a node's supervisor runs read_loop()).
        self.task = asyncio.create_task(self.read_loop())

    def stop(self):
        if self.task is not None:
            self.task.cancel()
            self.task = None

    async def read_loop(self):
        # Never ends on its own; waits for the module's bytes without a deadline (a silent
        # module is no fault: commands have their own timeouts).
        while True:
            try:
                raw = await self.r.read(self._chunk)
            except asyncio.CancelledError:
                raise
            except Exception:  # a UART error: count it, keep reading
                self.errors += 1
                raw = None
            self.beat()
            if not raw:
                await _sleep_ms(20)
                continue
            self.feed(raw)

    def feed(self, raw):
        # Bytes from the module: assembled into lines, each handled; never raises.
        buf = self._buf
        for b in raw:
            if b == 10 or b == 13:
                if self.n > 0:
                    try:
                        self.line(bytes(buf[: self.n]).decode())
                    except Exception:
                        self.errors += 1
                self.n = 0  # bytes of the line being read (-1: over-long, dropped at its end)
            elif 32 <= b < 127:
                if 0 <= self.n < _LINE_MAX:
                    buf[self.n] = b
                    self.n += 1
                else:
                    self.n = -1  # dropped whole at its end of line
            else:
                self.noise += 1

    def line(self, line):
        line = line.strip()
        if not line:
            return
        i = line.find("+EVT:")
        if i >= 0:  # (power-up garbage may precede it on the same line)
            self._event(line[i + 5 :])
            return
        if _BOOT_MARK in line:  # the module rebooted
            self.reboots += 1
            self.joined = False  # the session is gone; settings stay in the module's NVM
            self.mode = None
            return
        if line.startswith(_RESTRICTED):
            try:
                ms = int(line[len(_RESTRICTED) :].split("_")[0])
            except ValueError:
                ms = 0
            if ms > 0:
                self.last = (_now(), ms)
        if self._lines is not None:
            self._lines.append(line)
            if line == "OK" or line.startswith("AT_"):
                self._done = True

    def _event(self, e):
        if e.startswith("RX_"):
            # RX_1:<rssi>:<snr>:UNICAST:<port>:<hex>
            parts = e.split(":")
            if len(parts) >= 6:
                try:
                    port = int(parts[4])
                    data = bytes.fromhex(parts[5]) if len(parts[5]) % 2 == 0 else b""
                    d = (port, data, int(parts[1]), int(parts[2]))
                except ValueError:
                    self.errors += 1
                    return
                if len(self.downlinks) >= _KEEP_DOWNLINKS:
                    self.downlinks.pop(0)  # a node runs for years: keep the newest only
                self.downlinks.append(d)
                if self.on_downlink is not None:
                    self.on_downlink(port, data)
            return
        if e == "JOINED":
            self.joined = True  # whenever it comes: a late JOINED still counts
        if len(self._events) >= _KEEP_EVENTS:
            self._events.pop(0)
            self.dropped += 1
        self._events.append(e)

    # -- commands ---------------------------------------------------------------------------------
    def wait_ms(self):
        # How long the module's duty-cycle limiter still refuses sends (0: not at all).
        at, ms = self.last
        if not ms:
            return 0
        left = ms - _diff(_now(), at)
        if left <= 0:
            self.last = (0, 0)
            return 0
        return left

    async def write(self, text):
        self.w.write((text + "\r\n").encode())
        await self.w.drain()

    async def cmd(self, text, timeout_ms=None):
        # Sends one AT command; returns its value lines; raises ModemError on an error reply
        # (after `busy_retries` tries for AT_BUSY_ERROR, waiting what Restricted_Wait says)
        # or when no reply comes in time.
        delay = 100
        name = text.split("=")[0]
        if self.task is not None and self.task.done():  # standalone: the reader should never
            self.restarts += 1  # end; if it did, it is started again (counted)
            self.start()
        for attempt in range(self.busy_retries + 1):
            # the reader ends the reply (_done); waited for by polling, as the events are:
            # neither asyncio's Lock nor its wait_for is loaded for LoRa (RAM, names)
            while self.lock:
                await _sleep_ms(5)
            self.lock = True
            try:
                self._lines = []
                self._done = False
                await self.write(text)
                t0 = _now()
                while not self._done:
                    if _diff(_now(), t0) >= (timeout_ms or self.timeout_ms):
                        self._lines = None
                        raise ModemError("modem did not answer %s" % name, "timeout")
                    await _sleep_ms(5)
                lines, self._lines = self._lines, None
            finally:
                self.lock = False
            last = lines[-1]
            if last == "OK":
                return [ln for ln in lines[:-1] if not ln.startswith(_RESTRICTED)]
            if last == "AT_BUSY_ERROR":
                self.busy += 1
                wait = self.wait_ms()
                if wait > _WAIT_MAX_MS:
                    raise ModemError("modem refused %s: duty cycle, wait %d ms" % (name, wait), last, wait)
                if attempt < self.busy_retries:
                    await _sleep_ms(max(delay, wait + 50))
                    delay = min(delay * 2, 2000)
                    continue
                if wait:
                    raise ModemError("modem refused %s: duty cycle, wait %d ms" % (name, wait), last, wait)
            self.errors += 1
            raise ModemError("modem refused %s: %s" % (name, last), last)

    async def get(self, key):
        # The module's value of AT+<key>=? ("AT+BAND=4" -> "4"), or None if it will not say.
        try:
            lines = await self.cmd("AT+%s=?" % key)
        except ModemError as e:
            if e.code == "timeout":
                raise
            return None
        for ln in lines:
            if ln.startswith("AT+%s=" % key):
                return ln[len(key) + 4 :]
        return lines[-1] if lines else None

    async def configure(self, deveui, appeui, appkey, band="EU868", dr=0):
        # Idempotent: reads every setting and writes only what differs (link/loraconf.py,
        # loaded for this only).
        from meternode.link import loraconf

        await loraconf.configure(self, deveui, appeui, appkey, band, dr)

    async def wait_event(self, p, timeout_ms):
        # The first event starting with one of the prefixes `p`, or ModemError after timeout_ms.
        t0 = _now()
        while True:
            for k, ev in enumerate(self._events):
                for x in p:
                    if ev.startswith(x):
                        self._events.pop(k)
                        return ev
            if _diff(_now(), t0) >= timeout_ms:
                raise ModemError("no %s event within %d ms" % ("/".join(p), timeout_ms), "timeout")
            await _sleep_ms(20)

    async def join(self, n=3, timeout_ms=20000, wait=500):
        # OTAA join, one module attempt at a time, n times with a pause from `wait` ms doubling.
        why = ""
        for _ in range(n):
            if self.joined or await self.get("NJS") == "1":
                self.joined = True
                return True
            self._events = [ev for ev in self._events if not ev.startswith("JOIN")]
            r = self.wait_ms()
            if r:
                await _sleep_ms(min(r, _WAIT_MAX_MS))
            try:
                await self.cmd("AT+JOIN=1:0:10:0")  # join now, no auto-join, no module retries
                ev = await self.wait_event(("JOINED", "JOIN_FAILED"), timeout_ms)
            except ModemError as e:
                ev = str(e)
            if ev == "JOINED" or self.joined:
                self.joined = True
                return True
            why = ev
            await _sleep_ms(wait)
            wait *= 2
        self.joined = False
        raise ModemError("join failed %d times (%s)" % (n, why), "join")

    async def send(self, port, data, confirmed=False, timeout_ms=15000):
        # One uplink.  True when sent (unconfirmed) or acknowledged (confirmed); False when a
        # confirmed uplink got no ACK.  ModemError for refusals (not joined, bad length, ...).
        wait = self.wait_ms()
        if wait:
            await _sleep_ms(min(wait, _WAIT_MAX_MS))
        want = 1 if confirmed else 0
        if self.mode != want:
            have = await self.get("CFM")
            if have != "%d" % want:
                await self.cmd("AT+CFM=%d" % want)
                self.sets += 1
            self.mode = want
        self._events = [ev for ev in self._events if not (ev.startswith("TX_DONE") or ev.startswith("SEND_CONF"))]
        try:
            await self.cmd("AT+SEND=%d:%s" % (port, data.hex().upper()))
        except ModemError as e:
            if e.code == "AT_NO_NETWORK_JOINED":
                self.joined = False
            raise
        ev = await self.wait_event(("TX_DONE", "SEND_CONFIRMED_OK", "SEND_CONFIRMED_FAILED"), timeout_ms)
        return not ev.startswith("SEND_CONFIRMED_FAILED")
